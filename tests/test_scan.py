"""The one pass: top-K per unit and per probe against brute force, metrics against hand computation."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from badfiles import make_dataset
from conftest import load_like_keras, tiny_sequential


def _dead_first_channel(model) -> None:
    """Make c1's channel 0 dead: negative weights and bias on non-negative pixels -> ReLU gives 0 everywhere."""
    conv = model.get_layer("c1")
    kernel, bias = conv.get_weights()
    kernel[..., 0] = -abs(kernel[..., 0]) - 0.01
    bias[0] = -1.0
    conv.set_weights([kernel, bias])


def _dataset_with_duplicates(root: Path) -> None:
    make_dataset(root, {"cats": 9, "dogs": 8})
    # Identical copies under later names: equal scores, so ties must go to the earlier image.
    shutil.copy(root / "cats" / "img_002.png", root / "dogs" / "zz_copy_of_cat_002.png")
    shutil.copy(root / "cats" / "img_005.png", root / "cats" / "zz_copy_of_cat_005.png")


def _brute_force(traced, dataset, batch_size, k):
    """Full maps for every image (same batches as the pass, the last one padded with zeros as the
    pass pads it: without oneDNN, TensorFlow's convolutions can round an image's values differently
    by one ulp depending on the size of the batch it is in, in Keras's own predict too), then plain
    numpy sorting."""
    from reportgen.dataset import iter_batches
    from reportgen.engines.local import run_images

    per_layer = {n.name: [] for n in traced.map_layers}
    ids = []
    for batch in iter_batches(dataset.records, traced.spec, batch_size, []):
        n = len(batch.indices)
        pixels = np.concatenate([batch.pixels, np.zeros((batch_size - n,) + batch.pixels.shape[1:], batch.pixels.dtype)])
        _, maps = run_images(traced, pixels)
        ids.extend(batch.indices.tolist())
        for node, m in zip(traced.map_layers, maps):
            per_layer[node.name].append(m[:n])
    expected = {}
    for node in traced.map_layers:
        maps = np.concatenate(per_layer[node.name])  # [n, h, w, c]
        n, h, w, c = maps.shape
        flat = maps.reshape(n, h * w, c)
        for ch in range(c):
            scores = flat[:, :, ch].max(axis=1)
            first_pos = flat[:, :, ch].argmax(axis=1)  # numpy: first occurrence
            # Highest score first; among equal scores, the earlier image in dataset order.
            order = sorted(range(n), key=lambda i: (-scores[i], ids[i]))[:k]
            expected[(node.name, ch)] = [(ids[i], scores[i], first_pos[i] // w, first_pos[i] % w) for i in order]
    return expected, per_layer, ids


@pytest.mark.parametrize("batch_size, heat_side", [(4, None), (7, None), (4, 3)])
def test_top_k_matches_brute_force_with_ties(tmp_path, batch_size, heat_side):
    """heat_side 3: maps larger than their heatmaps, whose row maxima come from a max-pool."""
    from reportgen.dataset import discover
    from reportgen.model import trace_model
    from reportgen.engines.local import scan_dataset

    model = tiny_sequential()
    _dead_first_channel(model)
    _dataset_with_duplicates(tmp_path / "data")
    dataset = discover(tmp_path / "data")
    traced = trace_model(model)
    k = 5
    result = scan_dataset(traced, dataset, top_k=k, batch_size=batch_size, heat_side=heat_side, quiet=True)
    expected, _, _ = _brute_force(traced, dataset, batch_size, k)

    for node in traced.map_layers:
        for unit in result.units[node.name]:
            want = expected[(node.name, unit.channel)]
            got = [(e.image, e.value, e.row, e.col) for e in unit.top]
            assert [g[0] for g in got] == [w[0] for w in want], (node.name, unit.channel)
            np.testing.assert_array_equal([g[1] for g in got], np.array([w[1] for w in want], dtype=np.float32))
            assert [(g[2], g[3]) for g in got] == [(int(w[2]), int(w[3])) for w in want]

    dead = result.units["c1"][0]
    assert dead.dead and dead.max_value == 0.0
    assert [e.image for e in dead.top] == [0, 1, 2, 3, 4]  # all tie at 0: dataset order
    assert all((e.row, e.col) == (0, 0) for e in dead.top)  # all positions tie: the first one
    # The duplicated images score exactly alike; wherever both are in a list, the original comes first.
    original = next(r.index for r in dataset.records if r.rel == "cats/img_002.png")
    copy = next(r.index for r in dataset.records if r.rel == "dogs/zz_copy_of_cat_002.png")
    assert original < copy
    for units in result.units.values():
        for unit in units:
            images = [e.image for e in unit.top]
            assert len(set(images)) == len(images)  # each image at most once
            if original in images and copy in images:
                assert images.index(original) < images.index(copy)


@pytest.mark.parametrize("layer, row, col, channel, heat_side", [("c2", 2, 1, 3, None), ("p1", 3, 2, 1, 3)])
def test_probe_matches_brute_force(tmp_path, layer, row, col, channel, heat_side):
    """p1 with heat side 3: the probe keeps the pool reduced on its own while c1 takes its band
    row maxima from it (the pool is then both a reduced map and c1's source)."""
    from reportgen.dataset import discover
    from reportgen.model import trace_model
    from reportgen.engines.local import scan_dataset
    from reportgen.engines.mining import Probe

    model = tiny_sequential()
    make_dataset(tmp_path / "data", {"a": 7, "b": 6})
    dataset = discover(tmp_path / "data")
    traced = trace_model(model)
    probe = Probe(layer, row, col, channel)
    result = scan_dataset(traced, dataset, top_k=4, batch_size=5, probes=[probe], heat_side=heat_side, quiet=True)
    expected, per_layer, ids = _brute_force(traced, dataset, 5, 4)
    values = np.concatenate(per_layer[layer])[:, row, col, channel]
    order = sorted(range(len(ids)), key=lambda i: (-values[i], ids[i]))[:4]
    got = result.probes[0].top
    assert [e.image for e in got] == [ids[i] for i in order]
    np.testing.assert_array_equal([e.value for e in got], values[order])
    assert all((e.row, e.col) == (row, col) for e in got)
    for node in traced.map_layers:
        for unit in result.units[node.name]:
            want = expected[(node.name, unit.channel)]
            assert [(e.image, e.row, e.col) for e in unit.top] == [(w[0], int(w[2]), int(w[3])) for w in want]
            np.testing.assert_array_equal([e.value for e in unit.top], np.array([w[1] for w in want], dtype=np.float32))


def test_metrics_match_hand_computation_and_keras_evaluate(tmp_path):
    from reportgen.dataset import discover
    from reportgen.model import trace_model
    from reportgen.engines.local import scan_dataset

    model = tiny_sequential()
    make_dataset(tmp_path / "data", {"cats": 10, "dogs": 7})
    dataset = discover(tmp_path / "data")
    result = scan_dataset(trace_model(model), dataset, top_k=3, batch_size=4, quiet=True)

    x = load_like_keras([r.path for r in dataset.records])
    y = np.array([r.label for r in dataset.records])
    p = model.predict(x, verbose=0)[:, 0]
    predicted = (p > 0.5).astype(int)
    confusion = [[int(np.sum((y == t) & (predicted == q))) for q in (0, 1)] for t in (0, 1)]
    m = result.metrics
    assert m.mode == "binary"
    assert m.confusion == confusion
    assert m.accuracy == pytest.approx(np.mean(predicted == y))
    assert m.per_class["cats"] == pytest.approx(np.mean(predicted[y == 0] == 0))
    assert m.per_class["dogs"] == pytest.approx(np.mean(predicted[y == 1] == 1))
    # binary cross-entropy by hand (Keras clips probabilities to [eps, 1 - eps])
    eps = 1e-7
    pc = np.clip(p.astype(np.float64), eps, 1 - eps)
    assert m.loss == pytest.approx(np.mean(-(y * np.log(pc) + (1 - y) * np.log(1 - pc))), rel=1e-4)
    loss, accuracy = model.evaluate(x, y, verbose=0, batch_size=4)
    assert m.loss == pytest.approx(loss, rel=1e-4)
    assert m.accuracy == pytest.approx(accuracy)


def test_softmax_argmax_and_class_mismatch(tmp_path):
    from reportgen.dataset import discover
    from reportgen.model import trace_model
    from reportgen.engines.local import scan_dataset

    make_dataset(tmp_path / "three", {"a": 4, "b": 5, "c": 3})
    dataset = discover(tmp_path / "three")
    model = tiny_sequential(outputs=3)
    result = scan_dataset(trace_model(model), dataset, top_k=2, batch_size=5, quiet=True)
    x = load_like_keras([r.path for r in dataset.records])
    y = np.array([r.label for r in dataset.records])
    predicted = model.predict(x, verbose=0).argmax(axis=1)
    assert result.metrics.mode == "categorical"
    assert result.metrics.accuracy == pytest.approx(np.mean(predicted == y))
    assert result.metrics.loss == pytest.approx(model.evaluate(x, y, verbose=0)[0], rel=1e-4)

    seven = tiny_sequential(outputs=7)
    result = scan_dataset(trace_model(seven), dataset, top_k=2, batch_size=5, quiet=True)
    assert result.metrics.accuracy is None and result.metrics.loss is None
    assert "7 output units" in result.metrics.note and "3 class folders" in result.metrics.note
    assert all(len(u.top) == 2 for u in result.units["c1"])  # everything else still computed


def test_histograms_are_exact(tmp_path):
    from reportgen.dataset import discover
    from reportgen.model import trace_model
    from reportgen.engines.local import scan_dataset
    from reportgen.stats import HISTOGRAM_BINS

    model = tiny_sequential()
    make_dataset(tmp_path / "data", {"a": 11, "b": 10})
    dataset = discover(tmp_path / "data")
    traced = trace_model(model)
    result = scan_dataset(traced, dataset, top_k=3, batch_size=6, quiet=True)
    _, per_layer, _ = _brute_force(traced, dataset, 6, 3)
    for node in traced.map_layers:
        maxima = np.concatenate(per_layer[node.name]).max(axis=(1, 2)).astype(np.float64)
        for unit in result.units[node.name]:
            v = maxima[:, unit.channel]
            h = unit.histogram
            assert h.nonpositive == int(np.sum(v <= 0))
            if h.hi:
                assert h.hi > v.max() and h.hi / 2 <= v.max()  # smallest power of two above the max
                edges = np.linspace(0, h.hi, HISTOGRAM_BINS + 1)
                counts, _ = np.histogram(v[v > 0], bins=edges)
                assert h.counts == counts.tolist()
            assert sum(h.counts) + h.nonpositive == len(v)


def test_streaming_histogram_growth_is_exact():
    from reportgen.stats import HISTOGRAM_BINS, StreamingHistograms

    rng = np.random.default_rng(3)
    values = np.concatenate([rng.uniform(0, 0.01, 50), rng.uniform(0, 5, 50), rng.uniform(-2, 300, 50), [0.0, np.nan]])
    hist = StreamingHistograms(1)
    for chunk in np.array_split(values, 9):
        hist.update(chunk[:, None])
    h = hist.result(0)
    finite = values[np.isfinite(values)]
    assert h.hi == 512.0
    assert h.nonpositive == int(np.sum(~(values > 0)))
    counts, _ = np.histogram(finite[finite > 0], bins=np.linspace(0, 512, HISTOGRAM_BINS + 1))
    assert h.counts == counts.tolist()


@pytest.mark.parametrize("tiny", [False, True])
def test_streaming_histograms_of_many_units_equal_numpy(tiny):
    """Units of very different scales, growing in different batches, NaN, -inf and zeros, an empty
    batch: each unit's counts equal np.histogram over all its values with the final range."""
    from reportgen.stats import HISTOGRAM_BINS, StreamingHistograms

    rng = np.random.default_rng(11)
    units = 300
    batches = [(rng.normal(0.2, 1, (int(rng.integers(1, 40)), units)) * 10.0 ** rng.uniform(-5, 5, units) * (1 + i)).astype(np.float32)
               for i in range(8)]
    if tiny:  # units whose every value is below float32's normal numbers: computed in float64
        for b in batches:
            b[:, :3] = rng.uniform(0, 1e-38, (len(b), 3))
    for b in batches:
        b[rng.random(b.shape) < 0.05] = np.nan
        b[rng.random(b.shape) < 0.1] = 0
        b[rng.random(b.shape) < 0.02] = -np.inf
    batches.append(np.zeros((0, units), np.float32))
    hist = StreamingHistograms(units)
    for b in batches:
        hist.update(b)
    values = np.concatenate(batches).astype(np.float64)
    for u in range(units):
        v = values[:, u]
        positive = v[v > 0]
        h = hist.result(u)
        assert h.nonpositive == len(v) - len(positive)
        if not len(positive):
            assert h.hi == 0 and sum(h.counts) == 0
            continue
        assert h.hi == 2.0 ** (np.floor(np.log2(positive.max())) + 1)
        counts, _ = np.histogram(positive, bins=np.linspace(0, h.hi, HISTOGRAM_BINS + 1))
        assert h.counts == counts.tolist(), u


def test_flat_folder_has_no_labels(tmp_path):
    from reportgen.dataset import discover
    from reportgen.model import trace_model
    from reportgen.engines.local import scan_dataset
    from badfiles import make_rgb_png

    for i in range(5):
        make_rgb_png(tmp_path / "flat" / f"p{i}.png", seed=i)
    dataset = discover(tmp_path / "flat")
    assert dataset.classes == [] and all(r.label is None for r in dataset.records)
    result = scan_dataset(trace_model(tiny_sequential()), dataset, top_k=3, batch_size=2, quiet=True)
    assert result.metrics.accuracy is None and "no class folders" in result.metrics.note
    assert result.num_images == 5


@pytest.mark.parametrize("pool", ["same-odd", "same-big", "overlapping", "valid-odd", "tiling", "tiling-3x2"])
def test_layers_followed_by_max_pools_match_brute_force(tmp_path, pool):
    """Layers followed by max-pools of every kind: positions and values as brute force finds them.
    Where the pool tiles the map exactly and the heatmaps are smaller than the map, the pass takes
    the map's row maxima per band of pool-height rows from the pool's output (mining._band_pools)."""
    import keras

    from reportgen.dataset import discover
    from reportgen.engines.local import scan_dataset
    from reportgen.engines.mining import DEFAULT_PREPROCESSING, MiningStep
    from reportgen.model import trace_model

    keras.utils.set_random_seed(4)
    pooling, size = {
        "same-odd": (keras.layers.MaxPooling2D(2, padding="same", name="pool"), (17, 17)),  # 15 -> 8, last window half outside
        "same-big": (keras.layers.MaxPooling2D(6, padding="same", name="pool"), (17, 17)),  # 15 -> 3: padding 1 before, 2 after
        "overlapping": (keras.layers.MaxPooling2D(3, strides=2, name="pool"), (17, 17)),  # windows overlap: read directly
        "valid-odd": (keras.layers.MaxPooling2D(2, name="pool"), (17, 17)),  # 15 -> 7 drops the last row: read directly
        "tiling": (keras.layers.MaxPooling2D(2, name="pool"), (18, 18)),  # 16 -> 8: bands of 2 rows
        "tiling-3x2": (keras.layers.MaxPooling2D((3, 2), name="pool"), (17, 18)),  # 15 x 16 -> 5 x 8: bands of 3 rows
    }[pool]
    model = keras.Sequential(
        [keras.Input((*size, 3)), keras.layers.Conv2D(6, 3, activation="relu", name="conv"), pooling, keras.layers.Flatten(),
         keras.layers.Dense(1, activation="sigmoid")]
    )
    conv = model.get_layer("conv")
    kernel, bias = conv.get_weights()
    kernel[..., 0], bias[0] = -abs(kernel[..., 0]) - 0.01, -1.0  # channel 0 dead: every position ties at 0
    kernel[..., 1] = np.round(kernel[..., 1] * 4) / 4  # coarse weights on 0/1 pixels: ties within and across bands
    conv.set_weights([kernel, bias])
    make_dataset(tmp_path / "data", {"a": 6, "b": 5})
    dataset = discover(tmp_path / "data")
    traced = trace_model(model)
    side = 3 if pool.startswith("tiling") else None
    conv_segment = MiningStep(traced, 4, [], DEFAULT_PREPROCESSING, 4, side=side).segments[0]
    assert conv_segment.band == {"tiling": 2, "tiling-3x2": 3}.get(pool, 1)
    result = scan_dataset(traced, dataset, top_k=4, batch_size=4, heat_side=side, quiet=True)
    expected, _, _ = _brute_force(traced, dataset, 4, 4)
    for node in traced.map_layers:
        for unit in result.units[node.name]:
            want = expected[(node.name, unit.channel)]
            assert [(e.image, e.row, e.col) for e in unit.top] == [(w[0], int(w[2]), int(w[3])) for w in want]
            np.testing.assert_array_equal([e.value for e in unit.top], np.array([w[1] for w in want], dtype=np.float32))
    assert all((e.row, e.col) == (0, 0) for e in result.units["conv"][0].top)


@pytest.mark.parametrize("side", [32, 3])
def test_heatmaps_and_thumbnails_from_the_one_pass_match_the_maps(tmp_path, side):
    """Heatmaps and thumbnails are kept while the pass runs (no second read). Each heatmap is the
    unit's map on that image averaged over blocks to at most `side` a side (blocks placed as
    TensorFlow's 'same' padding places them, averaging only pixels inside the map), 255 = the unit's
    top value; each thumbnail is the image as decoded."""
    import io

    from PIL import Image

    from reportgen.dataset import discover, load_pixels
    from reportgen.engines.local import run_images, scan_dataset
    from reportgen.model import trace_model

    def block_means(m, scale):  # numpy, by the rule stated above
        h, w = m.shape
        out_h, out_w = -(-h // scale), -(-w // scale)
        top, left = (out_h * scale - h) // 2, (out_w * scale - w) // 2
        out = np.zeros((out_h, out_w))
        for i in range(out_h):
            for j in range(out_w):
                r0, c0 = max(0, i * scale - top), max(0, j * scale - left)
                out[i, j] = m[r0 : min(h, (i + 1) * scale - top), c0 : min(w, (j + 1) * scale - left)].mean()
        return out

    model = tiny_sequential()
    make_dataset(tmp_path / "data", {"a": 5, "b": 4})
    dataset = discover(tmp_path / "data")
    traced = trace_model(model)
    result = scan_dataset(traced, dataset, top_k=3, batch_size=4, heat_side=side, quiet=True)  # 3 batches: merges
    wanted = {e.image for units in result.units.values() for u in units for e in u.top}
    assert set(result.thumbnails) == wanted
    for image in wanted:
        thumb = result.thumbnails[image]
        assert thumb.ext == "png"  # 16 x 16: exact
        np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(thumb.data))), load_pixels(dataset.records[image].path, traced.spec))
    index = {node.name: i for i, node in enumerate(traced.map_layers)}
    assert result.ranked_as == {"p1": "c1"}  # a max-pool tiling its input: c1's heatmaps
    for node in traced.map_layers:
        units = result.units[node.name]
        source = traced.map_layers[index[result.ranked_as.get(node.name, node.name)]]
        li = index[source.name]
        scale = max(1, -(-max(source.spatial) // side))
        assert units.heat.shape[2:] == tuple(-(-s // scale) for s in source.spatial)
        for unit in units:
            top = result.units[source.name][unit.channel].max_value
            for rank, entry in enumerate(unit.top):
                _, maps = run_images(traced, load_pixels(dataset.records[entry.image].path, traced.spec)[None])
                small = block_means(maps[li][0, :, :, unit.channel].astype(np.float64), scale)
                expected = np.round(np.clip(small / top, 0, 1) * 255) if top > 0 else np.zeros_like(small)
                np.testing.assert_allclose(units.heat[unit.channel, rank], expected, atol=2)


@pytest.mark.parametrize("side", [32, 3])
def test_a_map_holding_nan_ranks_no_image(tmp_path, side):
    """Where a unit's map holds NaN on an image (the model fails there), or is -inf everywhere, the
    unit does not rank that image; the other images rank by their maxima as always, and the
    histograms count such an image as non-positive. Side 32: maps read whole; side 3: maps larger
    than their heatmaps, whose row maxima come from a max-pool (which skips NaN by itself)."""
    import keras
    from PIL import Image

    from reportgen.dataset import discover
    from reportgen.engines.local import run_images, scan_dataset
    from reportgen.model import trace_model

    rng = np.random.default_rng(5)
    for i in range(11):
        pixels = rng.integers(150, 256, (16, 16, 3), dtype=np.uint8)
        if i % 3 == 0:
            pixels[4:9, 6:11] = 0  # a dark patch: c1's channel 1 is negative there, so its log is NaN
        (tmp_path / "data" / "a").mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(tmp_path / "data" / "a" / f"img_{i:02d}.png")
    inputs = keras.Input((16, 16, 3))
    c1 = keras.layers.Conv2D(3, 3, name="c1")
    log = keras.layers.Lambda(lambda x: keras.ops.log(x), name="log")(c1(inputs))
    model = keras.Model(inputs, keras.layers.Dense(1)(keras.layers.Flatten()(log)))
    kernel = np.zeros((3, 3, 3, 3), np.float32)
    kernel[..., 0] = kernel[..., 1] = rng.uniform(0.5, 1.5, (3, 3, 3)) / 27  # about the patch's mean
    c1.set_weights([kernel, np.array([0.1, -0.3, 0.0], np.float32)])  # channel 2: 0 everywhere, its log -inf
    dataset = discover(tmp_path / "data")
    traced = trace_model(model)
    k = 4
    result = scan_dataset(traced, dataset, top_k=k, batch_size=4, heat_side=side, quiet=True)
    _, maps = run_images(traced, np.stack([np.asarray(Image.open(r.path)) for r in dataset.records]))
    logs = maps[[n.name for n in traced.map_layers].index("log")]
    assert np.isnan(logs[::3, :, :, 1]).any(axis=(1, 2)).all() and not np.isnan(logs[1::3, :, :, 1]).any()  # as meant
    for channel in range(3):
        m = logs[:, :, :, channel].reshape(len(logs), -1)
        scores = np.where(np.isnan(m).any(axis=1), -np.inf, m.max(axis=1))
        ranked = [i for i in sorted(range(len(m)), key=lambda i: (-scores[i], i)) if scores[i] > -np.inf][:k]
        unit = result.units["log"][channel]
        assert [e.image for e in unit.top] == ranked, channel
        np.testing.assert_array_equal([e.value for e in unit.top], scores[ranked].astype(np.float32))
        positive = scores > 0
        assert unit.histogram.nonpositive == int((~positive).sum())
    assert len(result.units["log"][2].top) == 0 and len(result.units["log"][1].top) == k


def test_default_batch_size_bounds_the_feature_maps_of_a_batch():
    """Without --batch-size: 64 images, fewer when their maps pass MAP_BYTES_PER_BATCH (each map of a
    batch is held until the step has read it); an explicit --batch-size is kept."""
    from types import SimpleNamespace

    from reportgen.build import pass_batch_size

    def traced(*layers):
        return SimpleNamespace(map_layers=[SimpleNamespace(spatial=(h, w), channels=c) for h, w, c in layers])

    small = traced((148, 148, 32), (74, 74, 32))  # 4.2 MB of float32 maps per image
    assert pass_batch_size(None, small) == 64
    mid = traced(*[(224, 224, 64)] * 5)  # 64.2 MB per image
    assert pass_batch_size(None, mid) == 37  # 37 x 64.2 MB <= 2.4 GB < 38 x
    huge = traced((1024, 1024, 512))  # 2.1 GB per image: one at a time
    assert pass_batch_size(None, huge) == 1
    assert pass_batch_size(100, huge) == 100
    resnet_like = traced(*[(56, 56, 256)] * 36)  # 115.6 MB per image
    assert pass_batch_size(None, resnet_like) == 20  # 20 x 115.6 MB <= 2.4 GB < 21 x
