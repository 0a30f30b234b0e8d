"""Job settings: one pydantic model per job, built from shared pieces. The single source of every setting.

Defaults are here; a `--config` YAML overrides them; CLI flags override the YAML. YAML keys and flags are
the same words (`batch_tokens` ↔ `--batch-tokens`): the CLI generates every flag, its help (a field's
`description`) and its default from these models (docs/README.md, "The `actprm` command"). A job's docstring is
its `--help` description, `examples` its examples. Unknown keys and bad values are user errors (one line,
exit code 2), never a traceback.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from actprm import calibration, uncertainty
from actprm.errors import UserError
from actprm.io.formats import FORMATS
from actprm.schemas import Limits
from actprm.uncertainty import ACQUISITIONS, LOOP_STRATEGIES

FormatName = Literal[("auto", *FORMATS)]  # type: ignore[valid-type]
Acquisition = Literal[tuple(ACQUISITIONS)]  # type: ignore[valid-type]
Strategy = Literal[LOOP_STRATEGIES]  # type: ignore[valid-type]
Device = Literal["auto", "cpu", "cuda"]
DType = Literal["auto", "float32", "bfloat16"]
StepFeature = Literal["lm_logprob"]
MAX_BATCH_ROWS = 1_000_000  # rows per batch: more is a typo, not a setting


def cli(*aliases: str, const: dict[str, Any] | None = None) -> dict[str, Any]:
    """A field's extra flags: other names for it (`--timeout`), flags that set a constant (`--no-x: []`)."""
    return {"cli": {"aliases": list(aliases), "const": const or {}}}


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)
    #: example command lines of the job (its --help)
    examples: ClassVar[tuple[str, ...]] = ()


# ------------------------------------------------------------------ shared pieces


class ReadSettings(Config):
    """reading: how input is found and checked"""

    format: FormatName = Field("auto", description="input format (auto: from the columns)")  # type: ignore[valid-type]
    step_separator: str = Field("\n\n", description="splits a rollout's response into steps")
    max_problem_chars: int = Field(50_000, gt=0, description="a longer problem is an error row (too large)")
    max_step_chars: int = Field(20_000, gt=0, description="a longer step is an error row (too large)")
    max_steps: int = Field(1_000, gt=0, description="a trajectory with more steps is an error row (too large)")
    batch_rows: int = Field(2048, gt=0, le=MAX_BATCH_ROWS, description="rows read (and scored) per batch, at "
                            "most (a batch also stops at 8 MiB of text)")

    @property
    def limits(self) -> Limits:
        return Limits(self.max_problem_chars, self.max_step_chars, self.max_steps)


class OutputSettings(Config):
    """output"""

    output: str | None = Field(None, description="output directory")
    overwrite: bool = Field(False, description="replace the tables an earlier run left in --output")
    rows_per_shard: int = Field(100_000, gt=0, description="rows per Parquet shard")


class RaySettings(Config):
    """Ray"""

    address: str | None = Field(None, description="Ray cluster: auto (a `ray start` cluster), ray://HOST:PORT "
                                "(null: RAY_ADDRESS, else a private local Ray)")


class ImplicitSettings(Config):
    """the implicit PRM (--scorer implicit, --objective implicit-*)"""

    beta: float | None = Field(None, gt=0, description="implicit PRM: beta of the log-ratios (null: the "
                               "checkpoint's, else 0.05 as in PRIME)")
    reference: str | None = Field(None, description="implicit PRM: the frozen reference LM (null: the checkpoint's, "
                                  "else the model itself; 'none': no reference, a uniform one)")


class ScorerSettings(ImplicitSettings):
    """the scoring model"""

    model: str | None = Field(None, description="PRM directory (null: the shipped world PRM)")
    scorer: Literal["ensemble", "implicit"] = Field("ensemble", description="ensemble: the ActPRM heads; implicit: "
                                                    "log-ratios of a causal LM (--model default: the shipped backbone)")
    step_prob: Literal["value", "reward"] = Field("value", description="implicit: step_mean is sigmoid(q_k) "
                                                  "(value) or sigmoid(r_k) (reward)")
    batch_tokens: int | None = Field(None, gt=0, description="padded tokens per micro-batch (null: 2048 on CPU, "
                                     "32768 on CUDA)")
    max_length: int | None = Field(None, gt=0, description="tokens per trajectory (null: the model's maximum)")
    device: Device = Field("auto", description="auto: cuda when available")
    dtype: DType = Field("auto", description="the backbone's float type: auto is bfloat16 on a GPU or on a CPU with "
                         "AMX / AVX512-BF16, else float32 (the heads and step features stay float32; "
                         "docs/ensemble-and-rule.md, \"Precision\")")
    threads: int | None = Field(None, gt=0, description="torch CPU threads (null: torch's)")
    system_prompt: str | None = Field(None, description="system prompt of the scoring format (null: the PRM's own, "
                                      "stored in its prm_config.json; an imported PRM's is its source's)")

    def implicit_settings(self) -> dict[str, Any] | None:
        """The implicit scorer's settings (actprm.implicit.load_implicit keywords); None for the ensemble."""
        if self.scorer != "implicit":
            return None
        return {"beta": self.beta, "reference": self.reference, "step_prob": self.step_prob}


class RuleSettings(Config):
    """the ActPRM rule and acquisition (actprm.uncertainty)"""

    delta_pred: float = Field(uncertainty.DEFAULT_DELTA_PRED, gt=0.5, le=1.0, description=(
        "a step is certain iff its calibrated mean is >= this or <= 1 - this (a chance of being right, with a "
        "model trained by actprm), and its spread <= delta_std (docs/ensemble-and-rule.md \"The rule and its calibration\")"))
    delta_std: float = Field(calibration.DEFAULT_DELTA_STD_UNITS, ge=0.0, description=(
        "the largest spread (std over heads) of a certain step, in units of the model's spread_scale"))
    spread_scale: float | None = Field(None, gt=0.0, description=(
        "the unit of delta_std (null: the model's own, the heads' median spread on held-out labels; 0.0125 "
        "for a model no actprm round calibrated)"))
    decision_threshold: float | None = Field(None, gt=0.0, lt=1.0, description=(
        "a step is predicted wrong iff its mean is below it: the first error and the steps the rule reads "
        "(null: the model's own, chosen on held-out labels when training; 0.5 for a model without one)"))
    target_rate: float | None = Field(None, ge=0.0, le=1.0, description="choose delta_pred/delta_std so that about "
                                      "this share (0..1) is uncertain: on a sample of the corpus (score, filter), or "
                                      "on the first round's scores, then held (loop)")
    acquisition: Acquisition = Field("entropy", description="ranks rows for a budget: top-k, or the uncertain rows "  # type: ignore[valid-type]
                                     "when they are more than the budget")
    reduction: Literal["max", "mean"] = Field("max", description="of the per-step acquisition over the steps up "
                                              "to the predicted error")
    seed: int = Field(0, description="seeds the random acquisition, random selection and samples")


