"""Tests for actprm.model: ensemble heads, presets, separator handling, save/load."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from actprm.model import (
    HEAD_HIDDEN,
    PRESETS,
    EnsembleHeads,
    EnsemblePRM,
    count_parameters,
    ensure_separator,
    from_backbone,
    init_model,
    load_prm,
    newline_token_id,
    preset_config,
)
from actprm.scoring import score_trajectories
from actprm.tokens import STEP_SEPARATOR, load_tokenizer

# 1 thread: on a shared 2-core box, 2 OpenMP threads spin against any other busy process
# and small matmuls get ~1000x slower; the tiny models gain nothing from a 2nd thread.
torch.set_num_threads(1)

# std of a normal truncated at +-2 sigma, relative to sigma
_TRUNC2_STD = math.sqrt(1 - 2 * 2 * math.exp(-2) / math.sqrt(2 * math.pi) / math.erf(2 / math.sqrt(2)))

PROBLEMS = ["What is 12 + 30?", "Compute 7 * 6 and then subtract 0."]
STEPS = [["12 + 30 = 42.", "The answer is 42."], ["7 * 6 = 42.", "42 - 0 = 42.", "The answer is 42."]]


def _mlp_loop(heads: EnsembleHeads, h: torch.Tensor) -> torch.Tensor:
    cols = []
    for k in range(heads.n_heads):
        mlp = torch.nn.Sequential(
            torch.nn.Linear(heads.hidden_size, heads.head_hidden),
            torch.nn.ReLU(),
            torch.nn.Linear(heads.head_hidden, heads.head_hidden),
            torch.nn.ReLU(),
            torch.nn.Linear(heads.head_hidden, 1),
        )
        with torch.no_grad():
            mlp[0].weight.copy_(heads.W1[k].T)
            mlp[0].bias.copy_(heads.b1[k])
            mlp[2].weight.copy_(heads.W2[k].T)
            mlp[2].bias.copy_(heads.b2[k])
            mlp[4].weight.copy_(heads.W3[k].T)
            mlp[4].bias.copy_(heads.b3[k])
            cols.append(mlp(h.float()))
    return torch.cat(cols, dim=1)


def _standin_tokenizer(with_separator: bool = False):
    """A tiny byte-level BPE tokenizer (no <extra_0> unless asked), like a user's hub tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|pad|>"] + ([STEP_SEPARATOR] if with_separator else [])
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    corpus = [f"Step {i}: we compute {i} plus {i} equals {2 * i}.\n\n" for i in range(50)]
    corpus += ["The answer is 42.\n\n", "So the final answer follows.\n"] * 20
    tok.train_from_iterator(corpus, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|pad|>")


@pytest.fixture(scope="module")
def tiny():
    return init_model("tiny", n_heads=4, seed=0)


# --------------------------------------------------------------------------- heads


def test_batched_heads_equal_loop_over_per_head_mlps():
    g = torch.Generator().manual_seed(0)
    heads = EnsembleHeads(48, n_heads=5, generator=g)
    with torch.no_grad():  # non-zero biases so they are exercised too
        for b in (heads.b1, heads.b2, heads.b3):
            b.normal_(0, 0.1, generator=g)
    h = torch.randn(9, 48, generator=g)
    out = heads(h)
    assert out.shape == (9, 5) and out.dtype == torch.float32
    torch.testing.assert_close(out, _mlp_loop(heads, h), atol=1e-6, rtol=1e-5)
    assert heads(torch.zeros(0, 48)).shape == (0, 5)


def test_heads_parameter_shapes():
    heads = EnsembleHeads(64, n_heads=3)
    shapes = {k: tuple(v.shape) for k, v in heads.state_dict().items()}
    D = HEAD_HIDDEN
    assert shapes == {"W1": (3, 64, D), "b1": (3, D), "W2": (3, D, D), "b2": (3, D), "W3": (3, D, 1), "b3": (3, 1)}


def test_heads_init_truncated_normal():
    heads = EnsembleHeads(256, n_heads=32, generator=torch.Generator().manual_seed(1))
    for w, fan_in, tol in ((heads.W1, 256, 0.01), (heads.W2, 128, 0.01), (heads.W3, 128, 0.04)):
        sigma = 1 / (2 * math.sqrt(fan_in))
        assert w.abs().max().item() <= 2 * sigma + 1e-7  # truncated at +-2 std
        assert abs(w.mean().item()) < 0.02 * sigma
        # the sample std of a +-2-sigma truncated normal is 0.880 * sigma
        assert w.std().item() == pytest.approx(_TRUNC2_STD * sigma, rel=tol)
        # and the draw really uses the range: a few values near the cut
        assert w.abs().max().item() > 1.9 * sigma
    for b in (heads.b1, heads.b2, heads.b3):
        assert torch.count_nonzero(b).item() == 0


def test_heads_seeded_and_independent():
    a = EnsembleHeads(32, 4, generator=torch.Generator().manual_seed(3))
    b = EnsembleHeads(32, 4, generator=torch.Generator().manual_seed(3))
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k])
    assert not torch.equal(a.W1[0], a.W1[1])  # heads differ from each other


