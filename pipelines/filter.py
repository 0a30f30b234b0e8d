"""`actprm filter`: score a corpus on Ray — validate, score every step in a PRM actor pool, select the uncertain.

    actprm filter --input corpus/ --output out/filtered [--model DIR] [--address ADDR]
    ray job submit --working-dir . -- python -m pipelines.filter --input ... --output ...

Writes the tables `actprm score` writes, streamed with flat memory:

    DIR/scored/     every scored row (scored schema), shards named file-NNNNN-*.parquet by input file
    DIR/selected/   the rows the ActPRM rule selects (scored schema)
    DIR/errors/     invalid rows, duplicate ids, unreadable files, rows too long to score (errors schema)
    DIR/summary.json
    DIR/_progress/  one marker per finished input file: what makes a rerun resume

1. pre-flight every file on the driver: a file that cannot be opened (missing footer, unknown
   format) becomes one error row and is skipped; the job goes on;
2. phase 1, one Ray task per file: each row's id (valid rows) and the rows read; a file that
   fails part-way is handled like step 1;
3. the corpus-wide duplicate rule on the driver: the first occurrence by (file, row) wins;
4. phase 2, Ray Data, over the files without a marker: read + validate (tasks) → score (an actor
   pool: `map_batches` with a callable class, `ActorPoolStrategy`, one GPU per actor when there are
   GPUs, else by default one actor per CPU with one torch thread, their CPU reservations summing to 90% of
   CPUs − 1 so a CPU stays for reads; ~4 MiB blocks, so every actor has work) → the driver writes each
   file's rows;
   when every row of a file is written (each input row gives exactly one scored or error row),
   its marker is written by atomic rename;
5. summary.json from the markers; one summary line.

Resume: rerunning with the same --output skips the files that have a marker, deletes the shards of
the others (a killed run's partial output) and scores them again: no row lost, none twice, no
finished file rescored. Ray does not keep row order; `id` is the key.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import ray
import torch

from actprm import hygiene
from actprm.calibration import rule_constants
from actprm.checkpoint import DEFAULT_MODEL_NAME, load_for_scoring, load_scoring_model
from actprm.config import FilterConfig
from actprm.errors import UserError
from actprm.io.filesystems import file_size
from actprm.io.lock import output_lock
from actprm.io.readers import (
    SourceFile,
    check_not_empty,
    inspect_file,
    list_files,
    plan_duplicates,
    require_input_output,
)
from actprm.io.writers import (
    ShardWriter,
    check_output_dir,
    check_output_path,
    make_dirs,
    refuse_link,
    remove_output,
    write_parquet_atomic,
    write_text_atomic,
)
from actprm.progress import JobResult
from actprm.sample import BottomK
from actprm.schemas import arrow_schema, error_row, row_json, table_from_rows
from actprm.scoring import score_trajectories
from actprm.selection import (
    calibrate,
    calibration_of,
    calibration_text,
    join_scores,
    model_calibration,
)
from pipelines.filter_reads import TRANSPORT, read_ids, read_rows, read_task_cpus
from pipelines.ray_session import check_object_store, init_ray

TABLES = {"scored": "scored", "selected": "scored", "errors": "errors"}  # output dir -> schema
HYGIENE_KINDS = ("duplicate content", "near-duplicate problem", "contaminated")
PROGRESS = "_progress"
ACTOR_SHARE = 0.9  # of the CPUs left after one for reads: what the default actors reserve (a margin, default_actors)
# Ray Data's blocks between the stages (its default, 128 MiB, makes a whole 50k-row input file one block):
# ~2-3k world rows, so that every actor gets work until the last rows. Once the last blocks are queued
# inside the pool, Ray Data (2.60) releases the actors not busy yet (starting or idle): with a file per
# block, one actor scored a 100k-row corpus alone (BENCHMARKS.md, "Corpus scale").
BLOCK_BYTES = 4 * 2**20


class PRMScorer:
    """Ray Data actor: the PRM (ensemble, or implicit with --scorer implicit), loaded once per actor, scoring
    TRANSPORT batches."""

    def __init__(self, cfg: FilterConfig):
        if cfg.device != "cuda" and not cfg.threads:
            torch.set_num_threads(max(1, int(cfg.cpus_per_actor)))
        self.cfg = cfg
        self.device, self.model, self.tokenizer, self.model_name, self.batch_tokens = load_for_scoring(cfg)
        self.trajectory_columns = [f.name for f in arrow_schema("trajectories")]

    def __call__(self, table: pa.Table) -> pa.Table:
        rows = table.to_pylist()
        todo = [r for r in rows if r["_error"] is None]
        results = score_trajectories(self.model, self.tokenizer, [r["problem"] for r in todo],
                                     [r["steps"] for r in todo], batch_tokens=self.batch_tokens,
                                     max_length=self.cfg.max_length, device=self.device,
                                     system_prompt=self.cfg.system_prompt)
        canonical = [{k: r[k] for k in self.trajectory_columns} for r in todo]
        scored, too_long = join_scores(canonical, results, self.cfg, self.model_name,
                                       calibration=model_calibration(self.model))
        origin = [{k: r[k] for k in ("_file", "_row_index", "_source_file")} for r in todo]
        ok = [i for i, res in enumerate(results) if res.error is None]
        out = [s | origin[i] for s, i in zip(scored, ok)]
        out += [canonical[i] | origin[i] | {"_error": reason, "_row_json": row_json(canonical[i])}
                for i, reason in too_long]
        out += [r for r in rows if r["_error"] is not None]
        return pa.Table.from_pylist(out, schema=TRANSPORT)


# ------------------------------------------------------------------------- outputs


def marker_path(out: Path, file_index: int) -> Path:
    return out / PROGRESS / f"file-{file_index:05d}.json"


def file_identity(source: SourceFile) -> dict[str, Any]:
    return {"path": str(source.path), "size": file_size(source.path)}


def prepare_output(cfg: FilterConfig) -> tuple[Path, bool]:
    """The output directory, and whether it holds an earlier run to resume."""
    out = Path(cfg.output)
    check_output_path(out)
    if cfg.overwrite and out.exists():
        if any((out / name).exists() for name in [*TABLES, PROGRESS, "summary.json"]):
            refuse_link(out)  # the tables inside a linked directory are not ours to delete
        for name in [*TABLES, PROGRESS, "summary.json"]:
            refuse_link(out / name)  # all checked before anything is removed
        for name in [*TABLES, PROGRESS, "summary.json"]:
            remove_output(out / name)
    resume = (out / PROGRESS).is_dir()
    if not resume:
        check_output_dir(out, cfg.overwrite)
    for name in [*TABLES, PROGRESS]:
        make_dirs(out / name)
    return out, resume


def finished_files(out: Path, sources: list[SourceFile]) -> dict[int, dict]:
    """Markers of files finished by an earlier run; a marker for another input is a user error."""
    done = {}
    for i, source in enumerate(sources):
        path = marker_path(out, i)
        if path.exists():
            marker = json.loads(path.read_text())
            if marker["file"] != file_identity(source):
                raise UserError(f"{out} holds a filter run over other inputs ({marker['file']['path']} at "
                                f"position {i}); choose another --output or pass --overwrite")
            done[i] = marker
    return done


def remove_partial(out: Path, file_index: int) -> None:
    """A killed run's output of an unfinished file: its shards, and the shard it was writing."""
    for name in TABLES:
        for pattern in (f"file-{file_index:05d}-*.parquet", f".file-{file_index:05d}-*.tmp"):
            for shard in (out / name).glob(pattern):
                shard.unlink()


