"""tools/bench_tasks.py and bench_traffic.py scoring helpers on hand-made cases (the benchmark itself
trains)."""
import json
import os
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))

import task_splits  # noqa: E402
import bench_traffic  # noqa: E402


def test_tie_vote_takes_the_majority_of_the_tied_nearest_rows():
    g_lab = np.array([7, 3, 3, 5, 3])
    sim = np.array([[0.9, 0.9, 0.9, 0.2, 0.1],      # tie {7, 3, 3} -> 3 (1-NN says 7)
                    [0.1, 0.2, 0.3, 0.95, 0.3],     # no tie -> 5
                    [0.5, 0.5, 0.1, 0.5, 0.1],      # tie {7, 3, 5}, one each -> first in gallery order: 7
                    [0.4, 0.1, 0.1, 0.4 - 1e-9, 0.0]])  # within tolerance: {7, 5} -> 7
    np.testing.assert_array_equal(bench_traffic.tie_vote(sim, g_lab), [3, 5, 7, 7])


def test_nn1_plain_and_tie_voted_on_duplicate_gallery_rows():
    gallery = np.array([[0.0, 1.0], [0.0, 1.0], [0.0, 1.0], [1.0, 0.0]])
    g_lab = np.array([1, 2, 2, 4])
    queries = np.array([[0.0, 1.0], [1.0, 0.0]])
    for cosine in (True, False):
        res = bench_traffic.nn1(gallery, g_lab, queries, np.array([2, 4]), cosine)
        assert res == {"1nn_acc": 0.5, "1nn_tievote_acc": 1.0}


def test_nn1_with_groups_looks_in_the_query_group_first():
    gallery = np.array([[0.0, 1.0], [0.1, 1.0]])
    res = bench_traffic.nn1(gallery, np.array([1, 2]), np.array([[0.0, 1.0]]), np.array([2]), False,
                          (np.array([53, 443]), np.array([443])))
    assert res["1nn_acc"] == 1.0                     # the nearer row has another port


def test_validation_data_holds_out_training_rows_only(tmp_path):
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    data = tmp_path / "d"
    data.mkdir()
    labels = np.repeat([0, 1, 2], 10)
    pq.write_table(pa.table({"id": np.arange(30), "label": labels}), data / "train.parquet")
    pq.write_table(pa.table({"id": np.arange(30, 35), "label": np.full(5, 3)}), data / "test.parquet")
    (data / "meta.json").write_text(json.dumps({"task": "quic", "num_classes": 3, "test_classes": 1,
                                                "class_names": list("abcd"), "splits": {}}))
    path = task_splits.validation_data(str(data), 0.3, 0, str(tmp_path / "out"))
    tr, te = (pq.read_table(f"{path}/{s}.parquet").to_pydict() for s in ("train", "test"))
    assert sorted(tr["id"] + te["id"]) == list(range(30))            # the real test rows are not used
    assert np.bincount(te["label"]).tolist() == [3, 3, 3]             # 30 % of each class
    meta = json.load(open(f"{path}/meta.json"))
    assert meta["splits"]["test"]["rows"] == 9 and meta["class_names"] == list("abc")


