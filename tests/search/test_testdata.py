"""The face-structured generator: stated cosine statistics, planted near-copies, labels, determinism, chunking."""

import math

import numpy as np
import pytest
from scipy import integrate, stats

from synleak_jax.search import testdata


def _genuine_and_impostor(db: np.ndarray, labels: np.ndarray, rng, n_impostor: int = 200_000):
    """All genuine scores (identity rows are contiguous: one Gram matrix per identity) and a uniform sample of
    impostor pairs, in float64."""
    x = db.astype(np.float64)
    genuine = []
    starts = np.flatnonzero(np.r_[True, labels[1:] != labels[:-1]])
    ends = np.r_[starts[1:], len(labels)]
    for a, b in zip(starts, ends):
        g = x[a:b] @ x[a:b].T
        genuine.append(g[np.triu_indices(b - a, 1)])
    i = rng.integers(0, len(x), n_impostor)
    j = rng.integers(0, len(x), n_impostor)
    keep = labels[i] != labels[j]
    impostor = np.einsum("nd,nd->n", x[i[keep]], x[j[keep]])
    return np.concatenate(genuine), impostor


@pytest.mark.parametrize("dim,genuine_cosine,genuine_std", [(512, 0.6, 0.1), (128, 0.5, 0.12)])
def test_stated_cosine_statistics(dim, genuine_cosine, genuine_std, rng):
    spec = testdata.IdentitySpec(database_rows=20_000, query_rows=0, dim=dim, genuine_cosine=genuine_cosine,
                          genuine_std=genuine_std, seed=int(rng.integers(1 << 30)))
    gen = testdata.IdentityEmbeddings(spec)
    db = gen.database()
    assert db.dtype == np.float32 and db.shape == (20_000, dim)
    np.testing.assert_allclose(np.linalg.norm(db.astype(np.float64), axis=1), 1.0, atol=1e-6)
    genuine, impostor = _genuine_and_impostor(db, gen.database_labels, rng)
    assert len(genuine) > 100_000
    assert abs(genuine.mean() - genuine_cosine) < 0.01
    assert abs(genuine.std() - genuine_std) < 0.01
    assert abs(impostor.mean()) < 0.002  # sample error ~ 0.044 / sqrt(2e5) = 1e-4
    assert abs(impostor.std() * math.sqrt(dim) - 1.0) < 0.02  # impostor std = 1 / sqrt(D)
    # the largest genuine cosine stays under the documented bound
    assert genuine.max() < gen.genuine_cosine_bound()
    expected = gen.describe()
    assert expected["expected_genuine_mean_std"] == pytest.approx([genuine_cosine, genuine_std], abs=1e-6)
    assert expected["expected_impostor_mean_std"][1] == pytest.approx(1 / math.sqrt(dim))


def test_identity_counts_and_labels():
    gen = testdata.IdentityEmbeddings(testdata.IdentitySpec(database_rows=10_001, query_rows=3_000, images_per_identity=(5, 50)))
    counts = np.bincount(gen.database_labels)
    assert counts.sum() == 10_001 and gen.n_database_identities == len(counts)
    assert counts[:-1].min() >= 5 and counts.max() <= 50  # only the last identity may be cut
    assert (np.diff(gen.database_labels) >= 0).all()  # identity-contiguous
    assert counts[:-1].mean() == pytest.approx(27.5, abs=3)
    fixed = testdata.IdentityEmbeddings(testdata.IdentitySpec(database_rows=1_000, query_rows=0, images_per_identity=(8, 8)))
    assert (np.bincount(fixed.database_labels) == 8).all()
    # queries: new identities are numbered after the database's, leaked ones carry a database label
    kind, lab = gen.query_kind, gen.query_labels
    assert (lab[kind == testdata.KIND_NEW] >= gen.n_database_identities).all()
    assert (lab[kind == testdata.KIND_LEAKED_IDENTITY] < gen.n_database_identities).all()
    assert gen.n_leaked_query_identities == round(0.1 * gen.n_query_identities)
    assert len(np.unique(lab[kind == testdata.KIND_LEAKED_IDENTITY])) == gen.n_leaked_query_identities
    assert (kind == testdata.KIND_COPY).sum() == len(gen.planted) == 30


def test_planted_copies_are_mutual_nearest_neighbours(rng):
    spec = testdata.IdentitySpec(database_rows=20_000, query_rows=2_000, copy_share=0.05, leaked_identity_share=0.3,
                          seed=int(rng.integers(1 << 30)))
    q, db, gen = testdata.make_identity_embeddings(spec)
    planted = gen.planted
    assert planted.shape == (100, 2)
    assert len(np.unique(planted[:, 1])) == 100  # distinct database rows
    qp, dp = planted[:, 0], planted[:, 1]
    assert (gen.query_kind[qp] == testdata.KIND_COPY).all()
    assert (gen.query_labels[qp] == gen.database_labels[dp]).all()
    q64, db64 = q.astype(np.float64), db.astype(np.float64)
    cos = np.einsum("nd,nd->n", q64[qp], db64[dp])
    np.testing.assert_allclose(cos, spec.copy_cosine, atol=1e-6)  # the stated cosine, to float32 rounding
    from_query = q64[qp] @ db64.T  # [100, ndb]: q's best database row is d
    assert (from_query.argmax(axis=1) == dp).all()
    from_row = db64[dp] @ q64.T  # [100, nq]: d's best query is q
    assert (from_row.argmax(axis=1) == qp).all()
    # with margin: the runner-up is clearly below the stated cosine
    second = np.sort(from_query, axis=1)[:, -2]
    assert second.max() < spec.copy_cosine - 0.02
    # leaked-identity queries score at genuine level against their identity's database rows
    leaked = np.flatnonzero(gen.query_kind == testdata.KIND_LEAKED_IDENTITY)
    same = gen.query_labels[leaked][:, None] == gen.database_labels[None, :]
    s = q64[leaked] @ db64.T
    assert abs(s[same].mean() - spec.genuine_cosine) < 0.03
    assert abs(s[~same].std() * math.sqrt(spec.dim) - 1.0) < 0.02


