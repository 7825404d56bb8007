"""WordNet 3.0 as a real XMC dataset (Debian package ``wordnet-base``, /usr/share/wordnet).

Items: every noun and verb synset that has at least one hypernym (``@`` or instance ``@i``);
item text = the synset's gloss (definition and examples). Labels: every synset that is a
hypernym ancestor of some item; an item's labels are ALL its ancestors (transitive closure,
multiple inheritance followed). Label text = the label synset's lemma names + gloss. Label
ids follow the sorted (pos, offset) keys; the train/test split is a hash of the synset key
(``test_fraction``), so it is deterministic and independent of file order.

Tokenisation: lower-case ``[a-z0-9]+`` words; the vocabulary holds every word of the training
items and the label texts (test-only words are dropped), ordered by frequency then
alphabetically, ids from 1 (0 = padding). ``vocab.txt`` (one word per line, line i = id i + 1)
is written beside the Parquet files.
"""
from __future__ import annotations

import hashlib
import os
import re
from collections import Counter
from typing import Dict, List, Sequence, Tuple

from xclass.importers.xmc_dataset import write_xmc_dataset

WORDNET_DIR = "/usr/share/wordnet"
POS_FILES = (("n", "data.noun"), ("v", "data.verb"))
HYPERNYM = ("@", "@i")
_WORD = re.compile(r"[a-z0-9]+")
Key = Tuple[str, int]


class Synset:
    __slots__ = ("lemmas", "gloss", "parents")

    def __init__(self, lemmas: List[str], gloss: str, parents: List[Key]) -> None:
        self.lemmas, self.gloss, self.parents = lemmas, gloss, parents


def tokenize(text: str) -> List[str]:
    return _WORD.findall(text.lower())


def parse_line(line: str, pos: str, path: str, lineno: int) -> Tuple[Key, Synset]:
    """One data.{noun,verb} line: offset lex_filenum ss_type w_cnt(hex) [word lex_id]* p_cnt
    [sym offset pos src/tgt]* [frames] | gloss."""
    head, sep, gloss = line.partition("|")
    f = head.split()
    try:
        off, n_words = int(f[0]), int(f[3], 16)
        lemmas = [f[4 + 2 * i].replace("_", " ") for i in range(n_words)]
        at = 4 + 2 * n_words
        n_ptr = int(f[at])
        ptrs = [f[at + 1 + 4 * i: at + 5 + 4 * i] for i in range(n_ptr)]
        parents = [(p[2], int(p[1])) for p in ptrs if p[0] in HYPERNYM]
    except (ValueError, IndexError) as exc:
        raise ValueError(f"{path}: line {lineno}: malformed WordNet data line ({exc})") from None
    if not sep:
        raise ValueError(f"{path}: line {lineno}: no '|' gloss separator")
    return (pos, off), Synset([re.sub(r"\(.*\)$", "", w) for w in lemmas], gloss.strip(), parents)


def read_wordnet(root: str = WORDNET_DIR) -> Dict[Key, Synset]:
    """All noun and verb synsets keyed by (pos, byte offset)."""
    missing = [f for _, f in POS_FILES if not os.path.exists(os.path.join(root, f))]
    if missing:
        raise FileNotFoundError(
            f"WordNet 3.0 data not found: {', '.join(os.path.join(root, m) for m in missing)} missing. "
            "Install the Debian package wordnet-base (apt-get install -y wordnet-base) or pass --wordnet-dir")
    out: Dict[Key, Synset] = {}
    for pos, fname in POS_FILES:
        path = os.path.join(root, fname)
        with open(path, encoding="latin-1") as fh:
            for lineno, line in enumerate(fh, 1):
                if line.startswith("  "):  # licence header
                    continue
                key, syn = parse_line(line, pos, path, lineno)
                out[key] = syn
    return out


def ancestors(synsets: Dict[Key, Synset]) -> Dict[Key, frozenset]:
    """Transitive hypernym closure of every synset (memoised, iterative: no recursion limit)."""
    memo: Dict[Key, frozenset] = {}
    for root in synsets:
        stack = [root]
        while stack:
            k = stack[-1]
            if k in memo:
                stack.pop()
                continue
            todo = [p for p in synsets[k].parents if p not in memo and p in synsets]
            if todo:
                stack.extend(todo)
                continue
            acc = set()
            for p in synsets[k].parents:
                if p in synsets:
                    acc.add(p)
                    acc |= memo[p]
            memo[k] = frozenset(acc)
            stack.pop()
    return memo


def _is_test(key: Key, fraction: float) -> bool:
    h = int(hashlib.sha256(f"{key[0]}{key[1]}".encode()).hexdigest()[:8], 16)
    return h < fraction * 0x100000000


def _vocab(texts: Sequence[List[str]]) -> Dict[str, int]:
    c = Counter(w for t in texts for w in t)
    words = sorted(c, key=lambda w: (-c[w], w))
    return {w: i + 1 for i, w in enumerate(words)}


def import_wordnet(out_dir: str, root: str = WORDNET_DIR, test_fraction: float = 0.1,
                   overwrite: bool = False, progress: bool = True, seed: int = 0) -> Dict:
    """Write the WordNet XMC dataset to ``out_dir`` (train/test/labels Parquet, meta.json, vocab.txt).
    Row ids follow the sorted synset keys; the train rows are stored in ``seed``'s random order."""
    syn = read_wordnet(root)
    anc = ancestors(syn)
    items = sorted(k for k in syn if anc[k])
    label_keys = sorted(set().union(*(anc[k] for k in items)))
    lid = {k: i for i, k in enumerate(label_keys)}
    label_words = [tokenize(" ".join(syn[k].lemmas) + " " + syn[k].gloss) for k in label_keys]
    split = {k: _is_test(k, test_fraction) for k in items}
    item_words = {k: tokenize(syn[k].gloss) for k in items}
    vocab = _vocab([item_words[k] for k in items if not split[k]] + label_words)

    def rows(test: bool):
        for k in items:
            if split[k] == test:
                toks = [vocab[w] for w in item_words[k] if w in vocab]
                yield sorted(lid[a] for a in anc[k]), toks, [1.0] * len(toks)

    n_test = sum(split.values())
    meta = write_xmc_dataset(
        out_dir, {"train": rows(False), "test": rows(True)}, num_labels=len(label_keys),
        vocab_size=len(vocab) + 1, label_text=[" ".join(syn[k].lemmas) + " | " + syn[k].gloss for k in label_keys],
        label_tokens=[[vocab[w] for w in t] for t in label_words],
        totals={"train": len(items) - n_test, "test": n_test}, overwrite=overwrite, progress=progress,
        shuffle_seed=seed, source={"format": "wordnet-3.0", "dir": root, "items": len(items), "test_fraction": test_fraction,
                "label_keys": "sorted (pos, offset)"})
    path = os.path.join(out_dir, "vocab.txt")
    with open(path + ".tmp", "w") as f:
        f.write("".join(w + "\n" for w in sorted(vocab, key=vocab.get)))
    os.replace(path + ".tmp", path)
    return meta
