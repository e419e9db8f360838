"""Receptive fields: hand-computed values on real Keras layers, and an empirical check by gradients.

Conventions (reportgen/receptive.py): input pixel i spans [i, i+1); per axis (height, width) a field has
`size` r, effective `stride` j and `offset` o (the centre of position 0's field); the box of (row, col) is
centred at o + (row, col) * j. For one layer, with k_eff = d * (k - 1) + 1:
    r' = r + (k_eff - 1) * j,   j' = j * s,   o' = o + ((k_eff - 1) / 2 - pad_before) * j
and 'same' padding puts the odd pixel after: pad_before = max((out - 1) * s + k_eff - in, 0) // 2.
The model input starts at r = 1, j = 1, o = 0.5.
"""

from __future__ import annotations

import numpy as np
import pytest

import keras
import tensorflow as tf

from reportgen.model import trace_model
from reportgen.receptive import receptive_fields
from reportgen.report import ReceptiveField

L = keras.layers


def fields_of(model, output=None) -> tuple:
    traced = trace_model(model, output=output)
    h, w = traced.spec.height, traced.spec.width
    return traced, receptive_fields(traced.info.nodes, (h, w))


def node(traced, name):
    return next(n for n in traced.info.nodes if n.name == name)


def assert_field(rf: ReceptiveField, size, stride, offset):
    assert rf.exact, rf.note
    assert rf.note == ""
    assert rf.size == pytest.approx(size)
    assert rf.stride == pytest.approx(stride)
    assert rf.offset == pytest.approx(offset)


# --------------------------------------------------------------------------- 1. hand-computed stacks


def test_sequential_stack_by_hand():
    model = keras.Sequential(
        [
            keras.Input((32, 32, 1)),
            L.Conv2D(2, 3, padding="valid", name="c1"),
            L.Conv2D(2, 3, strides=2, padding="same", name="c2"),
            L.MaxPooling2D(2, name="p1"),
            L.Conv2D(2, 3, dilation_rate=2, padding="valid", name="c3"),
            L.ZeroPadding2D(1, name="z1"),
            L.Conv2D(2, 5, strides=2, padding="valid", name="c4"),
            L.Flatten(name="flat"),
            L.Dense(1, name="out"),
        ]
    )
    traced, rf = fields_of(model)
    # Output sizes: 32 -valid k3-> 30 -same s2-> ceil(30/2)=15 -pool2-> 7 -valid k_eff5-> 3 -pad1-> 5 -valid k5 s2-> 1
    spatial = {n.name: n.spatial for n in traced.info.nodes if n.is_map}
    assert spatial == {"c1": (30, 30), "c2": (15, 15), "p1": (7, 7), "c3": (3, 3), "z1": (5, 5), "c4": (1, 1)}
    assert set(rf) == set(spatial)  # flat / out are not maps

    # c1: k=3 valid. r = 1 + 2*1 = 3; j = 1; o = 0.5 + (1 - 0)*1 = 1.5
    assert_field(rf["c1"], (3, 3), (1, 1), (1.5, 1.5))
    # c2: k=3 s=2 same, in 30: out 15, pad_total = 14*2 + 3 - 30 = 1 -> pad_before = 0 (odd pixel after).
    #     r = 3 + 2*1 = 5; j = 1*2 = 2; o = 1.5 + (1 - 0)*1 = 2.5
    assert_field(rf["c2"], (5, 5), (2, 2), (2.5, 2.5))
    # p1: k=2 s=2 valid. r = 5 + 1*2 = 7; j = 4; o = 2.5 + 0.5*2 = 3.5
    assert_field(rf["p1"], (7, 7), (4, 4), (3.5, 3.5))
    # c3: k=3 d=2 -> k_eff = 5, valid. r = 7 + 4*4 = 23; j = 4; o = 3.5 + 2*4 = 11.5
    assert_field(rf["c3"], (23, 23), (4, 4), (11.5, 11.5))
    # z1: pad 1 before. r = 23; j = 4; o = 11.5 - 1*4 = 7.5
    assert_field(rf["z1"], (23, 23), (4, 4), (7.5, 7.5))
    # c4: k=5 s=2 valid. r = 23 + 4*4 = 39; j = 8; o = 7.5 + 2*4 = 15.5
    assert_field(rf["c4"], (39, 39), (8, 8), (15.5, 15.5))
    # Its single position looks at [15.5 - 19.5, 15.5 + 19.5] = [-4, 35] on both axes.
    assert rf["c4"].box(0, 0) == pytest.approx((-4, -4, 35, 35))
    # c3's position (2, 1): centre (11.5 + 2*4, 11.5 + 1*4) = (19.5, 15.5), 23 wide.
    assert rf["c3"].box(2, 1) == pytest.approx((15.5 - 11.5, 19.5 - 11.5, 15.5 + 11.5, 19.5 + 11.5))


