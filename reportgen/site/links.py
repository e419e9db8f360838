"""The link check, from what was generated: every page makes its links with `Links.url()` and its
anchors with `Links.anchor()`, so the site's own list of files, links and anchors is known without
reading a page back. `Links.broken()` lists every link whose file or #anchor does not exist."""

from __future__ import annotations

import posixpath
from collections import defaultdict

from reportgen.site.names import relative_url


class Links:
    def __init__(self) -> None:
        self.links: list[tuple[str, str]] = []  # (from page, site-relative target with optional #anchor)
        self.anchors: dict[str, set[str]] = defaultdict(set)
        self.unit_links: list[tuple[str, list[str]]] = []  # (page, anchors it links to on itself): Links.units

    def url(self, page: str, target: str) -> str:
        """The relative URL from `page` to `target` ("path" or "path#anchor", site-relative; "#anchor" for the page itself)."""
        if target.startswith("#"):
            target = page + target
        self.links.append((page, target))
        path, _, anchor = target.partition("#")
        if path == page:
            return "#" + anchor if anchor else relative_url(page, path)
        return relative_url(page, target)

    def anchor(self, page: str, name: str) -> str:
        self.anchors[page].add(name)
        return name

    def units(self, page: str, channels) -> None:
        """Anchors unit-<channel> on `page`, each linked from the page itself: a layer page's unit
        list (a line per unit, each its own link), declared at once instead of a url() and an
        anchor() call per unit in the template (21,000 units: most of a big model's page time)."""
        names = [f"unit-{c}" for c in channels]
        self.anchors[page].update(names)
        self.unit_links.append((page, names))  # checked as sets (ResNet50: 91k links)

    def broken(self, files: set[str]) -> list[str]:
        """Links to a file that is not in `files`, or to an anchor its page does not declare."""
        found = []
        for page, target in self.links:
            path, _, anchor = target.partition("#")
            path = posixpath.normpath(path)
            if path not in files:
                found.append(f"{page}: link to {target} (no such file)")
            elif anchor and path.endswith(".html") and anchor not in self.anchors.get(path, ()):
                found.append(f"{page}: link to {target} (no anchor {anchor!r})")
        for page, names in self.unit_links:
            path = posixpath.normpath(page)
            if path not in files:
                found.extend(f"{page}: link to {page}#{name} (no such file)" for name in names)
            elif path.endswith(".html"):
                missing = set(names).difference(self.anchors.get(path, ()))
                found.extend(f"{page}: link to {page}#{name} (no anchor {name!r})" for name in names if name in missing)
        return found
