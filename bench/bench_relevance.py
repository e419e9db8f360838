"""The --relevance pass against a plain predict pass over the same images, side by side in one run.

Targets (issue 9): the relevance pass (forward, backward, every unit's contribution to the
predicted class, top K by relevance, per-class sums) takes at most 3x a plain predict pass over
the same folder; its peak memory is flat in the dataset size (4N images / N images <= 1.1).

Both passes read the images with reportgen's own decoding threads, so the ratio is the model work.
Rounds are interleaved (predict, relevance, predict, ...); the figure is the median of per-round
ratios. The model is the notebook-style CNN (150 x 150 x 3) with seeded random weights.

    python bench/bench_relevance.py [--images 512] [--rounds 5] [--no-memory]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))

MEMORY = r"""
import resource, sys
sys.path.insert(0, sys.argv[3])
from bench_relevance import setup
traced, dataset, predictions, pre = setup(sys.argv[1], sys.argv[2])
from reportgen.engines.explain import relevance_pass
relevance_pass(traced, dataset, predictions, top_k=16, batch_size=32, preprocessing=pre, binary=True, quiet=True)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def setup(model_path: str, data: str):
    from reportgen.dataset import discover
    from reportgen.engines.local import scan_dataset
    from reportgen.engines.mining import DEFAULT_PREPROCESSING
    from reportgen.model import load_model, trace_model

    loaded = load_model(model_path)
    traced = trace_model(loaded.model, model_path, loss=loaded.loss)
    dataset = discover(data)
    scan = scan_dataset(traced, dataset, quiet=True)
    return traced, dataset, scan.predictions, DEFAULT_PREPROCESSING


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args(argv)
    from generated import make_images, make_model

    with tempfile.TemporaryDirectory(prefix="reportgen-relevance-") as tmp:
        work = args.workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        data, big = work / f"data{args.images}", work / f"data{4 * args.images}"
        for folder, n in ((data, args.images), (big, 4 * args.images)):
            if not folder.exists():
                make_images(folder, n)
        model = work / "notebook.keras"
        if not model.exists():
            make_model(model)

        from reportgen.dataset import iter_batches
        from reportgen.engines.explain import relevance_pass
        from reportgen.model.tf import tf

        traced, dataset, predictions, pre = setup(str(model), str(data))
        forward = tf.function(lambda x: traced.model(pre.apply(tf.cast(x, tf.float32)), training=False))

        def predict_pass() -> float:
            start = time.perf_counter()
            for batch in iter_batches(dataset.records, traced.spec, 32, []):
                forward(batch.pixels).numpy()
            return time.perf_counter() - start

        def relevance() -> float:
            start = time.perf_counter()
            relevance_pass(traced, dataset, predictions, top_k=16, batch_size=32, preprocessing=pre, binary=True, quiet=True)
            return time.perf_counter() - start

        predict_pass(), relevance()  # warm up (tracing)
        ratios = []
        for _ in range(args.rounds):
            p = predict_pass()
            r = relevance()
            ratios.append(r / p)
        ratios.sort()
        median = ratios[len(ratios) // 2]
        ok = median <= 3.0
        print(f"relevance pass / plain predict pass, {args.images} images, median of {args.rounds} rounds: {median:.2f} "
              f"(rounds {ratios[0]:.2f} to {ratios[-1]:.2f}; target <= 3.0) {'PASS' if ok else 'FAIL'}")
        print("  (each relevance pass traces a new graph on its first batch: that is inside the ratio)")
        if not args.no_memory:
            env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
            peaks = [int(subprocess.run([sys.executable, "-c", MEMORY, str(model), str(folder), str(HERE)], capture_output=True, text=True,
                                        env=env, check=True).stdout.split()[-1]) for folder in (data, big)]
            growth = peaks[1] / peaks[0]
            print(f"peak memory, {4 * args.images} images / {args.images} images: {growth:.3f} (target <= 1.10) {'PASS' if growth <= 1.1 else 'FAIL'}")
            ok &= growth <= 1.1
        return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
