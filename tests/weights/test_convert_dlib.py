"""Tests for synleak_jax/weights/convert_dlib.py: the dlib .dat reader and its converter.

The real file ships in the face_recognition_models package (a project dependency). Altered copies are written
to tmp_path; the package file is never modified.
"""

import os
import re

import numpy as np
import pytest

from synleak_jax.weights import convert_dlib as cd
from synleak_jax.weights import converters
from synleak_jax.weights.mapping import WeightMappingError


@pytest.fixture(scope="module")
def dat_bytes():
    return cd.default_dlib_weights_path().read_bytes()


@pytest.fixture(scope="module")
def tensors(dat_bytes):
    return cd.parse_dlib_resnet(dat_bytes, "dlib.dat")


def _write(tmp_path, data, name="altered.dat"):
    p = tmp_path / name
    p.write_bytes(bytes(data))
    return p


def _offset(msg):
    m = re.search(r"byte (\d+)", msg)
    assert m, msg
    return int(m.group(1))


def test_default_path_finds_the_shipped_file():
    p = cd.default_dlib_weights_path()
    assert p.name == cd.DLIB_WEIGHTS_FILENAME
    assert p.stat().st_size == cd.DLIB_WEIGHTS_SIZE


def test_missing_package_gives_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.delenv("SYNLEAK_DLIB_WEIGHTS", raising=False)
    monkeypatch.setattr(cd.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="pip install face-recognition-models"):
        cd.default_dlib_weights_path()
    monkeypatch.setenv("SYNLEAK_DLIB_WEIGHTS", str(tmp_path / "nope.dat"))
    with pytest.raises(FileNotFoundError, match="SYNLEAK_DLIB_WEIGHTS"):
        cd.default_dlib_weights_path()


def test_reads_every_layer_with_expected_shapes(tensors):
    # 29 convs (filters + biases), 29 affines (gamma + beta), the fc, and 3 metadata entries.
    assert len(tensors) == 29 * 2 + 29 * 2 + 1 + 3
    n_params = sum(v.size for k, v in tensors.items() if not k.startswith(("input.", "loss.")))
    assert n_params == 5_614_592
    assert tensors["stem.conv.filters"].shape == (32, 3, 7, 7)
    assert tensors["unit3.conv1.filters"].shape == (64, 32, 3, 3)  # first down unit widens 32 -> 64
    assert tensors["unit13.conv2.filters"].shape == (256, 256, 3, 3)
    assert tensors["fc.weights"].shape == (256, 128)
    np.testing.assert_allclose(tensors["input.mean_rgb"], [122.782, 117.001, 104.298], atol=1e-4)
    assert float(tensors["loss.distance_threshold"]) == pytest.approx(0.6, abs=1e-6)
    assert float(tensors["loss.margin"]) == pytest.approx(0.04, abs=1e-6)
    for k, v in tensors.items():
        assert v.dtype == np.float32 and np.all(np.isfinite(v)), k
    # Trained weights, not zeros: every affine has non-trivial scales.
    assert all(np.std(tensors[f"unit{i}.affine1.gamma"]) > 0 for i in range(14))


def test_file_order_matches_raw_bytes(dat_bytes, tensors):
    # The stem conv's filters are the first tensor data in the file after its header: check them bytewise.
    start = dat_bytes.find(b"\x01\x05con_4")
    r = cd._Reader(dat_bytes, "x")
    r.pos = start
    assert r.string("v") == "con_4" and r.int("tensor version") == 2
    assert np.prod(r.shape4("params")) == 32 * 3 * 49 + 32
    raw = np.frombuffer(dat_bytes, "<f4", count=32 * 3 * 49, offset=r.pos)
    np.testing.assert_array_equal(raw.reshape(32, 3, 7, 7), tensors["stem.conv.filters"])


@pytest.mark.parametrize("cut", [0, 1, 7, 300, 1_000, 2_000_000, 11_000_000, cd.DLIB_WEIGHTS_SIZE - 1])
def test_truncated_file_reports_offset(tmp_path, dat_bytes, cut):
    p = _write(tmp_path, dat_bytes[:cut])
    with pytest.raises(cd.DlibFormatError, match="truncated") as e:
        cd.read_dlib_dat(p)
    msg = str(e.value)
    assert str(p) in msg
    assert _offset(msg) <= cut