def test_non_square_kernels_and_strides_by_hand():
    model = keras.Sequential(
        [
            keras.Input((20, 27, 1)),
            L.Conv2D(2, (3, 5), strides=(1, 2), padding="same", name="b1"),
            L.Conv2D(2, 4, padding="same", name="b2"),
            L.Activation("relu", name="act"),
            L.AveragePooling2D(pool_size=(2, 3), strides=(2, 2), name="b3"),
            L.Cropping2D(((1, 0), (2, 1)), name="crop"),
            L.DepthwiseConv2D((2, 1), strides=(3, 1), padding="same", name="b5"),
            L.SeparableConv2D(2, (1, 3), dilation_rate=(1, 2), padding="same", name="b6"),
        ]
    )
    traced, rf = fields_of(model)
    spatial = {n.name: n.spatial for n in traced.info.nodes if n.is_map}
    # H: 20 -> 20 -> 20 -> 20 -> 10 -> 9 -> ceil(9/3)=3 -> 3
    # W: 27 -> ceil(27/2)=14 -> 14 -> 14 -> (14-3)//2+1=6 -> 6-3=3 -> 3 -> 3
    assert spatial == {
        "b1": (20, 14), "b2": (20, 14), "act": (20, 14), "b3": (10, 6), "crop": (9, 3), "b5": (3, 3), "b6": (3, 3),
    }
    # b1 H: k=3 s=1 same, in 20: pad_total = 19 + 3 - 20 = 2 -> before 1. r = 3; j = 1; o = 0.5 + (1 - 1)*1 = 0.5
    # b1 W: k=5 s=2 same, in 27: out 14, pad_total = 13*2 + 5 - 27 = 4 -> before 2. r = 5; j = 2; o = 0.5 + (2 - 2) = 0.5
    assert_field(rf["b1"], (3, 5), (1, 2), (0.5, 0.5))
    # b2 (even kernel, same): pad_total = 3 -> before 1, after 2, on both axes.
    # H: r = 3 + 3*1 = 6; j = 1; o = 0.5 + (1.5 - 1)*1 = 1.0
    # W: r = 5 + 3*2 = 11; j = 2; o = 0.5 + (1.5 - 1)*2 = 1.5
    assert_field(rf["b2"], (6, 11), (1, 2), (1.0, 1.5))
    # act: pointwise, unchanged.
    assert_field(rf["act"], (6, 11), (1, 2), (1.0, 1.5))
    # b3 H: k=2 s=2 valid. r = 6 + 1*1 = 7; j = 2; o = 1.0 + 0.5*1 = 1.5
    # b3 W: k=3 s=2 valid. r = 11 + 2*2 = 15; j = 4; o = 1.5 + 1*2 = 3.5
    assert_field(rf["b3"], (7, 15), (2, 4), (1.5, 3.5))
    # crop top 1, left 2: o_H = 1.5 + 1*2 = 3.5; o_W = 3.5 + 2*4 = 11.5
    assert_field(rf["crop"], (7, 15), (2, 4), (3.5, 11.5))
    # b5 H: k=2 s=3 same, in 9: out 3, pad_total = max(2*3 + 2 - 9, 0) = 0. r = 7 + 1*2 = 9; j = 6; o = 3.5 + 0.5*2 = 4.5
    # b5 W: k=1: unchanged.
    assert_field(rf["b5"], (9, 15), (6, 4), (4.5, 11.5))
    # b6 (separable: its depthwise kernel (1,3) dilated (1,2) is the spatial part):
    # H: k=1 -> unchanged. W: k_eff = 2*2 + 1 = 5, s=1 same, in 3: pad_total = 2 + 5 - 3 = 4 -> before 2.
    #    r = 15 + 4*4 = 31; j = 4; o = 11.5 + (2 - 2)*4 = 11.5
    assert_field(rf["b6"], (9, 31), (6, 4), (4.5, 11.5))
    # Position (1, 2) of b6: centre (4.5 + 6, 11.5 + 8) = (10.5, 19.5), 9 high, 31 wide.
    assert rf["b6"].box(1, 2) == pytest.approx((19.5 - 15.5, 10.5 - 4.5, 19.5 + 15.5, 10.5 + 4.5))


