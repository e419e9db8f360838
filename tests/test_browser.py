"""The built site in a real headless browser: Debian's Chromium at /usr/bin/chromium, driven by Playwright.

Three sites are built once per session: the demo's (`run_demo`), a tiny one (conftest's `tiny_sequential`
with a fixed unit, so a probe page exists) and a "wide" one whose only conv layer has 500 filters. Each is
opened from file:// and from a local HTTP server, and checked for: console errors/warnings, page errors,
failed requests and HTTP errors; images that do not decode; relative links, #anchors, and CSS url()s
that do not resolve; navigation by clicking; the overlay toggles; load time of a 500-unit layer page.
Full-page screenshots of each page kind go to <repo>/test-artifacts/screenshots/.

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

    def unit_pages(self, layer: str) -> list[str]:
        return [u["page"] for u in self.report["units"] if u["layer"] == layer]

    def sample_pages(self) -> list[str]:
        """index, every layer page, first and last unit of every layer, every probe page."""
        pages = ["index.html", *self.layer_pages()]
        for layer in self.report["layers"]:
            units = self.unit_pages(layer["name"])
            pages += sorted({units[0], units[-1]}, key=units.index)
        return pages + self.probe_pages()

    def heat_unit_page(self) -> str:
        """A unit page with the activation-heatmap toggle (first one in report order)."""
        for unit in self.report["units"]:
            if 'id="show-heat"' in (self.root / unit["page"]).read_text(encoding="utf-8"):
                return unit["page"]
        raise AssertionError(f"{self.name}: no unit page has a #show-heat toggle")


def _load_site(name: str, root: Path) -> Site:
    assert (root / "index.html").is_file(), f"{name}: no index.html in {root}"
    return Site(name, root, json.loads((root / "report.json").read_text(encoding="utf-8")))


@pytest.fixture(scope="session")
def demo_site(tmp_path_factory) -> Site:
    from reportgen.demo import run_demo

    out = tmp_path_factory.mktemp("browser_demo") / "site"
    run_demo(out, workdir=tmp_path_factory.mktemp("browser_demo_work"), quiet=True)
    return _load_site("demo", out)


@pytest.fixture(scope="session")
def tiny_site(tmp_path_factory) -> Site:
    work = tmp_path_factory.mktemp("browser_tiny")
    model = work / "tiny.keras"
    tiny_sequential().save(model)
    make_dataset(work / "data", {"cats": 12, "dogs": 9})
    assert build_site(model, work / "data", work / "site", "--unit", "c2:1:1:0") == 0
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
    from reportgen.site import assemble_site
    from reportgen.writer import write_site

    work = tmp_path_factory.mktemp("browser_hostile")
    tiny_sequential().save(work / "m.keras")
    make_dataset(work / "data", {"cats": 6, "dogs": 5})
    for i, stem in enumerate(NASTY_NAMES):
        make_rgb_png(work / "data" / "dogs" / f"{stem}.png", seed=500 + i)
    si = gather(BuildOptions(model=work / "m.keras", data=work / "data", out=work / "site", quiet=True, units=["c2:1:1:0"]))
    rename_layers(si, HOSTILE_LAYER_NAMES)
    write_site(work / "site", assemble_site(si))
    return _load_site("hostile", work / "site")


SITES = {"demo": "demo_site", "tiny": "tiny_site", "hostile": "hostile_site"}


@pytest.fixture(params=sorted(SITES))
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

    def __init__(self, page, base: str) -> None:
        self.page = page
        self.base = base
        self.problems: list[str] = []
        page.on("console", self._console)
        page.on("pageerror", lambda err: self.problems.append(f"page error: {err}"))
        page.on("requestfailed", self._failed)
        page.on("response", self._response)

    def _console(self, msg) -> None:
        if msg.type in ("error", "warning"):
            self.problems.append(f"console {msg.type}: {msg.text} at {msg.location}")

    def _failed(self, req) -> None:
        # Chromium fetches the icon after the page loads and aborts that fetch when the test moves on;
        # the icon file itself is checked like every other link.
        if req.url.endswith("/static/favicon.svg") and "ERR_ABORTED" in (req.failure or ""):
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
        return problems


@pytest.fixture
def watcher(browser, site_and_base):
    site, base = site_and_base
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    w = Watcher(context.new_page(), base)
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
  // a linked stylesheet's rules are not readable from file:// (opaque origin): check that it is parsed and applied
  const sheets = [...document.querySelectorAll('link[rel=stylesheet]')].map((l) => l.sheet !== null);
  const styled = getComputedStyle(document.querySelector('header.top')).display === 'flex';
  return {refs, images, ids, sheets, styled, h1: document.querySelector('h1')?.textContent ?? null};
}
"""


