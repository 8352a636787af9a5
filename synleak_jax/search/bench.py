"""k-NN benchmark harness: exact modes against swept approximate indexes, on face-structured data, with the audit's
cost of approximation ("leak recall"), every build in a fresh subprocess (honest peak memory).

Data (`prepare_data`): "identities" (default; `search.testdata`: identities of 5-50 images, genuine cosine ~0.6,
impostors ~0 +- 1/sqrt(D), leaked query identities and planted near-copies with ground truth), "gaussian"
(isotropic unit vectors: the worst case for every index) or "npy" (the user's own queries/database files, e.g.
from synleak-embed).

Runs (`run_benchmark`): the reference backend (`exact`, float32) first, then every requested backend. An exact
backend is one operating point. An approximate backend runs a parameter sweep (`DEFAULT_SWEEPS`, overridable):
one subprocess per build (faiss IVF nlist, HNSW M, ScaNN leaves), and every search-time setting of that build
(nprobe, efSearch, leaves to search x reorder, approx_max_k recall_target) is one operating point timed in it.
The worker (`python -m synleak_jax.search.bench <spec.json>`) initialises the runtime, loads the data into
64-byte-aligned memory (`hostmem.load_npy_aligned`, the same for every backend), builds (timed: build_s),
then per point: one untimed warm-up call (compiles), `repeats` timed calls (median; one timed call when the
warm-up took longer than `slow_call_s`), the point's indices saved. Queries/s exclude the build, as in
ann-benchmarks.

Metrics per point, computed by the parent:
  recall@k      mean over queries of |returned ∩ exact top-k| / k (exact = the float32 reference);
  leak recall   for each audit threshold tau (FMR 1e-3, 1e-4, calibrated exactly on the database's impostor
                pairs by the caller, see cli/bench_knn.py): with A_q = {d : s(q, d) > tau} (all database rows),
                R_q the method's returned rows and s the float64 score of the float32 inputs,
                    leak recall = sum_q |R_q ∩ A_q| / sum_q min(k, |A_q|).
                The denominator is the leaked pairs any top-k method can return (the exact top-k returns them
                all: leak recall 1.0); pairs beyond the k-th neighbour of a query are out of scope for every
                method alike (`leak_pairs_total` counts them, `leak_pairs_in_scope` the denominator);
  planted recall (identities data) the share of planted near-copy pairs (q, d) with d among q's returned rows.
Verdict (`verdict`): the fastest approximate point with recall@k >= 0.95 and leak recall 1.0 at every
threshold, against the fastest exact mode, as a ratio; and the issue's target line (exact_bf16 against every
approximate point with recall@k >= 0.95).

Memory accounting, per build process (all points of a build share it):
  data        = queries + database (float32) + output (float32 scores + int32 indices), in MB;
  init RSS    = resident set after imports, JAX/XLA initialisation (devices + one tiny compiled call) and the
                backend's own library import, before any data is loaded;
  peak RSS    = the process's RSS high-water mark (`getrusage`): loading, build, warm-ups and timed calls;
  build RSS   = resident set after the build minus before it (the index, roughly).
(peak - init) / data is the reading the exact-search target "peak <= 1.5x data" is judged on.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from synleak_jax import files, memory
from synleak_jax.search import testdata


@dataclasses.dataclass(frozen=True)
class Backend:
    """A benchmark backend: what it is, whether it is exact, its defaults, and which parameters need a new build
    (a new process) versus which are swept over one build."""

    description: str
    kind: str  # "exact", "approximate" or "peak" (no result: the matmul peak reference)
    defaults: dict
    build_keys: tuple[str, ...] = ()
    search_keys: tuple[str, ...] = ()


BACKENDS: dict[str, Backend] = {
    "exact": Backend("synleak exact_topk float32 (tiled selection)", "exact", {}),
    "exact_topk_select": Backend("synleak exact_topk float32, plain lax.top_k per tile", "exact",
                                 {"selection": "top_k", "db_block": 2048}),
    # group-max screen (default): 2048 x 2048 tiles, groups of 16 rows, k + 32 groups rescored in float32
    "exact_bf16": Backend("synleak exact_topk bf16_certified (group-max screen)", "exact",
                          {"precision": "bf16_certified"}),
    "numpy": Backend("numpy BLAS sgemm blocks + argpartition", "exact", {}),
    "faiss_flat": Backend("faiss-cpu IndexFlatIP (exact)", "exact", {}),
    "full_top_k": Backend("lax.top_k on full rows (materialises [query_block, ndb])", "exact", {"query_block": 256}),
    "faiss_ivf": Backend("faiss-cpu IVF-Flat (k-means lists, nprobe visited)", "approximate",
                         {"nlist": 1024, "nprobe": 16}, build_keys=("nlist", "train_size"), search_keys=("nprobe",)),
    "faiss_hnsw": Backend("faiss-cpu HNSW-Flat graph", "approximate", {"m": 32, "ef_construction": 80, "ef_search": 64},
                          build_keys=("m", "ef_construction"), search_keys=("ef_search",)),
    "scann": Backend("ScaNN tree + anisotropic hashing + exact reorder (optional extra)", "approximate",
                     {"num_leaves": 1000, "leaves_to_search": 100, "reorder": 100},
                     build_keys=("num_leaves", "training_sample_size"), search_keys=("leaves_to_search", "reorder")),
    "approx_max_k": Backend("lax.approx_max_k per tile + exact merge", "approximate", {"recall_target": 0.95},
                            build_keys=("query_block", "db_block"), search_keys=("recall_target",)),
    "full_approx": Backend("lax.approx_max_k on full rows", "approximate", {"query_block": 256, "recall_target": 0.95},
                           build_keys=("query_block", "bf16"), search_keys=("recall_target",)),
    "matmul_peak": Backend("plain bf16 matmul (peak reference, no selection)", "peak", {}),
}
#: Other accepted names (the README's examples used them).
ALIASES = {"approx": "approx_max_k"}
REFERENCE_BACKEND = "exact"

#: The documented default sweeps (ann-benchmarks style grids). Build parameters x search parameters; values that
#: do not fit the data are dropped (`sweep_plan`).
DEFAULT_SWEEPS: dict[str, dict[str, list]] = {
    # nlist ~ 2.3 and 9 x sqrt(ndb) at 200k (256 was dominated by 1024 at every recall, measured); nprobe from one
    # list to all of them (nprobe = nlist is a flat scan through the lists)
    "faiss_ivf": {"nlist": [1024, 4096], "nprobe": [1, 4, 16, 64, 256, 1024]},
    # M 16 and 32 (efConstruction 80); efSearch up to 2048 (face data: 512 reached recall@10 ~0.7-0.8 only)
    "faiss_hnsw": {"m": [16, 32], "ef_search": [16, 64, 256, 1024, 2048]},
    # 1000 leaves (~2 x sqrt(ndb) at 200k), 2.5-100% of them searched, 100 or 400 candidates reordered exactly
    "scann": {"num_leaves": [1000], "leaves_to_search": [25, 100, 250, 500, 1000], "reorder": [100, 400]},
    "approx_max_k": {"recall_target": [0.8, 0.9, 0.95, 0.99]},
    "full_approx": {"recall_target": [0.8, 0.9, 0.95, 0.99]},
}

DATA_KINDS = ("identities", "gaussian", "npy")
_FAISS_MIN_TRAIN_PER_LIST = 39  # faiss warns (and clusters poorly) below 39 training points per list


# ------------------------------------------------------------------------------------------- backends, sweeps


def resolve_backends(names) -> list[str]:
    """Canonical backend names (aliases mapped, duplicates dropped, order kept). ValueError (one line) on an unknown
    name, listing the valid ones."""
    out = []
    for raw in names:
        name = str(raw).strip()
        if not name:
            continue
        name = ALIASES.get(name, name)
        if name not in BACKENDS:
            aliases = ", ".join(f"{a} = {b}" for a, b in ALIASES.items())
            raise ValueError(f"unknown backend {raw!r}; valid: {', '.join(BACKENDS)} (aliases: {aliases})")
        if name not in out:
            out.append(name)
    if not out:
        raise ValueError(f"no backend given; valid: {', '.join(BACKENDS)}")
    return out


def _grid(values: dict[str, list]) -> list[dict]:
    keys = list(values)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(values[key] for key in keys))]


def sweep_plan(backend: str, *, ndb: int, k: int, params: dict | None = None, sweep_grid: dict | None = None,
               sweep: bool = True) -> list[tuple[dict, list[dict]]]:
    """The builds and operating points of one backend: [(build params, [search params of each point])].

    Exact backends: one build, one point (defaults updated by `params`). Approximate backends with sweep=True:
    the grid DEFAULT_SWEEPS[backend] with `sweep_grid` replacing whole value lists and `params` pinning single
    values; values that do not fit the data are dropped: IVF nlist > ndb / 39 (faiss needs 39 training points per
    list; if none fits, nlist = ndb // 39), nprobe > nlist; ScaNN num_leaves > ndb, leaves_to_search > num_leaves,
    reorder < k. With sweep=False: the defaults, one point.
    Raises ValueError naming an unknown parameter.
    """
    spec = BACKENDS[backend]
    params = dict(params or {})
    known = set(spec.defaults) | set(spec.build_keys) | set(spec.search_keys)
    grid_over = dict(sweep_grid or {})
    if spec.kind != "approximate":
        if grid_over:
            raise ValueError(f"--sweeps: {backend} is not an approximate backend (it has no sweep)")
        return [({**spec.defaults, **params}, [{}])]
    for key in list(params) + list(grid_over):
        if key not in known:
            raise ValueError(f"unknown parameter {key!r} for {backend}; known: {', '.join(sorted(known))}")
    for key, values in grid_over.items():
        if not isinstance(values, list) or not values:
            raise ValueError(f"--sweeps: {backend}.{key} must be a non-empty list of values, got {values!r}")
    grid = {key: [value] for key, value in spec.defaults.items()}
    if sweep:
        grid.update({key: list(v) for key, v in DEFAULT_SWEEPS.get(backend, {}).items()})
        grid.update(grid_over)
    grid.update({key: [value] for key, value in params.items()})
    build_grid = {key: v for key, v in grid.items() if key not in spec.search_keys}
    search_grid = {key: v for key, v in grid.items() if key in spec.search_keys}
    if backend == "faiss_ivf":
        fits = [n for n in build_grid["nlist"] if 1 <= n <= ndb // _FAISS_MIN_TRAIN_PER_LIST]
        build_grid["nlist"] = fits or [max(1, ndb // _FAISS_MIN_TRAIN_PER_LIST)]
    if backend == "scann":
        build_grid["num_leaves"] = sorted({min(n, ndb) for n in build_grid["num_leaves"]})
        search_grid["reorder"] = [r for r in search_grid["reorder"] if r >= k] or [k]
    plan = []
    for build in _grid(build_grid):
        points = _grid(search_grid)
        if backend == "faiss_ivf":
            points = _dedupe([{**p, "nprobe": min(p["nprobe"], build["nlist"])} for p in points])
        if backend == "scann":
            points = _dedupe([{**p, "leaves_to_search": min(p["leaves_to_search"], build["num_leaves"])}
                              for p in points])
        plan.append((build, points))
    return plan


def _dedupe(points: list[dict]) -> list[dict]:
    seen, out = set(), []
    for p in points:
        key = json.dumps(p, sort_keys=True)
        if key not in seen:
            seen.add(key)
            out.append(p)
    return out


def point_label(backend: str, params: dict) -> str:
    """A short name of an operating point, e.g. 'faiss_hnsw m=32 ef_search=128'."""
    shown = {key: v for key, v in params.items() if key in BACKENDS[backend].build_keys + BACKENDS[backend].search_keys}
    return backend + ("" if not shown else " " + " ".join(f"{key}={v}" for key, v in shown.items()))


# ------------------------------------------------------------------------------------------------- worker


def _build(backend: str, build: dict, max_search: dict, q, db, k: int, device_resident: bool):
    """Builds one backend. Returns (make_run(search params) -> run() -> (scores, indices), build seconds)."""
    import jax
    import jax.numpy as jnp

    from synleak_jax.search import approx
    from synleak_jax.search.exact import exact_topk

    t0 = time.perf_counter()
    if device_resident and not (backend in ("numpy", "scann") or backend.startswith("faiss_")):
        q, db = jax.device_put(jnp.asarray(q)), jax.device_put(jnp.asarray(db))
        jax.block_until_ready((q, db))
    if backend in ("exact", "exact_topk_select", "exact_bf16"):
        return (lambda sp: lambda: exact_topk(q, db, k, **build)), time.perf_counter() - t0
    if backend == "numpy":
        return (lambda sp: lambda: approx.numpy_topk(q, db, k, **build)), 0.0
    qc = np.ascontiguousarray(q, np.float32)
    if backend == "faiss_flat":
        faiss = approx._faiss()
        index = faiss.IndexFlatIP(db.shape[1])
        index.add(np.ascontiguousarray(db, np.float32))
        return (lambda sp: lambda: index.search(qc, k)), time.perf_counter() - t0
    if backend == "faiss_ivf":
        index = approx.faiss_ivf_index(db, nlist=int(build["nlist"]), train_size=build.get("train_size"))

        def make_ivf(sp):
            index.nprobe = int(sp["nprobe"])
            return lambda: index.search(qc, k)

        return make_ivf, time.perf_counter() - t0
    if backend == "faiss_hnsw":
        index = approx.faiss_hnsw_index(db, m=int(build["m"]), ef_construction=int(build["ef_construction"]))

        def make_hnsw(sp):
            index.hnsw.efSearch = int(sp["ef_search"])
            return lambda: index.search(qc, k)

        return make_hnsw, time.perf_counter() - t0
    if backend == "scann":
        extra = {"training_sample_size": int(build["training_sample_size"])} if "training_sample_size" in build else {}
        searcher = approx.scann_index(db, k, num_leaves=int(build["num_leaves"]),
                                      num_leaves_to_search=int(max_search.get("leaves_to_search", 100)),
                                      reorder=int(max_search.get("reorder", 100)), **extra)

        def make_scann(sp):
            def run():
                idx, sc = searcher.search_batched(qc, leaves_to_search=int(sp["leaves_to_search"]),
                                                  pre_reorder_num_neighbors=int(sp["reorder"]))
                return sc, idx

            return run

        return make_scann, time.perf_counter() - t0
    if backend == "approx_max_k":
        return (lambda sp: lambda: approx.approx_max_k_blockwise(q, db, k, **build, **sp)), time.perf_counter() - t0
    if backend in ("full_top_k", "full_approx"):
        method = "top_k" if backend == "full_top_k" else "approx"
        dtype = jnp.bfloat16 if build.get("bf16") else jnp.float32
        rest = {key: v for key, v in build.items() if key != "bf16"}
        return (lambda sp: lambda: approx.full_row_topk(q, db, k, method=method, dtype=dtype, **rest, **sp)), \
            time.perf_counter() - t0
    if backend == "matmul_peak":
        m = int(build.get("rows", 8192))
        a = jnp.asarray(np.asarray(q[:m]), jnp.bfloat16)
        nb = int(build.get("db_rows", 65536))
        b = jnp.asarray(np.asarray(db[: -(-min(nb, db.shape[0]) // 8) * 8]), jnp.bfloat16)
        f = jax.jit(lambda a, b: jax.lax.dot_general(a, b, (((1,), (1,)), ((), ())),
                                                     preferred_element_type=jnp.float32).max(axis=1))

        def make_peak(sp):
            def run():
                return f(a, b).block_until_ready(), None

            run.flop = 2.0 * a.shape[0] * b.shape[0] * a.shape[1]
            return run

        return make_peak, time.perf_counter() - t0
    raise ValueError(f"unknown backend {backend!r}; valid: {', '.join(BACKENDS)}")


def _init_runtime(backend: str) -> None:
    """Everything a backend needs before data arrives: JAX devices + compiler (one tiny compiled call), and the
    backend's own library. Measured as the process baseline `init_rss_mb`."""
    import jax
    import jax.numpy as jnp

    from synleak_jax.search import approx, exact  # noqa: F401

    jax.devices()
    x = jnp.ones((8, 8), jnp.float32)
    jax.jit(lambda a: a @ a)(x).block_until_ready()
    if backend.startswith("faiss_"):
        approx._faiss()
    elif backend == "scann":
        import scann  # noqa: F401


def worker(spec_path: str) -> None:
    """Runs one build of one backend and all its operating points, as the JSON spec says; writes <out>.json and
    <out>_p<j>_idx.npy (int64 indices of point j)."""
    from synleak_jax.search.hostmem import limit_malloc_retention, load_npy_aligned

    spec = json.loads(Path(spec_path).read_text())
    single_arena = bool(spec.get("malloc_single_arena")) and limit_malloc_retention()
    base_rss = memory.resident_mb()
    import jax

    runtime_rss = memory.resident_mb()
    _init_runtime(spec["backend"])
    init_rss = memory.resident_mb()
    q = load_npy_aligned(spec["queries"])
    db = load_npy_aligned(spec["database"])
    data_rss = memory.resident_mb()
    k = int(spec["k"])
    points = spec["points"]
    max_search = {key: max(p[key] for p in points) for key in (points[0] if points else {})}
    make_run, build_s = _build(spec["backend"], spec["build"], max_search, q, db, k,
                               spec.get("device_resident", False))
    built_rss = memory.resident_mb()
    results = []
    for j, search in enumerate(points):
        run = make_run(search)
        t = time.perf_counter()
        out = run()  # warm-up: compiles every shape the timed calls use
        warm_s = time.perf_counter() - t
        repeats = int(spec["repeats"]) if warm_s <= float(spec.get("slow_call_s", 20.0)) else 1
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            out = run()
            if hasattr(out[0], "block_until_ready"):
                out[0].block_until_ready()
            times.append(time.perf_counter() - t)
        res = {"search": search, "times_s": times, "median_s": statistics.median(times), "warmup_s": warm_s}
        if hasattr(run, "flop"):
            res["flop"] = run.flop
        elif out[1] is not None:
            np.save(f"{spec['out']}_p{j}_idx.npy", np.asarray(out[1]).astype(np.int64))
        results.append(res)
    summary = {
        "backend": spec["backend"], "build": spec["build"], "points": results, "build_s": build_s,
        "peak_rss_mb": memory.peak_resident_mb(), "start_rss_mb": base_rss, "runtime_rss_mb": runtime_rss, "init_rss_mb": init_rss,
        "data_loaded_rss_mb": data_rss, "build_rss_mb": built_rss - data_rss, "malloc_single_arena": single_arena,
        "devices": [str(d) for d in jax.devices()],
    }
    Path(spec["out"] + ".json").write_text(json.dumps(summary))


def _cpu_summary() -> dict:
    """CPU model and the vector extensions that decide BLAS/XLA kernels (from /proc/cpuinfo; {} elsewhere)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    model = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")), "")
    flags_line = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    wanted = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
    return {"model": model, "extensions": [f for f in wanted if f in flags_line]}


def _openblas_cores(env: dict | None) -> list[str]:
    """The kernel sets the OpenBLAS builds in numpy and faiss pick in a worker's environment (OPENBLAS_VERBOSE=2
    prints 'Core: ...' once per library)."""
    code = "import numpy\ntry:\n    import faiss\nexcept ImportError:\n    pass\n"
    try:
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                              env={**os.environ, **(env or {}), "OPENBLAS_VERBOSE": "2"})
    except (OSError, subprocess.TimeoutExpired):
        return []
    cores = [line.strip() for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("Core")]
    return cores if proc.returncode == 0 else cores + [f"(import failed: return code {proc.returncode})"]


# ------------------------------------------------------------------------------------------------- data


def _loadavg():
    try:
        return list(os.getloadavg())
    except OSError:
        return None


def _gaussian_chunks(n: int, dim: int, rng: np.random.Generator, chunk_rows: int = 65536):
    for a in range(0, n, chunk_rows):
        x = rng.standard_normal((min(chunk_rows, n - a), dim), dtype=np.float32)
        yield x / np.linalg.norm(x, axis=1, keepdims=True)


def _open_user_embeddings(path: str | None, what: str):
    """(array-like [n, D], labels int64 [n] or None) from a .npy file (memory-mapped, never unpickled) or an
    embedding store directory (synleak-embed's output; its labels when it has any). ValueError naming the flag."""
    if not path:
        raise ValueError(f"--{what} is required with --data=npy (a .npy file of [n, D] embeddings or an embedding "
                         "store directory)")
    if os.path.isdir(path):
        from synleak_jax.embed.store import EmbeddingStore, StoreError

        try:
            store = EmbeddingStore.open(path)
        except StoreError as e:
            raise ValueError(f"--{what}={path}: {e}") from None
        arr, labels = store.embeddings, np.asarray(store.labels, np.int64)
        labels = labels if len(labels) and (labels >= 0).all() else None
    else:
        try:
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as e:
            raise ValueError(f"--{what}={path}: not a readable .npy file or store directory ({e})") from None
        labels = None
    if len(arr.shape) != 2 or np.dtype(arr.dtype).kind != "f" or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ValueError(f"--{what}={path}: expected a 2-D float array [n, D], got {arr.dtype} {tuple(arr.shape)}")
    return arr, labels


def _finite_unit_check(arr: np.ndarray, path: str, chunk_rows: int = 65536) -> float:
    """Raises ValueError naming the first non-finite row; returns the largest |norm - 1| (read in chunks)."""
    worst = 0.0
    for a in range(0, arr.shape[0], chunk_rows):
        x = np.asarray(arr[a:a + chunk_rows], np.float64)
        bad = ~np.isfinite(x).all(axis=1)
        if bad.any():
            raise ValueError(f"{path}: row {a + int(np.argmax(bad))} is not finite (NaN or inf)")
        worst = max(worst, float(np.abs(np.linalg.norm(x, axis=1) - 1.0).max()))
    return worst


def prepare_data(data_dir: str, *, kind: str = "identities", nq: int = 4096, ndb: int = 200_000, dim: int = 512,
                 seed: int = 0, identity: dict | None = None, queries: str | None = None, database: str | None = None,
                 database_labels: str | None = None) -> dict:
    """Makes (or reuses) the benchmark's data; returns a JSON-able description with the file paths.

    kind "identities": `testdata.IdentitySpec(database_rows=ndb, query_rows=nq, dim=dim, seed=seed, **identity)`,
    written chunk by chunk with database_labels.npy and planted.npy. "gaussian": normalised standard normal rows.
    "npy": the user's `queries` / `database`: .npy files (float32 C-order ones are used in place, other float
    types are converted into data_dir) or embedding store directories (copied into data_dir; a labelled store's
    labels are the database labels); optional `database_labels` (int [ndb]) for the calibration; nq/ndb/dim come
    from the inputs. Generated data is reused when data_dir/data.json describes the same data.
    Raises ValueError (one line, naming the flag or file) on bad input.
    """
    if kind not in DATA_KINDS:
        raise ValueError(f"--data must be one of {', '.join(DATA_KINDS)}, got {kind!r}")
    out = Path(data_dir)
    out.mkdir(parents=True, exist_ok=True)
    manifest_path = out / "data.json"
    if kind == "npy":
        (q_arr, _), (db_arr, store_labels) = (_open_user_embeddings(queries, "queries"),
                                              _open_user_embeddings(database, "database"))
        if q_arr.shape[1] != db_arr.shape[1]:
            raise ValueError(f"--queries {tuple(q_arr.shape)} and --database {tuple(db_arr.shape)} have different "
                             "dimensions")
        paths = {}
        for what, arr, path in (("queries", q_arr, queries), ("database", db_arr, database)):
            if isinstance(arr, np.ndarray) and arr.dtype == np.float32 and arr.flags.c_contiguous:
                paths[what] = os.path.abspath(path)
            else:  # a store, float64 / float16, Fortran order: one float32 C-order copy beside the results
                paths[what] = str(out / f"{what}.npy")
                testdata.write_npy_chunks(paths[what], arr.shape, (np.asarray(arr[a:a + 65536], np.float32) for a in
                                                                   range(0, arr.shape[0], 65536)))
        worst = max(_finite_unit_check(q_arr, queries), _finite_unit_check(db_arr, database))
        labels_path = None
        if database_labels:
            try:
                labels = np.load(database_labels, allow_pickle=False)
            except (OSError, ValueError) as e:
                raise ValueError(f"--database_labels={database_labels}: not a readable .npy file ({e})") from None
            if labels.shape != (db_arr.shape[0],) or labels.dtype.kind not in "iu":
                raise ValueError(f"--database_labels={database_labels}: expected int [{db_arr.shape[0]}], got "
                                 f"{labels.dtype} {labels.shape}")
            labels_path = os.path.abspath(database_labels)
        elif store_labels is not None:
            labels_path = str(out / "database_labels.npy")
            files.atomic_save_npy(labels_path, store_labels)
        return {"kind": "npy", "queries": paths["queries"], "database": paths["database"],
                "nq": int(q_arr.shape[0]), "ndb": int(db_arr.shape[0]), "dim": int(db_arr.shape[1]),
                "database_labels": labels_path, "planted": None,
                "description": {"queries_source": os.path.abspath(queries),
                                "database_source": os.path.abspath(database),
                                "database_labels": labels_path, "max_abs_norm_minus_1": worst}}
    if kind == "identities":
        spec = testdata.IdentitySpec(database_rows=ndb, query_rows=nq, dim=dim, seed=seed, **(identity or {}))
        gen = testdata.IdentityEmbeddings(spec)  # validates
        description = gen.describe()
    else:
        if identity:
            raise ValueError("identity parameters apply to --data=identities only")
        description = {"generator": "normalised standard normal rows", "nq": nq, "ndb": ndb, "dim": dim,
                       "seed": seed}
    info = {"kind": kind, "queries": str(out / "queries.npy"), "database": str(out / "database.npy"),
            "nq": nq, "ndb": ndb, "dim": dim,
            "database_labels": str(out / "database_labels.npy") if kind == "identities" else None,
            "planted": str(out / "planted.npy") if kind == "identities" else None,
            "query_kind": str(out / "query_kind.npy") if kind == "identities" else None,
            "description": description}
    if manifest_path.exists() and json.loads(manifest_path.read_text()) == json.loads(files.dumps(info)):
        return info
    manifest_path.unlink(missing_ok=True)  # written last: a half-made directory is never reused
    if kind == "identities":
        gen.save_npy(info["database"], "database")  # first: the planted copies' sources are harvested on the way
        gen.save_npy(info["queries"], "queries")
        files.atomic_save_npy(info["database_labels"], gen.database_labels)
        files.atomic_save_npy(str(out / "query_labels.npy"), gen.query_labels)
        files.atomic_save_npy(info["planted"], gen.planted)
        files.atomic_save_npy(info["query_kind"], gen.query_kind)
    else:
        rng = np.random.default_rng(seed)
        testdata.write_npy_chunks(info["queries"], (nq, dim), _gaussian_chunks(nq, dim, rng))
        testdata.write_npy_chunks(info["database"], (ndb, dim), _gaussian_chunks(ndb, dim, rng))
    files.atomic_write(str(manifest_path), files.dumps(info))
    return info


# ------------------------------------------------------------------------------------------------- metrics


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean over queries of |found_row ∩ truth_row| / k (truth rows distinct; -1 in found never matches)."""
    k = truth.shape[1]
    hits = (truth[:, :, None] == found[:, None, :]).any(axis=2).sum()
    return float(hits) / (k * len(truth))


def pair_scores(queries, database, indices: np.ndarray, block: int = 4096) -> np.ndarray:
    """float64 scores s(q, indices[q, j]) of the float32 inputs; NaN where the index is invalid (< 0)."""
    nq, kk = indices.shape
    out = np.full((nq, kk), np.nan)
    for a in range(0, nq, block):
        idx = indices[a:a + block]
        ok = idx >= 0
        rows = np.asarray(database[np.where(ok, idx, 0).ravel()], np.float64).reshape(len(idx), kk, -1)
        s = np.einsum("qkd,qd->qk", rows, np.asarray(queries[a:a + block], np.float64))
        out[a:a + block] = np.where(ok, s, np.nan)
    return out


def leak_recall(found_scores: np.ndarray, found: np.ndarray, truth_scores: np.ndarray, tau: float) -> dict:
    """Leak recall at threshold tau (see the module docstring): found / in scope.

    found_scores [nq, k'] float64 scores of the method's returned rows (NaN for invalid ones), found their indices
    (duplicates counted once); truth_scores [nq, k] float64 scores of the exact top-k. Returns {"found",
    "in_scope", "recall"} (recall 1.0 when nothing is in scope)."""
    in_scope = int(np.sum(truth_scores > tau))
    above = np.nan_to_num(found_scores, nan=-np.inf) > tau
    # a row returned twice counts once
    srt = np.sort(np.where(above, found, -1), axis=1)
    distinct = (srt >= 0) & np.concatenate([np.ones((len(srt), 1), bool), srt[:, 1:] != srt[:, :-1]], axis=1)
    got = int(distinct.sum())
    return {"found": got, "in_scope": in_scope, "recall": 1.0 if in_scope == 0 else got / in_scope}


def count_pairs_above(queries, database, taus: list[float], query_block: int = 1024,
                      db_block: int = 16384) -> list[int]:
    """Number of (query, database) pairs with float32 score > tau, for each tau (numpy sgemm blocks; memory
    O(query_block x db_block))."""
    taus32 = np.asarray(taus, np.float32)
    counts = np.zeros(len(taus32), np.int64)
    for b in range(0, database.shape[0], db_block):
        d = np.asarray(database[b:b + db_block], np.float32)
        for a in range(0, queries.shape[0], query_block):
            s = np.asarray(queries[a:a + query_block], np.float32) @ d.T
            for t, tau in enumerate(taus32):
                counts[t] += np.count_nonzero(s > tau)
    return [int(c) for c in counts]


# ------------------------------------------------------------------------------------------------- parent


def run_benchmark(out_dir: str, *, k: int, backends: list[str], data: dict | None = None, data_kind: str = "gaussian",
                  nq: int | None = None, ndb: int | None = None, dim: int | None = None, seed: int = 0,
                  repeats: int = 3, rounds: int = 1, params: dict | None = None, sweeps: dict | None = None,
                  sweep: bool = True, device_resident: bool = False, env: dict | None = None,
                  data_dir: str | None = None, timeout_s: float = 3600, malloc_single_arena: bool = True,
                  leak_thresholds: list[dict] | None = None, calibration: dict | None = None,
                  min_recall: float = 0.95, slow_call_s: float = 20.0, bracket: bool = True) -> dict:
    """Runs the benchmark; returns the results dict (also written to out_dir as results.json, results.md and
    recall_vs_qps.png).

    data: a `prepare_data` description; without it, `prepare_data(data_dir or out_dir/data, kind=data_kind, nq,
    ndb, dim, seed)`. params: {backend: {param: value}} fixed values; sweeps: {backend: {param: [values]}} grid
    overrides (`sweep_plan`). leak_thresholds: [{"fmr": f, "tau": t, ...}] (the caller calibrates them; search/
    does not import attack/); calibration: how they were obtained (stored in results.json).
    malloc_single_arena: one glibc malloc arena in every backend's process (`hostmem.limit_malloc_retention`).
    bracket: with approximate backends, run the exact modes again after them (their figure: the median of both).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if data is None:
        data = prepare_data(data_dir or str(out / "data"), kind=data_kind, nq=nq, ndb=ndb, dim=dim, seed=seed)
    nq, ndb, dim = data["nq"], data["ndb"], data["dim"]
    if not 1 <= k <= ndb:
        raise ValueError(f"k={k} must be in [1, ndb={ndb}]")
    names = resolve_backends(backends)
    params = {ALIASES.get(b, b): v for b, v in (params or {}).items()}
    sweeps = {ALIASES.get(b, b): v for b, v in (sweeps or {}).items()}
    for table, what in ((params, "--params"), (sweeps, "--sweeps")):
        for b in table:
            if b not in names and b != REFERENCE_BACKEND:
                raise ValueError(f"{what} names {b!r}, which is not among the backends run ({', '.join(names)})")
    order = [REFERENCE_BACKEND] + [b for b in names if b != REFERENCE_BACKEND]
    plans = {b: sweep_plan(b, ndb=ndb, k=k, params=params.get(b), sweep_grid=sweeps.get(b), sweep=sweep)
             for b in order}
    runs: dict[tuple[str, int], list[dict]] = {(b, i): [] for b in order for i in range(len(plans[b]))}
    load_before = _loadavg()
    t_start = time.time()
    schedule = [(f"{b}_b{i}_r{r}", b, i) for r in range(rounds) for b in order for i in range(len(plans[b]))]
    if bracket and any(BACKENDS[b].kind == "approximate" for b in order):
        # the machine's load drifts during a long sweep: the exact modes run again at the end, and their figure is
        # the median over both ends (results.json keeps every run's time and the load when it started)
        schedule += [(f"{b}_b{i}_close", b, i) for b in order if BACKENDS[b].kind == "exact"
                     for i in range(len(plans[b]))]
    for tag, b, i in schedule:
        build, points = plans[b][i]
        spec = {"backend": b, "build": build, "points": points, "queries": data["queries"],
                "database": data["database"], "k": k, "repeats": repeats, "out": str(out / tag),
                "device_resident": device_resident, "malloc_single_arena": malloc_single_arena,
                "slow_call_s": slow_call_s}
        spec_path = out / f"{tag}_spec.json"
        spec_path.write_text(json.dumps(spec))
        t = time.perf_counter()
        load_start = _loadavg()
        try:
            proc = subprocess.run([sys.executable, "-m", "synleak_jax.search.bench", str(spec_path)],
                                  capture_output=True, text=True, env={**os.environ, **(env or {})},
                                  timeout=timeout_s)
            failed = proc.returncode != 0
            err = proc.stderr[-2000:]
            if proc.returncode < 0:  # killed by a signal (SIGILL: a BLAS kernel this CPU lacks, ...)
                err += f"\nkilled by {signal.Signals(-proc.returncode).name}"
        except subprocess.TimeoutExpired:
            failed, err = True, f"timed out after {timeout_s:.0f} s"
        if failed:
            runs[(b, i)].append({"error": err})
            print(f"[bench] {tag}: FAILED\n{err}", file=sys.stderr)
            continue
        res = json.loads(Path(spec["out"] + ".json").read_text())
        res["tag"] = tag
        res["loadavg_start"] = load_start
        runs[(b, i)].append(res)
        print(f"[bench] {tag} {build}: {len(points)} point(s), build {res['build_s']:.1f} s, peak RSS "
              f"{res['peak_rss_mb']:.0f} MB (subprocess {time.perf_counter() - t:.0f} s)", file=sys.stderr)
    load_after = _loadavg()
    wall_s = time.time() - t_start
    rows, planted_summary = _rows(out, data, k, order, plans, runs, leak_thresholds or [])
    import jax

    ref_runs = [x for x in runs[(REFERENCE_BACKEND, 0)] if "error" not in x]
    data_mb = (nq * dim + ndb * dim) * 4 / 2**20 + nq * k * 8 / 2**20
    result = {
        "config": {"nq": nq, "ndb": ndb, "dim": dim, "k": k, "repeats": repeats, "rounds": rounds, "seed": seed,
                   "device_resident": device_resident, "malloc_single_arena": malloc_single_arena,
                   "data_mb": data_mb, "sweep": sweep, "params": params, "sweeps": sweeps,
                   "plans": {b: [{"build": bd, "points": pts} for bd, pts in plans[b]] for b in order},
                   "slow_call_s": slow_call_s, "min_recall": min_recall, "bracket": bracket,
                   "schedule": [tag for tag, _, _ in schedule]},
        "data": data,
        "leak_thresholds": leak_thresholds or [],
        "calibration": calibration,
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count(),
                    "jax": jax.__version__, "devices": ref_runs[0]["devices"] if ref_runs else None,
                    "loadavg_before": load_before, "loadavg_after": load_after, "wall_s": wall_s,
                    "openblas_coretype": os.environ.get("OPENBLAS_CORETYPE"), "cpu": _cpu_summary(),
                    "openblas_cores": _openblas_cores(env)},
        "rows": rows,
    }
    if planted_summary:
        result["planted"] = planted_summary
    result["verdict"] = verdict(result)
    (out / "results.json").write_text(files.dumps(result, indent=1))
    (out / "results.md").write_text(to_markdown(result))
    try:
        plot(result, out / "recall_vs_qps.png")
    except Exception as e:  # plotting is a convenience; the JSON/Markdown are the record
        print(f"[bench] plot failed: {e}", file=sys.stderr)
    return result


def _rows(out: Path, data: dict, k: int, order: list[str], plans: dict, runs: dict,
          thresholds: list[dict]) -> tuple[list[dict], dict | None]:
    """One row per operating point: timings (median of round medians), memory of its build, quality metrics; and
    the planted pairs' check against the exact result (identities data)."""
    nq, ndb, dim = data["nq"], data["ndb"], data["dim"]
    data_mb = (nq * dim + ndb * dim) * 4 / 2**20 + nq * k * 8 / 2**20
    q = np.load(data["queries"], mmap_mode="r")
    db = np.load(data["database"], mmap_mode="r")
    truth = truth_scores = None
    ref_ok = [x for x in runs[(REFERENCE_BACKEND, 0)] if "error" not in x]
    if ref_ok:
        truth = np.load(out / f"{ref_ok[0]['tag']}_p0_idx.npy")
        truth_scores = pair_scores(q, db, truth)
    planted = np.load(data["planted"]) if data.get("planted") else None
    query_kind = np.load(data["query_kind"]) if data.get("query_kind") else None
    kinds = (("new_identity", testdata.KIND_NEW), ("leaked_identity", testdata.KIND_LEAKED_IDENTITY),
             ("planted_copy", testdata.KIND_COPY))
    taus = [float(t["tau"]) for t in thresholds]
    totals = count_pairs_above(q, db, taus) if taus else []
    rows = []
    for b in order:
        spec = BACKENDS[b]
        for i, (build, points) in enumerate(plans[b]):
            ok = [x for x in runs[(b, i)] if "error" not in x]
            if not ok:
                rows.append({"backend": b, "kind": spec.kind, "description": spec.description, "build": build,
                             "label": point_label(b, build), "error": runs[(b, i)][0]["error"][-500:]})
                continue
            build_info = {"build_s": statistics.median([x["build_s"] for x in ok]),
                          "peak_rss_mb": max(x["peak_rss_mb"] for x in ok),
                          "init_rss_mb": max(x["init_rss_mb"] for x in ok),
                          "build_rss_mb": statistics.median([x["build_rss_mb"] for x in ok]),
                          "peak_above_init_mb": max(x["peak_rss_mb"] - x["init_rss_mb"] for x in ok),
                          "runtime_rss_mb": ok[0]["runtime_rss_mb"], "data_mb": data_mb}
            build_info["peak_over_data"] = build_info["peak_rss_mb"] / data_mb
            build_info["peak_above_init_over_data"] = build_info["peak_above_init_mb"] / data_mb
            for j, search in enumerate(points):
                medians = [x["points"][j]["median_s"] for x in ok]
                med = statistics.median(medians)
                p = {**build, **search}
                row = {"backend": b, "kind": spec.kind, "description": spec.description, "params": p,
                       "build": build, "search": search, "build_index": i, "label": point_label(b, p),
                       "median_s": med, "round_medians_s": medians, "runs": [x["tag"] for x in ok],
                       "loadavg_at_runs": [x.get("loadavg_start") for x in ok],
                       "timed_calls": len(ok[0]["points"][j]["times_s"]), **build_info}
                first = ok[0]["points"][j]
                if "flop" in first:
                    row["tflops"] = first["flop"] / med / 1e12
                    rows.append(row)
                    continue
                row["queries_per_s"] = nq / med
                row["tflops"] = 2.0 * nq * ndb * dim / med / 1e12
                idx_path = out / f"{ok[0]['tag']}_p{j}_idx.npy"
                if truth is not None and idx_path.exists():
                    found = np.load(idx_path)
                    row["recall_at_k"] = recall_at_k(found, truth)
                    if query_kind is not None:  # queries with a true neighbour vs queries whose top-k are impostors
                        row["recall_at_k_by_query_kind"] = {
                            name: recall_at_k(found[query_kind == value], truth[query_kind == value])
                            for name, value in kinds if (query_kind == value).any()}
                    if taus:
                        found_scores = pair_scores(q, db, found)
                        row["leak"] = []
                        for t, tau, total in zip(thresholds, taus, totals):
                            lr = leak_recall(found_scores, found, truth_scores, tau)
                            row["leak"].append({"fmr": t.get("fmr"), "tau": tau, "leak_pairs_total": total,
                                                "leak_pairs_in_scope": lr["in_scope"], "found": lr["found"],
                                                "leak_recall": lr["recall"]})
                    if planted is not None and len(planted):
                        hit = (found[planted[:, 0]] == planted[:, 1][:, None]).any(axis=1)
                        row["planted_recall"] = float(hit.mean())
                rows.append(row)
    ref = next((r for r in rows if r["backend"] == REFERENCE_BACKEND and "median_s" in r), None)
    peak = next((r for r in rows if r["backend"] == "matmul_peak" and "tflops" in r), None)
    for r in rows:
        if ref and "queries_per_s" in r and r is not ref:
            r["exact_speedup_vs_this"] = r["median_s"] / ref["median_s"]  # >1: the float32 exact kernel is faster
        if peak and "queries_per_s" in r:
            r["fraction_of_measured_peak"] = r["tflops"] / peak["tflops"]
    planted_summary = None
    if planted is not None:  # ground truth against the exact result: the planted row is its query's top-1
        planted_summary = {"n_planted": int(len(planted))}
        if truth is not None and len(planted):
            planted_summary["exact_top1_is_planted"] = float(np.mean(truth[planted[:, 0], 0] == planted[:, 1]))
    return rows, planted_summary


def _spread(row: dict) -> str:
    """', runs a-b q/s' when a point was timed in more than one process (rounds, bracketing), else ''."""
    medians = row.get("round_medians_s", [])
    if len(medians) < 2:
        return ""
    nq = row["queries_per_s"] * row["median_s"]
    return f", runs {nq / max(medians):,.0f}-{nq / min(medians):,.0f}"


def verdict(result: dict) -> dict:
    """The fastest approximate point with recall@k >= min_recall and leak recall 1.0 at every threshold, against
    the fastest exact mode (ratio of queries/s; > 1: the approximate point is faster); and the issue's target:
    exact_bf16 against every approximate point with recall@k >= min_recall."""
    rows = [r for r in result["rows"] if "queries_per_s" in r and "recall_at_k" in r]
    k = result["config"]["k"]
    min_recall = result["config"].get("min_recall", 0.95)
    exact = [r for r in rows if r["kind"] == "exact"]
    approx_rows = [r for r in rows if r["kind"] == "approximate"]
    fmrs = ", ".join(f"{t['fmr']:g}" for t in result.get("leak_thresholds", []))
    out: dict = {"min_recall": min_recall, "n_approximate_points": len(approx_rows)}
    if not exact:
        out["line"] = "verdict: no exact mode measured"
        return out
    fastest_exact = max(exact, key=lambda r: r["queries_per_s"])
    out["fastest_exact"] = {"label": fastest_exact["label"], "queries_per_s": fastest_exact["queries_per_s"]}
    has_leak = bool(result.get("leak_thresholds"))
    condition = f"recall@{k} >= {min_recall:g}" + (f" and leak recall 1.0 (FMR {fmrs})" if has_leak else "")
    good = [r for r in approx_rows if r["recall_at_k"] >= min_recall
            and all(x["leak_recall"] == 1.0 for x in r.get("leak", []))]
    exact_txt = (f"the fastest exact mode ({fastest_exact['label']}, {fastest_exact['queries_per_s']:,.0f} q/s"
                 f"{_spread(fastest_exact)})")
    if good:
        best = max(good, key=lambda r: r["queries_per_s"])
        ratio = best["queries_per_s"] / fastest_exact["queries_per_s"]
        out.update({"best_approximate": {"label": best["label"], "queries_per_s": best["queries_per_s"],
                                         "recall_at_k": best["recall_at_k"]}, "ratio": ratio})
        out["line"] = (f"verdict: fastest approximate point with {condition}: {best['label']} "
                       f"({best['queries_per_s']:,.0f} q/s{_spread(best)}, recall@{k} {best['recall_at_k']:.4f}) = "
                       f"{ratio:.2f}x {exact_txt}"
                       + ("; its recall is 1.0: exact in effect on this platform"
                          if best["recall_at_k"] == 1.0 else ""))
    else:
        out["ratio"] = None
        out["line"] = (f"verdict: none of {len(approx_rows)} approximate points reaches {condition}; "
                       f"{exact_txt} is the answer")
    bf16 = next((r for r in exact if r["backend"] == "exact_bf16"), None)
    at_recall = [r for r in approx_rows if r["recall_at_k"] >= min_recall]
    if bf16 is not None:
        if at_recall:
            fastest = max(at_recall, key=lambda r: r["queries_per_s"])
            ratio = fastest["queries_per_s"] / bf16["queries_per_s"]
            met = ratio <= 1.0
            out["target"] = {"met": met, "fastest_approximate_at_recall": fastest["label"],
                             "ratio_vs_exact_bf16": ratio}
            out["target_line"] = (
                f"target (exact_bf16 at least as fast as every approximate point with recall@{k} >= "
                f"{min_recall:g}): {'met' if met else 'NOT met'}: the fastest such point, {fastest['label']} "
                f"({fastest['queries_per_s']:,.0f} q/s{_spread(fastest)}, recall@{k} {fastest['recall_at_k']:.4f}), "
                f"runs at {ratio:.2f}x exact_bf16 ({bf16['queries_per_s']:,.0f} q/s{_spread(bf16)})")
        else:
            out["target"] = {"met": True, "fastest_approximate_at_recall": None}
            out["target_line"] = (f"target (exact_bf16 at least as fast as every approximate point with recall@{k} "
                                  f">= {min_recall:g}): met: no approximate point reaches that recall")
    return out


# ------------------------------------------------------------------------------------------------- reports


def _fmt_leak(r: dict) -> str:
    return " / ".join(f"{x['leak_recall']:.4f}" for x in r.get("leak", [])) or "-"


def to_markdown(result: dict) -> str:
    c, m = result["config"], result["machine"]
    data = result.get("data", {})
    lines = [f"data: {data.get('kind', '?')}, nq={c['nq']} x ndb={c['ndb']} x dim={c['dim']}, k={c['k']}; "
             f"{c['repeats']} timed calls per point x {c['rounds']} round(s) (median; one timed call where the "
             f"warm-up took > {c.get('slow_call_s', 20):g} s), devices: {m['devices']}, load avg before/after: "
             f"{m['loadavg_before']} / {m['loadavg_after']}, OPENBLAS_CORETYPE={m.get('openblas_coretype')}", ""]
    thresholds = result.get("leak_thresholds") or []
    if thresholds:
        cal = result.get("calibration") or {}
        lines += ["Leak thresholds (match iff score > tau): " + "; ".join(
            f"FMR {t['fmr']:g}: tau = {t['tau']:.5f}" for t in thresholds)
            + (f" — {cal.get('method', '')}" if cal else ""), ""]
        first = next((r for r in result["rows"] if r.get("leak")), None)
        if first:
            lines += ["Leaked pairs (score > tau) over all nq x ndb pairs / in scope at k (sum over queries of "
                      "min(k, pairs above tau)): " + "; ".join(
                          f"FMR {x['fmr']:g}: {x['leak_pairs_total']:,} / {x['leak_pairs_in_scope']:,}"
                          for x in first["leak"]), ""]
    if result.get("planted"):
        p = result["planted"]
        lines += [f"Planted near-copies: {p['n_planted']}, exact top-1 of their query: "
                  f"{p.get('exact_top1_is_planted', float('nan')):.4f}", ""]
    worst = (data.get("description") or {}).get("max_abs_norm_minus_1")
    if worst is not None and worst > 1e-3:
        lines += [f"Note: the inputs are not L2-normalised (largest |norm - 1| = {worst:.3g}): every backend ranks by "
                  "inner product, and the thresholds were calibrated as cosine on the raw vectors.", ""]
    by_kind = any("recall_at_k_by_query_kind" in r for r in result["rows"])
    v = result.get("verdict", {})
    lines += [f"**{v.get('line', '')}**", ""]
    if v.get("target_line"):
        lines += [f"**{v['target_line']}**", ""]
    lines += [f"Memory: data = queries + database + output = {c['data_mb']:.1f} MB; init = RSS after imports and JAX "
              "init, before data; peak and build RSS are per build process (shared by its points). glibc malloc: "
              + ("one arena (M_ARENA_MAX=1)" if c["malloc_single_arena"] else "default arenas") + ".", "",
              f"| backend | parameters | queries/s | recall@{c['k']} | leak recall"
              + (" (FMR " + " / ".join(f"{t['fmr']:g}" for t in thresholds) + ")" if thresholds else "")
              + (" | recall@k by query: new identity / leaked identity / copy" if by_kind else "")
              + " | planted recall | build s | build RSS MB | peak RSS MB | (peak-init)/data |",
              "|---|---|---|---|---|" + ("---|" if by_kind else "") + "---|---|---|---|---|"]
    for r in result["rows"]:
        params = " ".join(f"{key}={v}" for key, v in r.get("params", r.get("build", {})).items())
        if "error" in r:
            lines.append(f"| {r['backend']} | {params} | failed |" + " |" * (7 + by_kind))
            continue
        qps = f"{r['queries_per_s']:,.0f}" if "queries_per_s" in r else f"{r['tflops']:.3f} TFLOP/s"
        rec = f"{r['recall_at_k']:.4f}" if "recall_at_k" in r else "-"
        planted = f"{r['planted_recall']:.4f}" if "planted_recall" in r else "-"
        kind_txt = ""
        if by_kind:
            by = r.get("recall_at_k_by_query_kind", {})
            kind_txt = " / ".join(f"{by[name]:.3f}" if name in by else "-"
                                  for name in ("new_identity", "leaked_identity", "planted_copy"))
            kind_txt += " |"
        lines.append(f"| {r['backend']} | {params} | {qps} | {rec} | {_fmt_leak(r)} |"
                     f"{' ' + kind_txt if by_kind else ''}"
                     f" {planted} | "
                     f"{r['build_s']:.1f} | {r['build_rss_mb']:.0f} | {r['peak_rss_mb']:.0f} | "
                     f"{r['peak_above_init_over_data']:.2f} |")
    return "\n".join(lines) + "\n"


def pareto_frontier(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points not dominated in (recall up, queries/s up), ordered by recall ascending."""
    order = sorted(range(len(points)), key=lambda i: (-points[i][0], -points[i][1]))
    frontier, best_qps = [], -math.inf
    for i in order:  # from the highest recall down: keep a point only if it is faster than everything above it
        if points[i][1] > best_qps:
            frontier.append(i)
            best_qps = points[i][1]
    return frontier[::-1]


def place_labels(ax, items: list[tuple[float, float, str]], fontsize: float = 6.0) -> list:
    """Annotates data points without overlaps: for each (x, y, text) the first candidate offset whose text box
    overlaps no label placed before, no marker of the listed points and stays inside the axes is used; a label
    that fits nowhere is left out. Returns the placed annotations."""
    fig = ax.figure
    renderer = fig.canvas.get_renderer()
    axes_box = ax.get_window_extent(renderer)
    taken = []
    for x, y, _ in items:  # a small box around every labelled marker
        px, py = ax.transData.transform((x, y))
        taken.append((px - 3, py - 3, px + 3, py + 3))
    offsets = [(5, 3, "left", "bottom"), (5, -3, "left", "top"), (-5, 3, "right", "bottom"),
               (-5, -3, "right", "top"), (0, 7, "center", "bottom"), (0, -7, "center", "top"),
               (12, 10, "left", "bottom"), (12, -10, "left", "top"), (-12, 10, "right", "bottom"),
               (-12, -10, "right", "top"), (0, 16, "center", "bottom"), (0, -16, "center", "top")]
    placed = []
    for x, y, text in items:
        for dx, dy, ha, va in offsets:
            ann = ax.annotate(text, (x, y), xytext=(dx, dy), textcoords="offset points", fontsize=fontsize,
                              ha=ha, va=va)
            bb = ann.get_window_extent(renderer)
            box = (bb.x0, bb.y0, bb.x1, bb.y1)
            inside = (box[0] >= axes_box.x0 and box[2] <= axes_box.x1 and box[1] >= axes_box.y0
                      and box[3] <= axes_box.y1)
            clash = any(box[0] < t[2] and t[0] < box[2] and box[1] < t[3] and t[1] < box[3] for t in taken)
            if inside and not clash:
                taken.append(box)
                placed.append(ann)
                break
            ann.remove()
    return placed


def plot(result: dict, path: Path) -> None:
    """ann-benchmarks convention: recall@k on x, queries/s on log y; per approximate method all its points (faint)
    and its Pareto frontier (line, labelled with the parameters), exact modes as reference points; a second panel
    with leak recall at the strictest threshold when thresholds were given."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    c = result["config"]
    rows = [r for r in result["rows"] if "queries_per_s" in r and "recall_at_k" in r]
    thresholds = result.get("leak_thresholds") or []
    panels = [("recall_at_k", f"recall@{c['k']}")]
    if thresholds:
        strict = min(range(len(thresholds)), key=lambda i: thresholds[i]["fmr"])
        panels.append((strict, f"leak recall (pairs above tau at FMR {thresholds[strict]['fmr']:g})"))
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 5.2), squeeze=False)
    cmap = plt.get_cmap("tab10")
    methods = [b for b in dict.fromkeys(r["backend"] for r in rows if r["kind"] == "approximate")]
    exact = [r for r in rows if r["kind"] == "exact"]
    labels = []
    for ax, (metric, xlabel) in zip(axes[0], panels):
        def value(r):
            return r["recall_at_k"] if metric == "recall_at_k" else r["leak"][metric]["leak_recall"]

        to_label = []
        for n, b in enumerate(methods):
            pts = [r for r in rows if r["backend"] == b]
            xy = [(value(r), r["queries_per_s"]) for r in pts]
            color = cmap(n % 10)
            ax.scatter([p[0] for p in xy], [p[1] for p in xy], s=12, color=color, alpha=0.35, linewidths=0)
            front = pareto_frontier(xy)
            ax.plot([xy[i][0] for i in front], [xy[i][1] for i in front], "-o", ms=4, color=color, label=b)
            # label with the parameters that vary within this method's sweep only (short labels)
            varying = [key for key in pts[0]["params"] if len({json.dumps(r["params"].get(key)) for r in pts}) > 1]
            to_label += [(xy[i][0], xy[i][1], " ".join(f"{key}={pts[i]['params'][key]}" for key in varying))
                         for i in front]
        for n, r in enumerate(exact):
            ax.scatter([value(r)], [r["queries_per_s"]], marker="*", s=110, color="black" if n == 0 else
                       cmap((len(methods) + n) % 10), zorder=5, label=f"{r['backend']} (exact)")
        ax.set_yscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("queries / s (log)")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=3, frameon=False)
        labels.append((ax, [t for t in to_label if t[2]]))
    data = result.get("data", {})
    fig.suptitle(f"{data.get('kind', '')} {c['nq']} x {c['ndb']} x {c['dim']}, k={c['k']}: Pareto frontiers "
                 "(faint: every operating point)", fontsize=9)
    fig.tight_layout()
    for ax, items in labels:  # after the layout is final: label positions are checked in display space
        place_labels(ax, items)
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    worker(sys.argv[1])
