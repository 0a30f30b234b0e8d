"""The prover policy of the rollout annotator: a causal LM that completes a solution prefix.

Two ways to reach one, the same prompts and answers either way (actprm.judge.rollout):

- an OpenAI-compatible **completions** endpoint (`vllm serve MODEL`, SGLang, the test server's
  `/v1/completions`): the rollout annotator sends `completions.create(prompt=..., n=k)` through
  the judge's client, limits, retries, budget and cache (actprm.judge.openai_judge);
- **in-process** (`LocalProver`): a transformers causal LM (default: the shipped world
  backbone, actprm/assets/backbone) sampling with `generate`, batched across the requests
  in flight by `LocalCompletions`, an object with the client's `completions.create` shape, so
  the rest of the annotator (cache, accounting) does not know the difference.

Prompts (`prefix_prompt`): the prover is prompted the way the world backbone was trained (and
the way actprm.scoring formats a trajectory): the chat template's user turn holds the problem,
the assistant turn the steps so far, each followed by the step separator, e.g.
`<|im_start|>user\\n{problem}<|im_end|>\\n<|im_start|>assistant\\n{step_1}<extra_0>{step_2}<extra_0>`.

Sampling is reproducible: choice j of a request with `seed` s draws its tokens by inverse-CDF
sampling from uniforms of a torch generator seeded by (s, j), so a completion does not depend
on which other requests share its batch (up to float rounding of padded batches).

Stopping: a request ends at end-of-text, at `max_tokens` (finish_reason "length"), at a `stop`
string, or (`stop_after_answer`, on for the world backbone, which never learned an end token)
at the first step separator after a final answer (actprm.answers.extract_answer).
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import torch
from transformers import AutoModelForCausalLM, LogitsProcessorList, StoppingCriteriaList

from actprm.answers import extract_answer
from actprm.io.model_files import check_model_dir
from actprm.shipped import default_backbone_path
from actprm.tokens import STEP_SEPARATOR, load_tokenizer

# the assistant turn of ChatML (the world backbone's and Qwen's template), filled with the steps so far
CHATML_PROMPT = "<|im_start|>user\n{problem}<|im_end|>\n<|im_start|>assistant\n{prefix}"


def prefix_prompt(template: str, problem: str, steps: Sequence[str], separator: str) -> str:
    """The prover's prompt for the prefix `steps` (each followed by `separator`)."""
    return template.replace("{problem}", problem).replace("{prefix}", "".join(s + separator for s in steps))


