"""Stores that verify themselves (issue #13, finding 8): damaged chunks are recomputed on resume and refused on
open, chunks of another identity are never adopted (manifest.json lost), resume after damage ends byte-identical
to an undamaged run, and the opt-in content fingerprint. Every damaged file is made inside the test."""

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from synleak_jax.config import base_config, embed_config
from synleak_jax.data.sources import ImageFolderSource, content_fingerprint
from synleak_jax.embed import door
from synleak_jax.embed.store import MANIFEST, EmbeddingStore, StoreError, identity_digest, read_log
from tests.embed import data_helpers, tiny_model
from tests.embed.test_store import _run, _setup
from tests.seeds import draw_seed

CHUNK_FILES = ("emb.npy", "ids.npy", "labels.npy", "rejects.jsonl")
NUM_CHUNKS = 3  # 45 records, 16 per chunk


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    """Two undamaged stores of the same data: flip off (``plain``) and flip on (``flipped``)."""
    data = _setup(np.random.default_rng(draw_seed("clean stores' data")))
    variables = tiny_model.init_variables(seed=11)
    root = tmp_path_factory.mktemp("clean")
    _run(root / "plain", data, variables)
    _run(root / "flipped", data, variables, flip=True)
    return data, variables, root


def _chunk(store, j, suffix):
    return os.path.join(str(store), "chunks", f"chunk_{j:06d}.{suffix}")


def _assert_chunks_equal(got, want):
    """Every chunk file byte for byte (markers hold run ids and are compared by content hashes instead)."""
    for j in range(NUM_CHUNKS):
        for suffix in CHUNK_FILES:
            with open(_chunk(got, j, suffix), "rb") as a, open(_chunk(want, j, suffix), "rb") as b:
                assert a.read() == b.read(), (j, suffix)
        ma, mb = _marker(got, j), _marker(want, j)
        assert ma["sha256"] == mb["sha256"] and ma["bytes"] == mb["bytes"] and ma["identity"] == mb["identity"]


def _marker(store, j):
    return json.loads(Path(_chunk(store, j, "done.json")).read_text())


def _events(store, run_id, event):
    return sorted(e["chunk"] for e in read_log(store) if e.get("run_id") == run_id and e["event"] == event)


def _last_run_id(store):
    return [e for e in read_log(store) if e["event"] == "run_start"][-1]["run_id"]


def _damage(path, how, rng):
    data = bytearray(Path(path).read_bytes())
    if how == "truncate":
        data = data[: int(rng.integers(0, len(data)))]
    elif how == "flip":
        pos = int(rng.integers(0, len(data)))
        data[pos] ^= 1 << int(rng.integers(0, 8))
    elif how == "append":
        data += b"\0" * int(rng.integers(1, 64))
    elif how == "delete":
        os.unlink(path)
        return
    elif how == "garbage":
        data = bytearray(rng.integers(0, 256, 200, dtype=np.uint8).tobytes())
    with open(path, "wb") as f:
        f.write(bytes(data))


DAMAGES = [("truncate", "emb.npy"), ("truncate", "ids.npy"), ("truncate", "rejects.jsonl"),
           ("flip", "emb.npy"), ("flip", "ids.npy"), ("flip", "labels.npy"), ("flip", "rejects.jsonl"),
           ("append", "emb.npy"), ("delete", "emb.npy"), ("delete", "labels.npy"), ("delete", "rejects.jsonl"),
           ("garbage", "done.json"), ("flip", "done.json")]


