"""Thresholds at a stated false match rate (FMR), from real impostor scores under the same matcher.

Definition (exact, no interpolation): with ``n`` impostor scores and ``m = floor(FMR * n)`` impostors allowed
to match, ``tau(FMR)`` is the ``(m+1)``-th largest impostor score; a pair matches when ``score > tau``. So at
most ``m`` impostors match (exactly ``m`` without ties), and ``tau`` equals
``np.quantile(impostor, 1 - FMR, method="inverted_cdf")``.

Two sources of impostor scores:

* :func:`calibrate_embeddings`: ALL pairs of different identities of a labelled real embedding set, counted by
  the tile engine with no N x N matrix: a radix select over the scores' float32 keys (``pairs.key_histogram``).
  One pass counts every pair per top-16-bit key bin and, in the bins a pilot predicts to hold the order
  statistics and the EER, per exact float32 value; tau, the counts above it and the EER follow exactly from the
  integer counts (a bin the pilot missed costs one more pass). Genuine pairs (same identity) give the FNMR at
  each tau, the EER and d'.
* :func:`calibrate_scores`: explicit impostor (and genuine) score arrays, e.g. the pairs of a verification bin
  (LFW 6,000 pairs).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import numpy as np
from absl import logging

from synleak_jax import units
from synleak_jax.attack import pairs, stats
from synleak_jax.search.engine import RowSubset, Source, as_source, key_scores, score_keys


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


def _locate(counts: np.ndarray, r: int) -> tuple[int, int]:
    """Bin holding the r-th largest item and the rank of that item inside its bin (1-based, from the top)."""
    cum = np.cumsum(counts[::-1])
    k = int(np.searchsorted(cum, r))  # first k with cum[k] >= r
    b = counts.size - 1 - k
    above = int(cum[k] - counts[b])
    return b, r - above


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


#: Key bins split into exact values in the calibration's pass. Each costs one compare per pair and 2 x 65,536
#: counters per device; the thresholds, fixed thresholds and EER need about 3 bins each.
MAX_REFINE = 16
#: The pilot: all pairs among a seeded 1/PILOT_FRACTION of the identities (about 1/64 of the pairs) predict the
#: key bins that will hold the order statistics, so the full pass counts them per exact value at once. It only
#: decides speed: a bin it misses costs one more pass, never a different result.
PILOT_FRACTION = 8
PILOT_MIN_ROWS = 16384  # smaller sets: no pilot (the second pass is cheap there)
#: Pilot uncertainty in rate units: Z binomial standard errors plus REL of the rate (pairs sharing an image are
#: dependent, and some images are "hubs" with many high impostor scores, so the binomial error alone is too small).
PILOT_Z, PILOT_REL = 6.0, 0.05


def _pilot_rows(labels, n: int, fraction: int = PILOT_FRACTION, seed: int = 0) -> np.ndarray:
    """Rows of a seeded 1/fraction of the identities (every image of each), plus 1/fraction of the unlabelled
    images: a pilot with genuine pairs (for the EER) as well as impostor pairs."""
    rng = np.random.default_rng(seed)
    if labels is None:
        return np.sort(rng.choice(n, max(2, n // fraction), replace=False))
    lab = np.asarray(labels)
    ids = np.unique(lab[lab >= 0])
    keep = rng.choice(ids, max(1, ids.size // fraction), replace=False) if ids.size else ids
    unlabelled = np.nonzero(lab < 0)[0]
    extra = rng.choice(unlabelled, unlabelled.size // fraction, replace=False) if unlabelled.size else unlabelled
    return np.union1d(np.nonzero(np.isin(lab, keep))[0], extra)


def _rate_error(p: np.ndarray, n: int) -> np.ndarray:
    return PILOT_Z * np.sqrt(p * (1 - p) / max(n, 1)) + PILOT_REL * p + 1.0 / max(n, 1)


def _candidates(d: np.ndarray, u: np.ndarray) -> list[tuple[float, int]]:
    """(distance, bin) of the bins that may hold the crossing of the decreasing edge function ``d`` (at edges
    0..P; bin b lies between edges b and b + 1) within its error ``u``: distance 0 for the bin holding the
    estimated crossing, else how far (in units of ``u``) ``d`` must move for the bin to hold it (<= 1)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        above = np.where(d[1:] > 0, d[1:] / u[1:], 0.0)  # the bin lies above the crossing: d must drop
        below = np.where(d[:-1] < 0, -d[:-1] / u[:-1], 0.0)
    dist = np.maximum(above, below)
    possible = np.nonzero(dist <= 1.0)[0]
    return sorted(zip(dist[possible].tolist(), possible.tolist()))


