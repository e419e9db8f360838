"""reportgen: a static site of what a Keras image classifier computes, layer by layer and unit by unit.

    from reportgen import build_report
    report = build_report(model, "data/train", "site/")   # a keras.Model or a model file
    report.summary_path                                    # site/summary.html: the report in one file
    report                                                 # in a notebook: shows that summary inline

Importing reportgen changes nothing in your process: no environment variables, no file
descriptors, no logging configuration. TensorFlow loads when a report is built.

The stages (folders show them): model/ (load, repair, preprocess, trace), engines/ (the pass),
site/ (pages, data files, summary), integrations/ (MLflow, the Keras callback); build.py runs them
in order, cli.py is the command line.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path

__version__ = "0.2.0"

__all__ = ["Report", "build_report", "__version__"]


@dataclass
class Report:
    """A built report: where it was written and its report.json data."""

    out: Path
    files: int
    bytes: int
    data: dict  # report.json

    @property
    def summary_path(self) -> Path:
        return self.out / "summary.html"

    @property
    def index_path(self) -> Path:
        return self.out / "index.html"

    def _repr_html_(self) -> str:
        """In a notebook: the one-file summary, in a frame (it needs no other file)."""
        if not self.summary_path.is_file():
            return f"<p>reportgen: no summary.html in {html.escape(str(self.out))}</p>"
        text = self.summary_path.read_text(encoding="utf-8")
        return (f'<iframe srcdoc="{html.escape(text, quote=True)}" style="width: 100%; height: 720px; border: 1px solid #ccc" '
                f'sandbox="allow-same-origin" title="reportgen summary"></iframe>')

    def show(self) -> None:
        """Display the summary inline in Jupyter (prints where it is elsewhere)."""
        try:
            from IPython.display import HTML, display
        except ImportError:
            print(f"reportgen: {self.summary_path} (open {self.index_path} for the whole site)")
            return
        display(HTML(self._repr_html_()))


def build_report(model, data, out, *, mlflow: bool = False, **options) -> Report:
    """Build the site for `model` (a keras.Model or a model file) over the image folder `data` into `out`.

    Keyword options are the command line's, with underscores: preprocess="tf", interpolation="bilinear",
    top_k=16, batch_size=32, layers=["conv*"], relevance=True, max_gallery=64, class_names=path,
    summary_only=True, input_size=(224, 224), output="name", force=True, quiet=False, ... (see
    `reportgen build --help`). mlflow=True also logs the report to the active MLflow run (or a new one).
    Raises reportgen.errors.UserError with a one-line reason for bad input.
    """
    from dataclasses import fields

    from reportgen.build import BuildOptions, build
    from reportgen.errors import UserError

    known = {f.name for f in fields(BuildOptions)} - {"model", "data", "out", "shard", "partial_out", "partials"}
    unknown = sorted(set(options) - known)
    if unknown:
        raise TypeError(f"build_report() got unknown option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    options.setdefault("quiet", True)
    for key in ("images",):
        if key in options:
            options[key] = [Path(p) for p in options[key]]
    if isinstance(model, str):
        model = Path(model)
    result = build(BuildOptions(model=model, data=Path(data), out=Path(out), **options))
    report = Report(out=Path(result.out), files=result.files, bytes=result.bytes, data=result.report)
    if mlflow:
        try:
            from reportgen.integrations.mlflow import log_report
        except ImportError as exc:
            raise UserError(f"--mlflow needs MLflow ({exc}): pip install 'reportgen[mlflow]'") from None
        log_report(report)
    return report
