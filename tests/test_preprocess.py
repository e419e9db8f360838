"""Preprocessing modes and resize methods, checked against Keras's own pipeline:
`image_dataset_from_directory` (or `load_img` for nearest) + `preprocess_input` + `model.evaluate` / `predict`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import build_site, load_like_keras, site_units
from reportgen.errors import UserError

SIZE = (24, 20)  # (height, width): not square, so that a swapped axis shows


def varied_dataset(root: Path, seed: int = 0) -> Path:
    """Two classes of smooth RGB images of assorted sizes (PNG, JPEG, BMP, GIF): class 'dark' and class 'light'."""
    rng = np.random.default_rng(seed)
    for cls, base in (("dark", 60), ("light", 170)):
        for i in range(9):
            h, w = (int(v) for v in rng.integers(17, 61, 2))
            yy, xx = np.mgrid[0:h, 0:w]
            img = base + 40 * np.sin(xx / (2 + i) + rng.random() * 6)[:, :, None] * np.array([1.0, 0.6, -0.4]) + 25 * np.cos(yy / 3.0)[:, :, None]
            img = np.clip(img + rng.normal(0, 8, (h, w, 3)), 0, 255).astype(np.uint8)
            from PIL import Image

            path = root / cls / f"{cls}_{i}"
            path.parent.mkdir(parents=True, exist_ok=True)
            kind = ("png", "jpg", "png", "bmp", "jpg", "gif", "png", "jpg", "png")[i]
            pil = Image.fromarray(img)
            if kind == "gif":
                pil = pil.convert("P", palette=Image.Palette.ADAPTIVE)
            pil.save(path.with_suffix("." + kind), quality=90) if kind == "jpg" else pil.save(path.with_suffix("." + kind))
    return root


def small_model(classes: int = 1, logits: bool = False, seed: int = 0, in_model=None):
    import keras

    keras.utils.set_random_seed(seed)
    layers = [keras.Input((*SIZE, 3))]
    layers += in_model or []
    layers += [
        keras.layers.Conv2D(6, 3, activation="relu", name="c1"),
        keras.layers.MaxPooling2D(name="p1"),
        keras.layers.Conv2D(8, 3, activation="relu", name="c2"),
        keras.layers.GlobalAveragePooling2D(name="gap"),
        keras.layers.Dense(classes, activation=None if logits else ("sigmoid" if classes == 1 else "softmax"), name="out"),
    ]
    model = keras.Sequential(layers, name="small")
    if classes == 1:
        loss = keras.losses.BinaryCrossentropy(from_logits=logits)
        metric = keras.metrics.BinaryAccuracy(threshold=0.0 if logits else 0.5)
    else:
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=logits)
        metric = keras.metrics.SparseCategoricalAccuracy()
    model.compile(optimizer="adam", loss=loss, metrics=[metric])
    return model


def keras_pipeline(data: Path, interpolation: str, mode: str, classes: int = 1):
    """What a user's own Keras code feeds the model: the dataset and its preprocessing."""
    import keras
    from keras.applications import imagenet_utils

    label_mode = "binary" if classes == 1 else "int"
    if interpolation == "nearest":  # flow_from_directory: load_img (Pillow), then the preprocessing
        files = sorted(p for p in data.rglob("*") if p.is_file())
        x = load_like_keras(files, size=SIZE) * 255.0
        y = np.array([0.0 if f.parent.name == "dark" else 1.0 for f in files], dtype=np.float32)
        y = y[:, None] if classes == 1 else y.astype(np.int64)
        return _apply_mode(x, mode, imagenet_utils), y
    ds = keras.utils.image_dataset_from_directory(
        data, image_size=SIZE, interpolation=interpolation, shuffle=False, batch_size=64, label_mode=label_mode
    )
    x, y = next(iter(ds))
    return _apply_mode(np.asarray(x), mode, imagenet_utils), np.asarray(y)


def _apply_mode(x: np.ndarray, mode: str, imagenet_utils) -> np.ndarray:
    x = np.array(x, dtype=np.float32)
    if mode == "rescale":
        return x * np.float32(1 / 255)
    if mode == "none":
        return x
    return imagenet_utils.preprocess_input(x, mode=mode)


