"""Recipe: the demo — the whole ActPRM loop on a world where mistakes are rare, ActPRM against random selection.

    actprm demo [--output runs/demo] [--rows 10000] [--rounds 5]        (settings: configs/demo.yaml)

1. generate a world pool (`rows`) and an eval set (`eval_rows`, about half with an error) under
   OUTPUT/world/ (actprm.generate), the rare-mistake world unless `world_config` says otherwise;
2. one local Ray and one pool of scoring actors for everything below;
3. for each strategy (actprm, random): `rounds` rounds of the active loop (pipelines/loop.py)
   buying `round_labels` labels a round from the verifier annotator, each round training from the
   last checkpoint (the heads only by default: `train.backbone: frozen`) and evaluating on the eval set;
   the runs are OUTPUT/runs/<strategy>/ (a rerun resumes them); the pool's backbone outputs are computed
   once and shared by the runs;
4. `one_pass`: one pass of the stream mode (ActPRM's Algorithm 1) over the same pool, with ActPRM's
   selection and with every row labelled (OUTPUT/runs/pass-actprm, OUTPUT/runs/pass-full);
5. `contrast_world`: steps 1-4 again for a second world under OUTPUT/contrast/;
6. OUTPUT/metrics.jsonl (every round of every run), OUTPUT/model/ (the final ActPRM model of the rounds),
   the plots f1_vs_labels.png, step_stats.png, selection_rate.png, one_pass.png and OUTPUT/report.md.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from actprm.calibration import rule_constants
from actprm.config import DemoConfig, GenerateConfig, LoopConfig, dump_config
from actprm.curves import labels_to_reach
from actprm.errors import UserError
from actprm.io.lock import output_lock
from actprm.io.subsets import resolve_subsets
from actprm.io.writers import replaced_dir, write_text_atomic
from actprm.plots import plot_f1_vs_labels, plot_selection_rate, plot_step_stats
from actprm.progress import JobResult
from actprm.selection import calibration_of
from pipelines import generate as generate_job
from pipelines import loop
from pipelines.ray_session import init_ray

PLOTS = {"f1": "f1_vs_labels.png", "steps": "step_stats.png", "rate": "selection_rate.png", "pass": "one_pass.png"}
REPO = Path(__file__).resolve().parents[1]
F1_LEVELS = (0.8, 0.9)  # the report gives the labels each strategy bought to reach these


@dataclass
class World:
    """One world's runs: the rounds per strategy and the passes (stream mode) per strategy."""

    name: str
    path: str | None
    out: Path
    lines: dict[str, list[dict]]
    passes: dict[str, list[dict]]


@dataclass
class DemoResult(JobResult):
    output: Path
    report: Path
    worlds: list[World]
    seconds: float

    @property
    def lines(self) -> dict[str, list[dict]]:
        return self.worlds[0].lines

    def details(self) -> str:
        return f"demo: report in {self.report}"

    def summary_line(self) -> str:
        parts = []
        for name, lines in self.lines.items():
            last = lines[-1]
            f1 = "-" if f1_of(last) is None else f"{f1_of(last):.3f}"
            reach = labels_to(lines, F1_LEVELS[-1])
            to = "" if reach is None else f", F1 {F1_LEVELS[-1]:g} at {reach:.0f}"
            prm = "" if last.get("prmscore") is None else f" (PRMScore {last['prmscore']:.3f})"
            parts.append(f"{name} F1 {f1}{prm} with {last['labels_used']} labels{to}")
        passes = self.worlds[0].passes
        if "actprm" in passes:
            last = passes["actprm"][-1]
            parts.append(f"one pass: actprm F1 {_fmt(f1_of(last))} with {last['labels_used']} labels"
                         + (f" (full {_fmt(f1_of(passes['full'][-1]))} with {passes['full'][-1]['labels_used']})"
                            if "full" in passes else ""))
        return f"demo: {', '.join(parts)} (round 0: {self._start_f1()}) in {self.seconds:.0f}s -> {self.output}"

    def _start_f1(self) -> str:
        first = next(iter(self.lines.values()))[0]["mean_f1"]
        return "-" if first is None else f"{first:.3f}"


