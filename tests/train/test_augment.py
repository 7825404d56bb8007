"""data.hflip (training-time mirroring of face images) and export-index --flip-test."""
import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from xclass.cli.main import main as xclass
from xclass.config import load_config
from xclass.config_types import ConfigError
from xclass.data.augment import hflip, make_augment, mirrored


def test_hflip_mirrors_rows_with_probability_p():
    torch.manual_seed(0)
    x = torch.arange(2 * 3 * 2 * 4, dtype=torch.uint8).reshape(2, 3, 2, 4)
    feats = torch.ones(2, 5)
    out = hflip({"image": x, "features": feats}, 1.0)
    assert torch.equal(out["image"], x[..., [3, 2, 1, 0]]) and out["features"] is feats
    assert torch.equal(hflip({"image": x}, 0.0)["image"], x)
    big = torch.arange(4000, dtype=torch.float32)[:, None, None, None] * torch.tensor([1.0, 2.0])   # W = 2
    flipped = (hflip({"image": big}, 0.3)["image"][:, 0, 0, 0] != big[:, 0, 0, 0]).float().mean()
    assert abs(float(flipped) - 0.3) < 0.03
    assert make_augment(load_config(None, []).data)({"image": x})["image"] is x          # off by default
    assert hflip({"features": feats}, 1.0) == {"features": feats}                       # no image: untouched


def test_hflip_config_range_and_task():
    with pytest.raises(ConfigError, match="data.hflip"):
        load_config(None, ["data.hflip=1.5"])
    with pytest.raises(ConfigError, match="data.hflip.*data.task face"):
        load_config(None, ["data.task=quic", "data.hflip=0.5"])


def _mirror_dataset(src, dst, size):
    os.makedirs(dst)
    for name in os.listdir(src):
        if name in ("train.parquet", "test.parquet"):
            t = pq.read_table(os.path.join(src, name))
            img = np.stack(t.column("image").to_numpy(zero_copy_only=False)).reshape(len(t), size, size, 3)
            flat = img[:, :, ::-1, :].reshape(len(t), -1)
            col = pa.FixedSizeListArray.from_arrays(pa.array(np.ascontiguousarray(flat).reshape(-1)), flat.shape[1])
            t = t.set_column(t.schema.get_field_index("image"), pa.field("image", col.type), col)
            pq.write_table(t, os.path.join(dst, name))
        else:
            with open(os.path.join(src, name), "rb") as f, open(os.path.join(dst, name), "wb") as g:
                g.write(f.read())


def test_training_with_hflip_1_equals_training_on_mirrored_images(tmp_path):
    """hflip=1 on the data == the mirrored data with hflip=1e-9 (same RNG draws, nothing mirrored):
    the same weights after 3 steps, so the loop mirrors every image it trains on."""
    from xclass.train.checkpoint import latest_checkpoint
    from xclass.train.safe_io import safe_load

    data = str(tmp_path / "d")
    assert xclass(["make-data", "--task", "face", "--num-classes", "8", "--rows-per-class", "4", "--test-classes", "2",
                   "--opt", "image_size=12", "--out", data]) == 0
    _mirror_dataset(data, str(tmp_path / "m"), 12)
    states = []
    for d, p in ((data, "1.0"), (str(tmp_path / "m"), "0.000000001"), (data, "0.000000001")):
        run = str(tmp_path / f"run{len(states)}")
        assert xclass(["train", "--config", "configs/face/cpu.yaml", f"data.path={d}", f"train.out_dir={run}",
                       "train.progress=false", "train.max_steps=3", "data.batch_size=16", f"data.hflip={p}"]) == 0
        states.append(safe_load(os.path.join(latest_checkpoint(run), "encoder.pt"))["module"])
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    assert not all(torch.equal(states[0][k], states[2][k]) for k in states[0])   # and mirroring did change them


