"""The per-batch graph of the pass: forward, per-unit maxima and positions, running top K, heatmaps.

One `tf.function` per batch runs the tap model and reduces every map layer to a per-image,
per-channel maximum, then merges those with the running top K of every unit (and of every --unit
probe). The few maps that can enter some top K in this batch give their position and a downsampled
heatmap for that unit's slot, so the galleries need no second read of the dataset.
Only small reductions leave the graph (predictions, [batch, units] maxima, per-image losses, which images
entered some top K); activation maps never do, so memory is O(units x K), flat in the dataset's size.

Positions: the first position of the maximum in row-major order (the first row holding it, then
the first column of that row). Each map is read once per batch for its row maxima (whose maximum is
the map's) and once for its block means, or only for the means where a max-pool of the model tiles it:
then the row maxima of each band of pool-height rows come from the pool's smaller output. Positions
and heatmaps are then gathered for the few maps that may enter a top K (after the first batches, few
do), segment by segment before the merge, so each map is freed early; with few ops per segment, as
in a graph of a hundred segments the number of ops costs more (tracing, optimising, dispatching)
than their arithmetic.

Layers that rank images as an earlier layer does (model/ranking.py: BatchNormalization with
positive scales, ReLU, ...) are not tapped nor reduced: only their per-image maxima are computed,
by their own layers from the earlier layer's maxima, for their histograms (in a function of their
own, `derived_maxima`, which the pass runs beside the step); their units take that layer's top K
when the pass ends (partial.finish). Reducing fewer maps is most of what it saves.

Heatmaps: the unit's map on that image, averaged over whole blocks to at most `heat_side` a side
(block_mean), stored as uint8 of map / (the entry's own score); the pass rescales them to the unit's
top score at the end.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from reportgen.engines.cams import CamRequest, cam_model, run_with_cams
from reportgen.images import heat_scale, heat_shape, heat_side
from reportgen.model import TracedModel
from reportgen.model.load import LossSpec
from reportgen.model.preprocess import Preprocessing, make_preprocessing
from reportgen.model.ranking import apply_chain, ranked_as, tiles_input
from reportgen.model.tf import keras, tf

log = logging.getLogger("reportgen")


@dataclass(frozen=True)
class Probe:
    """--unit LAYER:ROW:COL:CHANNEL"""

    layer: str
    row: int
    col: int
    channel: int


def _merge_top_k(vals, ids, pos, new_vals, new_ids, new_pos, k: int):
    """Merge a batch into running top-K lists. vals/ids/pos: [units, k]; new_*: [units, batch].
    Returns the new (vals, ids, pos); per entry, where it came from (< k: the old list, else k + batch
    row); and the same for the rows that may have changed only (their indices, ascending, and [rows, k]).

    `top_k` puts the lower index first among equal values, and the running list (earlier images)
    comes before the batch (in dataset order), so ties go to the earlier image.
    """
    # Only the rows where some image of the batch beats the current K-th value can change (a tie
    # keeps the earlier image): after the first batches that is a small part of them.
    rows = tf.where(tf.reduce_max(new_vals, axis=1) > vals[:, k - 1])[:, 0]
    all_vals = tf.concat([tf.gather(vals, rows), tf.gather(new_vals, rows)], axis=1)
    all_ids = tf.concat([tf.gather(ids, rows), tf.broadcast_to(new_ids[None, :], [tf.shape(rows)[0], tf.shape(new_ids)[0]])], axis=1)
    all_pos = tf.concat([tf.gather(pos, rows), tf.gather(new_pos, rows)], axis=1)
    top = tf.math.top_k(all_vals, k=k, sorted=True)
    at = rows[:, None]
    table = (
        tf.tensor_scatter_nd_update(vals, at, top.values),
        tf.tensor_scatter_nd_update(ids, at, tf.gather(all_ids, top.indices, batch_dims=1)),
        tf.tensor_scatter_nd_update(pos, at, tf.gather(all_pos, top.indices, batch_dims=1)),
    )
    unchanged = tf.broadcast_to(tf.range(k, dtype=tf.int32)[None, :], tf.shape(vals))
    return table, tf.tensor_scatter_nd_update(unchanged, at, top.indices), rows, top.indices


def index_kind(a):
    """int32 flat indices, or int64 where a batch of maps passes 2**31 elements."""
    return tf.int64 if int(np.prod(a.shape)) >= 2**31 else tf.int32


DEFAULT_PREPROCESSING = make_preprocessing("rescale", 3)  # x / 255, as flow_from_directory(rescale=1/255)


def _input(pixels, preprocessing: Preprocessing):
    return preprocessing.apply(tf.cast(pixels, tf.float32))


def pixel_dtype(traced: TracedModel):
    """uint8 for Pillow's nearest resize, float32 for tf.image.resize methods (not rounded, as Keras feeds them)."""
    return tf.uint8 if traced.spec.interpolation == "nearest" else tf.float32


