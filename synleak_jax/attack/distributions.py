"""Real-vs-real and real-vs-generated score distributions (Tinsley et al.) and agreement between matchers.

Per matcher: the R-R impostor distribution (from calibration) and the R-G distribution over ALL real x synthetic
pairs (blockwise histogram, exact counts). Without leakage a generated face is an impostor to every real face, so
the share of R-G pairs above tau(FMR) should be about FMR; the ratio ``rg_tail / rr_tail`` measures the excess.
Across matchers: which synthetic images (and which pairs) each flags, pairwise overlaps and Jaccard indices.
"""

from __future__ import annotations

import itertools


from synleak_jax.attack import calibration as calibration_lib
from synleak_jax.attack.neighbours import CrossScan
from synleak_jax import units


def real_vs_generated(scan: CrossScan, calibration: calibration_lib.Calibration) -> dict:
    """R-G moments, exact histogram (plots) and tails at every threshold of ``calibration`` (whose taus the scan
    counted, in the same order)."""
    taus = calibration.thresholds
    if len(scan.above) != len(taus):
        raise ValueError(f"the scan counted {len(scan.above)} thresholds, the calibration has {len(taus)}")
    metric = calibration.metric
    n = scan.n_pairs
    tails = []
    for t, a in zip(taus, scan.above):
        rg = int(a) / n if n else float("nan")
        tails.append({"fmr": t.fmr, "source": t.source, "tau_native": t.tau_native,
                      "real_vs_real_tail": t.achieved_fmr, "real_vs_generated_tail": rg,
                      "real_vs_generated_pairs_above": int(a),
                      "excess_ratio": (rg / t.achieved_fmr) if t.achieved_fmr > 0 else None})
    mean, std = scan.moments()
    out = {"n_pairs": n, "mean": calibration_lib._num(units.to_native(metric, mean)), "std": calibration_lib._num(std), "tails": tails}
    if scan.hist is not None:
        out["hist_edges"] = scan.hist.bins.edges()
        out["hist_counts"] = scan.hist.impostor
    return out


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
