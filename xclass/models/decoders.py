"""Task decoders: the reader's numpy batch -> (encoder inputs, labels) as CPU tensors.

Reader layout (``xclass.data.reader``): scalar columns ``[n]``, fixed-size lists ``[n, k]``,
variable lists as CSR (``batch[c]`` flat values + ``batch[c + "_offsets"]`` int64 ``[n+1]``).
Every decoder is vectorised numpy (no per-row Python loops, except for PNG/JPEG bytes) and
accepts empty batches (``n = 0``). Decoded input names:

=========  =====================================================================
face       ``image`` uint8 ``[B, C, H, W]`` (a channels-last view of the HWC bytes)
speaker    ``fbank`` float32 ``[B, T_max, n_mels]`` zero-padded, ``lengths`` int64 ``[B]``
quic       ``pkt_sizes``/``pkt_dirs``/``pkt_iat`` float32 ``[B, N]``, ``lengths`` int64
           ``[B]`` (= num_packets clipped to N), ``flow_stats`` float32 ``[B, S]``;
           ``server_port`` / ``ip_proto`` int64 ``[B]`` when meta.json lists inputs.ports
xmc        ``input_ids`` / ``attention_mask`` int64 ``[B, L]`` (text tokenised in the data
           path, see :func:`xclass.components.make_decoder`), or
           ``tokens`` int64 ``[B, L_max]`` (0-padded), ``lengths`` int64 ``[B]``,
           ``num_labels`` int64 ``[B]``; ``token_weights`` float32 ``[B, L_max]``
           (0-padded) when the batch has that column
any        ``features`` float32 ``[B, F]``
=========  =====================================================================

Labels: int64 ``[B]`` for face/speaker/quic (and ``label_id`` for ``xmc_labels``); for xmc
int64 ``[B, K_max]`` padded with ``IGNORE = -100``. ``None`` when the label column was not read.
"""
from __future__ import annotations

import io
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

import numpy as np
import torch
from torch import Tensor

from xclass.data.schema import LABEL_COLUMN, DataError
from xclass.models.registry import ENCODER_INPUTS, meta_get
from xclass.registry import Registry, UnknownNameError
from xclass.tasks.base import TableView, decoder_key

IGNORE = -100
Batch = Mapping[str, np.ndarray]
Decoded = Tuple[Dict[str, Tensor], Optional[Tensor]]
DECODERS: Registry[Callable[[Batch, Mapping[str, Any]], Decoded]] = Registry("decoder")

#: Columns of each table kind's native input (what ``input_columns`` asks the reader for) and
#: its label column: live views of the task records (``xclass.tasks``).
NATIVE_COLUMNS: Mapping[str, Tuple[str, ...]] = TableView(lambda t: t.decoder_inputs)
LABEL_COLUMNS: Mapping[str, str] = LABEL_COLUMN
_TOKEN_WEIGHTS: Mapping[str, bool] = TableView(lambda t: t.token_weights)
_META_INPUTS: Mapping[str, Tuple[Tuple[str, Tuple[str, ...]], ...]] = TableView(lambda t: t.meta_inputs)


#: Encoders that weight their tokens by ``token_weights`` (read when meta.json has them).
TOKEN_WEIGHT_ENCODERS = {"embbag"}


def has_token_weights(meta: Optional[Mapping[str, Any]]) -> bool:
    """meta.json says the splits hold a ``token_weights`` column (inputs.tokens.weights)."""
    tok = ((meta or {}).get("inputs", {}) or {}).get("tokens", {}) or {}
    return bool(tok.get("weights", False))


def input_columns(task: str, encoder: str, with_labels: bool = True,
                  meta: Optional[Mapping[str, Any]] = None) -> List[str]:
    """Parquet columns to read for ``encoder`` on ``task`` (labels first, when asked);
    ``token_weights`` too when ``meta`` says the data has them and the encoder uses them."""
    if task not in NATIVE_COLUMNS:
        raise UnknownNameError(f"unknown task {task!r}; known: {', '.join(NATIVE_COLUMNS)}")
    kind = ENCODER_INPUTS.get(encoder)
    cols = ["features"] if kind == "features" else ["text"] if kind == "text" else list(NATIVE_COLUMNS[task])
    return ([LABEL_COLUMNS[task]] if with_labels else []) + cols + optional_columns(task, encoder, meta, cols)


def optional_columns(task: str, encoder: str, meta: Optional[Mapping[str, Any]], cols: List[str]) -> List[str]:
    """Columns read only when meta.json says the data has them: ``token_weights`` when ``cols``
    read ``tokens`` for an encoder that weights them; a table's ``meta_inputs`` columns (quic:
    ``server_port``, ``ip_proto``) when ``cols`` are the native decoder's; else ``[]``."""
    out = []
    if (_TOKEN_WEIGHTS.get(task, False) and "tokens" in cols
            and encoder in TOKEN_WEIGHT_ENCODERS and has_token_weights(meta)):
        out.append("token_weights")
    if cols == list(NATIVE_COLUMNS[task]):
        inputs = (meta or {}).get("inputs", {}) or {}
        out += [c for key, group in _META_INPUTS.get(task, ()) if key in inputs for c in group]
    return out


