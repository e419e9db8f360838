"""The built site end to end: report.json's numbers, pages and links, escaping, determinism."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

import badfiles
from conftest import HOSTILE_LAYER_NAMES, build_site, load_like_keras, rename_layers, site_units, tiny_sequential
from linkcheck import broken_links
from reportgen.site.names import layer_page


def read_site(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def tiny_site(tmp_path_factory):
    """One build of the tiny model over a tiny dataset with an awkward file or two, shared by the tests here."""
    tmp = tmp_path_factory.mktemp("site")
    model = tiny_sequential()
    model.save(tmp / "tiny.keras")
    data = tmp / "data"
    badfiles.make_dataset(data, {"cats": 8, "dogs": 6})
    badfiles.make_rgb_png(data / "dogs" / '"><img src=x onerror=alert(2)>.png', seed=42)
    badfiles.make_rgb_png(data / "cats" / "a b#c?d%e'f&g.png", seed=43)
    badfiles.make_zero_byte(data / "cats" / "empty.png")
    out = tmp / "site"
    assert build_site(tmp / "tiny.keras", data, out, "--unit", "c2:1:2:3", "--top-k", "4") == 0
    return {"out": out, "data": data, "model": model, "report": json.loads((out / "report.json").read_text())}


def test_report_json_numbers(tiny_site):
    r, model, data = tiny_site["report"], tiny_site["model"], tiny_site["data"]
    assert r["model"]["name"] == "tiny"
    assert r["model"]["input_shape"] == [None, 16, 16, 3]
    assert r["model"]["total_params"] == model.count_params()
    assert [(l["name"], l["type"], l["params"], l["output_shape"]) for l in r["model"]["layers"]] == [
        (layer.name, type(layer).__name__, layer.count_params(), [None, *layer.output.shape[1:]]) for layer in model.layers
    ]
    ds = r["dataset"]
    assert ds["root"] == "data" and ds["class_indices"] == {"cats": 0, "dogs": 1}  # no local path: the folder's name
    assert ds["num_images"] == 16 and ds["skipped"] == [{"path": "cats/empty.png", "reason": "empty file (0 bytes)"}]

    # Accuracy by hand over the 16 readable images.
    from reportgen.dataset import discover

    records = [rec for rec in discover(data).records if rec.rel != "cats/empty.png"]
    x = load_like_keras([rec.path for rec in records])
    y = np.array([rec.label for rec in records])
    predicted = (model.predict(x, verbose=0)[:, 0] > 0.5).astype(int)
    assert r["metrics"]["accuracy"] == pytest.approx(np.mean(predicted == y), abs=1e-6)
    assert sum(map(sum, r["metrics"]["confusion"])) == 16 and r["metrics"]["loss"] > 0

    # The chosen image: drawn with seed 0 from the dataset, its prediction and per-layer sparsity.
    (image,) = r["images"]
    rec = next(rec for rec in records if rec.rel == image["path"])
    assert image["label"] == ["cats", "dogs"][rec.label]
    p = float(model.predict(load_like_keras([rec.path]), verbose=0)[0, 0])
    assert image["scores"] == [pytest.approx(p, abs=1e-6)]
    assert image["prediction"] == f"{['cats', 'dogs'][int(p > 0.5)]} (output {p:.3f})"
    import keras

    probe = keras.Model(model.inputs, [model.get_layer(n).output for n in ("c1", "p1", "c2")])
    maps = probe(load_like_keras([rec.path]))
    for layer, m in zip(r["layers"], maps):
        assert layer["sparsity"] == pytest.approx(float(np.mean(np.asarray(m) == 0)), abs=1e-6)
        assert layer["page"] == layer_page(layer["name"])
    assert [l["name"] for l in r["layers"]] == ["c1", "p1", "c2"]

    units = site_units(tiny_site["out"])
    assert len(units) == 4 + 4 + 5
    assert all(len(u["top"]) == 4 for u in units)
    assert all(t["image"] in {rec.rel for rec in records} for u in units for t in u["top"])
    assert len(json.dumps(r)) < 1_000_000 and "units" not in r  # per-unit data lives in the per-layer files
    rf = {f["name"]: f["receptive_field"] for f in r["layers"]}
    assert rf["c1"]["size"] == [3, 3] and rf["p1"]["size"] == [4, 4] and rf["c2"]["size"] == [8, 8]
    assert rf["c2"]["stride"] == [2, 2] and rf["c2"]["offset"] == [4, 4]
    assert r["probes"][0]["layer"] == "c2" and [r["probes"][0]["row"], r["probes"][0]["col"]] == [1, 2]


def test_every_page_exists_and_every_link_resolves(tiny_site):
    out, r = tiny_site["out"], tiny_site["report"]
    files = read_site(out)
    assert broken_links(files) == []
    for page in ["index.html", *(l["page"] for l in r["layers"]), *(l["units_file"] for l in r["layers"]), r["probes"][0]["page"]]:
        assert page in files
    assert ".nojekyll" in files and ".reportgen-site" in files
    index = files["index.html"].decode()
    for layer in r["layers"]:
        assert f'href="{layer["page"]}"' in index
    assert re.search(r"https?://", b"".join(v for k, v in files.items() if k.endswith((".html", ".css"))).decode()) is None
    assert "fetch(" not in b"".join(files.values()).decode("latin-1")


def test_untrusted_names_are_escaped(tiny_site):
    files = read_site(tiny_site["out"])
    pages = {k: v.decode() for k, v in files.items() if k.endswith(".html")}
    everything = "\n".join(pages.values())
    assert "<img src=x" not in everything
    # Image paths reach the pages as JSON strings in a script file, and are set as text (test_browser.py runs them).
    images = files["data/images.js"].decode()
    assert json.dumps('dogs/"><img src=x onerror=alert(2)>.png') in images
    for path in files:
        assert re.fullmatch(r"[A-Za-z0-9_./-]+", path), path  # no user string ever becomes a file name


def test_layer_names_that_are_html_and_url_hostile(tmp_path, tiny_data):
    """The render stage works on plain data: give the layers hostile names there and render."""
    from reportgen.build import BuildOptions, gather
    from reportgen.site.pages import render_site
    from reportgen.writer import SiteFolder

    tiny_sequential().save(tmp_path / "m.keras")
    data = gather(BuildOptions(model=tmp_path / "m.keras", data=tiny_data, out=tmp_path / "unused", quiet=True, units=["c2:1:1:0"]))
    rename_layers(data, HOSTILE_LAYER_NAMES)
    with SiteFolder(tmp_path / "site") as site:
        render_site(data, site)
        site.commit()
    files = read_site(tmp_path / "site")
    assert broken_links(files) == []
    text = "\n".join(v.decode() for k, v in files.items() if k.endswith(".html"))
    assert "<img src=x" not in text and "&lt;img src=x onerror=alert(1)&gt;" in text
    assert "a:b c#d%e?f&#34;&amp;&lt;" in text
    assert all(re.fullmatch(r"[A-Za-z0-9_./-]+", path) for path in files)
    report = json.loads(files["report.json"])
    assert report["layers"][0]["name"] == "<img src=x onerror=alert(1)>"
    assert report["probes"][0]["layer"] == 'a:b c#d%e?f"&<'


def test_model_that_tensorflow_cannot_run_is_a_clear_error(tmp_path, tiny_data, capsys):
    import keras

    from reportgen.cli import main

    model = keras.Sequential([keras.Input((16, 16, 3)), keras.layers.Conv2D(2, 3, name="<img src=x onerror=alert(1)>"), keras.layers.Flatten(), keras.layers.Dense(1)])
    model.save(tmp_path / "evil.keras")
    code = main(["build", "--model", str(tmp_path / "evil.keras"), "--data", str(tiny_data), "--out", str(tmp_path / "out"), "-q"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: ") and "\n" not in err and "the model fails when run on an image" in err
    assert "is not a valid scope name" in err and 'File "' not in err  # TensorFlow's reason, not its stack
    assert not (tmp_path / "out").exists()


def test_tensorflow_reason_comes_before_the_stack_of_a_graph_error():
    """A graph error starts with the Python stack where each op was defined: the one-line error
    gives TensorFlow's reason and the op instead (they used to fall past the cut)."""
    import tensorflow as tf

    from reportgen.errors import model_fails

    def gather(values, indices):
        return tf.gather(values, indices) * 2

    with pytest.raises(tf.errors.InvalidArgumentError) as raised:
        tf.function(gather)(tf.range(3.0), tf.constant([9]))
    assert str(raised.value).startswith("Graph execution error:") and 'File "' in str(raised.value)
    message = str(model_fails("m.keras", raised.value))
    assert message == "m.keras: the model fails when run on an image: indices[0] = 9 is not in [0, 3) (in TensorFlow op GatherV2)"


