"""The Ray Train recipe: two CPU workers (DDP, gloo) on a local Ray train one round."""

import json

import pyarrow.parquet as pq
import pytest

ray = pytest.importorskip("ray")

from actprm.config import TrainConfig
from actprm.judge.verifier import VerifierAnnotator
from actprm.model import load_prm
from actprm.schemas import table_from_rows
from actprm.world.arith import Generator


def test_two_workers_train_and_write_a_loadable_checkpoint(tmp_path, local_ray):
    from pipelines import train as recipe

    rows = list(Generator(seed=9).rows(0, 96))
    pq.write_table(table_from_rows(rows, "trajectories"), tmp_path / "traj.parquet")
    (tmp_path / "ann").mkdir()
    pq.write_table(table_from_rows(VerifierAnnotator(wrong_rate=0.0).annotate(rows), "annotations"),
                   tmp_path / "ann" / "a.parquet")
    cfg = TrainConfig(trajectories=[str(tmp_path / "traj.parquet")], annotations=[str(tmp_path / "ann")],
                      output=str(tmp_path / "ckpt"), workers=2, backbone="top", top_layers=1, head_lr=1e-2,
                      lr=1e-3, batch_size=8, epochs=3, warmup_steps=1, threads=1, device="cpu")
    result = recipe.run(cfg, progress=False)
    state = json.loads((tmp_path / "ckpt" / "trainer_state.json").read_text())
    assert state["workers"] == 2
    # a fifth held out (the stopping rule on every worker, the calibration on rank 0); at most 3 passes of
    # batches of 8 over each worker's half of the rest
    held = result.round.held_out
    assert 10 < held < 30 and result.round.examples + held == 96 and state["calibration"] is not None
    assert 1 <= result.round.epochs <= 3
    assert result.round.steps == result.round.epochs * (result.round.examples // 2 // 8)
    assert result.round.last_loss < result.round.first_loss
    model, _ = load_prm(tmp_path / "ckpt")
    assert model.n_heads == 8
