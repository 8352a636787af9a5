"""embed.door: the one door from data + matcher to embeddings; errors name the --config field."""

import numpy as np
import pytest

from synleak_jax.config import ConfigError, embed_config
from synleak_jax.embed import door
from tests.embed import data_helpers, tiny_model  # noqa: F401  (registers tiny_test_net)


def _cfg(root, out):
    cfg = embed_config()
    cfg.data.path, cfg.output, cfg.model = root, out, "tiny_test_net"
    cfg.random_init, cfg.seed, cfg.batch_size, cfg.chunk_batches = True, 1, 8, 1
    return cfg


def test_embed_from_config_and_reuse(tmp_path, rng):
    root = str(tmp_path / "ds")
    data_helpers.make_png_folder(root, rng, num_ids=2, per_id=6, bad=1)
    cfg = _cfg(root, str(tmp_path / "s"))
    st = door.embed_from_config(cfg)
    assert len(st) == 12 and len(st.rejects) == 1 and st.manifest["weights"]["random_init"] is True
    assert st.manifest["dataset_path"] == root and st.manifest["flip"] is True
    assert st.manifest["dataset"]["kind"] == "image_folder"
    np.testing.assert_allclose(np.linalg.norm(np.asarray(st.embeddings), axis=1), 1.0, atol=1e-6)
    assert st.describe(0).startswith(root) and st.read_rgb(0).shape[-1] == 3
    # the same request again reuses the store (no difference in identity)
    st2 = door.embed_from_config(cfg)
    np.testing.assert_array_equal(np.asarray(st2.embeddings), np.asarray(st.embeddings))
    cfg.storage_dtype = "float16"
    with pytest.raises(door.DoorError, match='storage_dtype: stored "float32" vs requested "float16"'):
        door.embed_from_config(cfg)
    # kind=store: the store as it is, checked against the matcher
    ds = door.open_data(_store_data(str(tmp_path / "s")), "--config.data.members")
    m = door.load_matcher("tiny_test_net", "", field="--config.weights.tiny_test_net", random_init=True, seed=1)
    opened = door.open_store(ds, m)
    np.testing.assert_array_equal(np.asarray(opened.embeddings), np.asarray(st.embeddings))
    assert opened.describe(3) == st.describe(3)  # the source is found again through the manifest
    other = door.load_matcher("dlib_resnet_v1", "", field="--config.weights.dlib_resnet_v1")
    with pytest.raises(door.DoorError, match=r"--config.data.members.path=.*does not fit matcher dlib_resnet_v1"):
        door.open_store(ds, other)


def _store_data(path):
    d = embed_config().data
    d.kind, d.path = "store", path
    return d


@pytest.mark.parametrize("field,value,msg", [
    ("weights", "", "--config.weights is required"),
    ("model", "no_such_net", "--config.model: unknown matcher 'no_such_net'"),
    ("data.kind", "zip", "--config.data.kind='zip'"),
    ("data.align", "dlib", "--config.data.align='dlib'"),
    ("storage_dtype", "int8", "--config.storage_dtype='int8'"),
])
def test_config_errors_name_the_field(tmp_path, rng, field, value, msg):
    root = str(tmp_path / "ds")
    data_helpers.make_png_folder(root, rng, num_ids=1, per_id=2, bad=0)
    cfg = _cfg(root, str(tmp_path / "s"))
    if field == "weights":
        cfg.random_init = False
    section, _, key = field.rpartition(".")
    (cfg.data if section == "data" else cfg)[key] = value
    with pytest.raises(ConfigError, match=msg.replace("(", r"\(")):
        door.embed_from_config(cfg)
    assert not (tmp_path / "s").exists()  # nothing written


def test_layout_hints(tmp_path, rng):
    flat = tmp_path / "flat"
    data_helpers.make_png_folder(str(tmp_path / "ids"), rng, num_ids=1, per_id=3, bad=0)
    flat.mkdir()
    for f in (tmp_path / "ids").rglob("*.png"):
        (flat / f.name).write_bytes(f.read_bytes())
    d = embed_config().data
    d.kind, d.path = "image_folder", str(flat)
    with pytest.raises(door.DoorError, match="did you mean kind=flat_folder"):
        door.open_data(d, "--config.data.synthetic")
    d.kind = "recordio"
    with pytest.raises(door.DoorError, match="kind=image_folder|kind=flat_folder"):
        door.open_data(d, "--config.data.synthetic")


def test_embeddings_file(tmp_path, rng):
    x = rng.standard_normal((30, 8)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", np.arange(30) // 3)
    (tmp_path / "names.txt").write_text("\n".join(f"img{i}" for i in range(30)) + "\n")
    d = embed_config().data
    d.kind, d.path, d.labels, d.names = "embeddings", str(tmp_path / "x.npy"), str(tmp_path / "y.npy"), str(
        tmp_path / "names.txt")
    ds = door.open_data(d, "--config.data.synthetic")
    es = door.open_embeddings_file(ds, "cosine")
    np.testing.assert_allclose(es.embeddings[4:9], x[4:9] / np.linalg.norm(x[4:9], axis=1, keepdims=True), rtol=1e-6)
    assert es.labels[7] == 2 and es.describe(5) == "img5" and es.read_rgb(0) is None
    bad = x.copy()
    bad[11] = 0
    np.save(tmp_path / "bad.npy", bad)
    d.path, d.labels, d.names = str(tmp_path / "bad.npy"), "", ""
    es = door.open_embeddings_file(door.open_data(d, "--config.data.synthetic"), "cosine")
    with pytest.raises(ValueError, match="row 11 has zero"):
        es.embeddings[0:30]
