"""The passes that run the model: one streaming pass over the dataset, and the small follow-ups.

`scan_dataset` is the single pass over every image. Per batch, inside one `tf.function`, it runs
the tap model, reduces every map layer to a per-image, per-channel maximum and its position, and
merges those with the running top K of every unit (and of every --unit probe). Only the small
reductions leave the graph (the predictions and the [batch, units] maxima, for the metrics and
the histograms); activation maps never do, so memory is O(units x K), flat in the dataset's size.

Positions: the first position of the maximum in row-major order. For a layer whose every position
a non-overlapping max-pool reads (conv -> MaxPooling2D, as in most classifiers), the maximum and its
window come from the pool's (already smaller) output, and the position is the first one inside that
window: the two rules differ only when the maximum value occurs at several positions.

`run_images` gives full maps for the few chosen images; `gallery_data` re-reads only the images
that made some unit's top K, for their thumbnails and per-unit heatmaps.
"""

from __future__ import annotations

import concurrent.futures
import logging
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from reportgen.dataset import Dataset, ImageRecord, iter_batches
from reportgen.errors import UserError
from reportgen.images import encode_thumbnail, to_uint8
from reportgen.model import TracedModel
from reportgen.model.load import LossSpec
from reportgen.model.preprocess import Preprocessing, make_preprocessing, resizer
from reportgen.model.tf import keras, tf
from reportgen.report import Metrics, ProbeResult, ScanResult, TopEntry, UnitResult
from reportgen.stats import (
    ConfusionCounter,
    StreamingHistograms,
    classification_mode,
    predicted_classes,
)

log = logging.getLogger("reportgen")
DEFAULT_PREPROCESSING = make_preprocessing("rescale", 3)  # x / 255, as flow_from_directory(rescale=1/255)


@dataclass(frozen=True)
class Probe:
    """--unit LAYER:ROW:COL:CHANNEL"""

    layer: str
    row: int
    col: int
    channel: int


def _merge_top_k(vals, ids, pos, new_vals, new_ids, new_pos, k: int):
    """Merge a batch into running top-K lists. vals/ids/pos: [units, k]; new_*: [units, batch].

    `top_k` puts the lower index first among equal values, and the running list (earlier images)
    comes before the batch (in dataset order), so ties go to the earlier image.
    """
    all_vals = tf.concat([vals, new_vals], axis=1)
    all_ids = tf.concat([ids, tf.broadcast_to(new_ids[None, :], tf.shape(new_vals))], axis=1)
    all_pos = tf.concat([pos, new_pos], axis=1)
    top = tf.math.top_k(all_vals, k=k, sorted=True)
    return top.values, tf.gather(all_ids, top.indices, batch_dims=1), tf.gather(all_pos, top.indices, batch_dims=1)


def _index_kind(a):
    """int32 flat indices, or int64 where a batch of maps passes 2**31 elements."""
    return tf.int64 if int(np.prod(a.shape)) >= 2**31 else tf.int32


def _gather_positions(a, positions):
    """a: [b, h, w, c] with a static shape; positions: [b, c, k] spatial positions (row * w + col)
    -> [b, c, k]: the values of map c of image b at those positions. One gather on the flat map."""
    b, h, w, c = a.shape
    kind = _index_kind(a)
    base = np.arange(b)[:, None, None] * (h * w * c) + np.arange(c)[None, :, None]  # static [b, c, 1]
    return tf.gather(tf.reshape(a, [-1]), tf.cast(positions, kind) * c + tf.constant(base, kind))


def _spatial_max(a):
    """Per image and channel of a [batch, h, w, c] map (static shape): the maximum, and its first
    position in row-major order (row * w + col).

    On large maps an argmax over h*w is slow (it reads the map again, element by element). Instead:
    one max over each row (the only full read), the first row holding the maximum from that small
    [batch, h, c] tensor, then the first column holding it within that one row, gathered. Few
    ops: in this graph the number of small ops costs more than their arithmetic.
    """
    b, h, w, c = a.shape
    if h * w <= 400:
        flat = tf.reshape(a, [b, h * w, c])
        return tf.reduce_max(flat, axis=1), tf.argmax(flat, axis=1, output_type=tf.int32)
    row_max = tf.reduce_max(a, axis=2)  # [b, h, c]
    row = tf.argmax(row_max, axis=1, output_type=tf.int32)  # [b, c]: first row with the maximum
    start = row * w
    in_row = _gather_positions(a, start[:, :, None] + tf.constant(np.arange(w, dtype=np.int32)))  # [b, c, w]
    return tf.reduce_max(row_max, axis=1), start + tf.argmax(in_row, axis=2, output_type=tf.int32)