# --------------------------------------------------------------------------- 2. empirical check by gradients


def _positive_linear(model) -> None:
    """Every weight 1 (linear activations, no bias): an input pixel moves an output iff a path joins them."""
    for layer in model.layers:
        weights = layer.get_weights()
        if weights:
            layer.set_weights([np.ones_like(w) for w in weights])


def _gradient_support(traced) -> dict[str, np.ndarray]:
    """For every map layer: bool [rows, cols, H, W], which input pixels have a nonzero gradient for
    channel 0 of each output position. One batch item per (layer, position), one backward pass."""
    spec = traced.spec
    targets = []  # (output index in tap, layer name, row, col)
    for i, n in enumerate(traced.map_layers):
        rows, cols = n.spatial
        targets += [(i + 1, n.name, r, c) for r in range(rows) for c in range(cols)]
    x = tf.ones((len(targets), spec.height, spec.width, spec.channels))
    with tf.GradientTape() as tape:
        tape.watch(x)
        outs = traced.tap(x)
        # Batch item b only depends on input b, so the sum keeps each item's gradient apart.
        y = tf.add_n([outs[t][b, r, c, 0] for b, (t, _, r, c) in enumerate(targets)])
    grad = np.abs(tape.gradient(y, x).numpy()).sum(axis=-1) > 0
    result = {n.name: np.zeros((*n.spatial, spec.height, spec.width), bool) for n in traced.map_layers}
    for b, (_, name, r, c) in enumerate(targets):
        result[name][r, c] = grad[b]
    return result


def _clipped_box(rf: ReceptiveField, row: int, col: int, hw) -> tuple[int, int, int, int]:
    """The pixels reportgen draws for (row, col): the field's box, less what the stack never reads."""
    box = rf.visible_box(row, col, hw)
    assert box is not None, (row, col)
    for v in box:
        assert v == int(v), f"an exact field's box has whole-pixel edges, got {box}"
    x0, y0, x1, y1 = (int(v) for v in box)
    full = rf.box(row, col)
    assert full[0] <= x0 and full[1] <= y0 and x1 <= full[2] and y1 <= full[3]  # inside the standard box
    return max(0, x0), max(0, y0), min(hw[1], x1), min(hw[0], y1)


def _check_by_gradients(model, holes: bool) -> int:
    """Compare each map layer's every position with the gradient. Returns how many boxes were clipped.

    Without dilation holes the pixels with a nonzero gradient are exactly the box clipped to the image.
    With holes they are a subset of it; inside the image the extreme taps reach the box's edges, so the
    support's bounding box is the box itself, while at a clipped border a hole can fall on the edge."""
    _positive_linear(model)
    traced, rf = fields_of(model)
    hw = (traced.spec.height, traced.spec.width)
    support = _gradient_support(traced)
    clipped = 0
    for n in traced.map_layers:
        field = rf[n.name]
        assert field.exact, (n.name, field.note)
        rows, cols = n.spatial
        for r in range(rows):
            for c in range(cols):
                x0, y0, x1, y1 = _clipped_box(field, r, c, hw)
                is_clipped = (x0, y0, x1, y1) != tuple(int(v) for v in field.box(r, c))
                clipped += is_clipped
                expected = np.zeros(hw, bool)
                expected[y0:y1, x0:x1] = True
                got = support[n.name][r, c]
                where = f"{n.name} ({r}, {c}): box {field.box(r, c)}"
                if not holes:
                    ys, xs = np.nonzero(got)
                    found = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1) if got.any() else None
                    assert np.array_equal(got, expected), f"{where}: reads input pixels (x0, y0, x1, y1) {found}, clipped box {(x0, y0, x1, y1)}"
                else:
                    assert got.any(), where
                    assert not (got & ~expected).any(), where + ": gradient outside the box"
                    if not is_clipped:
                        ys, xs = np.nonzero(got)
                        assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (x0, y0, x1, y1), where
    return clipped


