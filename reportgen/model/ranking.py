"""Layers whose units rank images exactly as their input layer's units do.

A layer that applies a non-decreasing function to each channel of its input's map, position by
position (BatchNormalization with positive scales, ReLU, ReLU6, LeakyReLU, a linear activation),
keeps every unit's ranking of images: the maximum over positions of f(x) is f(the maximum of x),
and rounding keeps a non-decreasing function non-decreasing. So does a max-pool whose windows tile
its input (pool size = strides, every pixel in a window): its maximum is its input's. Along a
chain such as Conv2D -> BatchNormalization -> ReLU -> MaxPooling2D, the pass (engines/mining.py)
reduces only the chain's first map (most of a ResNet's or MobileNet's layers, and the pools of a
classic small CNN, are in such chains); the other layers' units get the same top K images, in the
same order (images an activation ties, e.g. at ReLU's 0, stay in the first layer's order),
positions (in their own grid: a pool's cell holding the first layer's maximum) and heatmaps, with
their own scores: f applied to the first layer's, by the layers themselves. Decided from the
weights as they are now (a trained BatchNormalization can have a negative scale: that layer's
units are then reduced on their own).
"""

from __future__ import annotations

import numpy as np

from reportgen.model.tf import keras, tf

# Activations that are non-decreasing and computed exactly (max, min, multiplication by a
# non-negative constant): an approximated sigmoid or tanh may not be, at the last bit.
_ACTIVATIONS = ("relu", "relu6", "linear", "leaky_relu")


def keeps_ranking(layer) -> bool:
    """Whether `layer` applies a non-decreasing function to each channel, position by position."""
    kind = type(layer)  # a subclass may compute something else
    if kind is keras.layers.BatchNormalization:
        axis = layer.axis if isinstance(layer.axis, int) else (layer.axis[0] if len(layer.axis) == 1 else None)
        if axis not in (-1, 3):
            return False
        variance = np.asarray(layer.moving_variance.numpy(), np.float64) + float(layer.epsilon)
        scale = np.asarray(layer.gamma.numpy(), np.float64) if layer.scale else np.ones_like(variance)
        return bool(np.all(np.isfinite(scale) & (scale > 0) & np.isfinite(variance) & (variance > 0)))
    if kind is keras.layers.ReLU:
        return float(layer.negative_slope) >= 0 and float(layer.threshold) == 0 and (layer.max_value is None or float(layer.max_value) > 0)
    if kind is keras.layers.LeakyReLU:
        return float(layer.negative_slope) >= 0
    if kind is keras.layers.Activation:
        return any(layer.activation is getattr(keras.activations, name) for name in _ACTIVATIONS)  # Keras's own, not a namesake
    return False


def tiles_input(layer, input_hw: tuple[int, int]) -> bool:
    """Whether `layer` is a max-pool whose windows tile its input: every pixel in exactly one window."""
    if type(layer) is not keras.layers.MaxPooling2D or layer.data_format != "channels_last":
        return False
    if tuple(layer.pool_size) != tuple(layer.strides):
        return False
    if layer.padding == "same":  # windows cover the padded map; the padding never wins a maximum
        return True
    return input_hw[0] % layer.pool_size[0] == 0 and input_hw[1] % layer.pool_size[1] == 0


def ranked_as(traced, keep=()) -> dict[str, str]:
    """Each map layer that ranks images as an earlier map layer does -> that layer (the first of its
    chain, which the pass reduces), in layer order. Both must be among the layers shown (--layers);
    the layers in `keep` are reduced themselves (a --unit probe reads its own layer's map)."""
    shown = {node.name: node for node in traced.map_layers}
    first: dict[str, str] = {}
    for node in traced.map_layers:
        if node.name in keep or len(node.inputs) != 1 or node.inputs[0] not in shown:
            continue
        source = shown[node.inputs[0]]
        layer = traced.layers[node.name]
        same = source.output_shape == node.output_shape and keeps_ranking(layer)
        if same or (source.channels == node.channels and tiles_input(layer, source.spatial)):
            first[node.name] = first.get(source.name, source.name)
    return first


def _chain(traced, name: str, first: str) -> list:
    """The nodes from `first` (excluded) to `name` (included)."""
    nodes = {n.name: n for n in traced.map_layers}
    chain = []
    while name != first:
        chain.append(nodes[name])
        name = nodes[name].inputs[0]
    return chain[::-1]


def apply_chain(traced, name: str, values: dict, first: str):
    """`name`'s per-image maxima from its chain's first layer's: `values` maps layer names to
    [n, 1, 1, c] tensors and holds `first`'s; the layers between are added to it (so chains sharing
    a start compute it once). Runs the layers themselves (eagerly or in a graph); a max-pool that
    tiles its input passes its input's maxima on."""
    for node in _chain(traced, name, first):
        if node.name not in values:
            layer, source = traced.layers[node.name], values[node.inputs[0]]
            values[node.name] = source if type(layer) is keras.layers.MaxPooling2D else layer(source, training=False)
    return values[name]


def derived_positions(traced, name: str, first: str, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions in `first`'s map -> the same positions in `name`'s: unchanged through the
    position-by-position layers, the window holding them through a max-pool (it holds the maximum)."""
    nodes = {n.name: n for n in traced.map_layers}
    for node in _chain(traced, name, first):
        layer = traced.layers[node.name]
        if type(layer) is keras.layers.MaxPooling2D:
            (h, w), (out_h, out_w), (sh, sw) = nodes[node.inputs[0]].spatial, node.spatial, layer.strides
            # TensorFlow's 'same' padding: the odd pixel after; none for 'valid' (windows tile the input)
            top, left = (out_h * sh - h) // 2, (out_w * sw - w) // 2
            rows, cols = (rows + top) // sh, (cols + left) // sw
    return rows, cols


def derived_values(traced, chains: dict[str, str], name: str, first_values: np.ndarray) -> np.ndarray:
    """Eagerly, `name`'s scores from its first layer's: first_values [units, k] (-inf where empty)
    -> [units, k] float32, -inf where empty."""
    x = tf.constant(np.where(first_values == -np.inf, 0, first_values).T[:, None, None, :].astype(np.float32))
    out = np.asarray(apply_chain(traced, name, {chains[name]: x}, chains[name]))[:, 0, 0, :].T
    return np.where(first_values == -np.inf, -np.inf, out).astype(np.float32)
