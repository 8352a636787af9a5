"""Baselines: numpy/faiss exact baselines agree with the float64 brute force; approximate ones return true scores."""

import numpy as np
import pytest

from synleak_jax.search import approx, exact_topk
from tests.search.helpers import assert_topk_matches, brute_scores


@pytest.fixture
def data(rng):
    q = rng.standard_normal((40, 16)).astype(np.float32)
    db = rng.standard_normal((3000, 16)).astype(np.float32)
    return q, db


def test_numpy_and_faiss_flat_exact(data):
    q, db = data
    for fn in (lambda: approx.numpy_topk(q, db, 7, query_block=16, db_block=500),
               lambda: approx.faiss_flat_ip(q, db, 7)):
        s, i = fn()
        assert_topk_matches(np.asarray(s, np.float32), np.asarray(i, np.int32), q, db, 7)


def test_full_row_top_k_exact_and_approx_scores_true(data):
    q, db = data
    s, i = approx.full_row_topk(q, db, 5, method="top_k", query_block=16)
    assert_topk_matches(s, np.asarray(i, np.int32), q, db, 5)
    ref = brute_scores(q, db)
    for s, i in (approx.full_row_topk(q, db, 5, method="approx", query_block=16),
                 approx.approx_max_k_blockwise(q, db, 5, query_block=16, db_block=512)):
        i = np.asarray(i)
        assert i.min() >= 0 and i.max() < db.shape[0]
        np.testing.assert_allclose(s, np.take_along_axis(ref, i.astype(np.int64), 1), atol=1e-4)
        _, ti = exact_topk(q, db, 5)
        recall = np.mean([len(set(a) & set(b)) / 5 for a, b in zip(i, ti)])
        assert recall >= 0.9  # on CPU approx_max_k sorts the row, so it is in fact (near) exact


def test_faiss_ivf_hnsw_recall(data):
    q, db = data
    _, ti = exact_topk(q, db, 10)
    for s, i in (approx.faiss_ivf_flat(q, db, 10, nlist=16, nprobe=16, train_size=3000),  # nprobe=nlist: exact
                 approx.faiss_hnsw(q, db, 10, ef_search=200)):
        recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(i, ti)])
        assert recall > 0.95


def test_scann_if_installed(data):
    pytest.importorskip("scann")
    q, db = data
    _, ti = exact_topk(q, db, 10)
    s, i = approx.scann_search(q, db, 10, num_leaves=16, num_leaves_to_search=16, reorder=200)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(i, ti)])
    assert recall > 0.9  # all leaves searched + large reorder: near exact
    np.testing.assert_allclose(s, np.take_along_axis(brute_scores(q, db), i, 1), atol=1e-4)


def test_one_ivf_build_swept_over_nprobe(data):
    q, db = data
    _, ti = exact_topk(q, db, 10)
    index = approx.faiss_ivf_index(db, nlist=32)
    recalls = []
    for nprobe in (1, 4, 32):
        index.nprobe = nprobe
        s, i = index.search(q, 10)
        recalls.append(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(i, ti)]))
    assert recalls[0] < 1.0 and recalls[-1] == 1.0 and recalls == sorted(recalls)  # all lists visited: exact
    assert approx.ivf_train_size(200_000, 4096) == 200_000 and approx.ivf_train_size(10**6, 256) == 65536
    with pytest.raises(ValueError, match="nlist"):
        approx.faiss_ivf_index(db, nlist=5000)


def test_one_hnsw_build_swept_over_ef_search(data):
    q, db = data
    _, ti = exact_topk(q, db, 10)
    index = approx.faiss_hnsw_index(db, m=8)
    recalls = []
    for ef in (10, 400):
        index.hnsw.efSearch = ef
        _, i = index.search(q, 10)
        recalls.append(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(i, ti)]))
    assert recalls[0] < recalls[1] and recalls[1] > 0.97


def test_scann_search_time_parameters(data):
    pytest.importorskip("scann")
    q, db = data
    _, ti = exact_topk(q, db, 10)
    searcher = approx.scann_index(db, 10, num_leaves=30, num_leaves_to_search=1, reorder=10)
    recalls = []
    for leaves, reorder in ((1, 10), (30, 300)):
        i, s = searcher.search_batched(q, leaves_to_search=leaves, pre_reorder_num_neighbors=reorder)
        recalls.append(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(np.asarray(i), ti)]))
    assert recalls[0] < 0.9 and recalls[1] > 0.95