def reportgen_outputs(model_path: Path, data: Path, interpolation: str, mode: str, output=None):
    """reportgen's own pipeline, stage by stage as build runs it: per-image outputs and the pass's metrics."""
    from reportgen.dataset import discover, iter_batches
    from reportgen.model import load_model, trace_model
    from reportgen.model.preprocess import choose_preprocessing, resizer
    from reportgen.engines.local import run_images, scan_dataset

    loaded = load_model(model_path)
    traced = trace_model(loaded.model, model_path, loss=loaded.loss, interpolation=interpolation, output=output)
    pre, _ = choose_preprocessing(loaded.model, 3, mode=mode, interpolation=interpolation)
    dataset = discover(data)
    outs = [run_images(traced, b.pixels, pre)[0] for b in iter_batches(dataset.records, traced.spec, 64, [], resizer=resizer(traced.spec))]
    scan = scan_dataset(traced, dataset, batch_size=8, preprocessing=pre, quiet=True)
    return np.concatenate(outs), scan.metrics, traced


MODES = ["rescale", "none", "tf", "torch", "caffe"]


@pytest.mark.parametrize("mode", MODES[2:])
def test_modes_are_exactly_keras_preprocess_input(mode):
    from keras.applications import imagenet_utils

    from reportgen.model.preprocess import make_preprocessing
    from reportgen.model.tf import tf

    x = np.random.default_rng(3).uniform(0, 255, (2, 5, 4, 3)).astype(np.float32)
    expected = imagenet_utils.preprocess_input(x.copy(), mode=mode)
    pre = make_preprocessing(mode, 3)
    np.testing.assert_array_equal(pre.numpy_apply(x), expected)
    np.testing.assert_array_equal(pre.apply(tf.constant(x)).numpy(), expected)


@pytest.mark.parametrize(
    "interpolation, mode",
    [("nearest", "rescale"), ("bilinear", "tf"), ("bicubic", "rescale"), ("area", "caffe"), ("lanczos3", "torch"),
     ("lanczos5", "none"), ("gaussian", "rescale"), ("mitchellcubic", "tf")],
)
def test_outputs_and_accuracy_equal_keras_pipeline(tmp_path, interpolation, mode):
    data = varied_dataset(tmp_path / "data")
    model = small_model(classes=1)
    model.save(tmp_path / "m.keras")
    x, y = keras_pipeline(data, interpolation, mode)
    expected = model.predict(x, verbose=0)
    loss, accuracy = model.evaluate(x, y, verbose=0, batch_size=8)
    ours, metrics, _ = reportgen_outputs(tmp_path / "m.keras", data, interpolation, mode)
    np.testing.assert_allclose(ours, expected, atol=1e-4, rtol=0)
    assert abs(metrics.accuracy - accuracy) <= 0.005
    assert metrics.loss == pytest.approx(loss, abs=1e-4)


def test_model_trained_on_minus_one_to_one_with_bilinear(tmp_path):
    """The issue's case: a [-1, 1] model read with bilinear resizing. With the options that match
    how it was trained, accuracy equals Keras's evaluate; with the default, it does not."""
    import keras
    from keras.applications import imagenet_utils

    data = varied_dataset(tmp_path / "data")
    ds = keras.utils.image_dataset_from_directory(data, image_size=SIZE, interpolation="bilinear", shuffle=False, label_mode="binary")
    x, y = (np.array(t) for t in next(iter(ds)))
    x = imagenet_utils.preprocess_input(x, mode="tf")
    model = small_model(seed=4)
    model.fit(x, y, epochs=60, batch_size=6, verbose=0)
    loss, accuracy = model.evaluate(x, y, verbose=0)
    assert accuracy == 1.0  # the two classes are easy: dark and light
    model.save(tmp_path / "m.keras")
    _, metrics, _ = reportgen_outputs(tmp_path / "m.keras", data, "bilinear", "tf")
    assert metrics.accuracy == accuracy and metrics.loss == pytest.approx(loss, abs=1e-4)
    _, default, _ = reportgen_outputs(tmp_path / "m.keras", data, "nearest", "auto")
    assert default.accuracy < 1.0  # x/255 is not what it was trained on


