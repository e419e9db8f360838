"""The built site in a real headless browser: Debian's Chromium at /usr/bin/chromium, driven by Playwright.

Sites built once per session: the demo's (`run_demo`), a tiny one (conftest's `tiny_sequential` with a
fixed unit, so a probe page exists), one with HTML/URL-hostile names, a "wide" one whose only conv layer
has 500 filters, and a ResNet50-sized one (ResNet50's real layer structure, 174 layers and 91,075 units,
filled with hand-made numbers: fake_report.report_like). Each is opened from file:// and from a local
HTTP server, and checked for: console errors/warnings, page errors, failed requests and HTTP errors;
images (and CSS background images: thumbnails, heatmaps) that do not decode; relative links, #anchors
and CSS url()s that do not resolve; navigation by clicking, unit addresses (layers/<layer>.html#unit-N)
through reload, back/forward and a new tab; the overlay toggles; big layer pages; the page without
JavaScript. Full-page screenshots of each page kind go to <repo>/test-artifacts/screenshots/.

Skipped (with a reason) only when /usr/bin/chromium is missing and CI is not set; with CI set, a missing
Chromium (or Playwright) fails.
"""

from __future__ import annotations

import functools
import html.parser
import http.server
import json
import os
import posixpath
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

from badfiles import NASTY_NAMES, make_dataset, make_rgb_png
from conftest import HOSTILE_LAYER_NAMES, build_site, rename_layers, tiny_sequential

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
IN_CI = "CI" in os.environ
REPO = Path(__file__).resolve().parents[1]
SCREENSHOTS = REPO / "test-artifacts" / "screenshots"

try:
    from playwright.sync_api import sync_playwright
except ImportError as exc:  # pragma: no cover - depends on the environment
    sync_playwright = None
    _PLAYWRIGHT_ERROR = f"playwright (python) is not importable: {exc}"
else:
    _PLAYWRIGHT_ERROR = ""

if not IN_CI:
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is not installed (and CI is not set): no browser to test the site in", allow_module_level=True)
    if sync_playwright is None:
        pytest.skip(f"{_PLAYWRIGHT_ERROR} (and CI is not set)", allow_module_level=True)


def _browser_problem() -> str:
    if not CHROMIUM.exists():
        return f"CI is set but {CHROMIUM} is missing: the browser tests cannot run"
    if sync_playwright is None:
        return f"CI is set but {_PLAYWRIGHT_ERROR}"
    return ""


def test_browser_available():
    """With CI set, a missing Chromium/Playwright is a failure of this test, not a skip."""
    problem = _browser_problem()
    assert not problem, problem


# --------------------------------------------------------------------------------------------------
# sites
# --------------------------------------------------------------------------------------------------


@dataclass
class Site:
    name: str
    root: Path
    report: dict = field(default_factory=dict)

    def pages(self) -> list[str]:
        return sorted(p.relative_to(self.root).as_posix() for p in self.root.rglob("*.html"))

    def layer_pages(self) -> list[str]:
        return [layer["page"] for layer in self.report["layers"]]

    def probe_pages(self) -> list[str]:
        return [probe["page"] for probe in self.report["probes"]]

    def units(self, layer: dict) -> list[dict]:
        from linkcheck import read_js_json

        return read_js_json((self.root / layer["units_file"]).read_text(encoding="utf-8"))["units"]

    def unit_addresses(self) -> list[str]:
        """The first and last unit of every layer: layers/<layer>.html#unit-N."""
        out = []
        for layer in self.report["layers"]:
            last = layer["units"] - 1
            out += [f"{layer['page']}#unit-{c}" for c in sorted({0, last})]
        return out

    def heat_unit(self) -> str:
        """The address of a unit view with heatmaps (a live unit)."""
        for layer in self.report["layers"]:
            for unit in self.units(layer):
                if not unit["dead"]:
                    return f"{layer['page']}#unit-{unit['channel']}"
        raise AssertionError(f"{self.name}: every unit is dead")


def _load_site(name: str, root: Path) -> Site:
    assert (root / "index.html").is_file(), f"{name}: no index.html in {root}"
    return Site(name, root, json.loads((root / "report.json").read_text(encoding="utf-8")))


@pytest.fixture(scope="session")
def demo_site(tmp_path_factory) -> Site:
    from reportgen.demo import run_demo

    out = tmp_path_factory.mktemp("browser_demo") / "site"
    # 2 of the demo's 6 epochs: the same pages from a less trained model (training was 2/3 of this fixture's time)
    run_demo(out, workdir=tmp_path_factory.mktemp("browser_demo_work"), epochs=2, quiet=True)
    return _load_site("demo", out)


@pytest.fixture(scope="session")
def tiny_site(tmp_path_factory) -> Site:
    work = tmp_path_factory.mktemp("browser_tiny")
    model = work / "tiny.keras"
    tiny_sequential().save(model)
    make_dataset(work / "data", {"cats": 12, "dogs": 9})
    assert build_site(model, work / "data", work / "site", "--unit", "c2:1:1:0", "--relevance") == 0
    site = _load_site("tiny", work / "site")
    assert site.probe_pages(), "the tiny site should have a probe page (--unit c2:1:1:0)"
    return site


WIDE_UNITS = 500