def test_deterministic_and_chunking_invariant():
    spec = testdata.IdentitySpec(database_rows=9_000, query_rows=5_000, dim=64, copy_share=0.02, seed=7)
    a = testdata.IdentityEmbeddings(spec)
    db_whole, q_whole = a.database(), a.queries()
    # a fresh generator, queries first (copy sources generated on demand), odd chunk sizes across block edges
    b = testdata.IdentityEmbeddings(spec)
    q_chunks = np.concatenate([c for _, c in b.iter_chunks("queries", chunk_rows=1_234)])
    db_chunks = np.concatenate([c for _, c in b.iter_chunks("database", chunk_rows=777)])
    np.testing.assert_array_equal(q_whole, q_chunks)
    np.testing.assert_array_equal(db_whole, db_chunks)
    np.testing.assert_array_equal(a.database(4_000, 4_200), db_whole[4_000:4_200])
    np.testing.assert_array_equal(a.queries(4_095, 4_097), q_whole[4_095:4_097])
    assert a.database(5, 5).shape == (0, 64)
    np.testing.assert_array_equal(a.planted, b.planted)
    np.testing.assert_array_equal(a.query_labels, b.query_labels)
    other = testdata.IdentityEmbeddings(testdata.IdentitySpec(database_rows=9_000, query_rows=5_000, dim=64, copy_share=0.02,
                                                seed=8))
    assert not np.array_equal(other.database(0, 100), db_whole[:100])
    # the database does not depend on the query settings
    c = testdata.IdentityEmbeddings(testdata.IdentitySpec(database_rows=9_000, query_rows=10, dim=64, seed=7))
    np.testing.assert_array_equal(c.database(), db_whole)


def test_save_npy_streams_the_same_values(tmp_path):
    gen = testdata.IdentityEmbeddings(testdata.IdentitySpec(database_rows=5_000, query_rows=300, dim=32, seed=3))
    path = tmp_path / "db.npy"
    gen.save_npy(str(path), "database", chunk_rows=1_000)
    loaded = np.load(path, mmap_mode="r")
    assert loaded.offset % 64 == 0  # aligned data: usable in place by XLA (search.hostmem)
    np.testing.assert_array_equal(np.asarray(loaded), gen.database())
    gen.save_npy(str(tmp_path / "q.npy"), "queries")
    np.testing.assert_array_equal(np.load(tmp_path / "q.npy"), gen.queries())
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp")] == []


def test_clipped_normal_moments_against_quadrature():
    for mean, std, lo, hi in [(0.78, 0.1, 0.0, 0.9), (0.5, 0.4, 0.0, 0.95), (0.2, 0.05, 0.0, 0.9)]:
        ea, ea2 = testdata.clipped_normal_moments(mean, std, lo, hi)
        dist = stats.norm(mean, std)
        ref1 = lo * dist.cdf(lo) + hi * dist.sf(hi) + integrate.quad(lambda x: x * dist.pdf(x), lo, hi)[0]
        ref2 = lo ** 2 * dist.cdf(lo) + hi ** 2 * dist.sf(hi) + integrate.quad(lambda x: x * x * dist.pdf(x), lo,
                                                                                   hi)[0]
        assert ea == pytest.approx(ref1, abs=1e-9) and ea2 == pytest.approx(ref2, abs=1e-9)
    m, s = testdata.solve_quality(0.6, 0.1, 0.9, 512)
    assert testdata.genuine_moments(m, s, 0.9, 512) == pytest.approx((0.6, 0.1), abs=1e-9)


@pytest.mark.parametrize("field,value,match", [
    ("database_rows", 0, "database_rows"), ("dim", 2, "dim"), ("images_per_identity", (6, 5), "images_per_identity"),
    ("genuine_cosine", 0.85, "genuine_cosine"), ("genuine_std", 0.001, "genuine_std"),
    ("max_quality", 1.0, "max_quality"), ("copy_share", 1.5, "copy_share"), ("copy_cosine", 1.0, "copy_cosine"),
    ("leaked_identity_share", -0.1, "leaked_identity_share")])
def test_bad_parameters_name_the_field(field, value, match):
    kwargs = {"database_rows": 1_000, "query_rows": 100, field: value}
    with pytest.raises(ValueError, match=match):
        testdata.IdentityEmbeddings(testdata.IdentitySpec(**kwargs))


def test_too_many_copies_or_leaked_identities():
    with pytest.raises(ValueError, match="copy_share"):
        testdata.IdentityEmbeddings(testdata.IdentitySpec(database_rows=10, query_rows=100, copy_share=0.5))
    with pytest.raises(ValueError, match="leaked_identity_share"):
        testdata.IdentityEmbeddings(testdata.IdentitySpec(database_rows=10, query_rows=1_000, leaked_identity_share=1.0,
                                            images_per_identity=(5, 5)))
