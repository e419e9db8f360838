"""Beyond one process: shards merged with `reportgen merge`, and `--engine ray` on real Ray clusters
(one started in the test process with ray.init, one by `ray start --head` in a subprocess).

The reference is always the local engine's own site on the same folder: every file the merged or
Ray-built site holds must be byte-identical to it (report.json: metrics, units' top K with
positions and values, histograms, probes; pages; images).
"""

from __future__ import annotations

import contextlib
import filecmp
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from reportgen.cli import main


def _model(path: Path, seed: int = 0) -> Path:
    """Two ReLU conv layers (plenty of zero maxima: ties everywhere, which only the tie rule orders),
    a pool, and a sigmoid head."""
    import keras

    keras.utils.set_random_seed(seed)
    model = keras.Sequential([
        keras.Input((16, 16, 3)),
        keras.layers.Conv2D(6, 3, activation="relu", name="c1"),
        keras.layers.MaxPooling2D(name="p1"),
        keras.layers.Conv2D(8, 3, activation="relu", name="c2"),
        keras.layers.GlobalAveragePooling2D(name="gap"),
        keras.layers.Dense(1, activation="sigmoid", name="out"),
    ])
    model.compile(loss="binary_crossentropy", metrics=["accuracy"])
    model.save(path)
    return path


def _data(root: Path, per_class: int = 20) -> Path:
    """Noise images in two classes, exact duplicates (ties in value) and one unreadable file."""
    from PIL import Image

    rng = np.random.default_rng(1)
    for c in ("cats", "dogs"):
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (18, 18, 3), dtype=np.uint8)).save(root / c / f"{i:03d}.png")
    for c in ("cats", "dogs"):  # the same pixels three times, in both classes
        shutil.copy(root / "cats" / "000.png", root / c / "dup.png")
    (root / "dogs" / "broken.png").write_bytes(b"not an image")
    return root


def _same_tree(a: Path, b: Path) -> None:
    files_a = sorted(p.relative_to(a).as_posix() for p in a.rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(b).as_posix() for p in b.rglob("*") if p.is_file())
    assert files_a == files_b
    _, mismatch, errors = filecmp.cmpfiles(a, b, files_a, shallow=False)
    assert not errors
    assert not mismatch, f"differ: {mismatch[:5]}"


COMMON = ["--batch-size", "4", "--top-k", "5", "--unit", "c2:2:3:1", "-q"]


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    """A model, a dataset and the local engine's site on them (the reference)."""
    root = tmp_path_factory.mktemp("case")
    model = _model(root / "m.keras")
    data = _data(root / "data")
    local = root / "local"
    assert main(["build", "--model", str(model), "--data", str(data), "--out", str(local), *COMMON]) == 0
    return model, data, local


def test_shards_in_any_order_merge_into_the_local_site(case, tmp_path, monkeypatch):
    model, data, local = case
    monkeypatch.chdir(local.parent)  # published paths are relative to the working folder, as for the reference
    parts = tmp_path / "parts"
    for i in (3, 0, 2, 1):  # shards of 10-11 images: not whole batches of 4, cut through the duplicates
        assert main(["build", "--model", str(model), "--data", str(data), "--shard", f"{i}/4", "--partial-out", str(parts), *COMMON]) == 0
    files = sorted(parts.glob("*.reportgen-partial.npz"))
    assert len(files) == 4
    merged = tmp_path / "merged"
    assert main(["merge", *map(str, files[::-1]), "--out", str(merged), "-q"]) == 0
    _same_tree(local, merged)
    report = (merged / "report.json").read_text()
    assert '"skipped": [{"path":"dogs/broken.png"' in report.replace(" ", "").replace('"skipped":', '"skipped": ')

    # a folder of shards, merged again: the same site
    again = tmp_path / "again"
    assert main(["merge", str(parts), "--out", str(again), "-q"]) == 0
    _same_tree(local, again)


