"""Benchmark exact k-NN modes against swept approximate indexes (see synleak_jax/cli/bench_knn.py; every flag of
synleak-bench-knn applies). Run under the shared lock and record the load:

  flock /tmp/synleak_bench.lock python scripts/bench_knn.py --nq=4096 --ndb=200000 --dim=512 --k=10 \
      --backends=exact,exact_bf16,faiss_flat,faiss_ivf,faiss_hnsw,scann,approx_max_k --output_dir=/tmp/ann_bench

Data: --data=identities (default, face-structured), gaussian, or npy (--queries/--database[/--database_labels]).
"""

from synleak_jax.cli.bench_knn import run

if __name__ == "__main__":
    run()
