"""Random-access, picklable dataset sources (the data contract in docs/architecture.md).

Every source has ``len(src)``, ``src[i] -> bytes`` (the encoded image; raises :class:`RecordError`),
``src.label(i) -> int`` (-1 if unlabelled), ``src.describe(i) -> str`` (path or file:offset),
``src.read_rgb(i) -> uint8 [H, W, 3]``, ``src.fingerprint() -> str`` and ``src.num_classes`` (or None).
Order is deterministic (sorted names), so record ids are stable across runs and machines.

Names: ``describe(i)`` is a display string (``safe_paths.display_path``): one line, always UTF-8-encodable, equal
to the path for ordinary names, with undecodable bytes and control characters escaped. The exact name of a folder
record is ``path(i)`` / ``relpath(i)``: an OS string (undecodable bytes as ``surrogateescape`` surrogates) for
which ``os.fsencode`` gives back the bytes on disk; ``json.dumps`` (default ``ensure_ascii=True``) round-trips it.

Fingerprints hash an unambiguous encoding of the listing (each name length-prefixed, sizes and labels as
fixed-width integers), so no two different listings share one (names may contain tabs and newlines).
"""

from __future__ import annotations

import hashlib
import os
import struct
from typing import Iterator

import numpy as np
from absl import logging

from synleak_jax.data import channels, decode, rejects, safe_paths

#: Extensions recognised as images (compared lower-case).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")

# Per-entry flags of a folder listing.
_PLAIN, _LINK_INSIDE, _ESCAPE = 0, 1, 2


class Source:
    """Base class: subclasses implement ``__len__``, ``read_bytes``, ``label``, ``describe``, ``fingerprint``."""

    num_classes: int | None = None
    class_names: list[str] | None = None
    #: A recognised published release (key of ``channels.KNOWN_RELEASES``), or None.
    release: str | None = None

    def __len__(self) -> int:
        raise NotImplementedError

    def read_bytes(self, i: int) -> bytes:
        raise NotImplementedError

    def label(self, i: int) -> int:
        return -1

    def describe(self, i: int) -> str:
        """Where record ``i`` lives, as a one-line UTF-8-safe display string (``safe_paths.display_path``)."""
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
                 max_pixels: int = decode.DEFAULT_MAX_PIXELS, channel_order: str = "auto") -> np.ndarray:
        """Decoded uint8 RGB ``[H, W, 3]`` of record ``i`` (optionally resized to (height, width)), with the
        stored colour order ``channel_order`` ("rgb" | "bgr" | "auto", see data/channels.py) undone."""
        order = channels.resolve_channel_order(channel_order, self)
        rgb = decode.decode_rgb(self[i], self.describe(i), size=size, max_pixels=max_pixels)
        return channels.to_rgb(rgb, order)

    def read_record(self, i: int) -> tuple[bytes, int]:
        """(encoded bytes, label) of record ``i`` in one read (RecordIO gets both from one record)."""
        return self[i], self.label(i)


class Listing:
    """Compact, picklable listing of names (one bytes blob + int64 offsets: ~8 bytes per name over the names).

    ``Listing(names)`` takes OS strings; ``Listing.from_bytes(raw)`` takes the bytes on disk. ``listing[i]`` is the
    OS string (``os.fsdecode``, surrogateescape), ``listing.raw(i)`` the bytes.
    """

    def __init__(self, names: list[str]):
        self._set([os.fsencode(p) for p in names])

    @classmethod
    def from_bytes(cls, raw: list[bytes]) -> "Listing":
        out = cls.__new__(cls)
        out._set(raw)
        return out

    def _set(self, enc: list[bytes]) -> None:
        self.blob = b"".join(enc)
        self.offsets = np.zeros(len(enc) + 1, dtype=np.int64)
        np.cumsum([len(e) for e in enc], out=self.offsets[1:])

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def raw(self, i: int) -> bytes:
        return self.blob[self.offsets[i]:self.offsets[i + 1]]

    def __getitem__(self, i: int) -> str:
        return os.fsdecode(self.raw(i))


def _is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _scan_files(root_real: str, rel_dir: str, under_link: bool, recursive: bool,
                out: list, skipped: list[int]) -> None:
    """Appends (rel_path, size, flag, resolved) for image files below ``rel_dir`` in sorted name order."""
    d = os.path.join(root_real, rel_dir) if rel_dir else root_real
    try:
        entries = sorted(os.scandir(d), key=lambda e: e.name)
    except OSError as e:
        raise rejects.DataError(
            f"cannot list dataset directory {safe_paths.display_path(d)}: {e.strerror or e}") from None
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


def listing_fingerprint(kind: str, names: list[str], sizes: list[int], labels: list[int]) -> str:
    """sha256 of a listing in an unambiguous encoding (format tag ``synleak-listing-v2``).

    Each entry is ``uint64 len(name) | name bytes (os.fsencode) | int64 size | int64 label``, after a
    length-prefixed ``kind``: no choice of names (tabs, newlines, any bytes) makes two listings encode alike.
    """
    h = hashlib.sha256(b"synleak-listing-v2\0")
    k = kind.encode()
    h.update(struct.pack("<Q", len(k)) + k)
    h.update(struct.pack("<Q", len(names)))
    for name, size, label in zip(names, sizes, labels):
        b = os.fsencode(name)
        h.update(struct.pack("<Q", len(b)) + b + struct.pack("<qq", int(size), int(label)))
    return h.hexdigest()


