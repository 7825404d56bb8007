"""The one loop: run directory contents, learning, exact resume, distributed == single process,
refusal of mismatched checkpoints, atomic checkpoint writes."""
import json
import os
import shutil

import numpy as np
import pytest

from tests.distutil import run_on_ranks
from tests.train.common import features_config, losses, write_features_data
from xclass.config import RunConfig
from xclass.parallel import ParallelContext
from xclass.train import checkpoint as ckpt
from xclass.train.loop import train
from xclass.train.report import read_metrics


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_features_data(str(tmp_path_factory.mktemp("feat")))


def test_run_directory_and_learning(data, tmp_path):
    cfg = features_config(data, str(tmp_path / "run"), "train.max_steps=40", "train.checkpoint_every=20",
                          "train.keep_last=1", "optim.schedule=constant")
    out = train(cfg, ParallelContext.single())
    run = str(tmp_path / "run")
    for f in ("config.yaml", "metrics.jsonl", "loss.png", "workers/rank0.json"):
        assert os.path.exists(os.path.join(run, f)), f
    ls = losses(run)
    assert len(ls) == 40 and out["step"] == 40
    assert np.mean(ls[-5:]) < 0.5 * np.mean(ls[:5])  # it learns
    cks = ckpt.list_checkpoints(run)
    assert [os.path.basename(c) for c in cks] == ["step_00000040"]  # keep_last=1
    m = ckpt.read_manifest(cks[-1])
    assert m["num_classes"] == 24 and m["shard_ranges"] == [[0, 24]] and m["world_size"] == 1


def test_resume_equals_uninterrupted(data, tmp_path):
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    train(features_config(data, a, "train.max_steps=8", "train.checkpoint_every=4", "data.shard_mode=rows"),
          ParallelContext.single())
    # b = a run that was stopped right after its step-4 checkpoint
    os.makedirs(os.path.join(b, "checkpoints"))
    shutil.copytree(os.path.join(a, "checkpoints", "step_00000004"),
                    os.path.join(b, "checkpoints", "step_00000004"))
    train(features_config(data, b, "train.max_steps=8", "train.checkpoint_every=4", "data.shard_mode=rows"),
          ParallelContext.single())
    assert losses(b) == losses(a)[4:]  # bit-identical continuation (RNG, optimizer, data position)
    first = read_metrics(b)[0]
    assert first["event"] == "resumed" and first["step"] == 4 and "loss" not in first


def _train_on_ranks(ctx, cfg_dict):
    cfg = RunConfig.from_dict(cfg_dict)
    train(cfg, ctx)
    return losses(cfg.train.out_dir) if ctx.is_main else None


@pytest.mark.dist
@pytest.mark.parametrize("ws,extra", [(2, ()), (3, ()), (2, ("optim.grad_clip=0.05", "train.grad_accum=2")),
                                     (3, ("optim.grad_clip=0.05", "head.sample_rate=0.5")),
                                     (2, ("optim.grad_clip=0.05", "head.sample_rate=0.5", "train.grad_accum=2"))],
                         ids=["ws2", "ws3", "ws2-clip-accum", "ws3-clip-partialfc", "ws2-clip-accum-partialfc"])
def test_distributed_equals_single_process(data, tmp_path, ws, extra):
    one = str(tmp_path / "one")
    train(features_config(data, one, *extra), ParallelContext.single())
    cfg = features_config(data, str(tmp_path / f"ws{ws}"), *extra)
    got = run_on_ranks(_train_on_ranks, ws, cfg.to_dict())[0]
    np.testing.assert_allclose(got, losses(one), rtol=2e-5, atol=2e-6)
    if extra:  # the clip was active: the logged pre-clip norm exceeds the threshold
        from xclass.train.report import read_metrics

        assert max(r["grad_norm"] for r in read_metrics(one)) > 0.05


def test_mismatched_checkpoint_is_refused(data, tmp_path):
    run = str(tmp_path / "run")
    train(features_config(data, run, "train.max_steps=2"), ParallelContext.single())
    with pytest.raises(ckpt.CheckpointError, match=r"manifest.json: checkpoint has embedding_dim=8 .* embedding_dim=16"):
        train(features_config(data, run, "train.max_steps=4", "model.embedding_dim=16"), ParallelContext.single())


def test_interrupted_checkpoint_write_keeps_previous(data, tmp_path, monkeypatch):
    run = str(tmp_path / "run")
    train(features_config(data, run, "train.max_steps=2"), ParallelContext.single())
    before = ckpt.latest_checkpoint(run)
    import xclass.train.loop as loop

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(loop, "encoder_state", boom)
    with pytest.raises(OSError, match="disk full"):
        train(features_config(data, run, "train.max_steps=4"), ParallelContext.single())
    assert ckpt.latest_checkpoint(run) == before  # the half-written step_4 is not a checkpoint
    assert json.load(open(os.path.join(before, "manifest.json")))["step"] == 2


@pytest.mark.parametrize("head", ["zloss_efficient", "zloss", "softmax_dense"])
def test_other_heads_train_through_the_loop(data, tmp_path, head):
    """The Z-loss heads (factored exact update, dense) and the dense baseline run in the same loop
    and learn; the factored head's scheduled lr reaches its optimizer."""
    run = str(tmp_path / head)
    cfg = features_config(data, run, f"head.name={head}", "head.params={a: 1.0, b: 2.0}" if "zloss" in head
                          else "head.params={}", "train.max_steps=40", "optim.schedule=constant",
                          "optim.head_lr=0.05" if "zloss" in head else "optim.head_lr=0.1")
    train(cfg, ParallelContext.single())
    ls = losses(run)
    assert len(ls) == 40 and np.mean(ls[-5:]) < 0.7 * np.mean(ls[:5])


def test_subcenter_manifest_ranges_and_head_export(data, tmp_path):
    """Shard ranges count classes, not sub-centre rows; the exported label vectors carry class ids."""
    import pyarrow.parquet as pq

    from xclass.eval.embed import export_head

    run = str(tmp_path / "sub")
    train(features_config(data, run, "head.margin=subcenter_arcface", "head.margin_params={k: 3}",
                          "train.max_steps=2"), ParallelContext.single())
    assert ckpt.read_manifest(ckpt.latest_checkpoint(run))["shard_ranges"] == [[0, 24]]
    (f,) = export_head(run, str(tmp_path / "labels"))
    ids = pq.read_table(f).column("id").to_pylist()
    assert ids == [c for c in range(24) for _ in range(3)]
    assert pq.read_table(f).column("label").to_pylist() == ids   # the file is an ident gallery too
