"""insightface MXNet RecordIO (``train.rec`` + ``train.idx`` + ``property``), read and written without mxnet.

Byte layout (REFERENCE.md section 4; dmlc-core ``recordio.h`` and mxnet ``recordio.py``), little-endian:

* a record part is ``uint32 magic 0xced7230a | uint32 lrec | data | zero padding to a multiple of 4``, with
  ``cflag = lrec >> 29`` and ``length = lrec & (2**29 - 1)``;
* a payload that contains the magic at a 4-byte-aligned position is split there: parts with cflag 1 (first),
  2 (middle), 3 (last); the magic itself is dropped and re-inserted when joining; cflag 0 = a whole record;
* a payload starts with the 24-byte header ``struct 'IfQQ'`` (uint32 flag, float32 label, uint64 id,
  uint64 id2); when flag > 0, ``flag`` float32 labels follow and the scalar label is unused;
* the rest of the payload is the encoded image (JPEG in insightface releases);
* ``.idx``: one ``key<TAB>offset`` line per record (offset of the record's first part);
* ``property``: ``num_classes,height,width``.

Two layouts exist. "header": key 0 has flag > 0 and labels ``[N+1, N+1+C]``; images are keys 1..N; keys
N+1..N+C are identity records whose labels are the ``[start, end)`` key ranges of each identity. "keys":
images are keys 0..N-1 with scalar labels. Image labels come from each image's own header (first of the
label array when flag > 0), as insightface's loader does.
"""

from __future__ import annotations

import hashlib
import os
import struct
from typing import Iterable

import numpy as np

from synleak_jax.data import decode, rejects
from synleak_jax.data.sources import Source

MAGIC = 0xCED7230A
MAGIC_BYTES = struct.pack("<I", MAGIC)
HEADER = struct.Struct("<IfQQ")  # 24 bytes
_LEN_MASK = (1 << 29) - 1
_MAX_LEN = 1 << 29


def encode_lrec(cflag: int, length: int) -> int:
    return (cflag << 29) | length


def pack_payload(label, image: bytes, id: int = 0, id2: int = 0) -> bytes:
    """Header + image bytes. ``label`` a number (flag 0) or a sequence of floats (flag = its length)."""
    if np.ndim(label) == 0:
        return HEADER.pack(0, float(label), int(id), int(id2)) + bytes(image)
    lab = np.asarray(label, dtype="<f4").reshape(-1)
    return HEADER.pack(len(lab), 0.0, int(id), int(id2)) + lab.tobytes() + bytes(image)


def unpack_payload(payload: bytes, where: str = "") -> tuple[int, float | np.ndarray, int, int, bytes]:
    """Returns (flag, label, id, id2, rest): label is a float (flag 0) or float32 ``[flag]``."""
    if len(payload) < HEADER.size:
        raise rejects.RecordError(rejects.BAD_RECORD, f"{where}: payload of {len(payload)} bytes < 24-byte header")
    flag, label, id_, id2 = HEADER.unpack_from(payload, 0)
    if flag > 0:
        end = HEADER.size + 4 * flag
        if end > len(payload):
            raise rejects.RecordError(rejects.BAD_RECORD, f"{where}: header flag {flag} exceeds the payload")
        return flag, np.frombuffer(payload, dtype="<f4", count=flag, offset=HEADER.size), id_, id2, payload[end:]
    return flag, label, id_, id2, payload[HEADER.size:]


