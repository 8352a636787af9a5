"""The leakage card: verdict rules, every count's interval and every bound against independent computations."""

import json
import math

import numpy as np
import pytest
from scipy import stats as scipy_stats
from statsmodels.stats.proportion import proportion_confint

from synleak_jax.attack import card
from synleak_jax.attack import stats


def _cp(k, n, confidence=0.95):
    return list(proportion_confint(k, n, alpha=1 - confidence, method="beta"))


def _demo_thresholds(control=True):
    """Counts shaped like the built-in demo: 50 members, 50 non-members, two FMRs."""
    nm = (lambda k: dict(nonmembers_matched=k, n_nonmembers=50)) if control else (lambda k: {})
    return [
        card.ThresholdCounts(fmr=1e-3, tau_native=0.41, synthetic_matched=120, n_synthetic=10_000,
                             real_images_matched=35, n_real=50, identities_matched=20, n_identities=25,
                             impostor_pairs=1225, impostors_above=1, **nm(10)),
        card.ThresholdCounts(fmr=1e-2, tau_native=0.30, synthetic_matched=400, n_synthetic=10_000,
                             real_images_matched=40, n_real=50, impostor_pairs=1225, impostors_above=12, **nm(22)),
    ]


def test_card_counts_intervals_and_test(rng):
    pos, neg = rng.normal(1.0, 1.0, 50), rng.normal(0.0, 1.0, 50)
    c = card.leakage_card("arcface", _demo_thresholds(), member_scores=pos, nonmember_scores=neg,
                          target_fprs=(1e-3, 0.02, 0.1))
    assert c.verdict == card.VERDICT_DETECTED == "leakage detected"
    assert c.alpha_per_threshold == pytest.approx(0.025)  # Bonferroni over the two thresholds with a control
    d = c.to_dict()
    json.dumps(d, allow_nan=False)
    t0 = d["thresholds"][0]
    assert t0["synthetic_matched_ci"] == pytest.approx(_cp(120, 10_000), rel=1e-10)
    assert t0["real_images_matched_ci"] == pytest.approx(_cp(35, 50), rel=1e-10)
    assert t0["identities_matched_ci"] == pytest.approx(_cp(20, 25), rel=1e-10)
    assert t0["nonmembers_matched_ci"] == pytest.approx(_cp(10, 50), rel=1e-10)
    assert d["thresholds"][1]["identities_matched"] is None and d["thresholds"][1]["identities_matched_ci"] is None
    mc = t0["member_vs_control"]
    assert mc["test"] == "boschloo" and mc["alpha"] == pytest.approx(0.025)
    assert mc["p_value"] == pytest.approx(
        scipy_stats.boschloo_exact([[35, 10], [15, 40]], alternative="greater").pvalue, rel=1e-8)
    assert t0["achieved_fmr"] == pytest.approx(1 / 1225) and t0["achieved_fmr_ci"] is None
    assert "not independent" in t0["achieved_fmr_ci_reason"]
    # Membership: AUC with its DeLong interval, TPR at FPR with n/a below 1/50.
    m = d["membership"]
    ref = stats.auc_ci(pos, neg)
    assert m["auc"] == pytest.approx(ref.auc) and m["auc_ci"] == pytest.approx(ref.auc_ci)
    assert m["tpr_at_fpr"][0]["tpr"] is None and m["tpr_at_fpr"][0]["reason"].startswith("needs >= 1,000 non-members")
    assert m["tpr_at_fpr"][1]["tpr"] is not None
    assert m["epsilon_lower_bound"][0] is None
    assert any("TPR at FPR 0.001: n/a (needs >= 1,000 non-members" in s for s in c.cannot_say)
    assert any("rests on only 1 impostor pairs" in s for s in c.cannot_say)
    lines = c.terminal_lines()
    text = "\n".join(lines)
    assert "leakage detected" in lines[0]
    assert "non-members (control) 10/50 = 20.0%" in text
    assert "TPR@FPR 0.001 n/a (needs >= 1,000 non-members)" in text


def test_headline_epsilon_is_the_joint_maximum(rng):
    pos, neg = rng.normal(1.5, 1.0, 400), rng.normal(0.0, 1.0, 400)
    c = card.leakage_card("m", _demo_thresholds(), member_scores=pos, nonmember_scores=neg, target_fprs=(0.01, 0.1),
                          delta=1e-5, confidence=0.9)
    # Independent: every operating point's bound with Bonferroni over the points and over (TPR, FPR).
    points = [(35, 50, 10, 50), (40, 50, 22, 50)]
    for p in c.membership.tpr_at_fpr:
        points.append((p.members_above, p.n_members, p.nonmembers_above, p.n_nonmembers))
    each = 1 - (1 - 0.9) / len(points) / 2
    bounds = []
    for tp, npos, fp, nneg in points:
        lo = scipy_stats.beta.ppf(1 - each, tp, npos - tp + 1) if tp else 0.0
        hi = scipy_stats.beta.ppf(each, fp + 1, nneg - fp) if fp < nneg else 1.0
        if lo > 1e-5 and math.log((lo - 1e-5) / hi) > 0:
            bounds.append(math.log((lo - 1e-5) / hi))
    assert c.epsilon_lower_bound == pytest.approx(max(bounds), rel=1e-10)
    assert "largest of 4 points" in c.epsilon_at
    # Per-threshold bounds are at the card's confidence.
    e0 = c.thresholds[0].epsilon_lower_bound
    assert e0.confidence == 0.9 and e0.epsilon_lower_bound == pytest.approx(
        math.log((scipy_stats.beta.ppf(0.05, 35, 16) - 1e-5) / scipy_stats.beta.ppf(0.95, 11, 40)), rel=1e-10)


