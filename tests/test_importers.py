"""`actprm import` (actprm.importers, pipelines/import_model.py): four foreign PRM layouts, exactly.

Each test writes a tiny random checkpoint in the source's own layout (its key names and
config.json, saved with safetensors; no download, no remote code), computes the source's
step probabilities with a plain-torch reimplementation of its forward pass on transformers'
backbone (formatting and tokenising the way the source's own code does), imports it, and
checks that `actprm score` gives the same probabilities (<= 1e-5) and that `actprm train`
continues from the imported directory.
"""

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file, save_file

from actprm.cli import main
from actprm.config import ImportConfig
from actprm.errors import UserError
from actprm.importers import ACTIVEPRM_SYSTEM, ANCHOR_NAME, QWEN_PRM_SYSTEM
from actprm.model import load_prm
from actprm.scoring import score_trajectories
from actprm.tokens import load_tokenizer
from pipelines import import_model

TOL = 1e-5
SEP = "<extra_0>"
ROWS = [
    {"id": "a", "problem": "What is 12 + 30?", "steps": ["12 + 30 = 42.", "So the answer is 42."]},
    {"id": "b", "problem": "Tom has 3 apples and buys 4 more. How many?",
     "steps": ["He has 3 apples.", "3 + 4 = 8.", "The answer is 8.", "Done."]},
    {"id": "c", "problem": "Compute 7 * 6.", "steps": ["7 * 6 = 42"]},
]


def tiny_config(vocab_size, **extra):
    from transformers import Qwen2Config

    return Qwen2Config(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, intermediate_size=64, max_position_embeddings=512,
                       rms_norm_eps=1e-6, tie_word_embeddings=False, use_cache=False, **extra)


def backbone_state(config, seed):
    """transformers' Qwen2Model with seeded random weights, and its tensors under the `model.` prefix."""
    from transformers import Qwen2Model

    torch.manual_seed(seed)
    bb = Qwen2Model(config).eval()
    with torch.no_grad():  # post_init leaves norms at 1 and biases at 0: make every tensor matter
        for name, p in bb.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    return bb, {f"model.{k}": v.detach().clone().contiguous() for k, v in bb.state_dict().items()}


def write_checkpoint(path, config_dict, state, tokenizer):
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps(config_dict, indent=2))
    save_file(state, str(path / "model.safetensors"), metadata={"format": "pt"})
    tokenizer.save_pretrained(path)


def hidden_of(bb, ids):
    with torch.no_grad():
        return bb(input_ids=torch.tensor([ids])).last_hidden_state[0].float()  # (T, H)


def chat_text(tokenizer, system, problem, answer, generation_prompt):
    msgs = [{"role": "system", "content": system}, {"role": "user", "content": problem}]
    if generation_prompt:  # ActivePRM's worker: the template with a generation prompt, then the answer
        return tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True) + answer
    msgs.append({"role": "assistant", "content": answer})  # Qwen2.5-Math-PRM's model card
    return tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=False)


def import_dir(tmp_path, src, layout, **kw):
    out = tmp_path / f"imported-{layout or 'detected'}"
    result = import_model.run(ImportConfig(layout=layout, source=str(src), output=str(out), **kw))
    line = result.summary_line()
    assert line.startswith(f"import: {result.summary.layout} -> {out}")
    assert result.summary.max_abs_diff is None or result.summary.max_abs_diff <= TOL
    return out, result


def score_cli(tmp_path, model_dir, name, extra=()):
    data = tmp_path / f"{name}.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    out = tmp_path / f"scored-{name}"
    assert main(["score", "--input", str(data), "--output", str(out), "--model", str(model_dir),
                 "--device", "cpu", "--dtype", "float32", *extra]) == 0  # exact comparisons: no bf16
    rows = pa.concat_tables([pq.read_table(f) for f in sorted((out / "scored").glob("*.parquet"))]).to_pylist()
    return {r["id"]: r for r in rows}


