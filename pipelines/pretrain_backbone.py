"""Recipe: pretrain the world's policy backbone, then put the default PRM on it.

    python -m pipelines.pretrain_backbone --config configs/pretrain_backbone.yaml

As ActPRM starts its PRM from an instruction-tuned math model, actprm's offline world
needs a backbone that already "knows" the arithmetic before any step label is seen (a
randomly initialised PRM trained on labels alone stays at the base rate). This recipe:

1. draws correct solutions from the arithmetic world (split `lm`, actprm.world.arith);
2. formats them exactly as the scorer does (chat template + step separators,
   actprm.scoring.TrajectoryEncoder);
3. trains a small Qwen2 causal LM (preset `world`, actprm.model.PRESETS) from a seeded
   random init with next-token loss on the solution tokens; result digits (after `=`)
   weigh `result_weight` times more, since they are what a step checker must compute;
4. reports next-token accuracy on the result digits of held-out solutions;
5. saves the LM (safetensors, with its LM head) to `output`, and the default PRM - that
   backbone plus K seeded heads - to `prm_output`.

One process, plain torch: 2 CPU cores suffice (see BENCHMARKS.md, "World backbone").
No Ray: there is nothing to distribute at this size.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from transformers import Qwen2ForCausalLM
from transformers.utils import logging as hf_logging

from actprm.config import PretrainConfig, dump_config, load_config
from actprm.errors import UserError
from actprm.io.writers import check_output_dir, replaced_dir
from actprm.model import from_backbone, preset_config
from actprm.progress import progress_bar
from actprm.scoring import TrajectoryEncoder
from actprm.tokens import IM_START, load_tokenizer
from actprm.world.arith import Generator, load_world

TEST_OFFSET = 1_000_000_000  # held-out rows of the lm split start here


# --------------------------------------------------------------------------- data


class Masks:
    """Which tokens of an encoded solution are trained on, and which are result digits."""

    def __init__(self, tokenizer: Any):
        self.im_start = tokenizer.convert_tokens_to_ids(IM_START)
        self.equals = tokenizer.encode(" =", add_special_tokens=False)[-1]
        self.comma = tokenizer.encode(",", add_special_tokens=False)[-1]
        self.digits = {tokenizer.convert_tokens_to_ids(d) for d in "0123456789"}

    def __call__(self, ids: Sequence[int]) -> tuple[list[bool], list[bool]]:
        """(trained, result): trained = the assistant's tokens; result = digits between `=` and `,`."""
        last_start = max(i for i, t in enumerate(ids) if t == self.im_start)
        trained = [i > last_start for i in range(len(ids))]
        result, inside = [], False
        for t in ids:
            if t == self.equals:
                inside = True
            elif t == self.comma:
                inside = False
            result.append(inside and t in self.digits)
        return trained, result


def encode_rows(encoder: TrajectoryEncoder, rows: list[dict]) -> list[list[int]]:
    encoded = encoder.encode([r["problem"] for r in rows], [r["steps"] for r in rows])
    return [e.input_ids for e in encoded]


def collate(seqs: list[list[int]], masks: Masks, pad_id: int):
    """(input_ids, weights of the next-token targets, result-target mask), right-padded."""
    length = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), length), pad_id, dtype=torch.long)
    trained = torch.zeros((len(seqs), length), dtype=torch.bool)
    result = torch.zeros((len(seqs), length), dtype=torch.bool)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
        t, r = masks(s)
        trained[i, : len(s)] = torch.tensor(t)
        result[i, : len(s)] = torch.tensor(r)
    return ids, trained[:, 1:], result[:, 1:]


def length_buckets(lengths: np.ndarray, batch_size: int, rng: np.random.Generator, pool_batches: int = 50):
    """Endless batches of indices: draw a pool, sort it by length, cut, shuffle (little padding)."""
    while True:
        pool = rng.integers(0, len(lengths), batch_size * pool_batches)
        pool = pool[np.argsort(lengths[pool], kind="stable")]
        chunks = [pool[k : k + batch_size] for k in range(0, len(pool), batch_size)]
        for j in rng.permutation(len(chunks)):
            yield chunks[j].tolist()


