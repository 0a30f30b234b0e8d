"""Provenance: what made a table, recorded in every Parquet file actprm writes.

Each file's schema metadata has one key, `actprm`, holding JSON:

    actprm_version   the package version
    git_commit       HEAD of the checkout the package runs from (null when not a git checkout)
    job              the verb / recipe (score, filter, annotate, ...)
    config_sha256    SHA-256 of the resolved config (canonical JSON of every setting, as run)
    model            the PRM directory the job read (null for jobs without a model)
    model_sha256     SHA-256 over the model's *.safetensors files (sorted by name; cached per path)
    judge            who labels (the judge model name, or the verifier with its settings; null if none)
    dtype            the backbone's float type the job resolved to (float32 / bfloat16; jobs with a `dtype` setting)

`actprm.io.writers.write_parquet_atomic`, the project's one Parquet writer, adds it to every
file. A job declares itself once (`with provenance.job("score", cfg): ...`, which the CLI does
for every verb); code outside a job still records the version and the commit. Ray tasks that
write files get the driver's record (`current()`) and install it with `use(record)`.
`actprm inspect PATH` prints it.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from actprm import __version__
from actprm.config import judge_settings
from actprm.errors import UserError
from actprm.io.readers import deeper_than
from actprm.shipped import SHIPPED_BACKBONE, default_prm_path

METADATA_KEY = b"actprm"
_PACKAGE_DIR = Path(__file__).resolve().parent
_current: dict[str, Any] = {}


@functools.cache
def git_commit() -> str | None:
    """HEAD of the git checkout the package runs from, with `+dirty` when tracked files changed; None if none."""
    try:
        head = subprocess.run(["git", "-C", str(_PACKAGE_DIR), "rev-parse", "HEAD"], capture_output=True,
                              text=True, timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(_PACKAGE_DIR), "diff", "--quiet", "HEAD", "--"],
                               capture_output=True, timeout=10).returncode == 1
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{head}+dirty" if head and dirty else head or None


def config_sha256(cfg: Any) -> str:
    """SHA-256 of a config's settings (a pydantic model or a mapping) as canonical JSON."""
    data = cfg.model_dump(mode="json") if hasattr(cfg, "model_dump") else dict(cfg)
    return hashlib.sha256(json.dumps(data, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


_model_hashes: dict[tuple, str | None] = {}


def model_sha256(path: str | os.PathLike) -> str | None:
    """SHA-256 over a model directory's *.safetensors files (names and bytes, sorted by name); None if none.

    Cached per (path, file sizes and modification times), so a job hashes a model once.
    """
    directory = Path(path)
    files = sorted(directory.glob("*.safetensors")) if directory.is_dir() else []
    if not files:
        return None
    try:
        key = (str(directory.resolve()), tuple((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files))
        if key not in _model_hashes:
            digest = hashlib.sha256()
            for f in files:
                digest.update(f.name.encode() + b"\0")
                with open(f, "rb") as fh:
                    for block in iter(lambda: fh.read(1 << 20), b""):
                        digest.update(block)
            _model_hashes[key] = digest.hexdigest()
    except OSError:  # a dangling link, an unreadable file: no hash; loading the model says what is wrong
        return None
    return _model_hashes[key]


def judge_name(cfg: Any) -> str | None:
    """Who labels under a judge config (JudgeConfig fields), as the annotations' `judge` column names it."""
    backend = getattr(cfg, "backend", None)
    if backend == "openai":
        return getattr(cfg, "judge_model", None)
    if backend == "rollout":  # the prover and what sets its labels
        model = cfg.prover_model or (SHIPPED_BACKBONE if cfg.prover == "local" else None)
        return (f"rollout(prover={model},k={int(cfg.rollouts)},threshold={float(cfg.rollout_threshold):g},"
                f"labels={cfg.rollout_labels},temperature={cfg.temperature})")
    if backend == "verifier":
        return (f"verifier(wrong_rate={cfg.wrong_rate:g},refusal_rate={cfg.refusal_rate:g},"
                f"seed={cfg.seed})")
    return backend


def describe(job_name: str, cfg: Any) -> dict[str, Any]:
    """The record of one job: its name, the config's hash, the model it reads and the judge."""
    record: dict[str, Any] = {"job": job_name, "config_sha256": config_sha256(cfg) if cfg is not None else None,
                              "model": None, "model_sha256": None, "judge": None}
    fields = getattr(type(cfg), "model_fields", {})
    if "model" in fields:
        model = getattr(cfg, "model", None) or str(default_prm_path())
        record["model"], record["model_sha256"] = str(model), model_sha256(model)
    if "dtype" in fields:  # the backbone's float type as resolved on this machine (actprm.precision)
        record["dtype"] = resolved_dtype(cfg)
    judge = None
    if "backend" in fields:  # annotate, judge-check: the config is the judge's
        judge = cfg
    elif "judge" in fields:  # loop, demo: a judge block or a judge YAML
        try:
            judge = judge_settings(cfg.judge)
        except Exception:  # noqa: BLE001 - a bad judge YAML is the job's error to report, not ours
            judge = None
    if judge is not None:
        record["judge"] = judge_name(judge)
    return record


def resolved_dtype(cfg: Any) -> str:
    """float32 / bfloat16: what a config's `dtype` (and `device`) resolve to here. Imports torch here only:
    filter's read tasks import this module and stay torch-free."""
    import torch

    from actprm.precision import dtype_name, resolve_dtype, training_dtype

    device = getattr(cfg, "device", "auto")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if "bf16" in type(cfg).model_fields:  # a training config
        return dtype_name(training_dtype(cfg, device))
    return dtype_name(resolve_dtype(cfg.dtype, device))


def base() -> dict[str, Any]:
    return {"actprm_version": __version__, "git_commit": git_commit()}


def current() -> dict[str, Any]:
    """The record files written now get: the version and commit, and the running job's fields."""
    return {**base(), **_current}


def use(record: dict[str, Any]) -> None:
    """Install a job's record in this process (e.g. in a Ray task, from the driver's `current()`)."""
    _current.clear()
    _current.update({k: v for k, v in record.items() if k not in ("actprm_version", "git_commit")})


@contextmanager
def job(job_name: str, cfg: Any) -> Iterator[dict[str, Any]]:
    """Files written inside the block record this job (`describe(job_name, cfg)`)."""
    saved = dict(_current)
    use(describe(job_name, cfg))
    try:
        yield current()
    finally:
        _current.clear()
        _current.update(saved)


def metadata() -> dict[bytes, bytes]:
    """The Parquet schema metadata entry for a file written now."""
    return {METADATA_KEY: json.dumps(current(), sort_keys=True).encode()}


#: A provenance record is a flat JSON object of a few hundred bytes; anything far off is not one.
MAX_RECORD_BYTES = 1 << 20
MAX_RECORD_DEPTH = 8


def parse_record(raw: bytes | None, where: str | os.PathLike) -> dict[str, Any] | None:
    """The `actprm` metadata value of a file as a record; None if absent; a UserError if it is not a JSON
    object (not JSON, a list, too large or nested too deep: checked before it is parsed)."""
    if not raw:
        return None
    problem = None
    if len(raw) > MAX_RECORD_BYTES:
        problem = f"{len(raw)} bytes, over {MAX_RECORD_BYTES}"
    elif deeper_than(raw, MAX_RECORD_DEPTH):
        problem = f"nested deeper than {MAX_RECORD_DEPTH} levels"
    else:
        try:
            record = json.loads(raw.decode("utf-8"))
        except (ValueError, RecursionError) as exc:
            problem = f"not JSON: {' '.join(str(exc).split())[:120]}"
        else:
            if isinstance(record, dict):
                return record
            problem = f"a JSON {type(record).__name__}, not an object"
    raise UserError(f"{where}: its 'actprm' metadata is not a provenance record ({problem})")


def read(path: str | os.PathLike) -> dict[str, Any] | None:
    """The provenance record of one Parquet file; None if it has none (not written by actprm)."""
    meta = pq.read_schema(path).metadata or {}
    return parse_record(meta.get(METADATA_KEY), path)


# ------------------------------------------------------------------ actprm inspect


def parquet_files(path: str | os.PathLike) -> list[Path]:
    """A Parquet file, or the Parquet files under a directory (recursive; hidden and staging names skipped)."""
    p = Path(path)
    if p.is_file():
        return [p]
    if not p.is_dir():
        raise UserError(f"{p}: no such file or directory")
    files = sorted(f for f in p.rglob("*.parquet")
                   if not any(part.startswith(".") for part in f.relative_to(p).parts))
    if not files:
        raise UserError(f"{p}: holds no Parquet files")
    return files


def inspect(path: str | os.PathLike) -> dict[str, Any]:
    """What `actprm inspect` shows: files, rows, schema, and each distinct provenance record with its file count."""
    files = parquet_files(path)
    rows, records, schemas = 0, [], []
    for f in files:
        try:
            meta = pq.ParquetFile(f)
        except Exception as exc:  # noqa: BLE001 - any footer problem is the user's file
            raise UserError(f"{f}: not a readable Parquet file ({' '.join(str(exc).split())[:200]})") from None
        rows += meta.metadata.num_rows
        schema = meta.schema_arrow
        record = parse_record((schema.metadata or {}).get(METADATA_KEY), f)
        for entry in records:
            if entry["record"] == record:
                entry["files"] += 1
                break
        else:
            records.append({"record": record, "files": 1})
        plain = schema.remove_metadata()
        if not any(plain.equals(s) for s in schemas):
            schemas.append(plain)
    return {"path": str(path), "files": len(files), "rows": rows, "provenance": records,
            "schema": [{"name": f.name, "type": str(f.type), "nullable": f.nullable} for f in schemas[0]],
            "schemas_differ": len(schemas) > 1}


def format_inspection(info: dict[str, Any]) -> str:
    lines = [f"{info['path']}: {info['files']} file{'s' * (info['files'] != 1)}, {info['rows']} rows"]
    for entry in info["provenance"]:
        n = entry["files"]
        lines.append(f"provenance ({n} file{'s' * (n != 1)}):")
        if entry["record"] is None:
            lines.append("  none (not written by actprm)")
            continue
        lines += [f"  {k}: {v}" for k, v in sorted(entry["record"].items())]
    lines.append("schema:" + ("  (files differ; the first file's)" if info["schemas_differ"] else ""))
    lines += [f"  {c['name']}: {c['type']}{'' if c['nullable'] else ' not null'}" for c in info["schema"]]
    return "\n".join(lines)