def check_cli_equal(scored, reference):
    """step_mean / step_std of `actprm score` vs the reference's (K, n_steps) probabilities; the max |diff|."""
    allp = np.concatenate([p.ravel() for p in reference.values()])
    assert allp.max() - allp.min() > 0.05  # a reference spread enough for the comparison to mean something
    worst = 0.0
    for rid, probs in reference.items():
        row = scored[rid]
        assert row["n_scored_steps"] == probs.shape[1]
        worst = max(worst, float(np.abs(np.array(row["step_mean"]) - probs.mean(axis=0)).max()))
        if probs.shape[0] > 1:
            worst = max(worst, float(np.abs(np.array(row["step_std"]) - probs.std(axis=0, ddof=1)).max()))
        else:
            assert row["step_std"] == [0.0] * probs.shape[1]
    assert worst <= TOL, worst
    return worst


def check_api_equal(model_dir, reference, system_prompt=None):
    """Per-head probabilities through actprm.scoring vs the reference; the max |diff|."""
    model, tok = load_prm(model_dir)
    res = score_trajectories(model, tok, [r["problem"] for r in ROWS], [r["steps"] for r in ROWS],
                             system_prompt=system_prompt)
    worst = max(float(np.abs(r.probs.T - reference[row["id"]]).max()) for r, row in zip(res, ROWS))
    assert worst <= TOL, worst
    return worst


def train_once(tmp_path, model_dir, name):
    """One tiny `actprm train` round from the imported directory; the new checkpoint keeps its format."""
    labelled = tmp_path / f"labelled-{name}.parquet"
    pq.write_table(pa.Table.from_pylist([
        {"id": r["id"], "problem": r["problem"], "steps": r["steps"], "label_first_error": -1 if i else 0}
        for i, r in enumerate(ROWS)]), labelled)
    out = tmp_path / f"trained-{name}"
    recipe = tmp_path / f"train-{name}.yaml"
    recipe.write_text(json.dumps({"device": "cpu", "epochs": 2, "batch_size": 2, "warmup_steps": 0}))
    assert main(["train", "--config", str(recipe), "--model", str(model_dir), "--labelled", str(labelled),
                 "--output", str(out)]) == 0
    before = json.loads((model_dir / "prm_config.json").read_text())
    after = json.loads((out / "prm_config.json").read_text())
    for key in ("prompt", "head_layers", "separator_token", "n_heads", "head_hidden"):
        assert after.get(key) == before.get(key), key
    old, new = load_file(str(model_dir / "heads.safetensors")), load_file(str(out / "heads.safetensors"))
    assert any(not torch.equal(old[k], new[k]) for k in old)  # the heads learned
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["round"] == 1 and np.isfinite(state["last_loss"])
    return out


def record(name, **figures):
    """Equality figures for BENCHMARKS.md (printed with pytest -s)."""
    print(f"\n[import-equality] {name}: " + ", ".join(f"{k}={v:.1e}" for k, v in figures.items()))


# --------------------------------------------------------------------------- ActivePRM


def ensemble_fc(x, w, b):  # ActivePRM's EnsembleFC: (E,B,L,H) x (E,H,M) + (E,M)
    return torch.einsum("eblh,ehm->eblm", x, w) + b[:, None, None, :]


