"""Thresholds at a stated false match rate (FMR), from real impostor scores under the same matcher.

Definition (exact, no interpolation): with ``n`` impostor scores and ``m = floor(FMR * n)`` impostors allowed
to match, ``tau(FMR)`` is the ``(m+1)``-th largest impostor score; a pair matches when ``score > tau``. So at
most ``m`` impostors match (exactly ``m`` without ties), and ``tau`` equals
``np.quantile(impostor, 1 - FMR, method="inverted_cdf")``.

Two sources of impostor scores:

* :func:`calibrate_embeddings`: ALL pairs of different identities of a labelled real embedding set, counted by
  the tile engine (no N x N matrix, no histogram of every pair): a pilot histogram of a row sample places a few
  thresholds around each wanted order statistic (and the EER point); a counting pass measures the exact number
  of pairs above each; a collecting pass gathers the exact scores between the two thresholds that bracket each
  wanted quantity (a bracket still too wide is split by another counting pass first). Usually three passes, the
  first over ~6% of the pairs; every count exact. Genuine pairs (same identity) give the FNMR at each tau, the
  EER and d'.
* :func:`calibrate_scores`: explicit impostor (and genuine) score arrays, e.g. the pairs of a verification bin
  (LFW 6,000 pairs).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import numpy as np
from absl import logging

from synleak_jax.attack import pairs, stats
from synleak_jax.search.engine import RowSubset, as_source
from synleak_jax import units


@dataclasses.dataclass
class Threshold:
    fmr: float  # target false match rate
    tau: float  # threshold in score units (larger = more similar; match iff score > tau)
    tau_native: float  # the same threshold in the matcher's units (cosine, or Euclidean distance)
    impostors_allowed: int  # m = floor(FMR * n_impostor)
    impostors_above: int  # exact number of impostor pairs with score > tau
    achieved_fmr: float  # impostors_above / n_impostor
    fnmr: float | None  # genuine pairs with score <= tau / n_genuine (None without genuine pairs)
    source: str = "calibrated"  # "calibrated" or a fixed published threshold's name

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class Calibration:
    """Thresholds plus the impostor/genuine score distributions (coarse histograms kept for plots)."""

    metric: str
    n_impostor: int
    n_genuine: int
    thresholds: list[Threshold]
    eer: float | None
    impostor_mean: float
    impostor_std: float
    genuine_mean: float | None
    genuine_std: float | None
    hist_edges: np.ndarray  # [P+1] score units (plots)
    hist_impostor: np.ndarray  # int64 [P]
    hist_genuine: np.ndarray  # int64 [P]
    method: str = ""
    note: str = ""

    @property
    def decidability(self) -> float | None:
        if self.genuine_mean is None or self.n_genuine == 0:
            return None
        return stats.decidability(self.genuine_mean, self.genuine_std, self.impostor_mean, self.impostor_std)

    def tau(self, fmr: float) -> float:
        for t in self.thresholds:
            if t.source == "calibrated" and math.isclose(t.fmr, fmr, rel_tol=1e-9):
                return t.tau
        raise KeyError(f"no threshold calibrated at FMR {fmr:g}; have {[t.fmr for t in self.thresholds]}")

    def to_dict(self) -> dict:
        return {
            "metric": self.metric,
            "native_unit": units.native_unit(self.metric),
            "method": self.method,
            "note": self.note,
            "n_impostor_pairs": int(self.n_impostor),
            "n_genuine_pairs": int(self.n_genuine),
            "thresholds": [t.to_dict() for t in self.thresholds],
            "eer": _num(self.eer),
            "impostor_mean": _num(units.to_native(self.metric, self.impostor_mean)),
            "impostor_std": _num(self.impostor_std),
            "genuine_mean": _num(None if self.genuine_mean is None else units.to_native(self.metric, self.genuine_mean)),
            "genuine_std": _num(self.genuine_std),
            "decidability": _num(self.decidability),
        }


def _num(x):
    if x is None:
        return None
    x = float(x)
    return None if not math.isfinite(x) else x


def impostors_allowed(fmr: float, n_impostor: int) -> int:
    """m = floor(FMR * n), guarded against float round-off (1000 * 1e-3 must give 1)."""
    return int(math.floor(fmr * n_impostor * (1 + 1e-12)))


def check_fmrs(fmrs: Sequence[float], n_impostor: int, what: str = "impostor pairs") -> None:
    """Raises a clear error when an FMR cannot be resolved by ``n_impostor`` impostor pairs."""
    for f in fmrs:
        if not (0 < f < 1):
            raise ValueError(f"FMR must be in (0, 1), got {f!r}")
        if impostors_allowed(f, n_impostor) < 1:
            need = int(math.ceil(1.0 / f))
            raise ValueError(
                f"FMR {f:g} cannot be calibrated: it needs at least {need:,} {what} (1 / FMR), "
                f"but the calibration set gives only {n_impostor:,}. Use a larger labelled real set, or drop "
                f"this FMR (config field attack.fmrs).")


def exact_order_statistic_desc(values: np.ndarray, r: int) -> float:
    """The r-th largest value (1-based) of a 1-D array, exactly."""
    v = np.asarray(values)
    if not 1 <= r <= v.size:
        raise ValueError(f"rank {r} out of range for {v.size} values")
    return float(np.partition(v, v.size - r)[v.size - r])


def exact_eer_of_pairs(x, labels, metric: str, bins: "pairs.Bins", hist: "pairs.PairHistogram", *, y=None,
                       y_labels=None, collect_cap: int = 1 << 20, mesh=None) -> float | None:
    """The exact EER of all genuine/impostor pairs whose ``hist`` (over ``bins``) is given: the bin holding the
    sign change of FMR - FNMR is collected (after a histogram inside it when crowded) and the EER read off the
    exact ROC points in it (``stats.eer_locate`` / ``eer_from_bin``). None without genuine or impostor pairs."""
    n_imp, n_gen = hist.n_impostor, hist.n_genuine
    if not n_imp or not n_gen:
        return None
    loc = stats.eer_locate(hist.impostor, hist.genuine)
    if loc.bin is None:
        return loc.result.eer
    b, restrict, where = loc.bin, None, bins
    imp_hi, gen_hi, count = loc.impostor_above_bin, loc.genuine_above_bin, loc.impostor_in_bin + loc.genuine_in_bin
    if count > collect_cap:
        sub = bins.sub(b)
        h2 = pairs.histogram(x, labels, metric, sub, y=y, y_labels=y_labels, restrict=(bins, b), mesh=mesh)
        loc2 = stats.eer_locate(h2.impostor, h2.genuine, n_impostor=n_imp, n_genuine=n_gen,
                                impostor_above_range=imp_hi, genuine_above_range=gen_hi)
        if loc2.bin is None:
            return loc2.result.eer
        b, restrict, where = loc2.bin, (bins, loc.bin), sub
        imp_hi, gen_hi, count = loc2.impostor_above_bin, loc2.genuine_above_bin, loc2.impostor_in_bin + loc2.genuine_in_bin
    sc, _, gen = pairs.collect(x, labels, metric, where, [b], count, y=y, y_labels=y_labels, restrict=restrict,
                               mesh=mesh, progress="exact EER: scores of its bin")
    return stats.eer_from_bin(n_imp, n_gen, imp_hi, gen_hi, sc[~gen], sc[gen]).eer


def _bin_of(value: float, bins: pairs.Bins) -> int:
    """The bin of a score, computed with the engine's float32 formula (so it agrees with every pass)."""
    lo, inv_w = np.float32(bins.lo), np.float32(bins.inv_width)
    return int(np.clip(np.floor((np.float32(value) - lo) * inv_w), 0, bins.nbins - 1))