def test_layer_name_with_characters_tensorflow_allows(tmp_path, tiny_data):
    import keras

    model = keras.Sequential([keras.Input((16, 16, 3)), keras.layers.Conv2D(2, 3, activation="relu", name="conv>1.a-b"), keras.layers.Flatten(), keras.layers.Dense(1, activation="sigmoid")])
    model.save(tmp_path / "m.keras")
    assert build_site(tmp_path / "m.keras", tiny_data, tmp_path / "out", "--unit", "conv>1.a-b:0:13:1") == 0
    files = read_site(tmp_path / "out")
    assert broken_links(files) == []
    assert "conv&gt;1.a-b" in files["index.html"].decode()


def test_two_builds_are_byte_identical(tmp_path, tiny_model_path, tiny_data):
    assert build_site(tiny_model_path, tiny_data, tmp_path / "one") == 0
    assert build_site(tiny_model_path, tiny_data, tmp_path / "two") == 0
    one, two = read_site(tmp_path / "one"), read_site(tmp_path / "two")
    assert one.keys() == two.keys()
    assert [k for k in one if one[k] != two[k]] == []


def test_max_channels_grayscale_and_nested(tmp_path):
    import keras

    base_in = keras.Input((16, 16, 1))
    base = keras.Model(base_in, keras.layers.Conv2D(6, 3, activation="relu", name="inner_conv")(base_in), name="base")
    model = keras.Sequential([keras.Input((16, 16, 1)), base, keras.layers.MaxPooling2D(name="pool"), keras.layers.Flatten(), keras.layers.Dense(3, activation="softmax")], name="gray_nested")
    model.compile(loss="sparse_categorical_crossentropy")
    model.save(tmp_path / "g.keras")
    badfiles.make_dataset(tmp_path / "data", {"a": 3, "b": 3})  # 3 outputs, 2 classes: a mismatch
    assert build_site(tmp_path / "g.keras", tmp_path / "data", tmp_path / "out", "--max-channels", "2") == 0
    r = json.loads((tmp_path / "out" / "report.json").read_text())
    assert [l["name"] for l in r["layers"]] == ["base/inner_conv", "pool"]
    assert r["model"]["input_shape"] == [None, 16, 16, 1]
    assert r["metrics"]["accuracy"] is None and "3 output units" in r["metrics"]["note"]
    index = (tmp_path / "out" / "index.html").read_text()
    assert "3 output units" in index and "base/inner_conv" in index
    layer = (tmp_path / "out" / layer_page("base/inner_conv")).read_text()
    assert "first 2 of 6 channels" in layer
    assert layer.count('class="tile') == 2
    assert len([u for u in site_units(tmp_path / "out") if u["layer"] == "base/inner_conv"]) == 6  # every unit still mined


