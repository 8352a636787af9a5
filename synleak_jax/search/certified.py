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
    bad = np.nonzero(~ok)[0]
    if len(bad):
        fs, fi = exact_rows(bad)
        out_s[bad], out_i[bad] = fs, fi
    stats.queries += q.n
    stats.fallback_queries += len(bad)
    return out_s, out_i


# ----------------------------------------------------------------------------------------------------------
# Group-max screening (screen="groups", the default of precision="bf16_certified")
# ----------------------------------------------------------------------------------------------------------
#
# The per-tile top-(k + margin + 1) selection of the candidate screen above costs more than the bf16 matmul on
# CPU. Here the screen keeps only the maximum bf16 score of every group of `group` consecutive database rows
# (a reduction, no selection), for the whole database: [query_block, ndb / group] floats. One lax.top_k per query
# block then picks the T = k + margin groups with the largest maxima; all T * group rows of those groups are
# rescored exactly in float32 on the device (gather + dot, HIGHEST). Every row outside the chosen groups has a
# screened score <= its group's maximum <= m_b := the (T+1)-th largest group maximum, so the certificate of the
# module docstring applies unchanged with this m_b.


def _screen_groups_impl(qf, db16, ndb, *, t: int, group: int, bdb: int):
    """bf16 screen + group selection for one query block.

    qf: [bq, D] float32 queries (bq a multiple of `sub`);
    db16: [nb * bdb, D] bfloat16 database, zero-padded; ndb: int32 valid rows.
    Returns (gv [bq, min(t + 1, groups)] f32 largest group maxima, descending; gsel [bq, min(t + 1, groups)]
    int32 their group ids). gv[:, t] is m_b, the largest maximum of a group that is not rescored.
    """
    from jax import lax
    import jax.numpy as jnp

    bq, d = qf.shape
    nb = db16.shape[0] // bdb
    gpt = bdb // group  # groups per tile
    q16 = qf.astype(jnp.bfloat16)
    tiles = db16.reshape(nb, bdb, d)

    def body(carry, j):
        s = lax.dot_general(q16, tiles[j], (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32)
        return carry, s.reshape(bq, gpt, group).max(axis=2)

    _, gm = lax.scan(body, None, jnp.arange(nb))  # [nb, bq, gpt]
    gm = gm.transpose(1, 0, 2).reshape(bq, nb * gpt)
    gstart = jnp.arange(nb * gpt, dtype=jnp.int32) * group
    gm = jnp.where((gstart < ndb)[None, :], gm, -jnp.inf)  # groups made only of padding rows
    ng = nb * gpt
    tt = min(t + 1, ng)
    # Returned whole: slicing top_k's outputs inside this program stops XLA CPU from rewriting the sort into its
    # TopK kernel (measured 8x slower screen). The caller slices.
    return lax.top_k(gm, tt)


def _rescore_groups_impl(qf, dbf, gsel, ndb, *, k: int, t: int, group: int, sub: int):
    """Exact float32 rescoring of whole row groups. qf [bq, D] f32; dbf [round_up(ndb, group), D] f32;
    gsel [bq, >= min(t, groups)] int32 group ids by decreasing maximum (the first t are rescored). Returns (scores [bq, k] desc, indices [bq, k] int32; ties ->
    lower index). Kept out of the screening jit: fused into one program, XLA CPU ran it ~5x slower (measured)."""
    from jax import lax
    import jax.numpy as jnp

    bq, d = qf.shape
    gsel = jnp.sort(gsel[:, :t], axis=1)  # index order, so top_k's lower-position rule = lower index
    rows = (gsel[:, :, None] * group + jnp.arange(group, dtype=jnp.int32)).reshape(bq, -1)  # [bq, T*group]

    dbg = dbf.reshape(dbf.shape[0] // group, group, d)  # [groups, group, D]; dbf is padded to a multiple

    def rescore_sub(args):
        qs, gs, rs = args  # [sub, D], [sub, T], [sub, T*group]
        x = dbg[gs]  # [sub, T, group, D]: contiguous row groups, a cheap gather
        sc = jnp.einsum("btgd,bd->btg", x, qs, precision=lax.Precision.HIGHEST,
                        preferred_element_type=jnp.float32).reshape(qs.shape[0], -1)
        sc = jnp.where(sc == 0.0, 0.0, sc)  # -0.0 -> +0.0 for the tie rule
        return jnp.where(rs < ndb, sc, -jnp.inf)  # padding rows never win

    sc = lax.map(rescore_sub, (qf.reshape(bq // sub, sub, d), gsel.reshape(bq // sub, sub, -1),
                               rows.reshape(bq // sub, sub, -1)))
    sc = sc.reshape(bq, -1)
    ts, pos = lax.top_k(sc, k)
    return ts, jnp.take_along_axis(rows, pos, axis=1)


def grouped_certified_topk(q, db, k: int, margin: int, group: int, query_block: int, db_block: int,
                           exact_rows, stats, sub: int = 32):
    """Certified top-k with group-max screening. q, db: exact.Source; exact_rows(rows) -> float32 (scores, idx)
    for those query rows (the fallback); stats: SearchStats. The database must fit in device memory (float32 +
    a bfloat16 copy). Returns (scores [nq, k] float32, indices [nq, k] int32)."""
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
    nb = -(-db.n // bdb)
    # float32 rows for the exact rescoring, zero-padded to whole groups (read() validates finiteness)
    dbf = jax.device_put(db.read(0, db.n, pad_to=_round_up(db.n, group)))
    db16, dmax2 = _to_bf16_padded(dbf, nb * bdb)
    dmax = float(np.sqrt(float(dmax2)))
    screen = functools.partial(_screen_groups, t=t, group=group, bdb=bdb)
    rescore_fn = functools.partial(_rescore_groups, k=k, t=t, group=group, sub=sub)
    ndb_arr = jnp.int32(db.n)
    c = relative_bound(q.d)
    out_s = np.empty((q.n, k), np.float32)
    out_i = np.empty((q.n, k), np.int32)
    ok = np.empty(q.n, bool)
    pending = None
    for a in range(0, q.n, bq):
        b = min(q.n, a + bq)
        qb = q.read(a, b, pad_to=bq)
        qdev = jax.device_put(qb)
        gv, gsel = screen(qdev, db16, ndb_arr)  # dispatched asynchronously
        res = rescore_fn(qdev, dbf, gsel, ndb_arr) + (gv,)
        if pending is not None:
            _finish(pending, out_s, out_i, ok, c, dmax, t)
        pending = (a, b, np.asarray(qb, np.float32)[: b - a], res)
    _finish(pending, out_s, out_i, ok, c, dmax, t)
    del dbf, db16
    bad = np.nonzero(~ok)[0]
    if len(bad):
        fs, fi = exact_rows(bad)
        out_s[bad], out_i[bad] = fs, fi
    stats.queries += q.n
    stats.fallback_queries += len(bad)
    if not np.isfinite(out_s).all():
        raise ValueError("scores overflowed float32 (inputs too large in magnitude); rescale the embeddings")
    return out_s, out_i


def _finish(pending, out_s, out_i, ok, c, dmax, t):
    """Copy one block's result out and evaluate its certificate (float64): m_b + bound < k-th exact score."""
    a, b, qb, (ts, ti, gv) = pending
    n = b - a
    gv = np.asarray(gv)
    m_b = gv[:n, t] if gv.shape[1] > t else np.full(n, -np.inf)  # every group rescored: nothing discarded
    out_s[a:b] = np.asarray(ts)[:n]
    out_i[a:b] = np.asarray(ti)[:n]
    bound = c * np.linalg.norm(qb.astype(np.float64), axis=1) * dmax
    ok[a:b] = m_b.astype(np.float64) + bound < out_s[a:b, -1].astype(np.float64)


def _to_bf16_padded_impl(dbf, rows: int):
    import jax.numpy as jnp

    d16 = dbf.astype(jnp.bfloat16)
    d16 = jnp.pad(d16, ((0, rows - dbf.shape[0]), (0, 0)))  # padding rows are zero (masked by group start)
    return d16, jnp.max(jnp.sum(jnp.square(dbf), axis=1))


import jax as _jax  # noqa: E402  (kept below the numpy-only helpers above)

_to_bf16_padded = _jax.jit(_to_bf16_padded_impl, static_argnums=1)
_screen_groups = _jax.jit(_screen_groups_impl, static_argnames=("t", "group", "bdb"))
_rescore_groups = _jax.jit(_rescore_groups_impl, static_argnames=("k", "t", "group", "sub"))
