"""Experiment records and notebooks: the Python API, a clean import, summary.html, a real MLflow store,
the training callback in a real model.fit, comparing two reports, --config and published paths."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import badfiles
from conftest import build_site, load_like_keras, site_units, tiny_sequential

PLAIN_IMPORT = r"""
import json, os
before = dict(os.environ)
import tensorflow, keras
print(json.dumps(sorted(k for k in set(os.environ) | set(before) if os.environ.get(k) != before.get(k))))
"""

CLEAN_IMPORT = r"""
import gc, json, logging, os, sys
def state():
    root = logging.getLogger()
    return {"env": dict(os.environ), "fd2": os.fstat(2).st_ino, "handlers": [type(h).__name__ for h in root.handlers],
            "level": root.level, "loggers": sorted(logging.root.manager.loggerDict),
            "gc": [gc.isenabled(), gc.get_freeze_count(), gc.get_threshold()]}
before = state()
import reportgen
from reportgen import build_report
after_import = state()
import reportgen.model.tf  # what building a report loads: TensorFlow and Keras
after_tf = state()
print(json.dumps({"import": after_import == before, "env_tf": after_tf["env"] == before["env"], "fd2": after_tf["fd2"] == before["fd2"],
                  "handlers": after_tf["handlers"] == before["handlers"] and after_tf["level"] == before["level"],
                  "gc": after_tf["gc"] == before["gc"],
                  "changed_env": sorted(k for k in set(after_tf["env"]) | set(before["env"]) if after_tf["env"].get(k) != before["env"].get(k))}))
"""


def test_importing_reportgen_changes_nothing():
    """Importing reportgen changes nothing; loading TensorFlow through it changes only what TensorFlow's
    own import changes (its TF2_BEHAVIOR, KMP_* settings), and reportgen's own settings are put back."""
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "KERAS_BACKEND")}
    plain = subprocess.run([sys.executable, "-c", PLAIN_IMPORT], capture_output=True, text=True, env=env, check=True)
    tensorflow_own = set(json.loads(plain.stdout.strip().splitlines()[-1]))
    env["KERAS_BACKEND"] = "jax"  # the user's choice for their own work: put back after Keras loads
    result = subprocess.run([sys.executable, "-c", CLEAN_IMPORT], capture_output=True, text=True, env=env, check=True)
    found = json.loads(result.stdout.strip().splitlines()[-1])
    assert found["import"], "importing reportgen changed the environment, fd 2 or logging"
    assert set(found["changed_env"]) <= tensorflow_own - {"KERAS_BACKEND", "TF_CPP_MIN_LOG_LEVEL"}, found["changed_env"]
    assert "KERAS_BACKEND" not in found["changed_env"] and "TF_CPP_MIN_LOG_LEVEL" not in found["changed_env"]
    assert found["fd2"] and found["handlers"]
    assert found["gc"], "loading TensorFlow through reportgen changed the garbage collector (only the command may)"


def test_build_report_from_a_model_object_and_from_a_path(tmp_path, tiny_data):
    from reportgen import Report, build_report
    from reportgen.errors import UserError

    model = tiny_sequential()
    report = build_report(model, tiny_data, tmp_path / "site", top_k=4, relevance=True)
    assert isinstance(report, Report) and report.index_path.is_file() and report.summary_path.is_file()
    assert report.data["model"]["name"] == "tiny" and report.data["options"]["top_k"] == 4
    x = load_like_keras(sorted(p for p in tiny_data.rglob("*.png")))
    from reportgen.dataset import discover

    records = discover(tiny_data).records
    x = load_like_keras([r.path for r in records])
    labels = np.array([r.label for r in records])
    assert report.data["metrics"]["accuracy"] == pytest.approx(np.mean((model.predict(x, verbose=0)[:, 0] > 0.5) == labels))
    frame = report._repr_html_()
    assert frame.startswith("<iframe srcdoc=") and "reportgen summary" in frame
    model.save(tmp_path / "m.keras")
    again = build_report(str(tmp_path / "m.keras"), tiny_data, tmp_path / "site2", top_k=4)
    assert again.data["metrics"] == {**report.data["metrics"]}
    with pytest.raises(TypeError, match="unknown option"):
        build_report(model, tiny_data, tmp_path / "site3", topk=3)
    with pytest.raises(UserError, match="no such folder"):
        build_report(model, tmp_path / "nowhere", tmp_path / "site3")


