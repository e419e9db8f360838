"""The site's pictures, written as they are made: thumbnail sheets, heatmap atlases, feature grids.

Thumbnails: one per image that some gallery shows, packed in sheets of SHEET_COLUMNS x
SHEET_COLUMNS (a handful of files for thousands of images); pages show a tile with CSS.
Heatmaps: one grey atlas per block of units (a row per unit, a column per rank); a unit whose
heatmaps are byte-identical to another's (a dead unit; BatchNormalization -> ReLU, where the
ranking and the clipped maps are the same) points to the tile already stored.
"""

from __future__ import annotations

import collections
import concurrent.futures
import hashlib
import threading
from dataclasses import dataclass

import numpy as np

from reportgen.images import GRID_PALETTE, encode_jpeg, encode_png, feature_grid, heat_atlas, thumbnail_sheet
from reportgen.report import LayerUnits
from reportgen.site.names import content_path, slug

SHEET_COLUMNS = 8
ATLAS_UNITS = 512  # units per heatmap atlas file
GRID_PIXELS = 600_000  # feature-map grid budget per layer and image when --max-channels is not given


@dataclass(frozen=True)
class Tile:
    """Where an image's thumbnail is: sheet file, tile column and row, and the sheet's size in tiles."""

    sheet: str
    col: int
    row: int
    columns: int
    rows: int

    @property
    def x(self) -> float:  # CSS background-position percentages
        return 0.0 if self.columns == 1 else round(self.col / (self.columns - 1) * 100, 4)

    @property
    def y(self) -> float:
        return 0.0 if self.rows == 1 else round(self.row / (self.rows - 1) * 100, 4)


