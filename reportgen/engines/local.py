"""The pass over the dataset in this process: batches decoded in a thread pool, the mining step
(mining.py) in one graph per batch, and the host-side statistics of one batch overlapping the next.

Everything the site needs comes out of this one read of the dataset: metrics, histograms, every
unit's top K with heatmaps, and a thumbnail of every image in some top K (encoded as it goes by).
"""

from __future__ import annotations

import concurrent.futures
import logging
from collections.abc import Callable

import numpy as np
from tqdm import tqdm

from reportgen.dataset import Dataset, ImageRecord, Skipped, iter_batches
from reportgen.engines.cams import CamRequest, cam_model, gallery_images, quantise_cams, run_with_cams
from reportgen.engines.mining import DEFAULT_PREPROCESSING, HeatTable, MiningStep, PerImageLoss, Probe, _input
from reportgen.engines.partial import PartialScan, finish
from reportgen.errors import UserError, between_steps, check_interruption, model_fails
from reportgen.images import make_thumbnail
from reportgen.model import TracedModel
from reportgen.model.preprocess import Preprocessing, resizer
from reportgen.model.tf import tf
from reportgen.report import ScanResult, Thumbnail
from reportgen.stats import TOP, StreamingHistograms, classification_mode, score_images

log = logging.getLogger("reportgen")

PRUNE_EVERY = 8  # batches: thumbnails of images that left every top K are dropped this often
CAMS_KEPT = 4096  # Grad-CAMs held before those no gallery can show any more are dropped (then twice what stays)


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
    thumbnails: dict[int, Thumbnail] | None = None,
    cams: CamRequest | None = None,
    beside_first_step: Callable[[], None] | None = None,
) -> ScanResult:
    """The one pass over the dataset: metrics, histograms, every unit's top K, heatmaps and thumbnails.

    decoded: already decoded batches (dataset.Batch) to use instead of reading the files (the
    training callback keeps its probe images in memory); miner: a MiningStep to reuse (its graph is
    traced once); thumbnails: every image's thumbnail, already encoded (the pass then encodes none);
    cams: the Grad-CAMs to find for the pages of mistakes (cams.py); beside_first_step: see mine."""
    partial = mine(traced, dataset, top_k=top_k, batch_size=batch_size, preprocessing=preprocessing, probes=probes, heat_side=heat_side,
                   quiet=quiet, decoded=decoded, miner=miner, thumbnails=thumbnails, cams=cams, beside_first_step=beside_first_step)
    if partial.num_images == 0:
        first = partial.skipped[0][1]
        raise UserError(f"{dataset.root}: none of its {len(dataset.records)} image files could be read ({first.path}: {first.reason}, ...)")
    return finish(partial, traced, dataset.classes, probes or [])


