"""Layers whose units rank images exactly as their input layer's units do.

A layer that applies a non-decreasing function to each channel of its input's map, position by
position (BatchNormalization with positive scales, ReLU, ReLU6, LeakyReLU, a linear activation),
keeps every unit's ranking of images: the maximum over positions of f(x) is f(the maximum of x),
and rounding keeps a non-decreasing function non-decreasing. Along a chain such as
Conv2D -> BatchNormalization -> ReLU, the pass (engines/mining.py) reduces only the chain's first
map (most of a ResNet's or MobileNet's layers are in such chains); the other layers' units get the
same top K images, in the same order (images an activation ties, e.g. at ReLU's 0, stay in the
first layer's order), positions and heatmaps, with their own scores: f applied to the first
layer's, by the layers themselves. Decided from the weights as they are now (a trained
BatchNormalization can have a negative scale: that layer's units are then reduced on their own).
"""

from __future__ import annotations

import numpy as np

from reportgen.model.tf import keras, tf

# Activations that are non-decreasing and computed exactly (max, min, multiplication by a
# non-negative constant): an approximated sigmoid or tanh may not be, at the last bit.
_ACTIVATIONS = {"relu", "relu6", "linear", "leaky_relu"}


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
        return getattr(layer.activation, "__name__", "") in _ACTIVATIONS
    return False


def ranked_as(traced) -> dict[str, str]:
    """Each map layer that ranks images as an earlier map layer does -> that layer (the first of its
    chain, which the pass reduces), in layer order. Both must be among the layers shown (--layers)."""
    shown = {node.name: node for node in traced.map_layers}
    first: dict[str, str] = {}
    for node in traced.map_layers:
        if len(node.inputs) != 1 or node.inputs[0] not in shown:
            continue
        source = shown[node.inputs[0]]
        if source.output_shape == node.output_shape and keeps_ranking(traced.layers[node.name]):
            first[node.name] = first.get(source.name, source.name)
    return first


def apply_chain(traced, name: str, values: dict, first: str):
    """`name`'s values from its chain's first layer's: `values` maps layer names to [n, 1, 1, c]
    tensors and holds `first`'s; the layers between are added to it (so chains sharing a start
    compute it once). Runs the layers themselves (eagerly or in a graph)."""
    if name not in values:
        node = next(n for n in traced.map_layers if n.name == name) if name != first else None
        source = node.inputs[0]
        apply_chain(traced, source, values, first)
        values[name] = traced.layers[name](values[source], training=False)
    return values[name]


def derived_values(traced, chains: dict[str, str], name: str, first_values: np.ndarray) -> np.ndarray:
    """Eagerly, `name`'s scores from its first layer's: first_values [units, k] (-inf where empty)
    -> [units, k] float32, -inf where empty."""
    x = tf.constant(np.where(first_values == -np.inf, 0, first_values).T[:, None, None, :].astype(np.float32))
    out = np.asarray(apply_chain(traced, name, {chains[name]: x}, chains[name]))[:, 0, 0, :].T
    return np.where(first_values == -np.inf, -np.inf, out).astype(np.float32)
