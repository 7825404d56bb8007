"""Benchmark: FAISS flat / HNSW / IVF-PQ QPS and recall@k vs exact, and end-to-end XMC
evaluation (export + evaluate_xmc) vs a plain torch brute-force top-k, in one process.

Data are STRUCTURED (unit vectors around random cluster centres; random Gaussian vectors are
the ANN worst case). Each query is a noisy copy of one label vector, which is its true label.
Prints one JSON object per line; writes bench_eval.png (recall vs QPS) into --out-dir.

    python tools/bench_eval.py --n-labels 1000000 --n-queries 100000     # full (~10+ min, 2 cores)
    python tools/bench_eval.py --n-labels 100000 --n-queries 10000       # debug size
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from xclass.eval.export import export_index  # noqa: E402
from xclass.eval.evaluate import evaluate_xmc  # noqa: E402
from xclass.eval.index import IndexSpec, faiss, new_index, set_search_params  # noqa: E402
from xclass.eval.io import ArraySource  # noqa: E402
from xclass.eval.metrics import LabelSets, Ranking, xmc_metrics  # noqa: E402


def emit(**kw):
    print(json.dumps(kw), flush=True)
    return kw


class PeakRSS:
    """Samples this process's resident memory every 20 ms; ``.peak_gib`` after the block."""

    def __enter__(self):
        self.peak, self._stop = 0, threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _run(self):
        page = os.sysconf("SC_PAGE_SIZE")
        while not self._stop.is_set():
            with open("/proc/self/statm") as f:
                self.peak = max(self.peak, int(f.read().split()[1]) * page)
            time.sleep(0.02)

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self.peak_gib = self.peak / 2 ** 30