def mine(
    traced: TracedModel,
    dataset: Dataset,
    records: list[ImageRecord] | None = None,
    *,
    top_k: int = 16,
    batch_size: int = 32,
    preprocessing: Preprocessing | None = None,
    probes: list[Probe] | None = None,
    heat_side: int | None = None,
    quiet: bool = False,
    decoded=None,
    miner: MiningStep | None = None,
    fingerprint: dict | None = None,
    decode_threads: int | None = None,
    thumbnails: dict[int, Thumbnail] | None = None,
    cams: CamRequest | None = None,
    beside_first_step: Callable[[], None] | None = None,
) -> PartialScan:
    """A pass over `records` (default: all the dataset's) as a mergeable summary (partial.py): the
    local engine passes over everything, a shard or a Ray task over a part, and the parts merge
    into exactly the one pass's result. Images are named by their index in the whole dataset.
    cams: also each image's Grad-CAMs, kept for the images some gallery of mistakes may show
    (ignored when the model's output is not scored against the dataset's classes).
    beside_first_step: a function the helper thread runs while the first step's graph is optimised
    (without the GIL, on one core), before that step's statistics; an exception it raises stops
    the pass after that step."""
    probes = probes or []
    preprocessing = preprocessing or DEFAULT_PREPROCESSING
    records = dataset.records if records is None else records
    layers = traced.map_layers
    histograms = StreamingHistograms(sum(node.channels for node in layers))
    mode, _ = classification_mode(traced.info.num_outputs, len(dataset.classes))
    logits = bool(traced.info.head and traced.info.head.logits)
    label_of = {r.index: -1 if r.label is None else r.label for r in records}
    if miner is not None and not miner.is_current():  # the weights changed (training): which layers rank alike too
        miner = MiningStep(traced, top_k, probes, preprocessing, batch_size, miner.loss, side=miner.side, cams=miner.cams)
    if miner is None:
        miner = MiningStep(traced, top_k, probes, preprocessing, batch_size, PerImageLoss(traced.loss, mode, traced.info.num_outputs),
                           side=heat_side, cams=cams if mode != "none" else None)
    state = miner.initial_state()
    heat = HeatTable(miner)
    per_image: list[dict] = []
    encode = thumbnails is None  # else the caller's, kept as they are
    thumbnails = {} if encode else dict(thumbnails)
    skipped: list[Skipped] = []
    kept_cams: dict[int, np.ndarray] = {}  # image -> uint8 [2, h, w]
    cams_limit = CAMS_KEPT

    def keep_shown_cams() -> None:
        """Drop the Grad-CAMs of the images no gallery shows over the images so far: adding images
        only pushes an image further down its galleries."""
        nonlocal cams_limit
        columns = {name: np.concatenate([p[name] for p in per_image]) for name in ("images", "labels", "predicted", "confidence", "true_score")}
        wanted = set(gallery_images(columns, len(dataset.classes), miner.cams.cap).tolist()) | miner.cams.keep
        for image in [i for i in kept_cams if i not in wanted]:
            del kept_cams[image]
        cams_limit = max(CAMS_KEPT, 2 * len(kept_cams))

    def update_stats(step, preds, maxima, losses, entered, fresh, found_cams, indices, batch_labels, pixels) -> None:
        histograms.update(step.with_derived_maxima(maxima.numpy()))
        rows, picked, levels = fresh
        heat.update(rows.numpy(), picked.numpy(), [t.numpy() for t in levels])
        for b in np.nonzero(entered.numpy()[: len(indices)])[0] if encode else ():
            # encoded at once: a large dataset's gallery images would not fit in memory as pixels
            thumbnails[int(indices[b])] = make_thumbnail(pixels[b])
        scores = {}
        if mode != "none":
            scores = score_images(batch_labels, preds.numpy(), mode, logits, len(dataset.classes))
        per_image.append({"images": indices.astype(np.int64), "labels": batch_labels.astype(np.int64),
                          "losses": losses.numpy().astype(np.float32) if miner.loss is not None and miner.loss.enabled else
                          np.full(len(indices), np.nan, np.float32), **scores})
        if found_cams:
            found, classes = (t.numpy()[: len(indices)] for t in found_cams)
            predicted = scores["predicted"]
            # kept where the graph's classes are the host's (an argmax tie or a NaN could part them:
            # such an image, if shown, gets its maps from a second read)
            agree = (classes == np.stack([predicted, np.where(batch_labels >= 0, batch_labels, predicted)], axis=1)).all(axis=1)
            levels = quantise_cams(found)
            for b in np.nonzero(agree)[0]:
                kept_cams[int(indices[b])] = levels[b]
            if len(kept_cams) > cams_limit:
                keep_shown_cams()

    seen = batches = 0
    size = batch_size  # halved on an out-of-memory error, for the rest of the pass
    started = False  # the first step ran: a model TensorFlow cannot run in a graph fails there
    beside = None  # beside_first_step, submitted

    def run(pixels, ids, labels):
        """One step; on an out-of-memory error, a step half the size (traced anew) over the same images,
        in the same order, so the result is the one a smaller batch from the start gives."""
        nonlocal miner, size, state, started, beside
        while True:
            n = len(ids)
            if n < size:  # pad a short batch: the step keeps one shape and is traced once
                pixels = np.concatenate([pixels, np.zeros((size - n, *pixels.shape[1:]), pixels.dtype)])
                ids = np.concatenate([ids, np.full(size - n, -1, ids.dtype)])
                labels = np.concatenate([labels, np.full(size - n, -1, labels.dtype)])
            try:
                if not started and (miner.derived_maxima is not None or (beside_first_step is not None and beside is None)):
                    # the step traced first (Python: the GIL), its first run (optimising and running
                    # the graph, without the GIL) leaves the helper thread time to trace the derived
                    # layers' maxima and run beside_first_step meanwhile
                    miner.trace()
                    if miner.derived_maxima is not None:
                        stats.submit(miner.derived_maxima.get_concrete_function)
                    if beside_first_step is not None and beside is None:
                        beside = stats.submit(beside_first_step)
                out = miner.step(tf.constant(pixels), tf.constant(ids, tf.int32), tf.constant(labels, tf.int32), state)
            except (tf.errors.ResourceExhaustedError, MemoryError) as exc:
                if size == 1:
                    raise UserError(f"out of memory even with a batch of 1 image ({type(exc).__name__}); the model does not fit in this machine's memory") from None
                size //= 2
                log.warning("out of memory with batches of %d images: going on with batches of %d", size * 2, size)
                miner = MiningStep(traced, top_k, probes, preprocessing, size, miner.loss, side=miner.side, cams=miner.cams)
                return [r for c in range(0, n, size) for r in run(pixels[c : min(c + size, n)], ids[c : min(c + size, n)], labels[c : min(c + size, n)])]
            except Exception as exc:
                if started:
                    raise
                raise model_fails(traced.info.path or traced.info.name, exc) from None
            started = True
            state = out[-1]
            return [(out, n)]

    # The host-side statistics of one batch run in a helper thread while the graph runs the next
    # (TensorFlow releases the GIL); one thread, so batches are counted in order.
    with _progress(len(records), "scanning dataset", quiet) as bar, concurrent.futures.ThreadPoolExecutor(1) as stats, between_steps():
        pending = None
        source = decoded if decoded is not None else iter_batches(records, traced.spec, batch_size, skipped, decode_threads, resizer(traced.spec))
        for batch in source:
            check_interruption()
            for start in range(0, len(batch.indices), size):
                part_ids = batch.indices[start : start + size]
                part_pixels = batch.pixels[start : start + size]
                part_labels = np.array([label_of.get(int(i), -1) for i in part_ids], dtype=np.int64)
                done = 0
                for (preds, maxima, losses, entered, fresh, found_cams, _), n in run(part_pixels, part_ids, part_labels):
                    if pending is not None:
                        pending.result()
                    if beside is not None:  # done by now, or nearly: its failure stops the pass here
                        beside.result()
                        beside = None
                    pending = stats.submit(update_stats, miner, preds[:n], maxima[:n], losses[:n], entered, fresh, found_cams,
                                           part_ids[done : done + n], part_labels[done : done + n], part_pixels[done : done + n])
                    done += n
                    seen += n
                    batches += 1
                    if encode and batches % PRUNE_EVERY == 0:
                        pending.result()
                        _keep_only(thumbnails, state[1].numpy())
            bar.update(seen + len(skipped) - bar.n)
        if pending is not None:
            pending.result()

    vals, ids, pos = (t.numpy() for t in state)
    _keep_only(thumbnails, ids)  # the caller's dict is not changed: this is a copy
    if kept_cams:
        keep_shown_cams()
    end = miner.units
    heat_maps, heat_sizes = heat.flat()
    table = [np.concatenate([miner.to_layer_order(a), a[end:]]) for a in (vals, ids, pos)]  # units in layer order, then probes
    counts, hi, nonpositive = (miner.columns_in_layer_order(a) for a in (histograms.counts, histograms.hi, histograms.nonpositive))
    t = min(TOP, len(dataset.classes)) if mode != "none" else 0
    empty = {"predicted": np.zeros(0, np.int64), "confidence": np.zeros(0, np.float32), "true_score": np.zeros(0, np.float32),
             "top": np.zeros((0, t), np.int32), "top_scores": np.zeros((0, t), np.float32), "true_rank": np.zeros(0, np.int32),
             "images": np.zeros(0, np.int64), "labels": np.zeros(0, np.int64), "losses": np.zeros(0, np.float32)}
    columns = {name: np.concatenate([empty[name]] + [p[name] for p in per_image if name in p]) for name in empty}
    if mode == "none":  # no predictions to score: the same columns, empty values
        n = len(columns["images"])
        columns.update(predicted=np.full(n, -1, np.int64), confidence=np.zeros(n, np.float32), true_score=np.zeros(n, np.float32),
                       top=np.zeros((n, 0), np.int32), top_scores=np.zeros((n, 0), np.float32), true_rank=np.full(n, -1, np.int32))
    index_of = {r.rel: r.index for r in records}
    return PartialScan(
        fingerprint=fingerprint or {}, values=table[0], ids=table[1].astype(np.int64), pos=table[2], heat=heat_maps, heat_sizes=heat_sizes,
        hist_counts=counts, hist_hi=hi, hist_nonpositive=nonpositive, thumbnails=thumbnails,
        skipped=[(index_of.get(s.path, -1), s) for s in skipped], side=miner.side, ranked_as=dict(miner.ranked_as), cams=dict(sorted(kept_cams.items())), **columns,
    )


