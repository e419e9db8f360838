"""reportgen inside other tools: MLflow runs (mlflow.py) and Keras training (keras_callback.py)."""
