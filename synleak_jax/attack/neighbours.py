"""Exact neighbours between the real and the synthetic set, both directions, and the real-vs-generated scan.

One tile-engine pass over all real x synthetic pairs gives, at once: the top-k synthetic neighbours of every real
image, the top-k real neighbours of every synthetic image (the reverse direction from the same score tiles), the
exact number of pairs above each threshold (Tinsley's real-vs-generated tails), the sums of scores and squared
scores, and an exact coarse histogram for the plots. Reference pipelines compute the same things with three
separate passes over these pairs (a k-NN search each way plus a blockwise matmul for the tails).

Scores are float32 similarities (``synleak_jax.units``): the same values the calibration's thresholds were
taken from, so "score > tau" means the same thing in every stage. Ties are broken by the lower index.
Orientation: the larger set is streamed as rows, the smaller one held as columns (the engine's memory is one set
at most, never their product).
"""

from __future__ import annotations

import dataclasses
import os

import jax
import numpy as np

from synleak_jax import units
from synleak_jax.attack import pairs
from synleak_jax.search.engine import Bins, PassParams, PassSpec, as_source, tile_pass
from synleak_jax.search.exact import exact_topk, fastest_exact_precision


@dataclasses.dataclass
class Neighbours:
    """Top-k both ways. Scores float32 similarities (cosine, or -distance), descending; indices int64 into the
    other set (ties -> lower index)."""

    metric: str
    syn_to_real_scores: np.ndarray  # [Ns, k]
    syn_to_real_idx: np.ndarray  # [Ns, k]
    real_to_syn_scores: np.ndarray  # [Nr, k]
    real_to_syn_idx: np.ndarray  # [Nr, k]


@dataclasses.dataclass
class CrossScan:
    """Everything one pass over all real x synthetic pairs yields.

    neighbours: top-k both ways; n_pairs: Nr * Ns; taus: float32 [T] thresholds (score units);
    above: int64 [T] pairs with score > tau; sums: float64 (sum s, sum s^2) over all pairs;
    hist: exact coarse histogram (impostor counts = all pairs; None when plot_bins is 0).
    """

    neighbours: Neighbours
    n_pairs: int
    taus: np.ndarray
    above: np.ndarray
    sums: np.ndarray
    hist: pairs.PairHistogram | None

    def moments(self) -> tuple[float, float]:
        """(mean, population std) of all real-vs-synthetic scores."""
        mu = self.sums[0] / self.n_pairs
        return float(mu), float(np.sqrt(max(self.sums[1] / self.n_pairs - mu * mu, 0.0)))


#: The plot histogram of the real-vs-synthetic scan counts the pairs of every PLOT_EVERY-th row block (a stated,
#: systematic subset; its scatter cost more than the top-k on every tile: +0.95 s CPU on a 3.0 s pass, measured).
PLOT_EVERY = 8


def scan_real_vs_synthetic(real, synthetic, *, metric: str, k: int, taus=(), plot_bins: int = 256, mesh=None,
                           progress: str = "real vs synthetic") -> CrossScan:
    """One pass over all real x synthetic pairs: neighbours both ways, counts above ``taus``, moments, histogram.

    Args:
      real: [Nr, D], synthetic: [Ns, D] embeddings (arrays, stores' ``.embeddings``, Sources).
      metric: "cosine" or "euclidean"; k: neighbours per image (clipped to the other set's size).
      taus: thresholds in score units; plot_bins: bins of the exact histogram (0 = none).
    """
    r, s = as_source(real, "real embeddings"), as_source(synthetic, "synthetic embeddings")
    syn_rows = s.n >= r.n  # stream the larger set as rows
    rows, cols = (s, r) if syn_rows else (r, s)
    taus = np.asarray(taus, np.float32).reshape(-1)
    bins = Bins(*pairs.score_range(r, s, metric), plot_bins) if plot_bins else None
    in_pass = metric != "cosine"  # inner products: moments from the embeddings (pairs.cosine_moments)
    spec = PassSpec(score=pairs.engine_score(metric), row_k=min(k, cols.n), col_k=min(k, rows.n),
                    n_taus=len(taus), nbins=plot_bins, moments=in_pass, hist_every=PLOT_EVERY)
    res = tile_pass(rows, cols, spec, PassParams(taus=taus if len(taus) else None, bins=bins), mesh=mesh,
                    progress=progress)
    sums = res.moments if in_pass else pairs.cosine_moments(rows, y=cols)
    row_s, row_i = res.row_scores, res.row_index.astype(np.int64)
    col_s, col_i = res.col_scores, res.col_index.astype(np.int64)
    if syn_rows:
        nb = Neighbours(metric, row_s, row_i, col_s, col_i)
    else:
        nb = Neighbours(metric, col_s, col_i, row_s, row_i)
    above = res.counts.sum(axis=0)[:, 0] if len(taus) else np.zeros(0, np.int64)
    hist = pairs.PairHistogram(bins, res.hist[0], res.hist[1], sums) if plot_bins else None
    return CrossScan(nb, r.n * s.n, taus, above.astype(np.int64), sums[0].copy(), hist)


def neighbours_both_ways(real, synthetic, *, metric: str, k: int, mesh=None, precision: str = "auto",
                         progress: str = "") -> Neighbours:
    """Top-k both ways in the fastest exact mode: one fused float32 pass on CPUs (and for Euclidean metrics),
    two certified searches (``search.exact_topk``) on accelerators, where bf16 units make each screen far cheaper
    than float32. On a CPU with AVX512-BF16 (bf16 matmuls 1.6x float32) the fused pass still won, since it takes
    both directions from one matmul of each tile: non-members 20k x synthetic 200k, 512-D, 58.7 s and 607 MB peak
    RSS against 80.4 s and 1,229 MB for the two certified searches (BENCHMARKS.md). ``SYNLEAK_EXACT_PRECISION``
    (or ``precision``) overrides."""
    units.check_metric(metric)
    if precision == "auto":
        cpu = jax.default_backend() == "cpu" and not os.environ.get("SYNLEAK_EXACT_PRECISION")
        precision = "float32" if cpu else fastest_exact_precision()
    if precision == "float32" or metric == "euclidean":
        return scan_real_vs_synthetic(real, synthetic, metric=metric, k=k, plot_bins=0, mesh=mesh,
                                      progress=progress).neighbours
    r, s = as_source(real, "real embeddings"), as_source(synthetic, "synthetic embeddings")
    fs, fi = exact_topk(s, r, min(k, r.n), precision=precision, mesh=mesh, progress=progress)
    rs, ri = exact_topk(r, s, min(k, s.n), precision=precision, mesh=mesh, progress=progress)
    return Neighbours(metric, fs, fi.astype(np.int64), rs, ri.astype(np.int64))


def topk(queries, database, k: int, *, metric: str, mesh=None) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k by score (cosine, or minus the distance) of every query: (scores float32 [nq, k],
    indices int64 [nq, k]); k is clipped to the database size."""
    q, db = as_source(queries, "queries"), as_source(database, "database")
    k = min(int(k), db.n)
    res = tile_pass(q, db, PassSpec(score=pairs.engine_score(metric), row_k=k), mesh=mesh)
    return res.row_scores, res.row_index.astype(np.int64)
