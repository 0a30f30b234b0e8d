"""Spend control: a hard stop on what a job pays the judge (`--max-spend USD`, `--max-calls N`).

`SpendBudget` is checked before every request is sent:

- the request's worst case is *reserved* first: `reserve_usd(prompt, n)` = price_in x (the prompt's
  UTF-8 bytes + 16) + price_out x n x (`max_tokens`, or `mean_output_tokens` when that is unset),
  per million tokens. Bytes bound the prompt's tokens for byte-level BPE tokenizers (a token
  covers at least one byte; 16 for the chat template). With `max_tokens` set the reservation is
  a true upper bound and the budget is never exceeded; without it, the completions may run
  longer than the mean, and the budget is exceeded by at most what the requests in flight cost
  beyond their reservations;
- a request that does not fit waits while others are in flight (their reservations come back
  as the difference between reserved and billed when they arrive); when nothing is in flight
  and it still does not fit, the budget is *exhausted*: this and every later request is not
  sent, and its row fails with `budget exhausted: ...` (actprm.judge.openai_judge);
- a call is a request; a request that brings no answer (429, 5xx, timeout) is not counted
  as paid and gives its call back; a 200 reply without choices is billed like any answer, so it
  counts as a call (each retry of it too) at what its usage says;
- what a reply costs comes from its `usage`, checked first (`checked_usage`): token counts must be
  integers, non-negative and within what the request allows (the prompt's bytes x 2 + 8192; the
  output bound x n + 64). A reply with usage missing or invalid is charged at the request's worst
  case (the reservation: prompt bytes + 16, n x the output bound), so a server that omits usage or
  reports negative counts cannot spend past the budget;
- a reply whose usage is beyond what its request allows (`usage_beyond_bound`: a server that ignores
  `max_tokens`) is charged at the worst case, cached, and stops the job: no budget holds against such a
  server (one line, exit 2);
- a request that timed out or broke off after it was sent stays charged at its worst case (the server
  may have billed it), and its call counts;
- the output bound is `max_tokens` (or `max_completion_tokens` in `extra_body`, OpenAI's name for
  reasoning models): without one a completion has no worst case, so a dollar budget (`max_spend`)
  without it is refused (`check_spend_settings`, one line, exit 2).

What the budget counts is the cost of the labels the job delivers: answers paid now and answers
taken from the answer cache (at what they cost when they were paid; `charge`). So a rerun with
the same budget pays nothing new, and one with a higher budget continues where the last stopped,
each paid answer read from the cache, not bought again.

One object serves one event loop at a time (the annotate job; a loop round); `JudgeGate`
(pipelines/annotate.py) holds one for all the actors of a Ray job. The active loop can make one
per job (e.g. `SpendBudget(max_usd=limit - spent_so_far)`) and pass it to
`actprm.judge.make_annotator(cfg, budget=...)` or `OpenAIJudge(..., budget=...)`.
"""

from __future__ import annotations

import asyncio
import math
from typing import Any

from actprm.errors import UserError

PROMPT_OVERHEAD_TOKENS = 16  # chat template around the one user message
MAX_OUTPUT_TOKENS = 1 << 20  # no model writes more per answer: the bound of usage without max_tokens


class BudgetExhausted(Exception):
    """The request was not sent: the budget cannot pay for it (str: why, for the failed row)."""


def output_bound(sampling: dict[str, Any] | None) -> int | None:
    """The most tokens one completion may have under these sampling settings: `max_tokens`, else
    `extra_body.max_completion_tokens`; None when neither is set (the server's own limit)."""
    sampling = sampling or {}
    bound = sampling.get("max_tokens") or (sampling.get("extra_body") or {}).get("max_completion_tokens")
    return int(bound) if bound else None


def check_spend_settings(cfg: Any) -> None:
    """--max-spend / --max-calls limit what a paid judge is paid; a user error where they cannot."""
    max_spend, max_calls = getattr(cfg, "max_spend", None), getattr(cfg, "max_calls", None)
    if max_spend is None and max_calls is None:
        return
    if cfg.backend == "verifier":
        raise UserError(f"--max-spend/--max-calls limit what a paid judge costs; the {cfg.backend} backend is free")
    if max_spend is None:
        return
    if cfg.price_in == 0 and cfg.price_out == 0:
        raise UserError("--max-spend needs the judge's prices: --price-in and --price-out (USD per million tokens)")
    bounded = cfg.max_tokens or (cfg.extra_body or {}).get("max_completion_tokens")
    if not bounded and cfg.backend != "rollout":  # the rollout backend's completions default to 512 tokens
        raise UserError("--max-spend needs a bound on each answer's length: set --max-tokens (or "
                        "max_completion_tokens in extra_body), else one answer could cost more than the budget")


def _count(value: Any) -> int | None:
    """A token count as reported, if it is one: an integer (or integral float), finite."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if isinstance(value, float) and (not math.isfinite(value) or not value.is_integer()):
        return None
    return int(value)


def checked_usage(usage: Any, prompt_bytes: int, n: int, bound: int | None, mean_output_tokens: int
                  ) -> tuple[int, int, bool]:
    """(prompt_tokens, completion_tokens, valid) to charge for a reply with this `usage` (an object
    or a mapping) to a request of `n` samples whose prompt has `prompt_bytes` UTF-8 bytes.

    Valid usage is charged as reported; missing, non-integer, negative or beyond what the request
    allows is charged at the request's worst case (see the module docstring)."""
    worst_prompt = prompt_bytes + PROMPT_OVERHEAD_TOKENS
    worst_completion = n * (bound or mean_output_tokens)
    get = usage.get if isinstance(usage, dict) else (lambda name: getattr(usage, name, None))
    pt, ct = (None, None) if usage is None else (_count(get("prompt_tokens")), _count(get("completion_tokens")))
    if (pt is not None and ct is not None and 0 <= pt <= 2 * worst_prompt + 8192
            and 0 <= ct <= n * (bound or MAX_OUTPUT_TOKENS) + 64):
        return pt, ct, True
    return worst_prompt, worst_completion, False


