"""Thresholds at a stated false match rate (FMR), from real impostor scores under the same matcher.

Definition (exact, no interpolation): with ``n`` impostor scores and ``m = floor(FMR * n)`` impostors allowed
to match, ``tau(FMR)`` is the ``(m+1)``-th largest impostor score; a pair matches when ``score > tau``. So at
most ``m`` impostors match (exactly ``m`` without ties), and ``tau`` equals
``np.quantile(impostor, 1 - FMR, method="inverted_cdf")``.

Two sources of impostor scores:

* :func:`calibrate_embeddings`: ALL pairs of different identities of a labelled real embedding set, counted by
  the tile engine (``pairs.histogram``: 2^16 bins, exact counts, no N x N matrix); the exact tau is found by
  collecting the exact scores of the one bin that holds the order statistic (after a second histogram inside
  that bin when it is crowded). Two passes over all pairs in the usual case: the histogram, then one collection
  pass for every FMR and fixed threshold together; the counts above each threshold follow exactly from the
  histogram plus the collected scores of the threshold's bin (bins are monotone in the score). Genuine pairs
  (same identity) give the FNMR at each tau, the EER and d'.
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


def _coarsen(h: np.ndarray, factor: int) -> np.ndarray:
    return h.reshape(-1, factor).sum(1)


def _bin_of(value: float, bins: pairs.Bins) -> int:
    """The bin of a score, computed with the engine's float32 formula (so it agrees with every pass)."""
    lo, inv_w = np.float32(bins.lo), np.float32(bins.inv_width)
    return int(np.clip(np.floor((np.float32(value) - lo) * inv_w), 0, bins.nbins - 1))


