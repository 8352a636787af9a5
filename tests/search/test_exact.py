"""exact_topk against a numpy float64 brute force on fresh random data."""

import jax.numpy as jnp
import numpy as np
import pytest

from synleak_jax.search import exact_topk
from tests.search.helpers import assert_topk_matches


def _data(rng, nq, ndb, d, normalise=False):
    q = rng.standard_normal((nq, d)).astype(np.float32) * rng.uniform(0.1, 3.0)
    db = rng.standard_normal((ndb, d)).astype(np.float32) * rng.uniform(0.1, 3.0, size=(ndb, 1)).astype(np.float32)
    if normalise:
        q /= np.linalg.norm(q, axis=1, keepdims=True)
        db /= np.linalg.norm(db, axis=1, keepdims=True)
    return q, db


@pytest.mark.parametrize(
    "nq,ndb,d,k,bq,bdb,selection",
    [
        (1, 1, 3, 1, 1024, 2048, "tiled"),
        (37, 1000, 20, 7, 16, 256, "tiled"),
        (37, 1000, 20, 7, 16, 256, "top_k"),
        (19, 77, 16, 77, 8, 32, "tiled"),  # k == ndb, ndb not a block multiple
        (50, 100, 8, 5, 1024, 2048, "tiled"),  # ndb < db_block, nq < query_block
        (65, 3000, 32, 128, 32, 512, "tiled"),  # large k, several blocks
        (40, 2500, 24, 1, 24, 640, "tiled"),
    ],
)
def test_matches_float64(rng, nq, ndb, d, k, bq, bdb, selection):
    q, db = _data(rng, nq, ndb, d)
    s, i = exact_topk(q, db, k, query_block=bq, db_block=bdb, selection=selection, tile=16)
    assert_topk_matches(s, i, q, db, k)


def test_cosine_normalised(rng):
    q, db = _data(rng, 70, 1500, 64, normalise=True)
    s, i = exact_topk(q, db, 10, query_block=32, db_block=256)
    assert_topk_matches(s, i, q, db, 10)
    assert np.abs(s).max() <= 1.0 + 1e-5


def test_duplicates_lower_index_first(rng):
    # 30 copies of the same vector scattered over several blocks: every query ties them exactly.
    d = 16
    db = rng.standard_normal((600, d)).astype(np.float32)
    pos = np.sort(rng.choice(600, size=30, replace=False))
    v = rng.standard_normal(d).astype(np.float32) * 10
    db[pos] = v
    q = v[None, :] + 0.01 * rng.standard_normal((9, d)).astype(np.float32)
    for bdb, sel in [(64, "tiled"), (600, "top_k"), (128, "tiled")]:
        s, i = exact_topk(q, db, 12, query_block=4, db_block=bdb, selection=sel, tile=16)
        np.testing.assert_array_equal(i, np.broadcast_to(pos[:12], (9, 12)))
        assert (s == s[:, :1]).all()


def test_block_size_invariance(rng):
    q, db = _data(rng, 45, 2100, 32)
    results = []
    for bq, bdb, sel, tile in [(8, 64, "tiled", 16), (45, 2100, "top_k", 64), (16, 700, "tiled", 28),
                                (1024, 2048, "tiled", 64), (32, 128, "tiled", 8)]:
        s, i = exact_topk(q, db, 9, query_block=bq, db_block=bdb, selection=sel, tile=tile)
        assert_topk_matches(s, i, q, db, 9)
        results.append((s, i))
    sep_equal = [np.mean(r[1] == results[0][1]) for r in results]
    assert min(sep_equal) > 0.99


def test_input_kinds_and_streaming(rng, tmp_path):
    q, db = _data(rng, 33, 1234, 12)
    path = tmp_path / "db.npy"
    np.save(path, db)
    mm = np.load(path, mmap_mode="r")

    class Sliceable:  # minimal store-like array: .shape and [a:b] slicing only
        def __init__(self, a):
            self.a, self.shape, self.dtype = a, a.shape, a.dtype

        def __getitem__(self, sl):
            assert isinstance(sl, slice)
            return self.a[sl]

    ref_s, ref_i = exact_topk(q, db, 6, query_block=8, db_block=128)
    assert_topk_matches(ref_s, ref_i, q, db, 6)
    for qq, dd in [(jnp.asarray(q), jnp.asarray(db)), (q, mm), (Sliceable(q), Sliceable(db)),
                   (q.astype(np.float64), db)]:
        # small chunks: several host->device transfers of the database and of the queries
        s, i = exact_topk(qq, dd, 6, query_block=8, db_block=128, db_chunk_rows=256, query_chunk_rows=16)
        np.testing.assert_array_equal(i, ref_i)
        np.testing.assert_array_equal(s, ref_s)


def test_errors(rng):
    q, db = _data(rng, 5, 20, 4)
    with pytest.raises(ValueError, match="k must be >= 1"):
        exact_topk(q, db, 0)
    with pytest.raises(ValueError, match="k=21 exceeds"):
        exact_topk(q, db, 21)
    with pytest.raises(ValueError, match="dimension mismatch"):
        exact_topk(q[:, :3], db, 2)
    bad = q.copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match="queries row 3 contains NaN or inf"):
        exact_topk(bad, db, 2)
    bad = db.copy()
    bad[17, 0] = np.inf
    with pytest.raises(ValueError, match="database row 17 contains NaN or inf"):
        exact_topk(q, bad, 2, db_block=8)
    with pytest.raises(ValueError, match="database is empty"):
        exact_topk(q, np.zeros((0, 4), np.float32), 1)
    with pytest.raises(ValueError, match="queries must be 2-D"):
        exact_topk(q[0], db, 1)
    with pytest.raises(ValueError, match="precision must be one of"):
        exact_topk(q, db, 1, precision="fp8")
    with pytest.raises(ValueError, match="query_block must be a positive integer"):
        exact_topk(q, db, 1, query_block=0)
    with pytest.raises(ValueError, match="k must be an integer"):
        exact_topk(q, db, 2.5)


def test_signed_zero_scores_tie_by_index(rng):
    # q < 0 everywhere: row 0 (+0 entries) scores -0.0, row 1 (-0 entries) scores +0.0; they tie -> index 0 first
    q = -np.abs(rng.standard_normal((3, 4))).astype(np.float32) - 0.1
    db = np.abs(rng.standard_normal((20, 4))).astype(np.float32) + 0.1  # negative scores
    db[0] = 0.0
    db[1] = -0.0
    s, i = exact_topk(q, db, 2, db_block=8)
    np.testing.assert_array_equal(i, [[0, 1]] * 3)
    assert (s == 0).all()
