"""A schedule the data cannot support is reported in one line on rank 0 (few steps per epoch,
warm-up covering the whole run); a reasonable one is silent."""
import logging

import pytest

from tests.train.common import features_config, write_features_data
from xclass.parallel import ParallelContext
from xclass.train.schedule import schedule_warning
from xclass.train.setup import build_setup


def test_schedule_warning_cases():
    assert schedule_warning(50, 500, 10) == ""
    w = schedule_warning(2, 40, 10, batch_size=128, train_rows=300)
    assert "only 2 optimizer step(s) per epoch (300 training rows, global batch 128)" in w and "\n" not in w
    assert "warm-up" not in w
    w = schedule_warning(50, 10, 10)
    assert "optim.warmup_steps 10 >= 10 total steps" in w and "per epoch" not in w
    assert schedule_warning(2, 40, 0, max_steps=40) == ""          # max_steps decides: epochs don't matter
    both = schedule_warning(1, 3, 5)
    assert both.count("; ") == 1 and both.startswith("warning: ")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_features_data(str(tmp_path_factory.mktemp("feat")), num_classes=10, rows_per_class=30)


class _Catch(logging.Handler):
    def __init__(self):
        super().__init__()
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())


@pytest.mark.parametrize("extra, expect", [
    (("data.batch_size=128", "train.epochs=2", "train.max_steps=0", "optim.warmup_steps=10"),
     ["only 2 optimizer step(s) per epoch", "global batch 128)", "warmup_steps 10 >= 4"]),
    (("data.batch_size=10", "train.epochs=2", "train.max_steps=0", "optim.warmup_steps=5"), []),
])
def test_build_setup_warns_on_rank0(data, tmp_path, extra, expect):
    cfg = features_config(data, str(tmp_path / "run"), *extra)
    ctx = ParallelContext.single()
    log = logging.getLogger(f"xclass.rank{ctx.rank}")
    h = _Catch()
    log.addHandler(h)
    try:
        build_setup(cfg, ctx)
    finally:
        log.removeHandler(h)
    warnings = [m for m in h.lines if m.startswith("warning:")]
    if expect:
        assert len(warnings) == 1 and all(e in warnings[0] for e in expect), h.lines
    else:
        assert warnings == []