def pad_ragged(values: np.ndarray, offsets: np.ndarray, pad: Any = 0,
               width: Optional[int] = None) -> Tuple[np.ndarray, np.ndarray]:
    """CSR rows -> (``[n, L]`` padded with ``pad``, lengths ``[n]`` int64), no Python loop.

    ``L`` = longest row (or ``width``, then longer rows are truncated and their lengths
    clipped). ``values[offsets[i]:offsets[i+1]]`` is row ``i``; ``values`` may have
    trailing dims (``[nnz, ...]`` gives ``[n, L, ...]``).
    """
    offsets = np.asarray(offsets, dtype=np.int64)
    lengths = np.diff(offsets)
    n = len(lengths)
    L = int(lengths.max(initial=0)) if width is None else int(width)
    out = np.full((n, L) + values.shape[1:], pad, dtype=values.dtype)
    keep = np.minimum(lengths, L)
    rows = np.repeat(np.arange(n), keep)
    # Position of each kept value within its row: global index minus its row's first index.
    starts = np.repeat(np.cumsum(keep) - keep, keep)
    cols = np.arange(len(rows)) - starts
    out[rows, cols] = values[np.repeat(offsets[:-1], keep) + cols]
    return out, keep.astype(np.int64)


def _tensor(x: np.ndarray, dtype: Any) -> Tensor:
    """Contiguous, writable array of ``dtype`` -> tensor sharing its memory.

    Arrow hands out read-only zero-copy buffers; torch must not alias those (an in-place
    op would write into Arrow memory), so they are copied, as is any dtype conversion.
    """
    x = np.ascontiguousarray(x, dtype=dtype)
    if not x.flags.writeable:
        x = x.copy()
    return torch.from_numpy(x)


def _ragged(batch: Batch, name: str) -> Tuple[np.ndarray, np.ndarray]:
    if name + "_offsets" not in batch:
        raise DataError(f"expected a list column (with '{name}_offsets' from the reader)",
                        column=name)
    return batch[name], batch[name + "_offsets"]


def _first_bad_row(bad: np.ndarray) -> int:
    return int(np.flatnonzero(bad)[0])


def _features(batch: Batch, out: Dict[str, Tensor]) -> None:
    if "features" in batch:
        f = np.asarray(batch["features"])
        out["features"] = _tensor(f, np.float32)


def _single_labels(batch: Batch, column: str) -> Optional[Tensor]:
    if column not in batch:
        return None
    return _tensor(batch[column], np.int64)


def _require_input(task: str, batch: Batch, out: Dict[str, Tensor]) -> None:
    if not out:
        raise DataError(f"{task} batch has no input columns (expected "
                        f"{' + '.join(NATIVE_COLUMNS[task])} or features); got {sorted(batch)}")


def decode_batch(task: str, batch: Batch, meta: Mapping[str, Any]) -> Decoded:
    """Decode one reader batch of ``task`` (face, speaker, quic, xmc, xmc_labels).

    Returns ``(inputs, labels)``: CPU tensors sharded over the batch (this rank's rows).
    """
    return DECODERS.get(decoder_key(task))(batch, meta)


def _images_from_bytes(blobs: np.ndarray, shape: Tuple[int, int, int]) -> np.ndarray:
    from PIL import Image  # only for binary (PNG/JPEG) image columns

    h, w, c = shape
    out = np.empty((len(blobs), h, w, c), dtype=np.uint8)
    for i, b in enumerate(blobs):  # a codec call per image: no vectorised form exists
        img = np.asarray(Image.open(io.BytesIO(b)).convert("L" if c == 1 else "RGB"))
        if img.shape[:2] != (h, w):
            raise DataError(f"image is {img.shape[1]}x{img.shape[0]}, meta.json says {w}x{h}",
                            row=i, column="image")
        out[i] = img.reshape(h, w, c)
    return out


@DECODERS.register("face")
def decode_face(batch: Batch, meta: Mapping[str, Any]) -> Decoded:
    out: Dict[str, Tensor] = {}
    if "image" in batch:
        h, w, c = (int(meta_get(meta, k, "face decoder", "image"))
                   for k in ("height", "width", "channels"))
        img = batch["image"]
        if img.dtype == object:
            img = _images_from_bytes(img, (h, w, c))
        elif img.ndim != 2 or img.shape[1] != h * w * c:
            raise DataError(f"image rows have {img.shape[1:]} values, meta.json says "
                            f"H*W*C = {h}*{w}*{c}", column="image")
        hwc = _tensor(img, np.uint8).reshape(-1, h, w, c)
        # NCHW view of NHWC memory = channels_last layout: no copy, and conv kernels like it.
        out["image"] = hwc.permute(0, 3, 1, 2)
    _features(batch, out)
    _require_input("face", batch, out)
    return out, _single_labels(batch, "label")