def prepare(cfg: DemoConfig) -> Path:
    out = Path(cfg.output)
    if cfg.overwrite and out.exists():
        shutil.rmtree(out)
    config = out / "config.yaml"
    if config.is_file():
        if config.read_text() != dump_config(cfg.model_copy(update={"overwrite": False})):
            raise UserError(f"{out} holds a demo with other settings; pass --overwrite or choose another --output")
    elif out.exists() and any(out.iterdir()):
        raise UserError(f"{out}: exists and is not empty; choose another --output or pass --overwrite")
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(dump_config(cfg.model_copy(update={"overwrite": False})), config)
    return out


def resolve_world(path: str | None) -> str | None:
    """A world YAML from the working directory, else from the repository (configs/worlds/...)."""
    if not path or Path(path).is_file():
        return path
    there = REPO / path
    if there.is_file():
        return str(there)
    raise UserError(f"world config {path}: no such file (here or in {REPO})")


def generate(cfg: DemoConfig, world: str | None, out: Path, progress: bool) -> tuple[Path, Path]:
    pool, evals = out / "world" / "pool", out / "world" / "eval"
    if not pool.is_dir():
        generate_job.run(GenerateConfig(n=cfg.rows, seed=cfg.seed + 1, world_config=world, output=str(pool)),
                         progress)
    if not evals.is_dir():
        generate_job.run(GenerateConfig(n=cfg.eval_rows, seed=cfg.seed + 2, eval_set=True, world_config=world,
                                        output=str(evals)), progress)
    return pool, evals


def loop_config(cfg: DemoConfig, strategy: str, pool: Path, evals: Path, out: Path, mode: str = "rounds"
                ) -> LoopConfig:
    name = strategy if mode == "rounds" else f"pass-{strategy}"
    return LoopConfig(mode=mode, pool=[str(pool)], eval=[str(evals), *cfg.prmbench], output=str(out / "runs" / name),
                      model=cfg.model, strategy=strategy, round_labels=[cfg.round_labels],
                      rounds=cfg.rounds if mode == "rounds" else None, chunk_rows=cfg.chunk_rows,
                      judge=cfg.judge, train=cfg.train, seed=cfg.seed, threads=cfg.threads, device=cfg.device,
                      dtype=cfg.dtype)


def share_pool_inputs(source: Path, target: Path) -> None:
    """Give a run the pool's head inputs another run computed (the same model and rows: the loop checks)."""
    src, dst = source / "head_inputs" / "pool.safetensors", target / "head_inputs" / "pool.safetensors"
    if src.is_file() and not dst.exists():
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)


def step_stats(run: Path, r: int) -> tuple[np.ndarray, np.ndarray]:
    table = pq.read_table(run / "labelled" / loop.round_name(r) / "selection.parquet",
                          columns=["step_mean", "step_std"])
    means = [m for m in table.column("step_mean").to_pylist() if m is not None]
    stds = [s for s in table.column("step_std").to_pylist() if s is not None]
    flat = lambda xs: np.array([v for x in xs for v in x], dtype=np.float64)
    return flat(means), flat(stds)


def f1_of(line: dict) -> float | None:
    """A round's eval F1 at its checkpoint's decision threshold (at 0.5 for a model without one)."""
    return line["mean_f1_checkpoint"] if line.get("mean_f1_checkpoint") is not None else line["mean_f1"]


def labels_to(lines: list[dict], level: float) -> float | None:
    """Labels a strategy's run bought to reach eval F1 `level` at the checkpoints' decision thresholds
    (linear between rounds; None: never)."""
    points = [(ln["labels_used"], f1_of(ln)) for ln in lines if f1_of(ln) is not None]
    return labels_to_reach([p[0] for p in points], [p[1] for p in points], level) if points else None


def routed(lines: list[dict]) -> list[float]:
    """The share of the unlabelled pool the rule marked uncertain, per round from round 1 (each scored with
    the model trained in the round before): what the rule alone would send to the judge."""
    return [ln["uncertain_rate"] for ln in lines if ln["uncertain_rate"] is not None]