class _PoolWindows:
    """Static tables for reading a map through the non-overlapping max-pool that covers it: for
    each pool position, the map positions of its window (row-major) and which of them exist."""

    def __init__(self, map_hw: tuple[int, int], pool) -> None:
        (h, w), (ph, pw) = map_hw, pool.geometry.kernel
        pool_h, pool_w = pool.spatial
        pad_top = pad_left = 0
        if pool.geometry.padding == "same":  # TensorFlow puts the odd padding pixel after
            pad_top = max(pool_h * ph - h, 0) // 2
            pad_left = max(pool_w * pw - w, 0) // 2
        pr, pc = np.divmod(np.arange(pool_h * pool_w), pool_w)
        dy, dx = np.divmod(np.arange(ph * pw), pw)
        rows = pr[:, None] * ph - pad_top + dy[None, :]
        cols = pc[:, None] * pw - pad_left + dx[None, :]
        inside = (rows >= 0) & (rows < h) & (cols >= 0) & (cols < w)
        self.positions = tf.constant(np.where(inside, np.clip(rows, 0, h - 1) * w + np.clip(cols, 0, w - 1), 0), tf.int32)
        self.inside = None if inside.all() else tf.constant(inside)

    def first_max(self, a, pool_where):
        """Position in `a` of the first maximum inside the pool's winning window ([b, c])."""
        candidates = tf.gather(self.positions, pool_where)  # [b, c, window]
        values = _gather_positions(a, candidates)
        if self.inside is not None:
            values = tf.where(tf.gather(self.inside, pool_where), values, tf.constant(-np.inf, a.dtype))
        inner = tf.argmax(values, axis=2, output_type=tf.int32)
        return tf.gather(candidates, inner[:, :, None], batch_dims=2)[:, :, 0]


def _covering_pools(layers: list) -> dict[int, int]:
    """Map layers whose every position is read by a max-pooling layer with non-overlapping windows
    (pool size = stride, no dilation): layer index -> that pool's index.

    Such a layer's maximum is the pool's maximum, and its position lies in the pool's winning
    window, so the layer's large map need not be read again: the forward pass already did.
    """
    index = {node.name: i for i, node in enumerate(layers)}
    found = {}
    for j, pool in enumerate(layers):
        g = pool.geometry
        if pool.type != "MaxPooling2D" or len(pool.inputs) != 1 or pool.inputs[0] not in index:
            continue
        if g.kernel != g.stride or g.dilation != (1, 1):
            continue
        i = index[pool.inputs[0]]
        h, w = layers[i].spatial
        covers = g.padding == "same" or (h % g.kernel[0] == 0 and w % g.kernel[1] == 0)
        if covers and i not in found:
            found[i] = j
    return found


def _input(pixels, preprocessing: Preprocessing):
    return preprocessing.apply(tf.cast(pixels, tf.float32))


def pixel_dtype(traced: TracedModel):
    """uint8 for Pillow's nearest resize, float32 for tf.image.resize methods (not rounded, as Keras feeds them)."""
    return tf.uint8 if traced.spec.interpolation == "nearest" else tf.float32


