"""synleak-fetch-mtcnn keeps its source wheel in ``<cache>/wheel/`` (the facenet-pytorch reference tests run
``detect_face`` from it) and stays idempotent. Wheels are built here with random weights in the legacy
torch format; the conversion itself is tested in tests/models/test_mtcnn.py."""

from __future__ import annotations

import io
import zipfile

import pytest
import torch

from synleak_jax.cli import fetch_mtcnn
from synleak_jax.weights import mtcnn_weights
from tests.models.torch_refs_other import MTCNN_REFS, randomize_


def make_wheel(path, seed: int):
    """A stand-in facenet-pytorch wheel: random P/R/O-Net state dicts saved as legacy torch files."""
    gen = torch.Generator().manual_seed(seed)
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("facenet_pytorch/__init__.py", "raise RuntimeError('wheel code must never run')\n")
        for net in mtcnn_weights.NET_NAMES:
            buf = io.BytesIO()
            torch.save(randomize_(MTCNN_REFS[net](), gen).state_dict(), buf, _use_new_zipfile_serialization=False)
            zf.writestr(f"facenet_pytorch/data/{net}.pt", buf.getvalue())
    return path


@pytest.fixture
def no_download(monkeypatch):
    def refuse(dest):
        raise AssertionError("pip download must not run here")

    monkeypatch.setattr(fetch_mtcnn, "download_wheel", refuse)


def test_wheel_is_kept_and_a_valid_cache_only_gains_its_wheel(tmp_path, rng, no_download):
    wheel = make_wheel(tmp_path / "facenet_pytorch-2.6.0-py3-none-any.whl", int(rng.integers(2**31)))
    cache = tmp_path / "cache"
    fetch_mtcnn.fetch(str(wheel), str(cache))
    kept = mtcnn_weights.cached_wheel(cache)
    assert kept == cache / "wheel" / wheel.name and kept.read_bytes() == wheel.read_bytes()
    assert mtcnn_weights.wheel_hashes(kept) == mtcnn_weights.read_manifest(cache)["sha256"]

    manifest = cache / "manifest.json"
    stamp = manifest.stat().st_mtime_ns
    fetch_mtcnn.fetch(None, str(cache))  # valid cache + wheel: nothing to do, no download
    assert manifest.stat().st_mtime_ns == stamp

    kept.unlink()  # a cache written before the wheel was kept
    assert mtcnn_weights.cached_wheel(cache) is None
    assert mtcnn_weights.cache_is_valid(cache)[0]
    fetch_mtcnn.fetch(str(wheel), str(cache))  # same weights: the wheel is stored, nothing converted again
    assert mtcnn_weights.cached_wheel(cache) == kept and manifest.stat().st_mtime_ns == stamp


def test_valid_cache_without_wheel_downloads_it(tmp_path, rng, monkeypatch):
    (tmp_path / "src").mkdir()
    wheel = make_wheel(tmp_path / "src" / "facenet_pytorch-2.6.0-py3-none-any.whl", int(rng.integers(2**31)))
    cache = tmp_path / "cache"
    fetch_mtcnn.fetch(str(wheel), str(cache))
    (cache / "wheel" / wheel.name).unlink()
    calls = []

    def pip_download(dest):  # what `pip download` leaves: the wheel in dest
        calls.append(dest)
        return wheel.rename(dest / wheel.name)

    monkeypatch.setattr(fetch_mtcnn, "download_wheel", pip_download)
    fetch_mtcnn.fetch(None, str(cache))
    assert len(calls) == 1 and mtcnn_weights.cached_wheel(cache) == cache / "wheel" / wheel.name


def test_a_wheel_with_other_weights_is_converted_and_replaces_the_kept_one(tmp_path, rng, no_download):
    seed = int(rng.integers(2**30))
    first = make_wheel(tmp_path / "facenet_pytorch-2.6.0-py3-none-any.whl", seed)
    other = make_wheel(tmp_path / "facenet_pytorch-9.9.9-py3-none-any.whl", seed + 1)
    cache = tmp_path / "cache"
    fetch_mtcnn.fetch(str(first), str(cache))
    before = mtcnn_weights.read_manifest(cache)["sha256"]
    (cache / "wheel" / first.name).unlink()
    fetch_mtcnn.fetch(str(other), str(cache))  # valid cache, but its weights are not this wheel's
    after = mtcnn_weights.read_manifest(cache)["sha256"]
    assert after != before and after == mtcnn_weights.wheel_hashes(other)
    assert mtcnn_weights.cached_wheel(cache) == cache / "wheel" / other.name
    fetch_mtcnn.fetch(str(first), str(cache), force=True)  # forced: converted again, one wheel kept
    assert mtcnn_weights.read_manifest(cache)["sha256"] == before
    assert sorted(p.name for p in (cache / "wheel").iterdir()) == [first.name]