def frame_record(payload: bytes) -> bytes:
    """Frames one payload as dmlc RecordIO parts (splitting at 4-byte-aligned magic occurrences)."""
    n = len(payload)
    if n >= _MAX_LEN:
        raise ValueError(f"RecordIO records must be < 2**29 bytes, got {n}")
    lower = n & ~3
    words = np.frombuffer(payload, dtype="<u4", count=lower // 4)
    cuts = (np.nonzero(words == MAGIC)[0] * 4).tolist()
    out = bytearray()
    start = 0
    for c in cuts:
        out += MAGIC_BYTES + struct.pack("<I", encode_lrec(1 if start == 0 else 2, c - start))
        out += payload[start:c]
        start = c + 4
    out += MAGIC_BYTES + struct.pack("<I", encode_lrec(3 if cuts else 0, n - start))
    out += payload[start:]
    out += b"\0" * ((-n) % 4)  # parts before the last are multiples of 4 long: only the end needs padding
    return bytes(out)


def _paths(prefix: str) -> tuple[str, str, str]:
    prefix = os.fspath(prefix)
    for ext in (".rec", ".idx"):
        if prefix.endswith(ext):
            prefix = prefix[: -len(ext)]
    d = os.path.dirname(prefix)
    return prefix + ".rec", prefix + ".idx", os.path.join(d, "property")


def write_recordio(prefix: str, items: Iterable[tuple[bytes, int]], layout: str = "header",
                   image_size: tuple[int, int] | None = None, num_classes: int | None = None,
                   write_property: bool = True) -> dict:
    """Writes ``prefix.rec``, ``prefix.idx`` and (optionally) ``property`` next to them.

    Args:
      prefix: path without extension (``.../train``).
      items: (encoded image bytes, integer label >= 0) in record order. For layout "header" labels must be
        non-decreasing (identity records store contiguous key ranges).
      layout: "header" (record 0 + identity records, insightface's CASIA/MS1M releases) or "keys".
      image_size: (height, width) for the property file.
      num_classes: defaults to max label + 1.

    Returns:
      dict with rec/idx/property paths, num_images, num_classes.
    """
    if layout not in ("header", "keys"):
        raise ValueError(f"layout must be 'header' or 'keys', got {layout!r}")
    rec_path, idx_path, prop_path = _paths(prefix)
    items = [(bytes(b), int(l)) for b, l in items]
    labels = np.asarray([l for _, l in items], dtype=np.int64)
    if len(labels) and labels.min() < 0:
        raise ValueError("labels must be >= 0")
    c = int(num_classes if num_classes is not None else (labels.max() + 1 if len(labels) else 0))
    if len(labels) and labels.max() >= c:
        raise ValueError(f"label {labels.max()} >= num_classes {c}")
    n = len(items)
    records: list[tuple[int, bytes]] = []
    if layout == "keys":
        records = [(k, pack_payload(l, b, id=k)) for k, (b, l) in enumerate(items)]
    else:
        if np.any(np.diff(labels) < 0):
            raise ValueError("layout 'header' needs items grouped by label (non-decreasing labels)")
        records.append((0, pack_payload([n + 1, n + 1 + c], b"", id=0)))
        records += [(k + 1, pack_payload(l, b, id=k + 1)) for k, (b, l) in enumerate(items)]
        keys = np.arange(1, n + 1)
        for ident in range(c):
            sel = keys[labels == ident]
            start, end = (int(sel[0]), int(sel[-1]) + 1) if len(sel) else (0, 0)
            records.append((n + 1 + ident, pack_payload([start, end], b"", id=n + 1 + ident)))
    os.makedirs(os.path.dirname(os.path.abspath(rec_path)), exist_ok=True)
    with open(rec_path, "wb") as rec, open(idx_path, "w") as idx:
        for key, payload in records:
            idx.write(f"{key}\t{rec.tell()}\n")
            rec.write(frame_record(payload))
    if write_property:
        h, w = image_size if image_size is not None else (112, 112)
        with open(prop_path, "w") as f:
            f.write(f"{c},{h},{w}")
    return {"rec": rec_path, "idx": idx_path, "property": prop_path if write_property else None,
            "num_images": n, "num_classes": c}


class RecordIOSource(Source):
    """Random-access reader of an insightface RecordIO dataset (both layouts), picklable (reopens lazily).

    ``src[i]`` is the encoded image of the i-th image record in key order; ``label(i)`` comes from its header.
    """

    def __init__(self, prefix: str):
        self.rec_path, self.idx_path, self.prop_path = _paths(prefix)
        if not os.path.isfile(self.rec_path):
            raise rejects.DataError(f"RecordIO data file not found: {self.rec_path!r}")
        if not os.path.isfile(self.idx_path):
            raise rejects.DataError(
                f"RecordIO index not found: {self.idx_path!r} (random access needs the .idx next to "
                f"{self.rec_path!r})")
        self._fd = None
        self._size = os.path.getsize(self.rec_path)
        keys, offs = [], []
        with open(self.idx_path) as f:
            for ln, line in enumerate(f, 1):
                if not line.strip():
                    continue
                parts = line.split("\t")
                if len(parts) != 2:
                    parts = line.split()
                try:
                    keys.append(int(parts[0]))
                    offs.append(int(parts[1]))
                except (ValueError, IndexError):
                    raise rejects.DataError(f"{self.idx_path}:{ln}: expected 'key<TAB>offset', got {line!r}") from None
        if not keys:
            raise rejects.DataError(f"RecordIO index is empty: {self.idx_path!r}")
        order = np.argsort(np.asarray(keys, dtype=np.int64), kind="stable")
        all_keys = np.asarray(keys, dtype=np.int64)[order]
        all_offs = np.asarray(offs, dtype=np.int64)[order]
        key_to_off = dict(zip(all_keys.tolist(), all_offs.tolist()))
        self.layout = "keys"
        self.identity_ranges = None
        header_classes = None
        if 0 in key_to_off:
            try:
                flag, label, *_ = unpack_payload(self._read_payload(key_to_off[0]), self._where(0, key_to_off[0]))
            except rejects.RecordError as e:
                raise rejects.DataError(f"cannot read RecordIO record 0 of {self.rec_path!r}: {e}") from None
            if flag > 0:
                self.layout = "header"
                n1, end = int(label[0]), int(label[1])
                sel = (all_keys >= 1) & (all_keys < n1)
                id_sel = (all_keys >= n1) & (all_keys < end)
                header_classes = end - n1
                self._id_keys = all_keys[id_sel]
                self._id_offs = all_offs[id_sel]
                all_keys, all_offs = all_keys[sel], all_offs[sel]
                if len(all_keys) != n1 - 1:
                    raise rejects.DataError(
                        f"{self.idx_path!r}: header record says {n1 - 1} images (keys 1..{n1 - 1}) but the index "
                        f"lists {len(all_keys)} of them")
        if len(all_keys) == 0:
            raise rejects.DataError(f"RecordIO dataset has no image records: {self.rec_path!r}")
        self._keys, self._offs = all_keys, all_offs
        bad = np.nonzero((all_offs < 0) | (all_offs + 8 > self._size))[0]
        self._bad_offsets = set(bad.tolist())
        self.num_classes = None
        self.image_size = None
        if os.path.isfile(self.prop_path):
            try:
                vals = [int(v) for v in open(self.prop_path).read().strip().split(",")]
                self.num_classes = vals[0]
                self.image_size = (vals[1], vals[2]) if len(vals) >= 3 else None
            except (ValueError, IndexError):
                raise rejects.DataError(f"cannot parse {self.prop_path!r}: expected 'num_classes,h,w'") from None
        if self.num_classes is None and header_classes is not None:
            self.num_classes = header_classes
        self._labels = None
        h = hashlib.sha256(f"recordio\t{self.layout}\t{self._size}\n".encode())
        h.update(self._keys.tobytes() + self._offs.tobytes())
        self._fingerprint = h.hexdigest()

    # -- pickling: never carry an open file descriptor into a worker -----------------------------
    def __getstate__(self):
        d = dict(self.__dict__)
        d["_fd"] = None
        return d

    def __del__(self):
        fd = getattr(self, "_fd", None)
        if fd is not None:
            try:
                os.close(fd)
            except OSError:
                pass

    def _pread(self, n: int, off: int) -> bytes:
        if self._fd is None:
            self._fd = os.open(self.rec_path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        return os.pread(self._fd, n, off)

    def _where(self, key: int, off: int) -> str:
        return f"{self.rec_path}:{off} (key {key})"

    def _read_payload(self, off: int, where: str | None = None) -> bytes:
        """Reads and joins the parts of the record starting at byte ``off``."""
        where = where or f"{self.rec_path}:{off}"
        parts = []
        pos = off
        while True:
            head = self._pread(8, pos)
            if len(head) < 8:
                raise rejects.RecordError(rejects.BAD_RECORD, f"{where}: file ends inside a record header")
            magic, lrec = struct.unpack("<II", head)
            if magic != MAGIC:
                raise rejects.RecordError(rejects.BAD_RECORD, f"{where}: bad magic 0x{magic:08x} at byte {pos}")
            cflag, length = lrec >> 29, lrec & _LEN_MASK
            if cflag > 3 or (not parts and cflag not in (0, 1)) or (parts and cflag not in (2, 3)):
                raise rejects.RecordError(rejects.BAD_RECORD, f"{where}: unexpected continuation flag {cflag}")
            if pos + 8 + length > self._size:
                raise rejects.RecordError(
                    rejects.BAD_RECORD, f"{where}: length {length} runs past the end of the file at byte {pos}")
            parts.append(self._pread(length, pos + 8))
            pos += 8 + ((length + 3) & ~3)
            if cflag in (0, 3):
                break
        return MAGIC_BYTES.join(parts)

    # -- Source interface --------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._keys)

    def key(self, i: int) -> int:
        return int(self._keys[self._check(i)])

    def describe(self, i: int) -> str:
        i = self._check(i)
        return self._where(int(self._keys[i]), int(self._offs[i]))

    def fingerprint(self) -> str:
        return self._fingerprint

    def read_record(self, i: int) -> tuple[bytes, int]:
        i = self._check(i)
        where = self.describe(i)
        if i in self._bad_offsets:
            raise rejects.RecordError(rejects.BAD_RECORD, f"{where}: offset outside the file")
        flag, label, _, _, img = unpack_payload(self._read_payload(int(self._offs[i]), where), where)
        lab = label[0] if flag > 0 else label
        return img, int(lab)

    def read_bytes(self, i: int) -> bytes:
        return self.read_record(i)[0]

    def _read_label(self, i: int) -> int:
        try:
            return self.read_record(i)[1]
        except rejects.RecordError:
            return -1

    def label(self, i: int) -> int:
        i = self._check(i)
        if self._labels is not None:
            return int(self._labels[i])
        return self._read_label(i)

    def labels(self) -> np.ndarray:
        """All image labels (one header read per record, cached); -1 for records that cannot be read."""
        if self._labels is None:
            out = np.empty(len(self), dtype=np.int64)
            for i in range(len(self)):
                off = int(self._offs[i])
                head = self._pread(8 + HEADER.size + 4, off) if i not in self._bad_offsets else b""
                if len(head) >= 8 + HEADER.size and struct.unpack_from("<I", head)[0] == MAGIC:
                    lrec = struct.unpack_from("<I", head, 4)[0]
                    length = lrec & _LEN_MASK
                    if lrec >> 29 == 0 and length >= HEADER.size + 4 and off + 8 + length <= self._size:
                        flag, lab = struct.unpack_from("<If", head, 8)
                        if flag > 0:
                            lab = struct.unpack_from("<f", head, 8 + HEADER.size)[0]
                        out[i] = int(lab)
                        continue
                out[i] = self._read_label(i)  # split or short record: take the slow path
            self._labels = out
        return self._labels.copy()

    def identity_records(self) -> list[tuple[int, int, int]]:
        """Header layout only: (identity index, start key, end key) from the identity records."""
        if self.layout != "header":
            return []
        out = []
        for j, (k, off) in enumerate(zip(self._id_keys.tolist(), self._id_offs.tolist())):
            flag, lab, *_ = unpack_payload(self._read_payload(off), self._where(k, off))
            out.append((j, int(lab[0]), int(lab[1])))
        return out


def export_source(source: Source, prefix: str, layout: str = "keys", skip_rejects: bool = True,
                  image_size: tuple[int, int] | None = None, validate: bool = True) -> dict:
    """Writes every usable record of ``source`` (bytes as stored, its label) to RecordIO.

    With ``validate`` each image is also decoded, so unreadable and undecodable records are left out. Records
    that fail are skipped when ``skip_rejects`` (returned as reject entries in ``rejects``), else raise.
    Labels < 0 are not allowed in RecordIO: unlabelled sources are written with label 0.
    """
    items, bad = [], []
    for i in range(len(source)):
        try:
            b, lab = source.read_record(i)
            if validate:
                decode.decode_rgb(b, source.describe(i))
        except rejects.RecordError as e:
            if not skip_rejects:
                raise
            bad.append(rejects.make_entry(source, i, e.code))
            continue
        items.append((b, max(int(lab), 0)))
    out = write_recordio(prefix, items, layout=layout, image_size=image_size,
                         num_classes=getattr(source, "num_classes", None))
    out["rejects"] = bad
    return out
