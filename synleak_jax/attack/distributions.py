"""Real-vs-real and real-vs-generated score distributions (Tinsley et al.) and agreement between matchers.

Per matcher: the R-R impostor distribution (from calibration) and the R-G distribution over ALL real x synthetic
pairs (blockwise histogram, exact counts). Without leakage a generated face is an impostor to every real face, so
the share of R-G pairs above tau(FMR) should be about FMR; the ratio ``rg_tail / rr_tail`` measures the excess.
Across matchers: which synthetic images (and which pairs) each flags, pairwise overlaps and Jaccard indices.
"""

from __future__ import annotations

import itertools

import numpy as np

from synleak_jax.attack import calibration as C
from synleak_jax.attack import scores as S


def real_vs_generated(real, syn, calibration: C.Calibration, *, metric: str, nbins: int = 1 << 16,
                      block: int = 1024, plot_bins: int = 256) -> dict:
    """R-G histogram (for plots, on the calibration's plot edges when they cover the range) and tails."""
    sets = S.PairSets(real, None, syn, None, metric=metric, block=block)
    bins = S.Bins(sets.range[0], sets.range[1], nbins)
    hist = S.pair_histogram(sets, bins, progress="real-vs-generated histogram")
    n = hist.n_impostor
    taus = calibration.thresholds
    above, _ = S.count_above(sets, [t.tau for t in taus]) if taus else (np.zeros(0), None)
    tails = []
    for t, a in zip(taus, above):
        rg = int(a) / n if n else float("nan")
        tails.append({"fmr": t.fmr, "source": t.source, "tau_native": t.tau_native,
                      "real_vs_real_tail": t.achieved_fmr, "real_vs_generated_tail": rg,
                      "real_vs_generated_pairs_above": int(a),
                      "excess_ratio": (rg / t.achieved_fmr) if t.achieved_fmr > 0 else None})
    factor = max(1, nbins // plot_bins)
    mean, std = hist.moments("impostor")
    return {"n_pairs": n, "mean": C._num(S.to_native(metric, mean)), "std": C._num(std), "tails": tails,
            "hist_edges": bins.edges()[::factor], "hist_counts": hist.impostor.reshape(-1, factor).sum(1)}


def jaccard(a: set, b: set) -> float | None:
    u = len(a | b)
    return None if u == 0 else len(a & b) / u


def agreement(flags: dict[str, set]) -> list[dict]:
    """Pairwise overlap of the items (synthetic ids, or (syn, real) pairs) each matcher flags."""
    rows = []
    for m1, m2 in itertools.combinations(sorted(flags), 2):
        a, b = flags[m1], flags[m2]
        rows.append({"matcher_a": m1, "matcher_b": m2, "flagged_a": len(a), "flagged_b": len(b),
                     "both": len(a & b), "only_a": len(a - b), "only_b": len(b - a), "jaccard": jaccard(a, b)})
    return rows


def flagged_by_all(flags: dict[str, set]) -> set:
    sets = list(flags.values())
    return set.intersection(*sets) if sets else set()
