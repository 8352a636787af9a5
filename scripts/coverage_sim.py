"""Coverage of the leakage card's 95% intervals, by simulating audits whose truth is known.

    flock /tmp/synleak_bench.lock python scripts/coverage_sim.py --sims=1000

Each scenario draws ``--sims`` independent data sets from a model with a known true value, computes the interval
exactly as the card does, and counts how often it contains the truth. A correct 95% interval covers ~0.95 of the
time: with 1,000 simulations the Monte-Carlo standard error is ~0.007, so [0.93, 0.97] is the band of "no visible
deviation". Scenarios:

* ``clopper_pearson``: a rate k/n (matched members, matched synthetic images) at several (n, p).
* ``newcombe``: the members-minus-control rate difference.
* ``delong``: the membership AUC (binormal scores, equal variances: AUC = Phi(mu / sqrt 2)), logit and clip.
* ``tpr_at_fpr``: the TPR and FPR intervals at the operating point picked on the same scores (truth: the picked
  threshold's population rates).
* ``epsilon``: the one-sided epsilon lower bound of one operating point (holds when <= the true epsilon).
* ``bootstrap``: the identity bootstrap of the AUC (and of the TPR at FPR 0.1) when 5 images per identity share
  an identity effect (clustered data), beside DeLong on the same data (which treats the images as independent).
* ``fmr_bootstrap``: the identity bootstrap of the achieved FMR at a fixed tau from all impostor pairs of K
  identities whose scores share identity effects (pair score = u_i + u_j + e_ij), with and without the pair
  correction, beside a Clopper-Pearson interval over the pairs (which treats them as independent).

Prints one line per scenario; ``--out`` writes the figures as JSON. tests/attack/test_stats.py runs a reduced
version (``-m slow``).
"""

from __future__ import annotations

import argparse
import json
import math
import time

import numpy as np
from scipy import stats as scipy_stats

from synleak_jax.attack import stats


def _covered(lo, hi, truth) -> np.ndarray:
    return (np.asarray(lo) <= truth) & (truth <= np.asarray(hi))


def clopper_pearson(sims: int, rng: np.random.Generator) -> list[dict]:
    rows = []
    for n, p in [(50, 0.2), (50, 0.7), (1000, 0.01), (10_000, 0.001), (200, 0.5)]:
        k = rng.binomial(n, p, sims)
        lo, hi = stats.clopper_pearson(k, np.full(sims, n), 0.95)
        rows.append({"scenario": "clopper_pearson", "setting": f"n={n} p={p}",
                     "coverage": float(_covered(lo, hi, p).mean()), "sims": sims})
    return rows


def newcombe(sims: int, rng: np.random.Generator) -> list[dict]:
    rows = []
    for n1, p1, n2, p2 in [(50, 0.7, 50, 0.2), (50, 0.24, 50, 0.2), (1000, 0.05, 1000, 0.01),
                           (10_000, 0.002, 10_000, 0.001)]:
        k1, k2 = rng.binomial(n1, p1, sims), rng.binomial(n2, p2, sims)
        lo, hi = stats.newcombe_difference(k1, np.full(sims, n1), k2, np.full(sims, n2), 0.95)
        rows.append({"scenario": "newcombe", "setting": f"{n1} at {p1} vs {n2} at {p2}",
                     "coverage": float(_covered(lo, hi, p1 - p2).mean()), "sims": sims})
    return rows


def delong(sims: int, rng: np.random.Generator) -> list[dict]:
    rows = []
    for m, n, auc in [(50, 50, 0.79), (200, 200, 0.9), (100, 1000, 0.97), (500, 500, 0.6)]:
        mu = math.sqrt(2) * scipy_stats.norm.ppf(auc)  # binormal, unit variances: AUC = Phi(mu / sqrt 2)
        hits = {"logit": 0, "clip": 0}
        none = 0
        for _ in range(sims):
            x, y = rng.normal(mu, 1, m), rng.normal(0, 1, n)
            for transform in hits:
                r = stats.auc_ci(x, y, 0.95, transform=transform)
                if r.auc_ci is None:
                    none += transform == "logit"
                    continue
                hits[transform] += r.auc_ci[0] <= auc <= r.auc_ci[1]
        for transform, h in hits.items():
            rows.append({"scenario": f"delong_{transform}", "setting": f"m={m} n={n} AUC={auc}",
                         "coverage": h / sims, "sims": sims, "no_interval": none})
    return rows


