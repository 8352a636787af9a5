"""Benchmark: exact FMR calibration over ALL impostor pairs of a face-structured set, pass by pass, against numpy.

    flock /tmp/synleak_bench.lock python scripts/bench_calibration.py --n=40000
    flock /tmp/synleak_bench.lock python scripts/bench_calibration.py --n=40000 --collect_rows=32   # the old value
    flock /tmp/synleak_bench.lock python scripts/bench_calibration.py --n=16384 --passes --no_calibration

Data: the members of ``scripts/bench_audit.py`` (``synleak_jax.search.testdata``: identities of 5-15 images,
512-D unit rows, seed 0), written once to ``--data_dir``. Calibration at FMR 1e-2/1e-3/1e-4: total time and each
engine pass (the pilot, the float32-key histogram; another pass only for a bin the pilot missed) from its own
log line. ``--passes``: pairs/s of single
engine passes on the same rows (upper 2^16-bin and float32-key histograms, upper counts above 1 and 28 taus,
all-pairs counts). Reference in
the same run: numpy's float32 matmul over the same pairs, in blocks of 4,096 rows (the matmul alone: no reduction,
so a lower bound for any exact method); with ``--exact_check`` (small n) also the taus from numpy's partition of
every impostor score.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
from absl import logging

from synleak_jax.attack import calibration as calibration_lib
from synleak_jax.search import engine
from synleak_jax.search.hostmem import load_npy_aligned
from synleak_jax.search.testdata import IdentityEmbeddings, IdentitySpec

FMRS = [1e-2, 1e-3, 1e-4]


def members(n: int, dim: int, data_dir: str) -> tuple[np.ndarray, np.ndarray]:
    gen = IdentityEmbeddings(IdentitySpec(database_rows=n, query_rows=0, dim=dim, images_per_identity=(5, 15),
                                          seed=0))
    os.makedirs(data_dir, exist_ok=True)
    path = os.path.join(data_dir, f"members_n{n}_d{dim}_seed0.npy")
    if not os.path.exists(path):
        gen.save_npy(path, "database")
    return load_npy_aligned(path), np.asarray(gen.database_labels)


def numpy_upper_matmul_s(x: np.ndarray, block: int = 4096) -> float:
    t = time.perf_counter()
    for a in range(0, len(x), block):
        x[a:a + block] @ x[a:].T
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=40000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--data_dir", default="/tmp/synleak_bench_calibration")
    ap.add_argument("--collect_rows", type=int, default=0, help="override engine.COLLECT_ROWS (0: keep)")
    ap.add_argument("--passes", action="store_true", help="also time single engine passes")
    ap.add_argument("--no_calibration", action="store_true")
    ap.add_argument("--exact_check", action="store_true", help="numpy partition of every impostor (small n)")
    a = ap.parse_args()
    logging.set_verbosity(logging.INFO)
    if a.collect_rows:
        engine.COLLECT_ROWS = a.collect_rows
    x, lab = members(a.n, a.dim, a.data_dir)
    pairs = a.n * (a.n - 1) // 2
    print(f"n={a.n:,} dim={a.dim} pairs i<j={pairs:,} COLLECT_ROWS={engine.COLLECT_ROWS}", flush=True)
    if not a.no_calibration:
        t = time.perf_counter()
        cal = calibration_lib.calibrate_embeddings(x, lab, FMRS, metric="cosine")
        dt = time.perf_counter() - t
        print(f"calibration: {dt:.1f} s ({pairs / dt:.3g} pairs/s over i<j); taus "
              f"{[t_.tau for t_ in cal.thresholds]}; impostors above {[t_.impostors_above for t_ in cal.thresholds]}; "
              f"EER {cal.eer!r} (pass times: the 'pairs in' log lines above)", flush=True)
        if a.exact_check:
            s = x.astype(np.float32) @ x.T
            iu = np.triu_indices(a.n, 1)
            imp = s[iu][lab[iu[0]] != lab[iu[1]]]
            ref = [calibration_lib.exact_order_statistic_desc(imp, calibration_lib.impostors_allowed(f, imp.size) + 1)
                   for f in FMRS]
            print(f"numpy partition taus {ref} (numpy's matmul rounds differently: equal to ~1e-7)", flush=True)
    if a.passes:
        taus = np.linspace(0.05, 0.2, 28).astype(np.float32)
        bins = engine.Bins(-1.01, 1.01, 1 << 16)
        kinds = {
            "upper, 2^16-bin labelled histogram": (engine.PassSpec(pairs="upper", labels=True, nbins=1 << 16),
                                                   engine.PassParams(bins=bins)),
            "upper, float32-key labelled histogram": (engine.PassSpec(pairs="upper", labels=True, key_hist=True),
                                                      engine.PassParams()),
            "upper, float32-key histogram, 16 bins split": (
                engine.PassSpec(pairs="upper", labels=True, key_hist=True, key_refine=16),
                engine.PassParams(key_refine_bins=np.arange(48800, 48816))),
            "upper, labelled counts above 1 tau": (engine.PassSpec(pairs="upper", labels=True, n_taus=1),
                                                   engine.PassParams(taus=taus[:1])),
            "upper, labelled counts above 28 taus": (engine.PassSpec(pairs="upper", labels=True, n_taus=28),
                                                     engine.PassParams(taus=taus)),
            "all, labelled counts above 1 tau": (engine.PassSpec(pairs="all", labels=True, n_taus=1),
                                                 engine.PassParams(taus=taus[:1])),
        }
        for name, (spec, params) in kinds.items():
            kw = {"row_labels": lab, "col_labels": lab if spec.pairs == "all" else None}
            ts = []
            for _ in range(2):
                t = time.perf_counter()
                engine.tile_pass(x, x, spec, params, **kw)
                ts.append(time.perf_counter() - t)
            n_pairs = pairs if spec.pairs == "upper" else a.n * a.n
            print(f"pass {name}: {min(ts):.2f} s, {n_pairs / min(ts):.3g} pairs/s (best of 2)", flush=True)
    dt = numpy_upper_matmul_s(x)
    print(f"reference: numpy float32 matmul over the i<j pairs (blocks of 4,096 rows): {dt:.1f} s "
          f"({pairs / dt:.3g} pairs/s)", flush=True)


if __name__ == "__main__":
    main()
