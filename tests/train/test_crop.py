"""data.crop_frames: random N-frame windows of long utterances for speaker training, by hand,
deterministic per (seed, epoch, row id), and in a training run."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from xclass.cli.main import main as xclass
from xclass.config import load_config
from xclass.config_types import ConfigError
from xclass.data.crop import RandomCrop, crop_windows, unit_hash


def _utterances(lengths, n_mels=3):
    """fbank [B, T, n_mels] whose value at (b, t, :) is 1000 b + t (t < length), zero padded."""
    lengths = torch.tensor(lengths)
    t = int(lengths.max())
    fb = torch.zeros(len(lengths), t, n_mels)
    for b, n in enumerate(lengths.tolist()):
        fb[b, :n] = (1000 * b + torch.arange(n, dtype=torch.float32))[:, None]
    return fb, lengths


def test_windows_by_hand():
    fb, lengths = _utterances([10, 3])
    out, new = crop_windows(fb, lengths, torch.tensor([5, 0]), 4)
    assert out.shape == (2, 4, 3) and new.tolist() == [4, 3]
    assert out[0, :, 0].tolist() == [5, 6, 7, 8]
    assert out[1, :, 0].tolist() == [1000, 1001, 1002, 0]          # a short row stays whole, zero after


def test_random_crop_is_a_slice_fixed_by_seed_epoch_and_id():
    fb, lengths = _utterances([50, 8, 120, 30, 200])
    ids = np.array([7, 3, 11, 40, 2])
    crop = RandomCrop(lambda batch: ({"fbank": fb[batch["order"]], "lengths": lengths[batch["order"]]},
                                     torch.zeros(len(batch["order"]))), 20, seed=5)

    def windows(epoch, order):
        crop.set_epoch(epoch)
        out, _ = crop({"id": ids[order], "order": order})
        first = {}
        for k, b in enumerate(order):                  # start of each row's window, by its values
            v = out["fbank"][k, :, 0]
            assert out["lengths"][k] == min(20, int(lengths[b]))
            n = int(out["lengths"][k])
            start = int(v[0]) - 1000 * b
            assert v[:n].tolist() == [1000 * b + start + j for j in range(n)]   # consecutive frames
            assert 0 <= start <= max(0, int(lengths[b]) - 20)
            first[int(ids[b])] = start
        return first

    a = windows(0, np.arange(5))
    assert a == windows(0, np.array([4, 2, 0, 3, 1]))  # the same rows in another batch order
    assert a[3] == 0                                   # 8 frames: nothing to crop
    later = [windows(e, np.arange(5)) for e in range(1, 6)]
    assert any(w[2] != a[2] for w in later) and any(w[2] != later[0][2] for w in later[1:])


def test_unit_hash_is_uniform_enough():
    u = unit_hash(np.arange(20000), 0, 0)
    assert 0 <= u.min() and u.max() < 1 and abs(u.mean() - 0.5) < 0.01
    assert np.histogram(u, 10, (0, 1))[0].min() > 1800
    assert not np.array_equal(u, unit_hash(np.arange(20000), 0, 1))


def test_config_and_a_training_run(tmp_path):
    with pytest.raises(ConfigError, match="data.crop_frames.*data.task speaker"):
        load_config(None, ["data.task=face", "data.crop_frames=100"])
    with pytest.raises(ConfigError, match="data.crop_frames"):
        load_config(None, ["data.task=speaker", "data.crop_frames=-1"])
    from xclass.data import make_data
    from xclass.parallel import ParallelContext
    from xclass.train.setup import build_setup

    data, run = str(tmp_path / "d"), str(tmp_path / "run")
    make_data("speaker", data, 12, rows_per_class=6, test_classes=2, seed=0, progress=False, min_frames=60,
              max_frames=150)
    cfg = load_config("configs/speaker/cpu.yaml", [f"data.path={data}", f"train.out_dir={run}", "data.crop_frames=40",
                                                   "data.batch_size=16", "optim.warmup_steps=0"])
    s = build_setup(cfg, ParallelContext())
    s.reader.set_epoch(0)
    inputs, _ = s.decode(next(iter(s.reader)))
    assert inputs["fbank"].shape[1] == 40 and int(inputs["lengths"].max()) == 40
    assert xclass(["train", "--config", "configs/speaker/cpu.yaml", f"data.path={data}", f"train.out_dir={run}",
                   "train.progress=false", "train.max_steps=3", "data.crop_frames=40", "data.batch_size=16",
                   "optim.warmup_steps=0"]) == 0
