"""The judge's answer cache: every paid answer, stored the moment it arrives.

One SQLite file (default `OUTPUT/judge_cache.sqlite`, or `--cache PATH` to share it across runs)
in WAL mode with `synchronous=NORMAL`: a write is durable against a killed process (the WAL is
in the OS's hands once the transaction commits; only a power loss can drop the last ones), and
readers never block the writer. Safe for one machine; not on a network filesystem.

Many writers (the Ray recipe, pipelines/annotate.py): each actor writes only its own segment,
`<cache>.segments/<name>.sqlite` (one writer per file), and reads the main cache read-only
(`read_only=True`: no locks, no WAL, so safe on a shared filesystem while nobody writes it);
`LayeredCache` is that pair. The driver merges the segments into the main cache by key
(`merge_segments`: INSERT OR IGNORE, then the segment is removed) before the actors start (what
a killed run left) and after they stop, so no paid answer is lost and none is paid twice.

The key (`answer_key`) is a SHA-256 of everything that decides the answer's distribution: the
problem, the steps, the judge model, the prompt version, the sampling parameters, and the
sample index. Row ids are not in the key (the same trajectory under another id is not paid
twice) but are kept beside the answer for audits. The API key and the endpoint URL are never
stored, and answers are redacted before they are (actprm.judge.redact: a judge may echo the key).

One run at a time: opening a cache for writing takes its lock (`<cache>.lock`, actprm.io.lock),
held until `close()`; a second run on the same cache exits 2 naming the holder's pid, and a
killed run's lock is taken over. Read-only opens and the Ray actors' segments do not lock.

Every answer the server returned is cached, whether it parses or not: parsing happens again on
every read, so a better parser relabels old answers without paying for them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sqlite3
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from actprm.errors import UserError
from actprm.io.lock import FileLock, cache_lock

SCHEMA = """
CREATE TABLE IF NOT EXISTS answers (
    key TEXT PRIMARY KEY,
    row_id TEXT,
    sample INTEGER NOT NULL,
    model TEXT NOT NULL,
    prompt_version TEXT NOT NULL,
    content TEXT,
    reasoning TEXT,
    finish_reason TEXT,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    cost_usd REAL NOT NULL,
    created REAL NOT NULL
)
"""


def answer_key(problem: str, steps: Sequence[str], model: str, prompt_version: str,
               sampling: Mapping[str, Any], sample: int) -> str:
    """The cache key of sample `sample` of one trajectory under one judge setting."""
    payload = json.dumps([problem, list(steps), model, prompt_version, dict(sorted(sampling.items())), int(sample)],
                         ensure_ascii=False, separators=(",", ":"), default=str)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def is_write_failure(exc: sqlite3.DatabaseError) -> bool:
    """SQLite's errors for a file it cannot write (read-only, no room, no directory to make its journal in)."""
    text = str(exc).lower()
    return any(m in text for m in ("readonly", "read-only", "disk is full", "unable to open", "disk i/o"))


@dataclass(frozen=True)
class Answer:
    """One completion choice as the server returned it, with what it cost."""

    content: str | None
    reasoning: str | None
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float


def segments_dir(path: str | os.PathLike) -> Path:
    """Where the writers of the cache at `path` keep their segments: `judge_cache.segments/`."""
    return Path(path).with_suffix(".segments")


