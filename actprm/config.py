"""Job configs: defaults here, overridden by a `--config` YAML, overridden by CLI flags.

Each job has one pydantic model; YAML keys and flag names are the same words
(`--batch-tokens` ↔ `batch_tokens`). Unknown keys and bad values are user errors
(one line, exit code 2), never a traceback.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from actprm.errors import UserError
from actprm.io.formats import FORMATS
from actprm.schemas import Limits

FormatName = Literal[("auto", *FORMATS)]  # type: ignore[valid-type]


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ReadConfig(Config):
    """How input is found and checked."""

    input: list[str] = Field(default_factory=list, description="files, directories or globs")
    format: FormatName = "auto"  # type: ignore[valid-type]
    step_separator: str = Field("\n\n", description="splits a rollout's response into steps")
    max_problem_chars: int = Field(50_000, gt=0)
    max_step_chars: int = Field(20_000, gt=0)
    max_steps: int = Field(1_000, gt=0)
    batch_rows: int = Field(2048, gt=0, description="rows read per batch")

    @property
    def limits(self) -> Limits:
        return Limits(self.max_problem_chars, self.max_step_chars, self.max_steps)


class OutputConfig(Config):
    output: str | None = None
    overwrite: bool = False
    rows_per_shard: int = Field(100_000, gt=0)


class ValidateConfig(ReadConfig, OutputConfig):
    pass


class SelectionConfig(Config):
    """The ActPRM rule and the acquisition/selection settings (see actprm.uncertainty)."""

    delta_pred: float = Field(0.95, gt=0.5, le=1.0)
    delta_std: float = Field(0.005, ge=0.0)
    acquisition: Literal["entropy", "bald", "variance", "margin", "random"] = "entropy"
    reduction: Literal["max", "mean"] = "max"
    selection: Literal["threshold", "budget"] = "threshold"
    budget: int | None = Field(None, ge=0, description="rows to select with --selection budget")
    seed: int = 0


class ImplicitConfig(Config):
    """The implicit PRM's beta and reference model (actprm.implicit)."""

    beta: float | None = Field(None, gt=0, description="implicit PRM: beta of the log-ratios (null: the "
                               "checkpoint's, else 0.05 as in PRIME)")
    reference: str | None = Field(None, description="implicit PRM: the frozen reference LM (null: the checkpoint's, "
                                  "else the model itself; 'none': no reference, a uniform one)")


class ScorerConfig(ImplicitConfig):
    """Which PRM scores: the ensemble (K heads) or the implicit PRM (actprm.implicit)."""

    scorer: Literal["ensemble", "implicit"] = Field("ensemble", description="ensemble: the ActPRM heads; implicit: "
                                                    "log-ratios of a causal LM (model default: the shipped backbone)")
    step_prob: Literal["value", "reward"] = Field("value", description="implicit: step_mean is sigmoid(q_k) "
                                                  "(value) or sigmoid(r_k) (reward)")

    def implicit_settings(self) -> dict[str, Any] | None:
        """The implicit scorer's settings (actprm.implicit.load_implicit keywords); None for the ensemble."""
        if self.scorer != "implicit":
            return None
        return {"beta": self.beta, "reference": self.reference, "step_prob": self.step_prob}


class ScoreConfig(ValidateConfig, SelectionConfig, ScorerConfig):
    model: str | None = Field(None, description="PRM directory (default: the shipped PRM, actprm/assets/prm)")
    batch_tokens: int | None = Field(None, gt=0, description="padded tokens per micro-batch (default: by device)")
    max_length: int | None = Field(None, gt=0, description="default: the model's maximum")
    device: Literal["cpu", "cuda", "auto"] = "auto"
    threads: int | None = Field(None, gt=0, description="torch CPU threads (default: torch's)")
    target_rate: float | None = Field(None, ge=0.0, le=1.0, description="choose delta_pred/delta_std on a sample "
                                      "so that about this share of the rows is selected (actprm.uncertainty)")
    calibration_sample: int = Field(1000, gt=0, description="rows scored to choose the deltas for target_rate")


