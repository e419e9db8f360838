"""Loading and tracing models: parameter counts against Keras, nested models, legacy tf.keras 2 files, refusals."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from conftest import FIXTURES, tiny_sequential
from reportgen.errors import UserError


def _nested_functional_in_sequential():
    import keras

    keras.utils.set_random_seed(1)
    base_in = keras.Input((16, 16, 3), name="base_in")
    x = keras.layers.Conv2D(4, 3, padding="same", name="conv1")(base_in)
    x = keras.layers.BatchNormalization(name="bn")(x)
    y = keras.layers.Conv2D(4, 1, name="shortcut")(base_in)
    x = keras.layers.Add(name="add")([x, y])
    x = keras.layers.ReLU(name="relu")(x)
    x = keras.layers.MaxPooling2D(name="pool")(x)
    base = keras.Model(base_in, x, name="base")
    base.trainable = False  # the usual transfer-learning set-up
    return keras.Sequential(
        [keras.Input((16, 16, 3)), base, keras.layers.Conv2D(3, 3, name="head_conv"), keras.layers.GlobalAveragePooling2D(name="gap"), keras.layers.Dense(2, activation="softmax", name="out")],
        name="transfer",
    )


def _nested_in_functional():
    import keras

    keras.utils.set_random_seed(2)
    inner_in = keras.Input((16, 16, 3))
    inner = keras.Model(inner_in, keras.layers.Conv2D(3, 3, activation="relu", name="ic")(inner_in), name="inner")
    inp = keras.Input((16, 16, 3), name="image")
    x = inner(inp, training=False)
    x = keras.layers.Conv2D(2, 3, name="outer_conv")(x)
    x = keras.layers.Flatten()(x)
    return keras.Model(inp, keras.layers.Dense(1, activation="sigmoid")(x), name="functional_outer")


def test_tiny_model_summary_numbers_equal_keras():
    from reportgen.model import trace_model

    model = tiny_sequential()
    traced = trace_model(model)
    info = traced.info
    assert info.total_params == model.count_params() == 4 * (27 + 1) + 5 * (36 + 1) + 125 + 1
    assert [(n.name, n.type, n.params) for n in info.nodes] == [
        (layer.name, type(layer).__name__, layer.count_params()) for layer in model.layers
    ]
    assert [n.output_shape for n in info.nodes] == [(None, 14, 14, 4), (None, 7, 7, 4), (None, 5, 5, 5), (None, 125), (None, 1)]
    assert [n.name for n in traced.map_layers] == ["c1", "p1", "c2"]
    assert info.trainable_params + info.non_trainable_params == info.total_params
    assert info.loss_name == "binary_crossentropy"


def test_nested_model_inner_layers_are_shown_and_computed():
    from reportgen.model import trace_model

    model = _nested_functional_in_sequential()
    traced = trace_model(model)
    names = [n.name for n in traced.info.nodes]
    assert names == ["base", "base/conv1", "base/bn", "base/shortcut", "base/add", "base/relu", "base/pool", "head_conv", "gap", "out"]
    base = model.get_layer("base")
    rows = {n.name: n for n in traced.info.nodes}
    assert rows["base"].params == base.count_params() and rows["base"].type == "Functional"
    for layer in base.layers[1:]:
        assert rows[f"base/{layer.name}"].params == layer.count_params()
        assert rows[f"base/{layer.name}"].parent == "base" and rows[f"base/{layer.name}"].depth == 1
    assert traced.info.total_params == model.count_params()
    assert traced.info.non_trainable_params == base.count_params()  # frozen base
    assert not rows["base"].is_map  # its output is base/pool's, which has its own page

    # The tap model computes the same prediction, and inner maps equal the inner model's own outputs.
    import keras

    x = np.random.default_rng(0).random((3, 16, 16, 3)).astype(np.float32)
    outs = traced.tap(x)
    np.testing.assert_allclose(outs[0], model.predict(x, verbose=0), rtol=1e-5, atol=1e-6)
    probe = keras.Model(base.inputs, [base.get_layer("add").output, base.get_layer("pool").output])
    add_maps, pool_maps = probe(x)
    idx = {n.name: i + 1 for i, n in enumerate(traced.map_layers)}
    np.testing.assert_allclose(outs[idx["base/add"]], add_maps, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(outs[idx["base/pool"]], pool_maps, rtol=1e-5, atol=1e-6)


def test_model_nested_in_a_functional_model():
    from reportgen.model import trace_model

    model = _nested_in_functional()
    traced = trace_model(model)
    names = [n.name for n in traced.info.nodes]
    assert names[:3] == ["image", "inner", "inner/ic"] and "outer_conv" in names
    assert traced.info.total_params == model.count_params()
    x = np.random.default_rng(1).random((2, 16, 16, 3)).astype(np.float32)
    np.testing.assert_allclose(traced.tap(x)[0], model.predict(x, verbose=0), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["legacy_sequential.h5", "legacy_nested.h5", "legacy_gray.h5"])
def test_legacy_tf_keras_2_h5_files(name):
    """Files written by tf.keras 2 itself (the tf-keras package; see fixtures/make_legacy_h5.py)."""
    from reportgen.model import load_model, trace_model

    expected = json.loads((FIXTURES / "legacy_expected.json").read_text())[name]
    with open(FIXTURES / name, "rb") as fh:
        assert fh.read(4) == b"\x89HDF"
    loaded = load_model(FIXTURES / name)
    traced = trace_model(loaded.model, FIXTURES / name, loss=loaded.loss)
    assert traced.info.total_params == expected["count_params"]
    top = [n for n in traced.info.nodes if n.depth == 0 and n.type != "InputLayer"]
    assert [[n.name, n.type, n.params, list(n.output_shape)] for n in top] == expected["layers"]
    if "inner_layers" in expected:
        inner = [[n.name.split("/", 1)[1], n.type, n.params, list(n.output_shape)] for n in traced.info.nodes if n.depth == 1]
        assert inner == [row for row in expected["inner_layers"] if row[1] != "InputLayer"]
    channels = expected["input_shape"][-1]
    x = np.linspace(0, 1, 2 * 16 * 16 * channels).reshape(2, 16, 16, channels).astype("float32")
    np.testing.assert_allclose(traced.tap(x)[0], expected["predictions"], atol=1e-5)
    assert traced.info.loss_name == expected["loss"]
    assert traced.spec.channels == channels


def test_lambda_layer_needs_unsafe():
    from reportgen.model import load_model

    with pytest.raises(UserError, match="Lambda.*--unsafe"):
        load_model(FIXTURES / "legacy_lambda.h5")
    model = load_model(FIXTURES / "legacy_lambda.h5", unsafe=True).model
    assert [type(layer).__name__ for layer in model.layers] == ["Conv2D", "Lambda", "Flatten", "Dense"]


def test_unreadable_model_files(tmp_path):
    from reportgen.model import load_model

    with pytest.raises(UserError, match="no such file"):
        load_model(tmp_path / "missing.h5")
    (tmp_path / "notes.h5").write_text("not a model")
    with pytest.raises(UserError, match="is not a Keras model file"):
        load_model(tmp_path / "notes.h5")
    data = (FIXTURES / "legacy_sequential.h5").read_bytes()
    (tmp_path / "cut.h5").write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="cut.h5: cannot load the model"):
        load_model(tmp_path / "cut.h5")
    saved = tmp_path / "saved_model_dir"
    saved.mkdir()
    (saved / "saved_model.pb").write_bytes(b"\x08\x01")
    with pytest.raises(UserError, match="SavedModel folder.*model.save\\('model.keras'\\)"):
        load_model(saved)
    (tmp_path / "plain_dir").mkdir()
    with pytest.raises(UserError, match="is a folder"):
        load_model(tmp_path / "plain_dir")
    shutil.copy(FIXTURES / "legacy_sequential.h5", tmp_path / "model.bin")  # recognised by its content
    loaded = load_model(tmp_path / "model.bin")
    assert loaded.file_format.startswith("HDF5, written by Keras 2.") and loaded.file_format.endswith("named .bin")
    (tmp_path / "archive.keras").write_bytes(b"PK\x05\x06" + b"\0" * 18)  # an empty zip
    with pytest.raises(UserError, match="archive.keras: is a zip file but not a Keras model"):
        load_model(tmp_path / "archive.keras")


def test_models_that_cannot_be_shown():
    import keras

    from reportgen.model import trace_model

    dense_only = keras.Sequential([keras.Input((16, 16, 3)), keras.layers.Flatten(), keras.layers.Dense(1)])
    with pytest.raises(UserError, match="no layer with a 4-D"):
        trace_model(dense_only, "dense.keras")
    a, b = keras.Input((16, 16, 3)), keras.Input((16, 16, 3))
    two = keras.Model([a, b], keras.layers.Add()([keras.layers.Conv2D(1, 3)(a), keras.layers.Conv2D(1, 3)(b)]))
    with pytest.raises(UserError, match="2 inputs"):
        trace_model(two, "two.keras")
    seq = keras.Sequential([keras.Input((10,)), keras.layers.Dense(2)])
    with pytest.raises(UserError, match=r"input has shape \(None, 10\), not an image"):
        trace_model(seq, "tabular.keras")
    five = keras.Sequential([keras.Input((16, 16, 5)), keras.layers.Conv2D(2, 3)])
    with pytest.raises(UserError, match="5 channels"):
        trace_model(five, "five.keras")
    free = keras.Sequential([keras.Input((None, None, 3)), keras.layers.Conv2D(2, 3)])
    with pytest.raises(UserError, match="not fixed"):
        trace_model(free, "free.keras")


def test_grayscale_model():
    from reportgen.model import trace_model

    traced = trace_model(tiny_sequential(channels=1))
    assert (traced.spec.height, traced.spec.width, traced.spec.channels) == (16, 16, 1)
    assert traced.info.nodes[0].params == 4 * (9 + 1)
