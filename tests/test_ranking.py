"""Layers that rank images as their input layer does (Conv -> BatchNormalization -> ReLU): the pass
reduces the chain's first layer only; the others show its top K with their own scores. Checked
against each layer's own maps from Keras, image by image."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from badfiles import make_dataset


def _chain_model():
    import keras

    keras.utils.set_random_seed(7)
    L = keras.layers
    model = keras.Sequential([
        keras.Input((16, 16, 3)),
        L.Conv2D(6, 3, name="conv"),
        L.BatchNormalization(name="bn"),
        L.ReLU(name="relu"),
        L.Conv2D(4, 3, name="conv2"),
        L.BatchNormalization(name="bn_neg"),  # one negative scale: ranks on its own
        L.Activation("relu6", name="relu6"),
        L.LeakyReLU(0.2, name="leaky"),
        L.Activation("tanh", name="tanh"),  # an approximated function: not trusted to keep the order
        L.ReLU(threshold=0.1, name="shifted"),  # not non-decreasing: a jump down at the threshold
        L.MaxPooling2D(3, strides=1, name="pool_overlap"),  # 12 -> 10: windows overlap, reduced itself
        L.MaxPooling2D(2, name="pool_tiles"),  # 10 -> 5: tiles its input
        L.MaxPooling2D(4, padding="same", name="pool_pad"),  # 5 -> 2: 'same', a padding row and column before
        L.Conv2D(3, 1, name="conv3"),
        L.GlobalAveragePooling2D(name="gap"),
        L.Dense(1, activation="sigmoid", name="out"),
    ])
    rng = np.random.default_rng(3)
    for name, channels in (("bn", 6), ("bn_neg", 4)):
        gamma = rng.uniform(0.5, 2.0, channels)
        if name == "bn_neg":
            gamma[1] = -1.0
        model.get_layer(name).set_weights([gamma, rng.normal(0, 0.3, channels), rng.normal(0, 0.2, channels), rng.uniform(0.5, 2, channels)])
    kernel, bias = model.get_layer("conv").get_weights()
    bias[0] = -50.0  # channel 0 negative everywhere after BatchNormalization: ReLU ties all images at 0
    model.get_layer("conv").set_weights([kernel, bias])
    model.compile(loss="binary_crossentropy")
    return model


CHAINS = {"bn": "conv", "relu": "conv", "relu6": "bn_neg", "leaky": "bn_neg", "pool_tiles": "pool_overlap", "pool_pad": "pool_overlap"}


def _own_maps(traced, dataset, batch_size):
    """Every layer's own maps as Keras computes them in the model (not the pass's arithmetic), in
    the pass's batches (the same batch shapes give the same rounding)."""
    from reportgen.dataset import iter_batches
    from reportgen.engines.local import run_images

    per_layer = {n.name: [] for n in traced.map_layers}
    for batch in iter_batches(dataset.records, traced.spec, batch_size, []):
        _, maps = run_images(traced, batch.pixels)
        for node, m in zip(traced.map_layers, maps):
            per_layer[node.name].append(m)
    return {name: np.concatenate(m).astype(np.float32) for name, m in per_layer.items()}  # float16 in mixed precision: exact


def test_ranking_chains_are_found_from_the_weights():
    from reportgen.model import trace_model
    from reportgen.model.ranking import ranked_as

    traced = trace_model(_chain_model())
    assert ranked_as(traced) == CHAINS
    # relu's input is not shown: relu is reduced itself
    assert ranked_as(trace_model(_chain_model(), layers=["*", "!bn"])) == {k: v for k, v in CHAINS.items() if v != "conv"}
    assert ranked_as(traced, keep={"relu6"}) == {"bn": "conv", "relu": "conv", "leaky": "relu6", "pool_tiles": "pool_overlap", "pool_pad": "pool_overlap"}


def test_which_max_pools_tile_their_input():
    import keras

    from reportgen.model.ranking import tiles_input

    L = keras.layers
    assert tiles_input(L.MaxPooling2D(2), (4, 6)) and tiles_input(L.MaxPooling2D((2, 3)), (4, 6))
    assert not tiles_input(L.MaxPooling2D(2), (5, 6))  # 'valid' drops the last row
    assert tiles_input(L.MaxPooling2D(2, padding="same"), (5, 5))
    assert not tiles_input(L.MaxPooling2D(3, strides=2, padding="same"), (6, 6))  # overlapping windows
    assert not tiles_input(L.AveragePooling2D(2), (4, 4))