class FilterConfig(ScoreConfig):
    """`actprm filter` (pipelines/score_filter.py): `score` over a corpus on Ray, resumable."""

    actors: int | None = Field(None, ge=1, description="scoring actors (default: GPUs, else CPUs minus one for reads)")
    cpus_per_actor: float | None = Field(None, gt=0, description="CPUs reserved per actor; its torch threads on "
                                         "CPU (default: 1 with GPUs, else (CPUs - 1) / actors)")
    batch_rows: int = Field(1024, gt=0, description="rows per batch sent to an actor")
    # hygiene (actprm.hygiene): removed rows go to errors with their reason
    dedup: bool = Field(True, description="drop rows whose normalised problem and steps repeat an earlier row's")
    near_dedup: bool = Field(False, description="drop rows whose problem nearly repeats an earlier, different "
                             "problem (MinHash LSH)")
    near_dedup_threshold: float = Field(0.9, gt=0.0, le=1.0, description="Jaccard of character 5-grams")
    decontaminate: list[str] | None = Field(None, description="evaluation sets whose problems are dropped "
                                            "(null: ProcessBench when present; []: none)")
    decontaminate_threshold: float = Field(0.8, gt=0.0, le=1.0, description="near match (1.0: exact only)")


class JudgeConfig(Config):
    """Which annotator labels the rows and how (see actprm.judge)."""

    backend: Literal["verifier", "openai", "rollout"] = Field("verifier",
                                                             description="annotator backend (actprm.judge.BACKENDS)")
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
    requests_per_minute: int | None = Field(None, ge=1)
    tokens_per_minute: int | None = Field(None, ge=1, description="estimated before sending (prompt chars / 4 + output)")
    timeout_s: float = Field(600.0, gt=0, description="per request; reasoning models answer slowly")
    max_attempts: int = Field(6, ge=1, description="attempts per request, the first included")
    max_backoff_s: float = Field(60.0, gt=0, description="cap of the random exponential back-off")
    temperature: float | None = Field(0.6, ge=0.0, description="null: the server's default")
    top_p: float | None = Field(0.95, gt=0.0, le=1.0)
    max_tokens: int | None = Field(None, ge=1, description="null: the server's limit")
    extra_body: dict[str, Any] | None = Field(None, description="extra request fields, e.g. chat_template_kwargs")
    use_n: bool = Field(True, description="samples > 1: one request with n (else one request per sample)")
    mean_output_tokens: int = Field(4000, ge=1, description="expected completion length (token budgets, estimates)")
    price_in: float = Field(0.0, ge=0.0, description="USD per million prompt tokens")
    price_out: float = Field(0.0, ge=0.0, description="USD per million completion tokens")
    cache: str | None = Field(None, description="answer cache (default: OUTPUT/judge_cache.sqlite)")
    raw_output: bool = Field(True, description="keep the judge's answer text in the annotations")
    # rollout: Math-Shepherd / PAV step values from a prover policy's completions (actprm.judge.rollout);
    # it shares the endpoint, limits, retries, temperature/top_p/max_tokens (null: 512), prices and cache above
    rollouts: int = Field(8, ge=1, description="rollout: completions per step prefix (k)")
    prover: Literal["local", "endpoint"] = Field("local", description="rollout: the prover in-process (transformers) "
                                                 "or behind an OpenAI-compatible completions endpoint (base_url)")
    prover_model: str | None = Field(None, description="rollout: local: a causal LM directory (default: the shipped "
                                     "world backbone); endpoint: the model name it serves")
    prover_prompt: str | None = Field(None, description="rollout: prompt template with {problem} and {prefix} "
                                      "(default: ChatML, the backbone's and Qwen's chat template)")
    prover_step_separator: str | None = Field(None, description="rollout: text after each step of the prefix "
                                              "(default: <extra_0> for the local prover, a blank line for an endpoint)")
    prover_stop: list[str] = Field(default_factory=list, description="rollout: stop strings of the completions")
    prover_batch: int = Field(256, ge=1, description="rollout, local: sequences generated together")
    prover_threads: int | None = Field(None, ge=1, description="rollout, local: torch threads")
    rollout_threshold: float = Field(0.0, ge=0.0, lt=1.0, description="rollout: a step is wrong iff its value "
                                     "Q <= this (0: no completion reaches the answer); the first such is the label")
    rollout_labels: Literal["hard", "soft"] = Field("hard", description="rollout: train on the earliest error (hard) "
                                                    "or on the values Q (soft, step_labels)")
    stop_at_error: bool = Field(True, description="rollout: no rollouts after the earliest error (their values null)")


class SpendConfig(Config):
    """Hard limits on what a paid judge costs (actprm.judge.budget)."""

    max_spend: float | None = Field(None, ge=0, description="openai: stop before the labels cost more than this "
                                    "(USD, at price_in/price_out; answers from the cache count)")
    max_calls: int | None = Field(None, ge=0, description="openai: stop before more than this many judge requests")