@pytest.mark.parametrize("how,suffix", DAMAGES, ids=[f"{h}-{s}" for h, s in DAMAGES])
def test_damaged_chunk_refused_on_open_and_recomputed_byte_identical(clean, tmp_path, rng, how, suffix):
    data, variables, root = clean
    store = tmp_path / "s"
    shutil.copytree(root / "plain", store)
    target = _chunk(store, 1, suffix)
    _damage(target, how, rng)
    # open: a clear StoreError naming the damaged file (never a raw ValueError, never silent)
    with pytest.raises(StoreError, match=r"chunk 1 is damaged: " + target.replace(".", r"\.")) as e:
        EmbeddingStore.open(store)
    assert "rerun synleak-embed with the same settings" in str(e.value)
    try:  # without hashing: sizes, headers and markers are checked; a changed data byte is not seen
        EmbeddingStore.open(store, verify_checksums=False)
        assert how == "flip" and suffix != "done.json"
    except StoreError as e:
        assert "chunk 1 is damaged" in str(e)
    # resume: exactly the damaged chunk is recomputed, and the store ends identical to the undamaged one
    summary = _run(store, data, variables)
    assert summary["chunks_computed"] == [1] and summary["chunks_damaged"] == [1]
    assert summary["chunks_skipped"] == [0, 2]
    run_id = _last_run_id(store)
    assert _events(store, run_id, "chunk_done") == [1] and _events(store, run_id, "chunk_damaged") == [1]
    damaged = next(e for e in read_log(store) if e.get("run_id") == run_id and e["event"] == "chunk_damaged")
    assert damaged["file"] == target
    _assert_chunks_equal(store, root / "plain")
    st = EmbeddingStore.open(store)
    np.testing.assert_array_equal(np.asarray(st.embeddings), np.asarray(EmbeddingStore.open(root / "plain").embeddings))
    # a further rerun finds nothing to do
    assert _run(store, data, variables)["chunks_computed"] == []


@pytest.mark.parametrize("per_file", [
    pytest.param(None, marks=pytest.mark.slow, id="exhaustive"),  # ~4,700 cases, ~35 s
    pytest.param(60, id="sampled")])
def test_every_truncation_and_byte_flip_is_refused_on_open(clean, tmp_path, rng, per_file):
    """Over chunk 1's five files: truncated lengths and a flipped bit at byte offsets (every one, or ``per_file``
    random ones of each kind per file). open() (the check resume uses too) must refuse each one with a StoreError
    naming chunk 1; without hashing, only a changed data byte may pass (counted)."""
    _, _, root = clean
    store = tmp_path / "s"
    shutil.copytree(root / "plain", store)
    cases = refused = unhashed_passed = 0
    for suffix in CHUNK_FILES + ("done.json",):
        path = _chunk(store, 1, suffix)
        original = Path(path).read_bytes()
        offsets = np.arange(len(original))
        if per_file is not None and len(offsets) > per_file:
            offsets = np.sort(rng.choice(offsets, per_file, replace=False))
        damaged = [original[:n] for n in offsets]
        for pos in offsets:
            b = bytearray(original)
            b[pos] ^= 1 << int(rng.integers(0, 8))
            damaged.append(bytes(b))
        for data in damaged:
            with open(path, "wb") as f:
                f.write(data)
            cases += 1
            with pytest.raises(StoreError, match="chunk 1 is damaged"):
                EmbeddingStore.open(store)
            refused += 1
            try:
                EmbeddingStore.open(store, verify_checksums=False)
                unhashed_passed += 1
            except StoreError as e:
                assert "chunk 1 is damaged" in str(e)
        with open(path, "wb") as f:
            f.write(original)
    EmbeddingStore.open(store)
    print(f"{cases} damaged chunk files, {refused} refused with verification; without hashing {unhashed_passed} "
          "passed (changed data bytes)")
    assert refused == cases >= (4000 if per_file is None else 400)


def test_lost_manifest_same_settings_adopts_verified_chunks(clean, tmp_path):
    data, variables, root = clean
    store = tmp_path / "s"
    shutil.copytree(root / "plain", store)
    os.unlink(store / MANIFEST)
    summary = _run(store, data, variables)
    assert summary["chunks_computed"] == [] and summary["chunks_damaged"] == []
    _assert_chunks_equal(store, root / "plain")
    # an unreadable manifest is treated as lost (the markers carry the identity), not a crash
    (store / MANIFEST).write_bytes(b"{\x00 not json")
    summary = _run(store, data, variables)
    assert summary["chunks_computed"] == []
    assert json.loads((store / MANIFEST).read_text())["flip"] is False
    EmbeddingStore.open(store)