# --------------------------------------------------------------------------- model


def lm_loss(model, ids, trained, result, result_weight: float) -> torch.Tensor:
    """Weighted next-token cross-entropy over the trained positions (logits only where needed)."""
    hidden = model.model(input_ids=ids).last_hidden_state[:, :-1]
    targets = ids[:, 1:]
    logits = model.lm_head(hidden[trained])
    weights = 1.0 + (result_weight - 1.0) * result[trained].float()
    loss = F.cross_entropy(logits.float(), targets[trained], reduction="none")
    return (loss * weights).sum() / weights.sum()


@torch.no_grad()
def accuracy(model, seqs: list[list[int]], masks: Masks, pad_id: int, batch_size: int = 50) -> dict[str, float]:
    """Teacher-forced next-token accuracy: all solution tokens, result digits, whole results."""
    was_training = model.training
    model.eval()
    hits = {"solution": [0, 0], "result_digit": [0, 0], "result_number": [0, 0]}
    for k in range(0, len(seqs), batch_size):
        ids, trained, result = collate(seqs[k : k + batch_size], masks, pad_id)
        pred = model(input_ids=ids).logits[:, :-1].argmax(-1)
        ok = pred == ids[:, 1:]
        hits["solution"][0] += int(ok[trained].sum())
        hits["solution"][1] += int(trained.sum())
        hits["result_digit"][0] += int(ok[result].sum())
        hits["result_digit"][1] += int(result.sum())
        for row_ok, row_res in zip(ok, result):  # a number = a run of consecutive result digits
            run_ok, in_run = True, False
            for o, r in zip(row_ok.tolist(), row_res.tolist()):
                if r:
                    run_ok, in_run = (run_ok and o) if in_run else o, True
                elif in_run:
                    hits["result_number"][0] += int(run_ok)
                    hits["result_number"][1] += 1
                    in_run = False
    model.train(was_training)
    return {f"{k}_accuracy": round(h / max(n, 1), 4) for k, (h, n) in hits.items()}


# --------------------------------------------------------------------------- recipe


def _fresh_dir(path: str | None, what: str, overwrite: bool) -> Path:
    if not path:
        raise UserError(f"no {what}: set it in the config or pass --{what.replace('_', '-')} DIR")
    return check_output_dir(path, overwrite)


