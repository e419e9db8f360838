"""Grad-CAM (Selvaraju et al. 2017), in the graph of whatever runs the model: the pass, the chosen
images' forward, or a second read of a few images (explain.CamStep).

Of image x for class c at layer A (the last layer with a map larger than 1 x 1, or --cam-layer):
with z_c the class's logit (the output before its sigmoid/softmax; for one sigmoid output, z for
class 1 and -z for class 0), weights w_k = mean over positions of dz_c/dA_k, and
cam = ReLU(sum_k w_k A_k), at the layer's resolution. The gradient runs from the logits back to A
only: in the pass it costs about the model's head, not a second forward pass.

The pages of mistakes show each image's maps for (its predicted class, its true class). The pass
computes them for every image as it goes by and keeps those some gallery may still show
(`gallery_images`: a gallery is the first few of a fixed order, so an image outside it over some of
the images stays outside over all of them), so the pages need no second read of the dataset.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np

from reportgen.errors import UserError
from reportgen.model import TracedModel
from reportgen.model.tf import keras, tf
from reportgen.report import LayerNode, Predictions


def cam_layer(traced: TracedModel, name: str | None = None) -> LayerNode:
    """The layer Grad-CAM reads: --cam-layer, or the last layer with a map larger than 1 x 1."""
    layers = traced.all_map_layers
    if name is not None:
        for node in layers:
            if node.name == name:
                return node
        shown = ", ".join(n.name for n in layers[-12:])
        raise UserError(f"--cam-layer {name!r}: no layer with feature maps is called that (the last ones are: {shown})")
    for node in reversed(layers):
        if node.spatial[0] * node.spatial[1] > 1:
            return node
    raise UserError("the model has no layer with a map larger than 1 x 1 for class activation maps; name one with --cam-layer")


@dataclass(frozen=True)
class CamRequest:
    """Grad-CAMs of every image the pass reads, for (its predicted class, its true class), at `layer`;
    kept for the images a gallery of at most `cap` images per confusion cell may show, and for `keep`
    (the chosen images' dataset indices: the index page shows their maps)."""

    layer: str
    binary: bool  # one sigmoid output: two classes
    logits: bool  # the model's output is logits (class 1 where it is > 0, not > 0.5)
    cap: int
    keep: frozenset = frozenset()


def class_scores(logits, classes, binary: bool):
    """z_c per image: logits [b, n], classes [b] -> [b]; one sigmoid output: z for class 1, -z for class 0."""
    if binary:
        z = logits[:, 0]
        return tf.where(classes == 1, z, -z)
    return tf.gather(logits, classes, batch_dims=1)


def cam_scores(logits, classes, binary: bool) -> list:
    """What grad_cams differentiates, computed where a tape records it: the sum over the batch of
    each image's score for classes[:, 0] and for classes[:, 1] (images are independent, so the
    gradient of a sum keeps them apart). One sigmoid output: the sum of z alone, as the two scores
    are z and -z per image."""
    if binary:
        return [tf.reduce_sum(logits[:, 0])]
    return [tf.reduce_sum(class_scores(logits, classes[:, j], binary)) for j in range(2)]


def grad_cams(scores, classes, maps, tape=None):
    """[b, 2, h, w]: each image's Grad-CAMs for classes[:, 0] and classes[:, 1], from cam_scores. For
    one sigmoid output, one gradient (of z) gives both classes' weights, negated for class 0
    (exactly: negation commutes with every rounding of the backward pass): half the backward pass.

    In a graph, tf.gradients adds the backward ops between the map and the scores only; a tape
    (needed when eager) would add them for the whole recorded forward, doubling the ops to trace."""

    def weights(score):  # [b, k]
        grads = tape.gradient(score, maps) if tape is not None else tf.gradients(score, maps)[0]
        return tf.reduce_mean(grads, axis=[1, 2])

    if len(scores) == 1:
        w = weights(scores[0])
        signs = tf.where(classes == 1, tf.constant(1, w.dtype), tf.constant(-1, w.dtype))  # [b, 2]
        per_class = [w * signs[:, j : j + 1] for j in range(2)]
    else:
        per_class = [weights(score) for score in scores]
    return tf.stack([tf.nn.relu(tf.einsum("bhwk,bk->bhw", maps, w)) for w in per_class], axis=1)


def cam_model(traced: TracedModel, request: CamRequest, layers: list | None = None):
    """The tap model (or one with the maps of `layers` only) with two more outputs: the logits and
    the cam layer's map."""
    return keras.Model(traced.input, [*traced.outputs_of(layers), traced.logits, traced.tensors[request.layer]], name="reportgen_tap_cams")


def run_with_cams(model, x, labels, request: CamRequest):
    """In a graph, for a model made by cam_model: the tap model's outputs, the Grad-CAMs [b, 2, h, w]
    of each image's (predicted class, true class; the predicted one where labels is -1), and those
    classes [b, 2] as found here (stats.predicted_classes' rule; the host checks them)."""
    eager = tf.executing_eagerly()
    tape = tf.GradientTape(persistent=True) if eager else contextlib.nullcontext()
    with tape:
        outs = model(x, training=False)
        preds, logits, maps = outs[0], outs[-2], outs[-1]
        if request.binary:
            predicted = tf.cast(preds[:, 0] > (0.0 if request.logits else 0.5), tf.int32)
        else:
            predicted = tf.argmax(preds, axis=1, output_type=tf.int32)
        classes = tf.stack([predicted, tf.where(labels >= 0, labels, predicted)], axis=1)
        scores = cam_scores(logits, classes, request.binary)
    cams = grad_cams(scores, classes, maps, tape if eager else None)
    return outs[:-2], cams, classes


def quantise_cams(cams: np.ndarray) -> np.ndarray:
    """[..., 2, h, w] float -> uint8, each map scaled to its own maximum (255)."""
    flat = cams.reshape(*cams.shape[:-2], -1)
    top = flat.max(axis=-1)[..., None, None]
    scaled = np.where(top > 0, cams / np.where(top > 0, top, 1), 0.0)
    return np.round(np.clip(scaled, 0, 1) * 255).astype(np.uint8)


def gallery_images(columns: dict[str, np.ndarray], classes: int, cap: int) -> np.ndarray:
    """The images (dataset indices) some gallery of mistakes shows, over the images of `columns`
    (per-image arrays as the pass keeps them: images, labels, predicted, confidence, true_score)."""
    from reportgen.mistakes import select_galleries

    order = np.argsort(columns["images"], kind="stable")  # ties go to the earlier image: positions in dataset order
    images, labels, predicted, confidence, true_score = (columns[name][order] for name in ("images", "labels", "predicted", "confidence", "true_score"))
    predictions = Predictions(read=np.ones(len(images), bool), labels=labels, predicted=predicted, confidence=confidence,
                              true_score=true_score, top=None, top_scores=None)
    at = np.array(sorted(select_galleries(predictions, classes, cap).shown()), np.int64)
    return images[at] if len(at) else np.zeros(0, np.int64)
