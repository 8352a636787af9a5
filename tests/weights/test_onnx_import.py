"""ONNX importer (synleak_jax/weights/onnx_import.py) against onnxruntime on torch-exported graphs."""

import os

import numpy as np
import onnx
import pytest
import torch

from synleak_jax.models import get_spec
from synleak_jax.weights.onnx_import import OnnxImportError, import_onnx, load_onnx, onnx_model_name
from tests.models import torch_refs_arcface as refs
from tests.weights import hostile

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


# ------------------------------------------------------------------------------------------------------
# Issue #13: malformed graphs, external data, parse-time memory. Files are made here with onnx.helper.
# ------------------------------------------------------------------------------------------------------

MiB = 1 << 20


def _tiny_model(initializers=(), nodes=(), inputs=("data",)):
    graph = onnx.helper.make_graph(
        list(nodes), "g",
        [onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, [1, 3, 112, 112]) for name in inputs],
        [onnx.helper.make_tensor_value_info("out", onnx.TensorProto.FLOAT, None)], initializer=list(initializers))
    return onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 11)])


def _malformed_models():
    w = onnx.numpy_helper.from_array(np.ones((4, 3, 3, 3), np.float32), "w")
    short = onnx.TensorProto(name="short", data_type=onnx.TensorProto.FLOAT, dims=[5], raw_data=b"\0" * 8)
    shape = onnx.numpy_helper.from_array(np.array([7, 7], np.int64), "shape")
    axes = onnx.numpy_helper.from_array(np.array([9], np.int64), "axes")
    undefined = onnx.TensorProto(name="undef", data_type=0, dims=[1], raw_data=b"\0")
    return {
        # numpy_helper.to_array fails inside _Graph (which used to run outside the try)
        "raw_data_too_short": (_tiny_model([short]), None),
        "reshape_impossible": (_tiny_model([w, shape], [onnx.helper.make_node("Reshape", ["w", "shape"], ["r"])]), None),
        "unsqueeze_bad_axis": (_tiny_model([w, axes], [onnx.helper.make_node("Unsqueeze", ["w", "axes"], ["u"])]), None),
        "undefined_type": (_tiny_model([undefined]), None),
        # the mapping: a Conv without its weight input (IndexError before)
        "conv_without_weight": (_tiny_model([], [onnx.helper.make_node("Conv", ["data"], ["c"])]), "iresnet18"),
    }


def test_malformed_graphs_are_named(tmp_path):
    for name, (model, model_name) in _malformed_models().items():
        path = tmp_path / f"{name}.onnx"
        onnx.save(model, str(path))
        with pytest.raises(OnnxImportError) as err:
            import_onnx(path, model_name)
        assert str(err.value).startswith(f"{path}: "), (name, str(err.value))


def test_declared_dims_are_not_trusted(tmp_path):
    huge = onnx.TensorProto(name="huge", data_type=onnx.TensorProto.FLOAT, dims=[1 << 40], raw_data=b"\0" * 4)
    path = tmp_path / "huge_dims.onnx"
    onnx.save(_tiny_model([huge]), str(path))
    with pytest.raises(OnnxImportError, match=r"huge_dims\.onnx: reading it would materialise more than.*'huge'"):
        import_onnx(path)


def test_protobuf_parse_amplification_is_refused(tmp_path):
    # 2,000,000 empty NodeProtos: 2 bytes each on disk, ~150 bytes each once parsed (4 MB -> ~300 MB).
    def varint(x):
        out = bytearray()
        while True:
            out.append((x & 0x7F) | (0x80 if x > 0x7F else 0))
            x >>= 7
            if not x:
                return bytes(out)

    graph = b"\x0a\x00" * 2_000_000
    path = tmp_path / "empty_nodes.onnx"
    path.write_bytes(b"\x08\x08\x3a" + varint(len(graph)) + graph)
    assert len(onnx.load(str(path)).graph.node) == 2_000_000  # reference: onnx parses it (in this process)
    report = hostile.run_limited("synleak_jax.weights.onnx_import.import_onnx", path, headroom=128 * MiB)
    assert report["outcome"] == "OnnxImportError", report
    assert str(path) in report["message"] and "NodeProto" in report["message"], report
    assert report["control"] == "MemoryError", report
    assert report["peak_rss"] - report["rss_before"] < 32 * MiB, report


