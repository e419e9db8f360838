"""Real model files written by older Keras versions load, trace and reproduce their writer's predictions.

The files and the predictions come from tests/fixtures/corpus: written by TensorFlow 2.12 and 2.15
themselves (make_corpus.py, each in its own virtual environment), and Keras 2.0.5 / 2.1.6 HDF5
files whose layout make_keras20.py reproduces byte for byte from real files of that era (FORMAT.md).
CI only reads them. KERAS3_FAILURES.md has what plain Keras 3 does with each.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from conftest import FIXTURES, build_site

CORPUS = FIXTURES / "corpus"
MANIFEST = json.loads((CORPUS / "manifest.json").read_text())["files"]

# The repair rows that apply to each file (files not listed need none). `axis-list` alone is one
# Keras 3 also makes itself for a top-level layer of an HDF5 file; the others it cannot.
AXIS_ONLY = {f"{v}/{f}" for v in ("tf2.12", "tf2.15") for f in ("fully_conv.h5", "hdf5_named.keras", "multi_output.h5")}
NEEDS_REPAIR = {
    "keras2.0/notebook_cnn.h5": {"sequential-config-list", "sequential-without-input-layer"},
    "tf2.12/mobilenetv2_seq.h5": {"groups-of-one", "axis-list", "nested-single-io-list"},
    "tf2.15/mobilenetv2_seq.h5": {"groups-of-one", "axis-list", "nested-single-io-list"},
    "tf2.15/mobilenetv2_seq.keras": {"engine-module", "groups-of-one", "axis-list", "nested-single-io-list"},
    "tf2.12/separable_bn.h5": {"groups-of-one", "separable-kernel-arguments", "axis-list"},
    "tf2.15/separable_bn.h5": {"groups-of-one", "separable-kernel-arguments", "axis-list"},
    "tf2.15/separable_bn.keras": {"engine-module", "groups-of-one", "separable-kernel-arguments", "axis-list"},
    "tf2.12/tfop_preprocess.h5": {"tf-op-arithmetic"},
    "tf2.15/tfop_preprocess.h5": {"tf-op-arithmetic"},
}
EXPECTED_REPAIRS = NEEDS_REPAIR | {name: {"axis-list"} for name in AXIS_ONLY}


def probe_input(probe: dict) -> np.ndarray:
    """The writer's fixed input (manifest.json's `probe_formula`)."""
    shape, lo, hi = tuple(probe["shape"]), probe["lo"], probe["hi"]
    n = int(np.prod(shape))
    u = np.mod(np.arange(n, dtype=np.float64) * 0.6180339887498949, 1.0)
    r = np.linspace(0.0, 1.0, n)
    x = (lo + (hi - lo) * (0.5 * u + 0.5 * r)).astype("float32").reshape(shape)
    assert float(x.astype(np.float64).sum()) == pytest.approx(probe["sum"], rel=1e-9)
    return x


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("name", sorted(MANIFEST))
def test_file_loads_and_reproduces_its_writer(name):
    from reportgen.model import load_model, trace_model

    entry = MANIFEST[name]
    path = CORPUS / name
    before = sha(path)
    loaded = load_model(path)
    assert sha(path) == before  # repairs go to a temporary copy
    assert {r.name for r in loaded.repairs} == EXPECTED_REPAIRS.get(name, set())
    saved = entry["saved"]
    assert loaded.keras_version == saved.get("keras_version") or loaded.keras_version == saved["metadata"]["keras_version"]
    x = probe_input(entry["probe"])
    size = x.shape[1:3] if None in entry["input_shape"][1:3] else None
    expected = entry["predictions"]
    for output in entry["output_names"]:
        traced = trace_model(loaded.model, path, loss=loaded.loss, output=output if len(expected) > 1 else None, input_size=size)
        np.testing.assert_allclose(np.asarray(traced.tap(x, training=False)[0]), np.asarray(expected[output]), atol=entry["tolerance"], rtol=0)
        from_logits = entry["from_logits"][output] if isinstance(entry["from_logits"], dict) else entry["from_logits"]
        assert traced.loss.fn is not None, traced.loss.note
        assert bool(traced.loss.from_logits) == from_logits
        assert traced.info.head.logits == (from_logits or traced.info.head.activation == "linear")


def test_plain_keras_3_cannot_load_the_files_that_need_repairs():
    """Without the rows, plain Keras 3 cannot load these files (the rows are not decoration)."""
    import keras

    for name in NEEDS_REPAIR:
        with pytest.raises(Exception):
            keras.models.load_model(CORPUS / name, compile=False)


def test_keras_2_0_era_files_with_lr_in_their_optimizer(tmp_path):
    """The notebook's era: RMSprop(lr=1e-4) in the training config never stops a build, and the loss is rebuilt."""
    from badfiles import make_dataset

    data = tmp_path / "data"
    make_dataset(data, {"cats": 5, "dogs": 4})
    out = tmp_path / "site"
    assert build_site(CORPUS / "keras2.0/notebook_cnn.h5", data, out) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["model"]["format"] == "HDF5, written by Keras 2.1.6 (tensorflow)"
    assert [r["name"] for r in report["model"]["repairs"]] == ["sequential-config-list", "sequential-without-input-layer"]
    assert report["model"]["loss"] == "binary_crossentropy" and report["metrics"]["loss"] is not None
    index = (out / "index.html").read_text()
    assert 'id="repairs"' in index and "Keras 2.0-2.2" in index
    training = MANIFEST["keras2.0/notebook_cnn.h5"]["training_config"]
    assert "lr" in training["optimizer_config"]["config"]  # the file really holds the old argument


def test_transfer_learning_file_builds_a_site_with_in_base_units(tmp_path):
    from badfiles import make_dataset

    data = tmp_path / "data"
    make_dataset(data, {"cats": 4, "dogs": 4})
    out = tmp_path / "site"
    assert build_site(CORPUS / "tf2.12/mobilenetv2_seq.h5", data, out, "--preprocess", "tf", "--max-channels", "8") == 0
    report = json.loads((out / "report.json").read_text())
    names = [layer["name"] for layer in report["layers"]]
    assert any(n.startswith("mobilenetv2_") and "/block_1_expand" in n for n in names)
    assert report["preprocessing"]["mode"] == "tf" and report["warnings"] == []


def test_preprocess_input_inside_a_tf_keras_model_is_in_model_preprocessing():
    """The TensorFlow tutorial's transfer-learning model: x / 127.5 - 1 recorded as TFOpLambda layers."""
    from reportgen.model import load_model
    from reportgen.model.preprocess import choose_preprocessing

    loaded = load_model(CORPUS / "tf2.12/tfop_preprocess.h5")
    pre, warnings = choose_preprocessing(loaded.model, 3)
    assert pre.mode == "none" and pre.in_model.startswith("tf.math.truediv (Rescaling: × 1/127.5)") and warnings == []


def test_hdf5_named_keras_and_unreadable_loss_notes(tmp_path):
    from reportgen.model import load_model
    from reportgen.model.load import loss_from_config

    loaded = load_model(CORPUS / "tf2.12/hdf5_named.keras")
    assert loaded.file_format == "HDF5, written by Keras 2.12.0 (tensorflow), named .keras"
    custom = loss_from_config({"class_name": "FocalThing", "config": {"gamma": 2}})
    assert custom.fn is None and "FocalThing" in custom.note
    alias = loss_from_config("mse")
    assert alias.fn is not None and alias.note == ""