def test_mlflow_logs_metrics_params_and_artifacts(tmp_path, tiny_data, monkeypatch):
    import mlflow
    from mlflow.tracking import MlflowClient

    monkeypatch.chdir(tmp_path)  # MLflow puts the artifacts of a database store under ./mlruns
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    tiny_sequential().save(tmp_path / "m.keras")
    assert build_site(tmp_path / "m.keras", tiny_data, tmp_path / "site", "--mlflow", "--top-k", "4") == 0
    report = json.loads((tmp_path / "site" / "report.json").read_text())
    client = MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert run.data.metrics["accuracy"] == pytest.approx(report["metrics"]["accuracy"])
    assert run.data.metrics["loss"] == pytest.approx(report["metrics"]["loss"])
    assert run.data.metrics["accuracy/cats"] == pytest.approx(report["metrics"]["per_class"]["cats"])
    assert run.data.params["reportgen.top_k"] == "4"
    files = {a.path for a in client.list_artifacts(run.info.run_id, "reportgen")}
    assert {"reportgen/summary.html", "reportgen/report.json", "reportgen/site"} <= files
    site = {a.path for a in client.list_artifacts(run.info.run_id, "reportgen/site")}
    assert "reportgen/site/index.html" in site
    # the Python API logs into the active run
    from reportgen import build_report

    mlflow.set_tracking_uri(uri)
    with mlflow.start_run() as active:
        build_report(tmp_path / "m.keras", tiny_data, tmp_path / "site2", mlflow=True)
    logged = client.get_run(active.info.run_id)
    assert logged.data.metrics["accuracy"] == pytest.approx(report["metrics"]["accuracy"])


def test_training_callback_snapshots_equal_a_fresh_pass(tmp_path, tiny_data):
    import keras

    from reportgen.dataset import discover
    from reportgen.engines.local import scan_dataset
    from reportgen.keras import ReportCallback
    from reportgen.model import trace_model

    model = tiny_sequential()
    records = discover(tiny_data).records
    x = load_like_keras([r.path for r in records])
    y = np.array([r.label for r in records], dtype=np.float32)
    callback = ReportCallback(tiny_data, tmp_path / "site", every=1, top_k=4, probe_images=12, seed=1)

    class Stop(keras.callbacks.Callback):  # Ctrl-C during the third epoch
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 2:
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        model.fit(x, y, epochs=4, batch_size=4, verbose=0, callbacks=[callback, Stop()])
    snaps = callback.evolution.snapshots
    assert [s.epoch for s in snaps] == [1, 2]  # the interrupted epoch left the last complete site
    out = tmp_path / "site"
    assert (out / "evolution.html").is_file() and not any(p.name.startswith(".site.reportgen-tmp") for p in tmp_path.iterdir())
    report = json.loads((out / "report.json").read_text())
    assert report["options"]["epoch"] == 2 and report["dataset"]["num_images"] == 12
    # the last snapshot is what a fresh pass over the same probe images with the final weights finds
    fresh = scan_dataset(trace_model(model), callback.dataset, top_k=4, quiet=True)
    for name, units in fresh.units.items():
        np.testing.assert_array_equal(snaps[-1].top[name], units.images)
    overlap = callback.evolution.overlap("c1", 1)
    a, b = snaps[0].top["c1"], snaps[1].top["c1"]
    assert overlap == pytest.approx(np.mean([len(set(p) & set(q)) / 4 for p, q in zip(a.tolist(), b.tolist())]))
    evolution = (out / "data").glob("evolution-*.js")
    assert len(list(evolution)) == len(report["layers"])


