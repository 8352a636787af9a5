"""MTCNN weights: conversion from facenet-pytorch's ``pnet.pt``/``rnet.pt``/``onet.pt`` and the local cache.

The three files ship inside the facenet-pytorch wheel (``facenet_pytorch/data/*.pt``, legacy pre-1.6
torch pickles). ``synleak-fetch-mtcnn`` reads them straight out of the wheel with
``weights.torch_pickle.load_torch_file`` (no torch, restricted unpickler), converts them here and writes
one orbax checkpoint per network into the cache directory:

  ``$SYNLEAK_CACHE/mtcnn`` (or ``~/.cache/synleak_jax/mtcnn``)/
      ``pnet/``, ``rnet/``, ``onet/``   ``weights.orbax_io`` directories of ``{"params": ...}`` + metadata
      ``manifest.json``                 source wheel, per-file sha256, variable shapes, format version
      ``wheel/facenet_pytorch-*.whl``   the wheel itself, kept for the tests that run facenet-pytorch's own
                                        ``detect_face`` as the reference (never installed or imported here)

:func:`load_mtcnn_variables` restores them and checks them against the Flax modules' shapes.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Mapping

import numpy as np

from synleak_jax.weights.mapping import (
    SourceTensors,
    WeightMappingError,
    assign_variables,
    conv_kernel_oihw_to_hwio,
    flatten_variables,
    linear_oi_to_io,
    variable_shapes,
)

FORMAT_VERSION = 2  # 2: one weights.orbax_io directory per net
NET_NAMES = ("pnet", "rnet", "onet")
WHEEL_SUBDIR = "wheel"  # <cache>/wheel/: the source wheel, kept (see cached_wheel)
FETCH_HINT = "run `synleak-fetch-mtcnn` (downloads the facenet-pytorch wheel with pip and converts its MTCNN weights)"

# Layers of each net in the original state dict: (name, kind). kinds: conv (OIHW weight + bias),
# dense (OI weight + bias), prelu (per-channel slope).
_LAYERS = {
    "pnet": [("conv1", "conv"), ("prelu1", "prelu"), ("conv2", "conv"), ("prelu2", "prelu"),
             ("conv3", "conv"), ("prelu3", "prelu"), ("conv4_1", "conv"), ("conv4_2", "conv")],
    "rnet": [("conv1", "conv"), ("prelu1", "prelu"), ("conv2", "conv"), ("prelu2", "prelu"),
             ("conv3", "conv"), ("prelu3", "prelu"), ("dense4", "dense"), ("prelu4", "prelu"),
             ("dense5_1", "dense"), ("dense5_2", "dense")],
    "onet": [("conv1", "conv"), ("prelu1", "prelu"), ("conv2", "conv"), ("prelu2", "prelu"),
             ("conv3", "conv"), ("prelu3", "prelu"), ("conv4", "conv"), ("prelu4", "prelu"),
             ("dense5", "dense"), ("prelu5", "prelu"), ("dense6_1", "dense"), ("dense6_2", "dense"),
             ("dense6_3", "dense")],
}


def cache_dir() -> Path:
    """``$SYNLEAK_CACHE/mtcnn`` if SYNLEAK_CACHE is set, else ``~/.cache/synleak_jax/mtcnn``."""
    root = os.environ.get("SYNLEAK_CACHE")
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "synleak_jax"
    return base / "mtcnn"


def cached_wheel(directory: Path | None = None) -> Path | None:
    """The facenet-pytorch wheel kept in ``<cache>/wheel/`` by ``synleak-fetch-mtcnn``, or None."""
    directory = Path(directory) if directory is not None else cache_dir()
    wheels = sorted((directory / WHEEL_SUBDIR).glob("*.whl"))
    return wheels[0] if len(wheels) == 1 else None


def wheel_hashes(wheel_path: str | Path) -> dict[str, str]:
    """sha256 of ``facenet_pytorch/data/{pnet,rnet,onet}.pt`` inside a wheel (zipfile only)."""
    import zipfile

    with zipfile.ZipFile(wheel_path) as zf:
        names = set(zf.namelist())
        out = {}
        for net in NET_NAMES:
            member = f"facenet_pytorch/data/{net}.pt"
            if member not in names:
                raise WeightMappingError(f"{wheel_path}: no {member} inside (not a facenet-pytorch wheel?)")
            out[f"{net}.pt"] = _sha256(zf.read(member))
    return out


def expected_shapes(net: str) -> dict[str, tuple[int, ...]]:
    """Flat ``{flax_path: shape}`` of one net's variables."""
    from synleak_jax.models import mtcnn

    model = mtcnn.NETS[net]()
    return variable_shapes(model, np.zeros(mtcnn.EXAMPLE_SHAPES[net], np.float32))


def convert_net(net: str, tensors: Mapping[str, np.ndarray], source: str = "<weights>") -> dict:
    """Converts one facenet-pytorch MTCNN state dict into checked Flax variables ``{"params": ...}``.

    Every source tensor must be used (no silent drops); every model variable must be filled.
    """
    if net not in _LAYERS:
        raise ValueError(f"unknown MTCNN net {net!r}; expected one of {NET_NAMES}")
    src = SourceTensors(tensors, source)
    flat: dict[str, np.ndarray] = {}
    for name, kind in _LAYERS[net]:
        if kind == "conv":
            flat[f"params/{name}/kernel"] = conv_kernel_oihw_to_hwio(src.get(f"{name}.weight"))
            flat[f"params/{name}/bias"] = src.get(f"{name}.bias")
        elif kind == "dense":
            # The dense kernels keep the original (W, H, C) input order: the Flax modules flatten in
            # that order (models/mtcnn.py), so no row permutation is needed here.
            flat[f"params/{name}/kernel"] = linear_oi_to_io(src.get(f"{name}.weight"))
            flat[f"params/{name}/bias"] = src.get(f"{name}.bias")
        else:
            flat[f"params/{name}/negative_slope"] = src.get(f"{name}.weight")
    src.check_all_used()
    return assign_variables(expected_shapes(net), flat, source)


