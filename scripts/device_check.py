"""One prepared accelerator check (issue #16): every GPU figure from one command, <= 8 minutes on one H100/H200.

On the GPU machine (the device tool runs a bash command in a copy of this repository; the wheels folder is
git-ignored, so it must be carried):

    # here, once before the session (needs the package registry): .device_wheels/wheels (ml-collections,
    # pillow, matplotlib and its requirements: fetch_device_wheels.DEVICE_WHEEL_IMPORTS)
    python scripts/fetch_device_wheels.py
    # device tool call (the script bounds itself to 480 s; 540 leaves a margin)
    run(command="python3 scripts/device_check.py --out=$OUT/device_check", carry=[".device_wheels/wheels"],
        timeout_s=540)
    # then record device_check.md's figures in BENCHMARKS.md and give the machine back

CPU smoke run (same code paths, tiny sizes, < 2 minutes; tests/scripts/test_device_check.py runs it):

    python scripts/device_check.py --smoke --out=/tmp/device_check_smoke

It writes DIR/device_check.json (every figure with its same-run reference, sizes, environment, every skip with
its reason) and DIR/device_check.md (table: figure, value, same-run reference, ratio, target), rewritten after
every part so a run cut short still leaves what finished. docs/device_check.md explains each figure.

Sections (issue #16 item 1), each run as child processes of this script ("parts"):
  environment     device name/kind/memory, jax/jaxlib/torch versions, the packages the image lacks.
  search          part "search" (JAX): measured bf16 and float32 matmul peaks; exact top-k 65,536 x 1,000,000 x
                  512, k=10 with synleak_jax.search.exact_topk for each of --search_precisions (default
                  bf16_certified and float32), queries/s and fraction of the measured bf16 peak (1,024 FLOP per
                  512-D score); lax.approx_max_k (recall_target 0.95, bf16 scores, full rows) with its recall@10
                  against the exact result; a few (query_block, db_block) per precision while time lasts.
                  part "search_torch": the same top-k by torch (blockwise matmul + torch.topk with a running
                  merge, the code a GPU user writes) in bf16 and in float32 with TF32 off, same data, same GPU.
  backbone        part "backbone_torch": the reference IResNet-100 (tests/models/torch_refs_arcface.py,
                  randomised weights, seed 0), bf16 autocast + channels_last eager, batch 512, flip-sum;
                  float32 (TF32 off) embeddings of the comparison images.
                  part "backbone" (JAX): the same weights in synleak_jax's EmbeddingEngine, bf16 compute, batch
                  512, flip-sum: images/s, fraction of the measured bf16 peak (24.2 GFLOP per image, x2 with
                  flip), cosine of its embeddings to float32 embeddings (torch float32 and JAX float32).
  audit           the audit from embeddings at 1.2M synthetic x 494k members x 512 via scripts/bench_audit.py's
                  run_bench(n_synthetic, n_members, n_nonmembers, dim) when that entry point exists; skipped
                  with the reason otherwise.

Why child processes: a part that fails to import, runs out of memory or hangs must not take the others with it
(one rare machine, one run), a hard per-part time limit needs a process to kill, and JAX and torch never share
a process (each loads its own CUDA libraries; a cuDNN version clash would kill both). The parts exchange data
through a temporary folder outside DIR (the 2 GB database must not come back with the results).

Time: each part has a limit (--time_limit_s, default 480 s, bounds the whole run; later parts keep a reserve);
inside a part, every item plans its size from the measured peak and stops repeating when its budget is spent.
Sizes adapt to the device's memory (the database shrinks in halves until it fits; recorded).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import functools
import importlib.metadata
import importlib.util
import inspect
import json
import math
import os
import platform
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from typing import Any, Callable

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.abspath(__file__)
if REPO not in sys.path:
    sys.path.insert(0, REPO)


def load_module(path: str, name: str):
    """Imports a file by path: the torch reference under tests/, the audit benchmark and the wheel helper
    under scripts/ (by path, so an unrelated ``scripts`` package on the image cannot shadow them)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{os.path.relpath(path, REPO)} not found")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


device_wheels = load_module(os.path.join(REPO, "scripts", "fetch_device_wheels.py"), "fetch_device_wheels")
SITE_DIR, WHEELS_DIR = device_wheels.SITE_DIR, device_wheels.WHEELS_DIR
# Wheels the device image lacks, unpacked by the parent (ensure_site) before any part starts: appended, so
# the image's own packages win.
if os.path.isdir(SITE_DIR) and SITE_DIR not in sys.path:
    sys.path.append(SITE_DIR)

import numpy as np  # noqa: E402  (after the path set-up above, like every import below)

from synleak_jax import files  # noqa: E402  (numpy only)

# jax, torch and synleak_jax's search/models/embed/weights are imported inside the part functions:
# each part runs in its own process, an import failure there must become a recorded failure of that part (the
# others still run), and torch and JAX must never be imported into the same process (see the docstring).

GFLOP_PER_IMAGE = {"iresnet50": 12.6, "iresnet100": 24.2}  # REFERENCE.md s.6, one 112x112 view
FLOP_PER_SCORE_PER_DIM = 2  # one D-dim inner product = D multiply-adds = 2D FLOP (1,024 at D=512)
BF16_PEAK_ANCHOR_TFLOPS = 790.0  # REFERENCE.md s.6: measured bf16 matmul on this workplace's H100/H200
RECALL_TARGET = 0.95
TORCH_REFS = os.path.join(REPO, "tests", "models", "torch_refs_arcface.py")
BENCH_AUDIT = os.path.join(REPO, "scripts", "bench_audit.py")


# ------------------------------------------------------------------------------------------------ sizes


@dataclasses.dataclass(frozen=True)
class Sizes:
    """Everything that differs between the device run and the CPU smoke run (the code paths do not)."""

    nq: int  # queries of the top-k problem (65,536 in the issue)
    ndb: int  # database rows (1,000,000)
    dim: int  # embedding dimension (512)
    k: int  # neighbours (10)
    query_unit: int  # query counts are multiples of this (>= every library query block: no odd shapes)
    approx_query_block: int  # rows of the [rows, ndb] score matrix approx_max_k selects from at once
    torch_query_block: int
    torch_db_block: int
    peak_sizes: tuple[int, ...]  # square matmul sizes for the peaks
    peak_repeats: int
    search_budget_s: dict  # per search item: warm-up + timed calls stop once this is spent
    max_repeats: int  # timed calls per item at most (median reported)
    block_sweep: tuple  # (precision, query_block, db_block) configurations timed after the main figures
    model: str
    batch: int
    cosine_images: int  # images whose bf16 and float32 embeddings are compared
    backbone_budget_s: float
    audit: tuple[int, int, int, int]  # n_synthetic, n_members, n_nonmembers, dim


FULL = Sizes(nq=65536, ndb=1_000_000, dim=512, k=10, query_unit=4096, approx_query_block=1024,
             torch_query_block=4096, torch_db_block=65536, peak_sizes=(4096, 8192, 16384), peak_repeats=10,
             search_budget_s={"bf16_certified": 30.0, "float32": 30.0, "approx_max_k": 20.0,
                              "torch_bfloat16": 20.0, "torch_float32": 25.0, "block_sweep": 40.0},
             max_repeats=5,
             block_sweep=(("bf16_certified", 4096, 8192), ("bf16_certified", 4096, 32768),
                          ("bf16_certified", 8192, 65536), ("float32", 2048, 16384), ("float32", 8192, 32768)),
             model="iresnet100", batch=512, cosine_images=64, backbone_budget_s=20.0,
             audit=(1_200_000, 494_000, 100_000, 512))
SMOKE = Sizes(nq=512, ndb=8192, dim=512, k=10, query_unit=256, approx_query_block=256,
              torch_query_block=256, torch_db_block=2048, peak_sizes=(256, 512), peak_repeats=3,
              search_budget_s={"bf16_certified": 2.0, "float32": 2.0, "approx_max_k": 2.0,
                               "torch_bfloat16": 2.0, "torch_float32": 2.0, "block_sweep": 4.0},
              max_repeats=2, block_sweep=(("bf16_certified", 512, 2048), ("float32", 256, 1024)),
              model="iresnet18", batch=2, cosine_images=2, backbone_budget_s=4.0,
              audit=(2000, 1000, 500, 512))


@dataclasses.dataclass(frozen=True)
class Part:
    """One child process. limit_s: its own time limit (device run / smoke run); reserve_s: what the parts
    after it keep back from the overall limit, so a slow early part cannot starve them."""

    name: str
    section: str
    limit_s: float
    smoke_limit_s: float
    reserve_s: float


PARTS = (
    Part("env", "environment", 40, 60, 10),
    Part("search", "search", 120, 120, 40),
    Part("search_torch", "search", 60, 60, 20),
    Part("backbone_torch", "backbone", 60, 90, 20),
    Part("backbone", "backbone", 150, 150, 60),
    Part("audit", "audit", 140, 90, 60),
)
SECTIONS = ("search", "backbone", "audit")


# ------------------------------------------------------------------------------------------------ part plumbing