@pytest.fixture(scope="session")
def wide_site(tmp_path_factory) -> Site:
    import keras

    work = tmp_path_factory.mktemp("browser_wide")
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((16, 16, 3)),
            keras.layers.Conv2D(WIDE_UNITS, 3, activation="relu", name="wide"),
            keras.layers.GlobalAveragePooling2D(name="gap"),
            keras.layers.Dense(1, activation="sigmoid", name="out"),
        ],
        name="wide",
    )
    model.compile(optimizer="adam", loss="binary_crossentropy", metrics=["accuracy"])
    model.save(work / "wide.keras")
    make_dataset(work / "data", {"cats": 12, "dogs": 9})
    assert build_site(work / "wide.keras", work / "data", work / "site") == 0
    return _load_site("wide", work / "site")


@pytest.fixture(scope="session")
def hostile_site(tmp_path_factory) -> Site:
    """Layer names and file names that are HTML and URL syntax. TensorFlow will not run a model
    whose layers are called like this, so the names are given to the gathered data before the
    pages are rendered (the render stage works on plain data)."""
    from reportgen.build import BuildOptions, gather
    from reportgen.site.pages import render_site
    from reportgen.writer import SiteFolder

    work = tmp_path_factory.mktemp("browser_hostile")
    tiny_sequential().save(work / "m.keras")
    make_dataset(work / "data", {"cats": 6, "dogs": 5})
    for i, stem in enumerate(NASTY_NAMES):
        make_rgb_png(work / "data" / "dogs" / f"{stem}.png", seed=500 + i)
    data = gather(BuildOptions(model=work / "m.keras", data=work / "data", out=work / "site", quiet=True, units=["c2:1:1:0"]))
    rename_layers(data, HOSTILE_LAYER_NAMES)
    with SiteFolder(work / "site") as site:
        render_site(data, site)
        site.commit()
    return _load_site("hostile", work / "site")


@pytest.fixture(scope="session")
def big_site(tmp_path_factory) -> Site:
    """ResNet50's layer structure (traced from keras.applications, weights=None, 224 x 224) with
    hand-made numbers: 174 layers, 91,075 units, a layer of 2,048 units."""
    import keras

    from fake_report import report_like
    from reportgen.model import trace_model
    from reportgen.site.pages import render_site
    from reportgen.writer import SiteFolder

    from reportgen.model.ranking import ranked_as

    traced = trace_model(keras.applications.ResNet50(weights=None, classes=2, input_shape=(224, 224, 3)), "resnet50.keras")
    data = report_like(traced.info.nodes, (224, 224), n_images=48, top_k=16, heat_side=6, name="resnet50", ranked_as=ranked_as(traced))
    out = tmp_path_factory.mktemp("browser_big") / "site"
    with SiteFolder(out) as site:
        render_site(data, site)
        site.commit()
    return _load_site("big", out)


SITES = {"demo": "demo_site", "tiny": "tiny_site", "hostile": "hostile_site"}


# The demo trains its model: the tests that open its site share one xdist worker (`--dist loadgroup` in
# pyproject.toml), so that it is built once per run, not once per worker.
ON_DEMO_WORKER = pytest.mark.xdist_group("demo")


@pytest.fixture(params=[pytest.param(name, marks=ON_DEMO_WORKER) if name == "demo" else name for name in sorted(SITES)])
def site(request) -> Site:
    return request.getfixturevalue(SITES[request.param])


# --------------------------------------------------------------------------------------------------
# browser and servers
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def browser():
    problem = _browser_problem()
    if problem:
        pytest.fail(problem)
    pw = sync_playwright().start()
    b = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
    yield b
    b.close()
    pw.stop()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - the base class's name
        pass


class _Server:
    def __init__(self, root: Path) -> None:
        handler = functools.partial(_QuietHandler, directory=str(root))
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, name=f"site-server-{root.name}", daemon=True)
        self.thread.start()
        host, port = self.httpd.server_address[:2]
        self.base = f"http://{host}:{port}/"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=10)


@pytest.fixture(scope="session")
def servers():
    """{site root: _Server}, one server per site folder, started on demand, shut down at the end."""
    running: dict[Path, _Server] = {}
    yield running
    for server in running.values():
        server.close()


def base_url(site: Site, mode: str, servers: dict) -> str:
    if mode == "file":
        return site.root.resolve().as_uri() + "/"
    if site.root not in servers:
        servers[site.root] = _Server(site.root)
    return servers[site.root].base


@pytest.fixture(params=["file", "http"])
def mode(request) -> str:
    return request.param


class Watcher:
    """A page with listeners that record console errors/warnings, page errors, failed requests, HTTP >= 400."""

    def __init__(self, page, base: str, root: Path | None = None) -> None:
        self.page = page
        self.base = base
        self.root = root  # the site's folder: files whose fetch the browser aborted must be in it
        self.problems: list[str] = []
        self.aborted: list[str] = []
        page.on("console", self._console)
        page.on("pageerror", lambda err: self.problems.append(f"page error: {err}"))
        page.on("requestfailed", self._failed)
        page.on("response", self._response)

    def _console(self, msg) -> None:
        if msg.type in ("error", "warning"):
            self.problems.append(f"console {msg.type}: {msg.text} at {msg.location}")

    def _failed(self, req) -> None:
        # Chromium fetches some files after the page's load event (the icon; a CSS background image
        # such as a class activation map atlas, once styles apply) and aborts those fetches when the
        # test moves on: ERR_ABORTED is the browser cancelling, not the file failing. Such a file of
        # the site must still exist; anything else that fails is a problem.
        rel = self.rel(req.url)
        if "ERR_ABORTED" in (req.failure or "") and rel is not None:
            self.aborted.append(rel)
            return
        self.problems.append(f"request failed: {req.url} ({req.failure})")

    def _response(self, resp) -> None:
        if resp.status >= 400:
            self.problems.append(f"HTTP {resp.status} for {resp.url}")

    def url(self, rel: str) -> str:
        return self.base + rel

    def rel(self, url: str) -> str | None:
        """The site-relative file path of a URL of this site (None when it points outside the site)."""
        parts, base = urlsplit(url), urlsplit(self.base)
        if (parts.scheme, parts.netloc) != (base.scheme, base.netloc) or not parts.path.startswith(base.path):
            return None
        return unquote(parts.path[len(base.path) :])

    def goto(self, rel: str) -> None:
        response = self.page.goto(self.url(rel), wait_until="load")
        if response is not None:
            assert response.ok, f"{rel}: HTTP {response.status}"

    def take_problems(self) -> list[str]:
        problems, self.problems = self.problems, []
        for rel in self.aborted:
            if self.root is None or not (self.root / rel).is_file():
                problems.append(f"request aborted, and no such file in the site: {rel}")
        self.aborted = []
        return problems