def test_which_activations_keep_the_ranking():
    import keras

    from reportgen.model.ranking import keeps_ranking

    L = keras.layers

    def relu(x):  # a namesake of Keras's, decreasing
        return -x

    assert all(keeps_ranking(L.Activation(name)) for name in ("relu", "relu6", "linear", "leaky_relu"))
    assert not keeps_ranking(L.Activation(relu)) and not keeps_ranking(L.Activation("sigmoid"))
    assert keeps_ranking(L.ReLU(max_value=6.0, negative_slope=0.1)) and not keeps_ranking(L.ReLU(threshold=0.5))
    assert keeps_ranking(L.LeakyReLU(0.3)) and not keeps_ranking(L.ELU())  # ELU's exp: not trusted to the last bit


def _check_against_own_maps(result, traced, own: dict, k: int) -> None:
    """Every unit of every layer against the layer's own maps: ranked by its first layer's scores
    (ties: the earlier image), a top K of its own scores with its own scores, positions holding the
    maximum, histograms exact; reduced layers exactly as brute force."""
    from reportgen.stats import StreamingHistograms

    for node in traced.map_layers:
        maps = own[node.name]
        n, h, w, c = maps.shape
        flat = maps.reshape(n, h * w, c)
        first = result.ranked_as.get(node.name, node.name)
        first_max = own[first].max(axis=(1, 2))
        for unit in result.units[node.name]:
            ch = unit.channel
            scores = flat[:, :, ch].max(axis=1)
            first_scores = first_max[:, ch]
            # ranked by the first layer's scores (ties: the earlier image)
            order = sorted(range(n), key=lambda i: (-first_scores[i], i))[:k]
            assert [e.image for e in unit.top] == order, (node.name, ch)
            # ... which is a top K of this layer's own scores, with its own scores
            np.testing.assert_allclose([e.value for e in unit.top], scores[order], rtol=1e-6, atol=1e-6)
            np.testing.assert_allclose([e.value for e in unit.top], np.sort(scores)[::-1][:k], rtol=1e-6, atol=1e-6)
            for e in unit.top:  # the position shown holds the image's maximum in this layer's map
                np.testing.assert_allclose(maps[e.image, e.row, e.col, ch], scores[e.image], rtol=1e-6, atol=1e-6)
            if node.name not in result.ranked_as:  # reduced: the first maximum in row-major order, exactly
                assert [e.row * w + e.col for e in unit.top] == [int(flat[i, :, ch].argmax()) for i in order]
                np.testing.assert_array_equal([e.value for e in unit.top], scores[order])
        if node.name in result.ranked_as:
            np.testing.assert_array_equal(result.units[node.name].heat, result.units[first].heat)
        histograms = StreamingHistograms(c)
        histograms.update(flat.max(axis=1))
        np.testing.assert_array_equal(result.units[node.name].hist_counts, histograms.counts, err_msg=node.name)


def test_derived_layers_show_their_first_layers_top_k_with_their_own_scores(tmp_path):
    from reportgen.dataset import discover
    from reportgen.engines.local import mine, scan_dataset
    from reportgen.engines.partial import finish, merge_partials
    from reportgen.model import trace_model

    make_dataset(tmp_path / "data", {"a": 11, "b": 10})
    dataset = discover(tmp_path / "data")
    traced = trace_model(_chain_model())
    k = 5
    result = scan_dataset(traced, dataset, top_k=k, batch_size=4, quiet=True)
    assert result.ranked_as == CHAINS
    _check_against_own_maps(result, traced, _own_maps(traced, dataset, 4), k)
    dead = result.units["relu"][0]
    assert dead.dead and [e.value for e in dead.top] == [0.0] * k
    assert [e.image for e in dead.top] != list(range(k))  # the ties at 0 keep the BatchNormalization's order
    # parts merged in any order give the one pass's result
    halves = [dataset.records[1::2], dataset.records[::2]]
    parts = [mine(traced, dataset, part, top_k=k, batch_size=3, quiet=True) for part in halves]
    merged = finish(merge_partials(parts[::-1]), traced, dataset.classes, [])
    for name, units in result.units.items():
        np.testing.assert_array_equal(merged.units[name].images, units.images)
        np.testing.assert_array_equal(merged.units[name].values, units.values)
        np.testing.assert_array_equal(merged.units[name].hist_counts, units.hist_counts)


