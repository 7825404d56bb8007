"""Issue items 7-10: the overwrite check comes before any write, atomic_dir never replaces a
directory another process made, resume=false never mixes two runs, stale temp directories are
cleaned, and a full disk is one line naming the path."""
import errno
import glob
import os

import pytest

from tests.reliability.common import TINY, assert_one_line, cli, tiny_run
from xclass.data.writer import atomic_dir


def test_export_refuses_before_rewriting_embeddings(tmp_path, capfd):
    run = tiny_run(str(tmp_path))
    out = str(tmp_path / "idx")
    assert cli(["export-index", "--run", run, "--out", out], capfd)[0] == 0
    emb = os.path.join(out, "test_embeddings.parquet")
    before = (os.stat(emb).st_mtime_ns, open(emb, "rb").read())
    rc, err = cli(["export-index", "--run", run, "--out", out], capfd)
    assert_one_line(rc, err, "--overwrite")
    assert (os.stat(emb).st_mtime_ns, open(emb, "rb").read()) == before


def test_atomic_dir_never_replaces_a_directory_made_meanwhile(tmp_path):
    out = str(tmp_path / "ds")
    with pytest.raises(FileExistsError, match="another process"):
        with atomic_dir(out) as tmp:
            open(os.path.join(tmp, "mine.txt"), "w").write("mine")
            open(os.path.join(out, "theirs.txt"), "w").write("theirs")  # another writer's output
    assert os.listdir(out) == ["theirs.txt"]
    assert not glob.glob(str(tmp_path / ".ds.tmp-*"))
    with pytest.raises(FileExistsError, match="--overwrite"):
        with atomic_dir(out):
            pass


def test_stale_tmp_of_a_killed_writer_is_cleaned(tmp_path):
    stale = tmp_path / ".ds.tmp-999999999-deadbeef"
    stale.mkdir()
    (stale / "part-00000.parquet").write_bytes(b"x" * 1000)
    with atomic_dir(str(tmp_path / "ds")) as tmp:
        open(os.path.join(tmp, "ok"), "w").write("1")
    assert not stale.exists() and os.listdir(tmp_path / "ds") == ["ok"]


def test_resume_false_refuses_then_moves_aside(tmp_path, capfd):
    run = tiny_run(str(tmp_path), "run", 4, "train.checkpoint_every=1", "train.keep_last=0")
    data = str(tmp_path / "data")
    args = ["train", f"data.path={data}", f"train.out_dir={run}", "train.max_steps=2", "train.resume=false", *TINY]
    rc, err = cli(args, capfd)
    assert_one_line(rc, err, "already holds a run", "--overwrite")
    assert len(glob.glob(os.path.join(run, "checkpoints", "step_*"))) == 4  # untouched
    rc, err = cli(args + ["--overwrite"], capfd)
    assert rc == 0, err
    assert sorted(os.listdir(os.path.join(run, "checkpoints"))) == ["step_00000002"]
    (old,) = glob.glob(run + ".old-*")
    assert len(os.listdir(os.path.join(old, "checkpoints"))) == 4


def test_stale_checkpoint_tmp_cleaned_on_next_run(tmp_path, capfd):
    run = tiny_run(str(tmp_path), "run", 2)
    stale = os.path.join(run, "checkpoints", "step_00000003.tmp")
    os.makedirs(stale)
    open(os.path.join(stale, "head-r00000.pt.part"), "wb").write(b"\0" * 100)
    rc, err = cli(["train", "-c", os.path.join(run, "config.yaml"), "train.max_steps=3"], capfd)
    assert rc == 0, err
    assert not os.path.exists(stale)


@pytest.mark.parametrize("how", ["torch", "oserror"])
def test_disk_full_is_one_line(tmp_path, capfd, monkeypatch, how):
    run = tiny_run(str(tmp_path), "run", 2)
    import xclass.train.checkpoint as ck

    def full(obj, path):
        if how == "oserror":
            raise OSError(errno.ENOSPC, "No space left on device", path)
        raise RuntimeError("basic_ios::clear: iostream error")

    monkeypatch.setattr(ck, "_atomic_torch_save", full)
    monkeypatch.setattr(ck, "_disk_full", lambda path, min_free=0: True)
    rc, err = cli(["train", "-c", os.path.join(run, "config.yaml"), "train.max_steps=3"], capfd)
    assert_one_line(rc, err, "step_00000003.tmp", "no space left on device")
    assert sorted(os.listdir(os.path.join(run, "checkpoints"))) == ["step_00000002"]
