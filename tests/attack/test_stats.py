"""Leakage-card statistics equal independent implementations on random data.

References: scipy.stats (beta, binomtest, fisher_exact, boschloo_exact), statsmodels (proportion_confint,
confint_proportions_2indep), a DeLong written here from the paper's O(m n) formulas, scikit-learn's roc_curve for
the ROC points and the EER, numpy float64 for the weighted (bootstrap) statistics.
"""

import json
import math

import jax
import numpy as np
import pytest
from scipy import special, stats as scipy_stats
from sklearn.metrics import roc_auc_score, roc_curve
from statsmodels.stats.proportion import confint_proportions_2indep, proportion_confint

from synleak_jax.attack import membership
from synleak_jax.attack import stats


def _random_counts(rng, size, n_max=200):
    n = rng.integers(1, n_max, size)
    k = (rng.random(size) * (n + 1)).astype(np.int64)
    k[:5] = 0  # both ends always covered
    k[5:10] = n[5:10]
    return k, n


# ------------------------------------------------------------------------------------------ proportions


@pytest.mark.parametrize("confidence", [0.95, 0.8, 0.999])
def test_clopper_pearson_equals_statsmodels_and_binomtest(rng, confidence):
    k, n = _random_counts(rng, 200)
    lo, hi = stats.clopper_pearson(k, n, confidence)
    ref_lo, ref_hi = proportion_confint(k, n, alpha=1 - confidence, method="beta")
    np.testing.assert_allclose(lo, ref_lo, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(hi, ref_hi, rtol=1e-10, atol=1e-14)
    for i in range(0, 200, 17):
        # binomtest inverts the binomial CDF with a root finder (relative precision ~1e-9), not Beta.ppf.
        ci = scipy_stats.binomtest(int(k[i]), int(n[i])).proportion_ci(confidence, method="exact")
        assert lo[i] == pytest.approx(ci.low, rel=1e-7, abs=1e-14)
        assert hi[i] == pytest.approx(ci.high, rel=1e-7, abs=1e-14)
    assert np.all(lo[:5] == 0) and np.all(hi[5:10] == 1)
    s_lo, s_hi = stats.clopper_pearson(3, 10, confidence)
    assert isinstance(s_lo, float) and isinstance(s_hi, float)
    assert [s_lo, s_hi] == pytest.approx(list(proportion_confint(3, 10, alpha=1 - confidence, method="beta")))


def test_clopper_pearson_rejects_bad_counts():
    with pytest.raises(ValueError, match="0 <= successes <= total"):
        stats.clopper_pearson(5, 4)
    with pytest.raises(ValueError, match="whole numbers"):
        stats.clopper_pearson(1.5, 4)
    with pytest.raises(ValueError, match="confidence"):
        stats.clopper_pearson(1, 4, 1.0)
    assert stats.clopper_pearson(0, 0) == (0.0, 1.0)


def test_one_sided_bounds_equal_binomtest(rng):
    k, n = _random_counts(rng, 60)
    for c in (0.95, 0.975):
        lower = stats.clopper_pearson_bound(k, n, c, side="lower")
        upper = stats.clopper_pearson_bound(k, n, c, side="upper")
        for i in range(k.size):
            test_greater = scipy_stats.binomtest(int(k[i]), int(n[i]), alternative="greater")
            test_less = scipy_stats.binomtest(int(k[i]), int(n[i]), alternative="less")
            assert lower[i] == pytest.approx(test_greater.proportion_ci(c).low, rel=1e-7, abs=1e-14)
            assert upper[i] == pytest.approx(test_less.proportion_ci(c).high, rel=1e-7, abs=1e-14)


def test_wilson_and_newcombe_equal_statsmodels(rng):
    k1, n1 = _random_counts(rng, 150)
    k2, n2 = _random_counts(rng, 150)
    k2, n2 = k2[::-1].copy(), n2[::-1].copy()
    for c in (0.95, 0.9):
        lo, hi = stats.wilson(k1, n1, c)
        ref = proportion_confint(k1, n1, alpha=1 - c, method="wilson")
        np.testing.assert_allclose(lo, ref[0], atol=1e-12)
        np.testing.assert_allclose(hi, ref[1], atol=1e-12)
        dlo, dhi = stats.newcombe_difference(k1, n1, k2, n2, c)
        for i in range(k1.size):
            r = confint_proportions_2indep(int(k1[i]), int(n1[i]), int(k2[i]), int(n2[i]), method="newcomb",
                                           compare="diff", alpha=1 - c)
            assert dlo[i] == pytest.approx(r[0], abs=1e-12)
            assert dhi[i] == pytest.approx(r[1], abs=1e-12)


def test_rate_with_ci_zero_total():
    r = stats.rate_with_ci(0, 0)
    assert r.rate is None and r.ci is None and "total is 0" in r.reason
    r = stats.rate_with_ci(7, 20, 0.9)
    assert r.ci == pytest.approx(list(proportion_confint(7, 20, alpha=0.1, method="beta")), rel=1e-12)


# ---------------------------------------------------------------------------------- member vs control


def test_fisher_equals_scipy(rng):
    for _ in range(150):
        n1, n2 = (int(v) for v in rng.integers(1, 400, 2))
        k1, k2 = int(rng.integers(0, n1 + 1)), int(rng.integers(0, n2 + 1))
        ref = scipy_stats.fisher_exact([[k1, n1 - k1], [k2, n2 - k2]], alternative="greater").pvalue
        assert stats.fisher_one_sided(k1, n1, k2, n2) == pytest.approx(ref, rel=1e-9, abs=1e-300)


def test_boschloo_equals_scipy(rng):
    for _ in range(25):
        n1, n2 = (int(v) for v in rng.integers(1, 45, 2))
        k1, k2 = int(rng.integers(0, n1 + 1)), int(rng.integers(0, n2 + 1))
        ref = scipy_stats.boschloo_exact([[k1, k2], [n1 - k1, n2 - k2]], alternative="greater").pvalue
        ref_fisher = scipy_stats.fisher_exact([[k1, n1 - k1], [k2, n2 - k2]], alternative="greater").pvalue
        p, p_fisher = stats.boschloo_one_sided(k1, n1, k2, n2)
        # scipy maximises over the nuisance parameter with shgo; our grid + refinement finds the same supremum
        # (never a smaller one) to a few ulps of its logarithm.
        assert p == pytest.approx(ref, rel=1e-8, abs=1e-300), (k1, n1, k2, n2)
        assert p_fisher == pytest.approx(ref_fisher, rel=1e-9, abs=1e-300)
        assert p <= p_fisher * (1 + 1e-12)


def test_boschloo_near_one_is_not_fishers_p():
    """A table whose Fisher p is 1 - 4e-13: ties must be judged on 1 - F there (a 1e-12 tolerance on F counted
    every table as a tie and returned Fisher's p). Reference: exact rational arithmetic, 0.99999952316."""
    p, p_fisher = stats.boschloo_one_sided(1, 22, 21, 22)
    assert abs(p - 0.99999952316) < 1e-10 and p_fisher > 1 - 1e-12
    ref = scipy_stats.boschloo_exact([[1, 21], [21, 1]], alternative="greater").pvalue
    assert p == pytest.approx(ref, rel=1e-10)


def test_boschloo_more_powerful_at_demo_size():
    # 50 vs 50 at a borderline difference: Boschloo rejects where Fisher does not (the reason it is the default).
    p_b, p_f = stats.boschloo_one_sided(12, 50, 5, 50)
    ref = scipy_stats.boschloo_exact([[12, 5], [38, 45]], alternative="greater").pvalue
    assert p_b == pytest.approx(ref, rel=1e-7)
    assert p_b < 0.05 < p_f


def test_member_vs_control_result_and_readings():
    r = stats.member_vs_control(35, 50, 10, 50)
    assert r.test == "boschloo" and r.rejected and r.p_value <= 0.05
    assert r.p_value == pytest.approx(
        scipy_stats.boschloo_exact([[35, 10], [15, 40]], alternative="greater").pvalue, rel=1e-7)
    assert r.rate_difference_ci == pytest.approx(list(confint_proportions_2indep(35, 50, 10, 50, method="newcomb",
                                                                                  compare="diff")), abs=1e-12)
    assert "Significant" in r.reading
    d = r.to_dict()
    json.dumps(d, allow_nan=False)
    assert {"test", "p_value", "members_matched", "n_members", "nonmembers_matched", "n_nonmembers",
            "rate_difference", "rate_difference_ci", "alpha", "rejected", "reading"} <= set(d)

    r = stats.member_vs_control(12, 50, 10, 50)
    assert not r.rejected
    assert "absence of evidence, not evidence of absence" in r.reading
    assert f"{r.rate_difference_ci[1]:+.1%}" in r.reading  # says which differences are not ruled out

    # Above the size bound the test is Fisher, and says why.
    r = stats.member_vs_control(300, 1000, 250, 1000, boschloo_max_cells=1000)
    assert r.test == "fisher" and "Boschloo skipped" in r.test_choice
    assert r.p_value == pytest.approx(
        scipy_stats.fisher_exact([[300, 700], [250, 750]], alternative="greater").pvalue, rel=1e-9)

    r = stats.member_vs_control(3, 10, 0, 0)
    assert r.p_value is None and r.rejected is None and r.reason == "no non-members"
    with pytest.raises(ValueError, match="test must be"):
        stats.member_vs_control(1, 2, 1, 2, test="barnard")


# ------------------------------------------------------------------------------------------ AUC, DeLong


def _delong_reference(x, y):
    """DeLong et al. (1988) by the definitions: psi kernel, structural components, their variances."""
    psi = (x[:, None] > y[None, :]) + 0.5 * (x[:, None] == y[None, :])
    v10 = psi.mean(axis=1)
    v01 = psi.mean(axis=0)
    auc = psi.mean()
    s10 = ((v10 - auc) ** 2).sum() / (x.size - 1)
    s01 = ((v01 - auc) ** 2).sum() / (y.size - 1)
    return auc, v10, v01, s10 / x.size + s01 / y.size


@pytest.mark.parametrize("ties", [False, True])
def test_delong_equals_quadratic_reference(rng, ties):
    m, n = int(rng.integers(2, 400)), int(rng.integers(2, 400))
    x, y = rng.normal(0.7, 1.0, m), rng.normal(0.0, 1.3, n)
    # one member below and one above a non-member: AUC strictly inside (0, 1) (with few images it was 0 or 1, a
    # zero-variance case, in about 4 of 100,000 draws: seed 8002, m=3, n=2, failed)
    x[0], x[1] = y[0] - 1.0, y[0] + 1.0
    if ties:
        x, y = np.round(x, 1), np.round(y, 1)
    auc, v10, v01 = stats.delong_components(x, y)
    ref_auc, ref_v10, ref_v01, ref_var = _delong_reference(x, y)
    assert auc == pytest.approx(ref_auc, abs=1e-12)
    assert auc == pytest.approx(roc_auc_score(np.r_[np.ones(m), np.zeros(n)], np.r_[x, y]), abs=1e-12)
    np.testing.assert_allclose(v10, ref_v10, atol=1e-12)
    np.testing.assert_allclose(v01, ref_v01, atol=1e-12)
    res = stats.auc_ci(x, y, 0.95, transform="clip")
    assert res.standard_error == pytest.approx(math.sqrt(ref_var), rel=1e-10)
    z = scipy_stats.norm.ppf(0.975)
    assert res.auc_ci == pytest.approx([max(0, ref_auc - z * math.sqrt(ref_var)),
                                        min(1, ref_auc + z * math.sqrt(ref_var))], abs=1e-12)
    logit = stats.auc_ci(x, y, 0.95)
    half = z * math.sqrt(ref_var) / (ref_auc * (1 - ref_auc))
    assert logit.auc_ci == pytest.approx([special.expit(special.logit(ref_auc) - half),
                                          special.expit(special.logit(ref_auc) + half)], abs=1e-12)
    assert 0 < logit.auc_ci[0] < auc < logit.auc_ci[1] < 1


def test_auc_ci_degenerate_cases():
    r = stats.auc_ci([2.0, 3.0, 4.0], [0.0, 1.0])
    assert r.auc == 1.0 and r.auc_ci is None and "variance is 0" in r.reason
    r = stats.auc_ci([1.0], [0.0, 1.0])
    assert r.auc_ci is None and ">= 2 members" in r.reason
    with pytest.raises(ValueError, match="NaN"):
        stats.auc_ci([1.0, np.nan], [0.0, 1.0])
    json.dumps(r.to_dict(), allow_nan=False)


# ------------------------------------------------------------------------------------------ TPR at FPR


@pytest.mark.parametrize("ties", [False, True])
def test_tpr_at_fpr_equals_sklearn_and_membership(rng, ties):
    pos, neg = rng.normal(0.5, 1.0, 1500), rng.normal(0.0, 1.0, 2500)
    if ties:
        pos, neg = np.round(pos, 1), np.round(neg, 1)
    targets = [1e-4, 4e-4, 1e-3, 1e-2, 0.1]
    out = stats.tpr_at_fpr_ci(pos, neg, targets, 0.95)
    fpr, tpr, thr = roc_curve(np.r_[np.ones(pos.size), np.zeros(neg.size)], np.r_[pos, neg],
                              drop_intermediate=False)
    roc = membership.roc_curve(pos, neg)
    for target, point in zip(targets, out):
        if target < 1 / neg.size:
            assert point.tpr is None and point.reason == f"needs >= {math.ceil(1 / target):,} non-members; have 2,500"
            continue
        ok = fpr <= target + 1e-15
        i = np.nonzero(ok)[0][np.argmax(tpr[ok])]  # argmax: the first, lowest-FPR point with the largest TPR
        assert point.tpr == pytest.approx(tpr[i], abs=1e-15)
        assert point.fpr == pytest.approx(fpr[i], abs=1e-15)
        assert point.tpr == pytest.approx(membership.tpr_at_fpr(roc, target), abs=1e-15)
        threshold = np.inf if point.threshold is None else point.threshold  # None: nothing predicted member
        assert point.members_above == int((pos >= threshold).sum())
        assert point.nonmembers_above == int((neg >= threshold).sum())
        assert point.tpr_ci == pytest.approx(list(proportion_confint(point.members_above, pos.size, method="beta")),
                                             rel=1e-10)
        assert point.fpr_ci == pytest.approx(
            list(proportion_confint(point.nonmembers_above, neg.size, method="beta")), rel=1e-10, abs=1e-15)


def test_tpr_at_fpr_exactly_one_over_n():
    # FPR 1e-3 with exactly 1,000 non-members is resolvable (one false positive allowed), despite round-off.
    neg = np.arange(1000) / 1000.0
    pos = np.array([0.9985, 2.0, 3.0])  # the lowest member needs the top non-member (0.999) in
    (point,) = stats.tpr_at_fpr_ci(pos, neg, [1e-3])
    assert point.reason is None and point.nonmembers_above == 1 and point.members_above == 3


# ------------------------------------------------------------------------------------------ epsilon


def test_epsilon_lower_bound_equals_scipy_beta(rng):
    for _ in range(50):
        npos, nneg = (int(v) for v in rng.integers(10, 3000, 2))
        tp, fp = int(rng.integers(0, npos + 1)), int(rng.integers(0, nneg // 5 + 1))
        delta, conf = 10 ** float(rng.uniform(-6, -2)), float(rng.choice([0.9, 0.95, 0.99]))
        b = stats.epsilon_lower_bound(tp, npos, fp, nneg, delta=delta, confidence=conf)
        each = 1 - (1 - conf) / 2
        tpr_lo = 0.0 if tp == 0 else scipy_stats.beta.ppf(1 - each, tp, npos - tp + 1)
        fpr_hi = 1.0 if fp == nneg else scipy_stats.beta.ppf(each, fp + 1, nneg - fp)
        assert b.tpr_lower == pytest.approx(tpr_lo, rel=1e-10, abs=1e-15)
        assert b.fpr_upper == pytest.approx(fpr_hi, rel=1e-10)
        if tpr_lo <= delta:
            assert b.epsilon_lower_bound is None and "no bound" in b.reason
        elif math.log((tpr_lo - delta) / fpr_hi) <= 0:
            assert b.epsilon_lower_bound is None and "<= 0" in b.reason
        else:
            assert b.epsilon_lower_bound == pytest.approx(math.log((tpr_lo - delta) / fpr_hi), rel=1e-10, abs=1e-12)
        if fp == 0 or tp / npos <= delta:
            assert b.epsilon_point is None
        else:
            assert b.epsilon_point == pytest.approx(math.log((tp / npos - delta) / (fp / nneg)))
        json.dumps(b.to_dict(), allow_nan=False)


# ------------------------------------------------------------------------------------------ exact EER


def _eer_sklearn(genuine, impostor):
    """EER from sklearn's full ROC: |FPR - FNR| smallest; among (float-)ties the first in sklearn's order, which
    runs from the strictest threshold (the higher-threshold rule)."""
    y = np.r_[np.ones(genuine.size), np.zeros(impostor.size)]
    fpr, tpr, _ = roc_curve(y, np.r_[genuine, impostor], drop_intermediate=False)
    fnr = 1 - tpr
    gap = np.abs(fpr - fnr)
    i = np.nonzero(gap <= gap.min() + 1e-12)[0][0]
    return (fpr[i] + fnr[i]) / 2, fpr[i], fnr[i]


def _eer_cases(rng):
    cases = []
    for n_gen, n_imp, decimals in [(1, 1, None), (3, 2, None), (100, 10, None), (317, 1000, None), (50, 50, 1),
                                   (400, 4000, 2), (2000, 20000, 0), (10, 10, 0), (5000, 100000, 3),
                                   (20000, 200000, None)]:
        gen = rng.normal(1.5, 1.0, n_gen)
        imp = rng.normal(0.0, 1.0, n_imp)
        if decimals is not None:  # ties, heavy ties (decimals 0: a handful of distinct values)
            gen, imp = np.round(gen, decimals), np.round(imp, decimals)
        cases.append((gen, imp))
    # An exact tie of |FMR - FNMR| on both sides of the crossing (see test_exact_eer_tie_rule).
    cases.append((np.array([0.2, 0.5, 0.8, 0.9]), np.array([0.1, 0.5, 0.5, 0.5])))
    cases.append((np.array([0.5, 0.5]), np.array([0.5, 0.5])))  # all equal
    return cases


def test_exact_eer_equals_sklearn(rng):
    for gen, imp in _eer_cases(rng):
        r = stats.exact_eer(gen, imp)
        eer, fpr, fnr = _eer_sklearn(gen, imp)
        assert r.eer == pytest.approx(eer, abs=1e-12), (gen.size, imp.size)
        assert r.fmr == pytest.approx(fpr, abs=1e-12) and r.fnmr == pytest.approx(fnr, abs=1e-12)
        thr = -np.inf if r.threshold is None else r.threshold
        assert r.impostors_above == int((imp > thr).sum()) and r.genuine_at_or_below == int((gen <= thr).sum())
        assert r.decidability == pytest.approx(abs(gen.mean() - imp.mean()) /
                                               math.sqrt((gen.var() + imp.var()) / 2) if gen.var() + imp.var() else
                                               math.inf)


def test_exact_eer_tie_rule():
    # Points (FMR, FNMR): t = 0.2 gives (3/4, 1/4), t = 0.5 gives (0, 2/4): |FMR - FNMR| = 1/2 at both, with
    # different EERs (0.5 and 0.25). The higher threshold wins, as the first point in sklearn's order.
    gen, imp = np.array([0.2, 0.5, 0.8, 0.9]), np.array([0.1, 0.5, 0.5, 0.5])
    r = stats.exact_eer(gen, imp)
    assert (r.threshold, r.fmr, r.fnmr, r.eer) == (0.5, 0.0, 0.5, 0.25)
    assert r.eer == _eer_sklearn(gen, imp)[0]
    # The same tie read off a histogram whose bin holds both points.
    loc = stats.eer_locate(np.bincount(_bin_index(imp, 0, 1, 1), minlength=1),
                           np.bincount(_bin_index(gen, 0, 1, 1), minlength=1))
    got = stats.eer_from_bin(4, 4, loc.impostor_above_bin, loc.genuine_above_bin, imp, gen)
    assert (got.threshold, got.eer) == (0.5, 0.25)


def _bin_index(scores, lo, hi, nbins):
    """The histogram engine's binning (attack/scores.Bins): clip(floor((s - lo) * nbins / (hi - lo)))."""
    return np.clip(np.floor((scores - lo) * (nbins / (hi - lo))), 0, nbins - 1).astype(np.int64)


@pytest.mark.parametrize("nbins", [1, 7, 256, 4096])
def test_eer_from_histogram_equals_exact(rng, nbins):
    for gen, imp in _eer_cases(rng):
        lo, hi = min(gen.min(), imp.min()) - 0.01, max(gen.max(), imp.max()) + 0.01
        b_gen, b_imp = _bin_index(gen, lo, hi, nbins), _bin_index(imp, lo, hi, nbins)
        h_gen = np.bincount(b_gen, minlength=nbins)
        h_imp = np.bincount(b_imp, minlength=nbins)
        loc = stats.eer_locate(h_imp, h_gen)
        ref = stats.exact_eer(gen, imp)
        if loc.bin is None:
            got = loc.result
            assert loc.edge is not None
        else:
            got = stats.eer_from_bin(loc.n_impostor, loc.n_genuine, loc.impostor_above_bin, loc.genuine_above_bin,
                                     imp[b_imp == loc.bin], gen[b_gen == loc.bin])
            assert loc.impostor_above_bin == int((b_imp > loc.bin).sum())
            assert loc.genuine_above_bin == int((b_gen > loc.bin).sum())
        assert got.eer == pytest.approx(ref.eer, abs=1e-12)
        assert (got.fmr, got.fnmr) == (ref.fmr, ref.fnmr)
        assert (got.impostors_above, got.genuine_at_or_below) == (ref.impostors_above, ref.genuine_at_or_below)
        if got.threshold is not None:
            assert got.threshold == ref.threshold


def test_eer_on_an_edge_and_refined_subrange():
    # FMR = FNMR = 1/2 exactly at the edge 0.5 of two bins over [0, 1).
    gen, imp = np.array([0.3, 0.4, 0.8, 0.9]), np.array([0.1, 0.2, 0.6, 0.7])
    loc = stats.eer_locate(np.bincount(_bin_index(imp, 0, 1, 2), minlength=2),
                           np.bincount(_bin_index(gen, 0, 1, 2), minlength=2))
    assert loc.bin is None and loc.edge == 1 and loc.result.eer == 0.5 == stats.exact_eer(gen, imp).eer

    # A crowded bin refined by a second histogram inside it (as the calibration's order statistic does).
    rng = np.random.default_rng(7)
    gen, imp = np.round(rng.normal(1.0, 1.0, 3000), 4), np.round(rng.normal(0.0, 1.0, 300000), 4)
    lo, hi, nbins = -6.0, 6.0, 16
    b_gen, b_imp = _bin_index(gen, lo, hi, nbins), _bin_index(imp, lo, hi, nbins)
    loc = stats.eer_locate(np.bincount(b_imp, minlength=nbins), np.bincount(b_gen, minlength=nbins))
    width = (hi - lo) / nbins
    sub_lo = lo + loc.bin * width
    in_gen, in_imp = gen[b_gen == loc.bin], imp[b_imp == loc.bin]
    sb_gen, sb_imp = _bin_index(in_gen, sub_lo, sub_lo + width, 64), _bin_index(in_imp, sub_lo, sub_lo + width, 64)
    sub = stats.eer_locate(np.bincount(sb_imp, minlength=64), np.bincount(sb_gen, minlength=64),
                           n_impostor=imp.size, n_genuine=gen.size, impostor_above_range=loc.impostor_above_bin,
                           genuine_above_range=loc.genuine_above_bin)
    got = sub.result if sub.bin is None else stats.eer_from_bin(
        sub.n_impostor, sub.n_genuine, sub.impostor_above_bin, sub.genuine_above_bin, in_imp[sb_imp == sub.bin],
        in_gen[sb_gen == sub.bin])
    assert got.eer == pytest.approx(_eer_sklearn(gen, imp)[0], abs=1e-12)


def test_eer_at_value_equals_eer_from_bin_and_exact(rng):
    """Scores on a coarse grid (many ties): the EER located by float32 key and, inside its bin, at one value,
    equals exact_eer on the arrays and eer_from_bin on the repeated value."""
    from synleak_jax.attack import pairs

    for _ in range(30):
        gen = np.round(rng.normal(0.5, 0.2, int(rng.integers(5, 300))), 2).astype(np.float32)
        imp = np.round(rng.normal(0.0, 0.2, int(rng.integers(50, 3000))), 2).astype(np.float32)
        ti, li = pairs.score_keys(imp)
        tg, lg = pairs.score_keys(gen)
        loc = stats.eer_locate(np.bincount(ti, minlength=pairs.KEY_BINS), np.bincount(tg, minlength=pairs.KEY_BINS))
        ref = stats.exact_eer(gen, imp)
        if loc.bin is None:
            assert loc.result.eer == pytest.approx(ref.eer, abs=1e-12)
            continue
        fi = np.bincount(li[ti == loc.bin], minlength=pairs.KEY_BINS)
        fg = np.bincount(lg[tg == loc.bin], minlength=pairs.KEY_BINS)
        sub = stats.eer_locate(fi, fg, n_impostor=imp.size, n_genuine=gen.size,
                               impostor_above_range=loc.impostor_above_bin, genuine_above_range=loc.genuine_above_bin)
        if sub.bin is None:
            got = sub.result
        else:
            v = float(pairs.key_scores(loc.bin, sub.bin))
            got = stats.eer_at_value(imp.size, gen.size, sub.impostor_above_bin, sub.genuine_above_bin,
                                     int(fi[sub.bin]), int(fg[sub.bin]), v)
            alt = stats.eer_from_bin(imp.size, gen.size, sub.impostor_above_bin, sub.genuine_above_bin,
                                     np.full(fi[sub.bin], v), np.full(fg[sub.bin], v))
            assert (got.eer, got.fmr, got.fnmr) == (alt.eer, alt.fmr, alt.fnmr)
        assert got.eer == pytest.approx(ref.eer, abs=1e-12)
        assert (got.impostors_above, got.genuine_at_or_below) == (ref.impostors_above, ref.genuine_at_or_below)


def test_eer_bad_inputs():
    with pytest.raises(ValueError, match="same non-zero length"):
        stats.eer_locate([1, 2], [1])
    with pytest.raises(ValueError, match="does not change sign"):
        stats.eer_locate([1, 1], [1, 1], n_impostor=100, n_genuine=10, impostor_above_range=98,
                         genuine_above_range=8)
    with pytest.raises(ValueError, match="not in this bin"):
        stats.eer_from_bin(10, 10, 5, 0, [0.5], [])


# ------------------------------------------------------------------------------------- identity bootstrap


def _weighted_reference(pos, neg, w_pos, w_neg, targets):
    """Weighted Mann-Whitney AUC and weighted-ROC TPR at FPR by the definitions (float64, O(m n))."""
    psi = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
    auc = w_pos @ psi @ w_neg / (w_pos.sum() * w_neg.sum())
    tprs = []
    for t in targets:
        best = 0.0
        for v in np.unique(np.r_[pos, neg]):
            fpr = w_neg[neg >= v].sum() / w_neg.sum()
            if fpr <= t:
                best = max(best, w_pos[pos >= v].sum() / w_pos.sum())
        tprs.append(best)
    return auc, tprs


def test_weighted_membership_stats_equal_reference(rng):
    m, n, r = 300, 200, 5
    pos, neg = np.round(rng.normal(0.5, 1, m), 1), np.round(rng.normal(0, 1, n), 1)  # ties across and within
    weights = rng.integers(0, 4, (m + n, r)).astype(np.float32)  # one code per image
    # targets off every weight ratio: the device computes FPRs in float32, a ratio exactly at a target could fall
    # on either side of it (one failure in 7 runs with 0.005 / 0.02 / 0.1 / 0.5)
    targets = np.array([0.00513, 0.02031, 0.10117, 0.50071], np.float32)
    codes_sorted, is_member, group_end = stats.membership_sort(pos, neg, np.arange(m), np.arange(n), m)
    auc, tpr = stats.weighted_membership_stats(weights, codes_sorted, is_member, group_end, targets)
    for j in range(r):
        ref_auc, ref_tpr = _weighted_reference(pos, neg, weights[:m, j].astype(np.float64),
                                               weights[m:, j].astype(np.float64), targets.astype(np.float64))
        assert float(auc[j]) == pytest.approx(ref_auc, abs=2e-6)
        np.testing.assert_allclose(np.asarray(tpr[j]), ref_tpr, atol=2e-6)


def test_cumsum_rows_exact(rng):
    x = rng.integers(0, 9, (1000, 7)).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(stats._cumsum_rows(x)), np.cumsum(x, axis=0))


def test_multiplicities_draw_k_identities():
    counts = np.asarray(stats.bootstrap_multiplicities(jax.random.key(3), np.arange(200), 0, 80))
    assert counts.shape == (80, 200)
    np.testing.assert_array_equal(counts.sum(axis=0), 80)
    assert counts.std() > 0.5  # real resampling, not the identity weighting


@pytest.fixture(scope="module")
def clustered_scores():
    rng = np.random.default_rng(11)
    # 80 identities in each group (the multiplicity draws of both groups and of the FMR tests share one
    # compilation), 5 images each (200 non-members: TPR at FPR 1e-3 is unresolvable).
    m_ids, n_ids = np.repeat(np.arange(80), 5), np.repeat(np.arange(80), 5)[:200]
    # Scores share a per-identity offset: images of one person are correlated.
    pos = 0.6 + rng.normal(0, 0.8, 80)[m_ids] + rng.normal(0, 0.6, m_ids.size)
    neg = rng.normal(0, 0.8, 80)[n_ids] + rng.normal(0, 0.6, n_ids.size)
    return pos, m_ids, neg, n_ids


def test_identity_bootstrap_membership_seeded_and_chunk_free(clustered_scores):
    pos, m_ids, neg, n_ids = clustered_scores
    a = stats.identity_bootstrap_membership(pos, m_ids, neg, n_ids, replicates=400, seed=5, target_fprs=[1e-3, 0.1],
                                            chunk=200)
    b = stats.identity_bootstrap_membership(pos, m_ids, neg, n_ids, replicates=400, seed=5, target_fprs=[1e-3, 0.1],
                                            chunk=400)
    c = stats.identity_bootstrap_membership(pos, m_ids, neg, n_ids, replicates=400, seed=6, target_fprs=[1e-3, 0.1],
                                            chunk=200)
    assert a.to_dict() == b.to_dict()
    assert a.auc_ci != c.auc_ci
    assert a.tpr_at_fpr[0]["tpr"] is None and "needs >= 1,000 non-members" in a.tpr_at_fpr[0]["reason"]
    assert a.auc == pytest.approx(roc_auc_score(np.r_[np.ones(pos.size), np.zeros(neg.size)], np.r_[pos, neg]))
    assert a.auc_ci[0] < a.auc < a.auc_ci[1]
    # Clustering: the identity interval is wider than DeLong's, which treats the 500 images as independent.
    delong = stats.auc_ci(pos, neg)
    assert a.auc_ci[1] - a.auc_ci[0] > 1.2 * (delong.auc_ci[1] - delong.auc_ci[0])
    json.dumps(a.to_dict(), allow_nan=False)


def test_identity_bootstrap_fmr_equals_numpy(rng):
    k = 80
    pairs = rng.integers(0, 2000, k)
    above = (pairs * rng.random(k) * 0.01).astype(np.int64)
    counts = np.asarray(stats.bootstrap_multiplicities(jax.random.key(9), np.arange(200), 0, k), np.float64)
    samples = (above @ counts) / (pairs @ counts)
    point = above.sum() / pairs.sum()
    attributed = stats.identity_bootstrap_fmr(above, pairs, replicates=200, seed=9, method="attributed")
    assert attributed.achieved_fmr == pytest.approx(point)
    assert attributed.achieved_fmr_ci == pytest.approx(list(np.quantile(samples, [0.025, 0.975])), rel=1e-5)
    corrected = stats.identity_bootstrap_fmr(above, pairs, replicates=200, seed=9)  # the default
    assert corrected.achieved_fmr_ci == pytest.approx(
        list(np.quantile(np.clip(point + 2 * (samples - point), 0, 1), [0.025, 0.975])), rel=1e-5, abs=1e-9)
    assert corrected.impostor_pairs == round(pairs.sum() / 2) and "pair correction" in corrected.method
    with pytest.raises(ValueError, match="impostors above <= impostor pairs"):
        stats.identity_bootstrap_fmr([5], [3])


# ------------------------------------------------------------------------------------- coverage (slow)


@pytest.mark.slow
def test_coverage_simulation_reduced():
    """scripts/coverage_sim.py with 300 simulated audits per setting (Monte-Carlo SE 0.013 at 0.95)."""
    import importlib.util
    import pathlib

    path = pathlib.Path(__file__).resolve().parents[2] / "scripts" / "coverage_sim.py"
    spec = importlib.util.spec_from_file_location("coverage_sim", path)
    coverage_sim = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(coverage_sim)
    rows = coverage_sim.run(sims=300, seed=1, replicates=300)
    by = {}
    for r in rows:
        by.setdefault(r["scenario"], []).append(r)
    # Clopper-Pearson is conservative by design: never visibly below 0.95.
    assert all(r["coverage"] >= 0.92 for r in by["clopper_pearson"])
    assert all(0.91 <= r["coverage"] <= 0.99 for r in by["newcombe"])
    # DeLong (logit): nominal except near AUC 1 with few members (0.925 at 1,000 simulations).
    assert all(r["coverage"] >= 0.88 for r in by["delong_logit"])
    # TPR / FPR at the operating point picked on the same scores: Clopper-Pearson of the picked threshold's rates
    # (0.941-0.980 at 1,000 simulations). The epsilon bound is one-sided and conservative (held 0.997-0.998).
    assert all(r["coverage"] >= 0.91 for r in by["tpr_at_fpr_tpr_ci"] + by["tpr_at_fpr_fpr_ci"])
    assert all(r["coverage"] >= 0.95 for r in by["epsilon_lower_bound"])
    # Clustered images: the identity bootstrap covers, DeLong (images as independent) does not.
    assert all(0.90 <= r["coverage"] <= 0.99 for r in by["identity_bootstrap_auc"] + by["identity_bootstrap_tpr"])
    assert all(r["coverage"] < 0.85 for r in by["delong_on_clustered"])
    # Pairs sharing identities: the pair-corrected bootstrap covers; the attributed one and a binomial interval
    # over the pairs do not when identities have effects (the first two settings).
    assert all(r["coverage"] >= 0.91 for r in by["identity_bootstrap_fmr_pairs_corrected"])
    assert all(r["coverage"] < 0.85 for r in by["identity_bootstrap_fmr_attributed"][:2])
    assert all(r["coverage"] < 0.85 for r in by["clopper_pearson_over_pairs"][:2])