@dataclass
class FileOutput:
    """One input file's writers and counts while its rows arrive."""

    out: Path
    file_index: int
    rows_per_shard: int
    writers: dict[str, ShardWriter] = field(default_factory=dict)
    counts: Counter = field(default_factory=Counter)
    errors: Counter = field(default_factory=Counter)

    def writer(self, name: str) -> ShardWriter:
        if name not in self.writers:
            self.writers[name] = ShardWriter(self.out / name, TABLES[name], self.rows_per_shard,
                                             prefix=f"file-{self.file_index:05d}")
        return self.writers[name]

    def add(self, table: pa.Table) -> None:
        failed = pc.is_valid(table.column("_error"))
        scored = table.filter(pc.invert(failed))
        if scored.num_rows:
            self.writer("scored").add_table(scored)
            selected = scored.filter(scored.column("selected"))
            if selected.num_rows:
                self.writer("selected").add_table(selected)
            self.counts["scored"] += scored.num_rows
            self.counts["uncertain"] += pc.sum(scored.column("uncertain")).as_py() or 0
            self.counts["selected"] += selected.num_rows
        errors = table.filter(failed)
        if errors.num_rows:
            self.writer("errors").add_table(pa.table({
                "source_file": errors.column("_source_file"), "row_index": errors.column("_row_index"),
                "id": errors.column("id"), "reason": errors.column("_error"), "row_json": errors.column("_row_json")}))
            for reason in errors.column("_error").to_pylist():
                self.errors[reason.split(":", 1)[0]] += 1
        self.counts["read"] += table.num_rows

    def finish(self, source: SourceFile) -> dict:
        for w in self.writers.values():
            w.close()
        marker = {"file": file_identity(source), "counts": dict(self.counts), "errors_by_kind": dict(self.errors)}
        write_text_atomic(json.dumps(marker), marker_path(self.out, self.file_index))
        return marker


def write_file_errors(out: Path, name: str, rows: list[dict]) -> None:
    write_parquet_atomic(table_from_rows(rows, "errors"), out / "errors" / f"{name}.parquet")


