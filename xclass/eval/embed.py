"""From a trained run directory to embedding Parquet files and FAISS indexes.

``embed_split`` encodes a Parquet split with the run's encoder (batched, no_grad, on
``device``: ``export-index --gpu`` picks the CUDA device, optional bf16 autocast; batches are
read and decoded ahead on a background thread; progress on stderr) and writes ``id``,
``label``/``labels`` and ``embedding``; ``export_head`` writes
the classifier head's class vectors as label embeddings, one Parquet file per saved shard
(never all shards in memory at once), ``id`` and ``label`` both the class id, so a file is also
a gallery for ``evaluate --protocol ident`` (classification by the nearest class vector). ``xclass export-index --run`` (:mod:`xclass.cli.export`)
hands those files to the index export.
"""
from __future__ import annotations

import os
import sys
import time
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import pyarrow as pa
import torch

from xclass import components
from xclass.config import RunConfig, load_config
from xclass.eval.io import write_parquet_atomic
from xclass.parallel import ParallelContext
from xclass.train import checkpoint as ckpt
from xclass.config_types import ConfigError
from xclass.data.augment import mirrored
from xclass.data.meta import check_same_inputs, load_meta, split_files
from xclass.train.setup import make_head


def run_members(run_dir: str) -> Optional[List[str]]:
    """The member run directories of a ``train.ensemble`` directory, None for one run."""
    from xclass.train.members import read_members

    return read_members(run_dir)


def load_run(run_dir: str) -> RunConfig:
    p = os.path.join(run_dir, "config.yaml")
    if not os.path.exists(p):
        from xclass.train.members import refuse_ensemble

        refuse_ensemble(run_dir)
        raise FileNotFoundError(f"{p}: not a run directory (no config.yaml)")
    return load_config(p)


def load_encoder(run_dir: str, cfg: RunConfig, meta: Dict[str, Any],
                 device: Optional[torch.device] = None, average_last: int = 1) -> torch.nn.Module:
    """The run's encoder with the newest checkpoint's weights, in eval mode, on ``device``.
    ``average_last`` N > 1: the mean of the newest N checkpoints' weights instead (floating
    parameters and buffers such as batch-norm statistics averaged, integer buffers from the newest),
    as speaker recipes average their last epochs."""
    components.load_all()
    found = ckpt.list_checkpoints(run_dir)
    if not found:
        raise ckpt.CheckpointError(f"{run_dir}: no complete checkpoint under checkpoints/")
    if average_last > len(found):
        raise ckpt.CheckpointError(f"{run_dir}: averaging the last {average_last} checkpoints, but the run keeps "
                                   f"{len(found)} (train.keep_last and train.checkpoint_every decide how many)")
    paths = found[-max(1, average_last):]
    for path in paths:
        ckpt.read_manifest(path)  # a corrupt manifest is refused before any weight file is read
    enc = components.build_encoder(cfg.model, meta)
    states = [ckpt.encoder_weights(p) for p in paths]
    f = os.path.join(paths[-1], "encoder.pt")
    try:
        enc.load_state_dict(states[0] if len(states) == 1 else average_states(states, paths))
    except (KeyError, TypeError, RuntimeError) as exc:
        raise ckpt.CheckpointError(f"{f}: does not match the run's encoder: {str(exc).splitlines()[0]}") from None
    return enc.to(device or torch.device("cpu")).eval()


def average_states(states: List[Dict[str, torch.Tensor]], paths: List[str]) -> Dict[str, torch.Tensor]:
    """The mean of encoder state dicts (oldest first): floating tensors averaged in float64 and
    cast back; other tensors (step counters) taken from the newest. States whose keys or shapes
    differ are refused naming the checkpoint."""
    newest = states[-1]
    for state, path in zip(states, paths):
        odd = sorted(set(state) ^ set(newest)) or [k for k in newest if state[k].shape != newest[k].shape]
        if odd:
            raise ckpt.CheckpointError(f"{path}: its encoder differs from {paths[-1]} ({odd[0]}); cannot average")
    out: Dict[str, torch.Tensor] = {}
    for key, last in newest.items():
        if torch.is_floating_point(last):
            out[key] = (sum(s[key].double() for s in states) / len(states)).to(last.dtype)
        else:
            out[key] = last
    return out