def run(cfg: PretrainConfig, progress: bool = True, log=print) -> dict[str, Any]:
    out = _fresh_dir(cfg.output, "output", cfg.overwrite)
    prm_out = _fresh_dir(cfg.prm_output, "prm_output", cfg.overwrite) if cfg.prm_output else None
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    start = time.perf_counter()

    # 1-2. data: correct solutions of the world, formatted as the scorer formats them
    tokenizer = load_tokenizer()
    generator = Generator(load_world(cfg.world_config), seed=cfg.seed)
    encoder = TrajectoryEncoder(tokenizer)
    masks = Masks(tokenizer)
    train = encode_rows(encoder, list(generator.rows(0, cfg.train_rows, "lm")))
    test = encode_rows(encoder, list(generator.rows(TEST_OFFSET, TEST_OFFSET + cfg.test_rows, "lm")))
    lengths = np.array([len(s) for s in train])
    data_seconds = time.perf_counter() - start

    # 3. model: seeded random init of the `world` preset, a causal LM with tied embeddings

    config = preset_config(cfg.preset, len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                           eos_token_id=tokenizer.eos_token_id)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = Qwen2ForCausalLM(config)
    model.train()
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.98))

    def lr_at(step: int) -> float:  # linear warm-up, then linear decay to final_lr_ratio
        if step < cfg.warmup_steps:
            return cfg.lr * (step + 1) / cfg.warmup_steps
        frac = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
        return cfg.lr * (1.0 - (1.0 - cfg.final_lr_ratio) * frac)

    batches = length_buckets(lengths, cfg.batch_size, np.random.default_rng(cfg.seed))
    history = []
    train_start = time.perf_counter()
    with progress_bar(cfg.steps, "pretrain", progress) as bar:
        for step in range(cfg.steps):
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step)
            ids, trained, result = collate([train[i] for i in next(batches)], masks, tokenizer.pad_token_id)
            loss = lm_loss(model, ids, trained, result, cfg.result_weight)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}")
            if (step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps:
                acc = accuracy(model, test, masks, tokenizer.pad_token_id)
                history.append({"step": step + 1, "seconds": round(time.perf_counter() - train_start, 1),
                                "loss": round(loss.item(), 4), **acc})
                log(json.dumps(history[-1]))
    train_seconds = time.perf_counter() - train_start
    model.eval()

    # 4-5. save the LM, then the default PRM on it
    report = {
        "recipe": "pipelines/pretrain_backbone.py", "config": cfg.model_dump(mode="json"),
        "world_source": generator.world.source(), "parameters": sum(p.numel() for p in model.parameters()),
        "data_seconds": round(data_seconds, 1), "train_seconds": round(train_seconds, 1),
        "total_seconds": round(time.perf_counter() - start, 1), "threads": torch.get_num_threads(),
        "torch": torch.__version__, "machine": platform.machine(), "history": history, "final": history[-1],
    }
    _save(out, lambda d: (model.save_pretrained(d), tokenizer.save_pretrained(d)), report)
    if prm_out is not None:
        prm, prm_tokenizer = from_backbone(out, n_heads=cfg.n_heads, seed=cfg.seed,
                                           step_features=cfg.step_features)
        _save(prm_out, lambda d: prm.save_pretrained(d, tokenizer=prm_tokenizer), None)
    report["output"], report["prm_output"] = str(out), str(prm_out) if prm_out else None
    return report


def _save(out: Path, write, report: dict | None) -> None:
    with replaced_dir(out) as staging:
        write(staging)
        if report is not None:
            (staging / "pretrain.json").write_text(json.dumps(report, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.pretrain_backbone", formatter_class=argparse.RawDescriptionHelpFormatter,
        description=__doc__.split("\n\n")[0],
        epilog="examples:\n"
               "  python -m pipelines.pretrain_backbone --config configs/pretrain_backbone.yaml --overwrite\n"
               "  python -m pipelines.pretrain_backbone --steps 200 --output /tmp/bb --prm-output /tmp/prm\n")
    parser.add_argument("--config", metavar="YAML")
    parser.add_argument("--output", metavar="DIR", help="backbone directory")
    parser.add_argument("--prm-output", dest="prm_output", metavar="DIR", help="default PRM directory")
    parser.add_argument("--steps", type=int)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--overwrite", action="store_true", default=None)
    parser.add_argument("--no-progress", dest="no_progress", action="store_true")
    args = parser.parse_args(argv)

    hf_logging.disable_progress_bar()  # our bar and one summary line, not transformers' save/load bars
    overrides = {k: v for k, v in vars(args).items() if k in PretrainConfig.model_fields}
    try:
        cfg = load_config(PretrainConfig, args.config, overrides)
        print(dump_config(cfg), file=sys.stderr)
        report = run(cfg, progress=not args.no_progress, log=lambda s: print(s, file=sys.stderr))
    except UserError as exc:
        print(f"pretrain_backbone: error: {exc}", file=sys.stderr)
        return 2
    f = report["final"]
    print(f"pretrain_backbone: {report['parameters'] / 1e6:.2f}M parameters, {cfg.steps} steps in "
          f"{report['train_seconds']:.0f}s (total {report['total_seconds']:.0f}s, {report['threads']} threads), "
          f"result-digit accuracy {f['result_digit_accuracy']:.3f}, whole results {f['result_number_accuracy']:.3f} "
          f"-> {report['output']}" + (f", PRM -> {report['prm_output']}" if report["prm_output"] else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