def choice_seed(seed: int, j: int) -> int:
    """The generator seed of choice `j` of a request seeded `seed` (63 bits)."""
    digest = hashlib.sha256(f"{int(seed)}:{int(j)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


@dataclass
class Completion:
    text: str
    finish_reason: str  # "stop" or "length"
    tokens: int


class _InverseCdfSampler:
    """A logits processor that picks each row's next token from its own pre-drawn uniforms
    (temperature, top-p), returning scores that make greedy search take exactly that token."""

    def __init__(self, uniforms: torch.Tensor, prompt_len: int, temperature: float, top_p: float):
        self.uniforms, self.prompt_len = uniforms, prompt_len
        self.temperature, self.top_p = temperature, top_p

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        t = input_ids.shape[1] - self.prompt_len
        scores = scores.float()
        if self.temperature <= 0:
            pick = scores.argmax(dim=-1)
        else:
            probs = torch.softmax(scores / self.temperature, dim=-1)
            sorted_p, order = probs.sort(dim=-1, descending=True)
            cdf = sorted_p.cumsum(dim=-1)
            if self.top_p < 1.0:  # keep the smallest set whose mass reaches top_p
                keep = (cdf - sorted_p) < self.top_p
                sorted_p = sorted_p * keep
                cdf = sorted_p.cumsum(dim=-1)
            u = self.uniforms[:, t : t + 1].to(cdf.device) * cdf[:, -1:]
            idx = torch.searchsorted(cdf, u).clamp_(max=cdf.shape[1] - 1)
            pick = order.gather(1, idx).squeeze(1)
        out = torch.full_like(scores, float("-inf"))
        out.scatter_(1, pick.unsqueeze(1), 0.0)
        return out


class _StopCriteria:
    """Per row: done at a stop string, or at a separator after a final answer (stop_after_answer)."""

    def __init__(self, tokenizer: Any, prompt_len: int, separator_id: int | None, stop: Sequence[str],
                 stop_after_answer: bool):
        self.tokenizer, self.prompt_len = tokenizer, prompt_len
        self.separator_id, self.stop, self.stop_after_answer = separator_id, list(stop), stop_after_answer

    def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
        done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        last = input_ids[:, -1]
        for r in range(input_ids.shape[0]):
            at_sep = self.separator_id is not None and int(last[r]) == self.separator_id
            if not (self.stop or (self.stop_after_answer and at_sep)):
                continue
            text = self.tokenizer.decode(input_ids[r, self.prompt_len:], skip_special_tokens=False)
            if any(s in text for s in self.stop) or self.stop_after_answer and at_sep and extract_answer(text) is not None:
                done[r] = True
        return done


class LocalProver:
    """A causal LM sampling completions in-process (transformers `generate`, batched, seeded)."""

    def __init__(self, model: str | None = None, *, device: str = "cpu", threads: int | None = None,
                 stop_after_answer: bool = True):
        if threads:
            torch.set_num_threads(int(threads))
        path = str(model or default_backbone_path())
        self.name = path if model else "actprm/assets/backbone"
        self.tokenizer = load_tokenizer(path)
        self.tokenizer.padding_side = "left"

        check_model_dir(path)  # no model code from the directory, real safetensors
        self.model = AutoModelForCausalLM.from_pretrained(path, use_safetensors=True,
                                                          trust_remote_code=False).to(device).eval()
        self.device = device
        ids = self.tokenizer.encode(STEP_SEPARATOR, add_special_tokens=False)
        self.separator_id = ids[0] if len(ids) == 1 else None
        self.stop_after_answer = stop_after_answer
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        self.eos_id = self.tokenizer.eos_token_id
        self._lock = threading.Lock()  # one generate at a time per model

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer.encode(text, add_special_tokens=False))

    @torch.inference_mode()
    def generate(self, prompts: Sequence[str], seeds: Sequence[int], *, max_tokens: int, temperature: float = 1.0,
                 top_p: float = 1.0, stop: Sequence[str] = ()) -> list[Completion]:
        """One completion per prompt; sequence i samples from the uniforms of generator `seeds[i]`."""
        if not prompts:
            return []
        enc = self.tokenizer(list(prompts), add_special_tokens=False, padding=True, return_tensors="pt")
        ids, mask = enc["input_ids"].to(self.device), enc["attention_mask"].to(self.device)
        uniforms = torch.stack([torch.rand(max_tokens, generator=torch.Generator().manual_seed(int(s)))
                                for s in seeds])
        sampler = _InverseCdfSampler(uniforms, ids.shape[1], temperature, top_p)
        stopper = _StopCriteria(self.tokenizer, ids.shape[1], self.separator_id, stop, self.stop_after_answer)
        with self._lock:
            out = self.model.generate(
                input_ids=ids, attention_mask=mask, max_new_tokens=max_tokens, do_sample=False, num_beams=1,
                logits_processor=LogitsProcessorList([sampler]), stopping_criteria=StoppingCriteriaList([stopper]),
                pad_token_id=self.pad_id, eos_token_id=self.eos_id, use_cache=True)
        completions = []
        for row in out[:, ids.shape[1]:].tolist():
            if self.eos_id is not None and self.eos_id in row:
                row, finish = row[: row.index(self.eos_id)], "stop"
            else:
                while row and row[-1] == self.pad_id:
                    row = row[:-1]
                finish = "length" if len(row) >= max_tokens else "stop"
            text = self.tokenizer.decode(row, skip_special_tokens=False)
            for s in stop:  # a stop string ends the text before it, as servers do
                if s in text:
                    text, finish = text[: text.index(s)], "stop"
            if finish == "length" and self.stop_after_answer and extract_answer(text) is not None \
                    and self.separator_id is not None and row and row[-1] == self.separator_id:
                finish = "stop"
            completions.append(Completion(text, finish, len(row)))
        return completions


