"""Why the model decides: class activation maps by a second read of a few images, and the relevance pass.

Grad-CAM (cams.py) normally comes out of the pass itself; CamStep computes it for given images and
classes: the chosen images or a shown image the pass did not keep a map of.

Relevance (as in concept relevance propagation, Achtibat et al. 2023): a unit's contribution to
the class the model predicts for x is the sum over positions of (dz_c/dA_u) * A_u. One extra pass
over the dataset (forward and backward) keeps every unit's top K by relevance (the same merge as
for activations: ties to the earlier image) and, per class, the sum of each unit's contributions
over the images predicted as that class.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from reportgen.dataset import Dataset, Skipped, iter_batches
from reportgen.engines.cams import cam_scores, class_scores, grad_cams
from reportgen.engines.local import _progress
from reportgen.engines.mining import _input, _merge_top_k, index_kind, pixel_dtype
from reportgen.errors import between_steps, check_interruption
from reportgen.model import TracedModel
from reportgen.model.preprocess import Preprocessing, resizer
from reportgen.model.tf import tf
from reportgen.report import LayerNode

log = logging.getLogger("reportgen")


class CamStep:
    """Grad-CAM for a batch and one or more target classes per image."""

    def __init__(self, traced: TracedModel, layer: LayerNode, preprocessing: Preprocessing, binary: bool) -> None:
        self.view = traced.model_of([layer.name], name="reportgen_cam")
        self.preprocessing = preprocessing
        self.binary = binary
        spec = traced.spec
        self.fn = tf.function(
            self._cams,
            input_signature=[tf.TensorSpec([None, spec.height, spec.width, spec.channels], pixel_dtype(traced)),
                             tf.TensorSpec([None, None], tf.int32)],
        )

    def _cams(self, pixels, classes):
        x = _input(pixels, self.preprocessing)
        logits, maps = self.view(x, training=False)
        return grad_cams(cam_scores(logits, classes, self.binary), classes, maps)  # [b, 2, h, w]

    def __call__(self, pixels: np.ndarray, classes: np.ndarray) -> np.ndarray:
        """float32 [n, 2, h, w]: the cams for classes[:, 0] and classes[:, 1] (give the same class twice for one)."""
        return self.fn(tf.constant(pixels), tf.constant(np.asarray(classes, np.int32))).numpy()


def class_activation_maps(traced: TracedModel, dataset: Dataset, images: list[int], targets: dict[int, tuple[int, int]],
                          step: CamStep, batch_size: int = 32):
    """Grad-CAMs and the decoded pixels of the listed dataset images (a second read of only those).

    targets: image -> (predicted class, true class); step: the CamStep to run (its graph, through the
    model's gradients, is costly to trace: one for every caller). Returns ({image: float32 [2, h, w]},
    {image: pixels}, skipped)."""
    cams, pixels, skipped = {}, {}, []
    records = [dataset.records[i] for i in sorted(images)]
    with between_steps():
        for batch in iter_batches(records, traced.spec, batch_size, skipped, resizer=resizer(traced.spec)):
            check_interruption()
            classes = np.array([targets[int(i)] for i in batch.indices], np.int32)
            result = step(batch.pixels, classes)
            for b, image in enumerate(batch.indices.tolist()):
                cams[image] = result[b]
                pixels[image] = batch.pixels[b]
    return cams, pixels, skipped


def read_pixels(traced: TracedModel, dataset: Dataset, images: list[int], batch_size: int = 32) -> dict[int, np.ndarray]:
    """The listed dataset images decoded as the pass decodes them (their thumbnails), no model run;
    unreadable ones left out."""
    pixels: dict[int, np.ndarray] = {}
    records = [dataset.records[i] for i in sorted(images)]
    with between_steps():
        for batch in iter_batches(records, traced.spec, batch_size, [], resizer=resizer(traced.spec)):
            check_interruption()
            pixels.update(zip(batch.indices.tolist(), batch.pixels))
    return pixels


# -- the relevance pass ---------------------------------------------------------------------------


def _gather_positions(a, positions):
    """a: [b, h, w, c] with a static shape; positions: [b, c, k] spatial positions (row * w + col)
    -> [b, c, k]: the values of map c of image b at those positions. One gather on the flat map."""
    b, h, w, c = a.shape
    kind = index_kind(a)
    base = np.arange(b)[:, None, None] * (h * w * c) + np.arange(c)[None, :, None]  # static [b, c, 1]
    return tf.gather(tf.reshape(a, [-1]), tf.cast(positions, kind) * c + tf.constant(base, kind))


def _spatial_max(a):
    """Per image and channel of a [batch, h, w, c] map (static shape): the maximum, and its first
    position in row-major order (row * w + col).

    On large maps an argmax over h*w is slow (it reads the map again, element by element). Instead:
    one max over each row (the only full read), the first row holding the maximum from that small
    [batch, h, c] tensor, then the first column holding it within that one row, gathered. Few
    ops: in this graph the number of small ops costs more than their arithmetic. (The activation
    pass finds positions for its candidate maps only: mining.MiningStep._candidates.)
    """
    b, h, w, c = a.shape
    if h * w <= 64:
        flat = tf.reshape(a, [b, h * w, c])
        return tf.reduce_max(flat, axis=1), tf.argmax(flat, axis=1, output_type=tf.int32)
    row_max = tf.reduce_max(a, axis=2)  # [b, h, c]
    row = tf.argmax(row_max, axis=1, output_type=tf.int32)  # [b, c]: first row with the maximum
    start = row * w
    in_row = _gather_positions(a, start[:, :, None] + tf.constant(np.arange(w, dtype=np.int32)))  # [b, c, w]
    return tf.reduce_max(row_max, axis=1), start + tf.argmax(in_row, axis=2, output_type=tf.int32)


@dataclass
class LayerRelevance:
    """One layer's units ranked by their contribution to the predicted class (rows: channels)."""

    layer: str
    values: np.ndarray  # float32 [channels, k]
    images: np.ndarray  # int64 [channels, k]
    rows: np.ndarray  # int32 [channels, k]: position of the largest contribution
    cols: np.ndarray
    by_class: np.ndarray  # float64 [channels, classes]: mean contribution over the images predicted as each class