class _MiningStep:
    """The per-batch graph: forward, spatial max/argmax per channel, merge with running top K."""

    def __init__(self, traced: TracedModel, k: int, probes: list[Probe], preprocessing: Preprocessing, batch_size: int,
                 loss: _PerImageLoss | None = None) -> None:
        self.k = k
        self.loss = loss
        self.preprocessing = preprocessing
        self.layers = traced.map_layers
        index = {node.name: i for i, node in enumerate(self.layers)}
        self.probe_slots = [(index[p.layer], p.row, p.col, p.channel) for p in probes]
        self.via_pool = {
            li: (pj, _PoolWindows(self.layers[li].spatial, self.layers[pj])) for li, pj in _covering_pools(self.layers).items()
        }
        self.tap = traced.tap
        spec = traced.spec
        units = sum(node.channels for node in self.layers) + len(self.probe_slots)
        table = [tf.TensorSpec([units, k], dtype) for dtype in (tf.float32, tf.int32, tf.int32)]
        # One static shape (short batches are padded): traced once, and every shape is known in the graph.
        self.step = tf.function(
            self._step,
            input_signature=[
                tf.TensorSpec([batch_size, spec.height, spec.width, spec.channels], pixel_dtype(traced)),
                tf.TensorSpec([batch_size], tf.int32),
                tuple(table),
            ],
        )

    def initial_state(self):
        """Running top K of every unit of every layer, then of every probe, as one [units, k] table each
        (values, image indices, positions): one merge per batch for all of them."""
        units = sum(node.channels for node in self.layers) + len(self.probe_slots)
        return (
            tf.fill([units, self.k], tf.constant(-np.inf, tf.float32)),
            tf.fill([units, self.k], tf.constant(-1, tf.int32)),
            tf.zeros([units, self.k], tf.int32),
        )

    def reduce(self, maps):
        """Every map layer's per-image, per-channel maximum [batch, units] and its position (per layer)."""
        reduced = {}
        for li in reversed(range(len(maps))):  # pools come after their inputs: reduce them first
            if li in self.via_pool:
                pj, windows = self.via_pool[li]
                pool_max, pool_where = reduced[pj]
                reduced[li] = (pool_max, windows.first_max(maps[li], pool_where))
            else:
                reduced[li] = _spatial_max(maps[li])
        batch_max = tf.concat([reduced[li][0] for li in range(len(maps))], axis=1)  # [batch, units]
        batch_max = tf.where(tf.math.is_nan(batch_max), tf.constant(-np.inf, batch_max.dtype), batch_max)
        return batch_max, [reduced[li][1] for li in range(len(maps))]

    def _step(self, pixels, ids, state):
        """ids: dataset indices, -1 for the padding of a short last batch (it never enters a top K)."""
        outs = self.tap(_input(pixels, self.preprocessing), training=False)
        preds, maps = outs[0], outs[1:]
        batch_max, places = self.reduce(maps)
        batch_max = tf.where(ids[:, None] >= 0, batch_max, tf.constant(-np.inf, batch_max.dtype))
        values = [batch_max]
        for li, row, col, ch in self.probe_slots:
            v = maps[li][:, row, col, ch][:, None]
            values.append(tf.where(tf.math.is_nan(v) | (ids[:, None] < 0), tf.constant(-np.inf, v.dtype), v))
            places.append(tf.fill(tf.shape(v), tf.constant(row * maps[li].shape[2] + col, tf.int32)))
        new_vals = tf.transpose(tf.concat(values, axis=1))  # [units + probes, batch]
        new_pos = tf.transpose(tf.concat(places, axis=1))
        losses = self.loss(ids, preds) if self.loss is not None and self.loss.enabled else tf.zeros(tf.shape(ids), tf.float32)
        return preds, batch_max, losses, _merge_top_k(*state, new_vals, ids, new_pos, self.k)