def test_trailing_bytes_are_an_error(tmp_path, dat_bytes):
    p = _write(tmp_path, dat_bytes + b"\x00")
    with pytest.raises(cd.DlibFormatError, match=r"1 trailing byte") as e:
        cd.read_dlib_dat(p)
    assert _offset(str(e.value)) == len(dat_bytes)


def _nth(data, needle, n):
    pos = -1
    for _ in range(n + 1):
        pos = data.find(needle, pos + 1)
        assert pos >= 0
    return pos


def test_altered_layer_type_names_the_layer(tmp_path, dat_bytes):
    data = bytearray(dat_bytes)
    # The second affine in file order is unit 0's first affine (the stem's is first).
    pos = _nth(dat_bytes, b"affine_", 1)
    data[pos + 5] = ord("f")  # "affine_" -> "affinf_"
    with pytest.raises(cd.DlibFormatError) as e:
        cd.read_dlib_dat(_write(tmp_path, data))
    msg = str(e.value)
    assert "unit 0 (32 ch) affine1" in msg and "'affinf_'" in msg and "expected layer type 'affine_'" in msg
    assert _offset(msg) == pos - 2  # the string's length integer


def test_swapped_layer_type_is_caught(tmp_path, dat_bytes):
    # Turn the first max_pool_2 into avg_pool_2 (same length): the structure says a max-pool is expected.
    data = bytearray(dat_bytes)
    pos = dat_bytes.find(b"max_pool_2")
    data[pos:pos + 3] = b"avg"
    with pytest.raises(cd.DlibFormatError, match=r"stem max_pool 3x3/2.*expected layer type 'max_pool_2'"):
        cd.read_dlib_dat(_write(tmp_path, data))


def _field_offset(data: bytes, start: int, n_ints_before: int, tensors_before: int) -> int:
    """Offset of the integer after a version string at ``start``, ``tensors_before`` tensors and some ints."""
    r = cd._Reader(data, "x")
    r.pos = start
    r.string("version")
    for _ in range(tensors_before):
        r.tensor("t")
    for _ in range(n_ints_before):
        r.int("i")
    return r.pos


def test_changed_dimension_names_the_layer(tmp_path, dat_bytes):
    # Stem conv: version string, params tensor, then num_filters (32) -> write 33.
    start = dat_bytes.find(b"\x01\x05con_4")
    off = _field_offset(dat_bytes, start, 0, 1)
    assert dat_bytes[off:off + 2] == b"\x01\x20"
    data = bytearray(dat_bytes)
    data[off + 1] = 33
    with pytest.raises(cd.DlibFormatError) as e:
        cd.read_dlib_dat(_write(tmp_path, data))
    msg = str(e.value)
    assert "stem conv 7x7/2" in msg and "expected num_filters = 32, found 33" in msg and _offset(msg) == off

    # fc: version string then num_outputs (128) -> 64.
    start = dat_bytes.find(b"\x01\x04fc_2")
    off = _field_offset(dat_bytes, start, 0, 0)
    assert dat_bytes[off:off + 2] == b"\x01\x80"
    data = bytearray(dat_bytes)
    data[off + 1] = 64
    with pytest.raises(cd.DlibFormatError, match=r"fc_no_bias<128>.*expected num_outputs = 128, found 64"):
        cd.read_dlib_dat(_write(tmp_path, data))

    # A stride: unit 3's first conv (the 4th con_4 after the stem's in file order) must have stride 2.
    start = _nth(dat_bytes, b"\x01\x05con_4", 7)  # stem, u0 c1/c2, u1 c1/c2, u2 c1/c2, then u3 conv1
    off = _field_offset(dat_bytes, start, 3, 1)  # after num_filters, nr, nc -> stride_y
    assert dat_bytes[off:off + 2] == b"\x01\x02"
    data = bytearray(dat_bytes)
    data[off + 1] = 1
    with pytest.raises(cd.DlibFormatError, match=r"unit 3 \(64 ch, down\) conv1 3x3/2.*stride_y = 2, found 1"):
        cd.read_dlib_dat(_write(tmp_path, data))


def test_foreign_file_is_rejected(tmp_path):
    with pytest.raises(cd.DlibFormatError, match="byte 0"):
        cd.read_dlib_dat(_write(tmp_path, b"PK\x03\x04" + b"\x00" * 100))


