"""Recipe: the demo — the whole ActPRM loop on the arithmetic world, ActPRM against random selection.

    actprm demo [--output runs/demo] [--rows 3000] [--rounds 4]        (settings: configs/demo.yaml)

1. generate a world pool (`rows`) and an eval set (`eval_rows`, about half with an error) under
   OUTPUT/world/ (actprm.generate);
2. one local Ray and one pool of scoring actors for everything below;
3. for each strategy (actprm, random): `rounds` rounds of the active loop (pipelines/loop.py)
   buying `round_labels` labels a round from the verifier annotator, each round training from the
   last checkpoint (the heads only by default: `train.backbone: frozen`) and evaluating on the eval set;
   the runs are OUTPUT/runs/<strategy>/ (a rerun resumes them);
4. OUTPUT/metrics.jsonl (every round of every strategy), OUTPUT/model/ (the final ActPRM model),
   the plots f1_vs_labels.png, step_stats.png, selection_rate.png and OUTPUT/report.md.
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
from actprm.io.writers import replaced_dir, write_text_atomic
from actprm.plots import plot_f1_vs_labels, plot_selection_rate, plot_step_stats
from actprm.progress import JobResult
from actprm.selection import calibration_of
from pipelines import generate as generate_job
from pipelines import loop
from pipelines.ray_session import init_ray

PLOTS = {"f1": "f1_vs_labels.png", "steps": "step_stats.png", "rate": "selection_rate.png"}
F1_LEVELS = (0.8, 0.9)  # the report gives the labels each strategy bought to reach these


@dataclass
class DemoResult(JobResult):
    output: Path
    report: Path
    lines: dict[str, list[dict]]
    seconds: float

    def render(self) -> str:
        return f"demo: report in {self.report}\n" + self.summary_line()

    def summary_line(self) -> str:
        parts = []
        for name, lines in self.lines.items():
            last = lines[-1]
            f1 = "-" if f1_of(last) is None else f"{f1_of(last):.3f}"
            reach = labels_to(lines, F1_LEVELS[-1])
            to = "" if reach is None else f", F1 {F1_LEVELS[-1]:g} at {reach:.0f}"
            parts.append(f"{name} F1 {f1} with {last['labels_used']} labels{to}")
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


def generate(cfg: DemoConfig, out: Path, progress: bool) -> tuple[Path, Path]:
    pool, evals = out / "world" / "pool", out / "world" / "eval"
    if not pool.is_dir():
        generate_job.run(GenerateConfig(n=cfg.rows, seed=cfg.seed + 1, world_config=cfg.world_config,
                                        output=str(pool)), progress)
    if not evals.is_dir():
        generate_job.run(GenerateConfig(n=cfg.eval_rows, seed=cfg.seed + 2, eval_set=True,
                                        world_config=cfg.world_config, output=str(evals)), progress)
    return pool, evals


def loop_config(cfg: DemoConfig, strategy: str, pool: Path, evals: Path, out: Path) -> LoopConfig:
    return LoopConfig(mode="rounds", pool=[str(pool)], eval=[str(evals)], output=str(out / "runs" / strategy),
                      model=cfg.model, strategy=strategy, round_labels=[cfg.round_labels], rounds=cfg.rounds,
                      judge=cfg.judge, train=cfg.train, seed=cfg.seed, threads=cfg.threads, device=cfg.device,
                      dtype=cfg.dtype)


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


def savings_lines(lines: dict[str, list[dict]]) -> list[str]:
    """Per strategy, the labels it bought to reach random's final F1 (and the ratio to random's labels)."""
    if "random" not in lines or f1_of(lines["random"][-1]) is None:
        return []
    base = lines["random"][-1]
    out = []
    for name, ls in lines.items():
        if name == "random":
            continue
        need = labels_to(ls, f1_of(base))
        target = f"random's final F1 ({f1_of(base):.3f}, {base['labels_used']} labels)"
        out.append(f"\n{name} reached {target} with {need:.0f} labels: {base['labels_used'] / need:.1f}x fewer."
                   if need else f"\n{name} did not reach {target}.")
    return out


def write_plots(cfg: DemoConfig, out: Path, lines: dict[str, list[dict]], rule: LoopConfig) -> None:
    f1 = {name: ([ln["labels_used"] for ln in ls if f1_of(ln) is not None],
                 [f1_of(ln) for ln in ls if f1_of(ln) is not None]) for name, ls in lines.items()}
    plot_f1_vs_labels(f1, out / PLOTS["f1"], title=f"eval mean F1 against labels ({cfg.eval_rows} eval rows, "
                      "checkpoint thresholds)")
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


def write_report(cfg: DemoConfig, out: Path, lines: dict[str, list[dict]], seconds: float,
                 rule: LoopConfig) -> Path:
    t = cfg.train
    judge = cfg.judge if isinstance(cfg.judge, str) else f"{cfg.judge.backend} (wrong rate {cfg.judge.wrong_rate:g})"
    text = [
        "# actprm demo: active learning of a process reward model on the arithmetic world", "",
        (f"Ran in {seconds:.0f} s. A pool of {cfg.rows} world trajectories "
         f"({cfg.world_config or 'the default world'}) and an eval set of {cfg.eval_rows} "
        f"(about half with an error) were generated (`world/`); starting from "
        f"{cfg.model or 'the shipped PRM (actprm/assets/prm)'}, each strategy ran {cfg.rounds} rounds buying "
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
        "- **random**: a fixed random order of the pool.", "",
        ("| strategy | labels to F1 " + " | labels to F1 ".join(f"{x:g}" for x in F1_LEVELS)
         + " | final F1 (checkpoint threshold) | final F1 at 0.5 | share of the unlabelled pool the rule marks "
           "uncertain, round 1, 2, ... |"),
        "|---|" + "---|" * len(F1_LEVELS) + "---|---|---|",
        *(f"| {name} | " + " | ".join(_fmt(labels_to(ls, x), ".0f") if labels_to(ls, x) is not None else "not reached"
                                      for x in F1_LEVELS)
          + f" | {_fmt(f1_of(ls[-1]))} | {_fmt(ls[-1]['mean_f1'])} | "
          + (", ".join(f"{r:.0%}" for r in routed(ls)) or "- (not scored)") + " |"
          for name, ls in lines.items()),
        *savings_lines(lines),
        "",
        ("The uncertain share of round r is measured with the model trained in round r − 1, before selecting: it "
         "is what the rule alone (`actprm filter`, the stream mode) would send to the judge."), "",
        f"![F1 against labels]({PLOTS['f1']})", "",
        f"![selection rate]({PLOTS['rate']})", "",
        f"![step statistics]({PLOTS['steps']})", "",
    ]
    for name, ls in lines.items():
        text += [f"## {name}", "",
                 ("| round | labels | selected | uncertain share | trained on | loss | threshold | mean F1 | "
                  "F1 at 0.5 | error_acc at 0.5 | correct_acc at 0.5 | step AUROC | seconds |"),
                 "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for ln in ls:
            text.append(f"| {ln['round']} | {ln['labels_used']} | {ln['rows_selected']} | "
                        f"{_fmt(ln['uncertain_rate'], '.1%')} | {ln['trained_on']} | {_fmt(ln['train_loss'])} | "
                        f"{_fmt(ln.get('decision_threshold'), '.2f')} | {_fmt(f1_of(ln))} | "
                        f"{_fmt(ln['mean_f1'])} | {_fmt(ln['error_acc'])} | {_fmt(ln['correct_acc'])} | "
                        f"{_fmt(ln['step_auroc'])} | {_fmt(ln['seconds'], '.1f')} |")
        text.append("")
    text += ["## Files", "",
             "- `metrics.jsonl`: every round of every strategy (data_schemas/loop_metrics.yaml)",
             "- `model/`: the final ActPRM model (`actprm score --model`, `actprm evaluate --model`)",
             "- `runs/<strategy>/`: each loop's run directory (labelled/, checkpoints/, evals/, state.json)",
             "- `world/pool`, `world/eval`: the generated trajectories", ""]
    path = out / "report.md"
    write_text_atomic("\n".join(text), path)
    return path


def run(cfg: DemoConfig, progress: bool = True) -> DemoResult:
    start = time.perf_counter()
    out = prepare(cfg)
    pool_path, eval_path = generate(cfg, out, progress)
    init_ray(cfg.address)
    lc = loop_config(cfg, cfg.strategies[0], pool_path, eval_path, out)
    pool = loop.ScoringPool(cfg.actors, cfg.device, lc.batch_tokens, lc.max_length, lc.batch_rows,
                            system_prompt=lc.system_prompt, dtype=lc.dtype)
    lines: dict[str, list[dict]] = {}
    try:
        for strategy in cfg.strategies:
            result = loop.run(loop_config(cfg, strategy, pool_path, eval_path, out), progress=progress, pool=pool)
            lines[strategy] = result.lines
    finally:
        pool.close()
    write_text_atomic("".join(json.dumps(ln) + "\n" for ls in lines.values() for ln in ls), out / "metrics.jsonl")
    final = lines.get("actprm", next(iter(lines.values())))[-1]["checkpoint"]
    if final:
        with replaced_dir(out / "model") as staging:
            shutil.copytree(final, staging, dirs_exist_ok=True)
    write_plots(cfg, out, lines, lc)
    seconds = time.perf_counter() - start
    report = write_report(cfg, out, lines, seconds, lc)
    return DemoResult(out, report, lines, seconds)


if __name__ == "__main__":
    from actprm.cli import main

    sys.exit(main(["demo", *sys.argv[1:]]))
