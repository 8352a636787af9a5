"""bf16 screening with a certified float32 result (the tile kernel behind precision="bf16_certified").

Per tile (query block x database block):
1. screen: s_b = bf16(q) . bf16(d) with float32 accumulation  [bq, bdb];
2. keep the k' best columns per row (k' = k + margin) and note the best discarded screened score m_b;
3. rescore the k' candidates in float32 (gather + float32 dot) and merge them into the running top-k;
4. certify per row: every discarded column's float32 score is below the new running k-th score, using

       |q.d - s_b| <= ||q||_2 ||d||_2 ((2u + u^2) + gamma_D (1+u)^2)          (bf16 rounding + f32 summation)
       |fl32(q.d) - q.d| <= gamma_D ||q||_2 ||d||_2                             (any float32 summation order)

   with u = 2^-8 (bf16 unit roundoff: 8 significant bits), gamma_D = D u32 / (1 - D u32), u32 = 2^-24.
   Derivation: bf16(x) = x(1+e), |e| <= u, so |q~_i d~_i - q_i d_i| <= (2u+u^2)|q_i d_i|; products of bf16
   values are exact in float32; summing D terms in float32 errs by at most gamma_D sum|q~_i d~_i|
   <= gamma_D (1+u)^2 sum|q_i d_i|; and sum|q_i d_i| <= ||q|| ||d|| (Cauchy-Schwarz). ||d|| is replaced by the
   block's largest row norm, the total is inflated by 1% (covers the float32 error of the norms themselves,
   ~D u32 relative) plus a tiny absolute term (bf16 flushing of subnormals).
   The tile is accepted when, for every row, m_b + bound < new k-th score (strict). Otherwise the whole tile is
   recomputed with a float32 matmul and the fallback counter is incremented.

Result: the same top-k as the float32 path (up to scores that tie within float32 rounding, where no float32
computation order is privileged).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

U_BF16 = 2.0 ** -8
U_F32 = 2.0 ** -24
_NEG_INF = float("-inf")


def relative_bound(dim: int) -> float:
    """Coefficient c with |score_bf16 - score_f32| <= c ||q|| ||d|| for D = dim (see module docstring)."""
    g = dim * U_F32 / (1.0 - dim * U_F32)
    return 1.01 * ((2 * U_BF16 + U_BF16 ** 2) + 2.0 * g * (1 + U_BF16) ** 2)


def prepare_db(dbb):
    """dbb [nb, bdb, D] float32 -> {"d16": bf16 copy, "dmax": [nb] largest row norm per block}."""
    return {"d16": dbb.astype(jnp.bfloat16), "dmax": jnp.sqrt(jnp.max(jnp.sum(dbb * dbb, axis=2), axis=1))}


def prepare_queries(qblk):
    """qblk [bq, D] -> (bf16 copy, row norms [bq])."""
    return qblk.astype(jnp.bfloat16), jnp.sqrt(jnp.sum(qblk * qblk, axis=1))


def certified_tile(qblk, qaux, dblk, daux, cols, valid, rs, ri, *, k, kprime, selection, tile):
    """One certified tile. qblk [bq, D] f32, dblk [bdb, D] f32, cols [bdb] global indices, valid [bdb] bool,
    rs/ri running [bq, k]. Returns (rs, ri, fallback 0/1 int32, None)."""
    from synleak_jax.search.exact import _dot_f32, block_select, merge_topk

    q16, qnorm = qaux
    bdb, dim = dblk.shape
    s_b = lax.dot_general(q16, daux["d16"], (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32)
    s_b = jnp.where(valid[None, :], s_b, _NEG_INF)
    discard_any = kprime < bdb
    nsel = kprime + 1 if discard_any else kprime
    cs, cpos = block_select(s_b, nsel, selection, tile)
    if discard_any:
        m_b = cs[:, kprime]  # best discarded screened score per row
        cpos = cpos[:, :kprime]
    else:
        m_b = jnp.full(cs.shape[:1], _NEG_INF, jnp.float32)
    cpos = jnp.sort(cpos, axis=1)  # column order, so the stable top_k below breaks ties by lower index
    cand = jnp.take(dblk, cpos, axis=0)  # [bq, k', D]
    s_f = jnp.einsum("qd,qkd->qk", qblk, cand, precision=lax.Precision.HIGHEST,
                     preferred_element_type=jnp.float32)
    s_f = jnp.where(jnp.take(valid, cpos), s_f, _NEG_INF)
    kk = min(k, s_f.shape[1])
    bs, bp = lax.top_k(s_f, kk)
    new_s, new_i = merge_topk(rs, ri, bs, jnp.take_along_axis(cols[cpos], bp, axis=1), k)
    bound = relative_bound(dim) * qnorm * daux["dmax"] + 1e-30
    ok = jnp.all(m_b + bound < new_s[:, k - 1])

    def fallback(_):
        s = jnp.where(valid[None, :], _dot_f32(qblk, dblk), _NEG_INF)
        fs, fp = block_select(s, k, selection, tile)
        return merge_topk(rs, ri, fs, cols[fp], k)

    out_s, out_i = lax.cond(ok, lambda _: (new_s, new_i), fallback, None)
    return out_s, out_i, 1 - ok.astype(jnp.int32), None