def tpr_at_fpr(sims: int, rng: np.random.Generator) -> list[dict]:
    """TPR and FPR intervals at the operating point the card picks on the same scores (largest TPR with FPR <=
    target): the truth is the population TPR / FPR of the picked threshold (binormal, unit variances)."""
    rows = []
    for m, n, auc, target in [(50, 50, 0.79, 0.1), (1000, 1000, 0.9, 0.01), (200, 2000, 0.97, 1e-3)]:
        mu = math.sqrt(2) * scipy_stats.norm.ppf(auc)
        tpr_hits = fpr_hits = 0
        for _ in range(sims):
            x, y = rng.normal(mu, 1, m), rng.normal(0, 1, n)
            (p,) = stats.tpr_at_fpr_ci(x, y, [target], 0.95)
            thr = math.inf if p.threshold is None else p.threshold  # "member" iff score >= thr
            tpr_hits += p.tpr_ci[0] <= scipy_stats.norm.sf(thr - mu) <= p.tpr_ci[1]
            fpr_hits += p.fpr_ci[0] <= scipy_stats.norm.sf(thr) <= p.fpr_ci[1]
        setting = f"m={m} n={n} AUC={auc} target FPR={target:g}"
        for name, hits in (("tpr_at_fpr_tpr_ci", tpr_hits), ("tpr_at_fpr_fpr_ci", fpr_hits)):
            rows.append({"scenario": name, "setting": setting, "coverage": float(hits / sims), "sims": sims})
    return rows


def epsilon(sims: int, rng: np.random.Generator) -> list[dict]:
    """The epsilon lower bound of one operating point: members matched ~ Binom(n1, p1), non-members ~
    Binom(n2, p2); the truth log((p1 - delta) / p2) must be >= the bound. "coverage" = share of audits where it
    is (a one-sided 95% bound: >= 0.95 is correct; no bound counts as holding)."""
    rows = []
    delta = 1e-5
    for n1, p1, n2, p2 in [(50, 0.64, 50, 0.18), (1000, 0.05, 1000, 0.01), (100_000, 0.002, 20_000, 0.0005)]:
        truth = math.log((p1 - delta) / p2)
        k1, k2 = rng.binomial(n1, p1, sims), rng.binomial(n2, p2, sims)
        held = 0
        for a, b in zip(k1.tolist(), k2.tolist()):
            bound = stats.epsilon_lower_bound(a, n1, b, n2, delta=delta, confidence=0.95).epsilon_lower_bound
            held += bound is None or bound <= truth
        rows.append({"scenario": "epsilon_lower_bound", "setting": f"{n1} at {p1} vs {n2} at {p2} (eps {truth:.3f})",
                     "coverage": held / sims, "sims": sims})
    return rows


def _clustered(rng, ids_m, ids_n, per_id, mu, sd_identity, sd_image):
    m_ids = np.repeat(np.arange(ids_m), per_id)
    n_ids = np.repeat(np.arange(ids_n), per_id)
    x = mu + rng.normal(0, sd_identity, ids_m)[m_ids] + rng.normal(0, sd_image, m_ids.size)
    y = rng.normal(0, sd_identity, ids_n)[n_ids] + rng.normal(0, sd_image, n_ids.size)
    return x, m_ids, y, n_ids


def bootstrap(sims: int, rng: np.random.Generator, replicates: int = 1000) -> list[dict]:
    rows = []
    for ids, per_id, auc in [(50, 5, 0.79), (200, 5, 0.9)]:
        sd_identity, sd_image = 0.8, 0.6
        mu = math.sqrt(2 * (sd_identity ** 2 + sd_image ** 2)) * scipy_stats.norm.ppf(auc)
        # TPR at FPR 0.1: every score has variance sd_identity^2 + sd_image^2 = 1, so the population threshold
        # is isf(0.1) and its TPR sf(isf(0.1) - mu).
        target = 0.1
        tpr_truth = scipy_stats.norm.sf(scipy_stats.norm.isf(target) - mu)
        boot_hits = delong_hits = tpr_hits = 0
        for s in range(sims):
            x, m_ids, y, n_ids = _clustered(rng, ids, ids, per_id, mu, sd_identity, sd_image)
            b = stats.identity_bootstrap_membership(x, m_ids, y, n_ids, target_fprs=(target,), replicates=replicates,
                                                    seed=s)
            boot_hits += b.auc_ci[0] <= auc <= b.auc_ci[1]
            ci = b.tpr_at_fpr[0]["tpr_ci"]
            tpr_hits += ci[0] <= tpr_truth <= ci[1]
            d = stats.auc_ci(x, y, 0.95)
            delong_hits += d.auc_ci is not None and d.auc_ci[0] <= auc <= d.auc_ci[1]
        setting = f"{ids}+{ids} identities x {per_id} images, AUC={auc}, identity sd {sd_identity}, image sd {sd_image}"
        rows.append({"scenario": "identity_bootstrap_auc", "setting": setting, "coverage": boot_hits / sims,
                     "sims": sims, "replicates": replicates})
        rows.append({"scenario": "identity_bootstrap_tpr", "setting": f"{setting}, TPR at FPR {target:g}",
                     "coverage": float(tpr_hits / sims), "sims": sims, "replicates": replicates})
        rows.append({"scenario": "delong_on_clustered", "setting": setting, "coverage": delong_hits / sims,
                     "sims": sims})
    return rows