def test_heads_compute_in_float32():
    heads = EnsembleHeads(32, 4)
    h = torch.randn(5, 32)
    ref = heads(h)
    heads_bf16 = EnsembleHeads(32, 4, init=False)
    heads_bf16.load_state_dict(heads.state_dict())
    heads_bf16.to(torch.bfloat16)
    out = heads_bf16(h.bfloat16())
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref, atol=0.05, rtol=0.05)


# --------------------------------------------------------------------------- presets / init


def test_presets_shapes():
    tiny = preset_config("tiny", 4096)
    small = preset_config("small", 4096)
    big = preset_config("qwen2-0.5b", 4096)
    assert tiny.model_type == "qwen2" and tiny.max_position_embeddings >= 4096
    assert small.hidden_size >= 512 and small.max_position_embeddings >= 4096
    shape = (big.hidden_size, big.num_hidden_layers, big.num_attention_heads, big.num_key_value_heads)
    assert shape == (896, 24, 14, 2)
    assert big.intermediate_size == 4864
    with pytest.raises(ValueError, match="unknown preset"):
        preset_config("huge", 10)
    assert {"tiny", "small"} <= set(PRESETS)


def test_init_model_tiny(tiny):
    model, tok = tiny
    assert isinstance(model, EnsemblePRM) and not model.training
    cfg = model.backbone.config
    assert cfg.vocab_size == len(tok)
    assert model.backbone.get_input_embeddings().weight.shape[0] == len(tok)
    assert model.max_length >= 4096 and cfg.max_position_embeddings >= 4096
    assert model.separator_token_id == tok.convert_tokens_to_ids(STEP_SEPARATOR)
    assert model.n_heads == 4
    assert 100_000 < count_parameters(model.backbone) < 2_000_000


def test_init_model_is_seeded_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    a, tok = init_model("tiny", n_heads=2, seed=5)
    after = torch.rand(3)
    assert torch.equal(before, after)
    b, _ = init_model("tiny", n_heads=2, seed=5, tokenizer=tok)
    c, _ = init_model("tiny", n_heads=2, seed=6, tokenizer=tok)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["heads.W1"], sc["heads.W1"])
    assert not torch.equal(sa["backbone.embed_tokens.weight"], sc["backbone.embed_tokens.weight"])


