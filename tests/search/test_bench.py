"""The benchmark harness: backend names, sweep plans, leak recall against a brute-force count, the harness end to
end on a tiny face-structured problem (fresh subprocess per build), the plot's labels, the CLI's errors."""

import json
import subprocess
import sys

import numpy as np
import pytest

from synleak_jax.attack.calibration import calibrate_embeddings
from synleak_jax.search import bench
from synleak_jax.search.testdata import IdentitySpec, make_identity_embeddings

_ENV = {"JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}


def test_recall_at_k():
    truth = np.array([[1, 2, 3], [4, 5, 6]])
    assert bench.recall_at_k(np.array([[3, 2, 1], [4, 9, 8]]), truth) == 4 / 6
    assert bench.recall_at_k(np.array([[-1, -1, 1], [-1, 6, 5]]), truth) == 3 / 6  # -1 (no result) never matches


def test_resolve_backends_aliases_and_one_line_errors():
    assert bench.resolve_backends(["exact", "approx", "approx_max_k", " faiss_ivf "]) == \
        ["exact", "approx_max_k", "faiss_ivf"]
    with pytest.raises(ValueError) as e:
        bench.resolve_backends(["exact", "annoy"])
    msg = str(e.value)
    assert "unknown backend 'annoy'" in msg and "approx_max_k" in msg and "faiss_hnsw" in msg and "\n" not in msg


def test_sweep_plans():
    for name, grid in bench.DEFAULT_SWEEPS.items():
        plan = bench.sweep_plan(name, ndb=200_000, k=10)
        assert sum(len(points) for _, points in plan) >= 4, name
    ivf = bench.sweep_plan("faiss_ivf", ndb=200_000, k=10)
    assert [b["nlist"] for b, _ in ivf] == [1024, 4096]
    assert [p["nprobe"] for p in ivf[0][1]] == [1, 4, 16, 64, 256, 1024]
    # a small database: lists need 39 training rows each; nprobe is clipped to nlist and deduplicated
    small = bench.sweep_plan("faiss_ivf", ndb=5_000, k=10)
    assert [b["nlist"] for b, _ in small] == [5_000 // 39]
    assert [p["nprobe"] for p in small[0][1]] == [1, 4, 16, 64, 128]
    tiny = bench.sweep_plan("faiss_ivf", ndb=1_000, k=10)
    assert [p["nprobe"] for p in tiny[0][1]] == [1, 4, 16, 25]
    hnsw = bench.sweep_plan("faiss_hnsw", ndb=200_000, k=10, sweep_grid={"ef_search": [20, 40]})
    assert [(b["m"], b["ef_construction"]) for b, _ in hnsw] == [(16, 80), (32, 80)]
    assert [p["ef_search"] for p in hnsw[0][1]] == [20, 40]
    pinned = bench.sweep_plan("faiss_hnsw", ndb=200_000, k=10, params={"m": 24})
    assert [b["m"] for b, _ in pinned] == [24] and len(pinned[0][1]) == 5
    assert bench.sweep_plan("faiss_hnsw", ndb=200_000, k=10, sweep=False) == \
        [({"m": 32, "ef_construction": 80}, [{"ef_search": 64}])]
    assert bench.sweep_plan("exact_bf16", ndb=100, k=10) == [({"precision": "bf16_certified"}, [{}])]
    scann = bench.sweep_plan("scann", ndb=200_000, k=10)
    assert len(scann) == 1 and len(scann[0][1]) == 10
    with pytest.raises(ValueError, match="unknown parameter 'nprob'"):
        bench.sweep_plan("faiss_ivf", ndb=200_000, k=10, sweep_grid={"nprob": [1]})
    with pytest.raises(ValueError, match="non-empty list"):
        bench.sweep_plan("faiss_ivf", ndb=200_000, k=10, sweep_grid={"nprobe": 4})
    with pytest.raises(ValueError, match="not an approximate backend"):
        bench.sweep_plan("exact", ndb=200_000, k=10, sweep_grid={"db_block": [1024]})


def _brute_leak(q, db, found, tau, k):
    """Brute force: all float64 scores, the set of rows above tau per query, capped at k for the denominator."""
    s = q.astype(np.float64) @ db.astype(np.float64).T
    found_n = in_scope = 0
    for row, f in zip(s, found):
        above = set(np.flatnonzero(row > tau).tolist())
        found_n += len(above & {int(x) for x in f if x >= 0})
        in_scope += min(k, len(above))
    return found_n, in_scope, int((s > tau).sum())


def test_leak_recall_against_brute_force(rng):
    spec = IdentitySpec(database_rows=4_000, query_rows=300, dim=48, leaked_identity_share=0.3, copy_share=0.05,
                        seed=int(rng.integers(1 << 30)))
    q, db, gen = make_identity_embeddings(spec)
    cal = calibrate_embeddings(db, gen.database_labels, [1e-3, 1e-4], metric="cosine")
    taus = [cal.tau(1e-3), cal.tau(1e-4)]
    k = 10
    s = q.astype(np.float64) @ db.astype(np.float64).T
    truth = np.argsort(-s, axis=1, kind="stable")[:, :k]
    # an imperfect method: a third of the entries replaced by random rows, some by -1, some duplicated
    found = truth.copy()
    mask = rng.random(found.shape) < 0.33
    found[mask] = rng.integers(0, len(db), int(mask.sum()))
    found[rng.random(found.shape) < 0.05] = -1
    found[:20, 1] = found[:20, 0]
    truth_scores = bench.pair_scores(q, db, truth, block=64)
    found_scores = bench.pair_scores(q, db, found, block=64)
    assert np.isnan(found_scores[found < 0]).all()
    np.testing.assert_allclose(truth_scores, np.take_along_axis(s, truth, 1), rtol=0, atol=1e-12)
    totals = bench.count_pairs_above(q, db, taus, query_block=128, db_block=1_000)
    for tau, total in zip(taus, totals):
        want_found, want_scope, want_total = _brute_leak(q, db, found, tau, k)
        got = bench.leak_recall(found_scores, found, truth_scores, tau)
        assert (got["found"], got["in_scope"]) == (want_found, want_scope)
        assert got["recall"] == want_found / want_scope < 1.0
        assert bench.leak_recall(truth_scores, truth, truth_scores, tau)["recall"] == 1.0
        near = int((np.abs(s - tau) < 1e-6).sum())  # float32 counting may differ only at float32 ties with tau
        assert abs(total - want_total) <= near
        assert want_scope < want_total  # some leaked pairs lie beyond the k-th neighbour: out of scope
    # nothing above the threshold: recall is 1.0 by definition
    assert bench.leak_recall(found_scores, found, truth_scores, 2.0) == {"found": 0, "in_scope": 0, "recall": 1.0}


def test_pareto_frontier():
    pts = [(0.5, 100.0), (0.9, 50.0), (0.8, 40.0), (0.99, 10.0), (0.9, 60.0), (0.3, 90.0)]
    assert bench.pareto_frontier(pts) == [0, 4, 3]


def test_place_labels_never_overlap():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4))
    x = np.linspace(0.5, 1.0, 80)
    y = 10 ** (4 - 2 * x)  # crowded points along one curve
    ax.plot(x, y, "o")
    ax.set_yscale("log")
    fig.tight_layout()
    placed = bench.place_labels(ax, [(a, b, f"nprobe={i} nlist=1024") for i, (a, b) in enumerate(zip(x, y))])
    renderer = fig.canvas.get_renderer()
    boxes = [a.get_window_extent(renderer) for a in placed]
    assert 3 <= len(boxes) < 80  # some fit, not all of 80 crowded labels can
    inside = ax.get_window_extent(renderer)
    for i, p in enumerate(boxes):
        assert inside.x0 <= p.x0 and p.x1 <= inside.x1 and inside.y0 <= p.y0 and p.y1 <= inside.y1
        for other in boxes[i + 1:]:
            assert not p.overlaps(other)
    plt.close(fig)