def block_mean(a, scale: int):
    """[b, h, w, c] averaged over scale x scale blocks -> [b, ceil(h / scale), ceil(w / scale), c]. Where
    the size is not a multiple of the scale, the blocks are centred as TensorFlow's 'same' padding puts
    them (the padding pixel before, the odd one after) and average only the pixels inside the map."""
    if scale == 1:
        return a
    b, h, w, c = a.shape
    padding = "VALID" if h % scale == 0 and w % scale == 0 else "SAME"
    return tf.nn.avg_pool2d(a, scale, scale, padding)


def _shared_constants():
    """value -> one constant tensor, made once in the graph being traced: a graph of a hundred
    segments otherwise holds thousands of copies of 0, 1 and [-1], each an op to trace and optimise."""
    made: dict = {}

    def shared(value, dtype=None):
        key = (type(value), repr(value), dtype)
        if key not in made:
            made[key] = tf.constant(value, dtype)
        return made[key]

    return shared


GROUP_LIMIT = 65_536  # maps of at most this many values per image are reduced together with others of their size


@dataclass
class _Segment:
    """Map layers reduced together: one layer, or several with the same height and width (fewer ops:
    in this graph the number of small ops costs more than their arithmetic)."""

    layers: list[int]
    start: int  # its rows in the table (segment order)
    stop: int
    scale: int  # heatmap block size
    shape: tuple[int, int]  # heatmap size
    pool: int | None = None  # a lone layer's row maxima from a max-pool of the model: its index in the tap's extra outputs
    band: int = 1  # rows of the map per row of those row maxima (the pool's height)


