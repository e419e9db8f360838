"""The user's model: load it as written by any Keras era, repair old configs, choose its input
preprocessing, and trace it into a graph whose every layer output can be read. [TensorFlow]

    load.py        recognise the file by content, load without the compiled state, rebuild the loss
    repair.py      the table of Keras 2 config differences and their Keras 3 rewrites   [pure]
    preprocess.py  preprocessing modes and resize methods, in-model preprocessing, known bases
    head.py        the evaluated output: probabilities or logits
    trace.py       re-apply the layers to a fresh input; the multi-output tap model
    ranking.py     layers whose units rank images as their input layer's do (Conv -> BN -> ReLU)
    tf.py          TensorFlow and Keras, imported without changing the user's process

Importing this package loads nothing; TensorFlow loads with load.py or trace.py (preprocess.py
and repair.py can be read without it, e.g. by the command line's --help).
"""

_EXPORTS = {"LoadedModel": "load", "LossSpec": "load", "load_model": "load", "TracedModel": "trace", "trace_model": "trace"}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(f"reportgen.model.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'reportgen.model' has no attribute {name!r}")