def savings(lines: dict[str, list[dict]]) -> list[str]:
    """Per strategy against random: the savings ratio (random's labels / the strategy's) at each F1 level both
    reached, and the labels to reach random's final F1."""
    if "random" not in lines or f1_of(lines["random"][-1]) is None:
        return []
    base = lines["random"][-1]
    out = []
    for name, ls in lines.items():
        if name == "random":
            continue
        for level in F1_LEVELS:
            a, b = labels_to(lines["random"], level), labels_to(ls, level)
            if a is not None and b is not None:
                out.append(f"- {name} reached F1 {level:g} with {b:.0f} labels, random with {a:.0f}: "
                           f"**{a / b:.1f}x** the labels {'saved' if a > b else 'spent'}" if a != b else
                           f"- {name} and random reached F1 {level:g} with the same labels ({a:.0f})")
            elif b is not None:
                out.append(f"- {name} reached F1 {level:g} with {b:.0f} labels; random did not reach it "
                           f"within {base['labels_used']}")
            elif a is not None:
                out.append(f"- random reached F1 {level:g} with {a:.0f} labels; {name} did not")
        need = labels_to(ls, f1_of(base))
        target = f"random's final F1 ({f1_of(base):.3f}, {base['labels_used']} labels)"
        out.append(f"- {name} reached {target} with {need:.0f} labels: {base['labels_used'] / need:.1f}x fewer"
                   if need else f"- {name} did not reach {target}")
    return out


def pass_summary(passes: dict[str, list[dict]], rows: int) -> list[str]:
    """The one-pass table: per strategy, labels (share of the pool), F1 after the pass, selection rate of the
    first and last chunk."""
    if not passes:
        return []
    text = ["| one pass | labels (share of the pool) | F1 after the pass (checkpoint threshold) | "
            "selection rate, first → last chunk |", "|---|---|---|---|"]
    for name, ls in passes.items():
        chunks = [ln for ln in ls if ln["round"] > 0]
        rates = f"{_fmt(chunks[0]['selection_rate'], '.0%')} → {_fmt(chunks[-1]['selection_rate'], '.0%')}" \
            if chunks else "-"
        text.append(f"| {name} | {ls[-1]['labels_used']} ({ls[-1]['labels_used'] / rows:.0%}) | "
                    f"{_fmt(f1_of(ls[-1]))} | {rates} |")
    if "actprm" in passes and "full" in passes:
        a, f = passes["actprm"][-1], passes["full"][-1]
        if f1_of(a) is not None and f1_of(f) is not None:
            text += ["", f"One pass over the pool: ActPRM labelled {a['labels_used'] / max(1, f['labels_used']):.0%} "
                     f"of what labelling every row took, for F1 {f1_of(a):.3f} against {f1_of(f):.3f} "
                     f"({f1_of(a) - f1_of(f):+.3f})."]
    return text


def write_plots(cfg: DemoConfig, world: World, rule: LoopConfig) -> None:
    out, lines = world.out, world.lines
    f1 = {name: ([ln["labels_used"] for ln in ls if f1_of(ln) is not None],
                 [f1_of(ln) for ln in ls if f1_of(ln) is not None]) for name, ls in lines.items()}
    plot_f1_vs_labels(f1, out / PLOTS["f1"], title=f"{world.name}: eval mean F1 against labels "
                      f"({cfg.eval_rows} eval rows, checkpoint thresholds)")
    if world.passes:
        f1 = {f"one pass, {name}": ([ln["labels_used"] for ln in ls if f1_of(ln) is not None],
                                    [f1_of(ln) for ln in ls if f1_of(ln) is not None])
              for name, ls in world.passes.items()}
        plot_f1_vs_labels(f1, out / PLOTS["pass"], title=f"{world.name}: one pass over {cfg.rows} rows, F1 "
                          "after each chunk against labels")
    scoring = {name: ls for name, ls in lines.items() if any(ln["uncertain_rate"] is not None for ln in ls)}
    rates = {}
    for name, ls in scoring.items():
        shown = [ln for ln in ls if ln["uncertain_rate"] is not None]
        rates[f"{name}: uncertain"] = ([ln["round"] for ln in shown], [ln["uncertain_rate"] for ln in shown])
    for name, ls in lines.items():
        shown = [ln for ln in ls if ln["selection_rate"] is not None]
        rates[f"{name}: selected"] = ([ln["round"] for ln in shown], [ln["selection_rate"] for ln in shown])
    plot_selection_rate(rates, out / PLOTS["rate"],
                        title="share of the unlabelled pool: ActPRM-uncertain, and selected")
    stats = {}
    for name, ls in scoring.items():
        rounds = [ln["round"] for ln in ls if ln["uncertain_rate"] is not None]
        for r in sorted({rounds[0], rounds[-1]}):
            stats[f"{name}, round {r} pool"] = step_stats(out / "runs" / name, r)
    if stats:
        spread = rule_constants(calibration_of(str(out / "model")) if (out / "model").is_dir() else None)[1]
        plot_step_stats(stats, out / PLOTS["steps"], rule.delta_pred, rule.delta_std * spread,
                        title="what the model saw when selecting (first and last round)")


