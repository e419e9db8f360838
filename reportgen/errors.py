"""The one exception type that means "the user's input is wrong": the CLI turns it into `error: ...`, exit 2;
and the interruption flag the command line's signal handlers set."""


class UserError(Exception):
    """A problem with the user's model, data, options or output folder, with a message that says what to do."""


class Interruption:
    """Set by the command line's Ctrl-C / `kill` handlers, which also raise KeyboardInterrupt. Python
    swallows an exception raised while a finalizer (`__del__`) runs ("Exception ignored in ..."),
    and TensorFlow runs many of them: long loops and the final swap check this flag too, so an
    interrupted build never completes. Never set by the library on its own."""

    requested = False


def check_interruption() -> None:
    if Interruption.requested:
        raise KeyboardInterrupt
