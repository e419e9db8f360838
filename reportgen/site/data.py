"""The site's data, built from the stages' dataclasses (never from the page views):

    report.json         a summary (model, preprocessing, dataset, metrics, layers, probes), under 1 MB
                        for any model; it points to the per-layer files
    data/<layer>.js     every unit of one layer: top K (image, score, row, col), histogram, heatmap
                        tile; JSON wrapped as `reportgen.layer(<JSON>);` so that pages load it with
                        <script src> (which works from file://, where fetch() does not)
    data/images.js      every image some gallery shows: its thumbnail sheet and tile, path and class,
                        as `reportgen.images(<JSON>);`

Scores are float32 printed with 9 significant digits, which reads back to the same float32.
The schema is reportgen/site/schema/report.schema.json (SCHEMA_VERSION).
"""

from __future__ import annotations

import json
import math

import numpy as np

from reportgen import __version__
from reportgen.report import LayerUnits, ReceptiveField, to_json
from reportgen.site.names import layer_data, layer_page, probe_page

SCHEMA_VERSION = 2
JS_PREFIX = {"layer": "reportgen.layer(", "images": "reportgen.images("}
JS_SUFFIX = ");\n"


def read_js_json(text: str) -> dict:
    """The JSON inside a data/*.js file (for scripts that read the site)."""
    start, end = text.index("(") + 1, text.rindex(")")
    return json.loads(text[start:end])


def _f32(values: np.ndarray) -> list[str]:
    """Each value as float32 and back, in 9 significant digits (enough to read the float32 back
    exactly), flat. One % over all of them, then split: a call per value costs more than the
    formatting (np.char.mod formats element by element, slower still)."""
    flat = np.asarray(values, dtype=np.float32).astype(np.float64).reshape(-1).tolist()
    return (("%.9g," * len(flat)) % tuple(flat)).split(",")[:-1] if flat else []


def _first_entries(line: str, n: int) -> str:
    """The first n entries of a line "[...],[...],..." (a unit with fewer images than K: the rest are empty slots)."""
    return "],[".join(line.split("],[")[:n]) + "]" if n else ""


def _compact(value) -> str:
    return json.dumps(value, separators=(",", ":"))


def _js(kind: str, body: str) -> bytes:
    return (JS_PREFIX[kind] + body + JS_SUFFIX).encode("utf-8")


def js_call(kind: str, data) -> bytes:
    """A data file for pages: `reportgen.<kind>(<JSON>);`."""
    return (f"reportgen.{kind}(" + json.dumps(data, separators=(",", ":"), ensure_ascii=False) + JS_SUFFIX).encode("utf-8")


def rf_data(rf: ReceptiveField) -> dict:
    data = {"exact": rf.exact, "size": list(rf.size), "stride": list(rf.stride), "offset": list(rf.offset), "note": rf.note or None}
    if rf.reads is not None:
        data["rows"], data["cols"] = rf.reads  # per position [lo, hi) of input pixels really read; null: padding only
    return data


def _clean_reads(value):
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, list):
        return [_clean_reads(v) for v in value]
    return value


