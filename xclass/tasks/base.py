"""The task record: everything xclass knows about one task, in one frozen dataclass.

A task (face, speaker, quic, xmc, ...) is one module under ``xclass/tasks/`` that builds a
:class:`Task` and registers it in :data:`TASKS`. The data schema, the validator, the decoders,
the default encoder, ``make-data``, the demo, the evaluation steps and the CLI choices all look
the task up here by name instead of keeping their own per-task tables. This module imports no
other xclass module except the registry, so every layer may consult it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator, List, Mapping, Optional, Sequence, Tuple

from xclass.registry import Registry


@dataclass(frozen=True)
class Col:
    """One column spec.

    kind: ``int`` (integer scalar), ``bool``, ``string``, ``fixed`` (fixed_size_list),
    ``list`` (list / large_list), ``image`` (fixed_size_list<uint8> or binary PNG/JPEG).
    value: element family of list kinds: ``int``, ``float`` or ``uint8``.
    finite: float values must not be NaN/Inf.
    """

    name: str
    kind: str
    value: str = ""
    required: bool = True
    finite: bool = False


#: Columns most tables share: the row id, a single class id, the generic dense input.
ID = Col("id", "int")
LABEL = Col("label", "int")
FEATURES = Col("features", "fixed", "float", required=False, finite=True)


@dataclass(frozen=True)
class Table:
    """One Parquet table kind of a task (a split, or a side table such as ``labels.parquet``).

    columns: :class:`Col` specs (required ones always present);
    input_groups: a file must hold every column of at least one group (its model input);
    label_column: the column whose class ids must lie in ``[0, num_classes)``;
    decoder_inputs: the native columns the task decoder reads (``input_columns``);
    token_weights: rows may carry a ``token_weights`` column next to ``tokens`` (read for
    encoders that weight tokens when meta.json says the data has it);
    file: the file name of a side table in a dataset directory (e.g. ``labels.parquet``);
    meta_inputs: ``(key, columns)`` pairs: native-decoder columns read only when meta.json's
    ``inputs`` has ``key`` (data imported before a column existed reads as before).
    """

    columns: Tuple[Col, ...]
    input_groups: Tuple[Tuple[str, ...], ...]
    label_column: str
    decoder_inputs: Tuple[str, ...]
    token_weights: bool = False
    file: str = ""
    meta_inputs: Tuple[Tuple[str, Tuple[str, ...]], ...] = ()


@dataclass(frozen=True)
class PairFile:
    """The verification file of a task's test split: file name, its key in meta.json and the
    three columns (first id, second id, same-class bool)."""

    file: str
    meta_key: str
    columns: Tuple[str, str, str]


@dataclass(frozen=True)
class Task:
    """One task, as data.

    name: the ``data.task`` value;
    table: the schema of its train/test splits; side_tables: other table kinds by name
    (validated with ``validate-data --task NAME``, e.g. ``xmc_labels``);
    multi_label: rows carry a label list (XMC: documents, shared label space) instead of one
    class id (open set: held-out test classes);
    default_encoder: the ``model.encoder`` used when a config names none;
    generator: ``"module:Class"`` of its synthetic data generator (``make-data``);
    protocols: evaluation protocols run on a trained model, in order (``evaluate --protocol``);
    pairs: the verification pairs/trials file of the test split, if the task has one;
    demo_args: the ``make-data`` arguments of the demo dataset (small: minutes on 2 CPU cores);
    importers: the ``xclass import`` kinds that write this task's schema;
    decoder: the ``DECODERS`` key of its decoder when it reuses another task's (default: name);
    sequence_inputs: decoded inputs whose axis 1 is a length that varies between batches (speaker
    frames, XMC tokens): dynamic in an exported ONNX model;
    input_keys: dotted keys of meta.json ``inputs`` that a trained encoder depends on (image
    size, filterbank bins, ...): a run encodes another dataset (``export-index --data``) only
    when the dataset agrees with the run's training data on each key the latter has;
    configs: the folder of its example configs (``configs/<name>/``, with ``cpu.yaml``).
    """

    name: str
    table: Table
    default_encoder: str
    generator: str
    protocols: Tuple[str, ...]
    demo_args: Tuple[str, ...]
    importers: Tuple[str, ...] = ()
    multi_label: bool = False
    pairs: Optional[PairFile] = None
    side_tables: Tuple[Tuple[str, Table], ...] = ()
    decoder: str = ""
    input_keys: Tuple[str, ...] = ()
    sequence_inputs: Tuple[str, ...] = ()

    @property
    def configs(self) -> str:
        return f"configs/{self.name}"

    def generator_class(self) -> Any:
        """Import and return the generator class named by :attr:`generator`."""
        import importlib

        module, _, attr = self.generator.partition(":")
        return getattr(importlib.import_module(module), attr)


TASKS: Registry[Task] = Registry("task")


def register_task(task: Task) -> Task:
    """Register ``task`` under its name (a duplicate name is an error); returns it."""
    TASKS.register(task.name)(task)
    return task


def unregister_task(name: str) -> None:
    """Remove a task record (tests register throw-away tasks and clean up)."""
    TASKS.unregister(name)


def task_names() -> List[str]:
    """Registered task names in registration order (face, speaker, quic, xmc first)."""
    return TASKS.in_order()


def get_task(name: str) -> Task:
    """The record of task ``name``; an unknown name raises ``UnknownNameError`` listing the known."""
    return TASKS.get(name)


def pair_file(protocol: str) -> PairFile:
    """The pairs/trials file layout of a verification protocol (``face``, ``speaker``): that of
    the first task whose protocols include it and that has a pairs file."""
    for name in TASKS.in_order():
        t = TASKS.get(name)
        if protocol in t.protocols and t.pairs is not None:
            return t.pairs
    raise ValueError(f"protocol {protocol!r} has no verification pairs file (no task with pairs runs it)")


def decoder_key(name: str) -> str:
    """The ``DECODERS`` key of table kind ``name``: a task's ``decoder`` (default its name); side
    tables (``xmc_labels``) and unknown names are their own key."""
    return (TASKS.get(name).decoder or name) if name in TASKS else name


def tables() -> List[Tuple[str, Table]]:
    """Every table kind by name: each task's split table, then its side tables."""
    out: List[Tuple[str, Table]] = []
    for t in (TASKS.get(n) for n in TASKS.in_order()):
        out.append((t.name, t.table))
        out.extend(t.side_tables)
    return out


