"""Random-access, picklable dataset sources (the data contract in docs/architecture.md).

Every source has ``len(src)``, ``src[i] -> bytes`` (the encoded image; raises :class:`RecordError`),
``src.label(i) -> int`` (-1 if unlabelled), ``src.describe(i) -> str`` (path or file:offset),
``src.read_rgb(i) -> uint8 [H, W, 3]``, ``src.fingerprint() -> str`` and ``src.num_classes`` (or None).
Order is deterministic (sorted names), so record ids are stable across runs and machines.
"""

from __future__ import annotations

import hashlib
import os
from typing import Iterator

import numpy as np
from absl import logging

from synleak_jax.data import decode, rejects, safe_paths

#: Extensions recognised as images (compared lower-case).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")

# Per-entry flags of a folder listing.
_PLAIN, _LINK_INSIDE, _ESCAPE = 0, 1, 2


class Source:
    """Base class: subclasses implement ``__len__``, ``read_bytes``, ``label``, ``describe``, ``fingerprint``."""

    num_classes: int | None = None
    class_names: list[str] | None = None

    def __len__(self) -> int:
        raise NotImplementedError

    def read_bytes(self, i: int) -> bytes:
        raise NotImplementedError

    def label(self, i: int) -> int:
        return -1

    def describe(self, i: int) -> str:
        raise NotImplementedError

    def fingerprint(self) -> str:
        raise NotImplementedError

    def _check(self, i: int) -> int:
        i = int(i)
        if not 0 <= i < len(self):
            raise IndexError(f"record {i} out of range for {type(self).__name__} of {len(self)} records")
        return i

    def __getitem__(self, i: int) -> bytes:
        return self.read_bytes(self._check(i))

    def __iter__(self) -> Iterator[bytes]:
        for i in range(len(self)):
            yield self[i]

    def labels(self) -> np.ndarray:
        """All labels, int64 ``[N]`` (-1 where unlabelled)."""
        return np.asarray([self.label(i) for i in range(len(self))], dtype=np.int64)

    def read_rgb(self, i: int, size: tuple[int, int] | None = None,
                 max_pixels: int = decode.DEFAULT_MAX_PIXELS) -> np.ndarray:
        """Decoded uint8 RGB ``[H, W, 3]`` of record ``i`` (optionally resized to (height, width))."""
        return decode.decode_rgb(self[i], self.describe(i), size=size, max_pixels=max_pixels)

    def read_record(self, i: int) -> tuple[bytes, int]:
        """(encoded bytes, label) of record ``i`` in one read (RecordIO gets both from one record)."""
        return self[i], self.label(i)


class _Listing:
    """Compact, picklable listing of relative paths (one bytes blob + offsets)."""

    def __init__(self, rel_paths: list[str]):
        enc = [p.encode("utf-8", "surrogateescape") for p in rel_paths]
        self.blob = b"".join(enc)
        self.offsets = np.zeros(len(enc) + 1, dtype=np.int64)
        np.cumsum([len(e) for e in enc], out=self.offsets[1:])

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> str:
        return self.blob[self.offsets[i]:self.offsets[i + 1]].decode("utf-8", "surrogateescape")


def _is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _scan_files(root_real: str, rel_dir: str, under_link: bool, recursive: bool,
                out: list, skipped: list[int]) -> None:
    """Appends (rel_path, size, flag, resolved) for image files below ``rel_dir`` in sorted name order."""
    d = os.path.join(root_real, rel_dir) if rel_dir else root_real
    try:
        entries = sorted(os.scandir(d), key=lambda e: e.name)
    except OSError as e:
        raise rejects.DataError(f"cannot list dataset directory {d!r}: {e.strerror or e}") from None
    for e in entries:
        rel = os.path.join(rel_dir, e.name) if rel_dir else e.name
        link = e.is_symlink()
        try:
            is_dir = e.is_dir()  # follows symlinks
        except OSError:
            is_dir = False
        if is_dir:
            if not recursive:
                continue
            if link and not safe_paths.is_within(root_real, e.path):
                # Never descend into a directory outside the root: its contents are not listed.
                logging.warning("skipping directory %s: symlink to %s, outside the dataset root %s",
                                e.path, os.path.realpath(e.path), root_real)
                skipped[0] += 1
                continue
            _scan_files(root_real, rel, under_link or link, recursive, out, skipped)
            continue
        if not _is_image_name(e.name):
            skipped[0] += 1
            continue
        flag, resolved = _PLAIN, None
        if link or under_link:
            resolved = os.path.realpath(e.path)
            flag = _LINK_INSIDE if safe_paths.is_within(root_real, e.path) else _ESCAPE
        try:
            size = e.stat(follow_symlinks=False).st_size if flag != _LINK_INSIDE else os.stat(resolved).st_size
        except OSError:
            size = -1
        out.append((rel, size, flag, resolved))


