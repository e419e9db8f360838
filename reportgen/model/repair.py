"""Layer configs written by Keras 2 that Keras 3 cannot read, and how each is rewritten.

A model file from tf.keras 2.x (or standalone Keras 2.x) holds its architecture as JSON. Keras 3
reads most of it, but not every argument older versions wrote. Each row of `REPAIRS` names one
such difference, the Keras versions that write it, and rewrites it into what Keras 3 reads with
the same meaning. `repair_model_config` applies the table to a copy of the config and returns
which rows applied where; load.py writes the repaired config into a temporary copy of the file
(the user's file is never touched).

Only arguments that do not change what the model computes at inference are dropped
(initial values, regularisers, training-only switches at their defaults); a repair that would
change the numbers is refused instead (`UnrepairableConfig`).
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
    layers: tuple[str, ...]

    def as_dict(self) -> dict:
        return {"name": self.name, "versions": self.versions, "what": self.what, "layers": list(self.layers)}


@dataclass(frozen=True)
class Repair:
    """One known difference. `fix(layer, ctx)` rewrites one layer entry ({"class_name", "config", ...})
    in place and returns True when it changed something."""

    name: str
    versions: str  # the Keras versions that write the old form
    what: str
    fix: Callable[[dict, "_Context"], bool] = field(repr=False)


@dataclass
class _Context:
    nested: bool  # the layer belongs to a model nested inside another


def _cfg(layer: dict) -> dict:
    cfg = layer.get("config")
    return cfg if isinstance(cfg, dict) else {}


def _drop(layer: dict, keys: dict) -> bool:
    """Drop `keys` from the layer config when they hold the given harmless values (None: any value)."""
    cfg, changed = _cfg(layer), False
    for key, harmless in keys.items():
        if key in cfg and (harmless is None or cfg[key] in harmless):
            del cfg[key]
            changed = True
    return changed


def _depthwise_groups(layer, ctx) -> bool:
    if layer.get("class_name") != "DepthwiseConv2D":
        return False
    cfg = _cfg(layer)
    if cfg.get("groups", 1) != 1:
        raise UnrepairableConfig(f"layer '{cfg.get('name')}': DepthwiseConv2D with groups={cfg['groups']} has no Keras 3 equivalent")
    # tf.keras 2 DepthwiseConv2D subclasses Conv2D and writes its unused arguments too
    return _drop(layer, {"groups": None, "filters": None, "kernel_initializer": None, "kernel_regularizer": None, "kernel_constraint": None})


def _separable_unused(layer, ctx) -> bool:
    if layer.get("class_name") not in ("SeparableConv2D", "SeparableConv1D"):
        return False
    cfg = _cfg(layer)
    if cfg.get("groups", 1) != 1:
        raise UnrepairableConfig(f"layer '{cfg.get('name')}': SeparableConv2D with groups={cfg['groups']} has no Keras 3 equivalent")
    return _drop(layer, {"groups": None, "kernel_initializer": None, "kernel_regularizer": None, "kernel_constraint": None})


def _batchnorm_axis(layer, ctx) -> bool:
    """`axis: [3]` in a nested model (Keras 3 converts it only at the top level)."""
    cfg = _cfg(layer)
    axis = cfg.get("axis")
    if isinstance(axis, list) and len(axis) == 1 and isinstance(axis[0], int):
        cfg["axis"] = axis[0]
        return True
    return False


def _batchnorm_legacy(layer, ctx) -> bool:
    if layer.get("class_name") != "BatchNormalization":
        return False
    cfg = _cfg(layer)
    if cfg.get("renorm"):
        raise UnrepairableConfig(f"layer '{cfg.get('name')}': BatchNormalization with renorm=True has no Keras 3 equivalent")
    if cfg.get("virtual_batch_size") is not None:
        raise UnrepairableConfig(f"layer '{cfg.get('name')}': BatchNormalization with virtual_batch_size has no Keras 3 equivalent")
    return _drop(layer, {"renorm": (False,), "renorm_clipping": None, "renorm_momentum": None, "fused": None,
                         "virtual_batch_size": (None,), "adjustment": (None,), "trainable_weights": None})


def _variance_scaling_normal(layer, ctx) -> bool:
    """Keras 2.0-2.2 wrote VarianceScaling(distribution='normal'), which meant a truncated normal."""
    changed = False

    def walk(obj):
        nonlocal changed
        if isinstance(obj, dict):
            if obj.get("class_name") == "VarianceScaling" and isinstance(obj.get("config"), dict):
                if obj["config"].get("distribution") == "normal":
                    obj["config"]["distribution"] = "truncated_normal"
                    changed = True
            for v in obj.values():
                walk(v)
        elif isinstance(obj, list):
            for v in obj:
                walk(v)

    walk(_cfg(layer))
    return changed


# Applied to every layer entry of every (nested) model config, in this order.
REPAIRS: list[Repair] = [
    Repair("batchnorm-axis-list", "tf.keras 2.x (nested models)",
           "BatchNormalization `axis: [3]` written as a list inside a nested model: read as `axis: 3`", _batchnorm_axis),
    Repair("depthwise-conv-groups", "tf.keras 2.1-2.15",
           "DepthwiseConv2D written with Conv2D's unused arguments (`groups: 1`, `kernel_*`): dropped", _depthwise_groups),
    Repair("separable-conv-unused", "tf.keras 2.1-2.15",
           "SeparableConv2D written with Conv2D's unused arguments (`groups: 1`, `kernel_*`): dropped", _separable_unused),
    Repair("batchnorm-legacy-arguments", "tf.keras 2.x",
           "BatchNormalization's tf.keras-only arguments at their defaults (`renorm`, `fused`, `virtual_batch_size`, `adjustment`): dropped",
           _batchnorm_legacy),
    Repair("variance-scaling-normal", "Keras 2.0-2.2",
           "initializer VarianceScaling(distribution='normal') (a truncated normal then): written as 'truncated_normal'", _variance_scaling_normal),
]


def _model_configs(config: dict, nested: bool):
    """Yield (model config dict, nested) for the model and every model nested in it."""
    yield config, nested
    inner = config.get("config")
    layers = inner.get("layers") if isinstance(inner, dict) else None
    for layer in layers or []:
        if isinstance(layer, dict) and isinstance(layer.get("config"), dict) and "layers" in layer["config"]:
            yield from _model_configs(layer, True)


def _sequential_list(config: dict) -> bool:
    """Keras 2.0-2.1 wrote a Sequential's config as a bare list of layers (also for nested Sequentials)."""
    changed = False
    if config.get("class_name") in ("Sequential",) and isinstance(config.get("config"), list):
        config["config"] = {"name": config.get("name", "sequential"), "layers": config["config"]}
        changed = True
    inner = config.get("config")
    for layer in (inner.get("layers") if isinstance(inner, dict) else None) or []:
        if isinstance(layer, dict) and layer.get("class_name") in ("Sequential", "Model", "Functional"):
            changed |= _sequential_list(layer)
    return changed