def test_fields_match_gradients_without_dilation():
    # A 'valid' / 'same' stack whose layers read every position of their input (no trailing pixel left
    # over by a strided 'valid' window), with average pooling (a max pool's gradient only reaches the argmax).
    model = keras.Sequential(
        [
            keras.Input((23, 40, 1)),
            L.Conv2D(2, (3, 5), padding="valid", use_bias=False, name="e1"),  # 21 x 36
            # H: in 21, out 11, pad_total 2 -> 1 before; W: in 36, out 18, pad_total 1 -> 0 before, 1 after
            L.Conv2D(2, 3, strides=2, padding="same", use_bias=False, name="e2"),
            # H: s=1, pad_total 1 -> after only; W: s=2, in 18 -> 9
            L.AveragePooling2D(2, strides=(1, 2), padding="same", name="e3"),
            # H: k=4 s=1 same (1 before, 2 after); W: k=2 s=2 same, in 9 -> 5, pad_total 1 -> after only
            L.Conv2D(2, (4, 2), strides=(1, 2), padding="same", use_bias=False, name="e5"),
            # H: in 11, out 6, pad_total 5*2 + 3 - 11 = 2 -> 1 before; W: in 5, out 3, pad_total 2*2 + 3 - 5 = 2 -> 1 before
            # (equal strides: TensorFlow's depthwise kernel without oneDNN runs no other)
            L.DepthwiseConv2D(3, strides=2, padding="same", use_bias=False, name="e7"),
            L.Conv2D(2, (3, 1), padding="valid", use_bias=False, name="e8"),  # 4 x 3
        ]
    )
    clipped = _check_by_gradients(model, holes=False)
    assert clipped > 50  # border positions where the field runs into the padding were checked too


def test_fields_match_gradients_with_dilation():
    model = keras.Sequential(
        [
            keras.Input((21, 20, 1)),
            L.Conv2D(2, 3, dilation_rate=2, padding="same", use_bias=False, name="d1"),  # 21 x 20
            L.Conv2D(2, (3, 2), strides=2, padding="valid", use_bias=False, name="d2"),  # 10 x 10, reads all of 21 x 20
            L.Conv2D(2, 3, dilation_rate=(2, 3), padding="same", use_bias=False, name="d3"),
            L.AveragePooling2D(2, name="d4"),
        ]
    )
    clipped = _check_by_gradients(model, holes=True)
    assert clipped > 10


def test_union_of_branches_matches_gradients():
    inp = keras.Input((15, 17, 1))
    a = L.Conv2D(2, 3, padding="same", use_bias=False, name="a")(inp)
    b = L.Conv2D(2, (5, 1), padding="same", use_bias=False, name="b")(inp)
    out = L.Add(name="add")([a, b])
    model = keras.Model(inp, out)
    # a: r = (3, 3), o = (0.5, 0.5); b: r = (5, 1), o = (0.5 + (2 - 2), 0.5) = (0.5, 0.5).
    # Union: H [min(0.5-1.5, 0.5-2.5), max(0.5+1.5, 0.5+2.5)] = [-2, 3] -> size 5, centre 0.5; W [-1, 2] -> size 3.
    _, rf = fields_of(model)
    assert_field(rf["add"], (5, 3), (1, 1), (0.5, 0.5))
    # The gradient support is a cross (3x3 square plus a 5x1 bar), inside the union box; where the box
    # is not clipped, the cross's bounding box is the union box.
    _check_by_gradients(model, holes=True)


@pytest.mark.parametrize(
    "case",
    [
        # 7 pixels, k=2 s=2 'valid' reads pixels 0..5 only (3 positions: [0,2) [2,4) [4,6)); pixel 6 is never read.
        # The 'same' 3x3 after it pads one virtual position after the last: its recurrence box for the last
        # position is centred at 1 + 2*2 = 5, 6 wide: [2, 8), clipped to the image [2, 7) -- but it reads [2, 6).
        "strided-valid-then-same",
        # Cropping 2 pixels: position 0 of the crop is pixel 2. The 'same' 3x3 after it pads a virtual position
        # before it, whose recurrence box is pixel 1 (inside the image, but cropped away): box of (0, 0) is
        # [1, 4), while the unit reads pixels [2, 4).
        "crop-then-same",
    ],
)
def test_border_boxes_hold_only_pixels_the_stack_reads(case):
    first = L.Conv2D(1, 2, strides=2, use_bias=False, name="first") if case == "strided-valid-then-same" else L.Cropping2D(2, name="first")
    model = keras.Sequential(
        [keras.Input((7, 7, 1) if case == "strided-valid-then-same" else (8, 8, 1)), first, L.Conv2D(1, 3, padding="same", use_bias=False, name="same")]
    )
    _check_by_gradients(model, holes=False)


