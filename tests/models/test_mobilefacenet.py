"""MobileFaceNet (synleak_jax/models/mobilefacenet.py): parameter count and parity with a PyTorch reference."""

import numpy as np

from synleak_jax.models import get_model
from synleak_jax.models.layers import count_params
from synleak_jax.weights.mapping import variable_shapes
from tests.models import torch_refs_arcface as refs


def test_parameter_count_equals_torch_reference():
    import torch

    with torch.device("meta"):
        ref = refs.make_reference("mobilefacenet")
    n = count_params(get_model("mobilefacenet"), (1, 112, 112, 3))
    assert n == refs.torch_param_count(ref) == 2_059_520


def test_stem_second_conv_is_grouped_not_depthwise():
    shapes = variable_shapes(get_model("mobilefacenet"), np.zeros((1, 112, 112, 3), np.float32))
    assert shapes["params/layers_1/conv/kernel"] == (3, 3, 2, 128)  # groups=64: 2 input channels per group
    assert shapes["params/layers_2/dw/conv/kernel"] == (3, 3, 1, 128)  # true depthwise
    assert shapes["params/features/dw/conv/kernel"] == (7, 7, 1, 512)


def test_parity_fp32_and_bf16(rng):
    refs.check_state_dict_parity("mobilefacenet", rng, n_images=2)
