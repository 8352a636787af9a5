"""sharded_exact_topk: identical to exact_topk on 1, 2 and 8 forced CPU devices, and across 2 processes."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from synleak_jax.search import exact_topk
from synleak_jax.search.sharded import make_search_mesh, sharded_exact_topk
from tests.search.helpers import assert_topk_matches

ROOT = Path(__file__).resolve().parents[2]


def _data(rng, nq=50, ndb=3001, d=32):
    q = rng.standard_normal((nq, d)).astype(np.float32)
    db = rng.standard_normal((ndb, d)).astype(np.float32)
    dup = np.sort(rng.choice(np.arange(10, ndb), size=min(40, ndb // 4), replace=False))
    db[dup] = db[7]  # exact ties scattered over every shard
    q[:5] = db[7]
    return q, db


def test_identical_on_1_2_8_devices(rng):
    assert len(jax.devices()) == 8
    q, db = _data(rng)
    s0, i0 = exact_topk(q, db, 12, query_block=16, db_block=128)
    assert_topk_matches(s0, i0, q, db, 12)
    assert i0[0, 0] == 7 and (np.diff(i0[:5], axis=1) > 0).all()  # ties: lower index first
    for ndev in (1, 2, 8):
        mesh = make_search_mesh(devices=jax.devices()[:ndev])
        for chunk in (None, 256):
            s, i = sharded_exact_topk(q, db, 12, mesh=mesh, query_block=16, db_block=128, db_chunk_rows=chunk)
            np.testing.assert_array_equal(i, i0)
            np.testing.assert_array_equal(s, s0)


def test_query_axis_and_certified(rng):
    q, db = _data(rng, nq=37, ndb=1500, d=16)
    s0, i0 = exact_topk(q, db, 7, query_block=8, db_block=64)
    mesh = make_search_mesh(num_db=4, num_q=2)
    s, i = sharded_exact_topk(q, db, 7, mesh=mesh, query_axis="q", query_block=8, db_block=64)
    np.testing.assert_array_equal(i, i0)
    np.testing.assert_array_equal(s, s0)
    s, i = sharded_exact_topk(q, db, 7, mesh=mesh, query_axis="q", query_block=8, db_block=64,
                              precision="bf16_certified")
    assert_topk_matches(s, i, q, db, 7)


def test_errors(rng):
    q, db = _data(rng, nq=4, ndb=40, d=8)
    with pytest.raises(ValueError, match="lack db_axis"):
        sharded_exact_topk(q, db, 3, mesh=make_search_mesh(), db_axis="rows")
    with pytest.raises(ValueError, match="k=41 exceeds"):
        sharded_exact_topk(q, db, 41)
    with pytest.raises(ValueError, match="does not match 8 devices"):
        make_search_mesh(num_db=3)


def _free_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _two_processes(tmp_path, local_devices, seed):
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_PLATFORMS")}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    procs = [subprocess.Popen([sys.executable, str(ROOT / "tests/search/mp_worker.py"), str(port), str(p),
                               str(local_devices[p]), str(seed), str(tmp_path / f"out{p}.npz")],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
             for p in range(2)]
    logs = [p.communicate(timeout=240)[0].decode(errors="replace") for p in procs]
    for p, log in zip(procs, logs):
        assert p.returncode == 0, log[-3000:]
    return [np.load(tmp_path / f"out{p}.npz") for p in range(2)]


def _worker_data(seed):  # must mirror mp_worker.py
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((45, 24)).astype(np.float32)
    db = rng.standard_normal((2003, 24)).astype(np.float32)
    db /= np.linalg.norm(db, axis=1, keepdims=True)  # unit rows: the planted copy of db[5] is the top-1
    db[300:330] = db[5]
    q[:3] = db[5]
    return q, db


@pytest.mark.parametrize("local_devices", [(2, 2), pytest.param((1, 3), marks=pytest.mark.slow)])
def test_two_processes_match_single_process(rng, tmp_path, local_devices):
    seed = int(rng.integers(0, 2**31))
    outs = _two_processes(tmp_path, local_devices, seed)
    q, db = _worker_data(seed)
    s0, i0 = exact_topk(q, db, 11, query_block=16, db_block=128)
    assert i0[0, 0] == 5 and list(i0[0, 1:]) == list(range(300, 310))
    for out in outs:
        keys = ["db"] + (["qdb"] if sum(local_devices) % 2 == 0 else [])
        for key in keys:
            np.testing.assert_array_equal(out[f"{key}_i"], i0)
            np.testing.assert_array_equal(out[f"{key}_s"], s0)