@pytest.fixture(scope="module")
def activeprm(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("activeprm")
    tok = load_tokenizer()
    E, D = 4, 128
    config = tiny_config(len(tok))
    bb, state = backbone_state(config, seed=1)
    g = torch.Generator().manual_seed(2)
    H = config.hidden_size
    for part, scale in (("model", 1.0), ("reg_model", 0.5)):
        for name, (i, o) in {"nn1": (H, D), "nn2": (D, D), "nn_out": (D, 1)}.items():
            state[f"score.{part}.{name}.weight"] = scale * torch.randn(E, i, o, generator=g) / i ** 0.5
            state[f"score.{part}.{name}.bias"] = scale * 0.1 * torch.randn(E, o, generator=g)
    cfg = config.to_dict() | {"architectures": ["Qwen2ForEnsemblePRM"], "num_ensemble": E, "rr_token": SEP,
                              "learning_probability": 0.5, "regularization_lambda": 0.1,
                              "auto_map": {"AutoModel": "modeling_qwen2.Qwen2ForEnsemblePRM"}}
    src = tmp / "src"
    write_checkpoint(src, cfg, state, tok)

    def reference(system):
        out = {}
        for r in ROWS:
            text = chat_text(tok, system, r["problem"], SEP.join(r["steps"]) + SEP, generation_prompt=True)
            ids = tok(text).input_ids
            h = hidden_of(bb, ids)[None, None].repeat(E, 1, 1, 1)  # (E, 1, T, H)
            x = torch.relu(ensemble_fc(h, state["score.model.nn1.weight"], state["score.model.nn1.bias"]))
            x = torch.relu(ensemble_fc(x, state["score.model.nn2.weight"], state["score.model.nn2.bias"]))
            logits = ensemble_fc(x, state["score.model.nn_out.weight"], state["score.model.nn_out.bias"])
            probs = torch.sigmoid(logits.squeeze(-1))[:, 0]  # (E, T): their inference()
            out[r["id"]] = probs[:, torch.tensor(ids) == tok.convert_tokens_to_ids(SEP)].numpy()
        return out

    return tmp, src, state, reference


def test_activeprm_equals_the_source_with_their_system_prompt_and_trains(activeprm):
    tmp, src, state, reference = activeprm
    out, result = import_dir(tmp, src, None)  # detected from config.json's architectures
    assert result.summary.layout == "activeprm" and result.summary.n_heads == 4 and result.summary.anchor
    cfg = json.loads((out / "prm_config.json").read_text())
    assert cfg["prompt"]["system_prompt"] == ACTIVEPRM_SYSTEM and cfg["source"]["layout"] == "activeprm"
    ref = reference(ACTIVEPRM_SYSTEM)
    api = check_api_equal(out, ref)
    cli = check_cli_equal(score_cli(tmp, out, "activeprm"), ref)
    # the anchor is their reg_model, under actprm's names
    anchor = load_file(str(out / ANCHOR_NAME))
    for name, i in (("nn1", 1), ("nn2", 2), ("nn_out", 3)):
        assert torch.equal(anchor[f"W{i}"], state[f"score.reg_model.{name}.weight"])
        assert torch.equal(anchor[f"b{i}"], state[f"score.reg_model.{name}.bias"])
    # another system prompt (a config key, the --system-prompt of score): the source's scores with it
    other = "Answer briefly."
    yaml_cfg = tmp / "score.yaml"
    yaml_cfg.write_text(json.dumps({"system_prompt": other}))
    ref_other = reference(other)
    assert max(np.abs(ref_other[k] - ref[k]).max() for k in ref) > 1e-3  # the prompt matters
    other_cli = check_cli_equal(score_cli(tmp, out, "activeprm-other", ["--config", str(yaml_cfg)]), ref_other)
    record("activeprm", api=api, cli=cli, other_prompt_cli=other_cli)
    trained = train_once(tmp, out, "activeprm")
    assert torch.equal(load_file(str(trained / ANCHOR_NAME))["W1"], anchor["W1"])  # still anchored to reg_model


# --------------------------------------------------------------------------- Qwen2.5-Math-PRM


@pytest.fixture(scope="module")
def qwen_prm(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("qwenprm")
    tok = load_tokenizer()
    config = tiny_config(len(tok))
    bb, state = backbone_state(config, seed=3)
    H = config.hidden_size
    g = torch.Generator().manual_seed(4)
    state |= {"score.0.weight": 3 * torch.randn(H, H, generator=g) / H ** 0.5,
              "score.0.bias": 0.1 * torch.randn(H, generator=g),
              "score.2.weight": torch.randn(2, H, generator=g) / H ** 0.5,
              "score.2.bias": 0.5 * torch.randn(2, generator=g)}
    head = torch.nn.Sequential(torch.nn.Linear(H, H), torch.nn.ReLU(), torch.nn.Linear(H, 2))
    sep_id = tok.convert_tokens_to_ids(SEP)
    texts = {r["id"]: chat_text(tok, QWEN_PRM_SYSTEM, r["problem"], SEP.join(r["steps"]) + SEP,
                                generation_prompt=False) for r in ROWS}
    ids = {k: tok.encode(t) for k, t in texts.items()}
    at_sep = {k: hidden_of(bb, v)[torch.tensor(v) == sep_id] for k, v in ids.items()}
    # a random head saturates on these near-identical separator states: centre and scale its logit margin
    head.load_state_dict({k[len("score."):]: v for k, v in state.items() if k.startswith("score.")})
    with torch.no_grad():
        margin = torch.cat([head(h) @ torch.tensor([-1.0, 1.0]) for h in at_sep.values()])
        head[2].weight.mul_(2.0 / margin.std())
        margin = torch.cat([head(h) @ torch.tensor([-1.0, 1.0]) for h in at_sep.values()])
        head[2].bias[1] -= margin.mean()
    state |= {f"score.{k}": v.detach().clone() for k, v in head.state_dict().items()}
    cfg = config.to_dict() | {"architectures": ["Qwen2ForProcessRewardModel"],
                              "auto_map": {"AutoModel": "modeling_qwen2_rm.Qwen2ForProcessRewardModel"}}
    src = tmp / "src"
    write_checkpoint(src, cfg, state, tok)
    ref = {}
    for r in ROWS:  # the model card: chat template with the system prompt, softmax(...)[..., 1] at <extra_0>
        with torch.no_grad():
            probs = torch.softmax(head(hidden_of(bb, ids[r["id"]])), dim=-1)[:, 1]
        ref[r["id"]] = probs[torch.tensor(ids[r["id"]]) == sep_id].numpy()[None]
    return tmp, src, ref


def test_qwen_prm_equals_the_source_and_trains(qwen_prm):
    tmp, src, ref = qwen_prm
    out, result = import_dir(tmp, src, "qwen-prm")
    assert result.summary.head_layers == 1 and result.summary.n_heads == 1
    assert json.loads((out / "prm_config.json").read_text())["head_layers"] == 1
    api = check_api_equal(out, ref)
    cli = check_cli_equal(score_cli(tmp, out, "qwen"), ref)
    record("qwen-prm", api=api, cli=cli, probe=result.summary.max_abs_diff)
    train_once(tmp, out, "qwen")


def test_k_perturbed_heads_keep_the_source_as_head_zero(qwen_prm):
    tmp, src, ref = qwen_prm
    out, result = import_dir(tmp / "k4", src, "qwen-prm", n_heads=4, perturb=0.05, seed=7)
    assert result.summary.n_heads == 4 and result.summary.perturbed_heads == 3
    model, tok = load_prm(out)
    res = score_trajectories(model, tok, [r["problem"] for r in ROWS], [r["steps"] for r in ROWS])
    for r, row in zip(res, ROWS):
        assert np.abs(r.probs[:, 0] - ref[row["id"]][0]).max() <= TOL  # head 0: the source's
        assert r.std.min() > 0  # a spread for the ActPRM rule
    again, _ = import_dir(tmp / "again", src, "qwen-prm", n_heads=4, perturb=0.05, seed=7)
    assert all(torch.equal(a, b) for a, b in zip(load_file(str(out / "heads.safetensors")).values(),
                                                 load_file(str(again / "heads.safetensors")).values()))


# --------------------------------------------------------------------------- TRL token classification


@pytest.fixture(scope="module")
def token_classification(tmp_path_factory):
    from transformers import Qwen2ForTokenClassification

    tmp = tmp_path_factory.mktemp("tokcls")
    tok = load_tokenizer()
    config = tiny_config(len(tok), num_labels=2)
    _, state = backbone_state(config, seed=5)
    torch.manual_seed(6)
    model = Qwen2ForTokenClassification(config).eval()
    with torch.no_grad():  # a head that spreads the probabilities (init std 0.02 keeps them near 0.5)
        model.score.weight.mul_(50.0)
        model.score.bias.copy_(torch.tensor([0.3, -0.2]))
    model.model.load_state_dict({k[len("model."):]: v for k, v in state.items()})
    src = tmp / "src"
    model.save_pretrained(src)  # transformers' own class: config.json architectures + model.safetensors
    tok.save_pretrained(src)
    ref = {}
    sep_ids = tok.encode("\n", add_special_tokens=False)
    for r in ROWS:  # TRL's PRMTrainer.tokenize_row: [bos] + prompt + (step + separator) per step
        ids = [tok.bos_token_id] + tok(r["problem"], add_special_tokens=False)["input_ids"]
        at = []
        for step in r["steps"]:
            ids += tok(step, add_special_tokens=False)["input_ids"] + sep_ids
            at.append(len(ids) - 1)  # the label sits on the separator's last token
        with torch.no_grad():
            probs = torch.softmax(model(input_ids=torch.tensor([ids])).logits[0], dim=-1)[:, 1]
        ref[r["id"]] = probs[at].numpy()[None]
    return tmp, src, ref


def test_token_classification_equals_the_source_and_trains(token_classification):
    tmp, src, ref = token_classification
    out, result = import_dir(tmp, src, None)
    assert result.summary.layout == "token-classification" and result.summary.head_layers == 0
    assert json.loads((out / "prm_config.json").read_text())["prompt"]["tokenize"] == "pieces"
    api = check_api_equal(out, ref)
    cli = check_cli_equal(score_cli(tmp, out, "tokcls"), ref)
    record("token-classification", api=api, cli=cli, probe=result.summary.max_abs_diff)
    train_once(tmp, out, "tokcls")


# --------------------------------------------------------------------------- Math-Shepherd


@pytest.fixture(scope="module")
def math_shepherd(tmp_path_factory):
    from transformers import Qwen2ForCausalLM

    tmp = tmp_path_factory.mktemp("shepherd")
    tok = load_tokenizer()
    tok.add_tokens(["ки"])  # the step tag, one token (as in the Mistral tokenizer Math-Shepherd uses)
    config = tiny_config(len(tok))
    _, state = backbone_state(config, seed=8)
    torch.manual_seed(9)
    model = Qwen2ForCausalLM(config).eval()
    model.model.load_state_dict({k[len("model."):]: v for k, v in state.items()})
    with torch.no_grad():  # spread the probabilities (init std 0.02 keeps them near 0.5)
        model.lm_head.weight.mul_(50.0)
    src = tmp / "src"
    model.save_pretrained(src)
    tok.save_pretrained(src)
    good, bad = tok.encode("+", add_special_tokens=False)[0], tok.encode("-", add_special_tokens=False)[0]
    tag = tok.encode("ки", add_special_tokens=False)[-1]
    ref = {}
    for r in ROWS:  # the model card: f"{question} {output}", steps "... ки\n", softmax over [+, -] at the tag
        output = "\n".join(f"{s} ки" for s in r["steps"])
        ids = tok.encode(f"{r['problem']} {output}")
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids])).logits[0][:, [good, bad]]
        probs = logits.softmax(dim=-1)[:, 0]
        ref[r["id"]] = probs[torch.tensor(ids) == tag].numpy()[None]
    return tmp, src, ref