def usage_beyond_bound(usage: Any, prompt_bytes: int, n: int, bound: int | None) -> str | None:
    """What a reply's usage claims beyond what its request allows (more completion tokens than n x the output
    bound: the server does not keep to max_tokens; or an impossible prompt), as well-formed counts; else None.
    A server that does this cannot be held to any budget (see OpenAIJudge: the job stops using it)."""
    get = usage.get if isinstance(usage, dict) else (lambda name: getattr(usage, name, None))
    pt, ct = (None, None) if usage is None else (_count(get("prompt_tokens")), _count(get("completion_tokens")))
    if pt is None or ct is None or pt < 0 or ct < 0:
        return None  # invalid, not beyond: charged at the worst case
    allowed = n * (bound or MAX_OUTPUT_TOKENS) + 64
    if ct > allowed:
        asked = f"max_tokens {bound:,}" if bound else "no bound"
        return f"{ct:,} completion tokens for a request of {n} answer{'s' * (n != 1)} at {asked}"
    if pt > 2 * (prompt_bytes + PROMPT_OVERHEAD_TOKENS) + 8192:
        return f"{pt:,} prompt tokens for a prompt of {prompt_bytes:,} bytes"
    return None


def worst_case_usd(prompt_chars_bytes: int, n: int, max_tokens: int | None, mean_output_tokens: int,
                   price_in: float, price_out: float) -> float:
    """The most a request can cost: prompt bytes + overhead at price_in, n x the output bound at price_out."""
    out = max_tokens or mean_output_tokens
    return (price_in * (prompt_chars_bytes + PROMPT_OVERHEAD_TOKENS) + price_out * n * out) / 1e6


class SpendBudget:
    """Limits on dollars and calls, shared by every request of a job (see the module docstring)."""

    def __init__(self, max_usd: float | None = None, max_calls: int | None = None):
        self.max_usd = max_usd
        self.max_calls = max_calls
        self.charged_usd = 0.0     # labels delivered: paid now + from the cache
        self.paid_usd = 0.0        # paid in this job
        self.calls = 0             # calls charged (paid now + from the cache)
        self.reserved_usd = 0.0
        self.reserved_calls = 0
        self.exhausted = False
        self.refused = 0           # requests not sent for the budget
        self._cond: asyncio.Condition | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @classmethod
    def from_config(cls, cfg: Any) -> SpendBudget | None:
        """A budget from `max_spend` / `max_calls` settings (None when neither is set)."""
        max_usd, max_calls = getattr(cfg, "max_spend", None), getattr(cfg, "max_calls", None)
        return None if max_usd is None and max_calls is None else cls(max_usd, max_calls)

    @property
    def active(self) -> bool:
        return self.max_usd is not None or self.max_calls is not None

    def _condition(self) -> asyncio.Condition:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            self._loop, self._cond = loop, asyncio.Condition()
        assert self._cond is not None
        return self._cond

    def _fits(self, usd: float) -> bool:
        if self.max_usd is not None and self.charged_usd + self.reserved_usd + usd > self.max_usd + 1e-12:
            return False
        return self.max_calls is None or self.calls + self.reserved_calls + 1 <= self.max_calls

    def why(self) -> str:
        parts = []
        if self.max_usd is not None:
            parts.append(f"${self.charged_usd:.4f} of --max-spend ${self.max_usd:g} used")
        if self.max_calls is not None:
            parts.append(f"{self.calls} of --max-calls {self.max_calls} calls used")
        return "; ".join(parts) + "; rerun with a higher limit to continue from the cache"

    async def reserve(self, usd: float) -> bool:
        """Reserve one call costing at most `usd`; False (and exhausted) when the budget cannot pay for it."""
        cond = self._condition()
        async with cond:
            while not self.exhausted:
                if self._fits(usd):
                    self.reserved_usd += usd
                    self.reserved_calls += 1
                    return True
                if self.reserved_calls == 0:  # nothing in flight can give money back
                    self.exhausted = True
                    break
                await cond.wait()
            self.refused += 1
            return False

    async def settle(self, reserved_usd: float, cost_usd: float, paid: bool) -> None:
        """A reserved call is over: billed `cost_usd` if `paid` (an answer came), else nothing."""
        cond = self._condition()
        async with cond:
            self.reserved_usd = max(0.0, self.reserved_usd - reserved_usd)
            self.reserved_calls -= 1
            if paid:
                self.charged_usd += cost_usd
                self.paid_usd += cost_usd
                self.calls += 1
            cond.notify_all()

    async def charge(self, cost_usd: float, calls: int) -> None:
        """Count labels taken from the cache: what they cost when paid, and the calls they took."""
        self.charged_usd += cost_usd
        self.calls += calls

    def as_dict(self) -> dict[str, Any]:
        return {"max_spend_usd": self.max_usd, "max_calls": self.max_calls,
                "charged_usd": round(self.charged_usd, 6), "paid_usd": round(self.paid_usd, 6),
                "calls": self.calls, "exhausted": self.exhausted, "requests_refused": self.refused}
