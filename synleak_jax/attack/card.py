"""The leakage card: per matcher, the verdict, every count with its interval, the member-vs-control test, the
membership metrics with intervals, the epsilon lower bound, and what the numbers cannot say.

Plain inputs in (counts per threshold, membership score arrays), one :class:`LeakageCard` out, with ``to_dict()``
(JSON-ready) and ``terminal_lines()`` (plain-text summary). The statistics live in :mod:`synleak_jax.attack.stats`;
definitions and how to read each figure: docs/statistics.md.

Multiple thresholds: the verdict tests members against the non-member control at every threshold, so each test
runs at ``alpha / K`` (Bonferroni over K thresholds with a control): "leakage detected" then holds at the
family-wise level ``alpha``. The headline epsilon bound is the largest of the per-point bounds, each recomputed
at confidence ``1 - (1 - confidence) / P`` over the P operating points, so the maximum holds at ``confidence``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence


from synleak_jax.attack import stats
from synleak_jax.files import to_jsonable

VERDICT_DETECTED = "leakage detected"
VERDICT_NOT_SIGNIFICANT = "no significant excess over the non-member control"
VERDICT_NO_CONTROL = "no control: leakage counts only, no test"

#: A threshold whose FMR leaves fewer impostor pairs above it than this is flagged as unstable.
FEW_IMPOSTOR_PAIRS = 10


@dataclasses.dataclass
class ThresholdCounts:
    """Input: the exact counts of one matcher at one threshold.

    ``real_images_matched`` / ``n_real`` are the members (the generator's training images) matched by some
    synthetic image; ``nonmembers_matched`` / ``n_nonmembers`` the same for the non-member control (None
    without one). ``impostor_pairs`` is the number of impostor pairs tau was calibrated on, ``impostors_above``
    how many of them score above tau; ``fmr_bootstrap`` an identity-bootstrap interval of the achieved FMR
    (:func:`stats.identity_bootstrap_fmr`), when labels allowed one.
    """

    fmr: float | None  # target FMR; None for a fixed (published) threshold
    tau_native: float
    synthetic_matched: int
    n_synthetic: int
    real_images_matched: int
    n_real: int
    identities_matched: int | None = None
    n_identities: int | None = None
    nonmembers_matched: int | None = None
    n_nonmembers: int | None = None
    impostor_pairs: int | None = None
    impostors_above: int | None = None
    fmr_bootstrap: stats.FmrBootstrap | None = None
    source: str = "calibrated"


@dataclasses.dataclass
class ThresholdCard:
    fmr: float | None
    tau_native: float
    source: str
    synthetic_matched: stats.Rate
    real_images_matched: stats.Rate
    identities_matched: stats.Rate | None
    nonmembers_matched: stats.Rate | None
    impostor_pairs: int | None
    achieved_fmr: float | None
    achieved_fmr_ci: list[float] | None  # identity bootstrap (pairs are not independent: no binomial interval)
    achieved_fmr_ci_reason: str | None
    member_vs_control: stats.MemberControlTest | None
    epsilon_lower_bound: stats.EpsilonBound | None  # matching at tau as a membership test (TPR = members rate)

    def to_dict(self) -> dict:
        out = {"fmr": self.fmr, "tau_native": self.tau_native, "source": self.source,
               "impostor_pairs": self.impostor_pairs, "achieved_fmr": self.achieved_fmr,
               "achieved_fmr_ci": self.achieved_fmr_ci, "achieved_fmr_ci_reason": self.achieved_fmr_ci_reason}
        # Flat report.json shape: <count>, n_<...>, <count>_ci side by side.
        for name, total_name, rate in (
                ("synthetic_matched", "n_synthetic", self.synthetic_matched),
                ("real_images_matched", "n_real", self.real_images_matched),
                ("identities_matched", "n_identities", self.identities_matched),
                ("nonmembers_matched", "n_nonmembers", self.nonmembers_matched)):
            out[name] = None if rate is None else rate.count
            out[total_name] = None if rate is None else rate.total
            out[name + "_rate"] = None if rate is None else rate.rate
            out[name + "_ci"] = None if rate is None else rate.ci
        out["member_vs_control"] = None if self.member_vs_control is None else self.member_vs_control.to_dict()
        out["epsilon_lower_bound"] = None if self.epsilon_lower_bound is None else self.epsilon_lower_bound.to_dict()
        return to_jsonable(out)


@dataclasses.dataclass
class MembershipCard:
    auc: stats.AucResult
    tpr_at_fpr: list[stats.TprAtFpr]
    epsilon_lower_bound: list[stats.EpsilonBound | None]  # per target FPR (None where the TPR is unresolvable)
    bootstrap: stats.MembershipBootstrap | None

    def to_dict(self) -> dict:
        return to_jsonable({
            "auc": self.auc.auc, "auc_ci": self.auc.auc_ci, "auc_standard_error": self.auc.standard_error,
            "auc_method": self.auc.method, "auc_ci_reason": self.auc.reason,
            "n_members": self.auc.n_members, "n_nonmembers": self.auc.n_nonmembers,
            "tpr_at_fpr": [t.to_dict() for t in self.tpr_at_fpr],
            "epsilon_lower_bound": [None if e is None else e.to_dict() for e in self.epsilon_lower_bound],
            "bootstrap": None if self.bootstrap is None else self.bootstrap.to_dict()})


@dataclasses.dataclass
class LeakageCard:
    matcher: str
    verdict: str  # one of VERDICT_DETECTED, VERDICT_NOT_SIGNIFICANT, VERDICT_NO_CONTROL
    verdict_detail: str
    confidence: float
    alpha: float  # family-wise level of the verdict
    alpha_per_threshold: float | None  # alpha / K (Bonferroni over the K thresholds with a control)
    delta: float
    thresholds: list[ThresholdCard]
    membership: MembershipCard | None
    epsilon_lower_bound: float | None  # the largest per-point bound, valid jointly at ``confidence``
    epsilon_at: str | None  # which operating point gave it
    epsilon_reason: str | None
    epsilon_meaning: str
    cannot_say: list[str]

    def to_dict(self) -> dict:
        return to_jsonable({
            "matcher": self.matcher, "verdict": self.verdict, "verdict_detail": self.verdict_detail,
            "confidence": self.confidence, "alpha": self.alpha, "alpha_per_threshold": self.alpha_per_threshold,
            "delta": self.delta, "thresholds": [t.to_dict() for t in self.thresholds],
            "membership": None if self.membership is None else self.membership.to_dict(),
            "epsilon_lower_bound": self.epsilon_lower_bound, "epsilon_at": self.epsilon_at,
            "epsilon_reason": self.epsilon_reason, "epsilon_meaning": self.epsilon_meaning,
            "cannot_say": list(self.cannot_say)})

    def interval(self, count: int | None, total: int | None) -> list[float] | None:
        """The card's interval for any other count over a total (report.json's ``leakage[]`` rows): the
        Clopper-Pearson ``[lo, hi]`` of ``count / total`` at the card's ``confidence``; None when either is None
        or the total is 0."""
        if count is None or total is None:
            return None
        return stats.rate_with_ci(int(count), int(total), self.confidence).ci

    def terminal_lines(self) -> list[str]:
        """A short plain-text summary (the terminal's view of the card), control counts included."""
        lines = [f"[{self.matcher}] verdict: {self.verdict}", f"  {self.verdict_detail}"]
        for t in self.thresholds:
            head = f"  FMR {_g(t.fmr)}" if t.fmr is not None else f"  {t.source}"
            parts = [f"synthetic matched {_rate(t.synthetic_matched)}", f"members {_rate(t.real_images_matched)}"]
            if t.nonmembers_matched is not None:
                parts.append(f"non-members (control) {_rate(t.nonmembers_matched)}")
            else:
                parts.append("non-members (control) n/a")
            if t.identities_matched is not None:
                parts.append(f"identities {_rate(t.identities_matched)}")
            lines.append(f"{head} (tau {t.tau_native:.4g}): " + "; ".join(parts))
            mc = t.member_vs_control
            if mc is not None and mc.p_value is not None:
                lo, hi = mc.rate_difference_ci
                lines.append(f"    members - control {mc.rate_difference:+.1%} [{lo:+.1%}, {hi:+.1%}], "
                             f"{mc.test} p = {mc.p_value:.2g} (alpha {self.alpha_per_threshold:.3g})")
        if self.membership is not None:
            a = self.membership.auc
            ci = f"[{a.auc_ci[0]:.3f}, {a.auc_ci[1]:.3f}]" if a.auc_ci else f"(no interval: {a.reason})"
            tprs = []
            for t in self.membership.tpr_at_fpr:
                if t.tpr is None:
                    tprs.append(f"TPR@FPR {_g(t.target_fpr)} n/a ({t.reason.split(';')[0]})")
                else:
                    tprs.append(f"TPR@FPR {_g(t.target_fpr)} {t.tpr:.3f} [{t.tpr_ci[0]:.3f}, {t.tpr_ci[1]:.3f}]")
            lines.append(f"  membership AUC {a.auc:.3f} {ci}; " + "; ".join(tprs))
        if self.epsilon_lower_bound is not None:
            lines.append(f"  epsilon >= {self.epsilon_lower_bound:.3g} (delta {self.delta:g}, {self.confidence:.0%}; "
                         f"{self.epsilon_at})")
        elif self.epsilon_reason:
            lines.append(f"  epsilon lower bound: none ({self.epsilon_reason})")
        for item in self.cannot_say:
            lines.append(f"  cannot say: {item}")
        return lines


def _g(x: float | None) -> str:
    return "n/a" if x is None else f"{x:g}"


def _rate(r: stats.Rate) -> str:
    if r.rate is None:
        return f"{r.count:,}/0"
    return f"{r.count:,}/{r.total:,} = {r.rate:.1%} [{r.ci[0]:.1%}, {r.ci[1]:.1%}]"


def _optional_rate(k: int | None, n: int | None, confidence: float) -> stats.Rate | None:
    if k is None or n is None:
        return None
    return stats.rate_with_ci(k, n, confidence)


def leakage_card(
    matcher: str,
    thresholds: Sequence[ThresholdCounts],
    *,
    member_scores=None,
    nonmember_scores=None,
    member_identities=None,
    nonmember_identities=None,
    target_fprs: Sequence[float] = (1e-3, 1e-2),
    confidence: float = 0.95,
    alpha: float = 0.05,
    delta: float = 1e-5,
    test: str = "auto",
    bootstrap: bool = False,
    bootstrap_replicates: int = 1000,
    bootstrap_seed: int = 0,
) -> LeakageCard:
    """Assembles the card of one matcher.

    Args:
      matcher: its name (shown in the card).
      thresholds: the counts at each threshold (:class:`ThresholdCounts`).
      member_scores, nonmember_scores: membership attack scores ``[m]``, ``[n]`` (both or neither).
      member_identities, nonmember_identities: identity labels ``[m]``, ``[n]`` for the identity bootstrap.
      target_fprs: FPRs at which the membership TPR is reported.
      confidence: of every interval and of the epsilon bound; alpha: family-wise level of the verdict; delta: of
        the epsilon bound.
      test: member-vs-control test ("auto", "boschloo", "fisher"; see :func:`stats.member_vs_control`).
      bootstrap: run the identity bootstrap of the membership AUC/TPR (needs both identity arrays; off by
        default: its cost is in BENCHMARKS.md).
    """
    confidence = float(confidence)
    alpha = float(alpha)
    cannot_say: list[str] = []
    with_control = [t for t in thresholds if t.nonmembers_matched is not None and t.n_nonmembers]
    alpha_each = alpha / len(with_control) if with_control else None
    cards: list[ThresholdCard] = []
    for t in thresholds:
        label = f"FMR {_g(t.fmr)}" if t.fmr is not None else t.source
        test_result = eps = None
        if t.nonmembers_matched is not None and t.n_nonmembers:
            test_result = stats.member_vs_control(t.real_images_matched, t.n_real, t.nonmembers_matched,
                                                  t.n_nonmembers, alpha=alpha_each, confidence=confidence, test=test)
            if t.n_real:
                eps = stats.epsilon_lower_bound(t.real_images_matched, t.n_real, t.nonmembers_matched,
                                                t.n_nonmembers, delta=delta, confidence=confidence)
        achieved = ci = None
        ci_reason = None
        if t.impostor_pairs:
            if t.impostors_above is not None:
                achieved = t.impostors_above / t.impostor_pairs
            if t.fmr is not None and t.fmr * t.impostor_pairs * (1 + 1e-12) < 1:
                cannot_say.append(f"{label}: {t.impostor_pairs:,} impostor pairs cannot resolve it (needs >= "
                                  f"{math.ceil(1 / t.fmr):,}); the threshold is the largest impostor score")
            elif t.fmr is not None and t.fmr * t.impostor_pairs < FEW_IMPOSTOR_PAIRS:
                cannot_say.append(f"{label}: tau rests on only {int(t.fmr * t.impostor_pairs * (1 + 1e-12))} "
                                  f"impostor pairs above it (of {t.impostor_pairs:,}); its true FMR is uncertain")
        if t.fmr_bootstrap is not None and t.fmr_bootstrap.achieved_fmr_ci is not None:
            ci = t.fmr_bootstrap.achieved_fmr_ci
            achieved = t.fmr_bootstrap.achieved_fmr if achieved is None else achieved
        else:
            ci_reason = ("impostor pairs share identities and are not independent: an interval needs the identity "
                         "bootstrap (labelled calibration set)")
        cards.append(ThresholdCard(
            fmr=None if t.fmr is None else float(t.fmr), tau_native=float(t.tau_native), source=t.source,
            synthetic_matched=stats.rate_with_ci(t.synthetic_matched, t.n_synthetic, confidence),
            real_images_matched=stats.rate_with_ci(t.real_images_matched, t.n_real, confidence),
            identities_matched=_optional_rate(t.identities_matched, t.n_identities, confidence),
            nonmembers_matched=_optional_rate(t.nonmembers_matched, t.n_nonmembers, confidence),
            impostor_pairs=t.impostor_pairs, achieved_fmr=achieved, achieved_fmr_ci=ci,
            achieved_fmr_ci_reason=None if ci is not None else ci_reason,
            member_vs_control=test_result, epsilon_lower_bound=eps))

    membership = None
    if (member_scores is None) != (nonmember_scores is None):
        raise ValueError("leakage_card: give both member_scores and nonmember_scores, or neither")
    if member_scores is not None:
        auc = stats.auc_ci(member_scores, nonmember_scores, confidence)
        points = stats.tpr_at_fpr_ci(member_scores, nonmember_scores, target_fprs, confidence)
        eps_points = [None if p.tpr is None else
                      stats.epsilon_lower_bound(p.members_above, p.n_members, p.nonmembers_above, p.n_nonmembers,
                                                delta=delta, confidence=confidence) for p in points]
        for p in points:
            if p.tpr is None:
                cannot_say.append(f"TPR at FPR {_g(p.target_fpr)}: n/a ({p.reason})")
        boot = None
        if bootstrap:
            if member_identities is None or nonmember_identities is None:
                raise ValueError("leakage_card: bootstrap=True needs member_identities and nonmember_identities")
            boot = stats.identity_bootstrap_membership(
                member_scores, member_identities, nonmember_scores, nonmember_identities, target_fprs=target_fprs,
                replicates=bootstrap_replicates, seed=bootstrap_seed, confidence=confidence)
        else:
            cannot_say.append("membership intervals treat images as independent; several images of one person are "
                              "not, so with labels the identity bootstrap gives the honest (wider) interval")
        membership = MembershipCard(auc, points, eps_points, boot)
        cannot_say.append("TPR at FPR and epsilon use thresholds picked on the same scores they are counted on "
                          "(slightly optimistic; a held-out split would remove this)")

    # Headline epsilon: every operating point recomputed at 1 - (1 - c) / P so that the maximum holds at c.
    operating = []  # (label, tp, n_pos, fp, n_neg)
    for t in thresholds:
        if t.nonmembers_matched is not None and t.n_nonmembers and t.n_real:
            operating.append((f"matching at {'FMR ' + _g(t.fmr) if t.fmr is not None else t.source}",
                              t.real_images_matched, t.n_real, t.nonmembers_matched, t.n_nonmembers))
    if membership is not None:
        for p in membership.tpr_at_fpr:
            if p.tpr is not None:
                operating.append((f"membership score at FPR {_g(p.target_fpr)}", p.members_above, p.n_members,
                                  p.nonmembers_above, p.n_nonmembers))
    eps_best = eps_at = None
    eps_reason = None
    if operating:
        joint = 1.0 - (1.0 - confidence) / len(operating)
        for label, tp, npos, fp, nneg in operating:
            b = stats.epsilon_lower_bound(tp, npos, fp, nneg, delta=delta, confidence=joint)
            if b.epsilon_lower_bound is not None and (eps_best is None or b.epsilon_lower_bound > eps_best):
                eps_best, eps_at = b.epsilon_lower_bound, label
        if eps_best is None:
            eps_reason = (f"no operating point gives a positive bound (TPR lower bound above delta = {delta:g} "
                          f"and above the FPR upper bound)")
        elif len(operating) > 1:
            eps_at += f"; largest of {len(operating)} points, each at confidence {joint:.4g}"
    else:
        eps_reason = "needs a non-member control"
    cannot_say.append("epsilon is a lower bound on the privacy loss, not a measurement of harm; the generator may "
                      "leak more than any attack here shows")

    if not with_control:
        verdict = VERDICT_NO_CONTROL
        detail = ("Without non-members nothing separates members matched because they leaked from members "
                  "matched by chance look-alikes (expected at about the FMR per comparison); the counts are shown "
                  "with intervals but no test is made.")
        cannot_say.append("whether the members' matches exceed chance (no non-member control)")
    else:
        rejecting = [c for c in cards if c.member_vs_control is not None and c.member_vs_control.rejected]
        k = len(with_control)
        level = f"family-wise level {alpha:g} over {k} threshold{'s' if k > 1 else ''} (each at {alpha_each:.3g})"
        if rejecting:
            best = min(rejecting, key=lambda c: c.member_vs_control.p_value)
            verdict = VERDICT_DETECTED
            detail = (f"Members are matched significantly more often than non-members at "
                      f"{len(rejecting)} of {k} thresholds ({level}). Strongest: "
                      + best.member_vs_control.reading)
        else:
            tested = [c for c in cards if c.member_vs_control is not None and c.member_vs_control.p_value is not None]
            verdict = VERDICT_NOT_SIGNIFICANT
            if tested:
                best = min(tested, key=lambda c: c.member_vs_control.p_value)
                detail = (f"Members are not matched significantly more often than non-members at any threshold "
                          f"({level}). Smallest p: " + best.member_vs_control.reading)
            else:
                detail = "No test could be made: the thresholds with a control have no members."
    return LeakageCard(matcher=matcher, verdict=verdict, verdict_detail=detail, confidence=confidence, alpha=alpha,
                       alpha_per_threshold=alpha_each, delta=float(delta), thresholds=cards, membership=membership,
                       epsilon_lower_bound=eps_best, epsilon_at=eps_at, epsilon_reason=eps_reason,
                       epsilon_meaning=stats.EPSILON_MEANING, cannot_say=cannot_say)
