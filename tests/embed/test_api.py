"""embed.api: one call from a source to an opened store; config errors name the --config field."""

import ml_collections
import numpy as np
import pytest

from synleak_jax.data.sources import ImageFolderSource
from synleak_jax.embed import api
from synleak_jax.embed.store import StoreMismatchError
from tests.embed import data_helpers, tiny_model  # noqa: F401  (registers tiny_test_net)


def test_embed_source_and_config(tmp_path, rng):
    root = str(tmp_path / "ds")
    data_helpers.make_png_folder(root, rng, num_ids=2, per_id=6, bad=1)
    src = ImageFolderSource(root)
    st = api.embed_source(src, str(tmp_path / "s"), model="tiny_test_net", random_init=True, seed=1,
                          batch_size=8, chunk_batches=1, data_kind="image_folder", data_path=root)
    assert len(st) == 12 and len(st.rejects) == 1 and st.manifest["weights"]["random_init"] is True
    assert st.manifest["dataset_path"] == root and st.manifest["flip"] is True
    np.testing.assert_allclose(np.linalg.norm(np.asarray(st.embeddings), axis=1), 1.0, atol=1e-6)
    # the same request through the config path reuses the store (no difference in identity)
    from configs.embed import get_config
    cfg = get_config()
    cfg.data.path, cfg.output, cfg.model = root, str(tmp_path / "s"), "tiny_test_net"
    cfg.random_init, cfg.seed, cfg.batch_size, cfg.chunk_batches = True, 1, 8, 1
    st2 = api.embed_from_config(cfg)
    np.testing.assert_array_equal(np.asarray(st2.embeddings), np.asarray(st.embeddings))
    cfg.storage_dtype = "float16"
    with pytest.raises(StoreMismatchError, match='storage_dtype: stored "float32" vs requested "float16"'):
        api.embed_from_config(cfg)


@pytest.mark.parametrize("field,value,msg", [
    ("weights", "", "--config.weights is required"),
    ("model", "no_such_net", "--config.model: unknown model 'no_such_net'"),
    ("data.kind", "zip", "--config.data.kind='zip'"),
    ("data.align", "dlib", "--config.data.align='dlib'"),
])
def test_config_errors_name_the_field(tmp_path, rng, field, value, msg):
    root = str(tmp_path / "ds")
    data_helpers.make_png_folder(root, rng, num_ids=1, per_id=2, bad=0)
    from configs.embed import get_config
    cfg = get_config()
    cfg.data.path, cfg.output, cfg.model, cfg.random_init = root, str(tmp_path / "s"), "tiny_test_net", True
    if field == "weights":
        cfg.random_init = False
    section, _, key = field.rpartition(".")
    (cfg.data if section == "data" else cfg)[key] = value
    with pytest.raises(api.EmbedConfigError, match=msg.replace("(", r"\(")):
        api.embed_from_config(cfg)
