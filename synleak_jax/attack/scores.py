"""Score conventions and the blockwise pair-score histogram kernel.

Conventions (used everywhere in ``attack/``):

* A *score* is a similarity: larger means more alike. Cosine matchers: score = inner product of the
  (already L2-normalised) embeddings. Euclidean matchers (dlib): score = -distance, so that the same
  "larger is more similar" code serves both; :func:`to_native` turns a score back into the matcher's own
  units (the distance) for reports.
* A pair *matches* at threshold ``tau`` when ``score > tau`` (strictly). ``tau(FMR)`` is chosen so that at
  most ``floor(FMR * n_impostor)`` impostor pairs match (see ``calibration.py``).

The histogram kernel walks over pairs of embeddings block by block (a row block against every column block,
inside one jitted ``fori_loop``) and never holds more than one ``[block, block]`` score tile. It counts

* pairs within one labelled set (``mode="self"``: each unordered pair ``i < j`` once), or
* pairs across two sets (``mode="cross"``: every ``(a, b)``),

split into *genuine* (same label >= 0) and *impostor* (different labels) pairs, into ``nbins`` equal bins over
``[lo, hi)`` (scores outside are clipped into the end bins), plus the per-class sums needed for exact means and
variances. The same code can (a) restrict itself to one bin of a coarser histogram (for refining a quantile)
and (b) collect the exact scores that fall in a restricted bin into a fixed-capacity buffer.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from typing import Iterator

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

METRICS = ("cosine", "euclidean")


def check_metric(metric: str) -> str:
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    return metric


def to_native(metric: str, score):
    """Score (larger = more similar) -> the matcher's own units (cosine similarity, or Euclidean distance)."""
    check_metric(metric)
    if metric == "euclidean":
        return -np.asarray(score, dtype=np.float64) if not np.isscalar(score) else -float(score)
    return np.asarray(score, dtype=np.float64) if not np.isscalar(score) else float(score)


def from_native(metric: str, value):
    """Inverse of :func:`to_native`."""
    return to_native(metric, value)  # both maps are their own inverse


def native_unit(metric: str) -> str:
    return "euclidean distance (smaller = more similar)" if metric == "euclidean" else "cosine similarity"