def test_forward_returns_logits_at_separators(tiny):
    model, tok = tiny
    sep = model.separator_token_id
    ids = torch.tensor([[10, 11, sep, 12, sep, 13], [14, sep, 15, 1, 1, 1]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]])
    with torch.inference_mode():
        out = model(ids, mask)
        explicit = model(ids, mask, ids == sep)
        hidden = model.hidden_states(ids, mask)
    assert out.shape == (3, 4) and out.dtype == torch.float32
    torch.testing.assert_close(out, explicit)
    torch.testing.assert_close(out, model.heads(hidden[ids == sep]))
    # a separator_mask selects positions, not token ids
    only_first = torch.zeros_like(ids, dtype=torch.bool)
    only_first[0, 2] = True
    with torch.inference_mode():
        torch.testing.assert_close(model(ids, mask, only_first), out[:1])


def test_bf16_backbone_heads_stay_float32(tiny):
    model, tok = tiny
    ref = score_trajectories(model, tok, PROBLEMS, STEPS)
    m16, _ = init_model("tiny", n_heads=4, seed=0, tokenizer=tok, dtype=torch.bfloat16)
    assert m16.dtype == torch.bfloat16 and m16.heads.W1.dtype == torch.float32
    out = score_trajectories(m16, tok, PROBLEMS, STEPS)
    for r, o in zip(ref, out):
        assert o.probs.dtype == np.float32
        np.testing.assert_allclose(o.probs, r.probs, atol=0.02)


# --------------------------------------------------------------------------- separator


def test_newline_token_id():
    tok = load_tokenizer()
    assert newline_token_id(tok) == tok.encode("\n\n", add_special_tokens=False)[0]
    standin = _standin_tokenizer()
    nl2 = standin.encode("\n\n", add_special_tokens=False)
    assert len(nl2) == 1 and newline_token_id(standin) == nl2[0]


def test_ensure_separator_adds_token_and_copies_newline_embedding():
    from transformers import AutoModel, Qwen2Config

    tok = _standin_tokenizer()
    assert len(tok.encode(STEP_SEPARATOR, add_special_tokens=False)) > 1
    n_before = len(tok)
    cfg = Qwen2Config(vocab_size=n_before, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                      num_key_value_heads=1, intermediate_size=64)
    torch.manual_seed(0)
    backbone = AutoModel.from_config(cfg)
    old = backbone.get_input_embeddings().weight.detach().clone()
    sep_id = ensure_separator(tok, backbone)
    assert len(tok) == n_before + 1 and sep_id == n_before
    assert tok.encode(f"a{STEP_SEPARATOR}b", add_special_tokens=False)[1] == sep_id
    emb = backbone.get_input_embeddings().weight
    assert emb.shape[0] == n_before + 1
    nl = newline_token_id(tok)
    assert torch.equal(emb[sep_id], emb[nl])
    assert torch.equal(emb[:n_before], old)  # old rows untouched
    # idempotent: a second call changes nothing
    assert ensure_separator(tok, backbone) == sep_id and len(tok) == n_before + 1


def test_ensure_separator_keeps_existing_token():
    tok = load_tokenizer()
    n = len(tok)
    assert ensure_separator(tok) == tok.convert_tokens_to_ids(STEP_SEPARATOR) and len(tok) == n


# --------------------------------------------------------------------------- save / load


def _scores(model, tok):
    return np.concatenate([r.probs for r in score_trajectories(model, tok, PROBLEMS, STEPS)])


