"""The training callback's cost per snapshot against a plain predict over the same probe set, side by side.

Issue 10's target: a snapshot (mining the probe set with the current weights, and rewriting the
site) costs at most 1.5x a plain `model.predict` over the probe images. The probe images are
decoded once by the callback and kept in memory, so the plain side predicts the same decoded
pixels (x/255, `model.predict(..., batch_size=32)`): both sides leave decoding out.

Rounds are interleaved (predict, snapshot, snapshot, predict, ...) after one warm-up snapshot (its
graph tracing and first site write are left out); every figure is the median of per-round ratios.
Printed: the whole snapshot / predict (the target), and its mining part alone / predict.

    python bench/bench_callback.py [--images 512] [--rounds 5] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args(argv)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench_callback"))
    work.mkdir(parents=True, exist_ok=True)
    from generated import make_images, make_model

    data = work / f"data{args.images}"
    if not data.exists():
        make_images(data, args.images)
    path = work / "notebook.keras"
    if not path.exists():
        make_model(path)

    import numpy as np

    import reportgen.model  # noqa: F401  (TensorFlow, quietly)
    import keras

    from reportgen.keras import ReportCallback

    model = keras.models.load_model(path)
    callback = ReportCallback(data=data, out=work / "site", probe_images=args.images, force=True)
    callback.set_model(model)
    callback.snapshot(0, {})  # warm-up: set-up, tracing, first site
    pixels = np.concatenate([b.pixels for b in callback._probe_batches]).astype("float32") / 255.0
    model.predict(pixels, batch_size=32, verbose=0)  # warm-up: Keras's predict function

    whole, mining, plain = [], [], []
    for r in range(args.rounds):
        for side in (("predict", "snapshot") if r % 2 == 0 else ("snapshot", "predict")):
            started = time.perf_counter()
            if side == "predict":
                model.predict(pixels, batch_size=32, verbose=0)
                plain.append(time.perf_counter() - started)
            else:
                callback.snapshot(r + 1, {})
                whole.append(time.perf_counter() - started)
                mining.append(callback.evolution.snapshots[-1].seconds)

    def median(values):
        values = sorted(values)
        return values[len(values) // 2]

    whole_ratio = median([w / p for w, p in zip(whole, plain)])
    mining_ratio = median([m / p for m, p in zip(mining, plain)])
    print(f"probe set: {len(pixels)} images; plain predict {median(plain):.2f} s, snapshot {median(whole):.2f} s (for scale only)")
    print(f"  mining part of a snapshot / plain predict: {mining_ratio:.2f}")
    ok = whole_ratio <= 1.5
    print(f"  {'PASS' if ok else 'FAIL'}  whole snapshot (mining + site) / plain predict: {whole_ratio:.2f}   (target <= 1.5)")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
