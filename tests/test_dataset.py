"""Dataset discovery and preprocessing: flow_from_directory's layout and numbers, and every awkward file."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

import badfiles
from conftest import load_like_keras
from reportgen.dataset import InputSpec, discover, iter_batches, load_pixels
from reportgen.errors import UserError

RGB16 = InputSpec(16, 16, 3)


def test_class_folders_in_sorted_order_with_nested_subfolders(tmp_path):
    root = tmp_path / "train"
    badfiles.make_rgb_png(root / "dogs" / "d1.png")
    badfiles.make_rgb_png(root / "cats" / "c2.png")
    badfiles.make_rgb_png(root / "cats" / "c1.png")
    badfiles.make_rgb_png(root / "cats" / "indoor" / "deep" / "c3.png")  # sub-folders belong to the class
    badfiles.make_rgb_png(root / "birds" / "b.jpeg")
    badfiles.make_rgb_png(root / "loose.png")  # not in a class folder: ignored, and said so
    badfiles.make_hidden_and_junk(root / "cats")
    (root / ".hidden_class").mkdir()
    badfiles.make_rgb_png(root / ".hidden_class" / "x.png")
    ds = discover(root)
    assert ds.classes == ["birds", "cats", "dogs"]
    assert ds.class_indices == {"birds": 0, "cats": 1, "dogs": 2}
    assert [(r.rel, r.label) for r in ds.records] == [
        ("birds/b.jpeg", 0),
        ("cats/c1.png", 1),
        ("cats/c2.png", 1),
        ("cats/indoor/deep/c3.png", 1),
        ("dogs/d1.png", 2),
    ]
    assert [r.index for r in ds.records] == list(range(5))
    ignored = {s.path: s.reason for s in ds.ignored}
    assert ignored["loose.png"] == "not inside a class folder"
    assert "cats/Thumbs.db" in ignored and "cats/notes.txt" in ignored and "cats/labels.csv" in ignored
    assert not any(".DS_Store" in p or "._hidden" in p for p in ignored)  # hidden files are not even listed


def test_same_classes_and_order_as_keras(tmp_path):
    import keras

    root = tmp_path / "train"
    badfiles.make_dataset(root, {"zebra": 2, "Apple": 2, "mango": 3})
    badfiles.make_rgb_png(root / "mango" / "sub" / "x.png")
    ours = discover(root)
    theirs = keras.utils.image_dataset_from_directory(root, image_size=(16, 16), shuffle=False, verbose=False)
    assert ours.classes == theirs.class_names
    assert [str(r.path) for r in ours.records] == theirs.file_paths


def test_flat_folder_and_empty_inputs(tmp_path):
    flat = tmp_path / "flat"
    badfiles.make_rgb_png(flat / "b.png")
    badfiles.make_rgb_jpeg(flat / "a.jpg")
    (flat / "readme.txt").write_text("hi")
    ds = discover(flat)
    assert ds.classes == [] and [r.rel for r in ds.records] == ["a.jpg", "b.png"]
    assert all(r.label is None for r in ds.records)

    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no images found"):
        discover(tmp_path / "empty")
    (tmp_path / "onlyempty" / "cats").mkdir(parents=True)
    with pytest.raises(UserError, match="no images found in its 1 class folder"):
        discover(tmp_path / "onlyempty")
    with pytest.raises(UserError, match="no such folder"):
        discover(tmp_path / "missing")
    (tmp_path / "file.png").write_bytes(b"x")
    with pytest.raises(UserError, match="is a file, not a folder"):
        discover(tmp_path / "file.png")


def test_empty_class_folder_keeps_its_index(tmp_path):
    root = tmp_path / "train"
    badfiles.make_rgb_png(root / "cats" / "c.png")
    (root / "dogs").mkdir()
    badfiles.make_rgb_png(root / "zebras" / "z.png")
    ds = discover(root)
    assert ds.class_indices == {"cats": 0, "dogs": 1, "zebras": 2}
    assert [r.label for r in ds.records] == [0, 2]


@pytest.mark.parametrize(
    "maker, color_mode",
    [
        (badfiles.make_rgb_jpeg, "rgb"),
        (badfiles.make_rgb_png, "rgb"),
        (badfiles.make_bmp, "rgb"),
        (badfiles.make_gray_png, "rgb"),
        (badfiles.make_rgba_png, "rgb"),
        (badfiles.make_palette_gif, "rgb"),
        (badfiles.make_cmyk_jpeg, "rgb"),
        (badfiles.make_rgb_png, "grayscale"),
        (badfiles.make_rgb_jpeg, "grayscale"),
    ],
)
def test_pixels_equal_keras_load_img_nearest(tmp_path, maker, color_mode):
    """The numbers the notebook saw: keras.utils.load_img(..., interpolation='nearest') / 255."""
    ext = {"make_rgb_jpeg": "jpg", "make_cmyk_jpeg": "jpg", "make_palette_gif": "gif", "make_bmp": "bmp"}.get(maker.__name__, "png")
    path = maker(tmp_path / f"img.{ext}")
    spec = InputSpec(16, 16, 3 if color_mode == "rgb" else 1)
    ours = load_pixels(path, spec).astype(np.float32) / 255
    theirs = load_like_keras([path], size=(16, 16), color_mode=color_mode)[0]
    np.testing.assert_array_equal(ours, theirs)


def test_sixteen_bit_png_is_scaled_to_eight_bits(tmp_path):
    path = badfiles.make_16bit_gray_png(tmp_path / "deep.png")
    raw = np.asarray(Image.open(path)).astype(np.float64)
    pixels = load_pixels(path, InputSpec(8, 64, 1))[:, :, 0]
    np.testing.assert_array_equal(pixels, np.round(raw * 255 / 65535).astype(np.uint8))
    assert pixels.max() == 255 and pixels.min() == 0


def test_exif_orientation_is_applied(tmp_path):
    path = badfiles.make_exif_rotated_jpeg(tmp_path / "rotated.jpg")
    exp = badfiles.EXIF_EXPECTED
    w, h = exp["transposed_size"]
    pixels = load_pixels(path, InputSpec(h, w, 3)).astype(int)  # the displayed size: no resize
    for (x, y), colour in exp["points"].items():
        assert np.all(np.abs(pixels[y, x] - np.array(colour)) <= exp["tolerance"]), (x, y)


@pytest.mark.parametrize(
    "maker, name, reason",
    [
        (badfiles.make_truncated_jpeg, "cut.jpg", "corrupt or truncated"),
        (badfiles.make_zero_byte, "empty.png", "empty file (0 bytes)"),
        (badfiles.make_text_as_jpeg, "text.jpg", "not an image Pillow can read"),
        (badfiles.make_huge_png, "huge.png", "2,500,000,000 pixels is more than the 89,478,485-pixel limit"),
    ],
)
def test_bad_files_are_refused_with_a_reason(tmp_path, maker, name, reason):
    import resource

    path = maker(tmp_path / name)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(Exception) as info:
        load_pixels(path, RGB16)
    assert type(info.value).__name__ == "BadImage"
    assert reason in str(info.value)
    grown_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown_kb < 200_000  # the 50,000 x 50,000 file (7.5 GB of pixels) was never decoded


def test_bad_files_are_skipped_and_listed_and_the_rest_is_read(tmp_path):
    root = tmp_path / "train"
    good = badfiles.make_dataset(root, {"cats": 3, "dogs": 2})
    badfiles.make_truncated_jpeg(root / "cats" / "cut.jpg")
    badfiles.make_zero_byte(root / "dogs" / "empty.png")
    badfiles.make_text_as_jpeg(root / "dogs" / "text.jpg")
    badfiles.make_huge_png(root / "cats" / "huge.png")
    for i, stem in enumerate(badfiles.NASTY_NAMES):
        badfiles.make_rgb_png(root / "cats" / f"{stem}.png", seed=100 + i)
    ds = discover(root)
    skipped = []
    batches = list(iter_batches(ds.records, RGB16, 4, skipped))
    read = [i for b in batches for i in b.indices.tolist()]
    assert len(read) == 5 + len(badfiles.NASTY_NAMES)
    assert read == sorted(read)  # dataset order is kept
    assert {s.path for s in skipped} == {"cats/cut.jpg", "dogs/empty.png", "dogs/text.jpg", "cats/huge.png"}
    assert all(b.pixels.dtype == np.uint8 and b.pixels.shape[1:] == (16, 16, 3) for b in batches)
    assert sum(len(v) for v in good.values()) == 5
