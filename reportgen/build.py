"""`reportgen build`: the stages in order.

    check --out -> read the dataset listing -> load, repair and trace the model -> choose the
    preprocessing and the images to draw -> one pass over the dataset (metrics, histograms, top K,
    heatmaps, thumbnails) -> receptive fields -> gathered data (report.ReportData)
    -> the site, written file by file into a temporary folder -> link check -> swapped in for --out
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import MISSING, dataclass, field, replace
from pathlib import Path

import numpy as np

from reportgen.dataset import BadImage, Dataset, discover, load_pixels, read_class_names
from reportgen.errors import UserError, model_fails
from reportgen.images import to_uint8
from reportgen.receptive import receptive_fields
from reportgen.report import ChosenImage, ReportData
from reportgen.stats import as_probabilities, classification_mode, predicted_classes, prediction_text
from reportgen.writer import OutLock, SiteFolder, check_free_space, check_target

log = logging.getLogger("reportgen")


@dataclass
class BuildOptions:
    model: Path  # a model file, or a keras.Model object (Python API)
    data: Path
    out: Path
    images: list[Path] = field(default_factory=list)
    seed: int = 0
    batch_size: int | None = None  # images per batch; None: pass_batch_size() chooses (at most 64)
    max_channels: int | None = None
    force: bool = False
    top_k: int = 16
    units: list[str] = field(default_factory=list)  # LAYER:ROW:COL:CHANNEL
    preprocess: str = "auto"  # auto | rescale | none | tf | torch | caffe
    rescale: float | None = None  # the scale of --preprocess rescale (default 1/255)
    interpolation: str = "nearest"
    input_size: tuple[int, int] | None = None  # for models whose input height/width are not fixed
    layers: list[str] = field(default_factory=list)  # glob patterns ("!" excludes) of the layers to show
    max_gallery: int = 64  # images per confusion cell's gallery
    cam_layer: str | None = None  # the layer Grad-CAM reads (default: the last with a map larger than 1 x 1)
    relevance: bool = False  # the extra pass: every unit's contribution to each class
    class_names: Path | None = None  # readable names for the class folders
    summary_only: bool = False  # write summary.html alone, not the site
    wait: bool = False  # wait for another build writing the same --out, instead of failing
    show_paths: bool = False  # show local paths as given (default: relative to the working folder, or base names)
    config: Path | None = None  # the --config file these options came from (recorded, not read here)
    output: str | None = None  # which output to evaluate, for models with several
    unsafe: bool = False
    quiet: bool = False
    timestamp: bool = False
    # Where the pass runs (ENGINE_OPTIONS: they change where, never what)
    engine: str = "local"  # local | ray
    ray_address: str | None = None  # an existing Ray cluster (default: a local one started for the run)
    workers: int | None = None  # Ray actors (default: one per CPU, or per --gpus-per-worker GPUs)
    gpus_per_worker: float = 0.0
    cpus_per_worker: float = 1.0
    ray_chunk: int | None = None  # images per Ray task (default: about 4 tasks per worker, at most 16384)
    shard: tuple[int, int] | None = None  # (I, N): this run is shard I of N (counting from 0)
    partial_out: Path | None = None  # where a shard writes its partial state
    partials: list[Path] = field(default_factory=list)  # `reportgen merge`: the shards' partial states
    # How the model and dataset paths are shown (default: as given); the demo shows stable names
    # instead of its temporary folder, so that its site is byte-identical from run to run.
    model_label: str | None = None
    data_label: str | None = None


ENGINE_OPTIONS = ("engine", "ray_address", "workers", "gpus_per_worker", "cpus_per_worker", "ray_chunk", "shard", "partial_out", "partials")


@dataclass
class BuildResult:
    out: Path
    files: int
    bytes: int
    report: dict


def parse_unit(text: str) -> tuple[str, int, int, int]:
    """'LAYER:ROW:COL:CHANNEL' (the layer name may itself hold ':' or '/')."""
    parts = text.rsplit(":", 3)
    if len(parts) != 4 or not parts[0]:
        raise UserError(f"--unit {text!r}: expected LAYER:ROW:COL:CHANNEL, e.g. conv2d_1:3:4:17")
    try:
        row, col, channel = (int(p) for p in parts[1:])
    except ValueError:
        raise UserError(f"--unit {text!r}: ROW, COL and CHANNEL must be whole numbers") from None
    return parts[0], row, col, channel


def _probes(specs: list[str], traced):
    from reportgen.engines.mining import Probe

    layers = {n.name: n for n in traced.map_layers}
    probes = []
    for text in specs:
        name, row, col, channel = parse_unit(text)
        node = layers.get(name)
        if node is None:
            names = ", ".join(list(layers)[:12]) + (", ..." if len(layers) > 12 else "")
            raise UserError(f"--unit {text!r}: no layer with feature maps is called {name!r} (there are: {names})")
        h, w = node.spatial
        if not (0 <= row < h and 0 <= col < w and 0 <= channel < node.channels):
            raise UserError(
                f"--unit {text!r}: {name} has {h} rows, {w} columns and {node.channels} channels (counting from 0)"
            )
        probes.append(Probe(name, row, col, channel))
    return probes


def _in_dataset(path: Path, dataset: Dataset) -> tuple[str, str | None]:
    """How an --image is shown (relative to the dataset root when it is inside it, as drawn images
    are) and its class (its class folder, when it has one)."""
    try:
        rel = path.resolve().relative_to(dataset.root.resolve())
    except ValueError:
        return str(path), None
    label = rel.parts[0] if dataset.classes and len(rel.parts) > 1 and rel.parts[0] in dataset.class_indices else None
    return rel.as_posix(), label


def _chosen_indices(opts: BuildOptions, dataset: Dataset, picked) -> list[int | None]:
    """Each chosen image's index in the dataset (None: not one of its images)."""
    index_of = {r.rel: r.index for r in dataset.records}
    if not opts.images:
        return [index_of.get(shown) for shown, _, _ in picked]
    found = []
    for path in opts.images:
        i = index_of.get(_in_dataset(path, dataset)[0])
        found.append(i if i is not None and Path(dataset.records[i].path).resolve() == Path(path).resolve() else None)
    return found


