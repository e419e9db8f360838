"""Trace a Keras model into a graph of layers whose every output can be read.

Tracing re-applies the model's own layer objects (same weights) to a fresh `keras.Input`, walking
Sequential models in order and Functional models through their public `get_config()` graph, and
descending into nested models (a base network inside a Sequential), so inner layers get outputs
in the same graph. The result is one multi-output `keras.Model` ("tap model") built with the
public API only: `keras.Model(inputs=..., outputs=[...])`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from reportgen.dataset import InputSpec
from reportgen.errors import UserError
from reportgen.model.head import find_head
from reportgen.model.load import LossSpec, loss_of_compiled
from reportgen.model.tf import keras
from reportgen.report import Geometry, LayerNode, ModelInfo

_POINTWISE = {
    "Activation", "ReLU", "LeakyReLU", "PReLU", "ELU", "Softmax", "ThresholdedReLU",
    "BatchNormalization", "LayerNormalization", "GroupNormalization", "UnitNormalization",
    "Dropout", "SpatialDropout2D", "GaussianNoise", "GaussianDropout", "AlphaDropout", "ActivityRegularization",
    "Rescaling", "Normalization", "Identity", "Masking",
    "Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum", "Concatenate",
    "Dense",  # on a (batch, h, w, c) map, Dense acts on each position alone (ConvNeXt's pointwise convolutions)
    "LayerScale", "StochasticDepth",  # keras.applications' own per-position layers (ConvNeXt)
    # Keras 3 operations in a functional graph (x + 3, x * y, ...): element by element
    "Divide", "TrueDivide", "Negative", "Absolute", "Abs", "Square", "Sqrt", "Exp", "Log", "Power", "Clip",
    "Relu", "Relu6", "Sigmoid", "HardSigmoid", "HardSwish", "Silu", "Swish", "Gelu", "Tanh", "Softplus", "Cast",
}
_GLOBAL = {"GlobalAveragePooling2D", "GlobalMaxPooling2D", "GlobalAveragePooling1D", "GlobalMaxPooling1D"}
_WINDOW = {"Conv2D", "DepthwiseConv2D", "SeparableConv2D", "MaxPooling2D", "AveragePooling2D"}


@dataclass
class TracedModel:
    model: keras.Model
    info: ModelInfo
    spec: InputSpec
    tap: keras.Model  # outputs: [classification output] + [one per map layer, in `map_layers` order]
    map_layers: list[LayerNode]
    loss: LossSpec  # the loss of the evaluated output, as compiled (or "not computed" with a reason)
    input: object = None  # the KerasTensor every traced tensor is computed from
    tensors: dict = None  # qualified layer name -> its output KerasTensor (every layer, shown or not)
    all_map_layers: list = None  # every layer with a 4-D output, also those --layers leaves out
    logits: object = None  # the evaluated output before its sigmoid/softmax (the output itself for logits)
    layers: dict = None  # qualified layer name -> the Keras layer

    def outputs_of(self, layers: list | None = None) -> list:
        """The tap model's outputs: the evaluated output, then the maps of `layers` (default: every map layer)."""
        return list(self.tap.outputs) if layers is None else [self.tap.outputs[0]] + [self.tensors[node.name] for node in layers]

    def model_of(self, names: list[str], with_logits: bool = True, name: str = "reportgen_view"):
        """A model from the traced input to [logits] + the named layers' outputs (public Keras API)."""
        outputs = ([self.logits] if with_logits else []) + [self.tensors[n] for n in names]
        return keras.Model(inputs=self.input, outputs=outputs, name=name)


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
    if kind in _GLOBAL:
        return Geometry("global")
    if kind == "Reshape":
        return Geometry("reshape")
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
        self.layers: dict[str, object] = {}  # qualified name -> the Keras layer
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
        self.layers[qualified] = layer
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
                params=int(layer.count_params()) if getattr(layer, "built", False) and hasattr(layer, "count_params") else 0,
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

        # Layers, and the Keras 3 operations (x + y, x * y) that a functional graph holds beside them.
        operations = {op.name: op for op in getattr(model, "operations", [])}
        produced: dict[tuple[str, int], list] = {}
        for (name, _, _), tensor in zip(refs(config["input_layers"]), inputs):
            produced[(name, 0)] = [tensor]
            if depth == 0:  # a nested model's inputs are its caller's tensors, already recorded
                self.record(operations.get(name) or model.get_layer(name), self._unique(prefix + name), [], tensor, depth, parent)

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
                out = self.apply(operations.get(name) or model.get_layer(name), tuple(args), dict(kwargs), prefix, depth, parent)
                produced[(name, node_index)] = out if isinstance(out, (list, tuple)) else [out]
                pending.remove(item)
                progressed = True
            if not progressed:
                raise UserError(f"model '{model.name}': cannot follow its layer graph (a cycle or a missing input)")
        outputs = [produced[(name, node)][index] for name, node, index in refs(config["output_layers"])]
        return outputs[0] if len(outputs) == 1 else outputs