def test_a_probe_on_a_derived_layer_and_weights_that_change(tmp_path):
    """A --unit probe's layer is reduced itself (the probe reads its map); a miner made before the
    weights changed (the training callback keeps one) is made anew when the chains change."""
    from reportgen.dataset import discover
    from reportgen.engines.local import scan_dataset
    from reportgen.engines.mining import DEFAULT_PREPROCESSING, MiningStep, Probe
    from reportgen.model import trace_model

    make_dataset(tmp_path / "data", {"a": 6, "b": 5})
    dataset = discover(tmp_path / "data")
    model = _chain_model()
    traced = trace_model(model)
    probe = Probe("relu6", 3, 2, 2)
    miner = MiningStep(traced, 4, [probe], DEFAULT_PREPROCESSING, 4)
    assert "bn" in miner.ranked_as
    bn = model.get_layer("bn")
    gamma, *rest = bn.get_weights()
    gamma[2] = -gamma[2]
    bn.set_weights([gamma, *rest])
    result = scan_dataset(traced, dataset, top_k=4, batch_size=4, probes=[probe], miner=miner, quiet=True)
    # bn has a negative scale now; relu6 has a probe: each is reduced itself
    assert result.ranked_as == {"relu": "bn", "leaky": "relu6", "pool_tiles": "pool_overlap", "pool_pad": "pool_overlap"}
    own = _own_maps(traced, dataset, 4)
    values = own["relu6"][:, 3, 2, 2]
    order = sorted(range(len(values)), key=lambda i: (-values[i], i))[:4]
    np.testing.assert_allclose([e.value for e in result.probes[0].top], values[order], rtol=1e-6, atol=1e-6)
    maps = own["bn"].reshape(len(values), -1, 6)
    for unit in result.units["bn"]:  # reduced now: its own exact top K, and relu ranks as it does
        scores = maps[:, :, unit.channel].max(axis=1)
        order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))[:4]
        assert [e.image for e in unit.top] == order == [e.image for e in result.units["relu"][unit.channel].top]


def test_the_site_says_which_layer_a_derived_layer_ranks_as(tmp_path):
    import json

    import jsonschema

    from conftest import build_site
    from linkcheck import broken_links
    from reportgen.site.names import layer_page

    _chain_model().save(tmp_path / "chain.keras")
    make_dataset(tmp_path / "data", {"a": 5, "b": 4})
    assert build_site(tmp_path / "chain.keras", tmp_path / "data", tmp_path / "site", "--top-k", "3") == 0
    out = tmp_path / "site"
    report = json.loads((out / "report.json").read_text())
    schema = json.loads((Path(__file__).parents[1] / "reportgen" / "site" / "schema" / "report.schema.json").read_text())
    jsonschema.validate(report, schema)
    assert {layer["name"]: layer["ranked_as"] for layer in report["layers"] if layer["ranked_as"]} == CHAINS
    page = (out / layer_page("relu")).read_text()
    assert "Ranked as" in page and f'href="{layer_page("conv").split("/")[-1]}"' in page
    assert "Ranked as" not in (out / layer_page("conv")).read_text()
    assert broken_links({p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*") if p.is_file()}) == []


def test_a_mixed_precision_model(tmp_path):
    """float16 maps (a model trained with the mixed_float16 policy): scores kept as float32, exactly;
    its BatchNormalization and ReLU rank as its convolution; the whole build runs, --relevance too."""
    import keras

    from conftest import build_site
    from reportgen.dataset import discover
    from reportgen.engines.local import scan_dataset
    from reportgen.model import trace_model

    keras.utils.set_random_seed(5)
    L, mixed = keras.layers, "mixed_float16"
    model = keras.Sequential([
        keras.Input((16, 16, 3)), L.Conv2D(4, 3, name="conv", dtype=mixed), L.BatchNormalization(name="bn", dtype=mixed),
        L.ReLU(name="relu", dtype=mixed), L.MaxPooling2D(2, name="pool", dtype=mixed), L.Conv2D(3, 3, name="conv2", dtype=mixed),
        L.GlobalAveragePooling2D(dtype=mixed), L.Dense(1, activation="sigmoid", name="out", dtype="float32"),
    ])
    model.compile(loss="binary_crossentropy")
    make_dataset(tmp_path / "data", {"a": 7, "b": 6})
    dataset = discover(tmp_path / "data")
    traced = trace_model(model)
    result = scan_dataset(traced, dataset, top_k=4, batch_size=4, quiet=True)
    assert result.ranked_as == {"bn": "conv", "relu": "conv", "pool": "conv"}
    _check_against_own_maps(result, traced, _own_maps(traced, dataset, 4), 4)
    model.save(tmp_path / "mixed.keras")
    assert build_site(tmp_path / "mixed.keras", tmp_path / "data", tmp_path / "site", "--relevance") == 0
