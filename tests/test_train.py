"""One training round: the loss rule, no label leakage, checkpoints that reload and continue."""

from __future__ import annotations

import json
import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from actprm.checkpoint import ANCHOR_NAME, OPTIMIZER_NAME
from actprm.cli import main
from actprm.config import TrainConfig
from actprm.errors import UserError
from actprm.judge import labelled_row
from actprm.judge.verifier import VerifierAnnotator
from actprm.labels import step_targets
from actprm.model import load_prm
from actprm.schemas import table_from_rows
from actprm.scoring import score_trajectories
from actprm.trainer import actprm_loss, anchor_penalty
from actprm.world.arith import Generator
from pipelines.train import run as run_train

# small and fast: heads plus the top decoder layer, high learning rates, few rows, fixed passes (nothing
# held out; the held-out recipe has its own tests in tests/test_calibration.py)
FAST = dict(backbone="top", top_layers=1, lr=1e-3, head_lr=1e-2, batch_size=16, warmup_steps=2, threads=2,
            device="cpu", epochs=2, holdout=0.0)


def test_step_targets_follow_the_rule():
    assert step_targets(2, 5) == [1.0, 1.0, 0.0, None, None]
    assert step_targets(0, 3) == [0.0, None, None]
    assert step_targets(-1, 3) == [1.0, 1.0, 1.0]
    assert step_targets(1, 3, soft=[0.9, 0.2, None]) == [0.9, 0.2, None]


def test_loss_masks_exactly_the_labelled_steps_hand_computed():
    # two trajectories: A has 3 steps with its error at step 1 (targets 1, 0, -), B 2 correct steps
    logits = torch.tensor([[0.5, -1.0], [2.0, 0.0], [9.0, 9.0], [-0.3, 0.7], [1.5, -2.0]])
    targets = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0])
    trained = torch.tensor([True, True, False, True, True])
    rows = torch.tensor([0, 0, 0, 1, 1])
    weights = torch.tensor([1.0, 2.0])
    keep = torch.tensor([[True, False], [True, True]])  # head 1 does not learn from A

    def bce(x, y):
        return -(y * math.log(1 / (1 + math.exp(-x))) + (1 - y) * math.log(1 - 1 / (1 + math.exp(-x))))

    terms = [(bce(0.5, 1), 1), (bce(2.0, 0), 1),                      # A, head 0 (step 2 untrained)
             (bce(-0.3, 1), 2), (bce(0.7, 1), 2), (bce(1.5, 1), 2), (bce(-2.0, 1), 2)]  # B, both heads
    expected = sum(v * w for v, w in terms) / sum(w for _, w in terms)
    got = actprm_loss(logits, targets, trained, rows, weights, keep).item()
    assert got == pytest.approx(expected, rel=1e-6)


def test_anchor_penalty_is_the_mean_squared_distance():
    from actprm.model import EnsembleHeads

    heads = EnsembleHeads(8, 3, 4)
    anchor = {k: v.detach().clone() for k, v in heads.state_dict().items()}
    assert anchor_penalty(heads, anchor).item() == 0.0
    with torch.no_grad():
        for p in heads.parameters():
            p.add_(0.5)
    assert anchor_penalty(heads, anchor).item() == pytest.approx(0.25)


# --------------------------------------------------------------------------- rounds


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """160 world trajectories and annotations of them: true, always wrong, and with failures."""
    d = tmp_path_factory.mktemp("world")
    rows = list(Generator(seed=4).rows(0, 160))
    pq.write_table(table_from_rows(rows, "trajectories"), d / "traj.parquet")
    for name, rate in (("true", 0.0), ("wrong", 1.0)):
        ann = VerifierAnnotator(wrong_rate=rate).annotate(rows)
        (d / name).mkdir()
        pq.write_table(table_from_rows(ann, "annotations"), d / name / "a.parquet")
    # 10 failed annotations and 5 for ids that are not in the corpus
    mixed = VerifierAnnotator(wrong_rate=0.0).annotate(rows)
    for r in mixed[:10]:
        r.update(first_error_step=None, votes=[], agreement=None, error="refusal: test")
    extra = [labelled_row(f"ghost-{i}", -1, judge="verifier", prompt_version="v") for i in range(5)]
    (d / "mixed").mkdir()
    pq.write_table(table_from_rows(mixed + extra, "annotations"), d / "mixed" / "a.parquet")
    return d, rows


