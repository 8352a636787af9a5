"""Exact range search: every (query, database) pair with score >= tau, bounded per query, never truncated silently.

Runs the blockwise engine of `exact.py` with k = max_per_query (the best pairs are kept) and counts, per query
and per tile, the scores >= tau, so the true number of matches per query is exact even when it exceeds the
output bound; `overflow[q]` is True exactly when `counts[q] > max_per_query`.
"""

from __future__ import annotations

import numpy as np

from synleak_jax.search.exact import Source, check_block, search_engine


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
                 db_chunk_rows: int | None = None, query_chunk_rows: int | None = None) -> RangeResult:
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
    m = check_block(max_per_query, "max_per_query")
    db_n = Source(database, "database").n
    k = min(m, db_n)
    s, i, c, _ = search_engine(queries, database, k, query_block=query_block, db_block=db_block,
                               precision="float32", selection=selection, tile=tile, db_chunk_rows=db_chunk_rows,
                               query_chunk_rows=query_chunk_rows, tau=np.float32(tau_f))
    keep = s >= np.float32(tau_f)  # rows are sorted descending, so kept entries form a prefix
    qi, col = np.nonzero(keep)
    counts = c.astype(np.int64)
    # Kept per query = min(count, k): the engine's count and the top-k agree on the same float32 scores.
    if not np.array_equal(keep.sum(axis=1), np.minimum(counts, k)):
        raise AssertionError("internal error: range-search counts disagree with the kept pairs")
    return RangeResult(qi.astype(np.int64), i[qi, col].astype(np.int64), s[qi, col], counts > m, counts)
