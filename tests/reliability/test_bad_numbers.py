"""Numeric options out of range end in one error line naming the option (exit 2), before any
output is written: make-data counts, split-gallery's fraction, the XMC commands' --k."""
import os

import pytest

from xclass.cli import main
from xclass.data.generate import make_data


@pytest.mark.parametrize("kw,message", [({"rows_per_class": -1}, "rows_per_class must be >= 1, got -1"),
                                        ({"test_classes": -2}, "test_classes must be >= 1, got -2"),
                                        ({"test_rows_per_class": -3}, "test_rows_per_class must be >= 1, got -3"),
                                        ({"rows_per_file": 0}, "rows_per_file must be >= 1, got 0"),  # was a hang
                                        ({"row_group_rows": 0}, "row_group_rows must be >= 1, got 0"),
                                        ({"num_pairs": -1}, "num_pairs must be >= 0, got -1")])
def test_make_data_counts(tmp_path, kw, message):
    with pytest.raises(ValueError, match=message):
        make_data("quic", str(tmp_path / "d"), 10, progress=False, **kw)
    assert not os.path.exists(tmp_path / "d")


def test_make_data_xmc_rows(tmp_path):
    with pytest.raises(ValueError, match="num_rows must be >= 1, got -5"):     # wrote an empty train split
        make_data("xmc", str(tmp_path / "d"), 10, num_rows=-5, progress=False)
    assert not os.path.exists(tmp_path / "d")


def test_split_gallery_fraction(tmp_path, capsys):
    assert main(["split-gallery", "--input", str(tmp_path / "x.parquet"), "--out", str(tmp_path / "s"),
                 "--query-fraction", "2"]) == 2
    assert capsys.readouterr().err.strip() == "xclass split-gallery: error: --query-fraction must be in [0, 1), got 2.0"


@pytest.mark.parametrize("argv", [["tfidf-baseline", "--data", "d", "--k", "0"],
                                  ["import", "text", "--out", "o", "--train", "a", "--test", "b", "--min-df", "x"]])
def test_argparse_rejects_before_reading(tmp_path, capsys, argv):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("xclass ") and ": error: argument --" in err[-1]


def test_import_text_vocabulary_bounds(tmp_path, capsys):
    assert main(["import", "text", "--out", str(tmp_path / "o"), "--train", "a.jsonl", "--test", "b.jsonl",
                 "--min-df", "0", "--no-progress"]) == 2
    assert "need --min-df >= 1 and --max-vocab >= 0" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "o")


@pytest.mark.parametrize("argv,message", [
    (["fuse", "--data", "d", "--work", "w", "--rankings", "nameonly"], "xclass xmc fuse: error: --rankings 'nameonly': expected NAME=PATH"),
    (["fuse", "--data", "d", "--work", "w", "--weights", "tfidf_knn=x"], "fusion weight tfidf_knn='x': not a number"),
    (["evaluate", "--run", "/nonexistent-run", "--work", "w"], "xclass xmc evaluate: error: /nonexistent-run"),
])
def test_xmc_module_cli_errors_are_one_line(capsys, argv, message):
    from xclass.cli.xmc import main as xmc_main

    assert xmc_main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