@pytest.fixture
def watcher(browser, site_and_base):
    site, base = site_and_base
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    w = Watcher(context.new_page(), base, site.root)
    yield w
    context.close()


@pytest.fixture
def site_and_base(site, mode, servers):
    return site, base_url(site, mode, servers)


# --------------------------------------------------------------------------------------------------
# what a page holds, as the browser sees it
# --------------------------------------------------------------------------------------------------

_PAGE_INVENTORY = r"""
() => {
  const abs = (ref) => new URL(ref, document.baseURI).href;
  const urlRe = /url\(\s*(['"]?)(.*?)\1\s*\)/g;
  const refs = [];
  for (const a of document.querySelectorAll('a[href]')) refs.push(['a', a.getAttribute('href'), a.href]);
  for (const l of document.querySelectorAll('link[href]')) refs.push(['link', l.getAttribute('href'), l.href]);
  for (const s of document.querySelectorAll('[src]')) refs.push([s.tagName.toLowerCase(), s.getAttribute('src'), abs(s.getAttribute('src'))]);
  for (const el of document.querySelectorAll('[style]'))
    for (const m of el.getAttribute('style').matchAll(urlRe)) refs.push(['style attribute url()', m[2], abs(m[2])]);
  for (const st of document.querySelectorAll('style'))
    for (const m of st.textContent.matchAll(urlRe)) refs.push(['<style> url()', m[2], abs(m[2])]);
  const images = [...document.images].map((i) => ({
    src: i.getAttribute('src'), complete: i.complete, width: i.naturalWidth, lazy: i.loading === 'lazy'}));
  const ids = [...document.querySelectorAll('[id]')].map((e) => e.id);
  // CSS background images in use (thumbnail sheets, heatmap atlases): each must decode
  const backgrounds = new Set();
  for (const el of document.querySelectorAll('.thumb, .heat')) {
    const m = getComputedStyle(el).backgroundImage.match(/url\("?(.*?)"?\)/);
    if (m) backgrounds.add(m[1]);
  }
  // a linked stylesheet's rules are not readable from file:// (opaque origin): check that it is parsed and applied
  const sheets = [...document.querySelectorAll('link[rel=stylesheet]')].map((l) => l.sheet !== null);
  const header = document.querySelector('header.top');  // summary.html has none: its CSS is inline
  const styled = header ? getComputedStyle(header).display === 'flex' : document.querySelector('style') !== null;
  return {refs, images, ids, sheets, styled, backgrounds: [...backgrounds], h1: document.querySelector('h1')?.textContent ?? null};
}
"""

_DECODES = """async (urls) => {
  const bad = [];
  for (const u of urls) {
    const img = new Image();
    img.src = u;
    try { await img.decode(); if (!img.naturalWidth) bad.push(u); } catch (e) { bad.push(u); }
  }
  return bad;
}"""


class _IdParser(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.ids: set[str] = set()

    def handle_starttag(self, tag, attrs):
        for name, value in attrs:
            if name == "id" and value:
                self.ids.add(value)


class _UnitLinks(html.parser.HTMLParser):
    """The hrefs that `#units li.unit > a` selects, read from a page's HTML (the unit lists are static)."""

    VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}

    def __init__(self) -> None:
        super().__init__()
        self.open: list[tuple[str, str]] = []  # (tag, "#units" / "li.unit" / "") of each open element
        self.hrefs: list[str | None] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "a" and self.open and self.open[-1][1] == "li.unit" and any(mark == "#units" for _, mark in self.open):
            self.hrefs.append(a.get("href"))
        if tag not in self.VOID:
            mark = "#units" if a.get("id") == "units" else "li.unit" if tag == "li" and "unit" in (a.get("class") or "").split() else ""
            self.open.append((tag, mark))

    def handle_endtag(self, tag):
        for i in range(len(self.open) - 1, -1, -1):
            if self.open[i][0] == tag:
                del self.open[i:]
                return


def _unit_links(path: Path) -> list[str | None]:
    parser = _UnitLinks()
    parser.feed(path.read_text(encoding="utf-8"))
    return parser.hrefs


def _ids_of(site: Site, rel: str, seen: dict[str, set[str]]) -> set[str]:
    if rel not in seen:
        parser = _IdParser()
        parser.feed((site.root / rel).read_text(encoding="utf-8"))
        seen[rel] = parser.ids
    return seen[rel]


_CSS_URL = re.compile(r"url\(\s*(['\"]?)(.*?)\1\s*\)")