def encode_device(gpu: bool) -> torch.device:
    """cuda (the current device) with ``--gpu`` when CUDA is available, else the CPU."""
    if gpu and not torch.cuda.is_available():
        print("[xclass export] --gpu: no CUDA device visible, encoding on the CPU", file=sys.stderr)
    return torch.device("cuda" if gpu and torch.cuda.is_available() else "cpu")


def dataset_meta(cfg: RunConfig, data_path: Optional[str]) -> Dict[str, Any]:
    """meta.json of the dataset to encode: the run's own (``data_path`` None), or another one,
    checked against the run's training data on the task's ``input_keys`` when that data is still
    there (:func:`~xclass.data.meta.check_same_inputs`; otherwise a note, and a model whose
    weights do not fit the inputs is refused when loaded)."""
    if not data_path or os.path.abspath(data_path) == os.path.abspath(cfg.data.path):
        return load_meta(cfg.data.path)
    meta = load_meta(data_path)
    if os.path.exists(os.path.join(cfg.data.path, "meta.json")):
        from xclass.tasks import get_task

        check_same_inputs(get_task(cfg.data.task).input_keys, load_meta(cfg.data.path), meta, data_path)
    else:
        print(f"[xclass export] the run's training data {cfg.data.path} is gone: {data_path}'s inputs are not "
              "checked against it", file=sys.stderr)
    return meta


def embed_split(run_dir: str, split: str, out_path: str, batch_rows: int = 512,
                data_path: Optional[str] = None, frame_budget: int = 1 << 18,
                device: Optional[torch.device] = None, bf16: bool = False, average_last: int = 1,
                flip_test: bool = False) -> str:
    """Encode every row of ``split`` (train/test/...) and write an embedding Parquet (float32):
    ``id``, ``label`` / ``labels`` when the split has them, ``embedding`` [n, d] as the encoder
    gives it (not normalised). The options are those of :func:`encode_split`."""
    ids, emb, labels = encode_split(run_dir, split, batch_rows, data_path, frame_budget, device, bf16,
                                    average_last, flip_test)
    return write_embeddings(out_path, ids, emb, labels)


def write_embeddings(out_path: str, ids: np.ndarray, emb: np.ndarray, labels: List[Any],
                     metadata: Optional[Dict[str, str]] = None) -> str:
    """``id`` [n], ``embedding`` [n, d] float32 and the label column of ``labels`` (the per-batch
    parts :func:`encode_split` returns) to ``out_path``, atomically; ``metadata``: Parquet schema
    metadata (a fused file's run dimensions)."""
    cols: Dict[str, pa.Array] = {
        "id": pa.array(ids),
        "embedding": pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1)), emb.shape[1]),
    }
    cols.update(_label_column(labels))
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    write_parquet_atomic(pa.table(cols, metadata=metadata), out_path)
    return out_path


