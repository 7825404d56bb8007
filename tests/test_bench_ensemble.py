"""tools/bench_ensemble.py: single runs and their fused ensemble on verification trials; the
ensemble's EER is that of the mean of the runs' cosines, computed here from the single exports."""
import json
import os
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_ensemble_rows_against_the_mean_cosine(tmp_path):
    from sklearn.metrics import roc_curve

    from xclass.data import make_data

    data = str(tmp_path / "data")
    make_data("speaker", data, 10, rows_per_class=6, test_classes=6, test_rows_per_class=8, num_pairs=600, seed=0,
              progress=False)
    out = str(tmp_path / "out")
    res = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "bench_ensemble.py"), "--config",
                          "configs/speaker/cpu.yaml", "--pairs", os.path.join(data, "trials.parquet"), "--seeds", "0,1",
                          "--groups", "2", "--out", out, "--png", os.path.join(out, "e.png"), f"data.path={data}",
                          "train.max_steps=3", "data.batch_size=16"],
                         cwd=ROOT, capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=ROOT))
    assert res.returncode == 0, res.stderr
    rows = [json.loads(line) for line in res.stdout.splitlines()]
    assert [r["kind"] for r in rows] == ["single", "single", "ensemble"] and rows[2]["seeds"] == [0, 1]
    assert os.path.getsize(os.path.join(out, "e.png")) > 0
    assert rows[2]["members_mean_eer"] == pytest.approx((rows[0]["eer"] + rows[1]["eer"]) / 2, abs=1e-6)

    trials = pq.read_table(os.path.join(data, "trials.parquet")).to_pydict()
    cos = []
    for s in (0, 1):
        t = pq.read_table(os.path.join(out, f"eval_{s}", "index", "test_embeddings.parquet"))
        e = np.stack(t.column("embedding").to_numpy(zero_copy_only=False)).astype(np.float64)
        e /= np.linalg.norm(e, axis=1, keepdims=True)
        pos = {int(i): k for k, i in enumerate(t.column("id").to_pylist())}
        a = np.array([pos[int(i)] for i in trials["enroll"]])
        b = np.array([pos[int(i)] for i in trials["test"]])
        cos.append((e[a] * e[b]).sum(1))
    score, target = (cos[0] + cos[1]) / 2, np.asarray(trials["target"], bool)
    fpr, tpr, _ = roc_curve(target, score, drop_intermediate=False)
    i = np.argmin(np.abs((1 - tpr) - fpr))
    assert rows[2]["eer"] == pytest.approx(max(fpr[i], 1 - tpr[i]), abs=1e-6)
    assert len(score) == 600 and len({rows[0]["eer"], rows[1]["eer"], rows[2]["eer"]}) > 1   # not a trivial tie
