"""Benchmark: exact FMR calibration over ALL impostor pairs (blockwise histogram kernel) vs numpy brute force.

    flock /tmp/synleak_bench.lock python scripts/bench_calibration.py --n=8000 --dim=512

Both compute the exact tau at FMR 1e-2/1e-3/1e-4 from the same float32 embeddings; numpy materialises the
N x N score matrix (the thing the kernel avoids), so keep --n moderate. Warm-up run first (compilation), then the
median of --repeats timed runs. Prints pairs/s and the same-run ratio.
"""

import argparse
import statistics
import time

import numpy as np

from synleak_jax.attack import calibration as calibration_lib


def numpy_reference(x, labels, fmrs):
    s = x @ x.T
    iu = np.triu_indices(len(x), 1)
    sc = s[iu]
    imp = sc[labels[iu[0]] != labels[iu[1]]]
    return [float(np.partition(imp, imp.size - (calibration_lib.impostors_allowed(f, imp.size) + 1))[imp.size - (calibration_lib.impostors_allowed(f, imp.size) + 1)]) for f in fmrs]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=8000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--ids", type=int, default=800)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--block", type=int, default=1024)
    a = ap.parse_args()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(a.n, a.dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    labels = rng.integers(0, a.ids, a.n)
    fmrs = [1e-2, 1e-3, 1e-4]
    calibration_lib.calibrate_embeddings(x, labels, fmrs, metric="cosine", block=a.block)  # warm-up / compile
    tk, tn = [], []
    for _ in range(a.repeats):
        t = time.perf_counter()
        cal = calibration_lib.calibrate_embeddings(x, labels, fmrs, metric="cosine", block=a.block)
        tk.append(time.perf_counter() - t)
        t = time.perf_counter()
        ref = numpy_reference(x, labels, fmrs)
        tn.append(time.perf_counter() - t)
    pairs = a.n * (a.n - 1) // 2
    got = [t.tau for t in cal.thresholds]
    print(f"n={a.n} dim={a.dim} pairs={pairs:,} block={a.block}")
    print(f"taus kernel={got} numpy={ref} max|diff|={max(abs(g - r) for g, r in zip(got, ref)):.2e}")
    mk, mn = statistics.median(tk), statistics.median(tn)
    print(f"kernel (3 passes: histogram, one refinement pass for all FMRs, exact counts): median {mk:.2f} s = {pairs / mk / 1e6:.1f} M pairs/s")
    print(f"numpy (N x N float32 matrix + partition): median {mn:.2f} s = {pairs / mn / 1e6:.1f} M pairs/s")
    print(f"ratio numpy/kernel = {mn / mk:.2f}")


if __name__ == "__main__":
    main()