def choose_images(opts: BuildOptions, dataset: Dataset, spec, resizer=None) -> list[tuple[str, str | None, np.ndarray]]:
    """(shown path, class or None, pixels) of each image drawn through the network."""
    chosen = []
    if opts.images:
        for path in opts.images:
            if not path.is_file():
                raise UserError(f"--image {path}: no such file")
            try:
                pixels = load_pixels(path, spec, resizer)
            except BadImage as exc:
                raise UserError(f"--image {path}: {exc}") from None
            shown, label = _in_dataset(path, dataset)
            if shown == str(path):  # outside the dataset: as published pages show local paths
                shown = shown_path(path, opts)
            chosen.append((shown, label, pixels))
        return chosen
    order = list(range(len(dataset.records)))
    random.Random(opts.seed).shuffle(order)
    first_failure = ""
    for i in order:
        rec = dataset.records[i]
        try:
            pixels = load_pixels(rec.path, spec, resizer)
        except BadImage as exc:
            first_failure = first_failure or f"{rec.rel}: {exc}"
            continue  # listed as skipped by the pass
        label = dataset.classes[rec.label] if rec.label is not None else None
        return [(rec.rel, label, pixels)]
    raise UserError(f"{dataset.root}: none of its {len(dataset.records)} image files could be read ({first_failure}, ...)")


def _keep(opts: BuildOptions) -> dict[str, Path]:
    keep = {"dataset": Path(opts.data)}
    if isinstance(opts.model, (str, Path)):
        keep["model file"] = Path(opts.model)
    return keep


def _model_name(opts: BuildOptions) -> str:
    """How the model is named in messages and pages: its file, or the in-memory model's name."""
    if isinstance(opts.model, (str, Path)):
        return str(opts.model)
    return f"{getattr(opts.model, 'name', 'model')} (keras.Model object)"