def encode_split(run_dir: str, split: str, batch_rows: int = 512, data_path: Optional[str] = None,
                 frame_budget: int = 1 << 18, device: Optional[torch.device] = None, bf16: bool = False,
                 average_last: int = 1, flip_test: bool = False) -> Tuple[np.ndarray, np.ndarray, List[Any]]:
    """Every row of ``split`` through the run's encoder: ``ids`` [n] int64, embeddings [n, d]
    float32 (file order), and the label parts per batch (for :func:`write_embeddings`).
    ``frame_budget``: for variable-length inputs (a ``lengths`` tensor, e.g. speaker fbank) the
    encoder sees length-sorted sub-batches of at most this many padded frames (0 = the whole
    reader batch padded to its longest row, as before; see :func:`encode_batch`).
    ``device``: where the encoder runs (batches are decoded ahead on a background thread and
    copied there); ``bf16``: bf16 autocast around the encoder. ``data_path``: a dataset other than
    the run's (same task and inputs, :func:`dataset_meta`), e.g. a benchmark test set.
    ``average_last``: encode with the mean of the last N checkpoints (:func:`load_encoder`).
    ``flip_test`` (face): each embedding is the sum of the image's and its mirror's."""
    cfg = load_run(run_dir)
    if flip_test and cfg.data.task != "face":
        raise ConfigError(f"--flip-test mirrors face images; the run's task is {cfg.data.task!r}")
    meta = dataset_meta(cfg, data_path)
    data_path = data_path or cfg.data.path
    device = torch.device(device or "cpu")
    enc = load_encoder(run_dir, cfg, meta, device, average_last)
    decode_inputs = components.make_decoder(cfg.data.task, meta, cfg.model)
    from xclass.data.prefetch import prefetch
    from xclass.data.reader import ParquetReader

    def decode(batch):  # encoder inputs (to the device) + the id/label columns (numpy, kept)
        return decode_inputs(batch)[0], (np.asarray(batch["id"], dtype=np.int64), _labels_of(batch))

    reader = ParquetReader(split_files(data_path, split), components.input_columns(cfg.data.task, cfg.model.encoder, meta),
                           rank=0, world_size=1, batch_rows=batch_rows, seed=0,
                           shuffle=False)
    reader.set_epoch(0)
    ids: List[np.ndarray] = []
    embs: List[np.ndarray] = []
    labels: List[Any] = []
    t0, n = time.perf_counter(), 0
    with torch.no_grad():
        for inputs, (batch_ids, batch_labels) in prefetch(reader, decode, 2, device):
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                e = encode_batch(enc, inputs, frame_budget)
                embs.append(e + encode_batch(enc, mirrored(inputs), frame_budget) if flip_test else e)
            ids.append(batch_ids)
            labels.append(batch_labels)
            n += len(ids[-1])
            print(f"\r[xclass export] {split}: {n} rows, {n / (time.perf_counter() - t0):.0f} rows/s",
                  end="", file=sys.stderr)
    print(file=sys.stderr)
    emb = np.concatenate(embs) if embs else np.zeros((0, cfg.model.embedding_dim), np.float32)
    return (np.concatenate(ids) if ids else np.zeros(0, np.int64)), emb, labels


