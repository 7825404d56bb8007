"""train.init_from: a run starts from another run's encoder weights (fine-tuning), with a fresh
head; a run without checkpoints or with another architecture stops in one line."""
from __future__ import annotations

import torch

from xclass.cli.main import main as xclass
from xclass.config import load_config
from xclass.data import make_data
from xclass.eval.embed import load_encoder
from xclass.parallel import ParallelContext
from xclass.train.setup import build_setup


def _cfg(data, run, *extra):
    return ["--config", "configs/quic/cpu.yaml", f"data.path={data}", f"train.out_dir={run}", "train.progress=false",
            "train.max_steps=3", "data.batch_size=32", "optim.warmup_steps=0", *extra]


def test_the_encoder_starts_from_the_other_run(tmp_path, capsys):
    a_data, b_data = str(tmp_path / "a_data"), str(tmp_path / "b_data")
    make_data("quic", a_data, 30, rows_per_class=8, test_classes=5, seed=0, progress=False)
    make_data("quic", b_data, 12, rows_per_class=8, test_classes=3, seed=1, progress=False)  # other classes
    run_a = str(tmp_path / "a")
    assert xclass(["train", *_cfg(a_data, run_a)]) == 0
    cfg_a = load_config(f"{run_a}/config.yaml")
    from xclass.data.meta import load_meta

    trained = load_encoder(run_a, cfg_a, load_meta(a_data)).state_dict()
    args = _cfg(b_data, str(tmp_path / "b"), f"train.init_from={run_a}")
    cfg_b = load_config(args[1], args[2:])
    s = build_setup(cfg_b, ParallelContext())
    got = s.engine.module.state_dict()
    assert trained.keys() == got.keys() and all(torch.equal(trained[k], got[k]) for k in trained)
    assert s.num_classes == 12                                   # the head is this run's, fresh
    fresh = build_setup(load_config(args[1], args[2:-1]), ParallelContext())
    fresh_state = fresh.engine.module.state_dict()
    assert not all(torch.equal(fresh_state[k], got[k]) for k in got)
    assert xclass(["train", *args]) == 0

    assert xclass(["train", *_cfg(b_data, str(tmp_path / "c"), f"train.init_from={tmp_path / 'nothing'}")]) == 2
    err = capsys.readouterr().err
    assert "train.init_from=" in err and "no complete checkpoint" in err
    assert xclass(["train", *_cfg(b_data, str(tmp_path / "d"), f"train.init_from={run_a}",
                                  "model.embedding_dim=32")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "train.init_from:" in err[0] and "does not fit this run's encoder" in err[0]
