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
    preprocessing: object = None  # model.preprocess.Preprocessing: what was fed to the model
    warnings: list[str] = field(default_factory=list)  # shown on the index: never a silent guess


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
    """Every file of the site, by relative path: pages, images, static assets, report.json."""
    return _Assembler(si).files()


class _Assembler:
    """Builds the views (plain dicts for the templates) and renders every page of one site."""

    def __init__(self, si: SiteInput) -> None:
        self.si = si
        self.env = _environment()
        self.assets = _Assets()
        self.pages: dict[str, str] = {}
        info = si.info
        shape = info.run_input_shape or info.input_shape  # the size it ran at (--input-size for unfixed inputs)
        self.input_hw = (int(shape[1]), int(shape[2]))
        self.classes = si.dataset.classes
        self.thumbs = {index: self.assets.add("img", *si.thumbnails[index]) for index in sorted(si.thumbnails)}

    def files(self) -> dict[str, bytes]:
        chosen = self.chosen_views()
        layers = [self.layer_view(position, chosen) for position in range(len(self.map_layers))]
        for lv in layers:
            self.render_layer_and_units(lv)
        by_name = {lv["node"].name: lv for lv in layers}
        probes = [self.render_probe(probe, by_name[probe.layer]) for probe in self.si.scan.probes]
        self.render_index(chosen, layers, by_name, probes)

        files = _static_files()
        files.update(self.assets.files)
        files.update({path: text.encode("utf-8") for path, text in self.pages.items()})
        files["report.json"] = to_json(report_data(self.si, layers, probes))
        files[".nojekyll"] = b""
        return files

    @property
    def map_layers(self) -> list[LayerNode]:
        return [n for n in self.si.info.nodes if n.is_map]

    # -- views ---------------------------------------------------------------------------------

    def chosen_views(self) -> list[dict]:
        views = []
        for i, img in enumerate(self.si.chosen):
            data, ext = encode_thumbnail(img.pixels)
            views.append(
                {
                    "number": i + 1,
                    "path": img.path,
                    "label": img.label,
                    "prediction": img.prediction,
                    "scores": [float(s) for s in np.ravel(img.scores)][:20],
                    "thumb": self.assets.add("img", data, ext),
                }
            )
        return views

    def layer_view(self, position: int, chosen: list[dict]) -> dict:
        """One layer: its units, receptive field, and the feature-map grid of every chosen image."""
        map_layers = self.map_layers
        node = map_layers[position]
        units = self.si.scan.units[node.name]
        grids = []
        for img, view in zip(self.si.chosen, chosen):
            maps = img.maps[node.name]
            shown = maps[:, :, : self.si.max_channels] if self.si.max_channels else maps
            grid, layout = feature_grid(shown)
            grids.append(
                {
                    "image": view,
                    "png": self.assets.add("maps", encode_png(grid), "png", slug(node.name)),
                    "layout": layout,
                    "tiles": [{"channel": ch, "box": layout.tile_box(ch), "dead": ch in layout.dead} for ch in range(layout.channels)],
                    "sparsity": float(np.mean(maps == 0)) if maps.size else 0.0,
                    "shown": shown.shape[-1],
                }
            )
        return {
            "node": node,
            "page": layer_page(node.name),
            "slug": slug(node.name),
            "units": units,
            "dead": [u.channel for u in units if u.dead],
            "rf": self.si.fields[node.name],
            "grids": grids,
            "sparsity": grids[0]["sparsity"] if grids else None,
            "prev": layer_page(map_layers[position - 1].name) if position > 0 else None,
            "next": layer_page(map_layers[position + 1].name) if position + 1 < len(map_layers) else None,
        }

    def gallery(self, node: LayerNode, entries, with_heat: bool = False) -> list[dict]:
        """Cards of a top-K list: image, score, class, position, overlay geometry, heat-sprite row."""
        records, n = self.si.dataset.records, len(entries)
        cards = []
        for rank, entry in enumerate(entries):
            rec = records[entry.image]
            overlay = unit_overlay(self.si.fields[node.name], self.input_hw, node.spatial, entry.row, entry.col)
            cards.append(
                {
                    "index": entry.image,
                    "thumb": self.thumbs.get(entry.image),
                    "rel": rec.rel,
                    "label": self.classes[rec.label] if rec.label is not None else None,
                    "rank": rank + 1,
                    "value": entry.value,
                    "row": entry.row,
                    "col": entry.col,
                    "overlay": {"cell": overlay.cell, "box": overlay.box, "clipped": overlay.box_clipped},
                    "sprite": with_heat,
                    "sprite_pos": 0 if n <= 1 else round(rank / (n - 1) * 100, 4),
                }
            )
        return cards

    def grid_pattern(self, node: LayerNode) -> dict:
        rows, cols = node.spatial
        cell = (self.input_hw[0] / rows, self.input_hw[1] / cols)
        # lines closer than 8 input pixels would hide the image: drawn only when asked for
        return {"rows": rows, "cols": cols, "ch": cell[0], "cw": cell[1], "dense": min(cell) < 8}

    # -- pages ---------------------------------------------------------------------------------

    def render(self, template: str, page: str, **context) -> None:
        def url(target: str | None) -> str:
            return _rel(page, target) if target else ""

        self.pages[page] = self.env.get_template(template).render(
            url=url,
            model_name=self.si.info.name,
            index_page=url("index.html"),
            static=url("static/style.css"),
            footer_note=self.si.footer_note,
            input_hw=self.input_hw,
            **context,
        )

    def render_layer_and_units(self, lv: dict) -> None:
        node = lv["node"]
        pattern = self.grid_pattern(node)
        heat = self.si.heat.get(node.name)
        overview = []
        for unit in lv["units"]:
            page = unit_page(node.name, unit.channel)
            sprite = None
            if heat is not None and unit.top and not unit.dead:
                sprite = self.assets.add("heat", encode_png(heat_sprite(heat[unit.channel, : len(unit.top)])), "png")
            cards = self.gallery(node, unit.top, with_heat=sprite is not None)
            class_counts = collections.Counter(c["label"] for c in cards if c["label"] is not None)
            self.render(
                "unit.html",
                page,
                layer=lv,
                unit=unit,
                cards=cards,
                sprite=sprite,
                pattern=pattern,
                class_counts=[(name, class_counts.get(name, 0)) for name in self.classes],
                histogram=_histogram_bars(unit),
                prev_unit=unit_page(node.name, unit.channel - 1) if unit.channel > 0 else None,
                next_unit=unit_page(node.name, unit.channel + 1) if unit.channel + 1 < len(lv["units"]) else None,
                top_k=self.si.top_k,
            )
            overview.append({"unit": unit, "page": page, "best": cards[0] if cards else None})
        self.render("layer.html", lv["page"], layer=lv, overview=overview, pattern=pattern, max_channels=self.si.max_channels)

    def render_probe(self, probe, lv: dict) -> dict:
        node = lv["node"]
        page = f"{PROBE_DIR}/{slug(probe.layer)}_{probe.row}_{probe.col}_{probe.channel}.html"
        self.render("probe.html", page, probe=probe, layer=lv, cards=self.gallery(node, probe.top), pattern=self.grid_pattern(node))
        return {"probe": probe, "page": page, "layer": lv}

    def render_index(self, chosen: list[dict], layers: list[dict], by_name: dict, probes: list[dict]) -> None:
        si, dataset = self.si, self.si.dataset
        class_sizes = collections.Counter(r.label for r in dataset.records)
        self.render(
            "index.html",
            "index.html",
            info=si.info,
            rows=si.info.nodes,
            layers=by_name,
            layer_views=layers,
            metrics=si.scan.metrics,
            classes=self.classes,
            class_sizes=[(name, class_sizes.get(i, 0)) for i, name in enumerate(self.classes)],
            dataset=dataset,
            data_label=si.data_label or str(dataset.root),
            num_images=si.scan.num_images,
            chosen=chosen,
            probes=probes,
            options=si.options,
            preprocessing=si.preprocessing,
            warnings=si.warnings,
            total_dead=sum(len(lv["dead"]) for lv in layers),
            total_units=sum(len(lv["units"]) for lv in layers),
        )


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
            "loss_note": info.loss_note or None,
            "format": info.file_format or None,
            "repairs": [r.as_dict() for r in info.repairs],
            "outputs": info.outputs,
            "head": info.head.as_dict() if info.head else None,
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
        "preprocessing": si.preprocessing.as_dict() if si.preprocessing else None,
        "warnings": list(si.warnings),
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
            {"path": img.path, "label": img.label, "prediction": img.prediction, "scores": [float(s) for s in np.ravel(img.scores)],
             "logits": img.raw_scores}
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
