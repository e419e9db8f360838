"""Receptive fields from the layer graph, exactly, by the standard recurrence.

Per axis, with r the size, j the distance in input pixels between neighbouring output positions
(the effective stride) and o the centre of position 0's field (input pixel i spans [i, i+1)):

    k_eff = dilation * (kernel - 1) + 1
    r' = r + (k_eff - 1) * j
    j' = j * stride
    o' = o + ((k_eff - 1) / 2 - pad_before) * j

'same' padding puts the odd pixel after, as TensorFlow does. Merges (Add, Concatenate, ...)
take the union of their inputs' fields when the inputs are aligned (same j). Where the stack does
not define a field (upsampling, transposed convolutions, unknown layers, misaligned branches),
the layer falls back to its grid cell, and says why.

Near the borders the standard box reaches into padding, and, after a crop or a strided layer that
drops the last pixels, over image pixels the unit never reads. So each layer also carries, per axis
and position, the interval of input pixels it really reads (`ReceptiveField.reads`): the overlays
draw that. Pure: no TensorFlow.
"""

from __future__ import annotations

import math

import numpy as np

from reportgen.report import LayerNode, ReceptiveField


def _axis(r: float, j: float, o: float, node: LayerNode, axis: int, in_size: int) -> tuple[float, float, float]:
    g = node.geometry
    if g.op == "pad":
        return r, j, o - g.before[axis] * j
    if g.op == "crop":
        return r, j, o + g.before[axis] * j
    k_eff = g.dilation[axis] * (g.kernel[axis] - 1) + 1
    return r + (k_eff - 1) * j, j * g.stride[axis], o + ((k_eff - 1) / 2 - _pad_before(node, axis, in_size)) * j


def _pad_before(node: LayerNode, axis: int, in_size: int) -> int:
    g = node.geometry
    if g.op != "window" or g.padding != "same":
        return 0
    k_eff = g.dilation[axis] * (g.kernel[axis] - 1) + 1
    out = math.ceil(in_size / g.stride[axis])
    return max((out - 1) * g.stride[axis] + k_eff - in_size, 0) // 2


def _reads(node: LayerNode, axis: int, src: np.ndarray, out_size: int) -> np.ndarray:
    """[out_size, 2] input-pixel interval [lo, hi) that each output position really reads along one axis
    (NaN where it reads only padding). `src` is the same for the layer's input positions."""
    g = node.geometry
    n_in = src.shape[0]
    p = np.arange(out_size)[:, None]
    if g.op == "pad":
        taps = p - g.before[axis]
    elif g.op == "crop":
        taps = p + g.before[axis]
    else:
        taps = p * g.stride[axis] - _pad_before(node, axis, n_in) + np.arange(g.kernel[axis])[None, :] * g.dilation[axis]
    valid = (taps >= 0) & (taps < n_in)
    safe = np.clip(taps, 0, n_in - 1)
    lo = np.where(valid, src[safe, 0], np.nan)
    hi = np.where(valid, src[safe, 1], np.nan)
    with np.errstate(all="ignore"), _quiet_nan():
        return np.stack([np.nanmin(lo, axis=1), np.nanmax(hi, axis=1)], axis=1)


class _quiet_nan:
    """nanmin of an all-NaN row is NaN (a position that reads only padding); numpy warns, we expect it."""

    def __enter__(self):
        import warnings

        self._catch = warnings.catch_warnings()
        self._catch.__enter__()
        warnings.simplefilter("ignore", RuntimeWarning)

    def __exit__(self, *exc):
        self._catch.__exit__(*exc)


def grid_cell(input_hw: tuple[int, int], layer_hw: tuple[int, int], note: str) -> ReceptiveField:
    """The fallback: each position stands for its cell of the grid (input size / layer size)."""
    stride = (input_hw[0] / layer_hw[0], input_hw[1] / layer_hw[1])
    return ReceptiveField(size=stride, stride=stride, offset=(stride[0] / 2, stride[1] / 2), exact=False, note=note)