def _predict_bins(pilot: pairs.KeyHistogram, fmrs: Sequence[float], genuine: np.ndarray | None
                  ) -> list[list[tuple[float, int]]]:
    """Per target (each FMR, then the EER) the key bins that may hold it: the impostor rates from the pilot's
    histogram; for the EER the genuine pairs of the whole set (``genuine``: per key bin, scored on the host — they
    are few, and a pilot's genuine pairs are too clustered by identity to place the EER: 5 of 10 seeds missed)."""
    n_i = pilot.n_impostor
    out = []
    if n_i == 0:
        return out
    fmr_edge = np.concatenate([np.cumsum(pilot.top[0][::-1])[::-1], [0]]) / n_i  # FMR at each bin's lower edge
    u_i = _rate_error(fmr_edge, n_i)
    for f in fmrs:
        out.append(_candidates(fmr_edge - f, u_i))
    n_g = 0 if genuine is None else int(genuine.sum())
    if n_g:
        fnmr_edge = np.concatenate([[0], np.cumsum(genuine)]) / n_g
        out.append(_candidates(fmr_edge - fnmr_edge, u_i + 1e-3 * fnmr_edge + 2.0 / n_g))
    return out


def _choose(required: list[int], predicted: list[list[tuple[float, int]]], budget: int = MAX_REFINE) -> list[int]:
    """The required bins, then the predicted ones by distance (every target's own bin first), up to budget."""
    chosen = list(dict.fromkeys(required))[:budget]
    for _, _, b in sorted((dist, t, b) for t, q in enumerate(predicted) for dist, b in q):
        if len(chosen) >= budget:
            break
        if b not in chosen:
            chosen.append(b)
    return chosen


