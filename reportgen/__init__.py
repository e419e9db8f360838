"""reportgen: a static site of what a Keras image classifier computes, layer by layer and unit by unit.

Stages, each in its own module, with plain data between them:

    model.py    load the Keras model, trace every layer (nested models too)      [TensorFlow]
    dataset.py  find the images, decode and preprocess them in batches           [Pillow]
    scan.py     one streaming pass: predictions, metrics, per-unit top-K         [TensorFlow]
    receptive.py  receptive fields from the layer graph                          [pure]
    report.py   the dataclasses every stage hands on, and report.json
    images.py   pure image functions: feature grids, thumbnails, heatmaps        [numpy, Pillow]
    pages.py    Jinja2 rendering of the pages                                    [Jinja2]
    writer.py   the only module that writes the site, atomically
    build.py    runs the stages in order; cli.py and demo.py call it
"""

__version__ = "0.1.0"
