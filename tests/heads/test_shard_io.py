"""heads.md 12.12: save on W = 2, resume on W = 3 and 1 (shards re-split by global class id):
scores equal, training continues with an identical loss; mismatches name the file."""
import types

import pytest
import torch

from tests.heads.cases import SGD
from xclass.dist import ParallelContext
from xclass.heads.base import HEADS
from xclass.heads.shard_io import load_shards, save_shard

C, D = 13, 6


def _cfg(margin="subcenter_arcface", params=None):
    return types.SimpleNamespace(name="margin", margin=margin, margin_params=params or {"k": 2},
                                 sample_rate=1.0, label_smoothing=0.0, params={})


def _heads(ws, seed=1, cfg=None):
    # shard state needs no process group: a ParallelContext per simulated rank is enough here
    return [HEADS.get("margin")(cfg or _cfg(), num_classes=C, embedding_dim=D,
                                ctx=ParallelContext(rank=r, world_size=ws), seed=seed) for r in range(ws)]


def _trained_single():
    head = _heads(1)[0]
    opt = head.make_optimizer(SGD)
    g = torch.Generator().manual_seed(0)
    for _ in range(2):
        head(torch.randn(5, D, generator=g), torch.randint(0, C, (5,), generator=g)).loss.backward()
        opt.step()
    return head, opt


def _split(head, opt, ws, tmp):
    """Write the trained single head as ws shards (each simulated rank's slice)."""
    parts = _heads(ws, seed=99)
    for p in parts:
        o = p.make_optimizer(SGD)
        load_shards([save_shard(str(tmp / "one"), head, opt)], p, o)
        save_shard(str(tmp / f"ws{ws}"), p, o)
    return [str(tmp / f"ws{ws}" / f"head_shard_{r}.pt") for r in range(ws)]


@pytest.mark.parametrize("ws_load", [1, 3])
def test_save_w2_resume_w1_w3(tmp_path, ws_load):
    head, opt = _trained_single()
    paths = _split(head, opt, 2, tmp_path)
    loaded = _heads(ws_load, seed=7)
    opts = [h.make_optimizer(SGD) for h in loaded]
    for h, o in zip(loaded, opts):
        load_shards(paths, h, o)
    emb = torch.randn(4, D)
    got = torch.cat([h.scores(emb) for h in loaded], 1)
    assert torch.allclose(got, head.scores(emb), atol=1e-6)
    mom = torch.cat([o.state["weight"]["momentum"] for o in opts])
    assert torch.equal(mom, opt.state["weight"]["momentum"])
    if ws_load == 1:  # training continues identically
        x, y = torch.randn(6, D), torch.randint(0, C, (6,))
        l_ref, l_new = head(x, y).loss, loaded[0](x, y).loss
        assert torch.equal(l_ref, l_new)
        l_ref.backward(), l_new.backward()
        opt.step(), opts[0].step()
        assert torch.equal(head.weight, loaded[0].weight)


def test_mismatch_names_file_and_values(tmp_path):
    head, opt = _trained_single()
    path = save_shard(str(tmp_path), head, opt)
    other = HEADS.get("margin")(_cfg(), num_classes=C + 1, embedding_dim=D, ctx=ParallelContext.single(), seed=0)
    with pytest.raises(ValueError, match=r"head_shard_0.pt: head checkpoint has num_classes=13, this head expects 14"):
        load_shards([path], other)
    part = _heads(2)[1]
    with pytest.raises(ValueError, match="cover 0 of this rank's 6 classes"):
        load_shards([], part)
