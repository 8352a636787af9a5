"""Tests for synleak_jax/weights/loader.py: format detection, dispatch, round trips through real files."""

import hashlib
import json
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from synleak_jax.models import registry  # noqa: E402
from synleak_jax.weights import WeightsInfo, load_weights, orbax_io, save_variables  # noqa: E402
from synleak_jax.weights import loader, torch_pickle  # noqa: E402
from synleak_jax.weights.mapping import WeightMappingError, flatten_variables  # noqa: E402
from tests.models.torch_refs_arcface import forward_numpy, make_reference, randomize_  # noqa: E402

MODEL = "iresnet18"


@pytest.fixture(scope="module")
def ref_net():
    seed = int(np.random.SeedSequence().entropy % (2**32))
    print(f"ref_net seed: {seed}")
    return randomize_(make_reference(MODEL), np.random.default_rng(seed))


@pytest.fixture(scope="module")
def torch_files(ref_net, tmp_path_factory):
    d = tmp_path_factory.mktemp("w")
    sd = ref_net.state_dict()
    files = {
        "zip": d / "r18.pth",
        "legacy": d / "r18_legacy.pt",
        "dataparallel": d / "r18_dp.bin",  # extension says nothing: content decides
        "lightning": d / "r18.ckpt",
    }
    torch.save(sd, files["zip"])
    torch.save(sd, files["legacy"], _use_new_zipfile_serialization=False)
    torch.save({f"module.{k}": v for k, v in sd.items()}, files["dataparallel"])
    torch.save({"epoch": 4, "global_step": 10, "state_dict": {f"model.{k}": v for k, v in sd.items()},
                "hyper_parameters": {"arch": "ir_18"}}, files["lightning"])
    return files


def _assert_tree_equal(a, b):
    fa, fb = flatten_variables(a), flatten_variables(b)
    assert set(fa) == set(fb)
    for k in fa:
        assert np.asarray(fa[k]).dtype == np.asarray(fb[k]).dtype, k
        np.testing.assert_array_equal(np.asarray(fa[k]), np.asarray(fb[k]), err_msg=k)


def test_torch_files_all_formats_same_variables_and_info(torch_files):
    base, info = load_weights(torch_files["zip"])  # model inferred from key names/shapes
    assert info == WeightsInfo(MODEL, "r18.pth", hashlib.sha256(torch_files["zip"].read_bytes()).hexdigest(), "torch_zip")
    for kind, path in torch_files.items():
        variables, info = load_weights(path, None if kind != "legacy" else MODEL)
        assert info.model_name == MODEL and info.source_file == path.name
        assert info.format == ("torch_legacy" if kind == "legacy" else "torch_zip")
        assert info.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
        _assert_tree_equal(variables, base)


def test_loaded_model_matches_torch_forward(ref_net, torch_files, rng):
    variables, info = load_weights(torch_files["legacy"])
    x = rng.normal(size=(2, 112, 112, 3)).astype(np.float32)
    got = np.asarray(registry.get_model(info.model_name).apply(variables, x), np.float64)
    want = forward_numpy(ref_net, x)
    np.testing.assert_allclose(got, want, rtol=2e-3, atol=2e-3 * np.abs(want).max())


def test_orbax_round_trip_through_load_weights(torch_files, tmp_path):
    variables, info = load_weights(torch_files["zip"])
    out = save_variables(tmp_path / "conv", variables, loader.conversion_metadata(info))
    assert loader.detect_format(out) == "orbax"
    back, info2 = load_weights(out)
    _assert_tree_equal(back, variables)  # bit-exact
    assert info2 == WeightsInfo(MODEL, info.source_file, info.sha256, "orbax")
    meta = orbax_io.read_metadata(out)
    assert meta["input_spec"] == json.loads(json.dumps(registry.get_spec(MODEL).to_dict()))
    back, _ = load_weights(out, MODEL)
    with pytest.raises(loader.WeightsFormatError, match="holds weights for 'iresnet18', not 'iresnet50'"):
        load_weights(out, "iresnet50")


def test_onnx_dispatch(ref_net, tmp_path):
    path = tmp_path / "graph.bin"  # content, not extension, identifies ONNX
    torch.onnx.export(ref_net, torch.zeros(1, 3, 112, 112), str(path), dynamo=False)
    assert loader.detect_format(path) == "onnx"
    variables, info = load_weights(path)
    assert info.model_name == MODEL and info.format == "onnx"
    torch_path = tmp_path / "sd.pt"
    torch.save(ref_net.state_dict(), torch_path)
    from_torch, _ = load_weights(torch_path)
    fa, fb = flatten_variables(variables), flatten_variables(from_torch)
    assert set(fa) == set(fb)
    for k in fa:  # the exporter may fold BatchNorm: compare values loosely, structure exactly
        assert fa[k].shape == fb[k].shape, k


def test_dlib_dispatch():
    from synleak_jax.weights import convert_dlib

    try:
        path = convert_dlib.default_dlib_weights_path()
    except Exception as e:  # noqa: BLE001
        pytest.skip(f"dlib weights not installed: {e}")
    assert loader.detect_format(path) == "dlib_dat"
    variables, info = load_weights(path)
    assert info.model_name == "dlib_resnet_v1" and info.format == "dlib_dat"
    assert info.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    _assert_tree_equal(variables, convert_dlib.load_dlib_dat(path))
    with pytest.raises(loader.WeightsFormatError, match="dlib_resnet_v1"):
        load_weights(path, "iresnet18")


