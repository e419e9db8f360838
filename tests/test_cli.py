"""The command line: exit codes, one-line errors, and output that is never half-written."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import badfiles
from conftest import FIXTURES, build_site
from reportgen.cli import main
from reportgen.writer import MARKER


def run_cli(capsys, *args: str) -> tuple[int, str]:
    code = main([*args])
    return code, capsys.readouterr().err


def snapshot(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if "reportgen-tmp" in p.name or "reportgen-old" in p.name)


def assert_one_line_error(code: int, err: str, *fragments: str) -> None:
    """Exit 2 and exactly one `error:` line, the last one (progress lines 'reportgen: ...' may come before it)."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert lines and lines[-1].startswith("error: "), err
    assert all(line.startswith("reportgen: ") for line in lines[:-1]), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[-1], lines[-1]


def test_usage_errors(capsys):
    code, err = run_cli(capsys, "build", "--data", "x", "--out", "y")
    assert_one_line_error(code, err, "--model", "reportgen build --help")
    code, err = run_cli(capsys, "build", "--model", "m", "--data", "d", "--out", "o", "--batch-size", "0")
    assert_one_line_error(code, err, "--batch-size", "must be 1 or more")
    code, err = run_cli(capsys, "build", "--model", "m", "--data", "d", "--out", "o", "--rescale", "abc")
    assert_one_line_error(code, err, "--rescale")
    code, err = run_cli(capsys, "nonsense")
    assert_one_line_error(code, err, "invalid choice")


def test_bad_inputs_are_one_line_errors(capsys, tmp_path, tiny_model_path, tiny_data):
    out = str(tmp_path / "out")
    code, err = run_cli(capsys, "build", "--model", str(tmp_path / "nope.keras"), "--data", str(tiny_data), "--out", out)
    assert_one_line_error(code, err, "nope.keras: no such file")
    code, err = run_cli(capsys, "build", "--model", str(tiny_model_path), "--data", str(tmp_path / "nodata"), "--out", out)
    assert_one_line_error(code, err, "nodata: no such folder")
    code, err = run_cli(capsys, "build", "--model", str(FIXTURES / "legacy_lambda.h5"), "--data", str(tiny_data), "--out", out)
    assert_one_line_error(code, err, "legacy_lambda.h5", "--unsafe")
    code, err = run_cli(capsys, "build", "--model", str(tiny_model_path), "--data", str(tiny_data), "--out", out, "--unit", "c9:0:0:0")
    assert_one_line_error(code, err, "no layer with feature maps is called 'c9'", "c1, p1, c2")
    code, err = run_cli(capsys, "build", "--model", str(tiny_model_path), "--data", str(tiny_data), "--out", out, "--unit", "c2:9:0:0")
    assert_one_line_error(code, err, "c2 has 5 rows, 5 columns and 5 channels")
    code, err = run_cli(capsys, "build", "--model", str(tiny_model_path), "--data", str(tiny_data), "--out", out, "--image", str(tmp_path / "x.png"))
    assert_one_line_error(code, err, "--image", "no such file")
    (tmp_path / "bad.png").write_bytes(b"")
    code, err = run_cli(capsys, "build", "--model", str(tiny_model_path), "--data", str(tiny_data), "--out", out, "--image", str(tmp_path / "bad.png"))
    assert_one_line_error(code, err, "bad.png: empty file")
    assert not (tmp_path / "out").exists()


def test_lambda_model_builds_with_unsafe(tmp_path, tiny_data):
    assert build_site(FIXTURES / "legacy_lambda.h5", tiny_data, tmp_path / "out", "--unsafe") == 0


def test_dataset_of_only_bad_files_is_an_error(capsys, tmp_path, tiny_model_path):
    data = tmp_path / "bad"
    badfiles.make_zero_byte(data / "cats" / "a.png")
    badfiles.make_text_as_jpeg(data / "dogs" / "b.jpg")
    code, err = run_cli(capsys, "build", "--model", str(tiny_model_path), "--data", str(data), "--out", str(tmp_path / "o"), "-q")
    assert_one_line_error(code, err, "none of its 2 image files could be read")
    (tmp_path / "empty").mkdir()
    code, err = run_cli(capsys, "build", "--model", str(tiny_model_path), "--data", str(tmp_path / "empty"), "--out", str(tmp_path / "o"))
    assert_one_line_error(code, err, "no images found")


