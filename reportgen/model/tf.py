"""TensorFlow and Keras, imported once, without changing the user's process.

Keras must run on its TensorFlow backend (the pass is TensorFlow code) even where the user's
environment picks JAX or PyTorch for their own work; `KERAS_BACKEND` is set only while Keras is
first imported and is put back afterwards. If Keras was already imported on another backend, the
pass cannot run in this process: a UserError says so.

TensorFlow's C++ notices are turned down (TF_CPP_MIN_LOG_LEVEL=3, unless the user set it) only
while it loads. The command line also hides what TensorFlow prints to file descriptor 2 while it
loads (cli.py); a library import never touches file descriptors.
"""

from __future__ import annotations

import contextlib
import os
import sys

from reportgen.errors import UserError

@contextlib.contextmanager
def _environment(**values: str):
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _import():
    already = "keras" in sys.modules
    env = {"KERAS_BACKEND": "tensorflow"} if not already else {}
    if "tensorflow" not in sys.modules:
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", os.environ.get("TF_CPP_MIN_LOG_LEVEL", "3"))
    with _environment(**env):
        import keras
        import tensorflow
    backend = keras.backend.backend()
    if backend != "tensorflow":
        raise UserError(
            f"Keras is already running on its {backend!r} backend in this process; reportgen runs the model on "
            "TensorFlow: use it in a fresh process (or set KERAS_BACKEND=tensorflow before importing keras)"
        )
    return keras, tensorflow


keras, tf = _import()
