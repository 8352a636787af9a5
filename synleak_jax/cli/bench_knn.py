"""synleak-bench-knn: throughput / recall / peak memory of exact and approximate k-NN backends.

Each backend runs in a fresh subprocess (honest RSS high-water mark) on the same data; results go to
<output_dir>/results.json, results.md and recall_vs_qps.png. Recall@k is measured against our exact result.
Memory is reported as peak / data and (peak - init) / data, init = RSS after imports and JAX initialisation
(search/bench.py); the 1.5x target is judged on the latter.

  flock /tmp/synleak_bench.lock synleak-bench-knn --nq=4096 --ndb=200000 --dim=512 --k=10 \
      --backends=exact,numpy,faiss_flat,faiss_ivf,faiss_hnsw --output_dir=/tmp/bench_knn
  # GPU table (needs a GPU): --nq=65536 --ndb=1000000 --device_resident \
  #   --backends=exact,exact_bf16,approx_max_k,full_top_k,full_approx,matmul_peak
"""

import json

from absl import app, flags, logging

FLAGS = flags.FLAGS
flags.DEFINE_integer("nq", 4096, "Number of queries.")
flags.DEFINE_integer("ndb", 200_000, "Number of database vectors.")
flags.DEFINE_integer("dim", 512, "Embedding dimension.")
flags.DEFINE_integer("k", 10, "Neighbours per query.")
flags.DEFINE_list("backends", ["exact", "numpy", "faiss_flat"], "Backends (see synleak_jax.search.bench.BACKENDS).")
flags.DEFINE_integer("repeats", 3, "Timed calls per backend per round (median).")
flags.DEFINE_integer("rounds", 1, "Rounds over all backends (median of round medians; interleaves backends).")
flags.DEFINE_integer("seed", 0, "Data seed.")
flags.DEFINE_string("params", "{}", 'JSON: per-backend parameter overrides, e.g. \'{"exact": {"db_block": 8192}}\'.')
flags.DEFINE_bool("device_resident", False, "Put queries/database on the device before timing (GPU table).")
flags.DEFINE_string("output_dir", "/tmp/synleak_bench_knn", "Where results.{json,md} and the PNG go.")
flags.DEFINE_string("data_dir", None, "Reuse/put generated data here (default <output_dir>/data).")
flags.DEFINE_bool("malloc_single_arena", True, "One glibc malloc arena in every backend process "
                  "(search.hostmem.limit_malloc_retention); false = glibc's default per-thread heaps.")


def main(argv):
    del argv
    from synleak_jax.search.bench import run_benchmark

    try:
        params = json.loads(FLAGS.params)
    except json.JSONDecodeError as e:
        raise app.UsageError(f"--params is not valid JSON: {e}") from None
    if not isinstance(params, dict) or not all(isinstance(v, dict) for v in params.values()):
        raise app.UsageError("--params must be a JSON object of objects: {backend: {param: value}}")
    for name, v in (("nq", FLAGS.nq), ("ndb", FLAGS.ndb), ("dim", FLAGS.dim), ("k", FLAGS.k)):
        if v < 1:
            raise app.UsageError(f"--{name} must be >= 1, got {v}")
    if FLAGS.k > FLAGS.ndb:
        raise app.UsageError(f"--k={FLAGS.k} exceeds --ndb={FLAGS.ndb}")
    result = run_benchmark(FLAGS.output_dir, nq=FLAGS.nq, ndb=FLAGS.ndb, dim=FLAGS.dim, k=FLAGS.k,
                           backends=FLAGS.backends, repeats=FLAGS.repeats, rounds=FLAGS.rounds, seed=FLAGS.seed,
                           params=params, device_resident=FLAGS.device_resident, data_dir=FLAGS.data_dir,
                           malloc_single_arena=FLAGS.malloc_single_arena)
    from synleak_jax.search.bench import to_markdown

    logging.info("results in %s", FLAGS.output_dir)
    print(to_markdown(result))


def run():
    app.run(main)


if __name__ == "__main__":
    run()
