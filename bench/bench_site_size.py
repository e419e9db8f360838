"""Site size for the notebook's case: its CNN (150x150x3) over 2,000 images, `reportgen build` defaults.

The target (issue: "a site for the notebook's model and its 2,000 images stays under 60 MB") is a
size, not a time, so this prints bytes per part of the site and the total against the target.
The images are generated (smooth random blobs plus grain, 200x180 JPEG, as bench_scan.py makes
them) and the model has seeded random weights: galleries of a random network spread over more
distinct images than a trained one's, so this errs on the large side.

    python bench/bench_site_size.py [--images 2000] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import collections
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_scan import make_images, make_model  # noqa: E402

TARGET_MB = 60


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="reportgen-size-") as tmp:
        work = args.workdir or Path(tmp)
        data = work / f"data{args.images}"
        if not data.exists():
            make_images(data, args.images)
        model = work / "notebook.keras"
        if not model.exists():
            make_model(model)
        from reportgen.build import BuildOptions, build

        out = work / "site"
        result = build(BuildOptions(model=model, data=data, out=out, quiet=True, force=True))
        parts: dict[str, int] = collections.Counter()
        for path in out.rglob("*"):
            if path.is_file():
                rel = path.relative_to(out).parts
                parts[rel[0] if len(rel) > 1 else "(root files)"] += path.stat().st_size
        report = result.report
        print(f"reportgen site size: notebook CNN, {report['dataset']['num_images']} images, top-K {report['options']['top_k']}, "
              f"{len(report['units'])} units")
        for name, size in sorted(parts.items(), key=lambda kv: -kv[1]):
            print(f"  {name:<14} {size / 1e6:8.2f} MB")
        total = sum(parts.values())
        thumbs = len(list((out / "img").iterdir()))
        print(f"  {'total':<14} {total / 1e6:8.2f} MB in {result.files} files; {thumbs} thumbnails (images in some top K, each stored once)")
        ok = total < TARGET_MB * 1e6
        print(f"{'PASS' if ok else 'FAIL'}  site is {total / 1e6:.1f} MB (target < {TARGET_MB} MB)")
        return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
