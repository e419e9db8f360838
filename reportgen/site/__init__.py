"""The static site, from the gathered data (report.ReportData), written file by file:

    names.py   where everything lives (names from layer names and content hashes)
    assets.py  thumbnail sheets, heatmap atlases, feature grids
    data.py    report.json and the per-layer data files, built from the data, not the views
    worker.py  a second Python process making the per-layer data files of a big network meanwhile
    views.py   typed views for the templates
    pages.py   Jinja rendering of every page, in order, into the temporary folder
    links.py   every link and anchor, as made: the link check needs no second read of the pages
"""
