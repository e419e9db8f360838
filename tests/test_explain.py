"""Why the model decides: class activation maps against tf-keras-vis's Gradcam, relevance against
gradients computed here, galleries of mistakes against the model's own predictions."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import badfiles
from conftest import build_site, load_like_keras, site_units


def two_models(classes: int, seed: int = 0):
    """The same weights as a probabilities model (softmax/sigmoid in the last Dense) and a logits model
    (linear last layer) for tf-keras-vis, which wants logits."""
    import keras

    keras.utils.set_random_seed(seed)
    inp = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(6, 3, activation="relu", name="c1")(inp)
    x = keras.layers.MaxPooling2D(name="p1")(x)
    x = keras.layers.Conv2D(8, 3, activation="relu", name="c2")(x)
    x = keras.layers.Flatten(name="flat")(x)
    units = 1 if classes == 2 else classes
    dense = keras.layers.Dense(units, activation="sigmoid" if units == 1 else "softmax", name="out")
    probs = keras.Model(inp, dense(x), name="probs")
    probs.compile(loss="binary_crossentropy" if units == 1 else "sparse_categorical_crossentropy")
    linear = keras.layers.Dense(units, name="out_linear")
    logits = keras.Model(inp, linear(x), name="logits")
    linear.set_weights(dense.get_weights())
    return probs, logits


@pytest.mark.parametrize("classes", [2, 3])
def test_class_activation_maps_equal_tf_keras_vis_gradcam(classes):
    from tf_keras_vis.gradcam import Gradcam
    from tf_keras_vis.utils.scores import BinaryScore, CategoricalScore

    from reportgen.engines.cams import cam_layer
    from reportgen.engines.explain import CamStep
    from reportgen.model import trace_model
    from reportgen.model.preprocess import make_preprocessing

    probs, logits = two_models(classes)
    traced = trace_model(probs)
    layer = cam_layer(traced)
    assert layer.name == "c2"  # the last layer with a map larger than 1 x 1
    pixels = np.random.default_rng(1).integers(0, 256, (5, 16, 16, 3)).astype(np.uint8)
    x = pixels.astype(np.float32) / np.float32(255)
    targets = np.array([[0, 1], [1, 0], [1, 1], [0, 0], [classes - 1, 0]])
    ours = CamStep(traced, layer, make_preprocessing("rescale", 3), binary=classes == 2)(pixels, targets)
    gradcam = Gradcam(logits, clone=False)
    for j in range(2):
        if classes == 2:
            score = BinaryScore([bool(t) for t in targets[:, j]])
        else:
            score = CategoricalScore(list(targets[:, j]))
        expected = np.asarray(gradcam(score, x, penultimate_layer="c2", normalize_cam=False, expand_cam=False))
        np.testing.assert_allclose(ours[:, j], expected, atol=1e-4, rtol=1e-4)
    assert ours.max() > 0


@pytest.mark.parametrize("classes", [2, 3])
def test_the_pass_keeps_the_grad_cams_of_exactly_the_images_the_galleries_show(classes, tmp_path, monkeypatch):
    """The pass computes every image's Grad-CAMs and drops, as it goes, those no gallery can show
    any more: what it keeps is the galleries' images, each equal to a second read with CamStep."""
    from reportgen.dataset import discover
    from reportgen.engines import local
    from reportgen.engines.cams import CamRequest, cam_layer, quantise_cams
    from reportgen.engines.explain import CamStep, class_activation_maps
    from reportgen.mistakes import select_galleries
    from reportgen.model import trace_model
    from reportgen.model.preprocess import make_preprocessing

    probs, _ = two_models(classes, seed=3)
    badfiles.make_dataset(tmp_path / "data", {name: 36 for name in "abc"[:classes]})  # more than the 2 x 16 per class the class pages show
    dataset = discover(tmp_path / "data")
    traced = trace_model(probs)
    request = CamRequest(cam_layer(traced).name, binary=classes == 2, logits=False, cap=2)
    prunes = []
    gallery_images = local.gallery_images
    monkeypatch.setattr(local, "CAMS_KEPT", 20)  # drop what no gallery shows as the pass goes, not only at its end
    monkeypatch.setattr(local, "gallery_images", lambda *a: prunes.append(1) or gallery_images(*a))
    scan = local.scan_dataset(traced, dataset, batch_size=4, cams=request, quiet=True)
    assert len(prunes) > 2
    galleries = select_galleries(scan.predictions, classes, 2)
    shown = sorted(galleries.shown())
    assert sorted(scan.cams) == shown and len(shown) < len(dataset.records)
    targets = {i: (int(scan.predictions.predicted[i]), int(scan.predictions.labels[i])) for i in shown}
    assert any(p != t for p, t in targets.values()) and any(p == t for p, t in targets.values())
    step = CamStep(traced, cam_layer(traced), make_preprocessing("rescale", 3), binary=classes == 2)
    expected, _, _ = class_activation_maps(traced, dataset, shown, targets, step, batch_size=4)
    for i in shown:
        assert scan.cams[i].shape == (2, 5, 5)  # c2's map
        difference = np.abs(scan.cams[i].astype(int) - quantise_cams(expected[i]).astype(int))
        assert difference.max() <= 1, i  # float rounding of two graphs, after scaling to 0..255
        assert scan.cams[i].max() == 255 or expected[i].max() == 0
    assert sum(int(scan.cams[i].max() == 255) for i in shown) > len(shown) // 2