def test_not_significant_wording():
    th = [card.ThresholdCounts(fmr=1e-3, tau_native=0.4, synthetic_matched=3, n_synthetic=1000,
                               real_images_matched=12, n_real=50, nonmembers_matched=10, n_nonmembers=50)]
    c = card.leakage_card("m", th)
    assert c.verdict == card.VERDICT_NOT_SIGNIFICANT
    assert "leakage detected" not in c.verdict
    assert "absence of evidence, not evidence of absence" in c.verdict_detail
    assert c.epsilon_lower_bound is None and "no operating point" in c.epsilon_reason
    assert c.membership is None


def test_detected_only_when_the_adjusted_test_rejects():
    # p ~ 0.03: rejects at 0.05 alone, not at 0.05 / 2 (two thresholds with a control).
    p_one = stats.member_vs_control(12, 50, 5, 50).p_value
    assert 0.025 < p_one < 0.05
    one = [card.ThresholdCounts(1e-3, 0.4, 3, 1000, 12, 50, nonmembers_matched=5, n_nonmembers=50)]
    assert card.leakage_card("m", one).verdict == card.VERDICT_DETECTED
    two = one + [card.ThresholdCounts(1e-2, 0.3, 9, 1000, 14, 50, nonmembers_matched=12, n_nonmembers=50)]
    assert card.leakage_card("m", two).verdict == card.VERDICT_NOT_SIGNIFICANT


def test_control_without_members():
    c = card.leakage_card("m", [card.ThresholdCounts(1e-3, 0.4, 3, 1000, 0, 0, nonmembers_matched=5, n_nonmembers=50)])
    assert c.verdict == card.VERDICT_NOT_SIGNIFICANT and "No test could be made" in c.verdict_detail
    assert c.thresholds[0].member_vs_control.reason == "no members"
    json.dumps(c.to_dict(), allow_nan=False)


def test_no_control():
    c = card.leakage_card("m", _demo_thresholds(control=False))
    assert c.verdict == card.VERDICT_NO_CONTROL == "no control: leakage counts only, no test"
    assert all(t.member_vs_control is None for t in c.thresholds)
    assert c.alpha_per_threshold is None and c.epsilon_lower_bound is None
    d = c.to_dict()
    assert d["thresholds"][0]["nonmembers_matched"] is None and d["thresholds"][0]["nonmembers_matched_ci"] is None
    assert "non-members (control) n/a" in "\n".join(c.terminal_lines())
    json.dumps(d, allow_nan=False)


def test_unresolvable_fmr_and_fmr_bootstrap():
    pairs = np.full(80, 16)  # 80 identities, 640 pairs (each counted for both of its identities: 1,280 / 2)
    above = np.zeros(80, np.int64)
    above[:2] = 1
    boot = stats.identity_bootstrap_fmr(above, pairs, replicates=200)
    th = [card.ThresholdCounts(1e-4, 0.5, 1, 100, 2, 20, impostor_pairs=640, impostors_above=0),
          card.ThresholdCounts(1e-2, 0.3, 5, 100, 4, 20, impostor_pairs=640, impostors_above=1, fmr_bootstrap=boot)]
    c = card.leakage_card("m", th)
    assert any("640 impostor pairs cannot resolve it (needs >= 10,000)" in s for s in c.cannot_say)
    assert c.thresholds[1].achieved_fmr_ci == boot.achieved_fmr_ci and c.thresholds[1].achieved_fmr_ci_reason is None


def test_bad_inputs():
    with pytest.raises(ValueError, match="both member_scores and nonmember_scores"):
        card.leakage_card("m", [], member_scores=[1.0, 2.0])
    with pytest.raises(ValueError, match="needs member_identities"):
        card.leakage_card("m", [], member_scores=[1.0, 2.0], nonmember_scores=[0.0, 1.0], bootstrap=True)
    with pytest.raises(ValueError, match="0 <= successes <= total"):
        card.leakage_card("m", [card.ThresholdCounts(1e-3, 0.4, 30, 20, 1, 5)])
