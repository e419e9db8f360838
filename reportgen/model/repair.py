"""Model configs written by Keras 2 that Keras 3 cannot read, and how each is rewritten.

A model file from Keras 2.x or tf.keras 2.x holds its architecture as JSON. Keras 3 reads most of
it, but not every form older versions wrote. Each row of `REPAIRS` names one such difference, the
Keras versions that write it, and rewrites it into what Keras 3 reads with the same meaning.
`repair_model_config` applies the table to a copy of the config and says which rows applied
where; load.py writes the result into a temporary copy of the file (the user's file is never
touched). The rows were found on real files written by those versions (tests/fixtures/corpus,
whose KERAS3_FAILURES.md has Keras 3's error for each).

Only arguments that do not change what the model computes at inference are dropped (training-only
switches at their defaults, arguments a layer ignores); a config that would compute something
else in Keras 3 is refused (`UnrepairableConfig`).

Two layouts: a layer entry without a `module` key (HDF5 files of Keras 2) goes through Keras 3's
legacy reader, which renames a few arguments itself, but only at the top level; an entry with
`module` (tf.keras 2.13-2.15: nested models in HDF5, everything in a .keras zip) goes through the
new reader, which renames nothing.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Callable

from reportgen.errors import UserError


class UnrepairableConfig(UserError):
    """A Keras 2 config that has no Keras 3 equivalent with the same meaning."""


@dataclass(frozen=True)
class AppliedRepair:
    name: str
    versions: str
    what: str
    layers: tuple[str, ...]  # where it applied (layer or model names)

    def as_dict(self) -> dict:
        return {"name": self.name, "versions": self.versions, "what": self.what, "layers": list(self.layers)}


@dataclass(frozen=True)
class Repair:
    """One known difference. `fix(entry)` rewrites one layer entry ({"class_name", "config", ...}) in
    place and returns True when it changed something. `models_only`: the entry is a model's."""

    name: str
    versions: str  # the Keras versions that write the old form
    what: str
    fix: Callable[[dict], bool] = field(repr=False)
    models_only: bool = False


def _cfg(entry: dict) -> dict:
    cfg = entry.get("config")
    return cfg if isinstance(cfg, dict) else {}


def _name(entry: dict) -> str:
    return str(_cfg(entry).get("name", entry.get("name", "")))


def _drop(entry: dict, keys: dict) -> bool:
    """Drop `keys` from the config when they hold a harmless value (None in the dict: any value)."""
    cfg, changed = _cfg(entry), False
    for key, harmless in keys.items():
        if key in cfg and (harmless is None or cfg[key] in harmless):
            del cfg[key]
            changed = True
    return changed


def _kind(entry: dict) -> str:
    return str(entry.get("class_name", ""))


def _groups_of_one(entry: dict) -> bool:
    if _kind(entry) not in ("DepthwiseConv1D", "DepthwiseConv2D", "SeparableConv1D", "SeparableConv2D",
                            "Conv1DTranspose", "Conv2DTranspose", "Conv3DTranspose"):
        return False
    groups = _cfg(entry).get("groups", 1)
    if groups != 1:
        raise UnrepairableConfig(f"layer '{_name(entry)}': {_kind(entry)} with groups={groups} has no Keras 3 equivalent")
    return _drop(entry, {"groups": None})


def _separable_kernel_arguments(entry: dict) -> bool:
    if _kind(entry) not in ("SeparableConv1D", "SeparableConv2D"):
        return False
    return _drop(entry, {"kernel_initializer": None, "kernel_regularizer": None, "kernel_constraint": None})


def _axis_list(entry: dict) -> bool:
    if _kind(entry) not in ("BatchNormalization", "LayerNormalization"):
        return False
    cfg = _cfg(entry)
    axis = cfg.get("axis")
    if isinstance(axis, list) and len(axis) == 1 and isinstance(axis[0], int):
        cfg["axis"] = axis[0]
        return True
    return False


def _spatial_dropout(entry: dict) -> bool:
    if _kind(entry) not in ("SpatialDropout1D", "SpatialDropout2D", "SpatialDropout3D"):
        return False
    return _drop(entry, {"trainable": None, "noise_shape": (None,)})


def _recurrent_time_major(entry: dict) -> bool:
    if _kind(entry) not in ("LSTM", "GRU", "SimpleRNN"):
        return False
    if _cfg(entry).get("time_major"):
        raise UnrepairableConfig(f"layer '{_name(entry)}': {_kind(entry)} with time_major=True has no Keras 3 equivalent")
    return _drop(entry, {"time_major": None})


