"""k-NN benchmark harness: every backend in a fresh subprocess (honest peak memory), same data, same run.

Parent (`run_benchmark`): writes the queries/database once as .npy, then for each round runs each backend as
`python -m synleak_jax.search.bench <spec.json>`; the worker initialises the runtime, loads the data into
64-byte-aligned memory (`hostmem.load_npy_aligned`, the same for every backend), builds (faiss indexes), warms up
(compiles: one full untimed call), times `repeats` calls (`block_until_ready` / host results, median), saves
its indices and reports wall times and RSS. The parent computes recall@k against our exact float32 result and
writes results.json, results.md and recall_vs_qps.png.

Memory accounting, per backend process:
  data        = queries + database (float32) + output (float32 scores + int32 indices), in MB;
  init RSS    = resident set after imports, JAX/XLA initialisation (devices + one tiny compiled call) and the
                backend's own library import, before any data is loaded;
  peak RSS    = the process's RSS high-water mark (`getrusage`), data loading, build, warm-up and timed calls
                included.
The issue's target "peak memory <= 1.5x (database + queries + output)" is judged on (peak - init) / data: the
runtime's fixed ~200 MB is not memory the search uses. peak / data is reported as well.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

# name -> (description, default params)
BACKENDS = {
    "exact": ("synleak exact_topk float32 (tiled selection)", {}),
    "exact_topk_select": ("synleak exact_topk float32, plain lax.top_k per tile", {"selection": "top_k",
                                                                                  "db_block": 2048}),
    # group-max screen (default): 2048 x 2048 tiles, groups of 16 rows, k + 32 groups rescored in float32
    "exact_bf16": ("synleak exact_topk bf16_certified (group-max screen)", {"precision": "bf16_certified"}),
    "sharded": ("synleak sharded_exact_topk over all local devices", {}),
    "numpy": ("numpy BLAS sgemm blocks + argpartition", {}),
    "faiss_flat": ("faiss-cpu IndexFlatIP (exact)", {}),
    "faiss_ivf": ("faiss-cpu IVF-Flat", {"nlist": 1024, "nprobe": 16}),
    "faiss_hnsw": ("faiss-cpu HNSW-Flat", {"m": 32, "ef_construction": 80, "ef_search": 64}),
    "scann": ("ScaNN tree + AH + reorder (optional extra)", {"num_leaves": 1000, "num_leaves_to_search": 100,
                                                             "reorder": 100}),
    "approx_max_k": ("lax.approx_max_k per tile + exact merge", {"recall_target": 0.95}),
    "full_top_k": ("lax.top_k on full rows (materialises [query_block, ndb])", {"query_block": 256}),
    "full_approx": ("lax.approx_max_k on full rows", {"query_block": 256, "recall_target": 0.95}),
    "matmul_peak": ("plain bf16 matmul (peak reference, no selection)", {}),
}
REFERENCE_BACKEND = "exact"


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _current_rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


# ------------------------------------------------------------------------------------------------- worker


def _make_runner(backend: str, params: dict, q, db, k: int, device_resident: bool):
    """Returns (search() -> (scores, indices) numpy, build_seconds)."""
    import jax
    import jax.numpy as jnp

    from synleak_jax.search import approx
    from synleak_jax.search.exact import exact_topk
    from synleak_jax.search.sharded import sharded_exact_topk

    t0 = time.perf_counter()
    if device_resident and backend not in ("numpy", "faiss_flat", "faiss_ivf", "faiss_hnsw"):
        q, db = jax.device_put(jnp.asarray(q)), jax.device_put(jnp.asarray(db))
        jax.block_until_ready((q, db))
    if backend in ("exact", "exact_topk_select", "exact_bf16"):
        return (lambda: exact_topk(q, db, k, **params)), time.perf_counter() - t0
    if backend == "sharded":
        return (lambda: sharded_exact_topk(q, db, k, **params)), time.perf_counter() - t0
    if backend == "numpy":
        return (lambda: approx.numpy_topk(q, db, k, **params)), 0.0
    if backend.startswith("faiss_"):
        faiss = approx._faiss()
        dbc = np.ascontiguousarray(db, np.float32)
        if backend == "faiss_flat":
            index = faiss.IndexFlatIP(db.shape[1])
        elif backend == "faiss_ivf":
            quant = faiss.IndexFlatIP(db.shape[1])
            index = faiss.IndexIVFFlat(quant, db.shape[1], int(params.get("nlist", 1024)),
                                       faiss.METRIC_INNER_PRODUCT)
            rs = np.random.default_rng(0)
            index.train(dbc[np.sort(rs.choice(len(dbc), min(65536, len(dbc)), replace=False))])
        else:
            index = faiss.IndexHNSWFlat(db.shape[1], int(params.get("m", 32)), faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = int(params.get("ef_construction", 80))
        index.add(dbc)
        if backend == "faiss_ivf":
            index.nprobe = int(params.get("nprobe", 16))
        if backend == "faiss_hnsw":
            index.hnsw.efSearch = int(params.get("ef_search", 64))
        qc = np.ascontiguousarray(q, np.float32)
        return (lambda: index.search(qc, k)), time.perf_counter() - t0
    if backend == "scann":
        searcher = approx.scann_index(db, k, **params)
        qc = np.ascontiguousarray(q, np.float32)

        def run_scann():
            idx, sc = searcher.search_batched(qc)
            return sc, idx

        return run_scann, time.perf_counter() - t0
    if backend == "approx_max_k":
        return (lambda: approx.approx_max_k_blockwise(q, db, k, **params)), time.perf_counter() - t0
    if backend in ("full_top_k", "full_approx"):
        method = "top_k" if backend == "full_top_k" else "approx"
        dt = jnp.bfloat16 if params.get("bf16") else jnp.float32
        p = {key: v for key, v in params.items() if key != "bf16"}
        return (lambda: approx.full_row_topk(q, db, k, method=method, dtype=dt, **p)), time.perf_counter() - t0
    if backend == "matmul_peak":
        from synleak_jax.search.exact import _round_up

        m = int(params.get("rows", 8192))
        a = jnp.asarray(np.asarray(q[:m]), jnp.bfloat16)
        nb = int(params.get("db_rows", 65536))
        b = jnp.asarray(np.asarray(db[: _round_up(min(nb, db.shape[0]), 8)]), jnp.bfloat16)
        f = jax.jit(lambda a, b: jax.lax.dot_general(a, b, (((1,), (1,)), ((), ())),
                                                     preferred_element_type=jnp.float32).max(axis=1))

        def run():
            out = f(a, b).block_until_ready()
            return out, None

        run.flop = 2.0 * a.shape[0] * b.shape[0] * a.shape[1]
        return run, time.perf_counter() - t0
    raise ValueError(f"unknown backend {backend!r}; known: {sorted(BACKENDS)}")


def _init_runtime(backend: str) -> None:
    """Everything a backend needs before data arrives: JAX devices + compiler (one tiny compiled call), and the
    backend's own library. Measured as the process baseline `init_rss_mb`."""
    import jax
    import jax.numpy as jnp

    from synleak_jax.search import approx, exact, sharded  # noqa: F401

    jax.devices()
    x = jnp.ones((8, 8), jnp.float32)
    jax.jit(lambda a: a @ a)(x).block_until_ready()
    if backend.startswith("faiss_"):
        approx._faiss()
    elif backend == "scann":
        import scann  # noqa: F401