def test_an_image_no_gallery_of_a_part_shows_is_in_no_gallery_of_the_whole():
    """What lets the pass drop Grad-CAMs as it goes (and each shard or Ray task keep only its own
    galleries' images): over any subset of the images, in any order, the galleries' images include
    every image of that subset the galleries over all images show. Ties in confidence included."""
    from reportgen.engines.cams import gallery_images
    from reportgen.mistakes import select_galleries
    from reportgen.report import Predictions

    rng = np.random.default_rng(2)
    n, classes, cap = 400, 3, 4
    labels = rng.integers(0, classes, n)
    predicted = np.where(rng.random(n) < 0.6, labels, rng.integers(0, classes, n))
    confidence = np.round(rng.random(n), 1).astype(np.float32)  # many ties
    true_score = np.round(rng.random(n), 1).astype(np.float32)
    whole = select_galleries(Predictions(read=np.ones(n, bool), labels=labels, predicted=predicted, confidence=confidence,
                                         true_score=true_score, top=None, top_scores=None), classes, cap).shown()
    columns = {"images": np.arange(n), "labels": labels, "predicted": predicted, "confidence": confidence, "true_score": true_score}
    assert set(gallery_images(columns, classes, cap).tolist()) == whole
    for _ in range(20):
        part = rng.permutation(n)[: int(rng.integers(1, n))]  # a subset, in no particular order
        found = set(gallery_images({name: a[part] for name, a in columns.items()}, classes, cap).tolist())
        assert whole & set(part.tolist()) <= found


def test_maps_the_pass_did_not_keep_come_from_a_second_read(tmp_path, monkeypatch):
    """Without the pass's maps (as for an image whose classes the graph and the host did not agree
    on), the pages of mistakes and the chosen image get them from CamStep: the same maps as the
    pass's."""
    from reportgen import build
    from reportgen.build import BuildOptions

    probs, _ = two_models(3, seed=4)
    probs.save(tmp_path / "m.keras")
    badfiles.make_dataset(tmp_path / "data", {"a": 6, "b": 5, "c": 5})
    opts = BuildOptions(model=tmp_path / "m.keras", data=tmp_path / "data", out=tmp_path / "site", quiet=True, batch_size=4, max_gallery=3)
    data = build.gather(opts)
    found = data.explained
    # the chosen image (a dataset image) has its maps from the pass too, though no gallery shows it
    chosen = {r.rel: r.index for r in data.dataset.records}[data.chosen[0].path]
    np.testing.assert_array_equal(found.chosen_cams[0], data.scan.cams[chosen])
    # the same image named by --image: inside the dataset, from the pass; a copy outside it, from its own forward
    import dataclasses
    import shutil

    shutil.copy(data.dataset.records[chosen].path, tmp_path / "outside.png")
    inside = build.gather(dataclasses.replace(opts, images=[Path(data.dataset.records[chosen].path)])).explained
    outside = build.gather(dataclasses.replace(opts, images=[tmp_path / "outside.png"])).explained
    np.testing.assert_array_equal(inside.chosen_cams[0], found.chosen_cams[0])
    assert inside.chosen_targets == found.chosen_targets
    assert outside.chosen_targets[0][0] == inside.chosen_targets[0][0]  # outside the class folders: no true class
    assert np.abs(outside.chosen_cams[0][0].astype(int) - inside.chosen_cams[0][0].astype(int)).max() <= 1  # the predicted class's
    monkeypatch.setattr(build, "cam_request", lambda *a: None)
    read = build.gather(opts).explained
    assert sorted(found.cams) == sorted(read.cams) and found.targets == read.targets and len(found.cams) >= 8
    for i in found.cams:
        assert np.abs(found.cams[i].astype(int) - read.cams[i].astype(int)).max() <= 1
    assert found.chosen_targets == read.chosen_targets
    assert np.abs(np.stack(found.chosen_cams).astype(int) - np.stack(read.chosen_cams).astype(int)).max() <= 1
    assert {i: t.data for i, t in found.thumbnails.items()} == {i: t.data for i, t in read.thumbnails.items()}


