"""World sanity (scratch form): train a PRM on a fully labelled world pool, ProcessBench F1 on the eval set.

    python -m bench.world_sanity N MODEL "dict(TrainConfig overrides)"
    MODEL: default (the shipped PRM) | random (a random-init PRM of the same shape) | a checkpoint dir
           | features / random-features (the shipped / a random backbone with fresh heads that also
             read the LM's step log-probs: actprm.model step_features=("lm_logprob",))
    python -m bench.world_sanity diagnose [N_PROBE] [CHECKPOINT]

`diagnose` (no training) asks whether the shipped backbone carries step correctness: the LM's own
min log-prob over each step's tokens as an error detector (F1 on the eval rows at its best
threshold), frozen-backbone linear probes (logistic regression on N_PROBE balanced pool rows,
default 3000) of the hidden state at the separator, the last result digit and the comma after it,
and the logit-lens accuracy of the result digits per layer, for the shipped backbone or for the
backbone of CHECKPOINT (e.g. one written with SAVE) to see whether training kept the arithmetic.

Environment: POOL_SPLIT=train|eval (eval: a balanced pool, about half the rows with an error;
default train), THREADS (torch threads, default 1), EVAL_EVERY (also report F1 every that many
steps during training; default 0: only before and after), ERR_WEIGHT (label_weight of the
rows with an error, default 1), SAVE (a directory to save the trained PRM to), LM_LAMBDA
(weight of an auxiliary next-token loss on the correct steps' tokens; default 0).

Labels are the world's true first_error_step (a verifier with wrong_rate 0); 600 eval rows (seed 2).
Prints (error_acc, correct_acc, F1) at threshold 0.5 before and after one round, plus the best
threshold's F1 on the same rows (an optimistic figure: the threshold is tuned on the eval rows).
The headline run goes through the CLI instead: bench/world_sanity.sh (generate -> annotate ->
train -> evaluate); this script is for recipe experiments and the diagnostics.
"""
import json
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

from actprm.checkpoint import load_checkpoint
from actprm.config import TrainConfig
from actprm.labels import LabelCounts
from actprm.scoring import TrajectoryEncoder, score_trajectories
from actprm.trainer import build_examples, train_round
from actprm.world.arith import Generator

torch.set_num_threads(int(os.environ.get("THREADS", "1")))


def _prf(rows, scores, thr):
    """(error_acc, correct_acc, F1): prediction = first step whose score is below thr."""
    pe, pc = [], []
    for r, m in zip(rows, scores):
        below = np.nonzero(np.asarray(m) < thr)[0]
        pred = int(below[0]) if len(below) else -1
        (pe if r["first_error_step"] >= 0 else pc).append(pred == r["first_error_step"])
    a, b = np.mean(pe), np.mean(pc)
    return round(float(a), 3), round(float(b), 3), round(float(2 * a * b / (a + b + 1e-9)), 3)


