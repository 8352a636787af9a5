"""Benchmark k-NN backends (see synleak_jax/cli/bench_knn.py). Run under the shared lock:

  flock /tmp/synleak_bench.lock python scripts/bench_knn.py --backends=exact,numpy,faiss_flat --rounds=3
"""

from synleak_jax.cli.bench_knn import run

if __name__ == "__main__":
    run()
