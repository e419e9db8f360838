"""Streaming statistics on small per-batch arrays: unit histograms and classification metrics.

They see per-image numbers only (a unit's maximum, a prediction), never activation maps, and
their memory does not grow with the dataset. Pure numpy.
"""

from __future__ import annotations

import math

import numpy as np

from reportgen.report import Histogram, Metrics

HISTOGRAM_BINS = 32  # a power of two, so that doubling the range merges bins exactly


class StreamingHistograms:
    """One histogram per unit of the per-image maxima, with a range that grows by doubling.

    Each unit counts values <= 0 apart, and splits (0, hi] into HISTOGRAM_BINS equal bins, where
    hi is a power of two above the largest value seen. When a larger value arrives, hi doubles
    (as often as needed) and pairs of bins merge, so counts stay exact for the final bins.
    """

    def __init__(self, units: int) -> None:
        self.counts = np.zeros((units, HISTOGRAM_BINS), dtype=np.int64)
        self.hi = np.zeros(units, dtype=np.float64)  # 0: nothing positive seen yet
        self.nonpositive = np.zeros(units, dtype=np.int64)
        self._offsets = np.arange(units, dtype=np.intp) * HISTOGRAM_BINS  # unit u's bins in the flat counts

    def update(self, values: np.ndarray) -> None:
        """values: [batch, units] per-image maxima. Whole-array operations only, no masks: with 20k
        units a batch is hundreds of thousands of values, and the pass runs this beside every step,
        in a thread that competes with it for the cores."""
        values = np.asarray(values)
        if values.dtype != np.float32:
            values = values.astype(np.float64)
        if not values.size:
            return
        nonpositive = values.shape[0] - np.count_nonzero(values > 0, axis=0)  # NaN compares False: non-positive
        self.nonpositive += nonpositive
        self._grow(np.fmax.reduce(values, axis=0).astype(np.float64))  # NaN ignored
        # hi is a power of two, so x * (BINS / hi) is x / hi * BINS exactly, also in float32 (the
        # pass's maxima; half the memory traffic) while BINS / hi is a float32 number. Every
        # non-positive value (NaN, -inf, 0) lands in bin 0 and is taken out of it after the count;
        # +inf in the last bin.
        scale = HISTOGRAM_BINS / np.where(self.hi > 0, self.hi, 1.0)
        if values.dtype == np.float32 and scale.max() <= 2.0**100:
            scale = scale.astype(np.float32)
        with np.errstate(invalid="ignore", over="ignore"):
            bins = values * scale
        np.floor(bins, out=bins)
        np.fmax(bins, 0, out=bins)
        np.minimum(bins, HISTOGRAM_BINS - 1, out=bins)
        flat = bins.astype(np.intp)
        flat += self._offsets
        # in place: a bincount over every unit's bins allocates and adds an array of units x BINS per
        # batch (ResNet50: 23 MB, more than the batch's values)
        np.add.at(self.counts.reshape(-1), flat.reshape(-1), 1)
        self.counts[:, 0] -= nonpositive

    def _grow(self, peak: np.ndarray) -> None:
        """Raise hi to the power of two strictly above each unit's peak where it reached hi, merging
        pairs of bins once per doubling (at most all of them into the first)."""
        grow = np.nonzero((peak >= self.hi) & (peak > 0) & np.isfinite(peak))[0]
        if not grow.size:
            return
        new_hi = np.exp2(np.floor(np.log2(peak[grow])) + 1)  # strictly above peak
        old = self.hi[grow]
        self.hi[grow] = new_hi
        seen = old > 0  # units with nothing positive before just take the new range
        doublings = np.rint(np.log2(new_hi[seen] / old[seen])).astype(np.int64)
        for d in np.unique(doublings[doublings > 0]):
            group = 2 ** min(int(d), int(math.log2(HISTOGRAM_BINS)))
            rows = grow[seen][doublings == d]
            merged = self.counts[rows].reshape(len(rows), -1, group).sum(axis=2)
            self.counts[rows] = 0
            self.counts[rows, : merged.shape[1]] = merged

    def result(self, unit: int) -> Histogram:
        return Histogram(
            nonpositive=int(self.nonpositive[unit]),
            hi=float(self.hi[unit]),
            counts=[int(c) for c in self.counts[unit]],
        )


def classification_mode(num_outputs: int, num_classes: int) -> tuple[str, str]:
    """How predictions map to the dataset's classes: ("binary" | "categorical" | "none", note)."""
    if num_classes == 0:
        return "none", "the dataset is a flat folder with no class folders, so there are no labels to score against"
    if num_outputs == 0:
        return "none", "the model does not end in a single (batch, classes) output, so accuracy is not defined"
    if num_outputs == 1 and num_classes == 2:
        return "binary", ""
    if num_outputs == num_classes and num_outputs > 1:
        return "categorical", ""
    return "none", (
        f"the model has {num_outputs} output unit{'s' if num_outputs != 1 else ''} but the dataset has "
        f"{num_classes} class folder{'s' if num_classes != 1 else ''}, so accuracy is not computed"
    )