def write_thumbnail_sheets(site, thumbnails: dict) -> dict[int, Tile]:
    """Pack every thumbnail (dataset index -> Thumbnail) into sheets; returns each image's tile."""
    tiles: dict[int, Tile] = {}
    order = sorted(thumbnails)
    per_sheet = SHEET_COLUMNS * SHEET_COLUMNS
    chunks = [order[start : start + per_sheet] for start in range(0, len(order), per_sheet)]

    def encoded(chunk: list[int]) -> bytes:
        thumbs = [thumbnails[i] for i in chunk]
        return _encoded_sheet(thumbs, min(SHEET_COLUMNS, len(chunk)), thumbs[0].ext == "png")

    with concurrent.futures.ThreadPoolExecutor(2) as pool:  # Pillow decodes and encodes without holding the GIL
        sheets = pool.map(encoded, chunks)
        for chunk, data in zip(chunks, sheets):
            columns = min(SHEET_COLUMNS, len(chunk))
            path = site.write(content_path("img", data, "png" if thumbnails[chunk[0]].ext == "png" else "jpg", "sheet"), data)
            rows = -(-len(chunk) // columns)
            for k, index in enumerate(chunk):
                tiles[index] = Tile(path, k % columns, k // columns, columns, rows)
    return tiles


_SHEETS: collections.OrderedDict[bytes, bytes] = collections.OrderedDict()  # thumbnails' digest -> encoded sheet
_SHEETS_LOCK = threading.Lock()


def _encoded_sheet(thumbs: list, columns: int, exact: bool) -> bytes:
    """A sheet's encoded bytes, kept for the last few sheets: the training callback writes the same
    probe images' sheets every snapshot (a pure function of the thumbnails, so the bytes are the same)."""
    key = hashlib.sha1(b"".join([bytes([columns, exact])] + [t.data for t in thumbs])).digest()
    with _SHEETS_LOCK:
        if key in _SHEETS:
            _SHEETS.move_to_end(key)
            return _SHEETS[key]
    sheet = thumbnail_sheet(thumbs, columns)
    data = encode_png(sheet) if exact else encode_jpeg(sheet, quality=85)
    with _SHEETS_LOCK:
        _SHEETS[key] = data
        while len(_SHEETS) > 16:
            _SHEETS.popitem(last=False)
    return data


class HeatAtlases:
    """Heatmap tiles of every unit, stored once per distinct content."""

    def __init__(self, site) -> None:
        self.site = site
        self.seen: dict[bytes, tuple[str, int, int]] = {}  # content digest -> (atlas path, row, rows in atlas)

    def write_layer(self, units: LayerUnits) -> dict:
        """Atlases for one layer's units; returns {"shape": [h, w], "atlases": [...], "tiles": [[atlas, row, rows] per channel]}."""
        heat = units.heat  # [c, k, h, w]
        c, k, h, w = heat.shape
        shape = np.array([k, h, w], np.int64).tobytes()
        digests = [hashlib.sha1(shape + heat[ch].tobytes()).digest() for ch in range(c)]
        fresh = []  # channels whose tiles are not stored yet, first of each content
        pending: dict[bytes, int] = {}
        for ch, d in enumerate(digests):
            if d not in self.seen and d not in pending:
                pending[d] = len(fresh)
                fresh.append(ch)
        for start in range(0, len(fresh), ATLAS_UNITS):
            block = fresh[start : start + ATLAS_UNITS]
            # level 1: half the time of the default level, 7% larger (MobileNetV2's atlases: 0.99 -> 0.45 s, 10.4 -> 11.1 MB)
            data = encode_png(heat_atlas(heat[block]), compress_level=1)
            path = self.site.write(content_path("heat", data, "png", slug(units.layer)), data)
            for row, ch in enumerate(block):
                self.seen[digests[ch]] = (path, row, len(block))
        atlases: list[str] = []
        tiles = []
        for d in digests:
            path, row, rows = self.seen[d]
            if path not in atlases:
                atlases.append(path)
            tiles.append([atlases.index(path), row, rows])
        return {"shape": [h, w], "atlases": atlases, "tiles": tiles}


def grid_channels(node, max_channels: int | None) -> int:
    """How many channels a layer's feature-map grid draws: --max-channels, or as many as fit GRID_PIXELS."""
    from reportgen.images import tile_scale

    if max_channels:
        return min(max_channels, node.channels)
    h, w = node.spatial
    scale = tile_scale(h, w)
    per_channel = (h * scale + 2) * (w * scale + 2)
    return max(1, min(node.channels, GRID_PIXELS // per_channel))


@dataclass(frozen=True)
class GridPicture:
    path: str
    layout: object  # images.GridLayout
    shown: int  # channels drawn
    sparsity: float  # exact zeros in the whole map (every channel)


@dataclass(frozen=True)
class DrawnGrid:
    """A feature grid drawn and encoded, not yet written."""

    png: bytes
    layout: object  # images.GridLayout
    shown: int
    sparsity: float


def draw_feature_grid(maps: np.ndarray, shown: int) -> DrawnGrid:
    grid, layout = feature_grid(maps[:, :, :shown])
    # level 1: the grids are rewritten at every training-callback snapshot; several times faster, a few % larger
    return DrawnGrid(encode_png(grid, compress_level=1, palette=GRID_PALETTE), layout, shown, float(np.mean(maps == 0)) if maps.size else 0.0)


def drawn_ahead(jobs, threads: int = 2, depth: int = 4):
    """Yield draw_feature_grid(*job) for each job, in order, drawn by `threads` threads up to `depth`
    jobs ahead (numpy and zlib release the GIL: the pages render meanwhile)."""
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        queue: collections.deque = collections.deque()
        for job in jobs:
            queue.append(pool.submit(draw_feature_grid, *job))
            if len(queue) > depth:
                yield queue.popleft().result()
        while queue:
            yield queue.popleft().result()


def write_feature_grid(site, node, drawn: DrawnGrid) -> GridPicture:
    path = site.write(content_path("maps", drawn.png, "png", slug(node.name)), drawn.png)
    return GridPicture(path, drawn.layout, drawn.shown, drawn.sparsity)
