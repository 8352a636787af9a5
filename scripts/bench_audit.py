"""The audit from embeddings, end to end at scale, against the reference a user would otherwise run.

    python scripts/bench_audit.py                      # synthetic 200k, members 100k (10k ids), non-members 20k, 512-D
    python scripts/bench_audit.py --n_synthetic=1200000 --n_members=494000 --n_nonmembers=100000 --no_reference  # GPU

Data: face-structured unit embeddings (``synleak_jax.search.testdata``): identities of 5-15 images (genuine cosine
0.6 +- 0.1, impostors ~0 +- 1/sqrt(D)); 5% of the synthetic identities are member identities and 0.5% of the
synthetic rows planted near-copies (cosine 0.9) of member rows. Written once to ``--data_dir`` as .npy files.

Audit: ``synleak-audit --config=embeddings`` on those files (calibration on all member pairs, members x synthetic,
non-members x synthetic), in a child process that reports its resident memory after imports and JAX start-up
(the runtime baseline) and its peak (VmHWM). Targets (issue #12): audit time <= the reference's; peak RSS above
the runtime baseline <= 1.5x the embeddings.

Reference (same run, another child process): faiss-cpu ``IndexFlatIP`` for both neighbour directions (members ->
synthetic and synthetic -> members, k as the audit's) plus a numpy blockwise float32 matmul over every pair the
calibration (i < j of the members) and the real-vs-generated stage (members x synthetic) must touch once. faiss's
bundled OpenBLAS core type is recorded (``OPENBLAS_VERBOSE=2``); pin it with ``--faiss_coretype`` only when it
misdetects the CPU (it detects Haswell kernels on the AVX2 AMD EPYC machines, the right ones).

Also measured in the same run: XLA float32 and bf16 matmul peaks (GFLOP/s) for the fraction-of-peak column.
``run_bench(...)`` is the entry point ``scripts/device_check.py`` calls on a GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ---------------------------------------------------------------------------------------------------- data


def make_data(data_dir: str, n_synthetic: int, n_members: int, n_nonmembers: int, dim: int, seed: int = 0) -> dict:
    """Writes (once) members / synthetic / non-members .npy files with labels; returns their paths and facts."""
    from synleak_jax.search.testdata import IdentityEmbeddings, IdentitySpec

    os.makedirs(data_dir, exist_ok=True)
    tag = f"s{n_synthetic}_m{n_members}_n{n_nonmembers}_d{dim}_seed{seed}"
    paths = {k: os.path.join(data_dir, f"{tag}.{k}.npy") for k in ("synthetic", "members", "nonmembers",
                                                                    "member_labels", "nonmember_labels")}
    info_path = os.path.join(data_dir, f"{tag}.json")
    if os.path.exists(info_path) and all(os.path.exists(p) for p in paths.values()):
        with open(info_path) as f:
            return json.load(f)
    spec = IdentitySpec(database_rows=n_members, query_rows=n_synthetic, dim=dim, images_per_identity=(5, 15),
                        leaked_identity_share=0.05, copy_share=0.005, copy_cosine=0.9, seed=seed)
    gen = IdentityEmbeddings(spec)
    gen.save_npy(paths["members"], "database")
    gen.save_npy(paths["synthetic"], "queries")
    np.save(paths["member_labels"], gen.database_labels)
    non = IdentityEmbeddings(IdentitySpec(database_rows=n_nonmembers, query_rows=0, dim=dim,
                                          images_per_identity=(5, 15), seed=seed + 1000))
    non.save_npy(paths["nonmembers"], "database")
    np.save(paths["nonmember_labels"], non.database_labels + gen.n_database_identities + gen.n_query_identities)
    info = {"paths": paths, "generator": gen.describe(), "planted": gen.planted.tolist()[:50],
            "n_planted": int(len(gen.planted)), "embeddings_bytes": 4 * dim * (n_synthetic + n_members + n_nonmembers)}
    with open(info_path, "w") as f:
        json.dump(info, f)
    return info


# --------------------------------------------------------------------------------------------------- peaks


def matmul_peaks(m: int = 2048, n: int = 8192, d: int = 512, reps: int = 5) -> dict:
    """XLA matmul throughput (GFLOP/s) in float32 (HIGHEST) and bf16 (float32 accumulation), median of reps."""
    import jax
    import jax.numpy as jnp
    from jax import lax

    rng = np.random.default_rng(0)
    a = jnp.asarray(rng.standard_normal((m, d), np.float32))
    b = jnp.asarray(rng.standard_normal((n, d), np.float32))
    out = {}
    for name, fn in (("float32", lambda x, y: lax.dot_general(x, y, (((1,), (1,)), ((), ())),
                                                               precision=lax.Precision.HIGHEST)),
                     ("bf16", lambda x, y: lax.dot_general(x.astype(jnp.bfloat16), y.astype(jnp.bfloat16),
                                                           (((1,), (1,)), ((), ())),
                                                           preferred_element_type=jnp.float32))):
        f = jax.jit(fn)
        f(a, b).block_until_ready()
        ts = []
        for _ in range(reps):
            t = time.perf_counter()
            f(a, b).block_until_ready()
            ts.append(time.perf_counter() - t)
        out[name] = 2.0 * m * n * d / float(np.median(ts)) / 1e9
    return out


# --------------------------------------------------------------------------------------------------- children


def _audit_child(args: dict) -> dict:
    """Runs in a fresh process: the audit from embeddings; returns timings, memory and the numbers."""
    from synleak_jax.search.hostmem import limit_malloc_retention

    limit_malloc_retention()
    import jax

    jax.numpy.zeros(1).block_until_ready()  # JAX runtime up: part of the baseline
    from synleak_jax import memory
    from synleak_jax.audit import run_audit
    from synleak_jax.configs import embeddings

    base = memory.resident_mb()
    p = args["paths"]
    cfg = embeddings.get_config()
    cfg.output_dir = args["out"]
    cfg.data.synthetic.path = p["synthetic"]
    cfg.data.members.path, cfg.data.members.labels = p["members"], p["member_labels"]
    cfg.data.nonmembers.path, cfg.data.nonmembers.labels = p["nonmembers"], p["nonmember_labels"]
    cfg.attack.fmrs = (1e-2, 1e-3, 1e-4)
    cfg.attack.k = args["k"]
    cfg.report.gallery_n = 8
    t0 = time.perf_counter()
    rep = run_audit(cfg)
    wall = time.perf_counter() - t0
    m = rep["matchers"][0]
    return {"wall_s": wall, "timings_s": rep["timings_s"], "baseline_rss_mb": base,
            "peak_rss_mb": memory.peak_resident_mb(),
            "devices": [str(d) for d in jax.devices()], "backend": jax.default_backend(),
            "thresholds": [(t["target_fmr"], t["tau_native"], t["impostors_above"]) for t in m["calibration"]["thresholds"]],
            "leakage": [(x["target_fmr"], x["synthetic_matched"], x["real_images_matched"]) for x in m["leakage"]],
            "control": [(x["target_fmr"], x["synthetic_matched"], x["real_images_matched"])
                        for x in m["leakage_control"]],
            "membership_auc": [r["auc"] for r in m["membership"]["results"]],
            "calibration_method": m["calibration"]["method"]}


def _reference_child(args: dict) -> dict:
    """Runs in a fresh process: faiss IndexFlatIP both ways + numpy blockwise float32 matmuls over the
    calibration and real-vs-generated pairs (each pair touched once, nothing else done with the scores)."""
    import faiss

    p = args["paths"]
    members = np.load(p["members"])
    synthetic = np.load(p["synthetic"])
    k = args["k"]
    out = {"faiss_threads": faiss.omp_get_max_threads()}
    t = time.perf_counter()
    index = faiss.IndexFlatIP(members.shape[1])
    index.add(members)
    index.search(synthetic, k)
    out["faiss_synthetic_to_members_s"] = time.perf_counter() - t
    t = time.perf_counter()
    index = faiss.IndexFlatIP(synthetic.shape[1])
    index.add(synthetic)
    index.search(members, k)
    out["faiss_members_to_synthetic_s"] = time.perf_counter() - t
    block = 4096
    t = time.perf_counter()
    sink = 0.0
    n = members.shape[0]
    for a in range(0, n, block):  # i < j: row block a against column blocks from a on
        s = members[a:a + block] @ members[a:].T
        sink += float(s[0, 0])
    out["numpy_calibration_pairs_s"] = time.perf_counter() - t
    t = time.perf_counter()
    for a in range(0, n, block):
        s = members[a:a + block] @ synthetic.T
        sink += float(s[0, 0])
    out["numpy_real_vs_generated_s"] = time.perf_counter() - t
    out["total_s"] = sum(v for key, v in out.items() if key.endswith("_s"))
    out["sink"] = sink
    return out


def _child_main() -> None:
    what, args_path, out_path = sys.argv[2], sys.argv[3], sys.argv[4]
    with open(args_path) as f:
        args = json.load(f)
    res = _audit_child(args) if what == "audit" else _reference_child(args)
    with open(out_path, "w") as f:
        json.dump(res, f)


def _run_child(what: str, args: dict, env_extra: dict | None = None) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        a, o = os.path.join(tmp, "args.json"), os.path.join(tmp, "out.json")
        with open(a, "w") as f:
            json.dump(args, f)
        env = dict(os.environ)
        env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
        env.update(env_extra or {})
        p = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", what, a, o], env=env,
                           capture_output=True, text=True)
        if p.returncode != 0:
            raise RuntimeError(f"{what} child failed ({p.returncode}):\n{p.stderr[-4000:]}")
        with open(o) as f:
            res = json.load(f)
        res["stderr_tail"] = "\n".join(p.stderr.strip().splitlines()[-6:])
        return res


# ------------------------------------------------------------------------------------------------- the bench


def run_bench(n_synthetic: int = 200_000, n_members: int = 100_000, n_nonmembers: int = 20_000, dim: int = 512, *,
              k: int = 10, data_dir: str | None = None, out: str | None = None, reference: bool = True,
              faiss_coretype: str = "") -> dict:
    """The whole benchmark; returns a dict with per-stage seconds (``stages``), the reference, memory, ratios."""
    data_dir = data_dir or os.path.join(tempfile.gettempdir(), "synleak_bench_audit_data")
    out = out or tempfile.mkdtemp(prefix="bench_audit_")
    t = time.perf_counter()
    info = make_data(data_dir, n_synthetic, n_members, n_nonmembers, dim)
    data_s = time.perf_counter() - t
    peaks = matmul_peaks(d=dim)
    args = {"paths": info["paths"], "out": os.path.join(out, "audit"), "k": k}
    audit = _run_child("audit", args)
    ts = audit["timings_s"]
    name = next(key.split("/")[0] for key in ts if "/" in key)
    pairs = {"calibration": n_members * (n_members - 1) // 2, "members_x_synthetic": n_members * n_synthetic,
             "nonmembers_x_synthetic": n_nonmembers * n_synthetic}
    # The calibration's passes as its report states them ("1 pass; pilot over ..."): the pilot is 1/64 of the pairs.
    found = re.search(r"(\d+) pass", audit.get("calibration_method", ""))
    cal_passes = (int(found.group(1)) if found else 2) + (1 / 64 if "pilot" in audit.get("calibration_method", "") else 0)
    passes = {"calibration": round(cal_passes, 3), "members_x_synthetic": 1, "nonmembers_x_synthetic": 1}
    stages = {}
    for stage, n_pairs in pairs.items():
        s = ts.get(f"{name}/{stage}")
        if s is None:
            continue
        flops = 2.0 * dim * n_pairs * passes[stage]
        stages[stage] = {"seconds": s, "pairs": n_pairs, "passes": passes[stage], "pairs_per_s": n_pairs / s,
                         "fraction_of_float32_peak": flops / s / 1e9 / peaks["float32"],
                         "fraction_of_bf16_peak": flops / s / 1e9 / peaks["bf16"]}
    emb_mb = info["embeddings_bytes"] / 2**20
    res = {"sizes": {"n_synthetic": n_synthetic, "n_members": n_members, "n_nonmembers": n_nonmembers, "dim": dim,
                     "k": k, "embeddings_mb": emb_mb}, "data_seconds": data_s, "peaks_gflops": peaks,
           "audit": {"total_s": audit["wall_s"], "stages": stages, "timings_s": ts,
                     "baseline_rss_mb": audit["baseline_rss_mb"], "peak_rss_mb": audit["peak_rss_mb"],
                     "peak_above_baseline_over_embeddings": (audit["peak_rss_mb"] - audit["baseline_rss_mb"]) / emb_mb,
                     "backend": audit["backend"], "devices": audit["devices"],
                     "numbers": {k2: audit[k2] for k2 in ("thresholds", "leakage", "control", "membership_auc")}},
           "stages": {s: v["seconds"] for s, v in stages.items()}, "load_average": os.getloadavg()}
    res["stages"]["total"] = audit["wall_s"]
    if reference:
        env = {"OPENBLAS_VERBOSE": "2"}
        if faiss_coretype:
            env["OPENBLAS_CORETYPE"] = faiss_coretype
        ref = _run_child("reference", args, env)
        ref["openblas_cores_reported"] = [ln.split(":", 1)[1].strip() for ln in ref.pop("stderr_tail").splitlines()
                                          if ln.startswith("Core:")]
        res["reference"] = ref
        res["ratio_reference_over_audit"] = ref["total_s"] / audit["wall_s"]
    res["load_average_end"] = os.getloadavg()
    return res


def _markdown(res: dict) -> str:
    a = res["audit"]
    lines = ["| stage | pairs | passes | seconds | pairs/s | fraction of f32 peak |", "|---|---|---|---|---|---|"]
    for s, v in a["stages"].items():
        lines.append(f"| {s} | {v['pairs']:.3g} | {v['passes']} | {v['seconds']:.1f} | {v['pairs_per_s']:.3g} | "
                     f"{v['fraction_of_float32_peak']:.2f} |")
    lines.append(f"| **audit total** (incl. start-up, report) | | | **{a['total_s']:.1f}** | | |")
    if "reference" in res:
        r = res["reference"]
        lines.append(f"| reference: faiss syn->mem {r['faiss_synthetic_to_members_s']:.1f} s + mem->syn "
                     f"{r['faiss_members_to_synthetic_s']:.1f} s + numpy calibration "
                     f"{r['numpy_calibration_pairs_s']:.1f} s + numpy R-G {r['numpy_real_vs_generated_s']:.1f} s "
                     f"| | | **{r['total_s']:.1f}** | | |")
        lines.append(f"\nratio reference / audit: **{res['ratio_reference_over_audit']:.2f}** (target >= 1.0)")
    lines.append(f"peak RSS above the runtime baseline: {a['peak_rss_mb'] - a['baseline_rss_mb']:.0f} MB = "
                 f"**{a['peak_above_baseline_over_embeddings']:.2f}x** the embeddings ({res['sizes']['embeddings_mb']:.0f}"
                 f" MB; target <= 1.5x); baseline {a['baseline_rss_mb']:.0f} MB")
    lines.append(f"XLA matmul peaks in the same run: float32 {res['peaks_gflops']['float32']:.0f} GFLOP/s, bf16 "
                 f"{res['peaks_gflops']['bf16']:.0f} GFLOP/s; load average {res['load_average']} -> "
                 f"{res['load_average_end']}")
    return "\n".join(lines)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        _child_main()
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n_synthetic", type=int, default=200_000)
    ap.add_argument("--n_members", type=int, default=100_000)
    ap.add_argument("--n_nonmembers", type=int, default=20_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--data_dir", default="")
    ap.add_argument("--out", default="")
    ap.add_argument("--no_reference", action="store_true")
    ap.add_argument("--faiss_coretype", default="", help="OPENBLAS_CORETYPE for the faiss child (only if it "
                                                         "misdetects this CPU)")
    a = ap.parse_args()
    res = run_bench(a.n_synthetic, a.n_members, a.n_nonmembers, a.dim, k=a.k, data_dir=a.data_dir or None,
                    out=a.out or None, reference=not a.no_reference, faiss_coretype=a.faiss_coretype)
    out = a.out or tempfile.mkdtemp(prefix="bench_audit_")
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "bench_audit.json"), "w") as f:
        json.dump(res, f, indent=1)
    print(_markdown(res))
    print(f"\nresults: {os.path.join(out, 'bench_audit.json')}")


if __name__ == "__main__":
    main()