def worker(spec_path: str) -> None:
    """Run one backend as described by the JSON spec; writes <out>.json and <out>_idx.npy."""
    from synleak_jax.search.hostmem import limit_malloc_retention, load_npy_aligned

    spec = json.loads(Path(spec_path).read_text())
    single_arena = bool(spec.get("malloc_single_arena")) and limit_malloc_retention()
    base_rss = _current_rss_mb()
    import jax  # noqa: F401

    runtime_rss = _current_rss_mb()
    _init_runtime(spec["backend"])
    init_rss = _current_rss_mb()
    data = Path(spec["data_dir"])
    q = load_npy_aligned(data / "queries.npy")
    db = load_npy_aligned(data / "database.npy")
    data_rss = _current_rss_mb()
    k = int(spec["k"])
    run, build_s = _make_runner(spec["backend"], spec["params"], q, db, k, spec.get("device_resident", False))
    t = time.perf_counter()
    out = run()  # warm-up: compiles every shape the timed calls use
    warm_s = time.perf_counter() - t
    times = []
    for _ in range(int(spec["repeats"])):
        t = time.perf_counter()
        out = run()
        if hasattr(out[0], "block_until_ready"):
            out[0].block_until_ready()
        times.append(time.perf_counter() - t)
    res = {
        "backend": spec["backend"], "params": spec["params"], "times_s": times, "median_s": statistics.median(times),
        "build_s": build_s, "warmup_s": warm_s, "peak_rss_mb": _rss_mb(), "start_rss_mb": base_rss,
        "runtime_rss_mb": runtime_rss, "init_rss_mb": init_rss, "data_loaded_rss_mb": data_rss,
        "malloc_single_arena": single_arena, "devices": [str(d) for d in __import__("jax").devices()],
    }
    if hasattr(run, "flop"):
        res["flop"] = run.flop
    elif out[1] is not None:
        np.save(spec["out"] + "_idx.npy", np.asarray(out[1]).astype(np.int64))
    Path(spec["out"] + ".json").write_text(json.dumps(res))