def _input_spec(model: keras.Model, path: Path | str, input_size: tuple[int, int] | None, interpolation: str) -> InputSpec:
    inputs = model.inputs or []
    if len(inputs) != 1:
        raise UserError(f"{path}: the model has {len(inputs)} inputs; reportgen needs a model with one image input")
    shape = _shape(inputs[0])
    if len(shape) != 4:
        raise UserError(
            f"{path}: the model's input has shape {shape}, not an image (batch, height, width, channels)"
        )
    _, h, w, c = shape
    if c not in (1, 3) and h in (1, 3) and c is not None and c > 4:
        raise UserError(
            f"{path}: the model's input {shape} is channels_first (channels before height and width); "
            "reportgen reads channels_last models (batch, height, width, channels)"
        )
    if c not in (1, 3):
        raise UserError(f"{path}: the model's input has {c} channels; reportgen reads images as RGB (3) or grayscale (1)")
    if input_size is not None:
        if h is not None and w is not None and (h, w) != tuple(input_size):
            raise UserError(
                f"{path}: the model's input size is fixed at {h}x{w}; --input-size is only for models whose height and width are not fixed"
            )
        h, w = input_size
    elif h is None or w is None:
        raise UserError(
            f"{path}: the model's input height and width are not fixed {_shape_text(shape)}; pass the size to run it at "
            "with --input-size H,W (e.g. the size it was trained at)"
        )
    return InputSpec(height=h, width=w, channels=c, interpolation=interpolation)


def _shape_text(shape) -> str:
    return "(" + ", ".join("None" if d is None else str(d) for d in shape) + ")"


def _check_channels_last(model: keras.Model, path: Path | str) -> None:
    def visit(m):
        for layer in m.layers:
            if isinstance(layer, keras.Model):
                visit(layer)
                continue
            try:
                fmt = layer.get_config().get("data_format")
            except Exception:
                continue
            if fmt == "channels_first":
                raise UserError(
                    f"{path}: layer '{layer.name}' uses data_format channels_first; reportgen reads channels_last models "
                    "(batch, height, width, channels): rebuild the model with channels_last layers and load its weights"
                )

    visit(model)


def select_layers(names: list[str], patterns: list[str]) -> set[str]:
    """The names that match any include pattern (all, when there are only "!" excludes) and no exclude."""
    import fnmatch

    includes = [p for p in patterns if not p.startswith("!")]
    excludes = [p[1:] for p in patterns if p.startswith("!")]
    for pattern in includes + excludes:
        if not any(fnmatch.fnmatchcase(name, pattern) for name in names):
            shown = ", ".join(names[:12]) + (", ..." if len(names) > 12 else "")
            raise UserError(f"--layers {pattern!r}: no layer with feature maps matches it (there are: {shown})")
    chosen = {n for n in names if not includes or any(fnmatch.fnmatchcase(n, p) for p in includes)}
    chosen -= {n for n in names if any(fnmatch.fnmatchcase(n, p) for p in excludes)}
    if not chosen:
        raise UserError(f"--layers {' '.join(patterns)}: no layer is left to show")
    return chosen


def _output_names(tracer: "_Tracer", outputs: list) -> list[str]:
    return [tracer.producer.get(id(t), "") or f"output_{i}" for i, t in enumerate(outputs)]


def _chain_back(tracer: "_Tracer", name: str) -> list:
    """The layers from output `name` backwards along single inputs (nested models followed to their output layer)."""
    nodes = {n.name: n for n in tracer.nodes}
    chain: list = []
    while name in nodes and len(chain) < 64:
        node = nodes[name]
        if node.geometry.op == "model":
            name = node.alias_of
            continue
        if name in tracer.layers:
            chain.append(tracer.layers[name])
        if len(node.inputs) != 1:
            break
        name = node.inputs[0]
    return chain


