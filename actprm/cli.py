"""The `actprm` command.

Each verb parses its flags, merges them over `--config` YAML over defaults
(actprm.config), and calls a component (in-process) or a recipe in `pipelines/`
(with `--ray`). A user's mistake is one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable
from typing import Any

from actprm import __version__
from actprm.errors import UserError
from actprm.redact import redact

EPILOG = """\
verbs:
  generate     synthetic trajectories of a verifiable world, with exact step labels
  validate     check a corpus in any supported format; valid rows and error rows as Parquet
  init-model   create a randomly initialised ensemble PRM from a preset
  score        score every step with the ensemble PRM; uncertainty and ActPRM selection
  filter       the same at corpus scale on Ray: actor pool, streaming, resumable; selected/ for the judge
  train        one PRM training round (ActPRM loss) from trajectories + annotations
  annotate     label trajectories: a judge model over any OpenAI-compatible endpoint, or the verifier
  evaluate     ProcessBench F1 (the official metric), step AUROC and ECE of a PRM on labelled subsets
  loop         the active-learning loop on Ray: score, select, annotate, train, evaluate, round after round
  demo         the whole loop on the arithmetic world: ActPRM vs random selection, report and plots
  estimate     what labelling a corpus will cost: sample, score, project judge calls, tokens, dollars
  judge-check  the judge's F1 on ProcessBench (as evaluate scores it) and a label_weight, before paying
  inspect      a table's provenance (version, commit, config/model hashes, judge), schema, rows
  export       labelled trajectories in the formats trainers read: TRL stepwise, ActivePRM