def predicted_classes(scores: np.ndarray, mode: str, logits: bool = False) -> np.ndarray:
    """Binary: a probability > 0.5 (as Keras's BinaryAccuracy), or a logit > 0, is class 1; otherwise the argmax."""
    if mode == "binary":
        return (scores[:, 0] > (0.0 if logits else 0.5)).astype(np.int64)
    return np.argmax(scores, axis=1).astype(np.int64)


def as_probabilities(scores: np.ndarray, logits: bool) -> np.ndarray:
    """Scores as shown: probabilities as they are; logits through sigmoid (one output) or softmax (several)."""
    scores = np.asarray(scores, dtype=np.float64)
    if not logits:
        return scores
    if scores.shape[-1] == 1:
        return 1.0 / (1.0 + np.exp(-scores))
    shifted = np.exp(scores - scores.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


class ConfusionCounter:
    def __init__(self, num_classes: int) -> None:
        self.matrix = np.zeros((num_classes, num_classes), dtype=np.int64)

    def update(self, labels: np.ndarray, predicted: np.ndarray) -> None:
        np.add.at(self.matrix, (labels, predicted), 1)

    def metrics(self, classes: list[str], mode: str, note: str, loss: float | None) -> Metrics:
        m = self.matrix
        total = int(m.sum())
        per_class = {
            name: (float(m[i, i] / m[i].sum()) if m[i].sum() else None) for i, name in enumerate(classes)
        }
        return Metrics(
            accuracy=float(np.trace(m) / total) if total else None,
            loss=loss,
            per_class=per_class,
            confusion=m.tolist(),
            note=note if total else (note or "no labelled image could be read"),
            evaluated=total,
            mode=mode,
        )


def prediction_text(scores: np.ndarray, classes: list[str], mode: str, logits: bool = False) -> str:
    """The chosen image's prediction in words, e.g. 'dogs (output 0.931)' or 'dogs (sigmoid 0.931, logit 2.6)'."""
    raw = np.asarray(scores, dtype=np.float64).ravel()
    scores = as_probabilities(raw[None, :], logits)[0]
    if scores.size == 1:
        p = float(scores[0])
        shown = f"sigmoid {p:.3f}, logit {raw[0]:.3g}" if logits else f"output {p:.3f}"
        if mode == "binary":
            return f"{classes[int(raw[0] > (0.0 if logits else 0.5))]} ({shown})"
        return shown
    best = int(np.argmax(scores))
    name = classes[best] if mode == "categorical" else f"output {best}"
    return f"{name} ({'softmax ' if logits else ''}{float(scores[best]):.3f})"


TOP = 5  # classes kept per image (top-5 accuracy)


def score_images(labels: np.ndarray, raw: np.ndarray, mode: str, logits: bool, classes: int) -> dict[str, np.ndarray]:
    """A batch's predictions, per image: predicted class, its probability, the true class's
    probability, the t = min(TOP, classes) most probable classes and their probabilities, and the
    true class's rank. O(images x TOP), never images x classes once the batch is done."""
    probs = as_probabilities(raw, logits)
    if mode == "binary":  # one sigmoid output: class 1 has p, class 0 has 1 - p
        probs = np.concatenate([1.0 - probs, probs], axis=1)
    predicted = predicted_classes(raw, mode, logits)
    t = min(TOP, classes)
    order = np.argsort(-probs, axis=1, kind="stable")[:, :t]
    rows = np.arange(len(labels))
    true = probs[rows, np.maximum(labels, 0)]
    return {
        "predicted": predicted,
        "confidence": probs[rows, predicted].astype(np.float32),
        "true_score": np.where(labels >= 0, true, 0.0).astype(np.float32),
        "top": order.astype(np.int32),
        "top_scores": np.take_along_axis(probs, order, axis=1).astype(np.float32),
        # classes scored strictly above the true one: in the top k when below k, ties counting as in
        # (as tf.math.in_top_k and Keras's TopKCategoricalAccuracy)
        "true_rank": np.where(labels >= 0, (probs > true[:, None]).sum(axis=1), -1).astype(np.int32),
    }


def top_k_accuracy(predictions, classes: int, k: int = TOP) -> tuple[float | None, list[float | None]]:
    """Top-k accuracy over every labelled image read, and per class (None where it has no image)."""
    labelled = predictions.read & (predictions.labels >= 0)
    hits = predictions.true_rank[labelled] < k
    labels = predictions.labels[labelled]
    overall = float(hits.mean()) if hits.size else None
    counts = np.bincount(labels, minlength=classes)
    per_class = np.bincount(labels, weights=hits.astype(np.float64), minlength=classes)
    return overall, [float(per_class[c] / counts[c]) if counts[c] else None for c in range(classes)]
