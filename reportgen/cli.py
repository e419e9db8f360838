"""Command line: `reportgen build ...` and `reportgen demo ...` (also `python -m reportgen`).

Exit status: 0 done, 2 bad input or usage (one line `error: ...` on stderr, no traceback),
130 interrupted (nothing half-written is left behind).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import logging
import os
import signal
import sys
from pathlib import Path

from reportgen import __version__
from reportgen.errors import Interruption, UserError

log = logging.getLogger("reportgen")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, not argparse's usage block
        raise UserError(f"{message} (see '{self.prog} --help')")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be 1 or more")
    return value


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None


def _rescale(text: str) -> float:
    try:
        if "/" in text:
            num, den = text.split("/", 1)
            value = float(num) / float(den)
        else:
            value = float(text)
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number (e.g. 0.00392 or 1/255)") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be above 0")
    return value


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be 0 or more")
    return value


def _size(text: str) -> tuple[int, int]:
    parts = text.replace("x", ",").split(",")
    try:
        h, w = (int(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected H,W (e.g. 224,224)") from None
    if h < 1 or w < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: height and width must be 1 or more")
    return h, w


def _parser() -> argparse.ArgumentParser:
    from reportgen.model.preprocess import INTERPOLATIONS, MODES

    parser = _Parser(prog="reportgen", description="A static site of what a Keras image classifier computes, layer by layer and unit by unit.")
    parser.add_argument("--version", action="version", version=f"reportgen {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser, metavar="{build,merge,compare,demo}")

    b = sub.add_parser("build", help="build the site for your model and image folder", description="Run a Keras model over an image folder in one pass and write a static site.")
    b.add_argument("--config", type=Path, default=None, metavar="FILE",
                   help="options from a TOML file (keys as the options' names: top_k = 8), or from a report.json's config; flags given here win")
    b.add_argument("--model", type=Path, default=None, help="the model file, as you have it: .keras, .h5 (any Keras 2 or 3 era)")
    b.add_argument("--data", type=Path, default=None, help="DIR/<class>/* like flow_from_directory, or a flat folder of images")
    b.add_argument("--out", type=Path, default=None, help="folder to write the site into (replaced as a whole when done)")
    b.add_argument("--wait", action="store_true", help="if another build is writing --out, wait for it instead of failing")
    b.add_argument("--show-paths", action="store_true", help="show local paths as given (default: relative to the working folder, or base names)")
    b.add_argument("--image", action="append", default=[], type=Path, metavar="PATH", help="an image to draw through every layer (repeatable); default: one from the dataset, drawn with --seed")
    b.add_argument("--seed", type=_int, default=0, help="seed for the image drawn from the dataset (default 0)")
    b.add_argument("--batch-size", type=_positive_int, default=None,
                   help="images per batch (default 64, fewer for a model whose feature maps take more than 2.4 GB per batch)")
    b.add_argument("--max-channels", type=_positive_int, default=None, metavar="N", help="draw only the first N channels of each layer's feature maps")
    b.add_argument("--top-k", type=_positive_int, default=16, metavar="K", help="top images kept per unit (default 16)")
    b.add_argument("--layers", action="append", default=[], metavar="PATTERN",
                   help="only the layers whose name matches this glob get feature maps and units (repeatable; a leading ! excludes, e.g. '!*_bn'); default all")
    b.add_argument("--class-names", type=Path, default=None, metavar="FILE",
                   help="readable class names: JSON {folder: name}, one name per line in class order, or folder<TAB>name lines")
    b.add_argument("--mlflow", action="store_true", help="also log the report to MLflow (the active run or a new one; MLFLOW_TRACKING_URI chooses where)")
    b.add_argument("--summary-only", action="store_true", help="write only summary.html (the report in one self-contained file)")
    b.add_argument("--max-gallery", type=_positive_int, default=64, metavar="N", help="images per confusion cell's gallery (default 64)")
    b.add_argument("--cam-layer", default=None, metavar="NAME", help="the layer class activation maps read (default: the last with a map larger than 1 x 1)")
    b.add_argument("--relevance", action="store_true", help="one extra pass: every unit's contribution to each class, and its top images by relevance")
    b.add_argument("--unit", action="append", default=[], metavar="LAYER:ROW:COL:CHANNEL", help="also rank images by one position of one channel (repeatable)")
    b.add_argument("--preprocess", choices=MODES, default="auto", metavar="MODE",
                   help="how pixels (0..255) become the model's input: rescale (x * --rescale), none (raw), tf ([-1, 1]), "
                   "torch, caffe (keras.applications' preprocess_input modes); default auto: raw pixels when the model "
                   "starts with its own Rescaling/Normalization, otherwise x/255")
    b.add_argument("--rescale", type=_rescale, default=None, help="pixel scale factor for --preprocess rescale, as flow_from_directory's rescale (default 1/255)")
    b.add_argument("--interpolation", choices=INTERPOLATIONS, default="nearest", metavar="METHOD",
                   help="resize method: nearest (default, flow_from_directory via Pillow), or bilinear, bicubic, area, "
                   "lanczos3, lanczos5, gaussian, mitchellcubic (image_dataset_from_directory via tf.image.resize)")
    b.add_argument("--input-size", type=_size, default=None, metavar="H,W", help="the size to run a model whose input height and width are not fixed")
    b.add_argument("--output", default=None, metavar="NAME", help="the output to evaluate, for a model with several outputs (its layer name)")
    b.add_argument("--force", action="store_true", help="replace --out even if it is a folder that reportgen did not write")
    b.add_argument("--unsafe", action="store_true", help="allow loading models that run Python code (Lambda layers); only for files you trust")
    b.add_argument("--timestamp", action="store_true", help="print the build time in the page footers (off: builds are byte-identical)")
    b.add_argument("-q", "--quiet", action="store_true", help="no progress bars or messages, only errors")
    e = b.add_argument_group("where the pass runs (the same site whichever runs it)")
    e.add_argument("--engine", choices=("local", "ray"), default="local", help="local (this process, default) or ray (a Ray cluster; pip install 'reportgen[ray]')")
    e.add_argument("--ray-address", default=None, metavar="ADDR", help="the Ray cluster to use (default: a local Ray started for the run, or RAY_ADDRESS)")
    e.add_argument("--workers", type=_positive_int, default=None, metavar="N", help="Ray actors running the model (default: one per --cpus-per-worker CPUs, or per --gpus-per-worker GPUs)")
    e.add_argument("--gpus-per-worker", type=_fraction, default=0.0, metavar="G", help="GPUs per Ray actor (default 0)")
    e.add_argument("--cpus-per-worker", type=_fraction, default=1.0, metavar="C", help="CPUs per Ray actor (default 1)")
    e.add_argument("--ray-chunk", type=_positive_int, default=None, metavar="N", help="images per Ray task (default: about 4 tasks per worker, at most 16384)")
    e.add_argument("--shard", default=None, metavar="I/N", help="run only shard I of N (I from 0) and write its partial state to --partial-out; merge with 'reportgen merge'")
    e.add_argument("--partial-out", type=Path, default=None, metavar="DIR", help="the folder a --shard run writes its partial state into")

    m = sub.add_parser("merge", help="merge the partial states of sharded runs and build the site",
                       description="Merge the partial states written by 'reportgen build --shard I/N --partial-out DIR' (any order) and build the site, as one build would.")
    m.add_argument("partials", nargs="+", type=Path, metavar="DIR", help="folders (or files) holding the shards' partial states")
    m.add_argument("--out", required=True, type=Path, help="folder to write the site into")
    m.add_argument("--model", type=Path, default=None, help="the model file here, if not at the path the shards used")
    m.add_argument("--data", type=Path, default=None, help="the dataset folder here, if not at the path the shards used")
    m.add_argument("--force", action="store_true", help="replace --out even if it is a folder that reportgen did not write")
    m.add_argument("--wait", action="store_true", help="if another build is writing --out, wait for it instead of failing")
    m.add_argument("--show-paths", action="store_true", help="show local paths as given (default: relative to the working folder, or base names)")
    m.add_argument("--mlflow", action="store_true", help="also log the report to MLflow")
    m.add_argument("-q", "--quiet", action="store_true", help="no progress bars or messages, only errors")

    c = sub.add_parser("compare", help="two reports on the same dataset side by side", description="Compare two report folders built on the same dataset: metrics, changed predictions, units' top images.")
    c.add_argument("a", type=Path, help="the first report folder (A)")
    c.add_argument("b", type=Path, help="the second report folder (B)")
    c.add_argument("--out", required=True, type=Path, help="folder to write the comparison into")
    c.add_argument("--force", action="store_true", help="replace --out even if it is a folder that reportgen did not write")
    c.add_argument("-q", "--quiet", action="store_true", help="no messages, only errors")

    d = sub.add_parser("demo", help="train the embedded faces-vs-non-faces CNN and build its site (offline)", description="Build the sample site from scikit-image's bundled LFW photographs, offline.")
    d.add_argument("--out", required=True, type=Path, help="folder to write the site into")
    d.add_argument("--workdir", type=Path, default=None, help="keep the demo's data/train folder and model here (default: a temporary folder)")
    d.add_argument("--epochs", type=_positive_int, default=None, help="training epochs (default: the demo's own)")
    d.add_argument("--seed", type=_int, default=0, help="seed for data order, initial weights and the chosen image (default 0)")
    d.add_argument("--force", action="store_true", help="replace --out even if it is a folder that reportgen did not write")
    d.add_argument("-q", "--quiet", action="store_true", help="no progress bars or messages, only errors")
    return parser


@contextlib.contextmanager
def _quiet_fd2():
    """TensorFlow prints notices to file descriptor 2 while it loads, before its log level applies."""
    try:
        saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    except OSError:
        yield
        return
    sys.stderr.flush()
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _load_tensorflow_quietly() -> None:
    fresh = "tensorflow" not in sys.modules  # else main() runs in a process that has it already
    if fresh:
        # TensorFlow's pooling allocator for this process's tensors (unless the user chose). The
        # pass keeps every map it reduces alive beside the model's next op, so those ops cannot
        # write in place and each takes a fresh buffer; from malloc, a buffer that large is new
        # pages every batch (page faults cost more than the op: ResNet50's ReLUs ~5x slower than
        # in a plain predict). Pooled: whole builds 7-8% faster, same bytes, ~3-5% more peak
        # memory. Read once, at TensorFlow's first allocation; only the command sets it, like gc.
        os.environ.setdefault("TF_CPU_ALLOCATOR_USE_BFC", "true")
    try:
        with _quiet_fd2(), _garbage_collector_paused() if fresh else contextlib.nullcontext():
            import reportgen.model.tf  # noqa: F401
    except ImportError:
        pass  # build.py says what to install


@contextlib.contextmanager
def _garbage_collector_paused():
    """TensorFlow and Keras import ~700,000 objects that live as long as the process, and each of
    the half-dozen full collections during the import walks all of them (~1 s of the command's
    start, the same again in later collections). So the command imports with the collector paused,
    then moves what the import made out of every later collection (gc.freeze); garbage made after
    that is collected as usual. Only the command does this: `import reportgen` leaves the
    collector alone."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if enabled:
            gc.enable()