def _external_model(tmp_path, values):
    """model/m.onnx whose initializer 'w' lives in model/w.bin; returns (path, the parsed model)."""
    d = tmp_path / "model"
    d.mkdir()
    model = _tiny_model([onnx.numpy_helper.from_array(values, "w")])
    path = d / "m.onnx"
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location="w.bin",
                    size_threshold=0)
    return path, onnx.load(str(path), load_external_data=False)


def _with_location(model, path, location, **extra):
    init = model.graph.initializer[0]
    entries = {e.key: e.value for e in init.external_data}
    entries.update(location=location, **{k: str(v) for k, v in extra.items()})
    del init.external_data[:]
    for key, value in entries.items():
        init.external_data.add(key=key, value=value)
    onnx.save(model, str(path))
    return path


def test_external_data_loads_and_hostile_locations_are_refused(tmp_path, rng):
    from synleak_jax.weights import onnx_import

    values = rng.standard_normal((16, 16)).astype(np.float32)
    path, model = _external_model(tmp_path, values)
    d = path.parent
    np.testing.assert_array_equal(onnx_import._build_graph(path).consts["w"], values)  # the control loads
    (tmp_path / "secret.bin").write_bytes(values.tobytes())  # outside the model's directory
    os.symlink(tmp_path / "secret.bin", d / "link_out.bin")
    os.symlink(d / "w.bin", d / "link_in.bin")
    (d / "copy.bin").write_bytes((d / "w.bin").read_bytes())
    os.link(d / "copy.bin", d / "hard.bin")  # (a link to w.bin itself would make w.bin two-linked too)
    cases = {
        "dotdot": ("../secret.bin", {}, "climbs out of the model's directory"),
        "dotdot_inner": ("sub/../../secret.bin", {}, "climbs out"),
        "absolute": (str(tmp_path / "secret.bin"), {}, "absolute location"),
        "missing": ("nope.bin", {}, "not found next to the model"),
        "symlink_out": ("link_out.bin", {}, "resolves outside the model's directory"),
        "symlink_in": ("link_in.bin", {}, "symbolic link"),
        "hardlink": ("hard.bin", {}, "2 hard links"),
        "past_end": ("w.bin", {"offset": 1000, "length": 1000}, "outside 'w.bin'"),
        "directory": (".", {}, "not a regular file"),
    }
    for name, (location, extra, message) in cases.items():
        bad = _with_location(onnx.load(str(path), load_external_data=False), d / f"{name}.onnx", location, **extra)
        with pytest.raises(OnnxImportError, match=rf"{name}\.onnx: external data of tensor 'w': .*{message}"):
            import_onnx(bad)
        if name not in ("past_end", "directory", "missing"):
            # reference: the bounded onnx version (>= 1.21) refuses these too
            with pytest.raises(Exception):  # noqa: B017 - onnx raises ValidationError/ValueError/OSError
                onnx.load(str(bad))


def test_external_data_aliasing_is_bounded(tmp_path, rng):
    # 2,000 initializers reading the same 1 MiB of w.bin: 2 GiB from 1 MiB on disk.
    values = rng.standard_normal(MiB // 4).astype(np.float32)
    path, model = _external_model(tmp_path, values)
    template = model.graph.initializer[0]
    for i in range(1999):
        copy = model.graph.initializer.add()
        copy.CopyFrom(template)
        copy.name = f"w{i}"
    onnx.save(model, str(path))
    report = hostile.run_limited("synleak_jax.weights.onnx_import.import_onnx", path, headroom=512 * MiB)
    assert report["outcome"] == "OnnxImportError" and "materialise more than" in report["message"], report
    assert report["control"] == "MemoryError", report
    assert report["peak_rss"] - report["rss_before"] < 64 * MiB, report
