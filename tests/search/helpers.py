"""Float64 brute-force reference and a tie-aware comparison for top-k results."""

import numpy as np


def brute_scores(q, db):
    """float64 scores of the float32 inputs: [nq, ndb]."""
    return np.asarray(q, np.float32).astype(np.float64) @ np.asarray(db, np.float32).astype(np.float64).T


def score_tol(q, db):
    """Per-row tolerance covering float32 matmul rounding: 4 D u32 ||q|| max||d|| (+1e-7 absolute)."""
    q = np.asarray(q, np.float64)
    db = np.asarray(db, np.float64)
    d = q.shape[1]
    return 4 * d * 2.0**-24 * np.linalg.norm(q, axis=1) * np.linalg.norm(db, axis=1).max() + 1e-7


def assert_topk_matches(scores, idx, q, db, k, tie_tol=1e-6):
    """Assert (scores, idx) is the exact top-k of q against db.

    Indices must equal the float64 stable-argsort answer wherever the float64 scores are separated from their
    neighbours (and from the (k+1)-th) by more than tie_tol (scaled by the float32 rounding tolerance);
    inside tie groups the returned scores must match the reference score multiset.
    """
    ref = brute_scores(q, db)
    nq, ndb = ref.shape
    assert scores.shape == (nq, k) and idx.shape == (nq, k)
    assert scores.dtype == np.float32 and idx.dtype == np.int32
    assert idx.min() >= 0 and idx.max() < ndb
    tol = np.maximum(score_tol(q, db), tie_tol)[:, None]
    order = np.argsort(-ref, axis=1, kind="stable")
    ref_sorted = np.take_along_axis(ref, order, axis=1)
    got_true = np.take_along_axis(ref, idx.astype(np.int64), axis=1)
    # distinct indices per row
    srt = np.sort(idx, axis=1)
    assert (np.diff(srt, axis=1) > 0).all(), "duplicate indices in a row"
    # returned scores are the float32 scores of the returned indices
    assert (np.abs(scores - got_true) < tol + 1e-12).all(), "returned scores differ from float64 scores"
    # descending
    assert (np.diff(scores, axis=1) <= 0).all(), "scores not descending"
    # the true scores of the returned entries equal the true top-k, position by position
    assert (np.abs(got_true - ref_sorted[:, :k]) < 2 * tol + 1e-12).all(), "not the true top-k"
    # separated entries: exact index equality
    ext = np.concatenate([np.full((nq, 1), np.inf), ref_sorted[:, : k + 1],
                          np.full((nq, 1), -np.inf)], axis=1)
    if ext.shape[1] < k + 3:
        ext = np.concatenate([ext, np.full((nq, k + 3 - ext.shape[1]), -np.inf)], axis=1)
    gap_prev = ext[:, 0:k] - ext[:, 1 : k + 1]
    gap_next = ext[:, 1 : k + 1] - ext[:, 2 : k + 2]
    sep = (gap_prev > 2 * tol) & (gap_next > 2 * tol)
    assert (idx[sep] == order[:, :k][sep]).all(), "index mismatch at a separated score"
    # exact float32 ties must be ordered by lower index
    eq = scores[:, 1:] == scores[:, :-1]
    assert (idx[:, 1:][eq] > idx[:, :-1][eq]).all(), "equal scores not ordered by lower index"
    return sep.mean()
