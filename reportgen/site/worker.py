"""The per-layer data files (data.layer_file), made by a second Python process while this one
renders the pages: for a network of many units (ResNet50: 91,075 units, 1.5 million top-K entries
to print) they are the biggest part of the site stage, pure Python formatting that one process can
only do on one core.

The second process runs only reportgen.site.data (no TensorFlow): it reads jobs from its stdin and
writes each file's bytes to its stdout, in order. Whatever it does not deliver (it cannot start,
exits, or fails on a job) is made here, so the bytes of the site are the same either way.
"""

from __future__ import annotations

import os
import pickle
import queue
import signal
import struct
import subprocess
import sys
import threading
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

from reportgen.site.data import layer_file

WORKER_ENTRIES = 200_000  # top-K entries in all (units x K) from which a second process pays for its start (~0.4 s of CPU)
_HEADER = struct.Struct("<Q")


def _send(stream, value) -> None:
    data = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(_HEADER.pack(len(data)))
    stream.write(data)
    stream.flush()


def _receive(stream):
    """The next value, or None at the end of the stream."""
    head = stream.read(_HEADER.size)
    if len(head) < _HEADER.size:
        return None
    (size,) = _HEADER.unpack(head)
    data = stream.read(size)
    return pickle.loads(data) if len(data) == size else None


def serve(expected: str) -> None:
    """The second process: (key, arguments of layer_file) in, (key, bytes or None when it failed) out,
    until a None job. expected: the parent's data.py; another copy of reportgen exits at once."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle: it closes the pipes
    if str(Path(sys.modules[layer_file.__module__].__file__).resolve()) != expected:
        return
    jobs, results = sys.stdin.buffer, sys.stdout.buffer
    while (job := _receive(jobs)) is not None:
        key, kwargs = job
        try:
            content = layer_file(**kwargs)
        except Exception:  # made again in the parent, where the error surfaces with its traceback
            content = None
        _send(results, (key, content))


def _portable(kwargs: dict) -> dict:
    """The arguments as they travel: without the heatmaps (not in the file, and the largest arrays),
    relevance as plain arrays (its class lives in a module that imports TensorFlow)."""
    out = dict(kwargs, units=replace(kwargs["units"], heat=kwargs["units"].heat[:0]))
    rel = kwargs.get("relevance")
    if rel is not None:
        out["relevance"] = SimpleNamespace(values=rel.values, images=rel.images, rows=rel.rows, cols=rel.cols, by_class=rel.by_class)
    return out


def _python_to_start() -> bool:
    """Whether sys.executable is a Python interpreter to start (not a frozen app, or an application
    embedding Python, which `-c` could start as itself)."""
    return not getattr(sys, "frozen", False) and Path(sys.executable or "").name.lower().startswith("python")


class LayerFiles:
    """Layer data files keyed by their site path: submit() each, take the finished ones with ready()
    as the pages render, and the rest with finish(). With fewer than `WORKER_ENTRIES` entries (or one
    core), each is made at once, here. Threads feed the second process and read what it sends back,
    so that submit() never waits for it."""

    def __init__(self, entries: int, use_worker: bool | None = None) -> None:
        self._lock = threading.Lock()
        self._ready: list[tuple[str, bytes]] = []
        self._pending: dict[str, dict] = {}  # key -> kwargs, until its bytes come back
        self._proc = None
        self._broken = False  # what the second process sent could not be read: it is stopped, not waited for
        if use_worker is None:
            use_worker = entries >= WORKER_ENTRIES and (os.cpu_count() or 1) > 1 and _python_to_start()
        if use_worker:
            self._start()

    def _start(self) -> None:
        # this process's import path, so that it finds this copy of reportgen (which it checks)
        expected = str(Path(sys.modules[layer_file.__module__].__file__).resolve())
        path = [os.fspath(p) for p in sys.path if isinstance(p, (str, os.PathLike))]  # Path entries too, as text
        code = f"import sys; sys.path[:] = {path!r}; from reportgen.site.worker import serve; serve({expected!r})"
        try:
            self._proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        except OSError:  # no interpreter to start (an embedded Python): all made here
            self._proc = None
            return
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._threads = [threading.Thread(target=self._feed, args=(self._proc.stdin,), name="reportgen-layer-files-in", daemon=True),
                         threading.Thread(target=self._read, args=(self._proc.stdout,), name="reportgen-layer-files-out", daemon=True)]
        for thread in self._threads:
            thread.start()

    def _feed(self, stream) -> None:
        try:
            while (job := self._jobs.get()) is not None:
                key, kwargs = job
                try:
                    message = (key, _portable(kwargs))
                except Exception:  # not sent: made in finish(), where an error surfaces
                    continue
                _send(stream, message)
            _send(stream, None)
            stream.close()
        except (OSError, ValueError):
            pass  # it exited: what did not come back is made in finish()

    def _read(self, stream) -> None:
        try:
            while (result := _receive(stream)) is not None:
                key, content = result
                if content is not None:
                    with self._lock:
                        self._pending.pop(key, None)
                        self._ready.append((key, content))
        except Exception:  # a broken stream: what did not come back is made in finish()
            self._broken = True

    def submit(self, key: str, **kwargs) -> None:
        if self._proc is not None:
            with self._lock:
                self._pending[key] = kwargs
            self._jobs.put((key, kwargs))
            return
        content = layer_file(**kwargs)
        with self._lock:
            self._ready.append((key, content))

    def ready(self) -> list[tuple[str, bytes]]:
        """The files finished since the last call."""
        with self._lock:
            out, self._ready = self._ready, []
        return out

    def finish(self) -> list[tuple[str, bytes]]:
        """Every file not taken yet: waits for the second process to end, then makes here whatever it did not deliver."""
        if self._proc is not None:
            self._jobs.put(None)
            self._threads[1].join()  # the reader: to the end of what it sends
            try:
                if not self._broken:
                    self._proc.wait(timeout=10)  # it exits after the last job
            except subprocess.TimeoutExpired:
                pass  # stopped by close()
            self.close()
        with self._lock:
            left, self._pending = self._pending, {}
        made = [(key, layer_file(**kwargs)) for key, kwargs in left.items()]
        return self.ready() + made

    def close(self) -> None:
        """Stop the second process (also on an error or Ctrl-C in the middle of the site)."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.kill()  # in the middle (an error, Ctrl-C): its pipes close, and both threads end
        self._jobs.put(None)
        for thread in self._threads:
            thread.join()
        proc.wait()
        for stream in (proc.stdin, proc.stdout):
            try:
                stream.close()
            except OSError:
                pass
