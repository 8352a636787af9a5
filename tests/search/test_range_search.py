"""range_search against a float64 brute force: pairs, counts, overflow flags, errors."""

import numpy as np
import pytest

from synleak_jax.search import range_search
from tests.search.helpers import brute_scores


def _tau_in_gap(ref, lo_q, hi_q):
    """A threshold between two adjacent distinct scores (gap > 1e-4), so float32 rounding cannot flip a pair."""
    vals = np.sort(ref.ravel())
    lo, hi = int(lo_q * len(vals)), int(hi_q * len(vals))
    gaps = np.diff(vals[lo:hi])
    j = lo + int(np.argmax(gaps))
    assert gaps.max() > 1e-4
    return 0.5 * (vals[j] + vals[j + 1])


@pytest.mark.parametrize("nq,ndb,d,bq,bdb,max_per_query", [(23, 700, 16, 8, 128, 5), (40, 90, 8, 1024, 2048, 200),
                                                           (17, 1500, 32, 16, 256, 40)])
def test_matches_brute_force(rng, nq, ndb, d, bq, bdb, max_per_query):
    q = rng.standard_normal((nq, d)).astype(np.float32)
    db = rng.standard_normal((ndb, d)).astype(np.float32)
    ref = brute_scores(q, db)
    tau = _tau_in_gap(ref, 0.97, 0.995)
    res = range_search(q, db, tau, max_per_query, query_block=bq, db_block=bdb, tile=16)
    qi, di, sc, over = res
    true_counts = (ref >= tau).sum(axis=1)
    np.testing.assert_array_equal(res.counts, true_counts)
    np.testing.assert_array_equal(over, true_counts > max_per_query)
    assert over.dtype == bool and over.shape == (nq,)
    for r in range(nq):
        sel = qi == r
        expect = np.argsort(-ref[r], kind="stable")[: min(true_counts[r], max_per_query)]
        np.testing.assert_array_equal(np.sort(di[sel]), np.sort(expect))
        np.testing.assert_allclose(sc[sel], ref[r, di[sel]], rtol=0, atol=1e-4)
        assert (np.diff(sc[sel]) <= 0).all()
    assert (sc >= np.float32(tau)).all()
    if max_per_query < ndb:
        assert over.any() or true_counts.max() <= max_per_query


def test_overflow_counts_exact_beyond_bound(rng):
    q = rng.standard_normal((6, 8)).astype(np.float32)
    db = rng.standard_normal((1000, 8)).astype(np.float32)
    res = range_search(q, db, -100.0, 3, db_block=64)  # every pair matches
    np.testing.assert_array_equal(res.counts, np.full(6, 1000))
    assert res.overflow.all()
    assert len(res.query_idx) == 18


def test_no_match(rng):
    q = rng.standard_normal((4, 8)).astype(np.float32)
    db = rng.standard_normal((50, 8)).astype(np.float32)
    res = range_search(q, db, 1e6, 10)
    assert len(res.query_idx) == 0 and not res.overflow.any() and (res.counts == 0).all()


def test_errors(rng):
    q = rng.standard_normal((4, 8)).astype(np.float32)
    db = rng.standard_normal((50, 8)).astype(np.float32)
    with pytest.raises(ValueError, match="tau must be a finite number"):
        range_search(q, db, np.nan, 5)
    with pytest.raises(ValueError, match="max_per_query must be a positive integer"):
        range_search(q, db, 0.5, 0)
    with pytest.raises(ValueError, match="dimension mismatch"):
        range_search(q, db[:, :4], 0.5, 3)


def test_streamed_chunks_and_jax_input_identical(rng):
    import jax.numpy as jnp

    q = rng.standard_normal((21, 16)).astype(np.float32)
    db = rng.standard_normal((900, 16)).astype(np.float32)
    tau = _tau_in_gap(brute_scores(q, db), 0.9, 0.99)
    ref = range_search(q, db, tau, 7, query_block=8, db_block=64)
    for qq, dd in ((q, db), (jnp.asarray(q), jnp.asarray(db))):
        res = range_search(qq, dd, tau, 7, query_block=8, db_block=64, db_chunk_rows=128, query_chunk_rows=8)
        for a, b in zip(res, ref):
            np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(res.counts, ref.counts)
    np.testing.assert_array_equal(ref.counts, (brute_scores(q, db) >= tau).sum(1))
