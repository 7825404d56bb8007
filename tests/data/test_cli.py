"""CLI glue: make-data / validate-data parse, run, and fail with a clear message and exit code."""
from __future__ import annotations

import argparse
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from xclass.cli.data import add_make_data_args, add_validate_data_args, run_make_data, run_validate_data


def parse(adder, argv):
    return adder(argparse.ArgumentParser()).parse_args(argv)


def test_make_data_then_validate(tmp_path, capsys):
    out = tmp_path / "sp"
    args = parse(add_make_data_args, ["--task", "speaker", "--out", str(out), "--num-classes", "6",
                                      "--rows-per-class", "3", "--opt", "max_frames=12", "--opt", "min_frames=4",
                                      "--validate", "--no-progress"])
    assert run_make_data(args) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["rows"]["train"] == 18
    meta = json.load(open(out / "meta.json"))
    assert meta["inputs"]["fbank"]["max_frames"] == 12
    v = parse(add_validate_data_args, [str(out / "train.parquet"), "--task", "speaker", "--num-classes", "6"])
    assert run_validate_data(v) == 0


def test_make_data_bad_option_exit_code(tmp_path, capsys):
    args = parse(add_make_data_args, ["--task", "face", "--out", str(tmp_path / "f"), "--opt", "image_size"])
    assert run_make_data(args) == 2
    assert "KEY=VALUE" in capsys.readouterr().err
    args = parse(add_make_data_args, ["--task", "face", "--out", str(tmp_path / "f"), "--opt", "colour=1"])
    assert run_make_data(args) == 2
    assert "colour" in capsys.readouterr().err
    assert not (tmp_path / "f").exists()


def test_validate_data_reports_row(tmp_path, capsys):
    p = str(tmp_path / "x.parquet")
    pq.write_table(pa.table({"id": np.arange(3), "labels": pa.array([[0], [], [1]], pa.list_(pa.int64())),
                             "tokens": pa.array([[1], [2], [3]], pa.list_(pa.int32()))}), p)
    v = parse(add_validate_data_args, [p, "--task", "xmc", "--num-classes", "2"])
    assert run_validate_data(v) == 1
    assert "row 1: column 'labels': empty label list" in capsys.readouterr().err
