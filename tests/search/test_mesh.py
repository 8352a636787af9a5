"""exact_topk on a mesh: identical on 1, 2 and 8 forced CPU devices, streamed or resident, and across 2 processes."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from synleak_jax.search import exact_topk
from synleak_jax.search import make_mesh
from tests.search.helpers import assert_topk_matches

ROOT = Path(__file__).resolve().parents[2]


def _data(rng, nq=50, ndb=3001, d=32):
    q = rng.standard_normal((nq, d)).astype(np.float32)
    db = rng.standard_normal((ndb, d)).astype(np.float32)
    dup = np.sort(rng.choice(np.arange(10, ndb), size=min(40, ndb // 4), replace=False))
    db[dup] = db[7]  # exact ties scattered over every shard
    q[:5] = db[7]
    return q, db


@pytest.mark.parametrize("precision", ["float32", "bf16_certified"])
def test_identical_on_1_2_8_devices(rng, precision):
    assert len(jax.devices()) == 8
    q, db = _data(rng)
    # The reference is the same precision on one device (the certified mode rescores in another float32
    # evaluation order, so its scores may differ from the float32 pass in the last bit; both are exact).
    s0, i0 = exact_topk(q, db, 12, query_block=16, db_block=128, precision=precision,
                        mesh=make_mesh(jax.devices()[:1]))
    assert_topk_matches(s0, i0, q, db, 12)
    assert i0[0, 0] == 7 and (np.diff(i0[:5], axis=1) > 0).all()  # ties: lower index first
    for ndev in (1, 2, 8):
        mesh = make_mesh(jax.devices()[:ndev])
        for chunk in (None, 256):
            s, i = exact_topk(q, db, 12, mesh=mesh, query_block=16, db_block=128, db_chunk_rows=chunk,
                              query_chunk_rows=32, precision=precision)
            np.testing.assert_array_equal(i, i0)
            np.testing.assert_array_equal(s, s0)


def test_errors(rng):
    q, db = _data(rng, nq=4, ndb=40, d=8)
    with pytest.raises(ValueError, match="k=41 exceeds"):
        exact_topk(q, db, 41, mesh=make_mesh())
    bad = jax.make_mesh((2, 4), ("q", "db"), axis_types=(jax.sharding.AxisType.Explicit,) * 2)
    with pytest.raises(ValueError, match="1-D"):
        exact_topk(q, db, 3, mesh=bad, precision="float32")


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
    s0, i0 = exact_topk(q, db, 11, query_block=16, db_block=128, precision="float32")
    assert i0[0, 0] == 5 and list(i0[0, 1:]) == list(range(300, 310))
    s1, i1 = exact_topk(q, db, 11, query_block=16, db_block=128, precision="bf16_certified")
    for out in outs:
        for key, (sr, ir) in (("f32", (s0, i0)), ("f32_stream", (s0, i0)), ("bf16", (s1, i1))):
            np.testing.assert_array_equal(out[f"{key}_i"], ir)
            np.testing.assert_array_equal(out[f"{key}_s"], sr)