def fmr_bootstrap(sims: int, rng: np.random.Generator, replicates: int = 1000) -> list[dict]:
    rows = []
    # The last setting has no identity effect (independent pairs): there the correction errs on the wide side.
    for k, fmr, sd_identity in [(100, 0.01, 0.5), (300, 0.001, 0.5), (100, 0.01, 0.0)]:
        sd_pair = 1.0  # pair score = u_i + u_j + e_ij
        sd_total = math.sqrt(2 * sd_identity ** 2 + sd_pair ** 2)
        tau = sd_total * scipy_stats.norm.isf(fmr)  # population FMR at tau is exactly ``fmr``
        iu, ju = np.triu_indices(k, 1)
        hits = {"pairs_corrected": 0, "attributed": 0}
        binomial_hits = 0
        for s in range(sims):
            u = rng.normal(0, sd_identity, k)
            above_pair = (u[iu] + u[ju] + rng.normal(0, sd_pair, iu.size)) > tau
            above = np.bincount(iu, above_pair, k) + np.bincount(ju, above_pair, k)
            pairs = np.full(k, k - 1)
            for method in hits:
                b = stats.identity_bootstrap_fmr(above, pairs, replicates=replicates, seed=s, method=method)
                hits[method] += b.achieved_fmr_ci[0] <= fmr <= b.achieved_fmr_ci[1]
            lo, hi = stats.clopper_pearson(int(above_pair.sum()), int(iu.size))
            binomial_hits += lo <= fmr <= hi
        setting = f"{k} identities, all {iu.size:,} pairs, FMR={fmr}, identity sd {sd_identity}, pair sd {sd_pair}"
        for method, h in hits.items():
            rows.append({"scenario": f"identity_bootstrap_fmr_{method}", "setting": setting, "coverage": h / sims,
                         "sims": sims, "replicates": replicates})
        rows.append({"scenario": "clopper_pearson_over_pairs", "setting": setting, "coverage": binomial_hits / sims,
                     "sims": sims})
    return rows


SCENARIOS = {"clopper_pearson": clopper_pearson, "newcombe": newcombe, "delong": delong, "tpr_at_fpr": tpr_at_fpr,
             "epsilon": epsilon, "bootstrap": bootstrap, "fmr_bootstrap": fmr_bootstrap}


def run(sims: int, seed: int = 0, which=tuple(SCENARIOS), replicates: int = 1000) -> list[dict]:
    """All rows of the chosen scenarios (each seeded from ``seed`` and its name, so a subset reproduces)."""
    rows = []
    for name in which:
        rng = np.random.default_rng([seed, sum(map(ord, name))])
        t = time.perf_counter()
        if name in ("bootstrap", "fmr_bootstrap"):
            got = SCENARIOS[name](sims, rng, replicates)
        else:
            got = SCENARIOS[name](sims, rng)
        for r in got:
            r["seconds"] = round(time.perf_counter() - t, 1)
            mc_se = math.sqrt(0.95 * 0.05 / r["sims"])
            r["monte_carlo_se"] = round(mc_se, 4)
        rows.extend(got)
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sims", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--replicates", type=int, default=1000, help="bootstrap replicates per simulated audit")
    ap.add_argument("--only", default=",".join(SCENARIOS), help="comma-separated scenarios")
    ap.add_argument("--out", default="", help="write the rows as JSON here")
    a = ap.parse_args()
    which = [w for w in a.only.split(",") if w]
    unknown = [w for w in which if w not in SCENARIOS]
    if unknown:
        raise SystemExit(f"--only: unknown scenario(s) {unknown}; choose from {list(SCENARIOS)}")
    rows = run(a.sims, a.seed, which, a.replicates)
    for r in rows:
        flag = "" if 0.93 <= r["coverage"] <= 0.97 else "  <- outside [0.93, 0.97]"
        print(f"{r['scenario']:28s} {r['setting']:80s} coverage {r['coverage']:.3f} "
              f"(sims {r['sims']}, {r['seconds']} s){flag}")
    if a.out:
        with open(a.out, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
