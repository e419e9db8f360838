"""The one exception type that means "the user's input is wrong": the CLI turns it into `error: ...`, exit 2;
and the interruption flag the command line's signal handlers set."""

import contextlib


class UserError(Exception):
    """A problem with the user's model, data, options or output folder, with a message that says what to do."""


def model_fails(model: str, exc: Exception) -> UserError:
    """The model raised when run on an image (the chosen images, or the pass's first step): one line."""
    message = " ".join(str(exc).split())[:300] or type(exc).__name__
    return UserError(f"{model}: the model fails when run on an image: {message}")


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
