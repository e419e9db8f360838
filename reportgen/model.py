"""Load a Keras model and trace it into a graph of layers whose every output can be read.

Tracing re-applies the model's own layer objects (same weights) to a fresh `keras.Input`, walking
Sequential models in order and Functional models through their public `get_config()` graph, and
descending into nested models (a base network inside a Sequential), so inner layers get outputs
in the same graph. The result is one multi-output `keras.Model` ("tap model") built with the
public API only: `keras.Model(inputs=..., outputs=[...])`.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

# TensorFlow's C++ log lines (oneDNN notices) are noise on a user's terminal; Python errors still raise.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# The pass is TensorFlow code: Keras must run on its TensorFlow backend even where the user's
# environment picks JAX or PyTorch for their own work.
os.environ["KERAS_BACKEND"] = "tensorflow"


def _import_tensorflow_quietly() -> None:
    """Some notices are printed to fd 2 while TensorFlow loads, before its log level applies."""
    try:
        saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    except OSError:
        saved = None
    if saved is not None:
        os.dup2(devnull, 2)
    try:
        import keras  # noqa: F401
        import tensorflow  # noqa: F401
    finally:
        if saved is not None:
            os.dup2(saved, 2)
            os.close(saved)
            os.close(devnull)


_import_tensorflow_quietly()

import keras  # noqa: E402

from reportgen.dataset import InputSpec  # noqa: E402
from reportgen.errors import UserError  # noqa: E402
from reportgen.report import Geometry, LayerNode, ModelInfo  # noqa: E402

_POINTWISE = {
    "Activation", "ReLU", "LeakyReLU", "PReLU", "ELU", "Softmax", "ThresholdedReLU",
    "BatchNormalization", "LayerNormalization", "GroupNormalization", "UnitNormalization",
    "Dropout", "SpatialDropout2D", "GaussianNoise", "GaussianDropout", "AlphaDropout", "ActivityRegularization",
    "Rescaling", "Normalization", "Identity", "Masking",
    "Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum", "Concatenate",
}
_WINDOW = {"Conv2D", "DepthwiseConv2D", "SeparableConv2D", "MaxPooling2D", "AveragePooling2D"}


@dataclass
class TracedModel:
    model: keras.Model
    info: ModelInfo
    spec: InputSpec
    tap: keras.Model  # outputs: [classification output] + [one per map layer, in `map_layers` order]
    map_layers: list[LayerNode]


def _pair(value, default=1) -> tuple[int, int]:
    if value is None:
        return (default, default)
    if isinstance(value, int):
        return (value, value)
    value = tuple(value)
    return (int(value[0]), int(value[-1])) if len(value) >= 2 else (int(value[0]), int(value[0]))


def _geometry(layer) -> Geometry:
    kind = type(layer).__name__
    if isinstance(layer, keras.Model):
        return Geometry("model")
    if kind == "InputLayer":
        return Geometry("input")
    try:
        cfg = layer.get_config()
    except Exception:  # a layer without a config is one we cannot reason about
        return Geometry("unknown")
    if cfg.get("data_format") == "channels_first":
        raise UserError(f"layer '{layer.name}' uses channels_first; reportgen reads (height, width, channels) maps")
    if kind in _WINDOW:
        kernel = cfg.get("kernel_size", cfg.get("pool_size"))
        stride = cfg.get("strides") or kernel
        return Geometry(
            "window",
            kernel=_pair(kernel),
            stride=_pair(stride),
            dilation=_pair(cfg.get("dilation_rate", 1)),
            padding=str(cfg.get("padding", "valid")).lower(),
        )
    if kind == "ZeroPadding2D":
        (top, _), (left, _) = cfg["padding"]
        return Geometry("pad", before=(int(top), int(left)))
    if kind == "Cropping2D":
        (top, _), (left, _) = cfg["cropping"]
        return Geometry("crop", before=(int(top), int(left)))
    if kind in _POINTWISE:
        return Geometry("pointwise")
    return Geometry("unknown")


def _shape(tensor) -> tuple:
    return tuple(None if d is None else int(d) for d in tensor.shape)


def _is_tensor(obj) -> bool:
    return isinstance(obj, keras.KerasTensor)


def _flatten(obj) -> list:
    if isinstance(obj, (list, tuple)):
        return [t for item in obj for t in _flatten(item)]
    if isinstance(obj, dict):
        return [t for item in obj.values() for t in _flatten(item)]
    return [obj] if _is_tensor(obj) else []


class _Tracer:
    def __init__(self) -> None:
        self.nodes: list[LayerNode] = []
        self.tensors: dict[str, keras.KerasTensor] = {}
        self.producer: dict[int, str] = {}  # id(tensor) -> qualified name of the layer that made it
        self._used: set[str] = set()

    def _unique(self, name: str) -> str:
        candidate, n = name, 1
        while candidate in self._used:
            n += 1
            candidate = f"{name}#{n}"  # a shared layer called more than once
        self._used.add(candidate)
        return candidate

    def record(self, layer, qualified: str, inputs: list, output, depth: int, parent: str | None) -> None:
        outs = _flatten(output)
        for t in outs:
            self.producer[id(t)] = qualified
        shape = _shape(outs[0]) if outs else ()
        geometry = _geometry(layer)
        # A nested model's output is its last layer's output, which gets its own page already.
        is_map = len(shape) == 4 and geometry.op not in ("input", "model")
        self.nodes.append(
            LayerNode(
                name=qualified,
                type=type(layer).__name__,
                output_shape=shape,
                params=int(layer.count_params()) if layer.built else 0,
                depth=depth,
                parent=parent,
                inputs=[self.producer.get(id(t), "") for t in inputs],
                input_shapes=[_shape(t) for t in inputs],
                geometry=geometry,
                is_map=is_map,
            )
        )
        if outs:
            self.tensors[qualified] = outs[0]

    def apply(self, layer, args: tuple, kwargs: dict, prefix: str, depth: int, parent: str | None):
        qualified = self._unique(prefix + layer.name)
        inputs = _flatten((args, kwargs))
        if isinstance(layer, keras.Model):
            # Record the nested model's own row first so its layers follow it, as in a summary.
            row = len(self.nodes)
            output = self.trace(layer, inputs, qualified + "/", depth + 1, qualified)
            inner = self.producer.get(id(_flatten(output)[0]), "") if _flatten(output) else ""
            self.record(layer, qualified, inputs, output, depth, parent)
            self.nodes[-1].alias_of = inner
            self.nodes.insert(row, self.nodes.pop())
            return output
        output = layer(*args, **kwargs)
        self.record(layer, qualified, inputs, output, depth, parent)
        return output

    def trace(self, model, inputs: list, prefix: str, depth: int, parent: str | None):
        """Apply `model`'s layers to `inputs`; returns the model's output tensor(s)."""
        if isinstance(model, keras.Sequential):
            x = inputs[0]
            for layer in model.layers:
                x = self.apply(layer, (x,), {}, prefix, depth, parent)
            return x
        config = model.get_config()
        if not isinstance(config, dict) or "layers" not in config or "input_layers" not in config:
            raise UserError(
                f"model '{model.name}' is a subclassed keras.Model; reportgen needs a Sequential or Functional model"
            )
        return self._trace_functional(model, config, inputs, prefix, depth, parent)

    def _trace_functional(self, model, config, inputs, prefix, depth, parent):
        def refs(spec):
            return [spec] if spec and isinstance(spec[0], str) else list(spec)

        produced: dict[tuple[str, int], list] = {}
        for (name, _, _), tensor in zip(refs(config["input_layers"]), inputs):
            produced[(name, 0)] = [tensor]
            if depth == 0:  # a nested model's inputs are its caller's tensors, already recorded
                self.record(model.get_layer(name), self._unique(prefix + name), [], tensor, depth, parent)

        def resolve(obj):
            if isinstance(obj, dict):
                if obj.get("class_name") == "__keras_tensor__":
                    name, node, index = obj["config"]["keras_history"]
                    return produced[(name, node)][index]
                return {k: resolve(v) for k, v in obj.items()}
            if isinstance(obj, (list, tuple)):
                return type(obj)(resolve(v) for v in obj)
            return obj

        def needs(obj) -> list[tuple[str, int]]:
            if isinstance(obj, dict):
                if obj.get("class_name") == "__keras_tensor__":
                    name, node, _ = obj["config"]["keras_history"]
                    return [(name, node)]
                return [k for v in obj.values() for k in needs(v)]
            if isinstance(obj, (list, tuple)):
                return [k for v in obj for k in needs(v)]
            return []

        pending = [
            (layer_cfg["name"], node_index, node)
            for layer_cfg in config["layers"]
            if layer_cfg.get("class_name") != "InputLayer"
            for node_index, node in enumerate(layer_cfg.get("inbound_nodes", []))
        ]
        while pending:
            progressed = False
            for item in list(pending):
                name, node_index, node = item
                if not all(key in produced for key in needs(node)):
                    continue
                args = resolve(node.get("args", ()))
                kwargs = resolve(node.get("kwargs", {}))
                out = self.apply(model.get_layer(name), tuple(args), dict(kwargs), prefix, depth, parent)
                produced[(name, node_index)] = out if isinstance(out, (list, tuple)) else [out]
                pending.remove(item)
                progressed = True
            if not progressed:
                raise UserError(f"model '{model.name}': cannot follow its layer graph (a cycle or a missing input)")
        outputs = [produced[(name, node)][index] for name, node, index in refs(config["output_layers"])]
        return outputs[0] if len(outputs) == 1 else outputs


def load_model(path: Path | str, unsafe: bool = False) -> keras.Model:
    """Load a `.keras` or HDF5 `.h5` model with Keras's safe mode. Raises UserError with a one-line reason."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no such file")
    if path.is_dir():
        if (path / "saved_model.pb").exists():
            raise UserError(
                f"{path}: is a TensorFlow SavedModel folder, which Keras 3 cannot open layer by layer; "
                "load it in the TensorFlow version that wrote it and save it with model.save('model.keras'), then pass that file"
            )
        raise UserError(f"{path}: is a folder, not a model file (.keras or .h5)")
    with open(path, "rb") as fh:
        magic = fh.read(8)
    if magic.startswith(b"\x89HDF"):
        kind = "HDF5"
    elif zipfile.is_zipfile(path):
        kind = "keras"
    else:
        raise UserError(f"{path}: is not a Keras model file (expected a .keras zip or an HDF5 .h5 file)")
    if kind == "HDF5" and path.suffix.lower() not in (".h5", ".hdf5"):
        raise UserError(f"{path}: is an HDF5 file; name it with the .h5 extension so Keras reads it as a legacy model")
    if kind == "keras" and path.suffix.lower() != ".keras":
        raise UserError(f"{path}: is a zip file; a native Keras model file ends in .keras")
    try:
        try:
            model = _load(path, unsafe)
        except Exception as exc:
            repaired = _repaired_legacy_copy(path) if kind == "HDF5" and not _is_safety_refusal(exc) else None
            if repaired is None:
                raise
            try:
                model = _load(repaired, unsafe)
            finally:
                shutil.rmtree(repaired.parent, ignore_errors=True)
    except UserError:
        raise
    except Exception as exc:
        message = " ".join(str(exc).split()) or type(exc).__name__
        if _is_safety_refusal(exc):
            raise UserError(
                f"{path}: the model holds Python code (a Lambda layer) that would run when it loads, and Keras's safe mode refuses it; "
                "pass --unsafe only if you trust this file"
            ) from None
        if len(message) > 300:
            message = message[:300] + "..."
        raise UserError(f"{path}: cannot load the model ({kind} file): {message}") from None
    if not isinstance(model, keras.Model):
        raise UserError(f"{path}: holds a {type(model).__name__}, not a Keras model")
    return model


