"""`dtype: auto | float32 | bfloat16` (actprm.precision): the choice, and bf16 scoring against fp32."""

import json
import os

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from actprm import precision, provenance
from actprm.config import ScoreConfig, TrainConfig
from actprm.model import init_model
from actprm.scoring import score_trajectories

CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
flags\t\t: fpu sse avx2 avx512f {extra}
bogomips\t: 4800.00

processor\t: 1
flags\t\t: fpu
"""


def test_cpu_flags_reads_the_first_cpu():
    flags = precision.cpu_flags(CPUINFO.format(extra="avx512_bf16"))
    assert {"avx2", "avx512f", "avx512_bf16"} <= flags and "fpu" in flags
    assert precision.cpu_flags("no flags here") == set()


@pytest.mark.parametrize("extra, want", [("avx512_bf16", "avx512_bf16"), ("amx_bf16 avx512_bf16", "amx_bf16"),
                                         ("amx_tile", None), ("", None)])
def test_bf16_flag_needs_amx_or_avx512_bf16(extra, want):
    assert precision._bf16_flag(precision.cpu_flags(CPUINFO.format(extra=extra))) == want


@pytest.mark.parametrize("support, want", [("avx512_bf16", torch.bfloat16), (None, torch.float32)])
def test_auto_follows_the_cpu(monkeypatch, support, want):
    monkeypatch.setattr(precision, "cpu_bf16_support", lambda: support)
    assert precision.resolve_dtype("auto", "cpu") == want
    assert precision.resolve_dtype(None, "cpu") == want
    assert precision.resolve_dtype("auto", "cuda") == torch.bfloat16  # any GPU
    assert precision.resolve_dtype("float32", "cuda") == torch.float32  # forced
    assert precision.resolve_dtype("bfloat16", "cpu") == torch.bfloat16


def test_unknown_dtype_is_refused():
    with pytest.raises(ValueError, match="unknown dtype"):
        precision.resolve_dtype("float16", "cpu")
    with pytest.raises(ValidationError):
        ScoreConfig(dtype="float16")


def test_training_dtype_and_the_old_bf16_switch(monkeypatch):
    monkeypatch.setattr(precision, "cpu_bf16_support", lambda: "avx512_bf16")
    assert precision.training_dtype(TrainConfig(), "cpu") == torch.bfloat16
    assert precision.training_dtype(TrainConfig(bf16=False), "cpu") == torch.float32
    assert precision.training_dtype(TrainConfig(dtype="float32"), "cuda") == torch.float32
    with precision.autocast(TrainConfig(dtype="bfloat16"), "cpu"):
        assert torch.is_autocast_enabled("cpu")
    with precision.autocast(TrainConfig(dtype="float32"), "cpu"):
        assert not torch.is_autocast_enabled("cpu")


def test_provenance_records_the_resolved_dtype(monkeypatch):
    monkeypatch.setattr(precision, "cpu_bf16_support", lambda: None)
    assert provenance.describe("score", ScoreConfig(device="cpu"))["dtype"] == "float32"
    assert provenance.describe("score", ScoreConfig(device="cpu", dtype="bfloat16"))["dtype"] == "bfloat16"
    assert provenance.describe("train", TrainConfig(device="cpu", bf16=False))["dtype"] == "float32"


@pytest.mark.parametrize("step_features", [(), ("lm_logprob",)])
def test_bf16_backbone_scores_close_to_fp32_with_float32_heads(step_features):
    """The backbone in bf16, heads (and step features' log-softmax) in fp32: step means within 2e-2
    of the fp32 model on a random tiny model (the shipped PRM is measured in BENCHMARKS)."""
    preset = "world" if step_features else "tiny"  # lm_logprob needs tied embeddings (the world preset's)
    m32, tok = init_model(preset, n_heads=4, seed=0, step_features=step_features)
    m16, _ = init_model(preset, n_heads=4, seed=0, step_features=step_features, dtype=torch.bfloat16)
    assert m16.backbone.dtype == torch.bfloat16 and m16.heads.W1.dtype == torch.float32
    assert precision.model_dtype(m16) == "bfloat16" and precision.model_dtype(m32) == "float32"
    problems = [f"What is {i} + {i}?" for i in range(6)]
    steps = [[f"{i} + {i} = {2 * i}.", f"So the answer is {2 * i}."] for i in range(6)]
    a = score_trajectories(m32, tok, problems, steps)
    b = score_trajectories(m16, tok, problems, steps)
    for x, y in zip(a, b):
        assert y.probs.dtype == np.float32 and y.probs.shape == x.probs.shape
        assert np.abs(x.probs.mean(1) - y.probs.mean(1)).max() < 2e-2
    if step_features:  # the old float32 LM-head product is still there, and close to the bf16 one
        m16.reference_features = True
        c = score_trajectories(m16, tok, problems, steps)
        assert max(np.abs(x.probs - y.probs).max() for x, y in zip(b, c)) < 1e-2


def test_score_summary_and_provenance_record_the_dtype(tmp_path, write_jsonl):
    from conftest import good_row

    from actprm.cli import main

    model = tmp_path / "tiny"
    assert main(["init-model", "--preset", "tiny", "--n-heads", "2", "--output", str(model)]) == 0
    path = write_jsonl("in.jsonl", [good_row(i) for i in range(3)])
    for dtype in ("float32", "bfloat16"):
        (tmp_path / f"{dtype}.yaml").write_text(f"dtype: {dtype}\n")
        out = tmp_path / dtype
        assert main(["score", "--config", str(tmp_path / f"{dtype}.yaml"), "--input", str(path), "--output",
                     str(out), "--model", str(model), "--no-progress"]) == 0
        assert json.loads((out / "summary.json").read_text())["dtype"] == dtype
        shard = next((out / "scored").glob("*.parquet"))
        assert provenance.read(shard)["dtype"] == dtype


def test_cpu_memory_settings_keep_a_users_value(monkeypatch):
    from actprm import precision

    for name in ("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "LRU_CACHE_CAPACITY"):
        monkeypatch.delenv(name, raising=False)
    precision.configure_cpu_memory()
    assert os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == os.environ["LRU_CACHE_CAPACITY"] == "16"
    monkeypatch.setenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "256")
    monkeypatch.setenv("LRU_CACHE_CAPACITY", "1024")
    precision.configure_cpu_memory()
    assert os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == "256" and os.environ["LRU_CACHE_CAPACITY"] == "1024"
    precision.release_cpu_memory()  # glibc's malloc_trim here; a no-op where there is none