def test_run_benchmark_sweeps_on_identities(tmp_path):
    data = bench.prepare_data(str(tmp_path / "data"), kind="identities", nq=200, ndb=4_000, dim=32, seed=3,
                              identity={"copy_share": 0.05, "leaked_identity_share": 0.2})
    db = np.load(data["database"])
    q = np.load(data["queries"])
    labels = np.load(data["database_labels"])
    cal = calibrate_embeddings(db, labels, [1e-3, 1e-4], metric="cosine")
    thresholds = [{"fmr": f, "tau": cal.tau(f)} for f in (1e-3, 1e-4)]
    res = bench.run_benchmark(str(tmp_path / "out"), k=5, data=data, repeats=1,
                              backends=["exact", "faiss_flat", "faiss_ivf", "faiss_hnsw", "approx"],
                              sweeps={"faiss_ivf": {"nlist": [16, 32], "nprobe": [1, 4, 32]},
                                      "faiss_hnsw": {"m": [8], "ef_search": [5, 16, 64, 256]},
                                      "approx": {"recall_target": [0.9, 0.99]}},
                              params={"approx": {"db_block": 512}}, env=_ENV,
                              leak_thresholds=thresholds, calibration={"method": "test"})
    rows = res["rows"]
    assert all("error" not in r for r in rows), [r.get("error") for r in rows]
    by = {}
    for r in rows:
        by.setdefault(r["backend"], []).append(r)
    assert {b: len(v) for b, v in by.items()} == {"exact": 1, "faiss_flat": 1, "faiss_ivf": 6, "faiss_hnsw": 4,
                                                 "approx_max_k": 2}
    # nprobe 32 of 16 lists is clipped to 16 (an exhaustive point)
    assert [(r["params"]["nlist"], r["params"]["nprobe"]) for r in by["faiss_ivf"]] == \
        [(16, 1), (16, 4), (16, 16), (32, 1), (32, 4), (32, 32)]
    for r in rows:
        for key in ("recall_at_k", "queries_per_s", "build_s", "peak_rss_mb", "init_rss_mb", "leak",
                    "planted_recall"):
            assert key in r, (r["label"], key)
        assert [x["fmr"] for x in r["leak"]] == [1e-3, 1e-4]
    for r in by["exact"] + by["faiss_flat"]:
        assert r["recall_at_k"] == 1.0 and r["planted_recall"] == 1.0
        assert len(r["runs"]) == 2 and r["runs"][1].endswith("_close")  # bracketing the sweeps
        assert r["median_s"] == pytest.approx(float(np.median(r["round_medians_s"])))
        assert all(x["leak_recall"] == 1.0 for x in r["leak"])
    assert all(len(r["runs"]) == 1 for r in by["faiss_ivf"])
    for r in rows:  # queries with a true neighbour (leaked identity, copy) vs queries with impostors only
        assert set(r["recall_at_k_by_query_kind"]) == {"new_identity", "leaked_identity", "planted_copy"}
    assert by["exact"][0]["recall_at_k_by_query_kind"]["new_identity"] == 1.0
    for exhaustive in (r for r in by["faiss_ivf"] if r["params"]["nprobe"] == r["params"]["nlist"]):
        assert exhaustive["recall_at_k"] == 1.0  # every list visited: a flat scan
    assert by["faiss_ivf"][0]["recall_at_k"] < 1.0  # one list of 16: approximate
    hnsw = by["faiss_hnsw"]
    assert hnsw[0]["recall_at_k"] < hnsw[-1]["recall_at_k"] and hnsw[-1]["recall_at_k"] >= 0.95
    assert len({r["build_s"] for r in hnsw}) == 1  # one build, four search settings
    # leak recall in the results equals a brute-force count on the saved indices
    r = by["faiss_ivf"][0]
    found = np.load(tmp_path / "out" / "faiss_ivf_b0_r0_p0_idx.npy")
    for x, t in zip(r["leak"], thresholds):
        want_found, want_scope, want_total = _brute_leak(q, db, found, t["tau"], 5)
        assert (x["found"], x["leak_pairs_in_scope"]) == (want_found, want_scope)
        assert x["leak_recall"] == pytest.approx(want_found / want_scope)
        assert abs(x["leak_pairs_total"] - want_total) <= 2
    assert res["planted"] == {"n_planted": 10, "exact_top1_is_planted": 1.0}
    v = res["verdict"]
    assert v["line"].startswith("verdict: ") and v["fastest_exact"]["label"] in ("exact", "faiss_flat")
    if v["ratio"] is not None:
        best = next(r for r in rows if r["label"] == v["best_approximate"]["label"])
        assert best["recall_at_k"] >= 0.95 and all(x["leak_recall"] == 1.0 for x in best["leak"])
        assert v["ratio"] == pytest.approx(best["queries_per_s"] / v["fastest_exact"]["queries_per_s"])
    on_disk = json.loads((tmp_path / "out" / "results.json").read_text())
    assert len(on_disk["rows"]) == 14 and on_disk["leak_thresholds"][0]["tau"] == pytest.approx(thresholds[0]["tau"])
    assert (tmp_path / "out" / "recall_vs_qps.png").stat().st_size > 10_000
    md = (tmp_path / "out" / "results.md").read_text()
    assert "| faiss_hnsw | m=8 ef_construction=80 ef_search=256 |" in md and "verdict:" in md
    # the data directory is reused when it describes the same data, remade when not
    again = bench.prepare_data(str(tmp_path / "data"), kind="identities", nq=200, ndb=4_000, dim=32, seed=3,
                               identity={"copy_share": 0.05, "leaked_identity_share": 0.2})
    assert again == data
    other = bench.prepare_data(str(tmp_path / "data"), kind="identities", nq=200, ndb=4_000, dim=32, seed=4)
    assert not np.array_equal(np.load(other["database"])[:10], db[:10])


