"""Shared fixtures: tiny Keras models (16x16 inputs, a few conv layers) and tiny datasets, built in the tests."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).parent))  # for `import badfiles`

FIXTURES = Path(__file__).parent / "fixtures"


def tiny_sequential(channels: int = 3, outputs: int = 1, seed: int = 0, name: str = "tiny"):
    """Conv(4) -> MaxPool -> Conv(5) -> Flatten -> Dense: 16x16 input, compiled."""
    import keras

    keras.utils.set_random_seed(seed)
    model = keras.Sequential(
        [
            keras.Input((16, 16, channels)),
            keras.layers.Conv2D(4, 3, activation="relu", name="c1"),
            keras.layers.MaxPooling2D(name="p1"),
            keras.layers.Conv2D(5, 3, activation="relu", name="c2"),
            keras.layers.Flatten(name="flat"),
            keras.layers.Dense(outputs, activation="sigmoid" if outputs == 1 else "softmax", name="out"),
        ],
        name=name,
    )
    loss = "binary_crossentropy" if outputs == 1 else "sparse_categorical_crossentropy"
    model.compile(optimizer="adam", loss=loss, metrics=["accuracy"])
    return model


@pytest.fixture
def tiny_model_path(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.keras"
    tiny_sequential().save(path)
    return path


@pytest.fixture
def tiny_data(tmp_path: Path) -> Path:
    """data/cats (12 images) and data/dogs (9 images), 16x16 RGB PNG noise."""
    from badfiles import make_dataset

    root = tmp_path / "data"
    make_dataset(root, {"cats": 12, "dogs": 9})
    return root


def load_like_keras(paths, size=(16, 16), color_mode="rgb") -> np.ndarray:
    """What flow_from_directory feeds the model: keras.utils.load_img (nearest) / 255."""
    import keras

    return np.stack(
        [keras.utils.img_to_array(keras.utils.load_img(p, color_mode=color_mode, target_size=size, interpolation="nearest")) / 255.0 for p in paths]
    ).astype(np.float32)


def build_site(model: Path, data: Path, out: Path, *extra: str) -> int:
    from reportgen.cli import main

    return main(["build", "--model", str(model), "--data", str(data), "--out", str(out), "-q", *extra])


def rename_layers(data, rename: dict[str, str]) -> None:
    """Give layers other names everywhere in gathered data (report.ReportData, plain data), e.g.
    hostile ones that TensorFlow itself would refuse to run, to test the render stage with them."""
    for node in data.info.nodes:
        node.name = rename.get(node.name, node.name)
        node.inputs = [rename.get(i, i) for i in node.inputs]
        node.parent = rename.get(node.parent, node.parent) if node.parent else node.parent
        node.alias_of = rename.get(node.alias_of, node.alias_of)
    data.scan.units = {rename.get(k, k): v for k, v in data.scan.units.items()}
    for units in data.scan.units.values():
        units.layer = rename.get(units.layer, units.layer)
    for probe in data.scan.probes:
        probe.layer = rename.get(probe.layer, probe.layer)
    data.scan.ranked_as = {rename.get(k, k): rename.get(v, v) for k, v in data.scan.ranked_as.items()}
    data.fields = {rename.get(k, k): v for k, v in data.fields.items()}
    for image in data.chosen:
        image.maps = {rename.get(k, k): v for k, v in image.maps.items()}


def site_units(out: Path) -> list[dict]:
    """Every unit of a written site, from report.json and the per-layer data files it points to:
    {"layer", "channel", "dead", "max", "top": [{"image": path, "value", "row", "col"}], "histogram", "heat"}."""
    import json

    from linkcheck import read_js_json

    report = json.loads((out / "report.json").read_text())
    images = read_js_json((out / report["files"]["images"]).read_text())["images"]
    units = []
    for layer in report["layers"]:
        data = read_js_json((out / layer["units_file"]).read_text())
        for u in data["units"]:
            top = [{"image": images[str(i)][3], "index": i, "value": v, "row": r, "col": c} for i, v, r, c in u["top"]]
            units.append({"layer": layer["name"], **u, "top": top})
    return units


HOSTILE_LAYER_NAMES = {"c1": "<img src=x onerror=alert(1)>", "c2": 'a:b c#d%e?f"&<'}