class EvalSettings(Config):
    """evaluation"""

    threshold: float = Field(0.5, ge=0.0, le=1.0, description="a step is wrong iff its mean is below it "
                             "(ProcessBench's 0.5)")


# ------------------------------------------------------------------ the judge


class JudgeConfig(Config):
    """the annotator (actprm.judge)"""

    backend: Literal["verifier", "openai", "rollout"] = Field(
        "verifier", description="verifier: ground truth with set error rates; openai: a judge model over an "
        "OpenAI-compatible endpoint; rollout: step values from a prover's completions")
    samples: int = Field(1, ge=1, description="answers per row, aggregated by majority vote")
    # verifier: ground truth with known imperfection
    seed: int = Field(0, description="seeds the verifier's wrong answers and refusals")
    # uniform wrong answers at rate w give ProcessBench F1 = 1 - w: 0.18 ~ QwQ-32B as a critic (0.816)
    wrong_rate: float = Field(0.18, ge=0.0, le=1.0, description="verifier: share of wrong answers")
    refusal_rate: float = Field(0.0, ge=0.0, le=1.0, description="verifier: share of refused answers")
    # openai: a judge model over an OpenAI-compatible chat-completions endpoint
    base_url: str | None = Field(None, description="e.g. http://localhost:8000/v1 (null: the client's default)")
    judge_model: str | None = Field(None, description="the model name the endpoint serves")
    api_key_env: str | None = Field("OPENAI_API_KEY", description="environment variable holding the API key")
    concurrency: int = Field(64, ge=1, description="requests in flight at most")
    requests_per_minute: int | None = Field(None, ge=1, description="request rate limit")
    tokens_per_minute: int | None = Field(None, ge=1, description="token rate limit, estimated before sending "
                                          "(prompt chars / 4 + output)")
    timeout_s: float = Field(600.0, gt=0, description="seconds per request, from its start to its whole answer (a "
                             "deadline, not a read timeout); reasoning models answer slowly",
                             json_schema_extra=cli("--timeout"))
    max_attempts: int = Field(6, ge=1, description="attempts per request, the first included")
    max_backoff_s: float = Field(60.0, gt=0, description="cap of the random exponential back-off")
    temperature: float | None = Field(0.6, ge=0.0, description="null: the server's default")
    top_p: float | None = Field(0.95, gt=0.0, le=1.0, description="null: the server's default")
    max_tokens: int | None = Field(None, ge=1, description="completion limit (null: the server's)")
    extra_body: dict[str, Any] | None = Field(None, description="extra request fields, e.g. chat_template_kwargs")
    use_n: bool = Field(True, description="samples > 1: one request with n (else one request per sample)")
    mean_output_tokens: int = Field(4000, ge=1, description="expected completion length (token budgets, estimates)")
    price_in: float = Field(0.0, ge=0.0, description="USD per million prompt tokens")
    price_out: float = Field(0.0, ge=0.0, description="USD per million completion tokens")
    cache: str | None = Field(None, description="answer cache (null: OUTPUT/judge_cache.sqlite)")
    raw_output: bool = Field(True, description="keep the judge's answer text in the annotations")
    max_answer_chars: int = Field(1_000_000, ge=1, description="an answer (reasoning included) longer than "
                                  "this is not kept: its sample fails `too large` (it is paid, so cached as such)")
    interrupt_grace_s: float = Field(30.0, ge=0, description="on Ctrl-C, seconds to wait for the requests in flight "
                                     "(their answers are cached) before exiting; a second Ctrl-C exits at once")
    # rollout: Math-Shepherd / PAV step values from a prover policy's completions (actprm.judge.rollout);
    # it shares the endpoint, limits, retries, temperature/top_p/max_tokens (null: 512), prices and cache above
    rollouts: int = Field(8, ge=1, description="rollout: completions per step prefix (k)")
    prover: Literal["local", "endpoint"] = Field("local", description="rollout: the prover in-process (transformers) "
                                                 "or behind an OpenAI-compatible completions endpoint (base_url)")
    prover_model: str | None = Field(None, description="rollout: local: a causal LM directory (null: the shipped "
                                     "world backbone); endpoint: the model name it serves")
    prover_prompt: str | None = Field(None, description="rollout: prompt template with {problem} and {prefix} "
                                      "(null: ChatML, the backbone's and Qwen's chat template)")
    prover_step_separator: str | None = Field(None, description="rollout: text after each step of the prefix "
                                              "(null: <extra_0> for the local prover, a blank line for an endpoint)")
    prover_stop: list[str] = Field(default_factory=list, description="rollout: stop strings of the completions")
    prover_batch: int = Field(256, ge=1, description="rollout, local: sequences generated together")
    prover_threads: int | None = Field(None, ge=1, description="rollout, local: torch threads")
    rollout_threshold: float = Field(0.0, ge=0.0, lt=1.0, description="rollout: a step is wrong iff its value "
                                     "Q <= this (0: no completion reaches the answer); the first such is the label")
    rollout_labels: Literal["hard", "soft"] = Field("hard", description="rollout: train on the earliest error (hard) "
                                                    "or on the values Q (soft, step_labels)")
    stop_at_error: bool = Field(True, description="rollout: no rollouts after the earliest error (their values null)")

    @model_validator(mode="before")
    @classmethod
    def _endpoint_means_openai(cls, data: Any) -> Any:
        """--judge-model or --base-url without --backend: the openai judge, not a verifier that ignores them."""
        if isinstance(data, dict) and "backend" not in data and (data.get("judge_model") or data.get("base_url")):
            return {**data, "backend": "openai"}
        return data


class SpendSettings(Config):
    """spend limits of a paid judge (actprm.judge.budget)"""

    max_spend: float | None = Field(None, ge=0, description="hard stop: no request is sent once its worst case "
                                    "(prompt + max_tokens, else mean_output_tokens, at the prices) would take the "
                                    "labels' cost past this many USD; the rest fail `budget exhausted`")
    max_calls: int | None = Field(None, ge=0, description="hard stop after this many paid judge requests")