def test_math_shepherd_equals_the_source_and_trains(math_shepherd):
    tmp, src, ref = math_shepherd
    out, result = import_dir(tmp, src, "math-shepherd")
    assert result.summary.separator == "ки" and result.summary.head_layers == 0
    api = check_api_equal(out, ref)
    cli = check_cli_equal(score_cli(tmp, out, "shepherd"), ref)
    record("math-shepherd", api=api, cli=cli, probe=result.summary.max_abs_diff)
    train_once(tmp, out, "shepherd")


def test_the_import_verb_takes_from_source_and_output(math_shepherd, capsys):
    """`actprm import --from LAYOUT SRC --output DIR` (flags generated from ImportConfig) imports exactly."""
    tmp, src, ref = math_shepherd
    out = tmp / "via-cli"
    assert main(["import", "--from", "math-shepherd", str(src), "--output", str(out), "--no-progress"]) == 0
    assert capsys.readouterr().out.startswith(f"import: math-shepherd -> {out}")
    assert check_cli_equal(score_cli(tmp, out, "shepherd-cli"), ref) <= TOL
    assert main(["import", "--from", "math-shepherd", str(src), "--output", str(out)]) == 2  # not empty: no overwrite


# --------------------------------------------------------------------------- errors


def test_bad_sources_are_one_line_user_errors(tmp_path, qwen_prm):
    _, src, _ = qwen_prm
    with pytest.raises(UserError, match="no config.json"):
        import_model.run(ImportConfig(source=str(tmp_path), output=str(tmp_path / "o")))
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text(json.dumps({"model_type": "qwen2", "architectures": ["X"]}))
    (pickled / "pytorch_model.bin").write_bytes(b"not read")
    with pytest.raises(UserError, match="no safetensors weights"):
        import_model.run(ImportConfig(source=str(pickled), output=str(tmp_path / "o")))
    with pytest.raises(UserError, match="not a single token"):
        import_model.run(ImportConfig(layout="qwen-prm", source=str(src), output=str(tmp_path / "o"),
                                      separator="two words"))
    with pytest.raises(UserError, match="no tensor 'score.weight'"):
        import_model.run(ImportConfig(layout="token-classification", source=str(src), output=str(tmp_path / "o")))
    assert not (tmp_path / "o").exists()  # nothing half-written
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "config.json").write_text(json.dumps({"model_type": "not-a-transformers-model"}))
    save_file({"model.x": torch.zeros(1)}, str(foreign / "model.safetensors"))
    with pytest.raises(UserError, match="remote code is never run|cannot load its tokenizer"):
        import_model.run(ImportConfig(layout="qwen-prm", source=str(foreign), output=str(tmp_path / "o")))


