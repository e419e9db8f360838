"""Pure image functions: arrays in, arrays (or encoded bytes) out. No files, no TensorFlow, no pyplot.

    normalize_map(map)            the notebook's per-channel normalisation, safe on dead channels
    feature_grid(maps)            all channels of a layer tiled in rows, with its layout
    heat_sprite(maps)             a unit's top-K heatmaps stacked into one grey strip
    unit_overlay(rf, ...)         grid lines, argmax cell and receptive-field box for one image
    encode_png / encode_jpeg      deterministic bytes (no metadata, no timestamps)
"""

from __future__ import annotations

import hashlib
import io
import math
from dataclasses import dataclass

import numpy as np
from matplotlib import colormaps
from PIL import Image

from reportgen.report import ReceptiveField


def _lut(name: str) -> np.ndarray:
    return np.round(colormaps[name](np.arange(256))[:, :3] * 255).astype(np.uint8)


VIRIDIS = _lut("viridis")
DEAD_MARK = np.array([230, 40, 40], dtype=np.uint8)
GRID_BACKGROUND = np.array([255, 255, 255], dtype=np.uint8)


def normalize_map(channel: np.ndarray) -> tuple[np.ndarray, bool]:
    """The notebook's display normalisation: (x - mean) / std * 64 + 128, clipped to 0..255.

    A constant map (a dead channel) has no spread to divide by: it is drawn flat at 128 and
    reported as dead, instead of the notebook's NaN.
    """
    x = np.asarray(channel, dtype=np.float64)
    finite = np.isfinite(x)
    if not finite.all():
        x = np.where(finite, x, 0.0)
    if x.size == 0 or x.max() == x.min():
        return np.full(x.shape, 128, dtype=np.uint8), True
    x = (x - x.mean()) / x.std() * 64 + 128
    return np.clip(x, 0, 255).astype(np.uint8), False


@dataclass(frozen=True)
class GridLayout:
    """Where each channel's tile sits in a feature grid image, in pixels."""

    channels: int
    columns: int
    rows: int
    tile_height: int
    tile_width: int
    gap: int
    width: int
    height: int
    dead: tuple[int, ...]

    def tile_box(self, channel: int) -> tuple[int, int, int, int]:
        """(x0, y0, x1, y1) of a channel's tile."""
        r, c = divmod(channel, self.columns)
        x0 = self.gap + c * (self.tile_width + self.gap)
        y0 = self.gap + r * (self.tile_height + self.gap)
        return x0, y0, x0 + self.tile_width, y0 + self.tile_height


def tile_scale(height: int, width: int, min_side: int = 48) -> int:
    """Whole-number upscaling so that small maps (7 x 7) get readable tiles."""
    return max(1, math.ceil(min_side / max(height, width, 1)))


def feature_grid(maps: np.ndarray, columns: int = 16, min_side: int = 48, gap: int = 2) -> tuple[np.ndarray, GridLayout]:
    """Tile a layer's channels ([h, w, c]) into an RGB image: rows of `columns` tiles, viridis.

    Each channel is normalised on its own (normalize_map); dead channels are drawn flat and
    crossed out in red.
    """
    maps = np.asarray(maps)
    h, w, c = maps.shape
    scale = tile_scale(h, w, min_side)
    th, tw = h * scale, w * scale
    cols = max(1, min(columns, c))
    rows = math.ceil(c / cols)
    layout_w = gap + cols * (tw + gap)
    layout_h = gap + rows * (th + gap)
    canvas = np.empty((layout_h, layout_w, 3), dtype=np.uint8)
    canvas[:] = GRID_BACKGROUND
    dead = []
    for ch in range(c):
        levels, is_dead = normalize_map(maps[:, :, ch])
        tile = VIRIDIS[levels]
        if scale > 1:
            tile = tile.repeat(scale, axis=0).repeat(scale, axis=1)
        if is_dead:
            dead.append(ch)
            tile = tile.copy()
            _cross(tile)
        r, col = divmod(ch, cols)
        y0, x0 = gap + r * (th + gap), gap + col * (tw + gap)
        canvas[y0 : y0 + th, x0 : x0 + tw] = tile
    layout = GridLayout(c, cols, rows, th, tw, gap, layout_w, layout_h, tuple(dead))
    return canvas, layout


