"""bf16 screening with a certified float32 result (precision="bf16_certified").

1. Screening pass (the blockwise kernel with bf16 x bf16 -> float32 matmuls): per query the k' + 1 best
   screened scores s_b, k' = k + margin. Every row outside the first k' has s_b <= m_b := the (k'+1)-th value.
2. Rescoring: the k' candidates are rescored in float32 (gather + one float32 dot per candidate) and the best k taken by
   (score desc, index asc).
3. Certificate, per query: accepted when m_b + bound < (k-th rescored score), strictly, where

       bound = c(D) ||q||_2 max_j ||d_j||_2,
       c(D)  = 1.01 ((2u + u^2) + 2 gamma_D (1+u)^2),  u = 2^-8 (bf16), gamma_D = D u32 / (1 - D u32), u32 = 2^-24.

   Derivation: bf16(x) = x(1+e) with |e| <= u, so |q~_i d~_i - q_i d_i| <= (2u+u^2)|q_i d_i|; products of bf16
   values are exact in float32; summing D terms in float32 (any order) errs by at most gamma_D sum|q~_i d~_i|
   <= gamma_D (1+u)^2 sum|q_i d_i|; sum|q_i d_i| <= ||q|| ||d|| (Cauchy-Schwarz). So a discarded row's exact
   score is <= m_b + (2u+u^2+gamma_D(1+u)^2)||q|| ||d||, and any float32 evaluation of it is at most
   gamma_D ||q|| ||d|| above that: it cannot beat the k-th rescored score. The 1% covers the float32 error
   of the norms themselves (~D u32 relative).
4. Queries that fail the certificate are recomputed with the float32 kernel (counted as fallbacks).

Result: the float32 top-k (up to scores that tie within float32 rounding, where no float32 evaluation
order is privileged) — on any data, including adversarial near-ties, which only cost fallbacks.
"""

from __future__ import annotations

import numpy as np

U_BF16 = 2.0 ** -8
U_F32 = 2.0 ** -24


def relative_bound(dim: int) -> float:
    """c(D) with |float32-evaluated score - bf16 screened score| <= c(D) ||q|| ||d|| (module docstring)."""
    g = dim * U_F32 / (1.0 - dim * U_F32)
    return 1.01 * ((2 * U_BF16 + U_BF16 ** 2) + 2.0 * g * (1 + U_BF16) ** 2)


def rescore(qb: np.ndarray, cand: np.ndarray, db, k: int):
    """Float32 rescoring of candidates. qb [b, D] f32, cand [b, k'] database rows; db: Source.

    Returns (scores [b, k] f32 desc, indices [b, k] int32; ties -> lower index)."""
    uniq, inv = np.unique(cand, return_inverse=True)
    rows = db.take(uniq)  # [u, D] float32, each candidate row read once per block
    inv = inv.reshape(cand.shape)
    # one float32 dot per (query, candidate): [b, k', D] x [b, D, 1] batched matmul
    sc = np.matmul(rows[inv], qb[:, :, None])[..., 0]
    gi = uniq[inv]
    order = np.argsort(gi, axis=1, kind="stable")  # index order first ...
    sc, gi = np.take_along_axis(sc, order, 1), np.take_along_axis(gi, order, 1)
    order = np.argsort(-sc, axis=1, kind="stable")[:, :k]  # ... so equal scores keep the lower index
    return np.take_along_axis(sc, order, 1).astype(np.float32), np.take_along_axis(gi, order, 1).astype(np.int32)


def _fall_back(ok: np.ndarray, out_s: np.ndarray, out_i: np.ndarray, exact_rows, stats) -> None:
    """Recomputes the uncertified queries (``ok`` False) in float32, in place, and counts them in ``stats``."""
    bad = np.nonzero(~ok)[0]
    if len(bad):
        out_s[bad], out_i[bad] = exact_rows(bad)
    stats.queries += len(ok)
    stats.fallback_queries += len(bad)