def test_merge_equals_one_pass_for_random_splits(case):
    """mine() over random (non-contiguous) parts, merged in random groupings, equals one pass: every
    array of the summary, heatmaps and thumbnails included."""
    from reportgen.build import BuildOptions, cam_request, prepare_model
    from reportgen.dataset import discover
    from reportgen.engines.local import mine
    from reportgen.engines.partial import from_bytes, merge_partials, to_bytes

    model, data, _ = case
    opts = BuildOptions(model=model, data=data, out=Path("unused"), batch_size=4, top_k=5, units=["c2:2:3:1"], quiet=True)
    prepared = prepare_model(opts, announce=False)
    dataset = discover(data)

    cams = cam_request(opts, prepared.traced, dataset)

    def run(records):
        return mine(prepared.traced, dataset, records, top_k=5, batch_size=4, preprocessing=prepared.preprocessing,
                    probes=prepared.probes, quiet=True, cams=cams)

    whole = run(None)
    rng = np.random.default_rng(7)
    for _ in range(3):
        labels = rng.integers(0, 3, len(dataset.records))
        parts = [run([r for r, l in zip(dataset.records, labels) if l == j]) for j in range(3)]
        parts = [from_bytes(to_bytes(p), "test") for p in parts]  # through the file format too
        order = rng.permutation(3)
        merged = merge_partials([merge_partials([parts[order[0]], parts[order[1]]]), parts[order[2]]])
        for name in ("values", "ids", "pos", "heat", "heat_sizes", "hist_counts", "hist_hi", "hist_nonpositive", "images", "labels",
                     "predicted", "confidence", "true_score", "top", "top_scores", "true_rank", "losses"):
            np.testing.assert_array_equal(getattr(merged, name), getattr(whole, name), err_msg=name)
        assert {i: t.data for i, t in merged.thumbnails.items()} == {i: t.data for i, t in whole.thumbnails.items()}
        assert merged.skipped == whole.skipped
        # the Grad-CAMs some gallery over all images shows: kept by the parts that read them
        assert whole.cams and set(whole.cams) <= set(merged.cams)
        for i, cam in whole.cams.items():
            np.testing.assert_array_equal(merged.cams[i], cam)
    # ties decided by the earlier image: many units hold value 0 (ReLU) for several images
    ties = (whole.values[:, 1:] == whole.values[:, :-1]) & (whole.ids[:, 1:] >= 0)
    assert ties.any()
    assert (whole.ids[:, 1:][ties] > whole.ids[:, :-1][ties]).all()


def _err(capsys) -> str:
    return capsys.readouterr().err.strip()


def test_fingerprint_does_not_depend_on_variable_paths(case):
    """A variable's path depends on the process that made it (a name scope, other models built
    before): the same file loaded both ways has one fingerprint, so a Ray worker (a fresh process)
    agrees with a driver that has built other models; other weights do not."""
    import keras

    from reportgen.dataset import discover
    from reportgen.engines.shards import fingerprint
    from reportgen.model import trace_model
    from reportgen.model.preprocess import make_preprocessing

    model, data, _ = case
    dataset = discover(data)
    preprocessing = make_preprocessing("rescale", 3)

    def weights_print(m):
        return fingerprint(trace_model(m), dataset, preprocessing, [], 5, 4)["model"]

    plain = keras.models.load_model(model)
    with keras.name_scope("elsewhere"):
        scoped = keras.models.load_model(model)
    assert [w.path for w in plain.weights] != [w.path for w in scoped.weights]
    assert weights_print(plain) == weights_print(scoped)
    scoped.weights[0].assign(scoped.weights[0].numpy() + 1)
    assert weights_print(plain) != weights_print(scoped)


