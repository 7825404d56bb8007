"""Issue item 1: no file of a run or index directory can run code when xclass reads it.

A pickle whose ``__reduce__`` would ``touch`` a marker file is planted, one file at a time,
in every file a checkpoint holds (encoder.pt, head shard, DeepSpeed model and ZeRO optimizer
states, manifest), then the run is resumed and exported, and the index evaluated. The marker
must never appear and every command must stop with one line and exit code 2."""
import glob
import shutil
import os

import pytest

from tests.reliability.common import assert_one_line, cli, copy_run, plant, tiny_run

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    tmp = str(tmp_path_factory.mktemp("planted"))
    plain = tiny_run(tmp, "plain", 2, "optim.name=adamw")
    ds = tiny_run(tmp, "ds", 2, "optim.name=adamw", "deepspeed.enabled=true", "deepspeed.zero_stage=1")
    return tmp, plain, ds


def _ckpt_files(run):
    (step,) = glob.glob(os.path.join(run, "checkpoints", "step_*"))
    files = sorted(glob.glob(os.path.join(step, "**", "*.pt"), recursive=True))
    return [os.path.relpath(f, run) for f in files] + [os.path.relpath(os.path.join(step, "manifest.json"), run)]


def _cases():
    return [("plain", "encoder.pt", "torch"), ("plain", "encoder.pt", "raw"), ("plain", "head-r00000.pt", "torch"),
            ("plain", "manifest.json", "raw"), ("ds", "encoder.pt", "torch"), ("ds", "head-r00000.pt", "torch"),
            ("ds", "mp_rank_00_model_states.pt", "torch"), ("ds", "optim_states.pt", "torch")]


@pytest.mark.parametrize("which,suffix,style", _cases())
def test_resume_and_export_never_unpickle_code(runs, tmp_path, capfd, which, suffix, style):
    tmp, plain, ds = runs
    src = plain if which == "plain" else ds
    (target,) = [f for f in _ckpt_files(src) if f.endswith(suffix)]
    run = copy_run(src, str(tmp_path / "run"))
    marker = str(tmp_path / "PWNED")
    plant(os.path.join(run, target), marker, style)

    if target.endswith(("encoder.pt", "manifest.json")) or "head" in target:
        args = ["export-index", "--run", run, "--out", str(tmp_path / "idx")]
        if "head" in target:
            args.append("--head")
        rc, err = cli(args, capfd)
        assert not os.path.exists(marker), "payload ran on export"
        assert_one_line(rc, err)
    rc, err = cli(["train", "-c", os.path.join(run, "config.yaml"), "train.max_steps=3"], capfd)
    assert not os.path.exists(marker), "payload ran on resume"
    if not (which == "ds" and suffix == "encoder.pt"):  # a DeepSpeed resume reads deepspeed/, not encoder.pt
        assert_one_line(rc, err, os.path.basename(target))


def test_index_files_never_unpickle_code(runs, tmp_path, capfd):
    tmp, plain, _ = runs
    idx = str(tmp_path / "idx")
    rc, err = cli(["export-index", "--run", plain, "--out", idx], capfd)
    assert rc == 0, err
    queries = os.path.join(idx, "test_embeddings.parquet")
    marker = str(tmp_path / "PWNED")
    for name in sorted(os.listdir(idx)):
        if name.endswith(".parquet") or not os.path.isfile(os.path.join(idx, name)):
            continue
        bad = str(tmp_path / f"bad-{name}")
        shutil.copytree(idx, bad)
        plant(os.path.join(bad, name), marker, "raw")
        rc, err = cli(["evaluate", "--protocol", "ident", "--index", bad, "--queries", queries, "--gallery", queries,
                       "--out", str(tmp_path / f"rep-{name}"), "--no-plots", "--quiet"], capfd)
        assert not os.path.exists(marker)
        assert_one_line(rc, err, name)


def test_manifest_shard_path_confined(runs, tmp_path, capfd):
    """Item 3: a manifest naming ``../`` or an absolute path is refused before any read."""
    import json

    tmp, plain, _ = runs
    idx = str(tmp_path / "idx")
    assert cli(["export-index", "--run", plain, "--out", idx], capfd)[0] == 0
    queries = os.path.join(idx, "test_embeddings.parquet")
    outside = shutil.copytree(idx, str(tmp_path / "outside"))
    mpath = os.path.join(idx, "manifest.json")
    man = json.load(open(mpath))
    good = man["shards"][0]["file"]
    for bad in (f"../outside/{good}", os.path.join(outside, good)):
        man["shards"][0]["file"] = bad
        json.dump(man, open(mpath, "w"))
        rc, err = cli(["evaluate", "--protocol", "ident", "--index", idx, "--queries", queries,
                       "--gallery", queries, "--no-plots", "--quiet"], capfd)
        assert_one_line(rc, err, "outside the index directory" if bad.startswith("..") else "relative path")


def test_planted_config_yaml(runs, tmp_path, capfd):
    """The run's config.yaml is read with yaml.safe_load: a pickle there is just invalid YAML."""
    tmp, plain, _ = runs
    run = copy_run(plain, str(tmp_path / "run"))
    marker = str(tmp_path / "PWNED")
    plant(os.path.join(run, "config.yaml"), marker, "raw")
    rc, err = cli(["export-index", "--run", run, "--out", str(tmp_path / "idx")], capfd)
    assert not os.path.exists(marker)
    assert_one_line(rc, err, "config.yaml")
    rc, err = cli(["train", "-c", os.path.join(run, "config.yaml")], capfd)
    assert not os.path.exists(marker)
    assert_one_line(rc, err, "config.yaml")
