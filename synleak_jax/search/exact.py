"""Exact inner-product top-k: THE top-k driver of synleak_jax, on the tile engine (``engine.py``).

``exact_topk(queries, database, k)`` returns, for every query, the k database rows with the largest inner
product (cosine similarity for unit vectors), scores descending, ties broken by the lower database index, equal
to a float64 brute force on the same float32 inputs up to float32 rounding ties — on one device, on a mesh of
many, and across processes (``mesh=``; default: every device of every process).

Precisions (all return the float32 result):
* "float32": one engine pass with float32 matmuls (``Precision.HIGHEST``) and exact per-tile selection.
* "bf16_certified": a bf16 screening pass, float32 rescoring of the kept candidates and a per-query error-bound
  certificate; uncertified queries are recomputed in float32 (``certified.py``).
* "auto" (the default): :func:`fastest_exact_precision` for the platform.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time

import jax
import numpy as np
from jax.sharding import Mesh

from synleak_jax.search import certified
from synleak_jax.search.engine import (
    ROWS,
    Blocks,
    PassSpec,
    Source,
    as_source,
    check_k,
    check_positive_int,
    default_blocks,
    make_mesh,
    put_replicated,
    put_rows_sharded,
    round_up,
    tile_pass,
    to_host,
)

PRECISIONS = ("float32", "bf16_certified", "auto")
SCREENS = ("groups", "candidates")


@dataclasses.dataclass
class SearchStats:
    """Counters of one search call.

    queries: queries searched.
    fallback_queries: queries the bf16-certified mode could not certify and recomputed in float32.
    precision: the precision used ("auto" resolved).
    seconds: wall time of the call.
    """

    queries: int = 0
    fallback_queries: int = 0
    precision: str = ""
    seconds: float = 0.0

    @property
    def fallback_rate(self) -> float:
        return self.fallback_queries / self.queries if self.queries else 0.0


@functools.lru_cache(maxsize=1)
def _cpu_has_fast_bf16() -> bool:
    """True when this CPU multiplies bf16 in hardware (AMX-BF16 or AVX512-BF16), from /proc/cpuinfo."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"amx_bf16", "avx512_bf16"})
    except OSError:
        pass
    return False


def fastest_exact_precision(platform: str | None = None) -> str:
    """The fastest exact mode: "bf16_certified" on GPU/TPU (bf16 matmul units) and on CPUs with hardware bf16
    (AMX-BF16 / AVX512-BF16: on such a Xeon the certified mode measured 1.78x faiss vs 0.54x for float32,
    BENCHMARKS.md); "float32" on other CPUs, where bf16 is emulated (an AVX2 AMD EPYC ran bf16 matmuls at about
    half the float32 rate, BENCHMARKS.md). ``SYNLEAK_EXACT_PRECISION`` overrides it."""
    env = os.environ.get("SYNLEAK_EXACT_PRECISION", "")
    if env in ("float32", "bf16_certified"):
        return env
    platform = platform or jax.default_backend()
    if platform != "cpu":
        return "bf16_certified"
    return "bf16_certified" if _cpu_has_fast_bf16() else "float32"


