"""One run at a time per output directory or judge cache: an exclusive lock held for the whole job.

    with RunLock(Path(output) / LOCK_NAME, f"output {output}"):
        ...  # a second run on the same path exits 2: "output X is in use by another actprm run (pid N ...)"

The lock is a small file holding the holder's pid and host, locked with `fcntl.flock`
(exclusive, non-blocking). The kernel drops a flock when its process dies, however it dies, so a
lock file left by a killed run is stale by construction: the next run takes it over and writes its
own pid. On a filesystem without flock (some network mounts) the pid is checked instead: a lock
whose pid is alive on this host refuses, any other is taken over.

Within one process the lock is re-entrant (a count per path): a job that holds its cache may
open it again (the Ray recipe's driver merges segments into the cache it holds). The file is
removed on release; an acquirer that locked a file just removed by its holder notices (the path
no longer names the inode it locked) and tries again, so two runs never both hold a path.
"""

from __future__ import annotations

import errno
import os
import socket
import threading
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from actprm.errors import UserError

try:
    import fcntl
except ImportError:  # not POSIX: the pid check alone
    fcntl = None  # type: ignore[assignment]

LOCK_NAME = ".actprm.lock"  # an output directory's lock file

_HELD: dict[str, list[Any]] = {}  # resolved path -> [fd, count] of the locks this process holds
_GUARD = threading.Lock()


class LockHeld(UserError):
    """Another live run holds the lock (exit 2); `pid` is the holder's (None if unreadable)."""

    def __init__(self, message: str, pid: int | None):
        super().__init__(message)
        self.pid = pid


def lock_path_for_cache(cache: str | os.PathLike) -> Path:
    """The lock file of a judge cache: `<cache>.lock` beside the file the path resolves to (a cache reached
    through a symbolic link is the same cache)."""
    return Path(f"{os.path.realpath(cache)}.lock")


def _holder(path: Path) -> tuple[int | None, str]:
    """(pid, host) written in a lock file; (None, "") when it cannot be read."""
    try:
        words = path.read_text(errors="replace").split()
    except OSError:
        return None, ""
    pid = int(words[0]) if words and words[0].isdigit() else None
    return pid, words[1] if len(words) > 1 else ""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


class RunLock:
    """An exclusive, re-entrant-per-process lock on `path` (a lock file); `what` names it in the error."""

    def __init__(self, path: str | os.PathLike, what: str):
        self.path = Path(path)
        self.what = what
        self._key = str(self.path.resolve())

    def _refuse(self) -> None:
        pid, host = _holder(self.path)
        who = f"pid {pid}" if pid is not None else "an unknown pid"
        if host and host != socket.gethostname():
            who += f" on {host}"
        raise LockHeld(f"{self.what} is in use by another actprm run ({who}); wait for it to finish or stop it",
                       pid)

    def acquire(self) -> RunLock:
        with _GUARD:
            held = _HELD.get(self._key)
            if held is not None:
                held[1] += 1
                return self
            while True:
                try:
                    self.path.parent.mkdir(parents=True, exist_ok=True)
                    fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
                except OSError as exc:  # a read-only or virtual filesystem: one line, as for the output itself
                    reason = exc.strerror or type(exc).__name__
                    raise UserError(f"{self.what}: cannot be written there ({reason}: {self.path})") from None
                try:
                    if not self._lock(fd):
                        self._refuse()
                    try:  # the holder may have removed the file between our open and our lock
                        same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
                    except FileNotFoundError:
                        same = False
                except BaseException:
                    os.close(fd)
                    raise
                if same:
                    break
                os.close(fd)
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
            _HELD[self._key] = [fd, 1]
            return self

    def _lock(self, fd: int) -> bool:
        """True: locked (a dead holder's lock is free); False: a live holder has it."""
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                return False
            except OSError as exc:
                if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                    raise
        pid, host = _holder(self.path)  # no flock here: trust a live pid on this host
        return not (pid is not None and pid != os.getpid() and host in ("", socket.gethostname()) and _alive(pid))

    def release(self) -> None:
        with _GUARD:
            held = _HELD.get(self._key)
            if held is None:
                return
            held[1] -= 1
            if held[1] > 0:
                return
            del _HELD[self._key]
            try:
                self.path.unlink(missing_ok=True)  # while still locked: see the module docstring
            finally:
                os.close(held[0])

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