def test_export_flip_test_sums_the_image_and_its_mirror(tmp_path, capsys):
    from xclass import components
    from xclass.config import save_config
    from xclass.eval.embed import embed_split, load_encoder, load_run

    data, run = str(tmp_path / "d"), str(tmp_path / "run")
    assert xclass(["make-data", "--task", "face", "--num-classes", "8", "--rows-per-class", "4", "--test-classes", "2",
                   "--opt", "image_size=12", "--out", data]) == 0
    assert xclass(["train", "--config", "configs/face/cpu.yaml", f"data.path={data}", f"train.out_dir={run}",
                   "train.progress=false", "train.max_steps=2", "data.batch_size=16"]) == 0
    out = str(tmp_path / "idx")
    assert xclass(["export-index", "--run", run, "--flip-test", "--out", out]) == 0
    got = np.stack(pq.read_table(os.path.join(out, "test_embeddings.parquet")).column("embedding")
                   .to_numpy(zero_copy_only=False))
    src = pq.read_table(os.path.join(data, "test.parquet"))
    cfg, meta = load_run(run), json.load(open(os.path.join(data, "meta.json")))
    enc = load_encoder(run, cfg, meta)
    img = np.stack(src.column("image").to_numpy(zero_copy_only=False)).astype(np.uint8)
    inputs, _ = components.make_decoder("face", meta, cfg.model)({"image": img, "label": np.asarray(src["label"])})
    with torch.no_grad():
        ref = (enc(inputs) + enc(mirrored(inputs))).numpy()
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
    quic = str(tmp_path / "quic_run")
    os.makedirs(quic)
    save_config(load_config(None, ["data.task=quic", f"train.out_dir={quic}"]), os.path.join(quic, "config.yaml"))
    with pytest.raises(ConfigError, match="--flip-test mirrors face images"):
        embed_split(quic, "test", str(tmp_path / "e.parquet"), flip_test=True)


def test_spec_mask_bands_by_hand():
    """p=1: in each row exactly the cells of one time band (<= max frames, inside the valid frames)
    and one mel band (<= max bins, valid frames only) take the row's mean over its valid frames;
    everything else, padding included, is unchanged."""
    from xclass.data.augment import spec_mask

    torch.manual_seed(3)
    b, t, f = 64, 30, 12
    lengths = torch.randint(5, t + 1, (b,))
    x = torch.randn(b, t, f)
    x[torch.arange(t)[None] >= lengths[:, None]] = 0.0                      # padding
    out = spec_mask({"fbank": x, "lengths": lengths}, 1.0, 6, 4)["fbank"]
    for i in range(b):
        n = int(lengths[i])
        mean = x[i, :n].mean()
        changed = out[i] != x[i]
        assert torch.allclose(out[i][changed], mean.expand(int(changed.sum())), atol=1e-6) and not changed[n:].any()
        rows, cols = changed[:n].all(1).nonzero().ravel(), changed[:n].all(0).nonzero().ravel()
        assert len(rows) <= 6 and len(cols) <= 4
        if len(rows):
            assert rows.max() - rows.min() + 1 == len(rows)                  # one contiguous band
        if len(cols):
            assert cols.max() - cols.min() + 1 == len(cols)
        band = torch.zeros(n, f, dtype=torch.bool)
        band[rows] = True
        band[:, cols] = True
        assert torch.equal(changed[:n], band)                                 # and nothing outside them
    assert torch.equal(spec_mask({"fbank": x, "lengths": lengths}, 0.0, 6, 4)["fbank"], x)
    some = (spec_mask({"fbank": x, "lengths": lengths}, 0.5, 6, 4)["fbank"] != x).flatten(1).any(1).float().mean()
    assert 0.25 < float(some) < 0.75


def test_spec_mask_config_and_training(tmp_path):
    from xclass.data.augment import make_augment

    with pytest.raises(ConfigError, match="data.spec_mask.*data.task speaker"):
        load_config(None, ["data.task=face", "data.spec_mask=0.5"])
    with pytest.raises(ConfigError, match="data.spec_mask_frames"):
        load_config(None, ["data.task=speaker", "data.spec_mask_frames=-1"])
    cfg = load_config(None, ["data.task=speaker", "data.spec_mask=1.0", "data.spec_mask_frames=3",
                             "data.spec_mask_bins=2"])
    x = torch.randn(4, 20, 8)
    out = make_augment(cfg.data)({"fbank": x, "lengths": torch.full((4,), 20)})["fbank"]
    assert not torch.equal(out, x)
    data, run = str(tmp_path / "d"), str(tmp_path / "run")
    from xclass.tasks import get_task

    assert xclass(["make-data", "--task", "speaker", *get_task("speaker").demo_args, "--out", data]) == 0
    assert xclass(["train", "--config", "configs/speaker/cpu.yaml", f"data.path={data}", f"train.out_dir={run}",
                   "train.progress=false", "train.max_steps=3", "data.spec_mask=0.6"]) == 0
