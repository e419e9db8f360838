"""Turn the report's data into the site's files: names, encoded images, rendered pages, report.json.

Everything is gathered in memory as {relative path: bytes} and handed to writer.py, which writes it
in one go; `broken_links` checks every href/src of the result first. Names come from layer names
and content hashes only, so the same inputs give the same bytes.
"""

from __future__ import annotations

import collections
import hashlib
import html.parser
import posixpath
import re
from dataclasses import dataclass, field
from importlib import resources
from urllib.parse import quote, unquote, urlsplit

import jinja2
import numpy as np

from reportgen import __version__
from reportgen.dataset import Dataset
from reportgen.images import content_name, encode_png, encode_thumbnail, feature_grid, heat_sprite, unit_overlay
from reportgen.report import ChosenImage, LayerNode, ModelInfo, ReceptiveField, ScanResult, UnitResult, to_json

LAYER_DIR = "layers"
UNIT_DIR = "units"
PROBE_DIR = "probes"


def slug(name: str) -> str:
    """A file-system and URL safe name for a layer: readable part plus a hash of the full name."""
    readable = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._-")[:40] or "layer"
    return f"{readable}-{hashlib.sha1(name.encode('utf-8')).hexdigest()[:8]}"


def layer_page(name: str) -> str:
    return f"{LAYER_DIR}/{slug(name)}.html"


def unit_page(layer: str, channel: int) -> str:
    return f"{UNIT_DIR}/{slug(layer)}/{channel}.html"


def shape_text(shape) -> str:
    return "(" + ", ".join("None" if d is None else str(d) for d in shape) + ")"


@dataclass
class SiteInput:
    """Everything the site shows. Plain data: no tensors."""

    info: ModelInfo
    dataset: Dataset
    scan: ScanResult
    chosen: list[ChosenImage]
    fields: dict[str, ReceptiveField]
    thumbnails: dict[int, tuple[bytes, str]]  # dataset index -> encoded model input, for every image in a top K
    heat: dict[str, np.ndarray]  # layer -> uint8 [channels, k, h, w]
    top_k: int
    max_channels: int | None
    options: dict = field(default_factory=dict)  # shown on the index and in report.json
    footer_note: str = ""  # e.g. a build time, only when asked for
    data_label: str = ""  # how the dataset root is shown


def _template_source(name: str) -> str | None:
    """Templates ship inside the package as `reportgen.templates` (the top-level templates/ folder)."""
    item = resources.files("reportgen.templates").joinpath(*name.split("/"))
    return item.read_text(encoding="utf-8") if item.is_file() else None


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FunctionLoader(_template_source),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["num"] = _num
    env.filters["pct"] = lambda v: "–" if v is None else f"{100 * v:.1f}%"
    env.filters["shape"] = shape_text
    env.filters["thousands"] = lambda v: f"{int(v):,}"
    env.globals["version"] = __version__
    return env


def _num(value, digits: int = 4) -> str:
    if value is None:
        return "–"
    value = float(value)
    if value != value:
        return "NaN"
    if value == 0:
        return "0"
    if abs(value) >= 1000 or abs(value) < 1e-3:
        return f"{value:.{digits - 1}e}"
    return f"{value:.{digits}g}"


def _static_files() -> dict[str, bytes]:
    folder = resources.files("reportgen.templates") / "static"
    return {f"static/{item.name}": item.read_bytes() for item in sorted(folder.iterdir(), key=lambda i: i.name) if item.is_file()}


def _rel(from_page: str, target: str) -> str:
    """Relative, percent-encoded URL from one site file to another (both site-root relative)."""
    return quote(posixpath.relpath(target, posixpath.dirname(from_page) or "."), safe="/")


def _histogram_bars(unit: UnitResult, width: float = 320, height: float = 90) -> dict:
    hist = unit.histogram
    counts = list(hist.counts)
    while counts and counts[-1] == 0:
        counts.pop()
    bars = [("≤ 0", hist.nonpositive, True)]
    step = hist.hi / len(hist.counts) if hist.counts else 0
    bars += [(f"{_num(i * step, 3)} – {_num((i + 1) * step, 3)}", c, False) for i, c in enumerate(counts)]
    peak = max((c for _, c, _ in bars), default=0) or 1
    slot = width / max(len(bars), 1)
    shapes = [
        {
            "x": round(i * slot + 0.5, 2),
            "w": round(max(slot - 1, 0.5), 2),
            "h": round(height * c / peak, 2),
            "y": round(height - height * c / peak, 2),
            "label": label,
            "count": c,
            "nonpositive": nonpos,
        }
        for i, (label, c, nonpos) in enumerate(bars)
    ]
    top = len(counts) * step
    return {"bars": shapes, "width": width, "height": height, "peak": peak, "hi": top}


