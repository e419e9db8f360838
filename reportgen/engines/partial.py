"""The pass as a mergeable summary: what a pass over any subset of the images found, in a form that
combines exactly with the summaries of other subsets (pure numpy).

Per unit: the top K (score, global dataset index, position) and the heatmap of each entry (relative
to its own score); per unit a histogram of scores; per image its prediction and loss (confusion,
accuracy and loss are computed from them at the end); the thumbnails of the images in some top K;
the Grad-CAMs of the images some gallery of mistakes may show; the skipped files. Merging keeps, per unit,
the K best of the union by (score descending, dataset index ascending): the tie rule of the one
pass, so any split of the dataset, merged in any order, gives the same result as one pass.
Histograms merge exactly (their ranges are powers of two: bins of the smaller one pair up).

Size of a partial state, per unit: K x (4 + 8 + 4 + its layer's heatmap size) bytes + the histogram
(HISTOGRAM_BINS x 8 + 16 bytes); e.g. K = 16 and 6 x 6 heatmaps: about 1.1 KB per unit in memory,
350 bytes compressed (ResNet50, bench/bench_ray.py --resnet). Heatmaps are stored unit after unit,
each layer's at its own size (no padding to the largest).
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass, field

import numpy as np

from reportgen.dataset import Skipped
from reportgen.errors import UserError
from reportgen.images import heat_shape
from reportgen.report import LayerUnits, Metrics, Predictions, ProbeResult, ScanResult, Thumbnail, TopEntry
from reportgen.stats import HISTOGRAM_BINS, TOP, ConfusionCounter, classification_mode, top_k_accuracy

FORMAT = "reportgen-partial-4"


# per image, in one array each (sorted by dataset index once merged)
_PER_IMAGE = ("images", "labels", "predicted", "confidence", "true_score", "top", "top_scores", "true_rank", "losses")
# per unit (and probe) row
_TABLES = ("values", "ids", "pos", "heat", "heat_sizes", "hist_counts", "hist_hi", "hist_nonpositive")


@dataclass
class PartialScan:
    fingerprint: dict  # what must match to merge: model, dataset listing, options
    values: np.ndarray  # float32 [rows, k]: rows = the reduced layers' units (layer order), then probes; -inf empty
    ids: np.ndarray  # int64 [rows, k]: global dataset index, -1 empty
    pos: np.ndarray  # int32 [rows, k]: row * width + col
    heat: np.ndarray  # uint8, flat: unit after unit, [k, heat_sizes[unit]] each: each entry's heatmap, 255 = its own score
    heat_sizes: np.ndarray  # int64 [units]: values in one heatmap of each unit (its layer's hs x ws)
    hist_counts: np.ndarray  # int64 [every unit shown, bins] (layer order)
    hist_hi: np.ndarray  # float64 [every unit shown]
    hist_nonpositive: np.ndarray  # int64 [every unit shown]
    images: np.ndarray  # int64 [n]: the images this pass read (global indices)
    labels: np.ndarray  # int64 [n]
    predicted: np.ndarray  # int64 [n] (-1 without predictions)
    confidence: np.ndarray  # float32 [n]
    true_score: np.ndarray  # float32 [n]
    top: np.ndarray  # int32 [n, t]
    top_scores: np.ndarray  # float32 [n, t]
    true_rank: np.ndarray  # int32 [n]
    losses: np.ndarray  # float32 [n]: each image's loss (nan without one)
    thumbnails: dict[int, Thumbnail] = field(default_factory=dict)  # every image in some top K
    cams: dict[int, np.ndarray] = field(default_factory=dict)  # uint8 [2, h, w] Grad-CAMs of the images a gallery may show
    skipped: list[tuple[int, Skipped]] = field(default_factory=list)  # (dataset index, file) of unreadable files
    side: int = 0  # heatmap side
    ranked_as: dict = field(default_factory=dict)  # layer -> the layer whose top K its units take (model/ranking.py); not reduced
    meta: dict = field(default_factory=dict)  # how it was made (shard, build options): not merged, not compared

    @property
    def num_images(self) -> int:
        return int(len(self.images))

    @property
    def units(self) -> int:
        """Units with a top K here: those of the reduced layers."""
        return int(len(self.heat_sizes))


def heat_runs(sizes: np.ndarray, k: int):
    """(first unit, end unit, start, end in the flat heat array, size) of each run of units whose
    heatmaps have one size: the flat array's [start:end] is [units, k, size] for them."""
    sizes = np.asarray(sizes, np.int64)
    if not len(sizes):
        return
    cuts = [0, *(np.nonzero(np.diff(sizes))[0] + 1).tolist(), len(sizes)]
    flat = 0
    for lo, hi in zip(cuts[:-1], cuts[1:]):
        size = int(sizes[lo])
        yield lo, hi, flat, flat + (hi - lo) * k * size, size
        flat += (hi - lo) * k * size


