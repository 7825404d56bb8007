"""The dense reference against pytorch-metric-learning where it computes the same loss
(an independent implementation). Skipped when PML is not installed."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from xclass.losses import MARGINS
from xclass.losses.reference import dense_margin_loss

pml = pytest.importorskip("pytorch_metric_learning.losses")
B, C, D = 16, 10, 8


def _data(k=1):
    g = torch.Generator().manual_seed(5)
    emb = torch.randn(B, D, generator=g, dtype=torch.float64)
    w = torch.randn(C * k, D, generator=g, dtype=torch.float64)
    return emb, w, torch.randint(0, C, (B,), generator=g)


def _check(loss_fn, margin, emb, w, labels, tol=1e-5):
    loss_fn.W.data = w.t().clone().to(torch.float32)
    want = loss_fn(emb.float(), labels)
    got = dense_margin_loss(emb.float(), labels, w.float(), margin)
    assert torch.allclose(got, want, rtol=tol), (got.item(), want.item())


def test_arcface_matches_pml():
    emb, w, labels = _data()
    m = 0.5
    _check(pml.ArcFaceLoss(C, D, margin=float(np.degrees(m)), scale=64), MARGINS.build("arcface", m=m),
           emb, w, labels)


def test_arcface_fallback_region_matches_pml():
    emb, w, labels = _data()
    m = 1.4  # large margin: many target angles exceed pi - m, exercising the fallback
    _check(pml.ArcFaceLoss(C, D, margin=float(np.degrees(m)), scale=16), MARGINS.build("arcface", m=m, s=16.0),
           emb, w, labels)


def test_cosface_matches_pml():
    emb, w, labels = _data()
    _check(pml.CosFaceLoss(C, D, margin=0.35, scale=64), MARGINS.build("cosface"), emb, w, labels)


def test_subcenter_arcface_matches_pml():
    emb, w, labels = _data(k=3)
    loss_fn = pml.SubCenterArcFaceLoss(num_classes=C, embedding_size=D, margin=float(np.degrees(0.5)),
                                       scale=64, sub_centers=3)
    _check(loss_fn, MARGINS.build("subcenter_arcface", k=3), emb, w, labels)


def test_sphereface_matches_pml_on_unit_embeddings():
    # PML scales by |x| * scale with W normalised; with |x| = 1 and scale = s it is our s * psi
    emb, w, labels = _data()
    emb = F.normalize(emb, dim=1)
    _check(pml.SphereFaceLoss(C, D, margin=4, scale=10), MARGINS.build("sphereface", m=4.0, s=10.0),
           emb, w, labels, tol=1e-4)