def _is_safety_refusal(exc: BaseException) -> bool:
    return "safe_mode" in str(exc)


def _load(path: Path, unsafe: bool) -> keras.Model:
    # Keras logs through absl about optimizer state it could not restore; we never train, so hush it.
    logging.getLogger("absl").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Skipping variable loading for optimizer ...": same reason
        try:
            return keras.models.load_model(path, safe_mode=not unsafe)
        except Exception as exc:  # the weights load but the training config does not: keep the weights
            text = str(exc).lower()
            if "compile" not in text and "optimizer" not in text:
                raise
            return keras.models.load_model(path, safe_mode=not unsafe, compile=False)


def _legacy_fixes(config, nested: bool = False):
    """Two known gaps of Keras 3's reader for tf.keras 2 HDF5 files (keras-team/keras#20084), in a
    model nested inside another: BatchNormalization's `axis: [3]`, and single-input/output lists
    `[["name", 0, 0]]` that make the inner model return a list."""
    if isinstance(config, list):
        return [_legacy_fixes(item, nested) for item in config]
    if not isinstance(config, dict):
        return config
    fixed = {}
    for key, value in config.items():
        if nested and key == "axis" and isinstance(value, list) and len(value) == 1:
            value = value[0]
        elif nested and key in ("input_layers", "output_layers") and isinstance(value, list) and len(value) == 1 and isinstance(value[0], list):
            value = value[0]
        else:
            value = _legacy_fixes(value, nested or key == "layers")
        fixed[key] = value
    return fixed