def test_in_model_rescaling_behind_augmentation_gets_raw_pixels(tmp_path):
    """The Keras tutorial's way: augmentation and Rescaling(1/255) inside the model."""
    import keras

    augment = keras.Sequential([keras.layers.RandomFlip("horizontal"), keras.layers.RandomRotation(0.1)], name="augment")
    model = small_model(in_model=[augment, keras.layers.Rescaling(1.0 / 255, name="rescale")], seed=2)
    model.save(tmp_path / "m.keras")
    data = varied_dataset(tmp_path / "data")
    x, y = keras_pipeline(data, "bilinear", "none")
    expected = model.predict(x, verbose=0)
    ours, metrics, _ = reportgen_outputs(tmp_path / "m.keras", data, "bilinear", "auto")
    np.testing.assert_allclose(ours, expected, atol=1e-4, rtol=0)
    out = tmp_path / "site"
    assert build_site(tmp_path / "m.keras", data, out, "--interpolation", "bilinear") == 0
    report = json.loads((out / "report.json").read_text())
    pre = report["preprocessing"]
    assert pre["mode"] == "none" and pre["chosen_by"] == "auto" and pre["interpolation"] == "bilinear"
    assert pre["in_model"].startswith("rescale (Rescaling")
    assert "raw pixels" in (out / "index.html").read_text()
    # The maps are not of a black image: the first conv layer sees real contrast.
    assert site_units(out)[0]["max"] > 0


def test_applications_base_gets_a_warning_naming_its_mode(tmp_path):
    import keras

    from reportgen.model.preprocess import choose_preprocessing

    base = keras.applications.MobileNetV2(include_top=False, weights=None, alpha=0.35, input_shape=(32, 32, 3))
    model = keras.Sequential([keras.Input((32, 32, 3)), base, keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(1, activation="sigmoid")])
    pre, warnings = choose_preprocessing(model, 3)
    assert pre.mode == "rescale" and pre.chosen_by == "auto"
    assert len(warnings) == 1 and "MobileNetV2" in warnings[0] and "--preprocess tf" in warnings[0]
    pre, warnings = choose_preprocessing(model, 3, mode="tf")
    assert pre.mode == "tf" and warnings == []
    resnet = keras.applications.ResNet50(include_top=False, weights=None, input_shape=(32, 32, 3))
    assert "--preprocess caffe" in choose_preprocessing(resnet, 3)[1][0]
    dense = keras.applications.DenseNet121(include_top=False, weights=None, input_shape=(32, 32, 3))
    assert "--preprocess torch" in choose_preprocessing(dense, 3)[1][0]
    eff = keras.applications.EfficientNetB0(include_top=False, weights=None, input_shape=(32, 32, 3))
    pre, warnings = choose_preprocessing(eff, 3)
    assert pre.mode == "none" and pre.in_model and warnings == []  # it holds its own Rescaling + Normalization


def test_grayscale_models_refuse_imagenet_modes():
    from reportgen.model.preprocess import make_preprocessing

    for mode in ("torch", "caffe"):
        with pytest.raises(UserError, match=f"--preprocess {mode}: needs a 3-channel"):
            make_preprocessing(mode, 1)
    assert make_preprocessing("tf", 1).mode == "tf"


def test_thumbnails_show_the_decoded_image_not_the_model_input(tmp_path):
    """With --preprocess caffe (negative values, BGR) the chosen image is still the picture as decoded."""
    from PIL import Image

    data = varied_dataset(tmp_path / "data")
    small_model().save(tmp_path / "m.keras")
    image = data / "light" / "light_0.png"
    out = tmp_path / "site"
    assert build_site(tmp_path / "m.keras", data, out, "--preprocess", "caffe", "--interpolation", "bilinear", "--image", str(image)) == 0
    html = (out / "index.html").read_text()
    thumb = out / html.split('class="chosen-image">')[1].split('src="')[1].split('"')[0]
    shown = np.asarray(Image.open(thumb))
    from reportgen.model.tf import tf

    decoded = tf.image.resize(tf.io.decode_image(image.read_bytes(), channels=3), SIZE, method="bilinear").numpy()
    assert np.abs(shown.astype(float) - decoded).max() <= 0.5 + 1e-6  # rounded, RGB order, 0..255


