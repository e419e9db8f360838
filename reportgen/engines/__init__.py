"""Where the pass over the dataset runs.

    mining.py  the per-batch graph (the same for every engine): forward, maxima, top K, heatmaps
    local.py   in this process: decoding threads, one graph per batch, host statistics overlapped
"""
