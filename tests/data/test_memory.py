"""Generation runs in bounded memory: 10x more classes/rows must not raise peak RSS much.

Each generation runs in a fresh subprocess that reports its own peak RSS
(``ru_maxrss``), so the numbers are not polluted by the test process.
"""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

# Peak RSS of this process image: VmHWM is reset by exec, while ru_maxrss keeps the high-water mark
# of the forked copy of the parent (a pytest process that grew to 650 MB made every child report 650).
_CHILD = """
import json, resource, sys
from xclass.data import make_data
task, out, c, kw = sys.argv[1], sys.argv[2], int(sys.argv[3]), json.loads(sys.argv[4])
meta = make_data(task, out, c, seed=0, progress=False, **kw)
try:
    with open("/proc/self/status") as f:
        rss = next(int(l.split()[1]) for l in f if l.startswith("VmHWM:")) / 1024
except OSError:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"rss_mb": rss, "rows": meta["splits"]["train"]["rows"]}))
"""


def _peak(task, out, classes, **kw):
    res = subprocess.run([sys.executable, "-c", _CHILD, task, str(out), str(classes), json.dumps(kw)],
                         capture_output=True, text=True, timeout=120, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_quic_million_classes_bounded_memory(tmp_path):
    small = _peak("quic", tmp_path / "s", 100_000, rows_per_class=1, test_classes=100, test_rows_per_class=2)
    big = _peak("quic", tmp_path / "b", 1_000_000, rows_per_class=1, test_classes=1000, test_rows_per_class=2)
    assert big["rows"] == 1_000_000
    # ~200 MB of rows written; a per-class or per-row buffer would add >= 100 MB.
    assert big["rss_mb"] - small["rss_mb"] < 60, (small, big)
    assert big["rss_mb"] < 600, big


@pytest.mark.slow
def test_xmc_million_labels_bounded_memory(tmp_path):
    small = _peak("xmc", tmp_path / "s", 1_000_000, num_rows=30_000, num_test_rows=1000)
    big = _peak("xmc", tmp_path / "b", 1_000_000, num_rows=300_000, num_test_rows=1000)
    assert big["rows"] == 300_000
    # Only O(num_labels) state (Zipf CDF, label counts) is allowed; rows stream through.
    assert big["rss_mb"] - small["rss_mb"] < 60, (small, big)
    assert big["rss_mb"] < 600, big