class PartContext:
    """What a part function gets: its sizes, paths, time limit, and a recorder that rewrites the part's JSON
    after every item (a part killed at its time limit keeps what it finished)."""

    def __init__(self, args: argparse.Namespace):
        self.name = args.part
        self.sizes = SMOKE if args.smoke else FULL
        self.smoke = bool(args.smoke)
        self.args = args
        self.work = args.work
        self.t0 = float(args.t0)
        self.deadline = float(args.deadline)
        self.path = part_json_path(args.out, args.part)
        self.started = time.time()
        self.data: dict[str, Any] = {"part": self.name, "status": "running", "items": {}, "skipped": [],
                                     "notes": []}
        self.save()

    def log(self, msg: str) -> None:
        print(f"[device_check +{time.time() - self.t0:6.1f}s] {self.name}: {msg}", flush=True)

    def remaining(self) -> float:
        return self.deadline - time.time()

    def item(self, name: str, value: dict) -> dict:
        self.data["items"][name] = value
        self.save()
        return value

    def skip(self, item: str, reason: str) -> None:
        self.data["skipped"].append({"item": item, "reason": reason})
        self.log(f"SKIPPED {item}: {reason}")
        self.save()

    def note(self, text: str) -> None:
        self.data["notes"].append(text)
        self.save()

    def guarded(self, item: str, fn: Callable[[], Any]) -> Any:
        """Runs one item; an exception becomes a recorded failure of that item (the part goes on)."""
        try:
            return fn()
        except Exception as e:  # noqa: BLE001  (one broken item must not cost the rest of a rare run)
            self.data["skipped"].append({"item": item, "reason": f"failed: {type(e).__name__}: {e}"[:2000],
                                         "traceback": traceback.format_exc()[-4000:]})
            self.log(f"FAILED {item}: {type(e).__name__}: {e}")
            self.save()
            return None

    def save(self) -> None:
        self.data["seconds"] = time.time() - self.started
        files.atomic_write(self.path, files.dumps(self.data))

    def work_path(self, name: str) -> str:
        return os.path.join(self.work, name)


def part_json_path(out: str, part: str) -> str:
    return os.path.join(out, "parts", f"{part}.json")


def read_json(path: str) -> dict | None:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def time_calls(call: Callable[[], Any], budget_s: float, max_repeats: int) -> tuple[dict, Any]:
    """Warm-up call (compiles; timed on its own), then timed calls (each waits for its result) until
    ``max_repeats`` or until the next call would overrun ``budget_s`` (warm-up included). At least one timed
    call unless the warm-up alone spent the budget: then the figure is the warm-up's, flagged
    ``from_warmup`` (compile included: a lower bound on the speed). Returns (timing dict, last result)."""
    t = time.perf_counter()
    result = call()
    warmup_s = time.perf_counter() - t
    times: list[float] = []
    spent = warmup_s
    while len(times) < max_repeats:
        expected = times[-1] if times else warmup_s
        if times and spent + expected > budget_s:
            break
        if not times and warmup_s > budget_s:
            break
        t = time.perf_counter()
        result = call()
        times.append(time.perf_counter() - t)
        spent += times[-1]
    if not times:
        return {"warmup_s": warmup_s, "times_s": [], "median_s": warmup_s, "from_warmup": True}, result
    return {"warmup_s": warmup_s, "times_s": times, "median_s": statistics.median(times),
            "from_warmup": False}, result


def plan_queries(n_max: int, unit: int, seconds_per_query: float, target_s: float) -> int:
    """Queries for one timed call: all ``n_max`` if the estimate fits ``target_s``, else the largest multiple
    of ``unit`` that does (at least one unit)."""
    if seconds_per_query * n_max <= target_s:
        return n_max
    return max(unit, min(n_max, int(target_s / seconds_per_query / unit) * unit))


def backbone_batch(sizes: Sizes, memory_bytes: float | None) -> tuple[int, str]:
    """The backbone batch for this device: the planned one unless ~24 MiB per image (activations of both
    flip views with headroom; IResNet-100's largest bf16 tensor is 1.6 MB per image) exceeds half the device
    memory, then halved until it fits (not below 8). Both backbone parts call this with the same memory."""
    batch = sizes.batch
    if not memory_bytes:
        return batch, "device memory unknown: batch as planned"
    while batch > 8 and batch * (24 << 20) > 0.5 * memory_bytes:
        batch //= 2
    return batch, ("as planned" if batch == sizes.batch else
                   f"scaled to fit {memory_bytes / 2**30:.1f} GiB: batch {sizes.batch} -> {batch}")