def test_errors(torch_files, tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        load_weights(tmp_path / "missing.pth")
    with pytest.raises(loader.UnknownModelError, match="iresnet18.*iresnet50|available models"):
        load_weights(torch_files["zip"], "resnet9000")
    # Truncated zip and legacy files: the path is named.
    for kind in ("zip", "legacy"):
        data = torch_files[kind].read_bytes()
        cut = tmp_path / f"cut_{kind}.pt"
        cut.write_bytes(data[: len(data) // 2])
        with pytest.raises(torch_pickle.TorchFileError, match=str(cut)):
            load_weights(cut)
    junk = tmp_path / "weights.pt"
    junk.write_bytes(b"\x00junk" * 100)
    with pytest.raises(loader.WeightsFormatError, match="not recognised"):
        load_weights(junk)
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(loader.WeightsFormatError, match="empty"):
        load_weights(empty)
    (tmp_path / "somedir").mkdir()
    with pytest.raises(loader.WeightsFormatError, match="not a converted-weights directory"):
        load_weights(tmp_path / "somedir")
    # Wrong model for these weights: the converter names the offending key.
    with pytest.raises(WeightMappingError):
        load_weights(torch_files["zip"], "iresnet34")
    # A state dict of no known backbone.
    other = tmp_path / "other.pt"
    torch.save(torch.nn.Linear(3, 2).state_dict(), other)
    with pytest.raises(WeightMappingError, match="cannot infer the model"):
        load_weights(other)


def test_adaface_lightning_checkpoint_drops_training_head(tmp_path, rng):
    net = randomize_(make_reference("adaface_ir18"), rng)
    sd = net.state_dict()
    plain = tmp_path / "plain.pt"
    torch.save(sd, plain)
    ckpt = tmp_path / "adaface_ir18_webface.ckpt"  # AdaFace layout: Lightning, "model.*" + margin head kernel
    torch.save({"epoch": 25, "state_dict": {**{f"model.{k}": v for k, v in sd.items()},
                                            "head.kernel": torch.randn(512, 7)},
                "hyper_parameters": {"head": "adaface", "m": 0.4, "h": 0.333}}, ckpt)
    want, _ = load_weights(plain)
    got, info = load_weights(ckpt)
    assert info.model_name == "adaface_ir18" and info.format == "torch_zip"
    _assert_tree_equal(got, want)
    # Anything else beside the backbone is not silently dropped.
    bad = tmp_path / "extra.ckpt"
    torch.save({"state_dict": {**{f"model.{k}": v for k, v in sd.items()}, "optimizer_m": torch.zeros(3)}}, bad)
    with pytest.raises(WeightMappingError):
        load_weights(bad, "adaface_ir18")


def test_stripped_lightning_checkpoint_loads(tmp_path, rng):
    """Issue #13: {'state_dict': {...}} and nothing else (a Lightning .ckpt stripped to its weights) is a
    wrapper; it used to be flattened to 'state_dict.model.*' and fail with a missing key."""
    net = randomize_(make_reference("adaface_ir18"), rng)
    sd = net.state_dict()
    plain = tmp_path / "plain.pt"
    torch.save(sd, plain)
    want, _ = load_weights(plain)
    for key in ("state_dict", "model_state_dict"):
        stripped = tmp_path / f"{key}.ckpt"
        torch.save({key: {**{f"model.{k}": v for k, v in sd.items()}, "head.kernel": torch.randn(512, 7)}}, stripped)
        got, info = load_weights(stripped)
        assert info.model_name == "adaface_ir18", key
        _assert_tree_equal(got, want)


def test_orbax_directory_whose_model_name_does_not_fit_is_refused(torch_files, tmp_path):
    variables, info = load_weights(torch_files["zip"])  # iresnet18
    meta = loader.conversion_metadata(info)
    for other in ("iresnet34", "mobilefacenet"):
        out = save_variables(tmp_path / other, variables, {**meta, "model_name": other})
        with pytest.raises(orbax_io.CheckpointError,
                           match=rf"{other}: its metadata says model_name '{other}' but its variables do not fit"):
            load_weights(out)
    # Without recorded shapes the restored arrays are checked instead; an unknown recorded name is named.
    out = save_variables(tmp_path / "noshapes", variables, {**meta, "model_name": "iresnet34"})
    recorded = json.loads((out / orbax_io.METADATA_FILE).read_text())
    del recorded["variables"]
    (out / orbax_io.METADATA_FILE).write_text(json.dumps(recorded))
    with pytest.raises(orbax_io.CheckpointError, match="do not fit"):
        load_weights(out)
    recorded["model_name"] = "resnet9000"
    (out / orbax_io.METADATA_FILE).write_text(json.dumps(recorded))
    with pytest.raises(orbax_io.CheckpointError, match="'resnet9000', which is not a known model"):
        load_weights(out)
    # Control: the matching name loads.
    good = save_variables(tmp_path / "good", variables, meta)
    _assert_tree_equal(load_weights(good)[0], variables)


def test_non_regular_weights_paths_are_named(tmp_path):
    fifo = tmp_path / "pipe.pth"
    os.mkfifo(fifo)
    cases = {fifo: "a FIFO \\(named pipe\\), not a regular weights file",
             "/dev/zero": "a character device, not a regular weights file",
             tmp_path: "a directory, but not a converted-weights directory"}
    for path, message in cases.items():
        with pytest.raises(loader.WeightsFormatError, match=message):
            load_weights(path)  # the FIFO would block forever in open()