def judge_settings(judge: str | JudgeConfig) -> JudgeConfig:
    """A JudgeConfig as is, or the judge settings of an annotate YAML (configs/judge/*.yaml)."""
    if isinstance(judge, JudgeConfig):
        return judge
    annotate = load_config(AnnotateConfig, judge)  # an unknown key there is a user error
    return JudgeConfig(**{k: getattr(annotate, k) for k in JudgeConfig.model_fields})


# ------------------------------------------------------------------ jobs


class GenerateConfig(Config):
    """Synthetic trajectories of a verifiable world, with exact step labels.

    Write N trajectories of a verifiable world as Parquet shards (trajectories schema) with the true
    first_error_step, final_answer_correct and reference_answer. World arith: word problems solved one
    `a op b = c` step at a time, with mistakes of three kinds (wrong result, wrong carried value, wrong
    operation); parameters in configs/worlds/arith.yaml. Row i depends only on (seed, split, i)."""

    examples = ("actprm generate --world arith --n 100000 --output out/world",
                "actprm generate --world arith --n 2000 --eval-set --output out/world-eval",
                "actprm generate --n 1000000 --seed 1 --shard-rows 250000 --output out/pool",
                "actprm generate --world-config my_arith.yaml --n 1000 --output out/custom")
    world: Literal["arith"] = Field("arith", description="which world")
    world_config: str | None = Field(None, description="YAML of world parameters (null: the built-in ones = "
                                     "configs/worlds/arith.yaml)")
    n: int | None = Field(None, gt=0, description="trajectories to write")
    seed: int = Field(0, description="the world's seed")
    eval_set: bool = Field(False, description="a held-out set, about half with an error (like ProcessBench)")
    output: str | None = Field(None, description="output directory (must be empty, or --overwrite)")
    overwrite: bool = Field(False, description="replace what the output directory holds")
    shard_rows: int = Field(100_000, gt=0, description="rows per shard")


class ValidateConfig(ReadSettings, OutputSettings, RaySettings):
    """Check a corpus in any supported format; valid rows and error rows as Parquet.

    Read a corpus in any supported format (Parquet, JSONL, ProcessBench JSON, ActivePRM, TRL stepwise, raw
    rollouts), write the valid rows as canonical Parquet under OUTPUT/valid/ and every bad row with its reason
    under OUTPUT/errors/."""

    examples = ("actprm validate --input ../shared/data/processbench/ --output out/checked",
                "actprm validate --input 'rollouts/*.jsonl' --format rollout --output out/checked",
                "actprm validate --config configs/validate.yaml --output out/checked --overwrite",
                "actprm validate --ray --input corpus/ --output out/checked      # on Ray, one task per file")
    input: list[str] = Field(default_factory=list, description="files, directories (recursive) or globs")
    ray: bool = Field(False, description="run on Ray, one task per input file")


class InitModelConfig(Config):
    """Create an ensemble PRM: a preset (random init) or a pretrained backbone, with fresh heads.

    A Qwen2-shaped backbone (random init, seeded) with K heads and the committed tokenizer, saved as
    safetensors + config + tokenizer. Presets: tiny (seconds on a CPU), world (the shipped backbone's shape),
    small (hidden 512, for throughput measurements), qwen2-0.5b (Qwen2-0.5B shape, for GPUs). --backbone puts K
    seeded heads on a pretrained LM instead (a directory or a hub name; the step separator is added to its
    tokenizer). --step-features lm_logprob: the heads also read the min and mean log-prob the LM gives each
    step's tokens (needs tied embeddings; the shipped PRM has it)."""

    examples = ("actprm init-model --preset tiny --output models/tiny",
                "actprm init-model --preset small --n-heads 32 --seed 1 --output models/small-k32",
                "actprm init-model --backbone Qwen/Qwen2.5-Math-7B-Instruct --output models/qwen-prm",
                "actprm init-model --backbone PATH/TO/LM --step-features lm_logprob --output models/prm")
    preset: Literal["tiny", "world", "small", "qwen2-0.5b"] = Field("tiny", description="model shape")
    backbone: str | None = Field(None, description="a pretrained backbone (directory or hub name) instead of a preset")
    step_features: list[StepFeature] = Field(default_factory=list, description="per-step features the heads read "
                                             "besides the separator's hidden state")
    n_heads: int = Field(8, gt=0, description="ensemble heads (K)")
    seed: int = Field(0, description="initialisation seed")
    output: str | None = Field(None, description="where to save the model")
    overwrite: bool = Field(False, description="write into a non-empty directory")


class ScoreConfig(ReadSettings, OutputSettings, ScorerSettings, RuleSettings):
    """Score every step with the ensemble PRM; uncertainty and ActPRM selection.

    Validate and score a corpus in-process (no Ray): per step the ensemble mean and spread, the predicted
    earliest error, the acquisition score, and whether ActPRM sends the trajectory to the judge. Writes
    OUTPUT/scored/, OUTPUT/errors/, OUTPUT/summary.json and OUTPUT/selection.png."""

    examples = ("actprm score --input out/checked/valid --output out/scored --model models/tiny",
                "actprm score --input corpus/ --output out/scored --model models/tiny --batch-tokens 32768",
                "actprm score --input corpus/ --output out/top100 --selection budget --budget 100 --acquisition bald",
                "actprm score --config configs/score.yaml --input corpus/ --output out/scored",
                "actprm score --scorer implicit --model runs/implicit --input corpus/ --output out/implicit")
    input: list[str] = Field(default_factory=list, description="files, directories (recursive) or globs")
    selection: Literal["threshold", "budget"] = Field("threshold", description="threshold: the ActPRM rule; "
                                                      "budget: the top --budget rows by acquisition")
    budget: int | None = Field(None, ge=0, description="rows to select with --selection budget")
    calibration_sample: int = Field(1000, gt=0, description="rows scored to choose the deltas for --target-rate")


