"""Statistics over ALL pairs of embeddings, computed by the tile engine (``search/engine.py``), arrays in.

Pair sets: the pairs i < j of one set (``y=None``: a calibration set) or every (i, j) of two sets. With identity
labels a pair is *genuine* (same label >= 0) or *impostor* (different labels; an unknown label, < 0, is a
distinct identity). Scores are similarities (``synleak_jax.units``): inner products of the embeddings for cosine
matchers, minus the Euclidean distance for Euclidean ones, computed in float32.

* :func:`histogram`: exact genuine / impostor counts in equal bins (optionally inside one bin of a coarser
  histogram, for refining), exact counts and float64-summed moments;
* :func:`key_histogram`: exact genuine / impostor counts by float32 key (``search.engine.score_keys``): 65,536
  bins by the top 16 bits, chosen bins split into their single values (exact order statistics, no scores kept);
* :func:`collect`: the exact float32 scores of the pairs in chosen bins (with their row and class);
* :func:`count_above`: exact per-row and total counts of pairs with score > tau;
* :func:`pair_counts`: how many impostor / genuine pairs a labelled set has (from the labels alone).

The same bin formula runs in every pass (``search.engine.Bins``), so a bin holds the same pairs in all of them.
Memory: the engine's blocks and the inputs, never a pairs-sized array.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from synleak_jax import units
from synleak_jax.search.engine import (KEY_BINS, Bins, CollectOverflow, PassParams, PassSpec, Source, as_source,
                                      key_scores, score_keys, tile_pass)

__all__ = ["Bins", "PairHistogram", "KeyHistogram", "histogram", "key_histogram", "collect", "count_above",
           "pair_counts", "score_range", "pair_scores_np", "score_keys", "key_scores", "KEY_BINS", "genuine_key_counts"]


def engine_score(metric: str) -> str:
    """The engine's score for a matcher metric (cosine -> inner product, euclidean -> minus the distance)."""
    return "neg_euclidean" if units.check_metric(metric) == "euclidean" else "ip"


