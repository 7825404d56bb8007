"""Issue item 5: a non-finite loss/gradient skips the step; N consecutive ones stop the run with
one line (exit 2); no checkpoint ever holds NaN/Inf."""
import glob
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from tests.reliability.common import TINY, assert_one_line, cli
from tests.train.common import write_features_data


def _all_finite(run):
    for f in glob.glob(os.path.join(run, "checkpoints", "*", "*.pt")):
        state = torch.load(f, weights_only=True)
        stack = [state]
        while stack:
            x = stack.pop()
            if isinstance(x, dict):
                stack.extend(x.values())
            elif isinstance(x, (list, tuple)):
                stack.extend(x)
            elif torch.is_tensor(x) and x.is_floating_point():
                assert torch.isfinite(x).all(), f
    return True


@pytest.mark.parametrize("every,needle", [(1, "parameters are not finite"), (0, "train.max_nonfinite_steps=2")])
def test_divergence_stops_with_one_line(tmp_path, capfd, every, needle):
    data = write_features_data(str(tmp_path / "d"))
    run = str(tmp_path / "run")
    rc, err = cli(["train", f"data.path={data}", f"train.out_dir={run}", "train.max_steps=12",
                   f"train.checkpoint_every={every}", "train.keep_last=0", *TINY, "optim.lr=1.0e+30",
                   "optim.schedule=constant", "train.max_nonfinite_steps=2"], capfd)
    assert_one_line(rc, err, "not finite", needle)
    assert _all_finite(run)


def test_one_bad_batch_is_skipped(tmp_path, capfd):
    data = write_features_data(str(tmp_path / "d"))
    path = os.path.join(data, "train.parquet")
    t = pq.read_table(path)
    x = np.asarray(t.column("features").to_pylist(), np.float32)
    x[100] = np.nan
    t = t.set_column(2, "features", pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), x.shape[1]))
    pq.write_table(t, path)
    run = str(tmp_path / "run")
    rc, err = cli(["train", f"data.path={data}", f"train.out_dir={run}", "train.max_steps=16",
                   "data.validate=false", "train.checkpoint_every=4", "train.keep_last=0", *TINY], capfd)
    assert rc == 0, err[-2000:]
    from xclass.train.report import read_metrics

    losses = [r["loss"] for r in read_metrics(run) if "loss" in r]
    assert sum(not np.isfinite(v) for v in losses) == 1 and np.isfinite(losses[-1])
    assert _all_finite(run)
    assert len(glob.glob(os.path.join(run, "checkpoints", "step_*"))) >= 3
