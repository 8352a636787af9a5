"""Orbax save/restore of converted Flax variables, with the metadata that says where they came from.

Layout of a converted-weights directory::

    <directory>/
      synleak_weights.json   # metadata (JSON): model name, input spec, source file + sha256, format, versions,
                             # and the shape/dtype of every variable (checked again on restore)
      variables/             # an orbax PyTree checkpoint of {"params": ..., "batch_stats": ...}

The metadata file is also how :func:`synleak_jax.weights.loader.load_weights` recognises such a directory.
A directory is written under a temporary name and renamed into place, so a crash never leaves a
half-written checkpoint under the final name.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any, Mapping

import jax
import numpy as np

METADATA_FILE = "synleak_weights.json"
VARIABLES_DIR = "variables"
FORMAT_VERSION = 1
REQUIRED_METADATA = ("model_name",)


class CheckpointError(ValueError):
    """An orbax weights directory is missing, incomplete or inconsistent; names the directory."""


def is_weights_dir(path: str | os.PathLike) -> bool:
    """True if ``path`` is a directory written by :func:`save_variables`."""
    p = Path(path)
    return p.is_dir() and (p / METADATA_FILE).is_file()


def _flat_shapes(variables: Mapping[str, Any]) -> dict[str, list]:
    flat, _ = jax.tree_util.tree_flatten_with_path(variables)
    out = {}
    for keypath, leaf in flat:
        name = "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in keypath)
        leaf = np.asarray(leaf)
        out[name] = [list(leaf.shape), str(leaf.dtype)]
    return out


def save_variables(
    directory: str | os.PathLike,
    variables: Mapping[str, Any],
    metadata: Mapping[str, Any],
    *,
    overwrite: bool = False,
) -> Path:
    """Writes ``variables`` (a Flax variable pytree of arrays) and ``metadata`` (JSON-serialisable) to
    ``directory``.

    ``metadata`` must contain ``model_name``; by convention also ``input_spec`` (``InputSpec.to_dict()``),
    ``source_file``, ``source_sha256`` and ``format``. ``synleak_version``, ``format_version`` and the
    variable shapes/dtypes are added here.

    Raises:
      FileExistsError: ``directory`` exists and ``overwrite`` is False, or it exists, is not empty and is not
        a weights directory written by this function (never deletes foreign data).
      CheckpointError: metadata lacks a required key or is not JSON-serialisable.
    """
    from synleak_jax import __version__

    import orbax.checkpoint as ocp

    directory = Path(directory).absolute()
    missing = [k for k in REQUIRED_METADATA if k not in metadata]
    if missing:
        raise CheckpointError(f"{directory}: metadata lacks {missing}")
    if directory.exists():
        if not overwrite:
            raise FileExistsError(f"{directory}: already exists (pass overwrite=True / --overwrite to replace it)")
        if not (is_weights_dir(directory) or (directory.is_dir() and not any(directory.iterdir()))):
            raise FileExistsError(f"{directory}: exists and is not a synleak weights directory; refusing to replace it")
    variables = jax.tree.map(np.asarray, dict(variables))
    meta = dict(metadata)
    meta.update(
        format_version=FORMAT_VERSION,
        synleak_version=__version__,
        variables=_flat_shapes(variables),
    )
    try:
        meta_text = json.dumps(meta, indent=2, sort_keys=True)
    except TypeError as e:
        raise CheckpointError(f"{directory}: metadata is not JSON-serialisable ({e})") from None

    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = directory.parent / f".{directory.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        tmp.mkdir()
        ckptr = ocp.PyTreeCheckpointer()
        ckptr.save(tmp / VARIABLES_DIR, variables)
        (tmp / METADATA_FILE).write_text(meta_text)
        if directory.exists():
            # Move the old one aside first: at every moment a complete checkpoint sits under one of the names.
            old = directory.parent / f".{directory.name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(directory, old)
            os.replace(tmp, directory)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, directory)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return directory


def read_metadata(directory: str | os.PathLike) -> dict:
    """The metadata dict of a weights directory (cheap: no arrays are read)."""
    directory = Path(directory).absolute()
    if not directory.exists():
        raise FileNotFoundError(f"{directory}: no such weights directory")
    path = directory / METADATA_FILE
    if not path.is_file():
        raise CheckpointError(f"{directory}: not a synleak weights directory (no {METADATA_FILE})")
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: corrupt metadata ({e})") from None
    if not isinstance(meta, dict) or any(k not in meta for k in REQUIRED_METADATA):
        raise CheckpointError(f"{path}: metadata lacks {list(REQUIRED_METADATA)}")
    if meta.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(f"{path}: written by a newer synleak (format_version {meta['format_version']})")
    return meta


def restore_variables(directory: str | os.PathLike) -> tuple[dict, dict]:
    """Reads a directory written by :func:`save_variables`.

    Returns:
      (variables, metadata): variables as a nested dict of numpy arrays (bit-identical to what was saved),
      metadata as saved (plus the keys added by :func:`save_variables`).

    Raises:
      FileNotFoundError / CheckpointError naming the directory.
    """
    import orbax.checkpoint as ocp

    directory = Path(directory).absolute()
    meta = read_metadata(directory)
    state = directory / VARIABLES_DIR
    if not state.is_dir():
        raise CheckpointError(f"{directory}: missing {VARIABLES_DIR}/ (incomplete checkpoint)")
    ckptr = ocp.PyTreeCheckpointer()
    try:
        tree = ckptr.metadata(state).item_metadata.tree
        restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
        variables = ckptr.restore(state, restore_args=restore_args)
    except Exception as e:  # orbax/tensorstore raise many types for damaged checkpoints
        raise CheckpointError(f"{directory}: cannot restore variables ({type(e).__name__}: {e})") from None
    variables = jax.tree.map(np.asarray, variables)
    expected = meta.get("variables")
    if expected is not None:
        got = json.loads(json.dumps(_flat_shapes(variables)))
        if got != expected:
            diff = sorted(set(map(str, got.items())) ^ set(map(str, expected.items())))[:4]
            raise CheckpointError(f"{directory}: restored variables differ from the recorded shapes/dtypes: {diff}")
    return variables, meta