def certified_topk(q, db, k: int, margin: int, screen, exact_rows, stats, rescore_block: int = 512):
    """Certified top-k. q, db: exact.Source; screen(kk) -> (scores [nq,kk], idx [nq,kk], max row norm of db)
    from the bf16 pass; exact_rows(rows) -> float32 (scores, idx) for those query rows; stats: SearchStats."""
    from synleak_jax.search.exact import check_k

    k = check_k(k, db.n)
    if isinstance(margin, bool) or not isinstance(margin, (int, np.integer)) or margin < 0:
        raise ValueError(f"margin must be a non-negative integer, got {margin!r}")
    kp = min(k + int(margin), db.n)
    discard = kp < db.n
    ss, si, dmax = screen(kp + 1 if discard else kp)
    m_b = ss[:, kp].astype(np.float64) if discard else np.full(q.n, -np.inf)
    c = relative_bound(q.d)
    out_s = np.empty((q.n, k), np.float32)
    out_i = np.empty((q.n, k), np.int32)
    ok = np.empty(q.n, bool)
    for a in range(0, q.n, rescore_block):
        b = min(q.n, a + rescore_block)
        qb = np.asarray(q.read(a, b), np.float32)
        out_s[a:b], out_i[a:b] = rescore(qb, si[a:b, :kp], db, k)
        bound = c * np.linalg.norm(qb.astype(np.float64), axis=1) * dmax
        ok[a:b] = m_b[a:b] + bound < out_s[a:b, k - 1].astype(np.float64)
    _fall_back(ok, out_s, out_i, exact_rows, stats)
    return out_s, out_i


# ----------------------------------------------------------------------------------------------------------
# Group-max screening (screen="groups", the default of precision="bf16_certified")
# ----------------------------------------------------------------------------------------------------------
#
# The per-tile top-(k + margin + 1) selection of the candidate screen above costs more than the bf16 matmul on
# CPU. Here the screen keeps only the maximum bf16 score of every group of `group` consecutive database rows
# (a reduction, no selection). A running top-(T + 1) of the group maxima (T = k + margin) is merged once per
# `MERGE_GROUPS` groups, so at most [query_block, MERGE_GROUPS] maxima exist at a time. All T * group rows of
# the T best groups are rescored exactly in float32 on the device (gather + dot, HIGHEST). Every row outside the
# chosen groups has a screened score <= its group's maximum <= m_b := the (T+1)-th largest group maximum, so the
# certificate of the module docstring applies unchanged with this m_b.
#
# Memory: the float32 database is the only copy of it. It is put on the device whole (aliased, not copied, when
# it is a 64-byte-aligned float32 numpy array on CPU, see hostmem.py) and every tile is converted to bfloat16
# inside the scan (converting once per call would hold a second, bf16 copy: 0.5x the database). Group ids are
# row // group; rows past the last whole tile are screened as one zero-padded tail tile built inside the
# program, so the database is never padded.

MERGE_GROUPS = 2048  # group maxima per running top-k merge (bounds the screen's scratch memory)


