"""Thresholds at a stated false match rate (FMR), from real impostor scores under the same matcher.

Definition (exact, no interpolation): with ``n`` impostor scores and ``m = floor(FMR * n)`` impostors allowed
to match, ``tau(FMR)`` is the ``(m+1)``-th largest impostor score; a pair matches when ``score > tau``. So at
most ``m`` impostors match (exactly ``m`` without ties), and ``tau`` equals
``np.quantile(impostor, 1 - FMR, method="inverted_cdf")``.

Two sources of impostor scores:

* :func:`calibrate_embeddings`: ALL pairs of different identities of a labelled real embedding set, counted by
  the blockwise histogram kernel (``scores.pair_histogram``: 2^16 bins, exact counts, no N x N matrix); the
  exact tau is found by refining the one bin that holds the order statistic (a second histogram inside that
  bin when it is crowded, then collecting the exact scores of the final bin). Genuine pairs (same identity) give
  the FNMR at each tau, the EER and d'.
* :func:`calibrate_scores`: explicit impostor (and genuine) score arrays, e.g. the pairs of a verification bin
  (LFW 6,000 pairs).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import numpy as np
from absl import logging

from synleak_jax.attack import scores as S


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
        return decidability(self.genuine_mean, self.genuine_std, self.impostor_mean, self.impostor_std)

    def tau(self, fmr: float) -> float:
        for t in self.thresholds:
            if t.source == "calibrated" and math.isclose(t.fmr, fmr, rel_tol=1e-9):
                return t.tau
        raise KeyError(f"no threshold calibrated at FMR {fmr:g}; have {[t.fmr for t in self.thresholds]}")

    def to_dict(self) -> dict:
        return {
            "metric": self.metric,
            "native_unit": S.native_unit(self.metric),
            "method": self.method,
            "note": self.note,
            "n_impostor_pairs": int(self.n_impostor),
            "n_genuine_pairs": int(self.n_genuine),
            "thresholds": [t.to_dict() for t in self.thresholds],
            "eer": _num(self.eer),
            "impostor_mean": _num(S.to_native(self.metric, self.impostor_mean)),
            "impostor_std": _num(self.impostor_std),
            "genuine_mean": _num(None if self.genuine_mean is None else S.to_native(self.metric, self.genuine_mean)),
            "genuine_std": _num(self.genuine_std),
            "decidability": _num(self.decidability),
        }


def _num(x):
    if x is None:
        return None
    x = float(x)
    return None if not math.isfinite(x) else x


def decidability(mu_g: float, s_g: float, mu_i: float, s_i: float) -> float:
    """d' = |mu_g - mu_i| / sqrt((s_g^2 + s_i^2) / 2)."""
    den = math.sqrt((s_g * s_g + s_i * s_i) / 2.0)
    return float("inf") if den == 0 else abs(mu_g - mu_i) / den


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


def _eer_from_hist(h_imp: np.ndarray, h_gen: np.ndarray) -> float | None:
    n_i, n_g = h_imp.sum(), h_gen.sum()
    if n_i == 0 or n_g == 0:
        return None
    # At the threshold between bin t-1 and t: FMR = impostors in bins >= t, FNMR = genuine in bins < t.
    fmr = np.concatenate([np.cumsum(h_imp[::-1])[::-1], [0]]) / n_i
    fnmr = np.concatenate([[0], np.cumsum(h_gen)]) / n_g
    t = int(np.argmin(np.abs(fmr - fnmr)))
    return float((fmr[t] + fnmr[t]) / 2.0)


def _coarsen(h: np.ndarray, factor: int) -> np.ndarray:
    return h.reshape(-1, factor).sum(1)