def encode_batch(enc: torch.nn.Module, inputs: Dict[str, torch.Tensor], frame_budget: int = 1 << 18) -> np.ndarray:
    """Embeddings [B, d] float32 of one decoded batch, rows in input order.

    Variable-length inputs (``lengths`` [B] next to tensors padded on dim 1 to ``T`` frames)
    are encoded in sub-batches of similar length: rows sorted by length (longest first), each
    sub-batch holds ``max(1, frame_budget // its longest row)`` rows and its padded tensors are
    cut to that row's length. A length-masked encoder gives the same embeddings as one padded
    batch, with far less padding and memory (a 512-row batch of real utterances padded to the
    longest one is mostly zeros). Inputs without ``lengths`` (or ``frame_budget`` 0) go through
    in one call."""
    lengths = inputs.get("lengths")
    if lengths is None or frame_budget <= 0 or len(lengths) == 0:
        return enc(inputs).float().cpu().numpy()
    n, t_pad = len(lengths), max(int(v.shape[1]) for k, v in inputs.items() if k != "lengths" and v.dim() >= 2)
    order = torch.argsort(lengths, descending=True, stable=True)
    out = None
    i = 0
    while i < n:
        longest = max(1, int(lengths[order[i]]))
        idx = order[i:i + max(1, frame_budget // longest)]
        sub = {k: (v[idx, :longest] if k != "lengths" and v.dim() >= 2 and v.shape[1] == t_pad else v[idx])
               for k, v in inputs.items()}
        emb = enc(sub).float().cpu().numpy()
        if out is None:
            out = np.empty((n, emb.shape[1]), np.float32)
        out[idx.cpu().numpy()] = emb
        i += len(idx)
    return out


def _labels_of(batch: Dict[str, Any]) -> Any:
    """Single labels [n], or (values, offsets) of a multi-label CSR column, or None."""
    if "label" in batch:
        return np.asarray(batch["label"], dtype=np.int64)
    if "labels" in batch:
        return np.asarray(batch["labels"], dtype=np.int64), np.asarray(batch["labels_offsets"])
    return None


def _label_column(parts: List[Any]) -> Dict[str, pa.Array]:
    if not parts or parts[0] is None:
        return {}
    if not isinstance(parts[0], tuple):
        return {"label": pa.array(np.concatenate(parts))}
    values = np.concatenate([v for v, _ in parts])
    sizes = np.concatenate([np.diff(o) for _, o in parts])
    offsets = np.r_[0, np.cumsum(sizes)].astype(np.int32)
    return {"labels": pa.ListArray.from_arrays(pa.array(offsets), pa.array(values, type=pa.int64()))}


def export_head(run_dir: str, out_dir: str) -> List[str]:
    """The head's class vectors as label embeddings: ``labels-XXXXX.parquet`` per shard (``id``
    and ``label`` = class id, ``embedding``). Sub-centre heads export all K vectors of a class
    under the class id (a search returns the class through its nearest sub-centre)."""
    os.makedirs(out_dir, exist_ok=True)
    files = []
    for r, ids, w in head_shards(run_dir):
        f = os.path.join(out_dir, f"labels-{r:05d}.parquet")
        write_parquet_atomic(class_table(ids, w), f)
        files.append(f)
    return remove_stale_labels(out_dir, files)


def remove_stale_labels(out_dir: str, files: List[str]) -> List[str]:
    """Delete the ``labels-*.parquet`` in ``out_dir`` that this export did not write (a head saved
    on more ranks before), so the directory as a gallery holds this export only; -> ``files``."""
    import glob

    keep = {os.path.abspath(f) for f in files}
    for old in glob.glob(os.path.join(out_dir, "labels-*.parquet")):
        if os.path.abspath(old) not in keep:
            os.remove(old)
    return files


def _newest_checkpoint(run_dir: str) -> Tuple[str, Dict[str, Any]]:
    """(path, manifest) of the run's newest complete checkpoint; none is a CheckpointError."""
    path = ckpt.latest_checkpoint(run_dir)
    if path is None:
        raise ckpt.CheckpointError(f"{run_dir}: no complete checkpoint")
    return path, ckpt.read_manifest(path)


def head_layout(run_dir: str) -> List[List[int]]:
    """The class range ``[start, end)`` of each head shard of the run's newest checkpoint."""
    return [list(r) for r in _newest_checkpoint(run_dir)[1]["shard_ranges"]]


def head_shards(run_dir: str):
    """Yield ``(rank, ids [R_r], vectors [R_r, d] float32)`` of every saved head shard of the run's
    newest checkpoint, one shard in memory at a time (``ids``: the class id of each row; K rows
    per class for sub-centre heads)."""
    cfg = load_run(run_dir)
    components.load_all()
    path, m = _newest_checkpoint(run_dir)
    for r in range(int(m["world_size"])):
        ctx = ParallelContext(rank=r, world_size=int(m["world_size"]), group=None)
        head = make_head(cfg, int(m["num_classes"]), int(m["embedding_dim"]), ctx)
        head.load_state_dict(ckpt.load_head_state(path, r)["head"])
        with torch.no_grad():
            w, start = head.local_weight()
        w = w.float().numpy()
        n_cls = int(m["shard_ranges"][r][1]) - start
        k = w.shape[0] // max(1, n_cls)  # sub-centre heads: K class-major rows per class, all exported
        yield r, np.repeat(np.arange(start, start + n_cls, dtype=np.int64), k), w
        del head


def gather_head(run_dir: str) -> Tuple[np.ndarray, np.ndarray]:
    """(class ids [R], vectors [R, d] float32) of the run's whole head, its shards in rank order."""
    shards = [(ids, w) for _, ids, w in head_shards(run_dir)]
    return np.concatenate([i for i, _ in shards]), np.concatenate([w for _, w in shards])


def class_table(ids: np.ndarray, w: np.ndarray) -> pa.Table:
    """Class vectors ``w`` [R, d] with their class ids [R] as an embedding table (``label`` = ``id``)."""
    return pa.table({"id": ids, "label": ids, "embedding": pa.FixedSizeListArray.from_arrays(
        pa.array(w.reshape(-1)), w.shape[1])})