class TableView(Mapping):
    """A read-only live mapping table name -> ``getter(Table)`` over every registered table
    (tasks and side tables), e.g. the schema's ``TASK_COLUMNS``; a task registered later is
    seen at once. An unknown name raises ``KeyError``."""

    def __init__(self, getter: Callable[[Table], Any], tasks_only: bool = False) -> None:
        self._getter, self._tasks_only = getter, tasks_only

    def _tables(self) -> Mapping[str, Table]:
        if self._tasks_only:
            return {n: TASKS.get(n).table for n in TASKS.in_order()}
        return dict(tables())

    def __getitem__(self, name: str) -> Any:
        return self._getter(self._tables()[name])

    def __iter__(self) -> Iterator[str]:
        return iter(self._tables())

    def __len__(self) -> int:
        return len(self._tables())


class TaskView(Mapping):
    """A read-only live mapping task name -> ``getter(Task)`` (e.g. ``DEFAULT_ENCODER``)."""

    def __init__(self, getter: Callable[[Task], Any]) -> None:
        self._getter = getter

    def __getitem__(self, name: str) -> Any:
        if name not in TASKS:
            raise KeyError(name)
        return self._getter(TASKS.get(name))

    def __iter__(self) -> Iterator[str]:
        return iter(TASKS.in_order())

    def __len__(self) -> int:
        return len(TASKS)


class NamesView(Sequence):
    """The registered task names as a live read-only sequence (``schema.TASKS``): usable as
    argparse ``choices``, in ``for``/``in`` and ``+ (more,)``."""

    def __getitem__(self, i: Any) -> Any:
        return tuple(task_names())[i]

    def __len__(self) -> int:
        return len(TASKS)

    def __contains__(self, name: object) -> bool:
        return name in TASKS

    def __add__(self, other: Tuple[str, ...]) -> Tuple[str, ...]:
        return tuple(task_names()) + tuple(other)

    def __repr__(self) -> str:
        return repr(tuple(task_names()))
