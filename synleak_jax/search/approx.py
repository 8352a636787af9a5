"""Baselines for the benchmark only (never used by the audit): approximate JAX top-k, full-row selection, numpy
BLAS + argpartition, and faiss-cpu / ScaNN indexes (optional; imported inside the functions).

Every search function maps (queries [nq, D] float32, database [ndb, D] float32, k) -> (scores [nq, k] float32,
indices [nq, k] int64/int32), inner-product scores, best first. The index builders (`faiss_ivf_index`,
`faiss_hnsw_index`, `scann_index`) return the built index so that a benchmark sweeps search-time parameters
(nprobe, efSearch, leaves to search, reorder) over one build.

The top-k merge and rounding are the engine's public ones (`search.engine.merge_topk`, `round_up`); the float32
dot is written out here: the engine's own dot is private and takes its precision modes.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from synleak_jax.search.engine import merge_topk, round_up

_NEG_INF = float("-inf")
_HIGHEST = lax.Precision.HIGHEST


def _dot_f32(a, b):
    """[m, d] x [n, d] -> [m, n] float32, full float32 precision."""
    return lax.dot_general(a, b, (((1,), (1,)), ((), ())), precision=_HIGHEST, preferred_element_type=jnp.float32)


@functools.partial(jax.jit, static_argnames=("k", "bdb", "recall_target", "reduction_input_size_override"))
def _approx_scan(q, db, ndb, *, k, bdb, recall_target, reduction_input_size_override):
    """q [bq, D], db [nb*bdb, D]: blockwise lax.approx_max_k + exact merge of the candidates."""
    bq = q.shape[0]
    dbb = db.reshape(-1, bdb, db.shape[1])

    def body(carry, xs):
        rs, ri = carry
        dblk, j = xs
        cols = j * bdb + jnp.arange(bdb, dtype=jnp.int32)
        s = jnp.where((cols < ndb)[None, :], _dot_f32(q, dblk), _NEG_INF)
        bs, bp = lax.approx_max_k(s, min(k, bdb), recall_target=recall_target,
                                  reduction_input_size_override=reduction_input_size_override)
        return merge_topk(rs, ri, bs, cols[bp], k), None

    init = (jnp.full((bq, k), _NEG_INF, jnp.float32), jnp.full((bq, k), -1, jnp.int32))
    (rs, ri), _ = lax.scan(body, init, (dbb, jnp.arange(dbb.shape[0])))
    return rs, ri


def approx_max_k_blockwise(queries, database, k: int, *, recall_target: float = 0.95, query_block: int = 1024,
                           db_block: int = 8192, reduction_input_size_override: int = -1):
    """`lax.approx_max_k` per (query block, db block) tile, merged exactly across blocks.

    On CPU/GPU approx_max_k falls back to a full sort of the row (REFERENCE.md s.6): expect it to be slower
    than the exact kernel there; it is fast on TPU only. Database must fit on the device.
    """
    q = np.asarray(queries, np.float32)
    db = jnp.asarray(database, jnp.float32)
    ndb = db.shape[0]
    bdb = min(db_block, round_up(ndb, 8))
    pad = round_up(ndb, bdb) - ndb
    if pad:
        db = jnp.pad(db, ((0, pad), (0, 0)))
    bq = min(query_block, q.shape[0])
    out_s, out_i = [], []
    for a in range(0, q.shape[0], bq):
        qb = q[a:a + bq]
        n = qb.shape[0]
        if n < bq:
            qb = np.concatenate([qb, np.zeros((bq - n, q.shape[1]), np.float32)])
        s, i = _approx_scan(jnp.asarray(qb), db, jnp.int32(ndb), k=k, bdb=bdb, recall_target=recall_target,
                            reduction_input_size_override=reduction_input_size_override)
        out_s.append(np.asarray(s)[:n])
        out_i.append(np.asarray(i)[:n])
    return np.concatenate(out_s), np.concatenate(out_i)


@functools.partial(jax.jit, static_argnames=("k", "method", "recall_target"))
def _full_row(q, db, *, k, method, recall_target):
    s = _dot_f32(q, db) if db.dtype == jnp.float32 else lax.dot_general(
        q.astype(db.dtype), db, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32)
    if method == "approx":
        return lax.approx_max_k(s, k, recall_target=recall_target)
    return lax.top_k(s, k)


def full_row_topk(queries, database, k: int, *, method: str = "top_k", query_block: int = 1024,
                  recall_target: float = 0.95, dtype=jnp.float32):
    """Per query block, materialise the [query_block, ndb] score rows and select on the full row (GPU-table
    baseline: `lax.top_k` or `lax.approx_max_k` on full rows). Memory O(query_block * ndb)."""
    if method not in ("top_k", "approx"):
        raise ValueError(f"method must be 'top_k' or 'approx', got {method!r}")
    db = jnp.asarray(database, dtype)
    q = np.asarray(queries, np.float32)
    out_s, out_i = [], []
    bq = min(query_block, q.shape[0])
    for a in range(0, q.shape[0], bq):
        qb = q[a:a + bq]
        n = qb.shape[0]
        if n < bq:
            qb = np.concatenate([qb, np.zeros((bq - n, q.shape[1]), np.float32)])
        s, i = _full_row(jnp.asarray(qb), db, k=k, method=method, recall_target=recall_target)
        out_s.append(np.asarray(s)[:n])
        out_i.append(np.asarray(i)[:n])
    return np.concatenate(out_s), np.concatenate(out_i)


def numpy_topk(queries, database, k: int, *, query_block: int = 4096, db_block: int = 16384):
    """numpy reference: BLAS sgemm in blocks + argpartition per block + merge. Memory O(query_block*db_block)."""
    q = np.asarray(queries, np.float32)
    db = database
    nq, ndb = q.shape[0], db.shape[0]
    out_s = np.empty((nq, k), np.float32)
    out_i = np.empty((nq, k), np.int64)
    for a in range(0, nq, query_block):
        qb = q[a:a + query_block]
        best_s = np.full((qb.shape[0], k), -np.inf, np.float32)
        best_i = np.full((qb.shape[0], k), -1, np.int64)
        for b in range(0, ndb, db_block):
            s = qb @ np.asarray(db[b:b + db_block], np.float32).T
            kk = min(k, s.shape[1])
            part = np.argpartition(-s, kk - 1, axis=1)[:, :kk]
            cs = np.concatenate([best_s, np.take_along_axis(s, part, axis=1)], axis=1)
            ci = np.concatenate([best_i, part + b], axis=1)
            sel = np.argpartition(-cs, k - 1, axis=1)[:, :k]
            best_s = np.take_along_axis(cs, sel, axis=1)
            best_i = np.take_along_axis(ci, sel, axis=1)
        order = np.argsort(-best_s, axis=1, kind="stable")
        out_s[a:a + query_block] = np.take_along_axis(best_s, order, axis=1)
        out_i[a:a + query_block] = np.take_along_axis(best_i, order, axis=1)
    return out_s, out_i


def _faiss():
    try:
        import faiss  # noqa: PLC0415 (optional extra)
    except ImportError as e:
        raise RuntimeError("faiss-cpu is not installed (pip install faiss-cpu)") from e
    return faiss


def faiss_flat_ip(queries, database, k: int):
    """faiss IndexFlatIP (exact: blocked sgemm + heap selection)."""
    faiss = _faiss()
    index = faiss.IndexFlatIP(database.shape[1])
    index.add(np.ascontiguousarray(database, np.float32))
    return index.search(np.ascontiguousarray(queries, np.float32), k)


def ivf_train_size(ndb: int, nlist: int) -> int:
    """Training rows for an IVF index: 64 per list (faiss warns below 39), at least 65,536, at most ndb."""
    return int(min(ndb, max(65536, 64 * nlist)))


def faiss_ivf_index(database, *, nlist: int = 1024, train_size: int | None = None, seed: int = 0):
    """faiss IVF-Flat (inner product) trained on a seeded random subset (`ivf_train_size` rows by default) and
    filled with the database. Search-time knob: `index.nprobe`."""
    faiss = _faiss()
    db = np.ascontiguousarray(database, np.float32)
    if not 1 <= nlist <= db.shape[0]:
        raise ValueError(f"nlist must be in [1, ndb={db.shape[0]}], got {nlist}")
    quantizer = faiss.IndexFlatIP(db.shape[1])
    index = faiss.IndexIVFFlat(quantizer, db.shape[1], nlist, faiss.METRIC_INNER_PRODUCT)
    n_train = ivf_train_size(db.shape[0], nlist) if train_size is None else min(int(train_size), db.shape[0])
    rows = np.sort(np.random.default_rng(seed).choice(db.shape[0], n_train, replace=False))
    index.train(db[rows])
    index.add(db)  # faiss' Python wrapper keeps `quantizer` alive with the index (referenced_objects)
    return index


def faiss_ivf_flat(queries, database, k: int, *, nlist: int = 1024, nprobe: int = 16,
                   train_size: int | None = None, seed: int = 0):
    """faiss IVF-Flat (inner product) search with `nprobe` lists visited per query."""
    index = faiss_ivf_index(database, nlist=nlist, train_size=train_size, seed=seed)
    index.nprobe = min(int(nprobe), nlist)
    return index.search(np.ascontiguousarray(queries, np.float32), k)


def faiss_hnsw_index(database, *, m: int = 32, ef_construction: int = 80):
    """faiss HNSW-Flat (inner product) graph with `m` links per node. Search-time knob: `index.hnsw.efSearch`."""
    faiss = _faiss()
    db = np.ascontiguousarray(database, np.float32)
    index = faiss.IndexHNSWFlat(db.shape[1], int(m), faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = int(ef_construction)
    index.add(db)
    return index


def faiss_hnsw(queries, database, k: int, *, m: int = 32, ef_construction: int = 80, ef_search: int = 64):
    """faiss HNSW-Flat (inner product) search with beam width `ef_search` (>= k is useful)."""
    index = faiss_hnsw_index(database, m=m, ef_construction=ef_construction)
    index.hnsw.efSearch = int(ef_search)
    return index.search(np.ascontiguousarray(queries, np.float32), k)


def scann_index(database, k: int, *, num_leaves: int = 1000, num_leaves_to_search: int = 100,
                reorder: int = 100, training_sample_size: int = 65536):
    """ScaNN (optional: `pip install scann`): k-means tree of `num_leaves` leaves + anisotropic asymmetric
    hashing (2-dim blocks, threshold 0.2) + exact float32 reordering of the best `reorder` candidates, dot
    product. Search-time knobs: `searcher.search_batched(q, leaves_to_search=..., pre_reorder_num_neighbors=...)`
    (`reorder` here is the default and must be >= k). Its k-means training is not seeded (ScaNN exposes no
    seed). Returns the searcher; `search_batched(q)` -> (indices
    uint32 [nq, k], scores [nq, k])."""
    try:
        import scann  # noqa: PLC0415 (optional extra)
    except ImportError as e:
        raise RuntimeError("scann is not installed (pip install scann)") from e
    db = np.ascontiguousarray(database, np.float32)
    leaves = min(num_leaves, db.shape[0])
    return (scann.scann_ops_pybind.builder(db, k, "dot_product")
            .tree(num_leaves=leaves, num_leaves_to_search=min(num_leaves_to_search, leaves),
                  training_sample_size=min(training_sample_size, db.shape[0]))
            .score_ah(2, anisotropic_quantization_threshold=0.2).reorder(max(int(reorder), k)).build())


def scann_search(queries, database, k: int, **params):
    """ScaNN top-k: (scores [nq, k], indices [nq, k] int64)."""
    idx, sc = scann_index(database, k, **params).search_batched(np.ascontiguousarray(queries, np.float32))
    return np.asarray(sc, np.float32), np.asarray(idx, np.int64)