def calibrate_embeddings(
    embeddings,
    labels,
    fmrs: Sequence[float],
    *,
    metric: str,
    nbins: int = 1 << 16,
    collect_cap: int = 1 << 20,
    plot_bins: int = 256,
    fixed_thresholds: dict[str, float] | None = None,
    note: str = "",
    mesh=None,
) -> Calibration:
    """Exact thresholds from all impostor pairs of a labelled real set.

    Args:
      embeddings: float32 ``[N, D]`` (array, store ``.embeddings`` or Source); L2-normalised for cosine matchers.
      labels: int ``[N]`` identity labels, or None (every image its own identity: all pairs are impostors; state
        that caveat in the report — same-person pairs then inflate tau, making the audit conservative).
      fmrs: target false match rates.
      metric: "cosine" or "euclidean".
      nbins: bins of the first histogram; collect_cap: largest bin collected directly (else refined first).
      fixed_thresholds: extra published thresholds in native units (e.g. {"dlib published 0.6": 0.6}); their
        achieved FMR/FNMR are measured exactly.
      mesh: the engine's mesh (default: every device of every process); results are identical for any mesh.
    """
    n = int(embeddings.shape[0])
    bins = pairs.Bins(*pairs.score_range(embeddings, None, metric), nbins)
    logging.info("calibration: %d images, %d pairs, %d-bin histogram", n, n * (n - 1) // 2, nbins)
    hist = pairs.histogram(embeddings, labels, metric, bins, mesh=mesh, progress="calibration histogram")
    n_imp, n_gen = hist.n_impostor, hist.n_genuine
    check_fmrs(fmrs, n_imp)
    imp_cum = np.concatenate([np.cumsum(hist.impostor[::-1])[::-1], [0]])  # pairs in bins >= b
    gen_cum = np.concatenate([np.cumsum(hist.genuine[::-1])[::-1], [0]])

    fmr_targets = [_locate(hist.impostor, impostors_allowed(f, n_imp) + 1) for f in fmrs]  # (bin, rank in bin)
    fixed = dict(fixed_thresholds or {})
    fixed_taus = [float(units.from_native(metric, v)) for v in fixed.values()]
    # The EER point (exact, docs/statistics.md): the bin where FMR - FNMR changes sign joins the collection.
    eer_loc = stats.eer_locate(hist.impostor, hist.genuine) if n_gen else None
    eer_bins = [eer_loc.bin] if eer_loc is not None and eer_loc.bin is not None else []
    # Crowded bins get a histogram inside them first (a restricted pass), then only sub-bins are collected.
    refined: dict[int, tuple[pairs.Bins, pairs.PairHistogram] | None] = {}
    for b in [b for b, _ in fmr_targets] + [_bin_of(tau, bins) for tau in fixed_taus] + eer_bins:
        if b not in refined:
            refined[b] = None
            if int(hist.impostor[b] + hist.genuine[b]) > collect_cap:
                sub = bins.sub(b)
                refined[b] = (sub, pairs.histogram(embeddings, labels, metric, sub, restrict=(bins, b), mesh=mesh))
    where = []  # per FMR: (bin, sub-bin or -1, rank inside it, impostors above it, genuine above it)
    collect_plan: dict[tuple, int] = {}  # (bin, sub-bin or -1) -> expected pairs
    for b, r in fmr_targets:
        if refined[b] is None:
            collect_plan[(b, -1)] = int(hist.impostor[b] + hist.genuine[b])
            where.append((b, -1, r, int(imp_cum[b + 1]), int(gen_cum[b + 1])))
        else:
            sub, h2 = refined[b]
            b2, r2 = _locate(h2.impostor, r)
            collect_plan[(b, b2)] = int(h2.impostor[b2] + h2.genuine[b2])
            where.append((b, b2, r2, int(imp_cum[b + 1] + h2.impostor[b2 + 1:].sum()),
                          int(gen_cum[b + 1] + h2.genuine[b2 + 1:].sum())))
    fixed_where = []
    for tau in fixed_taus:
        b = _bin_of(tau, bins)
        if refined[b] is None:
            collect_plan[(b, -1)] = int(hist.impostor[b] + hist.genuine[b])
            fixed_where.append((b, -1, int(imp_cum[b + 1]), int(gen_cum[b + 1])))
        else:
            sub, h2 = refined[b]
            b2 = _bin_of(tau, sub)
            collect_plan[(b, b2)] = int(h2.impostor[b2] + h2.genuine[b2])
            fixed_where.append((b, b2, int(imp_cum[b + 1] + h2.impostor[b2 + 1:].sum()),
                                int(gen_cum[b + 1] + h2.genuine[b2 + 1:].sum())))
    eer_where = None  # (bin, sub-bin or -1, impostors above it, genuine above it)
    if eer_bins:
        b = eer_bins[0]
        if refined[b] is None:
            collect_plan[(b, -1)] = int(hist.impostor[b] + hist.genuine[b])
            eer_where = (b, -1, eer_loc.impostor_above_bin, eer_loc.genuine_above_bin)
        else:
            sub, h2 = refined[b]
            sub_loc = stats.eer_locate(h2.impostor, h2.genuine, n_impostor=n_imp, n_genuine=n_gen,
                                       impostor_above_range=eer_loc.impostor_above_bin,
                                       genuine_above_range=eer_loc.genuine_above_bin)
            if sub_loc.bin is None:  # exactly on a sub-bin edge: nothing to collect
                eer_loc = sub_loc
            else:
                collect_plan[(b, sub_loc.bin)] = int(h2.impostor[sub_loc.bin] + h2.genuine[sub_loc.bin])
                eer_where = (b, sub_loc.bin, sub_loc.impostor_above_bin, sub_loc.genuine_above_bin)
    # One collection pass for all directly collected bins; one per refined bin (its sub-bins).
    got: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}
    direct = sorted(b for (b, b2) in collect_plan if b2 < 0)
    if direct:
        sc, rows, gen = pairs.collect(embeddings, labels, metric, bins, direct,
                                      sum(collect_plan[(b, -1)] for b in direct), mesh=mesh,
                                      progress="calibration: exact scores of the threshold bins")
        bin_of = np.clip(np.floor((sc - np.float32(bins.lo)) * np.float32(bins.inv_width)), 0,
                         bins.nbins - 1).astype(np.int64)
        for b in direct:
            got[(b, -1)] = (sc[bin_of == b], gen[bin_of == b])
    for b in sorted({b for (b, b2) in collect_plan if b2 >= 0}):
        sub, _ = refined[b]
        subs = sorted(b2 for (bb, b2) in collect_plan if bb == b and b2 >= 0)
        sc, rows, gen = pairs.collect(embeddings, labels, metric, sub, subs,
                                      sum(collect_plan[(b, b2)] for b2 in subs), restrict=(bins, b), mesh=mesh)
        sb = np.clip(np.floor((sc - np.float32(sub.lo)) * np.float32(sub.inv_width)), 0,
                     sub.nbins - 1).astype(np.int64)
        for b2 in subs:
            got[(b, b2)] = (sc[sb == b2], gen[sb == b2])
    thresholds = []
    for (b, b2, r, imp_hi, gen_hi), f in zip(where, fmrs):  # noqa: B007
        sc, gen = got[(b, b2)]
        tau = exact_order_statistic_desc(sc[~gen], r)
        ia = imp_hi + int((sc[~gen] > tau).sum())
        ga = gen_hi + int((sc[gen] > tau).sum())
        thresholds.append(Threshold(
            fmr=float(f), tau=float(tau), tau_native=float(units.to_native(metric, tau)),
            impostors_allowed=impostors_allowed(f, n_imp), impostors_above=ia, achieved_fmr=ia / n_imp,
            fnmr=(n_gen - ga) / n_gen if n_gen else None))
    for (b, b2, imp_hi, gen_hi), name, tau in zip(fixed_where, fixed, fixed_taus):
        sc, gen = got[(b, b2)]
        tau32 = float(np.float32(tau))
        ia = imp_hi + int((sc[~gen] > np.float32(tau)).sum())
        ga = gen_hi + int((sc[gen] > np.float32(tau)).sum())
        thresholds.append(Threshold(
            fmr=ia / n_imp, tau=tau32, tau_native=float(fixed[name]), impostors_allowed=ia, impostors_above=ia,
            achieved_fmr=ia / n_imp, fnmr=(n_gen - ga) / n_gen if n_gen else None, source=name))
    plot = hist.coarsen(plot_bins)
    mi, si = hist.moments("impostor")
    mg, sg = hist.moments("genuine")
    eer = None
    if eer_where is not None:
        b, b2, imp_hi, gen_hi = eer_where
        sc, gen = got[(b, b2)]
        eer = stats.eer_from_bin(n_imp, n_gen, imp_hi, gen_hi, sc[~gen], sc[gen]).eer
    elif eer_loc is not None:
        eer = eer_loc.result.eer
    return Calibration(
        metric=metric, n_impostor=n_imp, n_genuine=n_gen, thresholds=thresholds,
        eer=eer, impostor_mean=mi, impostor_std=si,
        genuine_mean=mg if n_gen else None, genuine_std=sg if n_gen else None,
        hist_edges=plot.bins.edges(), hist_impostor=plot.impostor, hist_genuine=plot.genuine,
        method=f"all {n_imp:,} impostor pairs (different identities) of {n:,} real images, exact histogram "
               f"({nbins} bins) + exact scores of the threshold and EER bins",
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
