"""The plain data that the stages hand on (dataclasses and numpy arrays), and its JSON form.

model/ and engines/ fill these from TensorFlow; images.py, site/ and writer.py read them and never
see a tensor. No stage changes what an earlier stage returned.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np


@dataclass
class Geometry:
    """How a layer moves pixels around, for receptive fields (per axis: (height, width)).

    op: "input", "window" (conv/pooling: kernel, stride, dilation, padding), "pad" / "crop"
    (before: top/left amount), "pointwise" (same positions in, same out: activations, batch-norm,
    merges), "global" (global pooling: every position reads the whole image), "reshape",
    "model" (a nested model: its output layer stands for it) or "unknown".
    """

    op: str
    kernel: tuple[int, int] = (1, 1)
    stride: tuple[int, int] = (1, 1)
    dilation: tuple[int, int] = (1, 1)
    padding: str = "valid"
    before: tuple[int, int] = (0, 0)


@dataclass
class LayerNode:
    """One layer of the traced model graph (a nested model's layers appear as `outer/inner`)."""

    name: str  # qualified name, unique in the graph
    type: str  # Keras class name
    output_shape: tuple  # with None for the batch size, as model.summary() prints it
    params: int
    depth: int  # 0 for the top model's layers, 1 inside a nested model, ...
    parent: str | None  # qualified name of the nested model holding this layer
    inputs: list[str]  # qualified names of the layers feeding this one ("" means the model's input)
    input_shapes: list[tuple]
    geometry: Geometry
    is_map: bool  # a 4-D (batch, height, width, channels) output that gets a page
    alias_of: str = ""  # for a nested model: the inner layer whose output is the model's output

    @property
    def channels(self) -> int:
        return int(self.output_shape[-1])

    @property
    def spatial(self) -> tuple[int, int]:
        return int(self.output_shape[1]), int(self.output_shape[2])


@dataclass
class ModelInfo:
    name: str
    path: str
    input_shape: tuple
    total_params: int
    trainable_params: int
    non_trainable_params: int
    nodes: list[LayerNode]  # every layer in graph order, summary rows included
    num_outputs: int  # units of the evaluated (batch, units) output; 0 when it is not of that shape
    loss_name: str | None
    loss_note: str = ""  # why the loss is not computed, when it is not
    head: object = None  # model.head.OutputHead: which output, logits or probabilities, and why
    outputs: list[str] = field(default_factory=list)  # every output of the model (layer names)
    run_input_shape: tuple = ()  # the input shape the model runs at (--input-size for unfixed sizes)
    file_format: str = ""  # e.g. "HDF5, written by Keras 2.12.0"
    repairs: list = field(default_factory=list)  # model.repair.AppliedRepair, each config fix applied while loading


@dataclass
class ReceptiveField:
    """Where output position (row, col) of a layer looks in the input, per axis (height, width).

    The box of (row, col) is centred at offset + (row, col) * stride and is `size` pixels wide,
    in input pixel coordinates (pixel i spans [i, i+1)). When `exact` is False the layer stack
    does not define it (upsampling, unknown layers, misaligned branches) and the box is the
    grid cell: size = stride = input size / layer size.
    """

    size: tuple[float, float]
    stride: tuple[float, float]
    offset: tuple[float, float]
    exact: bool
    note: str = ""
    # Per axis (rows, cols), per position: [lo, hi) of the input pixels really read (NaN: only padding).
    reads: tuple[list, list] | None = field(default=None, repr=False, compare=False)

    def box(self, row: int, col: int) -> tuple[float, float, float, float]:
        """(x0, y0, x1, y1) of the receptive field of position (row, col), unclipped."""
        cy = self.offset[0] + row * self.stride[0]
        cx = self.offset[1] + col * self.stride[1]
        return (cx - self.size[1] / 2, cy - self.size[0] / 2, cx + self.size[1] / 2, cy + self.size[0] / 2)

    def visible_box(self, row: int, col: int, input_hw: tuple[int, int]) -> tuple[float, float, float, float] | None:
        """(x0, y0, x1, y1) of the image pixels position (row, col) really reads; None if only padding."""
        if self.reads is not None:
            (y0, y1), (x0, x1) = self.reads[0][row], self.reads[1][col]
            if any(v != v for v in (x0, y0, x1, y1)):
                return None
            return (x0, y0, x1, y1)
        x0, y0, x1, y1 = self.box(row, col)
        return (max(0.0, x0), max(0.0, y0), min(float(input_hw[1]), x1), min(float(input_hw[0]), y1))


@dataclass
class Histogram:
    """Counts of one unit's per-image maximum: `nonpositive` images at or below 0, then
    len(counts) equal bins over (0, hi]."""

    nonpositive: int
    hi: float
    counts: list[int]


@dataclass
class TopEntry:
    image: int  # dataset index
    value: float
    row: int
    col: int


@dataclass
class UnitResult:
    """One unit as objects (a view of LayerUnits, for code that looks at a few units)."""

    layer: str
    channel: int
    top: list[TopEntry]
    histogram: Histogram

    @property
    def max_value(self) -> float:
        return self.top[0].value if self.top else float("-inf")

    @property
    def dead(self) -> bool:
        """Never active: its map is at or below zero everywhere, on every image of the dataset."""
        return not self.top or self.top[0].value <= 0


@dataclass
class LayerUnits:
    """Every unit (channel) of one map layer after the pass, as arrays: its top K, heatmaps, histogram.

    Row c is channel c; column j its j-th best image (empty slots: image -1, value -inf). Iterating
    gives UnitResult views.
    """

    layer: str
    values: np.ndarray  # float32 [channels, k]: the unit's score (max of its map) on each top image, best first
    images: np.ndarray  # int64 [channels, k]: dataset index of each top image (-1: empty)
    rows: np.ndarray  # int32 [channels, k]: position of the maximum
    cols: np.ndarray  # int32 [channels, k]
    heat: np.ndarray  # uint8 [channels, k, h, w]: the unit's map on that image, 255 = the unit's top score
    hist_counts: np.ndarray  # int64 [channels, bins] over (0, hist_hi]
    hist_hi: np.ndarray  # float64 [channels]
    hist_nonpositive: np.ndarray  # int64 [channels]: images whose score is at or below 0

    @property
    def channels(self) -> int:
        return int(self.values.shape[0])

    @property
    def max_values(self) -> np.ndarray:
        return self.values[:, 0]

    @property
    def dead(self) -> np.ndarray:
        """bool [channels]: never above zero on any image."""
        return ~(self.values[:, 0] > 0)

    def counts(self) -> np.ndarray:
        """int [channels]: filled top-K slots."""
        return (self.images >= 0).sum(axis=1)

    def histogram(self, channel: int) -> Histogram:
        return Histogram(int(self.hist_nonpositive[channel]), float(self.hist_hi[channel]), [int(c) for c in self.hist_counts[channel]])

    def unit(self, channel: int) -> UnitResult:
        top = [
            TopEntry(int(i), float(v), int(r), int(c))
            for v, i, r, c in zip(self.values[channel], self.images[channel], self.rows[channel], self.cols[channel])
            if i >= 0
        ]
        return UnitResult(self.layer, channel, top, self.histogram(channel))

    def __len__(self) -> int:
        return self.channels

    def __getitem__(self, channel: int) -> UnitResult:
        return self.unit(channel)

    def __iter__(self):
        return (self.unit(c) for c in range(self.channels))


@dataclass
class ProbeResult:
    """The notebook's fixed unit: images ranked by one position's activation (--unit)."""

    layer: str
    row: int
    col: int
    channel: int
    top: list[TopEntry]


@dataclass
class Metrics:
    accuracy: float | None
    loss: float | None
    per_class: dict[str, float | None]
    confusion: list[list[int]] | None
    note: str
    evaluated: int
    mode: str  # "binary", "categorical" or "none"
    top5: float | None = None  # with more than 5 classes: top-5 accuracy, as Keras's TopKCategoricalAccuracy(k=5)
    per_class_top5: dict[str, float | None] = field(default_factory=dict)


@dataclass(frozen=True)
class Thumbnail:
    """An image as decoded, small and encoded once, for every gallery that shows it."""

    data: bytes
    ext: str  # "png" (small inputs, exact) or "jpg"
    width: int
    height: int


@dataclass
class Predictions:
    """Every image's prediction from the pass, by dataset index (read False: skipped or unlabelled pass).
    Probabilities: the model's output, or sigmoid/softmax of its logits; a single sigmoid output
    counts as two classes (1 - p, p)."""

    read: np.ndarray  # bool [images]
    labels: np.ndarray  # int64 [images]: true class, -1 when unknown
    predicted: np.ndarray  # int64 [images]
    confidence: np.ndarray  # float32 [images]: probability of the predicted class
    true_score: np.ndarray  # float32 [images]: probability of the true class
    top: np.ndarray  # int32 [images, t]: the t most probable classes (t = min(5, classes))
    top_scores: np.ndarray  # float32 [images, t]
    true_rank: np.ndarray = None  # int32 [images]: classes scored strictly above the true one (-1: no label)


@dataclass
class ScanResult:
    """What the one pass over the dataset found."""

    units: dict[str, LayerUnits]  # layer name -> its units
    probes: list[ProbeResult]
    metrics: Metrics
    num_images: int  # images read successfully
    skipped: list = field(default_factory=list)  # dataset.Skipped: files that could not be read
    thumbnails: dict[int, Thumbnail] = field(default_factory=dict)  # every image in some top K
    heat_side: int = 0  # the largest heatmap side
    predictions: Predictions | None = None  # when the dataset has labels the model's output can be scored against
    cams: dict[int, np.ndarray] = field(default_factory=dict)  # image -> uint8 [2, h, w]: Grad-CAMs the pass kept (engines/cams.py)
    ranked_as: dict[str, str] = field(default_factory=dict)  # layer -> the earlier layer whose units' top K (images, positions, heatmaps) its units show (model/ranking.py)


@dataclass
class ChosenImage:
    """An image drawn through every layer (--image, or one from the dataset)."""

    path: str  # as given, or relative to the dataset root
    label: str | None
    scores: list[float]  # the model's output as probabilities (sigmoid/softmax of logits)
    prediction: str
    pixels: np.ndarray  # uint8 [h, w, c], the image as decoded and resized (before the model's preprocessing)
    maps: dict[str, np.ndarray] = field(repr=False, default_factory=dict)  # layer -> [h, w, c] float32
    raw_scores: list[float] | None = None  # the model's output when it is logits (scores are then probabilities)


def _clean(value):
    """numpy scalars and tuples made plain; floats exact (shortest repr), non-finite ones null."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, (np.floating, float)):
        f = float(value)
        if f != f or f in (float("inf"), float("-inf")):
            return None
        return f
    if isinstance(value, np.integer):
        return int(value)
    return value


def to_json(data: dict) -> bytes:
    """Compact JSON, one top-level key per line so that diffs of two reports stay readable."""
    data = _clean(data)
    lines = [f"{json.dumps(k)}: {json.dumps(v, ensure_ascii=False, separators=(',', ':'))}" for k, v in data.items()]
    return ("{\n" + ",\n".join(lines) + "\n}\n").encode("utf-8")


@dataclass
class Explained:
    """Why the model decides: the galleries of mistakes, their class activation maps, relevance."""

    cam_layer: str
    galleries: object  # mistakes.Galleries
    predictions: Predictions
    cams: dict[int, np.ndarray]  # dataset index -> uint8 [2, h, w]: Grad-CAM for (predicted, true class), 255 = its max
    targets: dict[int, tuple[int, int]]  # dataset index -> (predicted class, true class)
    thumbnails: dict[int, Thumbnail]  # the shown images that no unit's top K already holds
    chosen_cams: list[np.ndarray]  # per chosen image, uint8 [2, h, w]
    chosen_targets: list[tuple[int, int]]
    relevance: dict | None = None  # layer -> engines.explain.LayerRelevance, with --relevance


@dataclass
class ReportData:
    """Everything the site shows, gathered before anything is written. Plain data: no tensors."""

    info: ModelInfo
    dataset: object  # dataset.Dataset
    scan: ScanResult
    chosen: list[ChosenImage]
    fields: dict[str, ReceptiveField]
    top_k: int
    max_channels: int | None = None
    options: dict = field(default_factory=dict)  # shown on the index and in report.json
    footer_note: str = ""  # e.g. a build time, only when asked for
    data_label: str = ""  # how the dataset root is shown
    preprocessing: object = None  # model.preprocess.Preprocessing: what was fed to the model
    warnings: list[str] = field(default_factory=list)  # shown on the index: never a silent guess
    explained: Explained | None = None  # mistakes, class activation maps, relevance (labelled datasets)
    class_names: list[str] = field(default_factory=list)  # how each class is shown (--class-names), by index
    config: dict = field(default_factory=dict)  # the options as a --config file holds them (report.json records it)
    evolution: object = None  # integrations.keras_callback.Evolution: snapshots over training (the callback)
