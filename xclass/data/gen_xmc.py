"""Synthetic extreme multi-label text: Zipf label frequencies, topic co-occurrence, label vocabularies.

Labels are ranked by popularity: rank ``r`` has weight ``(r + 1) ** -alpha`` and label id
``perm(r)`` (a hashed bijection, so popular labels are not simply the small ids). Rank ``r``
belongs to topic ``r mod K``. A document draws ``1 + Poisson(mean_labels - 1)`` labels: the
first from the global Zipf, the others with probability ``topic_prob`` from the first one's
topic (Zipf inside the topic), else globally. Its tokens are a few words of each label's
private vocabulary (``words_per_label`` hashed token ids), two words of the topic and
Zipf-distributed background tokens, in random order. Token 0 is never drawn
(meta.json pad_id = vocab_size: the encoders pad with a dedicated row).
The label table gives each label text made of its first words and topic word.
"""
from __future__ import annotations

from typing import Dict

import numpy as np
import pyarrow as pa

from xclass.data.synth import AffinePerm, Zipf, hash_u64
from xclass.data.writer import var_list, with_task_meta


def _ragged_sort(rows: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Order that groups ``rows`` ascending and sorts ``keys`` inside each row."""
    return np.lexsort((keys, rows))


class XmcGenerator:
    """Document rows ``id, labels list<int64>, tokens list<int32>`` and a label table."""

    task = "xmc"
    row_group_rows = 65536
    chunk_rows = 32768

    def __init__(self, seed: int, num_classes: int, vocab_size: int = 20000, alpha: float = 1.0,
                 topic_size: int = 20, mean_labels: float = 3.0, max_labels: int = 12,
                 topic_prob: float = 0.7, words_per_label: int = 8, tokens_per_label: int = 3,
                 background_tokens: int = 8) -> None:
        if vocab_size < 16:
            raise ValueError(f"vocab_size must be >= 16, got {vocab_size}")
        self.seed, self.L, self.V = seed, num_classes, vocab_size
        self.K = max(1, num_classes // topic_size)
        self.mean_labels, self.max_labels, self.topic_prob = mean_labels, max_labels, topic_prob
        self.words_per_label, self.tokens_per_label = words_per_label, tokens_per_label
        self.background_tokens = background_tokens
        self.perm = AffinePerm(num_classes, seed + 1)
        self.global_zipf = Zipf(num_classes, alpha)
        self.topic_zipf = Zipf(-(-num_classes // self.K), alpha)
        self.vocab_zipf = Zipf(vocab_size - 1, 1.1)

    def input_meta(self) -> Dict:
        # pad_id: the encoders' padding row (id vocab_size); token 0 is simply never drawn.
        return {"tokens": {"vocab_size": self.V, "pad_id": self.V}, "num_topics": self.K}

    def schema(self) -> pa.Schema:
        schema = pa.schema([("id", pa.int64()), ("labels", pa.list_(pa.int64())),
                            ("tokens", pa.list_(pa.int32()))])
        return with_task_meta(schema, self.task, vocab_size=self.V)

    def label_schema(self) -> pa.Schema:
        schema = pa.schema([("label_id", pa.int64()), ("text", pa.string()),
                            ("tokens", pa.list_(pa.int32())), ("topic", pa.int64()),
                            ("rank", pa.int64()), ("train_count", pa.int64())])
        return with_task_meta(schema, "xmc_labels", vocab_size=self.V)

    def label_words(self, labels: np.ndarray) -> np.ndarray:
        """Private vocabulary [n, words_per_label] of each label (token ids in [1, V))."""
        h = hash_u64(self.seed, labels[:, None], 7, np.arange(self.words_per_label)[None, :])
        return (1 + h % np.uint64(self.V - 1)).astype(np.int64)

    def topic_words(self, topics: np.ndarray, count: int = 2) -> np.ndarray:
        h = hash_u64(self.seed, topics[:, None], 11, np.arange(count)[None, :])
        return (1 + h % np.uint64(self.V - 1)).astype(np.int64)

    def _doc_labels(self, n: int, rng: np.random.Generator):
        """(row index per label, label ids, first-label topic [n]); duplicates removed."""
        k = np.minimum(1 + rng.poisson(self.mean_labels - 1, n), self.max_labels)
        rows = np.repeat(np.arange(n), k)
        first = np.concatenate([[0], np.cumsum(k)[:-1]])
        ranks = self.global_zipf.sample(rng, rows.size)
        topic = ranks[first] % self.K
        in_topic = (rng.random(rows.size) < self.topic_prob)
        in_topic[first] = False
        tr = topic[rows] + self.K * self.topic_zipf.sample(rng, rows.size)
        in_topic &= tr < self.L
        ranks = np.where(in_topic, tr, ranks)
        labels = self.perm(ranks)
        order = _ragged_sort(rows, labels)
        rows, labels = rows[order], labels[order]
        keep = np.ones(rows.size, dtype=bool)
        keep[1:] = (rows[1:] != rows[:-1]) | (labels[1:] != labels[:-1])
        return rows[keep], labels[keep], topic

    def documents(self, n: int, rng: np.random.Generator):
        """CSR (label offsets, labels, token offsets, tokens) for ``n`` documents."""
        rows, labels, topic = self._doc_labels(n, rng)
        words = self.label_words(labels)  # [m, W]
        pick = rng.integers(0, self.words_per_label, (labels.size, self.tokens_per_label))
        lab_tok = np.take_along_axis(words, pick, axis=1)
        nb = rng.poisson(self.background_tokens, n)
        tok_rows = np.concatenate([np.repeat(rows, self.tokens_per_label), np.repeat(np.arange(n), 2),
                                   np.repeat(np.arange(n), nb)])
        toks = np.concatenate([lab_tok.reshape(-1), self.topic_words(topic).reshape(-1),
                               1 + self.vocab_zipf.sample(rng, int(nb.sum()))])
        order = _ragged_sort(tok_rows, rng.random(toks.size))  # shuffle inside each document
        lab_off = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=n))])
        tok_off = np.concatenate([[0], np.cumsum(np.bincount(tok_rows, minlength=n))])
        return lab_off, labels, tok_off, toks[order].astype(np.int32)

    def rows(self, ids: np.ndarray, rng: np.random.Generator, counts: np.ndarray = None) -> Dict[str, pa.Array]:
        """One chunk of documents; ``counts`` [L] (optional) accumulates label frequencies."""
        lab_off, labels, tok_off, toks = self.documents(len(ids), rng)
        if counts is not None:
            counts += np.bincount(labels, minlength=self.L)
        return {"id": pa.array(ids, pa.int64()), "labels": var_list(labels, lab_off, pa.int64()),
                "tokens": var_list(toks, tok_off, pa.int32())}

    def label_rows(self, label_ids: np.ndarray, counts: np.ndarray) -> Dict[str, pa.Array]:
        """Label table rows: text/tokens = 4 private words + the topic's first word."""
        ranks = self.perm.inverse(label_ids)
        topics = ranks % self.K
        toks = np.concatenate([self.label_words(label_ids)[:, :4], self.topic_words(topics, 1)], axis=1)
        text = [" ".join(f"w{t}" for t in row) for row in toks.tolist()]
        off = np.arange(len(label_ids) + 1) * toks.shape[1]
        return {"label_id": pa.array(label_ids, pa.int64()), "text": pa.array(text, pa.string()),
                "tokens": var_list(toks.reshape(-1).astype(np.int32), off, pa.int32()),
                "topic": pa.array(topics, pa.int64()), "rank": pa.array(ranks, pa.int64()),
                "train_count": pa.array(counts[label_ids], pa.int64())}