# --------------------------------------------------------------------------- 3. merges


def test_merge_of_aligned_branches_is_the_union():
    inp = keras.Input((16, 16, 3))
    a = L.Conv2D(4, 3, padding="same", name="a3")(inp)
    b = L.Conv2D(4, 5, padding="same", name="b5")(inp)
    s = L.Add(name="sum")([a, b])
    c = L.Concatenate(name="cat")([L.Conv2D(2, (3, 1), padding="same", name="v")(inp), L.Conv2D(2, (1, 5), padding="same", name="h")(inp)])
    model = keras.Model(inp, [s, c])
    traced, rf = fields_of(model, output="sum")
    # a3: r = 3, o = 0.5 + (1 - 1) = 0.5; b5: r = 5, o = 0.5 + (2 - 2) = 0.5
    assert_field(rf["a3"], (3, 3), (1, 1), (0.5, 0.5))
    assert_field(rf["b5"], (5, 5), (1, 1), (0.5, 0.5))
    # union: [min(-1, -2), max(2, 3)] = [-2, 3] -> size 5, centre 0.5
    assert_field(rf["sum"], (5, 5), (1, 1), (0.5, 0.5))
    # v: (3, 1), h: (1, 5), both centred at 0.5 -> union (3, 5)
    assert_field(rf["cat"], (3, 5), (1, 1), (0.5, 0.5))
    assert node(traced, "sum").inputs == ["a3", "b5"]


def test_merge_of_branches_with_different_strides_falls_back():
    inp = keras.Input((16, 16, 1))
    a = L.Conv2D(2, 1, strides=2, name="strided")(inp)  # 8 x 8, j = 2
    b = L.Conv2D(2, 9, padding="valid", name="wide")(inp)  # 8 x 8, j = 1
    s = L.Add(name="mix")([a, b])
    after = L.Conv2D(2, 3, padding="same", name="after")(s)
    model = keras.Model(inp, after)
    _, rf = fields_of(model)
    assert_field(rf["strided"], (1, 1), (2, 2), (0.5, 0.5))
    assert_field(rf["wide"], (9, 9), (1, 1), (4.5, 4.5))
    for name in ("mix", "after"):
        field = rf[name]
        assert not field.exact
        assert "different strides" in field.note and "Add" in field.note, field.note
        # grid cell: 16 / 8 = 2 input pixels per position, centred at 1
        assert field.size == (2.0, 2.0) and field.stride == (2.0, 2.0) and field.offset == (1.0, 1.0)
        assert field.box(3, 5) == (10.0, 6.0, 12.0, 8.0)


# --------------------------------------------------------------------------- 4. undefined fields


def test_upsampling_falls_back_to_grid_cell():
    model = keras.Sequential(
        [
            keras.Input((24, 24, 1)),
            L.Conv2D(2, 3, padding="same", name="c"),
            L.MaxPooling2D(4, name="p"),  # 6 x 6
            L.UpSampling2D(2, name="up"),  # 12 x 12
            L.Conv2D(2, 3, padding="same", name="after"),  # 12 x 12
            L.MaxPooling2D((2, 3), name="after2"),  # 6 x 4
        ]
    )
    _, rf = fields_of(model)
    # Before the upsampling the fields are exact: c r=3 o=0.5; p: r = 3 + 3 = 6, j = 4, o = 0.5 + 1.5 = 2.0
    assert_field(rf["c"], (3, 3), (1, 1), (0.5, 0.5))
    assert_field(rf["p"], (6, 6), (4, 4), (2.0, 2.0))
    for name, cell in (("up", (2.0, 2.0)), ("after", (2.0, 2.0)), ("after2", (4.0, 6.0))):
        field = rf[name]
        assert not field.exact, name
        assert "UpSampling2D" in field.note and "grid cell" in field.note, field.note
        assert field.size == cell and field.stride == cell
        assert field.offset == (cell[0] / 2, cell[1] / 2)
    assert rf["after2"].box(5, 3) == (18.0, 20.0, 24.0, 24.0)  # the last cell, exactly inside the image


