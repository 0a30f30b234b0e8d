"""The `rollout` backend: step labels from a prover policy's completions, no judge.

For each step prefix of a trajectory the prover (actprm.judge.prover: an OpenAI-compatible
completions endpoint, or a causal LM in-process) writes `rollouts` (k) completions; each is
checked against the row's `reference_answer` (actprm.answers). Then, per step i:

- Q_i = the share of the k completions of the prefix `steps[:i+1]` that reach the reference
  answer (Math-Shepherd's value). The last step needs no rollout: Q = 1 if the trajectory's own
  final answer is right, else 0;
- Math-Shepherd labels: hard = Q_i > `rollout_threshold` (default 0), soft = Q_i;
- PAV's progress A_i = Q_i - Q_{i-1}, with Q_{-1} the value of the problem alone (k completions
  of the empty prefix);
- the earliest error = the first step whose Q_i <= `rollout_threshold` (-1 if none): the
  annotation's `first_error_step`.

With `stop_at_error` (default) a row's prefixes are rolled out in order and stop at the
earliest error (later steps are not trained on anyway: their values stay null), which saves the
calls after it; without it every prefix is rolled out at once and every step has a value.

The annotation row carries `step_values` (Q per step), `step_progress` (A per step) and
`step_labels` (what `actprm train` trains on: the soft values with `rollout_labels: soft`,
null with `hard`, which trains on `first_error_step` as for a judge).

Everything else is the judge's (actprm.judge.openai_judge, which this class extends): the
client, the limits (concurrency, RPM, TPM), tenacity's retries, the spend budget, the answer
cache (keyed by the prompt text of the prefix, the prover, the sampling settings and the sample
index, so a prefix shared by two trajectories, e.g. the empty one, is paid once, and k=4 labels
are the first four samples of k=8 ones) and the accounting (tokens and dollars per row).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from typing import Any

from actprm.answers import answers_match, extract_answer
from actprm.errors import UserError
from actprm.judge.cache import answer_key
from actprm.judge.openai_judge import OpenAIJudge, _Sample
from actprm.judge.prover import (
    CHATML_PROMPT,
    LocalCompletions,
    LocalProver,
    prefix_prompt,
)
from actprm.provenance import judge_name
from actprm.shipped import SHIPPED_BACKBONE
from actprm.tokens import STEP_SEPARATOR

PROMPT_VERSION = "rollout-v1"


class RolloutAnnotator(OpenAIJudge):
    """Math-Shepherd / PAV step labels from prover rollouts (see the module docstring).

    `client`: an object with the OpenAI client's `completions.create` (tests, or a
    `actprm.judge.prover.LocalCompletions`); default: the official client on `cfg.base_url` when
    `cfg.prover == "endpoint"`, else a LocalProver of `cfg.prover_model` (the shipped backbone).
    """

    def __init__(self, cfg: Any, cache: Any = None, *, limits: Any = None, budget: Any = None, client: Any = None):
        if cfg.prover == "endpoint" and not cfg.prover_model:
            raise UserError("the rollout backend with --prover endpoint needs --prover-model (the name it serves)")
        model = cfg.prover_model or (SHIPPED_BACKBONE if cfg.prover == "local" else None)
        self.k = int(cfg.rollouts)
        self.separator = cfg.prover_step_separator
        if self.separator is None:  # the scorer's separator for the world backbone, a blank line for real LLMs

            self.separator = STEP_SEPARATOR if cfg.prover == "local" else "\n\n"
        self.template = cfg.prover_prompt or CHATML_PROMPT
        self.threshold = float(cfg.rollout_threshold)
        sampling = {"temperature": cfg.temperature, "top_p": cfg.top_p, "max_tokens": cfg.max_tokens or 512,
                    "stop": list(cfg.prover_stop) or None, "extra_body": cfg.extra_body or None}
        super().__init__(cfg, cache, limits=limits, budget=budget, model=model, samples=self.k, sampling=sampling,
                         prompt_version=PROMPT_VERSION)
        self.judge = judge_name(cfg)
        self._injected = client
        self._local: Any = None

    def _make_client(self) -> Any:
        if self._injected is not None:
            return self._injected
        if self.cfg.prover == "endpoint":
            return super()._make_client()

        if self._local is None:  # loaded once, kept across event loops
            self._local = LocalProver(self.cfg.prover_model, threads=self.cfg.prover_threads)
        return LocalCompletions(self._local, batch_sequences=self.cfg.prover_batch)

    async def aclose(self) -> None:
        if self._client is not None and self._client is self._injected:
            self._client, self._loop = None, None  # the caller's client: the caller closes it
            return
        await super().aclose()

    def _request_params(self, samples: list[int], keys: list[str]) -> dict[str, Any]:
        # a seed per request (from the first sample's key): reproducible with vLLM and the local prover
        return {"seed": int(hashlib.sha256(keys[samples[0]].encode()).hexdigest()[:8], 16)}

    # ------------------------------------------------------------------ values

    async def value(self, row: dict[str, Any], problem: str, prefix: list[str], reference: str
                    ) -> tuple[float | None, dict[str, Any]]:
        """Q of one prefix: (share of the k completions reaching `reference`, or None if a request
        failed; accounting: tokens, cost, attempts, cached, error)."""
        prompt = prefix_prompt(self.template, problem, prefix, self.separator)
        keys = [answer_key(prompt, [], self.model, self.prompt_version, self.sampling, s) for s in range(self.k)]
        got, attempts = await self._samples(row, prompt, keys)
        acc = {"prompt_tokens": 0, "completion_tokens": 0, "cost_usd": 0.0, "attempts": attempts, "cached": 0,
               "error": None}
        hits = 0
        for s in range(self.k):
            sample: _Sample = got[s]
            if sample.answer is None:
                acc["error"] = sample.error or "request: no answer"
                continue
            a = sample.answer
            acc["prompt_tokens"] += a.prompt_tokens
            acc["completion_tokens"] += a.completion_tokens
            acc["cost_usd"] += a.cost_usd
            acc["cached"] += int(sample.from_cache)
            # a truncated completion that gave no answer did not reach it
            hits += answers_match(extract_answer(a.content), reference)
        return (None if acc["error"] else hits / self.k), acc

    async def annotate_row(self, row: dict[str, Any]) -> dict[str, Any]:
        start = time.perf_counter()
        rid, problem, steps = row.get("id"), row.get("problem"), row.get("steps")
        reference = row.get("reference_answer")
        if not isinstance(problem, str) or not isinstance(steps, (list, tuple)) or not steps:
            return self.failed(rid, "bad input: needs a problem and a non-empty list of steps", attempts=0)
        if reference is None or not str(reference).strip():
            return self.failed(rid, "no reference: reference_answer is null (rollouts are checked against it)",
                               attempts=0)
        steps, reference = [str(s) for s in steps], str(reference)
        n = len(steps)
        totals = {"prompt_tokens": 0, "completion_tokens": 0, "cost_usd": 0.0, "attempts": 0, "cached": 0}
        errors: list[str] = []

        def add(acc: dict[str, Any]) -> None:
            for name in totals:
                totals[name] += acc[name]
            if acc["error"]:
                errors.append(acc["error"])

        final = 1.0 if answers_match(extract_answer("\n".join(steps)), reference) else 0.0
        values: list[float | None] = [None] * n

        async def q(i: int) -> float | None:  # Q of steps[:i+1]; the last step is its own answer
            if i == n - 1:
                return final
            v, acc = await self.value(row, problem, steps[: i + 1], reference)
            add(acc)
            return v

        async def ordered() -> None:
            for i in range(n):
                values[i] = await q(i)
                if values[i] is None or values[i] <= self.threshold:
                    return

        root_task = self.value(row, problem, [], reference)
        if self.cfg.stop_at_error:
            (root, root_acc), _ = await asyncio.gather(root_task, ordered())
        else:
            (root, root_acc), *values = await asyncio.gather(root_task, *(q(i) for i in range(n)))
        add(root_acc)
        fields = {**totals, "latency_s": time.perf_counter() - start}
        if errors:
            distinct = list(dict.fromkeys(errors))
            return self.failed(rid, distinct[0] if len(distinct) == 1 else "; ".join(distinct), **fields)
        label = next((i for i, v in enumerate(values) if v is not None and v <= self.threshold), -1)
        progress = [None if v is None or (i > 0 and values[i - 1] is None) else
                    v - (root if i == 0 else values[i - 1]) for i, v in enumerate(values)]
        raw = json.dumps({"root_value": root, "values": values, "k": self.k}) if self.cfg.raw_output else None
        soft = self.cfg.rollout_labels == "soft"
        return self.labelled(rid, label, raw_output=raw, step_values=values, step_progress=progress,
                             step_labels=values if soft else None, **fields)
