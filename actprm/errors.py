"""Errors that are the user's to fix (a missing file, a bad flag, a corrupt shard).

The CLI prints them as one line and exits with code 2; everything else is a bug
and keeps its traceback.
"""


class UserError(Exception):
    """A mistake in the input or the flags: one clear line, exit code 2."""

    exit_code = 2
