"""The only module that writes the site: into a temporary folder beside --out, then moved into place.

A build that fails or is interrupted leaves the previous site exactly as it was. A folder is
only ever replaced if it is empty, or a previous report of this tool (it holds MARKER), or the
user said --force; and never if it holds the dataset or the model.

One writer per --out: a build holds an exclusive lock (fcntl.flock) on `.<out>.reportgen-lock`
beside --out from its first check to its last write; a second build on the same folder fails at
once naming the first (its pid and start time), or waits for it (--wait). A temporary folder left
by a killed build is removed only by a build that holds the lock, so never while its maker runs.

Disk and file system errors while writing (no space, quota, read-only, permission) end the build
with one line naming the path and the cause; the previous site stays, no temporary folder is left.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import socket
import tempfile
import time
from pathlib import Path

from reportgen.errors import UserError, check_interruption

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


_DISK_ERRORS = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "disk quota exceeded", errno.EROFS: "read-only file system",
                errno.EACCES: "permission denied", errno.EPERM: "operation not permitted"}


def disk_error(path, exc: OSError) -> UserError:
    """One line for an OSError met while writing the site."""
    cause = _DISK_ERRORS.get(exc.errno, exc.strerror or str(exc))
    return UserError(f"{path}: cannot write the site: {cause}; the previous site (if any) is unchanged")


def check_free_space(out: Path, needed: int) -> None:
    """Refuse before writing when the file system beside --out has less free space than the site needs."""
    parent = Path(out).absolute().parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    try:
        free = shutil.disk_usage(parent).free
    except OSError:
        return
    if needed > free:
        raise UserError(f"{out}: needs about {needed / 1e6:.0f} MB, {free / 1e6:.0f} MB free on {_mount_of(parent)}")


def _mount_of(path: Path) -> str:
    path = path.resolve()
    while not os.path.ismount(path) and path != path.parent:
        path = path.parent
    return str(path)


_HELD: dict[str, int] = {}  # lock file -> open descriptor, for the locks this process holds


class OutLock:
    """The exclusive lock on `.<out>.reportgen-lock` beside `out`; re-entrant within one process."""

    def __init__(self, out: Path, wait: bool = False) -> None:
        out = Path(out).absolute()
        self.path = out.parent / f".{out.name}.reportgen-lock"
        self.wait = wait
        self.owner = False

    def __enter__(self) -> "OutLock":
        import fcntl

        key = str(self.path)
        if key in _HELD:
            return self
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise disk_error(self.path.parent, exc) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            if not self.wait:
                os.close(fd)
                raise UserError(f"{self.path.parent / self.path.name[1:-len('.reportgen-lock')]}: another reportgen build is writing it "
                                f"({holder}); wait for it to end, or pass --wait") from None
            log.info("waiting for the other build writing this folder (%s)", holder)
            fcntl.flock(fd, fcntl.LOCK_EX)
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S %Z")}).encode())
        _HELD[key] = fd
        self.owner = True
        return self

    def __exit__(self, *exc) -> None:
        if self.owner:  # the file stays (removing it would let two builds lock two different files)
            os.close(_HELD.pop(str(self.path)))


def _holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0) or b"{}")
        return f"pid {info.get('pid', '?')} on {info.get('host', '?')}, started {info.get('started', '?')}"
    except (OSError, ValueError):
        return "pid unknown"


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
        self.lock = OutLock(self.out)
        self.lock.__enter__()
        try:
            check_target(self.out, self.force, self.keep)
            parent = self.out.absolute().parent
            try:
                parent.mkdir(parents=True, exist_ok=True)
                _remove_stale(self.out.absolute())  # we hold the lock: no build of this folder is running
                self.tmp = Path(tempfile.mkdtemp(prefix=_tmp_prefix(self.out), dir=parent))
                (self.tmp / _INCOMPLETE).write_bytes(b"")
                os.chmod(self.tmp, 0o755)
            except OSError as exc:
                raise disk_error(parent, exc) from None
        except BaseException:
            self.__exit__()
            raise
        return self

    def write(self, rel: str, data: bytes) -> str:
        """Write one file (site-relative path, '/' separators); a content-named file written twice is kept once."""
        if rel in self._written:
            return rel
        target = self.tmp / rel
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        except OSError as exc:
            raise disk_error(self.out, exc) from None
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
        check_interruption()  # an interrupted build is never swapped in
        check_target(self.out, self.force, self.keep)
        try:
            (self.tmp / MARKER).write_bytes(MARKER_TEXT)
            (self.tmp / _INCOMPLETE).unlink()
            _swap_in(self.tmp, self.out.absolute())
        except OSError as exc:
            raise disk_error(self.out, exc) from None
        self.tmp = None

    def __exit__(self, *exc) -> None:
        if self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.tmp = None
        if getattr(self, "lock", None) is not None:
            self.lock.__exit__()
            self.lock = None


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