class MiningStep:
    """The per-batch graph: forward, per-channel maxima, merge with running top K, and the positions
    and heatmaps of the maps that entered some top K in this batch (returned; HeatTable keeps the heatmaps);
    with `cams`, every image's Grad-CAMs too (cams.py).

    Units are kept in segment order (`order[row]` is the unit's index in layer order); probes follow.
    """

    def __init__(self, traced: TracedModel, k: int, probes: list[Probe], preprocessing: Preprocessing, batch_size: int,
                 loss: "PerImageLoss | None" = None, side: int | None = None, cams: CamRequest | None = None) -> None:
        self.k = k
        self.cams = cams
        self.loss = loss
        self.preprocessing = preprocessing
        self.traced = traced
        # Layers that rank images as an earlier one does (ranking.py) are not reduced: their units
        # take that layer's top K (PartialScan.ranked_as); only their per-image maxima are computed,
        # from its maxima, for their histograms.
        self.keep = frozenset(p.layer for p in probes)  # a probe reads its own layer's map
        self.ranked_as = ranked_as(traced, self.keep)
        self.layers = [node for node in traced.map_layers if node.name not in self.ranked_as]  # the layers reduced
        self.derived = [node for node in traced.map_layers if node.name in self.ranked_as]
        index = {node.name: i for i, node in enumerate(self.layers)}
        self.probe_slots = [(index[p.layer], p.row, p.col, p.channel) for p in probes]
        self.side = side or heat_side(traced.map_layers, k)  # of every unit shown: each gets its heatmaps
        self.heat_shapes = [heat_shape(node.spatial, self.side) for node in self.layers]
        self.offsets = np.cumsum([0] + [node.channels for node in self.layers]).tolist()  # layer order
        self.units = self.offsets[-1]
        self.segments = self._segments()
        self.unit_segment = np.concatenate([np.full(seg.stop - seg.start, i, np.int32) for i, seg in enumerate(self.segments)] or [np.zeros(0, np.int32)])
        self.order = np.concatenate([np.arange(self.offsets[li], self.offsets[li + 1]) for seg in self.segments for li in seg.layers])
        self.table_row = {}  # reduced layer -> the table row of its first unit (segment order)
        for seg in self.segments:
            row = seg.start
            for li in seg.layers:
                self.table_row[self.layers[li].name] = row
                row += self.layers[li].channels
        # the maxima's columns: the table's rows, then the derived layers' units; each one's unit in layer order
        every = np.cumsum([0] + [node.channels for node in traced.map_layers]).tolist()
        start = {node.name: every[i] for i, node in enumerate(traced.map_layers)}
        self.column_units = np.concatenate([np.arange(start[self.layers[li].name], start[self.layers[li].name] + self.layers[li].channels)
                                            for seg in self.segments for li in seg.layers]
                                           + [np.arange(start[node.name], start[node.name] + node.channels) for node in self.derived]
                                           + [np.zeros(0, np.int64)])
        self.pools = self._band_pools()
        if cams is not None:
            self.tap = cam_model(traced, cams, self.layers + self.pools)
        elif self.derived or self.pools:
            self.tap = keras.Model(traced.input, traced.outputs_of(self.layers + self.pools), name="reportgen_tap_reduced")
        else:
            self.tap = traced.tap
        self.batch_size = batch_size
        # Not in the step: in MobileNetV2 their ~1,400 small ops (BatchNormalization's, activations')
        # were a third of the step's tracing and optimising, all before its first batch ran.
        self.derived_maxima = tf.function(self._derived_maxima, input_signature=[tf.TensorSpec([None, self.units], tf.float32)],
                                          autograph=False) if self.derived else None
        spec = traced.spec
        table = [tf.TensorSpec([self.units + len(self.probe_slots), k], dtype) for dtype in (tf.float32, tf.int32, tf.int32)]
        # One static shape (short batches are padded): traced once, and every shape is known in the graph.
        self.step = self._step_function = tf.function(
            self._step,
            input_signature=[
                tf.TensorSpec([batch_size, spec.height, spec.width, spec.channels], pixel_dtype(traced)),
                tf.TensorSpec([batch_size], tf.int32),
                tf.TensorSpec([batch_size], tf.int32),
                tuple(table),
            ],
            autograph=False,  # the Python loops over segments are meant to unroll at tracing; converting them costs seconds
        )

    def trace(self) -> None:
        """Trace the step now (Python, holding the GIL): its first run then only optimises and runs the graph."""
        self._step_function.get_concrete_function()

    def _segments(self) -> list[_Segment]:
        groups: dict[tuple, list[int]] = {}
        for li, node in enumerate(self.layers):
            h, w = node.spatial
            key = (h, w) if h * w * node.channels <= GROUP_LIMIT else ("alone", li)
            groups.setdefault(key, []).append(li)
        segments, row = [], 0
        for members in sorted(groups.values(), key=lambda m: m[0]):
            first = self.layers[members[0]]
            size = sum(self.layers[li].channels for li in members)
            segments.append(_Segment(members, row, row + size, heat_scale(first.spatial, self.side), self.heat_shapes[members[0]]))
            row += size
        return segments

    def _band_pools(self) -> list:
        """Max-pools of the model that tile a lone segment's map exactly (Conv2D -> MaxPooling2D, as
        in a classic CNN): that segment takes its row maxima from the pool's output, per band of
        pool-height rows (the same maxima, read from a map pool-size times smaller), so the map
        itself is read only for its block means. The first band holding the map's maximum holds its
        first row with it. Only where the heatmaps are block means (they find NaN, which max-pools
        skip) and the windows start at the map's first row and column (sizes multiples of the pool's)."""
        consumers: dict[str, list] = {}
        for node in self.traced.all_map_layers or []:
            if len(node.inputs) == 1:
                consumers.setdefault(node.inputs[0], []).append(node)
        pools = []
        for seg in self.segments:
            if len(seg.layers) != 1 or seg.scale == 1:
                continue
            node = self.layers[seg.layers[0]]
            h, w = node.spatial
            for pool in consumers.get(node.name, []):
                layer = self.traced.layers[pool.name]
                if pool.channels == node.channels and tiles_input(layer, (h, w)) and h % layer.pool_size[0] == 0 and w % layer.pool_size[1] == 0:
                    seg.pool, seg.band = len(pools), int(layer.pool_size[0])
                    pools.append(pool)
                    break
        return pools

    def is_current(self) -> bool:
        """Whether the layers that rank alike are still those it was made for (weights change in training)."""
        return self.ranked_as == ranked_as(self.traced, self.keep)

    def to_layer_order(self, rows: np.ndarray) -> np.ndarray:
        """Per-unit rows of the table (segment order, units only) in the reduced layers' order."""
        out = np.empty_like(rows[: self.units])
        out[self.order] = rows[: self.units]
        return out

    def columns_in_layer_order(self, rows: np.ndarray) -> np.ndarray:
        """Per-column rows (the maxima's columns: every unit shown) in layer order."""
        out = np.empty_like(rows)
        out[self.column_units] = rows
        return out

    def with_derived_maxima(self, batch_max: np.ndarray) -> np.ndarray:
        """The step's maxima [n, table units] -> [n, columns]: with the derived layers' after them."""
        if self.derived_maxima is None:
            return batch_max
        return np.concatenate([batch_max, self.derived_maxima(tf.constant(batch_max)).numpy()], axis=1)

    def _derived_maxima(self, batch_max):
        """[batch, derived units]: the derived layers' per-image maxima, their layers applied to their
        first layer's maxima ([batch, 1, 1, channels]: max over positions of f(x) is f(max x)); -inf
        where the first layer's is (NaN, padding)."""
        chains: dict[str, dict] = {}
        out = []
        for node in self.derived:
            first = self.ranked_as[node.name]
            if first not in chains:
                lo = self.table_row[first]
                x = batch_max[:, lo : lo + node.channels]
                chains[first] = ({first: tf.reshape(x, [-1, 1, 1, node.channels])}, tf.equal(x, -np.inf))
            values, empty = chains[first]
            y = tf.cast(tf.reshape(apply_chain(self.traced, node.name, values, first), [-1, node.channels]), tf.float32)
            out.append(tf.where(empty, tf.constant(-np.inf, y.dtype), y))
        return tf.concat(out, axis=1)

    def initial_state(self):
        """Running top K of every unit, then of every probe, as one [units, k] table each
        (values, image indices, positions): one merge per batch for all of them."""
        units = self.units + len(self.probe_slots)
        return (
            tf.fill([units, self.k], tf.constant(-np.inf, tf.float32)),
            tf.fill([units, self.k], tf.constant(-1, tf.int32)),
            tf.zeros([units, self.k], tf.int32),
        )

    def reduce(self, maps, pooled=()):
        """Per segment: its map (layers side by side), row maxima [batch, h / band, channels] (of
        each band of `band` rows: _band_pools; pooled: the tap's outputs for them), maximum
        [batch, channels], block means (block_mean) and which maps hold NaN [batch, channels] (None:
        the maximum is NaN then). Positions and heatmaps come later, for the maps that may enter a
        top K only.

        Maps larger than their heatmaps (most of the step's reading) take their row maxima from a
        max-pool over whole rows: the same values as reduce_max over the row, about twice as fast
        (oneDNN's pooling against a reduction over a middle axis), but it skips NaN and gives
        -FLT_MAX for a row of NaN and -inf only; NaN is found in the block means instead, which
        are computed anyway and which NaN reaches."""
        shared = _shared_constants()
        found = []
        for seg in self.segments:
            a = maps[seg.layers[0]] if len(seg.layers) == 1 else tf.concat([maps[li] for li in seg.layers], axis=shared(3))
            b, h, w, c = a.shape
            if seg.pool is not None:
                p = pooled[seg.pool]
                row_max = tf.reshape(tf.nn.max_pool2d(p, (1, p.shape[2]), (1, p.shape[2]), "VALID"), shared([b, p.shape[1], c]))
            elif seg.scale > 1:
                row_max = tf.reshape(tf.nn.max_pool2d(a, (1, w), (1, w), "VALID"), shared([b, h, c]))
            else:
                row_max = tf.reduce_max(a, axis=shared(2))
            if seg.scale > 1:
                means = block_mean(a, seg.scale)
                # NaN where the map holds NaN (or both infinities): the mean of its block means (a
                # pooling op; a reduction over the middle axes costs more than twice as much)
                nan = tf.math.is_nan(tf.reshape(tf.nn.avg_pool2d(means, seg.shape, seg.shape, "VALID"), shared([b, c])))
            else:
                means, nan = a, None
            found.append((a, row_max, tf.reduce_max(row_max, axis=shared(1)), means, nan))
        return found

    def _candidates(self, found, kth, invalid):
        """The maps that may enter a top K in this batch: those above their unit's current K-th
        value (a tie keeps the earlier image) and among the batch's K best for that unit (which
        halves the first batch's, where every map beats an empty list, at K = 16 and batches of
        32), a superset of those that enter. Returns, in
        row-major order of (unit row, image), each candidate's key unit row * batch + image and
        position (the first maximum in row-major order: the first row holding the map's maximum,
        then the first column of that row); per segment, its candidates' heatmaps uint8 [m, hs * ws]
        (the map averaged over blocks as block_mean does, 255 = the map's own maximum) and where
        they start in the keys; and the maxima [batch, units] (NaN and the padding images -inf).

        Per segment, from its own maxima, so that each segment's large maps are freed as soon as
        the forward pass no longer needs them (a selection over all units at once would keep every
        map of the batch alive until the last layer); only small values are gathered (a row of each
        candidate's row maxima, one row of its map, its block means), so the cost does not depend
        on how many maps are candidates: in the first batches nearly all are. Constants are shared
        and slices avoided: in a graph of a hundred segments the number of ops costs more (tracing,
        optimising, dispatching) than their arithmetic."""
        shared = _shared_constants()
        keys, positions, levels, tops = [], [], [], []
        for seg, (a, row_max, top, means, nan), seg_kth in zip(self.segments, found, tf.split(kth[:, None], [s.stop - s.start for s in self.segments])):
            b, h, w, c = a.shape
            hs, ws = seg.shape
            # a map holding NaN ranks no image; a max-pool gives -FLT_MAX where a map is only NaN and -inf
            excluded = tf.math.is_nan(top) | invalid if nan is None else nan | (top <= shared(-np.finfo(np.float32).max, top.dtype)) | invalid
            top = tf.where(excluded, shared(-np.inf, top.dtype), top)
            tops.append(top)
            unit_top = tf.transpose(top)  # [c, batch]
            may_enter = unit_top > seg_kth
            if self.k < self.batch_size:  # at most K of a batch enter a unit's top K: its K best (ties kept)
                # found only for the units with more than K maps above their K-th value (the first
                # batches'): for the others those maps are already among the batch's K best
                over = tf.where(tf.reduce_sum(tf.cast(may_enter, tf.int32), axis=shared(1)) > shared(self.k))  # [u, 1]
                over_kth = tf.reduce_min(tf.math.top_k(tf.gather_nd(unit_top, over), k=self.k).values, axis=shared(1))
                batch_kth = tf.tensor_scatter_nd_update(tf.fill(shared([c]), shared(-np.inf, top.dtype)), over, over_kth)
                may_enter &= unit_top >= batch_kth[:, None]
            where = tf.where(may_enter)  # [m, 2]: (channel, image), row-major
            channel, image = tf.split(where, 2, axis=shared(1))  # [m, 1] each

            def gather(values, base, size):  # [m, size]: `size` values c apart from each base, in the flat tensor
                return tf.gather(tf.reshape(values, shared([-1])), base + tf.constant(np.arange(size, dtype=np.int64)[None, :] * c), axis=shared(0))

            # the first band (row) holding the maximum, then the first place of it in that band's rows
            bands = row_max.shape[1]
            band = tf.argmax(gather(row_max, image * (bands * c) + channel, bands), axis=shared(1))
            first = band * seg.band * w + tf.argmax(gather(a, image * (h * w * c) + tf.reshape(band, shared([-1, 1])) * (seg.band * w * c) + channel,
                                                           seg.band * w), axis=shared(1))
            positions.append(first)
            keys.append(tf.reshape((channel + seg.start) * self.batch_size + image, shared([-1])))
            small = gather(means, image * (hs * ws * c) + channel, hs * ws)
            score = tf.maximum(tf.reshape(tf.gather_nd(unit_top, where), shared([-1, 1])), shared(0, top.dtype))
            level = tf.minimum(tf.maximum(tf.math.divide_no_nan(small, score), shared(0, small.dtype)), shared(1, small.dtype))
            levels.append(tf.cast(tf.round(level * shared(255, small.dtype)), tf.uint8))
        first = tf.cumsum(tf.stack([tf.size(k, out_type=tf.int64) for k in keys]), exclusive=True)
        candidates = tf.concat(keys, axis=0), tf.cast(tf.concat(positions, axis=0), tf.int32), levels, first
        return candidates, tf.concat(tops, axis=1)

    def _entered(self, candidates, picked):
        """The maps that entered a top K in this batch, in row-major order of (unit row, slot): their
        entries' (unit row, slot) [n, 2] and positions [n], and per segment, their heatmaps
        [n_segment, hs * ws]; taken from the candidates (every entry is one)."""
        keys, position, levels, first = candidates
        where = tf.where(picked >= self.k)  # [n, 2]: (unit row, slot) of the entries that came from this batch
        image = tf.cast(tf.gather_nd(picked, where) - self.k, tf.int64)
        at = tf.searchsorted(keys, where[:, 0] * self.batch_size + image, out_type=tf.int64)
        segment = tf.gather(tf.constant(self.unit_segment), where[:, 0])
        local = tf.dynamic_partition(at - tf.gather(first, segment), segment, len(self.segments))
        return where, tf.gather(position, at), tuple(tf.gather(level, i) for level, i in zip(levels, local))

    def _step(self, pixels, ids, labels, state):
        """ids: dataset indices, -1 for the padding of a short last batch (it never enters a top K);
        labels: each image's class (-1: none), for the per-image loss."""
        vals, top_ids, pos = state
        x = _input(pixels, self.preprocessing)
        found_cams = ()
        if self.cams is not None:
            outs, *found_cams = run_with_cams(self.tap, x, labels, self.cams)  # (cams [b, 2, h, w], their classes [b, 2])
        else:
            outs = self.tap(x, training=False)
        preds, maps = outs[0], outs[1:]
        # a mixed-precision model's maps are float16: its units' scores are kept as float32 (exactly)
        maps = [m if m.dtype == tf.float32 else tf.cast(m, tf.float32) for m in maps]
        maps, pooled = maps[: len(self.layers)], maps[len(self.layers) :]
        candidates, batch_max = self._candidates(self.reduce(maps, pooled), vals[: self.units, self.k - 1], (ids < 0)[:, None])  # batch_max: [batch, units], segment order
        unit_max = tf.transpose(batch_max)  # [units, batch]
        values = [unit_max]
        places = [tf.zeros(tf.shape(unit_max), tf.int32)]  # units' positions: set below, for the entries that enter
        for li, row, col, ch in self.probe_slots:
            v = maps[li][:, row, col, ch][None, :]
            values.append(tf.where(tf.math.is_nan(v) | (ids[None, :] < 0), tf.constant(-np.inf, v.dtype), v))
            places.append(tf.fill(tf.shape(v), tf.constant(row * maps[li].shape[2] + col, tf.int32)))
        new_vals = tf.concat(values, axis=0)  # [units + probes, batch]
        new_pos = tf.concat(places, axis=0)
        (vals, top_ids, pos), picked, rows, rows_picked = _merge_top_k(vals, top_ids, pos, new_vals, ids, new_pos, self.k)
        where, positions, levels = self._entered(candidates, picked[: self.units])
        pos = tf.tensor_scatter_nd_update(pos, where, positions)
        table = (vals, top_ids, pos)
        heat = (rows, rows_picked, levels)  # for HeatTable.update
        entered = tf.math.bincount(tf.boolean_mask(picked, picked >= self.k) - self.k, minlength=self.batch_size, maxlength=self.batch_size) > 0
        losses = self.loss(labels, preds) if self.loss is not None and self.loss.enabled else tf.zeros(tf.shape(ids), tf.float32)
        return preds, batch_max, losses, entered, heat, tuple(found_cams), table


