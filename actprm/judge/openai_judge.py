"""The `openai` backend: a judge model behind any OpenAI-compatible chat-completions endpoint.

`vllm serve`, SGLang, and hosted APIs all speak this protocol; the official `openai` client
(AsyncOpenAI, any `base_url`) talks to them. For each trajectory the judge gets the prompt of
actprm.judge.prompt and answers with the earliest wrong paragraph in \\boxed{}.

Money and time are spent only here, so the rules are strict:

- Never pay twice: before a request, the answer cache (actprm.judge.cache) is asked, and a
  request already on the wire for the same trajectory (a duplicate under another id) is waited
  for instead of sent again; every answer the server returns is stored the moment it arrives,
  parseable or not. A rerun makes
  zero calls for anything already answered; a killed job loses only the requests in flight.
- Limits: at most `concurrency` requests in flight (an asyncio semaphore, held only while a
  request is on the wire, not during back-off; a request given up on at its deadline may still be
  the server's work, so it keeps its slot and its connection until its reply comes or the
  connection ends, at most max(`timeout_s`, 30 s) more, then is closed; a late reply is not used),
  optional requests- and tokens-per-minute
  budgets (aiolimiter's leaky buckets with 10-second windows, so a burst is at most a sixth of
  the minute's budget; tokens are estimated before sending as prompt chars / 4 plus
  `max_tokens`, or `mean_output_tokens` when that is unset, per sample; a request larger than
  a window takes a whole window), a per-request timeout. The limits are an object with an
  async context manager `slot(tokens)`, held while a request is on the wire: by default
  `LocalLimits`, which hold for one annotator (one process); the Ray recipe
  (pipelines/annotate.py) passes one that asks a single gate actor, so they hold for the job.
- Spend: with a budget (`max_spend` / `max_calls`, actprm.judge.budget.SpendBudget) each
  request reserves its worst-case cost right before it is sent, inside its slot, and settles
  at the billed cost when it arrives; a request the budget cannot pay for is not sent and its
  row fails `budget exhausted: ...` (not cached, so a rerun with a higher budget sends it).
- One retry owner: the client's own retries are off (`max_retries=0`); tenacity retries a
  request on 429, timeouts, connection errors, 5xx and malformed bodies, waiting what the
  server's Retry-After says or else a random exponential back-off, at most `max_attempts`
  attempts in all. Other 4xx are not retried: 400/413/422 fail the row (`rejected: ...`),
  401/403/404 stop the job with a user error (a wrong key, model or URL would fail every row).
- Answers: `finish_reason` "length" is a failed sample (`truncated: ...`, the verdict comes at
  the end), "content_filter" a refusal; otherwise the verdict is parsed (actprm.judge.prompt),
  and a parse failure is recorded with the raw text, never guessed.
- Samples: `samples` answers per row, one request with `n=samples` when `use_n` (vLLM, SGLang
  and OpenAI support it), else one request each; the label is the majority of the parseable
  answers (ties: the earliest step, see actprm.judge.base.majority).
- Secrets: the key is read from the environment variable named by `api_key_env` and is never
  written anywhere: it and the credentials of `base_url` are registered with actprm.redact, and
  every answer (before it is cached or kept as `raw_output`) and every error message is redacted.
- Usage: what a reply costs comes from its `usage`, checked (actprm.judge.budget.checked_usage);
  missing or invalid usage is charged at the request's worst case. A 200 reply without choices
  is billed (and counts as a call against `max_calls`) before it is retried.
- Short replies: a server that returns fewer choices than `n` asked for (it ignores `n`) is asked
  again for the missing samples one request each, and the job stops using `n` from then on; the
  row's `votes` hold the real answers only.
- Size: an answer longer than `max_answer_chars` (reasoning included) is not kept: it is cached
  as `too_large` (paid once) and its sample fails `too large: ...`. The body itself is decoded under
  a cap (samples x max_answer_chars x 12 bytes + 1 MiB, actprm.judge.body_cap): a gzip bomb stops
  there, charged at its worst case and cached as `too_large` the same way.
- Bounds: a reply whose usage is beyond what its request allows (a server that ignores `max_tokens`)
  is cached, then the job stops (one line, exit 2): no budget holds against such a server. A request
  that timed out or broke off once sent stays charged at its worst case (`requests_unanswered`).
- Ctrl-C (`request_stop`; the job's side is actprm.judge.interrupt.GracefulInterrupt): the first
  SIGINT stops sending (requests waiting for a slot or a retry are not sent), lets the requests in
  flight finish within `interrupt_grace_s` and caches their answers, then the job exits 130; a
  second SIGINT, or the end of the grace, cancels what is left at once.

The same machinery (limits, retries, budget, cache, accounting) serves text completions: a prompt
given as a string goes to `completions.create` (the rollout annotator's prover, actprm.judge.rollout,
which subclasses this class with its own model, sampling and prompt version).
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit

import httpx2
import openai
from aiolimiter import AsyncLimiter
from tenacity import (
    AsyncRetrying,
    retry_if_exception,
    stop_after_attempt,
    wait_random_exponential,
)

from actprm.errors import UserError
from actprm.judge.base import Annotator, majority
from actprm.judge.body_cap import BadEncoding, CappedTransport, ReplyTooLarge
from actprm.judge.budget import (
    BudgetExhausted,
    SpendBudget,
    checked_usage,
    output_bound,
    usage_beyond_bound,
    worst_case_usd,
)
from actprm.judge.cache import Answer, AnswerCache, answer_key
from actprm.judge.prompt import (
    PROMPT_VERSION,
    ParseError,
    build_messages,
    parse_verdict,
    split_reasoning,
)
from actprm.redact import display_url, redact, register_endpoint

Prompt = str | list[dict[str, str]]  # a text prompt (completions) or chat messages


def prompt_text(prompt: Prompt) -> str:
    """The text of a prompt: what its size and price are estimated from."""
    return prompt if isinstance(prompt, str) else "".join(m["content"] for m in prompt)


#: decoded bytes a reply may have per answer it holds, per character of max_answer_chars: JSON escapes
#: take up to 12 bytes a character (a surrogate pair as two \uXXXX)
BODY_BYTES_PER_CHAR = 12
BODY_SLACK_BYTES = 1 << 20  # ids, usage, field names
NO_CAP_CHARS = 8_000_000  # the body cap when max_answer_chars is not set

# Retry-After values above this are not honoured as such (a day-long ban is a failure, not a wait)
MAX_RETRY_AFTER_S = 600.0
#: A request given up on at its deadline keeps its slot (and connection) at most this long more, or
#: `timeout_s` more where that is longer: the server may be working on it still.
ABANDONED_HOLD_S = 30.0


class MalformedResponse(Exception):
    """A 200 response whose body is not a usable chat completion (cut off, not JSON, no choices)."""


class EmptyReply(MalformedResponse):
    """A 200 response with no choices: billed like an answer (its usage), then retried."""

    def __init__(self, message: str, response: Any):
        super().__init__(message)
        self.response = response


class JudgeStopped(Exception):
    """The job was interrupted (Ctrl-C): this request is not sent."""


SHORT = "short"  # a sample the server's reply had no choice for (it ignored n): asked for again
TOO_LARGE = "too_large"  # finish_reason of a cached answer that exceeded max_answer_chars (its text not kept)


class FatalEndpointError(UserError):
    """The endpoint refuses every request (bad key, unknown model, wrong URL): stop the job."""


class DeadlineExceeded(Exception):
    """A request that did not finish within `timeout_s` from its start (however the bytes came)."""


def is_transient(exc: BaseException) -> bool:
    """Worth another attempt: rate limits, timeouts, connection errors, 5xx, malformed bodies."""
    if isinstance(exc, (MalformedResponse, DeadlineExceeded, openai.APIConnectionError, openai.RateLimitError)):
        return True  # APITimeoutError is an APIConnectionError
    return isinstance(exc, openai.APIStatusError) and exc.status_code >= 500


def may_be_billed(exc: BaseException) -> bool:
    """The request left and no usable reply came back (a timeout, a connection cut mid-reply, a broken body,
    a request abandoned by a second Ctrl-C): the server may have billed it. Refused connections and HTTP
    errors were not."""
    if isinstance(exc, EmptyReply):
        return False  # billed from its usage
    if isinstance(exc, (DeadlineExceeded, MalformedResponse, asyncio.CancelledError, openai.APITimeoutError)):
        return True
    if isinstance(exc, openai.APIConnectionError):
        return not isinstance(exc.__cause__, (httpx2.ConnectError, httpx2.ConnectTimeout))
    return False


def retry_after_s(exc: BaseException | None) -> float | None:
    """Seconds the server asked us to wait (Retry-After, in seconds or as an HTTP date), if any."""
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None)
    if not headers:
        return None
    if headers.get("retry-after-ms"):
        try:
            return float(headers["retry-after-ms"]) / 1000.0
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError):
            return None
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)


class WaitRetryAfterOrBackoff:
    """tenacity wait: the server's Retry-After when it gives one (capped), else random exponential."""

    def __init__(self, max_backoff_s: float):
        self.backoff = wait_random_exponential(multiplier=0.5, max=max_backoff_s)

    def __call__(self, retry_state: Any) -> float:
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        asked = retry_after_s(exc)
        if asked is not None and asked <= MAX_RETRY_AFTER_S:
            return asked
        return self.backoff(retry_state)


