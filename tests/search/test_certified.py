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
    s32, i32 = exact_topk(q, db, 10, query_block=8, db_block=256, precision="float32")
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
    s32, i32 = exact_topk(q, db, 5, query_block=16, db_block=512, precision="float32")
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

    s32, i32 = exact_topk(q, db, 8, query_block=8, db_block=256, precision="float32")
    s, i, stats = exact_topk(Sliceable(q), Sliceable(db), 8, query_block=8, db_block=256,
                             precision="bf16_certified", margin=12, return_stats=True)
    assert_topk_matches(s, i, q, db, 8)
    np.testing.assert_array_equal(i[:6], i32[:6])
    assert 6 <= stats.fallback_queries < 12
    import pytest

    with pytest.raises(ValueError, match="margin must be a non-negative integer"):
        exact_topk(q, db, 3, precision="bf16_certified", margin=-1)


# ---------------------------------------------------------------------------------------- group-max screen


def test_grouped_screen_near_ties_partial_groups_equal_float32(rng):
    """ndb is neither a multiple of the group (16) nor of db_block: the padded tail group and the padded tile
    must never be returned; near-tie queries are refused and recomputed, random ones are certified."""
    q_tie, db = _near_tie(rng, 10, 3001, 48, cluster=500)
    q_rand = rng.standard_normal((13, 48)).astype(np.float32)
    q = np.concatenate([q_tie, q_rand])
    s32, i32 = exact_topk(q, db, 7, query_block=8, db_block=256, precision="float32")
    s, i, stats = exact_topk(q, db, 7, query_block=32, db_block=512, precision="bf16_certified",
                             screen="groups", group=16, margin=6, return_stats=True)
    assert_topk_matches(s, i, q, db, 7)
    np.testing.assert_array_equal(i[:10], i32[:10])  # tie queries: recomputed by the float32 kernel itself
    sep = np.abs(s32 - s) < 1e-6
    assert (i[sep] == i32[sep]).all()
    assert stats.queries == 23
    assert 10 <= stats.fallback_queries < 23  # all tie queries refused, the random ones mostly certified