# --------------------------------------------------------------------------------------------------
# Reading the legacy torch files.


def read_torch_bytes(data: bytes, name: str) -> dict[str, np.ndarray]:
    """Reads a torch state-dict file given as bytes with the project's restricted reader
    (``weights.torch_pickle.load_torch_file``: legacy and zip formats, tensors only)."""
    import tempfile

    from synleak_jax.weights.torch_pickle import load_torch_file

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / Path(name).name
        path.write_bytes(data)
        return dict(load_torch_file(str(path)))


# --------------------------------------------------------------------------------------------------
# Cache.


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def save_to_cache(variables_by_net: Mapping[str, dict], sources: Mapping[str, str], origin: str,
                  directory: Path | None = None) -> Path:
    """Writes each net with ``weights.orbax_io.save_variables`` and then ``manifest.json`` (written last,
    removed first, so an interrupted conversion never looks valid)."""
    from synleak_jax.weights import orbax_io

    directory = Path(directory) if directory is not None else cache_dir()
    directory.mkdir(parents=True, exist_ok=True)
    manifest_path = directory / "manifest.json"
    if manifest_path.exists():
        manifest_path.unlink()
    shapes = {}
    for net in NET_NAMES:
        variables = variables_by_net[net]
        target = directory / net
        if target.is_dir() and (target / "_CHECKPOINT_METADATA").is_file():
            import shutil

            shutil.rmtree(target)  # a bare orbax checkpoint from format version 1 of this cache
        orbax_io.save_variables(
            directory / net, variables,
            {"model_name": f"mtcnn_{net}", "source_file": f"{origin}:facenet_pytorch/data/{net}.pt",
             "source_sha256": sources[f"{net}.pt"], "format": "torch_legacy"},
            overwrite=True)
        shapes[net] = {k: list(np.shape(v)) for k, v in flatten_variables(variables).items()}
    manifest = {"format_version": FORMAT_VERSION, "origin": origin, "sha256": dict(sources), "shapes": shapes}
    manifest_path.write_text(json.dumps(manifest, indent=1, sort_keys=True))
    return directory


def cache_is_valid(directory: Path | None = None) -> tuple[bool, str]:
    """Whether the cache holds a complete, current conversion; (ok, reason)."""
    directory = Path(directory) if directory is not None else cache_dir()
    manifest_path = directory / "manifest.json"
    if not manifest_path.is_file():
        return False, f"{manifest_path} missing"
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, ValueError) as e:
        return False, f"{manifest_path} unreadable: {e}"
    if manifest.get("format_version") != FORMAT_VERSION:
        return False, f"{manifest_path}: format version {manifest.get('format_version')} != {FORMAT_VERSION}"
    for net in NET_NAMES:
        if not (directory / net).is_dir():
            return False, f"{directory / net} missing"
        want = {k: list(v) for k, v in expected_shapes(net).items()}
        if manifest.get("shapes", {}).get(net) != want:
            return False, f"{manifest_path}: recorded shapes of {net} do not match the model"
    return True, "ok"


def load_mtcnn_variables(directory: str | Path | None = None) -> dict[str, dict]:
    """Restores ``{"pnet": vars, "rnet": vars, "onet": vars}`` from the cache.

    Raises:
      FileNotFoundError: the cache is missing or incomplete (the message says to run synleak-fetch-mtcnn).
    """
    from synleak_jax.weights import orbax_io

    directory = Path(directory) if directory is not None else cache_dir()
    ok, why = cache_is_valid(directory)
    if not ok:
        raise FileNotFoundError(f"MTCNN weights not found in {directory} ({why}); {FETCH_HINT}")
    out = {}
    for net in NET_NAMES:
        restored, _ = orbax_io.restore_variables(directory / net)
        flat = {k: np.asarray(v, np.float32) for k, v in flatten_variables(restored).items()}
        out[net] = assign_variables(expected_shapes(net), flat, str(directory / net))
    return out


def read_manifest(directory: str | Path | None = None) -> dict:
    directory = Path(directory) if directory is not None else cache_dir()
    return json.loads((directory / "manifest.json").read_text())


def convert_wheel(wheel_path: str | Path) -> tuple[dict[str, dict], dict[str, str]]:
    """Reads ``facenet_pytorch/data/{pnet,rnet,onet}.pt`` out of a wheel and converts them.

    Returns ``(variables_by_net, sha256_by_file)``. The wheel is opened with zipfile only; nothing of
    it is installed or executed.
    """
    import zipfile

    wheel_path = Path(wheel_path)
    variables, hashes = {}, {}
    with zipfile.ZipFile(wheel_path) as zf:
        names = set(zf.namelist())
        for net in NET_NAMES:
            member = f"facenet_pytorch/data/{net}.pt"
            if member not in names:
                raise WeightMappingError(f"{wheel_path}: no {member} inside (not a facenet-pytorch wheel?)")
            data = zf.read(member)
            hashes[f"{net}.pt"] = _sha256(data)
            tensors = read_torch_bytes(data, f"{wheel_path.name}:{member}")
            variables[net] = convert_net(net, tensors, f"{wheel_path.name}:{member}")
    return variables, hashes
