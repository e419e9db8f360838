"""Pure image functions: arrays in, arrays (or encoded bytes) out. No files, no TensorFlow, no pyplot.

    normalize_map(map)            the per-channel display normalisation, safe on dead channels
    feature_grid(maps)            all channels of a layer tiled in rows (an indexed image), with its layout
    heat_levels(maps)             heatmaps as grey levels for a multiply blend over the image
    make_thumbnail(pixels)        an image as decoded, small, encoded once
    thumbnail_sheet(thumbs)       many thumbnails in one picture (one file for many galleries)
    unit_overlay(rf, ...)         argmax cell and receptive-field box for one image
    encode_png / encode_jpeg      deterministic bytes (no metadata, no timestamps)
"""

from __future__ import annotations

import hashlib
import io
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from reportgen.report import ReceptiveField, Thumbnail


# matplotlib's viridis at 256 levels rounded to bytes (np.round(colormaps["viridis"](np.arange(256))[:, :3] * 255)),
# stored so that reportgen does not import matplotlib (0.1 s of every build); a test checks it against matplotlib
VIRIDIS = np.frombuffer(bytes.fromhex(
    "44015444025645045745055946075a46085c460a5d460b5e470d60470e61471063471164471365481467481668481769"
    "48186a481a6c481b6d481c6e481d6f481f70482071482173482374482475482576482677482878482979472a7a472c7a"
    "472d7b472e7c472f7d46307e46327e46337f463480453581453781453882443983443a83443b84433d84433e85423f85"
    "4240864241864142874144874045884046883f47883f48893e49893e4a893e4c8a3d4d8a3d4e8a3c4f8a3c508b3b518b"
    "3b528b3a538b3a548c39558c39568c38588c38598c375a8c375b8d365c8d365d8d355e8d355f8d34608d34618d33628d"
    "33638d32648e32658e31668e31678e31688e30698e306a8e2f6b8e2f6c8e2e6d8e2e6e8e2e6f8e2d708e2d718e2c718e"
    "2c728e2c738e2b748e2b758e2a768e2a778e2a788e29798e297a8e297b8e287c8e287d8e277e8e277f8e27808e26818e"
    "26828e26828e25838e25848e25858e24868e24878e23888e23898e238a8d228b8d228c8d228d8d218e8d218f8d21908d"
    "21918c20928c20928c20938c1f948c1f958b1f968b1f978b1f988b1f998a1f9a8a1e9b8a1e9c891e9d891f9e891f9f88"
    "1fa0881fa1881fa1871fa28720a38620a48621a58521a68522a78522a88423a98324aa8325ab8225ac8226ad8127ad81"
    "28ae8029af7f2ab07f2cb17e2db27d2eb37c2fb47c31b57b32b67a34b67935b77937b87838b9773aba763bbb753dbc74"
    "3fbc7340bd7242be7144bf7046c06f48c16e4ac16d4cc26c4ec36b50c46a52c56954c56856c66758c7655ac8645cc863"
    "5ec96260ca6063cb5f65cb5e67cc5c69cd5b6ccd5a6ece5870cf5773d05675d05477d1537ad1517cd2507fd34e81d34d"
    "84d44b86d54989d5488bd6468ed64590d74393d74195d84098d83e9bd93c9dd93ba0da39a2da37a5db36a8db34aadc32"
    "addc30b0dd2fb2dd2db5de2bb8de29bade28bddf26c0df25c2df23c5e021c8e020cae11fcde11dd0e11cd2e21bd5e21a"
    "d8e219dae319dde318dfe318e2e418e5e419e7e419eae51aece51befe51cf1e51df4e61ef6e620f8e621fbe723fde725"
), dtype=np.uint8).reshape(256, 3)
VIRIDIS.flags.writeable = False
DEAD_MARK = np.array([230, 40, 40], dtype=np.uint8)
GRID_BACKGROUND = np.array([255, 255, 255], dtype=np.uint8)


