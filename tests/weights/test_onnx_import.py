"""ONNX importer (synleak_jax/weights/onnx_import.py) against onnxruntime on torch-exported graphs."""

import numpy as np
import onnx
import pytest
import torch

from synleak_jax.models import get_spec
from synleak_jax.weights.onnx_import import OnnxImportError, import_onnx, load_onnx, onnx_model_name
from tests.models import torch_refs_arcface as refs

ort = pytest.importorskip("onnxruntime")


def _export(net, path, fold=True):
    torch.onnx.export(
        net, torch.zeros(1, 3, 112, 112), str(path), dynamo=False, do_constant_folding=fold,
        input_names=["data"], output_names=["fc1"], dynamic_axes={"data": {0: "n"}}, opset_version=11,
    )
    return path


def _ort(path, x_nchw):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x_nchw})[0].astype(np.float64)


def _count_bn_modules(net):
    return sum(isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)) for m in net.modules())


@pytest.mark.parametrize(
    "name", ["iresnet18", "mobilefacenet", pytest.param("adaface_ir18", marks=pytest.mark.slow)]
)
def test_folded_export_matches_onnxruntime(name, tmp_path, rng):
    net = refs.randomize_(refs.make_reference(name), rng)
    path = _export(net, tmp_path / f"{name}.onnx")
    graph = onnx.load(str(path)).graph
    n_bn_graph = sum(n.op_type == "BatchNormalization" for n in graph.node)
    n_conv = sum(n.op_type == "Conv" for n in graph.node)
    assert n_bn_graph < _count_bn_modules(net)  # the exporter really folded conv+BN pairs
    imported = import_onnx(path)  # model name inferred from the graph
    assert imported.model_name == name
    assert imported.folded_convs == n_conv
    assert imported.input_normalization == "external"
    x = rng.standard_normal((2, 112, 112, 3)).astype(np.float32)
    ref = _ort(path, np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
    assert refs.rel_l2(refs.run_flax(name, imported.variables, x), ref) <= 1e-5
    # and the ONNX graph computes what the original module computes
    assert refs.rel_l2(refs.forward_numpy(net, x), ref) <= 1e-5


def test_unfolded_export_also_imports(tmp_path, rng):
    net = refs.randomize_(refs.make_reference("iresnet18"), rng)
    path = _export(net, tmp_path / "nofold.onnx", fold=False)
    graph = onnx.load(str(path)).graph
    assert sum(n.op_type == "BatchNormalization" for n in graph.node) == _count_bn_modules(net)
    imported = import_onnx(path, "iresnet18")
    assert imported.folded_convs == 0
    x = rng.standard_normal((2, 112, 112, 3)).astype(np.float32)
    ref = _ort(path, np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
    assert refs.rel_l2(refs.run_flax("iresnet18", imported.variables, x), ref) <= 1e-5


class _Normalising(torch.nn.Module):
    """Graph that takes raw RGB pixels and normalises inside (like some mxnet-era model-zoo files)."""

    def __init__(self, net, mean, std):
        super().__init__()
        self.net, self.mean, self.inv_std = net, mean, 1.0 / std

    def forward(self, x):
        return self.net((x - self.mean) * self.inv_std)


def test_in_graph_normalisation_is_verified_and_dropped(tmp_path, rng):
    net = refs.randomize_(refs.make_reference("mobilefacenet"), rng)
    path = _export(_Normalising(net, 127.5, 127.5).eval(), tmp_path / "norm.onnx")
    imported = import_onnx(path)
    assert imported.model_name == "mobilefacenet" and imported.input_normalization == "in-graph"
    pixels = rng.integers(0, 256, (2, 112, 112, 3)).astype(np.float32)
    ref = _ort(path, np.ascontiguousarray(pixels.transpose(0, 3, 1, 2)))
    x = get_spec("mobilefacenet").normalize(pixels)
    assert refs.rel_l2(refs.run_flax("mobilefacenet", imported.variables, x), ref) <= 1e-5


def test_in_graph_normalisation_mismatch_is_an_error(tmp_path, rng):
    net = refs.make_reference("mobilefacenet")
    path = _export(_Normalising(net, 127.5, 128.0).eval(), tmp_path / "norm128.onnx")
    with pytest.raises(OnnxImportError, match=r"std \[128\.0, 128\.0, 128\.0\]"):
        import_onnx(path)


def test_wrong_model_name_names_the_node(tmp_path):
    path = _export(refs.make_reference("iresnet18"), tmp_path / "r18.onnx")
    assert onnx_model_name(path) == "iresnet18"
    with pytest.raises(OnnxImportError, match=r"node #\d+ .*expected a|has shape"):
        load_onnx(path, "iresnet34")
    with pytest.raises(OnnxImportError, match="node #"):
        load_onnx(path, "mobilefacenet")


def test_shape_mismatch_names_initializer_and_shapes(tmp_path):
    path = _export(refs.make_reference("iresnet18"), tmp_path / "r18.onnx")
    model = onnx.load(str(path))
    init = next(i for i in model.graph.initializer if i.name == "layer2.1.bn1.weight")
    init.CopyFrom(onnx.numpy_helper.from_array(np.ones(100, np.float32), init.name))
    bad = tmp_path / "bad.onnx"
    onnx.save(model, str(bad))
    with pytest.raises(OnnxImportError, match=r"'layer2\.1\.bn1\.weight' has shape \(100,\).*\(128,\)"):
        load_onnx(bad, "iresnet18")


def test_garbage_file_is_named(tmp_path):
    bad = tmp_path / "broken.onnx"
    bad.write_bytes(b"\x08\x07garbage" * 10)
    with pytest.raises(OnnxImportError, match="broken.onnx"):
        load_onnx(bad)


def test_load_weights_dispatches_to_importer(tmp_path, rng):
    loader = pytest.importorskip("synleak_jax.weights.loader")
    net = refs.randomize_(refs.make_reference("mobilefacenet"), rng)
    path = _export(net, tmp_path / "w600k_mbf.onnx")
    variables, info = loader.load_weights(path)
    assert info.model_name == "mobilefacenet" and info.format == "onnx"
    x = rng.standard_normal((2, 112, 112, 3)).astype(np.float32)
    assert refs.rel_l2(refs.run_flax("mobilefacenet", variables, x), refs.forward_numpy(net, x)) <= 1e-5


@pytest.mark.slow
@pytest.mark.parametrize("name", ["iresnet50", "iresnet100"])  # the w600k_r50 / glintr100 architectures
def test_deep_folded_export_matches_onnxruntime(name, tmp_path, rng):
    net = refs.randomize_(refs.make_reference(name), rng)
    path = _export(net, tmp_path / f"{name}.onnx")
    imported = import_onnx(path)
    assert imported.model_name == name
    x = rng.standard_normal((2, 112, 112, 3)).astype(np.float32)
    ref = _ort(path, np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
    assert refs.rel_l2(refs.run_flax(name, imported.variables, x), ref) <= 1e-5


def test_final_bn_folded_into_gemm_imports_as_identity_bn(tmp_path, rng):
    """Some exporters also fold the head's BatchNorm1d into the fc Gemm; the importer must still be exact."""
    net = refs.randomize_(refs.make_reference("iresnet18"), rng)
    x = rng.standard_normal((2, 112, 112, 3)).astype(np.float32)
    want = refs.forward_numpy(net, x)
    bn = net.features
    with torch.no_grad():
        s = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        net.fc.weight.mul_(s[:, None])
        net.fc.bias.copy_((net.fc.bias - bn.running_mean) * s + bn.bias)
    net.features = torch.nn.Identity()
    path = _export(net, tmp_path / "gemm_bn.onnx")
    graph = onnx.load(str(path)).graph
    assert graph.node[-1].op_type == "Gemm"
    imported = import_onnx(path)
    assert imported.model_name == "iresnet18"
    out = refs.run_flax("iresnet18", imported.variables, x)
    assert refs.rel_l2(out, _ort(path, np.ascontiguousarray(x.transpose(0, 3, 1, 2)))) <= 1e-5
    assert refs.rel_l2(out, want) <= 1e-5


def test_prelu_slope_broadcast_along_width_is_rejected(tmp_path):
    """A [C] PRelu slope broadcasts along W in ONNX (not per channel): refuse it, naming the node."""
    path = _export(refs.make_reference("mobilefacenet"), tmp_path / "mbf.onnx")
    model = onnx.load(str(path))
    prelu = next(n for n in model.graph.node if n.op_type == "PRelu")
    init = next(i for i in model.graph.initializer if i.name == prelu.input[1])
    init.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(init).reshape(-1), init.name))
    bad = tmp_path / "bad_prelu.onnx"
    onnx.save(model, str(bad))
    with pytest.raises(OnnxImportError, match=rf"PRelu .*slope '{prelu.input[1]}' has shape \(128,\)"):
        load_onnx(bad)