def shown_path(path, opts: BuildOptions) -> str:
    """A local path as published pages show it: relative to the working folder when inside it,
    otherwise its base name (--show-paths: as given). Nothing of the user's machine leaks by default."""
    from reportgen.config import published_path

    return str(path) if opts.show_paths else published_path(path)


def build(opts: BuildOptions) -> BuildResult:
    out = Path(opts.out)
    with OutLock(out, wait=opts.wait):  # one build per --out, from the first check to the last write
        check_target(out, opts.force, _keep(opts))  # fail before the long pass, not after it
        data = gather(opts)
        check_free_space(out, estimated_size(data))
        from reportgen.site.pages import render_site

        with SiteFolder(out, opts.force, _keep(opts)) as site:
            summary = render_site(data, site, summary_only=opts.summary_only)
            site.commit()
    return BuildResult(out=out, files=summary.files, bytes=summary.bytes, report=summary.report)


def estimated_size(data) -> int:
    """About how many bytes the site takes (to refuse before writing when the disk cannot hold it)."""
    units = sum(u.channels for u in data.scan.units.values())
    k = data.top_k
    heat = sum(u.heat.size for u in data.scan.units.values()) // 2  # grey atlases compress about by half
    thumbs = sum(len(t.data) for t in data.scan.thumbnails.values())
    if data.explained:
        thumbs += sum(len(t.data) for t in data.explained.thumbnails.values())
    layers = len(data.scan.units)
    return int(heat + thumbs + units * (k * 30 + 200) + layers * 150_000 + 1_000_000)


def estimated_size_before_pass(traced, dataset, top_k: int) -> int:
    """A lower bound before the pass: the per-unit data and pages alone."""
    units = sum(n.channels for n in traced.map_layers)
    return int(units * (top_k * 30 + 200) + len(traced.map_layers) * 50_000)