class FilterConfig(ScoreConfig, RaySettings):
    """The same at corpus scale on Ray: actor pool, streaming, resumable; selected/ for the judge.

    The corpus-scale score job on Ray: read and validate in tasks, score every step in a pool of PRM actors
    (one GPU each when there are GPUs), apply the ActPRM rule. Writes OUTPUT/scored/, OUTPUT/selected/ (the rows
    to send to the judge), OUTPUT/errors/ (bad rows, duplicates, unreadable files), OUTPUT/summary.json. Rerun
    with the same OUTPUT to resume a killed job: finished input files are skipped, none is scored twice. Drops
    duplicates and benchmark problems first (docs/ray-clusters.md, "Data hygiene")."""

    examples = ("actprm filter --input corpus/ --output out/filtered",
                "actprm filter --input '/shared/rollouts/*.parquet' --output /shared/filtered --address auto",
                "actprm filter --config configs/filter.yaml --input corpus/ --output out/f --actors 4",
                "ray job submit --working-dir . -- python -m pipelines.filter --input /data/c --output /data/f")
    actors: int | None = Field(None, ge=1, description="scoring actors (null: one per GPU, else one per CPU)")
    cpus_per_actor: float | None = Field(None, gt=0, description="CPUs reserved per actor, and its torch threads "
                                         "on CPU (null: 1 with GPUs, else (CPUs - 1) / actors, one thread each)")
    batch_rows: int = Field(1024, gt=0, le=MAX_BATCH_ROWS, description="rows per batch sent to an actor")
    object_store_mb: int = Field(256, ge=80, description="object store of the local Ray filter starts, MiB: small, "
                                 "so the store pages each process maps stay few (docs/ray-clusters.md); a "
                                 "cluster (--address, RAY_ADDRESS) keeps its own")
    dedup: bool = Field(True, description="drop rows whose normalised problem and steps repeat an earlier row's")
    near_dedup: bool = Field(False, description="drop rows whose problem nearly repeats an earlier, different "
                             "problem (MinHash LSH)")
    near_dedup_threshold: float = Field(0.9, gt=0.0, le=1.0, description="Jaccard of character 5-grams")
    decontaminate: list[str] | None = Field(None, description="evaluation sets whose problems are dropped (null: "
                                            "ProcessBench when present)",
                                            json_schema_extra=cli(const={"--no-decontaminate": []}))
    decontaminate_threshold: float = Field(0.8, gt=0.0, le=1.0, description="near match to an evaluation "
                                           "problem (1.0: exact only)")


class AnnotateConfig(ReadSettings, OutputSettings, RaySettings, JudgeConfig, SpendSettings):
    """Label trajectories: a judge model over any OpenAI-compatible endpoint, the verifier, or rollouts.

    Validate a corpus (any trajectories table, e.g. score's OUTPUT/scored/) and label every valid row: the
    earliest wrong step, -1 if none, or a failed row with its reason. Writes OUTPUT/annotations/,
    OUTPUT/errors/, OUTPUT/summary.json. --backend openai: a judge model behind any OpenAI-compatible endpoint;
    every answer is cached (OUTPUT/judge_cache.sqlite or --cache) as it arrives, so a rerun resumes and never
    pays twice; the API key is read from --api-key-env and written nowhere. --backend verifier (the default):
    answers from each row's first_error_step with set error rates. --backend rollout: step values from a
    prover's completions. --ray: --actors annotators sharing one set of limits and one cache."""

    examples = ("actprm annotate --backend openai --base-url http://localhost:8000/v1 --judge-model Qwen/QwQ-32B "
                "--input out/scored/scored --output out/ann --concurrency 64",
                "OPENAI_API_KEY=... actprm annotate --config configs/judge/openai.yaml --input out/scored/scored "
                "--output out/ann --samples 3 --price-in 0.4 --price-out 1.6",
                "actprm annotate --backend verifier --input out/scored/scored --output out/annotated",
                "actprm annotate --input corpus/ --output out/ann --wrong-rate 0.3 --samples 5 --seed 1",
                "actprm annotate --ray --actors 4 --config configs/judge/vllm.yaml --input corpus/ --output out/ann",
                "actprm annotate --config configs/judge/openai.yaml --input sel/ --output out/ann --max-spend 50",
                "actprm annotate --config configs/judge/rollout.yaml --input out/world --output out/ro --rollouts 4")
    input: list[str] = Field(default_factory=list, description="files, directories (recursive) or globs")
    ray: bool = Field(False, description="run on Ray: --actors annotators, one set of limits for the whole job")
    actors: int = Field(2, ge=1, description="--ray: annotator actors, one CPU each")