def _repaired_legacy_copy(path: Path) -> Path | None:
    """A temporary copy of a tf.keras 2 HDF5 file with _legacy_fixes applied, or None if nothing changes."""
    import json

    import h5py

    try:
        with h5py.File(path, "r") as f:
            raw = f.attrs.get("model_config")
        if raw is None:
            return None
        config = json.loads(raw.decode("utf-8") if isinstance(raw, bytes) else raw)
    except Exception:
        return None
    fixed = _legacy_fixes(config)
    if fixed == config:
        return None
    folder = Path(tempfile.mkdtemp(prefix="reportgen-legacy-"))
    copy = folder / path.name
    shutil.copyfile(path, copy)
    with h5py.File(copy, "r+") as f:
        f.attrs["model_config"] = json.dumps(fixed).encode("utf-8")
    return copy


def _input_spec(model: keras.Model, path: Path | str) -> InputSpec:
    inputs = model.inputs or []
    if len(inputs) != 1:
        raise UserError(f"{path}: the model has {len(inputs)} inputs; reportgen needs a model with one image input")
    shape = _shape(inputs[0])
    if len(shape) != 4:
        raise UserError(
            f"{path}: the model's input has shape {shape}, not an image (batch, height, width, channels)"
        )
    _, h, w, c = shape
    if h is None or w is None:
        raise UserError(f"{path}: the model's input size is not fixed {shape}; reportgen needs a fixed height and width")
    if c not in (1, 3):
        raise UserError(f"{path}: the model's input has {c} channels; reportgen reads images as RGB (3) or grayscale (1)")
    return InputSpec(height=h, width=w, channels=c)


