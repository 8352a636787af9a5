"""Membership inference against a synthetic dataset (metrics as in Carlini et al., S&P 2022).

Members are the generator's training images, non-members real images it never saw. The attack score of a real
image is its maximum similarity to any synthetic image (``max``), or the mean of its top-k similarities
(``topk_mean``). Metrics: ROC, AUC, best balanced accuracy, TPR at low FPR (0.1 %, 1 %).
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from synleak_jax import units
from synleak_jax.attack import stats


@dataclasses.dataclass
class Roc:
    fpr: np.ndarray  # [T] increasing
    tpr: np.ndarray  # [T]
    thresholds: np.ndarray  # [T] decreasing; the first is +inf (nothing predicted "member")


def roc_curve(member_scores: np.ndarray, nonmember_scores: np.ndarray) -> Roc:
    """Exact ROC over all distinct thresholds (predict member when score >= threshold), ties grouped: the
    operating points of ``stats.descending_sweep`` with the "nothing predicted" point first."""
    pos = np.asarray(member_scores, np.float64).ravel()
    neg = np.asarray(nonmember_scores, np.float64).ravel()
    if pos.size == 0 or neg.size == 0:
        raise ValueError("membership metrics need at least one member and one non-member score")
    values, pos_ge, neg_ge = stats.descending_sweep(pos, neg)
    return Roc(np.r_[0.0, neg_ge / neg.size], np.r_[0.0, pos_ge / pos.size], np.r_[np.inf, values])


def auc(roc: Roc) -> float:
    """Area under the ROC (trapezoids; equals the Mann-Whitney probability with ties counted 1/2)."""
    return float(np.trapezoid(roc.tpr, roc.fpr)) if hasattr(np, "trapezoid") else float(np.trapz(roc.tpr, roc.fpr))


def tpr_at_fpr(roc: Roc, target: float) -> float:
    """Largest TPR among operating points with FPR <= target (no interpolation)."""
    ok = roc.fpr <= target + 1e-15
    return float(roc.tpr[ok].max())


def best_balanced_accuracy(roc: Roc) -> tuple[float, float]:
    """(max over thresholds of (TPR + TNR) / 2, the threshold achieving it)."""
    bal = (roc.tpr + 1.0 - roc.fpr) / 2.0
    i = int(np.argmax(bal))
    return float(bal[i]), float(roc.thresholds[i])


@dataclasses.dataclass
class MembershipResult:
    score_name: str
    n_members: int
    n_nonmembers: int
    auc: float
    balanced_accuracy: float
    balanced_accuracy_threshold: float
    tpr_at_fpr: dict  # {"0.001": tpr, "0.01": tpr}
    roc: Roc
    member_scores: np.ndarray
    nonmember_scores: np.ndarray

    def summary(self, metric: str | None = None) -> dict:
        thr = self.balanced_accuracy_threshold
        return {
            "score": self.score_name,
            "n_members": self.n_members,
            "n_nonmembers": self.n_nonmembers,
            "auc": self.auc,
            "balanced_accuracy": self.balanced_accuracy,
            "balanced_accuracy_threshold": thr if metric is None else float(units.to_native(metric, thr)),
            "tpr_at_fpr": dict(self.tpr_at_fpr),
            "member_score_mean": float(np.mean(self.member_scores)),
            "nonmember_score_mean": float(np.mean(self.nonmember_scores)),
            "lowest_resolvable_fpr": 1.0 / self.n_nonmembers,
        }


def membership_metrics(member_scores, nonmember_scores, *, score_name: str = "max",
                       fprs: Sequence[float] = (1e-3, 1e-2)) -> MembershipResult:
    roc = roc_curve(member_scores, nonmember_scores)
    bal, thr = best_balanced_accuracy(roc)
    return MembershipResult(
        score_name=score_name, n_members=int(np.size(member_scores)), n_nonmembers=int(np.size(nonmember_scores)),
        auc=auc(roc), balanced_accuracy=bal, balanced_accuracy_threshold=thr,
        tpr_at_fpr={f"{f:g}": tpr_at_fpr(roc, f) for f in fprs}, roc=roc,
        member_scores=np.asarray(member_scores, np.float64), nonmember_scores=np.asarray(nonmember_scores, np.float64))


def attack_scores(real_to_syn_scores: np.ndarray, how: str = "max", k: int = 5) -> np.ndarray:
    """Per real image attack score from its top-k synthetic neighbour scores ``[Nr, K]`` (descending)."""
    if real_to_syn_scores.shape[1] == 0:
        raise ValueError("no synthetic neighbours")
    if how == "max":
        return real_to_syn_scores[:, 0]
    if how == "topk_mean":
        if k > real_to_syn_scores.shape[1]:
            raise ValueError(f"topk_mean with k={k} needs at least k neighbours, have {real_to_syn_scores.shape[1]}")
        return real_to_syn_scores[:, :k].mean(1)
    raise ValueError(f"unknown membership score {how!r} (use 'max' or 'topk_mean')")