def _cross(tile: np.ndarray) -> None:
    """Mark a dead channel's tile: a red border and diagonals."""
    h, w = tile.shape[:2]
    t = max(1, min(h, w) // 24)
    tile[:t], tile[-t:], tile[:, :t], tile[:, -t:] = DEAD_MARK, DEAD_MARK, DEAD_MARK, DEAD_MARK
    n = max(h, w)
    for i in range(n):
        y, x = i * h // n, i * w // n
        tile[y, max(0, x - t + 1) : x + t] = DEAD_MARK
        tile[y, max(0, w - 1 - x - t + 1) : w - x + t - 1] = DEAD_MARK


def heat_sprite(maps: np.ndarray, floor: int = 80) -> np.ndarray:
    """A unit's heatmaps ([k, h, w] uint8, 255 = the unit's top value) stacked vertically: [k*h, w].

    Grey levels for a multiply blend over the image, as Network Dissection shows a unit's
    region: bright where the unit fires, dark (but not black: `floor`) elsewhere.
    """
    maps = np.asarray(maps, dtype=np.uint16)
    levels = floor + maps * (255 - floor) // 255
    return levels.reshape(-1, maps.shape[-1]).astype(np.uint8)


def to_uint8(pixels: np.ndarray) -> np.ndarray:
    """Pixels as decoded, for display: uint8 as is; float pixels (tf.image.resize output, about 0..255) rounded and clipped."""
    pixels = np.asarray(pixels)
    if pixels.dtype == np.uint8:
        return pixels
    return np.clip(np.round(pixels), 0, 255).astype(np.uint8)


def as_rgb(pixels: np.ndarray) -> np.ndarray:
    """uint8 [h, w, 1 or 3] model input as something Pillow can save."""
    return pixels[:, :, 0] if pixels.ndim == 3 and pixels.shape[2] == 1 else pixels


def encode_png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(as_rgb(np.asarray(image, dtype=np.uint8))).save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()


def encode_jpeg(image: np.ndarray, quality: int = 88) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(as_rgb(np.asarray(image, dtype=np.uint8))).save(buf, format="JPEG", quality=quality, optimize=False)
    return buf.getvalue()


def encode_thumbnail(pixels: np.ndarray) -> tuple[bytes, str]:
    """The model's view of a dataset image: exact PNG when small, JPEG when large. Returns (bytes, extension)."""
    if pixels.shape[0] * pixels.shape[1] <= 64 * 64:
        return encode_png(pixels), "png"
    return encode_jpeg(pixels), "jpg"


def content_name(data: bytes, ext: str, stem: str = "") -> str:
    """A deterministic file name from the bytes themselves (and a readable stem)."""
    digest = hashlib.sha1(data).hexdigest()[:16]
    return f"{stem}-{digest}.{ext}" if stem else f"{digest}.{ext}"


@dataclass(frozen=True)
class Overlay:
    """What is drawn over one gallery image, in input pixel coordinates."""

    grid_x: tuple[float, ...]  # vertical grid lines (inner ones)
    grid_y: tuple[float, ...]
    cell: tuple[float, float, float, float]  # x0, y0, x1, y1 of the argmax position's grid cell
    box: tuple[float, float, float, float]  # the image pixels its receptive field really reads
    box_clipped: bool  # the full field reaches past them (into padding, or pixels the stack drops)


def grid_lines(input_hw: tuple[int, int], layer_hw: tuple[int, int]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Inner grid lines every input_size / layer_size pixels, as the notebook drew them."""
    ch, cw = input_hw[0] / layer_hw[0], input_hw[1] / layer_hw[1]
    return tuple(i * cw for i in range(1, layer_hw[1])), tuple(i * ch for i in range(1, layer_hw[0]))


def unit_overlay(rf: ReceptiveField, input_hw: tuple[int, int], layer_hw: tuple[int, int], row: int, col: int) -> Overlay:
    ch, cw = input_hw[0] / layer_hw[0], input_hw[1] / layer_hw[1]
    gx, gy = grid_lines(input_hw, layer_hw)
    full = rf.box(row, col)
    visible = rf.visible_box(row, col, input_hw) or (0.0, 0.0, 0.0, 0.0)
    return Overlay(
        grid_x=gx,
        grid_y=gy,
        cell=(col * cw, row * ch, (col + 1) * cw, (row + 1) * ch),
        box=visible,
        box_clipped=tuple(visible) != tuple(full),
    )