def pair_scores_np(a: np.ndarray, b: np.ndarray, metric: str) -> np.ndarray:
    """Float64 reference scores ``[len(a), len(b)]`` (tests and small helpers; never on large sets)."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    if units.check_metric(metric) == "cosine":
        return a @ b.T
    d2 = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
    return -np.sqrt(np.maximum(d2, 0.0))


def _max_norm(x: Source, chunk: int = 8192) -> float:  # float64 copies of 8,192 rows: 33 MB at 512-D
    m = 0.0
    for a in range(0, x.n, chunk):
        blk = x.read(a, min(x.n, a + chunk)).astype(np.float64)
        m = max(m, float(np.sqrt((blk * blk).sum(1).max())))
    return m


def score_range(x, y, metric: str) -> tuple[float, float]:
    """A range ``[lo, hi)`` guaranteed to hold every pair score (Cauchy-Schwarz / triangle inequality)."""
    na = _max_norm(as_source(x, "embeddings"))
    nb = na if y is None else _max_norm(as_source(y, "embeddings"))
    if metric == "cosine":
        r = na * nb * (1 + 1e-6) + 1e-6
        return -r, r
    return -(na + nb) * (1 + 1e-6) - 1e-6, 1e-6


def _moments(sums, n: int) -> tuple[float, float]:
    """(mean, population std) from (sum s, sum s^2) over n scores (NaN for none)."""
    if n == 0:
        return float("nan"), float("nan")
    mu = sums[0] / n
    return float(mu), math.sqrt(max(sums[1] / n - mu * mu, 0.0))


@dataclasses.dataclass
class PairHistogram:
    """Result of one histogram pass. Counts are exact (int64); sums are float64 sums of per-row float32 sums.

    bins: the histogram's Bins; impostor/genuine: int64 [nbins]; sums: float64 [2, 2] = (impostor, genuine) x
    (sum s, sum s^2) over the counted pairs (all pairs of the set, also outside a restriction's bin).
    """

    bins: Bins
    impostor: np.ndarray
    genuine: np.ndarray
    sums: np.ndarray

    @property
    def n_impostor(self) -> int:
        return int(self.impostor.sum())

    @property
    def n_genuine(self) -> int:
        return int(self.genuine.sum())

    def moments(self, which: str, n: int | None = None) -> tuple[float, float]:
        """(mean, population std) of the genuine or impostor scores (``n`` = their number; default the counts)."""
        c = 1 if which == "genuine" else 0
        return _moments(self.sums[c], (self.n_genuine if c else self.n_impostor) if n is None else n)

    def coarsen(self, nbins: int) -> "PairHistogram":
        """The same counts in ``nbins`` (a divisor of this histogram's) wider bins (for plots)."""
        f = max(1, self.bins.nbins // nbins)
        return PairHistogram(Bins(self.bins.lo, self.bins.hi, self.bins.nbins // f),
                             self.impostor.reshape(-1, f).sum(1), self.genuine.reshape(-1, f).sum(1), self.sums)


def cosine_moments(x, labels=None, *, y=None, y_labels=None, chunk: int = 16384) -> np.ndarray:
    """float64 [2, 2] = (impostor, genuine) x (sum of s, sum of s^2) over every pair, for inner-product scores,
    computed from the embeddings instead of the pairs (one read of each set, O((N + M) D^2) float64 work):

    * all pairs i < j of x: sum s = (|sum a|^2 - sum |a|^2) / 2, sum s^2 = (||A^T A||_F^2 - sum |a|^4) / 2;
      the genuine pairs (equal labels >= 0) the same per identity (||A_c A_c^T||_F^2 over that identity's rows);
      impostor = all - genuine.
    * all pairs of x x y: sum s = (sum a).(sum b), sum s^2 = <A^T A, B^T B>_F; genuine per shared identity.

    A pass over pairs would spend more than the matmul itself on these four reductions (measured: +1.0 s CPU on a
    3.0 s top-k pass, 8,192 x 16,384 x 512); float64 here is also more accurate than per-tile float32 sums."""
    xs = as_source(x, "embeddings")
    ys = None if y is None else as_source(y, "embeddings")

    def gram_and_sums(src: Source, lab):
        d = src.d
        gram = np.zeros((d, d))
        total = np.zeros(d)
        sq, quart = 0.0, 0.0
        per_id: dict[int, list[np.ndarray]] = {}
        for a in range(0, src.n, chunk):
            blk = src.read(a, min(src.n, a + chunk)).astype(np.float64)
            gram += blk.T @ blk
            total += blk.sum(0)
            n2 = (blk * blk).sum(1)
            sq += float(n2.sum())
            quart += float((n2 * n2).sum())
            if lab is not None:
                lb = np.asarray(lab[a:a + blk.shape[0]])
                for c in np.unique(lb[lb >= 0]):
                    per_id.setdefault(int(c), []).append(blk[lb == c])
        return gram, total, sq, quart, {c: np.concatenate(v) for c, v in per_id.items()}

    gx, tx, sqx, qx, idx = gram_and_sums(xs, labels)
    if ys is None:
        all1, all2 = (tx @ tx - sqx) / 2.0, (float((gx * gx).sum()) - qx) / 2.0
        g1 = g2 = 0.0
        for rows in idx.values():
            s_ = rows.sum(0)
            g = rows @ rows.T
            n2 = np.diag(g)
            g1 += (s_ @ s_ - n2.sum()) / 2.0
            g2 += (float((g * g).sum()) - float((n2 * n2).sum())) / 2.0
    else:
        gy, ty, _, _, idy = gram_and_sums(ys, y_labels)
        all1, all2 = float(tx @ ty), float((gx * gy).sum())
        g1 = g2 = 0.0
        for c, rows in idx.items():
            if c in idy:
                other = idy[c]
                g1 += float(rows.sum(0) @ other.sum(0))
                g2 += float(((rows @ other.T) ** 2).sum())
    return np.asarray([[all1 - g1, all2 - g2], [g1, g2]])


def _spec(y, labels: bool, metric: str, **kw) -> PassSpec:
    return PassSpec(score=engine_score(metric), pairs="upper" if y is None else "all", labels=labels, **kw)


def _cols(x, y):
    return x if y is None else y


def histogram(x, labels, metric: str, bins: Bins, *, y=None, y_labels=None, restrict: tuple[Bins, int] | None = None,
              mesh=None, progress: str = "") -> PairHistogram:
    """Exact genuine/impostor counts of every pair (i < j of ``x``, or x x y) in ``bins``.

    Args:
      x, y: [n, D] embeddings (arrays, stores' ``.embeddings``, Sources); labels, y_labels: int [n] or None
        (no labels: every pair an impostor). restrict: only pairs in bin b of a coarser histogram with the same
        nbins (refinement).
    """
    labelled = labels is not None and (y is None or y_labels is not None)
    xs = as_source(x, "embeddings")
    # Inner products: moments from the embeddings (cosine_moments), not from the pass; distances: in the pass.
    in_pass = metric != "cosine"
    spec = _spec(y, labelled, metric, nbins=bins.nbins, restrict=restrict is not None, moments=in_pass)
    res = tile_pass(xs, xs if y is None else _cols(x, y), spec, PassParams(bins=bins, restrict=restrict),
                    mesh=mesh, row_labels=labels if labelled else None, col_labels=y_labels if labelled else None,
                    progress=progress)
    sums = res.moments if in_pass else cosine_moments(xs, labels if labelled else None, y=y,
                                                       y_labels=y_labels if labelled else None)
    return PairHistogram(bins, res.hist[0], res.hist[1], sums)


@dataclasses.dataclass
class KeyHistogram:
    """Result of a float32-key histogram pass (:func:`key_histogram`). Counts are exact (int64).

    top: int64 [2, 65,536] (impostor, genuine) pairs per top-16-bit key bin (ascending scores; every pair
    counted, refined bins included); refined: {bin: int64 [2, 65,536]} the pairs of each refined bin per exact
    value (low 16 bits; ``key_scores(bin, low)`` is the value); sums: float64 [2, 2] as in PairHistogram.
    """

    top: np.ndarray
    refined: dict
    sums: np.ndarray

    @property
    def n_impostor(self) -> int:
        return int(self.top[0].sum())

    @property
    def n_genuine(self) -> int:
        return int(self.top[1].sum())

    def moments(self, which: str) -> tuple[float, float]:
        """(mean, population std) of the genuine or impostor scores."""
        c = 1 if which == "genuine" else 0
        return _moments(self.sums[c], self.n_genuine if c else self.n_impostor)

    def bin_edges(self, bins) -> tuple[np.ndarray, np.ndarray]:
        """(lower, upper) float64 score edges of top-16-bit key bins: bin b holds the float32 scores in
        [lower, upper) (upper = the first value of bin b + 1)."""
        b = np.asarray(bins, np.int64)
        lo = key_scores(b, 0).astype(np.float64)
        hi = np.where(b + 1 < KEY_BINS, key_scores(np.minimum(b + 1, KEY_BINS - 1), 0).astype(np.float64), np.inf)
        return lo, hi

    def rebin(self, nbins: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(edges [nbins + 1], impostor int64 [nbins], genuine int64 [nbins]): the counts in ``nbins`` equal bins
        over the occupied key bins, for plots. A key bin's count is spread over the plot bins it overlaps in
        proportion to the overlap (uniform inside a key bin, which spans at most 1/128 of its scores' magnitude),
        then rounded so the totals stay exact."""
        occupied = np.nonzero(self.top.sum(0))[0]
        if occupied.size == 0:
            return np.linspace(-1.0, 1.0, nbins + 1), np.zeros(nbins, np.int64), np.zeros(nbins, np.int64)
        first, last = int(occupied[0]), int(occupied[-1])
        lo, hi = self.bin_edges(np.arange(first, last + 1))
        edges = np.linspace(lo[0], hi[-1], nbins + 1)
        knots = np.concatenate([lo, hi[-1:]])
        out = []
        for c in range(2):
            cdf = np.concatenate([[0], np.cumsum(self.top[c, first:last + 1])]).astype(np.float64)
            at = np.round(np.interp(edges, knots, cdf)).astype(np.int64)
            at[0], at[-1] = 0, int(cdf[-1])
            out.append(np.diff(at))
        return edges, out[0], out[1]


def genuine_key_counts(x, labels, metric: str, *, block: int = 4096) -> np.ndarray:
    """int64 [65,536]: the genuine pairs i < j (equal labels >= 0) of ``x`` per top-16-bit key bin, scored on
    the host (numpy float32, identity by identity; an identity's pairs in ``block``-row tiles). Its float32
    summation order is not the engine's, so a score on a bin edge may land one bin off: for predictions only.
    Work: the genuine pairs only (sum of n_c^2 / 2 over identities), memory one tile."""
    out = np.zeros(KEY_BINS, np.int64)
    if labels is None:
        return out
    lab = np.asarray(labels)
    order = np.argsort(lab, kind="stable")
    order = order[lab[order] >= 0]
    if order.size == 0:
        return out
    src = as_source(x, "embeddings")
    starts = np.concatenate([[0], np.nonzero(np.diff(lab[order]))[0] + 1, [order.size]])
    for g0, g1 in zip(starts[:-1], starts[1:]):
        if g1 - g0 < 2:
            continue
        rows = src.take(order[g0:g1])
        for a in range(0, rows.shape[0], block):
            for b in range(a, rows.shape[0], block):
                s = pair_scores_np(rows[a:a + block], rows[b:b + block], metric).astype(np.float32)
                if a == b:
                    s = s[np.triu_indices(s.shape[0], 1)]
                top, _ = score_keys(s.ravel())
                out += np.bincount(top, minlength=KEY_BINS)
    return out


def key_histogram(x, labels, metric: str, *, refine=(), y=None, y_labels=None, mesh=None,
                  progress: str = "") -> KeyHistogram:
    """Exact genuine/impostor counts of every pair (i < j of ``x``, or x x y) by float32 key: per top-16-bit
    bin, and per exact value inside the ``refine`` bins (distinct ints in [0, 65,536)). One pass; arguments as
    :func:`histogram`."""
    labelled = labels is not None and (y is None or y_labels is not None)
    refine = [int(b) for b in refine]
    xs = as_source(x, "embeddings")
    in_pass = metric != "cosine"
    spec = _spec(y, labelled, metric, key_hist=True, key_refine=len(refine), moments=in_pass)
    res = tile_pass(xs, xs if y is None else _cols(x, y), spec,
                    PassParams(key_refine_bins=np.asarray(refine, np.int64) if refine else None), mesh=mesh,
                    row_labels=labels if labelled else None, col_labels=y_labels if labelled else None,
                    progress=progress)
    sums = res.moments if in_pass else cosine_moments(xs, labels if labelled else None, y=y,
                                                       y_labels=y_labels if labelled else None)
    top = res.hist[:, :KEY_BINS].copy()
    refined = {}
    for r, b in enumerate(refine):
        fine = res.hist[:, KEY_BINS * (r + 1):KEY_BINS * (r + 2)].copy()
        top[:, b] += fine.sum(axis=1)
        refined[b] = fine
    return KeyHistogram(top, refined, sums)


def collect(x, labels, metric: str, bins: Bins, wanted: list[int], expected: int, *, y=None, y_labels=None,
            restrict: tuple[Bins, int] | None = None, mesh=None, progress: str = ""
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The exact float32 scores of the pairs whose bin (of ``bins``) is in ``wanted`` — ``expected`` of them,
    known from a histogram pass, sizes the buffer. Returns (scores float32 [m], rows int64 [m], genuine bool [m])
    sorted by (row, score)."""
    labelled = labels is not None and (y is None or y_labels is not None)
    mask = np.zeros(bins.nbins, bool)
    mask[list(wanted)] = True
    cap = 1 << max(4, int(math.ceil(math.log2(max(expected, 1)))))
    xs = as_source(x, "embeddings")
    while True:
        spec = _spec(y, labelled, metric, nbins=bins.nbins, restrict=restrict is not None, collect_cap=cap)
        try:
            res = tile_pass(xs, xs if y is None else _cols(x, y), spec,
                            PassParams(bins=bins, restrict=restrict, collect_bins=mask), mesh=mesh,
                            row_labels=labels if labelled else None, col_labels=y_labels if labelled else None,
                            progress=progress)
            break
        except CollectOverflow as e:  # cannot happen when ``expected`` is right; stay correct anyway
            cap = 1 << int(math.ceil(math.log2(e.needed)))
    scores, rows, cls = res.collected
    if scores.size != expected:
        raise RuntimeError(f"internal: collected {scores.size} scores in the wanted bins, the histogram said "
                           f"{expected}")
    return scores, rows, cls.astype(bool)


def pair_counts(labels, n: int) -> tuple[int, int]:
    """(impostor, genuine) numbers of the pairs i < j of ``n`` images: genuine = equal labels >= 0 (an unknown
    label, < 0, is a distinct identity); no labels: every pair an impostor."""
    total = n * (n - 1) // 2
    if labels is None:
        return total, 0
    lab = np.asarray(labels)
    _, counts = np.unique(lab[lab >= 0], return_counts=True)
    genuine = int((counts.astype(np.int64) * (counts - 1) // 2).sum())
    return total - genuine, genuine


def count_above(x, labels, metric: str, taus, *, y=None, y_labels=None, mesh=None, progress: str = ""
                ) -> tuple[np.ndarray, np.ndarray]:
    """Exact counts of pairs with score > tau for each tau: per row int64 [n, T, 2] ((impostor, genuine)) and
    totals int64 [T, 2]."""
    labelled = labels is not None and (y is None or y_labels is not None)
    taus = np.asarray(taus, np.float32).reshape(-1)
    xs = as_source(x, "embeddings")
    if taus.size == 0:
        return np.zeros((xs.n, 0, 2), np.int64), np.zeros((0, 2), np.int64)
    spec = _spec(y, labelled, metric, n_taus=len(taus))
    res = tile_pass(xs, xs if y is None else _cols(x, y), spec, PassParams(taus=taus), mesh=mesh,
                    row_labels=labels if labelled else None, col_labels=y_labels if labelled else None,
                    progress=progress)
    return res.counts, res.counts.sum(axis=0)
