"""Exact top-k over a device Mesh: database rows sharded across the "db" axis (queries optionally across "q").

Each device scans its share of every database chunk with the same blockwise kernel as `exact.py` and keeps its
own running top-k (a device sees its rows in increasing global index order, so the local merge keeps the
lower-index tie rule). At the end the per-device candidate lists are all-gathered along "db" and merged by
(score desc, global index asc) with a lexicographic sort, so the answer does not depend on the device count.

Multi-process: every process passes the same (logical) inputs — e.g. the same embedding store — and only its
own devices' rows are read (`jax.make_array_from_callback`). Every process gets the full result.
"""

from __future__ import annotations

import functools
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from synleak_jax.search.exact import (
    PRECISIONS,
    STEP_STATIC,
    SearchStats,
    Source,
    _round_up,
    check_block,
    check_search_args,
    chunk_step_impl,
    default_chunk_rows,
    merge_topk_lex,
)

_NEG_INF = float("-inf")


def make_search_mesh(num_db: int | None = None, num_q: int = 1, devices=None) -> Mesh:
    """A ("q", "db") mesh over `devices` (default: all global devices, all on "db")."""
    devices = list(jax.devices() if devices is None else devices)
    if num_db is None:
        num_db = len(devices) // num_q
    if num_db * num_q != len(devices):
        raise ValueError(f"mesh {num_q} x {num_db} does not match {len(devices)} devices")
    explicit = jax.sharding.AxisType.Explicit
    return jax.make_mesh((num_q, num_db), ("q", "db"), axis_types=(explicit, explicit), devices=devices)


@functools.lru_cache(maxsize=32)
def _compiled(mesh, db_axis, q_axis, rows_per_dev, static):
    """jit(shard_map(step)) for one mesh / chunk geometry. static: sorted tuple of the step's static args."""
    kw = dict(static)
    spec_q = P(q_axis, None)
    spec_run = P(db_axis, q_axis, None)

    def local(q, db, offset, ndb, tau, rs, ri, rc):
        dev_off = offset + jax.lax.axis_index(db_axis).astype(jnp.int32) * rows_per_dev
        out = chunk_step_impl(q, db, dev_off, ndb, tau, rs[0], ri[0], rc[0], **kw)
        return out[0][None], out[1][None], out[2][None], jax.lax.pmax(out[3], (db_axis,) + ((q_axis,) if q_axis else ()))

    fn = jax.shard_map(
        local, mesh=mesh,
        in_specs=(spec_q, P(db_axis, None), P(), P(), P(), spec_run, spec_run, P(db_axis, q_axis)),
        out_specs=(spec_run, spec_run, P(db_axis, q_axis), P()),
        check_vma=False,  # the kernel's scan carries mix per-device and replicated values
    )
    return jax.jit(fn, donate_argnums=(5, 6, 7))


@functools.lru_cache(maxsize=32)
def _compiled_final(mesh, db_axis, q_axis, k):
    def local(rs, ri):
        gs = jax.lax.all_gather(rs[0], db_axis)  # [n_db, nq_local, k]
        gi = jax.lax.all_gather(ri[0], db_axis)
        n_db, nql, _ = gs.shape
        s = jnp.transpose(gs, (1, 0, 2)).reshape(nql, n_db * k)
        i = jnp.transpose(gi, (1, 0, 2)).reshape(nql, n_db * k)
        return merge_topk_lex(s, i, k)

    spec_run = P(db_axis, q_axis, None)
    fn = jax.shard_map(local, mesh=mesh, in_specs=(spec_run, spec_run),
                       out_specs=(P(q_axis, None), P(q_axis, None)), check_vma=False)
    return jax.jit(fn)


def _global_array(mesh, spec, shape, read):
    """A global array whose addressable shards are produced by read(index_tuple) -> numpy."""
    sharding = NamedSharding(mesh, spec)
    return jax.make_array_from_callback(shape, sharding, read)


