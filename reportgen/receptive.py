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
the layer falls back to its grid cell, and says why. Pure: no TensorFlow.
"""

from __future__ import annotations

import math

from reportgen.report import LayerNode, ReceptiveField


def _axis(r: float, j: float, o: float, node: LayerNode, axis: int, in_size: int) -> tuple[float, float, float]:
    g = node.geometry
    if g.op == "pad":
        return r, j, o - g.before[axis] * j
    if g.op == "crop":
        return r, j, o + g.before[axis] * j
    k, s, d = g.kernel[axis], g.stride[axis], g.dilation[axis]
    k_eff = d * (k - 1) + 1
    if g.padding == "same":
        out = math.ceil(in_size / s)
        pad_before = max((out - 1) * s + k_eff - in_size, 0) // 2
    else:
        pad_before = 0
    return r + (k_eff - 1) * j, j * s, o + ((k_eff - 1) / 2 - pad_before) * j


def grid_cell(input_hw: tuple[int, int], layer_hw: tuple[int, int], note: str) -> ReceptiveField:
    """The fallback: each position stands for its cell of the grid (input size / layer size)."""
    stride = (input_hw[0] / layer_hw[0], input_hw[1] / layer_hw[1])
    return ReceptiveField(size=stride, stride=stride, offset=(stride[0] / 2, stride[1] / 2), exact=False, note=note)


def receptive_fields(nodes: list[LayerNode], input_hw: tuple[int, int]) -> dict[str, ReceptiveField]:
    """The receptive field of every layer with a spatial output, by qualified name."""
    start = ReceptiveField(size=(1.0, 1.0), stride=(1.0, 1.0), offset=(0.5, 0.5), exact=True)
    fields: dict[str, ReceptiveField] = {"": start}
    problems: dict[str, str] = {}  # layer -> why its field is undefined

    def resolve(name: str) -> ReceptiveField | None:
        return fields.get(name)

    for node in nodes:
        if len(node.output_shape) != 4:
            continue
        if node.geometry.op == "input":
            fields[node.name] = start
            continue
        if node.geometry.op == "model":
            inner = fields.get(node.alias_of)
            if inner is not None:
                fields[node.name] = inner
            else:
                problems[node.name] = problems.get(node.alias_of, "its output layer has no receptive field")
            continue
        sources = [resolve(name) for name in node.inputs]
        missing = [name for name, rf in zip(node.inputs, sources) if rf is None]
        if missing or not sources:
            problems[node.name] = problems.get(missing[0], "its input has no receptive field") if missing else "no input"
            continue
        if node.geometry.op == "pointwise":
            if len({rf.stride for rf in sources}) > 1:
                problems[node.name] = f"{node.type} merges branches with different strides"
                continue
            lo = [min(rf.offset[a] - rf.size[a] / 2 for rf in sources) for a in (0, 1)]
            hi = [max(rf.offset[a] + rf.size[a] / 2 for rf in sources) for a in (0, 1)]
            fields[node.name] = ReceptiveField(
                size=(hi[0] - lo[0], hi[1] - lo[1]),
                stride=sources[0].stride,
                offset=((lo[0] + hi[0]) / 2, (lo[1] + hi[1]) / 2),
                exact=True,
            )
            continue
        if node.geometry.op in ("window", "pad", "crop") and len(sources) == 1:
            src = sources[0]
            in_shape = node.input_shapes[0]
            per_axis = [_axis(src.size[a], src.stride[a], src.offset[a], node, a, int(in_shape[1 + a])) for a in (0, 1)]
            fields[node.name] = ReceptiveField(
                size=(per_axis[0][0], per_axis[1][0]),
                stride=(per_axis[0][1], per_axis[1][1]),
                offset=(per_axis[0][2], per_axis[1][2]),
                exact=True,
            )
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
            result[node.name] = rf
    return result
