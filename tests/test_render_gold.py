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
from reportgen.site.pages import render_site
from reportgen.writer import SiteFolder

with SiteFolder(Path(sys.argv[1])) as site:
    render_site(tiny_report(), site)
    site.commit()
print("tensorflow" in sys.modules, "keras" in sys.modules)
"""


def read_tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("gold") / "site"
    result = subprocess.run([sys.executable, "-c", RENDER, str(out), str(Path(__file__).parent)], capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["False", "False"], "the render stage imported TensorFlow or Keras"
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