def calibrate_embeddings(
    embeddings,
    labels,
    fmrs: Sequence[float],
    *,
    metric: str,
    nbins: int = 1 << 16,
    block: int = 1024,
    collect_cap: int = 1 << 20,
    plot_bins: int = 256,
    fixed_thresholds: dict[str, float] | None = None,
    note: str = "",
    devices=None,
) -> Calibration:
    """Exact thresholds from all impostor pairs of a labelled real set.

    Args:
      embeddings: float32 ``[N, D]`` (array or array-like); L2-normalised for cosine matchers.
      labels: int ``[N]`` identity labels, or None (every image its own identity: all pairs are impostors; state
        that caveat in the report — same-person pairs then inflate tau, making the audit conservative).
      fmrs: target false match rates.
      metric: "cosine" or "euclidean".
      fixed_thresholds: extra published thresholds in native units (e.g. {"dlib published 0.6": 0.6}); their
        achieved FMR/FNMR are measured exactly.
      devices: devices the row blocks are spread over (default: all local devices); results are identical for
        any device count.
    """
    sets = S.PairSets(embeddings, labels, metric=metric, block=block, devices=devices)
    n_pairs = sets.n_pairs()
    logging.info("calibration: %d images, %d pairs, %d-bin histogram", sets.n_a, n_pairs, nbins)
    bins = S.Bins(sets.range[0], sets.range[1], nbins)
    hist = S.pair_histogram(sets, bins, progress="calibration histogram")
    n_imp, n_gen = hist.n_impostor, hist.n_genuine
    check_fmrs(fmrs, n_imp)
    located = [_locate(hist.impostor, impostors_allowed(f, n_imp) + 1) for f in fmrs]
    # Bins small enough to collect directly are gathered in ONE extra pass for all FMRs together.
    small = sorted({b for b, _ in located if int(hist.impostor[b]) <= collect_cap})
    got_s, got_b = (S.collect_impostor_scores_in_bins(sets, bins, small, int(hist.impostor[small].sum()))
                    if small else (None, None))
    taus = []
    for b, r in located:
        c = int(hist.impostor[b])
        if c <= collect_cap:
            vals = got_s[got_b == b]
        else:  # crowded bin: histogram inside it, then collect the one sub-bin
            sub = bins.sub(b)
            h2 = S.pair_histogram(sets, sub, restrict1=(bins, b))
            b2, r = _locate(h2.impostor, r)
            vals = S.collect_impostor_scores(sets, (bins, b), (sub, b2), int(h2.impostor[b2]))
        taus.append(exact_order_statistic_desc(vals, r))
    fixed = dict(fixed_thresholds or {})
    fixed_taus = [float(S.from_native(metric, v)) for v in fixed.values()]
    all_taus = np.asarray(taus + fixed_taus, np.float32)
    imp_above, gen_above = S.count_above(sets, all_taus) if len(all_taus) else (np.zeros(0), np.zeros(0))
    thresholds = []
    names = [None] * len(taus) + list(fixed)
    fmr_list = list(fmrs) + [float("nan")] * len(fixed)
    for i, tau in enumerate(all_taus.tolist()):
        ia, ga = int(imp_above[i]), int(gen_above[i])
        thresholds.append(Threshold(
            fmr=float(fmr_list[i]) if names[i] is None else ia / n_imp,
            tau=float(tau), tau_native=float(S.to_native(metric, tau)),
            impostors_allowed=impostors_allowed(fmr_list[i], n_imp) if names[i] is None else ia,
            impostors_above=ia, achieved_fmr=ia / n_imp,
            fnmr=(n_gen - ga) / n_gen if n_gen else None,
            source="calibrated" if names[i] is None else names[i]))
    factor = max(1, nbins // plot_bins)
    mi, si = hist.moments("impostor")
    mg, sg = hist.moments("genuine")
    return Calibration(
        metric=metric, n_impostor=n_imp, n_genuine=n_gen, thresholds=thresholds,
        eer=_eer_from_hist(hist.impostor, hist.genuine), impostor_mean=mi, impostor_std=si,
        genuine_mean=mg if n_gen else None, genuine_std=sg if n_gen else None,
        hist_edges=bins.edges()[::factor], hist_impostor=_coarsen(hist.impostor, factor),
        hist_genuine=_coarsen(hist.genuine, factor),
        method=f"all {n_imp:,} impostor pairs (different identities) of {sets.n_a:,} real images, exact blockwise "
               f"histogram ({nbins} bins) + refined order statistic",
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
        thresholds.append(Threshold(f, tau, float(S.to_native(metric, tau)), impostors_allowed(f, n_imp), ia,
                                    ia / n_imp, float((gen <= tau).mean()) if n_gen else None))
    for name, v in fixed.items():
        tau = float(S.from_native(metric, v))
        ia = int((imp > tau).sum())
        thresholds.append(Threshold(ia / n_imp, tau, float(v), ia, ia, ia / n_imp,
                                    float((gen <= tau).mean()) if n_gen else None, source=name))
    lo = min(imp.min(), gen.min() if n_gen else imp.min())
    hi = max(imp.max(), gen.max() if n_gen else imp.max())
    pad = 1e-6 + 1e-3 * (hi - lo)
    edges = np.linspace(lo - pad, hi + pad, plot_bins + 1)
    hi_ = np.histogram(imp, edges)[0].astype(np.int64)
    hg_ = np.histogram(gen, edges)[0].astype(np.int64) if n_gen else np.zeros(plot_bins, np.int64)
    fine = np.linspace(lo - pad, hi + pad, 4096 + 1)
    eer = _eer_from_hist(np.histogram(imp, fine)[0], np.histogram(gen, fine)[0]) if n_gen else None
    return Calibration(
        metric=metric, n_impostor=n_imp, n_genuine=n_gen, thresholds=thresholds, eer=eer,
        impostor_mean=float(imp.mean()), impostor_std=float(imp.std()),
        genuine_mean=float(gen.mean()) if n_gen else None, genuine_std=float(gen.std()) if n_gen else None,
        hist_edges=edges, hist_impostor=hi_, hist_genuine=hg_, method=method, note=note)
