"""`reportgen compare A B --out C`: two report folders on the same dataset, side by side.

Metrics and confusion with their deltas (B - A), the images whose prediction changed (fixed: wrong
in A and right in B; broken: the other way; and changed between two wrong classes), and when the
two models have the same layers (names and channels), per layer and per unit how much of a unit's
top K is the same images in both (|top A ∩ top B| / K). Reads only the two folders' report.json,
data/predictions.json and per-layer data files; no TensorFlow.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from reportgen import __version__
from reportgen.errors import UserError
from reportgen.report import to_json
from reportgen.site.names import slug

CHANGED_LISTED = 500  # images listed per kind of change


@dataclass
class Side:
    root: Path
    report: dict
    predictions: dict | None

    @property
    def name(self) -> str:
        return self.report["model"]["name"]


def _read(folder: Path, which: str) -> Side:
    folder = Path(folder)
    path = folder / "report.json"
    if not path.is_file():
        raise UserError(f"{folder}: not a reportgen site (no report.json); compare takes two folders written by reportgen build")
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise UserError(f"{path}: not valid JSON ({exc})") from None
    if report.get("schema_version") != 2:
        raise UserError(f"{path}: written by another reportgen version (schema {report.get('schema_version')}); rebuild it with this one")
    predictions = None
    name = (report.get("files") or {}).get("predictions")
    if name and (folder / name).is_file():
        predictions = json.loads((folder / name).read_text(encoding="utf-8"))
    return Side(folder, report, predictions)


def _read_js(path: Path) -> dict:
    text = path.read_text(encoding="utf-8")
    return json.loads(text[text.index("(") + 1 : text.rindex(")")])


def compare(a_dir: Path, b_dir: Path) -> dict:
    a, b = _read(a_dir, "A"), _read(b_dir, "B")
    da, db = a.report["dataset"], b.report["dataset"]
    if da["class_indices"] != db["class_indices"]:
        raise UserError(f"{a_dir} and {b_dir}: built on datasets with different classes; compare needs two reports on the same dataset")
    classes = list(da["class_indices"])
    ma, mb = a.report["metrics"], b.report["metrics"]

    def delta(x, y):
        return None if x is None or y is None else y - x

    metrics = {key: {"a": ma.get(key), "b": mb.get(key), "delta": delta(ma.get(key), mb.get(key))} for key in ("accuracy", "top5", "loss")}
    per_class = [{"class": c, "a": ma["per_class"].get(c), "b": mb["per_class"].get(c), "delta": delta(ma["per_class"].get(c), mb["per_class"].get(c))}
                 for c in classes]
    confusion = None
    if ma.get("confusion") is not None and mb.get("confusion") is not None:
        ca, cb = np.array(ma["confusion"]), np.array(mb["confusion"])
        confusion = {"a": ca.tolist(), "b": cb.tolist(), "delta": (cb - ca).tolist()}
    changes = _changed_predictions(a, b)
    layers = _unit_overlap(a, b)
    return {"generator": {"name": "reportgen", "version": __version__}, "a": {"root": str(a_dir), "model": a.name},
            "b": {"root": str(b_dir), "model": b.name}, "classes": classes, "metrics": metrics, "per_class": per_class,
            "confusion": confusion, "changes": changes, "layers": layers}


def _changed_predictions(a: Side, b: Side) -> dict | None:
    if a.predictions is None or b.predictions is None:
        return None
    pa = {row[0]: row for row in a.predictions["images"]}
    pb = {row[0]: row for row in b.predictions["images"]}
    fixed, broken, moved = [], [], []
    for path in sorted(set(pa) & set(pb)):
        ra, rb = pa[path], pb[path]
        label, before, after = ra[1], ra[2], rb[2]
        if label is None or before == after:
            continue
        row = {"image": path, "label": label, "a": before, "b": after, "a_confidence": ra[3], "b_confidence": rb[3]}
        if before != label and after == label:
            fixed.append(row)
        elif before == label and after != label:
            broken.append(row)
        else:
            moved.append(row)
    return {"common": len(set(pa) & set(pb)), "fixed_total": len(fixed), "broken_total": len(broken), "moved_total": len(moved),
            "fixed": fixed[:CHANGED_LISTED], "broken": broken[:CHANGED_LISTED], "moved": moved[:CHANGED_LISTED]}


def _unit_overlap(a: Side, b: Side) -> dict:
    la = [(layer["name"], layer["units"]) for layer in a.report["layers"]]
    lb = [(layer["name"], layer["units"]) for layer in b.report["layers"]]
    if la != lb:
        return {"match": False, "reason": "the two models do not have the same layers (names and channels)", "rows": []}
    images_a = _read_js(a.root / a.report["files"]["images"])["images"]
    images_b = _read_js(b.root / b.report["files"]["images"])["images"]
    rows = []
    for layer_a, layer_b in zip(a.report["layers"], b.report["layers"]):
        units_a = _read_js(a.root / layer_a["units_file"])["units"]
        units_b = _read_js(b.root / layer_b["units_file"])["units"]
        overlaps = []
        for ua, ub in zip(units_a, units_b):
            top_a = {images_a[str(e[0])][3] for e in ua["top"]}
            top_b = {images_b[str(e[0])][3] for e in ub["top"]}
            k = max(len(top_a), len(top_b), 1)
            overlaps.append(len(top_a & top_b) / k)
        values = np.array(overlaps) if overlaps else np.zeros(0)
        rows.append({"layer": layer_a["name"], "units": len(overlaps), "mean": float(values.mean()) if values.size else None,
                     "min": float(values.min()) if values.size else None, "overlap": [round(v, 4) for v in overlaps]})
    return {"match": True, "reason": "", "rows": rows}


def write_comparison(result: dict, out: Path, force: bool = False, keep: dict | None = None) -> tuple[int, int]:
    """compare.html (the overview), one page per layer with its units, compare.json; atomically."""
    from reportgen.site.pages import environment, static_files
    from reportgen.site.names import relative_url
    from reportgen.writer import SiteFolder

    env = environment()
    with SiteFolder(out, force, keep or {}) as site:
        for path, content in static_files().items():
            site.write(path, content)

        def render(template: str, page: str, **context) -> None:
            text = env.get_template(template).render(url=lambda target: relative_url(page, target), anchor=lambda n: n, page=page,
                                                     model_name=f"{result['a']['model']} vs {result['b']['model']}", footer_note="",
                                                     r=result, **context)
            site.write(page, text.encode("utf-8"))

        pages = {}
        for row in result["layers"]["rows"]:
            pages[row["layer"]] = f"layers/{slug(row['layer'])}.html"
            order = sorted(range(row["units"]), key=lambda c: (row["overlap"][c], c))
            render("compare_layer.html", pages[row["layer"]], row=row, order=order)
        render("compare.html", "index.html", pages=pages)
        site.write("compare.json", to_json(result))
        site.write(".nojekyll", b"")
        site.commit()
        return site.files, site.bytes