def audit_sizes(sizes: Sizes, nonmembers: int | None, memory_bytes: float | None) -> tuple[dict, str]:
    """run_bench's sizes: the planned ones unless four copies of the float32 embeddings exceed half the device
    memory, then every count halved until they fit."""
    n_syn, n_mem, n_non, dim = sizes.audit
    if nonmembers is not None:
        n_non = nonmembers
    scale = 1
    while memory_bytes and (n_syn + n_mem + n_non) // scale * dim * 4 * 4 > 0.5 * memory_bytes and scale < 64:
        scale *= 2
    out = {"n_synthetic": n_syn // scale, "n_members": n_mem // scale, "n_nonmembers": n_non // scale, "dim": dim}
    return out, ("as planned" if scale == 1 else f"every count / {scale} to fit {memory_bytes / 2**30:.1f} GiB")


def make_images(n: int, size: int = 112, seed: int = 0):
    """[n, size, size, 3] float32 in [-1, 1] (the models' normalised input range); identical in every part."""
    return np.random.default_rng(seed).uniform(-1.0, 1.0, (n, size, size, 3)).astype(np.float32)


def cosine_stats(a, b) -> dict:
    """Row-wise cosine of a [n, D] and b [n, D] (float64): min and mean."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    cos = (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-300)
    return {"min": float(cos.min()), "mean": float(cos.mean()), "images": int(len(cos))}


def rel_l2(a, ref) -> float:
    a = np.asarray(a, np.float64)
    ref = np.asarray(ref, np.float64)
    return float(np.linalg.norm(a - ref) / np.linalg.norm(ref))


# ------------------------------------------------------------------------------------------------ part: env


def part_env(ctx: PartContext) -> None:
    import jax

    devices = jax.devices()
    dev = devices[0]
    stats = None
    try:
        stats = dev.memory_stats()
    except Exception:  # noqa: BLE001  (not every backend reports memory)
        stats = None
    host_mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    image = ("jax", "jaxlib", "flax", "optax", "orbax", "numpy", "torch", "triton", "onnx", "onnxruntime",
             "sklearn", "tensorstore", "absl", "yaml")
    lacking = ("grain", "ml_collections", "tensorflow_datasets", "array_record", "simplejpeg", "faiss")
    dists = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy", "torch", "triton", "onnx",
             "onnxruntime", "scikit-learn", "tensorstore", "ml-collections")

    def where(mod: str) -> str | None:
        try:
            spec = importlib.util.find_spec(mod)
        except (ImportError, ValueError):  # a broken (or, in the tests' imitation of the image, blocked) package
            return None
        return None if spec is None else (spec.origin or (list(spec.submodule_search_locations or []) or [""])[0])

    versions = {}
    for d in dists:
        try:
            versions[d] = importlib.metadata.version(d)
        except importlib.metadata.PackageNotFoundError:
            versions[d] = None
    env = {
        "python": sys.version.split()[0], "platform": platform.platform(), "cpus": os.cpu_count(),
        "host_memory_bytes": host_mem, "jax": jax.__version__, "jaxlib": versions.get("jaxlib"),
        "backend": jax.default_backend(), "device_count": len(devices),
        "devices": [{"id": d.id, "platform": d.platform, "kind": d.device_kind} for d in devices],
        "device_kind": dev.device_kind,
        "device_memory_bytes": (stats or {}).get("bytes_limit"),
        "synleak_jax": os.path.dirname(importlib.util.find_spec("synleak_jax").origin),
        "versions": versions,
        "image_packages_found": {m: where(m) is not None for m in image},
        "lacking_packages_found": {m: where(m) for m in lacking},
        "wheels_site": SITE_DIR if SITE_DIR in sys.path else None,
        "wheels_manifest": read_json(os.path.join(WHEELS_DIR, "manifest.json")),
        "env_vars": {k: os.environ.get(k) for k in ("XLA_FLAGS", "XLA_PYTHON_CLIENT_PREALLOCATE",
                                                    "XLA_PYTHON_CLIENT_MEM_FRACTION", "CUDA_VISIBLE_DEVICES",
                                                    "JAX_PLATFORMS")},
    }
    env["nvidia_smi"] = None
    if shutil.which("nvidia-smi"):
        try:
            proc = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,clocks.max.sm,power.limit,"
                                   "driver_version", "--format=csv"], capture_output=True, text=True, timeout=20)
            env["nvidia_smi"] = (proc.stdout or proc.stderr).strip()
        except (OSError, subprocess.SubprocessError) as e:
            env["nvidia_smi"] = f"nvidia-smi failed: {e}"
    ctx.item("environment", env)
    ctx.log(f"{env['backend']} x{env['device_count']} ({env['device_kind']}), jax {env['jax']}, "
            f"torch {versions.get('torch')}, python {env['python']}")


# ------------------------------------------------------------------------------------------------ part: search


def matmul_peak(dtype_name: str, precision: str | None, sizes: tuple[int, ...], repeats: int,
                budget_s: float) -> dict:
    """TFLOP/s of jitted square matmuls (random inputs, warmed up, block_until_ready, median of repeats) per
    size, and the best size's figure. precision: None (JAX default: TF32 may be used for float32 on GPUs)
    or "highest" (true float32)."""
    import jax
    import jax.numpy as jnp

    dtype = jnp.dtype(dtype_name)
    prec = None if precision is None else getattr(jax.lax.Precision, precision.upper())
    fn = jax.jit(functools.partial(jnp.matmul, precision=prec))
    per_size = {}
    start = time.perf_counter()
    for n in sizes:
        if per_size and time.perf_counter() - start > budget_s:
            break
        key_a, key_b = jax.random.split(jax.random.PRNGKey(n))
        a = jax.random.normal(key_a, (n, n), jnp.float32).astype(dtype)
        b = jax.random.normal(key_b, (n, n), jnp.float32).astype(dtype)
        fn(a, b).block_until_ready()
        fn(a, b).block_until_ready()
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            fn(a, b).block_until_ready()
            times.append(time.perf_counter() - t)
        per_size[n] = 2.0 * n**3 / statistics.median(times) / 1e12
        del a, b
    best = max(per_size, key=per_size.get)
    return {"dtype": dtype_name, "precision": precision or "default", "per_size_tflops": per_size,
            "tflops": per_size[best], "best_size": best, "repeats": repeats}


def fit_database(ndb: int, dim: int, nq: int, approx_block: int, memory_bytes: int | None) -> tuple[int, int, str]:
    """(ndb, approx_query_block) that fit in ~60% of the device's memory: float32 database + its bf16 copy +
    the queries + the approx [block, ndb] float32 scores three times over (selection temporaries) + 2 GiB
    working space. Halves ndb (not below 65,536) and the approx block until they fit. Returns a note."""
    if not memory_bytes:
        return ndb, approx_block, "device memory unknown: sizes as planned"

    def need(n: int, b: int) -> float:
        return n * dim * 6 + nq * dim * 4 + 3 * b * n * 4 + (2 << 30)

    n, b = ndb, approx_block
    while need(n, b) > 0.6 * memory_bytes and (b > 128 or n > 65536):
        if b > 128:
            b //= 2
        else:
            n = max(65536, n // 2)  # the documented floor (1,000,000 halves to 62,500 otherwise)
    note = (f"fits {memory_bytes / 2**30:.1f} GiB as planned" if (n, b) == (ndb, approx_block) else
            f"scaled to fit {memory_bytes / 2**30:.1f} GiB: ndb {ndb} -> {n}, approx block {approx_block} -> {b}")
    return n, b, note


def part_search(ctx: PartContext) -> None:
    import jax
    import jax.numpy as jnp

    from synleak_jax.search import approx, exact
    from synleak_jax.search.bench import recall_at_k

    sz = ctx.sizes
    dev = jax.devices()[0]
    try:
        mem = (dev.memory_stats() or {}).get("bytes_limit")
    except Exception:  # noqa: BLE001
        mem = None
    precisions = [p for p in ctx.args.search_precisions.split(",") if p]
    sig = inspect.signature(exact.exact_topk)
    ctx.item("exact_topk_api", {
        "default_precision": sig.parameters["precision"].default if "precision" in sig.parameters else None,
        "fastest_exact_precision": exact.fastest_exact_precision()
        if hasattr(exact, "fastest_exact_precision") else None,
        "measured_precisions": precisions})

    # 1. peaks
    peak_budget = 15.0 if not ctx.smoke else 5.0
    peaks = {}
    for key, dtype_name, prec in (("bfloat16", "bfloat16", None), ("float32_highest", "float32", "highest"),
                                  ("float32_default", "float32", None)):
        res = ctx.guarded(f"matmul_peak_{key}",
                          lambda: matmul_peak(dtype_name, prec, sz.peak_sizes, sz.peak_repeats, peak_budget))
        if res:
            peaks[key] = res
            ctx.log(f"matmul peak {key}: {res['tflops']:.1f} TFLOP/s (sizes {list(res['per_size_tflops'])})")
    ctx.item("matmul_peaks", peaks)
    bf16_peak = peaks.get("bfloat16", {}).get("tflops")
    f32_peak = peaks.get("float32_highest", {}).get("tflops")

    # 2. data: random unit vectors, generated on the device, saved for the torch part
    ndb, approx_block, fit_note = fit_database(sz.ndb, sz.dim, sz.nq, sz.approx_query_block, mem)
    nq, dim, k = sz.nq, sz.dim, sz.k
    t = time.perf_counter()
    key_q, key_db = jax.random.split(jax.random.PRNGKey(0))

    def unit_rows(key, n):
        x = jax.random.normal(key, (n, dim), jnp.float32)
        return x / jnp.linalg.norm(x, axis=1, keepdims=True)

    queries = jax.jit(unit_rows, static_argnums=1)(key_q, nq)
    database = jax.jit(unit_rows, static_argnums=1)(key_db, ndb)
    jax.block_until_ready((queries, database))
    gen_s = time.perf_counter() - t
    queries_host = np.asarray(queries)
    files.atomic_save_npy(ctx.work_path("search_queries.npy"), queries_host)
    files.atomic_save_npy(ctx.work_path("search_database.npy"), np.asarray(database))
    ctx.item("sizes", {"nq_target": nq, "ndb": ndb, "ndb_planned": sz.ndb, "dim": dim, "k": k,
                       "approx_query_block": approx_block, "device_memory_bytes": mem, "memory_note": fit_note,
                       "data": "random Gaussian rows, L2-normalised (jax.random, seed 0), device-resident",
                       "generate_s": gen_s, "save_s": time.perf_counter() - t - gen_s})
    ctx.log(f"data {nq} x {ndb} x {dim} ({fit_note}), generated in {gen_s:.1f}s")
    flop_per_query = FLOP_PER_SCORE_PER_DIM * dim * ndb

    results: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    meta = {"ndb": ndb, "dim": dim, "k": k, "nq_target": nq, "queries": {}, "bf16_peak_tflops": bf16_peak}

    # 3. exact top-k, one call per precision (planned from the measured peak so a call fits its budget)
    efficiency_guess = {"float32": (f32_peak, 0.5), "bf16_certified": (bf16_peak, 0.3)}

    def measure_exact(precision: str, n: int, budget: float, max_repeats: int,
                      query_block: int | None = None, db_block: int | None = None) -> dict:
        """exact_topk on the first n queries (library default blocks unless given); returns the record and
        keeps the result in ``results`` (default blocks) for the agreement/recall figures."""
        blocks = {} if query_block is None else {"query_block": query_block, "db_block": db_block}
        timing, (scores, idx, stats) = time_calls(
            lambda: exact.exact_topk(queries[:n], database, k, precision=precision, return_stats=True, **blocks),
            budget, max_repeats)
        qps = n / timing["median_s"]
        tflops = qps * flop_per_query / 1e12
        rec = {"precision": precision, "queries": n, "ndb": ndb, "dim": dim, "k": k,
               "blocks": blocks or "library defaults", **timing, "queries_per_s": qps, "tflops": tflops,
               "fraction_of_bf16_peak": tflops / bf16_peak if bf16_peak else None,
               "fraction_of_float32_peak": tflops / f32_peak if f32_peak else None,
               "fallback_queries": int(stats.fallback_queries), "fallback_rate": float(stats.fallback_rate),
               "estimated_full_size_s": nq / qps}
        if not blocks:
            results[precision] = (scores, idx)
        elif precision in results:
            rec["identical_to_default_blocks"] = bool(np.array_equal(idx, results[precision][1][:n]))
        return rec

    for precision in precisions:
        name = f"exact_{precision}"
        budget = sz.search_budget_s.get(precision, 30.0)
        if ctx.remaining() < budget + 10:
            ctx.skip(name, f"part time limit ({ctx.remaining():.0f} s left, item budget {budget:.0f} s)")
            continue
        peak, eff = efficiency_guess.get(precision, (bf16_peak, 0.3))
        sec_per_query = flop_per_query / (max(peak or 0.1, 0.1) * 1e12 * eff)
        n = plan_queries(nq, sz.query_unit, sec_per_query, budget / 4)

        def measure(precision=precision, n=n, name=name, budget=budget):
            ctx.log(f"{name}: {n} queries x {ndb}, budget {budget:.0f} s")
            rec = ctx.item(name, measure_exact(precision, n, budget, sz.max_repeats))
            meta["queries"][precision] = n
            ctx.log(f"{name}: {rec['queries_per_s']:,.0f} queries/s = {rec['tflops']:.1f} TFLOP/s"
                    + (f" = {100 * rec['fraction_of_bf16_peak']:.1f}% of the bf16 peak" if bf16_peak else "")
                    + f" (warm-up {rec['warmup_s']:.1f} s, {len(rec['times_s'])} timed calls, "
                    f"fallbacks {rec['fallback_queries']})")

        ctx.guarded(name, measure)

    # the reference result for every recall/agreement figure: float32 when it ran, else a certified mode
    truth_name = "float32" if "float32" in results else next(iter(results), None)
    if truth_name:
        truth_idx = results[truth_name][1]
        files.atomic_save_npy(ctx.work_path("search_truth_idx.npy"), truth_idx.astype(np.int64))
        meta["truth"] = {"precision": truth_name, "queries": int(truth_idx.shape[0])}
        for precision, (scores, idx) in results.items():
            if precision == truth_name:
                continue
            m = min(len(idx), len(truth_idx))
            rec = ctx.data["items"][f"exact_{precision}"]
            rec["agreement_with_" + truth_name] = {
                "queries": m, "identical_lists": float(np.mean(np.all(idx[:m] == truth_idx[:m], axis=1))),
                "recall_at_k": recall_at_k(idx[:m], truth_idx[:m]),
                "max_abs_score_diff": float(np.max(np.abs(scores[:m] - results[truth_name][0][:m])))}
            ctx.item(f"exact_{precision}", rec)
    files.atomic_write(ctx.work_path("search_meta.json"), files.dumps(meta))

    # 4. lax.approx_max_k on full rows of bf16 scores (the fast approximate call a JAX user writes)
    name = "approx_max_k"
    budget = sz.search_budget_s["approx_max_k"]
    if ctx.remaining() < budget + 5:
        ctx.skip(name, f"part time limit ({ctx.remaining():.0f} s left)")
    else:
        def run_approx(n):
            return approx.full_row_topk(queries_host[:n], database, k, method="approx", query_block=approx_block,
                                        recall_target=RECALL_TARGET, dtype=jnp.bfloat16)

        def measure_approx():
            # one block first (compiles the [block, D] step every later call reuses); then, if the budget
            # allows more than one block, a call over as many blocks as fit
            timing, (scores, idx) = time_calls(lambda: run_approx(approx_block), budget / 3, 1)
            n = plan_queries(nq, approx_block, timing["median_s"] / approx_block, budget / 3)
            first_block = {"first_block_s": timing["warmup_s"], "block_s": timing["median_s"]}
            if n > approx_block:
                ctx.log(f"{name}: {n} queries (one block of {approx_block}: {timing['median_s']:.2f} s)")
                timing, (scores, idx) = time_calls(lambda: run_approx(n), budget * 2 / 3, sz.max_repeats)
            else:
                n = approx_block
            qps = n / timing["median_s"]
            rec = {"queries": n, "ndb": ndb, "query_block": approx_block, "recall_target": RECALL_TARGET,
                   **first_block,
                   "scores": "bf16 x bf16 -> float32 (lax.dot_general), full rows [block, ndb]",
                   "function": "synleak_jax.search.approx.full_row_topk(method='approx')", **timing,
                   "queries_per_s": qps, "tflops": qps * flop_per_query / 1e12}
            if truth_name:
                m = min(n, len(truth_idx))
                rec.update(recall_at_k=recall_at_k(idx[:m], truth_idx[:m]), recall_queries=m,
                           recall_reference=f"exact {truth_name}")
            ctx.item(name, rec)
            ctx.log(f"{name}: {qps:,.0f} queries/s, recall@{k} {rec.get('recall_at_k', float('nan')):.4f}")

        ctx.guarded(name, measure_approx)

    # 5. block sizes: a few (query_block, db_block) per precision, while the part's time lasts (tuning data
    # for the per-platform defaults; the figures above use the library defaults)
    sweep_rows = []
    sweep_budget = sz.search_budget_s.get("block_sweep", 40.0)
    sweep_end = time.time() + min(sweep_budget, max(0.0, ctx.remaining() - 5))
    for precision, query_block, db_block in sz.block_sweep:
        if precision not in meta["queries"]:
            continue
        left = sweep_end - time.time()
        if left < 3:
            ctx.skip(f"exact_block_sweep {precision} {query_block}x{db_block}", "sweep budget spent")
            continue
        n = meta["queries"][precision]
        rec = ctx.guarded(f"exact_block_sweep {precision} {query_block}x{db_block}",
                          lambda: measure_exact(precision, n, min(left, 10.0), 3, query_block, db_block))
        if rec:
            sweep_rows.append(rec)
            ctx.log(f"block sweep {precision} {query_block} x {db_block}: {rec['queries_per_s']:,.0f} queries/s")
            ctx.item("exact_block_sweep", {"rows": sweep_rows})


# ------------------------------------------------------------------------------------------------ part: search_torch


def torch_runtime(torch, device: str) -> dict:
    info = {"torch": torch.__version__, "device": device, "cuda_available": torch.cuda.is_available(),
            "cuda": torch.version.cuda, "threads": torch.get_num_threads()}
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        info.update(name=props.name, memory_bytes=props.total_memory,
                    capability=f"{props.major}.{props.minor}", cudnn=torch.backends.cudnn.version())
    return info


def torch_device(ctx: PartContext, torch) -> str | None:
    """torch runs on the device JAX uses (its GPU, or the CPU in a CPU run); None (with a recorded skip) when
    JAX has a GPU and torch cannot reach one: a CPU figure would not be a same-device reference."""
    backend = ctx.args.backend
    if backend == "cpu":
        return "cpu"
    if backend in ("gpu", "cuda", "rocm") and torch.cuda.is_available():
        return "cuda"  # ROCm builds of torch use the "cuda" device name too
    ctx.skip("torch", f"JAX backend is {backend!r} but torch.cuda.is_available() is "
                      f"{torch.cuda.is_available()}: no same-device torch reference")
    return None


def torch_blockwise_topk(torch, queries, database, k: int, query_block: int, db_block: int):
    """Top-k inner products of ``queries`` [nq, D] against ``database`` [ndb, D] (torch tensors, one device,
    one dtype) the way a GPU user writes it: per query block, one matmul per database block, ``torch.topk``
    of the block's scores, merged into the running top-k (concatenate + topk + gather). Scores come out in
    the inputs' dtype. Returns (scores [nq, k] float32, indices [nq, k] int64), on the host."""
    out_s, out_i = [], []
    ndb = database.shape[0]
    with torch.inference_mode():
        for a in range(0, queries.shape[0], query_block):
            qb = queries[a:a + query_block]
            run_s = run_i = None
            for b in range(0, ndb, db_block):
                scores = qb @ database[b:b + db_block].T
                blk_s, blk_i = torch.topk(scores, min(k, scores.shape[1]), dim=1)
                blk_i = blk_i + b
                if run_s is None:
                    run_s, run_i = blk_s, blk_i
                else:
                    cat_s, cat_i = torch.cat([run_s, blk_s], 1), torch.cat([run_i, blk_i], 1)
                    run_s, pos = torch.topk(cat_s, k, dim=1)
                    run_i = torch.gather(cat_i, 1, pos)
            out_s.append(run_s)
            out_i.append(run_i)
        scores, idx = torch.cat(out_s).float().cpu().numpy(), torch.cat(out_i).cpu().numpy()
    return scores, idx


def part_search_torch(ctx: PartContext) -> None:
    import torch

    meta = read_json(ctx.work_path("search_meta.json"))
    if meta is None:
        ctx.skip("torch_bfloat16", "no data from the search part (it failed or was skipped)")
        ctx.skip("torch_float32", "no data from the search part (it failed or was skipped)")
        return
    device = torch_device(ctx, torch)
    if device is None:
        return
    ctx.item("torch_runtime", torch_runtime(torch, device))
    sz = ctx.sizes
    k, ndb, dim = meta["k"], meta["ndb"], meta["dim"]
    queries = torch.from_numpy(np.load(ctx.work_path("search_queries.npy"))).to(device)
    database = torch.from_numpy(np.load(ctx.work_path("search_database.npy"))).to(device)
    flop_per_query = FLOP_PER_SCORE_PER_DIM * dim * ndb
    # True float32 for the float32 reference: TF32 off for matmuls (and cuDNN, not used here).
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    counterpart = {"bfloat16": "bf16_certified", "float32": "float32"}
    for dtype_name in ("bfloat16", "float32"):
        name = f"torch_{dtype_name}"
        budget = sz.search_budget_s[name]
        if ctx.remaining() < budget + 5:
            ctx.skip(name, f"part time limit ({ctx.remaining():.0f} s left)")
            continue
        # the same query count as the JAX call it is compared with (all of them if that one did not run)
        n = int(meta["queries"].get(counterpart[dtype_name], meta["nq_target"]))

        def measure(dtype_name=dtype_name, n=n, name=name, budget=budget):
            dtype = getattr(torch, dtype_name)
            t = time.perf_counter()
            db_cast = database.to(dtype)
            q_cast = queries[:n].to(dtype)
            build_s = time.perf_counter() - t
            ctx.log(f"{name}: {n} queries x {ndb}, blocks {sz.torch_query_block} x {sz.torch_db_block}")

            call = functools.partial(torch_blockwise_topk, torch, q_cast, db_cast, k, sz.torch_query_block,
                                     sz.torch_db_block)
            timing, (scores, idx) = time_calls(call, budget, sz.max_repeats)
            files.atomic_save_npy(ctx.work_path(f"search_{name}_idx.npy"), idx.astype(np.int64))
            qps = n / timing["median_s"]
            ctx.item(name, {"dtype": dtype_name, "tf32": False, "queries": n, "ndb": ndb, "dim": dim, "k": k,
                            "query_block": sz.torch_query_block, "db_block": sz.torch_db_block,
                            "cast_s": build_s, **timing, "queries_per_s": qps,
                            "tflops": qps * flop_per_query / 1e12,
                            "code": "blockwise q @ db.T + torch.topk per block, running merge (cat + topk)"})
            ctx.log(f"{name}: {qps:,.0f} queries/s ({qps * flop_per_query / 1e12:.1f} TFLOP/s)")
            del call, db_cast, q_cast  # free the casts before the next dtype
            if device == "cuda":
                torch.cuda.empty_cache()

        ctx.guarded(name, measure)


# ------------------------------------------------------------------------------------------------ part: backbone_torch


def part_backbone_torch(ctx: PartContext) -> None:
    import torch

    sz = ctx.sizes
    refs = load_module(TORCH_REFS, "torch_refs_arcface")
    t = time.perf_counter()
    net = refs.randomize_(refs.make_reference(sz.model), np.random.default_rng(0))
    files.atomic_save_npz(ctx.work_path("backbone_weights.npz"), **refs.state_dict_numpy(net))
    ctx.item("weights", {"model": sz.model, "source": "tests/models/torch_refs_arcface.py make_reference + "
                         "randomize_(seed 0): random weights (throughput does not depend on them)",
                         "parameters": refs.torch_param_count(net), "seconds": time.perf_counter() - t})
    device = torch_device(ctx, torch)
    if device is None:
        return
    ctx.item("torch_runtime", torch_runtime(torch, device))
    batch, batch_note = backbone_batch(sz, ctx.args.device_memory)
    images = make_images(batch)
    n_cos = min(sz.cosine_images, batch)
    torch.backends.cudnn.benchmark = True  # fixed shapes: what a GPU user turns on
    net = net.to(device).eval().to(memory_format=torch.channels_last)
    x = torch.from_numpy(images.transpose(0, 3, 1, 2).copy()).to(device).contiguous(
        memory_format=torch.channels_last)

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    def embed(xb, autocast: bool, model=net):
        """Flip-sum TTA + L2 normalisation, as synleak_jax's EmbeddingEngine does."""
        with torch.inference_mode(), torch.autocast(device, dtype=torch.bfloat16, enabled=autocast):
            e = model(xb).float() + model(torch.flip(xb, dims=[3])).float()
            e = torch.nn.functional.normalize(e, dim=1)
        sync()
        return e

    def measure(label: str, model) -> dict:
        timing, out = time_calls(lambda: embed(x, True, model), sz.backbone_budget_s, 10 if not ctx.smoke else 2)
        ips = batch / timing["median_s"]
        rec = {"model": sz.model, "batch": batch, "batch_note": batch_note, "flip": "sum", "autocast": "bfloat16",
               "memory_format": "channels_last", "cudnn_benchmark": True, "mode": label, **timing,
               "images_per_s": ips}
        gflop = GFLOP_PER_IMAGE.get(sz.model)
        if gflop:
            rec["tflops"] = ips * 2 * gflop / 1e3
        ctx.log(f"torch {label} bf16 autocast: {ips:,.1f} images/s (warm-up {timing['warmup_s']:.1f} s)")
        return rec, out

    res = ctx.guarded("torch_bf16_eager", lambda: measure("eager", net))
    if res:
        ctx.item("torch_bf16_eager", res[0])
        files.atomic_save_npy(ctx.work_path("backbone_torch_bf16.npy"), res[1][:n_cos].cpu().numpy())
    def float32_embeddings():
        # the float32 reference: TF32 off for cuDNN convolutions and matmuls (restored afterwards, so a
        # torch.compile figure runs under the same settings as the eager one)
        flags = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
        try:
            e = embed(x[:n_cos], False).cpu().numpy()
        finally:
            torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = flags
        files.atomic_save_npy(ctx.work_path("backbone_torch_float32.npy"), e)
        rec = {"images": n_cos, "tf32": False}
        if res:
            rec["torch_bf16_cosine_to_float32"] = cosine_stats(res[1][:n_cos].cpu().numpy(), e)
        ctx.item("torch_float32_embeddings", rec)

    ctx.guarded("torch_float32_embeddings", float32_embeddings)

    # opt-in, last: its compile may run long and must not cost the figures above
    if ctx.args.torch_compile:
        res_c = ctx.guarded("torch_bf16_compiled", lambda: measure("torch.compile", torch.compile(net)))
        if res_c:
            ctx.item("torch_bf16_compiled", res_c[0])
    else:
        ctx.skip("torch_bf16_compiled", "torch.compile not measured (off by default to stay in the time budget; "
                                        "--torch_compile turns it on)")


# ------------------------------------------------------------------------------------------------ part: backbone


def part_backbone(ctx: PartContext) -> None:
    import jax
    import jax.numpy as jnp

    from synleak_jax.embed.engine import EmbeddingEngine
    from synleak_jax.models import get_model, get_spec
    from synleak_jax.weights.converters import load_state_dict_into

    sz = ctx.sizes
    spec = get_spec(sz.model)
    weights_path = ctx.work_path("backbone_weights.npz")
    t = time.perf_counter()
    if os.path.isfile(weights_path):
        with np.load(weights_path, allow_pickle=False) as npz:
            variables = load_state_dict_into(sz.model, {key: npz[key] for key in npz.files}, weights_path)
        source = "the torch part's randomised reference weights (same network on both sides)"
    else:
        module32 = get_model(sz.model)
        variables = jax.jit(module32.init)(jax.random.PRNGKey(0), jnp.zeros((1, spec.height, spec.width, 3)))
        source = "Flax random init (the torch part left no weights)"
    ctx.item("weights", {"model": sz.model, "source": source, "seconds": time.perf_counter() - t})

    # the bf16 peak measured by the search part (same machine, same run), else measured here
    peaks = (read_json(part_json_path(ctx.args.out, "search")) or {}).get("items", {}).get("matmul_peaks", {})
    bf16_peak = (peaks.get("bfloat16") or {}).get("tflops")
    peak_source = "search part (same run)"
    if not bf16_peak:
        bf16_peak = matmul_peak("bfloat16", None, ctx.sizes.peak_sizes[-1:], ctx.sizes.peak_repeats, 10)["tflops"]
        peak_source = "measured in this part (the search part has none)"

    batch, batch_note = backbone_batch(sz, ctx.args.device_memory)
    images = make_images(batch)
    n_cos = min(sz.cosine_images, batch)
    module = get_model(sz.model, dtype=jnp.bfloat16)
    engine = EmbeddingEngine(module, variables, spec, flip=True)
    local = engine.local_batch_size(batch)
    # FLOP per view as XLA counts them (a cross-check of the 24.2 GFLOP reference figure)
    xla_gflop = None
    try:
        cost = jax.jit(module.apply).lower(variables, jax.ShapeDtypeStruct((1, spec.height, spec.width, 3),
                                                                            jnp.float32)).cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        xla_gflop = float(cost["flops"]) / 1e9
    except Exception as e:  # noqa: BLE001  (the cost model is informative only)
        ctx.note(f"XLA cost analysis unavailable: {type(e).__name__}: {e}")
    # the figure where REFERENCE.md has one (IResNet-50/100), XLA's count otherwise (the smoke model)
    gflop_view = GFLOP_PER_IMAGE.get(sz.model, xla_gflop)
    gflop_source = "REFERENCE.md" if sz.model in GFLOP_PER_IMAGE else "XLA cost analysis"
    jax_out = {}

    def measure_bf16():
        t = time.perf_counter()
        engine.compile(local)
        compile_s = time.perf_counter() - t
        x = jax.device_put(images, engine.data_sharding)
        ctx.log(f"JAX {sz.model} bf16 compiled in {compile_s:.1f} s")
        timing, out = time_calls(lambda: engine.step(x).block_until_ready(), sz.backbone_budget_s,
                                 10 if not ctx.smoke else 2)
        jax_out["bf16"] = np.asarray(out)[:n_cos]
        ips = batch / timing["median_s"]
        rec = {"model": sz.model, "batch": batch, "batch_note": batch_note, "flip": engine.flip_combine,
               "compute_dtype": "bfloat16", "compile_s": compile_s, **timing, "images_per_s": ips,
               "gflop_per_view": gflop_view, "gflop_source": gflop_source,
               "gflop_per_view_reference": GFLOP_PER_IMAGE.get(sz.model),
               "gflop_per_view_xla": xla_gflop, "bf16_peak_tflops": bf16_peak, "bf16_peak_source": peak_source,
               "weights": "random (see weights item)"}
        if gflop_view:
            rec["tflops"] = ips * 2 * gflop_view / 1e3
            rec["fraction_of_bf16_peak"] = rec["tflops"] / bf16_peak
        ctx.item("jax_bf16", rec)
        ctx.log(f"JAX bf16: {ips:,.1f} images/s" + (f" = {100 * rec['fraction_of_bf16_peak']:.1f}% of the bf16 "
                                                    f"peak" if gflop_view else ""))
        return compile_s

    compile_s = ctx.guarded("jax_bf16", measure_bf16)
    cos: dict[str, Any] = {}
    torch32_path = ctx.work_path("backbone_torch_float32.npy")
    torch32 = np.load(torch32_path) if os.path.isfile(torch32_path) else None
    if "bf16" in jax_out and torch32 is not None:
        cos["jax_bf16_vs_torch_float32"] = cosine_stats(jax_out["bf16"], torch32)
    # JAX float32 (HIGHEST) at the comparison batch: a second compile, so only when the time allows
    need = 2.0 * (compile_s or 30.0) + 10.0
    if "bf16" not in jax_out:
        ctx.skip("jax_float32_embeddings", "no bf16 embeddings to compare")
    elif ctx.remaining() < need:
        ctx.skip("jax_float32_embeddings", f"part time limit ({ctx.remaining():.0f} s left, ~{need:.0f} s needed)")
    else:
        def float32_embeddings():
            module32 = get_model(sz.model, dtype=jnp.float32, precision=jax.lax.Precision.HIGHEST)
            engine32 = EmbeddingEngine(module32, variables, spec, flip=True)
            t = time.perf_counter()
            engine32.compile(engine32.local_batch_size(n_cos))
            e32 = np.asarray(engine32.step(jax.device_put(images[:n_cos], engine32.data_sharding)))
            cos["jax_bf16_vs_jax_float32"] = cosine_stats(jax_out["bf16"], e32)
            if torch32 is not None:
                cos["jax_float32_vs_torch_float32_rel_l2"] = rel_l2(e32, torch32)
            cos["jax_float32_seconds"] = time.perf_counter() - t

        ctx.guarded("jax_float32_embeddings", float32_embeddings)
    if cos:
        ctx.item("cosine", cos)
        ctx.log("cosines: " + ", ".join(f"{key} {v['min']:.6f}" if isinstance(v, dict) else f"{key} {v:.2e}"
                                        for key, v in cos.items() if key != "jax_float32_seconds"))


# ------------------------------------------------------------------------------------------------ part: audit


def _import_hint(e: ImportError) -> str:
    missing = getattr(e, "name", None) or ""
    if missing.partition(".")[0] in device_wheels.DEVICE_WHEEL_MODULES:
        return " (a carried wheel: run scripts/fetch_device_wheels.py here and carry .device_wheels/wheels)"
    return (" (not on the device image: carry its wheel, scripts/fetch_device_wheels.py --packages=..., or keep "
            "it off the audit path)" if missing else "")


def part_audit(ctx: PartContext) -> None:
    """The audit from embeddings via the lead's ``scripts/bench_audit.py:run_bench(n_synthetic, n_members,
    n_nonmembers, dim, ...) -> {stage: seconds}``; recorded as skipped (with the reason) until it exists."""
    sizes, size_note = audit_sizes(ctx.sizes, None if ctx.smoke else ctx.args.audit_nonmembers,
                                   ctx.args.device_memory)
    path = ctx.args.bench_audit
    shown = os.path.relpath(path, REPO)
    if not os.path.isfile(path):
        ctx.skip("audit", f"{shown} is not in this checkout (the audit-from-embeddings benchmark has not landed "
                          "yet)")
        return
    try:
        module = load_module(path, "bench_audit")
    except ImportError as e:
        ctx.skip("audit", f"importing {shown} failed: {type(e).__name__}: {e}{_import_hint(e)}")
        return
    run_bench = getattr(module, "run_bench", None)
    if not callable(run_bench):
        ctx.skip("audit", f"{shown} has no run_bench()")
        return
    params = inspect.signature(run_bench).parameters
    missing = [p for p in sizes if p not in params]
    if missing:
        ctx.skip("audit", f"run_bench{inspect.signature(run_bench)} lacks the parameters {missing}")
        return
    try:  # absl-flag-based benchmarks read FLAGS; unparsed flags would raise
        from absl import flags

        flags.FLAGS.mark_as_parsed()
    except ImportError:
        pass
    ctx.log(f"run_bench({sizes})")
    # bench_audit runs the audit in a child process of its own, which does not inherit this process's sys.path:
    # the carried wheels (ml-collections for the configs, Pillow, matplotlib, jsonschema for the report) reach it
    # through PYTHONPATH. There the site folder precedes the image's site-packages; the carried wheels are the
    # packages the image lacks, so none of the image's own is shadowed.
    if SITE_DIR in sys.path:
        os.environ["PYTHONPATH"] = os.pathsep.join([p for p in [os.environ.get("PYTHONPATH")] if p] + [SITE_DIR])
    t = time.perf_counter()
    try:
        extra = {"reference": False} if "reference" in params else {}  # no faiss on the device image
        # its generated embeddings (~3.7 GB at the device sizes) and its audit output in the work folder, which the
        # parent removes at the end (the defaults are under the system's temporary folder and stay)
        for key, folder in (("data_dir", "audit_data"), ("out", "audit_out")):
            if key in params:
                extra[key] = ctx.work_path(folder)
        result = run_bench(**sizes, **extra)
        # bench_audit.run_bench returns its per-stage seconds under "stages" beside the detail
        stages = dict(result.get("stages", result)) if isinstance(result, dict) else result
        if isinstance(result, dict) and "stages" in result:
            stages["detail"] = {k: v for k, v in result.items() if k != "stages"}
    except ImportError as e:  # a module imported inside the benchmark
        ctx.skip("audit", f"run_bench failed to import: {type(e).__name__}: {e}{_import_hint(e)}")
        return
    wall = time.perf_counter() - t
    if not isinstance(stages, dict):
        raise TypeError(f"run_bench returned {type(stages).__name__}, expected a dict of per-stage seconds")
    numeric = {str(k): float(v) for k, v in stages.items()
               if isinstance(v, (int, float)) and not isinstance(v, bool)}
    ctx.item("audit", {**sizes, "size_note": size_note, "stages_s": numeric, "wall_s": wall,
                       "total_s": numeric.get("total", numeric.get("total_s", wall)),
                       "other": {k: v for k, v in stages.items() if str(k) not in numeric}})
    ctx.log(f"audit: {wall:.1f} s wall")


PART_FUNCTIONS = {"env": part_env, "search": part_search, "search_torch": part_search_torch,
                  "backbone_torch": part_backbone_torch, "backbone": part_backbone, "audit": part_audit}


def run_part(args: argparse.Namespace) -> int:
    ctx = PartContext(args)
    try:
        PART_FUNCTIONS[args.part](ctx)
    except Exception as e:  # noqa: BLE001  (recorded for the report; the parent goes on with the next part)
        ctx.data.update(status="failed", error=f"{type(e).__name__}: {e}"[:2000],
                        traceback=traceback.format_exc()[-6000:])
        ctx.log(f"FAILED: {type(e).__name__}: {e}")
        ctx.save()
        return 1
    ctx.data["status"] = "ok" if not ctx.data["skipped"] else "partial"
    ctx.save()
    return 0


# ------------------------------------------------------------------------------------------------ parent


def child_command(args: argparse.Namespace, part: str, work: str, t0: float, deadline: float,
                  backend: str, device_memory: float) -> list[str]:
    cmd = [sys.executable, SCRIPT, f"--part={part}", f"--out={args.out}", f"--work={work}", f"--t0={t0}",
           f"--deadline={deadline}", f"--backend={backend}", f"--device_memory={device_memory}",
           f"--search_precisions={args.search_precisions}",
           f"--audit_nonmembers={args.audit_nonmembers}", f"--bench_audit={args.bench_audit}"]
    if args.smoke:
        cmd.append("--smoke")
    if args.torch_compile:
        cmd.append("--torch_compile")
    return cmd


def run_child(cmd: list[str], limit_s: float) -> tuple[str, int | None, float]:
    """Runs one part; kills its process group at ``limit_s``. Returns (status, returncode, seconds)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, start_new_session=True)
    try:
        rc = proc.wait(timeout=limit_s)
        return ("ok" if rc == 0 else "failed"), rc, time.perf_counter() - t
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the part's own process group (it may have started workers)
        proc.wait()
        return "timed_out", None, time.perf_counter() - t
    except BaseException:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise


def merge_torch_recall(work: str, parts: dict) -> None:
    """recall@k of the torch results against the JAX exact reference (same queries, same database): computed
    here because JAX's helpers are not imported into the torch process."""
    from synleak_jax.search.bench import recall_at_k

    items = parts.get("search_torch", {}).get("items", {})
    meta = read_json(os.path.join(work, "search_meta.json")) or {}
    truth_path = os.path.join(work, "search_truth_idx.npy")
    if not os.path.isfile(truth_path):
        return
    truth = np.load(truth_path)
    for name in ("torch_bfloat16", "torch_float32"):
        path = os.path.join(work, f"search_{name}_idx.npy")
        if name in items and os.path.isfile(path):
            idx = np.load(path)
            m = min(len(idx), len(truth))
            items[name].update(recall_at_k=recall_at_k(idx[:m], truth[:m]), recall_queries=m,
                               recall_reference=f"exact {meta.get('truth', {}).get('precision')} (JAX)")


def _get(d: dict | None, *keys, default=None):
    for key in keys:
        if not isinstance(d, dict) or key not in d:
            return default
        d = d[key]
    return d


def _ratio(a, b):
    return a / b if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b else None


def _figure(section: str, figure: str, value, unit: str, reference: str = "", reference_value=None,
            ratio=None, target: str = "", met: bool | None = None, *records: dict) -> dict:
    """One table row. ``records``: the timing records behind the value and the reference; any timed only by
    its first call (see time_calls: no warm-up, so compile included where the call compiles) is flagged in the
    figure's name."""
    if any(r.get("from_warmup") for r in records if isinstance(r, dict)):
        figure += " [first call only, no warm-up]"
    return {"section": section, "figure": figure, "value": value, "unit": unit, "reference": reference,
            "reference_value": reference_value, "ratio": ratio, "target": target, "met": met}


def build_figures(parts: dict, smoke: bool) -> list[dict]:
    """The table rows: each figure with its same-run reference, ratio and the issue's target."""
    figs = []
    s = _get(parts, "search", "items") or {}
    st = _get(parts, "search_torch", "items") or {}
    peaks = s.get("matmul_peaks", {})
    bf16_peak = _get(peaks, "bfloat16", "tflops")
    f32_peak = _get(peaks, "float32_highest", "tflops")
    if bf16_peak:
        figs.append(_figure("search", "bf16 matmul peak (jitted square matmul, median)", bf16_peak, "TFLOP/s",
                            "REFERENCE.md anchor (H100/H200, not this run)", BF16_PEAK_ANCHOR_TFLOPS,
                            _ratio(bf16_peak, BF16_PEAK_ANCHOR_TFLOPS), "~790 expected"))
    if f32_peak:
        f32_default = _get(peaks, "float32_default", "tflops")
        figs.append(_figure("search", "float32 matmul peak, Precision.HIGHEST (no TF32)", f32_peak, "TFLOP/s",
                            "float32 at JAX's default precision (TF32 allowed on GPUs)", f32_default,
                            _ratio(f32_peak, f32_default)))
    sizes = s.get("sizes", {})
    shape = f"{sizes.get('ndb', '?'):,} x {sizes.get('dim', '?')}, k={sizes.get('k', '?')}" if sizes else ""
    torch_for = {"float32": "torch_float32", "bf16_certified": "torch_bfloat16"}
    exact_items = {key[len("exact_"):]: v for key, v in s.items()
                   if key.startswith("exact_") and key != "exact_topk_api" and isinstance(v, dict) and
                   "queries_per_s" in v}
    best = max(exact_items, key=lambda p: exact_items[p]["queries_per_s"]) if exact_items else None
    for precision, rec in exact_items.items():
        frac = rec["fraction_of_bf16_peak"]
        is_best = precision == best
        ref = st.get(torch_for.get(precision, "torch_bfloat16"), {})
        figs.append(_figure(
            "search", f"exact top-k {precision}: queries/s ({rec['queries']:,} queries x {shape})",
            rec["queries_per_s"], "queries/s",
            f"torch {ref.get('dtype', '?')} blockwise matmul + topk, same device", ref.get("queries_per_s"),
            _ratio(rec["queries_per_s"], ref.get("queries_per_s")), "", None, rec, ref))
        figs.append(_figure(
            "search", f"exact top-k {precision}{' (fastest exact mode)' if is_best else ''}: fraction of the "
                      "measured bf16 peak", frac,
            "", f"torch {ref.get('dtype', '?')}: its fraction", _ratio(ref.get("tflops"), bf16_peak),
            _ratio(frac, _ratio(ref.get("tflops"), bf16_peak)), ">= 0.60" if is_best else "",
            None if frac is None or not is_best else frac >= 0.60, rec, ref))
        if precision != "float32":
            agree = next((v for key, v in rec.items() if key.startswith("agreement_with_")), None)
            figs.append(_figure("search", f"exact top-k {precision}: fallback rate (queries recomputed in "
                                          "float32)", rec.get("fallback_rate"), ""))
            if agree:
                figs.append(_figure("search", f"exact top-k {precision}: identical top-k lists vs float32",
                                    agree["identical_lists"], "", target="1.0 (exact)",
                                    met=agree["identical_lists"] >= 0.999))
    for precision in exact_items:
        rows = [r for r in _get(s, "exact_block_sweep", "rows", default=[]) if r["precision"] == precision]
        if rows:
            top = max(rows, key=lambda r: r["queries_per_s"])
            default_qps = exact_items[precision]["queries_per_s"]
            same = all(r.get("identical_to_default_blocks", True) for r in rows)
            figs.append(_figure(
                "search", f"exact top-k {precision}: best of {len(rows)} swept blocks "
                          f"({top['blocks']['query_block']} x {top['blocks']['db_block']}): queries/s",
                top["queries_per_s"], "queries/s", "library default blocks", default_qps,
                _ratio(top["queries_per_s"], default_qps), "same top-k lists as the default blocks", same,
                top, exact_items[precision]))
    if best:
        figs.append(_figure("search", "fastest exact mode", best, "", "exact_topk's default precision",
                            _get(s, "exact_topk_api", "default_precision")))
    for name in ("torch_bfloat16", "torch_float32"):
        rec = st.get(name, {})
        if "recall_at_k" in rec:
            figs.append(_figure("search", f"{name} (blockwise, {rec['dtype']} scores): recall@{rec['k']} vs exact",
                                rec["recall_at_k"], "", rec.get("recall_reference", "")))
    ap = s.get("approx_max_k", {})
    if "queries_per_s" in ap:
        fastest = max((v["queries_per_s"] for v in exact_items.values()), default=None)
        figs.append(_figure("search", f"lax.approx_max_k (recall_target {RECALL_TARGET}, bf16 full rows): "
                                      f"queries/s ({ap['queries']:,} queries)", ap["queries_per_s"], "queries/s",
                            "fastest exact mode", fastest, _ratio(ap["queries_per_s"], fastest), "", None, ap))
        if "recall_at_k" in ap:
            figs.append(_figure("search", "lax.approx_max_k: measured recall@10 vs exact", ap["recall_at_k"], "",
                                ap.get("recall_reference", ""), target=f">= {RECALL_TARGET} (its recall target)",
                                met=ap["recall_at_k"] >= RECALL_TARGET))

    b = _get(parts, "backbone", "items") or {}
    bt = _get(parts, "backbone_torch", "items") or {}
    jb = b.get("jax_bf16", {})
    tb = bt.get("torch_bf16_eager", {})
    if "images_per_s" in jb:
        ratio = _ratio(jb["images_per_s"], tb.get("images_per_s"))
        figs.append(_figure("backbone", f"{jb['model']} bf16, batch {jb['batch']}, flip-sum: images/s",
                            jb["images_per_s"], "images/s", "PyTorch eager, bf16 autocast, channels_last",
                            tb.get("images_per_s"), ratio, ">= 1.2x PyTorch", None if ratio is None else ratio >= 1.2,
                            jb, tb))
        tc = bt.get("torch_bf16_compiled", {})
        if "images_per_s" in tc:
            figs.append(_figure("backbone", "images/s vs torch.compile", jb["images_per_s"], "images/s",
                                "PyTorch torch.compile, bf16 autocast, channels_last", tc["images_per_s"],
                                _ratio(jb["images_per_s"], tc["images_per_s"])))
        if jb.get("fraction_of_bf16_peak") is not None:
            # the same FLOP count for both sides (the torch part has no XLA cost model for non-table models)
            torch_tflops = tb["images_per_s"] * 2 * jb["gflop_per_view"] / 1e3 if "images_per_s" in tb else None
            tfrac = _ratio(torch_tflops, jb.get("bf16_peak_tflops"))
            figs.append(_figure("backbone", f"fraction of the measured bf16 peak ({jb['gflop_per_view']:.1f} "
                                            f"GFLOP/view from {jb['gflop_source']}, x2 flip)",
                                jb["fraction_of_bf16_peak"], "",
                                "PyTorch eager: its fraction", tfrac, _ratio(jb["fraction_of_bf16_peak"], tfrac),
                                ">= 0.40", jb["fraction_of_bf16_peak"] >= 0.40, jb, tb))
        if jb.get("gflop_per_view_xla") and jb.get("gflop_per_view_reference"):
            figs.append(_figure("backbone", "GFLOP per view counted by XLA", jb["gflop_per_view_xla"], "GFLOP",
                                "REFERENCE.md figure", jb.get("gflop_per_view_reference"),
                                _ratio(jb["gflop_per_view_xla"], jb.get("gflop_per_view_reference"))))
    cos = b.get("cosine", {})
    torch_cos = _get(bt, "torch_float32_embeddings", "torch_bf16_cosine_to_float32", "min")
    for key, label in (("jax_bf16_vs_jax_float32", "JAX bf16 vs JAX float32 embeddings: min cosine"),
                       ("jax_bf16_vs_torch_float32", "JAX bf16 vs torch float32 embeddings: min cosine")):
        if key in cos:
            figs.append(_figure("backbone", label, cos[key]["min"], "", "torch bf16 autocast vs torch float32",
                                torch_cos, None, ">= 0.999 (model parity tests' bound)", cos[key]["min"] >= 0.999))
    if "jax_float32_vs_torch_float32_rel_l2" in cos:
        v = cos["jax_float32_vs_torch_float32_rel_l2"]
        figs.append(_figure("backbone", "JAX float32 vs torch float32 embeddings: relative L2", v, "",
                            target="<= 1e-5 (model parity tests' bound)", met=v <= 1e-5))

    a = _get(parts, "audit", "items", "audit") or {}
    if "total_s" in a:
        figs.append(_figure("audit", f"audit from embeddings {a['n_synthetic']:,} x {a['n_members']:,} x "
                                     f"{a['dim']} (+{a['n_nonmembers']:,} non-members): total", a["total_s"], "s",
                            target="< 120 s", met=None if smoke else a["total_s"] < 120))
        for stage, sec in a.get("stages_s", {}).items():
            if stage not in ("total", "total_s"):
                figs.append(_figure("audit", f"stage {stage}", sec, "s"))
    return figs


def collect_skips(parts: dict) -> list[dict]:
    out = []
    for name, p in parts.items():
        for sk in p.get("skipped", []):
            out.append({"part": name, "item": sk["item"], "reason": sk["reason"]})
        if p.get("status") in ("failed", "timed_out", "skipped") and p.get("reason", p.get("error")):
            out.append({"part": name, "item": "(whole part)", "reason": p.get("reason", p.get("error"))})
    return out


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, (int, float)):
        if isinstance(v, float) and not math.isfinite(v):
            return "-"
        a = abs(v)
        if a == 0:
            return "0"
        if a >= 1000:
            return f"{v:,.0f}"
        if a >= 10:
            return f"{v:.1f}"
        if a >= 0.01:
            return f"{v:.4f}" if a < 1.0 else f"{v:.3f}"
        return f"{v:.2e}"
    return str(v)