# ------------------------------------------------------------------------------------------------- parent


def _loadavg():
    try:
        return list(os.getloadavg())
    except OSError:
        return None


def make_data(out_dir: Path, nq: int, ndb: int, dim: int, seed: int, normalise: bool = True):
    """Random Gaussian queries/database (L2-normalised by default), written as .npy in chunks."""
    rng = np.random.default_rng(seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, n in (("queries", nq), ("database", ndb)):
        arr = np.lib.format.open_memmap(out_dir / f"{name}.npy", mode="w+", dtype=np.float32, shape=(n, dim))
        for a in range(0, n, 65536):
            x = rng.standard_normal((min(65536, n - a), dim), dtype=np.float32)
            if normalise:
                x /= np.linalg.norm(x, axis=1, keepdims=True)
            arr[a:a + len(x)] = x
        arr.flush()
        del arr


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean over queries of |found_row ∩ truth_row| / k."""
    k = truth.shape[1]
    hits = sum(len(np.intersect1d(f[f >= 0], t, assume_unique=False)) for f, t in zip(found, truth))
    return hits / (k * len(truth))


def run_benchmark(out_dir: str, *, nq: int, ndb: int, dim: int, k: int, backends: list[str], repeats: int = 3,
                  rounds: int = 1, seed: int = 0, params: dict | None = None, device_resident: bool = False,
                  env: dict | None = None, data_dir: str | None = None, timeout_s: float = 3600,
                  malloc_single_arena: bool = True) -> dict:
    """Run the benchmark; returns the results dict (also written to out_dir).

    malloc_single_arena: one glibc malloc arena in every backend's process (`hostmem.limit_malloc_retention`);
    False keeps glibc's default (one heap per allocating thread)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = Path(data_dir) if data_dir else out / "data"
    if not (data / "database.npy").exists() or np.load(data / "database.npy", mmap_mode="r").shape != (ndb, dim) \
            or np.load(data / "queries.npy", mmap_mode="r").shape != (nq, dim):
        make_data(data, nq, ndb, dim, seed)
    params = params or {}
    for b in backends:
        if b not in BACKENDS:
            raise ValueError(f"unknown backend {b!r} in --backends; known: {sorted(BACKENDS)}")
    order = [REFERENCE_BACKEND] + [b for b in backends if b != REFERENCE_BACKEND]
    runs: dict[str, list[dict]] = {b: [] for b in order}
    load_before = _loadavg()
    for r in range(rounds):
        for b in order:
            p = dict(BACKENDS[b][1])
            p.update(params.get(b, {}))
            spec = {"backend": b, "params": p, "data_dir": str(data), "k": k, "repeats": repeats,
                    "out": str(out / f"{b}_r{r}"), "device_resident": device_resident,
                    "malloc_single_arena": malloc_single_arena}
            spec_path = out / f"{b}_r{r}_spec.json"
            spec_path.write_text(json.dumps(spec))
            t = time.perf_counter()
            proc = subprocess.run([sys.executable, "-m", "synleak_jax.search.bench", str(spec_path)],
                                  capture_output=True, text=True, env={**os.environ, **(env or {})},
                                  timeout=timeout_s)
            if proc.returncode != 0:
                runs[b].append({"error": proc.stderr[-2000:]})
                print(f"[bench] {b} round {r}: FAILED\n{proc.stderr[-2000:]}", file=sys.stderr)
                continue
            res = json.loads(Path(spec["out"] + ".json").read_text())
            runs[b].append(res)
            print(f"[bench] {b} round {r}: median {res['median_s']:.3f} s, peak RSS {res['peak_rss_mb']:.0f} MB "
                  f"(subprocess {time.perf_counter() - t:.0f} s)", file=sys.stderr)
    load_after = _loadavg()
    truth = None
    ref_runs = [x for x in runs[REFERENCE_BACKEND] if "error" not in x]
    if ref_runs:
        truth = np.load(out / f"{REFERENCE_BACKEND}_r0_idx.npy")
    data_mb = (nq * dim + ndb * dim) * 4 / 2**20 + nq * k * 8 / 2**20
    rows = []
    for b in order:
        ok = [x for x in runs[b] if "error" not in x]
        if not ok:
            rows.append({"backend": b, "description": BACKENDS[b][0], "error": runs[b][0]["error"][-500:]})
            continue
        med = statistics.median([x["median_s"] for x in ok])
        row = {"backend": b, "description": BACKENDS[b][0], "params": ok[0]["params"], "median_s": med,
               "round_medians_s": [x["median_s"] for x in ok], "queries_per_s": nq / med,
               "build_s": statistics.median([x["build_s"] for x in ok]),
               "peak_rss_mb": max(x["peak_rss_mb"] for x in ok),
               "init_rss_mb": max(x["init_rss_mb"] for x in ok),
               "peak_above_init_mb": max(x["peak_rss_mb"] - x["init_rss_mb"] for x in ok),
               "runtime_rss_mb": ok[0]["runtime_rss_mb"], "data_mb": data_mb}
        row["peak_over_data"] = row["peak_rss_mb"] / data_mb
        row["peak_above_init_over_data"] = row["peak_above_init_mb"] / data_mb  # the target's reading
        if "flop" in ok[0]:
            row["tflops"] = ok[0]["flop"] / med / 1e12
            row.pop("queries_per_s")
        else:
            flop = 2.0 * nq * ndb * dim
            row["tflops"] = flop / med / 1e12
            if truth is not None and (out / f"{b}_r0_idx.npy").exists():
                row["recall_at_k"] = recall_at_k(np.load(out / f"{b}_r0_idx.npy"), truth)
        rows.append(row)
    ref = next((r for r in rows if r["backend"] == REFERENCE_BACKEND and "median_s" in r), None)
    peak = next((r for r in rows if r["backend"] == "matmul_peak" and "tflops" in r), None)
    for r in rows:
        if ref and "median_s" in r and r is not ref:
            r["exact_speedup_vs_this"] = r["median_s"] / ref["median_s"]  # >1: our exact kernel is faster
        if peak and "queries_per_s" in r:
            r["fraction_of_measured_peak"] = r["tflops"] / peak["tflops"]
    import jax

    result = {
        "config": {"nq": nq, "ndb": ndb, "dim": dim, "k": k, "repeats": repeats, "rounds": rounds, "seed": seed,
                   "device_resident": device_resident, "malloc_single_arena": malloc_single_arena,
                   "data_mb": data_mb},
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count(),
                    "jax": jax.__version__, "devices": ref_runs[0]["devices"] if ref_runs else None,
                    "loadavg_before": load_before, "loadavg_after": load_after},
        "rows": rows,
    }
    (out / "results.json").write_text(json.dumps(result, indent=2))
    (out / "results.md").write_text(to_markdown(result))
    try:
        plot(result, out / "recall_vs_qps.png")
    except Exception as e:  # plotting is a convenience; the JSON/Markdown are the record
        print(f"[bench] plot failed: {e}", file=sys.stderr)
    return result


