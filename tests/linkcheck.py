"""An independent link check for the tests: parse every page of a written site (href, src, CSS url()
in style blocks and attributes, id anchors) and every data file's references, and list what does
not resolve. The build itself checks links from its own list of what it generated (site/links.py);
this reads the result back, as a browser would, to check that list."""

from __future__ import annotations

import html.parser
import json
import posixpath
import re
from urllib.parse import unquote, urlsplit

_CSS_URL = re.compile(r"url\(\s*['\"]?([^'\")]+)['\"]?\s*\)")


class _Page(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []
        self.ids: set[str] = set()
        self._in_style = False

    def handle_endtag(self, tag):
        self._in_style = False

    def handle_data(self, data):
        if self._in_style:
            self.links += _CSS_URL.findall(data)

    def handle_starttag(self, tag, attrs):
        self._in_style = tag == "style"
        for name, value in attrs:
            if name in ("href", "src") and value is not None:
                self.links.append(value)
            if name == "id" and value:
                self.ids.add(value)
            if name == "style" and value:
                self.links += _CSS_URL.findall(value)


def read_js_json(text: str) -> dict:
    return json.loads(text[text.index("(") + 1 : text.rindex(")")])


def broken_links(files: dict[str, bytes]) -> list[str]:
    """Every href/src/url() of every page, and every file named in data/*.js, that does not resolve."""
    parsed: dict[str, _Page] = {}
    for path, data in files.items():
        if path.endswith(".html"):
            p = _Page()
            p.feed(data.decode("utf-8"))
            parsed[path] = p
    broken = []
    for page, p in parsed.items():
        for link in p.links:
            parts = urlsplit(link)
            if parts.scheme == "data":  # self-contained (summary.html)
                continue
            if parts.scheme or parts.netloc:
                broken.append(f"{page}: external link {link}")
                continue
            target = page if not parts.path else posixpath.normpath(posixpath.join(posixpath.dirname(page), unquote(parts.path)))
            if target not in files:
                broken.append(f"{page}: {link} (no file {target})")
            elif parts.fragment and target in parsed and unquote(parts.fragment) not in parsed[target].ids:
                broken.append(f"{page}: {link} (no id {parts.fragment})")
    for path, data in files.items():
        if path.startswith("data/") and path.endswith(".js"):
            content = read_js_json(data.decode("utf-8"))
            named = content.get("sheets", []) + content.get("heat", {}).get("atlases", [])
            named += [content["page"]] if "page" in content else []
            broken += [f"{path}: names {name} (no such file)" for name in named if name not in files]
    return broken