def pair_scores_np(a: np.ndarray, b: np.ndarray, metric: str) -> np.ndarray:
    """Float64 reference scores ``[len(a), len(b)]`` (tests and small helpers; never on large sets)."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    if metric == "cosine":
        return a @ b.T
    d2 = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
    return -np.sqrt(np.maximum(d2, 0.0))


def _pair_scores(a: jax.Array, b: jax.Array, metric: str) -> jax.Array:
    """Float32 score tile ``[Ba, Bb]`` (full float32 matmul precision)."""
    ab = jnp.matmul(a, b.T, precision=jax.lax.Precision.HIGHEST)
    if metric == "cosine":
        return ab
    d2 = jnp.sum(a * a, axis=1)[:, None] + jnp.sum(b * b, axis=1)[None, :] - 2.0 * ab
    return -jnp.sqrt(jnp.maximum(d2, 0.0))


def score_range(a: np.ndarray, b: np.ndarray | None, metric: str) -> tuple[float, float]:
    """A range ``[lo, hi)`` guaranteed to hold every pair score (Cauchy-Schwarz / triangle inequality)."""
    na = float(np.sqrt(_max_sq_norm(a)))
    nb = na if b is None else float(np.sqrt(_max_sq_norm(b)))
    if metric == "cosine":
        r = na * nb
        r = r * (1 + 1e-6) + 1e-6
        return -r, r
    return -(na + nb) * (1 + 1e-6) - 1e-6, 1e-6


def _max_sq_norm(x, block: int = 65536) -> float:
    m = 0.0
    for s in range(0, x.shape[0], block):
        blk = np.asarray(x[s : s + block], np.float64)
        if blk.size:
            m = max(m, float((blk * blk).sum(1).max()))
    return m


@dataclasses.dataclass(frozen=True)
class Bins:
    """``nbins`` equal bins over ``[lo, hi)``; bin of score s = clip(floor((s - lo) * nbins / (hi - lo)))."""

    lo: float
    hi: float
    nbins: int

    @property
    def width(self) -> float:
        return (self.hi - self.lo) / self.nbins

    def edges(self) -> np.ndarray:
        return np.linspace(self.lo, self.hi, self.nbins + 1)

    def sub(self, b: int, nbins: int | None = None) -> "Bins":
        """The bins that split bin ``b`` of this histogram."""
        return Bins(self.lo + b * self.width, self.lo + (b + 1) * self.width, nbins or self.nbins)


def _bin_index(s: jax.Array, lo, inv_w, nbins: int) -> jax.Array:
    # Bin indices computed the same way in every pass, so a restricted pass sees exactly the same bins.
    return jnp.clip(jnp.floor((s - lo) * inv_w), 0, nbins - 1).astype(jnp.int32)


@dataclasses.dataclass
class PairHistogram:
    """Result of one histogram pass. Counts are exact (int64)."""

    bins: Bins
    impostor: np.ndarray  # int64 [nbins]
    genuine: np.ndarray  # int64 [nbins]
    impostor_sum: float = 0.0
    impostor_sumsq: float = 0.0
    genuine_sum: float = 0.0
    genuine_sumsq: float = 0.0

    @property
    def n_impostor(self) -> int:
        return int(self.impostor.sum())

    @property
    def n_genuine(self) -> int:
        return int(self.genuine.sum())

    def moments(self, which: str) -> tuple[float, float]:
        """(mean, std) of the genuine or impostor scores (exact sums, population std)."""
        n = self.n_genuine if which == "genuine" else self.n_impostor
        s = self.genuine_sum if which == "genuine" else self.impostor_sum
        sq = self.genuine_sumsq if which == "genuine" else self.impostor_sumsq
        if n == 0:
            return float("nan"), float("nan")
        mu = s / n
        return mu, math.sqrt(max(sq / n - mu * mu, 0.0))


def _pad_rows(x: np.ndarray, multiple: int, fill=0) -> np.ndarray:
    n = x.shape[0]
    m = max(multiple, -(-n // multiple) * multiple)
    if m == n:
        return x
    pad = [(0, m - n)] + [(0, 0)] * (x.ndim - 1)
    return np.pad(x, pad, constant_values=fill)


def _column_block_pairs(qa, ql, qv, rows, db, dl, dv, j, *, block, metric, mode):
    """Scores of a row block against column block ``j`` and its impostor / genuine pair masks.

    qa [B, D], ql [B], qv [B], rows [B] global row indices; db [M, D], dl [M], dv [M]. Returns s [B, B]
    float32 and imp, gen [B, B] bool. In "self" mode only pairs i < j count (each unordered pair once).
    """
    b = jax.lax.dynamic_slice_in_dim(db, j * block, block)
    bl = jax.lax.dynamic_slice_in_dim(dl, j * block, block)
    bv = jax.lax.dynamic_slice_in_dim(dv, j * block, block)
    s = _pair_scores(qa, b, metric)
    valid = qv[:, None] & bv[None, :]
    if mode == "self":
        cols = j * block + jnp.arange(block)
        valid = valid & (rows[:, None] < cols[None, :])
    same = ql[:, None] == bl[None, :]
    return s, valid & ~same, valid & same


@functools.partial(jax.jit, static_argnames=("nbins", "block", "metric", "mode", "collect_cap"))
def _row_block_kernel(
    qa, ql, qv, q0, db, dl, dv, lo, inv_w, r1_lo, r1_inv_w, r1_bin, r2_lo, r2_inv_w, r2_bin, *,
    nbins, block, metric, mode, collect_cap,
):
    """One row block against all column blocks of ``db``.

    qa [B, D], ql [B] labels, qv [B] valid, q0 global index of the first row; db [M, D] (M multiple of B).
    Labels: -2 marks "no identity information", handled by the caller's label choice (unlabelled sets get
    distinct labels). ``r*_bin`` < 0 disables that restriction. Returns impostor/genuine histograms (int32),
    sums/sumsq (float32), and when ``collect_cap`` > 0 a buffer of the impostor scores inside the
    restriction with its fill count (``collect`` ignores the histogram).
    """
    n_col_blocks = db.shape[0] // block
    rows = q0 + jnp.arange(block)
    if mode == "self":
        start = q0 // block  # lower-triangle blocks hold no pair i < j
    else:
        start = 0

    def body(j, carry):
        h_imp, h_gen, mom, buf, fill = carry
        s, imp, gen = _column_block_pairs(qa, ql, qv, rows, db, dl, dv, j, block=block, metric=metric, mode=mode)
        keep = jnp.ones_like(imp)
        keep = jnp.where(r1_bin >= 0, keep & (_bin_index(s, r1_lo, r1_inv_w, nbins) == r1_bin), keep)
        keep = jnp.where(r2_bin >= 0, keep & (_bin_index(s, r2_lo, r2_inv_w, nbins) == r2_bin), keep)
        imp = imp & keep
        gen = gen & keep
        if collect_cap:
            flat_m = imp.reshape(-1)
            pos = fill + jnp.cumsum(flat_m.astype(jnp.int32)) - 1
            pos = jnp.where(flat_m, pos, collect_cap)  # out of range -> dropped
            buf = buf.at[pos].set(s.reshape(-1), mode="drop")
            fill = fill + jnp.sum(flat_m.astype(jnp.int32))
        else:
            idx = _bin_index(s, lo, inv_w, nbins).reshape(-1)
            h_imp = h_imp.at[idx].add(imp.reshape(-1).astype(jnp.int32))
            h_gen = h_gen.at[idx].add(gen.reshape(-1).astype(jnp.int32))
            fi = imp.astype(jnp.float32)
            fg = gen.astype(jnp.float32)
            mom = mom + jnp.stack([jnp.sum(s * fi), jnp.sum(s * s * fi), jnp.sum(s * fg), jnp.sum(s * s * fg)])
        return h_imp, h_gen, mom, buf, fill

    init = (
        jnp.zeros((nbins,), jnp.int32),
        jnp.zeros((nbins,), jnp.int32),
        jnp.zeros((4,), jnp.float32),
        jnp.zeros((max(collect_cap, 1),), jnp.float32),
        jnp.zeros((), jnp.int32),
    )
    return jax.lax.fori_loop(start, n_col_blocks, body, init)


class PairSets:
    """The two sides of a pair-score computation, padded for the kernel.

    ``a`` (rows) and ``b`` (columns; None for pairs within ``a``): float32 ``[N, D]`` arrays or array-likes.
    ``labels_*``: int64 ``[N]`` identity labels; negative labels mean "unknown identity" and are replaced by
    distinct ids (each unlabelled image its own identity: all its pairs count as impostors).
    """

    def __init__(self, a, labels_a=None, b=None, labels_b=None, *, metric: str, block: int = 1024,
                 devices=None):
        check_metric(metric)
        # Row blocks are spread over the devices (shard_map over a "rows" axis); the columns are replicated.
        self.devices = list(devices) if devices is not None else jax.local_devices()
        self.mesh = jax.sharding.Mesh(np.asarray(self.devices), ("rows",))
        self._fns = {}
        self.metric = metric
        self.mode = "self" if b is None else "cross"
        self.block = int(block)
        a = np.asarray(a[:], np.float32)
        self.n_a = a.shape[0]
        la = _fill_labels(labels_a, self.n_a, offset=0)
        if self.mode == "cross":
            b = np.asarray(b[:], np.float32)
            self.n_b = b.shape[0]
            lb = _fill_labels(labels_b, self.n_b, offset=self.n_a)
            if labels_a is None or labels_b is None:
                # With one side unlabelled no pair can be "genuine": make every label distinct.
                la = -(np.arange(self.n_a, dtype=np.int64) + 1)
                lb = -(np.arange(self.n_b, dtype=np.int64) + 1 + self.n_a)
        else:
            b, lb, self.n_b = a, la, self.n_a
        if self.block * (-(-self.n_b // self.block) * self.block) >= 2**31:
            # Per-row-block counts are int32 (summed on the host in int64): keep one row block's pairs below 2^31.
            raise ValueError(f"{self.n_b:,} columns x block {self.block} overflows int32 counts; use a smaller block")
        self.range = score_range(a, None if self.mode == "self" else b, metric)
        self.a = _pad_rows(a, self.block)
        self.la = _pad_rows(la, self.block, fill=-1)
        self.va = _pad_rows(np.ones(self.n_a, bool), self.block, fill=False)
        self.b = jnp.asarray(_pad_rows(b, self.block))
        self.lb = jnp.asarray(_pad_rows(lb, self.block, fill=-1))
        self.vb = jnp.asarray(_pad_rows(np.ones(self.n_b, bool), self.block, fill=False))

    def row_blocks(self) -> Iterator[tuple[int, jax.Array, jax.Array, jax.Array]]:
        for s in range(0, self.a.shape[0], self.block):
            yield (s, jnp.asarray(self.a[s : s + self.block]), jnp.asarray(self.la[s : s + self.block]),
                   jnp.asarray(self.va[s : s + self.block]))

    @property
    def n_row_blocks(self) -> int:
        return self.a.shape[0] // self.block

    def run(self, name: str, kernel, replicated: tuple, **static) -> Iterator[list]:
        """Runs ``kernel(qa, ql, qv, q0, db, dl, dv, *replicated, **static)`` on every row block, one row block
        per device at a time (``jax.shard_map`` over the "rows" mesh axis), and yields, group by group, the list of
        per-row-block outputs in row-block order (host numpy). Padding blocks (past the last row) are dropped."""
        g = len(self.devices)
        key = (name, tuple(sorted(static.items())))
        if key not in self._fns:
            row, rep = jax.sharding.PartitionSpec("rows"), jax.sharding.PartitionSpec()

            def per_device(q0, qa, ql, qv, db, dl, dv, *rest):
                out = kernel(qa, ql, qv, q0[0], db, dl, dv, *rest, **static)
                return jax.tree_util.tree_map(lambda x: x[None], out)

            self._fns[key] = jax.jit(jax.shard_map(
                per_device, mesh=self.mesh, in_specs=(row, row, row, row, rep, rep, rep) + (rep,) * len(replicated),
                out_specs=row, check_vma=False))
        fn = self._fns[key]
        nb, bs, rows = self.n_row_blocks, self.block, self.a.shape[0]
        for first in range(0, nb, g):
            blocks = list(range(first, min(first + g, nb)))
            pad = g - len(blocks)
            q0 = np.asarray([b * bs for b in blocks] + [rows] * pad, np.int32)  # padding: past every column block
            sl = slice(first * bs, (first + len(blocks)) * bs)
            qa = np.concatenate([self.a[sl], np.zeros((pad * bs, self.a.shape[1]), np.float32)])
            ql = np.concatenate([self.la[sl], np.full(pad * bs, -1, self.la.dtype)])
            qv = np.concatenate([self.va[sl], np.zeros(pad * bs, bool)])
            out = fn(q0, qa, ql, qv, self.b, self.lb, self.vb, *replicated)
            out = jax.tree_util.tree_map(np.asarray, out)
            yield [jax.tree_util.tree_map(lambda x: x[i], out) for i in range(len(blocks))]

    def n_pairs(self) -> int:
        return self.n_a * (self.n_a - 1) // 2 if self.mode == "self" else self.n_a * self.n_b


def _fill_labels(labels, n: int, offset: int) -> np.ndarray:
    if labels is None:
        return -(np.arange(n, dtype=np.int64) + 1 + offset)
    lab = np.asarray(labels, np.int64).copy()
    if lab.shape != (n,):
        raise ValueError(f"labels have shape {lab.shape}, expected ({n},)")
    unk = lab < 0
    # Unknown identities get distinct negative ids (never equal to each other nor to a real label).
    lab[unk] = -(np.nonzero(unk)[0] + 1 + offset)
    return lab


def _scalars(*xs) -> tuple:
    """Kernel scalars as 0-d arrays (floats float32, ints int32) so shard_map can replicate them."""
    return tuple(jnp.asarray(x, jnp.int32 if isinstance(x, (int, np.integer)) else jnp.float32) for x in xs)


def _restriction(r: tuple[Bins, int] | None):
    if r is None:
        return 0.0, 0.0, -1
    bins, b = r
    return float(bins.lo), float(bins.nbins / (bins.hi - bins.lo)), int(b)


def pair_histogram(
    sets: PairSets,
    bins: Bins | None = None,
    *,
    nbins: int = 1 << 16,
    restrict1: tuple[Bins, int] | None = None,
    restrict2: tuple[Bins, int] | None = None,
    progress: str = "",
) -> PairHistogram:
    """Exact genuine/impostor counts of every pair of ``sets`` in ``bins`` (default: ``nbins`` over the
    guaranteed score range). ``restrict*``: only pairs whose score falls in bin ``b`` of ``Bins`` (for refining).
    All restriction Bins must have the same ``nbins`` as ``bins``."""
    if bins is None:
        bins = Bins(sets.range[0], sets.range[1], nbins)
    for r in (restrict1, restrict2):
        if r is not None and r[0].nbins != bins.nbins:
            raise ValueError("restriction bins must have the same nbins as the histogram")
    h_imp = np.zeros(bins.nbins, np.int64)
    h_gen = np.zeros(bins.nbins, np.int64)
    mom = np.zeros(4, np.float64)
    r1 = _restriction(restrict1)
    r2 = _restriction(restrict2)
    inv_w = bins.nbins / (bins.hi - bins.lo)
    n_blocks = sets.n_row_blocks
    t0 = time.time()
    rep = _scalars(bins.lo, inv_w, *r1, *r2)
    bi = -1
    for group in sets.run("hist", _row_block_kernel, rep, nbins=bins.nbins, block=sets.block, metric=sets.metric,
                          mode=sets.mode, collect_cap=0):
        for hi_, hg_, m_, _, _ in group:  # row-block order: sums identical on 1 or N devices
            bi += 1
            h_imp += np.asarray(hi_, np.int64)
            h_gen += np.asarray(hg_, np.int64)
            mom += np.asarray(m_, np.float64)
        if progress and (bi + 1) % max(1, n_blocks // 10) < len(group):
            # Self mode: row block i holds pairs with the blocks after it, so work shrinks with i (ETA by pairs).
            done = _pairs_done(sets, bi + 1)
            el = time.time() - t0
            rate = done / max(el, 1e-9)
            logging.info("%s: row block %d/%d, %.3g pairs/s, ETA %.0f s", progress, bi + 1, n_blocks, rate,
                         (sets.n_pairs() - done) / max(rate, 1e-9))
    return PairHistogram(bins, h_imp, h_gen, *mom.tolist())


def _pairs_done(sets: "PairSets", blocks: int) -> int:
    r = min(blocks * sets.block, sets.n_a)
    if sets.mode == "cross":
        return r * sets.n_b
    return r * sets.n_a - r * (r + 1) // 2  # pairs (i, j), i < r, j > i


def collect_impostor_scores(
    sets: PairSets, restrict1: tuple[Bins, int], restrict2: tuple[Bins, int] | None, expected: int
) -> np.ndarray:
    """The exact float32 impostor scores falling in the restricted bin (``expected`` of them, known from the
    histogram pass; the buffer is sized to it)."""
    cap = 1 << max(4, int(math.ceil(math.log2(max(expected, 1)))))
    r1 = _restriction(restrict1)
    r2 = _restriction(restrict2)
    out = []
    nb = restrict1[0].nbins
    for group in sets.run("collect", _row_block_kernel, _scalars(0.0, 1.0, *r1, *r2), nbins=nb, block=sets.block,
                          metric=sets.metric, mode=sets.mode, collect_cap=cap):
        for _, _, _, buf, fill in group:
            fill = int(fill)
            if fill > cap:
                raise RuntimeError(f"internal: bin holds {fill} scores in one row block, more than expected {expected}")
            out.append(np.asarray(buf[:fill]))
    got = np.concatenate(out) if out else np.zeros(0, np.float32)
    if got.size != expected:
        raise RuntimeError(f"internal: collected {got.size} scores in the refined bin, histogram said {expected}")
    return got


@functools.partial(jax.jit, static_argnames=("block", "metric", "mode"))
def _count_above_kernel(qa, ql, qv, q0, db, dl, dv, taus, *, block, metric, mode):
    """Counts of impostor and genuine pairs with score > tau, for every tau in ``taus`` [T]."""
    n_col_blocks = db.shape[0] // block
    rows = q0 + jnp.arange(block)
    start = q0 // block if mode == "self" else 0

    def body(j, carry):
        ci, cg = carry
        s, imp, gen = _column_block_pairs(qa, ql, qv, rows, db, dl, dv, j, block=block, metric=metric, mode=mode)
        above = s[None] > taus[:, None, None]  # [T, B, B]
        ci = ci + jnp.sum(above & imp[None], axis=(1, 2), dtype=jnp.int32)
        cg = cg + jnp.sum(above & gen[None], axis=(1, 2), dtype=jnp.int32)
        return ci, cg

    z = jnp.zeros(taus.shape, jnp.int32)
    return jax.lax.fori_loop(start, n_col_blocks, body, (z, z))


def count_above(sets: PairSets, taus) -> tuple[np.ndarray, np.ndarray]:
    """Exact (impostor, genuine) counts of pairs with score > tau for each tau (int64 arrays [T])."""
    taus = jnp.asarray(np.asarray(taus, np.float32))
    ci = np.zeros(taus.shape, np.int64)
    cg = np.zeros(taus.shape, np.int64)
    for group in sets.run("count", _count_above_kernel, (taus,), block=sets.block, metric=sets.metric,
                          mode=sets.mode):
        for a, g in group:
            ci += np.asarray(a, np.int64)
            cg += np.asarray(g, np.int64)
    return ci, cg


@functools.partial(jax.jit, static_argnames=("nbins", "block", "metric", "mode", "cap"))
def _collect_multi_kernel(qa, ql, qv, q0, db, dl, dv, lo, inv_w, bin_mask, *, nbins, block, metric, mode, cap):
    """Impostor scores of one row block whose bin (of ``nbins`` over lo, 1/inv_w) is flagged in ``bin_mask``
    [nbins]; returns (scores [cap], bins [cap], fill)."""
    n_col_blocks = db.shape[0] // block
    rows = q0 + jnp.arange(block)
    start = q0 // block if mode == "self" else 0

    def body(j, carry):
        buf, bbuf, fill = carry
        s, imp, _ = _column_block_pairs(qa, ql, qv, rows, db, dl, dv, j, block=block, metric=metric, mode=mode)
        idx = _bin_index(s, lo, inv_w, nbins)
        m = (imp & bin_mask[idx]).reshape(-1)
        pos = fill + jnp.cumsum(m.astype(jnp.int32)) - 1
        pos = jnp.where(m, pos, cap)
        buf = buf.at[pos].set(s.reshape(-1), mode="drop")
        bbuf = bbuf.at[pos].set(idx.reshape(-1), mode="drop")
        return buf, bbuf, fill + jnp.sum(m.astype(jnp.int32))

    init = (jnp.zeros((cap,), jnp.float32), jnp.zeros((cap,), jnp.int32), jnp.zeros((), jnp.int32))
    return jax.lax.fori_loop(start, n_col_blocks, body, init)


def collect_impostor_scores_in_bins(sets: PairSets, bins: Bins, wanted: list[int], expected: int
                                    ) -> tuple[np.ndarray, np.ndarray]:
    """One pass collecting the exact impostor scores of several bins: (scores float32 [expected], their bins)."""
    mask = np.zeros(bins.nbins, bool)
    mask[list(wanted)] = True
    cap = 1 << max(4, int(math.ceil(math.log2(max(expected, 1)))))
    inv_w = bins.nbins / (bins.hi - bins.lo)
    out_s, out_b = [], []
    mask_j = jnp.asarray(mask)
    for group in sets.run("collect_multi", _collect_multi_kernel, _scalars(bins.lo, inv_w) + (mask_j,),
                          nbins=bins.nbins, block=sets.block, metric=sets.metric, mode=sets.mode, cap=cap):
        for buf, bbuf, fill in group:
            fill = int(fill)
            if fill > cap:
                raise RuntimeError(f"internal: {fill} scores in the wanted bins of one row block, more than {expected}")
            out_s.append(np.asarray(buf[:fill]))
            out_b.append(np.asarray(bbuf[:fill]))
    s = np.concatenate(out_s) if out_s else np.zeros(0, np.float32)
    b = np.concatenate(out_b) if out_b else np.zeros(0, np.int32)
    if s.size != expected:
        raise RuntimeError(f"internal: collected {s.size} scores in the wanted bins, histogram said {expected}")
    return s, b
