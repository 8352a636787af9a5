"""Verification bins: read (several pickle protocols, numpy issame), refuse malicious pickles."""

import os
import pickle

import numpy as np
import pytest

from synleak_jax.data import pipeline, rejects, verification
from synleak_jax.models.registry import InputSpec
from tests.data import fixtures


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