def diagnose(n_probe: int, checkpoint: str | None) -> None:
    from transformers import Qwen2ForCausalLM

    from actprm.labels import step_targets
    from actprm.model import default_backbone_path, load_prm
    from pipelines.pretrain_backbone import Masks

    _, tok, _, _, _ = load_checkpoint(None, torch.device("cpu"))
    lm = Qwen2ForCausalLM.from_pretrained(str(default_backbone_path())).eval()
    if checkpoint:
        lm.model.load_state_dict(load_prm(checkpoint)[0].backbone.state_dict())
        lm.tie_weights()
    enc = TrajectoryEncoder(tok)
    comma = tok.encode(",", add_special_tokens=False)[-1]
    newline = tok.encode("\n", add_special_tokens=False)[-1]

    def features(rows):
        out = []
        encoded = enc.encode([r["problem"] for r in rows], [r["steps"] for r in rows])
        with torch.inference_mode():
            for e in encoded:
                ids = torch.tensor([e.input_ids])
                o = lm(input_ids=ids, output_hidden_states=True)
                lp = torch.log_softmax(o.logits[0, :-1].float(), -1).gather(1, ids[0, 1:, None])[:, 0].numpy()
                hs = o.hidden_states[-1][0].numpy()  # last layer, after the final norm: what the heads read
                steps, a = [], None
                for i, s in enumerate(e.sep_positions):
                    if i == 0:
                        a = s - 1
                        while e.input_ids[a - 1] != newline:
                            a -= 1
                    else:
                        a = e.sep_positions[i - 1] + 1
                    c = next(j for j in range(a, s) if e.input_ids[j] == comma)
                    steps.append({"minlp": float(min(lp[j - 1] for j in range(a, s + 1))),
                                  "sep": hs[s], "digit": hs[c - 1], "comma": hs[c]})
                out.append(steps)
        return out

    ev = list(Generator(seed=2).rows(0, 600, "eval"))
    fe = features(ev)
    lps = [[s["minlp"] for s in st] for st in fe]
    best = max(((_prf(ev, lps, t), round(float(t), 2)) for t in np.linspace(-12, -0.1, 120)), key=lambda x: x[0][2])
    print("LM min log-prob per step as detector: best (error_acc, correct_acc, F1)", best[0], "at log-prob", best[1])
    tr = list(Generator(seed=1).rows(0, n_probe, "eval"))
    ft = features(tr)

    def xy(feats, rows, key):
        X, Y = [], []
        for st, r in zip(feats, rows):
            for s, y in zip(st, step_targets(r["first_error_step"], len(st))):
                if y is not None:
                    X.append(s[key])
                    Y.append(y)
        return np.array(X), np.array(Y, dtype=np.float32)

    for key in ("sep", "digit", "comma"):
        X, Y = xy(ft, tr, key)
        mu, sd = X.mean(0), X.std(0) + 1e-6
        Xt, Yt = torch.tensor((X - mu) / sd, dtype=torch.float32), torch.tensor(Y)
        w, b = torch.zeros(X.shape[1], requires_grad=True), torch.zeros(1, requires_grad=True)
        opt = torch.optim.LBFGS([w, b], max_iter=300)

        def closure(opt=opt, Xt=Xt, Yt=Yt, w=w, b=b):
            opt.zero_grad()
            loss = F.binary_cross_entropy_with_logits(Xt @ w + b, Yt) + 1e-3 * (w ** 2).sum()
            loss.backward()
            return loss

        opt.step(closure)
        with torch.no_grad():
            sc = [torch.sigmoid(torch.tensor((np.array([s[key] for s in st]) - mu) / sd, dtype=torch.float32) @ w + b
                                ).numpy() for st in fe]
        _, Ye = xy(fe, ev, key)
        s_e = np.concatenate([sc_[[i for i, y in enumerate(step_targets(r["first_error_step"], len(sc_)))
                                   if y is not None]] for sc_, r in zip(sc, ev)])
        order = np.argsort(s_e)
        ranks = np.empty(len(s_e))
        ranks[order] = np.arange(len(s_e))
        n1, n0 = Ye.sum(), len(Ye) - Ye.sum()
        auroc = (ranks[Ye == 1].sum() - n1 * (n1 - 1) / 2) / (n1 * n0)
        bt = max(((_prf(ev, sc, t), round(float(t), 2)) for t in np.arange(0.02, 0.99, 0.02)), key=lambda x: x[0][2])
        print(f"linear probe at {key}: step AUROC {auroc:.3f}, F1 at 0.5 {_prf(ev, sc, 0.5)}, best {bt[0]} at {bt[1]}")
    masks = Masks(tok)
    rows = list(Generator(seed=5).rows(0, 300, "lm"))
    hit, n = np.zeros(len(lm.model.layers) + 1), 0
    with torch.inference_mode():
        for e in enc.encode([r["problem"] for r in rows], [r["steps"] for r in rows]):
            ids = torch.tensor([e.input_ids])
            o = lm(input_ids=ids, output_hidden_states=True)
            pos = [j - 1 for j, r in enumerate(masks(e.input_ids)[1]) if r]
            for layer, h in enumerate(o.hidden_states):
                hh = h[0, pos] if layer == len(o.hidden_states) - 1 else lm.model.norm(h[0, pos])
                hit[layer] += int((lm.lm_head(hh).argmax(-1) == ids[0, [p + 1 for p in pos]]).sum())
            n += len(pos)
    print("result-digit accuracy by layer (logit lens; embeddings, layer 1..):", np.round(hit / n, 3).tolist())


if sys.argv[1] == "diagnose":
    diagnose(int(sys.argv[2]) if len(sys.argv) > 2 else 3000, sys.argv[3] if len(sys.argv) > 3 else None)
    sys.exit(0)
N = int(sys.argv[1])
model_path = sys.argv[2] if sys.argv[2] != "default" else None
kw = eval(sys.argv[3]) if len(sys.argv) > 3 else {}
split = os.environ.get("POOL_SPLIT", "train")  # eval: a balanced pool (half with an error)
every = int(os.environ.get("EVAL_EVERY", "0"))
g = Generator(seed=1)
err_weight = float(os.environ.get("ERR_WEIGHT", "1"))  # label_weight of the rows with an error
rows = [dict(r, label_first_error=r["first_error_step"], step_labels=None,
             label_weight=err_weight if r["first_error_step"] >= 0 else 1.0)
        for r in g.rows(0, N, split)]
ev = list(Generator(seed=2).rows(0, 600, "eval"))


