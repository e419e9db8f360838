"""Hand-made gathered data (report.ReportData) for render tests: no TensorFlow, no model, no pass.

`tiny_report()` is the gold test's input: two map layers, six 8x8 images, fixed numbers.
`report_like(nodes, fields, ...)` fills any layer structure (e.g. ResNet50's, traced once) with
random but valid top-K lists, heatmaps, histograms and thumbnails, for browser tests of big sites.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from reportgen.dataset import Dataset, ImageRecord, Skipped
from reportgen.images import heat_shape, make_thumbnail
from reportgen.model.head import OutputHead
from reportgen.model.preprocess import make_preprocessing
from reportgen.model.repair import AppliedRepair
from reportgen.receptive import receptive_fields
from reportgen.report import (
    ChosenImage,
    Geometry,
    LayerNode,
    LayerUnits,
    Metrics,
    ModelInfo,
    ProbeResult,
    ReportData,
    ScanResult,
    TopEntry,
)


def _images(n: int, hw: tuple[int, int], seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (hw[0], hw[1], 3), dtype=np.uint8) for _ in range(n)]


def _layer_units(node: LayerNode, n_images: int, k: int, heat_shape: tuple[int, int], rng) -> LayerUnits:
    c = node.channels
    h, w = node.spatial
    k_used = min(k, n_images)
    images = np.stack([rng.permutation(n_images)[:k_used] for _ in range(c)]).astype(np.int64)
    values = -np.sort(-rng.gamma(2.0, 1.0, (c, k_used)).astype(np.float32), axis=1)
    values[c // 5 :: 7] = 0.0  # some dead units
    pad = k - k_used
    if pad:
        images = np.concatenate([images, np.full((c, pad), -1)], axis=1)
        values = np.concatenate([values, np.full((c, pad), -np.inf, np.float32)], axis=1)
    heat = rng.integers(0, 256, (c, k, *heat_shape), dtype=np.uint8)
    heat[values[:, 0] <= 0] = 0
    counts = rng.integers(0, 5, (c, 32))
    return LayerUnits(
        layer=node.name, values=values, images=images,
        rows=rng.integers(0, h, (c, k)).astype(np.int32), cols=rng.integers(0, w, (c, k)).astype(np.int32),
        heat=heat, hist_counts=counts, hist_hi=np.full(c, 8.0), hist_nonpositive=rng.integers(0, 3, c),
    )


def report_like(nodes: list[LayerNode], input_hw: tuple[int, int], *, classes=("cats", "dogs"), n_images: int = 24,
                top_k: int = 8, seed: int = 0, heat_side: int = 6, chosen_maps: bool = True, name: str = "model",
                ranked_as: dict | None = None) -> ReportData:
    """Random but valid data for a given layer structure (ranked_as: ScanResult.ranked_as)."""
    rng = np.random.default_rng(seed)
    root = Path("data")
    per_class = n_images // len(classes)
    records = [ImageRecord(i, root / classes[i // per_class % len(classes)] / f"img_{i:03d}.png",
                           f"{classes[i // per_class % len(classes)]}/img_{i:03d}.png", i // per_class % len(classes))
               for i in range(n_images)]
    dataset = Dataset(root=root, classes=list(classes), records=records)
    pictures = _images(n_images, input_hw, seed)
    maps = [n for n in nodes if n.is_map]
    units = {n.name: _layer_units(n, n_images, top_k, heat_shape(n.spatial, heat_side), rng) for n in maps}
    confusion = [[per_class - 1, 1], [2, per_class - 2]] if len(classes) == 2 else np.eye(len(classes), dtype=int).tolist()
    total = sum(map(sum, confusion))
    metrics = Metrics(accuracy=float(np.trace(np.array(confusion)) / total), loss=0.4321, per_class={c: 0.9 for c in classes},
                      confusion=confusion, note="", evaluated=total, mode="binary" if len(classes) == 2 else "categorical")
    probes = [ProbeResult(maps[-1].name, 0, 0, 0, [TopEntry(i, 1.0 - i / 10, 0, 0) for i in range(3)])]
    scan = ScanResult(units=units, probes=probes, metrics=metrics, num_images=n_images - 1,
                      skipped=[Skipped("dogs/broken.jpg", "corrupt or truncated image (test)")],
                      thumbnails={i: make_thumbnail(p) for i, p in enumerate(pictures)}, heat_side=heat_side, ranked_as=dict(ranked_as or {}))
    chosen = [ChosenImage(path=records[0].rel, label=classes[0], scores=[0.25], prediction=f"{classes[0]} (output 0.250)",
                          pixels=pictures[0],
                          maps={n.name: rng.normal(size=(*n.spatial, n.channels)).astype(np.float32) if chosen_maps else
                                np.zeros((*n.spatial, n.channels), np.float32) for n in maps})]
    info = ModelInfo(name=name, path=f"{name}.keras", input_shape=(None, *input_hw, 3), total_params=sum(n.params for n in nodes),
                     trainable_params=sum(n.params for n in nodes), non_trainable_params=0, nodes=nodes, num_outputs=1,
                     loss_name="binary_crossentropy", head=OutputHead("out", 1, "sigmoid", False, "'out' ends in sigmoid: its outputs are probabilities"),
                     outputs=["out"], run_input_shape=(None, *input_hw, 3), file_format="HDF5, written by Keras 2.12.0 (tensorflow)",
                     repairs=[AppliedRepair("axis-list", "tf.keras 2.x", "BatchNormalization `axis: [3]` read as `axis: 3`", ("bn",))])
    return ReportData(info=info, dataset=dataset, scan=scan, chosen=chosen, fields=receptive_fields(nodes, input_hw), top_k=top_k,
                      options={"top_k": top_k}, data_label="data/train", preprocessing=make_preprocessing("rescale", 3, chosen_by="auto"))


def tiny_nodes() -> list[LayerNode]:
    """input 8x8x3 -> conv 3x3 (4 filters, 'valid') -> max-pool 2 -> flatten -> dense."""
    win = Geometry("window", kernel=(3, 3), stride=(1, 1))
    pool = Geometry("window", kernel=(2, 2), stride=(2, 2))
    return [
        LayerNode("conv", "Conv2D", (None, 6, 6, 4), 112, 0, None, [""], [(None, 8, 8, 3)], win, True),
        LayerNode("pool", "MaxPooling2D", (None, 3, 3, 4), 0, 0, None, ["conv"], [(None, 6, 6, 4)], pool, True),
        LayerNode("flat", "Flatten", (None, 36), 0, 0, None, ["pool"], [(None, 3, 3, 4)], Geometry("unknown"), False),
        LayerNode("out", "Dense", (None, 1), 37, 0, None, ["flat"], [(None, 36)], Geometry("pointwise"), False),
    ]


def tiny_report() -> ReportData:
    return report_like(tiny_nodes(), (8, 8), n_images=6, top_k=3, seed=7, heat_side=4, name="tiny")