class EstimateConfig(ScoreConfig, JudgeConfig):
    """`actprm estimate`: score a sample, project the judge calls, tokens and dollars for the corpus."""

    sample: int = Field(1000, gt=0, description="rows scored (a uniform sample by id hash)")
    confidence: float = Field(0.95, gt=0.0, lt=1.0, description="of the intervals")


class JudgeCheckConfig(JudgeConfig, SpendConfig):
    """`actprm judge-check`: the configured judge on labelled subsets (ProcessBench), scored as evaluate does."""

    data: list[str] = Field(default_factory=list, description="one path per subset, named by its stem")
    limit: int | None = Field(None, gt=0, description="items per subset (a uniform sample by id hash)")
    output: str | None = Field(None, description="DIR for judge_check.json, annotations.parquet and the cache")
    overwrite: bool = False
    format: FormatName = "auto"  # type: ignore[valid-type]
    step_separator: str = "\n\n"
    max_problem_chars: int = Field(50_000, gt=0)
    max_step_chars: int = Field(20_000, gt=0)
    max_steps: int = Field(1_000, gt=0)
    batch_rows: int = Field(2048, gt=0)

    @property
    def limits(self) -> Limits:
        return Limits(self.max_problem_chars, self.max_step_chars, self.max_steps)


class AnnotateConfig(ValidateConfig, JudgeConfig, SpendConfig):
    actors: int = Field(2, ge=1, description="--ray: annotator actors (the limits hold for all of them together)")


class EvaluateConfig(ScorerConfig):
    """`actprm evaluate`: ProcessBench F1, step AUROC and ECE of a PRM on labelled subsets."""

    data: list[str] = Field(default_factory=list, description="one path per subset, named by its stem")
    model: str | None = Field(None, description="PRM directory (default: the shipped PRM, actprm/assets/prm)")
    output: str | None = None
    overwrite: bool = False
    threshold: float = Field(0.5, ge=0.0, le=1.0, description="a step is wrong iff its ensemble mean < threshold")
    sweep_subset: str | None = Field(None, description="pick the threshold maximising this subset's F1")
    format: FormatName = "auto"  # type: ignore[valid-type]
    step_separator: str = "\n\n"
    max_problem_chars: int = Field(50_000, gt=0)
    max_step_chars: int = Field(20_000, gt=0)
    max_steps: int = Field(1_000, gt=0)
    batch_rows: int = Field(2048, gt=0, description="rows read and scored per batch")
    batch_tokens: int | None = Field(None, gt=0, description="padded tokens per micro-batch (default: by device)")
    max_length: int | None = Field(None, gt=0, description="default: the model's maximum")
    device: Literal["cpu", "cuda", "auto"] = "auto"
    threads: int | None = Field(None, gt=0, description="torch CPU threads (default: torch's)")

    @property
    def limits(self) -> Limits:
        return Limits(self.max_problem_chars, self.max_step_chars, self.max_steps)


StepFeature = Literal["lm_logprob"]


class InitModelConfig(Config):
    preset: Literal["tiny", "world", "small", "qwen2-0.5b"] = "tiny"
    backbone: str | None = Field(None, description="a pretrained backbone (directory or hub name) instead of a preset")
    step_features: list[StepFeature] = Field(default_factory=list,
                                             description="per-step features the heads read (actprm.model)")
    n_heads: int = Field(8, gt=0)
    seed: int = 0
    output: str | None = None
    overwrite: bool = False


class GenerateConfig(Config):
    """`actprm generate`: synthetic trajectories of a verifiable world."""

    world: Literal["arith"] = "arith"
    world_config: str | None = Field(None, description="YAML of world parameters (default: the built-in world)")
    n: int | None = Field(None, gt=0, description="trajectories to write")
    seed: int = 0
    eval_set: bool = Field(False, description="a held-out set balanced like ProcessBench")
    output: str | None = None
    overwrite: bool = False
    shard_rows: int = Field(100_000, gt=0)



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


