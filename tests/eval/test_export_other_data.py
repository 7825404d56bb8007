"""``export-index --run RUN --data DIR``: a run encodes a dataset other than its own (a benchmark
test set), checked against its training data's inputs first."""
import json
import os

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from xclass.cli.main import main as xclass


@pytest.fixture(scope="module")
def face_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("export_other")

    def data(name, seed, size=16):
        path = str(d / name)
        assert xclass(["make-data", "--task", "face", "--num-classes", "10", "--rows-per-class", "4",
                       "--test-classes", "3", "--opt", f"image_size={size}", "--seed", str(seed), "--out", path]) == 0
        return path

    own, other, bigger = data("own", 0), data("other", 5), data("bigger", 5, size=20)
    run = str(d / "run")
    assert xclass(["train", "--config", "configs/face/cpu.yaml", f"data.path={own}", f"train.out_dir={run}",
                   "train.progress=false", "train.max_steps=2", "data.batch_size=16"]) == 0
    return d, run, own, other, bigger


def test_export_encodes_another_dataset_with_the_run(face_run):
    from xclass.eval.embed import load_encoder, load_run

    d, run, own, other, _ = face_run
    out = str(d / "idx_other")
    assert xclass(["export-index", "--run", run, "--data", other, "--split", "test", "--out", out]) == 0
    got = pq.read_table(os.path.join(out, "test_embeddings.parquet"))
    src = pq.read_table(os.path.join(other, "test.parquet"))
    assert got.column("id").to_pylist() == src.column("id").to_pylist()
    assert got.column("label").to_pylist() == src.column("label").to_pylist()
    cfg = load_run(run)
    meta = json.load(open(os.path.join(other, "meta.json")))
    enc = load_encoder(run, cfg, meta)
    img = np.stack(src.column("image").to_numpy(zero_copy_only=False)).astype(np.uint8)   # [n, 16*16*3]
    from xclass import components

    inputs, _ = components.make_decoder("face", meta, cfg.model)({"image": img, "label": np.asarray(src["label"])})
    with torch.no_grad():
        ref = enc(inputs).float().numpy()
    np.testing.assert_allclose(np.stack(got.column("embedding").to_numpy(zero_copy_only=False)), ref,
                               rtol=1e-5, atol=1e-6)
    own_rows = pq.read_table(os.path.join(own, "test.parquet")).num_rows
    assert own_rows and img.shape[0] == src.num_rows       # the other dataset's rows, not the run's


def test_export_refuses_a_dataset_with_other_inputs(face_run, capsys):
    d, run, _, _, bigger = face_run
    out = str(d / "idx_bigger")
    assert xclass(["export-index", "--run", run, "--data", bigger, "--out", out]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "meta.json" in err[0] and "inputs.image.height is 20" in err[0] and "16" in err[0]
    assert not os.path.exists(os.path.join(out, "test_embeddings.parquet"))


def test_export_data_needs_run_without_head(face_run, capsys):
    d, run, _, other, _ = face_run
    assert xclass(["export-index", "--run", run, "--head", "--data", other, "--out", str(d / "h")]) == 2
    assert "--data is about the encoder" in capsys.readouterr().err


def test_check_same_inputs_by_key():
    from xclass.data.meta import check_same_inputs
    from xclass.data.schema import DataError

    trained = {"task": "speaker", "inputs": {"fbank": {"n_mels": 80, "sample_rate": 16000, "max_frames": 300}}}
    ok = {"task": "speaker", "inputs": {"fbank": {"n_mels": 80, "sample_rate": 16000, "max_frames": 900}}}
    check_same_inputs(("fbank.n_mels", "fbank.sample_rate"), trained, ok, "d")   # other lengths are fine
    for bad, key in ((dict(ok, task="face"), "task"),
                     ({"task": "speaker", "inputs": {"fbank": {"n_mels": 64, "sample_rate": 16000}}}, "n_mels"),
                     ({"task": "speaker", "inputs": {"fbank": {"n_mels": 80}}}, "sample_rate is missing")):
        with pytest.raises(DataError, match=key):
            check_same_inputs(("fbank.n_mels", "fbank.sample_rate"), trained, bad, "d")
    # a key the training data does not describe (generated data have no sample rate) is not checked
    check_same_inputs(("fbank.sample_rate",), {"task": "speaker", "inputs": {"fbank": {}}}, ok, "d")


@pytest.fixture(scope="module")
def three_checkpoints(face_run):
    d, _, own, _, _ = face_run
    run = str(d / "run3")
    assert xclass(["train", "--config", "configs/face/cpu.yaml", f"data.path={own}", f"train.out_dir={run}",
                   "train.progress=false", "train.max_steps=3", "data.batch_size=16", "train.checkpoint_every=1",
                   "train.keep_last=3"]) == 0
    return d, run, own


def test_average_last_is_the_mean_of_the_checkpoints(three_checkpoints):
    from xclass.eval.embed import load_encoder, load_run
    from xclass.train.checkpoint import list_checkpoints
    from xclass.train.safe_io import safe_load

    d, run, own = three_checkpoints
    cfg, meta = load_run(run), json.load(open(os.path.join(own, "meta.json")))
    states = [safe_load(os.path.join(p, "encoder.pt"))["module"] for p in list_checkpoints(run)]
    assert len(states) == 3
    got = load_encoder(run, cfg, meta, average_last=3).state_dict()
    moved = 0
    for k, v in got.items():
        if torch.is_floating_point(v):
            want = (states[0][k].double() + states[1][k].double() + states[2][k].double()) / 3
            torch.testing.assert_close(v.double(), want, rtol=1e-6, atol=1e-7)
            moved += int(not torch.equal(states[0][k], states[2][k]))
        else:
            assert torch.equal(v, states[2][k])                  # step counters: the newest
    assert moved > 0                                              # the weights did change between checkpoints
    newest = load_encoder(run, cfg, meta).state_dict()
    assert all(torch.equal(newest[k], states[2][k]) for k in newest)


def test_export_average_last_encodes_with_the_mean(three_checkpoints, capsys):
    from xclass import components
    from xclass.eval.embed import load_encoder, load_run

    d, run, own = three_checkpoints
    out = str(d / "idx_avg")
    assert xclass(["export-index", "--run", run, "--average-last", "2", "--out", out]) == 0
    got = pq.read_table(os.path.join(out, "test_embeddings.parquet"))
    src = pq.read_table(os.path.join(own, "test.parquet"))
    cfg, meta = load_run(run), json.load(open(os.path.join(own, "meta.json")))
    enc = load_encoder(run, cfg, meta, average_last=2)
    img = np.stack(src.column("image").to_numpy(zero_copy_only=False)).astype(np.uint8)
    inputs, _ = components.make_decoder("face", meta, cfg.model)({"image": img, "label": np.asarray(src["label"])})
    with torch.no_grad():
        ref = enc(inputs).float().numpy()
    np.testing.assert_allclose(np.stack(got.column("embedding").to_numpy(zero_copy_only=False)), ref,
                               rtol=1e-5, atol=1e-6)
    capsys.readouterr()
    assert xclass(["export-index", "--run", run, "--average-last", "4", "--out", str(d / "idx_avg4")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "the last 4 checkpoints, but the run keeps 3" in err[0]
