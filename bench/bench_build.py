"""Whole `reportgen build` against a plain `model.predict` process over the same folder, side by side.

For each case, the two run as separate processes, interleaved round by round (predict, build,
predict, build, ...), and every figure printed is a ratio measured within one run: time of the
build / time of the plain process, peak memory of the build / peak memory of the plain process.
Absolute seconds are shown for scale only (the machine is shared).

The plain process is what a user's own script does: load the model, read the folder with
`keras.utils.image_dataset_from_directory` (TensorFlow decoding in parallel), x/255, `model.predict`.

Cases (issue 8's targets):
  notebook   the notebook-style CNN (150x150x3), 2,000 images      time <= 1.5, memory <= 1.5
  mobilenet  MobileNetV2 (alpha 0.35, 96x96) in a Sequential, 2,000 images   time <= 1.5
  resnet     ResNet50 (weights=None, 224x224), 500 images          time <= 1.5, site <= 150 MB in <= 3,000 files
  marginal   notebook CNN, 2,000 and 8,000 images: extra time per extra image, build / predict <= 1.25
  mobilenet-size  MobileNetV2 over 960 images: site <= 40 MB

    python bench/bench_build.py [--cases notebook,mobilenet,resnet,marginal,mobilenet-size] [--rounds 2] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))

PLAIN = r"""
import os, sys, time
t0 = time.time()
import keras
model = keras.models.load_model(sys.argv[1], compile=False)
h, w = model.inputs[0].shape[1:3]
ds = keras.utils.image_dataset_from_directory(sys.argv[2], image_size=(h, w), interpolation="nearest", batch_size=32,
                                              shuffle=False, labels=None, verbose=False)
ds = ds.map(lambda x: keras.ops.cast(x, "float32") / 255.0)
model.predict(ds, verbose=0)
"""


def make_case(work: Path, case: str, images: int) -> tuple[Path, Path]:
    from generated import make_images

    data = work / f"data{images}"
    if not data.exists():
        make_images(data, images)
    model = work / f"{case}.keras"
    if not model.exists():
        code = {
            "notebook": "from reportgen.demo import notebook_model as f; m = f()",
            "mobilenet": ("base = keras.applications.MobileNetV2(include_top=False, weights=None, alpha=0.35, input_shape=(96, 96, 3)); "
                          "m = keras.Sequential([keras.Input((96, 96, 3)), base, keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(1, activation='sigmoid')])"),
            "resnet": "m = keras.applications.ResNet50(weights=None, classes=2, input_shape=(224, 224, 3))",
        }[case]
        script = f"import keras; keras.utils.set_random_seed(0); {code}; m.compile(loss='binary_crossentropy' if m.outputs[0].shape[-1] == 1 else 'sparse_categorical_crossentropy'); m.save(r'{model}')"
        subprocess.run([sys.executable, "-c", script], check=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    return model, data


def run(cmd: list[str]) -> tuple[float, float]:
    """Wall seconds and peak resident memory (bytes) of one child process."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    err = proc.stderr.read().decode(errors="replace")
    proc.stderr.close()
    if status != 0:
        raise SystemExit(f"{' '.join(cmd[:3])} ... failed:\n{err[-2000:]}")
    return seconds, usage.ru_maxrss * 1024


def side_by_side(model: Path, data: Path, out: Path, rounds: int) -> dict:
    plain, build = [], []
    for _ in range(rounds):
        plain.append(run([sys.executable, "-c", PLAIN, str(model), str(data)]))
        build.append(run([sys.executable, "-m", "reportgen", "build", "--model", str(model), "--data", str(data), "--out", str(out), "-q", "--force"]))
    ratios = sorted(b[0] / p[0] for p, b in zip(plain, build))
    memory = sorted(b[1] / p[1] for p, b in zip(plain, build))
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    files = sum(1 for f in out.rglob("*") if f.is_file())
    report = json.loads((out / "report.json").read_text())
    return {
        "time": ratios[len(ratios) // 2], "time_range": (ratios[0], ratios[-1]), "memory": memory[len(memory) // 2],
        "plain_s": min(p[0] for p in plain), "build_s": min(b[0] for b in build),
        "plain_gb": max(p[1] for p in plain) / 1e9, "build_gb": max(b[1] for b in build) / 1e9,
        "site_mb": size / 1e6, "files": files, "report_mb": (out / "report.json").stat().st_size / 1e6,
        "units": sum(layer["units"] for layer in report["layers"]),
    }


def line(name: str, value: float, target: float, unit: str = "") -> bool:
    ok = value <= target
    print(f"  {'PASS' if ok else 'FAIL'}  {name:<58} {value:8.2f}{unit}   (target <= {target:g}{unit})")
    return ok


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default="notebook,mobilenet,resnet,marginal,mobilenet-size")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args(argv)
    cases = args.cases.split(",")
    ok = True
    with tempfile.TemporaryDirectory(prefix="reportgen-bench-") as tmp:
        work = args.workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        for case, images in (("notebook", 2000), ("mobilenet", 2000), ("resnet", 500)):
            if case not in cases:
                continue
            model, data = make_case(work, case, images)
            r = side_by_side(model, data, work / f"site-{case}", args.rounds)
            print(f"{case}: {images} images, {r['units']:,} units; plain predict {r['plain_s']:.1f} s, {r['plain_gb']:.2f} GB; "
                  f"build {r['build_s']:.1f} s, {r['build_gb']:.2f} GB (for scale only)")
            ok &= line("build time / plain predict process time (median of rounds)", r["time"], 1.5)
            print(f"        per-round range {r['time_range'][0]:.2f} to {r['time_range'][1]:.2f}")
            ok &= line("build peak memory / plain predict peak memory", r["memory"], 1.5)
            ok &= line("report.json size", r["report_mb"], 1.0, " MB")
            if case == "resnet":
                ok &= line("site size", r["site_mb"], 150, " MB")
                ok &= line("site files", r["files"], 3000)
        if "mobilenet-size" in cases:
            model, data = make_case(work, "mobilenet", 960)
            r = side_by_side(model, data, work / "site-mobilenet960", 1)
            print(f"mobilenet over 960 images: {r['files']} files")
            ok &= line("site size", r["site_mb"], 40, " MB")
        if "marginal" in cases:
            model, small = make_case(work, "notebook", 2000)
            _, large = make_case(work, "notebook", 8000)
            a = side_by_side(model, small, work / "site-m2000", args.rounds)
            b = side_by_side(model, large, work / "site-m8000", args.rounds)
            per_build = (b["build_s"] - a["build_s"]) / 6000
            per_plain = (b["plain_s"] - a["plain_s"]) / 6000
            print(f"marginal cost per extra image (2,000 -> 8,000): build {per_build * 1e3:.2f} ms, plain {per_plain * 1e3:.2f} ms (for scale)")
            ok &= line("marginal build cost / marginal plain predict cost", per_build / per_plain, 1.25)
            ok &= line("peak memory at 8,000 / at 2,000 images (build)", b["build_gb"] / a["build_gb"], 1.1)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
