"""synleak-knn: results equal the float64 brute force, incremental parts, resume, refusal of changed settings."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from absl import app

from synleak_jax.cli.knn import run_knn
from synleak_jax.config import knn_config as default_config
from tests.search.helpers import assert_topk_matches

ROOT = Path(__file__).resolve().parents[2]


def _cfg(tmp_path, q, db, **knn):
    np.save(tmp_path / "q.npy", q)
    np.save(tmp_path / "db.npy", db)
    c = default_config()
    c.queries, c.database, c.output = str(tmp_path / "q.npy"), str(tmp_path / "db.npy"), str(tmp_path / "out")
    c.knn.write_block = 16
    c.knn.query_block = 8
    c.knn.db_block = 128
    c.knn.update(knn)
    return c


def test_npy_inputs_parts_and_resume(rng, tmp_path):
    q = rng.standard_normal((45, 12)).astype(np.float32)
    db = rng.standard_normal((700, 12)).astype(np.float32)
    cfg = _cfg(tmp_path, q, db, k=5)
    final = run_knn(cfg)
    with np.load(final) as z:
        s, i = z["scores"], z["indices"]
    assert_topk_matches(s, i.astype(np.int32), q, db, 5)
    parts = sorted(os.listdir(tmp_path / "out" / "parts"))
    assert parts == ["part_000000.npz", "part_000001.npz", "part_000002.npz"]
    # resume: remove one part and poison another; only the missing one is recomputed
    os.remove(tmp_path / "out" / "parts" / "part_000001.npz")
    p2 = tmp_path / "out" / "parts" / "part_000002.npz"
    with np.load(p2) as z:
        kept = dict(z)
    kept["scores"] = kept["scores"] + 100.0
    np.savez(p2, **kept)
    final = run_knn(cfg)
    with np.load(final) as z:
        np.testing.assert_array_equal(z["indices"][:32], i[:32])
        np.testing.assert_array_equal(z["scores"][32:], s[32:] + 100.0)  # untouched part reused, not recomputed


def test_changed_settings_refused_then_overwrite(rng, tmp_path):
    q = rng.standard_normal((10, 4)).astype(np.float32)
    db = rng.standard_normal((50, 4)).astype(np.float32)
    cfg = _cfg(tmp_path, q, db, k=3)
    run_knn(cfg)
    cfg.knn.k = 4
    with pytest.raises(app.UsageError, match="different settings \\(k"):
        run_knn(cfg)
    cfg.overwrite = True
    with np.load(run_knn(cfg)) as z:
        assert z["indices"].shape == (10, 4)


def test_bad_inputs(rng, tmp_path):
    q = rng.standard_normal((10, 4)).astype(np.float32)
    db = rng.standard_normal((50, 5)).astype(np.float32)
    cfg = _cfg(tmp_path, q, db)
    with pytest.raises(app.UsageError, match="equal D"):
        run_knn(cfg)
    cfg.database = str(tmp_path / "missing.npy")
    with pytest.raises(app.UsageError, match="neither an embedding store directory nor a .npy file"):
        run_knn(cfg)


def test_store_inputs_map_record_ids(rng, tmp_path):
    from synleak_jax.embed.store import ChunkPlan, StoreWriter

    def make_store(path, x, reject_every):
        n = x.shape[0]
        plan = ChunkPlan(num_records=n, batch_size=8, chunk_batches=2)
        w = StoreWriter(str(path), {"plan": plan.to_dict(), "embedding_dim": x.shape[1], "storage_dtype": "float32",
                                    "model": {"name": "test"}})
        keep_all = []
        for j in range(plan.num_chunks):
            a, b = plan.chunk_range(j)
            ids = np.arange(a, b)
            rej = ids[ids % reject_every == 3]
            keep = ids[ids % reject_every != 3]
            keep_all.append(keep)
            w.commit_chunk(j, keep, np.zeros(len(keep)), x[keep], [{"record_id": int(r)} for r in rej])
        return np.concatenate(keep_all)

    qx = rng.standard_normal((30, 8)).astype(np.float32)
    dbx = rng.standard_normal((100, 8)).astype(np.float32)
    q_ids = make_store(tmp_path / "qs", qx, 7)
    db_ids = make_store(tmp_path / "dbs", dbx, 5)
    c = default_config()
    c.queries, c.database, c.output = str(tmp_path / "qs"), str(tmp_path / "dbs"), str(tmp_path / "out")
    c.knn.k = 4
    with np.load(run_knn(c)) as z:
        np.testing.assert_array_equal(z["query_record_ids"], q_ids)
        assert_topk_matches(z["scores"], z["indices"].astype(np.int32), qx[q_ids], dbx[db_ids], 4)
        np.testing.assert_array_equal(z["db_record_ids"], db_ids[z["indices"]])


def test_console_entry_point(rng, tmp_path):
    q = rng.standard_normal((9, 6)).astype(np.float32)
    db = rng.standard_normal((40, 6)).astype(np.float32)
    np.save(tmp_path / "q.npy", q)
    np.save(tmp_path / "db.npy", db)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-m", "synleak_jax.cli.knn", f"--config.queries={tmp_path / 'q.npy'}",
                           f"--config.database={tmp_path / 'db.npy'}", f"--config.output={tmp_path / 'o'}",
                           "--config.knn.k=3"], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    with np.load(tmp_path / "o" / "topk.npz") as z:
        assert_topk_matches(z["scores"], z["indices"].astype(np.int32), q, db, 3)
