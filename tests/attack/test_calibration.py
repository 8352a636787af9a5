"""Calibrated thresholds equal numpy's exact quantiles of all impostor scores."""

import numpy as np
import pytest

from synleak_jax.attack import calibration
from synleak_jax.attack import pairs
from synleak_jax.search import make_mesh
from synleak_jax.search.engine import Source


def _brute(x, labels, metric):
    s = pairs.pair_scores_np(x, x, metric)
    iu = np.triu_indices(len(x), 1)
    same = (labels[:, None] == labels[None, :])[iu] if labels is not None else np.zeros(len(iu[0]), bool)
    return s[iu][~same], s[iu][same]


def _quantised_unit(rng, n, d):
    return (rng.integers(-4, 5, size=(n, d)) / 8.0).astype(np.float32)


@pytest.mark.parametrize("pilot", [False, True])  # False: every threshold bin is split in a second pass
def test_exact_tau_equals_numpy_quantile_exactly(rng, pilot):
    # Quantised embeddings: scores are exact in float32, so tau must equal numpy's order statistic bit for bit,
    # including heavy ties.
    x = _quantised_unit(rng, 260, 5)
    lab = rng.integers(0, 30, 260)
    imp, gen = _brute(x, lab, "cosine")
    fmrs = [1e-2, 1e-3, 1e-4]
    cal = calibration.calibrate_embeddings(x, lab, fmrs, metric="cosine", pilot=pilot)
    assert cal.n_impostor == imp.size and cal.n_genuine == gen.size
    for t, f in zip(cal.thresholds, fmrs):
        ref = np.quantile(imp, 1 - f, method="inverted_cdf")
        assert t.tau == ref
        assert t.impostors_above == (imp > ref).sum() <= t.impostors_allowed == int(np.floor(f * imp.size))
        assert t.fnmr == pytest.approx((gen <= ref).mean())


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_tau_on_float_embeddings(rng, metric):
    x = rng.normal(size=(400, 12)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    if metric == "euclidean":
        x *= 0.7
    lab = rng.integers(0, 40, 400)
    imp, gen = _brute(x, lab, metric)
    cal = calibration.calibrate_embeddings(x, lab, [1e-2, 1e-3], metric=metric)
    for t in cal.thresholds:
        ref = np.quantile(imp, 1 - t.fmr, method="inverted_cdf")
        assert abs(t.tau - ref) < 2e-6  # float32 scores vs float64 reference
        assert t.tau_native == pytest.approx(-t.tau if metric == "euclidean" else t.tau)
    mi, si = cal.impostor_mean, cal.impostor_std
    assert mi == pytest.approx(imp.mean(), abs=1e-5) and si == pytest.approx(imp.std(), rel=1e-4)
    assert 0.0 <= cal.eer <= 1.0


def test_calibrate_scores_and_fixed_threshold(rng):
    imp = rng.normal(0, 0.1, 20011)
    gen = rng.normal(0.6, 0.1, 3001)
    cal = calibration.calibrate_scores(imp, gen, [1e-2, 1e-3], metric="cosine", fixed_thresholds={"published 0.5": 0.5})
    for t in cal.thresholds[:2]:
        assert t.tau == np.quantile(imp, 1 - t.fmr, method="inverted_cdf")
        assert t.fnmr == pytest.approx((gen <= t.tau).mean())
    fixed = cal.thresholds[2]
    assert fixed.source == "published 0.5" and fixed.achieved_fmr == pytest.approx((imp > 0.5).mean())
    # EER from histograms: close to the analytic value for two unit-variance-scaled normals (0.3/0.1 = 3 sigma).
    from scipy.stats import norm
    assert cal.eer == pytest.approx(norm.sf(3.0), abs=0.01)
    assert cal.decidability == pytest.approx(6.0, rel=0.05)


def test_euclidean_fixed_threshold_in_native_units(rng):
    x = rng.normal(size=(120, 8)).astype(np.float32) * 0.2
    imp, _ = _brute(x, None, "euclidean")
    cal = calibration.calibrate_embeddings(x, None, [1e-2], metric="euclidean", fixed_thresholds={"dlib 0.6": 0.6})
    fixed = cal.thresholds[1]
    assert fixed.tau_native == pytest.approx(0.6)
    # Exact except for distances within float32 round-off of 0.6 (seed 7717: one 4.9e-9 away counted on the other
    # side, 1 of 20,000 seeds; 2% of seeds have a distance within 1e-6 of 0.6).
    near = int((np.abs(-imp - 0.6) <= 1e-6).sum())
    assert abs(fixed.impostors_above - (-imp < 0.6).sum()) <= near


def test_impossible_fmr_says_how_many_pairs_are_needed(rng):
    x = rng.normal(size=(50, 4)).astype(np.float32)
    with pytest.raises(ValueError, match=r"FMR 1e-06 .*1,000,000 impostor pairs.*only 1,225"):
        calibration.calibrate_embeddings(x, None, [1e-2, 1e-6], metric="cosine")


def test_same_answer_on_one_and_eight_devices(rng):
    import jax

    if len(jax.devices()) < 2:
        pytest.skip("needs several (forced host) devices")
    x = rng.normal(size=(700, 16)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    lab = rng.integers(0, 60, 700)
    one = calibration.calibrate_embeddings(x, lab, [1e-2, 1e-3, 1e-4], metric="cosine", mesh=make_mesh(jax.devices()[:1]),
                                 fixed_thresholds={"fixed": 0.3})
    many = calibration.calibrate_embeddings(x, lab, [1e-2, 1e-3, 1e-4], metric="cosine", mesh=make_mesh(),
                                  fixed_thresholds={"fixed": 0.3})
    assert [t.to_dict() for t in one.thresholds] == [t.to_dict() for t in many.thresholds]
    np.testing.assert_array_equal(one.hist_impostor, many.hist_impostor)
    np.testing.assert_array_equal(one.hist_genuine, many.hist_genuine)
    assert (one.impostor_mean, one.impostor_std, one.eer) == (many.impostor_mean, many.impostor_std, many.eer)
    bins = pairs.Bins(-2.0, 2.0, 512)
    h1 = pairs.histogram(x[:300], lab[:300], "euclidean", bins, y=x[300:], y_labels=lab[300:],
                         mesh=make_mesh(jax.devices()[:1]))
    h8 = pairs.histogram(x[:300], lab[:300], "euclidean", bins, y=x[300:], y_labels=lab[300:], mesh=make_mesh())
    np.testing.assert_array_equal(h1.impostor, h8.impostor)
    assert h1.moments("genuine") == h8.moments("genuine")


@pytest.mark.parametrize("pilot", [False, True])
def test_exact_eer_equals_sklearn_roc(rng, pilot):
    """The EER of calibrate_embeddings is the exact ROC-point EER (sklearn roc_curve, drop_intermediate=False):
    quantised embeddings make every score exact in float32, so the two agree to 1e-12."""
    from sklearn.metrics import roc_curve

    x = _quantised_unit(rng, 240, 5)
    lab = rng.integers(0, 12, 240)
    imp, gen = _brute(x, lab, "cosine")
    cal = calibration.calibrate_embeddings(x, lab, [1e-2], metric="cosine", pilot=pilot)
    y = np.r_[np.ones(gen.size), np.zeros(imp.size)]
    fpr, tpr, _ = roc_curve(y, np.r_[gen, imp], drop_intermediate=False)
    fnr = 1 - tpr
    i = np.argmin(np.abs(fpr - fnr))
    assert abs(cal.eer - (fpr[i] + fnr[i]) / 2) < 1e-12


def test_pilot_predicts_the_bins_one_pass_and_same_answer_without_it(rng):
    """8,000 images of 800 identities: the pilot (1/8 of the identities) predicts the FMR 1e-2 / 1e-3 and EER
    bins (measured over 12 seeds: the true bin at most 1 bin from the prediction, within 4 ranked candidates),
    so one pass suffices; without it, a second pass gives bit-identical results."""
    n, d = 8000, 32
    x = rng.normal(size=(n, d)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    lab = np.repeat(np.arange(n // 10), 10)
    x += 0.6 * np.repeat(rng.normal(size=(n // 10, d)).astype(np.float32) / np.sqrt(d), 10, axis=0)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    fixed = {"published 0.3": 0.3}
    a = calibration.calibrate_embeddings(Source(x, "members"), lab, [1e-2, 1e-3], metric="cosine", pilot=True,
                                         fixed_thresholds=fixed)  # a Source too: the pilot reads its rows
    b = calibration.calibrate_embeddings(x, lab, [1e-2, 1e-3], metric="cosine", pilot=False, fixed_thresholds=fixed)
    assert "; 1 pass; pilot over" in a.method and "; 2 passes)" in b.method
    assert [t.to_dict() for t in a.thresholds] == [t.to_dict() for t in b.thresholds]
    assert a.eer == b.eer and a.eer > 0
    np.testing.assert_array_equal(a.hist_impostor, b.hist_impostor)


def test_missed_bins_cost_a_pass_not_a_result(rng, monkeypatch):
    """A pilot predicting wrong bins (patched) still gives the exact answer, by one more pass."""
    x = _quantised_unit(rng, 200, 5)
    lab = rng.integers(0, 20, 200)
    imp, gen = _brute(x, lab, "cosine")
    monkeypatch.setattr(calibration, "_predict_bins", lambda *a, **k: [[(0.0, 1), (0.5, 2)], [(0.0, 4)]])
    cal = calibration.calibrate_embeddings(x, lab, [1e-2, 1e-3], metric="cosine", pilot=True)
    assert "2 passes" in cal.method
    for t in cal.thresholds:
        assert t.tau == np.quantile(imp, 1 - t.fmr, method="inverted_cdf")
        assert t.impostors_above == (imp > t.tau).sum() and t.fnmr == pytest.approx((gen <= t.tau).mean())


def test_candidates_and_choose():
    d = np.array([0.5, 0.3, 0.1, -0.1, -0.3])  # crossing between edges 2 and 3: bin 2
    assert calibration._candidates(d, np.full(5, 0.01)) == [(0.0, 2)]
    assert calibration._candidates(d, np.full(5, 0.2)) == [(0.0, 2), (0.5, 1), (0.5, 3)]
    assert calibration._choose([7], [[(0.0, 2), (0.5, 1)], [(0.0, 7), (0.25, 9)]], budget=3) == [7, 2, 9]
