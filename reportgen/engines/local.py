"""The pass over the dataset in this process: batches decoded in a thread pool, the mining step
(mining.py) in one graph per batch, and the host-side statistics of one batch overlapping the next.

Everything the site needs comes out of this one read of the dataset: metrics, histograms, every
unit's top K with heatmaps, and a thumbnail of every image in some top K (encoded as it goes by).
"""

from __future__ import annotations

import concurrent.futures
import logging

import numpy as np
from tqdm import tqdm

from reportgen.dataset import Dataset, Skipped, iter_batches
from reportgen.engines.mining import DEFAULT_PREPROCESSING, HeatStore, MiningStep, PerImageLoss, Probe, _input
from reportgen.errors import UserError
from reportgen.images import make_thumbnail
from reportgen.model import TracedModel
from reportgen.model.preprocess import Preprocessing, resizer
from reportgen.model.tf import tf
from reportgen.report import LayerUnits, Metrics, ProbeResult, ScanResult, Thumbnail, TopEntry
from reportgen.stats import (
    TOP,
    ConfusionCounter,
    PredictionStore,
    StreamingHistograms,
    classification_mode,
    predicted_classes,
    top_k_accuracy,
)

log = logging.getLogger("reportgen")

PRUNE_EVERY = 8  # batches: heatmaps and thumbnails of images that left every top K are dropped this often


def _progress(total: int, desc: str, quiet: bool):
    return tqdm(total=total, desc=desc, unit="img", disable=quiet, leave=False, dynamic_ncols=True)


def scan_dataset(
    traced: TracedModel,
    dataset: Dataset,
    *,
    top_k: int = 16,
    batch_size: int = 32,
    preprocessing: Preprocessing | None = None,
    probes: list[Probe] | None = None,
    heat_side: int | None = None,
    quiet: bool = False,
    decoded=None,
    miner: MiningStep | None = None,
) -> ScanResult:
    """The one pass over the dataset: metrics, histograms, every unit's top K, heatmaps and thumbnails.

    decoded: already decoded batches (dataset.Batch) to use instead of reading the files (the
    training callback keeps its probe images in memory); miner: a MiningStep to reuse (its graph is
    traced once)."""
    probes = probes or []
    preprocessing = preprocessing or DEFAULT_PREPROCESSING
    layers = traced.map_layers
    histograms = StreamingHistograms(sum(node.channels for node in layers))
    mode, note = classification_mode(traced.info.num_outputs, len(dataset.classes))
    confusion = ConfusionCounter(len(dataset.classes)) if mode != "none" else None
    logits = bool(traced.info.head and traced.info.head.logits)
    predictions = PredictionStore(len(dataset.records), len(dataset.classes), mode, logits) if confusion is not None else None
    labels = np.array([-1 if r.label is None else r.label for r in dataset.records], dtype=np.int64)
    per_image_loss = PerImageLoss(traced.loss, mode, traced.info.num_outputs, labels)
    if miner is None:
        miner = MiningStep(traced, top_k, probes, preprocessing, batch_size, per_image_loss, side=heat_side)
    else:
        miner.loss = per_image_loss
    state = miner.initial_state()
    heat = HeatStore(len(dataset.records), miner.tile)
    loss_sum = [0.0, 0]  # the loss over labelled images, and their count
    thumbnails: dict[int, Thumbnail] = {}
    skipped: list[Skipped] = []

    def update_stats(preds, maxima, losses, entered, fresh, indices, pixels) -> None:
        histograms.update(maxima.numpy())
        heat.add(*(t.numpy() for t in fresh))
        for b in np.nonzero(entered.numpy()[: len(indices)])[0]:
            # encoded at once: a large dataset's gallery images would not fit in memory as pixels
            thumbnails[int(indices[b])] = make_thumbnail(pixels[b])
        if confusion is not None:
            batch_labels = labels[indices]
            raw = preds.numpy()
            confusion.update(batch_labels, predicted_classes(raw, mode, logits))
            predictions.update(indices, batch_labels, raw)
            loss_sum[0] += float(np.sum(losses.numpy(), dtype=np.float64))
            loss_sum[1] += len(indices)

    seen = batches = 0
    size = batch_size  # halved on an out-of-memory error, for the rest of the pass

    def run(pixels, ids):
        """One step; on an out-of-memory error, a step half the size (traced anew) over the same images,
        in the same order, so the result is the one a smaller batch from the start gives."""
        nonlocal miner, size, state
        while True:
            n = len(ids)
            if n < size:  # pad a short batch: the step keeps one shape and is traced once
                pixels = np.concatenate([pixels, np.zeros((size - n, *pixels.shape[1:]), pixels.dtype)])
                ids = np.concatenate([ids, np.full(size - n, -1, ids.dtype)])
            try:
                out = miner.step(tf.constant(pixels), tf.constant(ids, tf.int32), state)
            except (tf.errors.ResourceExhaustedError, MemoryError) as exc:
                if size == 1:
                    raise UserError(f"out of memory even with a batch of 1 image ({type(exc).__name__}); the model does not fit in this machine's memory") from None
                size //= 2
                log.warning("out of memory with batches of %d images: going on with batches of %d", size * 2, size)
                miner = MiningStep(traced, top_k, probes, preprocessing, size, per_image_loss, side=miner.side)
                return [r for chunk in range(0, n, size) for r in run(pixels[chunk : min(chunk + size, n)], ids[chunk : min(chunk + size, n)])]
            state = out[-1]
            return [(out, n)]

    # The host-side statistics of one batch run in a helper thread while the graph runs the next
    # (TensorFlow releases the GIL); one thread, so batches are counted in order.
    with _progress(len(dataset.records), "scanning dataset", quiet) as bar, concurrent.futures.ThreadPoolExecutor(1) as stats:
        pending = None
        source = decoded if decoded is not None else iter_batches(dataset.records, traced.spec, batch_size, skipped, resizer=resizer(traced.spec))
        for batch in source:
            for start in range(0, len(batch.indices), size):
                part_ids = batch.indices[start : start + size]
                part_pixels = batch.pixels[start : start + size]
                done = 0
                for (preds, maxima, losses, entered, fresh, _), n in run(part_pixels, part_ids):
                    if pending is not None:
                        pending.result()
                    pending = stats.submit(update_stats, preds[:n], maxima[:n], losses[:n], entered, fresh,
                                           part_ids[done : done + n], part_pixels[done : done + n])
                    done += n
                    seen += n
                    batches += 1
                    if batches % PRUNE_EVERY == 0:
                        pending.result()
                        current = state[1].numpy()
                        _keep_only(thumbnails, current)
                        heat.keep(current[: miner.units])
            bar.update(seen + len(skipped) - bar.n)
        if pending is not None:
            pending.result()
    if seen == 0:
        first = skipped[0]
        raise UserError(f"{dataset.root}: none of its {len(dataset.records)} image files could be read ({first.path}: {first.reason}, ...)")

    vals, ids, pos = (t.numpy() for t in state)
    _keep_only(thumbnails, ids)
    tiles = miner.to_layer_order(heat.lookup(ids[: miner.units]))
    end = miner.units
    probe_rows = vals[end:], ids[end:], pos[end:]
    vals, ids, pos = (miner.to_layer_order(a) for a in (vals, ids, pos))
    counts, hi_, nonpositive = (miner.to_layer_order(a) for a in (histograms.counts, histograms.hi, histograms.nonpositive))
    units: dict[str, LayerUnits] = {}
    for li, node in enumerate(layers):
        lo, hi = miner.offsets[li], miner.offsets[li + 1]  # layer order
        hs, ws = miner.heat_shapes[li]
        units[node.name] = _layer_units(node, vals[lo:hi], ids[lo:hi], pos[lo:hi], tiles[lo:hi, :, : hs * ws], (hs, ws),
                                        (counts[lo:hi], hi_[lo:hi], nonpositive[lo:hi]))
    widths = {node.name: node.spatial[1] for node in layers}
    probe_results = [
        ProbeResult(p.layer, p.row, p.col, p.channel, _entries(probe_rows[0][i], probe_rows[1][i], probe_rows[2][i], widths[p.layer]))
        for i, p in enumerate(probes)
    ]

    if confusion is not None:
        loss = None
        if per_image_loss.enabled and loss_sum[1]:
            regularization = float(sum(float(x) for x in traced.model.losses)) if traced.model.losses else 0.0
            loss = loss_sum[0] / loss_sum[1] + regularization  # as model.evaluate: regularisation added to each batch's loss
        metrics = confusion.metrics(dataset.classes, mode, note, loss)
        if len(dataset.classes) > TOP and predictions is not None:
            metrics.top5, per_class = top_k_accuracy(predictions, len(dataset.classes))
            metrics.per_class_top5 = dict(zip(dataset.classes, per_class))
    else:
        metrics = Metrics(accuracy=None, loss=None, per_class={}, confusion=None, note=note, evaluated=0, mode=mode)
    return ScanResult(units=units, probes=probe_results, metrics=metrics, num_images=seen, skipped=skipped,
                      thumbnails=thumbnails, heat_side=miner.side, predictions=predictions.result() if predictions else None)


