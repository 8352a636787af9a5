"""synleak-bench-knn: exact k-NN modes against swept approximate indexes — recall@k vs queries/s curves, and
what an approximate index costs an audit ("leak recall": the pairs above the audit's thresholds it misses).

Data: --data=identities (default; face-structured: identities of 5-50 images, genuine cosine ~0.6, impostors
~0 +- 0.044 at 512-D, leaked identities and planted near-copies; synleak_jax/search/testdata.py), gaussian
(isotropic unit vectors) or npy (--queries / --database files, e.g. from synleak-embed; --database_labels
optional). Each build runs in a fresh subprocess; approximate backends sweep their parameters (--sweeps to
override, --nosweep for one point). The audit thresholds (tau at --fmrs) are calibrated exactly on the database's
impostor pairs (different identities) with the audit's own calibration, over a seeded subset of --calib_rows rows
when the database is larger. Outputs in --output_dir: results.json (every point), results.md, recall_vs_qps.png.

  flock /tmp/synleak_bench.lock synleak-bench-knn --nq=4096 --ndb=200000 --dim=512 \\
      --k=10 --backends=exact,exact_bf16,faiss_flat,faiss_ivf,faiss_hnsw,scann,approx_max_k --output_dir=/tmp/ann
  # GPU (faiss-gpu is not installable here): --backends=exact,exact_bf16,approx_max_k,full_approx --device_resident

faiss-cpu's bundled OpenBLAS picks its kernels from the CPU (results record what it reported): pin
OPENBLAS_CORETYPE only when it misdetects (SkylakeX needs AVX-512; AVX2-only CPUs take Haswell).
"""

import json
from typing import NoReturn

from absl import app, flags, logging

from synleak_jax.cli import common

FLAGS = flags.FLAGS
flags.DEFINE_enum("data", "identities", ["identities", "gaussian", "npy"],
                  "identities: face-structured generated embeddings; gaussian: isotropic unit vectors; npy: "
                  "--queries and --database files.")
flags.DEFINE_string("queries", None, "--data=npy: queries .npy [nq, D] float.")
flags.DEFINE_string("database", None, "--data=npy: database .npy [ndb, D] float.")
flags.DEFINE_string("database_labels", None, "--data=npy: identity labels .npy int [ndb] for the calibration "
                    "(impostor = different label); without it every row is its own identity.")
flags.DEFINE_integer("nq", 4096, "Number of queries (generated data).")
flags.DEFINE_integer("ndb", 200_000, "Number of database vectors (generated data).")
flags.DEFINE_integer("dim", 512, "Embedding dimension (generated data).")
flags.DEFINE_integer("k", 10, "Neighbours per query.")
flags.DEFINE_list("backends", ["exact", "exact_bf16", "faiss_flat", "faiss_ivf", "faiss_hnsw"],
                  "Backends (synleak_jax.search.bench.BACKENDS; alias: approx = approx_max_k).")
flags.DEFINE_integer("repeats", 3, "Timed calls per operating point per round (median).")
flags.DEFINE_integer("rounds", 1, "Rounds over all builds (median of round medians; interleaves backends).")
flags.DEFINE_integer("seed", 0, "Data seed.")
flags.DEFINE_string("params", "{}", 'JSON: fixed per-backend parameters, e.g. \'{"exact": {"db_block": 8192}}\' '
                    "(a swept parameter given here is pinned to that value).")
flags.DEFINE_string("sweeps", "{}", 'JSON: per-backend sweep grids replacing the defaults, e.g. '
                    '\'{"faiss_hnsw": {"m": [32], "ef_search": [32, 128, 512]}}\'.')
flags.DEFINE_bool("sweep", True, "Sweep the approximate backends' parameters (false: their defaults, one point).")
flags.DEFINE_list("fmrs", ["1e-3", "1e-4"], "False match rates of the audit thresholds used for leak recall "
                  "(empty: no leak recall).")