def test_grouped_screen_matches_float64_without_fallback(rng):
    """Normalised random data with a generous margin: every query certified, result = float64 brute force."""
    q = rng.standard_normal((40, 64)).astype(np.float32)
    db = rng.standard_normal((5000, 64)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    db /= np.linalg.norm(db, axis=1, keepdims=True)
    s, i, stats = exact_topk(q, db, 5, precision="bf16_certified", group=8, margin=60, query_block=64,
                             db_block=1024, return_stats=True)
    assert_topk_matches(s, i, q, db, 5)
    assert stats.fallback_queries == 0


def test_grouped_screen_small_database_all_groups_and_exact_ties(rng):
    """More groups requested than exist (nothing discarded, m_b = -inf), duplicated rows (exact float32 ties ->
    lower index first) and k = ndb."""
    db = rng.standard_normal((37, 16)).astype(np.float32)
    # row 3 twice as long as any other: by Cauchy-Schwarz its copies are the query's top 3 (at random norms
    # another row outscored it in 1.6% of 100,000 seeds, e.g. seeds 13 and 50)
    db[3] *= 2 * np.linalg.norm(db, axis=1).max() / np.linalg.norm(db[3])
    db[20] = db[3]
    db[30] = db[3]
    q = np.concatenate([db[3:4], rng.standard_normal((4, 16)).astype(np.float32)])
    s, i, stats = exact_topk(q, db, 37, precision="bf16_certified", group=4, margin=5, return_stats=True)
    assert_topk_matches(s, i, q, db, 37)
    assert list(i[0, :3]) == [3, 20, 30]
    assert stats.fallback_queries == 0
    s32, i32 = exact_topk(q, db, 37, precision="float32")
    np.testing.assert_array_equal(np.sort(i, axis=1), np.sort(i32, axis=1))


def test_screens_agree_and_bad_arguments(rng):
    q = rng.standard_normal((9, 24)).astype(np.float32)
    db = rng.standard_normal((700, 24)).astype(np.float32)
    a = exact_topk(q, db, 4, precision="bf16_certified", screen="groups", margin=8)
    b = exact_topk(q, db, 4, precision="bf16_certified", screen="candidates", margin=8)
    assert_topk_matches(*a, q, db, 4)
    assert_topk_matches(*b, q, db, 4)
    import pytest

    with pytest.raises(ValueError, match="screen must be one of"):
        exact_topk(q, db, 3, precision="bf16_certified", screen="nope")
    with pytest.raises(ValueError, match="group must be a positive integer"):
        exact_topk(q, db, 3, precision="bf16_certified", group=0)
    with pytest.raises(ValueError, match="row 5 contains NaN"):
        bad = db.copy()
        bad[5, 2] = np.nan
        exact_topk(q, bad, 3, precision="bf16_certified")


def test_auto_precision_is_exact(rng, monkeypatch):
    from synleak_jax.search import exact as exact_mod
    from synleak_jax.search.exact import fastest_exact_precision

    q = rng.standard_normal((6, 32)).astype(np.float32)
    db = rng.standard_normal((900, 32)).astype(np.float32)
    s, i, stats = exact_topk(q, db, 5, precision="auto", return_stats=True)
    # CPU: bf16_certified only where bf16 runs in hardware (AMX-BF16 / AVX512-BF16), float32 elsewhere
    want = "bf16_certified" if exact_mod._cpu_has_fast_bf16() else "float32"
    assert fastest_exact_precision() == want == stats.precision
    assert fastest_exact_precision("gpu") == "bf16_certified"
    assert_topk_matches(s, i, q, db, 5)
    assert stats.queries == 6
    monkeypatch.setenv("SYNLEAK_EXACT_PRECISION", "bf16_certified")
    assert fastest_exact_precision() == "bf16_certified"


def test_grouped_screen_aligned_database_with_nan_names_the_row(rng):
    """An aligned database is used in place (not read on the host), so finiteness comes from the device pass."""
    import pytest

    from synleak_jax.search.hostmem import aligned_empty

    db = aligned_empty((500, 32))
    db[:] = rng.standard_normal(db.shape)
    q = rng.standard_normal((4, 32)).astype(np.float32)
    db[321, 7] = np.nan
    with pytest.raises(ValueError, match="database row 321 contains NaN or inf"):
        exact_topk(q, db, 3, precision="bf16_certified")


def test_grouped_screen_several_merges_repeated_tile_and_tiny_database(rng, monkeypatch):
    """4 tiles per super-tile force several running top-k merges whose last super-tile repeats a clamped tile
    (masked), plus a tail tile; a database smaller than one group is padded for the rescoring gather."""
    import dataclasses

    from synleak_jax.search import engine, exact as exact_mod

    monkeypatch.setattr(exact_mod, "default_blocks",
                        lambda *a, **kw: dataclasses.replace(engine.default_blocks(*a, **kw), ct=4))
    # 4 tiles of 256 rows per merge; 3001 rows = 11 full tiles (3 super-tiles, the last one clamped) + tail
    q, db = _near_tie(rng, 6, 3001, 24, cluster=200)
    q = np.concatenate([q, rng.standard_normal((10, 24)).astype(np.float32)])
    s32, i32 = exact_topk(q, db, 6, query_block=16, db_block=256, precision="float32")
    s, i, stats = exact_topk(q, db, 6, query_block=16, db_block=256, precision="bf16_certified", margin=10,
                             return_stats=True)
    assert_topk_matches(s, i, q, db, 6)
    np.testing.assert_array_equal(i[:6], i32[:6])
    assert 6 <= stats.fallback_queries < 16
    tiny = rng.standard_normal((5, 8)).astype(np.float32)
    qt = rng.standard_normal((3, 8)).astype(np.float32)
    s, i, stats = exact_topk(qt, tiny, 5, precision="bf16_certified", return_stats=True)
    assert_topk_matches(s, i, qt, tiny, 5)
    assert stats.fallback_queries == 0  # every group rescored: nothing discarded