def test_open_validation_holds_out_whole_training_classes(tmp_path):
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    data = tmp_path / "d"
    data.mkdir()
    labels = np.repeat([0, 1, 2, 3], 5)
    pq.write_table(pa.table({"id": np.arange(20), "label": labels}), data / "train.parquet")
    (data / "meta.json").write_text(json.dumps({"task": "quic", "num_classes": 4, "test_classes": 1,
                                                "class_names": list("abcde"), "splits": {}}))
    path = task_splits.validation_data(str(data), 0.0, 0, str(tmp_path / "out"), classes=2)
    tr, te = (pq.read_table(f"{path}/{s}.parquet").to_pydict() for s in ("train", "test"))
    meta = json.load(open(f"{path}/meta.json"))
    assert meta["num_classes"] == 2 and meta["test_classes"] == 2
    assert sorted(set(tr["label"])) == [0, 1] and sorted(set(te["label"])) == [2, 3]
    names = meta["class_names"]                       # each row keeps its class name
    orig = {i: "abcd"[i // 5] for i in range(20)}
    assert all(names[lab] == orig[i] for i, lab in zip(tr["id"] + te["id"], tr["label"] + te["label"]))
    assert len(te["id"]) == 10 and not set(tr["id"]) & set(te["id"])


def test_subset_rows_split_host_name_labels():
    meta = {"class_names": ["DNS", "TLS.Apple", "TLS.Microsoft", "NTP", "Skype_Teams.SkypeCall"]}
    truth = np.array([1, 1, 2, 0, 3, 3, 4])
    pred = np.array([1, 2, 2, 0, 0, 3, 4])
    rows = bench_traffic.subset_rows(meta, "m", pred, truth)
    assert [(r["subset"], r["value"], r["n"]) for r in rows] == [("host-name labels", 0.6667, 3),
                                                                 ("other labels", 0.75, 4)]
    assert bench_traffic.subset_rows({"class_names": ["a", "b"]}, "m", pred[:2] % 2, truth[:2] % 2) == []


def test_same_file_subsets():
    # gallery: label 1 from file 0, label 2 from files 0 and 1; queries: (1, 0) yes, (1, 1) no, (2, 1) yes, (3, 0) no
    same = bench_traffic.same_file_gallery(np.array([1, 2, 2]), np.array([0, 0, 1]), np.array([1, 1, 2, 3]),
                                         np.array([0, 1, 1, 0]))
    assert same.tolist() == [True, False, True, False]
    rows = bench_traffic.subset_rows({"class_names": ["a", "b", "c", "d"]}, "m", np.array([1, 2, 2, 3]),
                                   np.array([1, 1, 2, 3]), same)
    assert [(r["subset"], r["value"], r["n"]) for r in rows] == [("same-file gallery", 1.0, 2),
                                                                 ("no same-file gallery", 0.5, 2)]


def _row(protocol, method, seed, value, metric="1nn_acc", subset=None):
    r = {"task": "quic", "protocol": protocol, "method": method, "metric": metric, "seed": seed, "value": value}
    return json.dumps({**r, **({"subset": subset} if subset else {})})


def test_plot_tasks_summary_margins_per_seed_and_png(tmp_path, capsys):
    """Means, ranges and the trained embedding's per-seed margins, hand-computed; rows of another
    metric are left out; the PNG is written; a damaged row names file and line."""
    import plot_tasks

    rows = [_row("open", "xclass_trained", 0, 0.90), _row("open", "xclass_trained", 1, 0.80),
            _row("open", "xclass_random_init", 0, 0.85), _row("open", "xclass_random_init", 1, 0.79),
            _row("open", "knn_stats", 0, 0.70), _row("open", "xclass_trained", 0, 0.5, metric="1nn_tievote_acc"),
            _row("open", "xclass_trained", 0, 0.6, subset="host-name labels")]
    (tmp_path / "r.jsonl").write_text("\n".join(rows) + "\n")
    assert plot_tasks.main([str(tmp_path / "r.jsonl"), "--out", str(tmp_path / "p.png")]) == 0
    out = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    by = {(r["subset"], r["method"]): r for r in out}
    assert set(by) == {("all", "xclass_trained"), ("all", "xclass_random_init"), ("all", "knn_stats"),
                       ("host-name labels", "xclass_trained")}
    assert by["all", "xclass_trained"]["mean"] == 85.0 and by["all", "xclass_trained"]["min"] == 80.0
    assert by["all", "xclass_random_init"]["trained_margin_per_seed"] == [5.0, 1.0]
    assert by["all", "xclass_random_init"]["trained_margin_min"] == 1.0
    assert by["all", "knn_stats"]["trained_margin_per_seed"] == [20.0]          # seed 0 only: the common seeds
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (tmp_path / "bad.jsonl").write_text(rows[0] + "\n{\"protocol\": \"open\"}\n")
    with pytest.raises(SystemExit, match=r"bad\.jsonl: line 2: not a bench_tasks row"):
        plot_tasks.main([str(tmp_path / "bad.jsonl")])
    assert plot_tasks.main([str(tmp_path / "missing.jsonl")]) == 2


def test_plot_tasks_margins_of_a_lower_is_better_metric(tmp_path, capsys):
    import plot_tasks

    rows = [_row("verification", "xclass_trained", 0, 0.05, metric="eer"),
            _row("verification", "logmel_mean_std", 0, 0.20, metric="eer")]
    (tmp_path / "r.jsonl").write_text("\n".join(rows) + "\n")
    assert plot_tasks.main([str(tmp_path / "r.jsonl"), "--metric", "eer", "--out", str(tmp_path / "e.png")]) == 0
    out = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["trained_margin_per_seed"] for r in out if r["method"] == "logmel_mean_std"] == [[15.0]]
    assert (tmp_path / "e.png").stat().st_size > 0


def _flows(path, ids, labels, rng):
    import pyarrow as pa
    import pyarrow.parquet as pq

    n = len(ids)
    pq.write_table(pa.table({
        "id": ids, "label": labels, "flow_stats": rng.exponential(500.0, (n, 8)).tolist(),
        "pkt_sizes": rng.integers(40, 1500, (n, 30)).tolist(), "pkt_dirs": rng.choice([-1, 1], (n, 30)).tolist(),
        "pkt_iat": rng.exponential(20.0, (n, 30)).tolist(), "server_port": rng.choice([53, 443], n),
        "ip_proto": np.full(n, 17), "source_file": rng.integers(0, 2, n)}), path)
    return pq.read_table(path).to_pydict()


def test_traffic_knn_baselines_match_brute_force(tmp_path):
    """knn_stats_packets (and with the port) in both protocols against a brute-force nearest flow
    on the features written out by hand: signed log statistics standardised on the training
    split, the first 10 signed sizes / 300, log1p inter-arrival times."""
    from xclass.eval.split import query_mask

    rng = np.random.default_rng(0)
    tr = _flows(tmp_path / "train.parquet", np.arange(60), rng.integers(0, 3, 60), rng)
    te = _flows(tmp_path / "test.parquet", np.arange(60, 90), np.r_[rng.integers(0, 3, 16), np.repeat([3, 4], 7)], rng)
    meta = {"task": "quic", "num_classes": 3, "class_names": ["TLS.A", "DNS", "TLS.B", "TLS.C", "X"]}
    rows = {(r["protocol"], r["method"]): r["value"] for r in
            bench_traffic.traffic_rows(str(tmp_path), meta, {}, 30, 0) if r["metric"] == "1nn_acc" and "subset" not in r}

    def feats(t):
        st = np.asarray(t["flow_stats"])
        x = np.asarray(t["pkt_sizes"])[:, :10] * np.asarray(t["pkt_dirs"])[:, :10] / 300.0
        return np.sign(st) * np.log1p(np.abs(st)), np.c_[x, np.log1p(np.asarray(t["pkt_iat"])[:, :10])]

    (s_tr, p_tr), (s_te, p_te) = feats(tr), feats(te)
    mu, sd = s_tr.mean(0), s_tr.std(0)
    x_tr, x_te = np.c_[(s_tr - mu) / sd, p_tr], np.c_[(s_te - mu) / sd, p_te]
    port_tr, port_te = np.asarray(tr["server_port"]), np.asarray(te["server_port"])
    y_tr, y_te = np.asarray(tr["label"]), np.asarray(te["label"])

    def acc(xg, yg, pg, xq, yq, pq_, by_port):
        hits = 0
        for x, y, p in zip(xq, yq, pq_):
            d = ((xg - x) ** 2).sum(1) + (1e6 * (pg != p) if by_port else 0)  # other ports: after every same-port row
            hits += int(yg[np.argmin(d)] == y)
        return round(hits / len(yq), 4)

    c = y_te < 3
    isq = query_mask(np.asarray(te["id"])[~c], y_te[~c], 0.5, 0)
    xo, yo, po = x_te[~c], y_te[~c], port_te[~c]
    for tag, by_port in (("", False), ("_port", True)):
        assert rows[("closed", "knn_stats_packets" + tag)] == acc(x_tr, y_tr, port_tr, x_te[c], y_te[c], port_te[c], by_port)
        assert rows[("open", "knn_stats_packets" + tag)] == acc(xo[~isq], yo[~isq], po[~isq], xo[isq], yo[isq], po[isq],
                                                                by_port)
    assert {m for p, m in rows if p == "open"} == {"knn_stats", "knn_stats_packets", "knn_stats_port",
                                                   "knn_stats_packets_port", "random_forest_proximity",
                                                   "random_forest_port_proximity"}


def test_fewer_labels_keeps_n_training_classes_and_every_open_class(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    data = tmp_path / "d"
    data.mkdir()
    # 5 training classes (a-e) with 4 training rows and 1 closed-set test row each; 2 open classes (f, g)
    tr_lab = np.repeat(np.arange(5), 4)
    te_lab = np.r_[np.arange(5), [5, 5, 6, 6]]
    pq.write_table(pa.table({"id": np.arange(20), "label": tr_lab}), data / "train.parquet")
    pq.write_table(pa.table({"id": np.arange(20, 29), "label": te_lab}), data / "test.parquet")
    pq.write_table(pa.table({"id": np.arange(20, 29), "is_query": [False] * 5 + [False, True, False, True]}),
                   data / "gallery_query.parquet")
    (data / "meta.json").write_text(json.dumps({"task": "quic", "num_classes": 5, "test_classes": 2,
                                                "class_names": list("abcdefg"), "splits": {"train": {}, "test": {}},
                                                "gallery_query": {"file": "gallery_query.parquet", "rows": 9,
                                                                  "queries": 2}}))
    path = task_splits.fewer_labels(str(data), 2, 0, str(tmp_path / "out"))
    meta = json.load(open(f"{path}/meta.json"))
    tr, te = (pq.read_table(f"{path}/{s}.parquet").to_pydict() for s in ("train", "test"))
    kept = sorted({"abcdefg"[i // 4] for i in tr["id"]})
    assert len(kept) == 2 and meta["num_classes"] == 2 and meta["test_classes"] == 2
    assert meta["class_names"] == kept + ["f", "g"]
    old_name = dict(zip(range(29), ["abcdefg"[c] for c in np.r_[tr_lab, te_lab]]))
    for ids, labels in ((tr["id"], tr["label"]), (te["id"], te["label"])):   # every row keeps its class name
        assert all(meta["class_names"][lab] == old_name[i] for i, lab in zip(ids, labels))
    assert len(tr["id"]) == 8 and sorted(te["label"]) == [0, 1, 2, 2, 3, 3]  # kept closed rows + all open rows
    gq = pq.read_table(f"{path}/gallery_query.parquet").to_pydict()
    assert sorted(gq["id"]) == sorted(te["id"]) and meta["gallery_query"]["rows"] == 6
    assert meta["splits"]["train"]["rows"] == 8 and meta["splits"]["test"]["label_range"] == [0, 4]
    with pytest.raises(ValueError, match="--train-labels must be in"):
        task_splits.fewer_labels(str(data), 6, 0, str(tmp_path / "out"))


def test_detection_rows_match_brute_force_open_set_metrics():
    from sklearn.ensemble import RandomForestClassifier

    import bench_detect
    from xclass.eval.open_set import open_set_report

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(6, 4)) * 3
    tr_lab, te_lab = np.repeat(np.arange(4), 10), np.repeat(np.arange(6), 5)   # test labels 4, 5: unknown
    x_tr = {"knn_stats": centres[tr_lab] + rng.normal(size=(40, 4))}
    x_te = {"knn_stats": centres[te_lab] + rng.normal(size=(30, 4))}
    tr = {"label": tr_lab, "rf": x_tr["knn_stats"]}
    te = {"label": te_lab, "rf": x_te["knn_stats"], "id": np.arange(30)}
    forests = {"": RandomForestClassifier(20, random_state=0).fit(tr["rf"], tr_lab)}
    unit = lambda a: a / np.linalg.norm(a, axis=1, keepdims=True)  # noqa: E731
    embs = {"xclass_trained": {"train": {"emb": unit(x_tr["knn_stats"]), "label": tr_lab},
                               "test": {"emb": unit(x_te["knn_stats"]), "id": np.arange(30)}}}
    closed = te_lab < 4
    rows = bench_detect.detection_rows(tr, te, closed, x_tr, x_te, forests, embs)
    got = {(r["method"], r["metric"]): r["value"] for r in rows}
    d = np.sqrt(((x_te["knn_stats"][:, None] - x_tr["knn_stats"][None]) ** 2).sum(-1))   # brute force
    ref = open_set_report(tr_lab[d.argmin(1)], -d.min(1), te_lab, closed, fpirs=(0.1,))
    assert got[("knn_stats", "unknown_auroc")] == pytest.approx(ref["unknown_auroc"], abs=1e-4)
    assert got[("knn_stats", "dir@fpir=0.1")] == pytest.approx(ref["dir@fpir=0.1"], abs=1e-4)
    cos = unit(x_te["knn_stats"]) @ unit(x_tr["knn_stats"]).T
    ref = open_set_report(tr_lab[cos.argmax(1)], cos.max(1), te_lab, closed)
    assert got[("xclass_trained", "knn_acc_mated")] == pytest.approx(ref["knn_acc_mated"], abs=1e-4)
    p = forests[""].predict_proba(te["rf"])
    ref = open_set_report(p.argmax(1), p.max(1), te_lab, closed)
    assert got[("random_forest", "unknown_auroc")] == pytest.approx(ref["unknown_auroc"], abs=1e-4)


def test_head_scores_by_hand_and_against_softmax():
    """Class vectors scored as a classifier: a sub-centre class scores by its nearest row; the
    probability is the softmax of scale * cosine over the classes (scipy's)."""
    from scipy.special import softmax

    import bench_detect

    emb = np.array([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    head = {"ids": np.array([3, 7, 7]), "vectors": np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]), "scale": 4.0}
    out = bench_detect.head_scores([(emb, head)])
    lab, cos = out["xclass_trained_head_cos"]
    assert lab.tolist()[:2] == [3, 7]
    np.testing.assert_allclose(cos, [1.0, 1.0, np.sqrt(0.5)])
    per_class = np.array([[1.0, 0.0], [0.0, 1.0], [np.sqrt(0.5), np.sqrt(0.5)]])  # class 7: its best row
    np.testing.assert_allclose(out["xclass_trained_head_msp"][1], softmax(4.0 * per_class, axis=1).max(1))
    assert "xclass_trained_head_msp" not in bench_detect.head_scores([(emb, {**head, "scale": None})])


def test_head_scores_of_an_ensemble_average_the_cosines():
    """Several runs' heads (each scoring its own run's embeddings): the mean class cosine, and the
    softmax of scale * mean cosine (scipy's softmax, by hand)."""
    from scipy.special import softmax

    import bench_detect

    rng = np.random.default_rng(2)
    members = [(rng.normal(size=(6, d)), {"ids": np.arange(4), "vectors": rng.normal(size=(4, d)), "scale": 5.0})
               for d in (3, 5)]
    unit = lambda a: a / np.linalg.norm(a, axis=1, keepdims=True)  # noqa: E731
    mean_cos = sum(unit(e) @ unit(h["vectors"]).T for e, h in members) / 2
    out = bench_detect.head_scores(members)
    np.testing.assert_array_equal(out["xclass_trained_head_msp"][0], mean_cos.argmax(1))
    np.testing.assert_allclose(out["xclass_trained_head_msp"][1], softmax(5.0 * mean_cos, axis=1).max(1), rtol=1e-12)
    np.testing.assert_allclose(out["xclass_trained_head_cos"][1], mean_cos.max(1), rtol=1e-12)
    prob = sum(softmax(5.0 * (unit(e) @ unit(h["vectors"]).T), axis=1) for e, h in members) / 2
    best = mean_cos.argmax(1)
    np.testing.assert_allclose(out["xclass_trained_head_mean_prob"][1], prob[np.arange(6), best], rtol=1e-12)
    np.testing.assert_array_equal(out["xclass_trained_head_mean_prob"][0], best)
    assert "xclass_trained_head_mean_prob" not in bench_detect.head_scores(members[:1])
    other = (members[0][0], dict(members[1][1], ids=np.arange(1, 5), vectors=members[1][1]["vectors"][:, :3]))
    with pytest.raises(ValueError, match="class ids differ"):
        bench_detect.head_scores([members[0], other])


def test_detection_rows_with_the_head():
    import bench_detect
    from xclass.eval.open_set import open_set_report

    rng = np.random.default_rng(1)
    tr_lab, te_lab = np.repeat(np.arange(3), 4), np.repeat(np.arange(4), 3)   # label 3 unknown
    emb_te = rng.normal(size=(12, 5))
    vectors = rng.normal(size=(3, 5))
    te = {"label": te_lab, "id": np.arange(12)}
    embs = {"xclass_trained": {"train": {"emb": rng.normal(size=(12, 5)), "label": tr_lab},
                               "test": {"emb": emb_te, "id": np.arange(12)}}}
    rows = bench_detect.detection_rows({"label": tr_lab}, te, te_lab < 3, {}, {}, {}, embs,
                                       {"ids": np.arange(3), "vectors": vectors, "scale": 8.0})
    got = {(r["method"], r["metric"]): r["value"] for r in rows}
    cos = (emb_te / np.linalg.norm(emb_te, axis=1, keepdims=True)) @ (
        vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).T
    p = np.exp(8 * cos) / np.exp(8 * cos).sum(1, keepdims=True)
    ref = open_set_report(cos.argmax(1), p.max(1), te_lab, te_lab < 3)
    for m in ("unknown_auroc", "knn_acc_mated"):
        assert got[("xclass_trained_head_msp", m)] == pytest.approx(ref[m], abs=1e-4)


def test_embed_runs_fuses_the_runs_and_their_initial_networks(tmp_path):
    """``bench_tasks --ensemble K``: the trained and the random-init embeddings of K runs are the
    fusion of each run's own (mean cosine), and one run's are its own unchanged."""
    import bench_tasks
    from xclass.cli.main import main as xclass
    from xclass.data import make_data
    from xclass.data.meta import load_meta
    from xclass.eval.ensemble import fuse_embeddings

    data = str(tmp_path / "data")
    make_data("quic", data, 8, rows_per_class=6, test_classes=3, seed=0, progress=False)
    runs = []
    for k in range(2):
        runs.append(str(tmp_path / f"run{k}"))
        assert xclass(["train", "--config", "configs/quic/cpu.yaml", f"data.path={data}", f"train.out_dir={runs[-1]}",
                       "train.progress=false", "train.max_steps=2", "data.batch_size=16", f"train.seed={k}"]) == 0
    meta = load_meta(data)
    one = [bench_tasks.embed_runs([r], meta, data)[0] for r in runs]
    both, own = bench_tasks.embed_runs(runs, meta, data)
    assert [o["test"]["emb"].tolist() for o in own] == [o["xclass_trained"]["test"]["emb"].tolist() for o in one]
    for name in ("xclass_trained", "xclass_random_init"):
        for split in ("train", "test"):
            a, b = one[0][name][split], one[1][name][split]
            assert not np.allclose(a["emb"], b["emb"], atol=1e-3)         # the two runs differ
            np.testing.assert_array_equal(both[name][split]["id"], a["id"])
            np.testing.assert_array_equal(both[name][split]["label"], a["label"])
            np.testing.assert_allclose(both[name][split]["emb"], fuse_embeddings([a["emb"], b["emb"]]), rtol=1e-6)
    assert not np.allclose(one[0]["xclass_trained"]["test"]["emb"], one[0]["xclass_random_init"]["test"]["emb"])