class HeatTable:
    """Each running top-K entry's heatmap, kept on the host beside the table and moved as the table
    moves: per segment one uint8 [units, k, hs * ws] array (no padding to the largest size). Its size
    is fixed and bounded (heat_side keeps every unit's K heatmaps within HEAT_BUDGET); a batch
    touches only the rows it changed, so nothing is copied or sorted as the pass goes on."""

    def __init__(self, miner: MiningStep) -> None:
        self.k = miner.k
        self.segments = miner.segments
        self.channels = [node.channels for node in miner.layers]
        self.tables = [np.zeros((seg.stop - seg.start, miner.k, seg.shape[0] * seg.shape[1]), np.uint8) for seg in miner.segments]

    def update(self, rows: np.ndarray, picked: np.ndarray, levels: list[np.ndarray]) -> None:
        """rows: the table rows a batch may have changed (ascending; probes' rows are ignored);
        picked: [rows, k], where each entry came from (< k: that row's old slot, else an image of the
        batch); levels: per segment, the heatmaps of its new entries in row-major (row, slot) order."""
        for seg, table, new in zip(self.segments, self.tables, levels):
            lo, hi = np.searchsorted(rows, [seg.start, seg.stop])
            if lo == hi:
                continue
            base = (rows[lo:hi] - seg.start) * self.k  # each changed row's first entry in the flat table
            source = picked[lo:hi]
            flat = table.reshape(-1, table.shape[2])
            # only the entries that moved or are new are written (not whole rows): the kept ones
            # before a row's first new entry stay where they are. The moved ones are all read
            # (a copy) before any is written, since a slot can be both.
            r, s = np.nonzero((source < self.k) & (source != np.arange(self.k)))
            flat[base[r] + s] = flat[base[r] + source[r, s]]
            r, s = np.nonzero(source >= self.k)
            flat[base[r] + s] = new

    def flat(self) -> tuple[np.ndarray, np.ndarray]:
        """Every unit's heatmaps, unit after unit in layer order ([k, size] each; empty slots are
        zeros), and each unit's size: PartialScan.heat and heat_sizes."""
        at = {}
        for seg, table in zip(self.segments, self.tables):
            row = 0
            for li in seg.layers:
                at[li] = table[row : row + self.channels[li]]
                row += self.channels[li]
        blocks = [at[li] for li in range(len(self.channels))]
        sizes = np.concatenate([np.full(b.shape[0], b.shape[2], np.int64) for b in blocks]) if blocks else np.zeros(0, np.int64)
        return np.concatenate([b.reshape(-1) for b in blocks]) if blocks else np.zeros(0, np.uint8), sizes


class PerImageLoss:
    """The model's loss per image, computed in the graph on the output tensor itself, as
    `model.evaluate` does: Keras computes a sigmoid/softmax output's cross-entropy from the logits
    that tensor carries, which differs from the clipped probabilities where the model is confident."""

    def __init__(self, loss: LossSpec, mode: str, num_outputs: int) -> None:
        self.enabled = loss.fn is not None and mode != "none"
        if not self.enabled:
            return
        fn = loss.fn
        self.call = fn.call if isinstance(fn, keras.losses.Loss) else fn  # unreduced: one value per image
        self.sparse = "sparse" in f"{loss.name} {type(fn).__name__} {getattr(fn, 'fn', '')}".lower()
        self.mode = mode
        self.num_outputs = num_outputs

    def __call__(self, labels, preds):
        labels = tf.maximum(labels, 0)
        if self.mode == "binary":
            y_true = tf.cast(labels, preds.dtype)[:, None]
        elif self.sparse:
            y_true = labels
        else:
            y_true = tf.one_hot(labels, self.num_outputs, dtype=preds.dtype)
        return tf.reshape(tf.cast(self.call(y_true, preds), tf.float32), [-1])


