"""State-dict converters of the ArcFace family (synleak_jax/weights/convert_arcface.py)."""

import numpy as np
import pytest
import torch

from synleak_jax.weights.convert_arcface import fc_kernel_from_torch
from synleak_jax.weights.converters import detect_model_name, load_state_dict_into
from synleak_jax.weights.mapping import WeightMappingError
from tests.models import torch_refs_arcface as refs

ALL = [f"iresnet{d}" for d in (18, 34, 50, 100, 200)] + [f"adaface_ir{d}" for d in (18, 50, 101)] + ["mobilefacenet"]


def _meta_shapes(name, prefix=""):
    with torch.device("meta"):  # key names and shapes only; no memory even for r200
        net = refs.make_reference(name)
    return {prefix + k: tuple(v.shape) for k, v in net.state_dict().items()}


@pytest.mark.parametrize("name", ALL)
def test_detect_exact_name_from_original_keys(name):
    assert detect_model_name(_meta_shapes(name)) == name


@pytest.mark.parametrize("prefix", ["module.", "model.", "model.module."])
def test_detect_tolerates_wrapper_prefixes(prefix):
    assert detect_model_name(_meta_shapes("adaface_ir101", prefix)) == "adaface_ir101"
    assert detect_model_name(_meta_shapes("iresnet50", prefix)) == "iresnet50"


def test_detect_rejects_unknown_depth():
    shapes = {k: v for k, v in _meta_shapes("iresnet50").items() if not k.startswith("layer3.13.")}
    with pytest.raises(WeightMappingError, match="cannot infer"):
        detect_model_name(shapes)


def test_fc_permutation_matches_channel_major_flatten(rng):
    c, h, w, out = 4, 3, 2, 5
    weight = rng.standard_normal((out, c * h * w))
    x_nchw = rng.standard_normal((2, c, h, w))
    torch_out = x_nchw.reshape(2, -1) @ weight.T  # torch.flatten(x, 1) is (C, H, W) order
    flax_out = x_nchw.transpose(0, 2, 3, 1).reshape(2, -1) @ fc_kernel_from_torch(weight, (c, h, w))
    # float32 kernel: a sum that nearly cancels (seed 1274565829: -0.0095 from terms of size ~3) has a large
    # relative rounding error, so the tolerance is relative to the outputs' scale; a wrong permutation is O(1) off
    np.testing.assert_allclose(flax_out, torch_out, rtol=1e-5, atol=1e-5 * np.abs(torch_out).max())


@pytest.fixture(scope="module")
def mbf():
    net = refs.randomize_(refs.make_reference("mobilefacenet"), np.random.default_rng(1234))
    return net, refs.state_dict_numpy(net)


def test_wrong_shape_names_key_and_both_shapes(mbf):
    _, sd = mbf
    sd = dict(sd)
    sd["layers.2.layers.1.layers.0.weight"] = np.zeros((128, 1, 5, 5), np.float32)
    with pytest.raises(WeightMappingError) as e:
        load_state_dict_into("mobilefacenet", sd)
    msg = str(e.value)
    assert "layers.2.layers.1.layers.0.weight" in msg and "(128, 1, 5, 5)" in msg and "(128, 1, 3, 3)" in msg


def test_missing_key_is_named(mbf):
    _, sd = mbf
    sd = {k: v for k, v in sd.items() if k != "conv_sep.layers.1.running_var"}
    with pytest.raises(WeightMappingError, match=r"missing key 'conv_sep\.layers\.1\.running_var'"):
        load_state_dict_into("mobilefacenet", sd)


def test_unexpected_key_is_named(mbf):
    _, sd = mbf
    sd = dict(sd, **{"head.kernel": np.zeros((512, 10572), np.float32)})
    with pytest.raises(WeightMappingError, match=r"unexpected keys.*'head\.kernel' \(512, 10572\)"):
        load_state_dict_into("mobilefacenet", sd)


def test_wrong_model_name_fails_loudly(mbf):
    _, sd = mbf
    with pytest.raises(WeightMappingError, match="missing key 'conv1.weight'"):
        load_state_dict_into("iresnet18", sd)


@pytest.mark.parametrize(
    "name,legacy",
    [("mobilefacenet", False), ("mobilefacenet", True), ("iresnet18", True)],
    ids=["mbf-zip", "mbf-legacy", "r18-legacy"],
)
def test_torch_file_round_trip(name, legacy, tmp_path, rng):
    """torch.save (zip and legacy pickle) -> project reader (no torch) -> converter -> parity."""
    torch_pickle = pytest.importorskip("synleak_jax.weights.torch_pickle")
    net = refs.randomize_(refs.make_reference(name), rng)
    path = tmp_path / ("legacy.pth" if legacy else "zip.pth")
    torch.save(net.state_dict(), path, _use_new_zipfile_serialization=not legacy)
    tensors = torch_pickle.load_torch_file(path)
    assert detect_model_name({k: tuple(v.shape) for k, v in tensors.items()}) == name
    variables = load_state_dict_into(name, tensors, str(path))
    x = rng.standard_normal((2, 112, 112, 3)).astype(np.float32)
    err = refs.rel_l2(refs.run_flax(name, variables, x), refs.forward_numpy(net, x))
    assert err <= 1e-5


def test_lightning_checkpoint_through_load_weights(tmp_path, rng):
    """An AdaFace-style Lightning .ckpt ({'state_dict': {'model.<key>': ...}}) loads by auto-detection."""
    loader = pytest.importorskip("synleak_jax.weights.loader")
    net = refs.randomize_(refs.make_reference("adaface_ir18"), rng)
    path = tmp_path / "adaface_ir18_casia.ckpt"
    torch.save({"state_dict": {"model." + k: v for k, v in net.state_dict().items()}, "epoch": 3}, path)
    variables, info = loader.load_weights(path)
    assert info.model_name == "adaface_ir18"
    x = rng.standard_normal((2, 112, 112, 3)).astype(np.float32)
    assert refs.rel_l2(refs.run_flax("adaface_ir18", variables, x), refs.forward_numpy(net, x)) <= 1e-5