def test_transposed_convolution_falls_back():
    model = keras.Sequential(
        [
            keras.Input((16, 20, 1)),
            L.Conv2D(2, 2, strides=2, name="down"),  # 8 x 10
            L.Conv2DTranspose(2, 3, strides=(1, 2), padding="same", name="tr"),  # 8 x 20
            L.ReLU(name="relu"),
        ]
    )
    _, rf = fields_of(model)
    assert_field(rf["down"], (2, 2), (2, 2), (1.0, 1.0))
    for name in ("tr", "relu"):
        field = rf[name]
        assert not field.exact
        assert "Conv2DTranspose" in field.note, field.note
        # 16 / 8 = 2 rows, 20 / 20 = 1 column per position
        assert field.size == (2.0, 1.0) and field.stride == (2.0, 1.0) and field.offset == (1.0, 0.5)


# --------------------------------------------------------------------------- 5. nested models


def _functional_base():
    inp = keras.Input((16, 16, 3))
    x = L.Conv2D(4, 3, padding="valid", name="bc1")(inp)  # 14 x 14
    x = L.MaxPooling2D(2, name="bp1")(x)  # 7 x 7
    return keras.Model(inp, x, name="base")


def _sequential_base():
    return keras.Sequential(
        [keras.Input((16, 16, 3)), L.Conv2D(4, 3, padding="valid", name="bc1"), L.MaxPooling2D(2, name="bp1")],
        name="base",
    )


@pytest.mark.parametrize("make_base", [_functional_base, _sequential_base], ids=["functional", "sequential"])
def test_nested_model_continues_from_outer_input(make_base):
    model = keras.Sequential(
        [
            keras.Input((18, 18, 3)),
            L.Conv2D(3, 3, padding="valid", name="pre"),  # 16 x 16
            make_base(),
            L.Conv2D(2, 3, padding="valid", name="post"),  # 5 x 5
            L.Flatten(name="flat"),
            L.Dense(2, name="out"),
        ]
    )
    traced, rf = fields_of(model)
    base = node(traced, "base")
    assert base.geometry.op == "model"
    assert not base.is_map
    assert "base" not in rf  # its output is base/bp1's, which has its own entry
    assert base.alias_of == "base/bp1"
    assert node(traced, "base/bc1").parent == "base" and node(traced, "base/bc1").depth == 1
    assert node(traced, "base/bc1").inputs == ["pre"]
    assert set(rf) == {"pre", "base/bc1", "base/bp1", "post"}
    # pre: r = 3, j = 1, o = 1.5
    assert_field(rf["pre"], (3, 3), (1, 1), (1.5, 1.5))
    # base/bc1 continues from pre, not from a fresh input: r = 3 + 2 = 5, o = 1.5 + 1 = 2.5
    assert_field(rf["base/bc1"], (5, 5), (1, 1), (2.5, 2.5))
    # base/bp1: r = 5 + 1 = 6, j = 2, o = 2.5 + 0.5 = 3.0
    assert_field(rf["base/bp1"], (6, 6), (2, 2), (3.0, 3.0))
    # post reads the nested model's output: r = 6 + 2*2 = 10, j = 2, o = 3.0 + 1*2 = 5.0
    assert_field(rf["post"], (10, 10), (2, 2), (5.0, 5.0))
    # The last position of post (4, 4) looks at [5 + 8 - 5, 5 + 8 + 5] = [8, 18]: the image's last 10 pixels.
    assert rf["post"].box(4, 4) == (8.0, 8.0, 18.0, 18.0)


def test_nested_model_fields_match_gradients():
    inner_in = keras.Input((16, 16, 1))
    x = L.Conv2D(2, 3, strides=2, padding="same", use_bias=False, name="bc1")(inner_in)
    x = L.AveragePooling2D(2, name="bp1")(x)
    base = keras.Model(inner_in, x, name="base")
    model = keras.Sequential(
        [keras.Input((18, 18, 1)), L.Conv2D(1, 3, use_bias=False, name="pre"), base, L.Conv2D(2, 2, use_bias=False, name="post")]
    )
    _check_by_gradients(model, holes=False)