class _FolderSource(Source):
    """Shared implementation of the folder sources (listing, safe reads, describe, fingerprint)."""

    def _init_listing(self, root, items: list, labels: list[int], kind: str):
        if not items:
            raise rejects.DataError(
                f"no image files ({', '.join(IMAGE_EXTENSIONS)}) found under dataset root {self.root!r}")
        self._listing = _Listing([it[0] for it in items])
        self._sizes = np.asarray([it[1] for it in items], dtype=np.int64)
        self._flags = np.asarray([it[2] for it in items], dtype=np.uint8)
        self._resolved = {i: it[3] for i, it in enumerate(items) if it[2] != _PLAIN}
        self._labels = np.asarray(labels, dtype=np.int64)
        h = hashlib.sha256(kind.encode())
        for i, it in enumerate(items):
            h.update(f"{it[0]}\t{it[1]}\t{labels[i]}\n".encode("utf-8", "surrogateescape"))
        self._fingerprint = h.hexdigest()

    def __len__(self) -> int:
        return len(self._listing)

    def relpath(self, i: int) -> str:
        return self._listing[self._check(i)]

    def path(self, i: int) -> str:
        return os.path.join(self.root_real, self.relpath(i))

    def describe(self, i: int) -> str:
        return self.path(i)

    def label(self, i: int) -> int:
        return int(self._labels[self._check(i)])

    def labels(self) -> np.ndarray:
        return self._labels.copy()

    def fingerprint(self) -> str:
        return self._fingerprint

    def read_bytes(self, i: int) -> bytes:
        flag = self._flags[i]
        path = self.path(i)
        if flag == _ESCAPE:
            raise rejects.RecordError(rejects.PATH_ESCAPE, f"{path} -> {self._resolved[i]}")
        if flag == _LINK_INSIDE:
            # Re-check at read time: the link may have been changed since listing.
            if not safe_paths.is_within(self.root_real, path):
                raise rejects.RecordError(rejects.PATH_ESCAPE, f"{path} -> {os.path.realpath(path)}")
            return safe_paths.read_bytes(os.path.realpath(path), path, follow=False)
        return safe_paths.read_bytes(path, path, follow=False)

    @property
    def num_skipped(self) -> int:
        """Directory entries that are not images by extension (or link to directories outside the root)."""
        return self._skipped


class ImageFolderSource(_FolderSource):
    """Labelled image folder ``root/<identity>/<image>`` (DCFace, IDiff-Face, SFace, IDnet, GANDiffFace).

    Identities are the sub-directories of ``root`` in sorted order -> labels 0..C-1 (names kept in
    ``class_names``); images inside each identity folder (not recursive) in sorted order; any extension in
    :data:`IMAGE_EXTENSIONS`, case-insensitive. Identity folders with no image keep their label (so labels
    match the release's class numbering) and are counted in ``empty_classes``.
    """

    def __init__(self, root: str | os.PathLike):
        self.root = os.fspath(root)
        self.root_real = safe_paths.real_root(self.root)
        skipped = [0]
        try:
            top = sorted(os.scandir(self.root_real), key=lambda e: e.name)
        except OSError as e:
            raise rejects.DataError(f"cannot list dataset root {self.root!r}: {e.strerror or e}") from None
        names, items, labels, empty = [], [], [], []
        for e in top:
            try:
                is_dir = e.is_dir()
            except OSError:
                is_dir = False
            if not is_dir:
                skipped[0] += 1
                continue
            link = e.is_symlink()
            label = len(names)
            names.append(e.name)
            if link and not safe_paths.is_within(self.root_real, e.path):
                # Files of an identity folder that resolves outside the root are listed (so they are
                # reported) but never read.
                files = []
                try:
                    names_out = sorted(os.listdir(e.path))
                except OSError:
                    names_out = []
                for f in names_out:
                    if _is_image_name(f):
                        files.append((os.path.join(e.name, f), -1, _ESCAPE,
                                      os.path.realpath(os.path.join(e.path, f))))
            else:
                files = []
                _scan_files(self.root_real, e.name, link, False, files, skipped)
            if not files:
                empty.append(e.name)
            items.extend(files)
            labels.extend([label] * len(files))
        self.class_names = names
        self.num_classes = len(names)
        self.empty_classes = empty
        self._skipped = skipped[0]
        self._init_listing(root, items, labels, "image_folder")


