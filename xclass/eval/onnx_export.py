"""``xclass export-model``: a trained run's encoder as an ONNX model, checked with onnxruntime.

The model takes what the encoder takes: the task decoder's tensors for a batch of rows (face
``image`` uint8 [B, C, H, W]; speaker ``fbank`` float32 [B, T, n_mels] + ``lengths`` [B]; quic
packets and statistics; XMC ``tokens`` [B, L] + ``lengths`` ...), one ONNX input each, named
after them, and returns ``xclass_embedding`` float32 [B, d] (as the encoder gives it: normalised
only where the encoder normalises; an ensemble directory: the members' fused embedding, unit
rows, with ``members`` and ``ensemble_dims`` in ``OUT.json``). The batch axis is dynamic,
and so is the length axis of the task's ``sequence_inputs`` (speaker frames, XMC tokens).

Export goes through ``torch.onnx.export(dynamo=True)`` on a batch of the run's own data; the
file is then loaded with onnxruntime and run on that batch and on a second batch of another size
(and length), and refused (nothing written) when its output differs from the torch encoder's by
more than ``tol`` of the largest embedding value. Beside ``OUT`` goes ``OUT.json``: input names,
dtypes, shapes (``null`` = dynamic), the task's meta.json ``inputs`` (image size, mel bins, ...),
embedding size and the measured difference. Needs the ``onnx``, ``onnxscript`` and
``onnxruntime`` packages (``pip install 'xclass[onnx]'``).
"""
from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Optional

import numpy as np
import torch

from xclass import components
from xclass.config_types import ConfigError
from xclass.data.meta import split_files
from xclass.eval.embed import dataset_meta, load_encoder, load_run, run_members
from xclass.tasks import get_task


#: the ONNX output's name (a plain "embedding" clashes with value names inside some towers, e.g. BERT)
OUTPUT = "xclass_embedding"


class _Positional(torch.nn.Module):
    """The encoder with its input dict as positional tensors, in ``names`` order (ONNX inputs)."""

    def __init__(self, encoder: torch.nn.Module, names: List[str]) -> None:
        super().__init__()
        self.encoder, self.names = encoder, names

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        return self.encoder(dict(zip(self.names, xs)))


def _batches(cfg: Any, meta: Dict[str, Any], data_path: str, rows: int) -> List[Dict[str, torch.Tensor]]:
    """Two decoded batches of the dataset (test split, else train): ``rows`` rows, then fewer."""
    from xclass.data.reader import ParquetReader

    decode = components.make_decoder(cfg.data.task, meta, cfg.model)
    try:
        files = split_files(data_path, "test")
    except FileNotFoundError:
        files = split_files(data_path, "train")
    out = []
    for size in (rows, max(2, rows - 3)):
        reader = ParquetReader(files, components.input_columns(cfg.data.task, cfg.model.encoder, meta), rank=0,
                               world_size=1, batch_rows=size, seed=len(out), shuffle=bool(out))
        reader.set_epoch(0)
        out.append(decode(next(iter(reader)))[0])
    return out


def _onnx_modules() -> Any:
    try:
        import onnx  # noqa: F401
        import onnxruntime
        import onnxscript  # noqa: F401
    except ImportError as exc:
        raise ConfigError(f"export-model needs onnx, onnxscript and onnxruntime ({exc.name} is missing): "
                          "pip install 'xclass[onnx]'") from None
    return onnxruntime


def export_model(run_dir: str, out: str, *, data_path: Optional[str] = None, average_last: int = 1,
                 rows: int = 8, tol: float = 1e-3, overwrite: bool = False) -> Dict[str, Any]:
    """Write the run's encoder to ``out`` (ONNX) and ``out.json``; returns the JSON dict. An
    ensemble directory (``train.ensemble``) gives one model of all its members, whose output is
    their fused embedding, as ``export-index --run`` writes it (:class:`~xclass.eval.ensemble.FusedEncoder`)."""
    from xclass.eval.ensemble import FusedEncoder, check_same_data

    if not overwrite and (os.path.exists(out) or os.path.exists(out + ".json")):
        raise FileExistsError(f"{out}: exists; pass --overwrite to replace it")
    _onnx_modules()
    members = run_members(run_dir)
    runs = members or [run_dir]
    if members:
        check_same_data(members, data_path)
    cfgs = [load_run(r) for r in runs]
    cfg, meta = cfgs[0], dataset_meta(cfgs[0], data_path)
    encs = [load_encoder(r, c, meta, average_last=average_last) for r, c in zip(runs, cfgs)]
    batches = _batches(cfg, meta, data_path or cfg.data.path, rows)
    about = {"run": os.path.abspath(run_dir), "task": cfg.data.task, "encoder": cfg.model.encoder,
             "embedding_dim": sum(c.model.embedding_dim for c in cfgs), "average_last": average_last,
             "meta_inputs": meta.get("inputs", {})}
    if members:   # the output is fused: each member's part L2-normalised, the whole / sqrt(K)
        about.update(members=runs, ensemble_dims=[c.model.embedding_dim for c in cfgs])
    enc = FusedEncoder(encs) if members else encs[0]
    return export_encoder(enc, batches, get_task(cfg.data.task).sequence_inputs, out, tol, about)