def _fmt(x, spec: str = ".3f") -> str:
    return "-" if x is None else format(x, spec)


def world_section(cfg: DemoConfig, world: World, rule: LoopConfig, prefix: str = "") -> list[str]:
    lines = world.lines
    text = [
        ("| strategy | labels to F1 " + " | labels to F1 ".join(f"{x:g}" for x in F1_LEVELS)
         + " | final F1 (checkpoint threshold) | final F1 at 0.5 | share of the unlabelled pool the rule marks "
           "uncertain, round 1, 2, ... |"),
        "|---|" + "---|" * len(F1_LEVELS) + "---|---|---|",
        *(f"| {name} | " + " | ".join(_fmt(labels_to(ls, x), ".0f") if labels_to(ls, x) is not None else "not reached"
                                      for x in F1_LEVELS)
          + f" | {_fmt(f1_of(ls[-1]))} | {_fmt(ls[-1]['mean_f1'])} | "
          + (", ".join(f"{r:.0%}" for r in routed(ls)) or "- (not scored)") + " |"
          for name, ls in lines.items()),
        "", *savings(lines), "",
        *pass_summary(world.passes, cfg.rows), "",
        f"![F1 against labels]({prefix}{PLOTS['f1']})", "",
    ]
    if world.passes:
        text += [f"![one pass]({prefix}{PLOTS['pass']})", ""]
    text += [f"![selection rate]({prefix}{PLOTS['rate']})", "", f"![step statistics]({prefix}{PLOTS['steps']})", ""]
    for name, ls in list(lines.items()) + [(f"one pass, {n}", ls) for n, ls in world.passes.items()]:
        text += [f"### {world.name}: {name}", "",
                 ("| round | labels | selected | uncertain share | trained on | loss | threshold | mean F1 | "
                  "F1 at 0.5 | error_acc at 0.5 | correct_acc at 0.5 | step AUROC | "
                  f"{'PRMBench PRMScore at 0.5 | ' if cfg.prmbench else ''}seconds |"),
                 "|---" * (14 if cfg.prmbench else 13) + "|"]
        for ln in ls:
            prm = f"{_fmt(ln.get('prmscore'))} | " if cfg.prmbench else ""
            text.append(f"| {ln['round']} | {ln['labels_used']} | {ln['rows_selected']} | "
                        f"{_fmt(ln['uncertain_rate'], '.1%')} | {ln['trained_on']} | {_fmt(ln['train_loss'])} | "
                        f"{_fmt(ln.get('decision_threshold'), '.2f')} | {_fmt(f1_of(ln))} | "
                        f"{_fmt(ln['mean_f1'])} | {_fmt(ln['error_acc'])} | {_fmt(ln['correct_acc'])} | "
                        f"{_fmt(ln['step_auroc'])} | {prm}{_fmt(ln['seconds'], '.1f')} |")
        text.append("")
    return text


