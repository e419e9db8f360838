"""Many classes: top-5 accuracy against Keras, readable class names, and pages that stay light."""

from __future__ import annotations

import html.parser
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import build_site, load_like_keras
from reportgen.errors import UserError

CLASSES = 1000


def many_classes(root: Path, classes: int, per_class: int = 2, seed: int = 0) -> tuple[Path, Path, Path]:
    """classes folders named like ImageNet's (n01000000, ...), tiny 8x8 images, a model with one output
    per class, and ImageNet-style words.txt lines (folder<TAB>name)."""
    import keras

    rng = np.random.default_rng(seed)
    data = root / "data"
    lines = []
    for c in range(classes):
        folder = f"n{1000000 + 7 * c:08d}"
        lines.append(f"{folder}\tthing number {c}")
        for i in range(per_class):
            path = data / folder / f"img_{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(path)
    words = root / "words.txt"
    words.write_text("\n".join(lines) + "\n")
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(4, 3, activation="relu", name="c1"), keras.layers.Flatten(),
                              keras.layers.Dense(classes, activation="softmax", name="out")])
    model.compile(loss="sparse_categorical_crossentropy")
    model.save(root / "m.keras")
    return root / "m.keras", data, words


def test_top5_equals_keras_top_k_categorical_accuracy(tmp_path):
    import keras

    model_path, data, _ = many_classes(tmp_path, 12, per_class=5, seed=3)
    out = tmp_path / "site"
    assert build_site(model_path, data, out) == 0
    report = json.loads((out / "report.json").read_text())
    from reportgen.dataset import discover

    records = discover(data).records
    probs = keras.models.load_model(model_path).predict(load_like_keras([r.path for r in records], size=(8, 8)), verbose=0)
    labels = np.array([r.label for r in records])
    metric = keras.metrics.TopKCategoricalAccuracy(k=5)
    metric.update_state(np.eye(12)[labels], probs)
    assert report["metrics"]["top5"] == pytest.approx(float(metric.result()), abs=1e-7)
    for c, folder in enumerate(report["dataset"]["class_indices"]):
        mine = labels == c
        per_class = keras.metrics.TopKCategoricalAccuracy(k=5)
        per_class.update_state(np.eye(12)[labels[mine]], probs[mine])
        assert report["metrics"]["per_class_top5"][folder] == pytest.approx(float(per_class.result()), abs=1e-7)
    assert "top-5" in (out / "index.html").read_text()


def test_class_names_files(tmp_path):
    from reportgen.dataset import read_class_names

    classes = ["n01", "n02", "n03"]
    cases = {
        "words.txt": ("n02\tsecond thing\nn01\tfirst thing\nn99\tnot here\n", ["first thing", "second thing", "n03"]),
        "synsets.txt": ("n01 tench, Tinca tinca\nn02 goldfish\nn03 shark\n", ["tench, Tinca tinca", "goldfish", "shark"]),
        "lines.txt": ("one\ntwo\nthree\n", ["one", "two", "three"]),
        "names.json": (json.dumps({"n03": "three", "n01": "one"}), ["one", "n02", "three"]),
        "index.json": (json.dumps({"0": ["n01", "tench"], "2": ["n03", "shark"]}), ["tench", "n02", "shark"]),
        "list.json": (json.dumps(["a", "b", "c"]), ["a", "b", "c"]),
    }
    for name, (text, expected) in cases.items():
        (tmp_path / name).write_text(text)
        assert read_class_names(tmp_path / name, classes) == expected, name
    (tmp_path / "short.txt").write_text("one\ntwo\n")
    with pytest.raises(UserError, match="2 lines for 3 classes"):
        read_class_names(tmp_path / "short.txt", classes)
    with pytest.raises(UserError, match="no such|cannot read"):
        read_class_names(tmp_path / "missing.txt", classes)


class _Tables(html.parser.HTMLParser):
    """The number of cells of every table of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.sizes: list[int] = []
        self.depth = 0

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self.sizes.append(0)
        elif tag in ("td", "th") and self.sizes:
            self.sizes[-1] += 1


@pytest.fixture(scope="module")
def thousand(tmp_path_factory):
    root = tmp_path_factory.mktemp("thousand")
    model_path, data, words = many_classes(root, CLASSES)
    out = root / "site"
    assert build_site(model_path, data, out, "--class-names", str(words)) == 0
    return out


def test_a_thousand_classes_stay_light(thousand):
    out = thousand
    index = (out / "index.html").read_text()
    assert len(index.encode()) <= 300 * 1024
    biggest = 0
    for page in out.rglob("*.html"):
        parser = _Tables()
        parser.feed(page.read_text())
        biggest = max([biggest, *parser.sizes])
    assert biggest <= 2500
    report = json.loads((out / "report.json").read_text())
    assert report["metrics"]["confusion"] is None  # beyond 100 classes: the non-zero cells
    cells = report["metrics"]["confusion_cells"]
    assert sum(c[2] for c in cells) == report["metrics"]["evaluated"] == 2 * CLASSES
    assert len(report["dataset"]["class_indices"]) == CLASSES and "n01000000" in report["dataset"]["class_indices"]
    assert report["dataset"]["class_names"]["n01000007"] == "thing number 1"
    assert "thing number 1" in index and "20 classes with the lowest accuracy" in index and "Show all 1,000 classes" in index
    assert report["metrics"]["top5"] is not None and len(json.dumps(report)) < 1_000_000