def test_scoring_a_foreign_checkpoint_names_the_import_command(tmp_path, token_classification, capsys):
    _, src, _ = token_classification
    data = tmp_path / "rows.jsonl"
    data.write_text(json.dumps(ROWS[0]) + "\n")
    assert main(["score", "--input", str(data), "--output", str(tmp_path / "o"), "--model", str(src)]) == 2
    err = capsys.readouterr().err
    assert "actprm import --from token-classification" in err and len(err.strip().splitlines()) == 1


def test_a_causal_lm_is_math_shepherd_only_when_asked(tmp_path, math_shepherd):
    _, src, _ = math_shepherd
    with pytest.raises(UserError, match="pass --from math-shepherd"):
        import_model.run(ImportConfig(source=str(src), output=str(tmp_path / "o")))


# --------------------------------------------------------------------------- the source's tokenizer as it is

BLANK_ROWS = [  # steps with newlines, blank lines and digits: where a re-serialised tokenizer differs
    {"id": "n1", "problem": "What is 12 + 30?\n\nShow your work.",
     "steps": ["12 + 30 = 42.\n\nCheck: 42 - 30 = 12.", "So the answer is 42."]},
    {"id": "n2", "problem": "Compute 7 * 6.", "steps": ["7 * 6 = 40 + 2\n= 42", "\n\nThe answer is 42.\n\nDone."]},
]
QWEN_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "merges.txt", "special_tokens_map.json")


