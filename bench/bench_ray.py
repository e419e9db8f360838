"""`reportgen build --engine ray` against `--engine local` on this machine, side by side.

Every figure printed is a ratio measured within one run (the machine is shared: absolute seconds are
shown for scale only). Each round runs, as separate processes and interleaved:

  local    reportgen build --engine local
  ray      reportgen build --engine ray                       (a local Ray started for the run and stopped)
  cluster  reportgen build --engine ray --ray-address ADDR    (a `ray start --head` cluster started once)

on the notebook-style CNN (150x150x3) over N generated JPEGs, and checks that the three report.json
files are identical. Then:

  marginal        extra time per extra image from N to 4N images, cluster / local (the workers'
                  start-up left out)
  driver memory   peak RSS of the `cluster` driver at 4N images / at N images (target <= 1.25: the
                  driver holds O(units x K) plus a few tens of bytes per image, not the images);
  partial state   bytes per unit of a shard's partial-state file (`--shard 0/1 --partial-out`),
                  for this CNN and (--resnet) for ResNet50 (weights=None, 224x224), where the
                  time to merge one partial state is also given in ResNet50 images' worth of local pass.

    python bench/bench_ray.py [--images 1000] [--rounds 2] [--workers 2] [--resnet] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))


def run(cmd: list[str], cwd: Path) -> tuple[float, float]:
    """(seconds, peak RSS bytes of that process) of one command; fails loudly."""
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - started
    err = proc.stderr.read().decode(errors="replace")
    if status != 0:
        raise SystemExit(f"failed ({status}): {' '.join(cmd)}\n{err[-2000:]}")
    return seconds, usage.ru_maxrss * 1024


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_head(cpus: int) -> tuple[subprocess.Popen, str, str]:
    port = free_port()
    temp = tempfile.mkdtemp(prefix="rgbench")
    head = subprocess.Popen([sys.executable, "-m", "ray.scripts.scripts", "start", "--head", f"--port={port}", f"--num-cpus={cpus}",
                             "--include-dashboard=false",
                             f"--dashboard-port={free_port()}", f"--ray-client-server-port={free_port()}", f"--temp-dir={temp}", "--block", "--disable-usage-stats"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    for _ in range(240):
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.5)
    time.sleep(2)
    return head, f"127.0.0.1:{port}", temp


def stop_head(head: subprocess.Popen, temp: str) -> None:
    os.killpg(head.pid, signal.SIGTERM)
    try:
        head.wait(60)
    except subprocess.TimeoutExpired:
        os.killpg(head.pid, signal.SIGKILL)
    shutil.rmtree(temp, ignore_errors=True)


def median(values: list[float]) -> float:
    values = sorted(values)
    return values[len(values) // 2] if len(values) % 2 else (values[len(values) // 2 - 1] + values[len(values) // 2]) / 2


def resnet_partial(work: Path) -> None:
    """ResNet50's partial state: bytes per unit, and the merge cost in local-pass images."""
    import numpy as np

    import reportgen.model  # noqa: F401
    import keras
    from generated import make_images

    from reportgen.build import BuildOptions, prepare_model
    from reportgen.dataset import discover
    from reportgen.engines.local import mine
    from reportgen.engines.partial import from_bytes, merge_partials, to_bytes

    data = work / "resnet_data"
    if not data.exists():
        make_images(data, 64)
    path = work / "resnet50.keras"
    if not path.exists():
        keras.applications.ResNet50(weights=None, classes=2, input_shape=(224, 224, 3)).save(path)
    prepared = prepare_model(BuildOptions(model=path, data=data, out=work / "unused", quiet=True), announce=False)
    dataset = discover(data)
    halves = [dataset.records[:32], dataset.records[32:]]
    timed = []
    parts = []
    for records in halves:
        started = time.perf_counter()
        parts.append(mine(prepared.traced, dataset, records, top_k=16, batch_size=16, preprocessing=prepared.preprocessing, quiet=True))
        timed.append((time.perf_counter() - started) / len(records))
    blobs = [to_bytes(p) for p in parts]
    units = parts[0].units
    started = time.perf_counter()
    for _ in range(3):
        merge_partials([from_bytes(blobs[0]), from_bytes(blobs[1])])
    merge = (time.perf_counter() - started) / 3
    per_image = timed[1]  # the second call: the graph is traced already
    print(f"ResNet50: {units} units, K=16, heatmap side {parts[0].side}: partial state {len(blobs[0]) / 1e6:.1f} MB compressed "
          f"= {len(blobs[0]) / units:.0f} bytes per unit (in memory {sum(getattr(parts[0], n).nbytes for n in ('values', 'ids', 'pos', 'heat', 'hist_counts')) / units:.0f})")
    print(f"ResNet50: reading + merging one partial state costs as much as {merge / per_image:.0f} images of the local pass on this CPU "
          f"(merge {merge:.2f} s, pass {per_image * 1000:.0f} ms per image here: scale only)")
    del np


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--resnet", action="store_true")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args(argv)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench_ray"))
    work.mkdir(parents=True, exist_ok=True)
    from generated import make_images, make_model

    model = work / "notebook.keras"
    if not model.exists():
        make_model(model)
    datas = {}
    for n in (args.images, 4 * args.images):
        datas[n] = work / f"data{n}"
        if not datas[n].exists():
            make_images(datas[n], n)
    build = [sys.executable, "-m", "reportgen", "build", "--model", str(model), "-q", "--force"]
    head, address, temp = start_head(args.workers)
    ok = True
    try:
        times = {"local": [], "ray": [], "cluster": []}
        memory = {"local": [], "ray": [], "cluster": []}
        variants = {
            "local": [],
            "ray": ["--engine", "ray", "--workers", str(args.workers)],
            "cluster": ["--engine", "ray", "--workers", str(args.workers), "--ray-address", address],
        }
        for r in range(args.rounds):
            order = ["local", "ray", "cluster"] if r % 2 == 0 else ["cluster", "ray", "local"]
            for name in order:
                env_out = work / f"out_{name}"
                seconds, peak = run(build + ["--data", str(datas[args.images]), "--out", str(env_out), *variants[name]], work)
                times[name].append(seconds)
                memory[name].append(peak)
                print(f"  round {r + 1}: {name:8s} {seconds:6.1f} s  driver peak {peak / 1e6:6.0f} MB", flush=True)
        reports = {name: json.loads((work / f"out_{name}" / "report.json").read_text()) for name in variants}
        same = reports["local"] == reports["ray"] == reports["cluster"]
        print(f"report.json identical (local, ray, cluster): {same}")
        ok &= same
        for name in ("ray", "cluster"):
            ratios = [a / b for a, b in zip(times[name], times["local"])]
            print(f"time {name:8s} / local: {median(ratios):.2f} (rounds {min(ratios):.2f}-{max(ratios):.2f}), {args.images} images, "
                  f"{args.workers} workers on {os.cpu_count()} cores")
        print(f"driver peak memory cluster / local: {median(memory['cluster']) / median(memory['local']):.2f}")
        big_s, big = run(build + ["--data", str(datas[4 * args.images]), "--out", str(work / "out_big"), *variants["cluster"]], work)
        local_big_s, _ = run(build + ["--data", str(datas[4 * args.images]), "--out", str(work / "out_big_local")], work)
        marginal = (big_s - median(times["cluster"])) / (local_big_s - median(times["local"]))
        print(f"marginal time per extra image, {args.images} -> {4 * args.images} images, cluster / local: {marginal:.2f} "
              "(the per-image overhead once the workers are up)")
        growth = big / median(memory["cluster"])
        print(f"driver peak memory at {4 * args.images} / at {args.images} images (cluster): {growth:.2f}  (target <= 1.25) "
              f"{'PASS' if growth <= 1.25 else 'FAIL'}")
        ok &= growth <= 1.25
    finally:
        stop_head(head, temp)
    parts = work / "parts"
    shutil.rmtree(parts, ignore_errors=True)
    run(build + ["--data", str(datas[args.images]), "--shard", "0/1", "--partial-out", str(parts)], work)
    blob = next(parts.glob("*.npz")).stat().st_size
    report = json.loads((work / "out_local" / "report.json").read_text())
    units = sum(layer["units"] for layer in report["layers"])
    print(f"notebook CNN partial state: {blob / 1e6:.2f} MB = {blob / units:.0f} bytes per unit ({units} units, K=16)")
    if args.resnet:
        resnet_partial(work)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
