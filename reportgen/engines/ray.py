"""The pass on a Ray cluster (`reportgen build --engine ray`): the file list is a Ray dataset, cut
into chunks of contiguous images; `map_batches` runs each chunk on a pool of actors that load the
model once and run the local engine's own pass over it (decoding included: the driver never reads
an image), each chunk coming back as one compact partial state (partial.py). The driver merges
them as they arrive: its memory holds the unit tables (O(units x K)) and the per-image
predictions, whatever the number of images.

Faults: Ray Data restarts a dead actor and retries its chunk (max_restarts / max_task_retries are
unlimited for actor pools); a chunk gives the same partial state whichever actor runs it, so a
retry changes nothing. A file that cannot be read is skipped and listed, as locally.

Every worker needs the model file and the dataset folder at the same paths as the driver (a shared
file system), and reportgen installed.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from pathlib import Path

from reportgen.engines.partial import Merger, PartialScan, check_same, from_bytes
from reportgen.errors import UserError

log = logging.getLogger("reportgen")

# Images per task, at most: a lost worker costs at most this much work again, and the driver merges
# one partial state per task (ResNet50: about 1 s each on one core, so 16,384-image tasks keep up
# with about 16,000 images a second).
MAX_CHUNK = 16384


def chunk_size(images: int, workers: int, batch_size: int, requested: int | None = None) -> int:
    """Images per task: about four tasks per worker (so that a slow or restarted worker is not the
    whole run's tail), a whole number of batches, at most MAX_CHUNK."""
    if requested:
        return requested
    per = math.ceil(images / max(1, workers * 4))
    per = math.ceil(per / batch_size) * batch_size
    return max(batch_size, min(per, max(batch_size, MAX_CHUNK // batch_size * batch_size)))


class MiningWorker:
    """One Ray actor: loads the model once, then runs the pass over each chunk it is given."""

    def __init__(self, job: dict) -> None:
        from reportgen.build import BuildOptions, cam_request, prepare_model
        from reportgen.dataset import Dataset
        from reportgen.engines.mining import MiningStep, PerImageLoss
        from reportgen.model.tf import tf
        from reportgen.stats import classification_mode

        self.threads = threads = max(1, int(job["cpus"]))  # the actor's share of its node, not all of its cores
        try:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(threads)
        except RuntimeError:  # the runtime already started in this process: keep its settings
            pass
        opts = BuildOptions(**job["options"])
        self.prepared = prepare_model(opts, announce=False)
        traced = self.prepared.traced
        from reportgen.engines.shards import fingerprint

        self.dataset = Dataset(root=Path(job["root"]), classes=list(job["classes"]), records=[])
        cams = cam_request(opts, traced, self.dataset)
        mine_fp = fingerprint(traced, self.dataset, self.prepared.preprocessing, self.prepared.probes, opts.top_k, self.prepared.batch_size, cams)
        expected = job["fingerprint"]
        # the same model file and options as the driver's (a node with another copy is refused)
        check_same({k: expected[k] for k in ("model", "options")}, {k: mine_fp[k] for k in ("model", "options")}, "a Ray worker has ")
        self.fingerprint = expected
        self.opts = opts
        mode, _ = classification_mode(traced.info.num_outputs, len(self.dataset.classes))
        self.miner = MiningStep(traced, opts.top_k, self.prepared.probes, self.prepared.preprocessing, self.prepared.batch_size,
                                PerImageLoss(traced.loss, mode, traced.info.num_outputs), side=expected["options"]["heat_side"],
                                cams=cams if mode != "none" else None)

    def __call__(self, chunk: dict) -> dict:
        import numpy as np

        from reportgen.dataset import ImageRecord
        from reportgen.engines.local import mine
        from reportgen.engines.partial import to_bytes

        root = self.dataset.root
        records = [ImageRecord(int(i), root / str(rel), str(rel), None if int(label) < 0 else int(label))
                   for i, rel, label in zip(chunk["index"], chunk["rel"], chunk["label"])]
        partial = mine(self.prepared.traced, self.dataset, records, top_k=self.opts.top_k, batch_size=self.prepared.batch_size,
                       preprocessing=self.prepared.preprocessing, probes=self.prepared.probes, quiet=True, miner=self.miner,
                       fingerprint=self.fingerprint, decode_threads=self.threads)
        return {"partial": np.array([to_bytes(partial)], dtype=object), "images": np.array([len(records)])}


def _job(opts, prepared, dataset, fp: dict) -> dict:
    from dataclasses import fields

    from reportgen.build import ENGINE_OPTIONS

    options = {f.name: getattr(opts, f.name) for f in fields(opts) if f.name not in ENGINE_OPTIONS}
    options.update(model=str(Path(opts.model).absolute()), data=str(Path(opts.data).absolute()), quiet=True, images=[], class_names=None)
    return {"options": options, "root": str(dataset.root.absolute()), "classes": list(dataset.classes), "fingerprint": fp,
            "cpus": opts.cpus_per_worker}


def scan_on_ray(opts, prepared, dataset, fp: dict) -> PartialScan:
    """The pass on Ray, merged on the driver into one partial state (equal to the local pass's)."""
    if opts.ray_address and AUTH_MODE not in os.environ and _has_ray_token():
        # A cluster from `ray start` on a machine with a token requires it (Ray's default since 2.5x),
        # but a driver sends it only with RAY_AUTH_MODE=token, read when Ray loads: set for this run.
        os.environ[AUTH_MODE] = "token"
        try:
            return _scan_on_ray(opts, prepared, dataset, fp)
        finally:
            os.environ.pop(AUTH_MODE, None)
    return _scan_on_ray(opts, prepared, dataset, fp)


def _scan_on_ray(opts, prepared, dataset, fp: dict) -> PartialScan:
    try:
        import pyarrow as pa
        import ray
        import ray.data
    except ImportError as exc:
        raise UserError(f"--engine ray needs Ray Data ({exc}): pip install 'reportgen[ray]'") from None
    if not isinstance(opts.model, (str, Path)):
        raise UserError("--engine ray needs the model as a file (each worker loads it): save it with model.save('model.keras')")
    with _quiet_ray_loggers():
        return _scan(opts, prepared, dataset, fp, pa, ray)


@contextlib.contextmanager
def _quiet_ray_loggers():
    """Ray's own notices (cluster start, token authentication, Ray Data's executor) are turned down
    for the run and put back afterwards: the user's process keeps its logging as it was."""
    loggers = [logging.getLogger(name) for name in ("ray", "ray.data", "ray._private", "ray.data._internal")]
    saved = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, saved):
            lg.setLevel(level)


def _scan(opts, prepared, dataset, fp, pa, ray) -> PartialScan:
    started_here = not ray.is_initialized()
    if not started_here:  # the caller's own Ray session: used as it is, left running
        return _run(opts, prepared, dataset, fp, pa, ray)
    saved = os.environ.get(AUTH_MODE)
    try:
        try:
            ray.init(address=opts.ray_address, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
        except (ConnectionError, ValueError, RuntimeError) as exc:
            raise UserError(f"--ray-address {opts.ray_address}: cannot connect to a Ray cluster there ({' '.join(str(exc).split())[:200]})") from None
        try:
            return _run(opts, prepared, dataset, fp, pa, ray)
        finally:
            ray.shutdown()
    finally:  # ray.init sets RAY_AUTH_MODE in this process: put it back as it was
        if saved is None:
            os.environ.pop(AUTH_MODE, None)
        else:
            os.environ[AUTH_MODE] = saved


AUTH_MODE = "RAY_AUTH_MODE"


def _has_ray_token() -> bool:
    return bool(os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH") or (Path.home() / ".ray" / "auth_token").is_file())


def _run(opts, prepared, dataset, fp, pa, ray) -> PartialScan:
    from tqdm import tqdm

    resources = ray.cluster_resources()
    if opts.gpus_per_worker > 0:
        available = int(resources.get("GPU", 0) // opts.gpus_per_worker)
        if available < 1:
            raise UserError(f"--gpus-per-worker {opts.gpus_per_worker:g}: the Ray cluster has {resources.get('GPU', 0):g} GPUs")
    else:
        available = int(resources.get("CPU", 1) // opts.cpus_per_worker)
    workers = opts.workers or max(1, available)
    records = dataset.records
    size = chunk_size(len(records), workers, prepared.batch_size, opts.ray_chunk)
    chunks = [records[start : start + size] for start in range(0, len(records), size)]
    tables = [pa.table({"index": [r.index for r in c], "rel": [r.rel for r in c], "label": [-1 if r.label is None else r.label for r in c]})
              for c in chunks]
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # ours counts images as the chunks come back
    context.print_on_execution_start = False
    log.info("Ray: %d workers, %d tasks of up to %d images", workers, len(chunks), size)
    parts = ray.data.from_arrow(tables).map_batches(
        MiningWorker, fn_constructor_kwargs={"job": _job(opts, prepared, dataset, fp)}, batch_size=None, batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=workers), num_cpus=opts.cpus_per_worker, num_gpus=opts.gpus_per_worker or None,
    )
    merger = Merger()
    try:
        with tqdm(total=len(records), desc="scanning dataset (Ray)", unit="img", disable=opts.quiet, leave=False, dynamic_ncols=True) as bar:
            for row in parts.iter_rows():
                part = from_bytes(row["partial"], "a Ray worker's partial state")
                merger.add(part)
                bar.update(int(row["images"]))
    except UserError:
        raise
    except Exception as exc:  # a worker's own error arrives wrapped in Ray's: say the user's part of it
        raise UserError(f"the pass on Ray failed: {_cause(exc)}") from None
    return merger.result()


def _cause(exc: BaseException) -> str:
    seen = exc
    while seen is not None:
        if isinstance(seen, UserError):
            return str(seen)
        seen = getattr(seen, "cause", None) or seen.__cause__
    text = " ".join(str(exc).split())
    return text[:300] or type(exc).__name__
