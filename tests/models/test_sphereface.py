"""SphereFace-20 (sphere20a): Flax vs a PyTorch reference with the port's state-dict layout."""

from __future__ import annotations

import jax
import numpy as np
import pytest
import torch

from synleak_jax.models import registry
from synleak_jax.weights import converters
from synleak_jax.weights.mapping import WeightMappingError
from tests.seeds import draw_seed
from tests.models.test_facenet import TOL, rel_err, save_and_read
from tests.models.torch_refs_other import Sphere20aRef, randomize_


@pytest.fixture(scope="module")
def reference():
    gen = torch.Generator().manual_seed(draw_seed("torch reference weights"))
    return randomize_(Sphere20aRef(classnum=1000), gen)


def test_spec():
    spec = registry.get_spec("sphereface20")
    assert (spec.height, spec.width, spec.channel_order, spec.embedding_dim) == (112, 96, "BGR", 512)
    assert spec.alignment == "arcface112x96" and spec.metric == "cosine"
    # BGR: the first input channel is the blue pixel.
    x = spec.normalize(np.array([[[255, 0, 0]]], np.uint8))
    np.testing.assert_allclose(x[..., 0], -127.5 / 128)
    np.testing.assert_allclose(x[..., 2], 127.5 / 128)


def test_parity_random_weights(reference, tmp_path, rng):
    tensors = save_and_read(reference.state_dict(), tmp_path / "sphere20a.pth")
    assert converters.detect_model_name({k: tuple(v.shape) for k, v in tensors.items()}) == "sphereface20"
    variables = converters.load_state_dict_into("sphereface20", tensors, "sphere20a.pth")
    spec = registry.get_spec("sphereface20")
    x = spec.normalize(rng.integers(0, 256, (3, 112, 96, 3)))
    with jax.default_matmul_precision("highest"):
        ours = np.asarray(jax.jit(registry.get_model("sphereface20").apply)(variables, x))
    with torch.no_grad():
        ref = reference(torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))).numpy()
    assert ours.shape == (3, 512)
    err = rel_err(ours, ref)
    assert err <= TOL, f"relative L2 error {err:.2e}"


def test_fc6_skipped_unknown_rejected(reference):
    sd = {k: v.numpy() for k, v in reference.state_dict().items()}
    converters.load_state_dict_into("sphereface20", sd)  # fc6 (A-Softmax classifier) skipped on purpose
    with pytest.raises(WeightMappingError, match="fc7"):
        converters.load_state_dict_into("sphereface20", {**sd, "fc7.weight": np.ones((2, 2))})
    sd.pop("relu3_7.weight")
    with pytest.raises(WeightMappingError, match="relu3_7"):
        converters.load_state_dict_into("sphereface20", sd)