def per_minute_limiter(per_minute: int | None) -> AsyncLimiter | None:
    """A leaky bucket for a per-minute budget that bursts at most a sixth of it (10-second windows).

    A budget under 6 per minute gets one bucket per minute instead (a bucket must hold one unit).
    """
    if not per_minute:
        return None
    if per_minute < 6:
        return AsyncLimiter(per_minute, 60)
    return AsyncLimiter(per_minute / 6, 10)


class LocalLimits:
    """The request limits of one process: `concurrency` in flight, optional RPM and TPM budgets.

    `acquire(tokens)` waits for a free slot (held until `release()`), then for the budgets;
    `slot(tokens)` does both around a block. Made inside the event loop that uses it.
    """

    def __init__(self, concurrency: int, requests_per_minute: int | None = None,
                 tokens_per_minute: int | None = None):
        self._slots = asyncio.Semaphore(concurrency)
        self._rpm = per_minute_limiter(requests_per_minute)
        self._tpm = per_minute_limiter(tokens_per_minute)
        self.in_flight = 0
        self.max_in_flight = 0

    async def acquire(self, tokens: int) -> None:
        await self._slots.acquire()
        try:
            if self._rpm is not None:
                await self._rpm.acquire()
            if self._tpm is not None:
                await self._tpm.acquire(min(tokens, self._tpm.max_rate))
        except BaseException:
            self._slots.release()
            raise
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)

    def release(self) -> None:
        self.in_flight -= 1
        self._slots.release()

    @asynccontextmanager
    async def slot(self, tokens: int) -> AsyncIterator[None]:
        await self.acquire(tokens)
        try:
            yield
        finally:
            self.release()