class LocalCompletions:
    """`completions.create(...)` of the OpenAI client, answered by a LocalProver.

    Requests that arrive while the prover is busy are gathered and generated together, up to
    `batch_sequences` sequences per `generate` (requests with other sampling settings wait for
    their own batch). The returned object has what the rollout annotator reads: `choices[j].text`,
    `choices[j].finish_reason` and `usage` (prompt tokens once, completion tokens summed).
    """

    def __init__(self, prover: LocalProver, batch_sequences: int = 256):
        self.prover = prover
        self.batch_sequences = max(1, int(batch_sequences))
        self.completions = self  # client.completions.create(...)
        self._queue: list[tuple[dict[str, Any], asyncio.Future]] = []
        self._worker: asyncio.Task | None = None
        self.generate_calls = 0

    async def create(self, *, prompt: str, n: int = 1, max_tokens: int | None = None, temperature: float | None = 1.0,
                     top_p: float | None = 1.0, stop: Sequence[str] | str | None = None, seed: int | None = None,
                     **_: Any) -> Any:
        params = {"prompt": prompt, "n": int(n or 1), "max_tokens": int(max_tokens or 256),
                  "temperature": 1.0 if temperature is None else float(temperature),
                  "top_p": 1.0 if top_p is None else float(top_p),
                  "stop": tuple([stop] if isinstance(stop, str) else stop or ()), "seed": int(seed or 0)}
        future = asyncio.get_running_loop().create_future()
        self._queue.append((params, future))
        if self._worker is None or self._worker.done():
            self._worker = asyncio.get_running_loop().create_task(self._work())
        return await future

    async def _work(self) -> None:
        while self._queue:
            await asyncio.sleep(0.002)  # let the requests of this tick arrive
            first = self._queue[0][0]
            setting = (first["max_tokens"], first["temperature"], first["top_p"], first["stop"])
            batch, rest, sequences = [], [], 0
            for params, future in self._queue:
                same = (params["max_tokens"], params["temperature"], params["top_p"], params["stop"]) == setting
                if same and (not batch or sequences + params["n"] <= self.batch_sequences):
                    batch.append((params, future))
                    sequences += params["n"]
                else:
                    rest.append((params, future))
            self._queue = rest
            prompts = [p["prompt"] for p, _ in batch for _j in range(p["n"])]
            seeds = [choice_seed(p["seed"], j) for p, _ in batch for j in range(p["n"])]
            try:
                self.generate_calls += 1
                done = await asyncio.to_thread(self.prover.generate, prompts, seeds, max_tokens=setting[0],
                                               temperature=setting[1], top_p=setting[2], stop=setting[3])
            except Exception as exc:  # noqa: BLE001 - every waiting request gets the error
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            k = 0
            for params, future in batch:
                mine = done[k : k + params["n"]]
                k += params["n"]
                choices = [SimpleNamespace(index=j, text=c.text, finish_reason=c.finish_reason)
                           for j, c in enumerate(mine)]
                usage = SimpleNamespace(prompt_tokens=self.prover.count_tokens(params["prompt"]),
                                        completion_tokens=sum(c.tokens for c in mine))
                if not future.done():
                    future.set_result(SimpleNamespace(choices=choices, usage=usage))

    async def close(self) -> None:
        if self._worker is not None and not self._worker.done():
            self._worker.cancel()
        self._worker = None
