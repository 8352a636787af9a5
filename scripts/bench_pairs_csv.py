"""Benchmark: pairs.csv writing (report.writer.write_pairs_csv) against csv.writer.writerows on the same rows.

    flock /tmp/synleak_bench.lock python scripts/bench_pairs_csv.py --rows=2000000

Rows like an audit's: 14 columns (PAIRS_COLUMNS), per-threshold constants, int indices and labels, image-folder
style names (200k synthetic, 100k real, ASCII, nothing to quote), float32 scores. ``--quote_names``: every real
name holds a comma (each quoted: the slow path). Reports seconds and
microseconds per row of each writer, the file sizes, and checks that both files parse to the same fields (scores
equal as float32).
"""

from __future__ import annotations

import argparse
import csv
import itertools
import os
import tempfile
import time

import numpy as np

from synleak_jax.report import writer

BLOCK = 1 << 16


def make_blocks(rows: int, seed: int = 0, quote_names: bool = False) -> list[dict]:
    rng = np.random.default_rng(seed)
    syn_names = [f"/data/dcface/{i // 50:05d}/{i:07d}.jpg" for i in range(200_000)]
    real_names = [f"/data/casia{',' if quote_names else '_'}webface/{i // 50:05d}/{i:07d}.jpg" for i in range(100_000)]
    out = []
    for a in range(0, rows, BLOCK):
        n = min(rows, a + BLOCK) - a
        si, ri = rng.integers(0, 200_000, n), rng.integers(0, 100_000, n)
        out.append({"matcher": "arcface_r100", "unit": "cosine", "role": "members", "threshold": "FMR 0.001",
                    "target_fmr": 1e-3, "tau_native": 0.1361522376537323, "rank": np.arange(a + 1, a + n + 1),
                    "syn_idx": si, "syn_id": [syn_names[i] for i in si.tolist()], "syn_label": si // 50,
                    "real_idx": ri, "real_id": [real_names[i] for i in ri.tolist()], "real_label": ri // 50,
                    "score_native": rng.normal(0.2, 0.05, n).astype(np.float32).astype(np.float64)})
    return out


def csv_module(path: str, blocks: list[dict]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(writer.PAIRS_COLUMNS)
        for b in blocks:
            n = len(b["rank"])
            cols = [v.tolist() if isinstance(v, np.ndarray) else v if isinstance(v, list) else itertools.repeat(v, n)
                    for v in (b[k] for k in writer.PAIRS_COLUMNS)]
            w.writerows(zip(*cols))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=2_000_000)
    ap.add_argument("--quote_names", action="store_true")
    a = ap.parse_args()
    blocks = make_blocks(a.rows, quote_names=a.quote_names)
    d = tempfile.mkdtemp()
    ours, ref = os.path.join(d, "ours.csv"), os.path.join(d, "ref.csv")
    t = time.perf_counter()
    writer.write_pairs_csv(ours, blocks)
    t_ours = time.perf_counter() - t
    t = time.perf_counter()
    csv_module(ref, blocks)
    t_ref = time.perf_counter() - t
    score = writer.PAIRS_COLUMNS.index("score_native")
    with open(ours, newline="") as f1, open(ref, newline="") as f2:
        for r1, r2 in zip(csv.reader(f1), csv.reader(f2)):
            if r1[:score] != r2[:score] or (r1[0] != "matcher" and np.float32(r1[score]) != np.float32(r2[score])):
                raise SystemExit(f"files differ: {r1} vs {r2}")
    print(f"{a.rows:,} rows: write_pairs_csv {t_ours:.2f} s ({t_ours / a.rows * 1e6:.2f} us/row, "
          f"{os.path.getsize(ours) / a.rows:.0f} B/row); csv.writer.writerows {t_ref:.2f} s "
          f"({t_ref / a.rows * 1e6:.2f} us/row, {os.path.getsize(ref) / a.rows:.0f} B/row); "
          f"ratio csv.writer / ours {t_ref / t_ours:.2f}; same fields")


if __name__ == "__main__":
    main()