def test_converter_registered_and_detects_only_dlib(tensors):
    conv = converters.converter_for_family("dlib_resnet")
    assert conv.detect({k: v.shape for k, v in tensors.items()}) == "dlib_resnet_v1"
    assert conv.detect({"conv1.weight": (64, 3, 3, 3), "fc.weight": (512, 25088)}) is None


def test_load_dlib_dat_gives_checked_flax_variables(tensors):
    variables = cd.load_dlib_dat()
    params = variables["params"]
    assert set(variables) == {"params"}
    np.testing.assert_array_equal(params["stem_conv"]["kernel"], np.transpose(tensors["stem.conv.filters"], (2, 3, 1, 0)))
    np.testing.assert_array_equal(params["unit5"]["affine2"]["scale"], tensors["unit5.affine2.gamma"])
    np.testing.assert_array_equal(params["fc"]["kernel"], tensors["fc.weights"])
    # A dict missing a tensor is refused by the checked mapping.
    broken = dict(tensors)
    del broken["unit2.conv1.biases"]
    with pytest.raises(WeightMappingError, match="unit2.conv1.biases"):
        converters.load_state_dict_into("dlib_resnet_v1", broken, "broken")


def test_random_corruption_never_escapes_as_another_exception(dat_bytes, rng):
    """Byte changes around the layer records (type strings, sizes, alias shapes, multipliers, flags, tensor
    headers) either leave a readable file or raise DlibFormatError, never IndexError/OverflowError/..."""
    positions = []
    for needle in (b"con_4", b"affine_", b"relu_", b"add_prev_", b"avg_pool_2", b"max_pool_2", b"fc_2",
                   b"input_rgb", b"loss_metric"):
        start = 0
        while (pos := dat_bytes.find(needle, start)) >= 0:
            positions.extend(range(max(0, pos - 40), min(len(dat_bytes), pos + 60)))
            start = pos + 1
    positions.extend(range(0, 300))  # the nested version headers
    hit = {"ok": 0, "error": 0}
    for i in rng.choice(np.unique(positions), 60, replace=False):
        data = bytearray(dat_bytes)
        data[i] ^= int(rng.integers(1, 256))
        try:
            cd.parse_dlib_resnet(bytes(data), "fuzz.dat")
            hit["ok"] += 1
        except cd.DlibFormatError as e:
            assert re.search(r"fuzz\.dat: byte \d+: ", str(e)), str(e)
            hit["error"] += 1
    assert hit["error"] > 20, hit  # most structural changes are detected


def _encode_int(value: int) -> bytes:
    magnitude = abs(value).to_bytes(max(1, (abs(value).bit_length() + 7) // 8), "little")
    return bytes([len(magnitude) | (0x80 if value < 0 else 0)]) + magnitude


@pytest.mark.parametrize("dims", [(65536,) * 4, (3_000_000,) * 4, (1 << 21, 1 << 21, 1 << 21, 1 << 1)])
def test_dims_whose_int64_product_wraps_are_refused(tmp_path, dat_bytes, dims):
    """Issue #13: each dim is below the file size, but the int64 product wraps (65536**4 == 0 in int64):
    the old reader read 0 floats and crashed in reshape with a raw ValueError."""
    assert int(np.prod(np.array(dims, np.int64))) != int(np.prod([int(d) for d in dims], dtype=object))
    start = dat_bytes.find(b"\x01\x05con_4")
    off = _field_offset(dat_bytes, start, 0, 0)  # the stem params tensor: version, then n, k, nr, nc
    r = cd._Reader(dat_bytes, "x")
    r.pos = off
    r.int("version")
    dims_at = r.pos
    for _ in range(4):
        r.int("dim")
    data = dat_bytes[:dims_at] + b"".join(_encode_int(d) for d in dims) + dat_bytes[r.pos:]
    path = _write(tmp_path, data, "wrapped.dat")
    with pytest.raises(cd.DlibFormatError, match=r"wrapped\.dat: byte \d+: .*implausible dimensions") as e:
        cd.read_dlib_dat(path)
    assert _offset(str(e.value)) == dims_at


def test_fifo_is_refused_without_opening(tmp_path):
    fifo = tmp_path / "net.dat"
    os.mkfifo(fifo)
    with pytest.raises(cd.DlibFormatError, match=r"net\.dat: a FIFO"):
        cd.read_dlib_dat(fifo)