def layer_file(node, units: LayerUnits, rf: ReceptiveField, heat: dict, input_hw: tuple[int, int], top_k: int, relevance=None,
               ranked_as: str | None = None) -> bytes:
    """data/<layer>.js. heat: {"shape": [h, w], "atlases": [path], "tiles": [[atlas, row] per channel]};
    relevance: engines.explain.LayerRelevance (--relevance) or None; ranked_as: the earlier layer
    whose units' top K this layer's units show (ScanResult.ranked_as)."""
    head = {
        "schema_version": SCHEMA_VERSION,
        "layer": node.name,
        "type": node.type,
        "output_shape": list(node.output_shape),
        "page": layer_page(node.name),
        "input_hw": list(input_hw),
        "top_k": top_k,
        "receptive_field": _clean_reads(rf_data(rf)),
        "heat": {"shape": heat["shape"], "atlases": heat["atlases"], "floor": 80},
        "ranked_as": ranked_as,
    }
    values = _f32(units.values)  # flat: unit c's j-th at c * k + j
    hist_hi = [repr(h) if math.isfinite(h) else json.dumps(h) for h in units.hist_hi.tolist()]  # json.dumps' text, without its cost per call
    if relevance is not None:
        rel_values = _f32(relevance.values)
        head["relevance"] = "per unit: top = images ranked by the unit's contribution to their predicted class; drives = [class, mean contribution]"
    k = units.images.shape[1]
    # Text made in a few C-level passes over flat lists, not per entry (ResNet50: 1.5 million
    # entries, 2.9 million histogram counts): each unit's top K as one line of a single %-format
    # over every (image, score, row, col), split at the line ends; the histograms' counts (their
    # trailing zeros dropped) by one JSON encoding of all of them, split between units.
    entries = np.empty((units.images.size, 4), dtype=object)
    entries[:, 0], entries[:, 1], entries[:, 2], entries[:, 3] = (units.images.reshape(-1).tolist(), values, units.rows.reshape(-1).tolist(),
                                                                  units.cols.reshape(-1).tolist())
    tops = (((",".join(["[%d,%s,%d,%d]"] * k) + "\n") * units.channels) % tuple(entries.reshape(-1).tolist())).split("\n")
    filled = (units.images >= 0).sum(axis=1).tolist()
    counts = units.hist_counts
    kept = counts.shape[1] - np.argmax(counts[:, ::-1] != 0, axis=1) if counts.shape[1] else np.zeros(units.channels, np.int64)
    kept = np.where(counts.any(axis=1), kept, 0).tolist()
    histograms = _compact([row[:n] for row, n in zip(counts.tolist(), kept)])[2:-2].split("],[")
    dead, nonpositive = units.dead.tolist(), units.hist_nonpositive.tolist()
    parts = []
    for c in range(units.channels):
        n = filled[c]
        top = tops[c] if n == k else _first_entries(tops[c], n)
        tile = heat["tiles"][c]
        extra = ""
        if relevance is not None:
            m = int((relevance.images[c] >= 0).sum())
            rel_k = relevance.images.shape[1]
            rel_top = ",".join(f"[{int(relevance.images[c, j])},{rel_values[c * rel_k + j]},{int(relevance.rows[c, j])},{int(relevance.cols[c, j])}]"
                               for j in range(m))
            means = relevance.by_class[c]
            drives = [[int(k), float(f"{means[k]:.6g}")] for k in np.argsort(-means, kind="stable")[:5] if means[k] > 0]
            extra = f',"relevance":{{"top":[{rel_top}],"drives":{_compact(drives)}}}'
        parts.append(
            f'{{"channel":{c},"max":{values[c * k] if n else "null"},"dead":{"true" if dead[c] else "false"},'
            f'"top":[{top}],"heat":[{",".join(map(str, tile))}],'  # ints: as json.dumps writes them, without its cost per call
            f'"histogram":{{"nonpositive":{nonpositive[c]},"hi":{hist_hi[c]},"counts":[{histograms[c]}]}}{extra}}}'
        )
    body = json.dumps(head, separators=(",", ":"))[:-1] + ',"units":[\n' + ",\n".join(parts) + "]}"
    return _js("layer", body)


def images_file(table: dict) -> bytes:
    """data/images.js: {"tile": [w, h], "columns": n, "sheets": [...], "classes": [...], "images": {index: [sheet, slot, path, class]}}."""
    return _js("images", json.dumps(table, separators=(",", ":"), ensure_ascii=False))


def predictions_file(data) -> bytes:
    """data/predictions.json: every image's prediction (the pages do not need it; scripts do)."""
    p, records, classes = data.explained.predictions, data.dataset.records, data.dataset.classes
    rows = []
    for i in np.nonzero(p.read)[0]:
        top = [[classes[int(k)], float(f"{v:.6g}")] for k, v in zip(p.top[i], p.top_scores[i]) if k >= 0]
        label = int(p.labels[i])
        rows.append([records[i].rel, classes[label] if label >= 0 else None, classes[int(p.predicted[i])],
                     float(f"{p.confidence[i]:.6g}"), float(f"{p.true_score[i]:.6g}") if label >= 0 else None, top])
    body = {"columns": ["path", "label", "predicted", "confidence", "true_class_probability", "top"], "classes": classes, "images": rows}
    return (json.dumps(body, separators=(",", ":"), ensure_ascii=False) + "\n").encode("utf-8")