class TrainConfig(ImplicitConfig):
    """One training round (actprm.train); `workers > 1` runs it under Ray Train (pipelines/train.py)."""

    objective: Literal["actprm", "implicit-ce", "implicit-dpo"] = Field(
        "actprm", description="actprm: BCE of the heads at labelled steps; implicit-ce / implicit-dpo: an implicit "
        "PRM (causal LM) from response-level labels only (actprm.implicit)")

    trajectories: list[str] = Field(default_factory=list, description="trajectories (any format), joined by id")
    annotations: list[str] = Field(default_factory=list, description="annotations tables (actprm annotate)")
    labelled: list[str] = Field(default_factory=list, description="a labelled table instead of the two above")
    model: str | None = Field(None, description="checkpoint to start from (default: the shipped PRM)")
    output: str | None = None
    overwrite: bool = False
    backbone: Literal["full", "frozen", "top"] = "full"
    top_layers: int = Field(2, gt=0, description="with backbone: top, the decoder layers trained")
    lr: float = Field(2e-4, gt=0, description="backbone learning rate")
    head_lr: float | None = Field(1e-3, gt=0, description="head learning rate (null: lr)")
    epochs: int = Field(1, gt=0)
    batch_size: int = Field(16, gt=0, description="trajectories per micro-batch")
    grad_accum: int = Field(1, gt=0)
    warmup_steps: int = Field(20, ge=0)
    weight_decay: float = Field(0.01, ge=0)
    grad_clip: float = Field(1.0, gt=0)
    learning_probability: float = Field(1.0, gt=0, le=1, description="keep each (head, trajectory) pair")
    anchor_lambda: float = Field(0.5, ge=0, description="weight of mean((phi - phi_init)^2) over head params")
    error_weight: float = Field(1.0, gt=0, description="loss weight of error steps (target 0) relative to "
                                "correct ones: > 1 lets the first rounds learn errors from few labels")
    prior_bias: bool = Field(False, description="first round (no optimizer state): start every head's output "
                             "bias at the logit of the labelled steps' share of correct targets")
    label_weight: float | Literal["agreement"] = Field(
        1.0, description="weight of annotation labels: a number (e.g. from judge-check) or 'agreement' (vote share)")
    max_length: int | None = Field(None, gt=0)
    bf16: bool = Field(True, description="bf16 autocast on CUDA (CPU trains in fp32)")
    seed: int = 0
    device: Literal["cpu", "cuda", "auto"] = "auto"
    threads: int | None = Field(None, gt=0)
    batch_rows: int = Field(2048, gt=0)
    workers: int = Field(1, gt=0, description="Ray Train workers (1: in-process)")
    strategy: Literal["ddp", "fsdp"] = "ddp"
    use_gpu: bool = False


LOOP_STRATEGIES = ("actprm", "random", "entropy", "bald", "full")


class LoopConfig(ScorerConfig):
    """`actprm loop` (pipelines/active_loop.py): rounds of score -> select -> annotate -> train -> evaluate."""

    labels: Literal["annotator", "outcome"] = Field(
        "annotator", description="annotator: the judge's step labels; outcome: the outcome checker's response-level "
        "labels (PRIME-style, no judge call; train.objective implicit-*)")

    mode: Literal["rounds", "stream"] = Field("rounds", description="rounds: pool-based; stream: one pass in chunks")
    pool: list[str] = Field(default_factory=list, description="the corpus to select from (files, dirs, globs)")
    eval: list[str] = Field(default_factory=list, description="eval subsets, one path each (ProcessBench F1)")
    output: str | None = Field(None, description="the run directory; a rerun into it resumes")
    overwrite: bool = Field(False, description="start the run directory over")
    model: str | None = Field(None, description="checkpoint the first round starts from (default: the shipped PRM)")
    strategy: Literal[LOOP_STRATEGIES] = "actprm"  # type: ignore[valid-type]
    round_labels: list[int] = Field(default_factory=lambda: [200],
                                    description="rounds: labels bought per round; the last value repeats")
    score_sample: int | None = Field(None, gt=0, description="rounds: score this many unlabelled rows per round")
    chunk_rows: int = Field(1000, gt=0, description="stream: corpus rows per chunk")
    rounds: int | None = Field(None, gt=0, description="stop after this many rounds (stream: chunks)")
    label_budget: int | None = Field(None, ge=0, description="stop when this many rows went to the annotator")
    dollar_budget: float | None = Field(None, ge=0, description="US dollars the judge may be paid in all: checked before every request")
    train_on: Literal["all", "new"] = Field("all", description="rounds: every label so far, or the round's own")
    eval_every: int = Field(1, gt=0, description="evaluate every N rounds (and after the last)")
    threshold: float = Field(0.5, ge=0.0, le=1.0, description="a step is wrong iff its mean is below it")
    delta_pred: float = Field(0.95, gt=0.5, le=1.0)
    delta_std: float = Field(0.005, ge=0.0)
    target_rate: float | None = Field(None, ge=0.0, le=1.0, description="strategy actprm: choose delta_pred/delta_std "
                                      "on the first round's (chunk's) scores so that about this share of it is "
                                      "uncertain, then hold them for the whole run")
    acquisition: Literal["entropy", "bald", "variance", "margin"] = Field(
        "entropy", description="strategy actprm: ranks the uncertain rows when they are more than the budget")
    reduction: Literal["max", "mean"] = "max"
    seed: int = Field(0, description="random selection and score_sample draws")
    judge: str | JudgeConfig = Field(default_factory=JudgeConfig,
                                     description="annotator settings, or a judge YAML (configs/judge/*.yaml)")
    train: TrainConfig = Field(default_factory=TrainConfig, description="the round's training recipe")
    actors: int | None = Field(None, ge=1, description="scoring actors (default: the CPUs Ray has, at most 4)")
    batch_rows: int = Field(512, gt=0, description="rows per scoring task")
    batch_tokens: int | None = Field(None, gt=0)
    max_length: int | None = Field(None, gt=0)
    device: Literal["cpu", "cuda", "auto"] = "auto"
    threads: int | None = Field(None, gt=0, description="torch threads of the driver (training)")
    format: FormatName = "auto"  # type: ignore[valid-type]
    step_separator: str = "\n\n"
    max_problem_chars: int = Field(50_000, gt=0)
    max_step_chars: int = Field(20_000, gt=0)
    max_steps: int = Field(1_000, gt=0)

    @property
    def limits(self) -> Limits:
        return Limits(self.max_problem_chars, self.max_step_chars, self.max_steps)

    def judge_config(self) -> JudgeConfig:
        """The annotator's settings; a path is read as a judge YAML (keys other than the judge's are ignored)."""
        return judge_settings(self.judge)