def make_data(n_labels, n_queries, d, n_clusters, seed):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_clusters, d)).astype(np.float32)
    lab = np.empty((n_labels, d), np.float32)
    for s in range(0, n_labels, 200_000):          # chunked to bound temporaries
        e = min(s + 200_000, n_labels)
        c = rng.integers(0, n_clusters, e - s)
        lab[s:e] = centres[c] + 0.35 * rng.normal(size=(e - s, d)).astype(np.float32)
    lab /= np.linalg.norm(lab, axis=1, keepdims=True)
    truth = rng.integers(0, n_labels, n_queries)
    q = lab[truth] + 0.08 * rng.normal(size=(n_queries, d)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    return lab, q.astype(np.float32), truth


def timed_search(index, q, k, batch=4096):
    t = time.perf_counter()
    Ds, Is = [], []
    for s in range(0, len(q), batch):
        D, I = index.search(q[s:s + batch], k)
        Ds.append(D)
        Is.append(I)
    return np.concatenate(Ds), np.concatenate(Is), time.perf_counter() - t


def recall_vs(I, I_ref, k):
    return float(np.mean([len(np.intersect1d(a[:k], b[:k])) / k for a, b in zip(I, I_ref)]))


def bench_ann(args, lab, q):
    qa = q[: args.ann_queries]
    ids = np.arange(len(lab), dtype=np.int64)
    rows, k = [], args.k
    flat = new_index(lab.shape[1], IndexSpec("flat"))
    flat.add_with_ids(lab, ids)
    _, I_ref, t_flat = timed_search(flat, qa, k)
    rows.append(emit(bench="ann", index="flat", param="exact", build_s=0.0,
                     qps=len(qa) / t_flat, recall_at_k=1.0, k=k))
    del flat
    specs = [("hnsw", IndexSpec("hnsw", hnsw_m=args.hnsw_m, ef_construction=args.ef_construction),
              "ef_search", args.ef_search)]
    specs.append(("ivfpq", IndexSpec("ivfpq", nlist=args.nlist, pq_m=args.pq_m, train_size=args.train_size),
                  "nprobe", args.nprobe))
    for kind, spec, pname, values in specs:
        t = time.perf_counter()
        idx = new_index(lab.shape[1], spec)
        if spec.needs_training:
            sample = lab[np.random.default_rng(1).choice(len(lab), min(spec.train_size, len(lab)), False)]
            idx.train(sample)
        idx.add_with_ids(lab, ids)
        build = time.perf_counter() - t
        for v in values:
            import dataclasses
            set_search_params(idx, dataclasses.replace(spec, **{pname: v}))
            _, I, ts = timed_search(idx, qa, k)
            rows.append(emit(bench="ann", index=kind, param=f"{pname}={v}", build_s=round(build, 1),
                             qps=len(qa) / ts, recall_at_k=recall_vs(I, I_ref, k), k=k,
                             speedup_vs_flat=t_flat / ts))
        del idx
    return rows


def torch_bruteforce(lab, q, k, chunk):
    L = torch.from_numpy(lab)
    outI = []
    for s in range(0, len(q), chunk):
        S = torch.from_numpy(q[s:s + chunk]) @ L.T
        outI.append(torch.topk(S, k, dim=1).indices.numpy())
    return np.concatenate(outI)


def bench_e2e(args, lab, q, truth):
    ks = (1, 3, 5)
    tmp = tempfile.mkdtemp(prefix="bench_eval_")
    labels = LabelSets(np.arange(len(q) + 1, dtype=np.int64), truth.astype(np.int64))
    with PeakRSS() as m:
        t0 = time.perf_counter()
        export_index([ArraySource(lab, name="labels")], os.path.join(tmp, "idx"), IndexSpec("flat"))
        t_export = time.perf_counter() - t0
        from xclass.eval.searcher import ShardedIndex
        idx = ShardedIndex.open(os.path.join(tmp, "idx"))
        t1 = time.perf_counter()
        res = evaluate_xmc(idx, ArraySource(q, labels=truth, name="queries"), ks,
                           batch_rows=args.eval_batch, progress=False)
        t_eval = time.perf_counter() - t1
        del idx
    emit(bench="e2e", method="xclass flat (export + evaluate_xmc)", n_queries=len(q),
         n_labels=len(lab), export_s=t_export, eval_s=t_eval, qps=len(q) / t_eval,
         peak_rss_gib=m.peak_gib, **{f"P@{k}": res[f"P@{k}"] for k in ks})
    with PeakRSS() as m:
        t2 = time.perf_counter()
        I = torch_bruteforce(lab, q, max(ks), args.torch_chunk)
        base = xmc_metrics(Ranking.build(I, labels), ks)
        t_base = time.perf_counter() - t2
    emit(bench="e2e", method=f"torch brute force (matmul + topk, {args.torch_chunk} q/chunk)",
         n_queries=len(q), n_labels=len(lab), eval_s=t_base, qps=len(q) / t_base,
         peak_rss_gib=m.peak_gib, **{f"P@{k}": base[f"P@{k}"] for k in ks})
    emit(bench="e2e_summary", speedup_vs_bruteforce=t_base / t_eval,
         same_P1=bool(abs(base["P@1"] - res["P@1"]) < 1e-3))


def plot(rows, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 4))
    for kind in ("flat", "hnsw", "ivfpq"):
        r = [x for x in rows if x["index"] == kind]
        ax.plot([x["recall_at_k"] for x in r], [x["qps"] for x in r], "o-", label=kind)
        for x in r:
            ax.annotate(x["param"].split("=")[-1], (x["recall_at_k"], x["qps"]), fontsize=7)
    ax.set(xlabel=f"recall@{rows[0]['k']} vs exact", ylabel="queries / s", yscale="log")
    ax.legend()
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n-labels", type=int, default=1_000_000)
    ap.add_argument("--n-queries", type=int, default=100_000)
    ap.add_argument("--ann-queries", type=int, default=10_000)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--n-clusters", type=int, default=10_000)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--hnsw-m", type=int, default=32)
    ap.add_argument("--ef-construction", type=int, default=80)
    ap.add_argument("--ef-search", type=lambda s: [int(x) for x in s.split(",")], default=[16, 32, 64, 128])
    ap.add_argument("--nlist", type=int, default=4096)
    ap.add_argument("--pq-m", type=int, default=32)
    ap.add_argument("--train-size", type=int, default=200_000)
    ap.add_argument("--nprobe", type=lambda s: [int(x) for x in s.split(",")], default=[8, 32, 128])
    ap.add_argument("--eval-batch", type=int, default=4096)
    ap.add_argument("--torch-chunk", type=int, default=256)
    ap.add_argument("--skip-ann", action="store_true")
    ap.add_argument("--skip-e2e", action="store_true")
    ap.add_argument("--out-dir", default="runs/bench_eval")
    args = ap.parse_args()
    os.makedirs(args.out_dir, exist_ok=True)
    emit(bench="config", threads_faiss=faiss.omp_get_max_threads(),
         threads_torch=torch.get_num_threads(), **{k: v for k, v in vars(args).items()})
    lab, q, truth = make_data(args.n_labels, args.n_queries, args.dim, args.n_clusters, 0)
    if not args.skip_ann:
        rows = bench_ann(args, lab, q)
        plot(rows, os.path.join(args.out_dir, "bench_eval.png"))
    if not args.skip_e2e:
        bench_e2e(args, lab, q, truth)


if __name__ == "__main__":
    main()
