"""AdaFace IR (synleak_jax/models/adaface_ir.py): parameter counts and parity with a PyTorch reference."""

import numpy as np
import pytest

from synleak_jax.models import get_model, get_spec
from synleak_jax.models.layers import count_params
from synleak_jax.weights.mapping import variable_shapes
from tests.models import torch_refs_arcface as refs


@pytest.mark.parametrize("name", ["adaface_ir18", "adaface_ir50", "adaface_ir101"])
def test_parameter_count_equals_torch_reference(name):
    import torch

    with torch.device("meta"):
        ref = refs.make_reference(name)
    assert count_params(get_model(name), (1, 112, 112, 3)) == refs.torch_param_count(ref)


def test_ir50_structure_differs_from_iresnet50():
    """Stage 1 uses the parameter-free max-pool shortcut and the output BN1d has no affine parameters."""
    shapes = variable_shapes(get_model("adaface_ir50"), np.zeros((1, 112, 112, 3), np.float32))
    assert not any(k.startswith("params/body_0/downsample") for k in shapes)
    assert "params/body_3/downsample_conv/kernel" in shapes  # first unit of stage 2 projects 64 -> 128
    assert "batch_stats/output_bn1d/mean" in shapes and "params/output_bn1d/scale" not in shapes
    # 43,590,848 (insightface r50) - 64*64 conv - 2*64 BN - 2*512 final-BN affine
    assert count_params(get_model("adaface_ir50"), (1, 112, 112, 3)) == 43_590_848 - 4096 - 128 - 1024


def test_spec_is_bgr():
    spec = get_spec("adaface_ir101")
    assert spec.channel_order == "BGR" and spec.mean == (127.5,) * 3 and spec.std == (127.5,) * 3
    rgb = np.zeros((1, 2, 2, 3), np.uint8)
    rgb[..., 0] = 255  # pure red
    x = spec.normalize(rgb)
    np.testing.assert_allclose(x[..., 2], 1.0)  # red ends up last in BGR
    np.testing.assert_allclose(x[..., 0], -1.0)


def test_ir18_parity_fp32_and_bf16(rng):
    refs.check_state_dict_parity("adaface_ir18", rng, n_images=2)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["adaface_ir50", "adaface_ir101"])
def test_deep_parity(name, rng):
    refs.check_state_dict_parity(name, rng, n_images=2)
