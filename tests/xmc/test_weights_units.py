"""Imported token weights reach the TF-IDF baseline and the embedding-bag encoder (against
hand/brute-force computations), pad_id in meta.json is the encoders' padding row, XMC JSON
output is in percent, PSP takes N / label counts from options, and the training log names the
margin only for heads that apply it."""
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from xclass.eval.metrics import LabelSets, Ranking, inverse_propensity, xmc_metrics
from xclass.models.decoders import decode_batch, input_columns
from xclass.models.encoders.text import EmbBagEncoder
from xclass.importers.xmc_dataset import write_xmc_dataset

V, L = 6, 4
# Tokens 1 and 2 appear in every query; only the imported weights say which one matters.
TRAIN = [([0], [1, 2], [5.0, 0.1]), ([1], [1, 2], [0.1, 5.0]), ([2], [3, 4], [1.0, 1.0]),
         ([3], [4, 5, 5], [1.0, 0.5, 0.5])]
TEST = [([0], [1, 2], [3.0, 0.2]), ([1], [2, 1], [4.0, 0.3])]


@pytest.fixture()
def weighted(tmp_path):
    d = str(tmp_path / "d")
    write_xmc_dataset(d, {"train": TRAIN, "test": TEST}, num_labels=L, vocab_size=V, progress=False,
                      shuffle_seed=None)  # input order: rows compared by position
    return d


def _dense(rows):
    X = np.zeros((len(rows), V))
    for i, (_, toks, wts) in enumerate(rows):
        for t, w in zip(toks, wts):
            X[i, t] += w
    return X / np.linalg.norm(X, axis=1, keepdims=True)


def test_tfidf_reads_token_weights(weighted):
    from xclass.eval.tfidf import read_split, tfidf_knn_baseline

    X, _, _ = read_split(weighted + "/train.parquet")
    np.testing.assert_allclose(X.toarray()[:, :V], [[0, 5, .1, 0, 0, 0], [0, .1, 5, 0, 0, 0],
                                                   [0, 0, 0, 1, 1, 0], [0, 0, 0, 0, 1, 1]], rtol=1e-6)
    got = tfidf_knn_baseline(weighted + "/train.parquet", weighted + "/test.parquet", L, ks=(1,), k=1,
                             progress=False)
    assert got["weighting"] == "given"
    S = _dense(TEST) @ _dense(TRAIN).T  # cosine of the given weights: query i's neighbour is row i
    assert list(S.argmax(1)) == [0, 1] and got["P@1"] == 1.0


def test_tfidf_counts_keep_tfidf_weighting(tmp_path):
    from xclass.eval.tfidf import tfidf_knn_baseline

    ones = [(lab, t, [1.0] * len(t)) for lab, t, _ in TRAIN]
    write_xmc_dataset(str(tmp_path / "c"), {"train": ones, "test": [(lab, t, [1.0] * len(t)) for lab, t, _ in TEST]},
                      num_labels=L, vocab_size=V, progress=False)
    got = tfidf_knn_baseline(str(tmp_path / "c/train.parquet"), str(tmp_path / "c/test.parquet"), L, ks=(1,),
                             k=1, progress=False)
    assert got["weighting"] == "tfidf"


def test_embbag_uses_token_weights():
    torch.manual_seed(0)
    enc = EmbBagEncoder(V, 3, 4, (), "mean", 16, 0.0)
    tokens = torch.tensor([[1, 2, 0], [4, 5, 5]])
    lengths = torch.tensor([2, 3])
    w = torch.tensor([[5.0, 0.1, 7.0], [1.0, 0.5, 0.5]])  # 7.0 sits on padding: ignored
    got = enc({"tokens": tokens, "lengths": lengths, "token_weights": w})
    E = enc.bag.weight.detach()
    ref0 = (5.0 * E[1] + 0.1 * E[2]) / 5.1
    ref1 = (1.0 * E[4] + 1.0 * E[5]) / 2.0
    want = enc.mlp(torch.stack([ref0, ref1]))
    torch.testing.assert_close(got, want)
    ones = enc({"tokens": tokens, "lengths": lengths, "token_weights": torch.ones(2, 3)})
    torch.testing.assert_close(ones, enc({"tokens": tokens, "lengths": lengths}))


