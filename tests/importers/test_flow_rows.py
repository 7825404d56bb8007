"""A record batch of one-row-per-flow input converted at once (xclass/importers/flow_rows.py)
gives what the per-row conversion gives, row for row; a batch with a row the checks refuse goes
row by row, so the error still names the row."""
from __future__ import annotations

import json
import pickle

import numpy as np
import pyarrow.parquet as pq
import pytest

from xclass.importers import ImportError_
from xclass.importers import flow_rows as flow_batch
from xclass.importers.flow_rows import row_packets
from xclass.importers.flows import import_flows

SMAP = {"duration_s": "DUR", "bytes_up": "B"}
PORTS = ("PORT", "PROTO")


def _batch(rng, b, fractional):
    """Columns of ``b`` flows of 1-60 packets: a PPI column (JSON text) and the same packets as
    three list columns, two mapped statistics, a port and a protocol (numbers and names)."""
    cols = {k: [] for k in ("SNI", "PPI", "S", "D", "T", "DUR", "B", "PORT", "PROTO")}
    for i in range(b):
        k = int(rng.integers(1, 61))
        sizes = rng.integers(0, 32768, k).astype(float)
        iat = rng.integers(0, 500, k).astype(float)
        if fractional:
            sizes[::3] += 0.5
            iat = iat + rng.random(k)
        dirs = rng.choice([1, -1], k).tolist()
        cols["SNI"].append(f"s{i % 5}")
        cols["PPI"].append(json.dumps([iat.tolist(), dirs, sizes.tolist()]))
        cols["S"].append(sizes.tolist()), cols["D"].append(dirs), cols["T"].append(iat.tolist())
        cols["DUR"].append(float(rng.random() * 9)), cols["B"].append(int(rng.integers(0, 10 ** 9)))
        cols["PORT"].append(int(rng.integers(0, 65536))), cols["PROTO"].append(["tcp", 17, "UDP", 6.0][i % 4])
    return cols


def _per_row(cols, ppi, n):
    recs = [dict(zip(cols, vals)) for vals in zip(*cols.values())]
    return [(str(r["SNI"]), row_packets(r, "f", i, ppi, ["S", "D", "T"], n, SMAP, PORTS, 3)) for i, r in enumerate(recs)]


@pytest.mark.parametrize("fractional", [False, True])
@pytest.mark.parametrize("ppi", ["PPI", None])
def test_a_batch_gives_what_each_row_gives(fractional, ppi):
    cols = _batch(np.random.default_rng(int(fractional) + 2 * (ppi is None)), 300, fractional)
    fast = list(pickle.loads(pickle.dumps(flow_batch.convert(cols, "SNI", ppi, ["S", "D", "T"], 30, SMAP, PORTS, 3))))
    slow = _per_row(cols, ppi, 30)
    assert [f[0] for f in fast] == [s[0] for s in slow]
    for (_, a), (_, b) in zip(fast, slow):
        assert a.keys() == b.keys()
        for key in ("sizes", "dirs", "iat", "num", "port", "proto", "source"):
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)
            assert np.asarray(a[key]).dtype == np.asarray(b[key]).dtype, key
        if fractional:  # sums of fractions in another order: the last bit may differ
            np.testing.assert_allclose(a["stats"], b["stats"], rtol=1e-6)
        else:
            np.testing.assert_array_equal(a["stats"], b["stats"])


def _one_bad(mutate):
    cols = _batch(np.random.default_rng(7), 20, False)
    mutate(cols)
    return cols