class RelevanceStep:
    def __init__(self, traced: TracedModel, k: int, preprocessing: Preprocessing, batch_size: int, binary: bool,
                 predicted: np.ndarray, classes: int) -> None:
        self.layers = traced.map_layers
        self.view = traced.model_of([n.name for n in self.layers], name="reportgen_relevance")
        self.preprocessing = preprocessing
        self.binary = binary
        self.k = k
        self.classes = classes
        self.units = sum(n.channels for n in self.layers)
        self.predicted = tf.constant(np.maximum(predicted, 0).astype(np.int32))
        spec = traced.spec
        table = [tf.TensorSpec([self.units, k], dtype) for dtype in (tf.float32, tf.int32, tf.int32)]
        self.step = tf.function(
            self._step,
            input_signature=[tf.TensorSpec([batch_size, spec.height, spec.width, spec.channels], pixel_dtype(traced)),
                             tf.TensorSpec([batch_size], tf.int32), tuple(table), tf.TensorSpec([classes, self.units], tf.float64)],
        )

    def initial_state(self):
        table = (tf.fill([self.units, self.k], tf.constant(-np.inf, tf.float32)), tf.fill([self.units, self.k], -1),
                 tf.zeros([self.units, self.k], tf.int32))
        return table, tf.zeros([self.classes, self.units], tf.float64)

    def _step(self, pixels, ids, table, sums):
        x = _input(pixels, self.preprocessing)
        target = tf.gather(self.predicted, tf.maximum(ids, 0))
        with tf.GradientTape() as tape:
            outs = self.view(x, training=False)
            logits, maps = outs[0], outs[1:]
            score = tf.reduce_sum(class_scores(logits, target, self.binary))
        grads = tape.gradient(score, maps)
        totals, places = [], []
        for a, g in zip(maps, grads):
            contribution = tf.cast(a * g, tf.float32)  # float16 in a mixed-precision model
            totals.append(tf.reduce_sum(contribution, axis=[1, 2]))
            places.append(_spatial_max(contribution)[1])
        values = tf.concat(totals, axis=1)  # [b, units]
        valid = ids >= 0
        values = tf.where(valid[:, None] & tf.math.is_finite(values), values, tf.constant(-np.inf, values.dtype))
        table, *_ = _merge_top_k(*table, tf.transpose(values), ids, tf.transpose(tf.concat(places, axis=1)), self.k)
        finite = tf.where(tf.math.is_finite(values), tf.cast(values, tf.float64), tf.zeros_like(values, tf.float64))
        onehot = tf.one_hot(target, self.classes, dtype=tf.float64) * tf.cast(valid, tf.float64)[:, None]
        return table, sums + tf.matmul(onehot, finite, transpose_a=True)


def relevance_pass(traced: TracedModel, dataset: Dataset, predictions, *, top_k: int, batch_size: int,
                   preprocessing: Preprocessing, binary: bool, quiet: bool = False) -> dict[str, LayerRelevance]:
    """The extra pass of --relevance, over the images the first pass read and scored."""
    classes = len(dataset.classes)
    step = RelevanceStep(traced, top_k, preprocessing, batch_size, binary, predictions.predicted, classes)
    table, sums = step.initial_state()
    records = [r for r in dataset.records if predictions.read[r.index]]
    skipped: list[Skipped] = []
    with _progress(len(records), "relevance pass", quiet) as bar, between_steps():
        for batch in iter_batches(records, traced.spec, batch_size, skipped, resizer=resizer(traced.spec)):
            check_interruption()
            n = len(batch.indices)
            pixels, ids = batch.pixels, batch.indices
            if n < batch_size:
                pixels = np.concatenate([pixels, np.zeros((batch_size - n, *pixels.shape[1:]), pixels.dtype)])
                ids = np.concatenate([ids, np.full(batch_size - n, -1, ids.dtype)])
            table, sums = step.step(tf.constant(pixels), tf.constant(ids, tf.int32), table, sums)
            bar.update(n)
    vals, ids, pos = (t.numpy() for t in table)
    counts = np.bincount(predictions.predicted[predictions.read], minlength=classes).astype(np.float64)
    means = sums.numpy() / np.where(counts > 0, counts, 1)[:, None]  # [classes, units]
    out, offset = {}, 0
    for node in step.layers:
        c, w = node.channels, node.spatial[1]
        rows = slice(offset, offset + c)
        out[node.name] = LayerRelevance(node.name, vals[rows].astype(np.float32), ids[rows].astype(np.int64),
                                        (pos[rows] // w).astype(np.int32), (pos[rows] % w).astype(np.int32), means[:, rows].T.copy())
        offset += c
    return out
