"""Typed views: what the templates show, made from the gathered data (no TensorFlow, no files)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field


from reportgen.images import unit_overlay
from reportgen.report import LayerNode, ReceptiveField
from reportgen.site.assets import GridPicture, Tile


@dataclass(frozen=True)
class Pattern:
    """The layer's grid over an input image: one cell per map position."""

    rows: int
    cols: int
    cell_h: float  # input pixels
    cell_w: float
    dense: bool  # cells under 8 input pixels: grid hidden unless asked for

    @classmethod
    def of(cls, node: LayerNode, input_hw: tuple[int, int]) -> "Pattern":
        rows, cols = node.spatial
        ch, cw = input_hw[0] / rows, input_hw[1] / cols
        return cls(rows, cols, ch, cw, min(ch, cw) < 8)


@dataclass(frozen=True)
class Card:
    """One image of a static gallery (probes): thumbnail tile, score, class, position and overlay."""

    rank: int
    value: float
    path: str
    label: str | None
    row: int
    col: int
    tile: Tile | None
    cell: tuple[float, float, float, float]
    box: tuple[float, float, float, float]
    clipped: bool


def cards(entries, records, classes, tiles, rf: ReceptiveField, input_hw, node: LayerNode) -> list[Card]:
    out = []
    for rank, e in enumerate(entries):
        rec = records[e.image]
        overlay = unit_overlay(rf, input_hw, node.spatial, e.row, e.col)
        out.append(Card(rank + 1, e.value, rec.rel, classes[rec.label] if rec.label is not None else None, e.row, e.col,
                        tiles.get(e.image), overlay.cell, overlay.box, overlay.box_clipped))
    return out


@dataclass(frozen=True)
class UnitLine:
    """A unit in the layer page's static list (also what shows without JavaScript)."""

    channel: int
    max_value: float | None
    dead: bool
    best: Tile | None


@dataclass(frozen=True)
class GridTile:
    channel: int
    left: float  # percent of the grid picture
    top: float
    width: float
    height: float
    dead: bool


@dataclass(frozen=True)
class GridView:
    """One chosen image's feature maps for a layer."""

    number: int
    image_path: str
    picture: GridPicture
    tiles: list[GridTile]


def grid_view(number: int, image_path: str, picture: GridPicture) -> GridView:
    layout = picture.layout
    tiles = []
    for ch in range(layout.channels):
        x0, y0, x1, y1 = layout.tile_box(ch)
        tiles.append(GridTile(ch, 100 * x0 / layout.width, 100 * y0 / layout.height, 100 * (x1 - x0) / layout.width,
                              100 * (y1 - y0) / layout.height, ch in layout.dead))
    return GridView(number, image_path, picture, tiles)


@dataclass
class LayerView:
    node: LayerNode
    page: str
    data_file: str
    rf: ReceptiveField
    pattern: Pattern
    units: list[UnitLine]
    dead: list[int]
    grids: list[GridView]
    prev: str | None
    next: str | None
    ranked_as: str | None = None  # the earlier layer whose units' top K this layer's units show (model/ranking.py)
    ranked_as_page: str | None = None


def unit_lines(units, tiles: dict) -> list[UnitLine]:
    # Python lists: indexing numpy arrays element by element costs more than the lines (ResNet50: 91k)
    best, values, dead = units.images[:, 0].tolist(), units.values[:, 0].tolist(), units.dead.tolist()
    return [
        UnitLine(c, values[c], dead[c], tiles.get(best[c])) if best[c] >= 0 else UnitLine(c, None, dead[c], None)
        for c in range(units.channels)
    ]


# -- the index: layers grouped by nested model and block ------------------------------------------

_BLOCK = [
    re.compile(r"^(.*?block_?\d+[a-z]?)(?:_|$)"),  # ResNet conv2_block1, MobileNetV2 block_1, EfficientNet block1a, ConvNeXt ..._block_0
    re.compile(r"^(expanded_conv(?:_\d+)?)(?:_|$)"),  # MobileNetV3
    re.compile(r"^((?:normal|reduction)_\w+?_\d+|adjust_\w+?_\d+)$"),
]
RUN = 16  # layers with no block in their names are grouped by runs of this many


