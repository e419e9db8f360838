"""Where everything lives in the site: names from layer names and content hashes only, so the same
inputs give the same bytes, and relative URLs that work from file:// and on any web server."""

from __future__ import annotations

import hashlib
import posixpath
import re
from urllib.parse import quote

LAYER_DIR = "layers"
DATA_DIR = "data"
PROBE_DIR = "probes"


def slug(name: str) -> str:
    """A file-system and URL safe name for a layer: readable part plus a hash of the full name."""
    readable = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._-")[:40] or "layer"
    return f"{readable}-{hashlib.sha1(name.encode('utf-8')).hexdigest()[:8]}"


def layer_page(name: str) -> str:
    return f"{LAYER_DIR}/{slug(name)}.html"


def unit_address(layer: str, channel: int) -> str:
    """A unit's stable address: its layer page and an anchor (survives reload, back/forward, a new tab)."""
    return f"{layer_page(layer)}#unit-{channel}"


def layer_data(name: str) -> str:
    return f"{DATA_DIR}/{slug(name)}.js"


def probe_page(layer: str, row: int, col: int, channel: int) -> str:
    return f"{PROBE_DIR}/{slug(layer)}_{row}_{col}_{channel}.html"


def content_path(folder: str, data: bytes, ext: str, stem: str = "") -> str:
    digest = hashlib.sha1(data).hexdigest()[:16]
    return f"{folder}/{stem}-{digest}.{ext}" if stem else f"{folder}/{digest}.{ext}"


def relative_url(from_page: str, target: str) -> str:
    """Relative, percent-encoded URL from one site file to another (both site-root relative), '#anchor' kept."""
    path, _, anchor = target.partition("#")
    rel = quote(relative_path(path, posixpath.dirname(from_page)), safe="/") if path else ""
    return rel + (f"#{quote(anchor, safe='')}" if anchor else "")


def relative_path(path: str, start: str) -> str:
    """posixpath.relpath for site-relative paths (no '..'), without its os.getcwd() per call: a
    site's pages make tens of thousands of links."""
    target = [p for p in path.split("/") if p not in ("", ".")]
    base = [p for p in start.split("/") if p not in ("", ".")]
    common = 0
    while common < min(len(base), len(target)) and base[common] == target[common]:
        common += 1
    return "/".join([".."] * (len(base) - common) + target[common:]) or "."


def shape_text(shape) -> str:
    return "(" + ", ".join("None" if d is None else str(d) for d in shape) + ")"


def class_page(index: int, name: str) -> str:
    readable = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._-")[:40] or "class"
    return f"classes/{index}-{readable}.html"


def cell_page(true: int, predicted: int) -> str:
    """The gallery of one confusion cell: images of class `true` predicted as `predicted`."""
    return f"mistakes/{true}-{predicted}.html"
