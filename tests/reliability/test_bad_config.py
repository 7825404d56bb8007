"""Issue items 5 and 11: out-of-range config values and CLI flags end in one line naming the
key, exit 2, before anything is written; YAML alias bombs are refused."""
import os

import pytest

from tests.reliability.common import TINY, assert_one_line, cli
from tests.train.common import write_features_data

BAD = [
    (["optim.lr=.nan"], "optim.lr"), (["optim.lr=-1"], "optim.lr"), (["optim.grad_clip=.inf"], "optim.grad_clip"),
    (["train.precision=fp8"], "train.precision"), (["train.grad_accum=0"], "train.grad_accum"),
    (["train.log_every=0"], "train.log_every"), (["data.batch_size=0"], "data.batch_size"),
    (["data.batch_size=-8"], "data.batch_size"), (["--workers", "0"], "cluster.workers"),
    (["--workers", "-2"], "cluster.workers"), (["train.max_nonfinite_steps=0"], "train.max_nonfinite_steps"),
    (["head.sample_rate=0"], "head.sample_rate"), (["optim.momentum=1.5"], "optim.momentum"),
    (["optim.name=lion"], "optim.name"), (["deepspeed.zero_stage=3"], "deepspeed.zero_stage"),
    (["data.balance_power=5"], "data.balance_power"), (["data.balance_power=-1"], "data.balance_power"),
]


@pytest.mark.parametrize("args,key", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_value_names_key(tmp_path, capfd, args, key):
    run = str(tmp_path / "run")
    rc, err = cli(["train", "data.path=/nonexistent", f"train.out_dir={run}", *args], capfd)
    assert_one_line(rc, err, f"'{key}'")
    assert not os.path.exists(run)


def test_overrides_after_workers_accepted(tmp_path, capfd):
    data = write_features_data(str(tmp_path / "d"))
    rc, err = cli(["train", "--workers", "1", f"data.path={data}", f"train.out_dir={tmp_path / 'run'}",
                   "train.max_steps=2", *TINY], capfd)
    assert rc == 0, err


def test_unknown_flag_still_rejected():
    from xclass.cli import main

    with pytest.raises(SystemExit) as e:
        main(["train", "--wrokers", "2"])
    assert e.value.code == 2


def test_yaml_alias_bomb_refused(tmp_path, capfd):
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 9):
        prev = f"*a{i - 1}"
        lines.append(f"a{i}: &a{i} [{', '.join([prev] * 10)}]")
    body = "\n".join("    " + ln for ln in lines)
    cfg = tmp_path / "bomb.yaml"
    cfg.write_text(f"data:\n  generate:\n{body}\n")
    rc, err = cli(["train", "-c", str(cfg), f"train.out_dir={tmp_path / 'run'}"], capfd)
    assert_one_line(rc, err, "bomb.yaml", "expands to more than")