def test_lost_manifest_other_settings_recomputes_every_chunk(clean, tmp_path):
    """The finding: with manifest.json lost, a rerun with other settings adopted the old chunks."""
    data, variables, root = clean
    store = tmp_path / "s"
    shutil.copytree(root / "plain", store)
    os.unlink(store / MANIFEST)
    summary = _run(store, data, variables, flip=True)
    assert summary["chunks_computed"] == [0, 1, 2] and summary["chunks_damaged"] == [0, 1, 2]
    reasons = [e["reason"] for e in read_log(store) if e["event"] == "chunk_damaged"]
    assert len(reasons) == 3 and all("another store identity" in r for r in reasons)
    _assert_chunks_equal(store, root / "flipped")
    assert EmbeddingStore.open(store).manifest["flip"] is True


def test_chunk_of_another_identity_is_refused_and_recomputed(clean, tmp_path):
    """A whole, self-consistent chunk copied in from a store of other settings: its sha256s match its marker,
    only the identity tells it apart."""
    data, variables, root = clean
    store = tmp_path / "s"
    shutil.copytree(root / "plain", store)
    for suffix in CHUNK_FILES + ("done.json",):
        shutil.copyfile(_chunk(root / "flipped", 2, suffix), _chunk(store, 2, suffix))
    with pytest.raises(StoreError, match=r"chunk 2 is damaged: .*chunk_000002\.done\.json: chunk was computed for "
                                         r"another store identity"):
        EmbeddingStore.open(store)
    summary = _run(store, data, variables)
    assert summary["chunks_computed"] == [2] and summary["chunks_damaged"] == [2]
    _assert_chunks_equal(store, root / "plain")


def test_markers_record_identity_and_sizes(clean):
    _, _, root = clean
    st = EmbeddingStore.open(root / "plain")
    for j in range(NUM_CHUNKS):
        marker = _marker(root / "plain", j)
        assert marker["identity"] == identity_digest(st.manifest)
        for key, suffix in zip(("emb", "ids", "labels", "rejects"), CHUNK_FILES):
            assert marker["bytes"][key] == os.path.getsize(_chunk(root / "plain", j, suffix))
    assert identity_digest(st.manifest) != identity_digest(EmbeddingStore.open(root / "flipped").manifest)
    # volatile fields (throughput, versions) do not change the identity
    assert identity_digest({**st.manifest, "throughput": None, "versions": {}}) == identity_digest(st.manifest)


def test_legacy_markers_without_identity(clean, tmp_path):
    """Markers written before they recorded identities: readable (sha256-checked), adopted on resume only under a
    matching manifest.json, recomputed when the manifest is lost."""
    data, variables, root = clean
    store = tmp_path / "s"
    shutil.copytree(root / "plain", store)
    for j in range(NUM_CHUNKS):
        marker = _marker(store, j)
        del marker["identity"], marker["bytes"], marker["marker_sha256"]
        with open(_chunk(store, j, "done.json"), "w") as f:
            json.dump(marker, f)
    EmbeddingStore.open(store)
    assert _run(store, data, variables)["chunks_computed"] == []
    os.unlink(store / MANIFEST)
    assert _run(store, data, variables)["chunks_computed"] == [0, 1, 2]
    _assert_chunks_equal(store, root / "plain")


# --------------------------------------------------------------------------------------- door: messages


def _tiny_matcher():
    return door.load_matcher("tiny_test_net", "", field="--config.weights.tiny_test_net", random_init=True, seed=1)


def _settings(flip):
    s = base_config().embed
    s.batch_size, s.chunk_batches, s.flip = 8, 1, flip
    return s


