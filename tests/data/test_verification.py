"""Verification bins: read (several pickle protocols, numpy issame), refuse malicious pickles."""

import os
import pickle

import numpy as np
import pytest

from synleak_jax.data import pipeline, rejects, verification
from synleak_jax.models.registry import InputSpec
from tests.data import fixtures
from tests.weights import hostile


def _pairs(rng, p=3):
    imgs = [fixtures.encode(fixtures.random_rgb(rng, 8, 8), "JPEG") for _ in range(2 * p)]
    issame = [bool(x) for x in rng.integers(0, 2, p)]
    return imgs, issame


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_read_bin(tmp_path, rng, protocol):
    imgs, issame = _pairs(rng)
    path = tmp_path / "lfw.bin"
    verification.write_bin(path, imgs, issame, protocol=protocol)
    vp = verification.load_bin(path)
    assert vp.name == "lfw" and len(vp) == 3 and vp.issame.tolist() == issame
    assert [vp.images[i] for i in range(6)] == imgs
    assert vp.pair_indices().tolist() == [[0, 1], [2, 3], [4, 5]]
    assert vp.images.describe(3) == f"{path}[3]"
    spec = InputSpec(8, 8, "RGB", (0.0,) * 3, (1.0,) * 3, 4, "cosine", "arcface112")
    b = next(iter(pipeline.make_pipeline(vp.images, spec, 8)))
    assert b["valid"].tolist() == [True] * 6 + [False] * 2


@pytest.mark.parametrize("protocol", [2, 4])
def test_numpy_issame_and_scalars(tmp_path, rng, protocol):
    imgs, issame = _pairs(rng, 4)
    for obj in ((imgs, np.asarray(issame)), (imgs, [np.bool_(x) for x in issame])):
        path = tmp_path / "cfp.bin"
        path.write_bytes(pickle.dumps(obj, protocol=protocol))
        vp = verification.load_bin(path)
        assert vp.issame.tolist() == issame and [vp.images[i] for i in range(8)] == imgs


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_bins_refused(tmp_path, rng):
    imgs, issame = _pairs(rng)
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.bin"
    path.write_bytes(pickle.dumps((imgs + [_Evil(marker)], issame), protocol=2))
    with pytest.raises(verification.UnsafePickleError, match=r"evil\.bin.*(posix|os)\.system"):
        verification.load_bin(path)
    assert not marker.exists()
    # A float64 array (disallowed dtype) and an arbitrary class are refused too.
    path.write_bytes(pickle.dumps((imgs, np.zeros(3)), protocol=2))
    with pytest.raises(verification.UnsafePickleError, match="dtype"):
        verification.load_bin(path)
    path.write_bytes(pickle.dumps((imgs, issame, {1: rejects.RejectEntry(0, "a", 1, "b")})))
    with pytest.raises(verification.UnsafePickleError, match="RejectEntry"):
        verification.load_bin(path)


def test_bad_bins_named(tmp_path, rng):
    imgs, issame = _pairs(rng)
    path = tmp_path / "odd.bin"
    verification.write_bin(path, imgs[:-1], issame)
    with pytest.raises(rejects.DataError, match=r"odd\.bin.*5 images for 3 pairs"):
        verification.load_bin(path)
    path.write_bytes(b"\x80\x04garbage")
    with pytest.raises(rejects.DataError, match=r"odd\.bin"):
        verification.load_bin(path)
    with pytest.raises(rejects.DataError, match="not found"):
        verification.load_bin(tmp_path / "nope.bin")


# ------------------------------------------------------------------------------------------------------
# Issue #13: hostile bins, made here. Memory bounds are checked in a child interpreter under RLIMIT_AS
# (address space after importing the reader + a headroom; verification.py does not import jax) — see
# tests/weights/hostile.py.
# ------------------------------------------------------------------------------------------------------

LOAD_BIN = "synleak_jax.data.verification.load_bin"
MiB = 1 << 20


class _Reduce:
    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


def _assert_refused(report, path, *words):
    assert report["outcome"] in ("DataError", "UnsafePickleError"), report
    assert str(path) in report["message"], report
    for word in words:
        assert word in report["message"], report
    assert report["control"] == "MemoryError", report  # the limit was in force
    print(f"{path.name}: peak RSS {(report['peak_rss'] - report['rss_before']) / MiB:.1f} MiB over the imports")


def test_reconstruct_of_any_shape_is_refused(tmp_path):
    # numpy's _reconstruct asked for a 768 MiB uninitialised array, memoised, listed 8 times: the old reader
    # made it and tobytes()'d every reference (a 111-byte file -> 6.2 GB).
    from numpy._core.multiarray import _reconstruct

    huge = _Reduce(_reconstruct, np.ndarray, (768 * MiB,), b"b")
    path = tmp_path / "huge.bin"
    path.write_bytes(pickle.dumps(([huge] * 8, [True] * 4), protocol=2))
    assert path.stat().st_size < 200
    report = hostile.run_limited(LOAD_BIN, path, headroom=512 * MiB)
    _assert_refused(report, path, "array reconstruction with shape")
    assert report["peak_rss"] - report["rss_before"] < 16 * MiB