def report_json(data, layer_rows: list[dict], errors: list[dict] | None = None) -> bytes:
    """report.json from the gathered data. layer_rows: per map layer, the numbers computed while
    writing its files (sparsity of the chosen images, dead units); errors: the mistakes the pages show."""
    info, dataset, scan = data.info, data.dataset, data.scan
    records = dataset.records
    m = scan.metrics

    def top(entries) -> list[dict]:
        return [{"image": records[e.image].rel, "value": e.value, "row": e.row, "col": e.col} for e in entries]

    return to_json(
        {
            "schema_version": SCHEMA_VERSION,
            "generator": {"name": "reportgen", "version": __version__},
            "options": data.options,
            "config": data.config,
            "model": {
                "name": info.name,
                "path": info.path,
                "format": info.file_format or None,
                "input_shape": list(info.input_shape),
                "total_params": info.total_params,
                "trainable_params": info.trainable_params,
                "non_trainable_params": info.non_trainable_params,
                "loss": info.loss_name,
                "loss_note": info.loss_note or None,
                "repairs": [r.as_dict() for r in info.repairs],
                "outputs": info.outputs,
                "head": info.head.as_dict() if info.head else None,
                "layers": [
                    {"name": n.name, "type": n.type, "output_shape": list(n.output_shape), "params": n.params, "parent": n.parent}
                    for n in info.nodes
                ],
            },
            "preprocessing": data.preprocessing.as_dict() if data.preprocessing else None,
            "warnings": list(data.warnings),
            "dataset": {
                "root": data.data_label or str(dataset.root),
                "class_indices": dataset.class_indices,
                "class_names": dict(zip(dataset.classes, data.class_names)) if data.class_names and data.class_names != dataset.classes else None,
                "num_images": scan.num_images,
                "num_files": len(records),
                "skipped": [{"path": s.path, "reason": s.reason} for s in scan.skipped],
                "ignored": [{"path": s.path, "reason": s.reason} for s in dataset.ignored],
            },
            "metrics": {
                "accuracy": m.accuracy,
                "top5": m.top5,
                "loss": m.loss,
                "per_class": m.per_class,
                "per_class_top5": m.per_class_top5 or None,
                "confusion": m.confusion if m.confusion is None or len(m.confusion) <= 100 else None,
                "confusion_cells": _cells(m.confusion) if m.confusion is not None and len(m.confusion) > 100 else None,
                "evaluated": m.evaluated,
                "mode": m.mode,
                "note": m.note or None,
            },
            "images": [
                {"path": img.path, "label": img.label, "prediction": img.prediction, "scores": [float(s) for s in np.ravel(img.scores)],
                 "logits": img.raw_scores}
                for img in data.chosen
            ],
            "files": {"images": "data/images.js", "format": "data/*.js hold JSON as reportgen.layer(<JSON>); / reportgen.images(<JSON>);",
                      "predictions": "data/predictions.json" if data.explained else None},
            "explain": None if not data.explained else {
                "cam_layer": data.explained.cam_layer,
                "relevance": data.explained.relevance is not None,
                "errors_total": data.explained.galleries.errors_total,
                "errors_shown": len(errors or []),
            },
            "errors": errors or [],
            "layers": layer_rows,
            "probes": [
                {"layer": p.layer, "row": p.row, "col": p.col, "channel": p.channel, "page": probe_page(p.layer, p.row, p.col, p.channel),
                 "top": top(p.top)}
                for p in scan.probes
            ],
        }
    )


def _cells(matrix) -> list[list[int]]:
    """The non-zero cells of a confusion matrix: [true, predicted, count]."""
    m = np.asarray(matrix)
    rows, cols = np.nonzero(m)
    return [[int(r), int(c), int(m[r, c])] for r, c in zip(rows, cols)]


def layer_row(node, units: LayerUnits, rf: ReceptiveField, sparsity: list[float], ranked_as: str | None = None) -> dict:
    """A map layer's line in report.json; its units are in `units_file`. ranked_as: the earlier layer
    whose units' top K (images, positions, heatmaps) its units show, with their own scores."""
    return {
        "name": node.name,
        "type": node.type,
        "output_shape": list(node.output_shape),
        "page": layer_page(node.name),
        "units_file": layer_data(node.name),
        "units": units.channels,
        "dead_units": int(units.dead.sum()),
        "sparsity": sparsity[0] if sparsity else None,
        "sparsity_per_image": sparsity,
        "receptive_field": {k: v for k, v in rf_data(rf).items() if k not in ("rows", "cols")},
        "ranked_as": ranked_as,
    }
