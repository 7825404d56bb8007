"""XMC text towers over token ids: EmbeddingBag + MLP, and a small Transformer encoder.

Inputs: ``tokens [B, L]`` int64 padded with anything, ``lengths [B]`` int64. Positions
``>= lengths`` are replaced by a dedicated padding row (index ``vocab_size``), so the
padding value written by the decoder never aliases a real token (meta.json ``pad_id`` =
``vocab_size``). ``embbag`` also takes ``token_weights [B, L]`` float (e.g. tf-idf values):
then the bag is the weighted sum (mode sum) or the weighted mean, sum_i w_i e_i / sum_i w_i
(mode mean), through ``per_sample_weights``.
"""
from __future__ import annotations

from typing import Any, Dict, Mapping, Sequence

import torch
from torch import Tensor, nn

from xclass.models.encoders.mlp import mlp_stack
from xclass.models.layers import length_mask, masked_mean
from xclass.models.registry import meta_get, register_encoder


def _padded_tokens(inputs: Mapping[str, Tensor], vocab_size: int, max_len: int) -> tuple:
    """-> (tokens ``[B, L']`` with padding = ``vocab_size``, mask ``[B, L']``), L' <= max_len."""
    tokens, lengths = inputs["tokens"], inputs["lengths"]
    tokens, lengths = tokens[:, :max_len], lengths.clamp_max(max_len)
    mask = length_mask(lengths, tokens.shape[1])
    # Ids are range-checked by the decoder (on the host, without a device sync here).
    return tokens.masked_fill(~mask, vocab_size).long(), mask


class EmbBagEncoder(nn.Module):
    """Bag of token embeddings (mean or sum over valid tokens) -> MLP -> ``[B, d]``."""

    def __init__(self, vocab_size: int, embedding_dim: int, token_dim: int,
                 hidden: Sequence[int], mode: str, max_len: int, dropout: float) -> None:
        super().__init__()
        if mode not in ("mean", "sum"):
            raise ValueError(f"embbag: 'mode' must be mean or sum, got {mode!r}")
        self.vocab_size, self.max_len = vocab_size, max_len
        # padding_idx rows are skipped by the bag (and excluded from the mean's count).
        self.bag = nn.EmbeddingBag(vocab_size + 1, token_dim, mode=mode, padding_idx=vocab_size)
        self.mlp = mlp_stack(token_dim, hidden, embedding_dim, dropout)

    def forward(self, inputs: Mapping[str, Tensor]) -> Tensor:
        tokens, mask = _padded_tokens(inputs, self.vocab_size, self.max_len)
        if "token_weights" not in inputs:
            return self.mlp(self.bag(tokens))
        w = inputs["token_weights"][:, :tokens.shape[1]].to(self.bag.weight.dtype) * mask
        # per_sample_weights needs mode "sum"; the mean divides by the row's weight total.
        bag = nn.functional.embedding_bag(tokens, self.bag.weight, per_sample_weights=w, mode="sum",
                                          padding_idx=self.vocab_size, sparse=self.bag.sparse)
        if self.bag.mode == "mean":
            bag = bag / w.sum(1, keepdim=True).clamp_min(1e-12)
        return self.mlp(bag)


class TransformerTextEncoder(nn.Module):
    """Pre-LN Transformer over tokens + learned positions, masked mean pool -> ``[B, d]``."""

    def __init__(self, vocab_size: int, embedding_dim: int, width: int, depth: int,
                 heads: int, ffn_mult: int, max_len: int, dropout: float) -> None:
        super().__init__()
        self.vocab_size, self.max_len = vocab_size, max_len
        self.tok = nn.Embedding(vocab_size + 1, width, padding_idx=vocab_size)
        self.pos = nn.Embedding(max_len, width)
        layer = nn.TransformerEncoderLayer(width, heads, ffn_mult * width, dropout,
                                           activation="gelu", batch_first=True, norm_first=True)
        # No nested-tensor fast path: it changes numerics between train and eval.
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        self.out = nn.Linear(width, embedding_dim)

    def forward(self, inputs: Mapping[str, Tensor]) -> Tensor:
        tokens, mask = _padded_tokens(inputs, self.vocab_size, self.max_len)
        # An empty row would make attention all -inf (NaN); let it attend to its pad slot.
        mask = mask.clone()
        mask[:, 0] |= ~mask.any(1)
        pos = torch.arange(tokens.shape[1], device=tokens.device)
        h = self.tok(tokens) + self.pos(pos).unsqueeze(0)
        h = self.encoder(h, src_key_padding_mask=~mask)
        pooled = masked_mean(self.norm(h), mask.unsqueeze(-1), 1)
        return self.out(pooled)


@register_encoder("embbag", tasks=("xmc",))
def embbag(meta: Dict[str, Any], embedding_dim: int, *, token_dim: int = 128,
           hidden: Sequence[int] = (256,), mode: str = "mean", max_len: int = 512,
           dropout: float = 0.0) -> EmbBagEncoder:
    """EmbeddingBag tower over ``tokens``/``lengths``; needs ``vocab_size`` in meta.json."""
    return EmbBagEncoder(int(meta_get(meta, "vocab_size", "encoder 'embbag'", "tokens")), embedding_dim,
                         token_dim, tuple(hidden), mode, max_len, dropout)


@register_encoder("transformer", tasks=("xmc",))
def transformer(meta: Dict[str, Any], embedding_dim: int, *, width: int = 64, depth: int = 2,
                heads: int = 4, ffn_mult: int = 4, max_len: int = 64,
                dropout: float = 0.0) -> TransformerTextEncoder:
    """Transformer tower over ``tokens``/``lengths``; needs ``vocab_size`` in meta.json."""
    return TransformerTextEncoder(int(meta_get(meta, "vocab_size", "encoder 'transformer'", "tokens")),
                                  embedding_dim, width, depth, heads, ffn_mult, max_len, dropout)
