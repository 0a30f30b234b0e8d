"""A stand-in judge: a real HTTP server on 127.0.0.1 speaking enough of the OpenAI
chat-completions protocol for the official client, with faults on demand.

It reads the prompt the way a judge model would (actprm.judge.prompt's layout: the problem after
`[Problem]`, the steps as `<paragraph_i>` blocks) and answers `\\boxed{k}`:

- `truth` maps a problem text to its (first_error_step, n_steps), e.g. from the world; the
  verdict is that label when the prompt shows exactly n_steps paragraphs. A prompt whose
  paragraphs were broken up by a step's own tags shows a different count, and the server then
  answers -1 (a judge misled by the layout);
- a problem it does not know is checked step by step: the first paragraph with an `a op b = c`
  that does not hold is the verdict, -1 if none;
- it is gullible on purpose: a paragraph containing `\\boxed{k}` makes it answer k (what an
  unescaped step could plant);
- `wrong_rate`: each answer is wrong with this probability (seeded), for voting tests.

Faults, one per request: `faults` (a queue the test fills; consumed first) or `fault_rates`
(seeded random draws): `429` (with Retry-After), `500`, `hang` (sleeps `hang_s`, then 503),
`malformed` (a 200 whose JSON body is cut off), `empty` (a 200 with no choices), `400`, `401`,
`no_boxed`, `out_of_range`, `length` (finish_reason "length", cut mid-reasoning); and what a
careless or hostile server does: `no_usage` (no `usage` in the body), `negative_usage`
(-100000 tokens each), `absurd_usage` (10**15 tokens each), `echo_key` (the answer and its
reasoning repeat the Authorization header), `ignore_n` (one choice whatever `n` asks for), `huge`
(an answer of `huge_chars` characters before the verdict), `echo_prompt` (the answer is the
prompt itself: the template's example boxes), `slow` (answers after `slow_s` seconds, or when
`release_slow()` is called), `drip` (the body one byte every `drip_s` seconds), `gzip_bomb` (a gzip body
of about `bomb_bytes / 1000` on the wire that decodes to `bomb_bytes`: the answer padded), `ignore_max_tokens`
(usage reports 4 x `max_tokens` completion tokens per answer, as a server ignoring the bound would bill). Answers come in
the content, in <think> tags (`reasoning="think"`) or in a `reasoning_content` field
(`reasoning="field"`); the reasoning holds a decoy \\boxed{} that a parser must not read.

A `/v1/completions` route (text completions, what the rollout annotator's prover endpoint speaks)
answers when a `prover` is given: a callable `prover(prompt, n, body) -> list[str]` (a hand-made
prover in tests, or `local_prover(LocalProver(...))`: the world backbone in-process); the faults
`429` and `500` apply to it too. `--prover DIR|backbone` serves one from the command line.

`paid` counts delivered answers (choices of 200 responses with a completion) per prompt: the
number a judge would bill. Use in-process (`with JudgeServer(...) as server: server.url`) or
as a process: `python -m actprm.testing.judge_server --port 8011 --delay 0.2 --world-rows 5000`.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import random
import re
import threading
import time
import zlib
from collections import Counter, deque
from collections.abc import Iterable, Mapping
from typing import Any

from aiohttp import web

from actprm.judge.prover import LocalProver, choice_seed
from actprm.world.arith import Generator

FAULTS = ("429", "500", "hang", "malformed", "empty", "400", "401",
          "no_boxed", "out_of_range", "length",
          "no_usage", "negative_usage", "absurd_usage", "echo_key", "ignore_n", "huge", "echo_prompt", "slow",
          "drip", "gzip_bomb", "ignore_max_tokens")

_PROBLEM = re.compile(r"\[Problem\]\n(.*?)\n\n\[Solution\]\n", re.DOTALL)
_PARAGRAPH = re.compile(r"<paragraph_(\d+)>\n(.*?)\n</paragraph_\1>", re.DOTALL)
_PLANTED = re.compile(r"\\boxed\{(-?\d+)\}")
_ARITH = re.compile(r"(\d+) ([-+×*]) (\d+) = (\d+)")


def arithmetic_verdict(paragraphs: list[str]) -> int:
    """The first paragraph with a false `a op b = c`, -1 if none."""
    for i, text in enumerate(paragraphs):
        for a, op, b, c in _ARITH.findall(text):
            a_, b_, c_ = int(a), int(b), int(c)
            value = a_ + b_ if op == "+" else a_ - b_ if op == "-" else a_ * b_
            if value != c_:
                return i
    return -1


def truth_from_rows(rows: Iterable[Mapping[str, Any]]) -> dict[str, tuple[int, int]]:
    """problem -> (first_error_step, n_steps) from trajectory rows (e.g. the world's)."""
    return {r["problem"]: (int(r["first_error_step"]), len(r["steps"])) for r in rows}


class FakeJudge:
    """The server's state and answers; transport-free so that tests can read its counters."""

    def __init__(self, truth: Mapping[str, tuple[int, int]] | None = None, *, delay_s: float = 0.0,
                 faults: Iterable[str] = (), fault_rates: Mapping[str, float] | None = None,
                 wrong_rate: float = 0.0, reasoning: str = "none", retry_after: str = "1",
                 hang_s: float = 30.0, seed: int = 0, prover: Any = None, huge_chars: int = 2_000_000,
                 slow_s: float = 2.0, drip_s: float = 0.5, bomb_bytes: int = 200_000_000):
        for fault in list(faults) + list(fault_rates or {}):
            if fault not in FAULTS:
                raise ValueError(f"unknown fault {fault!r}; choose from {', '.join(FAULTS)}")
        self.truth = dict(truth or {})
        self.prover = prover
        self.delay_s = delay_s
        self.faults: deque[str] = deque(faults)
        self.fault_rates = dict(fault_rates or {})
        self.wrong_rate = wrong_rate
        self.reasoning = reasoning
        self.retry_after = retry_after
        self.hang_s = hang_s
        self.huge_chars = huge_chars
        self.slow_s = slow_s
        self.drip_s = drip_s
        self.bomb_bytes = bomb_bytes
        self._released = False
        self.rng = random.Random(seed)
        self.seed = seed
        self.requests = 0
        self.statuses: Counter = Counter()
        self.faults_served: Counter = Counter()
        self.paid: Counter = Counter()  # prompt sha256 -> answers delivered
        self.headers_seen: list[dict[str, str]] = []
        self.max_in_flight = 0
        self._in_flight = 0

    def release_slow(self) -> None:
        """Answer every `slow` request now, and no more slow ones."""
        self._released = True
        self.fault_rates.pop("slow", None)

    @property
    def total_paid(self) -> int:
        return sum(self.paid.values())

    def next_fault(self) -> str | None:
        if self.faults:
            return self.faults.popleft()
        draw = self.rng.random()
        for fault, rate in self.fault_rates.items():
            if draw < rate:
                return fault
            draw -= rate
        return None

    def verdict(self, prompt: str) -> tuple[int, int]:
        """(label, n_paragraphs) as this judge reads the prompt."""
        paragraphs = [text for _, text in _PARAGRAPH.findall(prompt)]
        for text in paragraphs:
            planted = _PLANTED.search(text)
            if planted:
                return int(planted.group(1)), len(paragraphs)
        match = _PROBLEM.search(prompt)
        known = self.truth.get(match.group(1)) if match else None
        if known is not None:
            label, n_steps = known
            return (label if len(paragraphs) == n_steps else -1), len(paragraphs)
        return arithmetic_verdict(paragraphs), len(paragraphs)

    def choice(self, index: int, label: int, n: int, fault: str | None, draw: random.Random | None = None
               ) -> dict[str, Any]:
        rng = draw or self.rng
        if self.wrong_rate and rng.random() < self.wrong_rate:
            label = rng.choice([k for k in range(-1, n) if k != label] or [label])
        verdict = f"\\boxed{{{label}}}"
        finish = "stop"
        if fault == "no_boxed":
            verdict = "I believe the solution has a problem somewhere."
        elif fault == "out_of_range":
            verdict = f"\\boxed{{{n + 5}}}"
        thought = f"Checking {n} paragraphs one by one. A first guess was \\boxed{{{n - 1}}}, but no."
        body = f"All paragraphs checked.\n\n{verdict}"
        message: dict[str, Any] = {"role": "assistant"}
        if fault == "length":
            message["content"] = f"<think>{thought[:20]}"
            finish = "length"
        elif self.reasoning == "think":
            message["content"] = f"<think>{thought}</think>\n{body}"
        elif self.reasoning == "field":
            message["content"] = body
            message["reasoning_content"] = thought
        else:
            message["content"] = body
        return {"index": index, "message": message, "finish_reason": finish}

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        self._in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self._in_flight)
        try:
            return await self._handle(request)
        finally:
            self._in_flight -= 1

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.headers_seen.append(dict(request.headers))
        try:
            body = await request.json()
            prompt = body["messages"][-1]["content"]
        except (json.JSONDecodeError, KeyError, IndexError, TypeError):
            return self._error(400, "invalid request body")
        fault = self.next_fault()
        if fault:
            self.faults_served[fault] += 1
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if fault == "slow":  # until slow_s has passed or release_slow() was called
            end = time.monotonic() + self.slow_s
            while time.monotonic() < end and not self._released:
                await asyncio.sleep(0.02)
        if fault == "429":
            return self._error(429, "rate limit reached, slow down", headers={"Retry-After": self.retry_after})
        if fault == "500":
            return self._error(500, "internal error")
        if fault == "400":
            return self._error(400, "the prompt is too long for this model")
        if fault == "401":
            auth = request.headers.get("Authorization", "")
            return self._error(401, f"invalid api key: {auth}")  # echoes what was sent, as some servers do
        if fault == "hang":
            await asyncio.sleep(self.hang_s)
            return self._error(503, "gave up")
        if fault == "malformed":
            self.statuses[200] += 1
            return web.Response(status=200, content_type="application/json",
                                text='{"id": "chatcmpl-x", "object": "chat.completion", "choices": [{"ind')
        n = 1 if fault == "ignore_n" else int(body.get("n") or 1)
        if fault == "empty":
            choices: list[dict[str, Any]] = []
        else:
            label, n_paragraphs = self.verdict(prompt)
            # the k-th answer to a prompt draws from its own seeded stream: wrong answers do not depend on the
            # order concurrent requests arrive in
            key = hashlib.sha256(prompt.encode()).hexdigest()
            first = self.paid[key]
            choices = [self.choice(i, label, n_paragraphs, fault, random.Random(f"{self.seed}-{key}-{first + i}"))
                       for i in range(n)]
        for c in choices:
            message = c["message"]
            if fault == "echo_key":  # what a judge told to repeat its instructions might do
                key = request.headers.get("Authorization", "")
                message["content"] = f"My credentials are {key} ({key.split()[-1]}).\n{message['content']}"
                message["reasoning_content"] = f"The key is {key.split()[-1]}."
            elif fault == "huge":
                message["content"] = "x" * self.huge_chars + "\n" + message["content"]
            elif fault == "echo_prompt":
                message["content"] = prompt
        text_out = sum(len(c["message"].get("content") or "") + len(c["message"].get("reasoning_content") or "")
                       for c in choices)
        usage: dict[str, Any] | None = {"prompt_tokens": len(prompt) // 4 + 1, "completion_tokens": text_out // 4 + 1}
        if fault == "negative_usage":
            usage = {"prompt_tokens": -100000, "completion_tokens": -100000}
        elif fault == "absurd_usage":
            usage = {"prompt_tokens": 10**15, "completion_tokens": 10**15}
        elif fault == "no_usage":
            usage = None
        elif fault == "ignore_max_tokens":
            usage["completion_tokens"] = 4 * int(body.get("max_tokens") or 1000) * len(choices)
        self.statuses[200] += 1
        if choices:
            self.paid[hashlib.sha256(prompt.encode()).hexdigest()] += len(choices)
        reply = {"id": f"chatcmpl-{self.requests}", "object": "chat.completion", "created": int(time.time()),
                 "model": body.get("model", "judge"), "choices": choices}
        if usage is not None:
            reply["usage"] = {**usage, "total_tokens": usage["prompt_tokens"] + usage["completion_tokens"]}
        if fault == "drip":  # the body a byte every drip_s: no read ever waits long, the whole takes ages
            out = web.StreamResponse(headers={"Content-Type": "application/json"})
            await out.prepare(request)
            for byte in json.dumps(reply).encode():
                await out.write(bytes([byte]))
                await asyncio.sleep(self.drip_s)
            await out.write_eof()
            return out
        if fault == "gzip_bomb":
            return web.Response(body=self._bomb(reply), headers={"Content-Type": "application/json",
                                                                 "Content-Encoding": "gzip"})
        return web.json_response(reply)

    def _bomb(self, reply: dict[str, Any]) -> bytes:
        """`reply` gzipped, its first answer padded to `bomb_bytes` (compressed piece by piece: small here)."""
        mark = "\x00BOMB\x00"
        reply["choices"][0]["message"]["content"] = mark + reply["choices"][0]["message"]["content"]
        head, tail = json.dumps(reply).encode().split(json.dumps(mark).encode()[1:-1])
        packer = zlib.compressobj(9, zlib.DEFLATED, zlib.MAX_WBITS | 16)
        piece = b" " * (1 << 20)
        parts = [packer.compress(head)]
        parts += [packer.compress(piece) for _ in range(self.bomb_bytes >> 20)]
        parts += [packer.compress(tail), packer.flush()]
        return b"".join(parts)

    async def handle_completion(self, request: web.Request) -> web.StreamResponse:
        """POST /v1/completions: n completions of the prompt from `self.prover`."""
        self.requests += 1
        try:
            body = await request.json()
            prompt = body["prompt"]
        except (json.JSONDecodeError, KeyError, TypeError):
            return self._error(400, "invalid request body")
        fault = self.next_fault()
        if fault:
            self.faults_served[fault] += 1
        if fault == "429":
            return self._error(429, "rate limit reached, slow down", headers={"Retry-After": self.retry_after})
        if fault == "500":
            return self._error(500, "internal error")
        n = int(body.get("n") or 1)
        texts = await asyncio.to_thread(self.prover, prompt, n, body)
        choices = [{"index": i, "text": t, "finish_reason": "stop", "logprobs": None} for i, t in enumerate(texts)]
        usage = {"prompt_tokens": len(prompt) // 4 + 1, "completion_tokens": sum(len(t) // 4 + 1 for t in texts)}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        self.statuses[200] += 1
        self.paid[hashlib.sha256(prompt.encode()).hexdigest()] += len(choices)
        return web.json_response({"id": f"cmpl-{self.requests}", "object": "text_completion",
                                  "created": int(time.time()), "model": body.get("model", "prover"),
                                  "choices": choices, "usage": usage})

    def _error(self, status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
        self.statuses[status] += 1
        return web.json_response({"error": {"message": message, "type": "fake_judge", "code": status}},
                                 status=status, headers=headers)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self.handle)
        if self.prover is not None:
            app.router.add_post("/v1/completions", self.handle_completion)
        return app


class JudgeServer:
    """Runs a FakeJudge on 127.0.0.1 in a background thread (its own event loop).

        with JudgeServer(FakeJudge(truth)) as server:
            ... base_url=server.url ...
    """

    def __init__(self, judge: FakeJudge, port: int = 0):
        self.judge = judge
        self.port = port
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> JudgeServer:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=30)
        return self

    async def _start(self) -> None:
        self._runner = web.AppRunner(self.judge.app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    def stop(self) -> None:
        self.judge.release_slow()  # a `slow` request whose client is gone would hold the shutdown
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(timeout=30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=30)

    def __enter__(self) -> JudgeServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def local_prover(prover: Any, max_tokens: int = 256) -> Any:
    """A `prover` callable for FakeJudge from an actprm.judge.prover.LocalProver (seeded by the request's seed)."""
    def complete(prompt: str, n: int, body: dict[str, Any]) -> list[str]:
        seed = int(body.get("seed") or 0)
        done = prover.generate([prompt] * n, [choice_seed(seed, j) for j in range(n)],
                               max_tokens=int(body.get("max_tokens") or max_tokens),
                               temperature=float(body.get("temperature", 1.0)), top_p=float(body.get("top_p", 1.0)))
        return [c.text for c in done]

    return complete


def _parse_rates(text: str | None) -> dict[str, float]:
    rates: dict[str, float] = {}
    for part in (text or "").split(","):
        if part.strip():
            name, value = part.split("=")
            rates[name.strip()] = float(value)
    return rates


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m actprm.testing.judge_server", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--delay", type=float, default=0.0, help="seconds before each answer")
    parser.add_argument("--fault-rates", help="e.g. 429=0.2,500=0.1,hang=0.05,malformed=0.1")
    parser.add_argument("--hang", type=float, default=30.0, help="seconds a hang lasts")
    parser.add_argument("--retry-after", default="1")
    parser.add_argument("--world-rows", type=int, default=0, help="know the truth of world rows 0..N-1")
    parser.add_argument("--world-seed", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--prover", metavar="DIR", help="serve /v1/completions from this causal LM in-process "
                        "('backbone': the shipped world backbone)")
    args = parser.parse_args(argv)
    truth = {}
    prover = None
    if args.prover:
        prover = local_prover(LocalProver(None if args.prover == "backbone" else args.prover))
    if args.world_rows:
        truth = truth_from_rows(Generator(seed=args.world_seed).rows(0, args.world_rows))
    judge = FakeJudge(truth, delay_s=args.delay, fault_rates=_parse_rates(args.fault_rates),
                      retry_after=args.retry_after, hang_s=args.hang, seed=args.seed, prover=prover)

    async def serve() -> None:
        runner = web.AppRunner(judge.app(), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", args.port)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        print(f"listening on http://127.0.0.1:{port}/v1", flush=True)
        while True:
            await asyncio.sleep(5)
            print(json.dumps({"requests": judge.requests, "paid": judge.total_paid,
                              "statuses": {str(k): v for k, v in judge.statuses.items()},
                              "max_in_flight": judge.max_in_flight}), flush=True)

    asyncio.run(serve())


if __name__ == "__main__":
    main()
