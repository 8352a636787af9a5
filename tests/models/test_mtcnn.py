"""MTCNN P/R/O-Net: Flax vs PyTorch reference modules, with random and with the released weights."""

from __future__ import annotations

import io
import pickle

import jax
import numpy as np
import pytest
import torch

from synleak_jax.models import mtcnn
from synleak_jax.weights import mtcnn_weights
from synleak_jax.weights.mapping import flatten_variables
from tests.models.torch_refs_other import MTCNN_REFS, randomize_

TOL = 1e-5


def rel_err(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def legacy_bytes(state_dict) -> bytes:
    """torch.save in the legacy (pre-1.6, non-zip) format, like the files in the facenet-pytorch wheel."""
    buf = io.BytesIO()
    torch.save(state_dict, buf, _use_new_zipfile_serialization=False)
    return buf.getvalue()


def run_flax(net, variables, x_nhwc):
    with jax.default_matmul_precision("highest"):
        return jax.jit(mtcnn.NETS[net]().apply)(variables, x_nhwc)


def run_torch(ref, x_nhwc):
    with torch.no_grad():
        out = ref(torch.from_numpy(np.ascontiguousarray(np.transpose(x_nhwc, (0, 3, 1, 2)))))
    return [o.numpy() for o in out]


def compare(net, flax_out, torch_out):
    """Flax outputs are NHWC (P-Net maps) -> compare with the NCHW torch maps after transposing."""
    for f, t in zip(flax_out, torch_out):
        f = np.asarray(f)
        if net == "pnet":
            f = np.transpose(f, (0, 3, 1, 2))
        assert f.shape == t.shape
        err = rel_err(f, t)
        assert err <= TOL, f"{net}: relative L2 error {err:.2e}"


INPUT_SHAPES = {"pnet": [(2, 37, 53, 3), (1, 12, 12, 3), (1, 64, 31, 3)], "rnet": [(5, 24, 24, 3)],
                "onet": [(5, 48, 48, 3)]}


@pytest.mark.parametrize("net", mtcnn_weights.NET_NAMES)
def test_random_weights_parity_through_legacy_file(net, rng):
    """Random weights -> legacy torch file -> our restricted reader -> converter -> Flax == torch."""
    gen = torch.Generator().manual_seed(int(rng.integers(2**31)))
    ref = randomize_(MTCNN_REFS[net](), gen)
    tensors = mtcnn_weights.read_torch_bytes(legacy_bytes(ref.state_dict()), f"{net}.pt")
    variables = mtcnn_weights.convert_net(net, tensors, f"{net}.pt")
    for shape in INPUT_SHAPES[net]:
        x = rng.uniform(-1, 1, shape).astype(np.float32)
        compare(net, run_flax(net, variables, x), run_torch(ref, x))


def test_pnet_ceil_mode_output_size(rng):
    """Odd sizes keep the partial last pooling window: H' = ceil((H-2)/2) - 4."""
    variables = jax.eval_shape(lambda: mtcnn.PNet().init(jax.random.PRNGKey(0), np.zeros((1, 12, 12, 3), np.float32)))
    for h, w in [(12, 12), (13, 15), (25, 40)]:
        reg, prob = jax.eval_shape(mtcnn.PNet().apply, variables, jax.ShapeDtypeStruct((1, h, w, 3), np.float32))
        assert prob.shape == (1, -(-(h - 2) // 2) - 4, -(-(w - 2) // 2) - 4, 2)
        assert reg.shape[:3] == prob.shape[:3]


def test_converter_rejects_unknown_and_missing_keys(rng):
    ref = MTCNN_REFS["rnet"]()
    sd = {k: v.numpy() for k, v in ref.state_dict().items()}
    with pytest.raises(ValueError, match="extra.weight"):
        mtcnn_weights.convert_net("rnet", {**sd, "extra.weight": np.zeros(3, np.float32)})
    del sd["dense4.bias"]
    with pytest.raises(ValueError, match="dense4.bias"):
        mtcnn_weights.convert_net("rnet", sd)


def test_reader_refuses_arbitrary_objects(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    data = pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2) + pickle.dumps(1001, protocol=2)
    data += pickle.dumps({}, protocol=2) + pickle.dumps({"w": Evil()}, protocol=2)
    with pytest.raises(Exception, match="print|builtins|refus|not allowed|forbidden|unsupported"):
        mtcnn_weights.read_torch_bytes(data, "evil.pt")


def test_missing_cache_says_how_to_fetch(tmp_path):
    with pytest.raises(FileNotFoundError, match="synleak-fetch-mtcnn"):
        mtcnn_weights.load_mtcnn_variables(tmp_path / "nothing")


@pytest.fixture(scope="module")
def released():
    """The released facenet-pytorch MTCNN weights from the local cache (written by synleak-fetch-mtcnn)."""
    try:
        return mtcnn_weights.load_mtcnn_variables()
    except FileNotFoundError as e:
        pytest.fail(f"{e}\n(the MTCNN tests need the converted weights: run `synleak-fetch-mtcnn` first)")


def to_torch_state_dict(net, variables):
    """Inverse of the converter (HWIO -> OIHW, IO -> OI), to load our cached weights into the reference."""
    sd = {}
    flat = {k: np.asarray(v) for k, v in flatten_variables(variables).items()}
    for path, value in flat.items():
        _, layer, leaf = path.split("/")
        if leaf == "kernel":
            sd[f"{layer}.weight"] = np.transpose(value, (3, 2, 0, 1)) if value.ndim == 4 else value.T
        elif leaf == "bias":
            sd[f"{layer}.bias"] = value
        else:
            sd[f"{layer}.weight"] = value
    return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in sd.items()}


@pytest.mark.parametrize("net", mtcnn_weights.NET_NAMES)
def test_released_weights_parity(net, released, rng):
    ref = MTCNN_REFS[net]().eval()
    ref.load_state_dict(to_torch_state_dict(net, released[net]), strict=True)
    shape = {"pnet": (1, 61, 47, 3), "rnet": (8, 24, 24, 3), "onet": (8, 48, 48, 3)}[net]
    pixels = rng.integers(0, 256, shape).astype(np.float32)
    x = np.asarray(mtcnn.normalize(pixels))
    compare(net, run_flax(net, released[net], x), run_torch(ref, x))


def test_cache_manifest_records_wheel_hashes(released):
    manifest = mtcnn_weights.read_manifest()
    assert set(manifest["sha256"]) == {"pnet.pt", "rnet.pt", "onet.pt"}
    assert all(len(h) == 64 for h in manifest["sha256"].values())
    ok, why = mtcnn_weights.cache_is_valid()
    assert ok, why


def test_fetch_from_wheel_is_idempotent_and_checks_the_wheel(tmp_path, rng):
    """synleak-fetch-mtcnn's core on a wheel built here (random weights in the legacy format)."""
    import zipfile

    from synleak_jax.cli import fetch_mtcnn

    gen = torch.Generator().manual_seed(int(rng.integers(2**31)))
    refs = {net: randomize_(MTCNN_REFS[net](), gen) for net in mtcnn_weights.NET_NAMES}
    wheel = tmp_path / "facenet_pytorch-2.6.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("facenet_pytorch/__init__.py", "raise RuntimeError('wheel code must never run')\n")
        for net, ref in refs.items():
            zf.writestr(f"facenet_pytorch/data/{net}.pt", legacy_bytes(ref.state_dict()))
    cache = tmp_path / "cache"
    assert fetch_mtcnn.fetch(str(wheel), str(cache)) == cache
    manifest = cache / "manifest.json"
    stamp = manifest.stat().st_mtime_ns
    restored = mtcnn_weights.load_mtcnn_variables(cache)
    x = rng.uniform(-1, 1, (3, 48, 48, 3)).astype(np.float32)
    compare("onet", run_flax("onet", restored["onet"], x), run_torch(refs["onet"], x))
    fetch_mtcnn.fetch(str(wheel), str(cache))  # valid cache: nothing is rewritten
    assert manifest.stat().st_mtime_ns == stamp
    bad = tmp_path / "bad.whl"
    with zipfile.ZipFile(bad, "w") as zf:
        zf.writestr("facenet_pytorch/data/pnet.pt", legacy_bytes(refs["pnet"].state_dict()))
    with pytest.raises(ValueError, match="rnet.pt"):
        fetch_mtcnn.fetch(str(bad), str(tmp_path / "cache2"))
    with pytest.raises(FileNotFoundError, match="no_such.whl"):
        fetch_mtcnn.fetch(str(tmp_path / "no_such.whl"), str(tmp_path / "cache3"))
