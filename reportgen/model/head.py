"""The model's classification output: which output, and whether its scores are probabilities or logits.

One output unit with a linear last activation (or a loss with `from_logits=True`) is a logit:
it is thresholded at 0 and shown as sigmoid(logit). Several linear outputs are logits too: the
arg-max decides, and they are shown as softmax(logits). Sigmoid and softmax outputs are
probabilities already (threshold 0.5 and arg-max, as Keras's accuracy metrics).
"""

from __future__ import annotations

from dataclasses import dataclass

# Layers that pass their input's values through (or only reshape them): the activation that
# decides is further back.
_PASS_THROUGH = {
    "Dropout", "SpatialDropout2D", "AlphaDropout", "GaussianDropout", "GaussianNoise", "Flatten", "Reshape",
    "Identity", "ActivityRegularization", "Masking",
}


@dataclass(frozen=True)
class OutputHead:
    name: str  # the layer that produces the output (qualified name)
    units: int  # size of the (batch, units) output, 0 when it is not of that shape
    activation: str  # "sigmoid", "softmax", "linear", another activation's name, or "unknown"
    logits: bool  # scores are logits: threshold 0 / softmax for display
    reason: str  # why, in words, for the index page

    def as_dict(self) -> dict:
        return {"name": self.name, "units": self.units, "activation": self.activation, "logits": self.logits, "reason": self.reason}


def _activation_name(value) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value.lower()
    if isinstance(value, dict):  # a serialized function: {"class_name": "function", "config": "relu", ...}
        cfg = value.get("config")
        if isinstance(cfg, str):
            return cfg.lower()
        if isinstance(cfg, dict) and isinstance(cfg.get("name"), str):
            return cfg["name"].lower()
        return str(value.get("class_name", "unknown")).lower()
    return getattr(value, "__name__", None)


def layer_activation(layer) -> str | None:
    """The activation a layer applies last, or None for a layer that passes values through."""
    kind = type(layer).__name__
    if kind in _PASS_THROUGH:
        return None
    if kind == "Softmax":
        return "softmax"
    if kind in ("ReLU", "LeakyReLU", "ELU", "PReLU"):
        return kind.lower()
    try:
        cfg = layer.get_config()
    except Exception:
        return "unknown"
    if "activation" in cfg:
        return _activation_name(cfg["activation"]) or "linear"
    return "unknown"


def find_head(name: str, units: int, chain: list, from_logits: bool | None) -> OutputHead:
    """`chain`: the layers from the output backwards (the output's layer first), as far as known."""
    activation = "unknown"
    decided_by = name
    for layer in chain:
        found = layer_activation(layer)
        if found is not None:
            activation, decided_by = found, layer.name
            break
    if activation == "linear":
        reason = f"'{decided_by}' has a linear activation: its outputs are logits"
        logits = True
    elif from_logits:
        reason = "the model's loss was compiled with from_logits=True: its outputs are logits"
        logits = True
    elif activation in ("sigmoid", "softmax"):
        reason = f"'{decided_by}' ends in {activation}: its outputs are probabilities"
        logits = False
    else:
        reason = f"'{decided_by}' ends in activation '{activation}'; its outputs are read as probabilities (as Keras's accuracy does)"
        logits = False
    return OutputHead(name=name, units=units, activation=activation, logits=logits, reason=reason)
