"""Exact range search: every (query, database) pair with score >= tau, bounded per query, never truncated silently.

One tile-engine pass (``engine.py``) keeps the top k = max_per_query pairs of every query and counts, per
query, the scores >= tau (as scores > the next float32 below tau), so the true number of matches per query is
exact even when it exceeds the output bound; `overflow[q]` is True exactly when `counts[q] > max_per_query`.
"""

from __future__ import annotations

import numpy as np

from synleak_jax.search.engine import PassParams, PassSpec, as_source, check_positive_int, tile_pass
from synleak_jax.search.exact import _blocks


class RangeResult(tuple):
    """(query_idx, db_idx, scores, overflow) — a 4-tuple, with `.counts` and named attributes.

    query_idx: int64 [m] query row of each kept pair, ascending;
    db_idx: int64 [m] database row; scores: float32 [m], per query descending (ties: lower db_idx first);
    overflow: bool [nq], True where the query had more than max_per_query pairs >= tau (only the best
      max_per_query are listed);
    counts: int64 [nq], the exact number of pairs >= tau per query (also when overflowing).
    """

    def __new__(cls, query_idx, db_idx, scores, overflow, counts):
        obj = super().__new__(cls, (query_idx, db_idx, scores, overflow))
        obj.counts = counts
        return obj

    query_idx = property(lambda self: self[0])
    db_idx = property(lambda self: self[1])
    scores = property(lambda self: self[2])
    overflow = property(lambda self: self[3])


def range_search(queries, database, tau: float, max_per_query: int, *, query_block: int | None = None,
                 db_block: int | None = None, selection: str = "tiled", tile: int = 32,
                 db_chunk_rows: int | None = None, query_chunk_rows: int | None = None, mesh=None) -> RangeResult:
    """All pairs with inner-product score >= tau (float32 scores), at most max_per_query per query.

    Args:
      queries [nq, D], database [ndb, D]: arrays or array-likes (see exact_topk).
      tau: score threshold (finite float).
      max_per_query: output bound per query (>= 1); queries with more matches keep their best ones and are
        flagged in `overflow`, with the true count in `counts`.
    Returns: RangeResult (query_idx, db_idx, scores, overflow) with `.counts`.
    """
    try:
        tau_f = float(tau)
    except (TypeError, ValueError):
        raise ValueError(f"tau must be a finite number, got {tau!r}") from None
    if not np.isfinite(tau_f):
        raise ValueError(f"tau must be a finite number, got {tau!r}")
    m = check_positive_int(max_per_query, "max_per_query")
    q, db = as_source(queries, "queries"), as_source(database, "database")
    if q.d != db.d:
        raise ValueError(f"dimension mismatch: queries have dim {q.d}, database has dim {db.d}")
    k = min(m, db.n)
    spec = PassSpec(row_k=k, n_taus=1, selection=selection, tile=check_positive_int(tile, "tile"))
    # score >= tau  <=>  score > the largest float32 below tau (scores are float32)
    below = np.nextafter(np.float32(tau_f), np.float32(-np.inf), dtype=np.float32)
    res = tile_pass(q, db, spec, PassParams(taus=np.asarray([below], np.float32)), mesh=mesh,
                    blocks=_blocks(q.n, db.n, q.d, spec, query_block, db_block, db_chunk_rows, query_chunk_rows))
    s, i = res.row_scores, res.row_index
    c = res.counts[:, 0, 0]
    keep = s >= np.float32(tau_f)  # rows are sorted descending, so kept entries form a prefix
    qi, col = np.nonzero(keep)
    counts = c.astype(np.int64)
    # Kept per query = min(count, k): the engine's count and the top-k agree on the same float32 scores.
    if not np.array_equal(keep.sum(axis=1), np.minimum(counts, k)):
        raise AssertionError("internal error: range-search counts disagree with the kept pairs")
    return RangeResult(qi.astype(np.int64), i[qi, col].astype(np.int64), s[qi, col], counts > m, counts)