#: The pilot: every PILOT_STRIDE-th row against all rows (about 2 / PILOT_STRIDE of the pairs, histogrammed).
PILOT_STRIDE = 32
#: Sets up to this many rows get a pilot over every row (then the pilot is the exact histogram, counted twice).
PILOT_ALL_ROWS = 4096
#: Thresholds proposed per wanted quantity in each counting pass.
PROPOSALS = 8
#: Counting passes at most before the brackets are collected whatever their size.
MAX_ROUNDS = 6


@dataclasses.dataclass
class _Pilot:
    """Estimated (scaled) counts of pairs above each edge of ``bins`` from a row sample; plot histograms."""

    bins: pairs.Bins
    impostor: np.ndarray  # int64 [nbins] sampled counts
    genuine: np.ndarray
    imp_above: np.ndarray  # float64 [nbins + 1] estimated impostor pairs (of all) at or above each edge
    gen_above: np.ndarray
    stride: int


def _pilot(embeddings, labels, metric: str, bins: pairs.Bins, n_imp: int, n_gen: int, mesh) -> _Pilot:
    """Histogram of a systematic row sample (every stride-th row) against the other rows (no self pairs; the
    pairs inside the sample are left out), each count scaled by the exact totals (known from the labels). An
    estimate that places the thresholds of the exact passes; sets up to PILOT_ALL_ROWS rows get the exact
    histogram of all their pairs instead."""
    src = as_source(embeddings, "embeddings")
    n = src.n
    if n <= PILOT_ALL_ROWS:
        h, stride = pairs.histogram(src, labels, metric, bins, mesh=mesh, with_moments=False), 1
    else:
        stride = PILOT_STRIDE
        rows = np.arange(0, n, stride)
        others = np.setdiff1d(np.arange(n), rows)
        lab = None if labels is None else np.asarray(labels)
        h = pairs.histogram(RowSubset(src.x, rows), None if lab is None else lab[rows], metric, bins,
                            y=RowSubset(src.x, others), y_labels=None if lab is None else lab[others], mesh=mesh,
                            with_moments=False)

    def scaled_above(hist, total):
        cum = np.concatenate([np.cumsum(hist[::-1])[::-1], [0]]).astype(np.float64)
        return cum * (total / cum[0]) if cum[0] else np.zeros_like(cum)

    return _Pilot(bins, h.impostor, h.genuine, scaled_above(h.impostor, n_imp), scaled_above(h.genuine, n_gen),
                  stride)