def to_markdown(report: dict) -> str:
    env = _get(report, "parts", "env", "items", "environment") or {}
    meta = report["meta"]
    mode = "CPU smoke run (tiny sizes: not device figures)" if meta["smoke"] else "device run"
    lines = [f"# device_check: {mode}", "",
             f"- command: `{meta['command']}`",
             f"- started {meta['started']}, wall {meta.get('wall_s', 0):.0f} s (limit {meta['time_limit_s']:.0f} s)",
             f"- device: {env.get('device_kind', '?')} x{env.get('device_count', '?')} ({env.get('backend', '?')}), "
             f"memory {_fmt((env.get('device_memory_bytes') or 0) / 2**30 or None)} GiB; host "
             f"{env.get('cpus', '?')} CPUs",
             f"- jax {env.get('jax', '?')}, jaxlib {env.get('jaxlib', '?')}, torch "
             f"{_get(env, 'versions', 'torch', default='?')}, python {env.get('python', '?')}"]
    for name in ("search_torch", "backbone_torch"):
        rt = _get(report, "parts", name, "items", "torch_runtime")
        if rt:
            lines.append(f"- torch runtime ({name}): device {rt.get('name', rt['device'])}, CUDA {rt.get('cuda')}, "
                         f"cuDNN {rt.get('cudnn')}")
            break
    if env.get("nvidia_smi"):
        lines.append(f"- nvidia-smi: {env['nvidia_smi'].splitlines()[-1]}")
    lines.append(f"- carried wheels: {meta.get('wheels')}")
    lines.append("- parts: " + ", ".join(f"{n} {p.get('status', '?')} ({p.get('wall_s', p.get('seconds', 0)):.0f} s)"
                                         for n, p in report["parts"].items()))
    lines += ["", "| section | figure | value | same-run reference | ratio | target |", "|---|---|---|---|---|---|"]
    for f in report["figures"]:
        ref = f["reference"] + (f": {_fmt(f['reference_value'])}" if f["reference_value"] is not None else "")
        target = f["target"] + ({True: " (met)", False: " (NOT met)"}.get(f["met"], "") if f["target"] else "")
        value = _fmt(f["value"]) + (f" {f['unit']}" if f["unit"] and f["value"] is not None else "")
        lines.append(f"| {f['section']} | {f['figure']} | {value} | {ref or '-'} | "
                     f"{_fmt(f['ratio']) + 'x' if f['ratio'] is not None else '-'} | {target or '-'} |")
    if report["skipped"]:
        lines += ["", "## Skipped or failed", ""]
        lines += [f"- {s['part']} / {s['item']}: {s['reason']}" for s in report["skipped"]]
    notes = [n for p in report["parts"].values() for n in p.get("notes", [])]
    if notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