def write_report(cfg: DemoConfig, out: Path, worlds: list[World], seconds: float, rule: LoopConfig) -> Path:
    t = cfg.train
    judge = cfg.judge if isinstance(cfg.judge, str) else f"{cfg.judge.backend} (wrong rate {cfg.judge.wrong_rate:g})"
    main = worlds[0]
    text = [
        f"# actprm demo: active learning of a process reward model on the world `{main.name}`", "",
        (f"Ran in {seconds:.0f} s. A pool of {cfg.rows} world trajectories ({main.path or 'the default world'}) "
         f"and an eval set of {cfg.eval_rows} (about half with an error) were generated (`world/`); starting "
         f"from {cfg.model or 'the shipped PRM (actprm/assets/prm)'}, each strategy ran {cfg.rounds} rounds buying "
         f"{cfg.round_labels} labels a round from the annotator `{judge}`. A round scores the unlabelled pool "
         "with the current model (ActPRM only; random needs no scores), selects, annotates, trains one round "
         f"from the last checkpoint on every label so far (`actprm train`'s recipe: backbone `{t.backbone}`, "
         f"head lr {t.head_lr:g}, error weight {t.error_weight}, output bias at the label prior "
         f"{'on' if t.prior_bias else 'off'}, {t.holdout:.0%} of the labels held out to stop training, calibrate "
         "the heads and choose the decision threshold) and evaluates ProcessBench F1 on the eval set at the "
         "checkpoint's decision threshold (and at the benchmark's 0.5). Round 0 is the starting model."), "",
        (f"- **actprm**: the ActPRM rule on calibrated probabilities (a trajectory is uncertain if a step up to the "
         f"predicted first error is right or wrong with a calibrated chance under {rule.delta_pred:g}, or its heads "
         f"disagree more than {rule.delta_std:g} times their typical spread); when more are uncertain than the "
         "round's budget, the most uncertain by entropy; when fewer, the rest of the budget goes up to "
         f"{rule.explore:.0%} of it to rows drawn at random and the remainder by entropy."),
        "- **random**: a fixed random order of the pool.",
    ]
    if main.passes:
        text.append(f"- **one pass** (`actprm loop --mode stream`, ActPRM's Algorithm 1): the pool once, in "
                    f"mini-batches of {rule.stream_batch}; each batch scored by the current heads, its uncertain "
                    "rows labelled and trained on (with replay of earlier labels) before the next; `full` labels "
                    "every row of the same pass.")
    text += ["", *world_section(cfg, main, rule)]
    for other in worlds[1:]:
        text += [f"## Contrast: the world `{other.name}`", "", contrast_words(main, other), "",
                 *world_section(cfg, other, rule, prefix=f"{other.out.name}/")]
    text += ["## Files", "",
             "- `metrics.jsonl`: every round of every run (data_schemas/loop_metrics.yaml)",
             "- `model/`: the final ActPRM model of the rounds (`actprm score --model`, `actprm evaluate --model`)",
             "- `runs/<strategy>/`, `runs/pass-<strategy>/`: each loop's run directory (labelled/, checkpoints/, "
             "evals/, state.json)",
             "- `world/pool`, `world/eval`: the generated trajectories",
             *(["- `contrast/`: the same for the contrast world"] if len(worlds) > 1 else []), ""]
    path = out / "report.md"
    write_text_atomic("\n".join(text), path)
    return path