def test_logit_heads(tmp_path):
    """One linear output: threshold 0 and shown as sigmoid; several linear outputs: arg-max, shown as softmax."""
    data = varied_dataset(tmp_path / "data")
    for classes in (1, 2):
        model = small_model(classes=classes, logits=True, seed=5)
        model.save(tmp_path / f"m{classes}.keras")
        x, y = keras_pipeline(data, "nearest", "rescale", classes=classes)
        loss, accuracy = model.evaluate(x, y, verbose=0)  # BinaryAccuracy(threshold=0) for one logit
        raw = model.predict(x, verbose=0)
        ours, metrics, traced = reportgen_outputs(tmp_path / f"m{classes}.keras", data, "nearest", "rescale")
        assert traced.info.head.logits and traced.info.head.activation == "linear"
        assert metrics.accuracy == pytest.approx(accuracy) and metrics.loss == pytest.approx(loss, abs=1e-4)
        out = tmp_path / f"site{classes}"
        assert build_site(tmp_path / f"m{classes}.keras", data, out, "--image", str(data / "dark" / "dark_0.png")) == 0
        shown = json.loads((out / "report.json").read_text())["images"][0]
        first = raw[0].astype(np.float64)
        expected = 1 / (1 + np.exp(-first)) if classes == 1 else np.exp(first) / np.exp(first).sum()
        np.testing.assert_allclose(shown["scores"], expected, atol=1e-6)
        np.testing.assert_allclose(shown["logits"], first, atol=1e-6)


def test_several_outputs_need_output_option(tmp_path, capsys):
    import keras

    inp = keras.Input((*SIZE, 3))
    x = keras.layers.Conv2D(4, 3, activation="relu", name="c1")(inp)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inp, [keras.layers.Dense(1, activation="sigmoid", name="kind")(x), keras.layers.Dense(3, name="box")(x)])
    model.save(tmp_path / "two.keras")
    data = varied_dataset(tmp_path / "data")
    from reportgen.cli import main

    assert main(["build", "--model", str(tmp_path / "two.keras"), "--data", str(data), "--out", str(tmp_path / "s"), "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "2 outputs (kind, box)" in err and "--output NAME" in err
    assert build_site(tmp_path / "two.keras", data, tmp_path / "s", "--output", "kind") == 0
    report = json.loads((tmp_path / "s" / "report.json").read_text())
    assert report["model"]["head"]["name"] == "kind" and report["model"]["outputs"] == ["kind", "box"]
    x, y = keras_pipeline(data, "nearest", "rescale")
    predicted = (model.predict(x, verbose=0)[0][:, 0] > 0.5).astype(int)
    assert report["metrics"]["accuracy"] == pytest.approx(np.mean(predicted == y[:, 0]))


def test_input_size_for_fully_convolutional_models(tmp_path, capsys):
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((None, None, 3)), keras.layers.Conv2D(4, 3, activation="relu", name="c1"),
                              keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(1, activation="sigmoid")])
    model.save(tmp_path / "fc.keras")
    data = varied_dataset(tmp_path / "data")
    from reportgen.cli import main

    assert main(["build", "--model", str(tmp_path / "fc.keras"), "--data", str(data), "--out", str(tmp_path / "s"), "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--input-size H,W" in err
    assert build_site(tmp_path / "fc.keras", data, tmp_path / "s", "--input-size", "24,20") == 0
    report = json.loads((tmp_path / "s" / "report.json").read_text())
    assert report["layers"][0]["output_shape"] == [None, 22, 18, 4]
    x, y = keras_pipeline(data, "nearest", "rescale")
    predicted = (model.predict(x, verbose=0)[:, 0] > 0.5).astype(int)
    assert report["metrics"]["accuracy"] == pytest.approx(np.mean(predicted == y[:, 0]))


def test_channels_first_models_are_refused(tmp_path):
    import keras

    from reportgen.model import trace_model

    model = keras.Sequential([keras.Input((3, 16, 16)), keras.layers.Conv2D(2, 3, data_format="channels_first", name="cf"),
                              keras.layers.Flatten(), keras.layers.Dense(1)])
    with pytest.raises(UserError, match="layer 'cf' uses data_format channels_first"):
        trace_model(model, "cf.keras")