def _train(d, annotations, out, **kw):
    cfg = TrainConfig(trajectories=[str(d / "traj.parquet")], annotations=[str(d / annotations)],
                      output=str(out), **{**FAST, **kw})
    return run_train(cfg, progress=False)


def _true_step_bce(model_dir, rows):
    model, tok = load_prm(model_dir)
    res = score_trajectories(model, tok, [r["problem"] for r in rows], [r["steps"] for r in rows])
    losses = []
    for r, s in zip(rows, res):
        for p, t in zip(s.mean, step_targets(r["first_error_step"], len(r["steps"]))):
            if t is not None:
                losses.append(-(t * np.log(p + 1e-7) + (1 - t) * np.log(1 - p + 1e-7)))
    return float(np.mean(losses)), res


def test_no_label_leakage(world, tmp_path):
    d, rows = world
    truth = _train(d, "true", tmp_path / "truth")
    wrong = _train(d, "wrong", tmp_path / "wrong")
    # the corpus' own first_error_step column is never read: blank it and get the same model
    blank = [dict(r, first_error_step=None) for r in rows]
    pq.write_table(table_from_rows(blank, "trajectories"), d / "traj_blank.parquet")
    cfg = TrainConfig(trajectories=[str(d / "traj_blank.parquet")], annotations=[str(d / "true")],
                      output=str(tmp_path / "blank"), **FAST)
    run_train(cfg, progress=False)
    a, _ = load_prm(tmp_path / "truth")
    b, _ = load_prm(tmp_path / "blank")
    for (n, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        assert torch.equal(p, q), n
    # always-wrong labels give a different model that fits the true labels worse
    good_loss, _ = _true_step_bce(tmp_path / "truth", rows)
    bad_loss, _ = _true_step_bce(tmp_path / "wrong", rows)
    assert good_loss < bad_loss
    assert truth.round.last_loss < truth.round.first_loss
    assert wrong.round.examples == truth.round.examples == len(rows)


def test_failed_annotations_are_skipped_and_counted(world, tmp_path):
    d, _ = world
    result = _train(d, "mixed", tmp_path / "m", epochs=1)
    c = result.counts
    assert (c.failed_annotations, c.without_trajectory, c.without_annotation) == (10, 5, 10)
    assert result.round.examples == 150
    assert "10 failed annotations" in result.summary_line()


def test_label_weight_fixed_or_from_agreement(world, tmp_path):
    from actprm.labels import LabelCounts, join_annotations

    d, rows = world
    ann = VerifierAnnotator(wrong_rate=0.0).annotate(rows[:4])
    for r, a in zip(ann, (1.0, 2 / 3, None, 0.5)):
        r["agreement"] = a
    (tmp_path / "ann").mkdir()
    pq.write_table(table_from_rows(ann, "annotations"), tmp_path / "ann" / "a.parquet")
    paths = ([str(d / "traj.parquet")], [str(tmp_path / "ann")])
    by_id = {r["id"]: r["label_weight"] for r in join_annotations(*paths, LabelCounts(), label_weight="agreement")}
    assert [by_id[r["id"]] for r in ann] == pytest.approx([1.0, 2 / 3, 1.0, 0.5])
    fixed = join_annotations(*paths, LabelCounts(), label_weight=0.8)
    assert [r["label_weight"] for r in fixed] == [0.8] * 4
    assert TrainConfig(label_weight="agreement").label_weight == "agreement"
    with pytest.raises(ValueError):
        TrainConfig(label_weight="votes")


def test_checkpoints_reload_identically_and_continue(world, tmp_path):
    d, rows = world
    r1 = _train(d, "true", tmp_path / "r1", epochs=1)
    assert r1.round_index == 1 and not r1.round.resumed_optimizer
    _, s1 = _true_step_bce(tmp_path / "r1", rows[:20])
    _, s1b = _true_step_bce(tmp_path / "r1", rows[:20])
    for x, y in zip(s1, s1b):
        assert np.array_equal(x.probs, y.probs)
    assert (tmp_path / "r1" / OPTIMIZER_NAME).is_file()
    r2 = _train(d, "true", tmp_path / "r2", epochs=1, model=str(tmp_path / "r1"))
    assert r2.round_index == 2 and r2.round.resumed_optimizer
    state = json.loads((tmp_path / "r2" / "trainer_state.json").read_text())
    assert [h["round"] for h in state["history"]] == [1, 2]
    # both rounds anchor to the heads round 1 started from
    from safetensors.torch import load_file

    a1, a2 = load_file(str(tmp_path / "r1" / ANCHOR_NAME)), load_file(str(tmp_path / "r2" / ANCHOR_NAME))
    assert all(torch.equal(a1[k], a2[k]) for k in a1)
    _, s2 = _true_step_bce(tmp_path / "r2", rows[:20])
    assert any(not np.array_equal(x.probs, y.probs) for x, y in zip(s1, s2))


def test_frozen_backbone_trains_only_the_heads(world, tmp_path):
    d, _ = world
    _train(d, "true", tmp_path / "f", backbone="frozen", epochs=1)
    from actprm.model import default_prm_path

    base, _ = load_prm(default_prm_path())
    new, _ = load_prm(tmp_path / "f")
    for (n, p), (_, q) in zip(base.backbone.named_parameters(), new.backbone.named_parameters()):
        assert torch.equal(p, q), n
    assert not torch.equal(base.heads.W1, new.heads.W1)


def test_cli_train_and_user_errors(world, tmp_path, capsys):
    d, _ = world
    out = tmp_path / "cli"
    assert main(["train", "--trajectories", str(d / "traj.parquet"), "--annotations", str(d / "true"),
                 "--output", str(out), "--no-progress"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("train: round 1, 160 labelled trajectories") and str(out) in line
    assert "held out (best pass" in line and "decision threshold" in line
    assert main(["train", "--trajectories", str(d / "traj.parquet"), "--output", str(tmp_path / "x")]) == 2
    assert "--annotations" in capsys.readouterr().err
    assert main(["train", "--trajectories", str(d / "traj.parquet"), "--annotations", str(d / "true"),
                 "--output", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    bad = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"x": [1]}), bad)
    assert main(["train", "--trajectories", str(d / "traj.parquet"), "--annotations", str(bad),
                 "--output", str(tmp_path / "y")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not an annotations table" in err


def test_a_labelled_table_written_as_jsonl_is_read_and_a_file_without_labels_is_one_line(world, tmp_path):
    """`train --labelled x.jsonl` with the labelled table's own columns used to read 0 rows and go on."""
    from actprm.labels import LabelCounts, read_labelled

    _, rows = world
    path = tmp_path / "labelled.jsonl"
    path.write_text("".join(json.dumps({"id": r["id"], "problem": r["problem"], "steps": r["steps"],
                                        "label_first_error": r["first_error_step"], "label_weight": 0.5}) + "\n"
                            for r in rows[:20]))
    got = read_labelled([str(path)], LabelCounts())
    assert [g["label_first_error"] for g in got] == [r["first_error_step"] for r in rows[:20]]
    assert {g["label_weight"] for g in got} == {0.5}
    unlabelled = tmp_path / "plain.jsonl"
    unlabelled.write_text("".join(json.dumps({"problem": r["problem"], "steps": r["steps"]}) + "\n" for r in rows[:5]))
    with pytest.raises(UserError, match="5 rows and none with a label"):
        read_labelled([str(unlabelled)], LabelCounts())
