"""One exception type for bad input, so the CLI can print one clear line instead of a traceback."""


class SegleakError(Exception):
    """A problem with the user's input or environment; the message names the file or value at fault."""
