"""Store: atomic chunks, resume, refusal of mismatching manifests, read API over memory-mapped chunks."""

import json
import os

import jax
import numpy as np
import pytest

from synleak_jax.embed import engine as eng
from synleak_jax.embed.store import ChunkPlan, EmbeddingStore, StoreError, StoreMismatchError, read_log
from synleak_jax.models import registry
from tests.embed import tiny_model

NAME = "tiny_test_net"


def _setup(rng, n=45, reject=(3, 20, 44)):
    spec = registry.get_spec(NAME)
    images = spec.normalize(rng.integers(0, 256, (n, 16, 16, 3)).astype(np.uint8))
    labels = rng.integers(0, 5, n)
    codes = np.zeros(n, np.int32)
    codes[list(reject)] = 3
    return spec, images, labels, codes


def _manifest(spec, n, *, batch=8, chunk_batches=2, weights_sha="a" * 64, flip=False, preprocessing=None):
    return eng.build_manifest(
        model_name=NAME, model_family="tiny_test", spec=spec,
        weights={"sha256": weights_sha, "source": "w.pt", "format": "test"},
        dataset={"kind": "array", "fingerprint": "fp", "num_records": n, "num_classes": 5},
        preprocessing=preprocessing or {"alignment": "none", "resize": [16, 16]},
        flip=flip, flip_combine="sum" if flip else "none", normalized=True,
        compute_dtype="float32", storage_dtype="float32", plan=ChunkPlan(n, batch, chunk_batches))


def _batcher(images, labels, codes):
    def batches_for(ids, local_batch):
        return eng.array_batches(images[ids], ids, local_batch, labels[ids], codes[ids])
    return batches_for


def _run(path, rng_data, variables, **kw):
    spec, images, labels, codes = rng_data
    man_kw = {k: kw.pop(k) for k in list(kw) if k in ("weights_sha", "flip", "preprocessing")}
    e = eng.EmbeddingEngine(registry.get_model(NAME), variables, spec, flip=man_kw.get("flip", False))
    return eng.embed_to_store(str(path), e, _manifest(spec, len(images), **man_kw),
                              _batcher(images, labels, codes), describe=lambda i: f"img_{i}.jpg",
                              reasons={3: "not an image"}, **kw)


def test_store_round_trip(tmp_path, rng):
    data = _setup(rng)
    spec, images, labels, codes = data
    variables = tiny_model.init_variables(seed=1)
    summary = _run(tmp_path / "s", data, variables)
    assert summary["chunks_computed"] == [0, 1, 2]  # 45 records / 16 per chunk
    st = EmbeddingStore.open(tmp_path / "s", verify_checksums=True)
    good = np.nonzero(codes == 0)[0]
    np.testing.assert_array_equal(st.record_ids, good)
    np.testing.assert_array_equal(st.labels, labels[good])
    ref = eng.embed_array(eng.EmbeddingEngine(registry.get_model(NAME), variables, spec), images[good], 8)
    assert st.embeddings.shape == (len(good), 16) and st.embeddings.dtype == np.float32
    np.testing.assert_allclose(st.embeddings[:], ref, atol=1e-6)
    # slicing across chunk boundaries, single rows, fancy indexing, strided slices
    np.testing.assert_array_equal(st.embeddings[10:31], np.asarray(st.embeddings)[10:31])
    np.testing.assert_array_equal(st.embeddings[-1], np.asarray(st.embeddings)[-1])
    idx = np.array([40, 0, 17, 16, 15])
    np.testing.assert_array_equal(st.embeddings[idx], np.asarray(st.embeddings)[idx])
    np.testing.assert_array_equal(st.embeddings[1:30:7], np.asarray(st.embeddings)[1:30:7])
    assert [r["record_id"] for r in st.rejects] == [3, 20, 44]
    assert st.rejects[0] == {"record_id": 3, "path": "img_3.jpg", "code": 3, "reason": "not an image"}
    m = st.manifest
    assert m["weights"]["sha256"] == "a" * 64 and m["plan"]["num_chunks"] == 3
    assert m["throughput"]["rows"] == 45 and m["versions"]["jax"] == jax.__version__
    # chunks are read with positioned reads (no memory map whose touched pages would count as our memory)
    assert not isinstance(st.embeddings[0:5], np.memmap) and st.embeddings[0:5].base is None


