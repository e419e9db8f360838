"""Pure image functions: normalisation, feature grids, overlays, heat sprites and deterministic encoding."""

from __future__ import annotations

import io
import struct
import warnings

import numpy as np
import pytest
from PIL import Image

from reportgen.images import (
    DEAD_MARK,
    GRID_BACKGROUND,
    GRID_PALETTE,
    VIRIDIS,
    content_name,
    encode_png,
    encode_thumbnail,
    feature_grid,
    heat_atlas,
    heat_levels,
    normalize_map,
    tile_scale,
    unit_overlay,
)
from reportgen.report import ReceptiveField


def _reference_levels(x: np.ndarray) -> np.ndarray:
    """The notebook's formula, written out independently: (x - mean) / std * 64 + 128, clipped, truncated."""
    x = x.astype(np.float64)
    z = (x - x.mean()) / np.sqrt(((x - x.mean()) ** 2).mean())
    return np.clip(z * 64 + 128, 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------- normalize_map


def test_normalize_map_known_2x2():
    # mean = 1.5; std = sqrt((2.25 + 0.25 + 0.25 + 2.25) / 4) = sqrt(1.25) = 1.1180340
    # z = (-1.5, -0.5, 0.5, 1.5) / 1.1180340 = (-1.3416408, -0.4472136, 0.4472136, 1.3416408)
    # z*64 + 128 = (42.135, 99.378, 156.622, 213.865) -> truncated (not rounded): 42, 99, 156, 213
    levels, dead = normalize_map(np.array([[0.0, 1.0], [2.0, 3.0]], dtype=np.float32))
    assert dead is False
    assert levels.dtype == np.uint8
    assert levels.tolist() == [[42, 99], [156, 213]]


def test_normalize_map_clips():
    # eight 0s and one 9: mean = 1; std = sqrt((8*1 + 64) / 9) = sqrt(8) = 2.8284271
    # 0 -> -1/2.828 * 64 + 128 = 105.37 -> 105;  9 -> 8/2.828 * 64 + 128 = 309.0 -> clipped to 255
    x = np.zeros((3, 3), np.float32)
    x[1, 2] = 9
    levels, dead = normalize_map(x)
    assert not dead
    expected = np.full((3, 3), 105, np.uint8)
    expected[1, 2] = 255
    np.testing.assert_array_equal(levels, expected)
    # and below: one -9 among zeros -> 0 -> 150.6 -> 150, -9 -> -53.0 -> 0
    levels, _ = normalize_map(-x)
    expected = np.full((3, 3), 150, np.uint8)
    expected[1, 2] = 0
    np.testing.assert_array_equal(levels, expected)


def test_normalize_map_matches_formula_on_random_map():
    x = np.random.default_rng(3).normal(2.0, 5.0, size=(9, 7)).astype(np.float32)
    levels, dead = normalize_map(x)
    assert not dead
    np.testing.assert_array_equal(levels, _reference_levels(x))


@pytest.mark.parametrize("value", [0.0, 3.5, -7.0, 1e30])
def test_constant_map_is_dead_at_128_without_warnings(value):
    with warnings.catch_warnings(), np.errstate(all="raise"):
        warnings.simplefilter("error")
        levels, dead = normalize_map(np.full((4, 6), value, dtype=np.float32))
    assert dead is True
    assert levels.dtype == np.uint8 and levels.shape == (4, 6)
    assert (levels == 128).all()


def test_non_finite_values_give_no_nan_and_no_warning():
    x = np.array([[np.nan, 1.0, 2.0], [np.inf, -np.inf, 3.0]], dtype=np.float32)
    with warnings.catch_warnings(), np.errstate(all="raise"):
        warnings.simplefilter("error")
        levels, dead = normalize_map(x)
        all_bad, all_bad_dead = normalize_map(np.full((2, 2), np.nan, np.float32))
    assert levels.dtype == np.uint8 and levels.shape == (2, 3)
    assert not dead
    # the finite values keep their order
    assert levels[0, 1] < levels[0, 2] < levels[1, 2]
    assert all_bad_dead is True and (all_bad == 128).all()


# --------------------------------------------------------------------------- feature_grid


def test_viridis_is_matplotlibs():
    from matplotlib import colormaps

    np.testing.assert_array_equal(VIRIDIS, np.round(colormaps["viridis"](np.arange(256))[:, :3] * 255).astype(np.uint8))


def _drawn(grid: np.ndarray) -> np.ndarray:
    """The colours a browser shows for a feature grid: its PNG (indexed, as the site writes it) decoded to RGB."""
    assert grid.ndim == 2 and grid.dtype == np.uint8
    return np.asarray(Image.open(io.BytesIO(encode_png(grid, compress_level=1, palette=GRID_PALETTE))).convert("RGB"))


def _tile(canvas, layout, ch):
    x0, y0, x1, y1 = layout.tile_box(ch)
    return canvas[y0:y1, x0:x1]


def _expected_tile(channel: np.ndarray, scale: int) -> np.ndarray:
    levels = _reference_levels(channel)
    ys = np.arange(channel.shape[0] * scale) // scale
    xs = np.arange(channel.shape[1] * scale) // scale
    return VIRIDIS[levels[ys][:, xs]]


def test_feature_grid_layout_and_tiles():
    rng = np.random.default_rng(0)
    maps = rng.normal(size=(7, 5, 20)).astype(np.float32)
    maps[:, :, 3] = 0.25  # dead
    grid, layout = feature_grid(maps)  # columns=16, min_side=48, gap=2
    canvas = _drawn(grid)
    # scale = ceil(48 / max(7, 5)) = 7 -> tiles 49 x 35; 20 channels in rows of 16 -> 2 rows
    assert tile_scale(7, 5) == 7
    assert (layout.channels, layout.columns, layout.rows) == (20, 16, 2)
    assert (layout.tile_height, layout.tile_width, layout.gap) == (49, 35, 2)
    # width = 2 + 16 * (35 + 2) = 594; height = 2 + 2 * (49 + 2) = 104
    assert (layout.width, layout.height) == (594, 104)
    assert grid.shape == (104, 594) and canvas.shape == (104, 594, 3)
    assert layout.dead == (3,)
    # channel 0 at the top left, channel 15 ends the first row, channel 17 is row 1, column 1
    assert layout.tile_box(0) == (2, 2, 37, 51)
    assert layout.tile_box(15) == (2 + 15 * 37, 2, 2 + 15 * 37 + 35, 51)
    assert layout.tile_box(17) == (39, 53, 74, 102)

    for ch in range(20):
        if ch == 3:
            continue
        np.testing.assert_array_equal(_tile(canvas, layout, ch), _expected_tile(maps[:, :, ch], 7), err_msg=f"channel {ch}")

    # gaps and the unused slots of the last row (channels 20..31 would go there) are background
    assert (canvas[:2] == GRID_BACKGROUND).all() and (canvas[:, :2] == GRID_BACKGROUND).all()
    assert (canvas[51:53] == GRID_BACKGROUND).all()  # between the two rows
    assert (canvas[:, 37:39] == GRID_BACKGROUND).all()  # between columns 0 and 1
    x_end_of_row1 = layout.tile_box(19)[2]
    assert (canvas[53:, x_end_of_row1:] == GRID_BACKGROUND).all()


def test_feature_grid_tiles_are_normalize_map_of_each_channel():
    """The grid normalises all channels at once: each tile is still normalize_map of its channel
    (non-finite values, constant channels, scales from a millionth to a million)."""
    rng = np.random.default_rng(7)
    maps = (rng.normal(size=(9, 6, 40)) * 10.0 ** rng.uniform(-6, 6, 40)).astype(np.float32)
    maps[2, 3, 5] = np.nan
    maps[:, :, 6] = np.inf
    maps[0, :, 7] = -np.inf
    maps[:, :, 8] = 3.0
    grid, layout = feature_grid(maps, columns=7)
    canvas = _drawn(grid)
    scale = tile_scale(9, 6)
    for ch in range(40):
        levels, dead = normalize_map(maps[:, :, ch])
        assert (ch in layout.dead) == dead, ch
        if not dead:
            np.testing.assert_array_equal(_tile(canvas, layout, ch), VIRIDIS[levels].repeat(scale, axis=0).repeat(scale, axis=1), err_msg=str(ch))
    assert layout.dead == (6, 8)


def test_feature_grid_draws_every_level_in_its_exact_viridis_colour():
    """The grid is an indexed PNG (viridis has 254 distinct byte colours, plus the dead mark and the
    background): every one of the 256 levels still shows exactly VIRIDIS[level]."""
    maps = np.random.default_rng(3).normal(size=(256, 256, 2)).astype(np.float32)
    maps[:, :, 1] = 5.0  # dead: the mark and the flat level in the same picture
    grid, layout = feature_grid(maps)
    levels, _ = normalize_map(maps[:, :, 0])
    assert len(np.unique(levels)) == 256
    canvas = _drawn(grid)
    np.testing.assert_array_equal(_tile(canvas, layout, 0), VIRIDIS[levels])
    assert (canvas[:2] == GRID_BACKGROUND).all()
    assert (_tile(canvas, layout, 1) == DEAD_MARK).all(axis=-1).any()
    assert len(GRID_PALETTE) <= 256


def test_feature_grid_dead_channel_is_crossed_in_red():
    maps = np.random.default_rng(1).normal(size=(7, 5, 4)).astype(np.float32)
    maps[:, :, 2] = -1.0
    grid, layout = feature_grid(maps)
    canvas = _drawn(grid)
    assert layout.dead == (2,)
    tile = _tile(canvas, layout, 2)
    red = (tile == DEAD_MARK).all(axis=-1)
    flat = (tile == VIRIDIS[128]).all(axis=-1)
    assert (red | flat).all()  # nothing else is drawn on a dead tile
    # a red border all round
    assert red[0].all() and red[-1].all() and red[:, 0].all() and red[:, -1].all()
    # two diagonals, corner to corner: on every row y, red within a pixel of x = y * (w-1)/(h-1) and of its mirror
    h, w = tile.shape[:2]
    for y in range(h):
        x = y * (w - 1) / (h - 1)
        for xd in (x, w - 1 - x):
            near = [int(v) for v in np.clip([np.floor(xd) - 1, np.ceil(xd) + 1], 0, w - 1)]
            assert red[y, near[0] : near[1] + 1].any(), (y, xd)
    assert red[tile.shape[0] // 2, tile.shape[1] // 2]
    # but it is a cross, not a filled tile: most of it is the flat mid colour
    assert flat.mean() > 0.6
    assert flat[10, 20]  # off both diagonals (they pass x = 7 and x = 27 on row 10 of a 49 x 35 tile)
    # live tiles carry no red
    for ch in (0, 1, 3):
        assert not (_tile(canvas, layout, ch) == DEAD_MARK).all(axis=-1).any()


def test_feature_grid_small_and_large_maps():
    # a 3 x 3 map: scale ceil(48 / 3) = 16 -> 48 x 48 tiles; 3 channels -> a single row of 3
    maps = np.random.default_rng(2).normal(size=(3, 3, 3)).astype(np.float32)
    grid, layout = feature_grid(maps)
    canvas = _drawn(grid)
    assert (layout.columns, layout.rows, layout.tile_height, layout.tile_width) == (3, 1, 48, 48)
    assert canvas.shape == (2 + 50, 2 + 3 * 50, 3)
    for ch in range(3):
        np.testing.assert_array_equal(_tile(canvas, layout, ch), _expected_tile(maps[:, :, ch], 16))
    # a non-square map keeps its height and width: 6 x 4 -> scale 8 -> 48 x 32
    grid, layout = feature_grid(np.random.default_rng(4).normal(size=(6, 4, 5)).astype(np.float32), columns=2)
    canvas = _drawn(grid)
    assert (layout.columns, layout.rows, layout.tile_height, layout.tile_width) == (2, 3, 48, 32)
    assert layout.tile_box(4) == (2, 2 + 2 * 50, 34, 2 + 2 * 50 + 48)
    # a map larger than min_side is not scaled
    big = np.random.default_rng(5).normal(size=(64, 50, 2)).astype(np.float32)
    grid, layout = feature_grid(big)
    canvas = _drawn(grid)
    assert (layout.tile_height, layout.tile_width) == (64, 50)
    np.testing.assert_array_equal(_tile(canvas, layout, 1), _expected_tile(big[:, :, 1], 1))


# --------------------------------------------------------------------------- grid lines and overlays


def test_unit_overlay_known_case():
    # input 16 x 20, layer 4 x 5 (cells 4 x 4); field 7 high, 9 wide, stride 4, offset (1.5, 2.5)
    rf = ReceptiveField(size=(7.0, 9.0), stride=(4.0, 4.0), offset=(1.5, 2.5), exact=True)

    # (0, 0): centre (y 1.5, x 2.5) -> box x [2.5 - 4.5, 2.5 + 4.5] = [-2, 7], y [1.5 - 3.5, 1.5 + 3.5] = [-2, 5]
    ov = unit_overlay(rf, (16, 20), (4, 5), 0, 0)
    assert ov.cell == (0.0, 0.0, 4.0, 4.0)
    assert ov.box == (0.0, 0.0, 7.0, 5.0)
    assert ov.box_clipped is True

    # (2, 3): centre (9.5, 14.5) -> x [10, 19], y [6, 13]: inside the image
    ov = unit_overlay(rf, (16, 20), (4, 5), 2, 3)
    assert ov.cell == (12.0, 8.0, 16.0, 12.0)
    assert ov.box == (10.0, 6.0, 19.0, 13.0)
    assert ov.box_clipped is False

    # (3, 4), the last: centre (13.5, 18.5) -> x [14, 23] clipped to 20, y [10, 17] clipped to 16
    ov = unit_overlay(rf, (16, 20), (4, 5), 3, 4)
    assert ov.cell == (16.0, 12.0, 20.0, 16.0)
    assert ov.box == (14.0, 10.0, 20.0, 16.0)
    assert ov.box_clipped is True


def test_unit_overlay_box_touching_the_edge_is_not_clipped():
    # a 2 x 2 field with stride 2 tiles an 8 x 6 image exactly: no box leaves it
    rf = ReceptiveField(size=(2.0, 2.0), stride=(2.0, 2.0), offset=(1.0, 1.0), exact=True)
    for row in range(4):
        for col in range(3):
            ov = unit_overlay(rf, (8, 6), (4, 3), row, col)
            assert ov.box == ov.cell == (2.0 * col, 2.0 * row, 2.0 * col + 2, 2.0 * row + 2)
            assert ov.box_clipped is False


# --------------------------------------------------------------------------- heat sprites


def test_heat_atlas_shape_and_levels():
    """A row per unit, a column per rank; grey levels floor + v * (255 - floor) // 255."""
    tiles = np.zeros((2, 3, 2, 4), dtype=np.uint8)
    tiles[1, 2] = 255
    tiles[0, 1, 1, 3] = 100
    atlas = heat_atlas(tiles)  # floor 80
    assert atlas.shape == (2 * 2, 3 * 4) and atlas.dtype == np.uint8
    assert (atlas[2:4, 8:12] == 255).all()  # unit 1, rank 2
    assert atlas[1, 4 + 3] == 80 + 100 * 175 // 255  # unit 0, rank 1, row 1, col 3
    assert atlas[0, 0] == 80


def test_heat_levels_floor():
    maps = np.array([[0, 51, 255]], dtype=np.uint8)
    assert heat_levels(maps, floor=0).tolist() == [[0, 51, 255]]
    assert heat_levels(maps, floor=255).tolist() == [[255, 255, 255]]
    assert heat_levels(maps, floor=100).tolist() == [[100, 131, 255]]


# --------------------------------------------------------------------------- encoding


def _png_chunks(data: bytes) -> list[str]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, kinds = 8, []
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kinds.append(data[pos + 4 : pos + 8].decode("ascii"))
        pos += 12 + length
    return kinds


@pytest.mark.parametrize("shape", [(13, 17, 3), (13, 17, 1), (13, 17)])
def test_encode_png_round_trips_exactly(shape):
    image = np.random.default_rng(7).integers(0, 256, size=shape, dtype=np.uint8)
    data = encode_png(image)
    assert encode_png(image.copy()) == data  # byte-identical on repeat
    decoded = np.asarray(Image.open(io.BytesIO(data)))
    assert decoded.dtype == np.uint8
    np.testing.assert_array_equal(decoded, image.reshape(13, 17, 3) if len(shape) == 3 and shape[2] == 3 else image.reshape(13, 17))
    # no metadata chunks (no time stamp, no text)
    assert set(_png_chunks(data)) <= {"IHDR", "IDAT", "IEND"}


def test_encode_thumbnail_png_when_small_jpeg_when_large():
    rng = np.random.default_rng(8)
    small = rng.integers(0, 256, size=(64, 64, 3), dtype=np.uint8)  # 4096 pixels: the limit, still PNG
    data, ext = encode_thumbnail(small)
    assert ext == "png" and data[:4] == b"\x89PNG"
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(data))), small)

    gray = rng.integers(0, 256, size=(20, 30, 1), dtype=np.uint8)
    data, ext = encode_thumbnail(gray)
    assert ext == "png"
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(data))), gray[:, :, 0])

    large = rng.integers(0, 256, size=(64, 65, 3), dtype=np.uint8)  # 4160 pixels
    data, ext = encode_thumbnail(large)
    assert ext == "jpg" and data[:2] == b"\xff\xd8"
    decoded = Image.open(io.BytesIO(data))
    assert decoded.format == "JPEG" and decoded.size == (65, 64) and decoded.mode == "RGB"
    assert encode_thumbnail(large.copy()) == (data, "jpg")  # deterministic too


def test_content_name():
    # sha1(b"abc") = a9993e364706816aba3e25717850c26c9cd0d89d; the name keeps its first 16 hex digits
    assert content_name(b"abc", "png") == "a9993e364706816a.png"
    assert content_name(b"abc", "jpg", stem="img") == "img-a9993e364706816a.jpg"
    assert content_name(b"abc", "png") == content_name(bytes(b"abc"), "png")
    assert content_name(b"abd", "png") != content_name(b"abc", "png")
