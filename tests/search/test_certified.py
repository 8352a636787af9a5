"""bf16-certified search equals the float32 result, including on adversarial near-tie data."""

import jax.numpy as jnp
import numpy as np
from jax import lax

from synleak_jax.search import exact_topk
from synleak_jax.search.certified import relative_bound
from tests.search.helpers import assert_topk_matches, brute_scores


def test_bound_holds_and_is_tight(rng):
    d = 256
    u = 2.0**-8
    # components just below a bf16 rounding midpoint: every product loses ~2u, all with the same sign
    mant = 1 + rng.integers(0, 128, size=(2, d)) / 128.0
    q = (mant[0] + 0.49 * 2 * u).astype(np.float32)[None, :]
    db = np.concatenate([(mant[1] + 0.49 * 2 * u).astype(np.float32)[None, :],
                         rng.standard_normal((50, d)).astype(np.float32)])
    s_b = np.asarray(lax.dot_general(jnp.asarray(q, jnp.bfloat16), jnp.asarray(db, jnp.bfloat16),
                                     (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32))
    err = np.abs(s_b.astype(np.float64) - brute_scores(q, db))
    bound = relative_bound(d) * np.linalg.norm(q, axis=1)[:, None] * np.linalg.norm(db, axis=1)[None, :]
    assert (err <= bound).all()
    assert err[0, 0] > 0.3 * bound[0, 0]  # the adversarial pair uses a good part of the bound


def _near_tie(rng, nq, ndb, d, cluster):
    """Database with a cluster of `cluster` vectors whose scores against every query differ by steps of 2e-5 (far
    below bf16 resolution, far above float32 rounding), scattered among random vectors that score lower."""
    qhat = rng.standard_normal(d)
    qhat /= np.linalg.norm(qhat)
    q = rng.uniform(0.5, 2.0, size=(nq, 1)) * qhat[None, :]
    db = rng.standard_normal((ndb, d))
    db -= np.outer(db @ qhat, qhat)  # orthogonal to qhat
    db /= np.linalg.norm(db, axis=1, keepdims=True)
    a = rng.uniform(-0.3, 0.3, ndb)
    pos = rng.choice(ndb, cluster, replace=False)
    a[pos] = 0.8 + 2e-5 * rng.permutation(cluster)
    db = a[:, None] * qhat[None, :] + np.sqrt(1 - a**2)[:, None] * db
    return q.astype(np.float32), db.astype(np.float32)


def test_near_ties_equal_float32_with_fallback(rng):
    q, db = _near_tie(rng, 24, 3000, 64, cluster=400)  # ~34 per block > k + margin
    s32, i32 = exact_topk(q, db, 10, query_block=8, db_block=256)
    s, i, stats = exact_topk(q, db, 10, query_block=8, db_block=256, precision="bf16_certified", margin=20,
                             return_stats=True)
    assert_topk_matches(s, i, q, db, 10)
    np.testing.assert_array_equal(i, i32)
    assert stats.fallback_queries == 24  # bf16 cannot order the cluster: every query must be refused
    assert stats.queries == 24


def test_random_equal_float32_and_mostly_certified(rng):
    q = rng.standard_normal((64, 32)).astype(np.float32)
    db = rng.standard_normal((4000, 32)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    db /= np.linalg.norm(db, axis=1, keepdims=True)
    s32, i32 = exact_topk(q, db, 5, query_block=16, db_block=512)
    s, i, stats = exact_topk(q, db, 5, query_block=16, db_block=512, precision="bf16_certified", margin=16,
                             return_stats=True)
    assert_topk_matches(s, i, q, db, 5)
    sep = np.abs(s32 - s) < 1e-6
    assert (i[sep] == i32[sep]).all()
    assert stats.fallback_queries < stats.queries  # the bf16 screening path is actually used


def test_mixed_queries_sliceable_inputs_and_errors(rng):
    """Half the queries see a near-tie cluster (refused, recomputed), half are random (certified); inputs that
    only support [a:b] slicing go through the row-by-row candidate reads."""
    q_tie, db = _near_tie(rng, 6, 2000, 32, cluster=300)
    q_rand = rng.standard_normal((6, 32)).astype(np.float32)
    q = np.concatenate([q_tie, q_rand])

    class Sliceable:
        def __init__(self, a):
            self.a, self.shape, self.dtype = a, a.shape, a.dtype

        def __getitem__(self, sl):
            if not isinstance(sl, slice):
                raise TypeError("slices only")
            return self.a[sl]

    s32, i32 = exact_topk(q, db, 8, query_block=8, db_block=256)
    s, i, stats = exact_topk(Sliceable(q), Sliceable(db), 8, query_block=8, db_block=256,
                             precision="bf16_certified", margin=12, return_stats=True)
    assert_topk_matches(s, i, q, db, 8)
    np.testing.assert_array_equal(i[:6], i32[:6])
    assert 6 <= stats.fallback_queries < 12
    import pytest

    with pytest.raises(ValueError, match="margin must be a non-negative integer"):
        exact_topk(q, db, 3, precision="bf16_certified", margin=-1)