def ensure_schema_shards(out: Path) -> None:
    """A table directory without shards gets one empty shard, so that readers find its schema."""
    for name, schema in TABLES.items():
        if not any((out / name).glob("*.parquet")):
            write_parquet_atomic(table_from_rows([], schema), out / name / "empty-00000.parquet")


# ----------------------------------------------------------------------------- run


@dataclass
class FilterResult(JobResult):
    totals: Counter
    errors: Counter
    files: int
    files_resumed: int
    rows_this_run: int
    seconds: float
    output: Path
    calibration: dict | None = None

    def summary_line(self) -> str:
        t = self.totals
        rate = self.rows_this_run / self.seconds if self.seconds > 0 else 0.0
        resumed = f", {self.files_resumed} of {self.files} files done earlier" if self.files_resumed else ""
        empty = " (the input has no rows)" if not t["read"] else ""
        removed = [f"{kind} {self.errors[kind]}" for kind in HYGIENE_KINDS if self.errors[kind]]
        removed_text = f" ({', '.join(removed)})" if removed else ""
        return (f"filter: {t['read']} rows read, {t['scored']} scored, {t['selected']} selected"
                f"{calibration_text(self.calibration)}, {sum(self.errors.values())} quarantined{removed_text}"
                f"{empty}{resumed} in {self.seconds:.1f}s "
                f"({rate:,.0f} rows/s) -> {self.output}")