def _grid_palette() -> tuple[np.ndarray, np.ndarray, int, int]:
    """Feature grids are indexed images: one byte a pixel instead of three (a third of the pixels
    to draw and compress). Their colours fit in one PNG palette exactly: viridis rounded to bytes
    has 254 distinct colours (two pairs of neighbouring levels round alike), plus the dead mark and
    the background. Returns (palette [n, 3], palette index of each level [256], dead mark, background)."""
    colours, level_index = np.unique(VIRIDIS, axis=0, return_inverse=True)
    palette = np.concatenate([colours, DEAD_MARK[None], GRID_BACKGROUND[None]]).astype(np.uint8)
    if len(palette) > 256:
        raise AssertionError(f"the feature grids' {len(palette)} colours do not fit in a PNG palette")
    return palette, level_index.reshape(-1).astype(np.uint8), len(colours), len(colours) + 1


GRID_PALETTE, _GRID_LEVEL, _GRID_DEAD, _GRID_BACKGROUND = _grid_palette()


def normalize_map(channel: np.ndarray) -> tuple[np.ndarray, bool]:
    """The notebook's display normalisation: (x - mean) / std * 64 + 128, clipped to 0..255.

    A constant map (a dead channel) has no spread to divide by: it is drawn flat at 128 and
    reported as dead, instead of the notebook's NaN. Non-finite values count as 0.
    """
    levels, dead = _channel_levels(np.asarray(channel)[:, :, None])
    return levels[0], bool(dead[0])


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
    """Tile a layer's channels ([h, w, c]) into an image: rows of `columns` tiles, viridis. The image
    is indexed (uint8 [height, width]; its colours are GRID_PALETTE[image]: encode_png(image, palette=GRID_PALETTE)).

    Each channel is normalised on its own (normalize_map's levels, computed for all channels at
    once: a big layer's grid has hundreds of tiles); dead channels are drawn flat and crossed out in red.
    """
    maps = np.asarray(maps)
    h, w, c = maps.shape
    scale = tile_scale(h, w, min_side)
    th, tw = h * scale, w * scale
    cols = max(1, min(columns, c))
    rows = math.ceil(c / cols)
    layout_w = gap + cols * (tw + gap)
    layout_h = gap + rows * (th + gap)
    levels, dead = _channel_levels(maps)  # [c, h, w], [c]
    tiles = _GRID_LEVEL[levels]  # [c, h, w] palette indices
    if scale > 1:
        tiles = tiles.repeat(scale, axis=1).repeat(scale, axis=2)
    for ch in np.nonzero(dead)[0]:
        _cross(tiles[ch], _GRID_DEAD)
    # every tile with its gap below and to the right, in rows of `cols` (the last row padded with background)
    cells = np.full((rows * cols, th + gap, tw + gap), _GRID_BACKGROUND, dtype=np.uint8)
    cells[:c, :th, :tw] = tiles
    canvas = np.full((layout_h, layout_w), _GRID_BACKGROUND, dtype=np.uint8)
    canvas[gap:, gap:] = cells.reshape(rows, cols, th + gap, tw + gap).transpose(0, 2, 1, 3).reshape(layout_h - gap, layout_w - gap)
    layout = GridLayout(c, cols, rows, th, tw, gap, layout_w, layout_h, tuple(int(ch) for ch in np.nonzero(dead)[0]))
    return canvas, layout


