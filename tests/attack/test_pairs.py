"""Pair statistics on the tile engine equal a float64 brute force: histograms, moments, counts, collection."""

import numpy as np
import pytest

from synleak_jax.attack import pairs


def _quantised(rng, n, d):
    # Entries k/8 with small |k|: every dot product is exactly representable in float32 and float64, so the
    # engine's bins can be compared with numpy's bit for bit.
    return (rng.integers(-4, 5, size=(n, d)) / 8.0).astype(np.float32)


def _brute(a, la, b, lb, metric):
    """(scores, same-label) of all pairs i < j of a (b None) or all (i, j) of a x b, float64."""
    if b is None:
        s = pairs.pair_scores_np(a, a, metric)
        iu = np.triu_indices(len(a), 1)
        return s[iu], (la[:, None] == la[None, :])[iu] & (la[iu[0]] >= 0)
    return pairs.pair_scores_np(a, b, metric).ravel(), ((la[:, None] == lb[None, :]) & (la[:, None] >= 0)).ravel()


def _labelled_sets(rng, mode):
    """(a, labels_a, b, labels_b): one quantised labelled set ("self": b None) or two ("cross")."""
    a, la = _quantised(rng, 150, 6), rng.integers(0, 12, 150)
    if mode != "cross":
        return a, la, None, None
    return a, la, _quantised(rng, 90, 6), rng.integers(0, 12, 90)


@pytest.mark.parametrize("mode", ["self", "cross"])
def test_histogram_counts_equal_brute_force(rng, mode):
    a, la, b, lb = _labelled_sets(rng, mode)
    scores, same = _brute(a, la, b, lb, "cosine")
    bins = pairs.Bins(-1.37, 1.41, 97)  # edges that no k/64 score hits exactly
    h = pairs.histogram(a, la, "cosine", bins, y=b, y_labels=lb)
    idx = np.clip(np.floor((scores - bins.lo) / bins.width), 0, bins.nbins - 1).astype(int)
    np.testing.assert_array_equal(h.impostor, np.bincount(idx[~same], minlength=bins.nbins))
    np.testing.assert_array_equal(h.genuine, np.bincount(idx[same], minlength=bins.nbins))
    assert h.n_impostor + h.n_genuine == scores.size
    np.testing.assert_allclose(h.moments("impostor"), (scores[~same].mean(), scores[~same].std()), rtol=1e-5)
    np.testing.assert_allclose(h.moments("genuine"), (scores[same].mean(), scores[same].std()), rtol=1e-5)
    # collection: the exact scores of three bins, with their rows and classes
    wanted = sorted(set(idx[np.argsort(-scores)[:3]].tolist()) | {int(idx[0])})
    expected = int(np.isin(idx, wanted).sum())
    sc, rows, gen = pairs.collect(a, la, "cosine", bins, wanted, expected, y=b, y_labels=lb)
    sel = np.isin(idx, wanted)
    np.testing.assert_array_equal(np.sort(sc), np.sort(scores[sel]).astype(np.float32))
    assert gen.sum() == same[sel].sum()


def test_unlabelled_self_pairs_are_all_impostors(rng):
    x = rng.normal(size=(70, 5)).astype(np.float32)
    h = pairs.histogram(x, None, "euclidean", pairs.Bins(*pairs.score_range(x, None, "euclidean"), 64))
    assert h.n_impostor == 70 * 69 // 2 and h.n_genuine == 0