def check_pages(site: Site, w: Watcher, pages: list[str]) -> tuple[list[str], dict[str, dict]]:
    """Visit each page; return (problems, {page: inventory})."""
    problems: list[str] = []
    inventories: dict[str, dict] = {}
    ids: dict[str, set[str]] = {}
    for rel in pages:
        w.goto(rel)
        if "#unit-" in rel:
            w.page.wait_for_selector("#unit-view:not([hidden]) ol.gallery")
        inv = w.page.evaluate(_PAGE_INVENTORY)
        problems += [f"{rel}: background image does not decode: {u}" for u in w.page.evaluate(_DECODES, inv["backgrounds"])]
        inventories[rel] = inv
        ids[rel.split("#")[0]] = set(inv["ids"])
        problems += [f"{rel}: {p}" for p in w.take_problems()]
        if (rel != "summary.html" and (not inv["sheets"] or not all(inv["sheets"]))) or not inv["styled"]:
            problems.append(f"{rel}: the stylesheet is not loaded or not applied ({inv['sheets']}, styled={inv['styled']})")
        for img in inv["images"]:
            if img["lazy"]:
                problems.append(f"{rel}: lazy image {img['src']}")
            if not (img["complete"] and img["width"] > 0):
                problems.append(f"{rel}: image does not decode: {img['src']} (complete={img['complete']}, naturalWidth={img['width']})")
    for rel, inv in inventories.items():
        for kind, raw, resolved in inv["refs"]:
            if resolved.startswith("data:"):  # summary.html's images are inside it
                continue
            target = w.rel(resolved)
            if target is None:
                problems.append(f"{rel}: {kind} {raw!r} leaves the site ({resolved})")
                continue
            if not (site.root / target).is_file():
                problems.append(f"{rel}: {kind} {raw!r} -> no file {target!r}")
                continue
            fragment = unquote(urlsplit(resolved).fragment)
            if fragment and target.endswith(".html") and fragment not in _ids_of(site, target, ids):
                problems.append(f"{rel}: {kind} {raw!r} -> {target!r} has no element with id {fragment!r}")
    # url()s in the site's stylesheets resolve relative to the stylesheet
    for css in sorted(site.root.rglob("*.css")):
        css_rel = css.relative_to(site.root).as_posix()
        for _, ref in _CSS_URL.findall(css.read_text(encoding="utf-8")):
            parts = urlsplit(ref)
            if parts.scheme == "data":
                continue
            target = posixpath.normpath(posixpath.join(posixpath.dirname(css_rel), unquote(parts.path)))
            if parts.scheme or parts.netloc or not (site.root / target).is_file():
                problems.append(f"{css_rel}: url({ref}) does not resolve to a file of the site")
    return problems, inventories


# --------------------------------------------------------------------------------------------------
# tests
# --------------------------------------------------------------------------------------------------


def open_view(w: Watcher, address: str) -> None:
    w.goto(address)
    w.page.wait_for_selector("#unit-view:not([hidden]) ol.gallery")


def view_title(page) -> str:
    return page.locator("#unit-view h2").inner_text()


def wait_view(page, channel: int) -> None:
    """The view of unit `channel` is drawn (after the hashchange that asked for it)."""
    page.wait_for_function(
        "(c) => { const h = document.querySelector('#unit-view:not([hidden]) h2'); return h && h.textContent.includes('unit ' + c + ' ') || (h && h.textContent.endsWith('unit ' + c)); }",
        arg=channel,
    )


def test_pages_load_clean_with_images_and_links(site, mode, watcher):
    """Every page, and the first and last unit view of every layer: no errors, images decode, links resolve."""
    pages = site.pages() + site.unit_addresses()
    kinds = {p.split("/")[0] for p in pages}
    assert {"index.html", "layers", "probes"} <= kinds, kinds
    problems, inventories = check_pages(site, watcher, pages)
    assert not problems, f"{site.name} site over {mode}:\n" + "\n".join(problems)
    assert len(inventories) == len(pages)
    assert sum(len(inv["backgrounds"]) for inv in inventories.values()) > len(pages)


def test_navigation_by_clicking(site, mode, watcher):
    page = watcher.page
    watcher.goto("index.html")
    layer_link = page.locator(".layer-list .layer-row.map .name a").first
    layer_name = layer_link.inner_text().strip()
    layer_rel = watcher.rel(layer_link.evaluate("a => a.href"))
    layer_link.click()
    page.wait_for_url(watcher.url(layer_rel))
    assert layer_rel.startswith("layers/")
    assert page.evaluate("() => document.querySelector('h1').firstChild.textContent.trim()") == layer_name
    assert page.locator("#unit-view").is_hidden()

    # a unit of the list: its view, at its own address
    units = page.locator("#units ol.units li.unit a")
    assert units.count() >= 2
    units.nth(1).click()
    page.wait_for_url(watcher.url(layer_rel) + "#unit-1")
    page.wait_for_selector("#unit-view:not([hidden])")
    assert view_title(page).startswith(f"{layer_name} · unit 1")
    cards = page.locator("#unit-view > ol.gallery li.card").count()
    assert cards == len(site.units(next(l for l in site.report["layers"] if l["name"] == layer_name))[1]["top"])

    # next unit, reload, back, forward
    page.locator("#unit-view nav a[rel=next]").click()
    page.wait_for_url(watcher.url(layer_rel) + "#unit-2")
    wait_view(page, 2)
    page.reload(wait_until="load")
    page.wait_for_selector("#unit-view:not([hidden])")
    assert "unit 2" in view_title(page)
    page.go_back(wait_until="load")
    assert watcher.rel(page.url).endswith("#unit-1") or page.url.endswith("#unit-1")
    page.wait_for_function("() => document.querySelector('#unit-view h2') && document.querySelector('#unit-view h2').textContent.includes('unit 1')")
    page.go_back()
    page.wait_for_function("() => location.hash === ''")
    assert page.locator("#unit-view").is_hidden()
    page.go_forward()
    page.wait_for_function("() => location.hash === '#unit-1'")
    assert "unit 1" in view_title(page)

    # the address pasted into a new tab
    other = page.context.new_page()
    try:
        other.goto(watcher.url(layer_rel) + "#unit-2", wait_until="load")
        other.wait_for_selector("#unit-view:not([hidden])")
        assert "unit 2" in other.locator("#unit-view h2").inner_text()
    finally:
        other.close()

    # a tile of the feature-map grid opens that channel's view
    tiles = page.locator(".fgrid a.tile")
    assert tiles.count() >= 1
    tile = tiles.nth(tiles.count() - 1)
    channel = int(tile.get_attribute("title").split()[1])
    tile.click()
    page.wait_for_url(watcher.url(layer_rel) + f"#unit-{channel}")
    wait_view(page, channel)

    # the breadcrumb home, then the probe page
    page.locator("nav.crumbs a.home").click()
    page.wait_for_url(watcher.url("index.html"))
    probe = page.locator("#probes a").first
    probe_rel = watcher.rel(probe.evaluate("a => a.href"))
    probe.click()
    page.wait_for_url(watcher.url(probe_rel))
    assert probe_rel in site.probe_pages()
    assert page.locator("h1").inner_text().startswith(site.report["probes"][0]["layer"])

    problems = watcher.take_problems()
    assert not problems, "\n".join(problems)