def _loss_name(model: keras.Model) -> str | None:
    loss = getattr(model, "loss", None)
    if loss is None:
        return None
    if isinstance(loss, str):
        return loss
    if isinstance(loss, keras.losses.Loss):
        return loss.name
    return getattr(loss, "__name__", None)


def trace_model(model: keras.Model, path: Path | str = "") -> TracedModel:
    """Trace the model's layers and build the tap model. Raises UserError for models it cannot show."""
    spec = _input_spec(model, path)
    tracer = _Tracer()
    x = keras.Input(shape=(spec.height, spec.width, spec.channels), name="reportgen_input")
    tracer.producer[id(x)] = ""
    output = tracer.trace(model, [x], "", 0, None)
    outputs = _flatten(output)
    map_layers = [n for n in tracer.nodes if n.is_map]
    if not map_layers:
        raise UserError(f"{path}: the model has no layer with a 4-D (height, width, channels) output to show")
    final = outputs[0]
    tap = keras.Model(inputs=x, outputs=[final] + [tracer.tensors[n.name] for n in map_layers], name="reportgen_tap")

    trainable = sum(int(w.numpy().size) for w in model.trainable_weights)
    non_trainable = sum(int(w.numpy().size) for w in model.non_trainable_weights)
    final_shape = _shape(final)
    info = ModelInfo(
        name=model.name,
        path=str(path),
        input_shape=_shape(model.inputs[0]),
        total_params=int(model.count_params()),
        trainable_params=trainable,
        non_trainable_params=non_trainable,
        nodes=tracer.nodes,
        num_outputs=int(final_shape[-1]) if len(final_shape) == 2 and final_shape[-1] else 0,
        loss_name=_loss_name(model) if len(outputs) == 1 else None,
    )
    if len(outputs) > 1:
        info.num_outputs = 0  # several outputs: evaluation is not defined, the pages still are
    return TracedModel(model=model, info=info, spec=spec, tap=tap, map_layers=map_layers)