def test_relevance_top_k_and_class_means_equal_brute_force(tmp_path):
    import keras

    from reportgen.dataset import discover
    from reportgen.engines.explain import relevance_pass
    from reportgen.engines.local import scan_dataset
    from reportgen.engines.mining import DEFAULT_PREPROCESSING
    from reportgen.model import trace_model

    probs, logits = two_models(3, seed=3)
    badfiles.make_dataset(tmp_path / "data", {"a": 5, "b": 4, "c": 4})
    dataset = discover(tmp_path / "data")
    traced = trace_model(probs)
    scan = scan_dataset(traced, dataset, top_k=4, batch_size=5, quiet=True)
    relevance = relevance_pass(traced, dataset, scan.predictions, top_k=4, batch_size=5, preprocessing=DEFAULT_PREPROCESSING,
                               binary=False, quiet=True)

    # brute force: per image, gradient of its predicted class's logit times the activation, summed over positions
    x = load_like_keras([r.path for r in dataset.records])
    view = keras.Model(logits.inputs, [logits.output] + [logits.get_layer(n).output for n in ("c1", "p1", "c2")])
    import tensorflow as tf

    predicted = np.argmax(probs.predict(x, verbose=0), axis=1)
    np.testing.assert_array_equal(predicted, scan.predictions.predicted)
    with tf.GradientTape() as tape:
        outs = view(x)
        score = tf.reduce_sum(tf.gather(outs[0], predicted, batch_dims=1))
    grads = tape.gradient(score, outs[1:])
    for name, a, g in zip(("c1", "p1", "c2"), outs[1:], grads):
        contribution = (a * g).numpy()
        totals = contribution.sum(axis=(1, 2))  # [images, channels]
        result = relevance[name]
        for c in range(totals.shape[1]):
            order = np.lexsort((np.arange(len(totals)), -totals[:, c]))[:4]
            assert list(result.images[c]) == list(order), (name, c)
            np.testing.assert_allclose(result.values[c], totals[order, c], rtol=1e-4, atol=1e-5)
            for rank, image in enumerate(order):  # the position of the largest contribution
                flat = contribution[image, :, :, c].reshape(-1)
                assert result.rows[c, rank] * contribution.shape[2] + result.cols[c, rank] == int(np.argmax(flat))
        for k in range(3):
            mine = predicted == k
            expected = totals[mine].mean(axis=0) if mine.any() else np.zeros(totals.shape[1])
            np.testing.assert_allclose(result.by_class[:, k], expected, rtol=1e-4, atol=1e-5)


def test_galleries_of_mistakes_equal_the_models_predictions(tmp_path):
    probs, _ = two_models(3, seed=5)
    probs.save(tmp_path / "m.keras")
    badfiles.make_dataset(tmp_path / "data", {"a": 7, "b": 6, "c": 6})
    out = tmp_path / "site"
    assert build_site(tmp_path / "m.keras", tmp_path / "data", out, "--max-gallery", "3", "--relevance") == 0
    report = json.loads((out / "report.json").read_text())

    from reportgen.dataset import discover

    records = discover(tmp_path / "data").records
    p = probs.predict(load_like_keras([r.path for r in records]), verbose=0)
    labels = np.array([r.label for r in records])
    predicted = p.argmax(axis=1)
    classes = ["a", "b", "c"]
    assert report["explain"]["errors_total"] == int((predicted != labels).sum())
    for t in range(3):
        for q in range(3):
            mine = np.nonzero((labels == t) & (predicted == q))[0]
            page = out / "mistakes" / f"{t}-{q}.html"
            assert page.exists() == bool(len(mine))
            if not len(mine):
                continue
            conf = p[mine, q]
            order = mine[np.lexsort((mine, -conf if t != q else conf))][:3]
            html = page.read_text()
            shown = [records[i].rel for i in order]
            positions = [html.index(f'<span class="path">{rel}</span>') for rel in shown]
            assert positions == sorted(positions), (t, q)
            assert html.count('<li class="card') == len(order)
            if len(mine) > 3:
                assert f"{len(mine) - 3} more left out" in html
    errors = report["errors"]
    assert all(e["label"] != e["predicted"] for e in errors)
    for e in errors:
        i = next(k for k, r in enumerate(records) if r.rel == e["image"])
        assert e["predicted"] == classes[predicted[i]] and e["confidence"] == pytest.approx(float(p[i, predicted[i]]), abs=1e-5)
    predictions = json.loads((out / report["files"]["predictions"]).read_text())
    assert len(predictions["images"]) == len(records)
    for row in predictions["images"]:
        i = next(k for k, r in enumerate(records) if r.rel == row[0])
        assert row[2] == classes[predicted[i]] and row[3] == pytest.approx(float(p[i].max()), abs=1e-5)
    # --relevance: class pages list the units that drive them, unit data names the classes they drive
    units = site_units(out)
    assert all("relevance" in u for u in units)
    busiest = int(np.bincount(predicted, minlength=3).argmax())
    class_page = (out / "classes" / f"{busiest}-{classes[busiest]}.html").read_text()
    assert f"Units that drive {classes[busiest]}" in class_page and "#unit-" in class_page