def _blocks(n_rows: int, n_cols: int, d: int, spec: PassSpec, query_block, db_block, db_chunk_rows,
            query_chunk_rows, resident: bool | None = None) -> Blocks:
    """The engine geometry from exact_topk's arguments (None = the engine's default for the backend)."""
    base = default_blocks(n_rows, n_cols, d, spec)
    bq = base.bq if query_block is None else min(check_positive_int(query_block, "query_block"), round_up(n_rows, 8))
    bdb = base.bdb if db_block is None else min(check_positive_int(db_block, "db_block"), round_up(n_cols, 8))
    if spec.screen_t:
        bdb = round_up(bdb, spec.group)
    rows = (base.rows_per_device if query_chunk_rows is None
            else check_positive_int(query_chunk_rows, "query_chunk_rows"))
    rows = min(round_up(rows, bq), round_up(n_rows, bq))
    if resident:
        chunk = None
    elif db_chunk_rows is not None:
        chunk = round_up(check_positive_int(db_chunk_rows, "db_chunk_rows"), bdb)
    else:
        chunk = base.chunk if base.chunk is None else round_up(base.chunk, bdb)
    if chunk is not None and chunk >= round_up(n_cols, bdb):
        chunk = None
    return Blocks(bq, bdb, rows, chunk, max(1, min(base.ct, -(-n_cols // bdb))))


def exact_topk(queries, database, k: int, *, precision: str = "auto", mesh: Mesh | None = None,
               query_block: int | None = None, db_block: int | None = None, selection: str = "tiled",
               tile: int = 32, margin: int = 32, screen: str = "groups", group: int = 16,
               db_chunk_rows: int | None = None, query_chunk_rows: int | None = None, return_stats: bool = False,
               progress: str = ""):
    """Exact inner-product top-k of each query against the database.

    Args:
      queries: [nq, D] array or array-like (float; numpy, jax, memmap, embedding store `.embeddings`).
      database: [ndb, D] array or array-like.
      k: neighbours per query, 1 <= k <= ndb.
      precision: "float32", "bf16_certified" or "auto" (default: :func:`fastest_exact_precision`).
      mesh: a ("rows",) mesh (``engine.make_mesh``); default every device of every process. Queries are spread
        over its devices; the database is streamed to (or resident on) every device.
      query_block, db_block: tile shape (rows); None = the engine's default (CPU 1024 x 2048).
      selection, tile: per-tile exact selection ("tiled": two-level, cheaper; "top_k": one lax.top_k per row).
      margin: extra screened candidates (screen="candidates": rows, "groups": groups) per query.
      screen: bf16_certified screening: "groups" (default; the maximum of each group of `group` rows, the
        k + margin best groups rescored whole; the float32 database is resident on every device: a 64-byte
        aligned float32 array is used in place on one CPU device, others are copied once) or "candidates"
        (per-tile top-(k + margin + 1) rows; streams the database; rescoring on the host).
      group: rows per group for screen="groups".
      db_chunk_rows: database rows per host->device transfer (None = resident when it fits the engine's budget).
      query_chunk_rows: query rows per device per pass step.
      return_stats: also return a SearchStats (precision used, fallback counts of the certified mode).
      progress: a name to log progress under (pairs/s, ETA).

    Returns:
      scores [nq, k] float32, descending per row; indices [nq, k] int32 into the database, ties broken by the
      lower index. With return_stats, (scores, indices, stats).
    """
    t0 = time.perf_counter()
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if screen not in SCREENS:
        raise ValueError(f"screen must be one of {SCREENS}, got {screen!r}")
    if precision == "auto":
        precision = fastest_exact_precision()
    q, db = as_source(queries, "queries"), as_source(database, "database")
    if q.d != db.d:
        raise ValueError(f"dimension mismatch: queries have dim {q.d}, database has dim {db.d}")
    k = check_k(k, db.n)
    check_positive_int(tile, "tile")
    if isinstance(margin, bool) or not isinstance(margin, (int, np.integer)) or margin < 0:
        raise ValueError(f"margin must be a non-negative integer, got {margin!r}")
    group = check_positive_int(group, "group")
    mesh = mesh or make_mesh()
    stats = SearchStats(queries=q.n, precision=precision)
    geometry = dict(query_block=query_block, db_block=db_block, db_chunk_rows=db_chunk_rows,
                    query_chunk_rows=query_chunk_rows)

    def float32_rows(src: Source):
        spec = PassSpec(row_k=k, selection=selection, tile=tile)
        res = tile_pass(src, db, spec, mesh=mesh, blocks=_blocks(src.n, db.n, db.d, spec, **geometry),
                        progress=progress)
        return res.row_scores, res.row_index

    if precision == "float32":
        s, i = float32_rows(q)
    elif screen == "candidates":
        s, i = _certified_candidates(q, db, k, margin, mesh, selection, tile, geometry, float32_rows, stats,
                                     progress)
    else:
        s, i = _certified_groups(q, db, k, margin, group, mesh, geometry, float32_rows, stats, progress)
    if not np.isfinite(s).all():
        raise ValueError("scores overflowed float32 (inputs too large in magnitude); rescale the embeddings")
    stats.seconds = time.perf_counter() - t0
    return (s, i, stats) if return_stats else (s, i)


def _fall_back(ok: np.ndarray, out_s: np.ndarray, out_i: np.ndarray, q: Source, float32_rows, stats) -> None:
    """Recomputes the uncertified queries (``ok`` False) in float32, in place, and counts them in ``stats``."""
    bad = np.nonzero(~ok)[0]
    if len(bad):
        out_s[bad], out_i[bad] = float32_rows(Source(q.take(bad), "queries"))
    stats.fallback_queries += len(bad)


def _certified_candidates(q: Source, db: Source, k, margin, mesh, selection, tile, geometry, float32_rows, stats,
                          progress, rescore_block: int = 512):
    """screen="candidates": bf16 pass keeping k' + 1 rows per query, host rescoring, certificate."""
    kp = min(k + int(margin), db.n)
    discard = kp < db.n
    spec = PassSpec(precision="bf16", row_k=kp + 1 if discard else kp, selection=selection, tile=tile)
    res = tile_pass(q, db, spec, mesh=mesh, blocks=_blocks(q.n, db.n, db.d, spec, **geometry), progress=progress)
    m_b = res.row_scores[:, kp].astype(np.float64) if discard else np.full(q.n, -np.inf)
    out_s = np.empty((q.n, k), np.float32)
    out_i = np.empty((q.n, k), np.int32)
    ok = np.empty(q.n, bool)
    for a in range(0, q.n, rescore_block):
        b = min(q.n, a + rescore_block)
        qb = q.read(a, b)
        out_s[a:b], out_i[a:b] = certified.rescore_candidates(qb, res.row_index[a:b, :kp], db, k)
        ok[a:b] = certified.certify(m_b[a:b], out_s[a:b, k - 1], np.linalg.norm(qb.astype(np.float64), axis=1),
                                    res.max_col_norm, q.d)
    _fall_back(ok, out_s, out_i, q, float32_rows, stats)
    return out_s, out_i


def _certified_groups(q: Source, db: Source, k, margin, group, mesh, geometry, float32_rows, stats, progress,
                      sub: int = 16):
    """screen="groups": bf16 group-maximum pass, on-device float32 rescoring of the best k + margin groups of
    every query (the database resident on every device), certificate, float32 fallback."""
    t = k + int(margin)
    spec = PassSpec(precision="bf16", screen_t=t, group=group)
    blocks = _blocks(q.n, db.n, db.d, spec, resident=True, **geometry)
    host_db = db.aligned_host()  # one aligned copy at most (the input itself when it already is one)
    res = tile_pass(q, Source(host_db, "database"), spec, mesh=mesh, blocks=blocks, progress=progress)
    if not np.isfinite(res.max_col_norm):
        db.raise_if_nonfinite()  # names the NaN/inf row; if none, squares overflowed: every query falls back
    dbf = host_db if db.n >= group else np.pad(host_db, ((0, group - db.n), (0, 0)))  # the gather reads groups
    dev_db = put_replicated(mesh, dbf)
    G = mesh.shape[ROWS]
    bq = round_up(min(blocks.bq, round_up(-(-q.n // G), sub)), sub)
    rescore = certified.rescore_groups_fn(mesh, db.n, k, t, group, sub)
    out_s = np.empty((q.n, k), np.float32)
    out_i = np.empty((q.n, k), np.int32)
    for a in range(0, q.n, G * bq):
        b = min(q.n, a + G * bq)
        qb = put_rows_sharded(mesh, q.read(a, b, pad_to=G * bq))
        gsel = np.full((G * bq, t), -1, np.int32)
        gsel[: b - a] = res.group_ids[a:b, :t]
        ts, ti = rescore(qb, dev_db, put_rows_sharded(mesh, gsel))
        out_s[a:b] = to_host(ts)[: b - a]
        out_i[a:b] = to_host(ti)[: b - a]
    del dev_db
    m_b = res.group_values[:, t].astype(np.float64)  # -inf when every group was rescored: nothing discarded
    qnorm = np.concatenate([np.linalg.norm(q.read(a, min(q.n, a + 16384)).astype(np.float64), axis=1)
                            for a in range(0, q.n, 16384)])
    ok = certified.certify(m_b, out_s[:, k - 1], qnorm, res.max_col_norm, q.d)
    _fall_back(ok, out_s, out_i, q, float32_rows, stats)
    return out_s, out_i
