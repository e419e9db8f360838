"""Two builds at once, a full or read-only disk, too little memory, files that vanish: a clear
message every time, and the site never torn. Disks are real tmpfs mounts made by the tests (as
root, as CI runs; skipped with a reason elsewhere)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import badfiles
from conftest import build_site, tiny_sequential
from linkcheck import broken_links

ROOT = os.geteuid() == 0 if hasattr(os, "geteuid") else False


def read_site(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def one_line_error(code: int, err: str, *fragments: str) -> str:
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("reportgen: ")]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


@contextlib.contextmanager
def tmpfs(path: Path, size: str, readonly: bool = False):
    if not ROOT:
        pytest.skip("mounting a tmpfs needs root (CI runs as root)")
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}" + (",ro" if readonly else ""), "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if "reportgen-tmp" in p.name or "reportgen-old" in p.name)


def test_two_builds_on_one_folder_at_once(tmp_path, tiny_model_path, tiny_data):
    out = tmp_path / "site"
    command = [sys.executable, "-m", "reportgen", "build", "--model", str(tiny_model_path), "--data", str(tiny_data), "--out", str(out), "-q"]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    procs = [subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=env) for _ in range(2)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    err = next(e for code, e in results if code == 2)
    line = one_line_error(2, err, "another reportgen build is writing it", "pid ")
    assert str(out.name) in line
    files = read_site(out)
    assert "index.html" in files and "report.json" in files and ".reportgen-site" in files
    assert broken_links(files) == [] and leftovers(tmp_path) == []
    # with --wait, the second waits for the first, and both complete
    procs = [subprocess.Popen(command + ["--wait"], stderr=subprocess.PIPE, text=True, env=env) for _ in range(2)]
    assert [p.wait(timeout=300) for p in procs] == [0, 0]
    assert broken_links(read_site(out)) == [] and leftovers(tmp_path) == []


def test_a_temporary_folder_is_removed_only_when_its_build_is_gone(tmp_path, tiny_model_path, tiny_data):
    from reportgen.writer import OutLock, SiteFolder

    out = tmp_path / "site"
    stale = tmp_path / ".site.reportgen-tmp-killed"
    stale.mkdir()
    (stale / ".reportgen-incomplete").write_bytes(b"")
    with SiteFolder(out) as site:  # holds the lock: the killed build's folder goes
        assert not stale.exists()
        running = Path(site.tmp)
        # another process cannot take the lock while this one writes, so it cannot remove `running`
        probe = subprocess.run([sys.executable, "-c", "import sys; from reportgen.writer import OutLock; "
                                "OutLock(sys.argv[1]).__enter__()", str(out)], capture_output=True, text=True)
        assert probe.returncode != 0 and "another reportgen build is writing it" in probe.stderr
        assert running.exists()
        site.write("index.html", b"<!doctype html>")
        site.commit()
    with OutLock(out):  # free again
        pass


def test_disk_too_small_is_refused_before_writing(tmp_path, tiny_model_path, tiny_data, capsys):
    with tmpfs(tmp_path / "small", "100k") as disk:
        code = build_site(tiny_model_path, tiny_data, disk / "site")
        line = one_line_error(code, capsys.readouterr().err, "needs about", "MB free on", str(disk))
        assert "site" in line
        assert leftovers(disk) == [] and not (disk / "site").exists()


def test_disk_full_while_writing_keeps_the_previous_site(tmp_path, tiny_model_path, tiny_data, capsys, monkeypatch):
    with tmpfs(tmp_path / "small", "3m") as disk:
        out = disk / "site"
        assert build_site(tiny_model_path, tiny_data, out) == 0
        before = read_site(out)
        filler = disk / "filler.bin"
        free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
        filler.write_bytes(b"\0" * max(0, free - 64 * 1024))  # leave 64 KB: the next site cannot fit
        import reportgen.build

        monkeypatch.setattr(reportgen.build, "check_free_space", lambda out, needed: None)  # reach the write itself
        code = build_site(tiny_model_path, tiny_data, out, "--top-k", "3")
        one_line_error(code, capsys.readouterr().err, "cannot write the site: no space left on the device", str(out.name))
        assert read_site(out) == before and leftovers(disk) == []


def test_read_only_output_is_one_line_and_keeps_the_site(tmp_path, tiny_model_path, tiny_data, capsys):
    with tmpfs(tmp_path / "disk", "20m") as disk:
        out = disk / "site"
        assert build_site(tiny_model_path, tiny_data, out) == 0
        before = read_site(out)
        subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
        code = build_site(tiny_model_path, tiny_data, out)
        one_line_error(code, capsys.readouterr().err, "read-only file system")
        assert read_site(out) == before and leftovers(disk) == []


def test_dataset_on_a_read_only_mount_and_files_that_vanish(tmp_path, tiny_model_path, capsys):
    from reportgen.dataset import discover
    from reportgen.engines.local import scan_dataset
    from reportgen.model import trace_model

    data = tmp_path / "data"
    badfiles.make_dataset(data, {"cats": 4, "dogs": 3})
    (data / "cats" / "dangling.png").symlink_to(tmp_path / "nowhere.png")
    dataset = discover(data)
    gone = data / "dogs" / "img_001.png"
    gone.unlink()  # a file that vanishes after the listing, before the pass reads it
    scan = scan_dataset(trace_model(tiny_sequential()), dataset, quiet=True)
    reasons = {s.path: s.reason for s in scan.skipped}
    assert reasons["dogs/img_001.png"].startswith("cannot read the file") and reasons["cats/dangling.png"].startswith("cannot read the file")
    assert scan.num_images == len(dataset.records) - 2 == 6
    if ROOT:
        with tmpfs(tmp_path / "ro", "10m") as disk:
            subprocess.run(["cp", "-r", str(data), str(disk)], check=True)
            subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
            assert build_site(tiny_model_path, disk / "data", tmp_path / "site") == 0
    else:  # an unreadable class folder: listed, not fatal
        (data / "dogs").chmod(0)
        try:
            data_obj = discover(data)
            assert any(s.path == "dogs/" and "cannot list" in s.reason for s in data_obj.ignored)
        finally:
            (data / "dogs").chmod(0o755)


def test_out_of_memory_halves_the_batch_and_gives_the_same_result(tmp_path, monkeypatch, caplog):
    from reportgen.dataset import discover
    from reportgen.engines import mining
    from reportgen.engines.local import scan_dataset
    from reportgen.errors import UserError
    from reportgen.model import trace_model
    from reportgen.model.tf import tf

    badfiles.make_dataset(tmp_path / "data", {"a": 9, "b": 8})
    dataset = discover(tmp_path / "data")
    traced = trace_model(tiny_sequential())
    expected = scan_dataset(traced, dataset, top_k=3, batch_size=4, quiet=True)

    real = mining.MiningStep.__init__
    calls = {"n": 0}

    def faulty(self, *args, **kwargs):  # the step of batch size 8 runs out of memory on its second batch
        real(self, *args, **kwargs)
        if self.batch_size == 8:
            step = self.step

            def failing(*a):
                calls["n"] += 1
                if calls["n"] == 2:
                    raise tf.errors.ResourceExhaustedError(None, None, "OOM when allocating tensor (injected)")
                return step(*a)

            self.step = failing

    monkeypatch.setattr(mining.MiningStep, "__init__", faulty)
    with caplog.at_level("WARNING", logger="reportgen"):
        got = scan_dataset(traced, dataset, top_k=3, batch_size=8, quiet=True)
    assert [r.message for r in caplog.records if "out of memory" in r.message] == ["out of memory with batches of 8 images: going on with batches of 4"]
    for name, units in expected.units.items():
        for field in ("values", "images", "rows", "cols", "hist_counts", "hist_nonpositive", "heat"):
            np.testing.assert_array_equal(getattr(got.units[name], field), getattr(units, field), err_msg=f"{name}.{field}")
    assert got.metrics.confusion == expected.metrics.confusion and got.metrics.loss == pytest.approx(expected.metrics.loss, rel=1e-6)

    def always(self, *args, **kwargs):
        real(self, *args, **kwargs)

        def oom(*a):
            raise tf.errors.ResourceExhaustedError(None, None, "OOM (injected)")

        self.step = oom

    monkeypatch.setattr(mining.MiningStep, "__init__", always)
    with pytest.raises(UserError, match="out of memory even with a batch of 1 image"):
        scan_dataset(traced, dataset, top_k=3, batch_size=2, quiet=True)


def test_an_interrupt_swallowed_by_a_finalizer_still_stops_the_build(tmp_path, tiny_model_path, tiny_data):
    """Python ignores a KeyboardInterrupt raised while a `__del__` runs (TensorFlow has many); the
    command line's handlers also set a flag, which the pass and the final swap check."""
    from reportgen.build import BuildOptions, build
    from reportgen.errors import Interruption

    out = tmp_path / "site"
    assert build_site(tiny_model_path, tiny_data, out) == 0
    before = read_site(out)
    Interruption.requested = True  # as if the handler ran and its exception was swallowed
    try:
        with pytest.raises(KeyboardInterrupt):
            build(BuildOptions(model=tiny_model_path, data=tiny_data, out=out, quiet=True, seed=3))
    finally:
        Interruption.requested = False
    assert read_site(out) == before and leftovers(tmp_path) == []
