"""``train.ensemble: K``: one ``xclass train`` trains K member runs (xclass/train/members.py), each
the same as a run trained alone with its seed, and ``export-index --run DIR`` fuses them."""
import json
import os

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from xclass.cli.main import main as xclass
from xclass.config import load_config
from xclass.config_types import ConfigError
from xclass.train.members import MANIFEST, expand_runs, member_configs, read_members

TRAIN = ["--config", "configs/face/cpu.yaml", "train.progress=false", "train.max_steps=2", "data.batch_size=16"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    d = tmp_path_factory.mktemp("members")
    data = str(d / "data")
    assert xclass(["make-data", "--task", "face", "--num-classes", "10", "--rows-per-class", "4",
                   "--test-classes", "3", "--opt", "image_size=16", "--seed", "0", "--out", data]) == 0
    ens = str(d / "ens")
    assert xclass(["train", *TRAIN, f"data.path={data}", f"train.out_dir={ens}", "train.ensemble=2",
                   "train.seed=7"]) == 0
    alone = str(d / "alone")   # member 1 trained on its own: seed 7 + 1000
    assert xclass(["train", *TRAIN, f"data.path={data}", f"train.out_dir={alone}", "train.seed=1007"]) == 0
    return d, data, ens, alone


def _weights(run):
    from xclass.train.checkpoint import encoder_weights, list_checkpoints

    return encoder_weights(list_checkpoints(run)[-1])


def test_members_are_ordinary_runs_with_their_seeds(trained):
    _, _, ens, alone = trained
    members = read_members(ens)
    assert members == [os.path.join(ens, "member-0"), os.path.join(ens, "member-1")]
    doc = json.load(open(os.path.join(ens, MANIFEST)))
    assert doc["seeds"] == [7, 1007]
    cfgs = [load_config(os.path.join(m, "config.yaml")) for m in members]
    assert [c.train.seed for c in cfgs] == [7, 1007] and all(c.train.ensemble == 1 for c in cfgs)
    w0, w1, w_alone = _weights(members[0]), _weights(members[1]), _weights(alone)
    assert w1.keys() == w_alone.keys()
    for k in w1:   # member 1 is exactly the run trained alone with its seed
        torch.testing.assert_close(w1[k], w_alone[k], rtol=0, atol=0)
    assert any(not torch.equal(w0[k], w1[k]) for k in w0 if w0[k].is_floating_point())


def test_export_of_the_ensemble_directory_fuses_its_members(trained):
    d, _, ens, _ = trained
    members = read_members(ens)
    out_dir, out_runs = str(d / "by_dir"), str(d / "by_runs")
    assert xclass(["export-index", "--run", ens, "--out", out_dir]) == 0
    assert xclass(["export-index", "--run", members[0], "--run", members[1], "--out", out_runs]) == 0
    a, b = (pq.read_table(os.path.join(o, "test_embeddings.parquet")) for o in (out_dir, out_runs))
    assert a.column("id").to_pylist() == b.column("id").to_pylist()
    ea, eb = (np.stack(t.column("embedding").to_numpy(zero_copy_only=False)) for t in (a, b))
    assert ea.shape[1] == 2 * 64
    np.testing.assert_array_equal(ea, eb)


def test_resume_of_a_finished_ensemble_trains_nothing(trained, capsys):
    _, data, ens, _ = trained
    before = [_weights(m) for m in read_members(ens)]
    assert xclass(["train", *TRAIN, f"data.path={data}", f"train.out_dir={ens}", "train.ensemble=2",
                   "train.seed=7"]) == 0
    assert "0 trained now" in capsys.readouterr().out
    for b, m in zip(before, read_members(ens)):
        assert all(torch.equal(b[k], v) for k, v in _weights(m).items())


@pytest.mark.parametrize("extra, match", [
    (["train.ensemble=3", "train.seed=7"], "holds an ensemble of 2 members"),
    (["train.ensemble=2", "train.seed=8"], "seeds"),
    (["train.ensemble=2", "train.seed=7", "train.resume=false"], "already holds a run"),
    (["train.seed=7"], "holds an ensemble"),
])
def test_mismatched_or_mixed_runs_are_refused(trained, extra, match, capsys):
    _, data, ens, _ = trained
    assert xclass(["train", *TRAIN, f"data.path={data}", f"train.out_dir={ens}", *extra]) == 2
    assert match in capsys.readouterr().err


def test_an_ensemble_into_a_single_run_directory_is_refused(trained, capsys):
    _, data, _, alone = trained
    assert xclass(["train", *TRAIN, f"data.path={data}", f"train.out_dir={alone}", "train.ensemble=2"]) == 2
    assert "holds one run (not an ensemble)" in capsys.readouterr().err


def test_commands_that_need_one_run_name_the_ensemble(trained, tmp_path, capsys):
    _, data, ens, _ = trained
    from xclass.eval.embed import load_run

    with pytest.raises(ConfigError, match="is an ensemble of 2 runs.*member-0"):
        load_run(ens)
    assert xclass(["train", *TRAIN, f"data.path={data}", f"train.out_dir={tmp_path / 'ft'}",
                   f"train.init_from={ens}"]) == 2
    assert "train.init_from" in capsys.readouterr().err


def test_overwrite_moves_the_ensemble_aside(tmp_path):
    ens = tmp_path / "e"
    (ens / "member-0").mkdir(parents=True)
    (ens / MANIFEST).write_text(json.dumps({"members": ["member-0"], "seeds": [0]}))
    cfg = load_config(None, [f"train.out_dir={ens}", "train.ensemble=2", "train.resume=false",
                             "train.overwrite=true"])
    from xclass.train.members import _prepare

    _prepare(cfg, member_configs(cfg))
    aside = [p for p in os.listdir(tmp_path) if p.startswith("e.old-")]
    assert len(aside) == 1 and (tmp_path / aside[0] / MANIFEST).exists()
    assert json.load(open(ens / MANIFEST))["members"] == ["member-0", "member-1"]


def test_member_configs_and_init_from_an_ensemble(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / MANIFEST).write_text(json.dumps({"members": ["member-0", "member-1"]}))
    cfg = load_config(None, [f"train.out_dir={tmp_path / 'new'}", "train.ensemble=2", "train.seed=3",
                             f"train.init_from={src}", "train.resume=false"])
    ms = member_configs(cfg)
    assert [m.train.seed for m in ms] == [3, 1003]
    assert [m.train.out_dir for m in ms] == [str(tmp_path / "new" / f"member-{k}") for k in (0, 1)]
    assert [m.train.init_from for m in ms] == [str(src / f"member-{k}") for k in (0, 1)]
    assert all(m.train.resume and m.train.ensemble == 1 for m in ms)
    with pytest.raises(ConfigError, match="member counts must match"):
        member_configs(load_config(None, [f"train.init_from={src}", "train.ensemble=3"]))


@pytest.mark.parametrize("text", ["{", '{"members": []}', '{"members": ["../x"]}', '{"seeds": [1]}',
                                  '{"members": "member-0"}'])
def test_a_malformed_manifest_is_one_error_naming_the_file(tmp_path, text):
    (tmp_path / MANIFEST).write_text(text)
    with pytest.raises(ConfigError, match=MANIFEST):
        expand_runs([str(tmp_path)])


def test_ensemble_must_be_positive():
    with pytest.raises(ConfigError, match="train.ensemble"):
        load_config(None, ["train.ensemble=0"])


def test_a_first_member_that_fails_on_its_config_leaves_no_manifest(trained, tmp_path, capsys):
    _, data, _, _ = trained
    out = tmp_path / "bad"
    assert xclass(["train", *TRAIN, f"data.path={data}", f"train.out_dir={out}", "train.ensemble=2",
                   "model.params.bogus=1"]) == 2
    assert "bogus" in capsys.readouterr().err
    assert not (out / MANIFEST).exists()
    assert xclass(["train", *TRAIN, f"data.path={data}", f"train.out_dir={out}", "train.ensemble=3",
                   "train.max_steps=1"]) == 0   # a later ensemble of another size is not refused
    assert len(read_members(str(out))) == 3


def test_a_single_run_with_overwrite_moves_an_ensemble_aside(tmp_path):
    from xclass.train.rundir import prepare_run_dir

    ens = tmp_path / "e"
    ens.mkdir()
    (ens / MANIFEST).write_text(json.dumps({"members": ["member-0"], "seeds": [0]}))
    with pytest.raises(ConfigError, match="already holds a run"):
        prepare_run_dir(load_config(None, [f"train.out_dir={ens}", "train.resume=false"]))
    aside = prepare_run_dir(load_config(None, [f"train.out_dir={ens}", "train.resume=false", "train.overwrite=true"]))
    assert os.path.exists(os.path.join(aside, MANIFEST)) and not ens.exists()