def test_save_load_round_trip(tiny, tmp_path):
    model, tok = tiny
    ref = _scores(model, tok)
    out = tmp_path / "prm"
    model.save_pretrained(out)
    names = {p.name for p in out.iterdir()}
    assert {"heads.safetensors", "prm_config.json", "config.json", "model.safetensors", "tokenizer.json"} <= names
    assert not [n for n in names if n.endswith((".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt"))]
    cfg = json.loads((out / "prm_config.json").read_text())
    assert cfg["n_heads"] == 4 and cfg["head_hidden"] == 128 and cfg["separator_token"] == STEP_SEPARATOR
    assert cfg["max_length"] == model.max_length and cfg["preset"] == "tiny" and cfg["seed"] == 0
    assert cfg["format_version"] == 1

    # heads.safetensors is plain safetensors with the stacked weights
    from safetensors.torch import load_file

    heads = load_file(str(out / "heads.safetensors"))
    assert all(torch.equal(heads[k], v) for k, v in model.heads.state_dict().items())

    torch.manual_seed(999)  # global RNG state must not matter: heads are loaded, not re-initialised
    a = EnsemblePRM.from_pretrained(out)
    torch.manual_seed(1)
    b, tok_b = load_prm(out, device="cpu")
    assert a.n_heads == 4 and a.max_length == model.max_length and a.preset == "tiny"
    assert tok_b.convert_tokens_to_ids(STEP_SEPARATOR) == model.separator_token_id
    sa, sb = _scores(a, a.tokenizer), _scores(b, tok_b)
    np.testing.assert_array_equal(sa, sb)
    np.testing.assert_allclose(sa, ref, atol=1e-6)

    m16 = EnsemblePRM.from_pretrained(out, dtype=torch.bfloat16)
    assert m16.dtype == torch.bfloat16 and m16.heads.W1.dtype == torch.float32
    np.testing.assert_allclose(_scores(m16, m16.tokenizer), ref, atol=0.02)


def test_from_pretrained_rejects_non_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError):
        EnsemblePRM.from_pretrained(tmp_path)


def test_save_requires_tokenizer(tmp_path):
    from transformers import AutoModel, Qwen2Config

    cfg = Qwen2Config(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                      num_key_value_heads=1, intermediate_size=32)
    m = EnsemblePRM(AutoModel.from_config(cfg), n_heads=2, separator_token_id=3)
    with pytest.raises(ValueError, match="tokenizer"):
        m.save_pretrained(tmp_path / "x")