def trace_model(
    model: keras.Model,
    path: Path | str = "",
    *,
    loss: LossSpec | None = None,
    input_size: tuple[int, int] | None = None,
    output: str | None = None,
    interpolation: str = "nearest",
    layers: list[str] | None = None,
) -> TracedModel:
    """Trace the model's layers and build the tap model. Raises UserError for models it cannot show.

    `loss`: the loss read from the model file (load.py); by default the model's compiled loss.
    `output`: which output to evaluate when the model has several (layer name).
    `layers`: glob patterns of the layers that get feature maps and units (a leading "!" excludes).
    """
    _check_channels_last(model, path)
    spec = _input_spec(model, path, input_size, interpolation)
    loss = loss if loss is not None else loss_of_compiled(model)
    tracer = _Tracer()
    x = keras.Input(shape=(spec.height, spec.width, spec.channels), name="reportgen_input")
    tracer.producer[id(x)] = ""
    tracer.input = x
    output_value = tracer.trace(model, [x], "", 0, None)
    outputs = _flatten(output_value)
    names = _output_names(tracer, outputs)
    if len(outputs) > 1:
        if output is None:
            raise UserError(f"{path}: the model has {len(outputs)} outputs ({', '.join(names)}); choose the one to evaluate with --output NAME")
        if output not in names:
            raise UserError(f"--output {output!r}: the model's outputs are {', '.join(names)}")
        chosen = names.index(output)
    else:
        if output is not None and output not in names:
            raise UserError(f"--output {output!r}: the model has one output, {names[0]}")
        chosen = 0
    map_layers = [n for n in tracer.nodes if n.is_map]
    if not map_layers:
        raise UserError(f"{path}: the model has no layer with a 4-D (height, width, channels) output to show")
    all_map_layers = list(map_layers)
    if layers:
        chosen_names = select_layers([n.name for n in map_layers], layers)
        for node in map_layers:
            node.is_map = node.name in chosen_names
        map_layers = [n for n in map_layers if n.is_map]
    final = outputs[chosen]
    tap = keras.Model(inputs=x, outputs=[final] + [tracer.tensors[n.name] for n in map_layers], name="reportgen_tap")

    trainable = sum(int(w.numpy().size) for w in model.trainable_weights)
    non_trainable = sum(int(w.numpy().size) for w in model.non_trainable_weights)
    final_shape = _shape(final)
    units = int(final_shape[-1]) if len(final_shape) == 2 and final_shape[-1] else 0
    loss = loss.for_output(names[chosen], chosen, len(outputs))
    head = find_head(names[chosen], units, _chain_back(tracer, tracer.producer.get(id(final), "")), loss.from_logits)
    info = ModelInfo(
        name=model.name,
        path=str(path),
        input_shape=_shape(model.inputs[0]),
        total_params=int(model.count_params()),
        trainable_params=trainable,
        non_trainable_params=non_trainable,
        nodes=tracer.nodes,
        num_outputs=units,
        loss_name=loss.name,
        loss_note=loss.note,
        head=head,
        outputs=names,
        run_input_shape=(None, spec.height, spec.width, spec.channels),
    )
    logits = final if head.logits else _logits_of(tracer, tracer.producer.get(id(final), ""), final)
    return TracedModel(model=model, info=info, spec=spec, tap=tap, map_layers=map_layers, loss=loss, input=x,
                       tensors=dict(tracer.tensors), all_map_layers=all_map_layers, logits=logits, layers=dict(tracer.layers))


def _logits_of(tracer: "_Tracer", name: str, output):
    """The output before its last sigmoid/softmax: that layer's input for an Activation/Softmax layer,
    or the same layer again with a linear activation (its own weights). The output itself otherwise."""
    chain = _chain_back(tracer, name)
    if not chain:
        return output
    layer = chain[0]
    node = next((n for n in tracer.nodes if tracer.layers.get(n.name) is layer), None)
    if node is None or len(node.inputs) != 1:
        return output
    source = tracer.tensors.get(node.inputs[0]) if node.inputs[0] else tracer.input
    kind = type(layer).__name__
    try:
        cfg = layer.get_config()
    except Exception:
        return output
    if kind == "Softmax" or (kind == "Activation" and str(cfg.get("activation")) in ("softmax", "sigmoid")):
        return source
    if str(cfg.get("activation")) in ("softmax", "sigmoid") and hasattr(layer, "get_weights"):
        twin = type(layer).from_config({**cfg, "activation": "linear", "name": f"{layer.name}_logits"})
        twin.build(tuple(source.shape))
        twin.set_weights(layer.get_weights())
        return twin(source)
    return output
