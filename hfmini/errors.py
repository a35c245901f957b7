"""The one exception type that reaches users as a single line instead of a traceback."""


class HfminiError(Exception):
    """A mistake the user can fix: the message says what went wrong and what to do.

    Entry points (`hfmini ...`, `recipes/train.py`) print it as `error: <message>` and exit 2.
    """
