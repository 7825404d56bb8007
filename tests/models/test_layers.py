"""Masked building blocks against plain references on the valid steps only."""
from __future__ import annotations

import torch
from torch import nn

from xclass.models.layers import (MaskedBatchNorm1d, MaskedBatchNorm2d, gem_pool, length_mask, masked_mean,
                                  masked_mean_std)


def test_length_mask_and_masked_mean_by_hand():
    mask = length_mask(torch.tensor([2, 0, 3]), 3)
    assert mask.tolist() == [[True, True, False], [False, False, False], [True, True, True]]
    x = torch.tensor([[1.0, 3.0, 100.0], [7.0, 7.0, 7.0], [1.0, 2.0, 6.0]])
    assert masked_mean(x, mask, -1).tolist() == [2.0, 0.0, 3.0]   # empty row -> 0, not NaN


def test_masked_mean_std_equals_unpadded_statistics():
    torch.manual_seed(0)
    x, lengths = torch.randn(3, 4, 7), torch.tensor([7, 2, 5])
    mu, sd = masked_mean_std(x, length_mask(lengths, 7).unsqueeze(1))
    for b, n in enumerate(lengths.tolist()):
        v = x[b, :, :n]
        torch.testing.assert_close(mu[b], v.mean(-1))
        torch.testing.assert_close(sd[b], v.var(-1, unbiased=False).clamp_min(1e-5).sqrt())


def test_gem_pool_p1_is_masked_mean():
    x, mask = torch.rand(2, 3, 5) + 0.1, length_mask(torch.tensor([5, 2]), 5)
    torch.testing.assert_close(gem_pool(x, mask, torch.tensor(1.0)), masked_mean(x, mask.unsqueeze(1)))


def test_masked_batchnorm1d_matches_batchnorm_on_valid_frames():
    torch.manual_seed(0)
    x, lengths = torch.randn(3, 4, 6) * 3 + 1, torch.tensor([6, 1, 4])
    mask = length_mask(lengths, 6)
    mbn, ref = MaskedBatchNorm1d(4), nn.BatchNorm1d(4)
    valid = torch.cat([x[b, :, :n].T for b, n in enumerate(lengths.tolist())])   # [11, 4]
    out, want = mbn(x, mask), ref(valid)
    got = torch.cat([out[b, :, :n].T for b, n in enumerate(lengths.tolist())])
    torch.testing.assert_close(got, want)
    assert (out.transpose(1, 2)[~mask] == 0).all()
    torch.testing.assert_close(mbn.running_mean, ref.running_mean)
    torch.testing.assert_close(mbn.running_var, ref.running_var)


def test_masked_batchnorm2d_matches_batchnorm_on_valid_frames():
    torch.manual_seed(0)
    x, lengths = torch.randn(2, 3, 5, 4) * 2, torch.tensor([4, 2])
    mbn, ref = MaskedBatchNorm2d(3), nn.BatchNorm2d(3)
    out = mbn(x, length_mask(lengths, 4))
    # Reference: BN over the concatenation of each example's valid [C, F, t] frames.
    valid = torch.cat([x[b, :, :, :n] for b, n in enumerate(lengths.tolist())], dim=-1)
    want = ref(valid.unsqueeze(0))[0]
    got = torch.cat([out[b, :, :, :n] for b, n in enumerate(lengths.tolist())], dim=-1)
    torch.testing.assert_close(got, want)
    assert (out[1, :, :, 2:] == 0).all()
    torch.testing.assert_close(mbn.running_var, ref.running_var)


def test_masked_batchnorm_eval_matches_batchnorm_eval():
    torch.manual_seed(1)
    mbn, ref = MaskedBatchNorm1d(4), nn.BatchNorm1d(4)
    for bn in (mbn, ref):   # same non-trivial running statistics and affine parameters
        bn.running_mean.copy_(torch.tensor([0.5, -1.0, 2.0, 0.0]))
        bn.running_var.copy_(torch.tensor([0.25, 4.0, 1.0, 9.0]))
        bn.weight.data.copy_(torch.tensor([1.5, -0.5, 2.0, 1.0]))
        bn.bias.data.copy_(torch.tensor([0.1, 0.2, -0.3, 0.4]))
        bn.eval()
    x, lengths = torch.randn(3, 4, 7) * 2, torch.tensor([7, 2, 5])
    mask = length_mask(lengths, 7)
    out = mbn(x, mask)
    torch.testing.assert_close(out * mask.unsqueeze(1), ref(x) * mask.unsqueeze(1))
    assert (out.transpose(1, 2)[~mask] == 0).all()
