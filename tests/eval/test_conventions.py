"""Evaluation and margin conventions that differ from the code they are usually compared with
(docs/evaluation.md, "Conventions"): each test computes both and pins the one xclass follows."""
import math

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_curve

from xclass.eval.verification import eer
from xclass.losses import MARGINS
from xclass.losses.margins import angular

# 7 tied scores where thinning the ROC moves the argmin away from the crossing
SCORES = np.array([4.0, 3.0, 3.0, 2.0, 2.0, 4.0, 1.0])
TARGET = np.array([1, 1, 0, 0, 1, 1, 0], dtype=bool)


def _voxceleb_eer(scores, target):
    """voxceleb_trainer's tuneThreshold rule on sklearn's default (thinned) ROC."""
    fpr, tpr, _ = roc_curve(target, scores)
    fnr = 1 - tpr
    i = int(np.nanargmin(np.abs(fnr - fpr)))
    return max(fpr[i], fnr[i])


def test_eer_uses_the_full_roc_not_the_thinned_one():
    assert eer(SCORES, TARGET) == pytest.approx(1 / 3)
    assert _voxceleb_eer(SCORES, TARGET) == pytest.approx(0.5)  # the reference differs here


def test_eer_agrees_with_voxceleb_rule_without_ties():
    rng = np.random.default_rng(0)
    s, t = rng.normal(size=400), rng.random(400) < 0.5
    s = s + t  # informative, all distinct
    assert abs(eer(s, t) - _voxceleb_eer(s, t)) <= 1.0 / min(t.sum(), (~t).sum())


def test_eer_of_all_equal_scores_is_one():
    assert eer(np.zeros(6), np.array([1, 0, 1, 0, 1, 0], dtype=bool)) == 1.0


def test_combined_margin_applies_all_three_margins():
    """xclass: s(cos(m1 theta + m2) - m3); insightface's CombinedMarginLoss would drop m2 when m3 > 0."""
    c = torch.tensor([0.6])
    th = math.acos(0.6)
    got = angular(c, 1.0, 0.3, 0.2, "continuous")
    assert got.item() == pytest.approx(math.cos(th + 0.3) - 0.2, abs=1e-6)
    assert abs(got.item() - (0.6 - 0.2)) > 0.1  # the m2-dropped value is a different number


def test_arcface_fallback_named_insightface_is_the_pre_2022_formula():
    """Past theta + m > pi the target is cos(theta) - m sin(m) (insightface before Dec 2022, PML)."""
    m = 0.5
    c = torch.tensor([math.cos(math.pi - 0.1)])  # theta + m > pi
    got = angular(c, 1.0, m, 0.0, "insightface")
    assert got.item() == pytest.approx(c.item() - m * math.sin(m), abs=1e-6)


def test_elastic_arc_defaults_to_continuous_fallback():
    assert MARGINS.build("elastic_arc").fallback == "continuous"
    assert MARGINS.build("elastic_arc", fallback="none").fallback == "none"
