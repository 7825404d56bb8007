"""Helpers of the reliability tests: a tiny run through the public CLI, and the checks that a
bad input ended in one line on stderr with exit code 2."""
from __future__ import annotations

import logging
import os
import pickle
import shutil
from typing import Sequence, Tuple

import torch

from tests.train.common import write_features_data

TINY = ["data.batch_size=24", "data.shard_mode=global_batch", "model.encoder=mlp", "model.embedding_dim=8",
        "model.params={hidden: []}", "head.margin=cosface", "head.margin_params={s: 8.0, m: 0.2}",
        "optim.lr=0.1", "train.log_every=1", "train.progress=false"]


def cli(argv: Sequence[str], capfd) -> Tuple[int, str]:
    """Run ``xclass ARGV`` in-process; returns (exit code, stderr)."""
    from xclass.cli import main

    capfd.readouterr()
    _rebind_loggers()
    rc = main(list(argv))
    return rc, capfd.readouterr().err


def _rebind_loggers() -> None:
    """xclass loggers made by an earlier in-process run still write to that test's captured
    stderr (closed now): point them at this test's."""
    for name, lg in logging.Logger.manager.loggerDict.items():
        if name.startswith("xclass") and isinstance(lg, logging.Logger):
            lg.handlers.clear()  # get_logger makes a new one on this test's stderr


def assert_one_line(rc: int, err: str, *needles: str) -> str:
    """Exit 2, no traceback, and exactly one ``xclass ...: error:`` line containing ``needles``."""
    errors = [ln for ln in err.splitlines() if ": error: " in ln]
    assert rc == 2, (rc, err[-2000:])
    assert "Traceback" not in err, err[-2000:]
    assert len(errors) == 1, err[-2000:]
    for n in needles:
        assert n in errors[0], (n, errors[0])
    return errors[0]


def tiny_run(tmp: str, name: str = "run", steps: int = 2, *extra: str) -> str:
    """A features dataset and a finished ``steps``-step run; returns the run directory."""
    data = os.path.join(tmp, "data")
    if not os.path.exists(os.path.join(data, "meta.json")):
        write_features_data(data)
    run = os.path.join(tmp, name)
    rc = _main(["train", f"data.path={data}", f"train.out_dir={run}", f"train.max_steps={steps}", *TINY, *extra])
    assert rc == 0
    return run


def _main(argv: Sequence[str]) -> int:
    from xclass.cli import main

    return main(list(argv))


def copy_run(src: str, dst: str) -> str:
    shutil.copytree(src, dst)
    cfg = os.path.join(dst, "config.yaml")
    with open(cfg) as f:
        text = f.read().replace(src, dst)
    with open(cfg, "w") as f:
        f.write(text)
    return dst


class Payload:
    """Unpickling this object runs ``touch MARKER`` (when a loader allows it)."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def plant(path: str, marker: str, style: str = "torch") -> None:
    """Replace ``path`` by a pickle that would create ``marker`` if unpickled with code execution:
    ``torch`` (torch.save zip format, the weights in a dict) or ``raw`` (a bare pickle stream)."""
    if style == "torch":
        torch.save({"module": {"w": torch.zeros(2)}, "evil": Payload(marker)}, path)
    else:
        with open(path, "wb") as f:
            pickle.dump(Payload(marker), f)
