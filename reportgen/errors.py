"""The one exception type that means "the user's input is wrong": the CLI turns it into `error: ...`, exit 2;
and the interruption flag the command line's signal handlers set."""

import contextlib
import re


class UserError(Exception):
    """A problem with the user's model, data, options or output folder, with a message that says what to do."""


def model_fails(model: str, exc: Exception) -> UserError:
    """The model raised when run on an image (the chosen images, or the pass's first step): one line."""
    return UserError(f"{model}: the model fails when run on an image: {tensorflow_reason(exc)}")


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_BOLD = re.compile(r"\x1b\[1m(.*?)\x1b\[0m", re.S)
_FRAME = re.compile(r'^(\s*)File ".*", line \d+, in ')
_NOISE = re.compile(r"\{\{function_node [^}]*\}\}|\[\[\{\{node [^}]*\}\}\]\]|\[Op:[^\]]*\]( name: )?")
_NODE = re.compile(r"\{\{node ([^}]+)\}\}|Detected at node (\S+)")


def tensorflow_reason(exc: Exception, limit: int = 300) -> str:
    """TensorFlow's reason for a failed op, on one line: its message without the Python stack it puts
    first (a graph error starts with where each op was defined, which hid the reason past any cut), and
    the op it failed in, without the prefix of the model reportgen wraps around the user's."""
    text = str(exc)
    node = next((a or b for a, b in _NODE.findall(text)), "")
    emphasised = _BOLD.findall(text)  # Keras's wrapper of a layer's error sets the cause in bold
    text = _ANSI.sub("", emphasised[-1] if emphasised else text)
    kept, frame_indent = [], None
    for line in text.splitlines():
        frame = _FRAME.match(line)
        if frame:
            frame_indent = len(frame.group(1))
            continue
        if frame_indent is not None and line.strip() and len(line) - len(line.lstrip()) > frame_indent:
            continue  # the source line printed under a stack frame
        frame_indent = None
        if line.strip() in ("Graph execution error:", "in user code:") or line.startswith("Detected at node "):
            continue
        kept.append(line)
    reason = " ".join(_NOISE.sub(" ", "\n".join(kept)).split()) or type(exc).__name__
    if node and node not in reason:
        op = node.split("/", 1)[1] if node.startswith("reportgen_tap") and "/" in node else node
        reason = f"{reason} (in TensorFlow op {op})"
    return reason if len(reason) <= limit else reason[: limit - 3] + "..."


class Interruption:
    """Set by the command line's Ctrl-C / `kill` handlers, which also raise KeyboardInterrupt, except
    between_steps. Python swallows an exception raised while a finalizer (`__del__`) runs ("Exception
    ignored in ..."), and TensorFlow runs many of them: long loops and the final swap check this flag
    too, so an interrupted build never completes. Never set by the library on its own."""

    requested = False
    deferred = 0  # > 0 within between_steps(): the handlers only set `requested`


def check_interruption() -> None:
    if Interruption.requested:
        raise KeyboardInterrupt


@contextlib.contextmanager
def between_steps():
    """Within, an interruption waits for the next check_interruption() (the loops over batches
    check before each step). An exception raised from a signal handler lands wherever Python is
    at that moment, which in a loop of TensorFlow calls is mostly inside TensorFlow's own Python
    and C callbacks: seen as a SystemError ("returned a result with an exception set") and as a
    crash of the whole process instead of a clean exit."""
    Interruption.deferred += 1
    try:
        yield
    finally:
        Interruption.deferred -= 1
    check_interruption()
