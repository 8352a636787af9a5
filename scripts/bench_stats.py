"""Benchmark: the leakage card's costly statistics — Boschloo's test and the identity bootstrap.

    flock /tmp/synleak_bench.lock python scripts/bench_stats.py

1. Member-vs-control test at n members = n non-members: our Boschloo (stats.boschloo_one_sided) against scipy's
   ``boschloo_exact`` (same p-value; scipy is run up to --scipy-max-n), and Fisher's test, up to CASIA-like n; with
   the ratio Boschloo p / Fisher p on a borderline table (rates 0.22 vs 0.20) to show where the two agree.
2. Identity bootstrap of the membership AUC + TPR at 2 FPRs, B replicates, n images per group (10 per identity),
   jitted and warmed up, against a numpy float64 reference (loop over replicates: bincount, weighted sort sweep)
   timed on a few replicates and scaled to B; and the identity bootstrap of the achieved FMR (K identities).

Medians of --repeats runs after one warm-up (compilation). Prints one line per figure.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import numpy as np
from scipy import stats as scipy_stats

from synleak_jax.attack import stats


def _median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def bench_tests(sizes, scipy_max_n: int, repeats: int) -> None:
    for n in sizes:
        k1, k2 = int(round(0.22 * n)), int(round(0.20 * n))
        cells = stats.boschloo_cells(n, n)
        t_fisher = _median_time(lambda: stats.fisher_one_sided(k1, n, k2, n), repeats)
        p_fisher = stats.fisher_one_sided(k1, n, k2, n)
        line = f"n={n:>7,} ({cells:.2e} cells): Fisher {t_fisher * 1e3:8.2f} ms p={p_fisher:.4g}"
        if cells <= 4 * stats.BOSCHLOO_MAX_CELLS:
            t_ours = _median_time(lambda: stats.boschloo_one_sided(k1, n, k2, n), 1 if n > 1000 else repeats)
            p_ours, _ = stats.boschloo_one_sided(k1, n, k2, n)
            line += f" | Boschloo ours {t_ours:8.3f} s p={p_ours:.4g} (Boschloo/Fisher {p_ours / p_fisher:.3f})"
            if n <= scipy_max_n:
                table = [[k1, k2], [n - k1, n - k2]]
                t_scipy = _median_time(lambda: scipy_stats.boschloo_exact(table, alternative="greater"), 1)
                p_scipy = scipy_stats.boschloo_exact(table, alternative="greater").pvalue
                line += f" | scipy {t_scipy:8.3f} s p={p_scipy:.4g} (scipy/ours time {t_scipy / t_ours:.1f}x)"
        else:
            line += " | Boschloo skipped (over 4x the auto bound)"
        print(line, flush=True)


def numpy_bootstrap(x, m_codes, y, n_codes, km, kn, replicates, targets, seed):
    """Reference: per replicate, multinomial identity counts, then a float64 weighted sort sweep."""
    rng = np.random.default_rng(seed)
    scores = np.r_[x, y]
    order = np.argsort(-scores, kind="stable")
    is_member = order < x.size
    sorted_scores = scores[order]
    group_end = np.r_[np.nonzero(np.diff(sorted_scores))[0], scores.size - 1]
    aucs, tprs = [], []
    for _ in range(replicates):
        wm = np.bincount(rng.integers(0, km, km), minlength=km)[m_codes]
        wn = np.bincount(rng.integers(0, kn, kn), minlength=kn)[n_codes]
        w = np.r_[wm, wn].astype(np.float64)[order]
        cum_pos = np.cumsum(np.where(is_member, w, 0.0))[group_end]
        cum_neg = np.cumsum(np.where(is_member, 0.0, w))[group_end]
        pos_in = np.diff(cum_pos, prepend=0.0)
        neg_in = np.diff(cum_neg, prepend=0.0)
        aucs.append(np.sum(pos_in * (cum_neg[-1] - cum_neg + 0.5 * neg_in)) / (cum_pos[-1] * cum_neg[-1]))
        tprs.append([cum_pos[np.searchsorted(cum_neg, np.floor(t * cum_neg[-1]), side="right") - 1] / cum_pos[-1]
                     for t in targets])
    return np.array(aucs), np.array(tprs)


def bench_bootstrap(sizes, replicates: int, repeats: int) -> None:
    rng = np.random.default_rng(0)
    targets = (1e-3, 1e-2)
    for n in sizes:
        ids = n // 10
        m_ids, n_ids = np.repeat(np.arange(ids), 10), np.repeat(np.arange(ids), 10)
        x = 0.5 + rng.normal(0, 0.8, ids)[m_ids] + rng.normal(0, 0.6, n)
        y = rng.normal(0, 0.8, ids)[n_ids] + rng.normal(0, 0.6, n)
        run = lambda: stats.identity_bootstrap_membership(x, m_ids, y, n_ids, target_fprs=targets,  # noqa: E731
                                                          replicates=replicates, seed=1)
        t0 = time.perf_counter()
        run()
        first = time.perf_counter() - t0
        t_jax = _median_time(run, repeats)
        few = max(10, replicates // 50)
        t_np = _median_time(lambda: numpy_bootstrap(x, m_ids, y, n_ids, ids, ids, few, targets, 1), 1) * \
            replicates / few
        t_delong = _median_time(lambda: stats.auc_ci(x, y), repeats)
        print(f"membership bootstrap n={n:,}+{n:,} images ({ids:,}+{ids:,} identities), B={replicates}: "
              f"{t_jax:.2f} s (first call incl. compile {first:.2f} s); numpy reference {t_np:.2f} s "
              f"(ratio {t_np / t_jax:.1f}x); DeLong interval {t_delong * 1e3:.1f} ms", flush=True)
        above = rng.integers(0, 50, ids)
        pairs = above + rng.integers(1000, 5000, ids)
        run_fmr = lambda: stats.identity_bootstrap_fmr(above, pairs, replicates=replicates, seed=1)  # noqa: E731
        run_fmr()
        t_fmr = _median_time(run_fmr, repeats)
        print(f"FMR bootstrap K={ids:,} identities, B={replicates}: {t_fmr * 1e3:.1f} ms", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--test-sizes", default="50,200,800,2000,3500,7000,100000,500000")
    ap.add_argument("--scipy-max-n", type=int, default=800)
    ap.add_argument("--bootstrap-sizes", default="10000,100000")
    ap.add_argument("--replicates", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}; BOSCHLOO_MAX_CELLS={stats.BOSCHLOO_MAX_CELLS:,}")
    bench_tests([int(s) for s in a.test_sizes.split(",") if s], a.scipy_max_n, a.repeats)
    bench_bootstrap([int(s) for s in a.bootstrap_sizes.split(",") if s], a.replicates, a.repeats)


if __name__ == "__main__":
    main()
