"""Every keras.applications family traces, reproduces the model's outputs and gets exact receptive fields.

weights=None (nothing is downloaded), the smallest input each family allows. Receptive fields are
checked against published values (Araujo, Norris and Sim, "Computing Receptive Fields of
Convolutional Neural Networks", Distill 2019) and by gradients, on a sample of layers and positions:
an input pixel outside the box drawn for a position never moves that position.
"""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.slow

FAMILIES = {
    "VGG16": {},
    "ResNet50": {},
    "ResNet50V2": {},
    "InceptionV3": {"input_shape": (75, 75, 3)},
    "Xception": {"input_shape": (71, 71, 3)},
    "MobileNet": {"alpha": 0.25},
    "MobileNetV2": {"alpha": 0.35},
    "MobileNetV3Small": {"minimalistic": False},
    "DenseNet121": {},
    "NASNetMobile": {},
    "EfficientNetB0": {},
    "EfficientNetV2B0": {},
    "ConvNeXtTiny": {},
}

# Published receptive field sizes of the last feature map (same architecture in TF-slim).
PUBLISHED = {"VGG16": ("block5_pool", 212), "MobileNet": ("conv_pw_13_relu", 315), "InceptionV3": ("mixed10", 1311)}


def build(name: str):
    import keras

    kwargs = dict(FAMILIES[name])
    kwargs.setdefault("input_shape", (32, 32, 3))
    keras.utils.set_random_seed(0)
    return getattr(keras.applications, name)(weights=None, include_top=True, classes=3, **kwargs)


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_family_traces_with_exact_fields_and_builds_a_site(name, tmp_path):
    from reportgen.model import trace_model
    from reportgen.model.tf import tf
    from reportgen.receptive import receptive_fields

    model = build(name)
    traced = trace_model(model, name)
    spec = traced.spec
    x = np.random.default_rng(0).uniform(0, 1, (2, spec.height, spec.width, 3)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(traced.tap(x)[0]), np.asarray(model(x, training=False)), atol=1e-5)  # predict's trace costs seconds here
    assert traced.info.total_params == model.count_params()
    hw = (spec.height, spec.width)
    fields = receptive_fields(traced.info.nodes, hw)
    inexact = {n: f.note for n, f in fields.items() if not f.exact}
    assert not inexact, inexact
    if name in PUBLISHED:
        layer, size = PUBLISHED[name]
        assert fields[layer].size == (size, size)

    # Gradients: a sample of layers, at the corners, edges and centre of each, the input a random image;
    # one forward and backward pass, each (layer, position) with its own copy of the image in the batch
    # (nothing mixes the images of a batch at inference), as the eager passes of a big model cost seconds.
    maps = traced.map_layers
    sample = sorted({0, len(maps) // 3, 2 * len(maps) // 3, len(maps) - 1} | {i for i, n in enumerate(maps) if n.spatial[0] > 1}.intersection(range(1, len(maps), max(1, len(maps) // 6))))
    checks = []
    for i in sample:
        node = maps[i]
        if "whole image" in fields[node.name].note:
            continue  # squeeze-and-excitation scaling or a global summary: the whole image moves it, as the note says
        rows, cols = node.spatial
        checks += [(i, r, c) for r in sorted({0, rows // 2, rows - 1}) for c in sorted({0, cols // 2, cols - 1})]
    inp = tf.constant(np.repeat(x[:1], len(checks), axis=0))
    with tf.GradientTape() as tape:
        tape.watch(inp)
        outs = traced.tap(inp)
        y = tf.add_n([tf.reduce_sum(outs[1 + i][b, r, c, :]) for b, (i, r, c) in enumerate(checks)])
    grad = np.abs(tape.gradient(y, inp).numpy()).sum(axis=-1) > 0
    checked = 0
    for b, (i, r, c) in enumerate(checks):
        node = maps[i]
        box = fields[node.name].visible_box(r, c, hw)
        inside = np.zeros(hw, bool)
        if box is not None:
            x0, y0, x1, y1 = (int(v) for v in box)
            inside[y0:y1, x0:x1] = True
        assert not (grad[b] & ~inside).any(), f"{name} {node.name} ({r}, {c}): gradient outside the box {box}"
        assert grad[b].any() or box is None, f"{name} {node.name} ({r}, {c}): no gradient at all"
        checked += 1
    assert checked > 0

    # and a site: every unit of every layer, over two images saved and read back as a user's would be
    import json

    import badfiles
    from conftest import build_site

    model.compile(loss="sparse_categorical_crossentropy")
    model.save(tmp_path / f"{name}.keras")
    badfiles.make_dataset(tmp_path / "data", {"a": 1, "b": 1})
    assert build_site(tmp_path / f"{name}.keras", tmp_path / "data", tmp_path / "site") == 0
    report = json.loads((tmp_path / "site" / "report.json").read_text())
    assert len(report["layers"]) == len(traced.map_layers)
    assert sum(layer["units"] for layer in report["layers"]) == sum(n.channels for n in traced.map_layers)
    assert all((tmp_path / "site" / layer["page"]).is_file() and (tmp_path / "site" / layer["units_file"]).is_file() for layer in report["layers"])
    assert all(layer["receptive_field"]["exact"] for layer in report["layers"])
