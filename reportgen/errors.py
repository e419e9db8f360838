"""The one exception type that means "the user's input is wrong": the CLI turns it into `error: ...`, exit 2."""


class UserError(Exception):
    """A problem with the user's model, data, options or output folder, with a message that says what to do."""