def test_skipped_files_are_listed_on_the_index(tmp_path, tiny_model_path, tiny_data):
    badfiles.make_truncated_jpeg(tiny_data / "cats" / "cut.jpg")
    badfiles.make_huge_png(tiny_data / "dogs" / "huge.png")
    badfiles.make_cmyk_jpeg(tiny_data / "dogs" / "cmyk.jpg")
    badfiles.make_16bit_gray_png(tiny_data / "cats" / "deep.png")
    assert build_site(tiny_model_path, tiny_data, tmp_path / "out") == 0
    index = (tmp_path / "out" / "index.html").read_text()
    assert "2 files skipped" in index and "cats/cut.jpg" in index and "dogs/huge.png" in index
    assert "23 images read" in index  # 21 + the CMYK and 16-bit files


def test_subprocess_module_entry_point(tmp_path, tiny_model_path, tiny_data):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    bad = subprocess.run(
        [sys.executable, "-m", "reportgen", "build", "--model", str(tmp_path / "missing.h5"), "--data", str(tiny_data), "--out", str(tmp_path / "o")],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert_one_line_error(bad.returncode, bad.stderr, "missing.h5: no such file")
    good = subprocess.run(
        [sys.executable, "-m", "reportgen", "build", "--model", str(tiny_model_path), "--data", str(tiny_data), "--out", str(tmp_path / "site")],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert good.returncode == 0, good.stderr
    assert "Traceback" not in good.stderr and "open " in good.stderr
    assert (tmp_path / "site" / "index.html").is_file()


def test_out_folder_rules(capsys, tmp_path, tiny_model_path, tiny_data):
    mine = tmp_path / "notes"
    mine.mkdir()
    (mine / "thesis.txt").write_text("precious")
    code, err = run_cli(capsys, "build", "--model", str(tiny_model_path), "--data", str(tiny_data), "--out", str(mine), "-q")
    assert_one_line_error(code, err, "not a reportgen site", "--force")
    assert (mine / "thesis.txt").read_text() == "precious"

    code, err = run_cli(capsys, "build", "--model", str(tiny_model_path), "--data", str(tiny_data), "--out", str(tiny_data / "site"), "-q")
    assert_one_line_error(code, err, "inside the dataset folder")
    code, err = run_cli(capsys, "build", "--model", str(tiny_model_path), "--data", str(tiny_data), "--out", str(tmp_path), "-q", "--force")
    assert_one_line_error(code, err, "holds the dataset")
    assert (tiny_data / "cats").is_dir()

    empty = tmp_path / "empty_out"
    empty.mkdir()
    assert build_site(tiny_model_path, tiny_data, empty) == 0  # an empty folder is fine
    assert (empty / MARKER).is_file()
    assert build_site(tiny_model_path, tiny_data, empty, "--seed", "3") == 0  # a previous report is replaced
    assert build_site(tiny_model_path, tiny_data, mine, "--force") == 0  # --force replaces anything else
    assert not (mine / "thesis.txt").exists() and (mine / "index.html").is_file()
    assert leftovers(tmp_path) == []


def test_failed_build_leaves_previous_site_untouched(tmp_path, tiny_model_path, tiny_data, monkeypatch):
    out = tmp_path / "site"
    assert build_site(tiny_model_path, tiny_data, out) == 0
    before = snapshot(out)

    import reportgen.writer

    calls = {"n": 0}
    real = Path.write_bytes

    def flaky(self, data):
        calls["n"] += 1
        if calls["n"] == 20:
            raise KeyboardInterrupt  # Ctrl-C in the middle of writing
        return real(self, data)

    monkeypatch.setattr(Path, "write_bytes", flaky)
    with pytest.raises(KeyboardInterrupt):
        reportgen.writer.write_site(out, {f"f{i}.txt": b"x" for i in range(50)})
    monkeypatch.undo()
    assert snapshot(out) == before
    assert leftovers(tmp_path) == []

    # A build that fails for the user's reasons leaves it as it was, too.
    assert build_site(tiny_model_path, tiny_data, out, "--unit", "nope:0:0:0") == 2
    assert snapshot(out) == before


def test_stale_temporary_folder_of_a_killed_build_is_cleaned(tmp_path, tiny_model_path, tiny_data):
    stale = tmp_path / ".site.reportgen-tmp-dead"
    stale.mkdir()
    (stale / ".reportgen-incomplete").write_bytes(b"")
    not_ours = tmp_path / ".site.reportgen-tmp-keep"
    not_ours.mkdir()  # no incomplete marker: not provably ours, left alone
    assert build_site(tiny_model_path, tiny_data, tmp_path / "site") == 0
    assert not stale.exists() and not_ours.exists()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupting_a_real_build(tmp_path, tiny_model_path, sig):
    """Ctrl-C or kill during the pass: exit 130, previous site as it was, no temporary folder."""
    data = tmp_path / "data"
    badfiles.make_dataset(data, {"a": 400, "b": 400})
    out = tmp_path / "site"
    assert build_site(tiny_model_path, data, out, "--batch-size", "64") == 0
    before = snapshot(out)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    proc = subprocess.Popen(
        [sys.executable, "-m", "reportgen", "build", "--model", str(tiny_model_path), "--data", str(data), "--out", str(out), "--batch-size", "1", "--seed", "5"],
        stderr=subprocess.PIPE, text=True, env=env,
    )
    # Wait until the pass has started (its first log line), then interrupt.
    line = proc.stderr.readline()
    assert "dataset" in line, line
    time.sleep(1.0)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    assert snapshot(out) == before
    assert leftovers(tmp_path) == []


def test_a_signal_during_the_batch_loops_waits_for_the_next_step():
    """Raised from the handler in the middle of TensorFlow's calls, KeyboardInterrupt surfaced as a
    SystemError (about 1 run in 12 of a build interrupted at random) or crashed the process."""
    from reportgen.cli import _on_signal
    from reportgen.errors import Interruption, between_steps, check_interruption

    try:
        with pytest.raises(KeyboardInterrupt):
            with between_steps():
                _on_signal(signal.SIGTERM, None)  # within: only noted
                assert Interruption.requested
                with pytest.raises(KeyboardInterrupt):
                    check_interruption()  # the loops' check before each step
        Interruption.requested = False
        with pytest.raises(KeyboardInterrupt):
            _on_signal(signal.SIGINT, None)  # outside the loops: at once
        assert Interruption.deferred == 0
    finally:
        Interruption.requested = False


def _model_files(tmp_path: Path) -> dict[str, Path]:
    import keras

    files = {}
    (tmp_path / "notes.h5").write_text("not a model")
    files["not a model"] = tmp_path / "notes.h5"
    data = (FIXTURES / "legacy_sequential.h5").read_bytes()
    (tmp_path / "cut.h5").write_bytes(data[: len(data) // 3])
    files["truncated .h5"] = tmp_path / "cut.h5"
    saved = tmp_path / "exported"
    saved.mkdir()
    (saved / "saved_model.pb").write_bytes(b"\x08\x01")
    files["SavedModel folder"] = saved
    dense = keras.Sequential([keras.Input((16, 16, 3)), keras.layers.Flatten(), keras.layers.Dense(1)])
    dense.save(tmp_path / "dense.keras")
    files["no 4-D layer"] = tmp_path / "dense.keras"
    a, b = keras.Input((16, 16, 3)), keras.Input((16, 16, 3))
    keras.Model([a, b], keras.layers.Add()([keras.layers.Conv2D(1, 3)(a), keras.layers.Conv2D(1, 3)(b)])).save(tmp_path / "two.keras")
    files["several inputs"] = tmp_path / "two.keras"
    keras.Sequential([keras.Input((10,)), keras.layers.Dense(2)]).save(tmp_path / "tabular.keras")
    files["input not an image"] = tmp_path / "tabular.keras"
    return files


def test_every_unusable_model_is_a_one_line_error(capsys, tmp_path, tiny_data):
    expected = {
        "not a model": "is not a Keras model file",
        "truncated .h5": "cannot load the model",
        "SavedModel folder": "SavedModel folder",
        "no 4-D layer": "no layer with a 4-D",
        "several inputs": "2 inputs",
        "input not an image": "not an image",
    }
    for what, path in _model_files(tmp_path).items():
        code, err = run_cli(capsys, "build", "--model", str(path), "--data", str(tiny_data), "--out", str(tmp_path / "out"), "-q")
        assert_one_line_error(code, err, str(path), expected[what])
    assert not (tmp_path / "out").exists()