def to_markdown(result: dict) -> str:
    c, m = result["config"], result["machine"]
    lines = [f"nq={c['nq']} x ndb={c['ndb']} x dim={c['dim']}, k={c['k']}, {c['repeats']} timed calls x "
             f"{c['rounds']} rounds (median), devices: {m['devices']}, load avg before/after: "
             f"{m['loadavg_before']} / {m['loadavg_after']}", "",
             f"Memory: data = queries + database + output = {c['data_mb']:.1f} MB; init = RSS after imports and "
             "JAX init, before data; the target (peak <= 1.5x data) is judged on (peak - init) / data. glibc malloc: "
             + ("one arena (M_ARENA_MAX=1)" if c["malloc_single_arena"] else "default arenas")
             + ", the same for every backend.", "",
             "| backend | median s | queries/s | TFLOP/s | recall@k | exact speed-up vs it | peak RSS MB | "
             "init RSS MB | peak/data | (peak-init)/data | build s |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        if "error" in r:
            lines.append(f"| {r['backend']} | failed | | | | | | | | | |")
            continue
        qps = f"{r['queries_per_s']:.0f}" if "queries_per_s" in r else "-"
        rec = f"{r['recall_at_k']:.4f}" if "recall_at_k" in r else "-"
        sp = f"{r['exact_speedup_vs_this']:.2f}x" if "exact_speedup_vs_this" in r else "-"
        lines.append(f"| {r['backend']} | {r['median_s']:.3f} | {qps} | {r['tflops']:.3f} | {rec} | {sp} | "
                     f"{r['peak_rss_mb']:.0f} | {r['init_rss_mb']:.0f} | {r['peak_over_data']:.2f} | "
                     f"{r['peak_above_init_over_data']:.2f} | {r['build_s']:.1f} |")
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for r in result["rows"]:
        if "recall_at_k" in r:
            ax.scatter(r["queries_per_s"], r["recall_at_k"], s=40)
            ax.annotate(r["backend"], (r["queries_per_s"], r["recall_at_k"]), fontsize=7,
                        xytext=(3, 3), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("queries / s")
    ax.set_ylabel(f"recall@{result['config']['k']}")
    c = result["config"]
    ax.set_title(f"{c['nq']} x {c['ndb']} x {c['dim']}, k={c['k']}", fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    worker(sys.argv[1])