class _Counts:
    """Exact (impostor, genuine) counts of pairs with score > t at every threshold measured so far."""

    def __init__(self, n_imp: int, n_gen: int):
        self.n_imp, self.n_gen = n_imp, n_gen
        self.at = {float("-inf"): (n_imp, n_gen), float("inf"): (0, 0)}

    def bracket(self, below) -> tuple[float, float]:
        """The consecutive measured thresholds (lo, hi) with ``below(counts at lo)`` true and at hi false
        (``below`` is monotone: true at -inf, false at +inf)."""
        ts = sorted(self.at)
        lo = max(t for t in ts if below(self.at[t]))
        hi = min(t for t in ts if t > lo)
        return lo, hi

    def pairs_between(self, lo: float, hi: float) -> int:
        return sum(self.at[lo]) - sum(self.at[hi])


def _proposals_for_rank(above: np.ndarray, edges32: np.ndarray, rank: float, rel: float) -> list[float]:
    """Thresholds whose estimated count above brackets ``rank`` at relative distances around ``rel``."""
    out = []
    for m in (-8.0, -3.0, -1.2, -0.4, 0.4, 1.2, 3.0, 8.0)[: PROPOSALS]:
        q = rank * (1.0 + m * rel)
        e = int(np.searchsorted(-above, -q, side="right")) - 1  # last edge with estimated count >= q
        if 0 <= e < edges32.size:
            out.append(float(edges32[e]))
    return out