def calibrate_embeddings(
    embeddings,
    labels,
    fmrs: Sequence[float],
    *,
    metric: str,
    plot_bins: int = 256,
    fixed_thresholds: dict[str, float] | None = None,
    note: str = "",
    mesh=None,
    pilot: bool | None = None,
) -> Calibration:
    """Exact thresholds from all impostor pairs of a labelled real set, by a radix select over float32 keys.

    One pass of the tile engine counts every pair by the top 16 bits of its score's order-preserving key
    (``pairs.key_histogram``), and counts the pairs of up to MAX_REFINE bins per exact float32 value: those a
    pilot over a seeded 1/8 of the identities predicts to hold each FMR's order statistic and the EER, plus the
    bins of the fixed thresholds. Every tau, count above it, FNMR and the EER then follow exactly from integer
    counts. A bin the pilot missed is counted per value in one more pass. Two passes of the 2^16-bin score
    histogram plus a collection of the scores in the threshold bins took 101 s at 100k images; this, one pass
    plus a 1/64 pilot (BENCHMARKS.md).

    Args:
      embeddings: float32 ``[N, D]`` (array, store ``.embeddings`` or Source); L2-normalised for cosine matchers.
      labels: int ``[N]`` identity labels, or None (every image its own identity: all pairs are impostors; state
        that caveat in the report — same-person pairs then inflate tau, making the audit conservative).
      fmrs: target false match rates.
      metric: "cosine" or "euclidean".
      fixed_thresholds: extra published thresholds in native units (e.g. {"dlib published 0.6": 0.6}); their
        achieved FMR/FNMR are measured exactly.
      mesh: the engine's mesh (default: every device of every process); results are identical for any mesh.
      pilot: run the pilot (default: when N >= PILOT_MIN_ROWS). It changes the number of passes, never a result.
    """
    n = as_source(embeddings, "embeddings").n
    lab = None if labels is None else np.asarray(labels)
    fixed = dict(fixed_thresholds or {})
    fixed_keys = [score_keys(np.float32(units.from_native(metric, v))) for v in fixed.values()]
    required = [int(t) for t, _ in fixed_keys]
    predicted: list[list[tuple[float, int]]] = []
    pilot_note = ""
    if pilot if pilot is not None else n >= PILOT_MIN_ROWS:
        rows = _pilot_rows(lab, n)
        sub = RowSubset(embeddings.x if isinstance(embeddings, Source) else embeddings, rows)
        ph = pairs.key_histogram(sub, None if lab is None else lab[rows], metric, mesh=mesh)
        predicted = _predict_bins(ph, fmrs, pairs.genuine_key_counts(embeddings, lab, metric))
        pilot_note = f"; pilot over {rows.size:,} images chose the bins"
    refine = _choose(required, predicted)
    logging.info("calibration: %d images, %d pairs, float32-key histogram with %d bins split", n,
                 n * (n - 1) // 2, len(refine))
    kh = pairs.key_histogram(embeddings, lab, metric, refine=refine, mesh=mesh,
                             progress="calibration: exact key histogram")
    n_imp, n_gen = kh.n_impostor, kh.n_genuine
    check_fmrs(fmrs, n_imp)
    top_imp, top_gen = kh.top
    imp_cum = np.concatenate([np.cumsum(top_imp[::-1])[::-1], [0]])  # pairs in bins >= b
    gen_cum = np.concatenate([np.cumsum(top_gen[::-1])[::-1], [0]])
    fmr_targets = [_locate(top_imp, impostors_allowed(f, n_imp) + 1) for f in fmrs]  # (bin, rank in bin)
    eer_loc = stats.eer_locate(top_imp, top_gen) if n_gen else None
    needed = [b for b, _ in fmr_targets] + required + ([eer_loc.bin] if eer_loc and eer_loc.bin is not None else [])
    missing = [b for b in dict.fromkeys(needed) if b not in kh.refined]
    refined = dict(kh.refined)
    extra_passes = 0
    for a in range(0, len(missing), MAX_REFINE):  # bins the pilot did not predict (or no pilot): one more pass
        more = pairs.key_histogram(embeddings, lab, metric, refine=missing[a:a + MAX_REFINE], mesh=mesh,
                                   progress="calibration: exact values of the threshold bins")
        refined.update(more.refined)
        extra_passes += 1

    def above(b: int, low: int) -> tuple[int, int]:
        """(impostor, genuine) pairs whose key exceeds (b, low)."""
        fine = refined[b]
        return int(imp_cum[b + 1] + fine[0, low + 1:].sum()), int(gen_cum[b + 1] + fine[1, low + 1:].sum())

    thresholds = []
    for (b, r), f in zip(fmr_targets, fmrs):
        low, _ = _locate(refined[b][0], r)
        tau = float(key_scores(b, low))
        ia, ga = above(b, low)
        thresholds.append(Threshold(
            fmr=float(f), tau=tau, tau_native=float(units.to_native(metric, tau)),
            impostors_allowed=impostors_allowed(f, n_imp), impostors_above=ia, achieved_fmr=ia / n_imp,
            fnmr=(n_gen - ga) / n_gen if n_gen else None))
    for (name, native), (b, low) in zip(fixed.items(), fixed_keys):
        ia, ga = above(int(b), int(low))
        thresholds.append(Threshold(
            fmr=ia / n_imp, tau=float(key_scores(b, low)), tau_native=float(native), impostors_allowed=ia,
            impostors_above=ia, achieved_fmr=ia / n_imp, fnmr=(n_gen - ga) / n_gen if n_gen else None,
            source=name))
    eer = None
    if eer_loc is not None and eer_loc.bin is None:
        eer = eer_loc.result.eer
    elif eer_loc is not None:
        fine = refined[eer_loc.bin]
        loc = stats.eer_locate(fine[0], fine[1], n_impostor=n_imp, n_genuine=n_gen,
                               impostor_above_range=eer_loc.impostor_above_bin,
                               genuine_above_range=eer_loc.genuine_above_bin)
        if loc.bin is None:
            eer = loc.result.eer
        else:  # one float32 value holds the crossing: its two operating points
            eer = stats.eer_at_value(n_imp, n_gen, loc.impostor_above_bin, loc.genuine_above_bin,
                                     int(fine[0, loc.bin]), int(fine[1, loc.bin]),
                                     float(key_scores(eer_loc.bin, loc.bin))).eer
    edges, plot_imp, plot_gen = kh.rebin(plot_bins)
    mi, si = kh.moments("impostor")
    mg, sg = kh.moments("genuine")
    passes = 1 + extra_passes
    return Calibration(
        metric=metric, n_impostor=n_imp, n_genuine=n_gen, thresholds=thresholds,
        eer=eer, impostor_mean=mi, impostor_std=si,
        genuine_mean=mg if n_gen else None, genuine_std=sg if n_gen else None,
        hist_edges=edges, hist_impostor=plot_imp, hist_genuine=plot_gen,
        method=f"all {n_imp:,} impostor pairs (different identities) of {n:,} real images, exact float32-key "
               f"histogram (the threshold and EER bins counted per exact value; {passes} "
               f"pass{'es' if passes > 1 else ''}{pilot_note})",
        note=note)


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