@dataclass
class JudgeStats:
    """What this annotator did in this process (progress and summaries read it live)."""

    requests: int = 0          # HTTP requests sent, retries included
    answers: int = 0           # answers received and cached (each is paid for)
    cached: int = 0            # samples served from the cache instead
    prompt_tokens: int = 0     # billed in this process
    completion_tokens: int = 0
    cost_usd: float = 0.0
    in_flight: int = 0
    max_in_flight: int = 0
    retries: Counter = field(default_factory=Counter)  # by exception type
    usage_invalid: int = 0     # paid replies whose usage was missing or invalid (charged at the worst case)
    empty_replies: int = 0     # paid replies without choices
    short_replies: int = 0     # replies with fewer choices than n asked for (the server ignores n)
    too_large: int = 0         # answers beyond max_answer_chars (not kept)
    unanswered: int = 0        # requests that timed out or broke off once sent: charged at their worst case
    unanswered_usd: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"requests": self.requests, "answers_paid": self.answers, "samples_from_cache": self.cached,
                "spent_prompt_tokens": self.prompt_tokens, "spent_completion_tokens": self.completion_tokens,
                "spent_usd": round(self.cost_usd, 6), "max_in_flight": self.max_in_flight,
                "retries_by_kind": dict(self.retries.most_common()),
                "replies_with_invalid_usage": self.usage_invalid, "replies_without_choices": self.empty_replies,
                "replies_short_of_n": self.short_replies, "answers_too_large": self.too_large,
                "requests_unanswered": self.unanswered, "unanswered_worst_case_usd": round(self.unanswered_usd, 6)}

    def add(self, other: JudgeStats) -> JudgeStats:
        """Add another annotator's counts (e.g. one Ray actor's); max_in_flight is left to the caller."""
        for name in ("requests", "answers", "cached", "prompt_tokens", "completion_tokens", "cost_usd",
                     "usage_invalid", "empty_replies", "short_replies", "too_large", "unanswered", "unanswered_usd"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.retries.update(other.retries)
        return self


@dataclass
class _Sample:
    answer: Answer | None = None
    from_cache: bool = False
    error: str | None = None  # a request that never produced an answer


def check_base_url(url: str | None) -> None:
    """An endpoint URL the client can send to (http or https, with a host), else one line before anything is
    sent (a typo would otherwise fail every row with a connection error). None: the client's default."""
    if url is None:
        return
    try:
        parts = urlsplit(url)
        ok = parts.scheme in ("http", "https") and bool(parts.hostname)
    except ValueError:
        ok = False
    if not ok:
        raise UserError(f"--base-url {display_url(url)!r}: not an http(s) URL with a host "
                        "(e.g. http://localhost:8000/v1)")


class OpenAIJudge(Annotator):
    """Annotator backed by a judge model over the chat-completions API (see the module docstring).

    `cfg` is an actprm.config.JudgeConfig (or any object with its fields); `cache` the answer
    cache (None: no cache, every call is paid; only for tests and throwaway runs), or anything
    with its `get_many` and `put`; `limits` an object with an async context manager
    `slot(tokens)` that holds a request's place under the limits (default: `LocalLimits` from
    the config, made per event loop); `budget` a spend limit (actprm.judge.budget.SpendBudget, or
    anything with its async `reserve`, `settle`, `charge` and `why`; default: from the config's
    `max_spend` / `max_calls`, None when neither is set).
    """

    def __init__(self, cfg: Any, cache: AnswerCache | None = None, *, limits: Any = None, budget: Any = None,
                 model: str | None = None, samples: int | None = None, sampling: dict[str, Any] | None = None,
                 prompt_version: str = PROMPT_VERSION):
        # model / samples / sampling / prompt_version: another client of the same machinery (the rollout
        # annotator's prover, actprm.judge.rollout); default: the judge's settings in `cfg`
        if model is None and not cfg.judge_model:
            raise UserError("the openai backend needs --judge-model (the model name the endpoint serves)")
        self.cfg = cfg
        self.cache = cache
        self.model = model or cfg.judge_model
        self.judge = self.model
        self.prompt_version = prompt_version
        self.samples = int(samples or cfg.samples)
        self.sampling = sampling if sampling is not None else {
            "temperature": cfg.temperature, "top_p": cfg.top_p, "max_tokens": cfg.max_tokens,
            "extra_body": cfg.extra_body or None}
        self.stats = JudgeStats()
        self._key_env = cfg.api_key_env
        self._api_key = os.environ.get(cfg.api_key_env, "") if cfg.api_key_env else ""
        register_endpoint(self._api_key, cfg.base_url)  # redacted from all this process writes or prints
        check_base_url(cfg.base_url or os.environ.get("OPENAI_BASE_URL"))
        self.max_answer_chars = int(getattr(cfg, "max_answer_chars", 0) or 0) or None
        self.use_n = bool(cfg.use_n)  # turned off for the rest of the job when the server ignores n
        self.stopping = False  # Ctrl-C: send nothing new (request_stop)
        self.broken: str | None = None  # why this server cannot be paid any more (its usage broke the bound)
        self._shared_limits = limits
        self.budget = budget if budget is not None else SpendBudget.from_config(cfg)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client: Any = None

    # ------------------------------------------------------------ per event loop state

    def _bind(self) -> None:
        """Client and limits of the running loop (made once per loop)."""
        loop = asyncio.get_running_loop()
        if self._loop is loop:
            return
        self._loop = loop
        self._pending: dict[str, asyncio.Future] = {}  # cache key -> the answer being fetched
        self._stop_event = asyncio.Event()
        if self.stopping:
            self._stop_event.set()
        self._client = self._make_client()
        self._held: set[asyncio.Task] = set()  # abandoned requests keeping their slots (_hold)
        self._limits = self._shared_limits or LocalLimits(
            self.cfg.concurrency, self.cfg.requests_per_minute, self.cfg.tokens_per_minute)

    def body_cap(self) -> int:
        """The most bytes a reply's body may decode to: `samples` answers of max_answer_chars, escaped."""
        chars = self.max_answer_chars or NO_CAP_CHARS
        return max(1, self.samples) * chars * BODY_BYTES_PER_CHAR + BODY_SLACK_BYTES

    def _make_client(self) -> Any:
        """The client of the running loop: the official one, its own retries off (tenacity owns them), every
        reply decoded under the body cap (a gzip bomb stops at the cap, not at its decoded size)."""
        transport = CappedTransport(self.body_cap(), httpx2.AsyncHTTPTransport(
            limits=httpx2.Limits(max_connections=1000, max_keepalive_connections=100)))
        return openai.AsyncOpenAI(
            api_key=self._api_key or "EMPTY",  # local servers without auth accept any key
            # the deadline is ours (_post); the client's own timeout only ends an abandoned request's hold
            base_url=self.cfg.base_url, timeout=self.cfg.timeout_s + self.abandoned_hold_s(), max_retries=0,
            http_client=openai.DefaultAsyncHttpxClient(transport=transport))

    def abandoned_hold_s(self) -> float:
        """How long a request given up on at its deadline keeps its slot at most (see `_hold`)."""
        return max(float(self.cfg.timeout_s), ABANDONED_HOLD_S)

    @property
    def abandoned(self) -> int:
        """Requests given up on at their deadline that still hold their slot (their answers are not used)."""
        return len(getattr(self, "_held", ()))

    async def aclose(self) -> None:
        held = list(getattr(self, "_held", ()))
        for task in held:  # the job is done: close the abandoned requests' connections now
            task.cancel()
        await asyncio.gather(*held, return_exceptions=True)
        if self._client is not None:
            await self._client.close()
        self._client, self._loop = None, None

    def redact(self, text: str) -> str:
        """`text` with the API key, the URL's credentials and anything credential-like removed (actprm.redact)."""
        return redact(text, [self._api_key])

    def request_stop(self) -> None:
        """Send nothing new: requests waiting for a slot, the budget or a retry fail `interrupted`;
        those in flight finish and are cached (see `GracefulInterrupt`)."""
        self.stopping = True
        if self._loop is not None:
            self._stop_event.set()

    def _check_stop(self) -> None:
        if self.broken:
            raise JudgeStopped("the judge broke the bound of an earlier request")
        if self.stopping:
            raise JudgeStopped("the job was interrupted before this request was sent")

    async def _sleep(self, seconds: float) -> None:
        """tenacity's wait between attempts, cut short by `request_stop`."""
        if self._loop is None:
            await asyncio.sleep(seconds)
            return
        try:
            await asyncio.wait_for(self._stop_event.wait(), timeout=seconds)
        except asyncio.TimeoutError:
            pass

    # ------------------------------------------------------------------- one request

    def _cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (self.cfg.price_in * prompt_tokens + self.cfg.price_out * completion_tokens) / 1e6

    def _token_estimate(self, messages: Prompt, n: int) -> int:
        prompt = len(prompt_text(messages)) // 4
        out = self.sampling.get("max_tokens") or self.cfg.mean_output_tokens
        return prompt + n * out

    def _worst_case_usd(self, messages: Prompt, n: int) -> float:
        prompt_bytes = len(prompt_text(messages).encode("utf-8"))
        return worst_case_usd(prompt_bytes, n, output_bound(self.sampling), self.cfg.mean_output_tokens,
                              self.cfg.price_in, self.cfg.price_out)

    def _billed(self, response: Any, messages: Prompt, n: int) -> tuple[int, int]:
        """The (prompt, completion) tokens a paid reply is charged: its usage if valid, else the worst case."""
        usage = getattr(response, "usage", None)
        pt, ct, valid = checked_usage(usage, len(prompt_text(messages).encode("utf-8")), n,
                                      output_bound(self.sampling), self.cfg.mean_output_tokens)
        self.stats.usage_invalid += not valid
        beyond = usage_beyond_bound(usage, len(prompt_text(messages).encode("utf-8")), n, output_bound(self.sampling))
        if beyond and not self.broken:
            where = display_url(self.cfg.base_url) or "the default OpenAI endpoint"
            self.broken = (f"the judge endpoint {where} billed {beyond}: it does not keep to the bound, so no "
                           "spend limit holds against it; stopped sending to it (the answers paid are cached)")
        self.stats.prompt_tokens += pt
        self.stats.completion_tokens += ct
        self.stats.cost_usd += self._cost(pt, ct)
        return pt, ct

    async def _send(self, messages: Prompt, n: int, extra: dict[str, Any] | None = None
                    ) -> tuple[Any, tuple[int, int]]:
        """One HTTP request under the limits and the budget: a usable completion and the tokens it is
        charged, or an exception (an EmptyReply is charged before it is raised)."""
        self._check_stop()
        async with AsyncExitStack() as slot:
            await slot.enter_async_context(self._limits.slot(self._token_estimate(messages, n)))
            self._check_stop()
            reserved = None
            if self.budget is not None:
                reserved = self._worst_case_usd(messages, n)
                if not await self.budget.reserve(reserved):  # checked right before the request is sent
                    raise BudgetExhausted(self.budget.why())
            try:
                response = await self._post(messages, n, extra)
            except (EmptyReply, ReplyTooLarge) as exc:  # billed: counts as a call
                if isinstance(exc, EmptyReply):
                    self.stats.empty_replies += 1
                billed = self._billed(getattr(exc, "response", None), messages, n)
                if reserved is not None:
                    await self.budget.settle(reserved, self._cost(*billed), True)
                exc.billed = billed  # type: ignore[attr-defined]
                raise
            except BaseException as exc:
                if may_be_billed(exc):  # sent, no reply: the server may bill it, so it stays charged (and a call)
                    worst = self._worst_case_usd(messages, n)
                    self.stats.unanswered += 1
                    self.stats.unanswered_usd += worst
                    if reserved is not None:
                        await self.budget.settle(reserved, worst, True)
                elif reserved is not None:
                    await self.budget.settle(reserved, 0.0, False)
                call = getattr(exc, "on_the_wire", None)
                if call is not None:  # given up on, but the server may be at work on it: it keeps its slot
                    self._hold(call, slot.pop_all())
                raise
            billed = self._billed(response, messages, n)
            if reserved is not None:
                await self.budget.settle(reserved, self._cost(*billed), True)
            return response, billed

    async def _post(self, messages: Prompt, n: int, extra: dict[str, Any] | None = None) -> Any:
        """The HTTP request itself (inside its slot): chat completions for a list of messages,
        (text) completions for a string prompt; a usable response or an exception."""
        self.stats.requests += 1
        self.stats.in_flight += 1
        self.stats.max_in_flight = max(self.stats.max_in_flight, self.stats.in_flight)
        chat = not isinstance(messages, str)
        call = None
        try:
            kwargs: dict[str, Any] = {"model": self.model, **({"messages": messages} if chat else {"prompt": messages})}
            for name in ("temperature", "top_p", "max_tokens", "stop"):
                if self.sampling.get(name) is not None:
                    kwargs[name] = self.sampling[name]
            if n > 1:
                kwargs["n"] = n
            if self.sampling["extra_body"]:
                kwargs["extra_body"] = self.sampling["extra_body"]
            kwargs.update(extra or {})
            api = self._client.chat.completions if chat else self._client.completions
            call = asyncio.ensure_future(api.create(**kwargs))
            try:  # timeout_s is a deadline for the whole request: a server dripping bytes cannot hold it open
                response = await asyncio.wait_for(asyncio.shield(call), timeout=self.cfg.timeout_s)
            except asyncio.TimeoutError:
                late = DeadlineExceeded(f"no whole answer within {self.cfg.timeout_s:g}s")
                late.on_the_wire = call  # type: ignore[attr-defined]  # still open: _send hands it to _hold
                raise late from None
            except asyncio.CancelledError:
                call.cancel()  # abandoned by a second Ctrl-C: closed at once
                raise
            except json.JSONDecodeError as exc:
                raise MalformedResponse(f"the body is not JSON ({exc.msg})") from exc
            except (openai.APIConnectionError, BadEncoding) as exc:  # the transport's refusals, as themselves
                cause = exc if isinstance(exc, BadEncoding) else exc.__cause__
                if isinstance(cause, ReplyTooLarge):
                    raise cause from None
                if isinstance(cause, BadEncoding):
                    raise MalformedResponse(str(cause)) from None
                raise
        finally:
            if call is None or call.done():  # else still on the wire: _hold counts it until it ends
                self.stats.in_flight -= 1
        choices = getattr(response, "choices", None)
        field = "message" if chat else "text"
        if not choices:
            raise EmptyReply("the response has no choices", response)
        if any(getattr(c, field, None) is None for c in choices):
            raise MalformedResponse(f"the response has no choices/{field}")
        return response

    def _hold(self, call: asyncio.Future, slot: AsyncExitStack) -> None:
        """A request given up on at its deadline keeps its connection and its slot (`slot`, already entered)
        until its reply comes or the connection ends, at most `abandoned_hold_s` more; then it is closed
        and the slot freed. A reply that comes late is not used: the request stays charged its worst case."""
        async def settle() -> None:
            try:
                await asyncio.wait({call}, timeout=self.abandoned_hold_s())
            finally:
                call.cancel()
                await asyncio.gather(call, return_exceptions=True)
                self.stats.in_flight -= 1
                await slot.aclose()

        task = asyncio.ensure_future(settle())
        self._held.add(task)
        task.add_done_callback(self._held.discard)

    def _request_params(self, samples: list[int], keys: list[str]) -> dict[str, Any]:
        """Extra request fields for these samples (none for the judge; the rollout backend seeds them)."""
        return {}

    async def _request(self, row: dict[str, Any], messages: Prompt,
                       samples: list[int], keys: list[str]) -> tuple[dict[int, _Sample], int]:
        """Answers for `samples` of one row (one request with n, or one per sample), cached on arrival.

        A sample the reply has no choice for (the server ignored n) comes back with error SHORT."""
        attempts = 0
        wasted = [0, 0]  # tokens billed for replies without choices: charged to this request's first answer
        try:
            async for attempt in AsyncRetrying(
                    stop=stop_after_attempt(self.cfg.max_attempts),
                    wait=WaitRetryAfterOrBackoff(self.cfg.max_backoff_s), sleep=self._sleep,
                    retry=retry_if_exception(is_transient), reraise=True):
                with attempt:
                    attempts += 1
                    try:
                        response, (prompt_tokens, completion_tokens) = await self._send(
                            messages, len(samples), self._request_params(samples, keys))
                    except Exception as exc:
                        if isinstance(exc, (EmptyReply, ReplyTooLarge)):
                            wasted[0] += exc.billed[0]  # type: ignore[attr-defined]
                            wasted[1] += exc.billed[1]  # type: ignore[attr-defined]
                        if is_transient(exc):
                            self.stats.retries[type(exc).__name__] += 1
                        raise
        except ReplyTooLarge:  # paid, but not read past the cap: every sample of it is too large (and cached)
            choices, prompt_tokens, completion_tokens = [None] * len(samples), 0, 0
        except Exception as exc:  # noqa: BLE001 - every failure of a request becomes a failed row
            return {s: _Sample(error=self._request_error(exc, attempts)) for s in samples}, attempts
        else:
            choices = list(response.choices)
        out: dict[int, _Sample] = {}
        if len(choices) < len(samples):
            self.stats.short_replies += 1
        kept = min(len(choices), len(samples))
        for j, s in enumerate(samples):
            if j >= len(choices):
                out[s] = _Sample(error=SHORT)
                continue
            # usage is per request: the prompt is billed to the first answer, completions split evenly
            pt = prompt_tokens + wasted[0] if j == 0 else 0
            ct = completion_tokens // kept + (completion_tokens % kept + wasted[1] if j == 0 else 0)
            message = getattr(choices[j], "message", None)
            if choices[j] is None:  # a body over the cap
                content, reasoning, finish = None, None, None
            elif message is None:  # a text completion
                content, reasoning, finish = choices[j].text, None, choices[j].finish_reason
            else:
                content, finish = message.content, choices[j].finish_reason
                reasoning = getattr(message, "reasoning_content", None) or getattr(message, "reasoning", None)
            content = content if isinstance(content, str) else None
            reasoning = reasoning if isinstance(reasoning, str) else None
            if choices[j] is None or (self.max_answer_chars
                                      and len(content or "") + len(reasoning or "") > self.max_answer_chars):
                self.stats.too_large += 1
                content, reasoning, finish = None, None, TOO_LARGE  # paid, so cached, but not kept
            answer = Answer(content=self.redact(content), reasoning=self.redact(reasoning), finish_reason=finish,
                            prompt_tokens=pt, completion_tokens=ct, cost_usd=self._cost(pt, ct))
            if self.cache is not None:
                self.cache.put(keys[s], answer, row_id=row.get("id"), sample=s, model=self.model,
                               prompt_version=self.prompt_version)
            self.stats.answers += 1
            out[s] = _Sample(answer=answer)
        if self.broken:  # this reply's answers are cached; nothing more is sent to this server
            raise FatalEndpointError(self.broken)
        return out, attempts

    def _request_error(self, exc: BaseException, attempts: int) -> str:
        if self.broken:
            raise FatalEndpointError(self.broken) from None
        if isinstance(exc, BudgetExhausted):
            return f"budget exhausted: {exc}"
        if isinstance(exc, JudgeStopped):
            return f"interrupted: {exc}"
        if isinstance(exc, openai.APIStatusError) and exc.status_code in (401, 403, 404):
            raise FatalEndpointError(self._endpoint_hint(exc)) from None
        if isinstance(exc, openai.APIStatusError) and not is_transient(exc):
            return f"rejected: HTTP {exc.status_code} {self.redact(_clip(exc.message))}"
        what = f"{type(exc).__name__}: {self.redact(_clip(str(exc)))}"
        return f"request: gave up after {attempts} attempt{'s' * (attempts != 1)} ({what})"

    def _endpoint_hint(self, exc: openai.APIStatusError) -> str:
        where = display_url(self.cfg.base_url) or "the default OpenAI endpoint"
        if exc.status_code in (401, 403):
            key = (f"${self._key_env} is {'set' if self._api_key else 'not set'}" if self._key_env
                   else "no --api-key-env was given")
            fix = f"check the API key ({key})"
        else:
            fix = f"check --judge-model ({self.model!r}) and --base-url"
        return (f"the judge endpoint {where} refused the request with HTTP {exc.status_code}: "
                f"{self.redact(_clip(exc.message))}; {fix}")

    # --------------------------------------------------------------------- one row

    def _vote(self, answer: Answer, n_steps: int) -> tuple[int | None, str | None]:
        if answer.finish_reason == "length":
            return None, (f"truncated: the answer hit the token limit (finish_reason length, "
                          f"{answer.completion_tokens} tokens); raise max_tokens")
        if answer.finish_reason == "content_filter":
            return None, "refusal: the endpoint's content filter stopped the answer"
        if answer.finish_reason == TOO_LARGE:
            return None, (f"too large: the answer was longer than max_answer_chars ({self.max_answer_chars or 0:,}); "
                          "its text was not kept")
        _, text = split_reasoning(answer.content, answer.reasoning)
        try:
            return parse_verdict(text, n_steps), None
        except ParseError as exc:
            return None, f"parse: {exc}"

    async def _samples(self, row: dict[str, Any], messages: Prompt, keys: list[str]
                       ) -> tuple[dict[int, _Sample], int]:
        """Sample s of `messages` for every s of `keys` (its cache key): from the cache, from a request
        already on the wire for the same key, or sent now (one request with n, or one per sample).
        Returns the samples by index and the requests sent for them."""
        found = self.cache.get_many(keys) if self.cache is not None else {}
        got: dict[int, _Sample] = {s: _Sample(answer=found[k], from_cache=True) for s, k in enumerate(keys) if k in found}
        self.stats.cached += len(got)
        if self.budget is not None and got:  # labels from the cache count at what they cost when paid
            await self.budget.charge(sum(x.answer.cost_usd for x in got.values()),
                                     1 if self.use_n else len(got))
        missing = [s for s in range(len(keys)) if s not in got]
        # the same trajectory under another id may be on the wire right now: wait for its answer
        theirs = {s: self._pending[keys[s]] for s in missing if keys[s] in self._pending}
        mine = [s for s in missing if s not in theirs]
        attempts = 0
        if mine:
            futures = {s: asyncio.get_running_loop().create_future() for s in mine}
            self._pending.update({keys[s]: futures[s] for s in mine})
            try:
                groups = [mine] if self.use_n and len(mine) > 1 else [[s] for s in mine]
                for answers, n_attempts in await asyncio.gather(
                        *(self._request(row, messages, g, keys) for g in groups)):
                    got.update(answers)
                    attempts += n_attempts
                short = [s for s in mine if got[s].error == SHORT]
                if short:  # the server ignores n: one request per missing sample, and no n from now on
                    self.use_n = False
                    for answers, n_attempts in await asyncio.gather(
                            *(self._request(row, messages, [s], keys) for s in short)):
                        got.update(answers)
                        attempts += n_attempts
            finally:
                for s, future in futures.items():
                    del self._pending[keys[s]]
                    future.set_result(got.get(s) or _Sample(error="request: abandoned"))
        for s, future in theirs.items():
            sample = await future
            got[s] = _Sample(answer=sample.answer, from_cache=True, error=sample.error)
            self.stats.cached += sample.answer is not None
        return got, attempts

    async def annotate_row(self, row: dict[str, Any]) -> dict[str, Any]:
        start = time.perf_counter()
        rid, problem, steps = row.get("id"), row.get("problem"), row.get("steps")
        if not isinstance(problem, str) or not isinstance(steps, (list, tuple)) or not steps:
            return self.failed(rid, "bad input: needs a problem and a non-empty list of steps", attempts=0)
        steps = [str(s) for s in steps]
        keys = [answer_key(problem, steps, self.model, self.prompt_version, self.sampling, s)
                for s in range(self.samples)]
        messages = build_messages(problem, steps)
        got, attempts = await self._samples(row, messages, keys)
        votes, errors, contents = [], [], []
        pt = ct = 0
        cost = 0.0
        for s in range(self.samples):
            sample = got[s]
            if sample.answer is None:
                errors.append(sample.error)
                contents.append(None)
                continue
            a = sample.answer
            pt, ct, cost = pt + a.prompt_tokens, ct + a.completion_tokens, cost + a.cost_usd
            contents.append(a.content)
            vote, error = self._vote(a, len(steps))
            if vote is None:
                errors.append(error)
            else:
                votes.append(vote)
        raw = None
        if self.cfg.raw_output and any(c is not None for c in contents):
            raw = contents[0] if self.samples == 1 else json.dumps(contents, ensure_ascii=False)
        fields = {"prompt_tokens": pt, "completion_tokens": ct, "cost_usd": cost, "attempts": attempts,
                  "cached": sum(1 for x in got.values() if x.from_cache and x.answer is not None),
                  "latency_s": time.perf_counter() - start, "raw_output": raw}
        if not votes:
            distinct = list(dict.fromkeys(e for e in errors if e))
            error = distinct[0] if len(distinct) == 1 else "; ".join(distinct)
            if self.samples > 1:
                error += f" ({len(errors)} of {self.samples} samples)"
            return self.failed(rid, error, **fields)
        label, agreement = majority(votes)
        return self.labelled(rid, label, votes=votes, agreement=agreement, **fields)

    async def annotate_async(self, rows: list[dict[str, Any]],
                             on_row: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
        self._bind()

        async def one(row: dict[str, Any]) -> dict[str, Any]:
            out = await self.annotate_row(row)
            if on_row is not None:
                on_row(out)
            return out

        return list(await asyncio.gather(*(one(r) for r in rows)))


def _clip(text: str, n: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[: n - 3] + "..."
