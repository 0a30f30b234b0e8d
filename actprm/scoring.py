"""Scoring trajectories with an :class:`~actprm.model.EnsemblePRM`: format, truncate, batch.

Pure torch/Python.  The pipeline per trajectory (problem + list of steps):

1. **Neutralise** control strings in the problem and step texts: every
   occurrence of the step separator (``<extra_0>``) and of every other special
   added token of the tokenizer (``<|im_end|>``, ...) gets a space inserted
   before its last character (``"<extra_0>"`` -> ``"<extra_0 >"``), so it is
   tokenised as plain text.  A trajectory therefore cannot fake (or hide) a
   step: the number of separators found is always the number of steps.
2. **Format**: with a chat template, user turn = problem, assistant turn =
   ``step_1 <sep> step_2 <sep> ... step_n <sep>``; the template is rendered once
   with sentinel contents to find the text before the problem and between
   problem and answer (contents are inserted verbatim).  Without a template:
   ``[bos] problem "\\n" step_1 <sep> ...``.  Text after the last separator (the
   end-of-turn tokens) is never tokenised: it cannot change any score under a
   causal model.  A PRM's own format (its ``prompt`` settings, :data:`PROMPT_KEYS`,
   e.g. an imported model's, actprm.importers) can change the system prompt, the text
   written after each step (``step_suffix``, holding the separator: Math-Shepherd's
   ``" ки\\n"``), the plain format's text between problem and steps (``middle``) and its
   ``bos``, and ``tokenize: pieces`` (TRL's way: prefix, problem, middle, every step
   and every suffix tokenised on their own and concatenated; the score position is
   the separator inside each suffix).
3. **Tokenise once** (fast tokenizer, with offsets).  Step ``i``'s score position
   is the ``i``-th separator token at or after the start of the assistant text;
   separators before it (in the template or problem) are never counted.
4. **Truncate** to ``max_length``: first the problem is shortened by dropping
   tokens from its *middle* (its beginning and its end, where the question
   usually is, are kept, half each), but never below ``min_problem_tokens``
   tokens (or its own length).  If it still does not fit, later steps are dropped
   (``n_scored_steps < n_steps``).  If even the first step does not fit with the
   shortest problem, the trajectory gets an ``error`` string instead of scores.
5. **Batch** by a token budget: sequences sorted by length (longest first) are
   packed so that ``max_len_in_batch * batch_size <= batch_tokens`` (a single
   over-budget sequence goes alone), right-padded with an attention mask, one
   forward pass per micro-batch.  Right padding + causal attention makes the
   scores independent of the batching.

:func:`score_trajectories` is the entry point; :func:`score_naive_prefixes` is the
slow reference (one batch-size-1 forward per step prefix).
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any, Protocol

import numpy as np
import torch
from jinja2 import TemplateError

from actprm.errors import UserError
from actprm.precision import release_cpu_memory
from actprm.tokens import STEP_SEPARATOR

__all__ = [
    "DEFAULT_BATCH_TOKENS",
    "DEFAULT_MIN_PROBLEM_TOKENS",
    "PROMPT_KEYS",
    "EncodedTrajectory",
    "ScoreResult",
    "ScoringStats",
    "TrajectoryEncoder",
    "default_batch_tokens",
    "encode_trajectories",
    "encoder_for",
    "neutralize",
    "plan_batches",
    "score_encoded",
    "score_naive_prefixes",
    "score_trajectories",
]

DEFAULT_BATCH_TOKENS = 16384
#: Padded tokens per micro-batch by device. On CPU a bigger batch computes no faster per
#: token (measured: bench/score_throughput.py), so a small budget that wastes little on
#: padding wins; on a GPU bigger batches fill the device.
BATCH_TOKENS_BY_DEVICE = {"cpu": 2048, "cuda": 32768}


def default_batch_tokens(device: str | torch.device) -> int:
    return BATCH_TOKENS_BY_DEVICE.get(torch.device(device).type, DEFAULT_BATCH_TOKENS)


DEFAULT_MIN_PROBLEM_TOKENS = 128

#: The prompt-format settings a PRM directory may store (prm_config.json, "prompt"); see TrajectoryEncoder.
PROMPT_KEYS = ("chat_template", "system_prompt", "step_suffix", "middle", "bos", "tokenize")

_P_SENTINEL = "\ue000ACTPRM_PROBLEM\ue000"
_A_SENTINEL = "\ue000ACTPRM_ANSWER\ue000"


# --------------------------------------------------------------------------- the scorer


class Scorer(Protocol):
    """What scoring needs of a model: the ensemble PRM (actprm.model) and the implicit PRM (actprm.implicit)
    both are one. ``forward`` gives one row of ``n_outputs`` values per scored separator (row-major);
    ``step_outputs`` turns them into what ``ScoreResult.probs`` holds, and ``finish_results`` completes the
    results (the implicit PRM: its values become step probabilities)."""

    tokenizer: Any
    max_length: int
    separator_token: str
    separator_token_id: int

    @property
    def n_outputs(self) -> int: ...

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, separator_mask: torch.Tensor,
                 answer_start: torch.Tensor) -> torch.Tensor: ...

    def step_outputs(self, outputs: torch.Tensor) -> torch.Tensor: ...

    def finish_results(self, results: list[ScoreResult]) -> list[ScoreResult]: ...


# --------------------------------------------------------------------------- results


@dataclass
class ScoreResult:
    """Scores of one trajectory.

    ``probs``: ``(n_scored_steps, K)`` float32, sigmoid of each head at each scored
    step's separator; ``None`` iff ``error`` is set.  ``n_steps`` is the number of
    steps given; ``n_scored_steps < n_steps`` when later steps were truncated.
    """

    probs: np.ndarray | None
    n_scored_steps: int
    error: str | None = None
    n_steps: int = 0
    problem_tokens_dropped: int = 0
    step_value: np.ndarray | None = None  # the implicit PRM's q_k and r_k (actprm.implicit); None for the ensemble
    step_reward: np.ndarray | None = None

    @property
    def mean(self) -> np.ndarray | None:
        """Ensemble mean per scored step (the PRM score)."""
        return None if self.probs is None else self.probs.mean(axis=1)

    @property
    def std(self) -> np.ndarray | None:
        """Unbiased std over heads per scored step (0 with a single head)."""
        if self.probs is None:
            return None
        if self.probs.shape[1] < 2:
            return np.zeros(self.probs.shape[0], dtype=np.float32)
        return self.probs.std(axis=1, ddof=1)


@dataclass
class ScoringStats:
    """Counters accumulated over calls (pass the same object to several calls)."""

    n_trajectories: int = 0
    n_errors: int = 0
    n_truncated: int = 0  # problem shortened or steps dropped
    n_steps: int = 0
    n_scored_steps: int = 0
    real_tokens: int = 0  # non-padding tokens fed to the model
    computed_tokens: int = 0  # batch_size * padded length, summed over forward passes
    n_forward: int = 0
    max_batch_size: int = 0
    seconds_tokenize: float = 0.0
    seconds_forward: float = 0.0

    @property
    def padding_efficiency(self) -> float:
        """real tokens / computed tokens (1.0 when nothing was computed)."""
        return self.real_tokens / self.computed_tokens if self.computed_tokens else 1.0

    def merge(self, other: ScoringStats) -> ScoringStats:
        for f in fields(self):
            a, b = getattr(self, f.name), getattr(other, f.name)
            setattr(self, f.name, max(a, b) if f.name == "max_batch_size" else a + b)
        return self

    def as_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["padding_efficiency"] = self.padding_efficiency
        return d


@dataclass
class EncodedTrajectory:
    """Token ids of one (possibly truncated) trajectory, ending at its last scored separator."""

    input_ids: list[int]
    sep_positions: list[int]  # one per scored step, ascending
    n_steps: int
    problem_tokens_dropped: int = 0
    error: str | None = None
    answer_start: int = 0  # index of the first step token (what step features start from)

    @property
    def n_scored_steps(self) -> int:
        return len(self.sep_positions)

    @property
    def truncated(self) -> bool:
        return self.problem_tokens_dropped > 0 or (self.error is None and self.n_scored_steps < self.n_steps)

    def __len__(self) -> int:
        return len(self.input_ids)


# --------------------------------------------------------------------------- formatting


def neutralize(text: str, control_tokens: Sequence[str]) -> str:
    """Insert a space before the last character of every occurrence of each control token.

    ``"<extra_0>"`` becomes ``"<extra_0 >"``.  Tokens containing whitespace or
    shorter than two characters are left alone (an inserted space cannot create
    a new occurrence of a token without whitespace).
    """
    for tok in control_tokens:
        if tok in text:
            text = text.replace(tok, tok[:-1] + " " + tok[-1])
    return text


def _control_tokens(tokenizer: Any, separator: str) -> tuple[str, ...]:
    toks = {separator}
    decoder = getattr(tokenizer, "added_tokens_decoder", None) or {}
    for added in decoder.values():
        if getattr(added, "special", False):
            toks.add(str(added.content))
    for t in getattr(tokenizer, "all_special_tokens", []) or []:
        toks.add(str(t))
    ok = [t for t in toks if len(t) >= 2 and not any(c.isspace() for c in t)]
    # longest first, so a token containing another is neutralised as a whole
    return tuple(sorted(ok, key=lambda t: (-len(t), t)))


class TrajectoryEncoder:
    """Formats and tokenises trajectories for one tokenizer (see the module docstring).

    Build it once and reuse it: the chat template is rendered once here.
    """

    def __init__(
        self,
        tokenizer: Any,
        *,
        max_length: int | None = None,
        min_problem_tokens: int = DEFAULT_MIN_PROBLEM_TOKENS,
        separator: str = STEP_SEPARATOR,
        system_prompt: str | None = None,
        use_chat_template: bool | None = None,
        step_suffix: str | None = None,
        middle: str | None = None,
        bos: bool = True,
        tokenize: str = "joint",
    ) -> None:
        """``step_suffix``: text written after every step, holding ``separator`` once (default: the
        separator alone); ``middle``: plain format's text between problem and steps (default a
        newline); ``bos``: the plain format starts with the tokenizer's bos token; ``tokenize``:
        ``joint`` (the formatted text at once) or ``pieces`` (each part on its own, as TRL does)."""
        if not getattr(tokenizer, "is_fast", False):
            raise TypeError("a fast (tokenizers-backed) tokenizer is required (offset mappings)")
        ids = tokenizer.encode(separator, add_special_tokens=False)
        if len(ids) != 1:
            raise ValueError(
                f"{separator!r} is not a single token of this tokenizer; add it with actprm.model.ensure_separator"
            )
        self.tokenizer = tokenizer
        self.separator = separator
        self.separator_id = int(ids[0])
        self.max_length = None if max_length is None else int(max_length)
        if self.max_length is not None and self.max_length < 1:
            raise ValueError(f"max_length must be >= 1, got {max_length}")
        self.min_problem_tokens = max(0, int(min_problem_tokens))
        self.control_tokens = _control_tokens(tokenizer, separator)
        self.step_suffix = separator if step_suffix is None else str(step_suffix)
        if self.step_suffix.count(separator) != 1:
            raise ValueError(f"step_suffix {self.step_suffix!r} must hold the separator {separator!r} exactly once")
        if tokenize not in ("joint", "pieces"):
            raise ValueError(f"tokenize must be 'joint' or 'pieces', got {tokenize!r}")
        self.tokenize = tokenize
        if use_chat_template is None:
            use_chat_template = bool(getattr(tokenizer, "chat_template", None))
        self.prefix, self.middle = self._template_pieces(use_chat_template, system_prompt)
        if not use_chat_template:
            if middle is not None:
                self.middle = str(middle)
            if not bos:
                self.prefix = (system_prompt + "\n") if system_prompt else ""
        if tokenize == "pieces":
            self._suffix_ids = self._ids(self.step_suffix)
            at = [j for j, t in enumerate(self._suffix_ids) if t == self.separator_id]
            if len(at) != 1:
                raise ValueError(f"step_suffix {self.step_suffix!r} does not tokenise to one separator token")
            self._suffix_at = at[0]
            self._prefix_ids, self._middle_ids = self._ids(self.prefix), self._ids(self.middle)

    def _ids(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []

    def _template_pieces(self, use_chat_template: bool, system_prompt: str | None) -> tuple[str, str]:
        tok = self.tokenizer
        if use_chat_template:
            messages = []
            if system_prompt is not None:
                messages.append({"role": "system", "content": system_prompt})
            messages += [{"role": "user", "content": _P_SENTINEL}, {"role": "assistant", "content": _A_SENTINEL}]
            try:
                rendered = tok.apply_chat_template(messages, tokenize=False)
            except TemplateError as exc:  # the sandbox refused it (or it raised): the model's files are wrong
                name = getattr(tok, "name_or_path", "") or "the tokenizer"
                raise UserError(f"{name}: its chat template cannot be rendered "
                                f"({type(exc).__name__}: {' '.join(str(exc).split())[:160]})") from None
            if not isinstance(rendered, str):
                raise TypeError(f"apply_chat_template(tokenize=False) returned {type(rendered).__name__}")
            if rendered.count(_P_SENTINEL) != 1 or rendered.count(_A_SENTINEL) != 1:
                raise ValueError("the chat template does not insert message contents verbatim")
            pre, rest = rendered.split(_P_SENTINEL)
            mid, _post = rest.split(_A_SENTINEL)
            return pre, mid
        pre = (system_prompt + "\n") if system_prompt else ""
        bos = getattr(tok, "bos_token", None)
        return (bos or "") + pre, "\n"

    # ---- text
    def format(self, problem: str, steps: Sequence[str]) -> tuple[str, tuple[int, int], int]:
        """``(text, (problem_start, problem_end), answer_start)`` in characters."""
        ct = self.control_tokens
        problem = neutralize(problem, ct)
        answer = "".join(neutralize(s, ct) + self.step_suffix for s in steps)
        p0 = len(self.prefix)
        p1 = p0 + len(problem)
        a0 = p1 + len(self.middle)
        return self.prefix + problem + self.middle + answer, (p0, p1), a0

    # ---- tokens
    def encode(self, problems: Sequence[str], steps: Sequence[Sequence[str]]) -> list[EncodedTrajectory]:
        if len(problems) != len(steps):
            raise ValueError(f"{len(problems)} problems but {len(steps)} step lists")
        if self.tokenize == "pieces":
            return [self._encode_pieces(p, s) for p, s in zip(problems, steps)]
        formatted = [self.format(p, s) for p, s in zip(problems, steps)]
        if not formatted:
            return []
        enc = self.tokenizer(
            [f[0] for f in formatted],
            add_special_tokens=False,
            return_offsets_mapping=True,
            return_attention_mask=False,
        )
        out = []
        for (_, pspan, a0), ids, offs, st in zip(formatted, enc["input_ids"], enc["offset_mapping"], steps):
            out.append(self._finish(list(ids), offs, pspan, a0, len(st)))
        return out

    def _finish(self, ids: list[int], offsets, pspan: tuple[int, int], a0: int, n_steps: int) -> EncodedTrajectory:
        starts = [int(o[0]) for o in offsets]
        sep_id = self.separator_id
        seps = [j for j, t in enumerate(ids) if t == sep_id and starts[j] >= a0]
        if len(seps) != n_steps:
            msg = f"internal: found {len(seps)} separators for {n_steps} steps"
            return EncodedTrajectory([], [], n_steps, error=msg)
        if n_steps == 0:
            return EncodedTrajectory([], [], 0)
        # problem tokens: those starting inside the problem's characters (ascending starts)
        i0 = bisect.bisect_left(starts, pspan[0])
        i1 = max(i0, bisect.bisect_left(starts, pspan[1]))
        i1 = min(i1, seps[0])
        a_tok = min(bisect.bisect_left(starts, a0), seps[0])
        return self._fit(ids, seps, i0, i1, a_tok, n_steps)

    def _encode_pieces(self, problem: str, steps: Sequence[str]) -> EncodedTrajectory:
        """Each part tokenised on its own and concatenated (``tokenize: pieces``)."""
        ct = self.control_tokens
        ids = self._prefix_ids + self._ids(neutralize(problem, ct))
        i0, i1 = len(self._prefix_ids), len(ids)
        ids += self._middle_ids
        a_tok = len(ids)
        seps = []
        for step in steps:
            ids += self._ids(neutralize(step, ct))
            seps.append(len(ids) + self._suffix_at)
            ids += self._suffix_ids
        if not steps:
            return EncodedTrajectory([], [], 0)
        return self._fit(ids, seps, i0, i1, min(a_tok, seps[0]), len(steps))

    def _fit(self, ids: list[int], seps: list[int], i0: int, i1: int, a_tok: int, n_steps: int) -> EncodedTrajectory:
        """Cut ``ids`` after the last separator and truncate to ``max_length`` (module docstring, 4)."""
        total = seps[-1] + 1
        M = self.max_length
        if M is None or total <= M:
            return EncodedTrajectory(ids[:total], seps, n_steps, answer_start=a_tok)
        n_problem = i1 - i0
        max_cut = n_problem - min(n_problem, self.min_problem_tokens)
        cut = min(total - M, max_cut)
        n_fit = sum(1 for s in seps if s + 1 - cut <= M)
        if n_fit == 0:
            first = seps[0] + 1 - max_cut
            return EncodedTrajectory(
                [], [], n_steps, error=f"the first step needs {first} tokens with the problem at its shortest, over max_length {M}"
            )
        keep = n_problem - cut
        head = keep - keep // 2
        tail = keep // 2
        new_ids = ids[: i0 + head] + ids[i1 - tail : seps[n_fit - 1] + 1]
        new_seps = [s - cut for s in seps[:n_fit]]
        return EncodedTrajectory(new_ids, new_seps, n_steps, problem_tokens_dropped=cut, answer_start=a_tok - cut)


def encode_trajectories(
    tokenizer: Any, problems: Sequence[str], steps: Sequence[Sequence[str]], **encoder_kwargs: Any
) -> list[EncodedTrajectory]:
    """Shorthand for ``TrajectoryEncoder(tokenizer, **encoder_kwargs).encode(problems, steps)``."""
    return TrajectoryEncoder(tokenizer, **encoder_kwargs).encode(problems, steps)


# --------------------------------------------------------------------------- batching


def plan_batches(lengths: Sequence[int], batch_tokens: int) -> list[list[int]]:
    """Indices grouped into micro-batches, longest sequences first.

    Each batch satisfies ``max(length) * len(batch) <= batch_tokens``, except a
    single sequence longer than the budget, which forms a batch of its own.
    """
    if batch_tokens < 1:
        raise ValueError(f"batch_tokens must be >= 1, got {batch_tokens}")
    order = sorted(range(len(lengths)), key=lambda i: (-int(lengths[i]), i))
    batches: list[list[int]] = []
    cur: list[int] = []
    cur_max = 0
    for i in order:
        n = int(lengths[i])
        new_max = max(cur_max, n)
        if cur and new_max * (len(cur) + 1) > batch_tokens:
            batches.append(cur)
            cur, new_max = [], n
        cur.append(i)
        cur_max = new_max
    if cur:
        batches.append(cur)
    return batches


def _pad_id(tokenizer: Any) -> int:
    for name in ("pad_token_id", "eos_token_id"):
        v = getattr(tokenizer, name, None) if tokenizer is not None else None
        if v is not None:
            return int(v)
    return 0


def _resolve_device(model: torch.nn.Module, device: str | torch.device | None) -> torch.device:
    """The device to run on; moves ``model`` there if ``device`` names another one."""
    current = next(model.parameters()).device
    if device is None:
        return current
    want = torch.device(device)
    if want.type != current.type or (want.index is not None and want.index != current.index):
        model.to(want)
        return next(model.parameters()).device
    return current


class _EvalMode:
    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model

    def __enter__(self):
        self.was_training = self.model.training
        self.model.eval()
        return self.model

    def __exit__(self, *exc):
        self.model.train(self.was_training)


def score_encoded(
    model: Scorer,
    encoded: Sequence[EncodedTrajectory],
    *,
    batch_tokens: int = DEFAULT_BATCH_TOKENS,
    pad_token_id: int = 0,
    device: str | torch.device | None = None,
    stats: ScoringStats | None = None,
) -> list[np.ndarray | None]:
    """Probabilities ``(n_scored_steps, K)`` per encoded trajectory (``None`` for errors), input order."""
    stats = stats if stats is not None else ScoringStats()
    dev = _resolve_device(model, device)
    n_heads = model.n_outputs
    out: list[np.ndarray | None] = [None] * len(encoded)
    live = []
    for i, e in enumerate(encoded):
        if e.error is not None:
            continue
        if e.n_scored_steps == 0:
            out[i] = np.zeros((0, n_heads), dtype=np.float32)
        else:
            live.append(i)
    lengths = [len(encoded[i]) for i in live]
    t0 = time.perf_counter()
    with _EvalMode(model), torch.inference_mode():
        for batch in plan_batches(lengths, batch_tokens):
            idx = [live[b] for b in batch]
            T = max(len(encoded[i]) for i in idx)
            B = len(idx)
            ids = np.full((B, T), pad_token_id, dtype=np.int64)
            mask = np.zeros((B, T), dtype=np.int64)
            sep = np.zeros((B, T), dtype=np.bool_)
            answer = np.array([encoded[i].answer_start for i in idx], dtype=np.int64)
            for r, i in enumerate(idx):
                e = encoded[i]
                ids[r, : len(e)] = e.input_ids
                mask[r, : len(e)] = 1
                sep[r, e.sep_positions] = True
            # No attention mask: the backbone is causal and padding is on the right, so no real
            # token ever attends to a pad, and every score is the same as without padding.
            # Leaving the mask out keeps attention on its causal fast path (no (B,1,T,T) mask).
            logits = model(
                torch.from_numpy(ids).to(dev),
                None,
                torch.from_numpy(sep).to(dev),
                torch.from_numpy(answer).to(dev),
            )
            probs = model.step_outputs(logits.float()).cpu().numpy().astype(np.float32, copy=False)
            row = 0
            for i in idx:  # the mask is row-major: trajectory by trajectory, positions ascending
                k = encoded[i].n_scored_steps
                out[i] = probs[row : row + k].copy()
                row += k
            stats.n_forward += 1
            stats.max_batch_size = max(stats.max_batch_size, B)
            stats.computed_tokens += B * T
            stats.real_tokens += int(mask.sum())
    stats.seconds_forward += time.perf_counter() - t0
    return out


def _results(encoded: Sequence[EncodedTrajectory], probs: Sequence[np.ndarray | None], stats: ScoringStats):
    results = []
    for e, p in zip(encoded, probs):
        stats.n_trajectories += 1
        stats.n_steps += e.n_steps
        if e.error is not None:
            stats.n_errors += 1
            results.append(ScoreResult(None, 0, e.error, e.n_steps, e.problem_tokens_dropped))
            continue
        stats.n_truncated += int(e.truncated)
        stats.n_scored_steps += e.n_scored_steps
        results.append(ScoreResult(p, e.n_scored_steps, None, e.n_steps, e.problem_tokens_dropped))
    return results


def encoder_for(model, tokenizer, *, max_length: int | None = None,
                min_problem_tokens: int = DEFAULT_MIN_PROBLEM_TOKENS,
                system_prompt: str | None = None) -> TrajectoryEncoder:
    """The encoder of a model's own format: its separator and its ``prompt`` settings (PROMPT_KEYS).

    ``max_length`` defaults to the model's; ``system_prompt`` (not None) replaces the model's.
    """
    if max_length is None:
        max_length = getattr(model, "max_length", None)
    sep = getattr(model, "separator_token", STEP_SEPARATOR)
    prompt = dict(getattr(model, "prompt", None) or {})
    if system_prompt is not None:
        prompt["system_prompt"] = system_prompt
    enc = TrajectoryEncoder(
        tokenizer,
        max_length=max_length,
        min_problem_tokens=min_problem_tokens,
        separator=sep,
        system_prompt=prompt.get("system_prompt"),
        use_chat_template=prompt.get("chat_template"),
        step_suffix=prompt.get("step_suffix"),
        middle=prompt.get("middle"),
        bos=bool(prompt.get("bos", True)),
        tokenize=prompt.get("tokenize") or "joint",
    )
    model_sep = getattr(model, "separator_token_id", None)
    if model_sep is not None and int(model_sep) != enc.separator_id:
        raise ValueError(f"tokenizer maps {sep!r} to {enc.separator_id} but the model expects {model_sep}")
    return enc


def _encoder(model, tokenizer, max_length, min_problem_tokens, system_prompt) -> TrajectoryEncoder:
    return encoder_for(model, tokenizer, max_length=max_length, min_problem_tokens=min_problem_tokens,
                       system_prompt=system_prompt)


def score_trajectories(
    model: Scorer,
    tokenizer: Any,
    problems: Sequence[str],
    steps: Sequence[Sequence[str]],
    *,
    batch_tokens: int = DEFAULT_BATCH_TOKENS,
    max_length: int | None = None,
    device: str | torch.device | None = None,
    min_problem_tokens: int = DEFAULT_MIN_PROBLEM_TOKENS,
    system_prompt: str | None = None,
    stats: ScoringStats | None = None,
) -> list[ScoreResult]:
    """Score every step of every trajectory; results in input order.

    ``max_length`` defaults to ``model.max_length``; ``device`` (default: the
    model's) moves the model there if needed; the format is the model's own
    (:func:`encoder_for`), ``system_prompt`` (not None) replacing its system prompt.  Counters (tokens, forward passes,
    padding efficiency) are added to ``stats`` when given.  ``tokenizer=None``
    uses ``model.tokenizer``.
    """
    stats = stats if stats is not None else ScoringStats()
    tokenizer = tokenizer if tokenizer is not None else model.tokenizer
    t0 = time.perf_counter()
    encoded = _encoder(model, tokenizer, max_length, min_problem_tokens, system_prompt).encode(problems, steps)
    stats.seconds_tokenize += time.perf_counter() - t0
    probs = score_encoded(
        model, encoded, batch_tokens=batch_tokens, pad_token_id=_pad_id(tokenizer), device=device, stats=stats
    )
    results = _results(encoded, probs, stats)
    if _resolve_device(model, device).type == "cpu":
        release_cpu_memory()  # long runs: flat memory (actprm.precision)
    return model.finish_results(results)


def score_naive_prefixes(model: torch.nn.Module, tokenizer: Any, problems: Sequence[str],
                         steps: Sequence[Sequence[str]], *, max_length: int | None = None,
                         device: str | torch.device | None = None,
                         min_problem_tokens: int = DEFAULT_MIN_PROBLEM_TOKENS, system_prompt: str | None = None,
                         stats: ScoringStats | None = None) -> list[ScoreResult]:
    """Reference scorer: one batch-size-1 forward pass per step prefix, reading its last separator.

    Same formatting and truncation as :func:`score_trajectories`, hence the same
    probabilities up to float rounding, at ~n_steps times the cost.
    """
    stats = stats if stats is not None else ScoringStats()
    tokenizer = tokenizer if tokenizer is not None else model.tokenizer
    encoded = _encoder(model, tokenizer, max_length, min_problem_tokens, system_prompt).encode(problems, steps)
    dev = _resolve_device(model, device)
    probs: list[np.ndarray | None] = []
    t0 = time.perf_counter()
    with _EvalMode(model), torch.inference_mode():
        for e in encoded:
            if e.error is not None:
                probs.append(None)
                continue
            rows = []
            for pos in e.sep_positions:
                ids = torch.tensor([e.input_ids[: pos + 1]], dtype=torch.long, device=dev)
                sep = torch.zeros_like(ids, dtype=torch.bool)
                sep[0, [q for q in e.sep_positions if q <= pos]] = True  # step features need the step bounds
                start = torch.tensor([e.answer_start], device=dev)
                rows.append(model.step_outputs(model(ids, torch.ones_like(ids), sep, start)[-1:].float()).cpu())
                stats.n_forward += 1
                stats.real_tokens += pos + 1
                stats.computed_tokens += pos + 1
            k = model.n_heads
            probs.append(torch.cat(rows).numpy() if rows else np.zeros((0, k), dtype=np.float32))
    stats.max_batch_size = max(stats.max_batch_size, 1 if stats.n_forward else 0)
    stats.seconds_forward += time.perf_counter() - t0
    return _results(encoded, probs, stats)