def _unwrap_nested_io(model: dict) -> bool:
    """A nested Functional's single input/output written as `[["name", 0, 0]]` makes it return a list (keras-team/keras#20084)."""
    cfg, changed = model.get("config", {}), False
    for key in ("input_layers", "output_layers"):
        value = cfg.get(key)
        if isinstance(value, list) and len(value) == 1 and isinstance(value[0], list):
            cfg[key] = value[0]
            changed = True
    return changed


_STRUCTURAL = [
    ("sequential-config-list", "Keras 2.0-2.1", "a Sequential's config written as a bare list of layers: wrapped as {\"layers\": [...]}"),
    ("nested-single-io-list", "tf.keras 2.x (nested Functional models)",
     "a nested model's single input/output written as a one-item list: unwrapped (keras-team/keras#20084)"),
]


def repair_model_config(config: dict) -> tuple[dict, list[AppliedRepair]]:
    """A repaired copy of a model config (the `model_config` of an HDF5 file, or a .keras zip's
    config.json), and the repairs that applied. The input is not changed."""
    fixed = copy.deepcopy(config)
    hits: dict[str, list[str]] = {}
    if _sequential_list(fixed):
        hits.setdefault("sequential-config-list", []).append(str(fixed.get("config", {}).get("name", "")))
    for model, nested in _model_configs(fixed, False):
        model_name = str(_cfg(model).get("name", ""))
        if nested and _unwrap_nested_io(model):
            hits.setdefault("nested-single-io-list", []).append(model_name)
        for layer in _cfg(model).get("layers", []) or []:
            if not isinstance(layer, dict):
                continue
            ctx = _Context(nested=nested)
            for repair in REPAIRS:
                if repair.name == "batchnorm-axis-list" and not nested:
                    continue  # Keras 3 converts the top level itself
                if repair.fix(layer, ctx):
                    hits.setdefault(repair.name, []).append(str(_cfg(layer).get("name", layer.get("name", ""))))
    table = {r.name: (r.versions, r.what) for r in REPAIRS} | {n: (v, w) for n, v, w in _STRUCTURAL}
    applied = [AppliedRepair(name, *table[name], tuple(layers)) for name, layers in hits.items()]
    return fixed, applied


def repair_table() -> list[tuple[str, str, str]]:
    """(name, versions, what) of every known repair, for the README and the tests."""
    return [(n, v, w) for n, v, w in _STRUCTURAL] + [(r.name, r.versions, r.what) for r in REPAIRS]