def byte_bpe(path):
    """A tiny byte-level BPE tokenizer.json (GPT-2's split: "\\n\\n" before text is two pre-tokens) with a
    `ĊĊ` merge, as Qwen2's own files have: transformers' Qwen2Tokenizer (its own split regex) makes one token."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    merges = [("Ċ", "Ċ"), ("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("a", "n"), ("Ġ", "=")]
    vocab = {c: i for i, c in enumerate(alphabet)}
    for a, b in merges:
        vocab[a + b] = len(vocab)
    tk = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tk.decoder = decoders.ByteLevel()
    tk.add_special_tokens([AddedToken(t, special=True, normalized=False)
                           for t in ("<|endoftext|>", "<|im_start|>", "<|im_end|>", SEP)])
    tk.save(str(path / "tokenizer.json"))
    (path / "vocab.json").write_text(json.dumps(tk.get_vocab()))
    (path / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    special = {"eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>"}
    (path / "special_tokens_map.json").write_text(json.dumps(special, indent=2))
    (path / "tokenizer_config.json").write_text(json.dumps(special | {
        "tokenizer_class": "Qwen2Tokenizer", "bos_token": None, "model_max_length": 4096,
        "chat_template": QWEN_TEMPLATE, "auto_map": {"AutoTokenizer": ["tokenization_qwen2.Qwen2Tokenizer", None]}},
        indent=2))
    return tk


@pytest.fixture(scope="module")
def qwen_blank(tmp_path_factory):
    """A qwen-prm source (model_type qwen2) with byte_bpe's tokenizer; its step rewards on BLANK_ROWS
    from its own tokenizer.json (tokenizers.Tokenizer.from_file) and the model card's formula."""
    from jinja2 import Template
    from tokenizers import Tokenizer

    tmp = tmp_path_factory.mktemp("qwenblank")
    src = tmp / "src"
    src.mkdir()
    byte_bpe(src)
    tk = Tokenizer.from_file(str(src / "tokenizer.json"))
    config = tiny_config(tk.get_vocab_size())
    bb, state = backbone_state(config, seed=11)
    H = config.hidden_size
    g = torch.Generator().manual_seed(12)
    head = torch.nn.Sequential(torch.nn.Linear(H, H), torch.nn.ReLU(), torch.nn.Linear(H, 2))
    with torch.no_grad():
        head[0].weight.copy_(3 * torch.randn(H, H, generator=g) / H ** 0.5)
        head[2].weight.copy_(8 * torch.randn(2, H, generator=g) / H ** 0.5)
    sep_id = tk.token_to_id(SEP)
    ids = {}
    for r in BLANK_ROWS:  # the model card: system, user, assistant = steps each followed by <extra_0>
        msgs = [{"role": "system", "content": QWEN_PRM_SYSTEM}, {"role": "user", "content": r["problem"]},
                {"role": "assistant", "content": SEP.join(r["steps"]) + SEP}]
        ids[r["id"]] = tk.encode(Template(QWEN_TEMPLATE).render(messages=msgs, add_generation_prompt=False)).ids
    at_sep = torch.cat([hidden_of(bb, v)[torch.tensor(v) == sep_id] for v in ids.values()])
    with torch.no_grad():  # centre and scale the head's logit margin on these states (as in qwen_prm)
        margin = head(at_sep) @ torch.tensor([-1.0, 1.0])
        head[2].weight.mul_(2.0 / margin.std())
        head[2].bias[1] -= (head(at_sep) @ torch.tensor([-1.0, 1.0])).mean()
    ref = {}
    for r in BLANK_ROWS:
        with torch.no_grad():
            probs = torch.softmax(head(hidden_of(bb, ids[r["id"]])), dim=-1)[:, 1]
        ref[r["id"]] = probs[torch.tensor(ids[r["id"]]) == sep_id].numpy()[None]
    state |= {f"score.{k}": v.detach().clone() for k, v in head.state_dict().items()}
    cfg = config.to_dict() | {"architectures": ["Qwen2ForProcessRewardModel"]}
    (src / "config.json").write_text(json.dumps(cfg, indent=2))
    save_file(state, str(src / "model.safetensors"), metadata={"format": "pt"})
    return tmp, src, tk, ref


