"""Errors that are the user's to fix (a missing file, a bad flag, a corrupt shard).

The CLI prints them as one line and exits with code 2; everything else is a bug
and keeps its traceback.
"""

import errno


class UserError(Exception):
    """A mistake in the input or the flags: one clear line, exit code 2."""

    exit_code = 2


def disk_full(exc: BaseException) -> str | None:
    """What ran out, if `exc` is a full disk or quota (OSError ENOSPC/EDQUOT, SQLite's "database or disk is
    full", Arrow's "No space left on device"), else None."""
    text = str(exc)
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"no space left on the device{f' ({exc.filename})' if exc.filename else ''}"
    if "database or disk is full" in text or "No space left on device" in text or "Disk quota exceeded" in text:
        return "no space left on the device"
    return None