def _log_to_mlflow(result) -> None:
    from reportgen import Report

    try:
        from reportgen.integrations.mlflow import log_report
    except ImportError as exc:
        raise UserError(f"--mlflow needs MLflow ({exc}): pip install 'reportgen[mlflow]'") from None
    run = log_report(Report(out=Path(result.out), files=result.files, bytes=result.bytes, data=result.report))
    log.info("logged to MLflow run %s", run)


def _on_signal(signum, frame):  # Ctrl-C or `kill`: unwind, so the temporary folder is removed
    Interruption.requested = True  # in case the exception lands in a finalizer and is swallowed
    if not Interruption.deferred:  # else the loop over batches raises it at its next step (errors.between_steps)
        raise KeyboardInterrupt


# BuildOptions field <- the build parser's dest, where the two names differ
_RENAMED = {"images": "image", "units": "unit"}


def _build_parser_with_config(argv: list[str]) -> argparse.ArgumentParser:
    """The parser, with the --config file's values as the build command's defaults (flags still win)."""
    parser = _parser()
    if not argv or argv[0] != "build":
        return parser
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", type=Path, default=None)
    known, _ = pre.parse_known_args(argv[1:])
    if known.config is None:
        return parser
    from reportgen.config import read_config

    values = read_config(known.config)
    build = next(a for a in parser._subparsers._group_actions[0].choices.values() if a.prog.endswith(" build"))
    build.set_defaults(**{_RENAMED.get(k, k): v for k, v in values.items()})
    return parser