_DISPLAYS = "(sel) => [...document.querySelectorAll(sel)].map((e) => getComputedStyle(e).display)"
_GRID_DISPLAYS = "() => [...document.querySelectorAll('ol.gallery .frame')].map((e) => getComputedStyle(e, '::after').display)"


def test_overlay_toggles(site, mode, watcher):
    page = watcher.page
    open_view(watcher, site.heat_unit())
    n_cards = page.locator("ol.gallery li.card").count()
    assert n_cards > 0

    rf = page.evaluate(_DISPLAYS, "svg.overlay rect.rf")
    assert len(rf) >= n_cards and "none" not in rf
    page.uncheck("#show-rf")
    assert set(page.evaluate(_DISPLAYS, "svg.overlay rect.rf")) == {"none"}
    page.check("#show-rf")
    assert "none" not in page.evaluate(_DISPLAYS, "svg.overlay rect.rf")

    cells = page.evaluate(_DISPLAYS, "svg.overlay rect.cell")
    assert cells and "none" not in cells
    page.uncheck("#show-cell")
    assert set(page.evaluate(_DISPLAYS, "svg.overlay rect.cell")) == {"none"}
    page.check("#show-cell")

    grid_on = page.is_checked("#show-grid")
    assert ("none" not in page.evaluate(_GRID_DISPLAYS)) == grid_on
    page.set_checked("#show-grid", not grid_on)
    assert ("none" not in page.evaluate(_GRID_DISPLAYS)) == (not grid_on)

    heat = page.evaluate(_DISPLAYS, ".frame .heat")
    assert heat and set(heat) == {"none"}, "heatmaps are hidden until asked for"
    page.check("#show-heat")
    assert set(page.evaluate(_DISPLAYS, ".frame .heat")) == {"block"}
    atlases = page.evaluate("() => [...new Set([...document.querySelectorAll('.frame .heat')].map((e) => getComputedStyle(e).backgroundImage.match(/url\\(\"?(.*?)\"?\\)/)[1]))]")
    assert atlases and page.evaluate(_DECODES, atlases) == []
    page.uncheck("#show-heat")
    assert set(page.evaluate(_DISPLAYS, ".frame .heat")) == {"none"}

    # the probe page has the same toggles, without the heatmap
    watcher.goto(site.probe_pages()[0])
    assert page.locator("#show-heat").count() == 0
    assert "none" not in page.evaluate(_DISPLAYS, "svg.overlay rect.rf")
    page.uncheck("#show-rf")
    assert set(page.evaluate(_DISPLAYS, "svg.overlay rect.rf")) == {"none"}

    problems = watcher.take_problems()
    assert not problems, "\n".join(problems)


def _responsive_big_layer(w: Watcher, site: Site, layer: dict) -> None:
    page = w.page
    started = time.perf_counter()
    w.goto(layer["page"])
    wall = time.perf_counter() - started
    load_ms = page.evaluate("() => performance.getEntriesByType('navigation')[0].loadEventEnd")
    assert 0 < load_ms < 3000, f"{layer['page']} took {load_ms:.0f} ms to load"
    assert wall < 3, f"{layer['page']}: goto took {wall:.2f} s"
    ids = page.evaluate("() => [...document.querySelectorAll('#units ol.units li.unit')].map((li) => li.id)")
    assert ids == [f"unit-{i}" for i in range(layer["units"])]
    assert page.locator("#units ol.units li.unit a .thumb").count() == layer["units"], "every unit shows its best image"
    started = time.perf_counter()
    page.evaluate("() => window.scrollTo(0, document.body.scrollHeight)")
    page.evaluate("() => new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r)))")
    assert time.perf_counter() - started < 1.0
    last = layer["units"] - 1
    page.locator(f"#unit-{last} a").click()
    page.wait_for_url(w.url(layer["page"]) + f"#unit-{last}")
    wait_view(page, last)
    problems, _ = check_pages(site, w, [layer["page"], f"{layer['page']}#unit-{last}"])
    problems += w.take_problems()
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("wide_mode", ["file", "http"])
def test_500_unit_layer_page_is_responsive(browser, wide_site, wide_mode, servers):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    try:
        w = Watcher(context.new_page(), base_url(wide_site, wide_mode, servers), wide_site.root)
        (layer,) = wide_site.report["layers"]
        assert layer["units"] == WIDE_UNITS
        _responsive_big_layer(w, wide_site, layer)
    finally:
        context.close()


