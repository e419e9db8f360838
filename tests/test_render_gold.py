"""The render stage alone, from a small hand-made input (fake_report.tiny_report): no TensorFlow,
and every file byte for byte equal to the committed expected site in tests/gold/site.

After a deliberate change to the pages, refresh the expected files with:

    REPORTGEN_UPDATE_GOLD=1 python -m pytest tests/test_render_gold.py

and review the diff (git diff tests/gold) before committing it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from linkcheck import broken_links, read_js_json

GOLD = Path(__file__).parent / "gold" / "site"
RENDER = r"""
import sys
sys.path.insert(0, sys.argv[2])
from pathlib import Path
from fake_report import tiny_report
from functools import partial
from reportgen.site import pages, worker
from reportgen.site.pages import render_site
from reportgen.writer import SiteFolder

started = []
if sys.argv[3] == "second-process":  # the layer data files made by a second process, as for a big network
    pages.LayerFiles = partial(worker.LayerFiles, use_worker=True)
    popen = worker.subprocess.Popen
    worker.subprocess.Popen = lambda *a, **k: started.append(popen(*a, **k)) or started[-1]
with SiteFolder(Path(sys.argv[1])) as site:
    render_site(tiny_report(), site)
    site.commit()
print("tensorflow" in sys.modules, "keras" in sys.modules, [p.returncode for p in started])
"""


def read_tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def render(out: Path, how: str) -> str:
    """Render tiny_report into out in a fresh interpreter; its printout: TensorFlow imported, Keras imported, second processes' exit codes."""
    return subprocess.run([sys.executable, "-c", RENDER, str(out), str(Path(__file__).parent), how], capture_output=True, text=True,
                          check=True).stdout.strip()


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("gold") / "site"
    assert render(out, "here") == "False False []", "the render stage imported TensorFlow or Keras"
    return out


def test_render_matches_the_expected_files(rendered):
    got = read_tree(rendered)
    if os.environ.get("REPORTGEN_UPDATE_GOLD"):
        shutil.rmtree(GOLD, ignore_errors=True)
        shutil.copytree(rendered, GOLD)
    expected = read_tree(GOLD)
    assert sorted(got) == sorted(expected), "files differ: refresh with REPORTGEN_UPDATE_GOLD=1 (see this file's docstring)"
    changed = [name for name in got if got[name] != expected[name]]
    assert not changed, f"changed files: {changed} (refresh with REPORTGEN_UPDATE_GOLD=1 and review the diff)"


def test_layer_files_from_a_second_process_are_the_same(rendered, tmp_path):
    """A big network's layer data files are made by a second Python process (site/worker.py): the
    site is byte for byte the one made in one process, and that process ended by itself (exit 0)."""
    assert render(tmp_path / "site", "second-process") == "False False [0]"
    assert read_tree(tmp_path / "site") == read_tree(rendered)


def test_expected_site_links_and_schema(rendered):
    import jsonschema

    files = read_tree(rendered)
    assert broken_links(files) == []
    schema = json.loads((Path(__file__).parents[1] / "reportgen" / "site" / "schema" / "report.schema.json").read_text())
    report = json.loads(files["report.json"])
    jsonschema.validate(report, schema)
    for layer in report["layers"]:
        jsonschema.validate(read_js_json(files[layer["units_file"]].decode()), {**schema["$defs"]["layerFile"], "$defs": schema["$defs"]})
    jsonschema.validate(read_js_json(files[report["files"]["images"]].decode()), schema["$defs"]["imagesFile"])


def test_link_check_finds_broken_links(rendered, tmp_path):
    """The build's own check (site/links.py) and the test's reading check both catch a broken site."""
    from reportgen.site.links import Links

    links = Links()
    links.url("index.html", "layers/a.html")
    links.url("index.html", "layers/b.html#unit-3")
    links.url("layers/b.html", "#unit-4")
    links.anchor("layers/b.html", "unit-3")
    assert links.broken({"index.html", "layers/b.html"}) == [
        "index.html: link to layers/a.html (no such file)",
        "layers/b.html: link to layers/b.html#unit-4 (no anchor 'unit-4')",
    ]
    files = read_tree(rendered)
    index = files["index.html"].decode()
    page = next(name for name in files if name.startswith("layers/"))
    damaged = dict(files)
    damaged["index.html"] = index.replace(page.split("/")[1], "missing.html", 1).encode()
    del damaged[next(name for name in files if name.startswith("heat/"))]
    problems = broken_links(damaged)
    assert any("missing.html" in p for p in problems) and any("heat/" in p for p in problems)


def test_layer_files_the_second_process_does_not_deliver_are_made_here():
    """Whatever the second process does not send back (killed mid-way here; or a job it fails on)
    is made in this process: every file is there, with the bytes data.layer_file makes."""
    import time
    from dataclasses import dataclass

    import numpy as np

    from fake_report import tiny_report
    from reportgen.site.data import layer_file
    from reportgen.site.worker import LayerFiles

    @dataclass
    class Relevance:  # the fields of engines.explain.LayerRelevance (whose module imports TensorFlow)
        values: np.ndarray
        images: np.ndarray
        rows: np.ndarray
        cols: np.ndarray
        by_class: np.ndarray

    data = tiny_report()
    jobs = {}
    for copy in range(6):
        for node in [n for n in data.info.nodes if n.is_map]:
            units = data.scan.units[node.name]
            c, k = units.values.shape
            relevance = Relevance(units.values[:, ::-1].copy(), units.images, units.rows, units.cols, np.arange(c * 2, dtype=np.float64).reshape(c, 2))
            jobs[f"data/{node.name}-{copy}.js"] = dict(node=node, units=units, rf=data.fields[node.name],
                                                      heat={"shape": [2, 2], "atlases": ["heat/a.png"], "tiles": [[0, ch, c] for ch in range(c)]},
                                                      input_hw=(8, 8), top_k=k, relevance=relevance if copy % 2 else None, ranked_as=None)
    expected = {key: layer_file(**kwargs) for key, kwargs in jobs.items()}
    keys = sorted(jobs, key=lambda key: jobs[key]["relevance"] is None)  # the first ones with relevance

    files = LayerFiles(0, use_worker=True)
    got = {}
    for key in keys[:2]:
        files.submit(key, **jobs[key])
    deadline = time.monotonic() + 60
    while len(got) < 2 and time.monotonic() < deadline:  # the first two come back from the second process
        got.update(files.ready())
        time.sleep(0.01)
    assert sorted(got) == sorted(keys[:2])
    files._proc.kill()
    for key in keys[2:]:
        files.submit(key, **jobs[key])
    got.update(files.finish())
    assert got == expected

    with pytest.raises(AttributeError):  # a job it cannot make fails here, with this process's error
        files = LayerFiles(0, use_worker=True)
        files.submit("data/bad.js", **dict(jobs[keys[0]], units=None))
        files.finish()
    files.close()
