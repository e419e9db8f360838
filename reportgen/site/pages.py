"""Render the site into a SiteFolder, file by file, as each is made (memory stays flat in the number
of units): static files, thumbnail sheets, per layer its heatmap atlases, data file, feature grids
and page, then probe pages, the index and report.json. Every link and anchor goes through
links.Links, so the link check needs no second read of the pages."""

from __future__ import annotations

import collections
import contextlib
import functools
import json
import logging
from dataclasses import dataclass
from importlib import resources

import jinja2
import markupsafe
import numpy as np

from reportgen import __version__
from reportgen.images import encode_thumbnail
from reportgen.site import data as site_data
from reportgen.images import confusion_picture, encode_png, heat_atlas
from reportgen.site.assets import HeatAtlases, drawn_ahead, grid_channels, write_feature_grid, write_thumbnail_sheets
from reportgen.site.links import Links
from reportgen.site.names import cell_page, class_page, content_path, layer_data, layer_page, probe_page, shape_text, slug, unit_address
from reportgen.site.views import IndexRow, LayerView, Pattern, cam_cards, cards, grid_view, group_rows, unit_lines
from reportgen.site.worker import LayerFiles

log = logging.getLogger("reportgen")

CONFUSION_TABLE = 20  # classes up to which the confusion matrix is a table; beyond, a picture
CLASS_TABLE = 50  # classes up to which the index lists every class at once; beyond, the 20 worst and best
ATLAS_IMAGES = 512  # class activation maps per atlas file
ERRORS_LISTED = 1000  # mistakes listed in report.json (all of them are in data/predictions.json)


def _template_source(name: str) -> str | None:
    """Templates ship inside the package as `reportgen.templates` (the top-level templates/ folder)."""
    item = resources.files("reportgen.templates").joinpath(*name.split("/"))
    return item.read_text(encoding="utf-8") if item.is_file() else None


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


def unit_items(lines, sheet_number: dict[str, int]) -> markupsafe.Markup:
    """A layer page's unit list (what shows without JavaScript), one <li> per unit. Formatted here, not
    in the template: a big model's layer has thousands of units, and Jinja's cost per expression made
    these lists most of the site's time. Its ids and #unit-N links are declared by Links.units."""
    items = []
    thumbs: dict[int, str] = {}  # each tile's span, made once: units share their best images
    for u in lines:
        thumb = thumbs.get(id(u.best)) if u.best else ""
        if thumb is None:
            thumb = thumbs[id(u.best)] = f'<span class="thumb s{sheet_number[u.best.sheet]}" style="background-position:{u.best.x}% {u.best.y}%"></span>'
        shown = '<span class="dead-tag">dead</span>' if u.dead else _num(u.max_value, 3)  # a number: nothing to escape
        items.append(f'<li class="unit{" dead" if u.dead else ""}" id="unit-{u.channel}"><a href="#unit-{u.channel}"><span class="frame">{thumb}</span>'
                     f'<b>{u.channel}</b> {shown}</a></li>\n')
    return markupsafe.Markup("".join(items))


def grid_links(tiles) -> markupsafe.Markup:
    """The clickable tiles over a feature-map grid, one <a> per channel (formatted here for the same
    reason as unit_items; declared by Links.units too)."""
    rounded: dict[float, float] = {}  # a grid's tiles share their columns, rows and size: round each value once

    def r(value: float) -> float:
        if value not in rounded:
            rounded[value] = round(value, 4)
        return rounded[value]

    return markupsafe.Markup("".join(
        f'<a class="tile{" dead" if t.dead else ""}" href="#unit-{t.channel}" aria-label="unit {t.channel}" '
        f'title="channel {t.channel}{" (constant on this image)" if t.dead else ""}" style="left: {r(t.left)}%; '
        f'top: {r(t.top)}%; width: {r(t.width)}%; height: {r(t.height)}%"></a>'
        for t in tiles))


@functools.lru_cache(maxsize=1)
def environment() -> jinja2.Environment:
    """One environment per process: its compiled templates are kept (the training callback renders
    the site every snapshot, and compiling the templates cost it a tenth of its time)."""
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
    env.filters["tojson_attr"] = lambda v: json.dumps(v, separators=(",", ":"))
    env.globals["version"] = __version__
    env.globals["grid_links"] = grid_links
    return env


