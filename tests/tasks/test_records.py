"""Task records (xclass/tasks/): every registered record is complete, and every per-task lookup
in the package reads the records (a throw-away task registered here is seen by all of them)."""
from __future__ import annotations

import argparse
import ast
import os

import pytest

from xclass.tasks import TASKS, Table, Task, get_task, register_task, tables, task_names, unregister_task
from xclass.tasks.base import FEATURES, ID, LABEL

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _subparser(ap: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    sub = next(a for a in ap._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[name]


def _choices(p: argparse.ArgumentParser, flag: str):
    return next(a for a in p._actions if flag in a.option_strings).choices


def test_the_four_tasks_in_order():
    assert task_names()[:4] == ["face", "speaker", "quic", "xmc"]


@pytest.mark.parametrize("name", task_names())
def test_record_is_complete(name):
    """Schema columns exist, the encoder and decoder are registered, the protocols are known,
    the generator imports and writes this task, configs/<task>/cpu.yaml loads as this task, the
    demo arguments parse, the importers are `xclass import` kinds."""
    from xclass import components
    from xclass.cli.data import add_make_data_args
    from xclass.cli.main import build_parser
    from xclass.config import load_config
    from xclass.eval import PROTOCOLS
    from xclass.models import DECODERS, ENCODERS, ENCODER_TASKS
    from xclass.tasks.base import decoder_key

    components.load_all()
    t = get_task(name)
    for tname, table in ((name, t.table),) + t.side_tables:
        cols = {c.name for c in table.columns}
        assert "id" in cols or tname != name
        assert table.label_column in cols and all(c in cols for g in table.input_groups for c in g)
        assert set(table.decoder_inputs) <= cols
        assert decoder_key(tname) in DECODERS
        if tname != name:
            assert table.file, f"side table {tname} names no file"
    assert t.default_encoder in ENCODERS and name in ENCODER_TASKS[t.default_encoder]
    assert t.protocols and set(t.protocols) <= set(PROTOCOLS)
    assert (t.pairs is not None) == bool({"face", "speaker"} & set(t.protocols))
    assert t.generator_class().task == name
    cfg = os.path.join(ROOT, t.configs, "cpu.yaml")
    assert load_config(cfg).data.task == name
    args = add_make_data_args(argparse.ArgumentParser()).parse_args(["--task", name, "--out", "x", *t.demo_args])
    assert args.task == name
    imp = _subparser(build_parser(), "import")
    sub = next(a for a in imp._actions if isinstance(a, argparse._SubParsersAction))
    assert set(t.importers) <= set(sub.choices)


@pytest.fixture
def toy_task():
    """A throw-away task: features-only rows with one class id, reusing the quic decoder and
    generator, evaluated by identification."""
    toy = register_task(Task(name="toy_features", table=Table(columns=(ID, LABEL, FEATURES),
                                                              input_groups=(("features",),), label_column="label",
                                                              decoder_inputs=()),
                             default_encoder="mlp", generator="xclass.data.gen_quic:QuicGenerator",
                             protocols=("ident",), demo_args=("--num-classes", "10"), decoder="quic"))
    try:
        yield toy
    finally:
        unregister_task(toy.name)
    assert "toy_features" not in TASKS


def test_lookups_see_a_new_task(toy_task):
    import numpy as np

    from xclass.cli.main import build_parser
    from xclass.config import load_config
    from xclass.data import GENERATORS
    from xclass.data.gen_quic import QuicGenerator
    from xclass.data.schema import INPUT_GROUPS, LABEL_COLUMN, TASK_COLUMNS, TASKS as SCHEMA_TASKS
    from xclass.models import DEFAULT_ENCODER, decode_batch, input_columns

    name = toy_task.name
    ap = build_parser()
    assert name in _choices(_subparser(ap, "make-data"), "--task")
    assert name in _choices(_subparser(ap, "validate-data"), "--task")
    assert name in _choices(_subparser(ap, "demo"), "--task")
    assert name in SCHEMA_TASKS and name in TASK_COLUMNS and TASK_COLUMNS[name] == (ID, LABEL, FEATURES)
    assert INPUT_GROUPS[name] == (("features",),) and LABEL_COLUMN[name] == "label"
    assert dict(tables())[name] is toy_task.table
    assert DEFAULT_ENCODER[name] == "mlp" and GENERATORS.get(name) is QuicGenerator
    assert input_columns(name, "mlp") == ["label", "features"]
    inputs, labels = decode_batch(name, {"features": np.ones((3, 4), np.float32),
                                         "label": np.array([0, 1, 2])}, {})
    assert inputs["features"].shape == (3, 4) and labels.tolist() == [0, 1, 2]
    cfg = load_config(None, [f"data.task={name}"])
    assert cfg.data.task == name


def test_unknown_task_names_the_known_ones():
    from xclass.registry import UnknownNameError

    with pytest.raises(UnknownNameError, match="known: face, quic, speaker, xmc"):
        get_task("nope")


def _task_literals(tree: ast.AST, names: set):
    """Dict literals keyed by >= 2 task names, and tuple/list literals of >= 2 task names that
    are not the ``tasks=`` argument of an encoder registration."""
    allowed = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            allowed.update(id(k.value) for k in node.keywords if k.arg == "tasks")
    for node in ast.walk(tree):
        if isinstance(node, ast.Dict):
            keys = [k.value for k in node.keys if isinstance(k, ast.Constant)]
        elif isinstance(node, (ast.Tuple, ast.List)) and id(node) not in allowed:
            keys = [e.value for e in node.elts if isinstance(e, ast.Constant)]
        else:
            continue
        if len(names & {k for k in keys if isinstance(k, str)}) >= 2:
            yield node.lineno


#: files whose task-name literals are not per-task tables, with the reason
NOT_TASK_TABLES = {
    os.path.join("xclass", "eval", "__init__.py"): "the evaluation protocol names (face/speaker verification "
                                                  "conventions), which the task records refer to",
}


def test_no_per_task_tables_outside_the_records():
    """Per-task string tables live in xclass/tasks/ only (every other module reads the records)."""
    names = set(task_names())
    found = []
    for d, _, files in os.walk(os.path.join(ROOT, "xclass")):
        if os.path.relpath(d, ROOT).startswith(os.path.join("xclass", "tasks")):
            continue
        for f in files:
            if f.endswith(".py") and os.path.relpath(os.path.join(d, f), ROOT) not in NOT_TASK_TABLES:
                path = os.path.join(d, f)
                with open(path, encoding="utf-8") as fh:
                    tree = ast.parse(fh.read())
                found += [f"{os.path.relpath(path, ROOT)}:{n}" for n in _task_literals(tree, names)]
    assert not found, f"per-task tables outside xclass/tasks/: {found}"