class TrainConfig(ImplicitSettings, RaySettings):
    """One PRM training round from trajectories + annotations.

    Join trajectories with their annotations by id (failed annotations are skipped and counted; ground-truth
    columns of the corpus are never used), then train one round from a checkpoint (default: the shipped PRM)
    with the ActPRM loss: BCE per head at each labelled step, steps after the earliest error untrained, error
    steps weighted by the labels' own class balance, a Bernoulli mask per (head, trajectory). A held-out slice
    of the labels stops training, calibrates the heads and picks the checkpoint's decision threshold
    (docs/loop-and-stream.md, "Training rounds"). Writes a new checkpoint with its optimizer state, so the next round continues.
    --workers N > 1 runs under Ray Train."""

    examples = ("actprm train --trajectories out/world --annotations out/ann/annotations --output runs/r1",
                "actprm train --labelled labelled/ --model runs/r1 --output runs/r2",
                "actprm train --config configs/train.yaml --backbone full --lr 1e-4 --output runs/full",
                "actprm train --workers 2 --trajectories D --annotations A --output runs/ddp   # Ray Train DDP",
                "actprm train --objective implicit-ce --trajectories out/world --output runs/implicit  # outcomes")
    objective: Literal["actprm", "implicit-ce", "implicit-dpo"] = Field(
        "actprm", description="actprm: BCE of the heads at labelled steps; implicit-ce / implicit-dpo: an implicit "
        "PRM (causal LM) from response-level labels only (--trajectories alone: the outcome checker)")
    trajectories: list[str] = Field(default_factory=list, description="trajectories (any format), joined by id")
    annotations: list[str] = Field(default_factory=list, description="annotations tables (actprm annotate)")
    labelled: list[str] = Field(default_factory=list, description="a labelled table instead of the two above")
    model: str | None = Field(None, description="checkpoint to start from (null: the shipped PRM)")
    output: str | None = Field(None, description="the new checkpoint")
    overwrite: bool = Field(False, description="replace the output directory")
    backbone: Literal["full", "frozen", "top"] = Field("frozen", description="what of the backbone trains: "
                                                       "frozen (the heads only; the backbone runs once per row), "
                                                       "top (+ the last --top-layers), full")
    top_layers: int = Field(2, gt=0, description="with backbone: top, the decoder layers trained")
    lr: float = Field(2e-4, gt=0, description="backbone learning rate")
    head_lr: float | None = Field(1e-2, gt=0, description="head learning rate (null: lr)")
    epochs: int | None = Field(None, gt=0, description="passes over the labelled rows at most: the held-out "
                               "stopping rule may end the round sooner (null: 50 for actprm, 8 with --holdout 0; "
                               "implicit: 1)")
    holdout: float = Field(0.2, ge=0.0, lt=1.0, description="actprm: share of the labelled rows (by id hash, "
                           "the same rows every round) held out to stop training, calibrate the heads and "
                           "choose the checkpoint's decision threshold; 0: none of these")
    patience: int = Field(3, ge=1, description="stop after this many passes without a lower held-out loss; "
                          "the best pass's weights are kept")
    batch_size: int = Field(16, gt=0, description="trajectories per micro-batch")
    grad_accum: int = Field(1, gt=0, description="micro-batches per optimizer step")
    warmup_steps: int = Field(5, ge=0, description="linear warm-up steps")
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay of the backbone")
    grad_clip: float = Field(1.0, gt=0, description="gradient norm clip")
    learning_probability: float = Field(1.0, gt=0, le=1, description="keep each (head, trajectory) pair")
    anchor_lambda: float = Field(0.0, ge=0, description="weight of mean((phi - phi_init)^2) over head params")
    error_weight: float | Literal["balanced"] = Field(
        "balanced", description="loss weight of error steps (target 0) relative to correct ones; balanced: the "
        "labels' own ratio of correct to error steps (at most 50), so rare mistakes weigh as much as the rest")
    prior_bias: bool = Field(True, description="first round (no optimizer state): start every head's output "
                             "bias at the logit of the labelled steps' share of correct targets")
    label_weight: float | Literal["agreement"] = Field(
        1.0, description="weight of annotation labels: a number (e.g. from judge-check) or 'agreement' (vote share)")
    max_length: int | None = Field(None, gt=0, description="tokens per trajectory (null: the model's maximum)")
    system_prompt: str | None = Field(None, description="system prompt of the training format (null: the PRM's "
                                      "own, stored in its prm_config.json)")
    dtype: DType = Field("auto", description="bfloat16 autocast of the backbone's forward pass: auto is on for a "
                         "GPU or a CPU with AMX / AVX512-BF16; weights, heads, loss and optimizer stay float32")
    bf16: bool = Field(True, description="false: never bf16 (the same as dtype float32; kept for old configs)")
    seed: int = Field(0, description="data order and the heads' masks")
    device: Device = Field("auto", description="auto: cuda when available")
    threads: int | None = Field(None, gt=0, description="torch CPU threads (null: torch's)")
    batch_rows: int = Field(2048, gt=0, le=MAX_BATCH_ROWS, description="rows read per batch")
    workers: int = Field(1, gt=0, description="Ray Train workers (1: in-process)")
    strategy: Literal["ddp", "fsdp"] = Field("ddp", description="Ray Train: DDP, or FSDP when full fine-tuning "
                                             "does not fit a device")
    use_gpu: bool = Field(False, description="Ray Train: one GPU per worker")


class EvaluateConfig(ReadSettings, ScorerSettings, EvalSettings):
    """ProcessBench F1 and PRMBench PRMScore (the official metrics), step AUROC and ECE of a PRM.

    Score labelled subsets with a PRM and compute ProcessBench's metric exactly as the official script does:
    per subset error_acc, correct_acc and their harmonic mean F1; mean_f1 is the unweighted mean over subsets.
    The prediction is the first step whose ensemble mean is below --threshold, else -1; --sweep-subset picks the
    threshold (0.01..0.99) that maximises one subset's F1 and applies it to all, as ActivePRM does. Also step
    AUROC and ECE. PRMBench's files (recognised by their columns) are scored as its official scorer does, from
    validity labels (step mean > --threshold): PRMScore, positive and negative F1, step and first-error
    accuracies, per class and overall. Each --data path is one subset, named by its file stem or directory
    name. Writes OUTPUT/metrics.json, OUTPUT/predictions.parquet (every figure can be recomputed from it) and
    OUTPUT/errors.parquet (rows refused, with the reason)."""

    examples = ("actprm evaluate --data ../shared/data/processbench/*.json --output out/eval",
                "actprm evaluate --data out/world-eval --model runs/round1/model --output out/eval",
                "actprm evaluate --data ../shared/data/processbench/*.json --sweep-subset gsm8k --output out/eval",
                "actprm evaluate --data ../shared/data/prmbench/*.jsonl --output out/prmbench",
                "actprm evaluate --config configs/evaluate.yaml --output out/eval --overwrite")
    data: list[str] = Field(default_factory=list, description="one file or directory per subset (a glob: one per "
                            "match)")
    output: str | None = Field(None, description="output directory")
    overwrite: bool = Field(False, description="replace metrics.json and predictions.parquet in --output")
    sweep_subset: str | None = Field(None, description="pick the threshold maximising this subset's F1")
    benchmark: Literal["auto", "processbench", "prmbench"] = Field(
        "auto", description="auto: each --data set by its own benchmark (PRMBench's rows are recognised); "
        "prmbench: every set is PRMBench's; processbench: none is")