def judge_settings(judge: str | JudgeConfig) -> JudgeConfig:
    """A JudgeConfig as is, or the judge settings of an annotate YAML (configs/judge/*.yaml)."""
    if isinstance(judge, JudgeConfig):
        return judge
    annotate = load_config(AnnotateConfig, judge)  # an unknown key there is a user error
    return JudgeConfig(**{k: getattr(annotate, k) for k in JudgeConfig.model_fields})


class DemoConfig(Config):
    """`actprm demo`: a world pool, a few rounds of ActPRM and of random selection, a report."""

    output: str = Field("runs/demo", description="where the report, plots, model and runs go")
    overwrite: bool = False
    rows: int = Field(3000, gt=0, description="pool trajectories")
    eval_rows: int = Field(500, gt=0, description="eval trajectories (about half with an error)")
    rounds: int = Field(4, gt=0)
    round_labels: int = Field(150, gt=0, description="labels bought per round")
    strategies: list[Literal[LOOP_STRATEGIES]] = Field(  # type: ignore[valid-type]
        default_factory=lambda: ["actprm", "random"])
    seed: int = 0
    model: str | None = None
    judge: str | JudgeConfig = Field(default_factory=JudgeConfig)
    train: TrainConfig = Field(default_factory=lambda: TrainConfig(  # = configs/demo.yaml
        backbone="frozen", head_lr=1e-2, epochs=6, batch_size=16, warmup_steps=5, anchor_lambda=0.0))
    actors: int | None = Field(None, ge=1)
    threads: int | None = Field(1, gt=0, description="torch threads of the driver (training)")
    device: Literal["cpu", "cuda", "auto"] = "auto"


class ExportConfig(Config):
    """`actprm export`: labelled trajectories in a trainer's format (actprm.export)."""

    format: Literal["trl", "activeprm"] = "trl"
    input: list[str] = Field(default_factory=list, description="files, directories or globs")
    input_format: FormatName = "auto"  # type: ignore[valid-type]
    output: str | None = Field(None, description="output file (.parquet, or .jsonl)")
    overwrite: bool = False


C = TypeVar("C", bound=Config)


def read_yaml(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: config file not found")
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
    return data


def load_config(cls: type[C], path: str | os.PathLike | None = None, overrides: dict[str, Any] | None = None) -> C:
    """defaults < YAML file < overrides (flags that were given: None means not given)."""
    data: dict[str, Any] = read_yaml(path) if path else {}
    data.update({k: v for k, v in (overrides or {}).items() if v is not None})
    if isinstance(data.get("input"), str):
        data["input"] = [data["input"]]
    if isinstance(data.get("data"), str):  # evaluate: a single subset
        data["data"] = [data["data"]]
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "config"
        source = f"{path}: " if path else ""
        if first["type"] == "extra_forbidden":
            raise UserError(f"{source}unknown setting {field!r}") from None
        raise UserError(f"{source}{field}: {first['msg']}") from None


def dump_config(config: Config) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False, allow_unicode=True)