PART_SECTION = {p.name: p.section for p in PARTS}


def write_report(out: str, report: dict) -> None:
    """device_check.json: meta, then one key per section ("environment", "search", "backbone", "audit"), each
    {"status": {part: status}, "figures": [...], "skipped": [...], "parts": {part: its raw JSON}}, plus the
    flat "figures" and "skipped" lists the markdown is made from. Parts not run show status "not run"."""
    parts = report["parts"]
    report["skipped"] = collect_skips(parts)
    report["figures"] = build_figures(parts, report["meta"]["smoke"])
    doc = {"meta": report["meta"]}
    for sec in ("environment",) + SECTIONS:
        names = [p.name for p in PARTS if p.section == sec]
        doc[sec] = {"status": {n: parts.get(n, {}).get("status", "not run") for n in names},
                    "figures": [f for f in report["figures"] if f["section"] == sec],
                    "skipped": [s for s in report["skipped"] if PART_SECTION.get(s["part"]) == sec],
                    "parts": {n: parts[n] for n in names if n in parts}}
    doc["environment"]["details"] = _get(parts, "env", "items", "environment")
    doc["figures"] = report["figures"]
    doc["skipped"] = report["skipped"]
    files.atomic_write(os.path.join(out, "device_check.json"), files.dumps(doc))
    files.atomic_write(os.path.join(out, "device_check.md"), to_markdown(report))