class _Assets:
    """Encoded images by content-hash name, each stored once however often it is shown."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}

    def add(self, folder: str, data: bytes, ext: str, stem: str = "") -> str:
        path = f"{folder}/{content_name(data, ext, stem)}"
        self.files[path] = data
        return path


def assemble_site(si: SiteInput) -> dict[str, bytes]:
    env = _environment()
    assets = _Assets()
    files: dict[str, bytes] = {}
    files.update(_static_files())
    info, dataset, scan = si.info, si.dataset, si.scan
    input_hw = (int(info.input_shape[1]), int(info.input_shape[2]))
    classes = dataset.classes
    map_layers = [n for n in info.nodes if n.is_map]

    thumbs = {}
    for index in sorted(si.thumbnails):
        data, ext = si.thumbnails[index]
        thumbs[index] = assets.add("img", data, ext)
    records = dataset.records

    def image_view(index: int) -> dict:
        rec = records[index]
        return {
            "index": index,
            "thumb": thumbs.get(index),
            "rel": rec.rel,
            "label": classes[rec.label] if rec.label is not None else None,
        }

    chosen_views = []
    for i, img in enumerate(si.chosen):
        data, ext = encode_thumbnail(img.pixels)
        chosen_views.append(
            {
                "number": i + 1,
                "path": img.path,
                "label": img.label,
                "prediction": img.prediction,
                "scores": [float(s) for s in np.ravel(img.scores)][:20],
                "thumb": assets.add("img", data, ext),
            }
        )

    # Feature maps of the chosen images, one grid per (layer, image).
    layer_views: list[dict] = []
    for position, node in enumerate(map_layers):
        units = scan.units[node.name]
        rf = si.fields[node.name]
        grids = []
        for img, cv in zip(si.chosen, chosen_views):
            maps = img.maps[node.name]
            sparsity = float(np.mean(maps == 0)) if maps.size else 0.0
            shown = maps[:, :, : si.max_channels] if si.max_channels else maps
            grid, layout = feature_grid(shown)
            grids.append(
                {
                    "image": cv,
                    "png": assets.add("maps", encode_png(grid), "png", slug(node.name)),
                    "layout": layout,
                    "tiles": [
                        {"channel": ch, "box": layout.tile_box(ch), "dead": ch in layout.dead}
                        for ch in range(layout.channels)
                    ],
                    "sparsity": sparsity,
                    "shown": shown.shape[-1],
                }
            )
        dead = [u.channel for u in units if u.dead]
        layer_views.append(
            {
                "node": node,
                "page": layer_page(node.name),
                "slug": slug(node.name),
                "units": units,
                "dead": dead,
                "rf": rf,
                "grids": grids,
                "sparsity": grids[0]["sparsity"] if grids else None,
                "prev": layer_page(map_layers[position - 1].name) if position > 0 else None,
                "next": layer_page(map_layers[position + 1].name) if position + 1 < len(map_layers) else None,
            }
        )
    by_name = {lv["node"].name: lv for lv in layer_views}

    def overlay_view(node: LayerNode, row: int, col: int) -> dict:
        ov = unit_overlay(si.fields[node.name], input_hw, node.spatial, row, col)
        return {"cell": ov.cell, "box": ov.box, "clipped": ov.box_clipped}

    def gallery(node: LayerNode, entries, with_heat: bool = False) -> list[dict]:
        n = len(entries)
        cards = []
        for rank, entry in enumerate(entries):
            view = image_view(entry.image)
            view.update(
                {
                    "rank": rank + 1,
                    "value": entry.value,
                    "row": entry.row,
                    "col": entry.col,
                    "overlay": overlay_view(node, entry.row, entry.col),
                    "sprite": with_heat,
                    "sprite_pos": 0 if n <= 1 else round(rank / (n - 1) * 100, 4),
                }
            )
            cards.append(view)
        return cards

    def page_context(page: str, **extra) -> dict:
        def url(target: str | None) -> str:
            return _rel(page, target) if target else ""

        ctx = {
            "url": url,
            "model_name": info.name,
            "index_page": url("index.html"),
            "static": url("static/style.css"),
            "footer_note": si.footer_note,
        }
        ctx.update(extra)
        return ctx

    def grid_pattern(node: LayerNode) -> dict:
        rows, cols = node.spatial
        cell = (input_hw[0] / rows, input_hw[1] / cols)
        # lines closer than 8 input pixels would hide the image: drawn only when asked for
        return {"rows": rows, "cols": cols, "ch": cell[0], "cw": cell[1], "dense": min(cell) < 8}

    pages: dict[str, str] = {}
    unit_template = env.get_template("unit.html")
    layer_template = env.get_template("layer.html")
    for lv in layer_views:
        node = lv["node"]
        pattern = grid_pattern(node)
        heat = si.heat.get(node.name)
        overview = []
        for unit in lv["units"]:
            page = unit_page(node.name, unit.channel)
            sprite = None
            if heat is not None and unit.top and not unit.dead:
                sprite = assets.add("heat", encode_png(heat_sprite(heat[unit.channel, : len(unit.top)])), "png")
            cards = gallery(node, unit.top, with_heat=sprite is not None)
            class_counts = collections.Counter(c["label"] for c in cards if c["label"] is not None)
            pages[page] = unit_template.render(
                page_context(
                    page,
                    layer=lv,
                    unit=unit,
                    cards=cards,
                    sprite=sprite,
                    pattern=pattern,
                    input_hw=input_hw,
                    class_counts=[(name, class_counts.get(name, 0)) for name in classes],
                    histogram=_histogram_bars(unit),
                    prev_unit=unit_page(node.name, unit.channel - 1) if unit.channel > 0 else None,
                    next_unit=unit_page(node.name, unit.channel + 1) if unit.channel + 1 < len(lv["units"]) else None,
                    top_k=si.top_k,
                )
            )
            overview.append({"unit": unit, "page": page, "best": cards[0] if cards else None})
        pages[lv["page"]] = layer_template.render(
            page_context(lv["page"], layer=lv, overview=overview, input_hw=input_hw, pattern=pattern, max_channels=si.max_channels)
        )

    probe_views = []
    for probe in scan.probes:
        node = by_name[probe.layer]["node"]
        page = f"{PROBE_DIR}/{slug(probe.layer)}_{probe.row}_{probe.col}_{probe.channel}.html"
        probe_views.append({"probe": probe, "page": page, "layer": by_name[probe.layer]})
        pages[page] = env.get_template("probe.html").render(
            page_context(
                page,
                probe=probe,
                layer=by_name[probe.layer],
                cards=gallery(node, probe.top),
                pattern=grid_pattern(node),
                input_hw=input_hw,
            )
        )

    class_sizes = collections.Counter(r.label for r in records)
    index_ctx = page_context(
        "index.html",
        info=info,
        rows=info.nodes,
        layers=by_name,
        layer_views=layer_views,
        metrics=scan.metrics,
        classes=classes,
        class_sizes=[(name, class_sizes.get(i, 0)) for i, name in enumerate(classes)],
        dataset=dataset,
        data_label=si.data_label or str(dataset.root),
        num_images=scan.num_images,
        chosen=chosen_views,
        probes=probe_views,
        options=si.options,
        total_dead=sum(len(lv["dead"]) for lv in layer_views),
        total_units=sum(len(lv["units"]) for lv in layer_views),
    )
    pages["index.html"] = env.get_template("index.html").render(index_ctx)

    files.update(assets.files)
    files.update({path: text.encode("utf-8") for path, text in pages.items()})
    files["report.json"] = to_json(report_data(si, layer_views, probe_views))
    files[".nojekyll"] = b""
    return files


def report_data(si: SiteInput, layer_views: list[dict], probe_views: list[dict]) -> dict:
    info, dataset, scan = si.info, si.dataset, si.scan
    records = dataset.records
    m = scan.metrics

    def top(entries) -> list[dict]:
        return [{"image": records[e.image].rel, "value": e.value, "row": e.row, "col": e.col} for e in entries]

    return {
        "generator": {"name": "reportgen", "version": __version__},
        "options": si.options,
        "model": {
            "name": info.name,
            "path": info.path,
            "input_shape": list(info.input_shape),
            "total_params": info.total_params,
            "trainable_params": info.trainable_params,
            "non_trainable_params": info.non_trainable_params,
            "loss": info.loss_name,
            "layers": [
                {
                    "name": n.name,
                    "type": n.type,
                    "output_shape": list(n.output_shape),
                    "params": n.params,
                    "parent": n.parent,
                }
                for n in info.nodes
            ],
        },
        "dataset": {
            "root": si.data_label or str(dataset.root),
            "class_indices": dataset.class_indices,
            "num_images": scan.num_images,
            "num_files": len(records),
            "skipped": [{"path": s.path, "reason": s.reason} for s in dataset.skipped],
            "ignored": [{"path": s.path, "reason": s.reason} for s in dataset.ignored],
        },
        "metrics": {
            "accuracy": m.accuracy,
            "loss": m.loss,
            "per_class": m.per_class,
            "confusion": m.confusion,
            "evaluated": m.evaluated,
            "mode": m.mode,
            "note": m.note or None,
        },
        "images": [
            {"path": img.path, "label": img.label, "prediction": img.prediction, "scores": [float(s) for s in np.ravel(img.scores)]}
            for img in si.chosen
        ],
        "layers": [
            {
                "name": lv["node"].name,
                "type": lv["node"].type,
                "output_shape": list(lv["node"].output_shape),
                "page": lv["page"],
                "sparsity": lv["sparsity"],
                "sparsity_per_image": [g["sparsity"] for g in lv["grids"]],
                "units": len(lv["units"]),
                "dead_units": len(lv["dead"]),
            }
            for lv in layer_views
        ],
        "receptive_fields": [
            {
                "layer": lv["node"].name,
                "size": list(lv["rf"].size),
                "stride": list(lv["rf"].stride),
                "offset": list(lv["rf"].offset),
                "exact": lv["rf"].exact,
                "note": lv["rf"].note or None,
            }
            for lv in layer_views
        ],
        "units": [
            {
                "layer": u.layer,
                "channel": u.channel,
                "page": unit_page(u.layer, u.channel),
                "dead": u.dead,
                "max": u.max_value if u.top else None,
                "top": top(u.top),
                "histogram": {"nonpositive": u.histogram.nonpositive, "hi": u.histogram.hi, "counts": u.histogram.counts},
            }
            for lv in layer_views
            for u in lv["units"]
        ],
        "probes": [
            {
                "layer": pv["probe"].layer,
                "row": pv["probe"].row,
                "col": pv["probe"].col,
                "channel": pv["probe"].channel,
                "page": pv["page"],
                "top": top(pv["probe"].top),
            }
            for pv in probe_views
        ],
    }


_CSS_URL = re.compile(r"url\(\s*['\"]?([^'\")]+)['\"]?\s*\)")


class _LinkParser(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []
        self.ids: set[str] = set()
        self._in_style = False

    def handle_endtag(self, tag):
        self._in_style = False

    def handle_data(self, data):
        if self._in_style:
            self.links += _CSS_URL.findall(data)

    def handle_starttag(self, tag, attrs):
        self._in_style = tag == "style"
        for name, value in attrs:
            if name in ("href", "src") and value is not None:
                self.links.append(value)
            if name == "id" and value:
                self.ids.add(value)
            if name == "style" and value:
                self.links += _CSS_URL.findall(value)


def broken_links(files: dict[str, bytes]) -> list[str]:
    """Every href/src (and CSS url()) in every page that does not resolve to a file or #anchor of the site."""
    parsed: dict[str, _LinkParser] = {}
    for path, data in files.items():
        if path.endswith(".html"):
            p = _LinkParser()
            p.feed(data.decode("utf-8"))
            parsed[path] = p
    broken = []
    for page, p in parsed.items():
        for link in p.links:
            parts = urlsplit(link)
            if parts.scheme or parts.netloc:
                broken.append(f"{page}: external link {link}")
                continue
            target = page if not parts.path else posixpath.normpath(posixpath.join(posixpath.dirname(page), unquote(parts.path)))
            if target not in files:
                broken.append(f"{page}: {link} (no file {target})")
            elif parts.fragment and target in parsed and unquote(parts.fragment) not in parsed[target].ids:
                broken.append(f"{page}: {link} (no id {parts.fragment})")
    return broken