def test_merge_refuses_what_does_not_belong(case, tmp_path, capsys):
    model, data, _ = case
    parts = tmp_path / "parts"
    for i in range(2):
        assert main(["build", "--model", str(model), "--data", str(data), "--shard", f"{i}/2", "--partial-out", str(parts), *COMMON]) == 0
    capsys.readouterr()

    # a missing shard
    only = tmp_path / "only"
    only.mkdir()
    shutil.copy(next(parts.glob("shard-00000*")), only)
    assert main(["merge", str(only), "--out", str(tmp_path / "s1"), "-q"]) == 2
    err = _err(capsys)
    assert err.startswith("error: 1 of 2 shards missing (1/2)") and "\n" not in err

    # the same shard twice
    first = next(parts.glob("shard-00000*"))
    assert main(["merge", str(first), str(first), str(next(parts.glob("shard-00001*"))), "--out", str(tmp_path / "s2"), "-q"]) == 2
    assert "is also in" in _err(capsys)

    # a shard of another model (other weights, same architecture)
    other = _model(tmp_path / "other.keras", seed=5)
    alien = tmp_path / "alien"
    assert main(["build", "--model", str(other), "--data", str(data), "--shard", "1/2", "--partial-out", str(alien), *COMMON]) == 0
    capsys.readouterr()
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    shutil.copy(first, mixed)
    shutil.copy(next(alien.glob("*")), mixed)
    assert main(["merge", str(mixed), "--out", str(tmp_path / "s3"), "-q"]) == 2
    err = _err(capsys)
    assert "a partial state from another model" in err and "\n" not in err

    # a shard of another dataset listing (one more file)
    data2 = tmp_path / "data2"
    shutil.copytree(data, data2)
    shutil.copy(data2 / "cats" / "001.png", data2 / "cats" / "extra.png")
    alien2 = tmp_path / "alien2"
    assert main(["build", "--model", str(model), "--data", str(data2), "--shard", "1/2", "--partial-out", str(alien2), *COMMON]) == 0
    capsys.readouterr()
    (mixed / next(alien.glob("*")).name).unlink()
    shutil.copy(next(alien2.glob("*")), mixed)
    assert main(["merge", str(mixed), "--out", str(tmp_path / "s4"), "-q"]) == 2
    assert "another dataset listing" in _err(capsys)

    # other options (batch size: TensorFlow may round another batch size differently)
    alien3 = tmp_path / "alien3"
    opts = [a if a != "4" else "8" for a in COMMON]
    assert main(["build", "--model", str(model), "--data", str(data), "--shard", "1/2", "--partial-out", str(alien3), *opts]) == 0
    capsys.readouterr()
    assert main(["merge", str(first), str(next(alien3.glob("*"))), "--out", str(tmp_path / "s5"), "-q"]) == 2
    assert "other options (options differs: batch_size)" in _err(capsys)

    # not a partial state at all; a folder without any
    junk = tmp_path / "junk.reportgen-partial.npz"
    junk.write_bytes(b"junk")
    assert main(["merge", str(junk), "--out", str(tmp_path / "s6"), "-q"]) == 2
    assert "not a reportgen partial state" in _err(capsys)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["merge", str(empty), "--out", str(tmp_path / "s7"), "-q"]) == 2
    assert "no partial states in it" in _err(capsys)
    assert main(["merge", str(tmp_path / "nowhere"), "--out", str(tmp_path / "s7"), "-q"]) == 2
    assert "no such file or folder" in _err(capsys)
    for site in ("s1", "s2", "s3", "s4", "s5", "s6", "s7"):
        assert not (tmp_path / site).exists()  # nothing half-written


def test_shard_options_are_checked(case, tmp_path, capsys):
    model, data, _ = case
    assert main(["build", "--model", str(model), "--data", str(data), "--shard", "4/4", "--partial-out", str(tmp_path)]) == 2
    assert "I counts from 0 to N - 1" in _err(capsys)
    assert main(["build", "--model", str(model), "--data", str(data), "--shard", "0/4"]) == 2
    assert "go together" in _err(capsys)
    assert main(["build", "--model", str(model), "--data", str(data), "--shard", "0/4", "--partial-out", str(tmp_path), "--engine", "ray"]) == 2
    assert "one or the other" in _err(capsys)


# --- Ray ------------------------------------------------------------------------------------------


@pytest.fixture
def ray_in_process(monkeypatch):
    ray = pytest.importorskip("ray")
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")  # ray.init would set it in this process, for every later test
    # address="local": a cluster of its own, even while another test runs a `ray start` cluster on this machine
    # (ray.init() with no address would join that one)
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield ray
    finally:
        ray.shutdown()