class FileLock:
    """An exclusive flock on a file itself (its inode), re-entrant per process: a judge cache reached under
    two names (a hard link) is still one cache. Held beside the cache's RunLock, which names the holder."""

    _held: dict[tuple[int, int], list[Any]] = {}  # (st_dev, st_ino) -> [fd, count]

    def __init__(self, path: str | os.PathLike, what: str):
        self.path, self.what = Path(path), what
        self._key: tuple[int, int] | None = None

    def acquire(self) -> FileLock:
        fd = os.open(self.path, os.O_RDONLY)
        st = os.fstat(fd)
        key = (st.st_dev, st.st_ino)
        with _GUARD:
            held = FileLock._held.get(key)
            if held is not None:
                os.close(fd)
                held[1] += 1
                self._key = key
                return self
            if fcntl is not None:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    os.close(fd)
                    raise LockHeld(f"{self.what} is in use by another actprm run (the same file under another "
                                   "name); wait for it to finish or stop it", None) from None
                except OSError as exc:  # no flock on this filesystem: the RunLock's pid check alone
                    if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                        os.close(fd)
                        raise
            FileLock._held[key] = [fd, 1]
            self._key = key
            return self

    def release(self) -> None:
        with _GUARD:
            held = FileLock._held.get(self._key) if self._key else None
            if held is None:
                return
            held[1] -= 1
            if held[1] == 0:
                del FileLock._held[self._key]
                os.close(held[0])
            self._key = None


#: bytes of a file name (the usual NAME_MAX); an output's name leaves room for what actprm adds to it
#: (`.NAME.staging-<host>-<pid>-<8 hex>`, `.NAME.actprm.lock`)
NAME_MAX = 255
NAME_EXTRA = 64


def check_name_length(path: Path) -> None:
    """A user error if a part of `path` is longer than a file name may be (or leaves no room for the
    staging and lock names made beside the last part)."""
    parts = path.parts
    for i, part in enumerate(parts):
        limit = NAME_MAX - NAME_EXTRA if i == len(parts) - 1 else NAME_MAX
        size = len(os.fsencode(part))
        if size > limit:
            shown = part if len(part) <= 40 else part[:37] + "..."
            raise UserError(f"output {shown!r}: a name of {size} bytes; at most {limit} here "
                            f"(a file name has at most {NAME_MAX}, and actprm adds up to {NAME_EXTRA} to an output's)")


def lock_path_for_output(directory: str | os.PathLike) -> Path:
    """The lock file of an output directory: `.<name>.actprm.lock` beside the directory its path resolves to
    (beside, not inside: a job that replaces the directory whole keeps its lock; a link to it is the same
    output)."""
    real = Path(os.path.realpath(directory))
    return real.parent / f".{real.name}{LOCK_NAME}"


def output_lock(directory: str | os.PathLike) -> RunLock:
    """The lock of an output directory (lock_path_for_output), taken by every verb that writes one."""
    check_name_length(Path(directory))
    return RunLock(lock_path_for_output(directory), f"output {directory}")


def cache_lock(cache: str | os.PathLike) -> RunLock:
    """The lock of a judge answer cache: `<cache>.lock`."""
    return RunLock(lock_path_for_cache(cache), f"judge cache {cache}")


def job_locks(output: str | os.PathLike, cache: str | os.PathLike | None = None) -> ExitStack:
    """The locks of a job that writes `output` (and pays into the judge cache `cache`): enter to hold both."""
    stack = ExitStack()
    try:
        if cache is not None:
            stack.enter_context(cache_lock(cache))
        stack.enter_context(output_lock(output))
    except BaseException:
        stack.close()
        raise
    return stack