def _screen_groups_impl(qf, dbf, *, ndb: int, t: int, group: int, bdb: int, ct: int):
    """bf16 screen + group selection for one query block.

    qf: [bq, D] float32 queries; dbf: [n, D] float32 database, n >= ndb (rows >= ndb are ignored);
    bdb: rows per tile, a multiple of group; ct: tiles per running top-k merge.
    Returns (gv [bq, t + 1] f32 largest group maxima, descending; gsel [bq, t + 1] int32 their group ids).
    gv[:, t] is m_b, the largest maximum of a group that is not rescored. Entries past the number of groups
    have gv = -inf and gsel = ceil(ndb / group) (no such group).
    """
    from jax import lax
    import jax.numpy as jnp

    bq, d = qf.shape
    n = dbf.shape[0]
    nbf = n // bdb  # whole tiles
    gpt = bdb // group  # groups per tile
    n_groups = -(-ndb // group)
    q16 = qf.astype(jnp.bfloat16)

    def group_max(rows, row0):
        """[bq, rows.shape[0] / group] maxima of bf16 scores; groups starting at or past ndb -> -inf."""
        s = lax.dot_general(q16, rows.astype(jnp.bfloat16), (((1,), (1,)), ((), ())),
                            preferred_element_type=jnp.float32)
        gm = s.reshape(bq, -1, group).max(axis=2)
        gstart = row0 + group * jnp.arange(gm.shape[1], dtype=jnp.int32)
        return jnp.where((gstart < ndb)[None, :], gm, -jnp.inf)

    def merge(run, gm, gid0):
        rv, ri = run
        v = jnp.concatenate([rv, gm], axis=1)  # running list first: ties keep the lower group id
        ids = jnp.concatenate([ri, jnp.broadcast_to(gid0 + jnp.arange(gm.shape[1], dtype=jnp.int32),
                                                     gm.shape)], axis=1)
        tv, pos = lax.top_k(v, t + 1)
        return tv, jnp.take_along_axis(ids, pos, axis=1)

    run = (jnp.full((bq, t + 1), -jnp.inf, jnp.float32), jnp.full((bq, t + 1), n_groups, jnp.int32))
    if nbf:
        nsc = -(-nbf // ct)  # super-chunks of ct tiles (the last one may repeat a clamped tile, masked)
        ct = -(-nbf // nsc)  # balanced: at most nsc - 1 wasted tiles

        def outer(run, c):
            def tile(_, j):
                jj = c * ct + j
                row0 = jnp.minimum(jj, nbf - 1) * bdb
                gm = group_max(lax.dynamic_slice_in_dim(dbf, row0, bdb), row0)
                return None, jnp.where(jj < nbf, gm, -jnp.inf)  # a repeated tile counts once

            _, gm = lax.scan(tile, None, jnp.arange(ct))  # [ct, bq, gpt]
            return merge(run, gm.transpose(1, 0, 2).reshape(bq, ct * gpt), c * ct * gpt), None

        run, _ = lax.scan(outer, run, jnp.arange(nsc))
    if n > nbf * bdb:  # tail rows, zero-padded to whole groups inside the program
        tail = dbf[nbf * bdb:]
        tail = jnp.pad(tail, ((0, (-tail.shape[0]) % group), (0, 0)))
        run = merge(run, group_max(tail, nbf * bdb), nbf * gpt)
    return run


def _rescore_groups_impl(qf, dbf, gsel, *, ndb: int, k: int, t: int, group: int, sub: int):
    """Exact float32 rescoring of whole row groups.

    qf [bq, D] f32; dbf [n, D] f32 with group <= n, rows >= ndb ignored; gsel [bq, >= t] int32 group ids by
    decreasing maximum (the first t are rescored; ids >= ceil(ndb / group) are no group and never returned).
    Returns (scores [bq, k] desc, indices [bq, k] int32; ties -> lower index). Kept out of the screening jit:
    fused into one program, XLA CPU ran it ~5x slower (measured)."""
    import jax
    from jax import lax
    import jax.numpy as jnp

    bq, d = qf.shape
    n = dbf.shape[0]
    gsel = jnp.sort(gsel[:, :t], axis=1)  # index order, so top_k's lower-position rule = lower index
    # A group is gathered as `group` rows from start = min(g * group, n - group): the last, partial group is
    # read shifted back over its predecessor, whose rows (< g * group) are masked out, as are rows >= ndb.
    first = gsel * group
    start = jnp.minimum(first, n - group)
    rows = start[:, :, None] + jnp.arange(group, dtype=jnp.int32)  # [bq, t, group]
    valid = (rows >= first[:, :, None]) & (rows < ndb)
    take = jax.vmap(jax.vmap(lambda s0: lax.dynamic_slice_in_dim(dbf, s0, group)))

    def rescore_sub(args):
        qs, st, ok = args  # [sub, D], [sub, t], [sub, t, group]
        sc = jnp.einsum("btgd,bd->btg", take(st), qs, precision=lax.Precision.HIGHEST,
                        preferred_element_type=jnp.float32)
        sc = jnp.where(sc == 0.0, 0.0, sc)  # -0.0 -> +0.0 for the tie rule
        return jnp.where(ok, sc, -jnp.inf)  # masked rows never win (k <= ndb valid rows are always rescored)

    sc = lax.map(rescore_sub, (qf.reshape(bq // sub, sub, d), start.reshape(bq // sub, sub, t),
                               valid.reshape(bq // sub, sub, t, group)))
    ts, pos = lax.top_k(sc.reshape(bq, t * group), k)
    return ts, jnp.take_along_axis(rows.reshape(bq, t * group), pos, axis=1)


def grouped_certified_topk(q, db, k: int, margin: int, group: int, query_block: int, db_block: int,
                           exact_rows, stats, sub: int = 16):
    """Certified top-k with group-max screening. q, db: exact.Source; exact_rows(rows) -> float32 (scores, idx)
    for those query rows (the fallback); stats: SearchStats. The float32 database must fit in device memory
    (`Source.device_array`: aliased when aligned on CPU, else one copy). Returns (scores [nq, k] float32,
    indices [nq, k] int32)."""
    import functools

    import jax
    import jax.numpy as jnp

    from synleak_jax.search.exact import _round_up, check_block, check_k

    k = check_k(k, db.n)
    if isinstance(margin, bool) or not isinstance(margin, (int, np.integer)) or margin < 0:
        raise ValueError(f"margin must be a non-negative integer, got {margin!r}")
    group = check_block(group, "group")
    t = k + int(margin)  # groups rescored per query
    bdb = _round_up(min(check_block(db_block, "db_block"), _round_up(db.n, group)), group)
    bq = _round_up(min(check_block(query_block, "query_block"), _round_up(q.n, sub)), sub)
    dbf = db.device_array()
    dmax2 = float(_max_sq_norm(dbf))
    if not np.isfinite(dmax2):
        db.raise_if_nonfinite()  # names the NaN/inf row; if none, squares overflowed: every query falls back
    if db.n < group:  # the rescoring gathers `group` rows at a time
        dbf = jnp.pad(dbf, ((0, group - db.n), (0, 0)))
    dmax = float(np.sqrt(dmax2))
    screen = functools.partial(_screen_groups, ndb=db.n, t=t, group=group, bdb=bdb,
                               ct=max(1, MERGE_GROUPS * group // bdb))
    rescore_fn = functools.partial(_rescore_groups, ndb=db.n, k=k, t=t, group=group, sub=sub)
    c = relative_bound(q.d)
    out_s = np.empty((q.n, k), np.float32)
    out_i = np.empty((q.n, k), np.int32)
    ok = np.empty(q.n, bool)
    pending = None
    for a in range(0, q.n, bq):
        b = min(q.n, a + bq)
        qb = q.read(a, b, pad_to=bq)
        qdev = jax.device_put(qb)
        gv, gsel = screen(qdev, dbf)  # dispatched asynchronously
        res = rescore_fn(qdev, dbf, gsel) + (gv,)
        if pending is not None:
            _finish(pending, out_s, out_i, ok, c, dmax, t)
        pending = (a, b, np.asarray(qb, np.float32)[: b - a], res)
    _finish(pending, out_s, out_i, ok, c, dmax, t)
    del dbf
    _fall_back(ok, out_s, out_i, exact_rows, stats)
    if not np.isfinite(out_s).all():
        raise ValueError("scores overflowed float32 (inputs too large in magnitude); rescale the embeddings")
    return out_s, out_i


def _finish(pending, out_s, out_i, ok, c, dmax, t):
    """Copy one block's result out and evaluate its certificate (float64): m_b + bound < k-th exact score."""
    a, b, qb, (ts, ti, gv) = pending
    n = b - a
    m_b = np.asarray(gv)[:n, t]  # -inf when every group is rescored: nothing discarded
    out_s[a:b] = np.asarray(ts)[:n]
    out_i[a:b] = np.asarray(ti)[:n]
    bound = c * np.linalg.norm(qb.astype(np.float64), axis=1) * dmax
    ok[a:b] = m_b.astype(np.float64) + bound < out_s[a:b, -1].astype(np.float64)


def _max_sq_norm_impl(dbf):
    """Largest squared row norm of [n, D] float32 (NaN when a row holds NaN: XLA's max propagates it)."""
    import jax.numpy as jnp

    return jnp.max(jnp.sum(jnp.square(dbf), axis=1))


import jax as _jax  # noqa: E402  (kept below the numpy-only helpers above)

_max_sq_norm = _jax.jit(_max_sq_norm_impl)
_screen_groups = _jax.jit(_screen_groups_impl, static_argnames=("ndb", "t", "group", "bdb", "ct"))
_rescore_groups = _jax.jit(_rescore_groups_impl, static_argnames=("ndb", "k", "t", "group", "sub"))