flags.DEFINE_integer("calib_rows", 20_000, "Database rows (seeded subset) whose impostor pairs calibrate tau; "
                     "the whole database when it is smaller. 20,000 rows give ~2e8 impostor pairs.")
flags.DEFINE_list("images_per_identity", ["5", "50"], "identities: min,max images per identity (uniform).")
flags.DEFINE_float("genuine_cosine", 0.6, "identities: mean genuine cosine.")
flags.DEFINE_float("genuine_std", 0.1, "identities: genuine cosine standard deviation.")
flags.DEFINE_float("max_quality", 0.9, "identities: largest per-image quality (genuine cosine <= ~its square).")
flags.DEFINE_float("leaked_identity_share", 0.1, "identities: share of query identities that are database ones.")
flags.DEFINE_float("copy_share", 0.01, "identities: share of queries that are planted near-copies of database rows.")
flags.DEFINE_float("copy_cosine", 0.9, "identities: cosine of a planted near-copy with its database row.")
flags.DEFINE_float("min_recall", 0.95, "Verdict: the recall@k an approximate point must reach.")
flags.DEFINE_float("slow_call_s", 20.0, "Points whose warm-up call takes longer are timed once.")
flags.DEFINE_bool("bracket", True, "With approximate backends, run the exact modes again after them (the machine's "
                  "load drifts during a long sweep; their figure is the median of both ends).")
flags.DEFINE_bool("device_resident", False, "Put queries/database on the device before timing (GPU table).")
flags.DEFINE_string("output_dir", "/tmp/synleak_bench_knn", "Where results.{json,md} and the PNG go.")
flags.DEFINE_string("data_dir", None, "Reuse/put generated data here (default <output_dir>/data).")
flags.DEFINE_bool("malloc_single_arena", True, "One glibc malloc arena in every backend process "
                  "(search.hostmem.limit_malloc_retention); false = glibc's default per-thread heaps.")


def _fail(message: str) -> NoReturn:
    """A user mistake: common.run_program prints it as one line and exits 2."""
    raise app.UsageError(message)


def _json_flag(name: str, value: str, inner: str) -> dict:
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError as e:
        raise ValueError(f"--{name} is not valid JSON: {e}") from None
    if not isinstance(parsed, dict) or not all(isinstance(v, dict) for v in parsed.values()):
        raise ValueError(f"--{name} must be a JSON object of objects: {{backend: {{{inner}}}}}")
    return parsed


def calibrate_leak_thresholds(data: dict, fmrs: list[float], calib_rows: int, seed: int = 0):
    """The audit's thresholds on the benchmark database: tau(FMR) over the impostor pairs (different identity
    labels; no labels: every row its own identity) of all rows, or of a seeded random subset of `calib_rows` rows,
    computed exactly by `attack.calibration.calibrate_embeddings` (cosine). Returns (thresholds
    [{"fmr", "tau", "impostors_above", "achieved_fmr"}], a description for results.json)."""
    import numpy as np

    from synleak_jax.attack.calibration import calibrate_embeddings

    db = np.load(data["database"], mmap_mode="r")
    n = db.shape[0]
    rows = np.arange(n) if calib_rows >= n else np.sort(np.random.default_rng(seed).choice(n, calib_rows,
                                                                                         replace=False))
    labels = np.load(data["database_labels"])[rows] if data.get("database_labels") else None
    cal = calibrate_embeddings(np.asarray(db[rows], np.float32), labels, fmrs, metric="cosine")
    thresholds = [{"fmr": t.fmr, "tau": t.tau, "impostors_above": t.impostors_above, "achieved_fmr": t.achieved_fmr}
                  for t in cal.thresholds if t.source == "calibrated"]
    subset = "all" if len(rows) == n else f"a seeded (seed {seed}) random subset of {len(rows):,} of {n:,}"
    description = {"method": f"attack.calibration.calibrate_embeddings over {subset} database rows: {cal.method}",
                   "rows": int(len(rows)), "database_rows": int(n), "subset_seed": seed, "labels": labels is not None,
                   "n_impostor_pairs": int(cal.n_impostor), "n_genuine_pairs": int(cal.n_genuine),
                   "impostor_mean": cal.impostor_mean, "impostor_std": cal.impostor_std,
                   "genuine_mean": cal.genuine_mean, "genuine_std": cal.genuine_std}
    return thresholds, description


