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