def check_same(a: dict, b: dict, where: str = "") -> None:
    """Refuse to merge summaries of another model, dataset listing or options (one line)."""
    for key in sorted(set(a) | set(b)):
        if a.get(key) != b.get(key):
            what = {"model": "another model", "dataset": "another dataset listing", "options": "other options"}.get(key, key)
            raise UserError(f"{where}a partial state from {what} ({key} differs{_difference(a.get(key), b.get(key))}): "
                            "merge only the shards of one build, on the same model and data")


def _difference(a, b) -> str:
    if isinstance(a, dict) and isinstance(b, dict):
        keys = [k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
        return f": {', '.join(keys[:3])}" if keys else ""
    return ""


def _merge_histograms(a: PartialScan, b: PartialScan):
    """Histograms of the union: the smaller range's bins pair up (ranges are powers of two)."""
    hi = np.maximum(a.hist_hi, b.hist_hi)
    counts = np.zeros_like(a.hist_counts)
    for p in (a, b):
        c = p.hist_counts.copy()
        for unit in np.nonzero((p.hist_hi > 0) & (p.hist_hi < hi))[0]:
            doublings = int(round(math.log2(hi[unit] / p.hist_hi[unit])))
            group = 2 ** min(doublings, int(math.log2(HISTOGRAM_BINS)))
            merged = c[unit].reshape(-1, group).sum(axis=1)
            c[unit] = 0
            c[unit, : merged.size] = merged
        counts += c
    return counts, hi, a.hist_nonpositive + b.hist_nonpositive


def _merge_tables(a: PartialScan, b: PartialScan) -> dict:
    """Per unit, the K best of both by (score descending, dataset index ascending): the one pass's
    tie rule, whatever the split."""
    k = a.values.shape[1]
    values = np.concatenate([a.values, b.values], axis=1)
    ids = np.concatenate([a.ids, b.ids], axis=1)
    pos = np.concatenate([a.pos, b.pos], axis=1)
    # empty slots (-inf) go last: their index sorts as the largest
    order = np.lexsort((np.where(ids < 0, np.iinfo(np.int64).max, ids), -values.astype(np.float64)), axis=1)[:, :k]
    take = np.take_along_axis
    heat = np.empty_like(a.heat)
    for lo, hi, start, end, size in heat_runs(a.heat_sizes, k):
        both = np.concatenate([a.heat[start:end].reshape(hi - lo, k, size), b.heat[start:end].reshape(hi - lo, k, size)], axis=1)
        heat[start:end] = take(both, order[lo:hi, :, None], axis=1).reshape(-1)
    counts, hi, nonpositive = _merge_histograms(a, b)
    return {"values": take(values, order, axis=1), "ids": take(ids, order, axis=1), "pos": take(pos, order, axis=1),
            "heat": heat, "heat_sizes": a.heat_sizes, "hist_counts": counts, "hist_hi": hi, "hist_nonpositive": nonpositive}


class Merger:
    """Merges partial states one at a time, in any order: memory O(units x K) for the unit tables
    (plus the per-image predictions, a few tens of bytes per image, which the pages of mistakes need)."""

    def __init__(self) -> None:
        self.tables: PartialScan | None = None
        self.per_image: list[dict] = []
        self.thumbnails: dict[int, Thumbnail] = {}
        self.cams: dict[int, np.ndarray] = {}  # a gallery over all images shows only images some part's gallery shows
        self.skipped: list[tuple[int, Skipped]] = []
        self.count = 0

    def add(self, part: PartialScan, where: str = "") -> None:
        if self.tables is None:
            self.tables = part
        else:
            check_same(self.tables.fingerprint, part.fingerprint, where)
            check_same({"ranked_as": self.tables.ranked_as}, {"ranked_as": part.ranked_as}, where)
            merged = _merge_tables(self.tables, part)
            self.tables = PartialScan(fingerprint=self.tables.fingerprint, side=self.tables.side, ranked_as=self.tables.ranked_as, **merged,
                                      **{name: np.zeros(0) for name in _PER_IMAGE})
        self.per_image.append({name: getattr(part, name) for name in _PER_IMAGE})
        self.thumbnails.update(part.thumbnails)
        self.cams.update(part.cams)
        self.skipped.extend(part.skipped)
        self.count += 1
        if self.count % 16 == 0:  # drop the thumbnails no top K holds any more
            self.thumbnails = _wanted(self.thumbnails, self.tables.ids)

    def result(self) -> PartialScan:
        if self.tables is None:
            raise UserError("no partial state to merge")
        t = self.tables
        per_image = {name: np.concatenate([p[name] for p in self.per_image]) for name in _PER_IMAGE}
        order = np.argsort(per_image["images"], kind="stable")
        per_image = {name: a[order] for name, a in per_image.items()}
        images = per_image["images"]
        if len(images) > 1 and (np.diff(images) == 0).any():
            raise UserError("the partial states overlap (an image is in two of them): merge the shards of one split, each once")
        return PartialScan(fingerprint=t.fingerprint, side=t.side, ranked_as=t.ranked_as, **{name: getattr(t, name) for name in _TABLES}, **per_image,
                           thumbnails=_wanted(self.thumbnails, t.ids), cams=dict(sorted(self.cams.items())),
                           skipped=sorted(set(self.skipped), key=lambda s: s[0]))


def merge_partials(parts: list[PartialScan]) -> PartialScan:
    """One summary of the union of the parts' images (they must not overlap); any order, same result."""
    merger = Merger()
    for part in parts:
        merger.add(part)
    return merger.result()


def _wanted(thumbnails: dict, ids: np.ndarray) -> dict:
    wanted = set(np.unique(ids[ids >= 0]).tolist())
    return {i: t for i, t in thumbnails.items() if i in wanted}


def finish(part: PartialScan, traced, classes: list[str], probes: list) -> ScanResult:
    """The site's view of a (merged) summary: per-layer units with heatmaps scaled to each unit's top
    score, probe results, metrics (as model.evaluate: mean loss plus regularisation) and predictions."""
    from reportgen.model.ranking import derived_positions, derived_values  # TensorFlow: the derived layers' scores come from the layers themselves

    layers = traced.map_layers
    by_name = {node.name: node for node in layers}
    reduced = [node for node in layers if node.name not in part.ranked_as]
    offsets = np.cumsum([0] + [node.channels for node in reduced]).tolist()  # table rows
    every = np.cumsum([0] + [node.channels for node in layers]).tolist()  # histogram rows
    k = part.values.shape[1]
    tables: dict[str, tuple] = {}  # reduced layer -> (values, ids, pos, heat, heat shape)
    start = 0
    for li, node in enumerate(reduced):
        lo, hi = offsets[li], offsets[li + 1]
        hs, ws = heat_shape(node.spatial, part.side)
        end = start + node.channels * k * hs * ws
        tables[node.name] = (part.values[lo:hi], part.ids[lo:hi], part.pos[lo:hi], part.heat[start:end].reshape(node.channels, k, hs * ws), (hs, ws))
        start = end
    units: dict[str, LayerUnits] = {}
    for li, node in enumerate(layers):
        histogram = (part.hist_counts[every[li] : every[li + 1]], part.hist_hi[every[li] : every[li + 1]], part.hist_nonpositive[every[li] : every[li + 1]])
        first = part.ranked_as.get(node.name)
        if first is None:
            units[node.name] = _layer_units(node, *tables[node.name], histogram)
        else:  # the first layer's top K, with this layer's scores and positions in its grid
            vals, ids, pos, heat, shape = tables[first]
            width = by_name[first].spatial[1]
            rows, cols = derived_positions(traced, node.name, first, pos // width, pos % width)
            units[node.name] = _layer_units(node, derived_values(traced, part.ranked_as, node.name, vals), ids, rows * node.spatial[1] + cols,
                                            heat, shape, histogram, heat_values=vals)
    end = offsets[-1]
    widths = {node.name: node.spatial[1] for node in layers}
    probe_results = [
        ProbeResult(p.layer, p.row, p.col, p.channel, _entries(part.values[end + i], part.ids[end + i], part.pos[end + i], widths[p.layer]))
        for i, p in enumerate(probes)
    ]
    mode, note = classification_mode(traced.info.num_outputs, len(classes))
    total = int(part.fingerprint.get("dataset", {}).get("images", 0)) or (int(part.images.max()) + 1 if part.num_images else 0)
    predictions = None
    if mode != "none":
        confusion = ConfusionCounter(len(classes))
        labelled = part.labels >= 0
        confusion.update(part.labels[labelled], part.predicted[labelled])
        loss = None
        losses = part.losses[labelled]
        if losses.size and not np.isnan(losses).any():
            regularization = float(sum(float(x) for x in traced.model.losses)) if traced.model.losses else 0.0
            # as model.evaluate: the mean over images, plus the regularisation (added to every batch's loss)
            loss = float(np.sum(losses, dtype=np.float64) / losses.size) + regularization
        metrics = confusion.metrics(classes, mode, note, loss)
        predictions = _predictions(part, total)
        if len(classes) > TOP:
            metrics.top5, per_class = top_k_accuracy(predictions, len(classes))
            metrics.per_class_top5 = dict(zip(classes, per_class))
    else:
        metrics = Metrics(accuracy=None, loss=None, per_class={}, confusion=None, note=note, evaluated=0, mode=mode)
    return ScanResult(units=units, probes=probe_results, metrics=metrics, num_images=part.num_images, skipped=[s for _, s in part.skipped],
                      thumbnails=dict(sorted(part.thumbnails.items())), heat_side=part.side, predictions=predictions,
                      cams=dict(sorted(part.cams.items())), ranked_as=dict(part.ranked_as))


def _predictions(part: PartialScan, total: int) -> Predictions:
    """Per-image arrays by dataset index (read False for the images no pass read)."""
    t = part.top.shape[1] if part.top.ndim == 2 else 0

    def full(values, fill, dtype, shape=()):
        out = np.full((total, *shape), fill, dtype=dtype)
        out[part.images] = values
        return out

    read = np.zeros(total, dtype=bool)
    read[part.images] = True
    return Predictions(read=read, labels=full(part.labels, -1, np.int64), predicted=full(part.predicted, -1, np.int64),
                       confidence=full(part.confidence, 0, np.float32), true_score=full(part.true_score, 0, np.float32),
                       top=full(part.top, -1, np.int32, (t,)), top_scores=full(part.top_scores, 0, np.float32, (t,)),
                       true_rank=full(part.true_rank, -1, np.int32))


def _layer_units(node, vals, ids, pos, heat, shape, histogram, heat_values=None) -> LayerUnits:
    """One layer's arrays; heatmaps rescaled from each entry's own score to the unit's top score
    (heat_values: the scores the heatmaps were made with, when not `vals`)."""
    width = node.spatial[1]
    heat_values = vals if heat_values is None else heat_values
    top = heat_values[:, :1]
    ratio = np.where((top > 0) & (heat_values > 0), heat_values / np.where(top > 0, top, 1), 0.0)
    levels = np.round(heat.astype(np.float32) * ratio[:, :, None]).astype(np.uint8)
    return LayerUnits(
        layer=node.name,
        values=vals.astype(np.float32),
        images=ids.astype(np.int64),
        rows=(pos // width).astype(np.int32),
        cols=(pos % width).astype(np.int32),
        heat=levels.reshape(node.channels, vals.shape[1], *shape),
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


_ARRAYS = _TABLES + _PER_IMAGE


def to_bytes(p: PartialScan) -> bytes:
    """A partial state as one compressed .npz file's bytes (thumbnails and metadata inside)."""
    buf = io.BytesIO()
    thumbs = sorted(p.thumbnails)
    meta = {"format": FORMAT, "fingerprint": p.fingerprint, "side": p.side, "meta": p.meta, "ranked_as": p.ranked_as,
            "skipped": [[i, s.path, s.reason] for i, s in p.skipped],
            "thumbnails": [[i, p.thumbnails[i].ext, p.thumbnails[i].width, p.thumbnails[i].height, len(p.thumbnails[i].data)] for i in thumbs]}
    blob = b"".join(p.thumbnails[i].data for i in thumbs)
    cam_images = np.array(sorted(p.cams), np.int64)
    cams = np.stack([p.cams[i] for i in cam_images.tolist()]) if len(cam_images) else np.zeros((0, 2, 0, 0), np.uint8)
    np.savez_compressed(buf, meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8),
                        thumbnails=np.frombuffer(blob, dtype=np.uint8), cam_images=cam_images, cams=cams,
                        **{name: getattr(p, name) for name in _ARRAYS})
    return buf.getvalue()


def from_bytes(data: bytes, where: str = "") -> PartialScan:
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            meta = json.loads(bytes(z["meta"]).decode())
            arrays = {name: z[name] for name in _ARRAYS}
            blob = bytes(z["thumbnails"])
            cams = dict(zip(z["cam_images"].tolist(), z["cams"]))
    except Exception as exc:  # not a partial state at all
        raise UserError(f"{where}: not a reportgen partial state ({type(exc).__name__})") from None
    if meta.get("format") != FORMAT:
        raise UserError(f"{where}: a partial state of another reportgen version ({meta.get('format')}); make the shards again")
    thumbs, at = {}, 0
    for i, ext, w, h, n in meta["thumbnails"]:
        thumbs[int(i)] = Thumbnail(blob[at : at + n], ext, w, h)
        at += n
    return PartialScan(fingerprint=meta["fingerprint"], thumbnails=thumbs, cams=cams, side=meta["side"], meta=meta.get("meta", {}), ranked_as=meta["ranked_as"],
                       skipped=[(int(i), Skipped(path, reason)) for i, path, reason in meta["skipped"]], **arrays)