def block_of(name: str) -> str | None:
    short = name.rsplit("/", 1)[-1]
    for pattern in _BLOCK:
        m = pattern.match(short)
        if m:
            prefix = name[: len(name) - len(short)]
            return prefix + m.group(1)
    return None


@dataclass
class IndexRow:
    node: LayerNode
    page: str | None  # its layer page, for layers with feature maps
    units: int = 0
    dead: int = 0
    sparsity: float | None = None
    rf: ReceptiveField | None = None


@dataclass
class Group:
    """A collapsible group of the index's layer list: a nested model, or a block inside it."""

    title: str
    kind: str  # "model", "block" or "run"
    rows: list = field(default_factory=list)  # IndexRow or Group, in model order

    @property
    def count(self) -> int:
        return sum(r.count if isinstance(r, Group) else 1 for r in self.rows)

    @property
    def units(self) -> int:
        return sum(r.units for r in self.rows)

    @property
    def dead(self) -> int:
        return sum(r.dead for r in self.rows)


def group_rows(rows: list[IndexRow]) -> list:
    """Top-level rows, nested models as groups of their layers, layers of the same block as groups."""
    top: list = []
    models: dict[str, Group] = {}

    def container(parent: str | None) -> list:
        return top if parent is None else models[parent].rows

    for row in rows:
        node = row.node
        if node.geometry.op == "model":
            group = Group(node.name, "model", [row])
            models[node.name] = group
            container(node.parent).append(group)
        else:
            container(node.parent).append(row)
    for group in [top] + [g.rows for g in models.values()]:
        group[:] = _blocks(group)
    return top


def _blocks(items: list) -> list:
    out: list = []
    loose: list = []

    def flush_loose():
        if len(loose) > RUN:
            for start in range(0, len(loose), RUN):
                part = loose[start : start + RUN]
                out.append(Group(f"{part[0].node.name} … {part[-1].node.name}", "run", part))
        else:
            out.extend(loose)
        loose.clear()

    current: Group | None = None
    for item in items:
        block = block_of(item.node.name) if isinstance(item, IndexRow) and item.node.geometry.op != "model" else None
        if block is None:
            current = None
            if isinstance(item, IndexRow):
                loose.append(item)
            else:
                flush_loose()
                out.append(item)
            continue
        if current is None or current.title != block:
            flush_loose()
            current = Group(block, "block", [])
            out.append(current)
        current.rows.append(item)
    flush_loose()
    return [g.rows[0] if isinstance(g, Group) and g.kind == "block" and len(g.rows) == 1 else g for g in out]


@dataclass(frozen=True)
class CamCard:
    """An image of a gallery of mistakes: thumbnail, classes, confidence, and its class activation maps."""

    index: int
    path: str
    true: str | None
    predicted: str
    confidence: float  # probability of the predicted class
    true_score: float | None  # probability of the true class
    tile: Tile | None
    cam: tuple[str, int, int] | None  # (atlas path, row, rows): column 0 the predicted class's map, column 1 the true class's
    correct: bool


def cam_cards(images: list[int], explained, records, classes, tiles: dict, cam_tiles: dict) -> list[CamCard]:
    """cam_tiles: dataset index -> (atlas path, row, rows in that atlas)."""
    p = explained.predictions
    cards = []
    for i in images:
        label = int(p.labels[i])
        cards.append(CamCard(
            index=i, path=records[i].rel, true=classes[label] if label >= 0 else None, predicted=classes[int(p.predicted[i])],
            confidence=float(p.confidence[i]), true_score=float(p.true_score[i]) if label >= 0 else None, tile=tiles.get(i),
            cam=cam_tiles.get(i), correct=label == int(p.predicted[i]),
        ))
    return cards