class LoopConfig(ReadSettings, ScorerSettings, RuleSettings, EvalSettings, RaySettings):
    """The active-learning loop on Ray: score, select, annotate, train, evaluate, round after round.

    The active-learning loop on Ray. --mode rounds (pool-based): each round scores the unlabelled pool with
    the current model, selects up to the round's budget with --strategy, annotates (settings under `judge:`,
    or a configs/judge/*.yaml path), trains one round from the last checkpoint (settings under `train:`) and
    evaluates on --eval. --mode stream (ActPRM's Algorithm 1): one pass over the corpus in mini-batches; each
    is scored by the current heads, its uncertain rows annotated and trained on (with replay) before the next. Everything lives in the run directory (--output);
    a killed loop rerun into it resumes from the last completed step and pays no label twice; a rerun with
    more --rounds or a bigger budget continues it."""

    examples = ("actprm loop --config configs/loop/rounds.yaml --output runs/loop",
                "actprm loop --config configs/loop/rounds.yaml --strategy random --output runs/loop-random",
                "actprm loop --config configs/loop/stream.yaml --pool corpus/ --eval world-eval/ --output runs/s",
                "actprm loop --config configs/loop/stream.yaml --target-rate 0.1 --output runs/s10",
                "actprm loop --config configs/loop/rounds.yaml --output runs/loop --rounds 10   # continue a run",
                "actprm loop --config configs/loop/rounds.yaml --label-budget 500 --dollar-budget 20 --output r")
    labels: Literal["annotator", "outcome"] = Field(
        "annotator", description="annotator: the judge's step labels; outcome: the outcome checker's response-level "
        "labels (PRIME-style, no judge call; train.objective implicit-*)")
    mode: Literal["rounds", "stream"] = Field("rounds", description="rounds: pool-based; stream: one pass in "
                                                    "mini-batches (docs/loop-and-stream.md \"One pass (stream mode)\")")
    pool: list[str] = Field(default_factory=list, description="the corpus to select from (files, dirs, globs)")
    eval: list[str] = Field(default_factory=list, description="eval subsets, one path each (ProcessBench F1)")
    output: str | None = Field(None, description="the run directory; a rerun into it resumes")
    overwrite: bool = Field(False, description="start the run directory over")
    strategy: Strategy = Field("actprm", description="actprm: the rule (ranked by --acquisition past the "  # type: ignore[valid-type]
                               "budget); an acquisition name: its top-k; random: a seeded random order; full: all")
    explore: float = Field(0.1, ge=0.0, lt=1.0, description="strategy actprm: when the rule marks fewer rows "
                           "than the round's budget, up to this share of the budget goes to rows drawn at random "
                           "among those it calls certain (the rest by acquisition), so a model confidently wrong "
                           "still gets the labels that correct it; stream: this share beside the rule's rows, at "
                           "least one per chunk")
    round_labels: list[int] = Field(default_factory=lambda: [200],
                                    description="rounds: labels bought per round; the last value repeats")
    score_sample: int | None = Field(None, gt=0, description="rounds: score this many unlabelled rows per round")
    chunk_rows: int = Field(1000, gt=0, description="stream: corpus rows per chunk (the unit the run directory "
                            "keeps: selection, annotations, checkpoint, eval)")
    stream_batch: int = Field(64, gt=0, description="stream: rows per mini-batch of the pass; each is scored by the "
                              "current heads, its selection labelled and trained on before the next")
    replay: int = Field(4096, ge=0, description="stream: labelled rows kept for replay (a uniform reservoir of "
                        "every label so far; 0: train on each batch's own labels only)")
    replay_rows: int = Field(256, ge=0, description="stream: earlier labels replayed in each optimizer step")
    steps_per_batch: int = Field(4, gt=0, description="stream: optimizer steps per mini-batch")
    calibrate_every: int = Field(5, gt=0, description="stream: recalibrate the heads every N mini-batches on the "
                                 "last `calibration_window` labels, rescored by the current heads (docs/loop-and-stream.md \"One pass (stream mode)\")")
    calibration_window: int = Field(2000, gt=0, description="stream: labelled rows the calibration reads")
    rounds: int | None = Field(None, gt=0, description="stop after this many rounds (stream: chunks)")
    label_budget: int | None = Field(None, ge=0, description="stop when this many rows went to the annotator")
    dollar_budget: float | None = Field(None, ge=0, description="US dollars the judge may be paid in all: checked "
                                        "before every request")
    train_on: Literal["all", "new"] = Field("all", description="rounds: every label so far, or the round's own")
    eval_every: int = Field(1, gt=0, description="evaluate every N rounds (and after the last)")
    judge: str | JudgeConfig = Field(default_factory=JudgeConfig,
                                     description="annotator settings, or a judge YAML (configs/judge/*.yaml)")
    train: TrainConfig = Field(default_factory=TrainConfig, description="the round's training recipe")
    actors: int | None = Field(None, ge=1, description="scoring actors (null: the GPUs, else the CPUs Ray has, at "
                               "most 4)")
    batch_rows: int = Field(512, gt=0, le=MAX_BATCH_ROWS, description="rows per scoring task")
    threads: int | None = Field(None, gt=0, description="torch threads of the driver (training)")
    head_cache: bool | None = Field(None, description="train.backbone frozen: run the backbone once over the pool "
                                    "(rounds) and the eval set and score, train and evaluate every round on the heads' "
                                    "cached inputs (null: whenever that applies; docs/loop-and-stream.md \"Rounds on cached backbone "
                                    "outputs\"; the stream mode's pass always reads each chunk's once)")

    def judge_config(self) -> JudgeConfig:
        """The annotator's settings; a path is read as a judge YAML (keys other than the judge's are ignored)."""
        return judge_settings(self.judge)


class DemoConfig(RaySettings):
    """The whole loop on a world where mistakes are rare: ActPRM vs random selection, one pass, report and plots.

    Generate a world pool and eval set (by default the rare-mistake world, configs/worlds/arith-rare.yaml), run
    rounds of ActPRM selection and of random selection with the verifier annotator on a local Ray, then one
    pass of the stream mode over the same pool (ActPRM's selection, and every row labelled), and write
    OUTPUT/report.md (labels to reach F1 0.8 and 0.9, savings, routed share per round, the pass), the plots
    (f1_vs_labels.png, step_stats.png, selection_rate.png, one_pass.png), OUTPUT/metrics.jsonl and OUTPUT/model/
    (the final ActPRM model). --contrast-world runs a second world the same way under OUTPUT/contrast/ and
    reports it beside the first. The runs are in OUTPUT/runs/; a rerun resumes them. Settings: configs/demo.yaml."""

    examples = ("actprm demo",
                "actprm demo --contrast-world configs/worlds/arith.yaml     # the default world beside it",
                "actprm demo --output runs/demo --rows 3000 --rounds 4 --no-one-pass",
                "actprm demo --config configs/demo.yaml --output /tmp/demo --overwrite",
                "actprm demo --world-config configs/worlds/arith-hard.yaml --rows 20000 --round-labels 300 "
                "--rounds 8 --output runs/demo-hard")
    output: str = Field("runs/demo", description="where the report, plots, model and runs go")
    overwrite: bool = Field(False, description="start over")
    world_config: str | None = Field("configs/worlds/arith-rare.yaml", description=(
        "YAML of world parameters, a path from the working directory or from the repository (null: the default "
        "world, configs/worlds/arith.yaml); the default is the rare-mistake world, where selection has mistakes "
        "to find"))
    contrast_world: str | None = Field(None, description=(
        "a second world run the same way and reported beside the first (configs/worlds/arith.yaml: the default "
        "world, whose mistakes are common and whose learning curve is short)"))
    rows: int = Field(10000, gt=0, description="pool trajectories")
    eval_rows: int = Field(500, gt=0, description="eval trajectories (about half with an error)")
    rounds: int = Field(5, gt=0, description="rounds per strategy")
    round_labels: int = Field(300, gt=0, description="labels bought per round")
    one_pass: bool = Field(True, description="also one pass of the stream mode over the pool: ActPRM's selection, "
                           "and every row labelled")
    chunk_rows: int = Field(2500, gt=0, description="the pass's chunks (each a checkpoint and an eval)")
    prmbench: list[str] = Field(default_factory=list, description=(
        "PRMBench files (globs allowed) every run is also evaluated on, beside the world's eval set: the report "
        "adds each round's PRMBench PRMScore"))
    strategies: list[Strategy] = Field(default_factory=lambda: ["actprm", "random"],  # type: ignore[valid-type]
                                       description="the strategies compared")
    seed: int = Field(0, description="the world's and the loops' seed")
    model: str | None = Field(None, description="the PRM to start from (null: the shipped PRM)")
    judge: str | JudgeConfig = Field(default_factory=JudgeConfig, description="annotator settings")
    train: TrainConfig = Field(default_factory=TrainConfig,
                               description="the rounds' training recipe (default: actprm train's)")
    actors: int | None = Field(None, ge=1, description="scoring actors")
    threads: int | None = Field(1, gt=0, description="torch threads of the driver (training)")
    device: Device = Field("auto", description="auto: cuda when available")
    dtype: DType = Field("auto", description="scoring's backbone float type (the loops' dtype; training's is "
                         "train.dtype)")