@pytest.mark.parametrize("field,names,refuses", [
    ("--config.data.members", ["--config.stores_dir"], ["--overwrite"]),  # the audit has no overwrite option
    ("--config.data", ["--config.output", "--overwrite"], []),  # synleak-embed has both
])
def test_store_mismatch_message_names_the_programs_real_options(tmp_path, rng, field, names, refuses):
    root = str(tmp_path / "ds")
    data_helpers.make_png_folder(root, rng, num_ids=2, per_id=3, bad=0)
    d = embed_config().data
    d.path = root
    ds = door.open_data(d, field)
    matcher = _tiny_matcher()
    door.ensure_store(ds, matcher, _settings(False), str(tmp_path / "s"))
    with pytest.raises(door.DoorError) as e:
        door.ensure_store(ds, matcher, _settings(True), str(tmp_path / "s"))
    msg = str(e.value)
    assert 'flip: stored false vs requested true' in msg
    for name in names:
        assert name in msg
    for name in refuses:
        assert name not in msg


# --------------------------------------------------------------------------------------- content fingerprint


def _stored_png(path, rng):
    """A 16x16 PNG saved without compression: its size depends on the dimensions only, not on the pixels."""
    Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(path, compress_level=0)


def test_content_fingerprint_sees_a_same_size_change(tmp_path, rng):
    root = tmp_path / "ds"
    data_helpers.make_png_folder(str(root), rng, num_ids=2, per_id=3, bad=1)
    victim = root / "id_001" / "img_001.png"
    _stored_png(victim, rng)
    src = ImageFolderSource(str(root))
    listing, content = src.fingerprint(), content_fingerprint(src)
    assert content_fingerprint(ImageFolderSource(str(root))) == content  # deterministic, rejects included
    size = victim.stat().st_size
    _stored_png(victim, rng)
    assert victim.stat().st_size == size
    again = ImageFolderSource(str(root))
    assert again.fingerprint() == listing  # the listing cannot see it (documented)
    assert content_fingerprint(again) != content


def test_content_fingerprint_option_through_the_door(tmp_path, rng):
    root = tmp_path / "ds"
    data_helpers.make_png_folder(str(root), rng, num_ids=2, per_id=3, bad=0)
    victim = root / "id_000" / "img_002.png"
    _stored_png(victim, rng)
    matcher = _tiny_matcher()

    def ensure(fingerprint, out):
        d = embed_config().data
        d.path, d.fingerprint = str(root), fingerprint
        return door.ensure_store(door.open_data(d, "--config.data"), matcher, _settings(False), str(out))

    by_listing = ensure("listing", tmp_path / "listing")
    by_content = ensure("content", tmp_path / "content")
    m = by_content.manifest["dataset"]
    assert m["fingerprint_kind"] == "content" and m["listing_fingerprint"] == by_listing.manifest["dataset"][
        "fingerprint"] != m["fingerprint"]
    _stored_png(victim, rng)  # same size, other pixels
    # listing: the store is reused, the changed image keeps its old embedding (the documented limit)
    reused = ensure("listing", tmp_path / "listing")
    np.testing.assert_array_equal(np.asarray(reused.embeddings), np.asarray(by_listing.embeddings))
    # content: the changed dataset is another identity, refused naming the field
    with pytest.raises(door.DoorError, match=r"dataset\.fingerprint: stored"):
        ensure("content", tmp_path / "content")
    # kind=store over a content-fingerprinted store still finds its (listing-equal) source for names
    sd = embed_config().data
    sd.kind, sd.path = "store", str(tmp_path / "content")
    opened = door.open_store(door.open_data(sd, "--config.data.members"), matcher)
    assert opened.describe(0) == by_content.describe(0) and opened.has_images


def test_fingerprint_option_is_validated():
    from synleak_jax.config import ConfigError, validate_embed

    cfg = embed_config()
    cfg.data.path, cfg.output, cfg.model, cfg.random_init = "/", "/tmp/x", "tiny_test_net", True
    cfg.data.kind, cfg.data.fingerprint = "image_folder", "mtime"
    with pytest.raises(ConfigError, match=r"--config.data.fingerprint='mtime': choose one of listing, content"):
        validate_embed(cfg)
