"""bf16 screening with a certified float32 result (precision="bf16_certified").

1. Screening pass (a tile-engine pass with bf16 x bf16 -> float32 matmuls) keeps, per query, either the best
   k' + 1 screened rows (screen="candidates", k' = k + margin) or the largest maxima of T + 1 groups of
   ``group`` consecutive database rows (screen="groups", T = k + margin). Every row outside the kept ones has a
   screened score s_b <= m_b := the last kept value.
2. Rescoring: the kept candidates (rows, or every row of the first T groups) are rescored in float32 and the best
   k taken by (score desc, index asc).
3. Certificate, per query: accepted when m_b + bound < (k-th rescored score), strictly, where

       bound = c(D) ||q||_2 max_j ||d_j||_2,
       c(D)  = 1.01 ((2u + u^2) + 2 gamma_D (1+u)^2),  u = 2^-8 (bf16), gamma_D = D u32 / (1 - D u32), u32 = 2^-24.

   Derivation: bf16(x) = x(1+e) with |e| <= u, so |q~_i d~_i - q_i d_i| <= (2u+u^2)|q_i d_i|; products of bf16
   values are exact in float32; summing D terms in float32 (any order) errs by at most gamma_D sum|q~_i d~_i|
   <= gamma_D (1+u)^2 sum|q_i d_i|; sum|q_i d_i| <= ||q|| ||d|| (Cauchy-Schwarz). So a discarded row's exact
   score is <= m_b + (2u+u^2+gamma_D(1+u)^2)||q|| ||d||, and any float32 evaluation of it is at most
   gamma_D ||q|| ||d|| above that: it cannot beat the k-th rescored score. The 1% covers the float32 error
   of the norms themselves (~D u32 relative).
4. Queries that fail the certificate are recomputed with the float32 pass (counted as fallbacks).

Result: the float32 top-k (up to scores that tie within float32 rounding, where no float32 evaluation order is
privileged) — on any data, including adversarial near-ties, which only cost fallbacks.

This module holds the bound, the rescoring kernels and the certificate; the screens are tile-engine passes
(``engine.py``) and ``exact.py`` drives them.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from synleak_jax.search.engine import ROWS

U_BF16 = 2.0 ** -8
U_F32 = 2.0 ** -24


def relative_bound(dim: int) -> float:
    """c(D) with |float32-evaluated score - bf16 screened score| <= c(D) ||q|| ||d|| (module docstring)."""
    g = dim * U_F32 / (1.0 - dim * U_F32)
    return 1.01 * ((2 * U_BF16 + U_BF16 ** 2) + 2.0 * g * (1 + U_BF16) ** 2)


def certify(m_b: np.ndarray, kth_exact: np.ndarray, query_norms: np.ndarray, max_db_norm: float, dim: int
            ) -> np.ndarray:
    """bool [nq]: the certificate m_b + c(D) ||q|| max||d|| < k-th exact score, evaluated in float64."""
    bound = relative_bound(dim) * np.asarray(query_norms, np.float64) * max_db_norm
    return np.asarray(m_b, np.float64) + bound < np.asarray(kth_exact, np.float64)


def rescore_candidates(qb: np.ndarray, cand: np.ndarray, db, k: int):
    """Float32 host rescoring of candidate rows. qb [b, D] f32, cand [b, k'] database rows; db: engine.Source.

    Returns (scores [b, k] f32 desc, indices [b, k] int32; ties -> lower index)."""
    uniq, inv = np.unique(cand, return_inverse=True)
    rows = db.take(uniq)  # [u, D] float32, each candidate row read once per block
    inv = inv.reshape(cand.shape)
    sc = np.matmul(rows[inv], qb[:, :, None])[..., 0]  # one float32 dot per (query, candidate)
    gi = uniq[inv]
    order = np.argsort(gi, axis=1, kind="stable")  # index order first ...
    sc, gi = np.take_along_axis(sc, order, 1), np.take_along_axis(gi, order, 1)
    order = np.argsort(-sc, axis=1, kind="stable")[:, :k]  # ... so equal scores keep the lower index
    return np.take_along_axis(sc, order, 1).astype(np.float32), np.take_along_axis(gi, order, 1).astype(np.int32)


def _rescore_groups_block(qf, dbf, gsel, *, ndb: int, k: int, t: int, group: int, sub: int):
    """Exact float32 rescoring of whole row groups for one block of queries.

    qf [bq, D] f32; dbf [n, D] f32 with group <= n, rows >= ndb ignored; gsel [bq, >= t] int32 group ids by
    decreasing maximum (the first t are rescored; ids >= ceil(ndb / group) are no group and never returned).
    Returns (scores [bq, k] desc, indices [bq, k] int32; ties -> lower index). Kept out of the screening
    program: fused into one program, XLA CPU ran it ~5x slower (measured).
    """
    bq, d = qf.shape
    n = dbf.shape[0]
    gsel = jnp.sort(gsel[:, :t], axis=1)  # index order, so top_k's lower-position rule = lower index
    # A group is gathered as `group` rows from start = min(g * group, n - group): the last, partial group is
    # read shifted back over its predecessor, whose rows (< g * group) are masked out, as are rows >= ndb.
    first = gsel * group
    start = jnp.minimum(first, n - group)
    rows = start[:, :, None] + jnp.arange(group, dtype=jnp.int32)  # [bq, t, group]
    valid = (rows >= first[:, :, None]) & (rows < ndb) & (gsel >= 0)[:, :, None]
    take = jax.vmap(jax.vmap(lambda s0: lax.dynamic_slice_in_dim(dbf, s0, group)))

    def rescore_sub(args):
        qs, st, ok = args  # [sub, D], [sub, t], [sub, t, group]
        sc = jnp.einsum("btgd,bd->btg", take(jnp.maximum(st, 0)), qs, precision=lax.Precision.HIGHEST,
                        preferred_element_type=jnp.float32)
        sc = jnp.where(sc == 0.0, 0.0, sc)  # -0.0 -> +0.0 for the tie rule
        return jnp.where(ok, sc, -jnp.inf)  # masked rows never win (k <= ndb valid rows are always rescored)

    sc = lax.map(rescore_sub, (qf.reshape(bq // sub, sub, d), start.reshape(bq // sub, sub, t),
                               valid.reshape(bq // sub, sub, t, group)))
    ts, pos = lax.top_k(sc.reshape(bq, t * group), k)
    return ts, jnp.take_along_axis(rows.reshape(bq, t * group), pos, axis=1)


@functools.lru_cache(maxsize=16)
def rescore_groups_fn(mesh: Mesh, ndb: int, k: int, t: int, group: int, sub: int):
    """jit(shard_map) of :func:`_rescore_groups_block`: queries [G*b, D] and group ids sharded over "rows", the
    float32 database [n, D] replicated (resident on every device)."""
    def local(qf, dbf, gsel):
        return _rescore_groups_block(qf, dbf, gsel, ndb=ndb, k=k, t=t, group=group, sub=sub)

    fn = jax.shard_map(local, mesh=mesh, in_specs=(P(ROWS), P(), P(ROWS)), out_specs=(P(ROWS), P(ROWS)),
                       check_vma=False)
    return jax.jit(fn)