def test_import_keeps_the_source_tokenizer_byte_for_byte_and_blank_lines_score_the_same(qwen_blank, capsys):
    from transformers import AutoTokenizer

    tmp, src, tk, ref = qwen_blank
    step = "12 + 30 = 42.\n\nSo the answer is 42."
    assert tk.encode(step).tokens.count("Ċ") == 2  # the source: a blank line inside a step is two tokens
    assert "ĊĊ" in AutoTokenizer.from_pretrained(src).tokenize(step)  # what a model_type-picked class makes of it
    out = tmp / "imported"
    assert main(["import", "--from", "qwen-prm", str(src), "--output", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert "auto_map" in printed[0] and printed[1].startswith(f"import: qwen-prm -> {out}"), printed
    for name in TOKENIZER_FILES:
        assert (out / name).read_bytes() == (src / name).read_bytes(), name
    tok_cfg = json.loads((out / "tokenizer_config.json").read_text())
    assert tok_cfg == {k: v for k, v in json.loads((src / "tokenizer_config.json").read_text()).items()
                       if k != "auto_map"}
    model, tok = load_prm(out)  # as actprm loads it: the same ids as the source's tokenizer.json
    for r in BLANK_ROWS:
        for text in (step, r["problem"], *r["steps"]):
            assert tok.encode(text, add_special_tokens=False) == tk.encode(text).ids, text
    res = score_trajectories(model, tok, [r["problem"] for r in BLANK_ROWS], [r["steps"] for r in BLANK_ROWS])
    worst = max(float(np.abs(x.probs.T - ref[r["id"]]).max()) for x, r in zip(res, BLANK_ROWS))
    spread = np.concatenate([p.ravel() for p in ref.values()])
    assert spread.max() - spread.min() > 0.05 and worst <= TOL, worst


def test_the_imports_own_check_refuses_a_tokenizer_that_splits_blank_lines_otherwise(qwen_blank, monkeypatch):
    """The probe check reads the written directory as actprm loads it against the source's tokenizer.json:
    the tokenizer transformers 5 re-serialises for model_type qwen2 (a blank line one token) is refused."""
    from transformers import AutoTokenizer

    from actprm import importers

    tmp, src, _, _ = qwen_blank

    def reserialised(source, out):
        AutoTokenizer.from_pretrained(source).save_pretrained(out)
        cfg = json.loads((out / "tokenizer_config.json").read_text())
        cfg.pop("auto_map", None)
        (out / "tokenizer_config.json").write_text(json.dumps(cfg))
        return False

    monkeypatch.setattr(importers, "copy_tokenizer", reserialised)
    with pytest.raises(UserError, match="splits a probe text unlike"):
        import_model.run(ImportConfig(layout="qwen-prm", source=str(src), output=str(tmp / "refused")))
    assert not (tmp / "refused").exists()


def test_an_unknown_model_type_is_one_line_without_a_transformers_warning(tmp_path):
    import os
    import subprocess
    import sys

    src = tmp_path / "foreign"
    src.mkdir()
    byte_bpe(src)
    (src / "config.json").write_text(json.dumps({"model_type": "not-a-transformers-model",
                                                 "architectures": ["Qwen2ForProcessRewardModel"]}))
    save_file({"model.x": torch.zeros(1)}, str(src / "model.safetensors"))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "actprm.cli", "import", "--from", "qwen-prm", str(src),
                           "--output", str(tmp_path / "o")], capture_output=True, text=True, env=env, timeout=300)
    err = proc.stderr.strip()
    assert proc.returncode == 2 and len(err.splitlines()) == 1, err
    assert "model_type" in err and "never" in err, err
    assert not (tmp_path / "o").exists()