def test_ray_engine_equals_local(case, tmp_path, monkeypatch, ray_in_process):
    model, data, local = case
    monkeypatch.chdir(local.parent)
    out = tmp_path / "ray"
    assert main(["build", "--model", str(model), "--data", str(data), "--out", str(out), "--engine", "ray", "--workers", "2",
                 "--ray-chunk", "8", *COMMON]) == 0
    _same_tree(local, out)
    assert ray_in_process.is_initialized()  # a cluster the caller started is left running


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def ray_head():
    """A Ray cluster started by `ray start --head --block` (2 CPUs) with token authentication (Ray's
    default), stopped with its process group. Yields (address, the environment a driver has)."""
    pytest.importorskip("ray")
    import secrets

    port = _free_port()
    temp = tempfile.mkdtemp(prefix="rgray")  # short: Ray's socket paths must fit in 107 bytes
    token = Path(temp) / "token"
    token.write_text(secrets.token_hex(32))
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env["RAY_AUTH_TOKEN_PATH"] = str(token)  # the driver finds the token; reportgen turns token mode on
    head = subprocess.Popen(
        [sys.executable, "-m", "ray.scripts.scripts", "start", "--head", f"--port={port}", "--num-cpus=2", "--include-dashboard=false",
         f"--dashboard-port={_free_port()}", f"--ray-client-server-port={_free_port()}",
         f"--temp-dir={temp}", "--block", "--disable-usage-stats"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True, env={**env, "RAY_AUTH_MODE": "token"},
    )
    address = f"127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # the head listens on its port once the GCS is up
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        assert head.poll() is None, "ray start --head exited"
        time.sleep(0.5)
    try:
        yield address, env, head.pid
    finally:
        # `ray start --block` stops its cluster on SIGTERM, in ~2 s when idle but ~32 s after this test's
        # work (SIGTERM to the whole group too): give it a few seconds, then SIGKILL what is left of the
        # session, so that no process of this cluster outlives the test either way.
        os.kill(head.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            head.wait(5)
        for pid in _session_processes(head.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        head.wait(60)
        shutil.rmtree(temp, ignore_errors=True)


def _session_processes(session: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        with contextlib.suppress(OSError, ValueError):
            if entry.name.isdigit() and os.getsid(int(entry.name)) == session:
                pids.append(int(entry.name))
    return pids


def _mining_workers(session: int) -> dict[int, str]:
    """pid -> title of every live process of the session (one Ray cluster: other tests may run their
    own beside this one) that is a reportgen mining actor (Ray names them after the class)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if os.getsid(int(entry.name)) != session:
                continue
        except OSError:
            continue
        if "MiningWorker" in cmd and cmd.startswith("ray::"):
            found[int(entry.name)] = cmd.strip()
    return found


def test_ray_address_and_a_worker_killed_mid_pass(case, tmp_path, ray_head):
    """Through --ray-address to a `ray start --head` cluster: one actor process is killed (SIGKILL)
    while the pass is under way (after the first chunk came back, before the last); Ray restarts it
    and retries its chunk, and the site is still the local one, byte for byte."""
    model, data, local = case
    out = tmp_path / "ray"
    address, env, session = ray_head
    cmd = [sys.executable, "-m", "reportgen", "build", "--model", str(model), "--data", str(data), "--out", str(out), "--engine", "ray",
           "--ray-address", address, "--workers", "2", "--ray-chunk", "2", *[a for a in COMMON if a != "-q"]]
    proc = subprocess.Popen(cmd, cwd=local.parent, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, env=env)
    killed, seen, text = None, set(), b""

    def watch():
        nonlocal killed, text
        buffer = b""
        while True:
            chunk = proc.stderr.read1(4096) if hasattr(proc.stderr, "read1") else proc.stderr.read(1)
            if not chunk:
                return
            buffer += chunk
            text += chunk
            done = [int(m) for m in re.findall(rb"scanning dataset \(Ray\):\s+\d+%\|[^|]*\|\s+(\d+)/", buffer)]
            workers = _mining_workers(session)
            seen.update(workers)
            if killed is None and done and 0 < done[-1] < 30 and workers:
                killed = min(workers)
                os.kill(killed, signal.SIGKILL)

    reader = threading.Thread(target=watch)
    reader.start()
    try:
        code = proc.wait(300)
    except subprocess.TimeoutExpired:
        proc.kill()
        code = "still running after 300 s"
    reader.join()
    log = f"killed {killed} of the actors seen {sorted(seen)}; the build's stderr ends:\n" + text.decode(errors="replace")[-2000:]
    assert code == 0, f"exit {code}; {log}"
    assert killed is not None, f"the pass ended before a worker could be killed mid-pass; {log}"
    try:
        _same_tree(local, out)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{log}") from None


def test_ray_engine_needs_a_model_file(case, tmp_path):
    pytest.importorskip("ray")
    import keras

    from reportgen import build_report
    from reportgen.errors import UserError

    model, data, _ = case
    with pytest.raises(UserError, match="needs the model as a file"):
        build_report(keras.models.load_model(model), data, tmp_path / "out", engine="ray", quiet=True)