def test_chosen_images_from_option(tmp_path, tiny_model_path, tiny_data):
    outside = badfiles.make_rgb_jpeg(tmp_path / "elsewhere" / "photo.jpg", size=(40, 30))
    inside = tiny_data / "dogs" / "img_001.png"
    assert build_site(tiny_model_path, tiny_data, tmp_path / "out", "--image", str(outside), "--image", str(inside)) == 0
    r = json.loads((tmp_path / "out" / "report.json").read_text())
    assert [(i["path"], i["label"]) for i in r["images"]] == [("photo.jpg", None), ("dogs/img_001.png", "dogs")]  # no local path
    assert all(len(l["sparsity_per_image"]) == 2 for l in r["layers"])


def test_dead_channel_is_marked_not_nan(tmp_path):
    model = tiny_sequential()
    conv = model.get_layer("c1")
    kernel, bias = conv.get_weights()
    kernel[..., 1], bias[1] = -abs(kernel[..., 1]) - 0.01, -1.0  # never above zero
    conv.set_weights([kernel, bias])
    model.save(tmp_path / "m.keras")
    badfiles.make_dataset(tmp_path / "data", {"a": 3, "b": 2})
    assert build_site(tmp_path / "m.keras", tmp_path / "data", tmp_path / "out") == 0
    r = json.loads((tmp_path / "out" / "report.json").read_text())
    dead = [(u["layer"], u["channel"]) for u in site_units(tmp_path / "out") if u["dead"]]
    assert ("c1", 1) in dead and ("p1", 1) in dead
    layer = (tmp_path / "out" / layer_page("c1")).read_text()
    assert "1 constant channel crossed out" in layer and "NaN" not in layer
    assert re.search(r'id="unit-1"><a href="#unit-1">.*?dead-tag', layer)
    index = (tmp_path / "out" / "index.html").read_text()
    assert re.search(r"c1</a>.*?1 / 4", index, re.S)
    assert r["layers"][0]["dead_units"] == 1


def test_report_and_layer_files_follow_the_schema(tiny_site):
    import jsonschema

    from linkcheck import read_js_json

    out = tiny_site["out"]
    schema = json.loads((Path(__file__).parents[1] / "reportgen" / "site" / "schema" / "report.schema.json").read_text())
    report = json.loads((out / "report.json").read_text())
    jsonschema.validate(report, schema)
    assert report["schema_version"] == 2
    layer_schema = {**schema["$defs"]["layerFile"], "$defs": schema["$defs"]}
    for layer in report["layers"]:
        jsonschema.validate(read_js_json((out / layer["units_file"]).read_text()), layer_schema)
    jsonschema.validate(read_js_json((out / report["files"]["images"]).read_text()), schema["$defs"]["imagesFile"])


def test_relative_paths_equal_posixpath_relpath():
    """Links are made without os.path.relpath (it reads the working directory every call): the same results."""
    import itertools
    import posixpath

    from reportgen.site.names import relative_path

    files = ["index.html", "layers/conv.html", "layers/a/b.html", "data/x.js", "static/style.css", "classes/0-cat.html",
             "layers", "layers/conv-1.html", "lay/ers.html", "a/b/c/d.png", "summary.html"]
    for path, page in itertools.product(files, files):
        start = posixpath.dirname(page)
        assert relative_path(path, start) == posixpath.relpath(path, start or "."), (path, page)
