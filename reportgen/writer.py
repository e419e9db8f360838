"""The only module that writes the site: into a temporary folder beside --out, then moved into place.

A build that fails or is interrupted leaves the previous site exactly as it was. A folder is
only ever replaced if it is empty, or a previous report of this tool (it holds MARKER), or the
user said --force; and never if it holds the dataset or the model.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

from reportgen.errors import UserError

log = logging.getLogger("reportgen")

MARKER = ".reportgen-site"
MARKER_TEXT = b'{"generator": "reportgen", "note": "this folder is a reportgen site; reportgen build may replace it"}\n'
_INCOMPLETE = ".reportgen-incomplete"


def _tmp_prefix(out: Path) -> str:
    return f".{out.name}.reportgen-tmp-"


def _inside(child: Path, parent: Path) -> bool:
    try:
        child.resolve().relative_to(parent.resolve())
        return True
    except ValueError:
        return False


def check_target(out: Path, force: bool, keep: dict[str, Path]) -> None:
    """Raise UserError unless `out` may be (re)written. `keep`: what must survive, e.g. {"dataset": path}."""
    for what, path in keep.items():
        if _inside(path, out):
            raise UserError(f"{out}: refusing to write the site there: it holds the {what} ({path})")
        if what == "dataset" and _inside(out, path):
            raise UserError(f"{out}: is inside the dataset folder {path}; choose an --out outside it")
    if not out.exists():
        return
    if not out.is_dir():
        raise UserError(f"{out}: exists and is a file; --out takes a folder")
    if (out / MARKER).is_file() or not any(out.iterdir()):
        return
    if not force:
        raise UserError(
            f"{out}: exists, is not empty and is not a reportgen site; choose another --out, or pass --force to replace it"
        )


def _remove_stale(out: Path) -> None:
    """Temporary folders left by a build that was killed outright (kill -9): ours, and marked incomplete."""
    for stale in out.parent.glob(_tmp_prefix(out) + "*"):
        if (stale / _INCOMPLETE).exists():
            shutil.rmtree(stale, ignore_errors=True)


class SiteFolder:
    """The site being written: files go into a temporary folder beside `out` as they are made, and
    the finished folder is swapped in for `out` by `commit()`. Leaving the `with` block without
    committing (an error, Ctrl-C) removes the temporary folder; `out` stays as it was.

        with SiteFolder(out, force, keep) as site:
            site.write("index.html", data)
            ...
            site.commit()
    """

    def __init__(self, out: Path, force: bool = False, keep: dict[str, Path] | None = None) -> None:
        self.out = Path(out)
        self.force = force
        self.keep = keep or {}
        self.tmp: Path | None = None
        self.files = 0
        self.bytes = 0
        self._written: set[str] = set()

    def __enter__(self) -> "SiteFolder":
        check_target(self.out, self.force, self.keep)
        parent = self.out.absolute().parent
        parent.mkdir(parents=True, exist_ok=True)
        _remove_stale(self.out.absolute())
        self.tmp = Path(tempfile.mkdtemp(prefix=_tmp_prefix(self.out), dir=parent))
        (self.tmp / _INCOMPLETE).write_bytes(b"")
        os.chmod(self.tmp, 0o755)
        return self

    def write(self, rel: str, data: bytes) -> str:
        """Write one file (site-relative path, '/' separators); a content-named file written twice is kept once."""
        if rel in self._written:
            return rel
        target = self.tmp / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        self._written.add(rel)
        self.files += 1
        self.bytes += len(data)
        return rel

    def has(self, rel: str) -> bool:
        return rel in self._written

    @property
    def written(self) -> set[str]:
        return set(self._written)

    def commit(self) -> None:
        check_target(self.out, self.force, self.keep)
        (self.tmp / MARKER).write_bytes(MARKER_TEXT)
        (self.tmp / _INCOMPLETE).unlink()
        _swap_in(self.tmp, self.out.absolute())
        self.tmp = None

    def __exit__(self, *exc) -> None:
        if self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.tmp = None


def write_site(out: Path, files: dict[str, bytes], force: bool = False, keep: dict[str, Path] | None = None) -> None:
    """Write a whole site given as {relative path: bytes}, then swap it in for `out`."""
    with SiteFolder(out, force, keep) as site:
        for rel, data in sorted(files.items()):
            site.write(rel, data)
        site.commit()


def _swap_in(tmp: Path, out: Path) -> None:
    if not out.exists():
        os.rename(tmp, out)
        return
    if not any(out.iterdir()):
        out.rmdir()
        os.rename(tmp, out)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.reportgen-old-", dir=out.parent))
    os.rmdir(old)
    os.rename(out, old)
    try:
        os.rename(tmp, out)
    except BaseException:
        os.rename(old, out)  # put the previous site back
        raise
    shutil.rmtree(old, ignore_errors=True)