def _attention_shapes(entry: dict) -> bool:
    if _kind(entry) != "MultiHeadAttention":
        return False
    return _drop(entry, {"query_shape": None, "key_shape": None, "value_shape": None})


def _removed_augmentation(entry: dict) -> bool:
    """RandomHeight/RandomWidth are gone from Keras 3; at inference they returned their input."""
    if _kind(entry) not in ("RandomHeight", "RandomWidth"):
        return False
    cfg = _cfg(entry)
    entry["class_name"] = "Identity"
    entry["config"] = {key: cfg[key] for key in ("name", "trainable", "dtype") if key in cfg}
    if "module" in entry:
        entry["module"] = "keras.layers"
    return True


# tf.keras 2 records TensorFlow ops called on Keras tensors as TFOpLambda layers; the arithmetic that
# preprocess_input does inside a model (x / 127.5 - 1, ...) is a Rescaling in Keras 3.
_ARITHMETIC = {"math.truediv": "divide", "math.divide": "divide", "math.multiply": "multiply",
               "math.subtract": "subtract", "math.add": "add", "__operators__.add": "add"}


def _tf_op_arithmetic(entry: dict) -> bool:
    if _kind(entry) != "TFOpLambda":
        return False
    cfg = _cfg(entry)
    function = cfg.get("function")
    nodes = entry.get("inbound_nodes")
    call = nodes[0] if isinstance(nodes, list) and len(nodes) == 1 else None
    kwargs = call[3] if isinstance(call, list) and len(call) == 4 and isinstance(call[3], dict) else None
    y = kwargs.get("y") if kwargs else None
    if function not in _ARITHMETIC or not isinstance(y, (int, float)) or isinstance(y, bool) or (function in ("math.truediv", "math.divide") and y == 0):
        raise UnrepairableConfig(
            f"layer '{_name(entry)}' is a TensorFlow operation recorded by tf.keras 2 (TFOpLambda '{function}'), which Keras 3 "
            "cannot load; reportgen rewrites only arithmetic with a constant (x / c, x * c, x - c, x + c)"
        )
    op = _ARITHMETIC[function]
    scale, offset = {"divide": (1.0 / y, 0.0), "multiply": (float(y), 0.0), "subtract": (1.0, -float(y)), "add": (1.0, float(y))}[op]
    entry["class_name"] = "Rescaling"
    entry["config"] = {"name": cfg.get("name", _name(entry)), "trainable": cfg.get("trainable", True), "dtype": cfg.get("dtype", "float32"),
                       "scale": scale, "offset": offset}
    entry["inbound_nodes"] = [[[call[0], call[1], call[2], {}]]]
    return True


_OLD_MODULES = {
    "keras.src.engine.functional": "keras.src.models.functional",
    "keras.src.engine.sequential": "keras.src.models.sequential",
    "keras.src.engine.training": "keras.src.models.model",
}


def _engine_module(entry: dict) -> bool:
    module = entry.get("module")
    if module in _OLD_MODULES:
        entry["module"] = _OLD_MODULES[module]
        return True
    return False


def _sequential_list(entry: dict) -> bool:
    if _kind(entry) == "Sequential" and isinstance(entry.get("config"), list):
        entry["config"] = {"name": entry.get("name", "sequential"), "layers": entry["config"]}
        return True
    return False


def _sequential_input(entry: dict) -> bool:
    """A Keras 2.0-2.2 Sequential has no InputLayer: its first layer carries `batch_input_shape`."""
    if _kind(entry) != "Sequential":
        return False
    layers = _cfg(entry).get("layers")
    if not layers or not isinstance(layers[0], dict) or _kind(layers[0]) == "InputLayer":
        return False
    first = _cfg(layers[0])
    shape = first.get("batch_input_shape")
    if shape is None:
        return False
    del first["batch_input_shape"]
    dtype = first.pop("dtype", "float32")
    input_config = {"batch_shape": shape, "dtype": dtype, "sparse": False, "name": f"{first.get('name', 'layer')}_input"}
    layers.insert(0, {"class_name": "InputLayer", "config": input_config})
    return True


def _nested_single_io(entry: dict) -> bool:
    cfg, changed = _cfg(entry), False
    for key in ("input_layers", "output_layers"):
        value = cfg.get(key)
        if isinstance(value, list) and len(value) == 1 and isinstance(value[0], list):
            cfg[key] = value[0]
            changed = True
    return changed