@pytest.mark.parametrize("big_mode", ["file", "http"])
def test_resnet50_sized_site(browser, big_site, big_mode, servers):
    """Every unit is reachable by clicking from the index; a layer of 2,048 units opens and scrolls;
    the index's filter and unit jump work."""
    layers = big_site.report["layers"]
    assert len(layers) == 174 and sum(layer["units"] for layer in layers) == 91075
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    try:
        w = Watcher(context.new_page(), base_url(big_site, big_mode, servers), big_site.root)
        page = w.page
        w.goto("index.html")
        links = page.evaluate("() => [...document.querySelectorAll('.layer-row.map .name a')].map((a) => a.href)")
        assert sorted(w.rel(h) for h in links) == sorted(layer["page"] for layer in layers)
        # every layer page holds a link to every one of its units: read from every page's HTML (the lists
        # are static: no script makes them), and the browser sees the same on a sample of the pages
        # (visiting all 174 took a minute and a half on a busy 2-core machine)
        for layer in layers:
            assert _unit_links(big_site.root / layer["page"]) == [f"#unit-{c}" for c in range(layer["units"])], layer["name"]
        for layer in layers[:: 10 if big_mode == "file" else 25]:
            w.goto(layer["page"])
            hrefs = page.evaluate("() => [...document.querySelectorAll('#units li.unit > a')].map((a) => a.getAttribute('href'))")
            assert hrefs == _unit_links(big_site.root / layer["page"]), layer["name"]
        widest = max(layers, key=lambda layer: layer["units"])
        assert widest["units"] == 2048
        _responsive_big_layer(w, big_site, widest)
        # the filter folds to matching layers; the jump opens a unit by name
        w.goto("index.html")
        page.fill("#layer-filter", "conv5_block3_3")
        visible = page.evaluate("() => [...document.querySelectorAll('.layer-row')].filter((r) => r.offsetParent !== null).map((r) => r.dataset.name)")
        assert visible and all("conv5_block3_3" in name for name in visible)
        page.fill("#unit-jump", f"{widest['name']}:2047")
        page.click("#unit-go")
        page.wait_for_url(w.url(widest["page"]) + "#unit-2047")
        wait_view(page, 2047)
        problems = w.take_problems()
        assert not problems, "\n".join(problems)
    finally:
        context.close()


def test_a_layer_ranked_as_another_says_so_and_links_to_it(browser, big_site, servers):
    """ResNet50's BatchNormalization and ReLU layers rank images as their convolution does: their
    pages link to it, and a dead unit's view says whose order its tied images are in."""
    derived = {layer["name"]: layer for layer in big_site.report["layers"] if layer["ranked_as"]}
    assert len(derived) == 102 and derived["conv1_relu"]["ranked_as"] == "conv1_conv"
    pages = {layer["name"]: layer["page"] for layer in big_site.report["layers"]}
    layer = derived["conv1_relu"]
    dead = next(u["channel"] for u in big_site.units(layer) if u["dead"] and all(e[1] == u["max"] for e in u["top"]))
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    try:
        w = Watcher(context.new_page(), base_url(big_site, "http", servers), big_site.root)
        page = w.page
        w.goto(f"{layer['page']}#unit-{dead}")
        wait_view(page, dead)
        assert "the ones conv1_conv scores highest" in page.inner_text("#unit-view .warning")
        assert "ranks images as conv1_conv does" in page.inner_text("#unit-view")
        page.click("dl.facts a:text('conv1_conv')")
        page.wait_for_url(w.url(pages["conv1_conv"]))
        problems = w.take_problems()
        assert not problems, "\n".join(problems)
    finally:
        context.close()


def test_without_javascript_layer_pages_show_every_best_image(browser, tiny_site, big_site):
    context = browser.new_context(java_script_enabled=False, viewport={"width": 1280, "height": 900})
    try:
        page = context.new_page()
        for site in (tiny_site, big_site):
            layer = max(site.report["layers"], key=lambda layer: layer["units"])
            page.goto((site.root / layer["page"]).resolve().as_uri(), wait_until="load")
            assert "need JavaScript" in page.inner_text("#units")
            thumbs = page.evaluate("() => [...document.querySelectorAll('#units li.unit .thumb')].map((t) => getComputedStyle(t).backgroundImage)")
            assert len(thumbs) == layer["units"] and all(t.startswith("url(") for t in thumbs)
    finally:
        context.close()
    context = browser.new_context()  # the sheets those thumbnails come from decode
    try:
        page = context.new_page()
        layer = tiny_site.report["layers"][0]
        page.goto((tiny_site.root / layer["page"]).resolve().as_uri(), wait_until="load")
        sheets = page.evaluate("() => [...new Set([...document.querySelectorAll('#units .thumb')].map((t) => getComputedStyle(t).backgroundImage.slice(5, -2)))]")
        assert sheets and page.evaluate(_DECODES, sheets) == []
    finally:
        context.close()


