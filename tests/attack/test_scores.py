"""Histogram kernel counts equal a float64 brute force; count_above equals brute force."""

import numpy as np
import pytest

from synleak_jax.attack import scores as S


def _quantised(rng, n, d):
    # Entries k/8 with small |k|: every dot product is exactly representable in float32 and float64, so the
    # kernel's bins can be compared with numpy's bit for bit.
    return (rng.integers(-4, 5, size=(n, d)) / 8.0).astype(np.float32)


@pytest.mark.parametrize("mode", ["self", "cross"])
def test_histogram_counts_equal_brute_force(rng, mode):
    a = _quantised(rng, 150, 6)
    la = rng.integers(0, 12, 150)
    if mode == "self":
        sets = S.PairSets(a, la, metric="cosine", block=64)
        s = a.astype(np.float64) @ a.T.astype(np.float64)
        iu = np.triu_indices(len(a), 1)
        scores, same = s[iu], (la[:, None] == la[None, :])[iu]
    else:
        b = _quantised(rng, 90, 6)
        lb = rng.integers(0, 12, 90)
        sets = S.PairSets(a, la, b, lb, metric="cosine", block=64)
        scores = (a.astype(np.float64) @ b.T.astype(np.float64)).ravel()
        same = (la[:, None] == lb[None, :]).ravel()
    bins = S.Bins(-1.37, 1.41, 97)  # edges that no k/64 score hits exactly
    h = S.pair_histogram(sets, bins)
    idx = np.clip(np.floor((scores - bins.lo) / bins.width), 0, bins.nbins - 1).astype(int)
    np.testing.assert_array_equal(h.impostor, np.bincount(idx[~same], minlength=bins.nbins))
    np.testing.assert_array_equal(h.genuine, np.bincount(idx[same], minlength=bins.nbins))
    assert h.n_impostor + h.n_genuine == scores.size
    np.testing.assert_allclose(h.moments("impostor"), (scores[~same].mean(), scores[~same].std()), rtol=1e-5)
    np.testing.assert_allclose(h.moments("genuine"), (scores[same].mean(), scores[same].std()), rtol=1e-5)


def test_unlabelled_self_pairs_are_all_impostors(rng):
    x = rng.normal(size=(70, 5)).astype(np.float32)
    h = S.pair_histogram(S.PairSets(x, None, metric="euclidean", block=32), nbins=64)
    assert h.n_impostor == 70 * 69 // 2 and h.n_genuine == 0


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_count_above_equals_brute_force(rng, metric):
    a = rng.normal(size=(120, 8)).astype(np.float32)
    a /= np.linalg.norm(a, axis=1, keepdims=True)
    la = rng.integers(0, 10, 120)
    s = S.pair_scores_np(a, a, metric)
    iu = np.triu_indices(120, 1)
    sc, same = s[iu], (la[:, None] == la[None, :])[iu]
    # Thresholds half-way between neighbouring scores: float32 round-off cannot move a pair across them.
    srt = np.sort(sc)
    taus = [(srt[j] + srt[j + 1]) / 2 for j in (len(srt) // 2, len(srt) - 40, len(srt) - 3)]
    ci, cg = S.count_above(S.PairSets(a, la, metric=metric, block=32), taus)
    np.testing.assert_array_equal(ci, [(sc[~same] > t).sum() for t in taus])
    np.testing.assert_array_equal(cg, [(sc[same] > t).sum() for t in taus])


def test_native_units_round_trip():
    assert S.to_native("euclidean", -0.6) == 0.6
    assert S.from_native("euclidean", 0.6) == -0.6
    assert S.to_native("cosine", 0.3) == 0.3
    with pytest.raises(ValueError, match="metric"):
        S.check_metric("manhattan")