def test_worker_memory_is_its_own(tmp_path):
    """Peak RSS is the worker's own (VmHWM): a large parent must not leak into it (getrusage's ru_maxrss does,
    across execve)."""
    ballast = np.ones(150_000_000)  # 1.2 GB in the parent, touched
    res = bench.run_benchmark(str(tmp_path), k=5, data_kind="gaussian", nq=64, ndb=3_000, dim=16,
                              backends=["exact", "faiss_flat"], repeats=1, env=_ENV)
    del ballast
    for r in res["rows"]:
        assert "error" not in r, r
        assert 0 < r["runtime_rss_mb"] <= r["init_rss_mb"] < r["peak_rss_mb"] < 1_000
        assert r["recall_at_k"] == 1.0 and "leak" not in r
        assert abs(r["peak_above_init_over_data"] * r["data_mb"] - (r["peak_rss_mb"] - r["init_rss_mb"])) < 1e-6
    assert res["config"]["malloc_single_arena"] is True


def _cli(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "synleak_jax.cli.bench_knn", *args], capture_output=True, text=True,
                          timeout=timeout, env={**__import__("os").environ, **_ENV})


def test_cli_errors_are_one_line(tmp_path):
    for args, needle in ((["--backends=exact,approx,annoy"], "unknown backend 'annoy'"),
                         (["--data=npy"], "--queries is required"),
                         (["--data=npy", f"--queries={tmp_path}/missing.npy", f"--database={tmp_path}/x.npy"],
                          "missing.npy"),
                         (["--sweeps={\"faiss_ivf\": {\"nprob\": [1]}}", "--backends=faiss_ivf", "--nq=10",
                           "--ndb=2000", "--dim=32", f"--output_dir={tmp_path}/o"], "unknown parameter 'nprob'"),
                         (["--params=[1]"], "--params must be a JSON object")):
        proc = _cli(*args, timeout=120)
        assert proc.returncode == 2, (args, proc.stderr[-500:])
        lines = [line for line in proc.stderr.splitlines() if line.startswith("synleak-bench-knn: error:")]
        assert len(lines) == 1 and needle in lines[0], (args, proc.stderr[-500:])
        assert "Traceback" not in proc.stderr


