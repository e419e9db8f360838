"""Sharded runs without Ray: `reportgen build --shard I/N --partial-out DIR` runs the pass over one
contiguous part of the dataset and writes its partial state (partial.py) to DIR; `reportgen merge
DIR... --out SITE` merges all N (in any order: the same result) and builds the site. For Slurm
arrays, Kubernetes indexed jobs or any scheduler: each shard needs the model file and the dataset
folder, nothing else.

A partial state carries a fingerprint of what it summarises (the model's weights, the dataset
listing, the options that change the numbers); merging refuses states whose fingerprints differ,
and an incomplete or repeated set of shards.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path

import numpy as np

from reportgen.engines.partial import Merger, PartialScan, check_same, from_bytes, to_bytes
from reportgen.errors import UserError

log = logging.getLogger("reportgen")

SUFFIX = ".reportgen-partial.npz"


def parse_shard(text: str) -> tuple[int, int]:
    """'I/N' (I counting from 0, as Slurm array and Kubernetes job indices do)."""
    try:
        index, count = (int(p) for p in text.split("/"))
    except ValueError:
        raise UserError(f"--shard {text!r}: expected I/N, e.g. 0/8 for the first of 8 shards") from None
    if count < 1 or not 0 <= index < count:
        raise UserError(f"--shard {text!r}: I counts from 0 to N - 1 (e.g. 0/8 ... 7/8)")
    return index, count


def shard_records(records: list, index: int, count: int) -> list:
    """Shard `index` of `count`: a contiguous part of the dataset order, sizes differing by at most one."""
    n = len(records)
    return records[index * n // count : (index + 1) * n // count]


def fingerprint(traced, dataset, preprocessing, probes, top_k: int, batch_size: int, cams=None) -> dict:
    """What must be the same for two partial states to merge: the model (its weights and the layers
    the pass reads), the dataset listing (files and labels in order, not their bytes) and the
    options that change the numbers, the batch size among them (TensorFlow's kernels may round a
    batch of 8 and a batch of 5 differently in the last bit)."""
    from reportgen.images import heat_side

    model = hashlib.sha256()
    for weight in traced.model.weights:  # by order, shape and value: a variable's path depends on the process's history
        value = np.ascontiguousarray(weight.numpy())
        model.update(f"{value.shape}{value.dtype}".encode())
        model.update(value.tobytes())
    layers = [[node.name, list(node.spatial), node.channels] for node in traced.map_layers]
    model.update(json.dumps([layers, traced.info.num_outputs]).encode())
    listing = hashlib.sha256()
    for rec in dataset.records:
        listing.update(f"{rec.rel}\t{rec.label}\n".encode())
    return {
        "model": {"weights_and_layers": model.hexdigest()[:32], "layers": len(layers), "units": sum(node.channels for node in traced.map_layers)},
        "dataset": {"images": len(dataset.records), "classes": list(dataset.classes), "listing": listing.hexdigest()[:32]},
        "options": {"top_k": top_k, "batch_size": batch_size, "preprocessing": preprocessing.as_dict(), "input": [traced.spec.height, traced.spec.width, traced.spec.channels],
                    "probes": [[p.layer, p.row, p.col, p.channel] for p in probes], "heat_side": heat_side(traced.map_layers, top_k),
                    "cams": [cams.layer, cams.cap] if cams is not None else None},
    }


def write_partial(partial: PartialScan, folder: Path, index: int, count: int) -> Path:
    """The shard's file, written whole or not at all (a temporary file renamed into place)."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"shard-{index:05d}-of-{count:05d}{SUFFIX}"
    data = to_bytes(partial)
    fd, tmp = tempfile.mkstemp(prefix=".shard-", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    log.info("wrote %s (%.1f MB, %d images, %d units: %.0f bytes per unit)", target, len(data) / 1e6, partial.num_images,
             partial.units, len(data) / max(1, partial.units))
    return target


def partial_files(paths: list[Path]) -> list[Path]:
    """The partial-state files in the given files and folders (a folder: every *.reportgen-partial.npz in it)."""
    files = []
    for path in paths:
        path = Path(path)
        if path.is_dir():
            found = sorted(path.glob(f"*{SUFFIX}"))
            if not found:
                raise UserError(f"{path}: no partial states in it (files named *{SUFFIX}, written by 'reportgen build --shard I/N --partial-out {path}')")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise UserError(f"{path}: no such file or folder")
    return files


def read_partial(path: Path) -> PartialScan:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise UserError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    return from_bytes(data, str(path))


def read_meta(path: Path) -> dict:
    """The first shard's record of how the shards were built (their options), for `reportgen merge`."""
    return read_partial(path).meta


def merge_files(paths: list[Path], expected: dict | None = None, quiet: bool = False) -> PartialScan:
    """Merge every shard's partial state, one file at a time. `expected`: the fingerprint of the model,
    dataset and options the merge builds the site with (a shard of anything else is refused)."""
    files = partial_files(paths)
    merger = Merger()
    shards: dict[int, Path] = {}
    count = None
    for path in files:
        part = read_partial(path)
        if expected is not None:
            check_same(expected, part.fingerprint, f"{path}: ")
        index, n = part.meta.get("shard", [0, 1])
        if count is not None and n != count:
            raise UserError(f"{path}: shard {index}/{n}, but {shards[next(iter(shards))]} is one of {count} shards: merge the shards of one split")
        count = n
        if index in shards:
            raise UserError(f"{path}: shard {index}/{n} is also in {shards[index]}: give each shard once")
        shards[index] = path
        merger.add(part, f"{path}: ")
        log.info("merged %s (%d images)", path, part.num_images)
    missing = [i for i in range(count or 0) if i not in shards]
    if missing:
        shown = ", ".join(f"{i}/{count}" for i in missing[:5]) + (", ..." if len(missing) > 5 else "")
        raise UserError(f"{len(missing)} of {count} shards missing ({shown}): run them, then merge all {count}")
    return merger.result()