def _keep_only(thumbnails: dict, ids: np.ndarray) -> None:
    wanted = set(np.unique(ids[ids >= 0]).tolist())
    for image in [i for i in thumbnails if i not in wanted]:
        del thumbnails[image]


def _layer_units(node, vals, ids, pos, heat, shape, histogram) -> LayerUnits:
    """One layer's arrays; heatmaps rescaled from each entry's own score to the unit's top score."""
    width = node.spatial[1]
    top = vals[:, :1]
    ratio = np.where((top > 0) & (vals > 0), vals / np.where(top > 0, top, 1), 0.0)
    levels = np.round(heat.astype(np.float32) * ratio[:, :, None]).astype(np.uint8)
    channels = node.channels
    return LayerUnits(
        layer=node.name,
        values=vals.astype(np.float32),
        images=ids.astype(np.int64),
        rows=(pos // width).astype(np.int32),
        cols=(pos % width).astype(np.int32),
        heat=levels.reshape(channels, vals.shape[1], *shape),
        hist_counts=histogram[0].copy(),
        hist_hi=histogram[1].copy(),
        hist_nonpositive=histogram[2].copy(),
    )


def _entries(vals: np.ndarray, ids: np.ndarray, pos: np.ndarray, width: int) -> list[TopEntry]:
    return [
        TopEntry(image=int(i), value=float(v), row=int(p) // width, col=int(p) % width)
        for v, i, p in zip(vals, ids, pos)
        if i >= 0
    ]


def run_images(traced: TracedModel, pixels: np.ndarray, preprocessing: Preprocessing | None = None) -> tuple[np.ndarray, list[np.ndarray]]:
    """Full outputs for a few images: (scores [n, outputs], one [n, h, w, c] array per map layer).

    In graph mode, as the pass runs the model: some models run eagerly but not in a graph
    (TensorFlow refuses layer names it cannot use as scope names), and this is where they fail.
    """
    preprocessing = preprocessing or DEFAULT_PREPROCESSING
    outs = tf.function(lambda x: traced.tap(_input(x, preprocessing), training=False), autograph=False)(tf.constant(pixels))
    return np.asarray(outs[0]), [np.asarray(a) for a in outs[1:]]
