"""Exact blockwise inner-product top-k (and the engine shared with range search).

Scores are inner products `q . d` computed in float32 (cosine similarity when the inputs are L2-normalised).
The work is tiled: for each query block `[query_block, D]` the database is scanned block by block
(`[db_block, D]`, `lax.scan`), each tile's scores `[query_block, db_block]` are reduced to a per-row top-k at
once and merged into a running top-k. Memory is O(query_block x db_block + nq x k): the full nq x ndb score
matrix never exists.

Database rows reach the device in chunks of several blocks (host arrays, memory-mapped embedding stores and
jax arrays all work: anything with `.shape` and `[a:b]` slicing). The next chunk is read and transferred while
the device works on the current one (dispatch is asynchronous), so inputs larger than device memory stream.

Tie rule: equal scores are ordered by the lower database index. `lax.top_k` keeps the lower position on ties,
and the running list (lower indices, from earlier blocks) always comes before the new block in the merge, so
the rule holds across blocks. Padding rows score -inf and can never be returned because k <= ndb.

Two precisions:
* "float32": float32 matmuls with `Precision.HIGHEST` (no TF32 / bf16 passes on GPU).
* "bf16_certified": a screening pass with bf16 x bf16 -> float32 matmuls keeps k + margin candidates per query,
  they are rescored in float32, and a rigorous error bound certifies per query that no discarded row can be in
  the float32 top-k; uncertified queries are recomputed in float32 (counted in SearchStats). See certified.py.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax import lax

from synleak_jax.search.hostmem import aligned_empty, is_aligned

PRECISIONS = ("float32", "bf16_certified", "auto")
SELECTIONS = ("top_k", "tiled")
SCREENS = ("groups", "candidates")

_HIGHEST = lax.Precision.HIGHEST
_NEG_INF = float("-inf")


@dataclasses.dataclass
class SearchStats:
    """Counters of one search call.

    queries: queries searched.
    fallback_queries: queries the bf16-certified mode could not certify and recomputed in float32.
    seconds: wall time of the call.
    """

    queries: int = 0
    fallback_queries: int = 0
    seconds: float = 0.0

    @property
    def fallback_rate(self) -> float:
        return self.fallback_queries / self.queries if self.queries else 0.0


# ----------------------------------------------------------------------------------------------------------
# Inputs
# ----------------------------------------------------------------------------------------------------------


class Source:
    """A 2-D float input read in row ranges: numpy / jax arrays, memmaps, or store-like array-likes.

    Attributes: n (rows), d (dim), name (the argument name used in error messages).
    """

    def __init__(self, x: Any, name: str):
        if x is None:
            raise ValueError(f"{name} is None; expected a 2-D array [n, dim]")
        shape = getattr(x, "shape", None)
        if shape is None:
            try:
                x = np.asarray(x, dtype=np.float32)
            except (TypeError, ValueError) as e:
                raise ValueError(f"{name} is not a numeric 2-D array: {e}") from None
            shape = x.shape
        if len(shape) != 2:
            raise ValueError(f"{name} must be 2-D [n, dim], got shape {tuple(shape)}")
        self.n, self.d = int(shape[0]), int(shape[1])
        if self.n == 0 or self.d == 0:
            raise ValueError(f"{name} is empty (shape {tuple(shape)}); need at least one row and one column")
        dtype = getattr(x, "dtype", None)
        if dtype is not None:
            try:
                kind = np.dtype(dtype).kind
            except TypeError:
                kind = "f"  # e.g. a jax bfloat16 dtype object that numpy understands anyway
            if kind not in "fiub":
                raise ValueError(f"{name} has non-real dtype {dtype}; expected float embeddings")
        self.x = x
        self.name = name
        self.is_jax = isinstance(x, jax.Array)

    def read(self, a: int, b: int, pad_to: int | None = None):
        """Rows [a, b) as float32 (numpy, or a jax array for jax inputs), zero-padded to `pad_to` rows.

        Raises ValueError naming the argument and the row range when a row holds NaN or inf.
        """
        blk = self.x[a:b]
        if self.is_jax:
            blk = blk.astype(jnp.float32)
            if not bool(jnp.isfinite(blk).all()):
                bad = int(np.argmax(~np.isfinite(np.asarray(blk)).all(axis=1)))
                raise ValueError(f"{self.name} row {a + bad} contains NaN or inf")
            if pad_to is not None and pad_to > b - a:
                blk = jnp.pad(blk, ((0, pad_to - (b - a)), (0, 0)))
            return blk
        blk = np.asarray(blk, dtype=np.float32)
        if blk.shape != (b - a, self.d):
            raise ValueError(f"{self.name}[{a}:{b}] returned shape {blk.shape}, expected {(b - a, self.d)}")
        finite = np.isfinite(blk)
        if not finite.all():
            bad = int(np.argmax(~finite.all(axis=1)))
            raise ValueError(f"{self.name} row {a + bad} contains NaN or inf")
        if pad_to is not None and pad_to > b - a:
            out = np.zeros((pad_to, self.d), np.float32)
            out[: b - a] = blk
            blk = out
        return blk


    def aligned_host(self, chunk_rows: int = 16384) -> np.ndarray:
        """All rows as a float32, C-contiguous, 64-byte-aligned numpy array [n, D] (the CPU backend uses it in
        place, hostmem.py): the input itself when it already is one (not checked for NaN/inf here, see
        `raise_if_nonfinite`), otherwise one copy read in chunks, finiteness checked. Not for jax inputs."""
        x = self.x
        if isinstance(x, np.ndarray) and x.dtype == np.float32 and x.flags.c_contiguous and is_aligned(x):
            return x
        logging.info("%s: copying %.0f MB into aligned memory (pass a 64-byte-aligned float32 array, e.g. "
                     "np.load(path, mmap_mode='r') or search.hostmem.load_npy_aligned, to avoid the copy)",
                     self.name, self.n * self.d * 4 / 2**20)
        host = aligned_empty((self.n, self.d), np.float32)
        for a in range(0, self.n, chunk_rows):
            b = min(self.n, a + chunk_rows)
            host[a:b] = self.read(a, b)
        return host

    def device_array(self, chunk_rows: int = 16384):
        """All rows as one float32 jax array [n, D] with at most one host copy: jax inputs as they are (cast to
        float32 if needed), numpy inputs via `aligned_host` (aliased on CPU, not copied again by XLA)."""
        if self.is_jax:
            return self.x.astype(jnp.float32)
        return jax.device_put(self.aligned_host(chunk_rows))

    def raise_if_nonfinite(self, chunk_rows: int = 16384) -> None:
        """Raise ValueError naming the first row holding NaN or inf (reads the input in chunks)."""
        for a in range(0, self.n, chunk_rows):
            self.read(a, min(self.n, a + chunk_rows))

    def take(self, idx) -> np.ndarray:
        """Rows at the given indices (int [m], any order) as float32 numpy [m, D]; checks finiteness."""
        idx = np.asarray(idx, np.int64)
        if self.is_jax:
            out = np.asarray(jnp.take(self.x, jnp.asarray(idx), axis=0), np.float32)
        else:
            try:  # numpy, memmap, embedding-store ChunkedArray: fancy indexing reads only those rows
                out = np.asarray(self.x[idx], np.float32)
            except (TypeError, IndexError, ValueError, KeyError):
                out = np.stack([np.asarray(self.x[j:j + 1], np.float32)[0] for j in idx]) if len(idx) else \
                    np.zeros((0, self.d), np.float32)
        if out.shape != (len(idx), self.d):
            raise ValueError(f"{self.name}[rows] returned shape {out.shape}, expected {(len(idx), self.d)}")
        if not np.isfinite(out).all():
            bad = int(idx[np.argmax(~np.isfinite(out).all(axis=1))])
            raise ValueError(f"{self.name} row {bad} contains NaN or inf")
        return out


def check_common(q: Source, db: Source) -> None:
    if q.d != db.d:
        raise ValueError(f"dimension mismatch: queries have dim {q.d}, database has dim {db.d}")


def check_k(k: Any, ndb: int, name: str = "k") -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise ValueError(f"{name} must be an integer, got {k!r}")
    k = int(k)
    if k < 1:
        raise ValueError(f"{name} must be >= 1, got {k}")
    if k > ndb:
        raise ValueError(f"{name}={k} exceeds the number of database rows ({ndb})")
    return k


def default_blocks() -> tuple[int, int]:
    """(query_block, db_block) for the default backend. CPU: 1024 x 2048 (measured fastest of 2048/4096/8192 on
    the 2-core Xeon, 4096 x 200k x 512, see BENCHMARKS.md); GPU/TPU: 4096 x 65536 (1 GiB tile: ~275 GFLOP per
    matmul at D=512, so per-iteration overhead is noise; not measured yet)."""
    return (1024, 2048) if jax.default_backend() == "cpu" else (4096, 65536)


def auto_precision() -> str:
    """precision="auto": "bf16_certified" on CPU (measured faster than float32 on the AMX-bf16 Xeon, and exact:
    certificate + float32 fallback, see BENCHMARKS.md), "float32" elsewhere (GPU not measured yet)."""
    return "bf16_certified" if jax.default_backend() == "cpu" else "float32"


def default_chunk_rows(bdb: int, d: int) -> int:
    """Database rows per host->device transfer: ~16 MiB on CPU, ~64 MiB on accelerators (multiple of bdb)."""
    budget = (16 << 20) if jax.default_backend() == "cpu" else (64 << 20)
    return max(1, budget // (bdb * d * 4)) * bdb


def check_block(v: Any, name: str) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or int(v) < 1:
        raise ValueError(f"{name} must be a positive integer, got {v!r}")
    return int(v)


def check_search_args(queries, database, k, query_block, db_block, tile, selection):
    """Validates the arguments shared by the blockwise drivers; returns (q, db, k, bq, bdb, tile) with q and db
    as :class:`Source` and the block sizes resolved (None -> :func:`default_blocks`)."""
    q = queries if isinstance(queries, Source) else Source(queries, "queries")
    db = database if isinstance(database, Source) else Source(database, "database")
    check_common(q, db)
    k = check_k(k, db.n)
    dq, ddb = default_blocks()
    bq = check_block(dq if query_block is None else query_block, "query_block")
    bdb = check_block(ddb if db_block is None else db_block, "db_block")
    tile = check_block(tile, "tile")
    if selection not in SELECTIONS:
        raise ValueError(f"selection must be one of {SELECTIONS}, got {selection!r}")
    return q, db, k, bq, bdb, tile


def _round_up(x: int, m: int) -> int:
    return -(-x // m) * m


# ----------------------------------------------------------------------------------------------------------
# Per-tile kernels (pure functions, traced inside the scan)
# ----------------------------------------------------------------------------------------------------------


def merge_topk(run_s, run_i, blk_s, blk_i, k: int):
    """Merge a running top-k with a block's candidates whose indices are all larger.

    run_s/run_i: [b, k] (descending, ties lower index first); blk_s/blk_i: [b, m] with the same order.
    Returns [b, k]. The running list goes first so `lax.top_k`'s lower-position tie rule = lower index.
    """
    s = jnp.concatenate([run_s, blk_s], axis=1)
    i = jnp.concatenate([run_i, blk_i], axis=1)
    top_s, pos = lax.top_k(s, k)
    return top_s, jnp.take_along_axis(i, pos, axis=1)


def merge_topk_lex(s, i, k: int):
    """Top-k of arbitrary candidate lists by (score desc, index asc); s, i: [b, m] -> [b, k].

    Used where candidate lists do not come in index order (sharded merges). -0.0 is folded into +0.0 so the
    sort's total order does not split equal scores by sign.
    """
    neg = -jnp.where(s == 0.0, 0.0, s)
    neg_sorted, i_sorted = lax.sort((neg, i), dimension=1, num_keys=2)
    return -neg_sorted[:, :k], i_sorted[:, :k]


def block_select(s, k: int, selection: str, tile: int):
    """Exact per-row top-k of a score tile s [b, n] -> (scores [b, min(k,n)], positions int32).

    "top_k": one `lax.top_k` over the row.
    "tiled": the row is cut into tiles of `tile` columns and the k tiles with the largest maxima (ties: lower
    tile first) are kept. They provably hold the row's top-k: an element x outside them is beaten by each of
    the k chosen tiles' first maximum (larger, or equal and at a lower column). The chosen tiles are put back
    in column order, so the final `lax.top_k` over their k*tile entries keeps the lower-index tie rule.
    """
    b, n = s.shape
    kk = min(k, n)
    if selection == "top_k" or n % tile != 0 or n // tile <= kk:
        return lax.top_k(s, kk)
    nt = n // tile
    st = s.reshape(b, nt, tile)
    tmax = st.max(axis=2)  # [b, nt]
    _, tsel = lax.top_k(tmax, kk)  # tiles holding the top-k; ties -> lower tile first
    tsel = jnp.sort(tsel, axis=1)  # keep column order so the final top_k's tie rule is the index rule
    cand = jnp.take_along_axis(st, tsel[:, :, None], axis=1)  # [b, kk, tile]
    cs, cpos = lax.top_k(cand.reshape(b, kk * tile), kk)
    tile_of = jnp.take_along_axis(tsel, cpos // tile, axis=1)
    return cs, (tile_of * tile + cpos % tile).astype(jnp.int32)


def _dot_f32(a, b):
    """[m, d] x [n, d] -> [m, n] float32, full float32 precision."""
    return lax.dot_general(a, b, (((1,), (1,)), ((), ())), precision=_HIGHEST,
                           preferred_element_type=jnp.float32)


def _dot_bf16(a16, b16):
    """bf16 [m, d] x bf16 [n, d] -> [m, n] with float32 accumulation."""
    return lax.dot_general(a16, b16, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32)


# ----------------------------------------------------------------------------------------------------------
# One jitted step: a super-block of queries against one database chunk
# ----------------------------------------------------------------------------------------------------------


def chunk_step_impl(q, db, offset, ndb, tau, run_s, run_i, run_c, *, k, bq, bdb, precision, selection, tile,
                    count):
    """Scan database chunk `db` [nb*bdb, D] for queries `q` [nqb*bq, D], updating the running top-k.

    offset: global row of db[0] (int32); ndb: total valid database rows (rows >= ndb are padding);
    tau: range threshold (only used with count=True); run_s/run_i: [nqb*bq, k] running scores / indices;
    run_c: [nqb*bq] int32 running count of scores >= tau.
    precision: "float32" (float32 matmul, HIGHEST) or "bf16_screen" (bf16 x bf16 -> float32 accumulation; the
      screening pass of the certified search, see certified.py).
    Returns (run_s, run_i, run_c, max squared row norm of the chunk (float32 scalar, for the certificate)).
    """
    nq_pad, d = q.shape
    nqb, nb = nq_pad // bq, db.shape[0] // bdb
    qb = q.reshape(nqb, bq, d)
    if precision == "bf16_screen":
        qb = qb.astype(jnp.bfloat16)
        dbb = db.astype(jnp.bfloat16).reshape(nb, bdb, d)
        dot = _dot_bf16
    else:
        dbb = db.reshape(nb, bdb, d)
        dot = _dot_f32
    dmax2 = jnp.max(jnp.sum(jnp.square(db.astype(jnp.float32)), axis=1))

    def per_qblock(args):
        qblk, rs, ri, rc = args

        def body(carry, j):
            rs, ri, rc = carry
            base = offset + j * bdb
            cols = base + jnp.arange(bdb, dtype=jnp.int32)
            s = dot(qblk, dbb[j])
            # -0.0 -> +0.0 (top_k's total order would rank -0.0 below +0.0, breaking the index tie rule);
            # padding columns -> -inf
            s = jnp.where((cols < ndb)[None, :], jnp.where(s == 0.0, 0.0, s), _NEG_INF)
            if count:
                rc = rc + jnp.sum(s >= tau, axis=1, dtype=jnp.int32)
            bs, bp = block_select(s, k, selection, tile)
            rs, ri = merge_topk(rs, ri, bs, base + bp, k)
            return (rs, ri, rc), None

        (rs, ri, rc), _ = lax.scan(body, (rs, ri, rc), jnp.arange(nb))
        return rs, ri, rc

    rs, ri, rc = lax.map(
        per_qblock, (qb, run_s.reshape(nqb, bq, k), run_i.reshape(nqb, bq, k), run_c.reshape(nqb, bq)))
    return rs.reshape(nq_pad, k), ri.reshape(nq_pad, k), rc.reshape(nq_pad), dmax2


STEP_STATIC = ("k", "bq", "bdb", "precision", "selection", "tile", "count")
chunk_step = jax.jit(chunk_step_impl, static_argnames=STEP_STATIC, donate_argnames=("run_s", "run_i", "run_c"))


# ----------------------------------------------------------------------------------------------------------
# Driver
# ----------------------------------------------------------------------------------------------------------


def _chunk_plan(n: int, block: int, chunk_rows: int):
    """[(start, stop, padded_rows)] covering [0, n) in chunks of chunk_rows (a multiple of block)."""
    plan = []
    for a in range(0, n, chunk_rows):
        b = min(n, a + chunk_rows)
        plan.append((a, b, _round_up(b - a, block)))
    return plan


def search_engine(queries, database, k: int, *, query_block: int, db_block: int, precision: str,
                  selection: str, tile: int, db_chunk_rows: int | None, query_chunk_rows: int | None,
                  tau: float | None, log_every_s: float = 10.0):
    """Shared blockwise driver (one pass over the database per query super-block).

    precision: "float32" or "bf16_screen". Returns numpy (scores [nq,k], idx [nq,k], counts [nq] int64,
    dmax = largest database row norm (float)).
    """
    t0 = time.perf_counter()
    q, db, k, bq, bdb, tile = check_search_args(queries, database, k, query_block, db_block, tile, selection)
    count = tau is not None
    # Never pad a small input up to a large block: shrink the block to the data.
    bdb = min(bdb, _round_up(db.n, 8))
    bq = min(bq, _round_up(q.n, 8))
    d = q.d
    # Chunks: ~16 MiB (CPU; each chunk is a copy in host memory) or ~64 MiB (accelerators) of float32 rows, a
    # multiple of the block size; a database that fits in one chunk is transferred once and reused.
    if db_chunk_rows is None:
        db_chunk_rows = default_chunk_rows(bdb, d)
    db_chunk_rows = _round_up(check_block(db_chunk_rows, "db_chunk_rows"), bdb)
    if query_chunk_rows is None:
        query_chunk_rows = max(1, (64 << 20) // (bq * d * 4)) * bq
    query_chunk_rows = _round_up(check_block(query_chunk_rows, "query_chunk_rows"), bq)
    db_plan = _chunk_plan(db.n, bdb, db_chunk_rows)
    q_plan = _chunk_plan(q.n, bq, query_chunk_rows)

    out_s = np.empty((q.n, k), np.float32)
    out_i = np.empty((q.n, k), np.int32)
    out_c = np.zeros((q.n,), np.int64)
    tau_arr = jnp.float32(tau if count else 0.0)
    ndb_arr = jnp.int32(db.n)
    step = functools.partial(chunk_step, k=k, bq=bq, bdb=bdb, precision=precision, selection=selection,
                             tile=tile, count=count)

    def load_db(ci):
        a, b, rows = db_plan[ci]
        return jax.device_put(db.read(a, b, pad_to=rows))

    cached_single = load_db(0) if len(db_plan) == 1 else None
    dmax2 = []
    last_log = time.perf_counter()
    done_q = 0
    for qa, qe, qrows in q_plan:
        qdev = jax.device_put(q.read(qa, qe, pad_to=qrows))
        rs = jnp.full((qrows, k), _NEG_INF, jnp.float32)
        ri = jnp.full((qrows, k), -1, jnp.int32)
        rc = jnp.zeros((qrows,), jnp.int32)
        nxt = cached_single if cached_single is not None else load_db(0)
        for ci, (a, _, rows) in enumerate(db_plan):
            cur = nxt
            rs, ri, rc, m2 = step(qdev, cur, jnp.int32(a), ndb_arr, tau_arr, rs, ri, rc)
            if qa == 0:
                dmax2.append(m2)
            if ci + 1 < len(db_plan):
                nxt = load_db(ci + 1)  # host read + transfer overlap the step dispatched above
            # Bound memory: without this, asynchronous dispatch lets the loop run ahead and keep every chunk's
            # device copy alive at once (measured: +1x the database in RSS). At most 2 chunks live.
            rs.block_until_ready()
            now = time.perf_counter()
            if now - last_log > log_every_s:
                frac = (done_q + (qe - qa) * (ci + 1) / len(db_plan)) / q.n
                rate = frac * q.n / (now - t0)
                logging.info("exact search: %.1f%% (%.0f queries/s, ETA %.0f s)", 100 * frac, rate,
                             (1 - frac) * q.n / max(rate, 1e-9))
                last_log = now
        out_s[qa:qe] = np.asarray(rs)[: qe - qa]
        out_i[qa:qe] = np.asarray(ri)[: qe - qa]
        out_c[qa:qe] = np.asarray(rc)[: qe - qa]
        done_q = qe
    if not np.isfinite(out_s).all():
        raise ValueError("scores overflowed float32 (inputs too large in magnitude); rescale the embeddings")
    if out_i.min() < 0 or out_i.max() >= db.n:  # cannot happen for finite scores; guard against silent bugs
        raise AssertionError("internal error: a padding row was selected")
    dmax = float(np.sqrt(max(float(x) for x in dmax2)))
    return out_s, out_i, out_c, dmax


def exact_topk(queries, database, k: int, *, query_block: int | None = None, db_block: int | None = None,
               precision: str = "float32", selection: str = "tiled", tile: int = 32, margin: int = 32,
               screen: str = "groups", group: int = 16, db_chunk_rows: int | None = None, query_chunk_rows: int | None = None,
               return_stats: bool = False):
    """Exact inner-product top-k of each query against the database.

    Args:
      queries: [nq, D] array or array-like (float; numpy, jax, memmap, embedding store `.embeddings`).
      database: [ndb, D] array or array-like.
      k: neighbours per query, 1 <= k <= ndb.
      query_block, db_block: tile shape (rows); None = `default_blocks()` (CPU 1024 x 2048, GPU 4096 x 65536).
        Memory is O(query_block * db_block + nq * k).
      precision: "float32" (float32 matmuls, HIGHEST), "bf16_certified" (bf16 screening pass + float32
        rescoring, certified per query by an error bound; uncertified queries are recomputed in float32) or
        "auto" (`auto_precision()`: bf16_certified on CPU, float32 elsewhere). All return the float32 result.
        bf16_certified with screen="groups" holds the whole float32 database on the device: on CPU a 64-byte
        aligned float32 numpy array or memmap is used in place, other inputs are copied once (hostmem.py).
      screen: bf16_certified screening: "groups" (default; maximum per group of `group` rows, the k + margin
        best groups rescored whole) or "candidates" (per-tile top-(k + margin + 1) rows, streams the database).
      group: rows per group for screen="groups" (query_block defaults to 2048 there).
      selection: "tiled" (exact two-level selection, cheaper on CPU) or "top_k" (one lax.top_k per tile row).
      tile: columns per tile for selection="tiled".
      margin: extra screening candidates (screen="candidates": rows, "groups": groups) per query.
      db_chunk_rows, query_chunk_rows: rows per host->device transfer (default: database ~16 MiB on CPU,
        ~64 MiB on accelerators; queries ~64 MiB).
      return_stats: also return a SearchStats (fallback counts of the certified mode).

    Returns:
      scores [nq, k] float32, descending per row; indices [nq, k] int32 into the database, ties broken by the
      lower index. With return_stats, (scores, indices, stats).
    """
    t0 = time.perf_counter()
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "auto":
        precision = auto_precision()
    kw = dict(query_block=query_block, db_block=db_block, selection=selection, tile=tile,
              db_chunk_rows=db_chunk_rows, query_chunk_rows=query_chunk_rows)
    stats = SearchStats()
    if precision == "float32":
        s, i, _, _ = search_engine(queries, database, k, precision="float32", tau=None, **kw)
        stats.queries = s.shape[0]
    else:
        from synleak_jax.search.certified import certified_topk, grouped_certified_topk

        q, db = Source(queries, "queries"), Source(database, "database")
        if screen not in SCREENS:
            raise ValueError(f"screen must be one of {SCREENS}, got {screen!r}")

        def screen_candidates(kk):
            s, i, _, dmax = search_engine(q, db, kk, precision="bf16_screen", tau=None, **kw)
            return s, i, dmax

        def exact_rows(rows):
            s, i, _, _ = search_engine(Source(q.take(rows), "queries"), db, k, precision="float32", tau=None,
                                       **kw)
            return s, i

        if screen == "groups":
            check_common(q, db)
            s, i = grouped_certified_topk(
                q, db, k, margin, group, query_block if query_block is not None else 2048,
                db_block if db_block is not None else 2048, exact_rows, stats)
        else:
            s, i = certified_topk(q, db, k, margin, screen_candidates, exact_rows, stats)
    stats.seconds = time.perf_counter() - t0
    if return_stats:
        return s, i, stats
    return s, i
