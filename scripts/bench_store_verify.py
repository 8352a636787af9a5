"""Benchmark: what verifying an embedding store costs (EmbeddingStore.open / resume), against reading its bytes.

    flock /tmp/synleak_bench.lock python scripts/bench_store_verify.py --rows=1200000 --dim=512 --dir=/tmp/bench_store

Writes a store of ``rows x dim`` float32 (1.2M x 512 = 2.46 GB, the CASIA-size case) with StoreWriter in the default
chunk geometry (16 batches x 64 = 1024 rows a chunk), then, each measurement in a fresh interpreter (so the
per-process memo of verified files does not help) and with the page cache warm (the store was just written and
read; this script does not drop caches on a shared machine):

* ``open(verify_checksums=False)``: markers, identity, sizes, headers, ids/labels loaded;
* ``open()`` (the default: every file hashed against its marker);
* the same ``open()`` a second time in one process (memoised by stat);
* ``StoreWriter.pending_chunks`` over every chunk (what a resume checks);
* references in the same run: reading every chunk file into a buffer (no hashing), coreutils ``sha256sum`` over
  the embedding files, and a pass over ``st.embeddings`` in 65,536-row blocks (what an analysis reads).

Prints seconds and MB/s (10^6 bytes) for each and the ratios to the plain read.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np

MEASURE = r"""
import json, os, sys, time
import numpy as np
from synleak_jax.embed.store import EmbeddingStore, StoreWriter, ChunkPlan
path, what = sys.argv[1], sys.argv[2]
t = time.perf_counter()
if what == "open_quick":
    EmbeddingStore.open(path, verify_checksums=False)
elif what == "open_verify":
    EmbeddingStore.open(path)
elif what == "open_twice":
    EmbeddingStore.open(path)
    t = time.perf_counter()
    EmbeddingStore.open(path)
elif what == "resume_check":
    m = json.load(open(os.path.join(path, "manifest.json")))
    w = StoreWriter(path, m)
    todo = w.pending_chunks(range(ChunkPlan.from_dict(m["plan"]).num_chunks))
    assert todo == [], todo
elif what == "plain_read":
    buf = bytearray(1 << 20)
    view = memoryview(buf)
    cdir = os.path.join(path, "chunks")
    for name in sorted(os.listdir(cdir)):
        with open(os.path.join(cdir, name), "rb", buffering=0) as f:
            while f.readinto(view):
                pass
elif what == "read_rows":
    st = EmbeddingStore.open(path, verify_checksums=False)
    t = time.perf_counter()
    for a in range(0, len(st), 65536):
        st.embeddings[a:a + 65536]
print(json.dumps({"seconds": time.perf_counter() - t}))
"""


def build(path: str, rows: int, dim: int, seed: int = 0) -> int:
    from synleak_jax.embed.store import ChunkPlan, StoreWriter

    plan = ChunkPlan(rows, 64, 16)
    manifest = {"plan": plan.to_dict(), "embedding_dim": dim, "storage_dtype": "float32", "metric": "cosine",
                "model": {"name": "bench"}, "dataset": {"kind": "bench", "fingerprint": str(seed)}}
    w = StoreWriter(path, manifest)
    rng = np.random.default_rng(seed)
    for j in range(plan.num_chunks):
        a, b = plan.chunk_range(j)
        w.commit_chunk(j, np.arange(a, b), np.zeros(b - a, np.int64),
                       rng.standard_normal((b - a, dim), dtype=np.float32), [])
    total = 0
    for name in os.listdir(os.path.join(path, "chunks")):
        total += os.path.getsize(os.path.join(path, "chunks", name))
    return total


def measure(path: str, what: str) -> float:
    p = subprocess.run([sys.executable, "-c", MEASURE, path, what], capture_output=True, text=True, check=True)
    return json.loads(p.stdout.strip().splitlines()[-1])["seconds"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_200_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--dir", default="/tmp/bench_store_verify")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--keep", action="store_true", help="keep the store afterwards")
    a = ap.parse_args()
    if os.path.exists(a.dir):
        shutil.rmtree(a.dir)
    t = time.perf_counter()
    nbytes = build(a.dir, a.rows, a.dim)
    print(f"store {a.rows} x {a.dim} float32: {nbytes / 1e9:.2f} GB in chunk files, written in "
          f"{time.perf_counter() - t:.1f} s; load {os.getloadavg()[0]:.2f}")
    measure(a.dir, "plain_read")  # warm the page cache
    emb = sorted(os.path.join(a.dir, "chunks", n) for n in os.listdir(os.path.join(a.dir, "chunks"))
                 if n.endswith(".emb.npy"))
    results = {}
    for what in ("plain_read", "open_quick", "open_verify", "open_twice", "resume_check", "read_rows"):
        results[what] = sorted(measure(a.dir, what) for _ in range(a.repeats))[a.repeats // 2]
    sums = []
    for _ in range(a.repeats):
        t = time.perf_counter()
        for i in range(0, len(emb), 200):
            subprocess.run(["sha256sum", *emb[i:i + 200]], capture_output=True, check=True)
        sums.append(time.perf_counter() - t)
    emb_bytes = sum(os.path.getsize(f) for f in emb)
    results["sha256sum_emb_files"] = sorted(sums)[a.repeats // 2]
    base = results["plain_read"]
    for what, sec in results.items():
        size = emb_bytes if what == "sha256sum_emb_files" else nbytes
        print(f"{what:22s} {sec:8.2f} s  {size / sec / 1e6 if sec > 0 else float('inf'):9.0f} MB/s  "
              f"x{sec / base:6.2f} the plain read")
    print(f"load average after: {os.getloadavg()}")
    if not a.keep:
        shutil.rmtree(a.dir)


if __name__ == "__main__":
    main()