class EstimateConfig(ScoreConfig, JudgeConfig):
    """What labelling a corpus will cost: sample, score, project judge calls, tokens, dollars.

    Read and validate the corpus, score a uniform sample (--sample rows, by id hash) with the PRM, measure
    the share the ActPRM rule selects and project for the whole corpus: rows sent to the judge, requests,
    prompt tokens (the judge prompt's length / 4) and completion tokens (samples x mean_output_tokens), and
    dollars at price_in/price_out, each with a Wilson interval from the sample size. --config takes a judge
    YAML (configs/judge/*.yaml) for the judge's settings; nothing is sent to the judge. Printed; with
    --output DIR also DIR/estimate.json."""

    examples = ("actprm estimate --input corpus/ --config configs/judge/openai.yaml",
                "actprm estimate --input corpus/ --model runs/r3 --sample 5000 --output out/estimate",
                "actprm estimate --input corpus/ --price-in 0.4 --price-out 1.6 --mean-output-tokens 2000",
                "actprm estimate --input corpus/ --config configs/judge/vllm.yaml --target-rate 0.3")
    sample: int = Field(1000, gt=0, description="rows scored (a uniform sample by id hash)")
    confidence: float = Field(0.95, gt=0.0, lt=1.0, description="of the intervals")


class JudgeCheckConfig(ReadSettings, JudgeConfig, SpendSettings):
    """The judge's F1 on ProcessBench (as evaluate scores it) and a label_weight, before paying.

    Label labelled subsets (ProcessBench's files, or any set with first_error_step) with the configured judge
    (any backend, with its cache, limits and --max-spend) and score its labels with ProcessBench's metric
    exactly as evaluate scores a PRM. A row the judge fails to label counts as wrong. Also the share of exact
    labels, the label_weight to give this judge's labels. With --output DIR: DIR/judge_check.json,
    DIR/annotations.parquet, DIR/judge_cache.sqlite (a rerun pays nothing again)."""

    examples = ("actprm judge-check --config configs/judge/vllm.yaml --data ../shared/data/processbench/*.json "
                "--limit 100",
                "OPENAI_API_KEY=... actprm judge-check --config configs/judge/openai.yaml --data pb/gsm8k.json "
                "--output out/jc --max-spend 5",
                "actprm judge-check --backend verifier --wrong-rate 0.2 --data ../shared/data/processbench/*.json")
    data: list[str] = Field(default_factory=list, description="one file or directory per subset (a glob: one per "
                            "match)")
    limit: int | None = Field(None, gt=0, description="items per subset (a uniform sample by id hash)")
    output: str | None = Field(None, description="directory for judge_check.json, annotations.parquet and the cache")
    overwrite: bool = Field(False, description="replace an earlier check in the output directory")


ImportLayout = Literal["activeprm", "qwen-prm", "token-classification", "math-shepherd"]


class ImportConfig(Config):
    """Another project's PRM checkpoint as an actprm PRM directory, exactly.

    Reads SRC's config.json, safetensors weights and tokenizer (no remote code is run), maps the backbone
    onto transformers' own class and the heads onto actprm's, stores the source's prompt format, checks the
    mapped heads against the source head's formula on a probe text, and writes OUTPUT whole. Layouts:
    activeprm (sail-sg/ActivePRM's ensemble), qwen-prm (Qwen2.5-Math-PRM style), token-classification
    (TRL), math-shepherd (a causal LM read through the +/- logits at a step tag). docs/bring-your-own-prm.md."""

    examples = ("actprm import --from activeprm ActPRM/ActPRM --output models/actprm",
                "actprm import --from qwen-prm Qwen2.5-Math-PRM-7B/ --output models/qwen-prm --n-heads 8",
                "actprm import --from token-classification trl-prm/ --output models/trl-prm --separator '\\n'",
                "actprm import --from math-shepherd math-shepherd-mistral-7b-prm/ --output models/shepherd")
    source: str | None = Field(None, description="the source checkpoint directory (config.json, safetensors, "
                               "tokenizer)", json_schema_extra={"positional": True})
    layout: ImportLayout | None = Field(None, description="the source's layout (null: from config.json's "  # type: ignore[valid-type]
                                        "architectures)", json_schema_extra=cli("--from"))
    output: str | None = Field(None, description="the actprm PRM directory to write")
    overwrite: bool = Field(False, description="replace the output directory")
    n_heads: int | None = Field(None, gt=0, description="heads of the imported PRM (null: the source's; a "
                                "single-head source with K > 1: K - 1 perturbed copies of its head)")
    perturb: float = Field(0.01, ge=0.0, description="noise of the copies, times each head tensor's RMS")
    seed: int = Field(0, description="seeds the perturbation")
    separator: str | None = Field(None, description="the step tag token the score is read at (null: the "
                                  "layout's: <extra_0>; token-classification a newline; math-shepherd ки)")
    system_prompt: str | None = Field(None, description="system prompt stored with the model (null: the layout's)")
    chat_template: bool | None = Field(None, description="format with the tokenizer's chat template (null: "
                                       "the layout's)")
    step_suffix: str | None = Field(None, description="text after every step, holding the separator once "
                                    "(null: the layout's; math-shepherd ' ки\\n')")
    middle: str | None = Field(None, description="plain format: text between problem and first step")
    bos: bool | None = Field(None, description="plain format: start with the tokenizer's bos token")
    tokenize: Literal["joint", "pieces"] | None = Field(None, description="joint: the formatted text at once; "
                                                        "pieces: each part on its own (TRL)")
    good_token: str = Field("+", description="math-shepherd: the 'correct' token (a string, or an id)")
    bad_token: str = Field("-", description="math-shepherd: the 'wrong' token (a string, or an id)")
    max_length: int | None = Field(None, gt=0, description="scoring length (null: the backbone's, at most 4096)")

    def prompt(self) -> dict[str, Any]:
        """The prompt settings given (actprm.scoring.PROMPT_KEYS); None values keep the layout's."""
        return {"system_prompt": self.system_prompt, "chat_template": self.chat_template,
                "step_suffix": self.step_suffix, "middle": self.middle, "bos": self.bos, "tokenize": self.tokenize}