# Applied in this order to every layer entry of the model and of every model nested in it.
REPAIRS: list[Repair] = [
    Repair("sequential-config-list", "Keras 2.0.0-2.2.2",
           "a Sequential's config written as a bare list of layers: wrapped as {\"layers\": [...]}", _sequential_list, models_only=True),
    Repair("sequential-without-input-layer", "Keras 2.0-2.2",
           "a Sequential without an InputLayer, its first layer holding `batch_input_shape`: an InputLayer of that shape put first",
           _sequential_input, models_only=True),
    Repair("engine-module", "tf.keras 2.13-2.15 (.keras zip)",
           "models written with `module: keras.src.engine.*`: read from Keras 3's keras.src.models", _engine_module),
    Repair("groups-of-one", "tf.keras 2.x",
           "DepthwiseConv, SeparableConv and ConvTranspose layers written with Conv's `groups: 1`: dropped (it is always 1 for them)",
           _groups_of_one),
    Repair("separable-kernel-arguments", "tf.keras 2.x",
           "SeparableConv written with Conv's unused `kernel_initializer/regularizer/constraint`: dropped (the depthwise and pointwise ones hold the values)",
           _separable_kernel_arguments),
    Repair("axis-list", "tf.keras 2.x (nested models of 2.13-2.15 HDF5 files, .keras zips)",
           "BatchNormalization/LayerNormalization `axis: [3]` written as a one-item list: read as `axis: 3`", _axis_list),
    Repair("spatial-dropout-arguments", "tf.keras 2.x",
           "SpatialDropout written with `trainable` and `noise_shape: null`: dropped (it has no weights and no noise shape)", _spatial_dropout),
    Repair("recurrent-time-major", "tf.keras 2.x", "LSTM/GRU/SimpleRNN `time_major: false`: dropped (Keras 3's only layout)", _recurrent_time_major),
    Repair("attention-shapes", "tf.keras 2.x", "MultiHeadAttention's saved `query/key/value_shape`: dropped (Keras 3 reads them from its inputs)",
           _attention_shapes),
    Repair("removed-random-resize", "tf.keras 2.6-2.15",
           "RandomHeight/RandomWidth, gone from Keras 3 and inactive at inference: read as Identity", _removed_augmentation),
    Repair("tf-op-arithmetic", "tf.keras 2.4-2.15",
           "TensorFlow arithmetic with a constant recorded as a TFOpLambda layer (e.g. preprocess_input inside the model: "
           "x / 127.5 - 1): read as Rescaling (x * scale + offset; the same up to float rounding)", _tf_op_arithmetic),
    Repair("nested-single-io-list", "tf.keras 2.x (nested Functional models)",
           "a nested model's single input/output written as a one-item list: unwrapped (keras-team/keras#20084)", _nested_single_io,
           models_only=True),
]


def _is_model(entry: dict) -> bool:
    cfg = entry.get("config")
    return isinstance(cfg, list) or (isinstance(cfg, dict) and "layers" in cfg)


def _walk(entry: dict, nested: bool, visit) -> None:
    """visit(entry, nested) for a model entry and every layer entry below it, models first."""
    visit(entry, nested)
    cfg = entry.get("config")
    for layer in (cfg.get("layers") if isinstance(cfg, dict) else None) or []:
        if isinstance(layer, dict):
            if _is_model(layer):
                _walk(layer, True, visit)
            else:
                visit(layer, True)


def repair_model_config(config: dict) -> tuple[dict, list[AppliedRepair]]:
    """A repaired copy of a model config (an HDF5 file's `model_config`, or a .keras zip's config.json)
    and the repairs that applied. The input is not changed."""
    fixed = copy.deepcopy(config)
    hits: dict[str, list[str]] = {}

    def visit(entry: dict, nested: bool) -> None:
        is_model = _is_model(entry)
        for repair in REPAIRS:
            if repair.models_only and not is_model:
                continue
            if repair.name == "nested-single-io-list" and not nested:
                continue  # the top model's lists are what Keras 3 expects
            if repair.fix(entry):
                hits.setdefault(repair.name, []).append(_name(entry))

    if isinstance(fixed, dict):
        _walk(fixed, False, visit)
    applied = [AppliedRepair(r.name, r.versions, r.what, tuple(hits[r.name])) for r in REPAIRS if r.name in hits]
    return fixed, applied


# Loss names Keras 2 accepted that Keras 3 only knows as metrics.
LOSS_ALIASES = {"mse": "mean_squared_error", "mae": "mean_absolute_error", "mape": "mean_absolute_percentage_error",
                "msle": "mean_squared_logarithmic_error"}