def export_encoder(enc: torch.nn.Module, batches: List[Dict[str, torch.Tensor]], sequence_inputs: Any, out: str,
                   tol: float = 1e-3, about: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Export ``enc`` (eval mode) traced on ``batches[0]``, check it with onnxruntime on every batch
    and write ``out`` + ``out.json`` (temporary names, renamed when both are complete)."""
    ort = _onnx_modules()
    first = batches[0]
    names = sorted(first)
    seq = set(sequence_inputs)
    batch, length = torch.export.Dim("batch", min=1), torch.export.Dim("length", min=2)
    shapes = tuple({0: batch, **({1: length} if k in seq and first[k].dim() > 1 else {})} for k in names)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    tmp = out + ".tmp"
    try:
        _export(enc.eval(), first, names, shapes, tmp)
        diff, used = _check(ort, tmp, enc, names, batches, tol)
        spec = {"format": "onnx", **(about or {}), "output": OUTPUT,
                "inputs": [{"name": k, "dtype": str(first[k].dtype).replace("torch.", ""),
                            "shape": [None if (d == 0 or (d == 1 and k in seq)) else int(n)
                                      for d, n in enumerate(first[k].shape)]} for k in names if k in used],
                "max_abs_diff": diff, "tolerance": tol}
        with open(tmp + ".json", "w") as f:
            json.dump(spec, f, indent=1)
        os.replace(tmp, out)
        os.replace(tmp + ".json", out + ".json")
        return spec
    finally:
        for p in (tmp, tmp + ".json"):
            if os.path.exists(p):
                os.remove(p)


def _export(enc: torch.nn.Module, inputs: Dict[str, torch.Tensor], names: List[str], shapes: tuple,
            path: str) -> None:
    import logging
    import warnings

    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        logging.getLogger("torch.onnx").setLevel(logging.ERROR)
        try:
            torch.onnx.export(_Positional(enc, names), tuple(inputs[k] for k in names), path, input_names=names,
                              output_names=[OUTPUT], dynamo=True, external_data=False,
                              dynamic_shapes=(shapes,), verbose=False)
        except Exception as exc:  # noqa: BLE001 - the exporter raises many kinds; one line names the cause
            raise ConfigError(f"the encoder cannot be exported to ONNX: {type(exc).__name__}: "
                              f"{str(exc).strip().splitlines()[0][:300]}") from None


def _check(ort: Any, path: str, enc: torch.nn.Module, names: List[str], batches: List[Dict[str, torch.Tensor]],
           tol: float) -> tuple:
    """(largest |onnxruntime - torch| over ``batches``, the model's input names); a ConfigError
    when above ``tol`` x max |torch| (inputs the encoder ignores are not ONNX inputs)."""
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    wanted = {i.name for i in sess.get_inputs()}
    worst = 0.0
    for b in batches:
        with torch.no_grad():
            ref = enc(b).float().numpy()
        got = sess.run([OUTPUT], {k: b[k].numpy() for k in names if k in wanted})[0]
        diff = float(np.abs(got - ref).max())
        if not np.isfinite(diff) or diff > tol * max(1.0, float(np.abs(ref).max())):
            raise ConfigError(f"the ONNX model differs from the encoder by {diff:.3g} on a batch of "
                              f"{len(ref)} rows (tolerance {tol:g}); not written")
        worst = max(worst, diff)
    return worst, wanted


__all__ = ["export_model"]