def test_memo_references_are_bounded_and_converted_once(tmp_path, rng):
    img = np.frombuffer(fixtures.encode(fixtures.random_rgb(rng, 16, 16), "PNG"), np.uint8)
    # A few references: loads, one bytes object shared by every reference (no copy per reference).
    path = tmp_path / "few.bin"
    path.write_bytes(pickle.dumps(([img] * 8, [True, False, True, True]), protocol=2))
    vp = verification.load_bin(path)
    assert all(vp.images[i] == img.tobytes() for i in range(8))
    assert vp.images.read_bytes(0) is vp.images.read_bytes(7)
    # 20,000 references to one 1 MiB array in a ~1 MB file: 20 GiB if each reference became its own bytes.
    big = np.frombuffer(rng.integers(0, 256, MiB, dtype=np.uint8).tobytes(), np.uint8)
    path = tmp_path / "many.bin"
    path.write_bytes(pickle.dumps(([big] * 20_000, [True] * 10_000), protocol=2))
    assert path.stat().st_size < 2 * MiB
    report = hostile.run_limited(LOAD_BIN, path, headroom=256 * MiB)
    _assert_refused(report, path, "materialise more than", "image")
    assert report["peak_rss"] - report["rss_before"] < 32 * MiB


def test_bytearray_images_converted_once(tmp_path, rng):
    # Protocol 5 has a BYTEARRAY8 opcode (no global needed); each distinct object becomes bytes once.
    img = bytearray(fixtures.encode(fixtures.random_rgb(rng, 8, 8), "JPEG"))
    path = tmp_path / "ba.bin"
    path.write_bytes(pickle.dumps(([img] * 4, [1, 0]), protocol=5))
    vp = verification.load_bin(path)
    assert vp.images.read_bytes(0) == bytes(img) and vp.images.read_bytes(0) is vp.images.read_bytes(3)
    assert vp.issame.tolist() == [True, False]


def test_issame_must_be_bools(tmp_path, rng):
    imgs, _ = _pairs(rng, 2)
    path = tmp_path / "issame.bin"
    good = {"ints": [1, 0], "uint8_array": np.array([1, 0], np.uint8), "bool_array": np.array([[True], [False]]),
            "np_bools": [np.bool_(True), np.bool_(False)]}
    for name, issame in good.items():
        path.write_bytes(pickle.dumps((imgs, issame), protocol=2))
        assert verification.load_bin(path).issame.tolist() == [True, False], name
    bad = {"strings": (["yes", "no"], "issame\\[0\\] is 'yes'"), "two": ([1, 2], "issame\\[1\\] is 2"),
           "floats": ([1.0, 0.0], "issame\\[0\\] is 1.0"), "uint8_three": (np.array([0, 3], np.uint8), "other than 0/1"),
           "object_array": (np.array([True, "x"], dtype=object), "dtype object is not allowed"),
           "dict": ({0: True}, "must be a list")}
    for name, (issame, message) in bad.items():
        path.write_bytes(pickle.dumps((imgs, issame), protocol=2))
        with pytest.raises(rejects.DataError, match=rf"issame\.bin.*{message}"):
            verification.load_bin(path)
    # A dtype whose BUILD state tries to add fields is refused (numpy's own dtype is never BUILT here).
    data = pickle.dumps((imgs, np.array([True, False])), protocol=2)
    assert data.count(b"NNNJ") == 1
    path.write_bytes(data.replace(b"NNNJ", b"NNK\x05J"))
    with pytest.raises(verification.UnsafePickleError, match="dtype state"):
        verification.load_bin(path)


def test_build_cannot_patch_the_allowlist(tmp_path):
    path = tmp_path / "patch.bin"
    path.write_bytes(b"\x80\x02c_codecs\nencode\n}X\x0c\x00\x00\x00__defaults__X\x01\x00\x00\x00xsb.")
    with pytest.raises(rejects.DataError, match=r"patch\.bin"):
        verification.load_bin(path)
    assert verification._safe_encode.__defaults__ == ("utf-8", "strict")


def test_fifo_is_refused_without_opening(tmp_path):
    fifo = tmp_path / "lfw.bin"
    os.mkfifo(fifo)
    with pytest.raises(rejects.DataError, match=r"lfw\.bin: a FIFO"):
        verification.load_bin(fifo)  # open() would block forever


def test_read_limit_is_configurable(tmp_path, rng, monkeypatch):
    imgs, issame = _pairs(rng, 3)
    path = tmp_path / "lfw.bin"
    verification.write_bin(path, imgs, issame)
    with pytest.raises(rejects.DataError, match="the cap of 100 bytes"):
        verification.load_bin(path, max_read_bytes=100)
    monkeypatch.setenv("SYNLEAK_MAX_READ_BYTES", "100")
    with pytest.raises(rejects.DataError, match="the cap of 100 bytes"):
        verification.load_bin(path)
    monkeypatch.setenv("SYNLEAK_MAX_READ_BYTES", "1M")
    assert len(verification.load_bin(path)) == 3