def _split(lo: float, hi: float, pilot: _Pilot, edges32: np.ndarray) -> list[float]:
    """PROPOSALS thresholds inside (lo, hi) splitting its estimated pairs evenly (pilot), else its score range."""
    inside = np.nonzero((edges32 > lo) & (edges32 < hi))[0]
    mass = pilot.imp_above + pilot.gen_above
    if inside.size > PROPOSALS:
        m = mass[inside]
        qs = m[0] + (m[-1] - m[0]) * (np.arange(1, PROPOSALS + 1) / (PROPOSALS + 1))
        picks = {int(inside[min(inside.size - 1, int(np.searchsorted(-m, -q, side="right")))]) for q in qs}
        out = [float(edges32[e]) for e in sorted(picks)]
        if len(out) >= 2:
            return out
    a = max(lo, float(edges32[0]))
    b = min(hi, float(edges32[-1]))
    return [float(v) for v in np.float32(a + (b - a) * np.arange(1, PROPOSALS + 1) / (PROPOSALS + 1))
            if lo < v < hi]


def calibrate_embeddings(
    embeddings,
    labels,
    fmrs: Sequence[float],
    *,
    metric: str,
    nbins: int = 1 << 16,
    collect_cap: int = 1 << 22,
    plot_bins: int = 256,
    fixed_thresholds: dict[str, float] | None = None,
    note: str = "",
    mesh=None,
) -> Calibration:
    """Exact thresholds from all impostor pairs of a labelled real set.

    The order statistics are found without a histogram of every pair (whose scatter-add costs more than the
    matmul on CPU, BENCHMARKS.md): a pilot (every 32nd row against all rows, histogrammed) estimates where each
    wanted quantity lies (the rank of every FMR's tau, the EER crossing); one counting pass measures the exact
    numbers of pairs above a few thresholds around each estimate (``n_taus``: comparisons only); one collecting
    pass gathers the exact scores between the two thresholds that bracket each quantity. Every count is exact
    and checked: when a bracket is too wide (the pilot was off), it is split by another counting pass, never
    guessed. Results are identical for any mesh.

    Args:
      embeddings: float32 ``[N, D]`` (array, store ``.embeddings`` or Source); L2-normalised for cosine matchers.
      labels: int ``[N]`` identity labels, or None (every image its own identity: all pairs are impostors; state
        that caveat in the report — same-person pairs then inflate tau, making the audit conservative).
      fmrs: target false match rates.
      metric: "cosine" or "euclidean".
      nbins: bins of the pilot histogram; collect_cap: most pairs a bracket may hold before it is split further.
      plot_bins: bins of the plot histograms (from the pilot: a systematic row sample for sets over 4,096 rows).
      fixed_thresholds: extra published thresholds in native units (e.g. {"dlib published 0.6": 0.6}); their
        achieved FMR/FNMR are measured exactly.
      mesh: the engine's mesh (default: every device of every process); results are identical for any mesh.
    """
    src = as_source(embeddings, "embeddings")
    n = src.n
    n_imp, n_gen = pairs.pair_counts(labels, n)
    check_fmrs(fmrs, n_imp)
    bins = pairs.Bins(*pairs.score_range(src, None, metric), nbins)
    logging.info("calibration: %d images, %d impostor and %d genuine pairs", n, n_imp, n_gen)
    pilot = _pilot(src, labels, metric, bins, n_imp, n_gen, mesh)
    edges32 = bins.edges().astype(np.float32)
    known = _Counts(n_imp, n_gen)
    fixed = dict(fixed_thresholds or {})
    fixed_taus = [float(np.float32(units.from_native(metric, v))) for v in fixed.values()]

    def eer_side(c) -> bool:  # FMR - FNMR >= 0 at this threshold (integers: exact)
        return c[0] * n_gen - (n_gen - c[1]) * n_imp >= 0

    wanted = {f"fmr {f:g}": (lambda c, r=impostors_allowed(f, n_imp) + 1: c[0] >= r) for f in fmrs}
    if n_gen:
        wanted["eer"] = eer_side
    # First proposals: around each estimate, at distances set by the pilot's sample size.
    proposals = set(fixed_taus)
    scale_i = n_imp / max(int(pilot.impostor.sum()), 1)  # pairs of the set per pilot pair
    for f in fmrs:
        r = impostors_allowed(f, n_imp) + 1
        rel = min(0.3, 3.0 / math.sqrt(max(r / max(scale_i, 1e-12), 1.0)) + 0.005)
        proposals.update(_proposals_for_rank(pilot.imp_above, edges32, r, rel))
    if n_gen:
        d = pilot.imp_above / n_imp - (1.0 - pilot.gen_above / n_gen)
        e = int(np.searchsorted(-d, 0.0, side="right")) - 1
        r_eer = max(float(pilot.imp_above[max(e, 0)]), 1.0)
        rel = min(0.3, 3.0 / math.sqrt(max(min(r_eer / max(scale_i, 1e-12), pilot.genuine.sum()), 1.0)) + 0.02)
        proposals.update(_proposals_for_rank(pilot.imp_above, edges32, r_eer, rel))
    moments = None
    for round_ in range(MAX_ROUNDS):
        new = sorted(t for t in proposals if t not in known.at)
        if new or moments is None:
            _, totals, sums = pairs.counts_and_moments(
                src, labels, metric, new, mesh=mesh, moments=moments is None,
                progress=f"calibration: counts above {len(new)} thresholds (round {round_ + 1})")
            moments = sums if sums is not None else moments
            for t, (ci, cg) in zip(new, totals.tolist()):
                known.at[t] = (int(ci), int(cg))
        brackets = {name: known.bracket(below) for name, below in wanted.items()}
        wide = [(lo, hi) for lo, hi in set(brackets.values()) if known.pairs_between(lo, hi) > collect_cap]
        if not wide:
            break
        proposals = {t for lo, hi in wide for t in _split(lo, hi, pilot, edges32)}
        if not proposals:
            break
    # One collecting pass: the exact scores between the two thresholds of every bracket.
    edges = sorted({t for br in brackets.values() for t in br})
    intervals = {br: edges.index(br[1]) for br in set(brackets.values())}
    expected = sum(known.pairs_between(*br) for br in intervals)
    sc, _, gen, totals = pairs.collect_between(src, labels, metric, edges, sorted(intervals.values()), expected,
                                               mesh=mesh, progress="calibration: exact scores of the brackets")
    for t, (ci, cg) in zip(edges, totals.tolist()):
        if known.at[t] != (int(ci), int(cg)):
            raise RuntimeError(f"internal: counts above {t} differ between passes: {known.at[t]} vs {(ci, cg)}")
    got = {br: ((sc > np.float32(br[0])) & (sc <= np.float32(br[1]))) for br in intervals}

    thresholds = []
    for f in fmrs:
        lo, hi = brackets[f"fmr {f:g}"]
        sel = got[(lo, hi)]
        imp_in, gen_in = sc[sel & ~gen], sc[sel & gen]
        ia_hi, ga_hi = known.at[hi]
        tau = exact_order_statistic_desc(imp_in, impostors_allowed(f, n_imp) + 1 - ia_hi)
        ia = ia_hi + int((imp_in > tau).sum())
        ga = ga_hi + int((gen_in > tau).sum())
        thresholds.append(Threshold(
            fmr=float(f), tau=float(tau), tau_native=float(units.to_native(metric, tau)),
            impostors_allowed=impostors_allowed(f, n_imp), impostors_above=ia, achieved_fmr=ia / n_imp,
            fnmr=(n_gen - ga) / n_gen if n_gen else None))
    for name, tau in zip(fixed, fixed_taus):
        ia, ga = known.at[tau]
        thresholds.append(Threshold(
            fmr=ia / n_imp, tau=tau, tau_native=float(fixed[name]), impostors_allowed=ia, impostors_above=ia,
            achieved_fmr=ia / n_imp, fnmr=(n_gen - ga) / n_gen if n_gen else None, source=name))
    eer = None
    if n_gen:
        lo, hi = brackets["eer"]
        sel = got[(lo, hi)]
        ia_hi, ga_hi = known.at[hi]
        eer = stats.eer_from_bin(n_imp, n_gen, ia_hi, ga_hi, sc[sel & ~gen], sc[sel & gen]).eer
    mi, si = _mean_std(moments[0], n_imp)
    mg, sg = _mean_std(moments[1], n_gen)
    sampled = pairs.PairHistogram(bins, pilot.impostor, pilot.genuine, moments).coarsen(plot_bins)
    sample_note = ("every pair" if pilot.stride == 1 else
                   f"a systematic sample: every {pilot.stride}th row against the other rows")
    return Calibration(
        metric=metric, n_impostor=n_imp, n_genuine=n_gen, thresholds=thresholds,
        eer=eer, impostor_mean=mi, impostor_std=si,
        genuine_mean=mg if n_gen else None, genuine_std=sg if n_gen else None,
        hist_edges=sampled.bins.edges(), hist_impostor=sampled.impostor, hist_genuine=sampled.genuine,
        method=f"all {n_imp:,} impostor pairs (different identities) of {n:,} real images: exact counts above "
               f"thresholds placed by a pilot, then the exact scores between the two that bracket each tau and "
               f"the EER (plot histograms: {sample_note})",
        note=note)