class FlatFolderSource(_FolderSource):
    """Unlabelled images anywhere below ``root`` (FFHQ style ``00000/00000.png``), sorted by relative path."""

    num_classes = None
    class_names = None

    def __init__(self, root: str | os.PathLike, recursive: bool = True):
        self.root = os.fspath(root)
        self.root_real = safe_paths.real_root(self.root)
        skipped = [0]
        items: list = []
        _scan_files(self.root_real, "", False, recursive, items, skipped)
        # Sort by full relative path components so nesting order is deterministic and natural.
        items.sort(key=lambda it: it[0].split(os.sep))
        self._skipped = skipped[0]
        self._init_listing(root, items, [-1] * len(items), "flat_folder")


class ArraySource(Source):
    """In-memory source of encoded images (tests, small galleries): ``images`` list of bytes, optional labels."""

    def __init__(self, images: list[bytes], labels: list[int] | None = None, name: str = "array",
                 num_classes: int | None = None):
        self._images = list(images)
        self._labels = np.asarray(labels if labels is not None else [-1] * len(images), dtype=np.int64)
        if len(self._labels) != len(self._images):
            raise ValueError("labels and images differ in length")
        self.name = name
        self.num_classes = num_classes
        h = hashlib.sha256(name.encode())
        for b, l in zip(self._images, self._labels):
            h.update(hashlib.sha256(b).digest() + int(l).to_bytes(8, "little", signed=True))
        self._fingerprint = h.hexdigest()

    def __len__(self) -> int:
        return len(self._images)

    def read_bytes(self, i: int) -> bytes:
        return self._images[i]

    def label(self, i: int) -> int:
        return int(self._labels[self._check(i)])

    def labels(self) -> np.ndarray:
        return self._labels.copy()

    def describe(self, i: int) -> str:
        return f"{self.name}[{int(i)}]"

    def fingerprint(self) -> str:
        return self._fingerprint


def open_source(spec: str, **kwargs) -> Source:
    """Opens a source from a string: ``folder:PATH``, ``flat:PATH``, ``recordio:PREFIX`` (or ``PATH.rec``),
    ``bin:PATH.bin`` (images of a verification bin), ``tfds:NAME[:SPLIT]`` (needs ``data_dir=``) or
    ``tfds:BUILDER_DIR`` (a prepared ``data_dir/name/version`` directory).

    A bare path is guessed: ``*.rec``/``*.idx`` -> RecordIO, ``*.bin`` -> verification bin, a directory whose
    entries are all directories -> image folder, otherwise flat folder.
    """
    kind, sep, rest = spec.partition(":")
    if not sep or kind not in ("folder", "flat", "recordio", "bin", "tfds"):
        kind, rest = _guess_kind(spec), spec
    if kind == "folder":
        return ImageFolderSource(rest)
    if kind == "flat":
        return FlatFolderSource(rest, **kwargs)
    if kind == "recordio":
        from synleak_jax.data import recordio
        return recordio.RecordIOSource(rest)
    if kind == "bin":
        from synleak_jax.data import verification
        return verification.load_bin(rest).images
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
        raise rejects.DataError(f"dataset path does not exist or is not a directory: {path!r}")
    entries = [e for e in os.scandir(path) if not e.name.startswith(".")]
    if entries and all(e.is_dir() for e in entries):
        # root/<id>/<images> vs FFHQ's root/<00000>/<images>: FFHQ chunk folders hold 1000 images each and
        # carry no identity; the caller should say flat:PATH for those. Default: identity folders.
        return "folder"
    return "flat"