@ON_DEMO_WORKER
def test_screenshots(browser, demo_site, tiny_site, wide_site, big_site):
    """Full-page screenshots of each page kind of each site, as test artifacts."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    try:
        page = context.new_page()
        written = []
        for site in (demo_site, tiny_site):
            kinds = {"index": "index.html", "layer": site.report["layers"][0]["page"], "unit": site.heat_unit(), "probe": site.probe_pages()[0]}
            for kind, rel in kinds.items():
                page.goto((site.root / rel.split("#")[0]).resolve().as_uri() + ("#" + rel.split("#")[1] if "#" in rel else ""), wait_until="load")
                if kind == "unit":
                    page.wait_for_selector("#unit-view:not([hidden])")
                    page.check("#show-heat")  # shows the overlays and the heatmap
                path = SCREENSHOTS / f"{site.name}-{kind}.png"
                page.screenshot(path=str(path), full_page=kind != "layer" or site.name != "big")
                written.append(path)
        for site, rel, name in ((wide_site, wide_site.layer_pages()[0], "wide-layer"), (big_site, "index.html", "big-index")):
            page.goto((site.root / rel).resolve().as_uri(), wait_until="load")
            path = SCREENSHOTS / f"{name}.png"
            page.screenshot(path=str(path), full_page=True)
            written.append(path)
    finally:
        context.close()
    for path in written:
        assert path.is_file() and path.stat().st_size > 1000, path


def test_hostile_names_are_text_and_run_no_script(browser, hostile_site, mode, servers):
    """A layer called <img src=x onerror=alert(1)> and a file called "><img src=x onerror=alert(2)>.png
    show as text on every page and unit view, and no script runs (no dialog opens)."""
    context = browser.new_context()
    page = context.new_page()
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    base = base_url(hostile_site, mode, servers)
    seen_layer = seen_file = False
    addresses = hostile_site.pages() + [f"{layer['page']}#unit-{c}" for layer in hostile_site.report["layers"] for c in range(layer["units"])]
    for rel in addresses:
        page.goto(base + rel, wait_until="load")
        if "#unit-" in rel:
            page.wait_for_selector("#unit-view:not([hidden])")
        text = page.inner_text("body")
        seen_layer |= HOSTILE_LAYER_NAMES["c1"] in text
        seen_file |= '"><img src=x onerror=alert(2)>.png' in text
        assert page.locator('img[src="x"]').count() == 0, rel
    context.close()
    assert dialogs == []
    assert seen_layer and seen_file


def test_confusion_cells_reach_their_galleries_and_back(site, mode, watcher):
    page = watcher.page
    watcher.goto("index.html")
    cells = page.evaluate("() => [...document.querySelectorAll('table.confusion td a')].map((a) => a.getAttribute('href'))")
    matrix = site.report["metrics"]["confusion"]
    assert len(cells) == sum(1 for row in matrix for v in row if v)
    for i, href in enumerate(cells):
        link = page.locator("table.confusion td a").nth(i)
        count = int(link.inner_text())
        link.click()
        page.wait_for_url(watcher.url(href))
        shown = page.locator("ol.gallery li.card").count()
        assert shown == min(count, site.report["options"]["max_gallery"])
        page.wait_for_load_state("networkidle")  # its pictures, before leaving (else their requests are aborted)
        page.go_back()
        page.wait_for_url(watcher.url("index.html"))
    problems = watcher.take_problems()
    assert not problems, "\n".join(problems)


def test_class_activation_map_toggles(site, mode, watcher):
    page = watcher.page
    mistake = next((e for e in site.report["errors"]), None)
    cells = sorted(p.relative_to(site.root).as_posix() for p in (site.root / "mistakes").glob("*.html"))
    wrong = [c for c in cells if c.split("/")[1].split(".")[0].split("-")[0] != c.split("/")[1].split(".")[0].split("-")[1]]
    watcher.goto(wrong[0] if wrong else cells[0])
    n = page.locator("ol.gallery li.card").count()
    assert n > 0
    assert page.evaluate(_DISPLAYS, ".frame .cam.pred") == ["block"] * n  # the predicted class's map shows at first
    page.check("#cam-none")
    assert set(page.evaluate(_DISPLAYS, ".frame .cam")) == {"none"}
    if wrong:
        page.check("#cam-true")
        assert page.evaluate(_DISPLAYS, ".frame .cam.true") == ["block"] * n
        assert set(page.evaluate(_DISPLAYS, ".frame .cam.pred")) == {"none"}
        assert mistake is not None
    atlases = page.evaluate("() => [...new Set([...document.querySelectorAll('.frame .cam')].map((e) => getComputedStyle(e).backgroundImage.slice(5, -2)))]")
    assert atlases and page.evaluate(_DECODES, atlases) == []
    watcher.goto("index.html")  # the chosen image has its map too
    assert page.evaluate(_DISPLAYS, ".chosen .frame .cam.pred") == ["block"] * len(site.report["images"])
    problems = watcher.take_problems()
    assert not problems, "\n".join(problems)


def test_class_pages_link_to_units_and_units_to_classes(browser, tiny_site, servers):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    try:
        w = Watcher(context.new_page(), base_url(tiny_site, "http", servers), tiny_site.root)
        page = w.page
        pages = sorted(p.relative_to(tiny_site.root).as_posix() for p in (tiny_site.root / "classes").glob("*.html"))
        followed = 0
        for class_rel in pages:
            w.goto(class_rel)
            drivers = page.locator("ol.drivers li.unit a")
            if drivers.count() == 0:
                continue
            href = drivers.first.get_attribute("href")
            drivers.first.click()
            page.wait_for_url(w.url(posixpath.normpath(posixpath.join(posixpath.dirname(class_rel), href))))
            page.wait_for_selector("#unit-view:not([hidden]) .relevance-section")
            chips = page.locator("#unit-view .relevance-section a.chip")
            assert chips.count() >= 1
            target = chips.first.get_attribute("href")
            chips.first.click()
            page.wait_for_url(w.url(posixpath.normpath(posixpath.join("layers", target))))
            assert page.locator("h1").inner_text().startswith("Class ")
            followed += 1
        assert followed >= 1
        problems = w.take_problems()
        assert not problems, "\n".join(problems)
    finally:
        context.close()


@pytest.fixture(scope="session")
def thousand_site(tmp_path_factory) -> Site:
    from test_many_classes import CLASSES, many_classes

    root = tmp_path_factory.mktemp("browser_thousand")
    model_path, data, words = many_classes(root, CLASSES)
    assert build_site(model_path, data, root / "site", "--class-names", str(words)) == 0
    return _load_site("thousand", root / "site")


def test_a_thousand_classes_in_the_browser(browser, thousand_site, servers):
    site = thousand_site
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    try:
        w = Watcher(context.new_page(), base_url(site, "http", servers), site.root)
        page = w.page
        w.goto("index.html")
        # point at cells of the confusion picture: the tip names both classes and the count; a click opens the gallery
        names = [site.report["dataset"]["class_names"][f] for f in site.report["dataset"]["class_indices"]]
        cells = sorted(site.report["metrics"]["confusion_cells"], key=lambda c: (c[0] == c[1], -c[2]))
        for t, p, count in (cells[0], cells[-1]):
            # two pixels a cell, in a scrolling frame: bring the cell into view, then point at it
            page.evaluate("([t, p]) => { const f = document.querySelector('.confusion-scroll'); f.scrollLeft = 2 * p - 100; f.scrollTop = 2 * t - 100; }", [t, p])
            page.locator(".confusion-scroll").scroll_into_view_if_needed()
            box = page.locator("#confusion-picture").bounding_box()
            cell = box["width"] / CLASSES_IN_SITE
            assert cell >= 2
            x, y = int(box["x"] + p * cell) + 1, int(box["y"] + t * cell) + 1
            page.mouse.move(x, y)
            tip = page.locator("#confusion-tip").inner_text()
            assert tip.startswith(f"{names[t]} → predicted {names[p]}: {count} image"), tip
            page.mouse.click(x, y)
            page.wait_for_url(w.url(f"mistakes/{t}-{p}.html"))
            assert page.locator("ol.gallery li.card").count() == min(count, 64)
            page.go_back()
            page.wait_for_url(w.url("index.html"))
        # sorting: the 20 worst by accuracy, then by name; the full list by image count
        accuracy = "() => [...document.querySelectorAll('table[data-group=worst] tbody tr')].map((r) => parseFloat(r.cells[3].textContent))"
        page.click("table[data-group=worst] button[data-key=accuracy]")
        values = page.evaluate(accuracy)
        assert values == sorted(values, reverse=True)
        page.click("table[data-group=worst] button[data-key=accuracy]")
        assert page.evaluate(accuracy) == sorted(values)
        page.click("details.all-classes summary")
        page.click("table[data-group=all] >> nth=0 >> button[data-key=name]")
        shown = page.evaluate("() => [...document.querySelectorAll('table[data-group=all] tbody tr')].map((r) => r.cells[0].firstChild.textContent.trim().toLowerCase())")
        assert len(shown) == CLASSES_IN_SITE and shown == sorted(shown, reverse=True)
        page.fill("#class-filter", "thing number 999")
        visible = page.evaluate("() => [...document.querySelectorAll('table[data-group=all] tbody tr')].filter((r) => !r.hidden).length")
        assert visible == 1
        # a class page
        w.goto("classes/0-thing_number_0.html")
        assert page.locator("h1").inner_text().startswith("Class thing number 0")
        problems = w.take_problems()
        assert not problems, "\n".join(problems)
    finally:
        context.close()


CLASSES_IN_SITE = 1000


def test_summary_is_one_self_contained_file(browser, tiny_site):
    """Shown the way MLflow shows an artifact: its text as a blob: URL in a sandboxed iframe; no
    request of any kind, every image decoded."""
    import re

    text = (tiny_site.root / "summary.html").read_text()
    assert "<script" not in text and 'href="' not in text.split("<body>")[1]
    sources = re.findall(r'src="([^"]+)"', text)
    assert sources and all(src.startswith("data:image/") for src in sources)
    context = browser.new_context()
    page = context.new_page()
    requests, failed = [], []
    page.on("request", lambda r: requests.append(r.url))
    page.on("requestfailed", lambda r: failed.append(r.url))
    page.set_content("<html><body></body></html>")
    decoded = page.evaluate(
        """async (text) => {
            const url = URL.createObjectURL(new Blob([text], {type: 'text/html'}));
            const frame = document.createElement('iframe');
            frame.setAttribute('sandbox', 'allow-scripts allow-same-origin');
            frame.style.width = '1200px'; frame.style.height = '900px';
            await new Promise((resolve) => { frame.onload = resolve; frame.src = url; document.body.appendChild(frame); });
            const images = [...frame.contentDocument.images];
            await Promise.all(images.map((i) => i.decode().catch(() => null)));
            return images.map((i) => i.complete && i.naturalWidth > 0);
        }""",
        text,
    )
    context.close()
    assert len(decoded) == len(sources) and all(decoded)
    assert failed == [] and all(u.startswith(("blob:", "data:", "about:")) for u in requests), requests