class _IdParser(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.ids: set[str] = set()

    def handle_starttag(self, tag, attrs):
        for name, value in attrs:
            if name == "id" and value:
                self.ids.add(value)


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
        inv = w.page.evaluate(_PAGE_INVENTORY)
        inventories[rel] = inv
        ids[rel] = set(inv["ids"])
        problems += [f"{rel}: {p}" for p in w.take_problems()]
        if not inv["sheets"] or not all(inv["sheets"]) or not inv["styled"]:
            problems.append(f"{rel}: the stylesheet is not loaded or not applied ({inv['sheets']}, styled={inv['styled']})")
        for img in inv["images"]:
            if img["lazy"]:
                problems.append(f"{rel}: lazy image {img['src']}")
            if not (img["complete"] and img["width"] > 0):
                problems.append(f"{rel}: image does not decode: {img['src']} (complete={img['complete']}, naturalWidth={img['width']})")
    for rel, inv in inventories.items():
        for kind, raw, resolved in inv["refs"]:
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


def test_pages_load_clean_with_images_and_links(site, mode, watcher):
    """Every page (tiny) / a sample of every page kind (demo): no errors, images decode, links and anchors resolve."""
    pages = site.pages() if site.name in ("tiny", "hostile") else site.sample_pages()
    if site.name in ("tiny", "hostile"):
        kinds = {p.split("/")[0] for p in pages}
        assert {"index.html", "layers", "units", "probes"} <= kinds, kinds
    problems, inventories = check_pages(site, watcher, pages)
    assert not problems, f"{site.name} site over {mode}:\n" + "\n".join(problems)
    # the sample really covers what it should
    assert len(inventories) == len(pages)
    assert sum(len(inv["images"]) for inv in inventories.values()) > len(pages)


def _h1_name(page) -> str:
    """The h1's own text, without the '(Type)' span and the '· unit N' tail."""
    return page.evaluate("() => document.querySelector('h1').firstChild.textContent.trim()")


def test_navigation_by_clicking(site, mode, watcher):
    page = watcher.page
    watcher.goto("index.html")
    layer_link = page.locator("#layers table.summary td.name a").first
    layer_name = layer_link.inner_text().strip()
    layer_rel = watcher.rel(layer_link.evaluate("a => a.href"))
    layer_link.click()
    page.wait_for_url(watcher.url(layer_rel))
    assert layer_rel.startswith("layers/")
    assert _h1_name(page) == layer_name

    # a unit in the "Units" overview
    units = page.locator("#units ol.units li.unit a")
    assert units.count() >= 2
    unit_link = units.nth(1)
    channel = int(unit_link.locator(".ch").inner_text())
    unit_rel = watcher.rel(unit_link.evaluate("a => a.href"))
    unit_link.click()
    page.wait_for_url(watcher.url(unit_rel))
    h1 = page.locator("h1").inner_text()
    assert f"unit {channel}" in h1 and h1.startswith(layer_name), h1

    # the breadcrumb back to the layer
    crumb = page.locator("nav.crumbs a:not(.home)")
    assert crumb.inner_text().strip() == layer_name
    crumb.click()
    page.wait_for_url(watcher.url(layer_rel))
    assert _h1_name(page) == layer_name

    # history
    page.go_back(wait_until="load")
    assert watcher.rel(page.url) == unit_rel
    assert f"unit {channel}" in page.locator("h1").inner_text()
    page.go_back(wait_until="load")
    assert watcher.rel(page.url) == layer_rel
    page.go_forward(wait_until="load")
    assert watcher.rel(page.url) == unit_rel

    # "all units" jumps to this unit's card on the layer page
    page.locator("nav.pager a", has_text="all units").click()
    page.wait_for_url(watcher.url(layer_rel) + f"#unit-{channel}")
    assert page.locator(f"#unit-{channel}").is_visible()

    # a tile of the feature-map grid opens that channel's unit page
    tiles = page.locator(".fgrid a.tile")
    assert tiles.count() == len(site.unit_pages(layer_name))
    tile = tiles.nth(tiles.count() - 1)
    tile_channel = int(tile.get_attribute("title").split()[1])
    tile_rel = watcher.rel(tile.evaluate("a => a.href"))
    tile.click()
    page.wait_for_url(watcher.url(tile_rel))
    assert tile_rel == site.unit_pages(layer_name)[tile_channel]
    assert f"unit {tile_channel}" in page.locator("h1").inner_text()
    assert _h1_name(page) == layer_name

    # the probe page is reachable from the index
    watcher.goto("index.html")
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
    watcher.goto(site.heat_unit_page())
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
    # the heat sprite behind them is a real image
    sprite = page.evaluate(
        """async () => {
          const bg = getComputedStyle(document.querySelector('.frame .heat')).backgroundImage;
          const m = bg.match(/url\\("?(.*?)"?\\)/);
          if (!m) return {bg, width: 0};
          const img = new Image();
          img.src = m[1];
          try { await img.decode(); } catch (e) { return {bg, width: -1}; }
          return {bg, width: img.naturalWidth};
        }"""
    )
    assert sprite["width"] > 0, f"heat sprite does not load: {sprite}"
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


@pytest.mark.parametrize("wide_mode", ["file", "http"])
def test_500_unit_layer_page_is_responsive(browser, wide_site, wide_mode, servers):
    base = base_url(wide_site, wide_mode, servers)
    (layer_rel,) = wide_site.layer_pages()
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    try:
        w = Watcher(context.new_page(), base)
        page = w.page
        started = time.perf_counter()
        w.goto(layer_rel)
        wall = time.perf_counter() - started
        load_ms = page.evaluate("() => performance.getEntriesByType('navigation')[0].loadEventEnd")
        assert 0 < load_ms < 3000, f"{layer_rel} took {load_ms:.0f} ms to load"
        assert wall < 3, f"{layer_rel}: goto took {wall:.2f} s"

        cards = page.evaluate(
            """() => [...document.querySelectorAll('#units ol.units li.unit')].map((li) => {
                 const img = li.querySelector('img');
                 return {id: li.id, img: !!img, ok: !!img && img.complete && img.naturalWidth > 0};
               })"""
        )
        assert len(cards) == WIDE_UNITS
        assert [c["id"] for c in cards] == [f"unit-{i}" for i in range(WIDE_UNITS)]
        assert all(c["img"] for c in cards), "every unit card shows its best image"
        bad = [c["id"] for c in cards if not c["ok"]]
        assert not bad, f"unit images that do not decode: {bad[:10]} ({len(bad)} in all)"
        assert page.locator(".fgrid a.tile").count() == WIDE_UNITS

        # still responsive: scroll to the end, and the last unit opens by click
        started = time.perf_counter()
        page.evaluate("() => window.scrollTo(0, document.body.scrollHeight)")
        page.evaluate("() => new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r)))")
        assert time.perf_counter() - started < 1.0
        last = page.locator(f"#unit-{WIDE_UNITS - 1} a")
        last.click()
        page.wait_for_url(w.url(wide_site.unit_pages("wide")[-1]))
        assert f"unit {WIDE_UNITS - 1}" in page.locator("h1").inner_text()

        problems, _ = check_pages(wide_site, w, [layer_rel])
        problems += w.take_problems()
        assert not problems, "\n".join(problems)
    finally:
        context.close()


def test_screenshots(browser, demo_site, tiny_site, wide_site):
    """Full-page screenshots of each page kind of each site, as test artifacts."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    try:
        page = context.new_page()
        written = []
        for site in (demo_site, tiny_site):
            layer = site.report["layers"][0]
            kinds = {
                "index": "index.html",
                "layer": layer["page"],
                "unit": site.heat_unit_page(),
                "probe": site.probe_pages()[0],
            }
            for kind, rel in kinds.items():
                page.goto((site.root / rel).resolve().as_uri(), wait_until="load")
                if kind == "unit":
                    page.check("#show-heat")  # shows the overlays and the heatmap
                path = SCREENSHOTS / f"{site.name}-{kind}.png"
                page.screenshot(path=str(path), full_page=True)
                written.append(path)
        page.goto((wide_site.root / wide_site.layer_pages()[0]).resolve().as_uri(), wait_until="load")
        path = SCREENSHOTS / "wide-layer.png"
        page.screenshot(path=str(path), full_page=True)
        written.append(path)
    finally:
        context.close()
    for path in written:
        assert path.is_file() and path.stat().st_size > 1000, path


def test_hostile_names_are_text_and_run_no_script(browser, hostile_site, mode, servers):
    """A layer called <img src=x onerror=alert(1)> and a file called "><img src=x onerror=alert(2)>.png
    show as text on every page, and no script runs (no dialog opens)."""
    context = browser.new_context()
    page = context.new_page()
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    base = base_url(hostile_site, mode, servers)
    seen_layer = seen_file = False
    for rel in hostile_site.pages():
        page.goto(base + rel, wait_until="load")
        text = page.inner_text("body")
        seen_layer |= HOSTILE_LAYER_NAMES["c1"] in text
        seen_file |= '"><img src=x onerror=alert(2)>.png' in text
        assert page.locator('img[src="x"]').count() == 0, rel
    context.close()
    assert dialogs == []
    assert seen_layer and seen_file