def main(argv):
    if len(argv) > 1:
        _fail(f"unexpected arguments: {' '.join(argv[1:])}")
    from synleak_jax.search import bench

    try:
        params = {bench.ALIASES.get(b, b): v for b, v in _json_flag("params", FLAGS.params, "param: value").items()}
        sweeps = {bench.ALIASES.get(b, b): v for b, v in _json_flag("sweeps", FLAGS.sweeps, "param: [values]").items()}
        backends = bench.resolve_backends(FLAGS.backends)
        for name, v in (("nq", FLAGS.nq), ("ndb", FLAGS.ndb), ("dim", FLAGS.dim), ("k", FLAGS.k),
                        ("repeats", FLAGS.repeats), ("rounds", FLAGS.rounds)):
            if v < 1:
                raise ValueError(f"--{name} must be >= 1, got {v}")
        try:
            fmrs = [float(f) for f in FLAGS.fmrs]
            lo, hi = (int(v) for v in FLAGS.images_per_identity)
        except ValueError as e:
            raise ValueError(f"--fmrs / --images_per_identity: {e}") from None
        for b in backends:  # parameter names and sweep grids are checked before any work
            bench.sweep_plan(b, ndb=FLAGS.ndb, k=1, params=params.get(b), sweep_grid=sweeps.get(b), sweep=FLAGS.sweep)
        identity = None
        if FLAGS.data == "identities":
            identity = {"images_per_identity": (lo, hi), "genuine_cosine": FLAGS.genuine_cosine,
                        "genuine_std": FLAGS.genuine_std, "max_quality": FLAGS.max_quality,
                        "leaked_identity_share": FLAGS.leaked_identity_share, "copy_share": FLAGS.copy_share,
                        "copy_cosine": FLAGS.copy_cosine}
        data = bench.prepare_data(FLAGS.data_dir or f"{FLAGS.output_dir}/data", kind=FLAGS.data, nq=FLAGS.nq,
                                  ndb=FLAGS.ndb, dim=FLAGS.dim, seed=FLAGS.seed, identity=identity,
                                  queries=FLAGS.queries, database=FLAGS.database,
                                  database_labels=FLAGS.database_labels)
        if FLAGS.k > data["ndb"]:
            raise ValueError(f"--k={FLAGS.k} exceeds the database's {data['ndb']} rows")
        thresholds, calibration = [], None
        if fmrs:
            logging.info("calibrating the audit thresholds at FMR %s", fmrs)
            thresholds, calibration = calibrate_leak_thresholds(data, fmrs, FLAGS.calib_rows, FLAGS.seed)
        result = bench.run_benchmark(FLAGS.output_dir, k=FLAGS.k, backends=backends, data=data,
                                     repeats=FLAGS.repeats, rounds=FLAGS.rounds, seed=FLAGS.seed, params=params,
                                     sweeps=sweeps, sweep=FLAGS.sweep, device_resident=FLAGS.device_resident,
                                     malloc_single_arena=FLAGS.malloc_single_arena, leak_thresholds=thresholds,
                                     calibration=calibration, min_recall=FLAGS.min_recall,
                                     slow_call_s=FLAGS.slow_call_s, bracket=FLAGS.bracket)
    except ValueError as e:  # a user mistake (flag, file, parameter): one line, no traceback
        _fail(str(e))  # raised from a ValueError: one line, no traceback
    logging.info("results in %s", FLAGS.output_dir)
    print(bench.to_markdown(result))


def run():
    common.run_program(main, doc=__doc__)


if __name__ == "__main__":
    run()