class ExportConfig(Config):
    """Labelled trajectories in the formats trainers read: TRL stepwise, ActivePRM.

    Read any table with a first_error_step (the world's, ProcessBench's) or a label_first_error (a labelled
    table) and write it for a PRM trainer: trl (TRL's stepwise format: prompt, completions, labels as bool,
    soft labels in label_probs) or activeprm (question, steps, hard_labels). Steps after the earliest error
    are dropped. OUTPUT is one Parquet file, or JSONL when it ends in .jsonl."""

    examples = ("actprm export --format trl --input out/labelled --output out/train_trl.parquet",
                "actprm export --format activeprm --input out/world --output out/world_activeprm.jsonl",
                "actprm export --format trl --input ../shared/data/processbench/gsm8k.json --output gsm8k_trl.jsonl")
    format: Literal["trl", "activeprm"] = Field("trl", description="output format")
    input: list[str] = Field(default_factory=list, description="files, directories (recursive) or globs")
    input_format: FormatName = Field("auto", description="input format (auto: from the columns)")  # type: ignore[valid-type]
    output: str | None = Field(None, description="output file (.parquet, or .jsonl)")
    overwrite: bool = Field(False, description="replace an existing output file")


class InspectConfig(Config):
    """A table's provenance (version, commit, config/model hashes, judge), schema, rows.

    Print what made a Parquet table: every file actprm writes records the actprm version, the git commit,
    the job, the SHA-256 of its resolved config, the model directory and the SHA-256 of its safetensors, and
    the judge, in its schema metadata. PATH is a file or a directory of shards; also the schema and the row
    count (from the footers)."""

    examples = ("actprm inspect out/scored/scored",
                "actprm inspect out/ann/annotations --json")
    path: str = Field(description="a Parquet file or a directory of them", json_schema_extra={"positional": True})
    as_json: bool = Field(False, description="print JSON", json_schema_extra=cli("--json"))


class PretrainConfig(Config):
    """pipelines/pretrain_backbone.py: the world's policy backbone and the default PRM on it."""

    world_config: str | None = Field(None, description="world parameters YAML (default: built-in)")
    seed: int = Field(0, description="data order, initialisation and the world's lm split")
    preset: Literal["world"] = "world"
    train_rows: int = Field(60_000, gt=0, description="correct trajectories to train on")
    test_rows: int = Field(500, gt=0, description="held-out correct trajectories for accuracy")
    steps: int = Field(1600, gt=0)
    batch_size: int = Field(32, gt=0)
    lr: float = Field(3e-3, gt=0)
    warmup_steps: int = Field(100, ge=0)
    final_lr_ratio: float = Field(0.05, ge=0, le=1)
    weight_decay: float = Field(0.01, ge=0)
    grad_clip: float = Field(1.0, gt=0)
    result_weight: float = Field(4.0, gt=0, description="loss weight of result digits (after '=')")
    eval_every: int = Field(200, gt=0)
    threads: int | None = Field(None, gt=0)
    output: str | None = Field(None, description="backbone directory")
    prm_output: str | None = Field(None, description="default PRM directory (backbone + seeded heads)")
    n_heads: int = Field(8, gt=0)
    step_features: list[StepFeature] = Field(["lm_logprob"], description="what the default PRM's heads read")
    overwrite: bool = False


# ------------------------------------------------------------------ loading


C = TypeVar("C", bound=Config)


#: a config file larger than this, or whose values expand (YAML aliases followed) to more nodes, is refused:
#: a few hundred bytes of nested aliases ("billion laughs") expand to gigabytes when the values are used
MAX_CONFIG_BYTES = 1 << 20
MAX_CONFIG_NODES = 100_000


def _check_expanded_size(data: Any, path: Path) -> None:
    """Walk the loaded values as a user of them would (aliases expanded), stopping at MAX_CONFIG_NODES."""
    count, stack = 0, [data]
    while stack:
        item = stack.pop()
        count += 1
        if count > MAX_CONFIG_NODES:
            raise UserError(f"{path}: the config expands to more than {MAX_CONFIG_NODES:,} values "
                            "(YAML aliases nested in aliases?)")
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)


def read_yaml(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: config file not found")
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise UserError(f"{path}: a config file of {path.stat().st_size:,} bytes; at most {MAX_CONFIG_BYTES:,}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" at line {where.line + 1}" if where is not None else ""
        raise UserError(f"{path}: not valid YAML{line}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{path}: a config must be a mapping of key: value")
    _check_expanded_size(data, path)
    return data


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def load_config(cls: type[C], path: str | os.PathLike | None = None, overrides: dict[str, Any] | None = None) -> C:
    """defaults < YAML file < overrides (flags that were given: None means not given)."""
    data: dict[str, Any] = read_yaml(path) if path else {}
    data.update({k: v for k, v in (overrides or {}).items() if v is not None})
    for key in ("input", "data"):  # a single path
        if isinstance(data.get(key), str):
            data[key] = [data[key]]
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "config"
        source = f"{path}: " if path else ""
        if first["type"] == "extra_forbidden":
            raise UserError(f"{source}unknown setting {field!r}") from None
        if first["type"] == "int_parsing_size":  # a number past any integer's size (1e32)
            raise UserError(f"{source}{field}: {_shown(first.get('input'))} is far too large") from None
        if first["type"] == "int_parsing" and isinstance(first.get("input"), str):
            raise UserError(f"{source}{field}: {_shown(first['input'])} is not an integer") from None
        raise UserError(f"{source}{field}: {first['msg']}") from None


def dump_config(config: Config) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False, allow_unicode=True)