class _PerImageLoss:
    """The model's loss per image, computed in the graph on the output tensor itself, as
    `model.evaluate` does: Keras computes a sigmoid/softmax output's cross-entropy from the logits
    that tensor carries, which differs from the clipped probabilities where the model is confident."""

    def __init__(self, loss: LossSpec, mode: str, num_outputs: int, labels: np.ndarray) -> None:
        self.enabled = loss.fn is not None and mode != "none"
        if not self.enabled:
            return
        fn = loss.fn
        self.call = fn.call if isinstance(fn, keras.losses.Loss) else fn  # unreduced: one value per image
        self.sparse = "sparse" in f"{loss.name} {type(fn).__name__} {getattr(fn, 'fn', '')}".lower()
        self.mode = mode
        self.num_outputs = num_outputs
        self.labels = tf.constant(np.maximum(labels, 0).astype(np.int32))

    def __call__(self, ids, preds):
        labels = tf.gather(self.labels, tf.maximum(ids, 0))
        if self.mode == "binary":
            y_true = tf.cast(labels, preds.dtype)[:, None]
        elif self.sparse:
            y_true = labels
        else:
            y_true = tf.one_hot(labels, self.num_outputs, dtype=preds.dtype)
        return tf.reshape(tf.cast(self.call(y_true, preds), tf.float32), [-1])


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
    quiet: bool = False,
) -> ScanResult:
    """The one pass over the dataset: metrics, histograms and every unit's top K. Fills dataset.skipped."""
    probes = probes or []
    preprocessing = preprocessing or DEFAULT_PREPROCESSING
    units_per_layer = [node.channels for node in traced.map_layers]
    histograms = StreamingHistograms(sum(units_per_layer))
    mode, note = classification_mode(traced.info.num_outputs, len(dataset.classes))
    confusion = ConfusionCounter(len(dataset.classes)) if mode != "none" else None
    logits = bool(traced.info.head and traced.info.head.logits)
    labels = np.array([-1 if r.label is None else r.label for r in dataset.records], dtype=np.int64)
    per_image_loss = _PerImageLoss(traced.loss, mode, traced.info.num_outputs, labels)
    miner = _MiningStep(traced, top_k, probes, preprocessing, batch_size, per_image_loss)
    state = miner.initial_state()
    loss_sum = [0.0, 0]  # the loss over labelled images, and their count

    def update_stats(preds, maxima, losses, indices) -> None:
        histograms.update(maxima.numpy())
        if confusion is not None:
            batch_labels = labels[indices]
            confusion.update(batch_labels, predicted_classes(preds.numpy(), mode, logits))
            loss_sum[0] += float(np.sum(losses.numpy(), dtype=np.float64))
            loss_sum[1] += len(indices)

    seen = 0
    # The host-side statistics of one batch run in a helper thread while the graph runs the next
    # (TensorFlow releases the GIL); one thread, so batches are counted in order.
    with _progress(len(dataset.records), "scanning dataset", quiet) as bar, concurrent.futures.ThreadPoolExecutor(1) as stats:
        pending = None
        for batch in iter_batches(dataset.records, traced.spec, batch_size, dataset.skipped, resizer=resizer(traced.spec)):
            n = len(batch.indices)
            pixels, ids = batch.pixels, batch.indices
            if n < batch_size:  # pad the last batch: the step keeps one shape and is traced once
                pixels = np.concatenate([pixels, np.zeros((batch_size - n, *pixels.shape[1:]), pixels.dtype)])
                ids = np.concatenate([ids, np.full(batch_size - n, -1, ids.dtype)])
            preds, maxima, losses, state = miner.step(tf.constant(pixels), tf.constant(ids, tf.int32), state)
            if pending is not None:
                pending.result()
            pending = stats.submit(update_stats, preds[:n], maxima[:n], losses[:n], batch.indices)
            seen += len(batch.indices)
            bar.update(seen + len(dataset.skipped) - bar.n)
        if pending is not None:
            pending.result()
    if seen == 0:
        first = dataset.skipped[0]
        raise UserError(f"{dataset.root}: none of its {len(dataset.records)} image files could be read ({first.path}: {first.reason}, ...)")

    vals, ids, pos = (t.numpy() for t in state)
    units: dict[str, list[UnitResult]] = {}
    offset = 0
    for node in traced.map_layers:
        width = node.spatial[1]
        units[node.name] = [
            UnitResult(
                layer=node.name,
                channel=c,
                top=_entries(vals[offset + c], ids[offset + c], pos[offset + c], width),
                histogram=histograms.result(offset + c),
            )
            for c in range(node.channels)
        ]
        offset += node.channels
    widths = {node.name: node.spatial[1] for node in traced.map_layers}
    probe_results = [
        ProbeResult(p.layer, p.row, p.col, p.channel, _entries(vals[offset + i], ids[offset + i], pos[offset + i], widths[p.layer]))
        for i, p in enumerate(probes)
    ]

    if confusion is not None:
        loss = None
        if per_image_loss.enabled and loss_sum[1]:
            regularization = float(sum(float(x) for x in traced.model.losses)) if traced.model.losses else 0.0
            loss = loss_sum[0] / loss_sum[1] + regularization  # as model.evaluate: regularisation added to each batch's loss
        metrics = confusion.metrics(dataset.classes, mode, note, loss)
    else:
        metrics = Metrics(accuracy=None, loss=None, per_class={}, confusion=None, note=note, evaluated=0, mode=mode)
    return ScanResult(units=units, probes=probe_results, metrics=metrics, num_images=seen)


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


@dataclass
class GalleryData:
    """What the unit pages draw: a thumbnail per image that made some top K, and the heatmaps."""

    thumbnails: dict[int, tuple[bytes, str]]  # dataset index -> the model input encoded (bytes, extension)
    heat: dict[str, np.ndarray]  # layer -> uint8 [channels, k, h', w'], 255 = the unit's top value
    missing: list[int]  # images that made a top K but could not be read again