def test_compare_two_reports(tmp_path, tiny_data):
    from reportgen.cli import main
    from reportgen.dataset import discover

    for seed in (0, 1):
        tiny_sequential(seed=seed).save(tmp_path / f"m{seed}.keras")
        assert build_site(tmp_path / f"m{seed}.keras", tiny_data, tmp_path / f"s{seed}", "--top-k", "4") == 0
    assert main(["compare", str(tmp_path / "s0"), str(tmp_path / "s1"), "--out", str(tmp_path / "cmp"), "-q"]) == 0
    result = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    r0, r1 = (json.loads((tmp_path / f"s{s}" / "report.json").read_text()) for s in (0, 1))
    assert result["metrics"]["accuracy"]["delta"] == pytest.approx(r1["metrics"]["accuracy"] - r0["metrics"]["accuracy"])
    records = discover(tiny_data).records
    x = load_like_keras([r.path for r in records])
    labels = np.array([r.label for r in records])
    import keras

    pred = [(keras.models.load_model(tmp_path / f"m{s}.keras").predict(x, verbose=0)[:, 0] > 0.5).astype(int) for s in (0, 1)]
    fixed = sorted(r.rel for r, a, b, t in zip(records, *pred, labels) if a != t and b == t)
    broken = sorted(r.rel for r, a, b, t in zip(records, *pred, labels) if a == t and b != t)
    assert sorted(c["image"] for c in result["changes"]["fixed"]) == fixed
    assert sorted(c["image"] for c in result["changes"]["broken"]) == broken
    units = [site_units(tmp_path / f"s{s}") for s in (0, 1)]
    assert result["layers"]["match"]
    for row in result["layers"]["rows"]:
        for c, value in enumerate(row["overlap"]):
            a = {t["image"] for t in next(u for u in units[0] if u["layer"] == row["layer"] and u["channel"] == c)["top"]}
            b = {t["image"] for t in next(u for u in units[1] if u["layer"] == row["layer"] and u["channel"] == c)["top"]}
            assert value == pytest.approx(len(a & b) / max(len(a), len(b)), abs=1e-4)
    assert "fixed" in (tmp_path / "cmp" / "index.html").read_text()


def test_labels_replace_the_paths_they_stand_for_in_the_config(tmp_path, monkeypatch):
    """The demo labels its temporary folder: run from a folder above it (e.g. from /tmp), the config
    used to publish the temporary folder's random name as a relative path."""
    from reportgen.build import BuildOptions, build_config

    monkeypatch.chdir(tmp_path)
    work = tmp_path / "reportgen-demo-x1y2"
    opts = BuildOptions(model=work / "m.keras", data=work / "train", out=tmp_path / "site", seed=3,
                        images=[work / "train" / "faces" / "a.png", tmp_path / "b.png"], model_label="m.keras", data_label="data/train")
    assert build_config(opts) == {"model": "m.keras", "data": "data/train", "images": ["data/train/faces/a.png", "b.png"], "seed": 3}
    plain = BuildOptions(model=work / "m.keras", data=work / "train", out=tmp_path / "site")
    assert build_config(plain) == {"model": "reportgen-demo-x1y2/m.keras", "data": "reportgen-demo-x1y2/train"}  # without labels: relative paths


def test_config_rebuilds_the_same_site_and_paths_stay_private(tmp_path, tiny_data, monkeypatch):
    from reportgen.cli import main

    monkeypatch.chdir(tmp_path)
    tiny_sequential().save(tmp_path / "m.keras")
    (tmp_path / "report.toml").write_text('model = "m.keras"\ndata = "data"\nout = "site"\ntop-k = 3\nlayers = ["c*"]\n')
    assert main(["build", "--config", "report.toml", "-q", "--seed", "2"]) == 0  # a flag wins over the file
    report = json.loads((tmp_path / "site" / "report.json").read_text())
    assert report["options"]["top_k"] == 3 and report["options"]["seed"] == 2 and [l["name"] for l in report["layers"]] == ["c1", "c2"]
    assert report["config"] == {"model": "m.keras", "data": "data", "seed": 2, "top_k": 3, "layers": ["c*"]}
    assert main(["build", "--config", "site/report.json", "--out", "again", "-q"]) == 0
    first = {p.relative_to(tmp_path / "site"): p.read_bytes() for p in (tmp_path / "site").rglob("*") if p.is_file()}
    second = {p.relative_to(tmp_path / "again"): p.read_bytes() for p in (tmp_path / "again").rglob("*") if p.is_file()}
    assert first.keys() == second.keys()
    assert [k for k in first if first[k] != second[k]] == []
    everything = "\n".join(p.read_text(errors="ignore") for p in (tmp_path / "site").rglob("*") if p.suffix in (".html", ".json", ".js"))
    assert str(tmp_path) not in everything
    outside = badfiles.make_rgb_png(tmp_path.parent / f"{tmp_path.name}-elsewhere" / "photo.png")
    assert main(["build", "--model", "m.keras", "--data", "data", "--out", "s2", "-q", "--image", str(outside)]) == 0
    assert str(outside) not in (tmp_path / "s2" / "index.html").read_text() and "photo.png" in (tmp_path / "s2" / "index.html").read_text()
    assert main(["build", "--model", "m.keras", "--data", "data", "--out", "s3", "-q", "--image", str(outside), "--show-paths"]) == 0
    assert str(outside) in (tmp_path / "s3" / "index.html").read_text()
    (tmp_path / "bad.toml").write_text("topk = 3\n")
    assert main(["build", "--config", "bad.toml"]) == 2
