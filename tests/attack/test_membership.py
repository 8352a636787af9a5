"""Membership metrics equal scikit-learn's on the same scores."""

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score, roc_curve

from synleak_jax.attack import membership as membership_lib


@pytest.mark.parametrize("ties", [False, True])
def test_roc_auc_tpr_equal_sklearn(rng, ties):
    pos = rng.normal(0.3, 1.0, 700)
    neg = rng.normal(0.0, 1.0, 1500)
    if ties:
        pos, neg = np.round(pos, 1), np.round(neg, 1)
    res = membership_lib.membership_metrics(pos, neg)
    y = np.r_[np.ones(pos.size), np.zeros(neg.size)]
    s = np.r_[pos, neg]
    assert res.auc == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    fpr, tpr, thr = roc_curve(y, s, drop_intermediate=False)
    np.testing.assert_allclose(res.roc.fpr, fpr)
    np.testing.assert_allclose(res.roc.tpr, tpr)
    for f in (1e-3, 1e-2):
        assert res.tpr_at_fpr[f"{f:g}"] == pytest.approx(tpr[fpr <= f].max())
    bal = ((tpr + 1 - fpr) / 2).max()
    assert res.balanced_accuracy == pytest.approx(bal)
    # the reported threshold achieves the reported balanced accuracy
    t = res.balanced_accuracy_threshold
    assert ((pos >= t).mean() + (neg < t).mean()) / 2 == pytest.approx(bal)


def test_attack_scores():
    s = np.array([[0.9, 0.5, 0.1], [0.4, 0.3, 0.2]])
    np.testing.assert_allclose(membership_lib.attack_scores(s, "max"), [0.9, 0.4])
    np.testing.assert_allclose(membership_lib.attack_scores(s, "topk_mean", 2), [0.7, 0.35])
    with pytest.raises(ValueError, match="unknown membership score"):
        membership_lib.attack_scores(s, "median")


def test_no_nonmembers_is_an_error():
    with pytest.raises(ValueError, match="at least one member and one non-member"):
        membership_lib.membership_metrics(np.ones(3), np.zeros(0))