def _channel_levels(maps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """normalize_map of every channel of [h, w, c] at once: (levels uint8 [c, h, w], dead bool [c])."""
    h, w, c = maps.shape
    x = np.ascontiguousarray(np.moveaxis(np.asarray(maps, dtype=np.float64), 2, 0)).reshape(c, h * w)
    finite = np.isfinite(x)
    if not finite.all():
        x = np.where(finite, x, 0.0)
    if x.shape[1] == 0:
        return np.full((c, h, w), 128, dtype=np.uint8), np.ones(c, bool)
    dead = x.max(axis=1) == x.min(axis=1)
    mean = x.mean(axis=1, keepdims=True)
    std = x.std(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        levels = np.clip((x - mean) / std * 64 + 128, 0, 255)
    levels[dead] = 128
    return levels.astype(np.uint8).reshape(c, h, w), dead


def _cross(tile: np.ndarray, mark) -> None:
    """Mark a dead channel's tile with `mark`: a border and diagonals."""
    h, w = tile.shape[:2]
    t = max(1, min(h, w) // 24)
    tile[:t], tile[-t:], tile[:, :t], tile[:, -t:] = mark, mark, mark, mark
    n = max(h, w)
    for i in range(n):
        y, x = i * h // n, i * w // n
        tile[y, max(0, x - t + 1) : x + t] = mark
        tile[y, max(0, w - 1 - x - t + 1) : w - x + t - 1] = mark


def heat_levels(maps: np.ndarray, floor: int = 80) -> np.ndarray:
    """Heatmaps (uint8, 255 = the unit's top value) as grey levels, same shape.

    For a multiply blend over the image, as Network Dissection shows a unit's region: bright where
    the unit fires, dark (but not black: `floor`) elsewhere.
    """
    maps = np.asarray(maps, dtype=np.uint16)
    return (floor + maps * (255 - floor) // 255).astype(np.uint8)


def heat_atlas(tiles: np.ndarray, floor: int = 80) -> np.ndarray:
    """Units' heatmaps [n, k, h, w] as one grey picture [n*h, k*w]: a row per unit, a column per rank."""
    n, k, h, w = tiles.shape
    return heat_levels(tiles, floor).transpose(0, 2, 1, 3).reshape(n * h, k * w)


HEAT_BUDGET = 48_000_000  # bytes of heatmaps (units x K x h x w) the site may hold; sets their resolution
HEAT_SIDES = (32, 24, 16, 12, 10, 8, 7, 6, 5, 4)


def heat_scale(spatial: tuple[int, int], side: int) -> int:
    """The whole factor a layer's map is averaged down by, so that its heatmap has at most `side` a side."""
    return max(1, -(-max(spatial) // side))


def heat_shape(spatial: tuple[int, int], side: int) -> tuple[int, int]:
    """A layer's heatmap size: ceil(size / scale) per axis."""
    scale = heat_scale(spatial, side)
    return -(-spatial[0] // scale), -(-spatial[1] // scale)


def heat_side(layers: list, k: int, budget: int = HEAT_BUDGET) -> int:
    """The largest heatmap side (from HEAT_SIDES) whose heatmaps for every unit fit the budget."""
    for side in HEAT_SIDES:
        total = sum(node.channels * k * math.prod(heat_shape(node.spatial, side)) for node in layers)
        if total <= budget:
            return side
    return HEAT_SIDES[-1]


def to_uint8(pixels: np.ndarray) -> np.ndarray:
    """Pixels as decoded, for display: uint8 as is; float pixels (tf.image.resize output, about 0..255) rounded and clipped."""
    pixels = np.asarray(pixels)
    if pixels.dtype == np.uint8:
        return pixels
    return np.clip(np.round(pixels), 0, 255).astype(np.uint8)


def as_rgb(pixels: np.ndarray) -> np.ndarray:
    """uint8 [h, w, 1 or 3] model input as something Pillow can save."""
    return pixels[:, :, 0] if pixels.ndim == 3 and pixels.shape[2] == 1 else pixels


def encode_png(image: np.ndarray, compress_level: int = 6, palette: np.ndarray | None = None) -> bytes:
    """compress_level 1 for pictures rewritten often (feature grids: every training-callback snapshot):
    several times faster to encode, a few percent larger. palette: [n <= 256, 3] colours of an indexed
    image (uint8 [h, w] of indices)."""
    buf = io.BytesIO()
    if palette is None:
        picture = Image.fromarray(as_rgb(np.asarray(image, dtype=np.uint8)))
    else:
        picture = Image.fromarray(np.asarray(image, dtype=np.uint8))  # "L": putpalette makes it "P"
        picture.putpalette(np.asarray(palette, dtype=np.uint8).tobytes())
    picture.save(buf, format="PNG", optimize=False, compress_level=compress_level)
    return buf.getvalue()


def encode_jpeg(image: np.ndarray, quality: int = 88) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(as_rgb(np.asarray(image, dtype=np.uint8))).save(buf, format="JPEG", quality=quality, optimize=False)
    return buf.getvalue()


THUMB_SIDE = 160  # thumbnails of larger inputs are scaled down to this (overlays are in input pixels)
EXACT_PIXELS = 64 * 64  # up to this size, thumbnails are exact PNGs at the input size


def encode_thumbnail(pixels: np.ndarray) -> tuple[bytes, str]:
    """An image as decoded at the model's input size: exact PNG when small, JPEG when large. Returns (bytes, extension)."""
    pixels = to_uint8(pixels)
    if pixels.shape[0] * pixels.shape[1] <= EXACT_PIXELS:
        return encode_png(pixels), "png"
    return encode_jpeg(pixels), "jpg"


def thumbnail_size(height: int, width: int, side: int = THUMB_SIDE) -> tuple[int, int]:
    """(height, width) of the thumbnails of a model input size."""
    if height * width <= EXACT_PIXELS or max(height, width) <= side:
        return height, width
    scale = side / max(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def make_thumbnail(pixels: np.ndarray) -> Thumbnail:
    """The image as decoded (0..255, never the preprocessed tensor): an exact PNG when the input is
    small, otherwise a JPEG at most THUMB_SIDE a side."""
    pixels = to_uint8(pixels)
    h, w = pixels.shape[:2]
    if h * w <= EXACT_PIXELS:
        return Thumbnail(encode_png(pixels), "png", w, h)
    th, tw = thumbnail_size(h, w)
    if (th, tw) != (h, w):
        small = Image.fromarray(as_rgb(pixels)).resize((tw, th), Image.Resampling.BILINEAR)
        pixels = np.asarray(small).reshape(th, tw, -1)
    return Thumbnail(encode_jpeg(pixels), "jpg", tw, th)


def decode(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as img:
        arr = np.asarray(img.convert("RGB") if img.mode not in ("L", "RGB") else img)
    return arr[:, :, None] if arr.ndim == 2 else arr


def thumbnail_sheet(thumbs: list, columns: int) -> np.ndarray:
    """Thumbnails (all the same size) in rows of `columns`, as one picture."""
    first = decode(thumbs[0].data)
    h, w, c = first.shape
    rows = -(-len(thumbs) // columns)
    sheet = np.zeros((rows * h, columns * w, c), dtype=np.uint8)
    for i, thumb in enumerate(thumbs):
        r, col = divmod(i, columns)
        tile = first if i == 0 else decode(thumb.data)
        sheet[r * h : (r + 1) * h, col * w : (col + 1) * w] = tile.reshape(h, w, -1)[:, :, :c]
    return sheet


def content_name(data: bytes, ext: str, stem: str = "") -> str:
    """A deterministic file name from the bytes themselves (and a readable stem)."""
    digest = hashlib.sha1(data).hexdigest()[:16]
    return f"{stem}-{digest}.{ext}" if stem else f"{digest}.{ext}"


@dataclass(frozen=True)
class Overlay:
    """What is drawn over one gallery image, in input pixel coordinates (the grid itself is CSS)."""

    cell: tuple[float, float, float, float]  # x0, y0, x1, y1 of the argmax position's grid cell
    box: tuple[float, float, float, float]  # the image pixels its receptive field really reads
    box_clipped: bool  # the full field reaches past them (into padding, or pixels the stack drops)


def unit_overlay(rf: ReceptiveField, input_hw: tuple[int, int], layer_hw: tuple[int, int], row: int, col: int) -> Overlay:
    ch, cw = input_hw[0] / layer_hw[0], input_hw[1] / layer_hw[1]
    full = rf.box(row, col)
    visible = rf.visible_box(row, col, input_hw) or (0.0, 0.0, 0.0, 0.0)
    return Overlay(
        cell=(col * cw, row * ch, (col + 1) * cw, (row + 1) * ch),
        box=visible,
        box_clipped=tuple(visible) != tuple(full),
    )


def confusion_picture(matrix: np.ndarray) -> np.ndarray:
    """A confusion matrix as a picture, one pixel per cell (rows true, columns predicted), on a log
    scale: mistakes from white to dark red, the diagonal from pale to dark green, empty cells white."""
    m = np.asarray(matrix, dtype=np.float64)
    n = m.shape[0]
    top = np.log1p(m.max()) if m.size and m.max() > 0 else 1.0
    level = np.log1p(m) / top  # 0..1
    red = np.array([255, 255, 255]) - level[:, :, None] * np.array([75, 235, 235])
    green = np.array([235, 245, 235]) - level[:, :, None] * np.array([215, 120, 215])
    picture = np.where(np.eye(n, dtype=bool)[:, :, None], green, red)
    picture[(m == 0) & ~np.eye(n, dtype=bool)] = 255
    return np.clip(np.round(picture), 0, 255).astype(np.uint8)