def test_rerun_skips_done_chunks_and_recomputes_missing(tmp_path, rng):
    data = _setup(rng)
    variables = tiny_model.init_variables(seed=2)
    _run(tmp_path / "s", data, variables)
    before = np.asarray(EmbeddingStore.open(tmp_path / "s").embeddings)
    # simulate a kill after chunk 1's files but before its marker
    os.unlink(tmp_path / "s" / "chunks" / "chunk_000001.done.json")
    with pytest.raises(StoreError, match=r"incomplete: 1 of 3 chunks missing \(chunks 1\)"):
        EmbeddingStore.open(tmp_path / "s")
    summary = _run(tmp_path / "s", data, variables)
    assert summary["chunks_computed"] == [1] and summary["chunks_skipped"] == [0, 2]
    np.testing.assert_array_equal(np.asarray(EmbeddingStore.open(tmp_path / "s").embeddings), before)
    done = [e["chunk"] for e in read_log(tmp_path / "s") if e["event"] == "chunk_done"]
    assert sorted(done) == [0, 1, 1, 2]
    # a rerun of a complete store computes nothing and keeps the throughput of the run that did the work
    summary = _run(tmp_path / "s", data, variables)
    assert summary["chunks_computed"] == [] and summary["rows"] == 0
    assert EmbeddingStore.open(tmp_path / "s").manifest["throughput"]["chunks_computed"] == [1]


@pytest.mark.parametrize("change,field", [
    ({"weights_sha": "b" * 64}, "weights.sha256"),
    ({"flip": True}, "flip"),
    ({"preprocessing": {"alignment": "arcface112", "resize": [16, 16]}}, "preprocessing.alignment"),
])
def test_changed_settings_refused_then_overwritten(tmp_path, rng, change, field):
    data = _setup(rng, n=20, reject=())
    variables = tiny_model.init_variables(seed=4)
    _run(tmp_path / "s", data, variables)
    with pytest.raises(StoreMismatchError, match=rf"{field}: stored .* vs requested") as ei:
        _run(tmp_path / "s", data, variables, **change)
    assert [d[0] for d in ei.value.diffs] == [field] or field in [d[0] for d in ei.value.diffs]
    summary = _run(tmp_path / "s", data, variables, overwrite=True, **change)
    assert summary["chunks_computed"] == [0, 1]
    st = EmbeddingStore.open(tmp_path / "s")
    stored = json.loads(json.dumps(st.manifest))
    assert not eng_identity_differs(stored, change)


def eng_identity_differs(stored, change):
    if "weights_sha" in change:
        return stored["weights"]["sha256"] != change["weights_sha"]
    if "flip" in change:
        return stored["flip"] != change["flip"]
    return stored["preprocessing"] != change["preprocessing"]


def test_commit_rejects_incomplete_chunk(tmp_path):
    from synleak_jax.embed.store import StoreWriter
    spec = registry.get_spec(NAME)
    w = StoreWriter(str(tmp_path / "s"), _manifest(spec, 20))
    with pytest.raises(StoreError, match=r"do not cover record ids \[0, 16\)"):
        w.commit_chunk(0, np.arange(15), np.zeros(15), np.zeros((15, 16), np.float32), [])
    assert not w.is_done(0)


def test_changed_model_refused(tmp_path, rng):
    data = _setup(rng, n=20, reject=())
    variables = tiny_model.init_variables(seed=6)
    _run(tmp_path / "s", data, variables)
    spec2 = registry.get_spec("tiny_test_euclid")
    man = eng.build_manifest(
        model_name="tiny_test_euclid", model_family="tiny_test", spec=spec2,
        weights={"sha256": "a" * 64, "source": "w.pt", "format": "test"},
        dataset={"kind": "array", "fingerprint": "fp", "num_records": 20, "num_classes": 5},
        preprocessing={"alignment": "none", "resize": [16, 16]}, flip=False, flip_combine="none",
        normalized=False, compute_dtype="float32", storage_dtype="float32", plan=ChunkPlan(20, 8, 2))
    from synleak_jax.embed.store import StoreWriter
    with pytest.raises(StoreMismatchError) as ei:
        StoreWriter(str(tmp_path / "s"), man)
    fields = {d[0]: (d[1], d[2]) for d in ei.value.diffs}
    assert fields["model.name"] == ("tiny_test_net", "tiny_test_euclid")
    assert "metric" in fields and "input_spec.channel_order" in fields and "embedding_dim" in fields
    assert "model.name: stored \"tiny_test_net\" vs requested \"tiny_test_euclid\"" in str(ei.value)
    # the refused request changed nothing on disk
    assert EmbeddingStore.open(tmp_path / "s").manifest["model"]["name"] == "tiny_test_net"