def gather(opts: BuildOptions) -> ReportData:
    """Every stage before the site: all the data the pages show, computed before anything is written."""
    started = time.time()

    dataset = discover(opts.data)
    class_names = read_class_names(opts.class_names, dataset.classes) if opts.class_names else list(dataset.classes)
    log.info("dataset %s: %d image files%s", dataset.root, len(dataset.records),
             f" in {len(dataset.classes)} classes" if dataset.classes else " (flat folder, no labels)")

    prepared = prepare_model(opts)
    traced, preprocessing, warnings = prepared.traced, prepared.preprocessing, prepared.warnings
    from reportgen.engines.local import run_chosen
    from reportgen.model.preprocess import resizer

    check_free_space(Path(opts.out), estimated_size_before_pass(traced, dataset, opts.top_k))  # before the long pass
    cams = cam_request(opts, traced, dataset)
    picked = choose_images(opts, dataset, traced.spec, resizer(traced.spec))
    pixels = np.stack([p for _, _, p in picked])
    labels = np.array([dataset.class_indices.get(label, -1) if label else -1 for _, label, _ in picked])
    chosen_index = _chosen_indices(opts, dataset, picked)
    from_pass = cams is not None and not opts.partials and opts.engine != "ray" and None not in chosen_index
    if from_pass:  # the pass computes every image's class activation maps: it keeps the chosen images' too
        cams = replace(cams, keep=frozenset(chosen_index))
    chosen_run: list = []

    def run_chosen_images() -> None:
        try:
            chosen_run.append(run_chosen(traced, pixels, labels, None if from_pass else cams, preprocessing))
        except (KeyboardInterrupt, MemoryError):
            raise
        except Exception as exc:
            raise model_fails(_model_name(opts), exc) from None

    # The local pass runs the chosen images while its first step's graph is optimised (without the
    # GIL, on one core); elsewhere they go first, where a model that cannot run at all fails.
    local = not opts.partials and opts.engine != "ray"
    if not local:
        run_chosen_images()
    scan = run_pass(opts, prepared, dataset, cams, beside_first_step=run_chosen_images if local else None)
    if not chosen_run:
        run_chosen_images()
    scores, maps, chosen_cams = chosen_run[0]
    for skipped in scan.skipped:
        log.warning("skipped %s: %s", skipped.path, skipped.reason)
    if scan.metrics.note:
        log.warning("evaluation: %s", scan.metrics.note)

    mode, _ = classification_mode(traced.info.num_outputs, len(dataset.classes))
    logits = traced.info.head.logits
    chosen = [
        ChosenImage(
            path=shown,
            label=label,
            scores=[float(s) for s in as_probabilities(scores[i], logits)],
            prediction=prediction_text(scores[i], dataset.classes, mode, logits),
            pixels=to_uint8(pixels[i]),
            maps={node.name: maps[j][i] for j, node in enumerate(traced.map_layers)},
            raw_scores=[float(s) for s in scores[i]] if logits else None,
        )
        for i, (shown, label, _) in enumerate(picked)
    ]
    explained = None if opts.summary_only else explain(opts, traced, dataset, scan, preprocessing, picked, pixels, scores, mode, prepared.batch_size,
                                                       chosen_cams, chosen_index if from_pass else None)
    spec = traced.spec
    fields = receptive_fields(traced.info.nodes, (spec.height, spec.width))

    options = {
        "top_k": opts.top_k,
        "batch_size": prepared.batch_size,
        "preprocess": opts.preprocess,
        "rescale": opts.rescale,
        "interpolation": opts.interpolation,
        "input_size": list(opts.input_size) if opts.input_size else None,
        "output": opts.output,
        "seed": opts.seed,
        "max_channels": opts.max_channels,
        "images": [shown for shown, _, _ in picked] if opts.images else "one drawn at random (seed)",
        "units": list(opts.units),
        "layers": list(opts.layers),
        "max_gallery": opts.max_gallery,
        "cam_layer": explained.cam_layer if explained else opts.cam_layer,
        "relevance": opts.relevance,
        "class_names": str(opts.class_names) if opts.class_names else None,
    }
    footer = time.strftime("built %Y-%m-%d %H:%M:%S %Z", time.localtime(started)) if opts.timestamp else ""
    traced.info.path = opts.model_label or (shown_path(opts.model, opts) if isinstance(opts.model, (str, Path)) else _model_name(opts))
    return ReportData(
        info=traced.info,
        dataset=dataset,
        scan=scan,
        chosen=chosen,
        fields=fields,
        top_k=opts.top_k,
        max_channels=opts.max_channels,
        options=options,
        footer_note=footer,
        data_label=opts.data_label or shown_path(dataset.root, opts),
        config=build_config(opts),
        preprocessing=preprocessing,
        warnings=warnings,
        explained=explained,
        class_names=class_names,
    )


@dataclass
class PreparedModel:
    """The model as the pass runs it: loaded (and repaired), traced, with its preprocessing and probes."""

    loaded: object  # model.load.LoadedModel
    traced: object  # model.TracedModel
    preprocessing: object  # model.preprocess.Preprocessing
    warnings: list[str]
    probes: list
    batch_size: int  # images per batch: --batch-size, or pass_batch_size()


MAX_BATCH = 64  # against 32: MobileNetV2's whole build 3% faster (half the steps), 80 MB more memory
# The feature maps of a batch the step reads (float32), when --batch-size is not given. Fewer are alive
# at once (each is freed once reduced): ResNet50 at 224 px takes 16 images (1.65 GB peak against a
# plain predict's 1.38 GB, builds ~0.6 s faster than with 8; 32 images: 2.0 GB, no faster).
MAP_BYTES_PER_BATCH = 2_400_000_000