def test_decoder_and_reader_columns_carry_weights(weighted):
    meta = json.load(open(weighted + "/meta.json"))
    assert input_columns("xmc", "embbag", meta=meta) == ["labels", "tokens", "token_weights"]
    assert input_columns("xmc", "transformer", meta=meta) == ["labels", "tokens"]
    batch = {"tokens": np.array([1, 2, 4, 5, 5]), "tokens_offsets": np.array([0, 2, 5]),
             "token_weights": np.array([5.0, 0.1, 1.0, .5, .5], np.float32),
             "token_weights_offsets": np.array([0, 2, 5])}
    inputs, _ = decode_batch("xmc", batch, meta)
    np.testing.assert_allclose(inputs["token_weights"].numpy(), [[5.0, 0.1, 0.0], [1.0, 0.5, 0.5]])


def test_pad_id_is_the_encoders_padding_row(weighted):
    from xclass.models.encoders.text import embbag

    meta = json.load(open(weighted + "/meta.json"))
    assert meta["inputs"]["tokens"]["pad_id"] == V
    assert embbag(meta, 8).bag.padding_idx == meta["inputs"]["tokens"]["pad_id"]


def test_tfidf_cli_percent_and_propensity_n(weighted, capsys):
    from xclass.cli.xmc import main
    from xclass.eval.tfidf import tfidf_knn_baseline

    assert main(["tfidf", "--data", weighted, "--k", "2", "--ks", "1,3", "--propensity-n", "1000"]) == 0
    got = json.loads(capsys.readouterr().out)
    counts = np.bincount([lab for labs, _, _ in TRAIN for lab in labs], minlength=L)
    frac = tfidf_knn_baseline(weighted + "/train.parquet", weighted + "/test.parquet", L, ks=(1, 3), k=2,
                              progress=False, inv_prop=inverse_propensity(counts, 1000))
    assert got["unit"] == "percent"
    for key in ("P@1", "P@3", "PSP@1", "PSP@3"):
        assert got[key] == pytest.approx(100 * frac[key], abs=1e-3), key


def test_label_counts_file(tmp_path):
    from xclass.eval.evaluate import xmc_propensity

    (tmp_path / "c.txt").write_text("3\n0\n7\n")
    np.testing.assert_allclose(xmc_propensity(3, None, str(tmp_path / "c.txt"), 500),
                               inverse_propensity(np.array([3, 0, 7]), 500))
    (tmp_path / "bad.txt").write_text("3\nx\n")
    with pytest.raises(ValueError, match="line 2"):
        xmc_propensity(3, None, str(tmp_path / "bad.txt"), 500)
    with pytest.raises(ValueError, match="propensity-n"):
        xmc_propensity(3, None, str(tmp_path / "c.txt"), None)


def test_log_names_margin_only_when_used():
    from xclass.heads.base import HEADS
    from xclass.parallel import ParallelContext
    from xclass.train.loop import head_description
    import xclass.heads.xmc  # noqa: F401
    import xclass.heads  # noqa: F401

    ctx = ParallelContext(rank=0, world_size=1, group=None)
    cfg = SimpleNamespace(name="ova", margin="arcface", margin_params={}, params={}, sample_rate=1.0)
    ova = HEADS.get("ova")(cfg, num_classes=5, embedding_dim=4, ctx=ctx, seed=0)
    assert head_description(SimpleNamespace(head=cfg), ova) == "ova"
    mcfg = SimpleNamespace(name="margin", margin="arcface", margin_params={}, params={}, sample_rate=1.0,
                           sub_centers=1)
    margin_head = SimpleNamespace(margin=object())
    assert head_description(SimpleNamespace(head=mcfg), margin_head) == "margin/arcface"