def contrast_words(main: World, other: World) -> str:
    """What the contrast world shows beside the main one, in a sentence or two, from the figures."""
    level = F1_LEVELS[0]

    def figures(w: World) -> tuple[float | None, float | None, str]:
        rnd, act = labels_to(w.lines.get("random", []), level), labels_to(w.lines.get("actprm", []), level)
        ratio = rnd / act if rnd and act else None
        said = (f"random needs {rnd:.0f} labels to reach F1 {level:g}" if rnd else
                f"random does not reach F1 {level:g} within {w.lines['random'][-1]['labels_used']} labels")
        said += f", ActPRM {act:.0f}" if act else ", ActPRM does not reach it"
        return rnd, ratio, f"on `{w.name}` {said}" + (f" ({ratio:.1f}x)" if ratio else "")

    (m_rnd, m_ratio, m_said), (o_rnd, o_ratio, o_said) = figures(main), figures(other)
    text = f"{m_said}; {o_said}."
    short = o_rnd is not None and (m_rnd is None or o_rnd < m_rnd)
    less = o_ratio is not None and (m_ratio is None or o_ratio < m_ratio)
    if short and less:
        text += (f" The learning curve of `{other.name}` is shorter and selection saves less there: where a few "
                 "hundred random labels already hold enough mistakes, there is little for selection to find.")
    elif less or (m_rnd is None and o_rnd is not None):
        text += f" Selection saves less on `{other.name}` in this run."
    else:
        text += f" In this run selection saves no less on `{other.name}` than on `{main.name}` (one seed)."
    return text


def run_world(cfg: DemoConfig, name: str, world: str | None, out: Path, pool, progress: bool) -> World:
    pool_path, eval_path = generate(cfg, world, out, progress)
    lines: dict[str, list[dict]] = {}
    first: Path | None = None
    for strategy in cfg.strategies:
        lc = loop_config(cfg, strategy, pool_path, eval_path, out)
        if first is not None:
            share_pool_inputs(first, Path(lc.output))
        result = loop.run(lc, progress=progress, pool=pool)
        lines[strategy] = result.lines
        first = first or Path(lc.output)
    passes: dict[str, list[dict]] = {}
    if cfg.one_pass:
        for strategy in ("actprm", "full"):
            lc = loop_config(cfg, strategy, pool_path, eval_path, out, mode="stream")
            if first is not None:
                share_pool_inputs(first, Path(lc.output))
            passes[strategy] = loop.run(lc, progress=progress, pool=pool).lines
    final = lines.get("actprm", next(iter(lines.values())))[-1]["checkpoint"]
    if final:
        with replaced_dir(out / "model") as staging:
            shutil.copytree(final, staging, dirs_exist_ok=True)
    return World(name, world, out, lines, passes)


def run(cfg: DemoConfig, progress: bool = True) -> DemoResult:
    with output_lock(cfg.output):  # one demo per output at a time (exit 2 naming the holder)
        return _run(cfg, progress)


def _run(cfg: DemoConfig, progress: bool) -> DemoResult:
    start = time.perf_counter()
    for subset in resolve_subsets(cfg.prmbench) if cfg.prmbench else []:
        if subset.benchmark != "prmbench":
            raise UserError(f"--prmbench {subset.path}: not PRMBench's rows (the world's eval set is the demo's "
                            f"ProcessBench-scored set)")
    out = prepare(cfg)
    worlds_wanted = [(cfg.world_config, out)] + ([(cfg.contrast_world, out / "contrast")] if cfg.contrast_world else [])
    resolved = [(resolve_world(w), o) for w, o in worlds_wanted]
    init_ray(cfg.address)
    lc = loop_config(cfg, cfg.strategies[0], out, out, out)
    pool = loop.ScoringPool(cfg.actors, cfg.device, lc.batch_tokens, lc.max_length, lc.batch_rows,
                            system_prompt=lc.system_prompt, dtype=lc.dtype)
    worlds = []
    try:
        for world, o in resolved:
            name = Path(world).stem if world else "arith"
            worlds.append(run_world(cfg, name, world, o, pool, progress))
    finally:
        pool.close()
    write_text_atomic("".join(json.dumps({"world": w.name, "run": "rounds", **ln}) + "\n"
                              for w in worlds for ls in w.lines.values() for ln in ls)
                      + "".join(json.dumps({"world": w.name, "run": "one pass", **ln}) + "\n"
                                for w in worlds for ls in w.passes.values() for ln in ls), out / "metrics.jsonl")
    for w in worlds:
        write_plots(cfg, w, lc)
    seconds = time.perf_counter() - start
    report = write_report(cfg, out, worlds, seconds, lc)
    return DemoResult(out, report, worlds, seconds)


if __name__ == "__main__":
    from actprm.cli import main

    sys.exit(main(["demo", *sys.argv[1:]]))