def f1(model, tok):
    res = score_trajectories(model, tok, [r["problem"] for r in ev], [r["steps"] for r in ev])
    means = [x.mean for x in res]
    at_half = _prf(ev, means, 0.5)
    best = max((_prf(ev, means, t)[2], round(float(t), 2)) for t in np.arange(0.01, 1.0, 0.01))
    kinds = {}  # exact earliest-error hits at 0.5 by mistake kind
    for r, m in zip(ev, means):
        kind = json.loads(r["meta"])["error_kind"]
        if kind is not None:
            below = np.nonzero(m < 0.5)[0]
            kinds.setdefault(kind, []).append((int(below[0]) if len(below) else -1) == r["first_error_step"])
    by_kind = {k: round(float(np.mean(v)), 3) for k, v in sorted(kinds.items())}
    return at_half, {"best_f1": best[0], "threshold": best[1], **by_kind}


dev = torch.device("cpu")
FEATURES = ("lm_logprob",)
if model_path in ("random", "random-features"):
    from actprm.model import init_model
    model, tok = init_model("world", step_features=FEATURES if model_path == "random-features" else ())
    anchor = {k: v.clone() for k, v in model.heads.state_dict().items()}
elif model_path == "features":  # the shipped backbone, fresh heads that also read the LM's step log-probs
    from actprm.model import default_backbone_path, from_backbone
    model, tok = from_backbone(default_backbone_path(), step_features=FEATURES)
    anchor = {k: v.clone() for k, v in model.heads.state_dict().items()}
else:
    model, tok, anchor, _, _ = load_checkpoint(model_path, dev)
print("pool", N, split, "model", sys.argv[2], "cfg", kw, flush=True)
print("before", *f1(model, tok), flush=True)
cfg = TrainConfig(**kw)
c = LabelCounts()
ex = build_examples(rows, TrajectoryEncoder(tok, max_length=model.max_length), c)
n_sep = sum(sum(t is not None for t in e.targets) for e in ex)
n_zero = sum(sum(t == 0.0 for t in e.targets) for e in ex)
print(f"examples {len(ex)}, labelled steps {n_sep}, error steps {n_zero} ({n_zero / max(n_sep, 1):.3f})", flush=True)
lm_lambda = float(os.environ.get("LM_LAMBDA", "0"))
if lm_lambda:
    # auxiliary next-token loss on the assistant tokens of the steps labelled correct (keeps the
    # backbone's arithmetic while the heads learn); tied embeddings are the LM head
    import actprm.trainer as T
    stash = {}
    orig_forward = model.forward
    im_start = tok.convert_tokens_to_ids("<|im_start|>")

    def forward(input_ids, attention_mask=None, separator_mask=None, answer_start=None):
        hidden = model.hidden_states(input_ids, attention_mask)
        stash.update(ids=input_ids, hidden=hidden, sep=separator_mask)
        picked = hidden[separator_mask]
        if model.step_features:
            extra = model.step_feature_values(hidden, input_ids, separator_mask, answer_start)
            picked = torch.cat([picked.float(), extra], dim=-1)
        return model.heads(picked)

    model.forward = forward
    orig_loss = T.actprm_loss

    def loss_with_lm(logits, targets, trained, rows, row_weights, keep):
        base = orig_loss(logits, targets, trained, rows, row_weights, keep)
        ids, hidden, sep = stash["ids"], stash["hidden"], stash["sep"]
        B, L = ids.shape
        mask = torch.zeros((B, L), dtype=torch.bool)
        k = 0
        for b in range(B):
            pos = torch.nonzero(sep[b]).flatten().tolist()
            ok = [p for p, tt, tr in zip(pos, targets[k:k + len(pos)].tolist(), trained[k:k + len(pos)].tolist())
                  if tr and tt == 1.0]
            k += len(pos)
            if ok:
                start = max(i for i, t in enumerate(ids[b, :pos[0]].tolist()) if t == im_start) + 1
                mask[b, start:ok[-1] + 1] = True  # predicted tokens: start .. last correct separator
        pred_mask = mask[:, 1:]
        if pred_mask.any():
            h = hidden[:, :-1][pred_mask]
            lm_logits = h @ model.backbone.embed_tokens.weight.T
            lm = F.cross_entropy(lm_logits.float(), ids[:, 1:][pred_mask])
            base = base + lm_lambda * lm
        return base

    T.actprm_loss = loss_with_lm
t = time.time()
spent = [0.0]


def on_step(s, loss):
    if s % 50 == 0:
        print(s, round(loss, 3), round(time.time() - t - spent[0], 1), flush=True)
    if every and s % every == 0:
        t0 = time.time()
        print("  at step", s, *f1(model, tok), flush=True)
        spent[0] += time.time() - t0


res, _ = train_round(model, tok, ex, cfg, device=dev, anchor=anchor, on_step=on_step)
print("train s", round(time.time() - t - spent[0], 1), "steps", res.steps, "loss", round(res.first_loss, 4),
      "->", round(res.last_loss, 4), flush=True)
print("after", *f1(model, tok), flush=True)
if os.environ.get("SAVE"):
    model.save_pretrained(os.environ["SAVE"], tokenizer=tok)
