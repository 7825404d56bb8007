"""Benchmark: FAISS flat / HNSW / IVF-PQ QPS and recall@k vs exact, and end-to-end XMC
evaluation (export + evaluate_xmc) vs a plain torch brute-force top-k, in one process.

Data model (``make_data``): label embeddings are generated from a low-dimensional latent
(``--latent-dim`` 32) mixture with Zipf-distributed cluster sizes and anisotropic per-cluster
spreads, projected to d dims, plus isotropic ambient noise, L2-normalised. This gives
nearest-neighbour cosines like trained label embeddings (top-1 ~0.8, 10th ~0.7), unlike
isotropic Gaussian blobs whose intrinsic dimension is the full d (an ANN worst case).
ANN queries are fresh draws from the same distribution (not copies of label vectors);
end-to-end XMC queries are perturbed copies of a known "true" label so that P@k is meaningful.

The end-to-end comparison runs the two methods in alternating rounds over query slices
(``--rounds``), so drift in the load of the shared machine hits both alike.
Prints one JSON object per line; writes bench_eval.png (recall vs QPS) into --out-dir.

    python tools/bench_eval.py --n-labels 1000000 --n-queries 100000     # full (long on 2 cores)
    python tools/bench_eval.py --n-labels 100000 --n-queries 10000       # debug size
"""
from __future__ import annotations

import argparse
import dataclasses
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
from xclass.eval.flat import TorchFlat  # noqa: E402
from xclass.eval.searcher import ShardedIndex  # noqa: E402
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


