"""The benchmark harness end to end on a tiny problem (fresh subprocess per backend)."""

import json

from synleak_jax.search.bench import recall_at_k, run_benchmark
import numpy as np


def test_recall_at_k():
    truth = np.array([[1, 2, 3], [4, 5, 6]])
    assert recall_at_k(np.array([[3, 2, 1], [4, 9, 8]]), truth) == 4 / 6


def test_run_benchmark_tiny(tmp_path):
    res = run_benchmark(str(tmp_path), nq=64, ndb=3000, dim=16, k=5, backends=["exact", "numpy", "faiss_flat"],
                        repeats=1, params={"exact": {"db_block": 512}},
                        env={"JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""})
    rows = {r["backend"]: r for r in res["rows"]}
    assert set(rows) == {"exact", "numpy", "faiss_flat"}
    for r in rows.values():
        assert "error" not in r, r
        assert r["recall_at_k"] == 1.0  # all three are exact on separated random data
        assert r["queries_per_s"] > 0 and r["peak_rss_mb"] > r["data_mb"]
        # init = runtime before any data; the target's reading subtracts it, the other does not
        assert 0 < r["runtime_rss_mb"] <= r["init_rss_mb"] < r["peak_rss_mb"]
        assert abs(r["peak_above_init_over_data"] * r["data_mb"] - (r["peak_rss_mb"] - r["init_rss_mb"])) < 1e-6
        assert r["peak_above_init_over_data"] < r["peak_over_data"]
    assert rows["exact"]["params"] == {"db_block": 512}
    on_disk = json.loads((tmp_path / "results.json").read_text())
    assert on_disk["config"]["nq"] == 64
    assert (tmp_path / "recall_vs_qps.png").stat().st_size > 1000
    md = (tmp_path / "results.md").read_text()
    assert "| faiss_flat |" in md and "(peak-init)/data" in md and "one arena (M_ARENA_MAX=1)" in md
    assert on_disk["config"]["malloc_single_arena"] is True
    assert all(json.loads((tmp_path / f"{b}_r0.json").read_text())["malloc_single_arena"] for b in rows)