def main_parent(args: argparse.Namespace) -> int:
    t0 = time.time()
    os.makedirs(os.path.join(args.out, "parts"), exist_ok=True)
    sections = [s for s in args.sections.split(",") if s]
    bad = [s for s in sections if s not in SECTIONS]
    if bad:
        print(f"device_check: --sections has unknown {bad}; known: {', '.join(SECTIONS)}", file=sys.stderr)
        return 2
    plan = [p for p in PARTS if p.section == "environment" or p.section in sections]
    report = {"meta": {"command": " ".join(shlex.quote(a) for a in sys.argv), "smoke": bool(args.smoke),
                       "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                       "time_limit_s": args.time_limit_s, "sections": sections,
                       "sizes": dataclasses.asdict(SMOKE if args.smoke else FULL)},
              "parts": {}}
    try:
        report["meta"]["wheels"] = device_wheels.ensure_site() or "none carried (.device_wheels/wheels has no manifest)"
    except SystemExit as e:  # a damaged carry: the parts that need a wheel record their import failure
        report["meta"]["wheels"] = f"not unpacked: {e}"
    print(f"[device_check +{time.time() - t0:6.1f}s] wheels: {report['meta']['wheels']}", flush=True)
    work = tempfile.mkdtemp(prefix="device_check_")
    backend, device_memory = "unknown", 0.0
    # A SIGTERM (e.g. the caller's timeout) must still kill the running part's process group and remove the
    # work folder: turn it into SystemExit, which run_child and the finally below handle.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        for i, part in enumerate(plan):
            elapsed = time.time() - t0
            remaining = args.time_limit_s - elapsed
            # the parts after this one keep their reserves, but never more than half of what is left
            later = min(sum(p.reserve_s for p in plan[i + 1:]), remaining / 2)
            limit = min(part.smoke_limit_s if args.smoke else part.limit_s, remaining - later)
            if limit < min(part.reserve_s, 10):
                report["parts"][part.name] = {"part": part.name, "status": "skipped", "items": {}, "skipped": [],
                                              "reason": f"overall time limit ({args.time_limit_s:.0f} s) reached"}
                write_report(args.out, report)
                continue
            print(f"[device_check +{elapsed:6.1f}s] starting part {part.name} (limit {limit:.0f} s)", flush=True)
            cmd = child_command(args, part.name, work, t0, time.time() + limit - 3, backend, device_memory)
            status, rc, sec = run_child(cmd, limit)
            data = read_json(part_json_path(args.out, part.name)) or {
                "part": part.name, "items": {}, "skipped": [], "reason": "the part wrote no result"}
            if status == "timed_out":
                data.update(status="timed_out", reason=f"killed at its time limit ({limit:.0f} s)")
            elif status == "failed":
                data["status"] = "failed"
                if not data.get("error"):
                    data["reason"] = data.get("reason") or f"exit code {rc}"
            data["wall_s"] = sec
            report["parts"][part.name] = data
            if part.name == "search_torch":
                try:
                    merge_torch_recall(work, report["parts"])
                except Exception as e:  # noqa: BLE001  (a recall figure is not worth losing the report)
                    data.setdefault("skipped", []).append({"item": "torch recall",
                                                           "reason": f"failed: {type(e).__name__}: {e}"})
            report["meta"]["wall_s"] = time.time() - t0
            write_report(args.out, report)
            if part.name == "env":
                backend = _get(data, "items", "environment", "backend", default="unknown")
                device_memory = float(_get(data, "items", "environment", "device_memory_bytes", default=0) or 0)
                if backend == "cpu" and not args.smoke:
                    msg = ("no accelerator: JAX's backend is cpu; this check is for a GPU machine "
                           "(use --smoke for the CPU smoke run)")
                    report["meta"]["error"] = msg
                    write_report(args.out, report)
                    print(f"device_check: {msg}", file=sys.stderr)
                    return 2
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report["meta"]["wall_s"] = time.time() - t0
    write_report(args.out, report)
    print(f"[device_check +{time.time() - t0:6.1f}s] wrote {os.path.join(args.out, 'device_check.json')} and "
          f"device_check.md", flush=True)
    print(to_markdown(report), flush=True)
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="output folder (device_check.json, device_check.md, parts/)")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: the CPU smoke run of every code path")
    parser.add_argument("--sections", default=",".join(SECTIONS), help="comma-separated subset of %(default)s")
    parser.add_argument("--time_limit_s", type=float, default=None,
                        help="bound on the whole run (default 480 s; smoke 300 s)")
    parser.add_argument("--search_precisions", default="bf16_certified,float32",
                        help="exact_topk precisions to measure, in order (default %(default)s)")
    parser.add_argument("--torch_compile", action="store_true", help="also time torch.compile on the backbone")
    parser.add_argument("--audit_nonmembers", type=int, default=100_000,
                        help="non-members for the audit section (device run; default %(default)s)")
    parser.add_argument("--bench_audit", default=BENCH_AUDIT,
                        help="the audit section's entry point, a file with run_bench() (default %(default)s)")
    # internal: one part in a child process
    parser.add_argument("--part", choices=sorted(PART_FUNCTIONS), help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    parser.add_argument("--t0", type=float, default=0.0, help=argparse.SUPPRESS)
    parser.add_argument("--deadline", type=float, default=0.0, help=argparse.SUPPRESS)
    parser.add_argument("--backend", default="unknown", help=argparse.SUPPRESS)
    parser.add_argument("--device_memory", type=float, default=0.0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.time_limit_s is None:
        args.time_limit_s = 300.0 if args.smoke else 480.0
    if args.time_limit_s <= 0:
        parser.error(f"--time_limit_s must be positive, got {args.time_limit_s}")
    args.out = os.path.abspath(args.out)
    args.bench_audit = os.path.abspath(args.bench_audit)
    return args


def main() -> None:
    args = parse_args()
    sys.exit(run_part(args) if args.part else main_parent(args))


if __name__ == "__main__":
    main()
