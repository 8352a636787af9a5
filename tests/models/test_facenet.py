"""FaceNet Inception-ResNet-v1: Flax vs a PyTorch reference with the facenet-pytorch state-dict layout."""

from __future__ import annotations

import jax
import numpy as np
import pytest
import torch

from synleak_jax.models import registry
from synleak_jax.weights import converters
from synleak_jax.weights.mapping import WeightMappingError
from tests.seeds import draw_seed
from tests.models.torch_refs_other import InceptionResnetV1Ref, randomize_

TOL = 1e-5


def rel_err(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def save_and_read(state_dict, path) -> dict[str, np.ndarray]:
    """torch.save (zip format) then the project's restricted reader, as a user's file would go."""
    from synleak_jax.weights.torch_pickle import load_torch_file

    torch.save(state_dict, path)
    return dict(load_torch_file(str(path)))


@pytest.fixture(scope="module")
def reference():
    gen = torch.Generator().manual_seed(draw_seed("torch reference weights"))
    return randomize_(InceptionResnetV1Ref(num_logits=8631), gen)


def test_spec_and_registry():
    spec = registry.get_spec("facenet_inception_resnet_v1")
    assert (spec.height, spec.width, spec.channel_order, spec.embedding_dim, spec.metric) == (
        160, 160, "RGB", 512, "cosine")
    assert spec.alignment == "facenet160"
    x = spec.normalize(np.array([[[0, 127.5, 255]]]))
    np.testing.assert_allclose(x, [[[-127.5 / 128, 0, 127.5 / 128]]], rtol=1e-7)
    assert registry.get_entry("facenet_inception_resnet_v1").family == "facenet"


def test_parity_random_weights(reference, tmp_path, rng):
    tensors = save_and_read(reference.state_dict(), tmp_path / "facenet.pt")
    shapes = {k: tuple(v.shape) for k, v in tensors.items()}
    assert converters.detect_model_name(shapes) == "facenet_inception_resnet_v1"
    variables = converters.load_state_dict_into("facenet_inception_resnet_v1", tensors, "facenet.pt")
    spec = registry.get_spec("facenet_inception_resnet_v1")
    x = spec.normalize(rng.integers(0, 256, (2, 160, 160, 3)))
    model = registry.get_model("facenet_inception_resnet_v1")
    with jax.default_matmul_precision("highest"):
        ours = np.asarray(jax.jit(model.apply)(variables, x))
    with torch.no_grad():
        ref = reference(torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))).numpy()
    assert ours.shape == (2, 512)
    err = rel_err(ours, ref)
    assert err <= TOL, f"relative L2 error {err:.2e}"


def test_logits_skipped_but_unknown_keys_rejected(reference):
    sd = {k: v.numpy() for k, v in reference.state_dict().items()}
    assert "logits.weight" in sd  # released files carry the training classifier; it is skipped explicitly
    converters.load_state_dict_into("facenet_inception_resnet_v1", sd)
    with pytest.raises(WeightMappingError, match="mystery"):
        converters.load_state_dict_into("facenet_inception_resnet_v1", {**sd, "mystery.weight": np.ones(3)})
    bad = dict(sd)
    bad["last_linear.weight"] = bad["last_linear.weight"][:, :100]
    with pytest.raises(WeightMappingError, match="last_linear"):
        converters.load_state_dict_into("facenet_inception_resnet_v1", bad)