def _mean_std(sums: np.ndarray, n: int) -> tuple[float, float]:
    """(mean, population std) from float64 (sum s, sum s^2) of n scores (NaN when n is 0)."""
    if n == 0:
        return float("nan"), float("nan")
    mu = sums[0] / n
    return float(mu), math.sqrt(max(sums[1] / n - mu * mu, 0.0))


def calibrate_scores(
    impostor_scores: np.ndarray,
    genuine_scores: np.ndarray | None,
    fmrs: Sequence[float],
    *,
    metric: str,
    plot_bins: int = 256,
    fixed_thresholds: dict[str, float] | None = None,
    note: str = "",
    method: str = "explicit impostor/genuine pairs",
) -> Calibration:
    """Exact thresholds from explicit score arrays (score units: larger = more similar)."""
    imp = np.asarray(impostor_scores, np.float64).ravel()
    gen = None if genuine_scores is None else np.asarray(genuine_scores, np.float64).ravel()
    n_imp = imp.size
    n_gen = 0 if gen is None else gen.size
    check_fmrs(fmrs, n_imp)
    taus = [exact_order_statistic_desc(imp, impostors_allowed(f, n_imp) + 1) for f in fmrs]
    fixed = dict(fixed_thresholds or {})
    thresholds = []
    for f, tau in zip(fmrs, taus):
        ia = int((imp > tau).sum())
        thresholds.append(Threshold(f, tau, float(units.to_native(metric, tau)), impostors_allowed(f, n_imp), ia,
                                    ia / n_imp, float((gen <= tau).mean()) if n_gen else None))
    for name, v in fixed.items():
        tau = float(units.from_native(metric, v))
        ia = int((imp > tau).sum())
        thresholds.append(Threshold(ia / n_imp, tau, float(v), ia, ia, ia / n_imp,
                                    float((gen <= tau).mean()) if n_gen else None, source=name))
    lo = min(imp.min(), gen.min() if n_gen else imp.min())
    hi = max(imp.max(), gen.max() if n_gen else imp.max())
    pad = 1e-6 + 1e-3 * (hi - lo)
    edges = np.linspace(lo - pad, hi + pad, plot_bins + 1)
    hi_ = np.histogram(imp, edges)[0].astype(np.int64)
    hg_ = np.histogram(gen, edges)[0].astype(np.int64) if n_gen else np.zeros(plot_bins, np.int64)
    eer = stats.exact_eer(gen, imp).eer if n_gen else None
    return Calibration(
        metric=metric, n_impostor=n_imp, n_genuine=n_gen, thresholds=thresholds, eer=eer,
        impostor_mean=float(imp.mean()), impostor_std=float(imp.std()),
        genuine_mean=float(gen.mean()) if n_gen else None, genuine_std=float(gen.std()) if n_gen else None,
        hist_edges=edges, hist_impostor=hi_, hist_genuine=hg_, method=method, note=note)