def gallery_data(
    traced: TracedModel,
    dataset: Dataset,
    scan: ScanResult,
    *,
    top_k: int,
    batch_size: int,
    preprocessing: Preprocessing | None = None,
    heat_side: int = 32,
    quiet: bool = False,
) -> GalleryData:
    """Re-read only the images in some top-K list, for thumbnails and per-unit heatmaps.

    Heatmaps are the unit's map on that image, area-downsampled in the graph to at most
    `heat_side` pixels a side and scaled so 255 is the unit's top value over the dataset. Only the
    maps some unit needs leave the graph.
    """
    preprocessing = preprocessing or DEFAULT_PREPROCESSING
    wanted: dict[int, list[tuple[int, int, int]]] = {}  # image -> [(layer index, channel, rank)]
    sizes = []
    for li, node in enumerate(traced.map_layers):
        h, w = node.spatial
        scale = max(1, -(-max(h, w) // heat_side))
        sizes.append((-(-h // scale), -(-w // scale)))
        for unit in scan.units[node.name]:
            for rank, entry in enumerate(unit.top):
                wanted.setdefault(entry.image, []).append((li, unit.channel, rank))
    for probe in scan.probes:
        for entry in probe.top:
            wanted.setdefault(entry.image, [])
    heat = {
        node.name: np.zeros((node.channels, top_k) + sizes[li], dtype=np.uint8)
        for li, node in enumerate(traced.map_layers)
    }
    peaks = [
        np.array([max(u.max_value, 0.0) for u in scan.units[node.name]], dtype=np.float32)
        for node in traced.map_layers
    ]

    spec = traced.spec
    n_layers = len(traced.map_layers)

    @tf.function(
        input_signature=[tf.TensorSpec([batch_size, spec.height, spec.width, spec.channels], pixel_dtype(traced))]
        + [tf.TensorSpec([None, 2], tf.int32)] * n_layers
    )
    def chosen_maps(pixels, *picks):
        """Per layer, only the (image, channel) maps some unit needs, area-downsampled: [m, h', w']."""
        outs = traced.tap(_input(pixels, preprocessing), training=False)
        chosen = []
        for a, size, pick in zip(outs[1:], sizes, picks):
            small = tf.image.resize(a, size, method="area") if size != tuple(a.shape[1:3]) else a
            chosen.append(tf.gather_nd(tf.transpose(small, [0, 3, 1, 2]), pick))
        return chosen

    records: list[ImageRecord] = [dataset.records[i] for i in sorted(wanted)]
    thumbnails: dict[int, tuple[bytes, str]] = {}
    failed: list = []
    with _progress(len(records), "drawing top images", quiet) as bar:
        for batch in iter_batches(records, traced.spec, batch_size, failed, resizer=resizer(traced.spec)):
            pixels_in = batch.pixels
            if len(pixels_in) < batch_size:  # one shape, one trace
                pad = np.zeros((batch_size - len(pixels_in), *pixels_in.shape[1:]), pixels_in.dtype)
                pixels_in = np.concatenate([pixels_in, pad])
            slots: list[list[tuple[int, int]]] = [[] for _ in range(n_layers)]  # per layer: (channel, rank)
            picks: list[list[tuple[int, int]]] = [[] for _ in range(n_layers)]  # per layer: (image in batch, channel)
            for b, image in enumerate(batch.indices.tolist()):
                # encoded at once: a large dataset's gallery images would not fit in memory as pixels
                thumbnails[image] = encode_thumbnail(to_uint8(batch.pixels[b]))
                for li, channel, rank in wanted[image]:
                    picks[li].append((b, channel))
                    slots[li].append((channel, rank))
            maps = chosen_maps(tf.constant(pixels_in), *[tf.constant(np.array(p, np.int32).reshape(-1, 2)) for p in picks])
            for li, node in enumerate(traced.map_layers):
                if not slots[li]:
                    continue
                channels, ranks = np.array(slots[li]).T
                peak = peaks[li][channels][:, None, None]
                scaled = np.clip(maps[li].numpy() / np.where(peak > 0, peak, 1), 0, 1) * (peak > 0)
                heat[node.name][channels, ranks] = np.round(scaled * 255).astype(np.uint8)
            bar.update(len(thumbnails) + len(failed) - bar.n)
    missing = sorted(set(wanted) - set(thumbnails))
    if missing:
        log.warning("%d image(s) could not be read a second time for the galleries", len(missing))
    return GalleryData(thumbnails=thumbnails, heat=heat, missing=missing)
