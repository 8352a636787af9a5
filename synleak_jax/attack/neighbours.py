"""Exact top-k neighbours in score units for both metrics, on top of ``synleak_jax.search.exact_topk``.

``search.exact_topk`` ranks by inner product. Euclidean matchers are mapped onto it exactly: with
``q' = [2q, -1]`` and ``d' = [d, |d|^2]``, ``q'.d' = |q|^2 - |q - d|^2``, a per-query constant minus the squared
distance, so the inner-product order is the distance order. The returned pairs are then rescored in float64
from the original embeddings (score = cosine, or -distance), so reports carry exact values.
"""

from __future__ import annotations

import numpy as np

from synleak_jax.attack import scores as S
from synleak_jax.search import exact_topk


class _Augmented:
    """Array-like view ``[N, D+1]`` of a database for the Euclidean trick (``d' = [d, |d|^2]``)."""

    def __init__(self, x, query: bool):
        self._x = x
        self._query = query
        self.shape = (x.shape[0], x.shape[1] + 1)
        self.dtype = np.float32

    def __len__(self):
        return self.shape[0]

    def __getitem__(self, sl):
        blk = np.asarray(self._x[sl], np.float32)
        if self._query:
            return np.concatenate([2.0 * blk, -np.ones((blk.shape[0], 1), np.float32)], axis=1)
        sq = (blk.astype(np.float64) ** 2).sum(1, keepdims=True).astype(np.float32)
        return np.concatenate([blk, sq], axis=1)

    def __array__(self, dtype=None, copy=None):
        return self[:]


def gather_rows(x, idx: np.ndarray) -> np.ndarray:
    """Rows ``x[idx]`` for an array or a sliceable array-like (reads sorted unique rows one by one in runs)."""
    idx = np.asarray(idx, np.int64)
    if isinstance(x, np.ndarray):
        return x[idx]
    uniq, inv = np.unique(idx, return_inverse=True)
    rows = np.empty((uniq.size, x.shape[1]), np.float32)
    # Read contiguous runs with slices (array-likes may only support slicing).
    start = 0
    while start < uniq.size:
        end = start
        while end + 1 < uniq.size and uniq[end + 1] == uniq[end] + 1:
            end += 1
        rows[start : end + 1] = np.asarray(x[int(uniq[start]) : int(uniq[end]) + 1], np.float32)
        start = end + 1
    return rows[inv.reshape(idx.shape)]


def topk_scores(queries, database, k: int, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k by score for every query.

    Args:
      queries: ``[Nq, D]`` array or array-like; database: ``[Nd, D]``.
      k: neighbours per query (clipped to ``Nd``).
    Returns:
      scores float64 ``[Nq, k]`` (descending; cosine similarity or -distance, rescored in float64) and
      indices int64 ``[Nq, k]``.
    """
    S.check_metric(metric)
    k = int(min(k, database.shape[0]))
    if k < 1 or queries.shape[0] == 0:
        return np.zeros((queries.shape[0], 0)), np.zeros((queries.shape[0], 0), np.int64)
    if metric == "euclidean":
        q, d = _Augmented(queries, True), _Augmented(database, False)
    else:
        q, d = queries, database
    _, idx = exact_topk(q, d, k)
    idx = np.asarray(idx, np.int64)
    # Rescore exactly in float64 and re-sort (float32 near-ties may have swapped neighbours).
    qf = np.asarray(queries[:], np.float64)
    db_rows = gather_rows(database, idx.reshape(-1)).reshape(idx.shape + (-1,)).astype(np.float64)
    if metric == "cosine":
        sc = np.einsum("qd,qkd->qk", qf, db_rows)
    else:
        sc = -np.sqrt(np.maximum(((qf[:, None, :] - db_rows) ** 2).sum(-1), 0.0))
    order = np.lexsort((idx, -sc), axis=-1)
    return np.take_along_axis(sc, order, 1), np.take_along_axis(idx, order, 1)