@pytest.mark.slow
def test_cli_npy_end_to_end(tmp_path):
    q, db, gen = make_identity_embeddings(IdentitySpec(database_rows=3_000, query_rows=100, dim=32, seed=5))
    np.save(tmp_path / "q.npy", q.astype(np.float64))  # converted to float32 by the harness
    np.save(tmp_path / "db.npy", db)
    np.save(tmp_path / "labels.npy", gen.database_labels)
    proc = _cli("--data=npy", f"--queries={tmp_path}/q.npy", f"--database={tmp_path}/db.npy",
                f"--database_labels={tmp_path}/labels.npy", "--backends=exact,faiss_ivf", "--k=5", "--repeats=1",
                "--fmrs=1e-3", "--sweeps={\"faiss_ivf\": {\"nlist\": [32], \"nprobe\": [1, 2, 8, 32]}}",
                f"--output_dir={tmp_path}/out")
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads((tmp_path / "out" / "results.json").read_text())
    assert res["data"]["kind"] == "npy" and res["config"]["nq"] == 100
    assert res["calibration"]["labels"] is True and res["calibration"]["rows"] == 3_000
    assert len(res["leak_thresholds"]) == 1 and len(res["rows"]) == 5
    assert "verdict:" in proc.stdout


def test_prepare_data_from_npy_files_and_an_embedding_store(tmp_path):
    from synleak_jax.embed.store import ChunkPlan, StoreWriter

    q, db, gen = make_identity_embeddings(IdentitySpec(database_rows=300, query_rows=40, dim=32, seed=2))
    np.save(tmp_path / "q.npy", q)
    np.save(tmp_path / "q64.npy", q.astype(np.float64))
    plan = ChunkPlan(num_records=300, batch_size=64, chunk_batches=2)
    writer = StoreWriter(str(tmp_path / "store"), {"plan": plan.to_dict(), "embedding_dim": 32})
    for j in range(plan.num_chunks):
        a, b = plan.chunk_range(j)
        writer.commit_chunk(j, np.arange(a, b), gen.database_labels[a:b], db[a:b], [])
    info = bench.prepare_data(str(tmp_path / "d"), kind="npy", queries=str(tmp_path / "q.npy"),
                              database=str(tmp_path / "store"))
    assert (info["nq"], info["ndb"], info["dim"]) == (40, 300, 32)
    assert info["queries"] == str(tmp_path / "q.npy")  # float32 .npy: used in place
    np.testing.assert_array_equal(np.load(info["database"]), db)  # the store, copied into one aligned .npy
    np.testing.assert_array_equal(np.load(info["database_labels"]), gen.database_labels)  # the store's labels
    info64 = bench.prepare_data(str(tmp_path / "d64"), kind="npy", queries=str(tmp_path / "q64.npy"),
                                database=str(tmp_path / "store"))
    np.testing.assert_array_equal(np.load(info64["queries"]), q)  # float64 converted to float32
    bad = q.copy()
    bad[7, 3] = np.nan
    np.save(tmp_path / "bad.npy", bad)
    with pytest.raises(ValueError, match=r"bad.npy: row 7 is not finite"):
        bench.prepare_data(str(tmp_path / "d2"), kind="npy", queries=str(tmp_path / "bad.npy"),
                           database=str(tmp_path / "store"))
    np.save(tmp_path / "q16.npy", q[:, :16])
    with pytest.raises(ValueError, match="different dimensions"):
        bench.prepare_data(str(tmp_path / "d3"), kind="npy", queries=str(tmp_path / "q16.npy"),
                           database=str(tmp_path / "store"))
    with pytest.raises(ValueError, match="--database="):
        bench.prepare_data(str(tmp_path / "d4"), kind="npy", queries=str(tmp_path / "q.npy"),
                           database=str(tmp_path))  # a directory that is not a store
