"""Issue item 11: each listed careless input ends in one line and exit code 2 (no traceback)."""
import os

import numpy as np
import pytest
import torch

from tests.reliability.common import assert_one_line, cli, copy_run, tiny_run


@pytest.fixture(scope="module")
def done(tmp_path_factory):
    tmp = str(tmp_path_factory.mktemp("oneline"))
    run = tiny_run(tmp, "run", 2)
    return tmp, run


@pytest.mark.parametrize("flag", ["--hnsw-m", "--shard-rows", "--nlist", "--batch-rows"])
def test_index_sizes_zero(done, tmp_path, capfd, flag):
    tmp, run = done
    rc, err = cli(["export-index", "--run", run, "--out", str(tmp_path / "i"), "--index-type", "hnsw", flag, "0"], capfd)
    assert_one_line(rc, err, flag)
    assert not os.path.exists(tmp_path / "i")


@pytest.mark.parametrize("flag,value", [("--batch-rows", "0"), ("--ef-search", "-1"), ("--nprobe", "0"),
                                        ("--majority-k", "0"), ("--prop-a", "-1")])
def test_evaluate_numbers_out_of_range(tmp_path, capfd, flag, value):
    rc, err = cli(["evaluate", "--protocol", "ident", "--index", str(tmp_path / "i"), "--gallery", "g.parquet",
                   "--queries", "q.parquet", "--out", str(tmp_path / "r"), flag, value], capfd)
    assert_one_line(rc, err, flag)
    assert not os.path.exists(tmp_path / "r")


def test_tfidf_on_face_dataset(done, capfd):
    tmp, _ = done
    rc, err = cli(["tfidf-baseline", "--data", os.path.join(tmp, "data")], capfd)
    assert_one_line(rc, err, "meta.json", "XMC")


def test_import_xc_non_utf8_and_existing_out(tmp_path, capfd):
    train = tmp_path / "train.txt"
    train.write_bytes(b"2 3 2\n0 0:1.0 1:2.0\n1 1:\xff\xfe 2:1.0\n")
    test = tmp_path / "test.txt"
    test.write_bytes(b"1 3 2\n0 0:1.0\n")
    rc, err = cli(["import", "xc", "--out", str(tmp_path / "o"), "--train", str(train), "--test", str(test)], capfd)
    assert_one_line(rc, err, "train.txt", "line 3")
    (tmp_path / "exists").mkdir()
    train.write_bytes(b"2 3 2\n0 0:1.0 1:2.0\n1 1:1.0 2:1.0\n")
    rc, err = cli(["import", "xc", "--out", str(tmp_path / "exists"), "--train", str(train), "--test", str(test)], capfd)
    assert_one_line(rc, err, "exists", "--overwrite")
    rc, err = cli(["import", "xc", "--out", str(tmp_path / "o2"), "--train", str(tmp_path), "--test", str(test)], capfd)
    assert_one_line(rc, err, f"{tmp_path}: not a file")
    assert not os.path.exists(tmp_path / "o2")


def _faces_root(tmp_path):
    from PIL import Image

    root = tmp_path / "faces"
    for person in ("a", "b"):
        (root / person).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.full((16, 16, 3), 40 * i, np.uint8)).save(root / person / f"{i}.png")
    return root


def test_png_decompression_bomb(tmp_path, capfd):
    from PIL import Image

    root = _faces_root(tmp_path)
    Image.new("L", (8000, 8000)).save(root / "a" / "bomb.png", optimize=True)
    assert os.path.getsize(root / "a" / "bomb.png") < 1_000_000
    rc, err = cli(["import", "faces", "--root", str(root), "--out", str(tmp_path / "o"), "--size", "8",
                   "--no-progress"], capfd)
    assert_one_line(rc, err, "bomb.png", "pixels")


def test_faces_symlink_out_of_root(tmp_path, capfd):
    root = _faces_root(tmp_path)
    secret = tmp_path / "secret.png"
    os.rename(root / "b" / "0.png", secret)
    os.symlink(secret, root / "b" / "0.png")
    rc, err = cli(["import", "faces", "--root", str(root), "--out", str(tmp_path / "o"), "--size", "8",
                   "--no-progress"], capfd)
    assert_one_line(rc, err, "0.png", "outside the import root")


@pytest.mark.parametrize("change,needle", [
    (["model.embedding_dim=16"], "embedding_dim"), (["model.params={hidden: [6]}"], "encoder.pt"),
    (["optim.name=adamw"], "head-r00000.pt")])
def test_resume_with_other_model_or_optimizer(done, tmp_path, capfd, change, needle):
    _, run = done
    run = copy_run(run, str(tmp_path / "run"))
    rc, err = cli(["train", "-c", os.path.join(run, "config.yaml"), "train.max_steps=3", *change], capfd)
    assert_one_line(rc, err, needle)


@pytest.mark.parametrize("name", ["encoder.pt", "head-r00000.pt"])
def test_truncated_checkpoint_files(done, tmp_path, capfd, name):
    _, run = done
    run = copy_run(run, str(tmp_path / "run"))
    f = os.path.join(run, "checkpoints", "step_00000002", name)
    data = open(f, "rb").read()
    open(f, "wb").write(data[: len(data) // 2])
    rc, err = cli(["train", "-c", os.path.join(run, "config.yaml"), "train.max_steps=3"], capfd)
    assert_one_line(rc, err, name)
    assert torch is not None


def test_rerun_of_finished_run(done, tmp_path, capfd):
    _, run = done
    run = copy_run(run, str(tmp_path / "run"))
    rc, err = cli(["train", "-c", os.path.join(run, "config.yaml")], capfd)
    assert rc == 0
    out = capfd.readouterr().out
    assert "nan" not in out.lower()