class AnswerCache:
    """Key -> Answer, persisted in SQLite (WAL). Use one instance per process.

    `read_only`: open an existing cache as an immutable file (no locks, no shared memory, the
    WAL ignored: checkpoint it first, see `checkpoint`); nothing may write it meanwhile.
    `lock`: take the cache's run lock while open (see the module docstring; off for a segment,
    which has one writer by construction).
    """

    def __init__(self, path: str | os.PathLike, read_only: bool = False, lock: bool = True):
        self.path = Path(path)
        self._lock = None
        self._file_lock = None
        if read_only:
            uri = self.path.resolve().as_uri() + "?mode=ro&immutable=1"
            self._db = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:  # a read-only or virtual filesystem
            raise UserError(f"judge cache {self.path}: cannot be written there "
                            f"({exc.strerror or type(exc).__name__}: {self.path.parent})") from None
        if lock:
            self._lock = cache_lock(self.path).acquire()
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA busy_timeout=30000")
            self._db.execute(SCHEMA)
            # a cache that opens but cannot be written (a read-only file) would fail after the first answer is paid
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute("INSERT OR REPLACE INTO answers VALUES ('', NULL, 0, '', '', NULL, NULL, NULL, 0, 0, 0, 0)")
            self._db.execute("ROLLBACK")
            if lock:  # the file now exists: lock its inode too (the same cache under a hard link)
                self._file_lock = FileLock(self.path, f"judge cache {self.path}").acquire()
        except sqlite3.DatabaseError as exc:
            self.close()
            if is_write_failure(exc):
                raise UserError(f"judge cache {self.path}: cannot be written ({exc}); choose another --cache") from None
            raise UserError(f"{self.path}: not a judge answer cache ({exc}); choose another --cache") from None
        except BaseException:
            self.close()
            raise

    def get_many(self, keys: Iterable[str]) -> dict[str, Answer]:
        keys = list(keys)
        found: dict[str, Answer] = {}
        for start in range(0, len(keys), 500):
            chunk = keys[start:start + 500]
            marks = ",".join("?" * len(chunk))
            for key, *fields in self._db.execute(
                    "SELECT key, content, reasoning, finish_reason, prompt_tokens, completion_tokens, cost_usd "
                    f"FROM answers WHERE key IN ({marks})", chunk):
                found[key] = Answer(*fields)
        return found

    def put(self, key: str, answer: Answer, *, row_id: str | None, sample: int, model: str,
            prompt_version: str) -> None:
        """Store one answer now (its own committed transaction). A key stored before is kept."""
        self._db.execute(
            "INSERT OR IGNORE INTO answers VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (key, row_id, int(sample), model, prompt_version, answer.content, answer.reasoning,
             answer.finish_reason, int(answer.prompt_tokens), int(answer.completion_tokens),
             float(answer.cost_usd), time.time()))

    def __len__(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM answers").fetchone()[0])

    def merge_segments(self, directory: str | os.PathLike) -> int:
        """Move every answer of the segments in `directory` into this cache (a key stored
        before is kept), remove the segments, and return how many answers were new."""
        directory = Path(directory)
        merged = 0
        for segment in sorted(directory.glob("*.sqlite")) if directory.is_dir() else []:
            self._db.execute("ATTACH DATABASE ? AS segment", (str(segment),))
            try:
                if self._db.execute("SELECT 1 FROM segment.sqlite_master WHERE name = 'answers'").fetchone():
                    before = self._db.total_changes
                    self._db.execute("INSERT OR IGNORE INTO answers SELECT * FROM segment.answers")
                    merged += self._db.total_changes - before
            finally:
                self._db.execute("DETACH DATABASE segment")
            for suffix in ("", "-wal", "-shm"):
                Path(f"{segment}{suffix}").unlink(missing_ok=True)
        if directory.is_dir() and not any(directory.iterdir()):
            directory.rmdir()
        return merged

    def checkpoint(self) -> None:
        """Write the WAL into the main file (what a `read_only` reader sees)."""
        self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def close(self) -> None:
        db = getattr(self, "_db", None)
        if db is not None:
            db.close()
        self._release_locks()

    def _release_locks(self) -> None:
        for name in ("_file_lock", "_lock"):
            held = getattr(self, name, None)
            if held is not None:
                held.release()
                setattr(self, name, None)

    def __del__(self) -> None:  # a cache dropped without close() gives its locks back
        with contextlib.suppress(Exception):  # at interpreter shutdown, modules may be gone
            self._release_locks()


class LayeredCache:
    """One writer's view of a shared cache: reads `base` (the main cache), then `segment`; writes `segment`."""

    def __init__(self, segment: AnswerCache, base: AnswerCache | None = None):
        self.segment, self.base = segment, base

    def get_many(self, keys: Iterable[str]) -> dict[str, Answer]:
        keys = list(keys)
        found = self.base.get_many(keys) if self.base is not None else {}
        found.update(self.segment.get_many(k for k in keys if k not in found))
        return found

    def put(self, key: str, answer: Answer, **where: Any) -> None:
        self.segment.put(key, answer, **where)

    def close(self) -> None:
        self.segment.close()
        if self.base is not None:
            self.base.close()