def pass_batch_size(requested: int | None, traced) -> int:
    """--batch-size, or 64 images unless their feature maps together pass MAP_BYTES_PER_BATCH: each map
    of a batch is held until the step's reductions have read it, so a big network (ResNet50 at 224 px:
    148 MB of maps per image) takes that much more memory than a plain predict. The results do not
    depend on it beyond float rounding (ties go to the earlier image in any batching)."""
    if requested:
        return requested
    per_image = sum(n.spatial[0] * n.spatial[1] * n.channels * 4 for n in traced.map_layers)
    return max(1, min(MAX_BATCH, MAP_BYTES_PER_BATCH // max(per_image, 1)))


def prepare_model(opts: BuildOptions, announce: bool = True) -> PreparedModel:
    """Load, repair and trace the model, and choose its preprocessing (also what each Ray worker does)."""
    try:  # TensorFlow loads here, after the cheap checks
        from reportgen.model import load_model, trace_model
        from reportgen.model.preprocess import choose_preprocessing
    except ImportError as exc:
        raise UserError(
            f"TensorFlow with Keras 3 is needed ({exc}): pip install 'reportgen[cpu]' (CPU) or 'reportgen[tf]' (full TensorFlow)"
        ) from None

    loaded = load_model(opts.model, unsafe=opts.unsafe) if isinstance(opts.model, (str, Path)) else _in_memory(opts.model)
    traced = trace_model(
        loaded.model, _model_name(opts), loss=loaded.loss, input_size=opts.input_size, output=opts.output, interpolation=opts.interpolation,
        layers=opts.layers,
    )
    traced.info.file_format, traced.info.repairs = loaded.file_format, loaded.repairs
    preprocessing, warnings = choose_preprocessing(
        loaded.model, traced.spec.channels, mode=opts.preprocess, rescale=opts.rescale, interpolation=opts.interpolation
    )
    if announce:
        for repair in loaded.repairs:
            log.info("repaired (in a temporary copy): %s [%s]", repair.what, ", ".join(repair.layers[:5]) + (", ..." if len(repair.layers) > 5 else ""))
        for warning in warnings:
            log.warning("warning: %s", warning)
        if traced.loss.note and traced.info.num_outputs:
            log.warning("loss not computed: %s", traced.loss.note)
    return PreparedModel(loaded, traced, preprocessing, warnings, _probes(opts.units, traced), pass_batch_size(opts.batch_size, traced))


def pass_fingerprint(opts: BuildOptions, prepared: PreparedModel, dataset: Dataset) -> dict:
    from reportgen.engines.shards import fingerprint

    return fingerprint(prepared.traced, dataset, prepared.preprocessing, prepared.probes, opts.top_k, prepared.batch_size,
                       cam_request(opts, prepared.traced, dataset))


def cam_request(opts: BuildOptions, traced, dataset: Dataset):
    """The Grad-CAMs the pass finds for the pages of mistakes: none without them (no labels to score
    the model's output against, or --summary-only). Names the layer first: a wrong --cam-layer fails
    before the pass."""
    from reportgen.engines.cams import CamRequest, cam_layer

    mode, _ = classification_mode(traced.info.num_outputs, len(dataset.classes))
    if mode == "none" or opts.summary_only:
        return None
    return CamRequest(cam_layer(traced, opts.cam_layer).name, binary=mode == "binary", logits=bool(traced.info.head.logits),
                      cap=opts.max_gallery)


def run_pass(opts: BuildOptions, prepared: PreparedModel, dataset: Dataset, cams=None, beside_first_step: Callable[[], None] | None = None):
    """The pass over the dataset, on the chosen engine: in this process, on Ray, or merged from
    the partial states of shards run elsewhere (`reportgen merge`). One result whichever runs it.
    cams: a cams.CamRequest, and beside_first_step (local.mine), for the local engine (Ray workers
    and shards make their own requests from the options)."""
    from reportgen.engines.partial import finish

    traced = prepared.traced
    if opts.partials:
        from reportgen.engines.shards import merge_files

        partial = merge_files(opts.partials, pass_fingerprint(opts, prepared, dataset), quiet=opts.quiet)
    elif opts.engine == "ray":
        from reportgen.engines.ray import scan_on_ray

        partial = scan_on_ray(opts, prepared, dataset, pass_fingerprint(opts, prepared, dataset))
    else:
        from reportgen.engines.local import scan_dataset

        return scan_dataset(traced, dataset, top_k=opts.top_k, batch_size=prepared.batch_size, preprocessing=prepared.preprocessing,
                            probes=prepared.probes, quiet=opts.quiet, cams=cams, beside_first_step=beside_first_step)
    if partial.num_images == 0:
        first = partial.skipped[0][1] if partial.skipped else None
        raise UserError(f"{dataset.root}: none of its {len(dataset.records)} image files could be read"
                        + (f" ({first.path}: {first.reason}, ...)" if first else ""))
    return finish(partial, traced, dataset.classes, prepared.probes)


def build_shard(opts: BuildOptions) -> Path:
    """`reportgen build --shard I/N --partial-out DIR`: one part of the pass, written as a partial state."""
    from reportgen.engines.local import mine
    from reportgen.engines.shards import shard_records, write_partial

    dataset = discover(opts.data)
    index, count = opts.shard or (0, 1)
    records = shard_records(dataset.records, index, count)
    prepared = prepare_model(opts)
    log.info("shard %d of %d: images %s of %d", index, count,
             f"{records[0].index}..{records[-1].index}" if records else "none", len(dataset.records))
    fp = pass_fingerprint(opts, prepared, dataset)
    partial = mine(prepared.traced, dataset, records, top_k=opts.top_k, batch_size=prepared.batch_size, preprocessing=prepared.preprocessing,
                   probes=prepared.probes, quiet=opts.quiet, fingerprint=fp, cams=cam_request(opts, prepared.traced, dataset))
    for _, skipped in partial.skipped:
        log.warning("skipped %s: %s", skipped.path, skipped.reason)
    partial.meta = {"shard": [index, count], "config": shard_config(opts)}
    return write_partial(partial, Path(opts.partial_out), index, count)


def shard_config(opts: BuildOptions) -> dict:
    """The options `reportgen merge` builds the site with: the shards' own (paths as given: not published)."""
    config = build_config(opts)
    for name in ("model", "data", "class_names"):
        if getattr(opts, name) is not None and isinstance(getattr(opts, name), (str, Path)):
            config[name] = str(Path(getattr(opts, name)).absolute())
    config["images"] = [str(Path(p).absolute()) for p in opts.images]
    return config


def build_config(opts: BuildOptions) -> dict:
    """Every option that differs from its default, as a --config file holds it (report.json records
    it, so `reportgen build --config site/report.json --out site` builds the same site again)."""
    from dataclasses import fields

    from reportgen.config import config_value

    out = {}
    for f in fields(BuildOptions):
        if f.name in ("model_label", "data_label", "config", "quiet", "out", "force", "wait") or f.name in ENGINE_OPTIONS:
            continue  # where and whether to write, and where the pass runs, are not part of the site: give --out when rebuilding
        value = getattr(opts, f.name)
        if f.name == "model" and not isinstance(value, (str, Path)):
            continue  # a keras.Model object: nothing a file could name
        default = f.default if f.default is not MISSING else (f.default_factory() if f.default_factory is not MISSING else MISSING)
        if f.name in ("model", "data") or value != default:
            out[f.name] = config_value(value, opts.show_paths)
    # Labels replace the paths they stand for (the demo's temporary folder is no part of its site,
    # wherever the demo runs from: under the working folder it would be published as a relative path).
    if opts.model_label and "model" in out:
        out["model"] = opts.model_label
    if opts.data_label and isinstance(opts.data, (str, Path)):
        out["data"] = opts.data_label
        root = Path(opts.data).resolve()
        if "images" in out:
            out["images"] = [f"{opts.data_label}/{Path(p).resolve().relative_to(root).as_posix()}" if Path(p).resolve().is_relative_to(root) else shown
                             for p, shown in zip(opts.images, out["images"])]
    return out


def _in_memory(model):
    """A keras.Model object handed over by the Python API, as if loaded (its compiled loss, no repairs)."""
    from reportgen.model.load import LoadedModel, loss_of_compiled
    from reportgen.model.tf import keras

    if not isinstance(model, keras.Model):
        raise UserError(f"model: expected a path or a keras.Model, got {type(model).__name__}")
    return LoadedModel(model, Path(model.name), "keras.Model object in memory", keras.__version__, [], loss_of_compiled(model))


def explain(opts: BuildOptions, traced, dataset: Dataset, scan, preprocessing, picked, pixels, scores, mode: str, batch_size: int,
            chosen_cams=None, chosen_index=None):
    """Mistakes, class activation maps and (with --relevance) the relevance pass; None without labels.

    The shown images' maps come from the pass (scan.cams), and so do the chosen images' when they are
    dataset images the pass kept (chosen_index: their dataset indices), else from their forward
    (chosen_cams: (float [n, 2, h, w], their classes [n, 2])); any missing, or for other classes than
    the host's, from a second read of those images (explain.CamStep). Shown images no top K holds
    are read again for their thumbnails."""
    if scan.predictions is None:
        return None
    from reportgen.engines.cams import cam_layer, quantise_cams
    from reportgen.engines.explain import CamStep, class_activation_maps, read_pixels, relevance_pass
    from reportgen.images import make_thumbnail
    from reportgen.mistakes import select_galleries
    from reportgen.report import Explained

    predictions = scan.predictions
    galleries = select_galleries(predictions, len(dataset.classes), opts.max_gallery)
    layer = cam_layer(traced, opts.cam_layer)
    binary = mode == "binary"
    shown = sorted(galleries.shown())
    targets = {i: (int(predictions.predicted[i]), int(predictions.labels[i])) for i in shown}
    cams = {i: scan.cams[i] for i in shown if i in scan.cams}
    missing = [i for i in shown if i not in cams]
    step = None
    decoded: dict = {}
    if missing:
        log.info("class activation maps of %d of the %d images the pages of mistakes show (at %s)", len(missing), len(shown), layer.name)
        step = CamStep(traced, layer, preprocessing, binary)
        found, decoded, _ = class_activation_maps(traced, dataset, missing, targets, step, batch_size)
        cams.update({i: quantise_cams(c) for i, c in found.items()})
        cams = dict(sorted(cams.items()))
    unseen = [i for i in shown if i not in scan.thumbnails and i not in decoded]
    if unseen:
        decoded.update(read_pixels(traced, dataset, unseen, batch_size))
    thumbnails = {i: make_thumbnail(px) for i, px in sorted(decoded.items()) if i not in scan.thumbnails}
    # the chosen images: their predicted class, and their class folder's when they have one
    chosen_pred = predicted_classes(scores, mode, traced.info.head.logits)
    chosen_targets = [(int(p), dataset.class_indices.get(label, int(p)) if label else int(p)) for p, (_, label, _) in zip(chosen_pred, picked)]
    chosen_levels = None
    if chosen_index is not None and all(i in scan.cams for i in chosen_index):
        # kept by the pass for its own classes: used where they are these (a float tie could part them)
        passed = [(int(predictions.predicted[i]), int(predictions.labels[i]) if predictions.labels[i] >= 0 else int(predictions.predicted[i]))
                  for i in chosen_index]
        if passed == chosen_targets:
            chosen_levels = [scan.cams[i] for i in chosen_index]
    if chosen_levels is None and chosen_cams is not None and np.array_equal(chosen_cams[1], np.array(chosen_targets, np.int32).reshape(-1, 2)):
        chosen_levels = list(quantise_cams(chosen_cams[0]))
    if chosen_levels is None:
        chosen_levels = list(quantise_cams((step or CamStep(traced, layer, preprocessing, binary))(pixels, np.array(chosen_targets))))
    relevance = None
    if opts.relevance:
        relevance = relevance_pass(traced, dataset, predictions, top_k=opts.top_k, batch_size=batch_size,
                                   preprocessing=preprocessing, binary=binary, quiet=opts.quiet)
    return Explained(cam_layer=layer.name, galleries=galleries, predictions=predictions, cams=cams,
                     targets=targets, thumbnails=thumbnails, chosen_cams=chosen_levels,
                     chosen_targets=chosen_targets, relevance=relevance)
