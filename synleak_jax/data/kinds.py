"""Which reader reads a dataset: ``open_source("kind:path")`` (the kinds of docs/data.md), or a guess from a bare path.

Kept apart from ``sources.py`` (the source contract and the folder readers), which every reader imports: the
dispatcher imports every reader, so the readers never import it back.
"""

from __future__ import annotations

import os

from synleak_jax.data import recordio, rejects, safe_paths, verification
from synleak_jax.data.sources import FlatFolderSource, ImageFolderSource, Source


def open_source(spec: str, **kwargs) -> Source:
    """Opens a source from a string: ``folder:PATH``, ``flat:PATH``, ``recordio:PREFIX`` (or ``PATH.rec``),
    ``bin:PATH.bin`` (images of a verification bin), ``tfds:NAME[:SPLIT]`` (needs ``data_dir=``) or
    ``tfds:BUILDER_DIR`` (a prepared ``data_dir/name/version`` directory).

    A bare path is guessed: ``*.rec``/``*.idx`` -> RecordIO, ``*.bin`` -> verification bin, a directory whose
    entries are all directories -> image folder, otherwise flat folder.

    kwargs go to the source: ``max_file_bytes`` (folders; RecordIO: cap per record), ``recursive`` (flat),
    ``list_file`` (RecordIO: "auto" detects DCFace's ``list.txt``, "" ignores it, or a path), ``data_dir`` (tfds).
    """
    kind, sep, rest = spec.partition(":")
    if not sep or kind not in ("folder", "flat", "recordio", "bin", "tfds"):
        kind, rest = _guess_kind(spec), spec
    if kind == "folder":
        return ImageFolderSource(rest, **kwargs)
    if kind == "flat":
        return FlatFolderSource(rest, **kwargs)
    if kind == "recordio":
        return recordio.RecordIOSource(rest, **kwargs)
    if kind == "bin":
        return verification.load_bin(rest).images
    # tensorflow_datasets costs ~1.1 s to import (measured here): loaded only for tfds: specs, so opening a
    # folder or RecordIO (and every grain worker) never pays it.
    from synleak_jax.data import tfds_builders
    if os.path.isfile(os.path.join(rest, "dataset_info.json")):  # a prepared directory data_dir/name/version
        return tfds_builders.TfdsSource(builder_dir=rest, **kwargs)
    name, _, split = rest.partition(":")
    return tfds_builders.TfdsSource(name, split=split or "train", **kwargs)


def _guess_kind(path: str) -> str:
    low = path.lower()
    if low.endswith((".rec", ".idx")) or (os.path.exists(path + ".rec")):
        return "recordio"
    if low.endswith(".bin"):
        return "bin"
    if not os.path.isdir(path):
        raise rejects.DataError(
            f"dataset path does not exist or is not a directory: {safe_paths.display_path(path)}")
    entries = [e for e in os.scandir(path) if not e.name.startswith(".")]
    if entries and all(e.is_dir() for e in entries):
        # root/<id>/<images> vs FFHQ's root/<00000>/<images>: FFHQ chunk folders hold 1000 images each and
        # carry no identity; the caller should say flat:PATH for those. Default: identity folders.
        return "folder"
    return "flat"