def static_files() -> dict[str, bytes]:
    folder = resources.files("reportgen.templates") / "static"
    return {f"static/{item.name}": item.read_bytes() for item in sorted(folder.iterdir(), key=lambda i: i.name) if item.is_file()}


@dataclass
class SiteSummary:
    files: int
    bytes: int
    report: dict


class Renderer:
    """Renders one gathered report (report.ReportData) into a writer.SiteFolder."""

    def __init__(self, data, site) -> None:
        self.data = data
        self.site = site
        self.env = environment()
        self.links = Links()
        info = data.info
        shape = info.run_input_shape or info.input_shape  # the size it ran at (--input-size for unfixed inputs)
        self.input_hw = (int(shape[1]), int(shape[2]))
        self.classes = data.class_names or data.dataset.classes  # as shown (--class-names); report.json keeps the folders
        self.map_layers = [n for n in info.nodes if n.is_map]

    # -- helpers ---------------------------------------------------------------------------------

    def render(self, template: str, page: str, **context) -> None:
        links = self.links

        def url(target: str | None) -> str:
            return links.url(page, target) if target else ""

        def anchor(name) -> str:
            return links.anchor(page, str(name))

        text = self.env.get_template(template).render(
            url=url,
            anchor=anchor,
            page=page,
            model_name=self.data.info.name,
            footer_note=self.data.footer_note,
            input_hw=self.input_hw,
            **context,
        )
        self.site.write(page, text.encode("utf-8"))

    # -- the site --------------------------------------------------------------------------------

    def run(self) -> SiteSummary:
        data = self.data
        for path, content in static_files().items():
            self.site.write(path, content)
        explained = data.explained
        thumbnails = dict(data.scan.thumbnails)
        if explained:
            thumbnails.update(explained.thumbnails)
        self.tiles = write_thumbnail_sheets(self.site, thumbnails)
        self.class_pages = [class_page(i, name) for i, name in enumerate(self.classes)] if explained else []
        self.site.write("data/images.js", site_data.images_file(self.image_table()))
        chosen = self.chosen_views()
        atlases = HeatAtlases(self.site)
        rows: dict[str, IndexRow] = {n.name: IndexRow(n, None) for n in data.info.nodes}
        report_layers = []
        shown = {node.name: grid_channels(node, data.max_channels) for node in self.map_layers}
        jobs = ((img.maps[node.name], shown[node.name]) for node in self.map_layers for img in data.chosen)
        layer_files = LayerFiles(sum(data.scan.units[node.name].images.size for node in self.map_layers))
        # closing: their threads (and second process) end here, also on an error
        with contextlib.closing(drawn_ahead(jobs)) as grids, contextlib.closing(layer_files):
            for position, node in enumerate(self.map_layers):
                view, sparsity = self.layer(position, node, atlases, chosen, [next(grids) for _ in data.chosen], layer_files)
                units = data.scan.units[node.name]
                rows[node.name] = IndexRow(node, view.page, units.channels, int(units.dead.sum()), sparsity[0] if sparsity else None, view.rf)
                report_layers.append(site_data.layer_row(node, units, view.rf, sparsity, data.scan.ranked_as.get(node.name)))
                for path, content in layer_files.ready():
                    self.site.write(path, content)
            for path, content in layer_files.finish():
                self.site.write(path, content)
        probes = [self.probe(p) for p in data.scan.probes]
        shown_errors = []
        if explained:
            shown_errors = self.mistakes()
            self.site.write("data/predictions.json", site_data.predictions_file(data))
        self.confusion = self.confusion_assets()
        self.index(chosen, [rows[n.name] for n in data.info.nodes], probes)
        report = site_data.report_json(data, report_layers, shown_errors)
        self.site.write("report.json", report)
        self.site.write("summary.html", self.summary())
        if data.evolution is not None:
            self.evolution_page(report_layers)
        self.site.write(".nojekyll", b"")
        broken = self.links.broken(self.site.written)
        if broken:  # a bug of ours, not the user's: nothing is swapped in
            raise RuntimeError("the site has broken links:\n" + "\n".join(broken[:20]))
        return SiteSummary(self.site.files, self.site.bytes, json.loads(report))

    def image_table(self) -> dict:
        records = self.data.dataset.records
        sheets: list[str] = []
        images = {}
        for index, tile in sorted(self.tiles.items()):
            if tile.sheet not in sheets:
                sheets.append(tile.sheet)
            rec = records[index]
            images[str(index)] = [sheets.index(tile.sheet), tile.col, tile.row, rec.rel, rec.label]
        first = next(iter(self.tiles.values()), None)
        sheet_sizes = {}
        for tile in self.tiles.values():
            sheet_sizes[tile.sheet] = [tile.columns, tile.rows]
        return {"classes": self.classes, "class_pages": self.class_pages, "sheets": sheets, "sheet_tiles": [sheet_sizes[s] for s in sheets],
                "input_hw": list(self.input_hw), "images": images, "columns": first.columns if first else 0}

    def chosen_views(self) -> list[dict]:
        views = []
        explained = self.data.explained
        atlas = None
        if explained and explained.chosen_cams:
            atlas = self.cam_atlas("chosen", np.stack(explained.chosen_cams))
        for i, img in enumerate(self.data.chosen):
            content, ext = encode_thumbnail(img.pixels)
            cam = None
            if atlas:
                predicted, true = explained.chosen_targets[i]
                cam = {"atlas": atlas, "row": i, "rows": len(self.data.chosen), "predicted": self.classes[predicted],
                       "true": self.classes[true] if img.label is not None else None}
            views.append({
                "number": i + 1, "path": img.path, "label": img.label, "prediction": img.prediction,
                "thumb": self.site.write(content_path("img", content, ext), content), "cam": cam,
            })
        return views

    def evolution_page(self, report_layers) -> None:
        """evolution.html: metrics, top-K overlap with the previous snapshot and dead units, per epoch."""
        evolution = self.data.evolution
        snaps = evolution.snapshots
        layers = [row["name"] for row in report_layers]
        rows = [{"name": name, "page": layer_page(name),
                 "overlap": [evolution.overlap(name, i) for i in range(len(snaps))],
                 "dead": [s.dead.get(name) for s in snaps]} for name in layers]
        keys = sorted({k for s in snaps for k in s.logs})
        self.render("evolution.html", "evolution.html", snapshots=snaps, rows=rows, keys=keys)

    def summary(self) -> bytes:
        """summary.html: the report in one file (site/summary.py)."""
        from reportgen.site.summary import summary_html

        matrix = self.data.scan.metrics.confusion
        picture = encode_png(confusion_picture(np.asarray(matrix))) if matrix and len(self.classes) > CONFUSION_TABLE else None
        css = static_files()["static/style.css"].decode("utf-8")
        return summary_html(self.data, self.env, self.classes, css, picture)

    def confusion_assets(self) -> dict | None:
        """Beyond CONFUSION_TABLE classes: the matrix as a picture, its non-zero cells for the page's
        script, and the most confused pairs."""
        matrix = self.data.scan.metrics.confusion
        if not matrix or len(self.classes) <= CONFUSION_TABLE:
            return None
        m = np.asarray(matrix)
        picture = encode_png(confusion_picture(m))
        path = self.site.write(content_path("img", picture, "png", "confusion"), picture)
        rows, cols = np.nonzero(m)
        cells = [[int(r), int(c), int(m[r, c])] for r, c in zip(rows, cols)]
        self.site.write("data/confusion.js", site_data.js_call("confusion", {"classes": self.classes, "cells": cells, "pages": "mistakes/{t}-{p}.html"}))
        off = [(int(m[r, c]), int(r), int(c)) for r, c in zip(rows, cols) if r != c]
        pairs = sorted(off, key=lambda x: (-x[0], x[1], x[2]))[:20]
        return {"picture": path, "size": len(self.classes), "pairs": [{"count": n, "true": r, "predicted": c} for n, r, c in pairs]}

    def cam_atlas(self, stem: str, cams: np.ndarray) -> str:
        """Class activation maps [n, 2, h, w] (predicted class, true class) as one grey atlas."""
        data = encode_png(heat_atlas(cams))
        return self.site.write(content_path("cams", data, "png", stem), data)

    def mistakes(self) -> list[dict]:
        """A page per confusion cell and per class; returns the mistakes shown (for report.json)."""
        data, explained = self.data, self.data.explained
        galleries, records, p = explained.galleries, data.dataset.records, explained.predictions
        cam_layer = explained.cam_layer
        shown_errors = []
        matrix = data.scan.metrics.confusion or []
        cam_tiles = self.cam_tiles()
        for (t, q), gallery in sorted(galleries.cells.items()):
            self.render("cell.html", cell_page(t, q), row_class=t, column_class=q, gallery=gallery, cam_layer=cam_layer,
                        cards=cam_cards(gallery.images, explained, records, self.classes, self.tiles, cam_tiles),
                        class_pages=self.class_pages, classes=self.classes)
            if t != q:
                folders = data.dataset.classes
                shown_errors += [{"image": records[i].rel, "label": folders[t], "predicted": folders[q],
                                  "confidence": float(p.confidence[i])} for i in gallery.images]
        units = self.contributing_units()
        for c, name in enumerate(self.classes):
            most, least = galleries.most.get(c), galleries.least.get(c)
            row = matrix[c] if c < len(matrix) else []
            predicted_as = sorted(((q, int(v)) for q, v in enumerate(row) if v), key=lambda qv: (-qv[1], qv[0]))
            self.render("class.html", self.class_pages[c], index=c, name=name, classes=self.classes, row=row, predicted_as=predicted_as,
                        top5=data.scan.metrics.per_class_top5.get(data.dataset.classes[c]),
                        cells={q: cell_page(c, q) for q in range(len(self.classes)) if (c, q) in galleries.cells},
                        accuracy=data.scan.metrics.per_class.get(name), count=int(sum(row)) if row else 0, cam_layer=cam_layer,
                        most=cam_cards(most.images, explained, records, self.classes, self.tiles, cam_tiles) if most else [],
                        least=cam_cards(least.images, explained, records, self.classes, self.tiles, cam_tiles) if least else [],
                        units=units.get(c, []), relevance=explained.relevance is not None)
        shown_errors.sort(key=lambda e: -e["confidence"])  # the most confident mistakes first
        return shown_errors[:ERRORS_LISTED]

    def cam_tiles(self) -> dict[int, tuple[str, int, int]]:
        """Every shown image's class activation maps, in a few shared atlases: image -> (atlas, row, rows)."""
        cams = self.data.explained.cams
        order = sorted(cams)
        tiles = {}
        for start in range(0, len(order), ATLAS_IMAGES):
            block = order[start : start + ATLAS_IMAGES]
            path = self.cam_atlas("cams", np.stack([cams[i] for i in block]))
            tiles.update({image: (path, row, len(block)) for row, image in enumerate(block)})
        return tiles

    def contributing_units(self, per_class: int = 24) -> dict[int, list[dict]]:
        """Per class, the units with the largest mean contribution to it (--relevance), over every layer."""
        relevance = self.data.explained.relevance
        if not relevance:
            return {}
        names = list(relevance)
        stacked = np.concatenate([relevance[n].by_class for n in names])  # [units, classes]
        owners = [(n, c) for n in names for c in range(relevance[n].by_class.shape[0])]
        out = {}
        for k in range(stacked.shape[1]):
            order = np.argsort(-stacked[:, k], kind="stable")[:per_class]
            rows = []
            for u in order:
                if stacked[u, k] <= 0:
                    break
                layer, channel = owners[u]
                units = self.data.scan.units[layer]
                best = int(units.images[channel, 0])
                rows.append({"layer": layer, "channel": channel, "value": float(stacked[u, k]), "address": unit_address(layer, channel),
                             "best": self.tiles.get(best) if best >= 0 else None})
            out[k] = rows
        return out

    def layer(self, position: int, node, atlases: HeatAtlases, chosen: list[dict], drawn: list,
              layer_files: LayerFiles) -> tuple[LayerView, list[float]]:
        """drawn: the layer's feature grid of each chosen image (assets.DrawnGrid); its data file is
        submitted to layer_files (written when it is made)."""
        data = self.data
        units = data.scan.units[node.name]
        rf = data.fields[node.name]
        heat = atlases.write_layer(units)
        relevance = data.explained.relevance.get(node.name) if data.explained and data.explained.relevance else None
        evolution = None
        if data.evolution is not None:
            snaps = data.evolution.snapshots
            body = {"epochs": [s.epoch for s in snaps], "top": [[s.top[node.name][c][s.top[node.name][c] >= 0].tolist() for s in snaps]
                                                              for c in range(node.channels)]}
            evolution = f"data/evolution-{slug(node.name)}.js"
            self.site.write(evolution, site_data.js_call("evolution", body))
        layer_files.submit(layer_data(node.name), node=node, units=units, rf=rf, heat=heat, input_hw=self.input_hw, top_k=data.top_k,
                           relevance=relevance, ranked_as=data.scan.ranked_as.get(node.name))
        grids, sparsity = [], []
        for grid, view in zip(drawn, chosen):
            picture = write_feature_grid(self.site, node, grid)
            grids.append(grid_view(view["number"], view["path"], picture))
            sparsity.append(picture.sparsity)
        maps = self.map_layers
        lines = unit_lines(units, self.tiles)
        view = LayerView(
            node=node, page=layer_page(node.name), data_file=layer_data(node.name), rf=rf, pattern=Pattern.of(node, self.input_hw),
            units=lines, dead=[u.channel for u in lines if u.dead], grids=grids,
            prev=layer_page(maps[position - 1].name) if position > 0 else None,
            next=layer_page(maps[position + 1].name) if position + 1 < len(maps) else None,
            ranked_as=data.scan.ranked_as.get(node.name),
            ranked_as_page=layer_page(data.scan.ranked_as[node.name]) if node.name in data.scan.ranked_as else None,
        )
        sheets = sorted({u.best.sheet for u in lines if u.best})
        sizes = {t.sheet: (t.columns, t.rows) for t in (u.best for u in lines if u.best)}
        self.links.units(view.page, [u.channel for u in lines])  # ids and #unit-N links written by unit_items and the template
        for grid in grids:
            self.links.units(view.page, [t.channel for t in grid.tiles])
        self.render("layer.html", view.page, layer=view, max_channels=data.max_channels, top_k=data.top_k, sheets=sheets, sheet_sizes=sizes,
                    unit_items=unit_items(lines, {sheet: i for i, sheet in enumerate(sheets)}), evolution=evolution)
        return view, sparsity

    def probe(self, probe) -> dict:
        data = self.data
        node = next(n for n in self.map_layers if n.name == probe.layer)
        page = probe_page(probe.layer, probe.row, probe.col, probe.channel)
        gallery = cards(probe.top, data.dataset.records, self.classes, self.tiles, data.fields[node.name], self.input_hw, node)
        self.render("probe.html", page, probe=probe, node=node, layer_page=layer_page(node.name), rf=data.fields[node.name],
                    cards=gallery, pattern=Pattern.of(node, self.input_hw))
        return {"probe": probe, "page": page}

    def index(self, chosen: list[dict], rows: list[IndexRow], probes: list[dict]) -> None:
        data, dataset = self.data, self.data.dataset
        class_sizes = collections.Counter(r.label for r in dataset.records)
        map_rows = [r for r in rows if r.page]
        jump = {r.node.name: {"page": r.page, "units": r.units} for r in map_rows}
        self.render(
            "index.html",
            "index.html",
            info=data.info,
            groups=group_rows(rows),
            metrics=data.scan.metrics,
            classes=self.classes,
            class_sizes=[(name, class_sizes.get(i, 0)) for i, name in enumerate(self.classes)],
            dataset=dataset,
            skipped=data.scan.skipped,
            data_label=data.data_label or str(dataset.root),
            num_images=data.scan.num_images,
            chosen=chosen,
            probes=probes,
            options=data.options,
            preprocessing=data.preprocessing,
            warnings=data.warnings,
            total_dead=sum(r.dead for r in map_rows),
            total_units=sum(r.units for r in map_rows),
            map_layers=len(map_rows),
            jump=jump,
            heat_side=data.scan.heat_side,
            explained=data.explained,
            class_pages=self.class_pages,
            cell_pages={key: cell_page(*key) for key in (data.explained.galleries.cells if data.explained else {})},
            evolution=data.evolution is not None,
            confusion=self.confusion,
            class_rows=self.class_rows(class_sizes),
            many=len(self.classes) > CLASS_TABLE,
        )

    def class_rows(self, class_sizes) -> list[dict]:
        metrics = self.data.scan.metrics
        folders = self.data.dataset.classes
        return [{"index": i, "name": self.classes[i], "folder": folders[i], "images": class_sizes.get(i, 0),
                 "accuracy": metrics.per_class.get(folders[i]), "top5": metrics.per_class_top5.get(folders[i]),
                 "page": self.class_pages[i] if self.class_pages else None} for i in range(len(folders))]


def render_site(data, site, summary_only: bool = False) -> SiteSummary:
    """Write every file of the site for `data` (report.ReportData) into `site` (writer.SiteFolder);
    with summary_only, only summary.html."""
    renderer = Renderer(data, site)
    if summary_only:
        site.write("summary.html", renderer.summary())
        return SiteSummary(site.files, site.bytes, json.loads(site_data.report_json(data, [], [])))
    return renderer.run()