def test_from_backbone_local_qwen2_dir(tmp_path):
    """A user's pretrained backbone (saved locally as a CausalLM) whose tokenizer lacks the separator."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tok = _standin_tokenizer()
    n_vocab = len(tok)
    cfg = Qwen2Config(vocab_size=n_vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, intermediate_size=64, max_position_embeddings=1024)
    torch.manual_seed(0)
    lm = Qwen2ForCausalLM(cfg)
    src = tmp_path / "backbone"
    lm.save_pretrained(src)
    tok.save_pretrained(src)
    saved_emb = lm.model.embed_tokens.weight.detach().clone()

    model, tok2 = from_backbone(src, n_heads=3, seed=7)
    sep_id = tok2.convert_tokens_to_ids(STEP_SEPARATOR)
    assert sep_id == n_vocab and model.separator_token_id == sep_id
    emb = model.backbone.get_input_embeddings().weight
    assert emb.shape[0] == n_vocab + 1
    assert torch.equal(emb[:n_vocab], saved_emb)  # pretrained weights really loaded
    assert torch.equal(emb[sep_id], emb[newline_token_id(tok2)])
    assert model.max_length == 1024 and model.n_heads == 3

    res = score_trajectories(model, tok2, PROBLEMS, STEPS)
    assert [r.n_scored_steps for r in res] == [2, 3]
    assert res[1].probs.shape == (3, 3)

    # same seed -> same heads; save/load keeps the added separator
    again, _ = from_backbone(src, n_heads=3, seed=7)
    assert torch.equal(again.heads.W1, model.heads.W1)
    model.save_pretrained(tmp_path / "prm")
    back = EnsemblePRM.from_pretrained(tmp_path / "prm")
    assert back.separator_token_id == sep_id
    ref = np.concatenate([r.probs for r in res])
    np.testing.assert_array_equal(_scores(back, back.tokenizer), ref)


def test_a_pickled_backbone_is_never_loaded(tiny, tmp_path):
    model, _ = tiny
    out = tmp_path / "prm"
    model.save_pretrained(out)
    state = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    (out / "model.safetensors").unlink()
    torch.save(state, out / "pytorch_model.bin")  # a pickle where the weights should be
    with pytest.raises(OSError):
        EnsemblePRM.from_pretrained(out)


# --------------------------------------------------------------------------- step features


@pytest.fixture(scope="module")
def tied():
    """A tiny Qwen2 with tied embeddings (what step feature lm_logprob needs), random heads."""
    from transformers import AutoModel

    tok = load_tokenizer()
    sep = ensure_separator(tok)
    cfg = preset_config("tiny", len(tok), tie_word_embeddings=True, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    model = EnsemblePRM(AutoModel.from_config(cfg), n_heads=4, separator_token_id=sep, tokenizer=tok,
                        step_features=("lm_logprob",))
    return model.eval(), tok


def test_step_features_are_min_and_mean_token_logprob_per_step(tied):
    from actprm.scoring import TrajectoryEncoder

    model, tok = tied
    enc = TrajectoryEncoder(tok, max_length=model.max_length).encode(PROBLEMS[1:], STEPS[1:])[0]
    ids = torch.tensor([enc.input_ids])
    sep = torch.zeros_like(ids, dtype=torch.bool)
    sep[0, enc.sep_positions] = True
    with torch.no_grad():
        hidden = model.hidden_states(ids)
        got = model.step_feature_values(hidden, ids, sep, torch.tensor([enc.answer_start]))
        logp = torch.log_softmax(hidden[0] @ model.backbone.embed_tokens.weight.t(), -1)
    # by hand: step j = tokens strictly between the previous bound and its separator
    bounds = [enc.answer_start - 1] + enc.sep_positions
    assert tok.decode(enc.input_ids[enc.answer_start : enc.sep_positions[0]]).strip() == STEPS[1][0]
    want = []
    for a, b in zip(bounds, bounds[1:]):
        lp = [float(logp[t - 1, enc.input_ids[t]]) for t in range(a + 1, b)]
        want.append([min(lp) / 10, sum(lp) / len(lp) / 10])
    np.testing.assert_allclose(got.numpy(), np.array(want), rtol=1e-5, atol=1e-6)
    assert got.shape == (len(STEPS[1]), 2)


def test_step_features_batched_equal_per_prefix_and_padding_free(tied):
    from actprm.scoring import score_naive_prefixes

    model, tok = tied
    batched = score_trajectories(model, tok, PROBLEMS, STEPS)
    naive = score_naive_prefixes(model, tok, PROBLEMS, STEPS)
    alone = [score_trajectories(model, tok, [p], [s])[0] for p, s in zip(PROBLEMS, STEPS)]
    for b, n, a in zip(batched, naive, alone):
        np.testing.assert_allclose(b.probs, n.probs, atol=1e-5)
        np.testing.assert_allclose(b.probs, a.probs, atol=1e-5)


def test_step_features_change_the_scores_and_survive_save_load(tied, tmp_path):
    model, tok = tied
    before = _scores(model, tok)
    # zero the heads' weights on the two feature inputs: the scores must move
    with torch.no_grad():
        saved = model.heads.W1[:, -2:].clone()
        model.heads.W1[:, -2:] = 0
        without = _scores(model, tok)
        model.heads.W1[:, -2:] = saved
    assert not np.allclose(before, without, atol=1e-6)
    model.save_pretrained(tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "prm_config.json").read_text())
    assert cfg["step_features"] == ["lm_logprob"] and cfg["hidden_size"] == 64 + 2
    loaded, ltok = load_prm(tmp_path / "m")
    assert loaded.step_features == ("lm_logprob",)
    np.testing.assert_allclose(_scores(loaded, ltok), before, atol=1e-6)


def test_step_features_need_answer_start_and_tied_embeddings(tied):
    model, _ = tied
    ids = torch.tensor([[5, 6, model.separator_token_id]])
    with pytest.raises(ValueError, match="answer_start"):
        model(ids)
    with pytest.raises(ValueError, match="tied"):
        init_model("tiny", step_features=("lm_logprob",))
    with pytest.raises(ValueError, match="unknown step features"):
        init_model("tiny", step_features=("nope",))