def _to_host(x):
    if x.is_fully_addressable:
        return np.asarray(x)
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def sharded_exact_topk(queries, database, k: int, *, mesh: Mesh | None = None, db_axis: str = "db",
                       query_axis: str | None = None, query_block: int | None = None,
                       db_block: int | None = None,
                       precision: str = "float32", selection: str = "tiled", tile: int = 32, margin: int = 32,
                       db_chunk_rows: int | None = None, return_stats: bool = False):
    """Exact top-k with the database sharded over `mesh[db_axis]` (and queries over `mesh[query_axis]`).

    Same arguments and results as `exact_topk`: (scores [nq, k] float32 desc, indices [nq, k] int32, ties ->
    lower index). `db_chunk_rows` is per device (default ~64 MiB). Other mesh axes (if any) replicate.
    precision="bf16_certified" screens in bf16 on the mesh, rescores/certifies on the host (certified.py).
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    t0 = time.perf_counter()
    kw = dict(mesh=mesh, db_axis=db_axis, query_axis=query_axis, query_block=query_block, db_block=db_block,
              selection=selection, tile=tile, db_chunk_rows=db_chunk_rows)
    stats = SearchStats()
    if precision == "float32":
        s, i, _ = _sharded_engine(queries, database, k, precision="float32", **kw)
        stats.queries = s.shape[0]
    else:
        from synleak_jax.search.certified import certified_topk

        q, db = Source(queries, "queries"), Source(database, "database")
        s, i = certified_topk(
            q, db, k, margin, lambda kk: _sharded_engine(q, db, kk, precision="bf16_screen", **kw),
            lambda rows: _sharded_engine(Source(q.take(rows), "queries"), db, k, precision="float32", **kw)[:2],
            stats)
    stats.seconds = time.perf_counter() - t0
    return (s, i, stats) if return_stats else (s, i)


def _sharded_engine(queries, database, k, *, mesh, db_axis, query_axis, query_block, db_block, precision,
                    selection, tile, db_chunk_rows):
    """Returns numpy (scores [nq,k], idx [nq,k], largest database row norm)."""
    q, db, k, bq, bdb, tile = check_search_args(queries, database, k, query_block, db_block, tile, selection)
    if mesh is None:
        mesh = make_search_mesh()
    if db_axis not in mesh.axis_names or (query_axis is not None and query_axis not in mesh.axis_names):
        raise ValueError(f"mesh axes {mesh.axis_names} lack db_axis={db_axis!r} or query_axis={query_axis!r}")
    n_db = mesh.shape[db_axis]
    n_q = mesh.shape[query_axis] if query_axis else 1
    d = q.d
    # Database geometry: each device gets rows_per_dev rows of every chunk (a multiple of bdb).
    per_dev_rows = -(-db.n // n_db)
    bdb = min(bdb, _round_up(per_dev_rows, 8))
    if db_chunk_rows is None:
        db_chunk_rows = default_chunk_rows(bdb, d)
    rows_per_dev = min(_round_up(check_block(db_chunk_rows, "db_chunk_rows"), bdb), _round_up(per_dev_rows, bdb))
    chunk_rows = rows_per_dev * n_db
    n_chunks = -(-db.n // chunk_rows)
    # Queries: each query shard is a whole number of query blocks.
    per_q = -(-q.n // n_q)
    bq = min(bq, _round_up(per_q, 8))
    nq_pad = _round_up(per_q, bq) * n_q

    def read_q(idx):
        sl = idx[0]
        a, b = sl.start or 0, sl.stop if sl.stop is not None else nq_pad
        hi = min(b, q.n)
        blk = q.read(a, hi) if hi > a else np.zeros((0, d), np.float32)
        return np.concatenate([np.asarray(blk), np.zeros((b - a - blk.shape[0], d), np.float32)])

    qdev = _global_array(mesh, P(query_axis, None), (nq_pad, d), read_q)

    def read_chunk(c):
        base = c * chunk_rows

        def read(idx):
            sl = idx[0]
            a, b = base + (sl.start or 0), base + (sl.stop if sl.stop is not None else chunk_rows)
            hi = min(b, db.n)
            blk = db.read(a, hi) if hi > a else np.zeros((0, d), np.float32)
            return np.concatenate([np.asarray(blk), np.zeros((b - a - blk.shape[0], d), np.float32)])

        return _global_array(mesh, P(db_axis, None), (chunk_rows, d), read)

    static = dict(k=k, bq=bq, bdb=bdb, precision=precision, selection=selection, tile=tile, count=False)
    assert set(static) == set(STEP_STATIC)
    step = _compiled(mesh, db_axis, query_axis, rows_per_dev, tuple(sorted(static.items())))
    run_sh = NamedSharding(mesh, P(db_axis, query_axis, None))
    init = jax.jit(lambda: (jnp.full((n_db, nq_pad, k), _NEG_INF, jnp.float32),
                            jnp.full((n_db, nq_pad, k), -1, jnp.int32),
                            jnp.zeros((n_db, nq_pad), jnp.int32)),
                   out_shardings=(run_sh, run_sh, NamedSharding(mesh, P(db_axis, query_axis))))
    rs, ri, rc = init()
    ndb_arr, tau_arr = jnp.int32(db.n), jnp.float32(0.0)
    nxt = read_chunk(0)
    dmax2 = []
    for c in range(n_chunks):
        cur = nxt
        rs, ri, rc, m2 = step(qdev, cur, jnp.int32(c * chunk_rows), ndb_arr, tau_arr, rs, ri, rc)
        dmax2.append(m2)
        if c + 1 < n_chunks:
            nxt = read_chunk(c + 1)  # overlaps the asynchronously dispatched step
        rs.block_until_ready()  # at most 2 chunks alive (see exact.py)
    fs, fi = _compiled_final(mesh, db_axis, query_axis, k)(rs, ri)
    out_s, out_i = _to_host(fs)[: q.n], _to_host(fi)[: q.n]
    if not np.isfinite(out_s).all():
        raise ValueError("scores overflowed float32 (inputs too large in magnitude); rescale the embeddings")
    dmax = float(np.sqrt(max(float(_to_host(m)) for m in dmax2)))
    return out_s, out_i, dmax