def test_unknown_labels_are_distinct_identities(rng):
    x = _quantised(rng, 40, 4)
    lab = rng.integers(-1, 3, 40)  # -1: unknown
    h = pairs.histogram(x, lab, "cosine", pairs.Bins(-3.0, 3.0, 16))
    iu = np.triu_indices(40, 1)
    same = (lab[:, None] == lab[None, :])[iu] & (lab[iu[0]] >= 0)
    assert h.n_genuine == same.sum() and h.n_impostor == (~same).sum()


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_count_above_equals_brute_force(rng, metric):
    a = rng.normal(size=(120, 8)).astype(np.float32)
    a /= np.linalg.norm(a, axis=1, keepdims=True)
    la = rng.integers(0, 10, 120)
    s = pairs.pair_scores_np(a, a, metric)
    iu = np.triu_indices(120, 1)
    sc, same = s[iu], (la[:, None] == la[None, :])[iu]
    # Thresholds half-way between neighbouring scores at least 1e-5 apart (the nearest such gap to each wanted
    # rank): float32 round-off cannot move a pair across them. Any neighbours would not do: euclidean ones 1.8e-7
    # and 2.3e-8 apart were split by round-off in 2 of 1,500 seeds (19, 666).
    srt = np.sort(sc)
    wide = np.nonzero(np.diff(srt) >= 1e-5)[0]
    js = [wide[np.argmin(np.abs(wide - j))] for j in (len(srt) // 2, len(srt) - 40, len(srt) - 3)]
    taus = [(srt[j] + srt[j + 1]) / 2 for j in js]
    per_row, total = pairs.count_above(a, la, metric, taus)
    np.testing.assert_array_equal(total[:, 0], [(sc[~same] > t).sum() for t in taus])
    np.testing.assert_array_equal(total[:, 1], [(sc[same] > t).sum() for t in taus])
    # per row: pair (i, j), i < j, is counted in row i
    for t_i, t in enumerate(taus):
        want = np.bincount(iu[0][(sc > t) & ~same], minlength=120)
        np.testing.assert_array_equal(per_row[:, t_i, 0], want)


def test_pair_counts_from_labels(rng):
    lab = rng.integers(-3, 7, 90)  # negative = unknown identity (distinct from every other image)
    iu = np.triu_indices(90, 1)
    same = (lab[iu[0]] == lab[iu[1]]) & (lab[iu[0]] >= 0)
    assert pairs.pair_counts(lab, 90) == (int((~same).sum()), int(same.sum()))
    assert pairs.pair_counts(None, 90) == (90 * 89 // 2, 0)


@pytest.mark.parametrize("mode,metric", [("self", "cosine"), ("cross", "cosine"), ("self", "euclidean")])
def test_key_histogram_equals_brute_force_keys(rng, mode, metric):
    """Top-16-bit counts and the per-value counts of refined bins equal numpy's bincount of the float64 scores'
    float32 keys (quantised embeddings: every score exact in float32), on 8 devices and on 1."""
    import jax

    from synleak_jax.search import make_mesh

    a, la, b, lb = _labelled_sets(rng, mode)
    scores, same = _brute(a, la, b, lb, metric)
    top, low = pairs.score_keys(scores.astype(np.float32))
    refine = sorted(set(top[np.argsort(-scores)[[0, 5, 40]]].tolist()) | {int(top[0])})
    for mesh in (make_mesh(), make_mesh(jax.devices()[:1])):
        h = pairs.key_histogram(a, la, metric, refine=refine, y=b, y_labels=lb, mesh=mesh)
        for c, sel in ((0, ~same), (1, same)):
            np.testing.assert_array_equal(h.top[c], np.bincount(top[sel], minlength=pairs.KEY_BINS))
            for bin_ in refine:
                np.testing.assert_array_equal(h.refined[bin_][c],
                                              np.bincount(low[sel & (top == bin_)], minlength=pairs.KEY_BINS))
        assert h.n_impostor + h.n_genuine == scores.size
        np.testing.assert_allclose(h.moments("impostor"), (scores[~same].mean(), scores[~same].std()), rtol=1e-5)
    # a refined bin's values map back to the scores themselves
    v = pairs.key_scores(top, low)
    np.testing.assert_array_equal(v, scores.astype(np.float32))
    # rebinned plot counts keep the totals and stay within a key bin's spill of numpy's histogram
    edges, hi, hg = h.rebin(32)
    assert hi.sum() == (~same).sum() and hg.sum() == same.sum()
    assert edges[0] <= scores.min() and edges[-1] > scores.max()
    ref = np.histogram(scores[~same], edges)[0]
    assert np.abs(np.cumsum(hi) - np.cumsum(ref)).max() <= max(3, 0.05 * (~same).sum())


def test_genuine_key_counts_equal_brute_force(rng):
    a = rng.normal(size=(300, 8)).astype(np.float32)
    la = rng.integers(-1, 25, 300)
    scores, same = _brute(a, la, None, None, "cosine")
    top, _ = pairs.score_keys(scores[same].astype(np.float32))
    got = pairs.genuine_key_counts(a, la, "cosine", block=7)  # small tiles: the tile loop is exercised
    assert got.sum() == same.sum()
    # float32 host scores vs float64 reference: a score on a key-bin edge may differ by one bin
    assert np.abs(got - np.bincount(top, minlength=pairs.KEY_BINS)).sum() <= 2 * max(1, same.sum() // 1000)