def default_actors(cfg: FilterConfig) -> tuple[int, float, float]:
    """(actors, CPUs per actor, GPUs per actor) from the config and the cluster's resources."""
    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0)) if cfg.device != "cpu" else 0
    if gpus:
        return cfg.actors or gpus, cfg.cpus_per_actor or 1.0, 1.0
    if cfg.device == "cuda":
        raise UserError("--device cuda: the Ray cluster has no GPUs")
    cpus = resources.get("CPU", 1)
    if cfg.cpus_per_actor is not None:
        return cfg.actors or max(1, int((cpus - 1) // cfg.cpus_per_actor)), cfg.cpus_per_actor, 0.0
    # one actor per CPU, one torch thread each, their reservations summing to 90% of CPUs - 1 so that a CPU
    # stays for read tasks: Ray Data (2.60) schedules from a little under the cluster's CPUs, so the 10%
    # keeps actors and reads clear of that edge (with 4 MiB blocks, exactly CPUs - 1 also ran both actors,
    # within noise of this: BENCHMARKS.md, "Corpus scale")
    actors = cfg.actors or max(1, int(cpus))
    return actors, ACTOR_SHARE * max(cpus - 1, 0.5) / actors, 0.0


def run(cfg: FilterConfig, progress: bool = True) -> FilterResult:
    start = time.perf_counter()
    require_input_output(cfg)  # files are pre-flighted one by one below: a bad one is skipped, not fatal
    store_set = "object_store_mb" in cfg.model_fields_set
    check_object_store(cfg.address, store_set)
    if cfg.selection != "threshold":
        raise UserError("filter selects with the ActPRM rule (--selection threshold); for a budget use actprm score")
    load_scoring_model(cfg.model, "cpu", cfg.implicit_settings())  # a bad --model: one line now, not in an actor

    # 1. pre-flight: an unopenable file is an error row, not a crashed job
    sources, bad = [], []
    for path in list_files(cfg.input):
        try:
            sources.append(inspect_file(path, cfg.format, cfg.limits))
        except UserError as exc:
            bad.append((path, f"unreadable file: {exc}"))
    if not bad:
        check_not_empty(sources, cfg.input)
    with output_lock(cfg.output):  # one run per output at a time (exit 2 naming the holder)
        return _filter(cfg, sources, bad, store_set, start, progress)


def _filter(cfg: FilterConfig, sources: list, bad: list, store_set: bool, start: float,
            progress: bool) -> FilterResult:
    out, _ = prepare_output(cfg)
    init_ray(cfg.address, cfg.object_store_mb, store_set)
    # 2. phase 1: ids, hygiene keys and contamination, calibration sample per file, in parallel
    eval_paths = hygiene.default_eval_sets() if cfg.decontaminate is None else list(cfg.decontaminate)
    for path in eval_paths:
        if not Path(path).exists():
            raise UserError(f"--decontaminate {path}: no such file or directory")
    phase1 = ray.get([read_ids.remote(s, cfg, eval_paths) for s in sources])
    for s, r in zip(sources, phase1):
        if isinstance(r, str):
            bad.append((s.path, r))
    good = [(s, r) for s, r in zip(sources, phase1) if not isinstance(r, str)]
    sources = [s for s, _ in good]
    n_read = [r["n_read"] for _, r in good]
    for path, reason in bad:
        name = "file-unreadable-" + hashlib.sha256(str(path).encode()).hexdigest()[:12]
        write_file_errors(out, name, [error_row(str(path), -1, None, reason, {"path": str(path)})])
    # 3. the duplicate rule, then the hygiene rules (actprm.hygiene)
    plans = plan_duplicates([r["ids"] for _, r in good])
    removals = hygiene.plan_removals([r["hygiene"] for _, r in good], plans, cfg)
    calibration = None
    if cfg.target_rate is not None:  # the deltas from a sample of the corpus, scored here on the driver
        sample = BottomK(cfg.calibration_sample, cfg.seed)
        for _, r in good:
            sample.merge(r["sample"])
        if sample.rows():
            cfg, calibration = calibrate(cfg, sources, load_for_scoring(cfg), rows=sample.rows())
    # every row's ids and keys (~0.5 KB a row, growing with the corpus): only the plans go on into phase 2;
    # Python hands the freed arenas back to the OS
    del phase1, good
    done = finished_files(out, sources)
    pending = [i for i in range(len(sources)) if i not in done]
    for i in pending:
        remove_partial(out, i)

    # 4. phase 2: read -> score -> write, streamed
    rows_this_run = 0
    if pending:
        actors, cpus, gpus = default_actors(cfg)
        cfg = cfg.model_copy(update={"actors": actors, "cpus_per_actor": cpus})  # the actors' torch threads
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = progress
        context.target_max_block_size = BLOCK_BYTES
        if not progress:
            logging.getLogger("ray.data").setLevel(logging.WARNING)
        ds = (ray.data.from_items([{"file_index": i} for i in pending], override_num_blocks=len(pending))
              # about half a CPU per read task (pipelines/filter_reads.py): reads run beside the actors,
              # two files at a time in the CPU left to them, and are not fused into the actors
              .map_batches(functools.partial(read_rows, sources=sources, plans=plans, removals=removals, cfg=cfg),
                           batch_size=1, num_cpus=read_task_cpus(cpus))
              .map_batches(PRMScorer, fn_constructor_kwargs={"cfg": cfg}, batch_size=cfg.batch_rows,
                           batch_format="pyarrow", compute=ray.data.ActorPoolStrategy(size=actors),
                           num_cpus=cpus, num_gpus=gpus))
        files = {i: FileOutput(out, i, cfg.rows_per_shard) for i in pending}
        for i in pending:
            if n_read[i] == 0:
                done[i] = files.pop(i).finish(sources[i])
        for table in ds.iter_batches(batch_format="pyarrow", batch_size=None):
            for i in pc.unique(table.column("_file")).to_pylist():
                part = table.filter(pc.equal(table.column("_file"), i))
                files[i].add(part)
                rows_this_run += part.num_rows
                if files[i].counts["read"] == n_read[i]:
                    done[i] = files.pop(i).finish(sources[i])
        if files:
            raise RuntimeError(f"rows missing for files {sorted(files)}: a bug in the recipe")
    ensure_schema_shards(out)

    # 5. summary
    totals, errors = Counter(), Counter()
    for marker in done.values():
        totals.update(marker["counts"])
        errors.update(marker["errors_by_kind"])
    if bad:
        errors["unreadable file"] += len(bad)
    seconds = time.perf_counter() - start
    summary = {
        "files": [str(s.path) for s in sources], "unreadable_files": [str(p) for p, _ in bad],
        "rows_read": totals["read"], "rows_scored": totals["scored"], "rows_uncertain": totals["uncertain"],
        "rows_selected": totals["selected"], "rows_error": sum(errors.values()),
        "errors_by_kind": dict(errors.most_common()),
        "selection_rate": totals["selected"] / totals["scored"] if totals["scored"] else 0.0,
        "delta_pred": cfg.delta_pred, "delta_std": cfg.delta_std, "calibration": calibration,
        **dict(zip(("decision_threshold", "spread_scale"),
                   rule_constants(calibration_of(cfg.model), cfg.decision_threshold, cfg.spread_scale))),
        "hygiene": {"dedup": cfg.dedup, "near_dedup": cfg.near_dedup, "decontaminate": eval_paths,
                    "removed": {k: errors[k] for k in HYGIENE_KINDS if errors[k]}},
        "model": cfg.model or DEFAULT_MODEL_NAME, "files_done_earlier": len(sources) - len(pending),
        "rows_this_run": rows_this_run, "seconds": round(seconds, 3),
        "rows_per_second": rows_this_run / seconds if seconds else 0.0,
    }
    write_text_atomic(json.dumps(summary, indent=2) + "\n", out / "summary.json")
    return FilterResult(totals, errors, len(sources), len(sources) - len(pending), rows_this_run, seconds, out,
                        calibration)


if __name__ == "__main__":
    from actprm.cli import main

    sys.exit(main(["filter", *sys.argv[1:]]))