@DECODERS.register("speaker")
def decode_speaker(batch: Batch, meta: Mapping[str, Any]) -> Decoded:
    out: Dict[str, Tensor] = {}
    if "fbank" in batch:
        n_mels = int(meta_get(meta, "n_mels", "speaker decoder", "fbank"))
        values, offsets = _ragged(batch, "fbank")
        frames = np.asarray(batch["num_frames"], dtype=np.int64)
        bad = np.diff(offsets) != frames * n_mels
        if bad.any():
            i = _first_bad_row(bad)
            raise DataError(f"fbank has {np.diff(offsets)[i]} values, num_frames*n_mels = "
                            f"{frames[i]}*{n_mels}", row=i, column="fbank")
        fb, lengths = pad_ragged(values.astype(np.float32, copy=False).reshape(-1, n_mels),
                                 offsets // n_mels)
        out["fbank"], out["lengths"] = torch.from_numpy(fb), torch.from_numpy(lengths)
    _features(batch, out)
    _require_input("speaker", batch, out)
    return out, _single_labels(batch, "label")


@DECODERS.register("quic")
def decode_quic(batch: Batch, meta: Mapping[str, Any]) -> Decoded:
    out: Dict[str, Tensor] = {}
    if "pkt_sizes" in batch:
        for name in ("pkt_sizes", "pkt_dirs", "pkt_iat"):
            out[name] = _tensor(batch[name], np.float32)
        n_pkt = out["pkt_sizes"].shape[1]
        lengths = np.minimum(np.asarray(batch["num_packets"], dtype=np.int64), n_pkt)
        out["lengths"] = torch.from_numpy(lengths)
        if "flow_stats" in batch:
            out["flow_stats"] = _tensor(batch["flow_stats"], np.float32)
        for _, group in _META_INPUTS["quic"]:  # server_port / ip_proto, read when meta.json lists them
            for name in group:
                if name in batch:
                    out[name] = _tensor(batch[name], np.int64)
    _features(batch, out)
    _require_input("quic", batch, out)
    return out, _single_labels(batch, "label")


def _tokens(batch: Batch, meta: Mapping[str, Any], who: str, out: Dict[str, Tensor]) -> None:
    if "tokens" not in batch:
        return
    vocab = int(meta_get(meta, "vocab_size", who, "tokens"))
    values, offsets = _ragged(batch, "tokens")
    bad = (values < 0) | (values >= vocab)
    if bad.any():
        i = int(np.searchsorted(offsets, _first_bad_row(bad), side="right") - 1)
        raise DataError(f"token id {values[bad][0]} outside [0, vocab_size={vocab})",
                        row=i, column="tokens")
    tok, lengths = pad_ragged(values.astype(np.int64, copy=False), offsets, 0)
    out["tokens"], out["lengths"] = torch.from_numpy(tok), torch.from_numpy(lengths)
    if "token_weights" in batch:
        w_val, w_off = _ragged(batch, "token_weights")
        bad = np.diff(w_off) != np.diff(offsets)
        if bad.any():
            raise DataError("token_weights and tokens differ in length", row=_first_bad_row(bad),
                            column="token_weights")
        w, _ = pad_ragged(w_val.astype(np.float32, copy=False), w_off, 0.0)
        out["token_weights"] = torch.from_numpy(w)


@DECODERS.register("xmc")
def decode_xmc(batch: Batch, meta: Mapping[str, Any]) -> Decoded:
    out: Dict[str, Tensor] = {}
    _tokens(batch, meta, "xmc decoder", out)
    for name in ("input_ids", "attention_mask"):
        if name in batch:
            out[name] = _tensor(batch[name], np.int64)
    _features(batch, out)
    _require_input("xmc", batch, out)
    labels = None
    if "labels" in batch:
        values, offsets = _ragged(batch, "labels")
        lab, counts = pad_ragged(values.astype(np.int64, copy=False), offsets, IGNORE)
        labels = torch.from_numpy(lab)
        out["num_labels"] = torch.from_numpy(counts)
    return out, labels


@DECODERS.register("xmc_labels")
def decode_xmc_labels(batch: Batch, meta: Mapping[str, Any]) -> Decoded:
    """The XMC label table (label_id, tokens): inputs for the label (item) tower."""
    out: Dict[str, Tensor] = {}
    _tokens(batch, meta, "xmc_labels decoder", out)
    _features(batch, out)
    _require_input("xmc_labels", batch, out)
    return out, _single_labels(batch, "label_id")
