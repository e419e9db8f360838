"""Log a report to MLflow: metrics, the build options as params, the site as a directory artifact,
summary.html and report.json. Into the active run, or a new one; MLflow's own environment variables
(MLFLOW_TRACKING_URI, MLFLOW_EXPERIMENT_NAME, ...) choose where. Needs `pip install 'reportgen[mlflow]'`.

MLflow's artifact viewer shows one HTML file in a sandboxed frame, where a multi-file site cannot
load its pages and pictures: summary.html is the file to open there; the site is beside it.
"""

from __future__ import annotations

import contextlib
import re

import mlflow

_NAME = re.compile(r"[^A-Za-z0-9_\-. /]")


def _metric_name(text: str) -> str:
    return _NAME.sub("_", text)[:250]


def _params(options: dict) -> dict[str, str]:
    out = {}
    for key, value in options.items():
        text = ", ".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)
        out[f"reportgen.{key}"] = text[:500]
    return out


def log_report(report, artifact_path: str = "reportgen") -> str:
    """Log `report` (reportgen.Report); returns the run id."""
    data = report.data
    active = mlflow.active_run()
    context = contextlib.nullcontext(active) if active else mlflow.start_run(run_name=f"reportgen {data['model']['name']}")
    with context as run:
        metrics = data["metrics"]
        values = {"accuracy": metrics.get("accuracy"), "loss": metrics.get("loss"), "top5_accuracy": metrics.get("top5")}
        for name, value in (metrics.get("per_class") or {}).items():
            values[_metric_name(f"accuracy/{name}")] = value
        mlflow.log_metrics({k: float(v) for k, v in values.items() if v is not None})
        params = _params(data.get("options", {}))
        params["reportgen.model"] = str(data["model"]["path"])[:500]
        params["reportgen.data"] = str(data["dataset"]["root"])[:500]
        mlflow.log_params(params)
        mlflow.log_artifacts(str(report.out), artifact_path=f"{artifact_path}/site")
        if report.summary_path.is_file():
            mlflow.log_artifact(str(report.summary_path), artifact_path=artifact_path)
        mlflow.log_artifact(str(report.out / "report.json"), artifact_path=artifact_path)
        return run.info.run_id