BAD = {
    "not JSON": lambda c: c["PPI"].__setitem__(4, "[[0, 1], [1"),
    "two lists": lambda c: c["PPI"].__setitem__(4, "[[0], [1]]"),
    "direction 0": lambda c: c["PPI"].__setitem__(4, "[[0, 1], [1, 0], [60, 60]]"),
    "negative size": lambda c: c["PPI"].__setitem__(4, "[[0, 1], [1, -1], [-1, 60]]"),
    "size over 32767": lambda c: c["PPI"].__setitem__(4, "[[0, 1], [1, -1], [40000, 60]]"),
    "NaN size": lambda c: c["PPI"].__setitem__(4, "[[0, 1], [1, -1], [NaN, 60]]"),
    "negative IAT": lambda c: c["PPI"].__setitem__(4, "[[0, -1], [1, -1], [60, 60]]"),
    "unequal lists": lambda c: c["PPI"].__setitem__(4, "[[0, 1], [1, -1], [60]]"),
    "empty lists": lambda c: c["PPI"].__setitem__(4, "[[], [], []]"),
    "nested list": lambda c: c["PPI"].__setitem__(4, "[[0, 1], [1, -1], [[60], [60]]]"),
    "text size": lambda c: c["PPI"].__setitem__(4, '[[0, 1], [1, -1], ["big", 60]]'),
    "missing statistic": lambda c: c["DUR"].__setitem__(4, None),
    "infinite statistic": lambda c: c["B"].__setitem__(4, float("inf")),
    "port 70000": lambda c: c["PORT"].__setitem__(4, 70000),
    "port 1.5": lambda c: c["PORT"].__setitem__(4, 1.5),
    "protocol icmp": lambda c: c["PROTO"].__setitem__(4, "icmp"),
    "too long for the batch": lambda c: c["PPI"].__setitem__(
        4, json.dumps([[0] * 3000, [1] * 3000, [1500] * 3000])),
}


@pytest.mark.parametrize("what", sorted(BAD))
def test_a_batch_with_a_bad_row_is_refused(what):
    with pytest.raises(flow_batch.Refused):
        flow_batch.convert(_one_bad(BAD[what]), "SNI", "PPI", ["S", "D", "T"], 30, SMAP, PORTS, 3)


def _write_csv(path, cols):
    with open(path, "w") as f:
        f.write("SNI,PPI,DUR,B,PORT,PROTO\n")
        for r in zip(*(cols[k] for k in ("SNI", "PPI", "DUR", "B", "PORT", "PROTO"))):
            cells = [json.dumps(v) if i == 1 else "" if v is None else str(int(v) if i == 5 and isinstance(v, float) else v)
                     for i, v in enumerate(r)]  # a CSV protocol is text: "6", not "6.0"
            f.write(",".join(cells) + "\n")


def _import(tmp_path, cols, name):
    _write_csv(tmp_path / f"{name}.csv", cols)
    return import_flows([str(tmp_path / f"{name}.csv")], str(tmp_path / name), label_column="SNI", ppi_column="PPI",
                        stats_map="duration_s=DUR,bytes_up=B", port_column="PORT", proto_column="PROTO",
                        show_progress=False)


@pytest.mark.parametrize("what, message", [("negative size", "row 4: packet sizes must be in [0, 32767]"),
                                           ("NaN size", "row 4: packet sizes must be in [0, 32767]"),
                                           ("port 70000", "row 4, column PORT: a port must be an integer"),
                                           ("missing statistic", "row 4, column DUR: missing or non-finite")])
def test_the_error_of_a_refused_batch_names_its_row(tmp_path, what, message):
    with pytest.raises(ImportError_, match=message.replace("[", r"\[").replace("]", r"\]")):
        _import(tmp_path, _one_bad(BAD[what]), "bad")
    assert not (tmp_path / "bad").exists()


def test_a_flow_too_long_for_the_batch_is_imported_row_by_row(tmp_path):
    cols = _one_bad(BAD["too long for the batch"])
    _import(tmp_path, cols, "long")
    t = pq.read_table(tmp_path / "long" / "train.parquet").to_pydict()
    row = t["id"].index(4)
    assert t["num_packets"][row] == 30 and t["pkt_sizes"][row] == [1500] * 30
    np.testing.assert_allclose(t["flow_stats"][row][1:], [cols["B"][4], 0, 3000, 0, 1500, 0, 0])