def _keep_only(thumbnails: dict, ids: np.ndarray) -> None:
    wanted = set(np.unique(ids[ids >= 0]).tolist())
    for image in [i for i in thumbnails if i not in wanted]:
        del thumbnails[image]


def forward(traced: TracedModel, preprocessing: Preprocessing | None = None):
    """A graph-mode function from pixels to [scores] + one map per map layer; keep it to run it again
    without tracing anew (the training callback draws its chosen image every snapshot)."""
    preprocessing = preprocessing or DEFAULT_PREPROCESSING
    return tf.function(lambda x: traced.tap(_input(x, preprocessing), training=False), autograph=False)


def run_images(traced: TracedModel, pixels: np.ndarray, preprocessing: Preprocessing | None = None,
               function=None) -> tuple[np.ndarray, list[np.ndarray]]:
    """Full outputs for a few images: (scores [n, outputs], one [n, h, w, c] array per map layer).

    In graph mode, as the pass runs the model (some models run eagerly but not in a graph: TensorFlow
    refuses layer names it cannot use as scope names). function: one made by forward() for these
    images' shape, reused (the training callback runs it every snapshot).
    """
    outs = (function or forward(traced, preprocessing))(tf.constant(pixels))
    return np.asarray(outs[0]), [np.asarray(a) for a in outs[1:]]


def run_chosen(traced: TracedModel, pixels: np.ndarray, labels: np.ndarray, request: CamRequest | None,
               preprocessing: Preprocessing | None = None):
    """The chosen images, run eagerly (a graph for a few images costs more to trace than to run; the
    pass's first step is where a model that runs only eagerly fails): (scores [n, outputs], one
    [n, h, w, c] array per map layer, and with a request, each image's Grad-CAMs for (its predicted
    class, labels' class or the predicted one where it is -1) as (float32 [n, 2, h, w], those
    classes int32 [n, 2]), else None)."""
    preprocessing = preprocessing or DEFAULT_PREPROCESSING
    x = _input(tf.constant(pixels), preprocessing)
    if request is None:
        outs, cams = traced.tap(x, training=False), None
    else:
        outs, *found = run_with_cams(cam_model(traced, request), x, tf.constant(np.asarray(labels, np.int32)), request)
        cams = tuple(np.asarray(a) for a in found)
    return np.asarray(outs[0]), [np.asarray(a) for a in outs[1:]], cams