def receptive_fields(nodes: list[LayerNode], input_hw: tuple[int, int]) -> dict[str, ReceptiveField]:
    """The receptive field of every layer with a feature-map page, by qualified name."""
    start = ReceptiveField(size=(1.0, 1.0), stride=(1.0, 1.0), offset=(0.5, 0.5), exact=True)
    pixels = [np.stack([np.arange(n, dtype=float), np.arange(n, dtype=float) + 1], axis=1) for n in input_hw]
    fields: dict[str, ReceptiveField] = {"": start}
    reads: dict[str, list[np.ndarray]] = {"": pixels}  # per axis [positions, 2]
    problems: dict[str, str] = {}  # layer -> why its field is undefined
    # A nested model's row comes before its layers; it stands for the layer that makes its output.
    alias = {n.name: n.alias_of for n in nodes if n.geometry.op == "model"}

    def real(name: str) -> str:
        while name in alias:
            name = alias[name]
        return name

    whole = whole_image(input_hw)
    whole_reads = [np.array([[0.0, float(n)]]) for n in input_hw]
    global_names: set[str] = set()  # layers whose output summarises the whole image (no spatial layout left)
    context: dict[str, str] = {}  # layer -> the global summary it is also scaled by (squeeze-and-excitation)

    for node in nodes:
        if node.geometry.op == "model":
            continue
        sources = [real(name) for name in node.inputs]
        if len(node.output_shape) != 4 or node.geometry.op == "global":
            # a vector (or 1 x 1 map) made from the image: every position of it reads the whole image
            if node.geometry.op != "input" and sources and all(name in fields for name in sources):
                fields[node.name], reads[node.name] = whole, whole_reads
                global_names.add(node.name)
            continue
        if node.geometry.op == "input":
            fields[node.name], reads[node.name] = start, pixels
            continue
        missing = [name for name in sources if name not in fields]
        if missing or not sources:
            problems[node.name] = problems.get(missing[0], "its input has no receptive field") if missing else "no input"
            continue
        if all(name in global_names for name in sources) and node.spatial == (1, 1):
            fields[node.name], reads[node.name] = whole, whole_reads  # e.g. Reshape, or a 1x1 conv, of a global summary
            global_names.add(node.name)
            continue
        if node.geometry.op == "reshape":
            problems[node.name] = "not defined for a Reshape of a feature map"
            continue
        summaries = [name for name in sources if name in global_names]
        if summaries and node.geometry.op == "pointwise":  # a local map scaled (or shifted) by a global summary
            context[node.name] = summaries[0]
            sources = [name for name in sources if name not in global_names]
        for name in sources:
            if name in context and node.name not in context:
                context[node.name] = context[name]
        ins = [fields[name] for name in sources]
        out_hw = node.spatial
        if node.geometry.op == "pointwise":
            if len({rf.stride for rf in ins}) > 1 or len({tuple(len(a) for a in reads[n]) for n in sources}) > 1:
                problems[node.name] = f"{node.type} merges branches with different strides"
                continue
            lo = [min(rf.offset[a] - rf.size[a] / 2 for rf in ins) for a in (0, 1)]
            hi = [max(rf.offset[a] + rf.size[a] / 2 for rf in ins) for a in (0, 1)]
            fields[node.name] = ReceptiveField(
                size=(hi[0] - lo[0], hi[1] - lo[1]), stride=ins[0].stride, offset=((lo[0] + hi[0]) / 2, (lo[1] + hi[1]) / 2), exact=True
            )
            with np.errstate(all="ignore"), _quiet_nan():
                reads[node.name] = [
                    np.stack([np.nanmin([reads[n][a][:, 0] for n in sources], axis=0), np.nanmax([reads[n][a][:, 1] for n in sources], axis=0)], axis=1)
                    for a in (0, 1)
                ]
            continue
        if node.geometry.op in ("window", "pad", "crop") and len(ins) == 1:
            src, in_shape = ins[0], node.input_shapes[0]
            per_axis = [_axis(src.size[a], src.stride[a], src.offset[a], node, a, int(in_shape[1 + a])) for a in (0, 1)]
            fields[node.name] = ReceptiveField(
                size=(per_axis[0][0], per_axis[1][0]),
                stride=(per_axis[0][1], per_axis[1][1]),
                offset=(per_axis[0][2], per_axis[1][2]),
                exact=True,
            )
            reads[node.name] = [_reads(node, a, reads[sources[0]][a], out_hw[a]) for a in (0, 1)]
            continue
        problems[node.name] = f"not defined for a {node.type} layer"

    result: dict[str, ReceptiveField] = {}
    for node in nodes:
        if not node.is_map:
            continue
        rf = fields.get(node.name)
        if rf is None:
            why = problems.get(node.name, "not defined")
            result[node.name] = grid_cell(input_hw, node.spatial, f"receptive field {why}; showing the grid cell")
        else:
            rows, cols = reads[node.name]
            note = ""
            if node.name in global_names:
                note = "every position reads the whole image (a global summary)"
            elif node.name in context:
                note = f"the unit is also scaled by '{context[node.name]}', a summary of the whole image (squeeze-and-excitation)"
            result[node.name] = ReceptiveField(rf.size, rf.stride, rf.offset, True, note, reads=(rows.tolist(), cols.tolist()))
    return result


def whole_image(input_hw: tuple[int, int]) -> ReceptiveField:
    """The field of a global summary: one position that reads every pixel."""
    h, w = float(input_hw[0]), float(input_hw[1])
    return ReceptiveField(size=(h, w), stride=(h, w), offset=(h / 2, w / 2), exact=True)
