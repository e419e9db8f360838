"""summary.html: the report in one self-contained file, for places that show a single HTML file in a
sandboxed frame (MLflow's and W&B's artifact viewers, a notebook's output): CSS inline, every image
a data: URI, no script, no request of any kind.

What it holds: the model summary, the evaluation and confusion matrix, the chosen image's feature
maps (the first SUMMARY_CHANNELS channels of up to SUMMARY_LAYERS layers), and the top images of
the SUMMARY_UNITS most class-selective units (the units whose top K is most of one class; without
labels, the most active units). The budget that keeps it small: those three caps, thumbnails of at
most 160 pixels a side, and feature maps drawn at their own size (at least 48 pixels a side).
"""

from __future__ import annotations

import base64
from dataclasses import dataclass

import numpy as np

from reportgen.images import GRID_PALETTE, encode_png, encode_thumbnail, feature_grid

SUMMARY_LAYERS = 24
SUMMARY_CHANNELS = 8
SUMMARY_UNITS = 12
SUMMARY_IMAGES = 8  # top images shown per unit


def data_uri(data: bytes, ext: str) -> str:
    mime = {"png": "image/png", "jpg": "image/jpeg"}[ext]
    return f"data:{mime};base64," + base64.b64encode(data).decode("ascii")


@dataclass
class SummaryUnit:
    layer: str
    channel: int
    max_value: float
    purity: float  # share of its top images in its most common class (0 without labels)
    main_class: str | None
    images: list[dict]  # {"uri", "path", "label", "value"}


def selective_units(data, classes: list[str], count: int = SUMMARY_UNITS) -> list[SummaryUnit]:
    records = data.dataset.records
    thumbnails = data.scan.thumbnails
    found = []
    labels = np.array([r.label if r.label is not None else -1 for r in records] or [-1])
    classes_seen = max(int(labels.max()) + 1, 1)
    for layer, units in data.scan.units.items():
        # per unit, the most common class among its top images (the smaller class on a tie), counted for all units at once
        valid = units.images >= 0
        top_labels = np.where(valid, labels[np.where(valid, units.images, 0)], -1)
        labelled = top_labels >= 0
        flat = (np.arange(units.channels)[:, None] * classes_seen + top_labels)[labelled]
        counts = np.bincount(flat, minlength=units.channels * classes_seen).reshape(units.channels, classes_seen)
        main, most = counts.argmax(axis=1), counts.max(axis=1)
        purity = most / np.maximum(valid.sum(axis=1), 1)
        has_label = labelled.any(axis=1)
        for c in np.nonzero(~units.dead)[0].tolist():
            found.append((float(purity[c]) if has_label[c] else 0.0, float(units.values[c, 0]), layer, c,
                          int(main[c]) if has_label[c] else None))
    found.sort(key=lambda f: (-f[0], -f[1], f[2], f[3]))
    chosen = []
    for purity, value, layer, c, main in found[:count]:
        units = data.scan.units[layer]
        images = []
        for j in range(min(SUMMARY_IMAGES, units.images.shape[1])):
            i = int(units.images[c, j])
            if i < 0 or i not in thumbnails:
                continue
            thumb = thumbnails[i]
            label = records[i].label
            images.append({"uri": data_uri(thumb.data, thumb.ext), "path": records[i].rel,
                           "label": classes[label] if label is not None else None, "value": float(units.values[c, j])})
        chosen.append(SummaryUnit(layer, c, value, purity, classes[main] if main is not None else None, images))
    return chosen


def feature_maps(data) -> list[dict]:
    """The first chosen image's first channels, for up to SUMMARY_LAYERS layers evenly spread."""
    if not data.chosen:
        return []
    layers = [n for n in data.info.nodes if n.is_map]
    if len(layers) > SUMMARY_LAYERS:
        picks = np.linspace(0, len(layers) - 1, SUMMARY_LAYERS).round().astype(int)
        layers = [layers[i] for i in sorted(set(picks.tolist()))]
    out = []
    image = data.chosen[0]
    for node in layers:
        maps = image.maps[node.name][:, :, :SUMMARY_CHANNELS]
        grid, layout = feature_grid(maps, columns=SUMMARY_CHANNELS)
        out.append({"name": node.name, "type": node.type, "shape": node.output_shape, "shown": maps.shape[-1],
                    "uri": data_uri(encode_png(grid, palette=GRID_PALETTE), "png"), "width": layout.width, "height": layout.height})
    return out


def summary_html(data, env, classes: list[str], css: str, confusion_picture: bytes | None) -> bytes:
    chosen = []
    for img in data.chosen:
        content, ext = encode_thumbnail(img.pixels)
        chosen.append({"path": img.path, "label": img.label, "prediction": img.prediction, "uri": data_uri(content, ext)})
    text = env.get_template("summary.html").render(
        data=data, info=data.info, metrics=data.scan.metrics, classes=classes, css=css, chosen=chosen,
        maps=feature_maps(data), units=selective_units(data, classes), confusion_uri=data_uri(confusion_picture, "png") if confusion_picture else None,
        num_images=data.scan.num_images, data_label=data.data_label, explained=data.explained,
        summary_channels=SUMMARY_CHANNELS,
    )
    return text.encode("utf-8")