examples:
  actprm generate --world arith --n 100000 --output out/world
  actprm validate --input ../shared/data/processbench/ --output out/checked
  actprm init-model --preset tiny --output models/tiny
  actprm score --input out/checked/valid --output out/scored --model models/tiny
  actprm annotate --backend openai --base-url http://localhost:8000/v1 --judge-model Qwen/QwQ-32B \\
      --input out/scored/scored --output out/annotated
  actprm evaluate --data ../shared/data/processbench/*.json --output out/eval
  actprm loop --config configs/loop/rounds.yaml --output runs/loop
  actprm demo --output runs/demo
  actprm <verb> --help
"""


class _Formatter(argparse.RawDescriptionHelpFormatter):
    pass


def _add_read_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--input", nargs="+", metavar="PATH", help="files, directories (recursive) or globs")
    p.add_argument("--format", choices=["auto", "canonical", "processbench", "activeprm", "trl", "rollout"],
                   help="input format (default: auto, from the columns)")
    p.add_argument("--step-separator", dest="step_separator",
                   help="splits a rollout response into steps (default: a blank line)")
    p.add_argument("--max-problem-chars", dest="max_problem_chars", type=int, metavar="N")
    p.add_argument("--max-step-chars", dest="max_step_chars", type=int, metavar="N")
    p.add_argument("--batch-rows", dest="batch_rows", type=int, metavar="N", help="rows read per batch")


def _add_output_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--output", metavar="DIR", help="output directory")
    p.add_argument("--overwrite", action="store_true", default=argparse.SUPPRESS,
                   help="replace the tables an earlier run left in --output")
    p.add_argument("--rows-per-shard", dest="rows_per_shard", type=int, metavar="N")


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="YAML", help="YAML with the same keys as the flags; flags win")
    p.add_argument("--no-progress", dest="no_progress", action="store_true", default=argparse.SUPPRESS,
                   help="no progress bar")


def _overrides(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    return {k: v for k, v in vars(args).items() if k in cls.model_fields}


def _config(args: argparse.Namespace, name: str) -> Any:
    """The verb's config, class `name` of actprm.config: defaults < --config YAML < flags."""
    from actprm import config

    cls = getattr(config, name)
    return config.load_config(cls, getattr(args, "config", None), _overrides(args, cls))


def _run_job(args: argparse.Namespace, cfg: Any, job: str | None, recipe: str | None = None) -> Any:
    """Run `pipelines.<recipe>.run` on Ray when `recipe` is given, else `job` ("module:function") in-process."""
    from actprm import provenance

    progress = not getattr(args, "no_progress", False)
    with provenance.job(args.verb, cfg):  # every Parquet file the job writes records it
        if recipe:
            module = importlib.import_module(f"pipelines.{recipe}")
            return module.run(cfg, address=getattr(args, "address", None), progress=progress)
        assert job is not None, "a verb without a recipe needs an in-process job"
        module_name, function = job.split(":")
        return getattr(importlib.import_module(module_name), function)(cfg, progress=progress)


# ------------------------------------------------------------------------ verbs


def cmd_generate(args: argparse.Namespace) -> int:
    print(_run_job(args, _config(args, "GenerateConfig"), "actprm.generate:run_generate").summary_line())
    return 0


def _parser_generate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "generate", formatter_class=_Formatter, argument_default=argparse.SUPPRESS,
        help="synthetic trajectories of a verifiable world, with exact step labels",
        description="Write N trajectories of a verifiable world as Parquet shards (trajectories schema) with "
                    "the true first_error_step, final_answer_correct and reference_answer. World arith: "
                    "word problems solved one `a op b = c` step at a time, with mistakes of three kinds "
                    "(wrong result, wrong carried value, wrong operation); parameters in "
                    "configs/worlds/arith.yaml. Row i depends only on (seed, split, i).",
        epilog="examples:\n"
               "  actprm generate --world arith --n 100000 --output out/world\n"
               "  actprm generate --world arith --n 2000 --eval-set --output out/world-eval\n"
               "  actprm generate --n 1000000 --seed 1 --shard-rows 250000 --output out/pool\n"
               "  actprm generate --world-config my_arith.yaml --n 1000 --output out/custom\n")
    p.add_argument("--world", choices=["arith"], help="which world (default: arith)")
    p.add_argument("--world-config", dest="world_config", metavar="YAML",
                   help="world parameters (default: the built-in ones = configs/worlds/arith.yaml)")
    p.add_argument("--n", type=int, metavar="N", help="trajectories to write")
    p.add_argument("--seed", type=int, help="default: 0")
    p.add_argument("--eval-set", dest="eval_set", action="store_true",
                   help="a held-out set, about half with an error (like ProcessBench)")
    p.add_argument("--output", metavar="DIR", help="output directory (must be empty, or --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="replace what DIR holds")
    p.add_argument("--shard-rows", dest="shard_rows", type=int, metavar="R", help="rows per shard (default: 100000)")
    _add_common(p)
    p.set_defaults(handler=cmd_generate)


def cmd_validate(args: argparse.Namespace) -> int:
    recipe = "validate" if getattr(args, "ray", False) else None
    print(_run_job(args, _config(args, "ValidateConfig"), "actprm.validate:run_validate", recipe).summary_line())
    return 0


def _parser_validate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "validate", formatter_class=_Formatter, argument_default=argparse.SUPPRESS,
        help="check a corpus; write valid rows and error rows",
        description="Read a corpus in any supported format (Parquet, JSONL, ProcessBench JSON, ActivePRM, "
                    "TRL stepwise, raw rollouts), write the valid rows as canonical Parquet under "
                    "OUTPUT/valid/ and every bad row with its reason under OUTPUT/errors/.",
        epilog="examples:\n"
               "  actprm validate --input ../shared/data/processbench/ --output out/checked\n"
               "  actprm validate --input 'rollouts/*.jsonl' --format rollout --output out/checked\n"
               "  actprm validate --config configs/validate.yaml --output out/checked --overwrite\n"
               "  actprm validate --ray --input corpus/ --output out/checked      # the Ray recipe\n")
    _add_read_flags(p)
    _add_output_flags(p)
    _add_common(p)
    p.add_argument("--ray", action="store_true", help="run the Ray recipe pipelines/validate.py")
    p.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else a local Ray)")
    p.set_defaults(handler=cmd_validate)


def cmd_init_model(args: argparse.Namespace) -> int:
    from actprm.io.writers import check_output_dir
    from actprm.model import count_parameters, from_backbone, init_model

    cfg = _config(args, "InitModelConfig")
    if not cfg.output:
        raise UserError("no output: pass --output DIR")
    out = check_output_dir(cfg.output, cfg.overwrite)
    try:
        if cfg.backbone:
            model, tokenizer = from_backbone(cfg.backbone, n_heads=cfg.n_heads, seed=cfg.seed,
                                             step_features=cfg.step_features)
        else:
            model, tokenizer = init_model(cfg.preset, n_heads=cfg.n_heads, seed=cfg.seed,
                                          step_features=cfg.step_features)
    except (OSError, ValueError) as exc:  # no such backbone / not a model / features it cannot give
        raise UserError(f"init-model: {str(exc).splitlines()[0]}") from None
    model.save_pretrained(out, tokenizer=tokenizer)
    source = f"backbone {cfg.backbone}" if cfg.backbone else f"preset {cfg.preset}"
    features = f", step features {'+'.join(cfg.step_features)}" if cfg.step_features else ""
    print(f"init-model: {source}, {count_parameters(model.backbone) / 1e6:.2f}M backbone parameters, "
          f"{cfg.n_heads} heads{features}, max length {model.max_length}, seed {cfg.seed} -> {out}")
    return 0


def _parser_init_model(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "init-model", formatter_class=_Formatter, argument_default=argparse.SUPPRESS,
        help="create an ensemble PRM: a preset (random init) or a pretrained backbone, with fresh heads",
        description="A Qwen2-shaped backbone (random init, seeded) with K heads and the committed tokenizer, "
                    "saved as safetensors + config + tokenizer. Presets: tiny (seconds on a CPU), small "
                    "(hidden 512, for throughput measurements), qwen2-0.5b (Qwen2-0.5B shape, for GPUs). "
                    "--backbone puts K seeded heads on a pretrained LM instead (a directory or a hub name; "
                    "the step separator is added to its tokenizer). --step-features lm_logprob: the heads "
                    "also read the min and mean log-prob the LM gives each step's tokens (needs tied "
                    "embeddings; the shipped PRM has it).",
        epilog="examples:\n"
               "  actprm init-model --preset tiny --output models/tiny\n"
               "  actprm init-model --preset small --n-heads 32 --seed 1 --output models/small-k32\n"
               "  actprm init-model --backbone Qwen/Qwen2.5-Math-7B-Instruct --output models/qwen-prm\n"
               "  actprm init-model --backbone PATH/TO/LM --step-features lm_logprob --output models/prm\n")
    p.add_argument("--preset", choices=["tiny", "world", "small", "qwen2-0.5b"],
                   help="model shape (default: tiny; world: the shipped backbone's shape)")
    p.add_argument("--backbone", metavar="DIR|NAME", help="a pretrained backbone instead of a preset")
    p.add_argument("--step-features", dest="step_features", nargs="*", choices=["lm_logprob"],
                   help="per-step features the heads read besides the separator's hidden state")
    p.add_argument("--n-heads", dest="n_heads", type=int, metavar="K", help="ensemble heads (default: 8)")
    p.add_argument("--seed", type=int, help="initialisation seed (default: 0)")
    p.add_argument("--output", metavar="DIR", help="where to save the model")
    p.add_argument("--overwrite", action="store_true", help="write into a non-empty DIR")
    p.add_argument("--config", metavar="YAML", help="YAML with the same keys as the flags; flags win")
    p.set_defaults(handler=cmd_init_model)


def cmd_score(args: argparse.Namespace) -> int:
    print(_run_job(args, _config(args, "ScoreConfig"), "actprm.score:run_score").summary_line())
    return 0


def _parser_score(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "score", formatter_class=_Formatter, argument_default=argparse.SUPPRESS,
        help="score every step with the ensemble PRM; uncertainty and ActPRM selection",
        description="Validate and score a corpus in-process (no Ray): per step the ensemble mean and spread, "
                    "the predicted earliest error, the acquisition score, and whether ActPRM sends the "
                    "trajectory to the judge. Writes OUTPUT/scored/, OUTPUT/errors/, OUTPUT/summary.json.",
        epilog="examples:\n"
               "  actprm score --input out/checked/valid --output out/scored --model models/tiny\n"
               "  actprm score --input corpus/ --output out/scored --model models/tiny --batch-tokens 32768\n"
               "  actprm score --input corpus/ --output out/top100 --model models/tiny \\\n"
               "      --selection budget --budget 100 --acquisition bald\n"
               "  actprm score --config configs/score.yaml --input corpus/ --output out/scored\n"
               "  actprm score --scorer implicit --model runs/implicit --input corpus/ --output out/implicit\n")
    _add_read_flags(p)
    _add_output_flags(p)
    _add_common(p)
    _add_scoring_flags(p)
    p.add_argument("--selection", choices=["threshold", "budget"],
                   help="threshold = the ActPRM rule (default); budget = top-k by acquisition")
    p.add_argument("--budget", type=int, metavar="N", help="rows to select with --selection budget")
    p.set_defaults(handler=cmd_score)


def _add_scoring_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", metavar="DIR", help="PRM directory (default: the shipped world PRM)")
    p.add_argument("--batch-tokens", dest="batch_tokens", type=int, metavar="N",
                   help="padded tokens per micro-batch (default: 2048 on CPU, 32768 on CUDA)")
    p.add_argument("--max-length", dest="max_length", type=int, metavar="N",
                   help="tokens per trajectory (default: the model's)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], help="default: cuda when available")
    p.add_argument("--threads", type=int, metavar="N", help="torch CPU threads")
    p.add_argument("--delta-pred", dest="delta_pred", type=float, metavar="X", help="default: 0.95")
    p.add_argument("--delta-std", dest="delta_std", type=float, metavar="X", help="default: 0.005")
    p.add_argument("--acquisition", choices=["entropy", "bald", "variance", "margin", "random"])
    p.add_argument("--reduction", choices=["max", "mean"], help="over steps up to the predicted error")
    p.add_argument("--seed", type=int, help="seed of the random acquisition")
    p.add_argument("--target-rate", dest="target_rate", type=float, metavar="R",
                   help="choose delta_pred/delta_std on a sample so that about this share (0..1) is selected; "
                        "the chosen values are printed and in summary.json")
    p.add_argument("--calibration-sample", dest="calibration_sample", type=int, metavar="N",
                   help="rows scored to choose them (default: 1000; estimate uses its --sample)")
    _add_scorer_flags(p)


def _add_implicit_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--beta", type=float, metavar="X",
                   help="implicit PRM: beta of the log-ratios (default: the checkpoint's, else 0.05)")
    p.add_argument("--reference", metavar="DIR|none",
                   help="implicit PRM: the frozen reference LM (default: the checkpoint's, else the model "
                        "itself; none: no reference)")


def _add_scorer_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--scorer", choices=["ensemble", "implicit"],
                   help="ensemble: the heads (default); implicit: log-ratios of a causal LM (actprm.implicit; "
                        "--model default: the shipped backbone)")
    p.add_argument("--step-prob", dest="step_prob", choices=["value", "reward"],
                   help="implicit: step_mean is sigmoid(q_k) (value, default) or sigmoid(r_k) (reward)")
    _add_implicit_flags(p)


def cmd_filter(args: argparse.Namespace) -> int:
    print(_run_job(args, _config(args, "FilterConfig"), None, "score_filter").summary_line())
    return 0


def _parser_filter(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "filter", formatter_class=_Formatter, argument_default=argparse.SUPPRESS,
        help="score a corpus on Ray (actor pool), select the uncertain; streams, resumes",
        description="The corpus-scale score job (pipelines/score_filter.py): read and validate on Ray, score "
                    "every step in a pool of PRM actors (one GPU each when there are GPUs), apply the ActPRM "
                    "rule. Writes OUTPUT/scored/, OUTPUT/selected/ (the rows to send to the judge), "
                    "OUTPUT/errors/ (bad rows, duplicate ids, unreadable files), OUTPUT/summary.json. Rerun "
                    "with the same OUTPUT to resume a killed job: finished input files are skipped, none is "
                    "scored twice. No --address: a private local Ray; --address auto: the local `ray start` "
                    "cluster; --address ray://HOST:10001 or RAY_ADDRESS: that cluster.",
        epilog="examples:\n"
               "  actprm filter --input corpus/ --output out/filtered\n"
               "  actprm filter --input '/shared/rollouts/*.parquet' --output /shared/filtered --address auto\n"
               "  actprm filter --config configs/score_filter.yaml --input corpus/ --output out/f --actors 4\n"
               "  ray job submit --working-dir . -- python -m pipelines.score_filter --input /data/c --output /data/f\n")
    _add_read_flags(p)
    _add_output_flags(p)
    _add_common(p)
    _add_scoring_flags(p)
    p.add_argument("--actors", type=int, metavar="N", help="scoring actors (default: GPUs, else CPUs)")
    p.add_argument("--cpus-per-actor", dest="cpus_per_actor", type=float, metavar="N",
                   help="CPUs per actor, and its torch threads on CPU (default: 1 with GPUs, "
                        "else (CPUs - 1) / actors, one thread each)")
    hygiene = p.add_argument_group("hygiene (removed rows go to errors with their reason)")
    hygiene.add_argument("--no-dedup", dest="dedup", action="store_false",
                         help="keep rows whose normalised problem and steps repeat an earlier row's")
    hygiene.add_argument("--near-dedup", dest="near_dedup", action="store_true",
                         help="drop rows whose problem nearly repeats an earlier, different problem (MinHash)")
    hygiene.add_argument("--near-dedup-threshold", dest="near_dedup_threshold", type=float, metavar="J",
                         help="Jaccard of character 5-grams (default: 0.9)")
    hygiene.add_argument("--decontaminate", nargs="+", metavar="PATH",
                         help="evaluation sets whose problems are dropped (default: ProcessBench when present)")
    hygiene.add_argument("--no-decontaminate", dest="decontaminate", action="store_const", const=[],
                         help="drop no evaluation problems")
    hygiene.add_argument("--decontaminate-threshold", dest="decontaminate_threshold", type=float, metavar="J",
                         help="near match to an evaluation problem (default: 0.8; 1: exact only)")
    p.add_argument("--address", metavar="ADDR", help="Ray cluster: auto, ray://HOST:PORT (default: a local Ray)")
    p.set_defaults(handler=cmd_filter)


def cmd_annotate(args: argparse.Namespace) -> int:
    recipe = "annotate" if getattr(args, "ray", False) else None
    print(_run_job(args, _config(args, "AnnotateConfig"), "actprm.annotate:run_annotate", recipe).summary_line())
    return 0


def _add_judge_flags(p: argparse.ArgumentParser) -> None:
    """The annotator's flags (backend, samples, endpoint, limits, budget, verifier), shared by annotate and judge-check."""
    p.add_argument("--backend", metavar="NAME", help="annotator backend: verifier (default), openai or rollout")
    p.add_argument("--samples", type=int, metavar="N", help="answers per row, majority vote (default: 1)")
    judge = p.add_argument_group("openai backend")
    judge.add_argument("--base-url", dest="base_url", metavar="URL", help="e.g. http://localhost:8000/v1")
    judge.add_argument("--judge-model", dest="judge_model", metavar="NAME", help="model name the endpoint serves")
    judge.add_argument("--api-key-env", dest="api_key_env", metavar="VAR",
                       help="environment variable with the API key (default: OPENAI_API_KEY)")
    judge.add_argument("--concurrency", type=int, metavar="N", help="requests in flight at most (default: 64)")
    judge.add_argument("--requests-per-minute", dest="requests_per_minute", type=int, metavar="N")
    judge.add_argument("--tokens-per-minute", dest="tokens_per_minute", type=int, metavar="N")
    judge.add_argument("--timeout", dest="timeout_s", type=float, metavar="S", help="per request (default: 600)")
    judge.add_argument("--max-attempts", dest="max_attempts", type=int, metavar="N",
                       help="attempts per request (default: 6)")
    judge.add_argument("--max-tokens", dest="max_tokens", type=int, metavar="N", help="completion limit")
    judge.add_argument("--temperature", type=float, metavar="T", help="default: 0.6")
    judge.add_argument("--cache", metavar="PATH", help="answer cache (default: OUTPUT/judge_cache.sqlite)")
    judge.add_argument("--price-in", dest="price_in", type=float, metavar="USD_PER_MTOK",
                       help="USD per million prompt tokens (cost_usd)")
    judge.add_argument("--price-out", dest="price_out", type=float, metavar="USD_PER_MTOK",
                       help="USD per million completion tokens")
    judge.add_argument("--no-raw-output", dest="raw_output", action="store_false",
                       help="do not keep the judge's answer text in the annotations")
    judge.add_argument("--max-spend", dest="max_spend", type=float, metavar="USD",
                       help="hard stop: no request is sent once its worst case (prompt + max_tokens, else "
                            "mean_output_tokens, at the prices) would take the labels' cost past USD; the rest "
                            "fail `budget exhausted`; a rerun with more continues from the cache")
    judge.add_argument("--max-calls", dest="max_calls", type=int, metavar="N",
                       help="hard stop after N paid judge requests (answers from the cache count)")
    verifier = p.add_argument_group("verifier backend")
    verifier.add_argument("--wrong-rate", dest="wrong_rate", type=float, metavar="X",
                          help="share of wrong answers (default: 0.18)")
    verifier.add_argument("--refusal-rate", dest="refusal_rate", type=float, metavar="X",
                          help="share of refused answers (default: 0)")
    verifier.add_argument("--seed", type=int, help="seed of the verifier's answers (default: 0)")
    rollout = p.add_argument_group("rollout backend (also uses --base-url, --temperature, --max-tokens, the limits)")
    rollout.add_argument("--rollouts", type=int, metavar="K", help="completions per step prefix (default: 8)")
    rollout.add_argument("--prover", choices=["local", "endpoint"],
                         help="local: in-process transformers LM (default); endpoint: OpenAI-compatible completions")
    rollout.add_argument("--prover-model", dest="prover_model", metavar="DIR|NAME",
                         help="local: LM directory (default: the shipped world backbone); endpoint: served name")
    rollout.add_argument("--rollout-threshold", dest="rollout_threshold", type=float, metavar="Q",
                         help="a step is wrong iff its value <= Q (default: 0)")
    rollout.add_argument("--rollout-labels", dest="rollout_labels", choices=["hard", "soft"],
                         help="train on the earliest error (hard, default) or on the values (soft)")
    rollout.add_argument("--no-stop-at-error", dest="stop_at_error", action="store_false",
                         help="roll out every prefix, also after the earliest error")
    rollout.add_argument("--prover-threads", dest="prover_threads", type=int, metavar="N", help="local: torch threads")


def _parser_annotate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "annotate", formatter_class=_Formatter, argument_default=argparse.SUPPRESS,
        help="label trajectories with an annotator: a judge model over an OpenAI-compatible endpoint, or the verifier",
        description="Validate a corpus (any trajectories table, e.g. score's OUTPUT/scored/; "
                    "extra columns are ignored) and label every valid row: the earliest wrong step, -1 if none, "
                    "or a failed row with its reason. Writes OUTPUT/annotations/, OUTPUT/errors/ (invalid input "
                    "rows), OUTPUT/summary.json.\n\n"
                    "--backend openai: a judge model behind any OpenAI-compatible endpoint (vllm serve, SGLang, "
                    "hosted APIs), asked for the earliest wrong paragraph in \\boxed{}. Every answer is cached "
                    "in OUTPUT/judge_cache.sqlite (or --cache) as it arrives: rerunning into the same OUTPUT, "
                    "e.g. after a kill, resumes and never pays twice. The API key is read from the environment "
                    "variable --api-key-env names (default OPENAI_API_KEY) and is written nowhere.\n\n"
                    "--backend verifier (default): answers from each row's first_error_step, wrong with "
                    "probability --wrong-rate (F1 = 1 - rate; default 0.18 ~ QwQ-32B), refused with "
                    "--refusal-rate, seeded per row. A rerun into the same OUTPUT replaces an earlier annotate "
                    "run, no --overwrite needed.\n\n"
                    "--ray: the Ray recipe pipelines/annotate.py, --actors annotators whose requests share one "
                    "set of limits (--concurrency, --requests-per-minute, --tokens-per-minute hold for the whole "
                    "job) and whose answers go to per-actor cache segments, merged into the cache by key.",
        epilog="examples:\n"
               "  actprm annotate --backend openai --base-url http://localhost:8000/v1 --judge-model Qwen/QwQ-32B \\\n"
               "      --input out/scored/scored --output out/ann --concurrency 64\n"
               "  OPENAI_API_KEY=... actprm annotate --config configs/judge/openai.yaml --input out/scored/scored \\\n"
               "      --output out/ann --samples 3 --price-in 0.4 --price-out 1.6\n"
               "  actprm annotate --config configs/judge/vllm.yaml --input corpus/ --output out/ann --cache judge.sqlite\n"
               "  actprm annotate --backend verifier --input out/scored/scored --output out/annotated\n"
               "  actprm annotate --input corpus/ --output out/ann --wrong-rate 0.3 --samples 5 --seed 1\n"
               "  actprm annotate --ray --actors 4 --config configs/judge/vllm.yaml --input corpus/ --output out/ann\n"
               "  actprm annotate --config configs/judge/openai.yaml --input sel/ --output out/ann --max-spend 50\n"
               "  actprm annotate --config configs/judge/rollout.yaml --input out/world --output out/ro --rollouts 4\n"
               "  actprm annotate --backend rollout --prover endpoint --base-url http://localhost:8000/v1 \\\n"
               "      --prover-model Qwen/Qwen2.5-Math-7B-Instruct --input sel/ --output out/ro --rollout-labels soft\n")
    _add_read_flags(p)
    _add_output_flags(p)
    _add_common(p)
    p.add_argument("--ray", action="store_true", help="run the Ray recipe pipelines/annotate.py")
    p.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else a local Ray)")
    p.add_argument("--actors", type=int, metavar="N", help="--ray: annotator actors, one CPU each (default: 2)")
    _add_judge_flags(p)
    p.set_defaults(handler=cmd_annotate)


def cmd_evaluate(args: argparse.Namespace) -> int:
    result = _run_job(args, _config(args, "EvaluateConfig"), "actprm.evaluate:run_evaluate")
    print(result.table())
    print(result.summary_line())
    return 0


def _parser_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate", formatter_class=_Formatter, argument_default=argparse.SUPPRESS,
        help="ProcessBench F1 (the official metric), step AUROC and ECE of a PRM on labelled subsets",
        description="Score labelled subsets with a PRM and compute ProcessBench's metric exactly as the official "
                    "script does: per subset, error_acc (items with an error whose earliest error is predicted "
                    "exactly), correct_acc (error-free items predicted -1) and their harmonic mean F1; mean_f1 "
                    "is the unweighted mean over subsets. The prediction is the first step whose ensemble mean "
                    "is below --threshold (default 0.5), else -1; --sweep-subset picks the threshold (0.01..0.99) "
                    "that maximises one subset's F1 and applies it to all, as ActivePRM does. Also step AUROC "
                    "and ECE against ActPRM's step labels. Each --data path is one subset, named by its file "
                    "stem or directory name, in any input format; rows without a label are skipped and "
                    "counted. Writes OUTPUT/metrics.json and OUTPUT/predictions.parquet (every figure can be "
                    "recomputed from it).",
        epilog="examples:\n"
               "  actprm evaluate --data ../shared/data/processbench/*.json --output out/eval\n"
               "  actprm evaluate --data out/world-eval --model runs/round1/model --output out/eval\n"
               "  actprm evaluate --data ../shared/data/processbench/*.json --sweep-subset gsm8k --output out/eval\n"
               "  actprm evaluate --config configs/evaluate.yaml --output out/eval --overwrite\n")
    p.add_argument("--data", nargs="+", metavar="PATH", help="one file or directory per subset (a glob: one per match)")
    p.add_argument("--model", metavar="DIR", help="PRM directory (default: the shipped world PRM)")
    p.add_argument("--output", metavar="DIR", help="output directory")
    p.add_argument("--overwrite", action="store_true", help="replace metrics.json/predictions.parquet in --output")
    p.add_argument("--threshold", type=float, metavar="X", help="a step is wrong iff its mean < X (default: 0.5)")
    p.add_argument("--sweep-subset", dest="sweep_subset", metavar="NAME",
                   help="pick the threshold maximising this subset's F1 (ties: closest to 0.5)")
    p.add_argument("--format", choices=["auto", "canonical", "processbench", "activeprm", "trl", "rollout"],
                   help="input format (default: auto, from the columns)")
    p.add_argument("--batch-rows", dest="batch_rows", type=int, metavar="N", help="rows read per batch")
    p.add_argument("--batch-tokens", dest="batch_tokens", type=int, metavar="N",
                   help="padded tokens per micro-batch (default: 2048 on CPU, 32768 on CUDA)")
    p.add_argument("--max-length", dest="max_length", type=int, metavar="N",
                   help="tokens per trajectory (default: the model's)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], help="default: cuda when available")
    p.add_argument("--threads", type=int, metavar="N", help="torch CPU threads")
    _add_scorer_flags(p)
    _add_common(p)
    p.set_defaults(handler=cmd_evaluate)


def cmd_train(args: argparse.Namespace) -> int:
    cfg = _config(args, "TrainConfig")
    recipe = "train" if cfg.workers > 1 else None
    print(_run_job(args, cfg, "actprm.train:run_train", recipe).summary_line())
    return 0


def _parser_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train", formatter_class=_Formatter, argument_default=argparse.SUPPRESS,
        help="one PRM training round with the ActPRM objective",
        description="Join trajectories with their annotations by id (failed annotations are skipped and "
                    "counted; ground-truth columns of the corpus are never used), then train one round from "
                    "a checkpoint (default: the shipped PRM) with the ActPRM loss: BCE per head at each "
                    "labelled step, steps after the earliest error untrained, a Bernoulli mask per (head, "
                    "trajectory), an anchor on the heads. Writes a new checkpoint with its optimizer state, "
                    "so the next round continues. --workers N > 1 runs under Ray Train (pipelines/train.py).",
        epilog="examples:\n"
               "  actprm train --trajectories out/world --annotations out/ann/annotations --output runs/r1\n"
               "  actprm train --labelled labelled/ --model runs/r1 --output runs/r2\n"
               "  actprm train --config configs/train.yaml --backbone frozen --lr 1e-3 --output runs/heads\n"
               "  actprm train --workers 2 --trajectories D --annotations A --output runs/ddp   # Ray Train DDP\n"
               "  actprm train --objective implicit-ce --trajectories out/world --output runs/implicit  # outcomes\n")
    p.add_argument("--trajectories", nargs="+", metavar="PATH", help="trajectories, any supported format")
    p.add_argument("--annotations", nargs="+", metavar="PATH", help="annotations tables (actprm annotate)")
    p.add_argument("--labelled", nargs="+", metavar="PATH", help="a labelled table instead")
    p.add_argument("--model", metavar="DIR", help="checkpoint to start from (default: the shipped PRM)")
    p.add_argument("--output", metavar="DIR", help="the new checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace DIR")
    p.add_argument("--backbone", choices=["full", "frozen", "top"], help="what of the backbone trains (default full)")
    p.add_argument("--top-layers", dest="top_layers", type=int, metavar="N")
    p.add_argument("--lr", type=float, metavar="X")
    p.add_argument("--head-lr", dest="head_lr", type=float, metavar="X")
    p.add_argument("--epochs", type=int, metavar="N")
    p.add_argument("--batch-size", dest="batch_size", type=int, metavar="N", help="trajectories per micro-batch")
    p.add_argument("--grad-accum", dest="grad_accum", type=int, metavar="N")
    p.add_argument("--learning-probability", dest="learning_probability", type=float, metavar="P")
    p.add_argument("--anchor-lambda", dest="anchor_lambda", type=float, metavar="X")
    p.add_argument("--label-weight", dest="label_weight", metavar="W|agreement",
                   help="weight of the annotation labels: a number (judge-check suggests one) or 'agreement'")
    p.add_argument("--seed", type=int)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"])
    p.add_argument("--threads", type=int, metavar="N")
    p.add_argument("--workers", type=int, metavar="N", help="Ray Train workers (default 1: in-process)")
    p.add_argument("--address", help="Ray cluster address for --workers > 1")
    p.add_argument("--objective", choices=["actprm", "implicit-ce", "implicit-dpo"],
                   help="actprm: the heads at labelled steps (default); implicit-ce / implicit-dpo: an implicit PRM "
                        "from response-level labels only (--trajectories alone: the outcome checker)")
    _add_implicit_flags(p)
    _add_common(p)
    p.set_defaults(handler=cmd_train)


def cmd_loop(args: argparse.Namespace) -> int:
    print(_run_job(args, _config(args, "LoopConfig"), None, "active_loop").summary_line())
    return 0


def _parser_loop(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "loop", formatter_class=_Formatter, argument_default=argparse.SUPPRESS,
        help="the active-learning loop: score, select, annotate, train, evaluate, round after round",
        description="The ActPRM loop on Ray (pipelines/active_loop.py). --mode rounds (pool-based): each round "
                    "scores the unlabelled pool with the current model, selects up to the round's budget "
                    "with --strategy, annotates (the judge settings under `judge:`, e.g. a configs/judge/*.yaml "
                    "path), trains one round from the last checkpoint and evaluates on --eval. --mode stream "
                    "(ActPRM's Algorithm 1): one pass over the corpus in chunks; each chunk is scored, its "
                    "uncertain rows annotated and trained on. Everything lives in the run directory (--output): "
                    "config.yaml, state.json, judge_cache.sqlite, labelled/round-NNN/, checkpoints/round-NNN/, "
                    "evals/, metrics.jsonl. A killed loop rerun into the same directory resumes from the last "
                    "completed step and pays no label twice; a rerun with more --rounds or a bigger budget "
                    "continues it. Training settings go under `train:` in the YAML.",
        epilog="examples:\n"
               "  actprm loop --config configs/loop/rounds.yaml --output runs/loop\n"
               "  actprm loop --config configs/loop/rounds.yaml --strategy random --output runs/loop-random\n"
               "  actprm loop --config configs/loop/stream.yaml --pool corpus/ --eval world-eval/ --output runs/s\n"
               "  actprm loop --config configs/loop/stream.yaml --target-rate 0.1 --output runs/s10\n"
               "  actprm loop --config configs/loop/rounds.yaml --output runs/loop --rounds 10   # continue a run\n"
               "  actprm loop --config configs/loop/rounds.yaml --label-budget 500 --dollar-budget 20 --output r\n")
    p.add_argument("--mode", choices=["rounds", "stream"])
    p.add_argument("--pool", nargs="+", metavar="PATH", help="the corpus to select from (any supported format)")
    p.add_argument("--eval", nargs="+", metavar="PATH", help="eval subsets, one file or directory each")
    p.add_argument("--output", metavar="DIR", help="the run directory (a rerun into it resumes)")
    p.add_argument("--overwrite", action="store_true", help="start the run directory over")
    p.add_argument("--model", metavar="DIR", help="checkpoint the first round starts from (default: the shipped PRM)")
    p.add_argument("--strategy", choices=["actprm", "random", "entropy", "bald", "full"])
    p.add_argument("--round-labels", dest="round_labels", nargs="+", type=int, metavar="N",
                   help="rounds: labels per round (the last repeats)")
    p.add_argument("--score-sample", dest="score_sample", type=int, metavar="N",
                   help="rounds: score N random unlabelled rows per round instead of all")
    p.add_argument("--chunk-rows", dest="chunk_rows", type=int, metavar="N", help="stream: rows per chunk")
    p.add_argument("--rounds", type=int, metavar="N", help="stop after N rounds (stream: chunks)")
    p.add_argument("--label-budget", dest="label_budget", type=int, metavar="N",
                   help="stop after N rows went to the annotator (exactly)")
    p.add_argument("--dollar-budget", dest="dollar_budget", type=float, metavar="USD",
                   help="stop before a round once the labels cost this much")
    p.add_argument("--target-rate", dest="target_rate", type=float, metavar="R",
                   help="strategy actprm: choose delta_pred/delta_std on the first round's (chunk's) scores so that "
                        "about this share (0..1) is uncertain, then hold them (stream: the rate then shows how the "
                        "model's uncertainty moves)")
    p.add_argument("--train-on", dest="train_on", choices=["all", "new"], help="rounds: every label so far (default) "
                   "or the round's own")
    p.add_argument("--eval-every", dest="eval_every", type=int, metavar="N", help="evaluate every N rounds")
    p.add_argument("--seed", type=int)
    p.add_argument("--actors", type=int, metavar="N", help="scoring actors (default: GPUs, else CPUs up to 4)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"])
    p.add_argument("--threads", type=int, metavar="N", help="torch threads of the driver (training)")
    p.add_argument("--address", metavar="ADDR", help="Ray cluster: auto, ray://HOST:PORT (default: a local Ray)")
    p.add_argument("--labels", choices=["annotator", "outcome"],
                   help="outcome: PRIME-style, response-level labels from the outcome checker (no judge call)")
    _add_scorer_flags(p)
    _add_common(p)
    p.set_defaults(handler=cmd_loop)


def cmd_demo(args: argparse.Namespace) -> int:
    result = _run_job(args, _config(args, "DemoConfig"), None, "demo")
    print(f"demo: report in {result.report}")
    print(result.summary_line())
    return 0


def _parser_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo", formatter_class=_Formatter, argument_default=argparse.SUPPRESS,
        help="the whole loop on the arithmetic world: ActPRM vs random selection, a report with plots",
        description="Generate a world pool and eval set, run a few rounds of ActPRM selection and of random "
                    "selection with the verifier annotator on a local Ray (pipelines/demo.py), and write "
                    "OUTPUT/report.md, the plots (f1_vs_labels.png, step_stats.png, selection_rate.png), "
                    "OUTPUT/metrics.jsonl (both strategies) and OUTPUT/model/ (the final ActPRM model). The runs "
                    "are in OUTPUT/runs/; a rerun resumes them. Settings: configs/demo.yaml.",
        epilog="examples:\n"
               "  actprm demo\n"
               "  actprm demo --output runs/demo --rows 3000 --rounds 4\n"
               "  actprm demo --config configs/demo.yaml --output /tmp/demo --overwrite\n")
    p.add_argument("--output", metavar="DIR", help="default: runs/demo")
    p.add_argument("--overwrite", action="store_true", help="start over")
    p.add_argument("--rows", type=int, metavar="N", help="pool trajectories (default: 3000)")
    p.add_argument("--eval-rows", dest="eval_rows", type=int, metavar="N", help="eval trajectories (default: 500)")
    p.add_argument("--rounds", type=int, metavar="N", help="rounds per strategy (default: 4)")
    p.add_argument("--round-labels", dest="round_labels", type=int, metavar="N", help="labels per round")
    p.add_argument("--seed", type=int)
    p.add_argument("--actors", type=int, metavar="N", help="scoring actors")
    p.add_argument("--threads", type=int, metavar="N", help="torch threads of the driver (training)")
    p.add_argument("--address", metavar="ADDR", help="Ray cluster (default: a local Ray)")
    _add_common(p)
    p.set_defaults(handler=cmd_demo)


def cmd_estimate(args: argparse.Namespace) -> int:
    result = _run_job(args, _config(args, "EstimateConfig"), "actprm.estimate:run_estimate")
    print(result.text())
    print(result.summary_line())
    return 0


def _parser_estimate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "estimate", formatter_class=_Formatter, argument_default=argparse.SUPPRESS,
        help="what labelling a corpus will cost: score a sample, project judge calls, tokens and dollars",
        description="Read and validate the corpus, score a uniform sample (--sample rows, by id hash) with the PRM, "
                    "measure the share the ActPRM rule selects and project for the whole corpus: rows sent to the "
                    "judge, requests, prompt tokens (the judge prompt's length / 4) and completion tokens "
                    "(samples x mean_output_tokens), and dollars at price_in/price_out, each with a Wilson "
                    "interval from the sample size. --config takes a judge YAML (configs/judge/*.yaml) for the "
                    "judge's settings; nothing is sent to the judge. Printed; with --output DIR also "
                    "DIR/estimate.json.",
        epilog="examples:\n"
               "  actprm estimate --input corpus/ --config configs/judge/openai.yaml\n"
               "  actprm estimate --input corpus/ --model runs/r3 --sample 5000 --output out/estimate\n"
               "  actprm estimate --input corpus/ --price-in 0.4 --price-out 1.6 --mean-output-tokens 2000\n"
               "  actprm estimate --input corpus/ --config configs/judge/vllm.yaml --target-rate 0.3\n")
    _add_read_flags(p)
    _add_common(p)
    _add_scoring_flags(p)
    p.add_argument("--output", metavar="DIR", help="write DIR/estimate.json")
    p.add_argument("--overwrite", action="store_true", help="replace DIR/estimate.json")
    p.add_argument("--sample", type=int, metavar="N", help="rows to score (default: 1000)")
    p.add_argument("--confidence", type=float, metavar="X", help="of the intervals (default: 0.95)")
    p.add_argument("--samples", type=int, metavar="N", help="judge answers per row (default: 1)")
    p.add_argument("--mean-output-tokens", dest="mean_output_tokens", type=int, metavar="N",
                   help="the judge's mean completion length (default: 4000)")
    p.add_argument("--price-in", dest="price_in", type=float, metavar="USD_PER_MTOK")
    p.add_argument("--price-out", dest="price_out", type=float, metavar="USD_PER_MTOK")
    p.set_defaults(handler=cmd_estimate)


def cmd_judge_check(args: argparse.Namespace) -> int:
    result = _run_job(args, _config(args, "JudgeCheckConfig"), "actprm.judge_check:run_judge_check")
    print(result.table())
    print(result.summary_line())
    return 0


def _parser_judge_check(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "judge-check", formatter_class=_Formatter, argument_default=argparse.SUPPRESS,
        help="the judge's label quality on ProcessBench before paying for a corpus: F1 and a label_weight",
        description="Label labelled subsets (ProcessBench's files, or any set with first_error_step) with the "
                    "configured judge (--config configs/judge/*.yaml; any backend, with its cache, limits and "
                    "--max-spend) and score its labels with ProcessBench's metric exactly as evaluate scores a "
                    "PRM: per subset error_acc, correct_acc, F1; mean F1 over subsets. A row the judge fails to "
                    "label counts as wrong. Also the share of exact labels, the label_weight to give this "
                    "judge's labels in a labelled table (ground truth 1.0). With --output DIR: "
                    "DIR/judge_check.json, DIR/annotations.parquet, DIR/judge_cache.sqlite (a rerun pays "
                    "nothing again).",
        epilog="examples:\n"
               "  actprm judge-check --config configs/judge/vllm.yaml --data ../shared/data/processbench/*.json "
               "--limit 100\n"
               "  OPENAI_API_KEY=... actprm judge-check --config configs/judge/openai.yaml --data pb/gsm8k.json "
               "--output out/jc --max-spend 5\n"
               "  actprm judge-check --backend verifier --wrong-rate 0.2 --data ../shared/data/processbench/*.json\n")
    p.add_argument("--data", nargs="+", metavar="PATH", help="one file or directory per subset (a glob: one per match)")
    p.add_argument("--limit", type=int, metavar="N", help="N labelled items of each subset, a uniform sample (by id hash)")
    p.add_argument("--output", metavar="DIR", help="judge_check.json, annotations.parquet and the answer cache")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier check in DIR")
    p.add_argument("--format", choices=["auto", "canonical", "processbench", "activeprm", "trl", "rollout"])
    _add_judge_flags(p)
    _add_common(p)
    p.set_defaults(handler=cmd_judge_check)


def cmd_inspect(args: argparse.Namespace) -> int:
    import json

    from actprm import provenance

    info = provenance.inspect(args.path)
    print(json.dumps(info, indent=2) if args.json else provenance.format_inspection(info))
    return 0


def _parser_inspect(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "inspect", formatter_class=_Formatter,
        help="a table's provenance (version, commit, config and model hashes, judge), schema and row count",
        description="Print what made a Parquet table: every file actprm writes records the actprm version, the "
                    "git commit, the job, the SHA-256 of its resolved config, the model directory and the "
                    "SHA-256 of its safetensors, and the judge, in its schema metadata. PATH is a file or a "
                    "directory of shards (each distinct record is shown with its file count, e.g. a resumed job "
                    "run with another config); also the schema and the row count (from the footers).",
        epilog="examples:\n"
               "  actprm inspect out/scored/scored\n"
               "  actprm inspect out/ann/annotations --json\n")
    p.add_argument("path", metavar="PATH", help="a Parquet file or a directory of them")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(handler=cmd_inspect)


def cmd_export(args: argparse.Namespace) -> int:
    from actprm.export import run_export

    cfg = _config(args, "ExportConfig")
    print(run_export(cfg.input, cfg.output, cfg.format, cfg.overwrite, cfg.input_format).summary_line())
    return 0


def _parser_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export", formatter_class=_Formatter, argument_default=argparse.SUPPRESS,
        help="labelled trajectories in the formats trainers read: TRL stepwise supervision, ActivePRM",
        description="Read any table with a first_error_step (trajectories: the world's, ProcessBench's) or a "
                    "label_first_error (a labelled table) and write it for a PRM trainer. Steps before the "
                    "earliest error are labelled correct, the earliest error wrong, later steps are dropped "
                    "(unlabelled).\n\n"
                    "--format trl: TRL's stepwise format (trl.experimental.prm): prompt, completions, labels "
                    "(list of bool), plus label_probs (soft labels, e.g. rollout values; TRL casts labels to int).\n"
                    "--format activeprm: ActivePRM's training format: question, steps, hard_labels (list of int).\n\n"
                    "OUTPUT is one Parquet file, or JSONL when it ends in .jsonl.",
        epilog="examples:\n"
               "  actprm export --format trl --input out/labelled --output out/train_trl.parquet\n"
               "  actprm export --format activeprm --input out/world --output out/world_activeprm.jsonl\n"
               "  actprm export --format trl --input ../shared/data/processbench/gsm8k.json --output gsm8k_trl.jsonl\n")
    p.add_argument("--format", choices=["trl", "activeprm"], help="output format (default: trl)")
    p.add_argument("--input", nargs="+", metavar="PATH", help="files, directories (recursive) or globs")
    p.add_argument("--input-format", dest="input_format",
                   choices=["auto", "canonical", "processbench", "activeprm", "trl", "rollout"],
                   help="input format (default: auto, from the columns)")
    p.add_argument("--output", metavar="PATH", help="output file (.parquet, or .jsonl)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    p.add_argument("--config", metavar="YAML", help="YAML with the same keys as the flags; flags win")
    p.set_defaults(handler=cmd_export)


VERBS: list[Callable[[argparse._SubParsersAction], None]] = [
    _parser_generate, _parser_validate, _parser_init_model, _parser_score, _parser_filter, _parser_annotate, _parser_train,
    _parser_evaluate, _parser_loop, _parser_demo, _parser_estimate, _parser_judge_check, _parser_inspect,
    _parser_export]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="actprm", formatter_class=_Formatter,
        description="actprm: train process reward models with active learning - score a corpus with an "
                    "ensemble PRM, send only the uncertain trajectories to a judge, fine-tune on the labels.",
        epilog=EPILOG)
    parser.add_argument("--version", action="version", version=f"actprm {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    for add in VERBS:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    # our own bars and one summary line: keep transformers' loading bars out of the output
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if "transformers" in sys.modules:  # imported before this call (a notebook, a test): the variable came too late
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    try:
        return args.handler(args)
    except UserError as exc:
        print(f"actprm: error: {redact(str(exc))}", file=sys.stderr)  # no secret in any line printed
        return UserError.exit_code
    except KeyboardInterrupt:
        print("actprm: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