def content_fingerprint(source: Source) -> str:
    """sha256 of a dataset's listing and of every record's bytes (format tag ``synleak-content-v1``).

    Unlike :meth:`Source.fingerprint` (names, sizes and labels), this changes when an image's bytes change at the
    same size. It reads every record once through the source's own safe reads (one at a time: memory is one
    record); a record that cannot be read contributes its reject code, so a rejected file fingerprints
    deterministically. Encoding: ``uint64 len | listing fingerprint | uint64 N``, then per record ``0x00 | uint64
    size | sha256(bytes)`` or ``0x01 | int64 reject code``: unambiguous. Used by the door when a dataset's
    ``fingerprint`` option is ``"content"``.
    """
    h = hashlib.sha256(b"synleak-content-v1\0")
    listing = source.fingerprint().encode()
    h.update(struct.pack("<Q", len(listing)) + listing + struct.pack("<Q", len(source)))
    for i in range(len(source)):
        try:
            data = source.read_bytes(i)
        except rejects.RecordError as e:
            h.update(b"\x01" + struct.pack("<q", int(e.code)))
            continue
        h.update(b"\x00" + struct.pack("<Q", len(data)) + hashlib.sha256(data).digest())
    return h.hexdigest()


class _FolderSource(Source):
    """Shared implementation of the folder sources (listing, safe reads, describe, fingerprint).

    Reads open regular files only, at most ``max_file_bytes`` each; files above 64 KiB must start with an image
    signature before the rest is read (``safe_paths.read_bytes``, ``decode.check_signature``).
    """

    max_file_bytes: int = safe_paths.DEFAULT_MAX_FILE_BYTES

    def _init_listing(self, root, items: list, labels: list[int], kind: str):
        if not items:
            raise rejects.DataError(f"no image files ({', '.join(IMAGE_EXTENSIONS)}) found under dataset root "
                                    f"{safe_paths.display_path(self.root)}")
        self._listing = Listing([it[0] for it in items])
        self._sizes = np.asarray([it[1] for it in items], dtype=np.int64)
        self._flags = np.asarray([it[2] for it in items], dtype=np.uint8)
        self._resolved = {i: it[3] for i, it in enumerate(items) if it[2] != _PLAIN}
        self._labels = np.asarray(labels, dtype=np.int64)
        self._fingerprint = listing_fingerprint(kind, [it[0] for it in items], [it[1] for it in items], labels)

    def _set_cap(self, max_file_bytes: int | None) -> None:
        cap = safe_paths.DEFAULT_MAX_FILE_BYTES if max_file_bytes in (None, 0) else int(max_file_bytes)
        if cap < 1:
            raise ValueError(f"max_file_bytes must be positive, got {max_file_bytes}")
        self.max_file_bytes = cap

    def __len__(self) -> int:
        return len(self._listing)

    def relpath(self, i: int) -> str:
        return self._listing[self._check(i)]

    def path(self, i: int) -> str:
        """Exact absolute path (OS string; ``os.fsencode`` gives the bytes on disk)."""
        return os.path.join(self.root_real, self.relpath(i))

    def describe(self, i: int) -> str:
        return safe_paths.display_path(self.path(i))

    def label(self, i: int) -> int:
        return int(self._labels[self._check(i)])

    def labels(self) -> np.ndarray:
        return self._labels.copy()

    def fingerprint(self) -> str:
        return self._fingerprint

    def read_bytes(self, i: int) -> bytes:
        flag = self._flags[i]
        path = self.path(i)
        where = safe_paths.display_path(path)
        cap, check = self.max_file_bytes, decode.check_signature
        if flag == _ESCAPE:
            raise rejects.RecordError(rejects.PATH_ESCAPE, f"{where} -> {safe_paths.display_path(self._resolved[i])}")
        if flag == _LINK_INSIDE:
            # Re-check at read time: the link may have been changed since listing.
            if not safe_paths.is_within(self.root_real, path):
                raise rejects.RecordError(rejects.PATH_ESCAPE,
                                          f"{where} -> {safe_paths.display_path(os.path.realpath(path))}")
            return safe_paths.read_bytes(os.path.realpath(path), where, False, cap, check)
        return safe_paths.read_bytes(path, where, False, cap, check)

    @property
    def num_skipped(self) -> int:
        """Directory entries that are not images by extension (or link to directories outside the root)."""
        return self._skipped


class ImageFolderSource(_FolderSource):
    """Labelled image folder ``root/<identity>/<image>`` (DCFace, IDiff-Face, SFace, IDnet, GANDiffFace).

    Identities are the sub-directories of ``root`` in sorted order -> labels 0..C-1 (names kept in
    ``class_names``); images inside each identity folder (not recursive) in sorted order; any extension in
    :data:`IMAGE_EXTENSIONS`, case-insensitive. Identity folders with no image keep their label (so labels
    match the release's class numbering) and are counted in ``empty_classes``. ``class_names`` are OS strings
    (see the module docstring on names). ``max_file_bytes``: size cap per image file (None/0 = the default).
    """

    def __init__(self, root: str | os.PathLike, max_file_bytes: int | None = None):
        self.root = os.fspath(root)
        self._set_cap(max_file_bytes)
        self.root_real = safe_paths.real_root(self.root)
        skipped = [0]
        try:
            top = sorted(os.scandir(self.root_real), key=lambda e: e.name)
        except OSError as e:
            raise rejects.DataError(
                f"cannot list dataset root {safe_paths.display_path(self.root)}: {e.strerror or e}") from None
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

    def __init__(self, root: str | os.PathLike, recursive: bool = True, max_file_bytes: int | None = None):
        self.root = os.fspath(root)
        self._set_cap(max_file_bytes)
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
        return f"{safe_paths.display_path(self.name)}[{int(i)}]"

    def fingerprint(self) -> str:
        return self._fingerprint
