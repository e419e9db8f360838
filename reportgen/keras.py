"""`reportgen.keras.ReportCallback`: a Keras callback that keeps a site up to date during `model.fit`
and shows how units evolve (integrations/keras_callback.py). Importing this module loads TensorFlow."""

from reportgen.integrations.keras_callback import ReportCallback

__all__ = ["ReportCallback"]