def _latent_model(d, r, n_clusters, spread, seed=1234):
    """Shared structure: centres [c, r], per-cluster anisotropic scales [c, r], projection
    [r, d] and Zipf-like cluster probabilities [c]."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_clusters, r)).astype(np.float32)
    decay = np.arange(1, r + 1, dtype=np.float32) ** -0.5     # decaying latent spectrum
    scales = (spread * decay * np.exp(0.4 * rng.normal(size=(n_clusters, r)))).astype(np.float32)
    proj = (rng.normal(size=(r, d)) / np.sqrt(r)).astype(np.float32)
    p = (np.arange(n_clusters) + 10.0) ** -0.8
    return centres, scales, proj, p / p.sum()


def draw(model, n, ambient, seed, block=200_000):
    """n unit vectors [n, d] from the latent mixture (float32)."""
    centres, scales, proj, p = model
    rng = np.random.default_rng(seed)
    out = np.empty((n, proj.shape[1]), np.float32)
    for s in range(0, n, block):                 # chunked to bound temporaries
        e = min(s + block, n)
        c = rng.choice(len(p), e - s, p=p)
        z = centres[c] + scales[c] * rng.normal(size=(e - s, proj.shape[0])).astype(np.float32)
        out[s:e] = z @ proj + ambient * rng.normal(size=(e - s, proj.shape[1])).astype(np.float32)
    out /= np.linalg.norm(out, axis=1, keepdims=True)
    return out


def make_data(args, seed=0):
    """labels [L, d]; ann queries [n_ann, d] (fresh draws); e2e queries [n, d] with truth [n]."""
    model = _latent_model(args.dim, args.latent_dim, args.n_clusters, args.spread)
    lab = draw(model, args.n_labels, args.ambient, seed)
    q_ann = draw(model, args.ann_queries, args.ambient, seed + 1)
    rng = np.random.default_rng(seed + 2)
    truth = rng.integers(0, args.n_labels, args.n_queries)
    q = lab[truth] + args.query_noise * rng.normal(size=(args.n_queries, args.dim)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    return lab, q_ann, q.astype(np.float32), truth


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


def _time_flats(lab, ids, qa, k):
    """(I_ref, {impl: seconds}) for faiss IndexFlatIP and xclass TorchFlat on qa."""
    flat = new_index(lab.shape[1], IndexSpec("flat"))
    flat.add_with_ids(lab, ids)
    _, I_ref, t_faiss = timed_search(flat, qa, k)
    del flat
    _, I_t, t_torch = timed_search(TorchFlat(lab, ids), qa, k)
    return I_ref, I_t, {"flat (faiss IndexFlatIP)": t_faiss, "flat (xclass TorchFlat)": t_torch}


def bench_ann(args, lab, qa):
    """recall@k / QPS of ANN indexes vs exact. Both exact methods are timed before AND after
    the ANN sweep (the shared machine's load drifts); a speedup is against the FASTER exact
    method's mean time. Rows are emitted as measured (bench=ann) and once more at the end
    with the final speedups (bench=ann_final)."""
    ids = np.arange(len(lab), dtype=np.int64)
    k = args.k
    I_ref, I_t, before = _time_flats(lab, ids, qa, k)
    rows = []
    specs = {"hnsw": (IndexSpec("hnsw", hnsw_m=args.hnsw_m, ef_construction=args.ef_construction),
                      "ef_search", args.ef_search, f"M{args.hnsw_m} efC{args.ef_construction}"),
             "ivfpq": (IndexSpec("ivfpq", nlist=args.nlist, pq_m=args.pq_m, train_size=args.train_size),
                       "nprobe", args.nprobe, f"IVF{args.nlist},PQ{args.pq_m}")}
    for kind in args.kinds:
        spec, pname, values, desc = specs[kind]
        t = time.perf_counter()
        idx = new_index(lab.shape[1], spec)
        if spec.needs_training:
            sample = lab[np.random.default_rng(1).choice(len(lab), min(spec.train_size, len(lab)), False)]
            idx.train(sample)
        idx.add_with_ids(lab, ids)
        build = time.perf_counter() - t
        for v in values:
            set_search_params(idx, dataclasses.replace(spec, **{pname: v}))
            _, I, ts = timed_search(idx, qa, k)
            rows.append(emit(bench="ann", index=kind, impl=desc, param=f"{pname}={v}",
                             build_s=round(build, 1), qps=len(qa) / ts, seconds=ts,
                             recall_at_k=recall_vs(I, I_ref, k), k=k, load1=os.getloadavg()[0]))
        del idx
    _, _, after = _time_flats(lab, ids, qa, k)
    mean = {m: (before[m] + after[m]) / 2 for m in before}
    t_flat = min(mean.values())
    flat_rows = [dict(bench="ann", index="flat", impl=m, param="exact", build_s=0.0, qps=len(qa) / mean[m],
                      qps_before=len(qa) / before[m], qps_after=len(qa) / after[m], seconds=mean[m],
                      recall_at_k=recall_vs(I_t, I_ref, k) if "Torch" in m else 1.0, k=k)
                 for m in mean]
    final = []
    for r in flat_rows + rows:
        final.append(emit(**dict(r, bench="ann_final", speedup_vs_flat=t_flat / r["seconds"])))
    return final


def torch_bruteforce(L, q, k, chunk):
    """The baseline: full [chunk, L] score matrix per query chunk + torch.topk."""
    outI = []
    for s in range(0, len(q), chunk):
        S = torch.from_numpy(q[s:s + chunk]) @ L.T
        outI.append(torch.topk(S, k, dim=1).indices.numpy())
    return np.concatenate(outI)


def _weighted(parts, ks):
    """Combine per-round metric dicts (all row means) weighted by their query counts."""
    n = sum(p["n_queries"] for p in parts)
    return {f"P@{k}": sum(p[f"P@{k}"] * p["n_queries"] for p in parts) / n for k in ks}


def bench_e2e(args, lab, q, truth):
    ks = (1, 3, 5)
    tmp = tempfile.mkdtemp(prefix="bench_eval_")
    with PeakRSS() as m_export:
        t0 = time.perf_counter()
        export_index([ArraySource(lab, name="labels")], os.path.join(tmp, "idx"), IndexSpec("flat"))
        t_export = time.perf_counter() - t0
    idx = ShardedIndex.open(os.path.join(tmp, "idx"))
    L = torch.from_numpy(lab)
    t_x = t_b = 0.0
    peak_x = peak_b = m_export.peak_gib
    res_x, res_b = [], []
    for r, sl in enumerate(np.array_split(np.arange(len(q)), args.rounds)):
        src = ArraySource(q[sl], labels=truth[sl], name="queries")
        with PeakRSS() as m:
            t = time.perf_counter()
            res_x.append(evaluate_xmc(idx, src, ks, batch_rows=args.eval_batch, progress=False))
            t_x += time.perf_counter() - t
        peak_x = max(peak_x, m.peak_gib)
        with PeakRSS() as m:
            t = time.perf_counter()
            I = torch_bruteforce(L, q[sl], max(ks), args.torch_chunk)
            labels = LabelSets(np.arange(len(sl) + 1, dtype=np.int64), truth[sl].astype(np.int64))
            res_b.append(dict(xmc_metrics(Ranking.build(I, labels), ks), n_queries=len(sl)))
            t_b += time.perf_counter() - t
        peak_b = max(peak_b, m.peak_gib)
        emit(bench="e2e_round", round=r, queries_done=int(sl[-1]) + 1, xclass_s=t_x, bruteforce_s=t_b,
             load1=os.getloadavg()[0])
    mx, mb = _weighted(res_x, ks), _weighted(res_b, ks)
    emit(bench="e2e", method="xclass flat (export + evaluate_xmc)", n_queries=len(q),
         n_labels=len(lab), export_s=t_export, eval_s=t_x, qps=len(q) / t_x,
         peak_rss_gib=peak_x, **mx)
    emit(bench="e2e", method=f"torch brute force (matmul + topk, {args.torch_chunk} q/chunk)",
         n_queries=len(q), n_labels=len(lab), eval_s=t_b, qps=len(q) / t_b, peak_rss_gib=peak_b, **mb)
    emit(bench="e2e_summary", speedup_vs_bruteforce=t_b / t_x,
         same_P1=bool(abs(mb["P@1"] - mx["P@1"]) < 1e-3))


def plot(rows, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 4))
    for kind in ("flat", "hnsw", "ivfpq"):
        r = [x for x in rows if x["index"] == kind]
        if not r:
            continue
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
    ap.add_argument("--ann-queries", type=int, default=5_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--n-clusters", type=int, default=10_000)
    ap.add_argument("--latent-dim", type=int, default=32)
    ap.add_argument("--spread", type=float, default=2.5, help="within-cluster latent scale")
    ap.add_argument("--ambient", type=float, default=0.2, help="isotropic noise per output dim")
    ap.add_argument("--query-noise", type=float, default=0.07, help="e2e queries: per-dim noise")
    ap.add_argument("--kinds", type=lambda s: s.split(","), default=["hnsw", "ivfpq"])
    ap.add_argument("--rounds", type=int, default=10, help="e2e: alternating rounds")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--hnsw-m", type=int, default=32)
    ap.add_argument("--ef-construction", type=int, default=100)
    ap.add_argument("--ef-search", type=lambda s: [int(x) for x in s.split(",")],
                    default=[16, 32, 64, 128, 256])
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
    lab, q_ann, q, truth = make_data(args, args.seed)
    if not args.skip_ann:
        rows = bench_ann(args, lab, q_ann)
        plot(rows, os.path.join(args.out_dir, "bench_eval.png"))
    if not args.skip_e2e:
        bench_e2e(args, lab, q, truth)


if __name__ == "__main__":
    main()
