"""Encoder benchmark: default encoders on small synthetic datasets, CPU.

For each task: generate a dataset (xclass.data.generate), hold out 25% of the train rows
(same classes), train encoder + linear softmax head with AdamW for ``--steps`` steps, and
report the step time, the held-out top-1 of the head and the cosine 1-NN top-1 of the
embeddings, and (face/speaker/quic) the leave-one-out 1-NN top-1 on the test split, whose
classes were never trained on (open set); each next to the same 1-NN on raw inputs and
chance, measured in the same process. Prints one JSON object per line.

    .venv/bin/python tools/bench_encoders.py --steps 300 --threads 2
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import numpy as np
import torch
import torch.nn.functional as F

from xclass.config import ModelConfig
from xclass.data.generate import make_data
from xclass.data.reader import ParquetReader
from xclass.models import DEFAULT_ENCODER, build_encoder, decode_batch, input_columns

DATA = {  # generator sizes: the generators' defaults except the row counts (and xmc vocab)
    "face": dict(rows_per_class=40),
    "speaker": dict(rows_per_class=40),
    "quic": dict(rows_per_class=40),
    "xmc": dict(num_rows=2400, vocab_size=2000, num_test_rows=50),
}


def _take(inputs, labels, idx):
    t = torch.as_tensor(idx)
    return {k: v[t] for k, v in inputs.items()}, labels[t]


def _raw_vectors(task, inputs, meta):
    """Raw-input features for the 1-NN baseline."""
    if task == "face":
        return inputs["image"].flatten(1).float()
    if task == "speaker":
        m = (torch.arange(inputs["fbank"].shape[1])[None] < inputs["lengths"][:, None]).float()
        return (inputs["fbank"] * m[..., None]).sum(1) / m.sum(1, keepdim=True)
    if task == "quic":
        return torch.cat([inputs["pkt_sizes"] / 1500, inputs["pkt_dirs"],
                          torch.log1p(inputs["pkt_iat"]), torch.log1p(inputs["flow_stats"])], 1)
    v = meta["inputs"]["tokens"]["vocab_size"]
    bow = torch.zeros(inputs["tokens"].shape[0], v + 1)
    mask = torch.arange(inputs["tokens"].shape[1])[None] < inputs["lengths"][:, None]
    bow.scatter_add_(1, inputs["tokens"].masked_fill(~mask, v), mask.float())
    return bow[:, :v]


def _top1(task, scores_or_pred, labels):
    """Single-label accuracy, or for xmc precision@1 (is the top label among the row's)."""
    if task == "xmc":
        return (labels == scores_or_pred[:, None]).any(1).float().mean().item()
    return (labels == scores_or_pred).float().mean().item()


def _nn_pred(task, q, g, g_labels):
    nn_idx = (F.normalize(q, dim=1) @ F.normalize(g, dim=1).T).argmax(1)
    return g_labels[nn_idx, 0] if task == "xmc" else g_labels[nn_idx]


def _loss(task, logits, labels):
    if task != "xmc":
        return F.cross_entropy(logits, labels)
    logp = F.log_softmax(logits, 1)
    pos = labels >= 0
    picked = logp.gather(1, labels.clamp_min(0)) * pos
    return -(picked.sum(1) / pos.sum(1).clamp_min(1)).mean()


def bench(task, name, args, root):
    if not os.path.exists(os.path.join(root, task)):
        make_data(task, os.path.join(root, task), num_classes=args.classes, progress=False,
                  **DATA[task])
    with open(os.path.join(root, task, "meta.json")) as f:
        meta = json.load(f)
    files = [os.path.join(root, task, f) for f in sorted(os.listdir(os.path.join(root, task)))
             if f.startswith("train")]
    reader = ParquetReader(files, input_columns(task, name), batch_rows=10 ** 6, shuffle=False)
    inputs, labels = decode_batch(task, next(iter(reader)), meta)
    n = labels.shape[0]
    perm = np.random.default_rng(0).permutation(n)
    tr, va = perm[: n * 3 // 4], perm[n * 3 // 4:]
    (xtr, ytr), (xva, yva) = _take(inputs, labels, tr), _take(inputs, labels, va)
    raw_acc = _top1(task, _nn_pred(task, _raw_vectors(task, xva, meta),
                                   _raw_vectors(task, xtr, meta), ytr), yva)
    torch.manual_seed(0)
    enc = build_encoder(ModelConfig(encoder=name, embedding_dim=args.dim), meta)
    head = torch.nn.Linear(args.dim, args.classes)
    opt = torch.optim.AdamW(list(enc.parameters()) + list(head.parameters()), lr=args.lr,
                            weight_decay=1e-4)
    rng, times = np.random.default_rng(1), []
    t_all = time.perf_counter()
    for _ in range(args.steps):
        xb, yb = _take(xtr, ytr, rng.choice(len(tr), args.batch, replace=False))
        t0 = time.perf_counter()
        enc.train()
        loss = _loss(task, head(enc(xb)), yb)
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    train_s = time.perf_counter() - t_all
    enc.eval()
    with torch.no_grad():
        e_va, e_tr = enc(xva), enc(xtr)
        head_acc = _top1(task, head(e_va).argmax(1), yva)
        knn_acc = _top1(task, _nn_pred(task, e_va, e_tr, ytr), yva)
    return {"task": task, "encoder": name, "params": sum(p.numel() for p in enc.parameters()),
            "batch": args.batch, "steps": args.steps, "step_ms_median": 1e3 * float(np.median(times)),
            "train_s": round(train_s, 1), "final_loss": round(loss.item(), 4),
            "val_top1_head": round(head_acc, 4), "val_top1_knn": round(knn_acc, 4),
            "baseline_raw_knn": round(raw_acc, 4), "chance": round(1 / args.classes, 4),
            "train_rows": len(tr), "val_rows": len(va), "classes": args.classes,
            "threads": torch.get_num_threads(), **_open_set(task, name, enc, root, meta)}


def _loo_1nn(x, y):
    """Leave-one-out cosine 1-NN top-1 within one set."""
    sim = F.normalize(x, dim=1) @ F.normalize(x, dim=1).T
    sim.fill_diagonal_(-2.0)
    return (y[sim.argmax(1)] == y).float().mean().item()


def _open_set(task, name, enc, root, meta):
    """1-NN among the test split's rows (held-out classes): embeddings vs raw inputs."""
    if task == "xmc":
        return {}
    files = [os.path.join(root, task, f) for f in sorted(os.listdir(os.path.join(root, task)))
             if f.startswith("test")]
    reader = ParquetReader(files, input_columns(task, name), batch_rows=10 ** 6, shuffle=False)
    x, y = decode_batch(task, next(iter(reader)), meta)
    with torch.no_grad():
        emb = enc(x)
    n_cls = len(torch.unique(y))
    return {"open_set_classes": n_cls, "open_set_rows": len(y),
            "open_set_1nn": round(_loo_1nn(emb, y), 4),
            "open_set_1nn_raw": round(_loo_1nn(_raw_vectors(task, x, meta), y), 4)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", default="face,speaker,quic,xmc")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--classes", type=int, default=50)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--encoders", default="", help="e.g. speaker=thin_resnet,xmc=transformer "
                    "(default: DEFAULT_ENCODER of each task)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as root:
        runs = ([tuple(kv.split("=")) for kv in args.encoders.split(",")] if args.encoders
                else [(t, DEFAULT_ENCODER[t]) for t in args.tasks.split(",")])
        for task, name in runs:
            print(json.dumps(bench(task, name, args, root)), flush=True)


if __name__ == "__main__":
    main()