def build_options(args):
    """BuildOptions from the parsed `build` arguments."""
    from dataclasses import fields

    from reportgen.build import BuildOptions

    from reportgen.engines.shards import parse_shard

    sharded = args.shard is not None or args.partial_out is not None
    for name in ("model", "data") + (() if sharded else ("out",)):
        if getattr(args, name) is None:
            raise UserError(f"the following argument is required: --{name} (or give it in --config) (see 'reportgen build --help')")
    if sharded and (args.shard is None or args.partial_out is None):
        raise UserError("--shard I/N and --partial-out DIR go together: a shard writes its partial state, 'reportgen merge' builds the site")
    if sharded and args.engine == "ray":
        raise UserError("--shard runs one part in this process; --engine ray runs every part on Ray: use one or the other")
    values = {f.name: getattr(args, _RENAMED.get(f.name, f.name)) for f in fields(BuildOptions)
              if hasattr(args, _RENAMED.get(f.name, f.name))}
    values["shard"] = parse_shard(args.shard) if args.shard is not None else None
    values["out"] = values["out"] if values["out"] is not None else Path(".")
    return BuildOptions(**values)


def merge_options(args):
    """BuildOptions for `reportgen merge`: the shards' own options, with this machine's paths where given."""
    from reportgen.build import BuildOptions
    from reportgen.config import config_options
    from reportgen.engines.shards import partial_files, read_meta

    first = partial_files(args.partials)[0]
    config = read_meta(first).get("config")
    if not isinstance(config, dict):
        raise UserError(f"{first}: this partial state does not record the options it was built with")
    values = config_options(config, f"{first}")
    for name in ("model", "data"):
        if getattr(args, name) is not None:
            values[name] = getattr(args, name)
    values.update(out=args.out, force=args.force, wait=args.wait, show_paths=args.show_paths or values.get("show_paths", False),
                  quiet=args.quiet, partials=list(args.partials))
    return BuildOptions(**values)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        args = _build_parser_with_config(argv).parse_args(argv)
        options = build_options(args) if args.command == "build" else merge_options(args) if args.command == "merge" else None
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.command == "build" and args.rescale is not None and args.preprocess not in ("auto", "rescale"):
        print(f"error: --rescale goes with --preprocess rescale, not --preprocess {args.preprocess}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=logging.ERROR if args.quiet else logging.INFO, format="reportgen: %(message)s", stream=sys.stderr, force=True
    )
    Interruption.requested = False
    previous = {sig: signal.signal(sig, _on_signal) for sig in (signal.SIGINT, signal.SIGTERM)} if _main_thread() else {}
    try:
        _load_tensorflow_quietly()
        if args.command == "compare":
            from reportgen.compare import compare, write_comparison

            files, size = write_comparison(compare(args.a, args.b), args.out, args.force, {"report A": args.a, "report B": args.b})
            log.info("wrote %s (%d files, %.1f MB): open %s", args.out, files, size / 1e6, args.out / "index.html")
            return 0
        if args.command == "build" and options.shard is not None:
            from reportgen.build import build_shard

            build_shard(options)
            return 0
        if args.command in ("build", "merge"):
            from reportgen.build import build

            result = build(options)
        else:
            from reportgen.demo import run_demo

            result = run_demo(args.out, workdir=args.workdir, epochs=args.epochs, seed=args.seed, force=args.force, quiet=args.quiet)
        if getattr(args, "mlflow", False):
            _log_to_mlflow(result)
        log.info("wrote %s (%d files, %.1f MB): open %s", result.out, result.files, result.bytes / 1e6, result.out / "index.html")
        return 0
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted; nothing was written", file=sys.stderr)
        return 130
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        Interruption.requested = False


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()
