"""Engine fed by the real data pipeline (grain) over pending chunks: store rows equal an independent reference."""

import os

import numpy as np

from synleak_jax.data import rejects
from synleak_jax.data.sources import ImageFolderSource
from synleak_jax.embed import engine as eng
from synleak_jax.embed import feed
from synleak_jax.embed.store import ChunkPlan, EmbeddingStore
from synleak_jax.models import registry
from tests.embed import data_helpers, tiny_model


def test_pipeline_to_store_matches_reference(tmp_path, rng):
    root = str(tmp_path / "ds")
    data_helpers.make_png_folder(root, rng, num_ids=3, per_id=9, bad=2)
    src = ImageFolderSource(root)
    spec = registry.get_spec("tiny_test_net")
    model = registry.get_model("tiny_test_net")
    variables = tiny_model.init_variables(seed=int(rng.integers(1000)))
    e = eng.EmbeddingEngine(model, variables, spec, flip=True)
    man = eng.build_manifest(
        model_name="tiny_test_net", model_family="tiny_test", spec=spec, weights={"random_init": True, "seed": 0},
        dataset={"kind": "image_folder", "fingerprint": src.fingerprint(), "num_records": len(src),
                 "num_classes": src.num_classes},
        preprocessing={"alignment": "none"}, flip=True, flip_combine=e.flip_combine, normalized=True,
        compute_dtype="float32", storage_dtype="float32", plan=ChunkPlan(len(src), 8, 1))
    # Pretend chunk 1 is already done by removing it afterwards; first a full run.
    out = str(tmp_path / "store")
    eng.embed_to_store(out, e, man, feed.pipeline_batches(src, spec), describe=src.describe,
                       reasons=rejects.REASONS)
    st = EmbeddingStore.open(out)
    assert len(src) == 29 and len(st) == 27
    assert sorted(os.path.basename(r["path"]) for r in st.rejects) == ["broken_0.png", "broken_1.png"]
    assert all(r["reason"] == rejects.REASONS[r["code"]] for r in st.rejects)
    paths = [src.describe(int(i)) for i in st.record_ids]
    ref = data_helpers.reference_embeddings(paths, spec, model, variables, flip=True)
    assert np.max(np.abs(np.asarray(st.embeddings) - ref)) <= 1e-5
    np.testing.assert_array_equal(st.labels, [src.label(int(i)) for i in st.record_ids])
    # Resume: only the missing chunk is fed through the pipeline again (subset of the source), same rows.
    os.unlink(os.path.join(out, "chunks", "chunk_000001.done.json"))
    summary = eng.embed_to_store(out, e, man, feed.pipeline_batches(src, spec), describe=src.describe,
                                 reasons=rejects.REASONS)
    assert summary["chunks_computed"] == [1] and summary["rows"] == 8
    np.testing.assert_array_equal(np.asarray(EmbeddingStore.open(out).embeddings), np.asarray(st.embeddings))


def test_subset_source_maps_global_ids(tmp_path, rng):
    root = str(tmp_path / "ds")
    data_helpers.make_png_folder(root, rng, num_ids=2, per_id=5, bad=0)
    src = ImageFolderSource(root)
    ids = np.array([7, 2, 9])
    sub = feed.SubsetSource(src, ids)
    assert len(sub) == 3 and sub.describe(1) == src.describe(2) and sub.label(2) == src.label(9)
    assert sub[0] == src[7]
    batches = list(feed.pipeline_batches(src, registry.get_spec("tiny_test_net"))(ids, 2))
    got = np.concatenate([b["record_id"] for b in batches])
    np.testing.assert_array_equal(got, [7, 2, 9, -1])
