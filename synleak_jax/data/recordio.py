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

DCFace's release (mk-minchul/dcface, ``src/visualizations/record.py`` writer) is a third shape handled here:
``record/file.rec`` + ``file.idx`` + ``list.txt`` with lines ``index<TAB><identity>/<image>.jpg``; every header is
``(flag 0, label 0, id index, id2 0)``, so identities exist only in ``list.txt`` (see :class:`RecordIOSource`).

Untrusted input: every ``.idx``/``list.txt`` line is bounded and parsed strictly, every record length is checked
against the file size and the per-record cap before it is read, labels must be finite integers, two keys at one
offset are rejects; the only exceptions a read raises are :class:`rejects.RecordError` (one record) and
:class:`rejects.DataError` (the constructor: the dataset is unusable), both naming the file.
"""

from __future__ import annotations

import array
import hashlib
import math
import os
import struct
from typing import Iterable

import numpy as np

from synleak_jax.data import decode, rejects, safe_paths
from synleak_jax.data.sources import Listing, Source

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


#: Longest ``.idx`` line accepted (two 20-digit integers, a separator and a newline need 43 bytes).
_MAX_IDX_LINE = 256
#: Longest ``list.txt`` line accepted (an index, a tab and a path of up to PATH_MAX = 4096 bytes).
_MAX_LIST_LINE = 8192
#: Largest ``property`` file read (``num_classes,height,width``).
_MAX_PROPERTY_BYTES = 4096
#: Labels are non-negative integers below this (insightface stores them as float32 class ids).
_LABEL_LIMIT = 1 << 31
#: Index keys and header counts must be below this (no release comes near; keeps every product in int64).
_KEY_LIMIT = 1 << 48


def label_value(x, limit: int = _LABEL_LIMIT) -> int | None:
    """``x`` as an int if it is a finite, integral number in ``[0, limit)``, else None (NaN, inf, 1e30, -1, 2.5)."""
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    if not math.isfinite(v) or v != math.floor(v) or not 0 <= v < limit:
        return None
    return int(v)


def _parse_int(token: bytes) -> int:
    """Strict decimal integer of an index file (digits with an optional sign only; ValueError otherwise)."""
    t = token.strip()
    if not t or not t.lstrip(b"+-").isdigit():
        raise ValueError(token)
    return int(t)


class RecordIOSource(Source):
    """Random-access reader of an insightface RecordIO dataset (both layouts), picklable (reopens lazily).

    ``src[i]`` is the encoded image of the i-th image record in key order; ``label(i)`` comes from its header, or
    from ``list.txt`` (DCFace's release, below).

    Args:
      prefix: ``.../train`` or ``.../train.rec`` (``.idx`` beside it).
      max_file_bytes: cap on the bytes of one record (None/0 = ``safe_paths.DEFAULT_MAX_FILE_BYTES``); a longer
        record is the reject TOO_LARGE before it is read.
      list_file: ``"auto"`` uses ``list.txt`` beside the ``.rec`` when present (DCFace: ``record/file.rec``,
        ``file.idx``, ``list.txt``), ``""``/None ignores it, a path names it.

    With a list file, the records are the union of the ``.idx`` keys and the list's indices, in index order:
    identities (``class_names``, labels 0..C-1 in sorted name order, as ``ImageFolderSource`` numbers the exported
    ``<identity>/<image>.jpg`` folders) and names (``relpath``) come from the list (identity = first path
    component); each record's header ``id`` must equal its index. A key missing from the list is the reject
    NOT_IN_LIST (label -1), a list entry missing from the index is a record of its own with the reject
    NOT_IN_RECORD (its label and name are known), an index listed twice is DUPLICATE_RECORD, a path without an
    identity folder is BAD_LABEL.

    Index problems: a malformed or non-UTF-8 ``.idx`` line, a key listed twice, a negative key -> DataError naming
    file and line; two keys at one offset -> every key but the lowest is the reject DUPLICATE_RECORD. Header
    layout: record 0 must carry two finite integral counts ``1 <= N+1 <= N+1+C`` (else DataError). Image labels
    that are not finite integers in ``[0, 2**31)`` are the reject BAD_LABEL (label -1).
    """

    def __init__(self, prefix: str, max_file_bytes: int | None = None, list_file: str | None = "auto"):
        self.rec_path, self.idx_path, self.prop_path = _paths(prefix)
        cap = safe_paths.DEFAULT_MAX_FILE_BYTES if max_file_bytes in (None, 0) else int(max_file_bytes)
        if cap < 1:
            raise ValueError(f"max_file_bytes must be positive, got {max_file_bytes}")
        self.max_file_bytes = cap
        self._fd = None
        self._size = int(safe_paths.regular_file(self.rec_path, "RecordIO data file").st_size)
        safe_paths.regular_file(self.idx_path, "RecordIO index")
        keys, offs = self._read_index()
        order = np.argsort(keys, kind="stable")
        all_keys, all_offs = keys[order], offs[order]
        dup_key = np.nonzero(np.diff(all_keys) == 0)[0]
        if len(dup_key):
            raise rejects.DataError(f"{self._idx_display}: key {int(all_keys[dup_key[0]])} is listed twice "
                                    f"({len(dup_key)} repeated keys): the index is corrupt")
        #: key -> the lowest key at the same offset, for every key that shares its offset with a lower one.
        self._dup_key = self._duplicate_offsets(all_keys, all_offs)
        self.layout = "keys"
        self.identity_ranges = None
        self._id_keys = self._id_offs = np.zeros(0, np.int64)
        header_classes = None
        if len(all_keys) and all_keys[0] == 0:
            header_classes, all_keys, all_offs = self._read_header_record(all_keys, all_offs)
        if len(all_keys) == 0:
            raise rejects.DataError(f"RecordIO dataset has no image records: {self._rec_display}")
        self._keys, self._offs = all_keys, all_offs
        self.num_classes = None
        self.image_size = None
        if os.path.lexists(self.prop_path):
            self._read_property()
        if self.num_classes is None and header_classes is not None:
            self.num_classes = header_classes
        self._labels = None
        h = hashlib.sha256(f"recordio\t{self.layout}\t{self._size}\n".encode())
        h.update(self._keys.tobytes() + self._offs.tobytes())
        self.list_path = None
        self._list_labels = self._list_codes = self._names = None
        list_path = self._find_list(list_file)
        if list_path is not None:
            h.update(b"list\0" + self._join_list(list_path))
        self._fingerprint = h.hexdigest()

    # -- construction ------------------------------------------------------------------------------
    @property
    def _rec_display(self) -> str:
        return safe_paths.display_path(self.rec_path)

    @property
    def _idx_display(self) -> str:
        return safe_paths.display_path(self.idx_path)

    def _read_index(self) -> tuple[np.ndarray, np.ndarray]:
        """(keys, offsets) int64 in file order; DataError naming file:line for anything malformed.

        Streamed line by line into 8-byte arrays: memory is 16 bytes per line (each line >= 4 bytes on disk), and
        no line longer than 256 bytes is ever held (a sparse or binary file named .idx fails at its first line).
        """
        keys, offs = array.array("q"), array.array("q")
        try:
            fd, _ = safe_paths.open_regular(self.idx_path, self._idx_display, follow=True)
        except rejects.RecordError as e:
            raise rejects.DataError(f"cannot read RecordIO index: {e}") from None
        with os.fdopen(fd, "rb", closefd=True) as f:
            for ln, line in enumerate(iter(lambda: f.readline(_MAX_IDX_LINE + 1), b""), 1):
                if len(line) > _MAX_IDX_LINE:
                    raise rejects.DataError(f"{self._idx_display}:{ln}: line longer than {_MAX_IDX_LINE} bytes "
                                            "(not a RecordIO index)")
                if not line.strip():
                    continue
                parts = line.split(b"\t")
                if len(parts) != 2:
                    parts = line.split()
                try:
                    if len(parts) != 2:
                        raise ValueError(line)
                    key, off = _parse_int(parts[0]), _parse_int(parts[1])
                    if not 0 <= key < _KEY_LIMIT or not -_KEY_LIMIT < off < _KEY_LIMIT:
                        raise ValueError(line)
                except ValueError:
                    raise rejects.DataError(
                        f"{self._idx_display}:{ln}: expected 'key<TAB>offset' (decimal, key >= 0), got {line!r}"
                    ) from None
                keys.append(key)
                offs.append(off)
        if not keys:
            raise rejects.DataError(f"RecordIO index is empty: {self._idx_display}")
        return np.frombuffer(keys, np.int64).copy(), np.frombuffer(offs, np.int64).copy()

    @staticmethod
    def _duplicate_offsets(keys: np.ndarray, offs: np.ndarray) -> dict[int, int]:
        """{key: lowest key at the same offset} for every key that shares its offset with a lower key."""
        by_off = np.lexsort((keys, offs))
        o, k = offs[by_off], keys[by_off]
        same = np.nonzero(np.diff(o) == 0)[0] + 1
        out = {}
        for j in same.tolist():
            first = j
            while first > 0 and o[first - 1] == o[j]:
                first -= 1
            out[int(k[j])] = int(k[first])
        return out

    def _read_header_record(self, keys: np.ndarray, offs: np.ndarray):
        """Record 0: the header layout's counts if its flag > 0 -> (classes, image keys, image offsets)."""
        off0 = int(offs[0])
        where = self._where(0, off0)
        try:
            if not 0 <= off0 <= self._size - 8:
                raise rejects.RecordError(rejects.BAD_RECORD, f"{where}: offset outside the file")
            flag, label, *_ = unpack_payload(self._read_head(off0, where), where)
        except rejects.RecordError as e:
            raise rejects.DataError(f"cannot read RecordIO record 0 of {self._rec_display}: {e}") from None
        if flag == 0:
            return None, keys, offs
        if flag < 2:
            raise rejects.DataError(
                f"{where}: record 0 has header flag {flag}: neither an image record (flag 0) nor insightface's "
                "header record (flag 2, labels [N+1, N+1+C])")
        n1, end = label_value(label[0], _KEY_LIMIT), label_value(label[1], _KEY_LIMIT)
        if n1 is None or end is None or not 1 <= n1 <= end:
            raise rejects.DataError(
                f"{where}: header record labels {float(label[0])!r}, {float(label[1])!r} are not counts "
                "1 <= N+1 <= N+1+C (finite integers)")
        self.layout = "header"
        sel = (keys >= 1) & (keys < n1)
        id_sel = (keys >= n1) & (keys < end)
        self._id_keys, self._id_offs = keys[id_sel], offs[id_sel]
        if int(sel.sum()) != n1 - 1:
            raise rejects.DataError(f"{self._idx_display}: header record says {n1 - 1} images (keys 1..{n1 - 1}) "
                                    f"but the index lists {int(sel.sum())} of them")
        return end - n1, keys[sel], offs[sel]

    def _read_property(self) -> None:
        raw = safe_paths.read_small_file(self.prop_path, "RecordIO property file", _MAX_PROPERTY_BYTES)
        try:
            vals = [int(v) for v in raw.decode("ascii").strip().split(",")]
            if any(v < 0 for v in vals):
                raise ValueError(vals)
            self.num_classes = vals[0]
            self.image_size = (vals[1], vals[2]) if len(vals) >= 3 else None
        except (ValueError, IndexError, UnicodeDecodeError):
            raise rejects.DataError(f"cannot parse {safe_paths.display_path(self.prop_path)}: expected "
                                    "'num_classes,h,w'") from None

    def _find_list(self, list_file: str | None) -> str | None:
        if list_file in (None, ""):
            return None
        if list_file == "auto":
            cand = os.path.join(os.path.dirname(self.rec_path), "list.txt")
            return cand if os.path.lexists(cand) else None
        return os.fspath(list_file)

    def _join_list(self, list_path: str) -> bytes:
        """Reads ``list.txt`` (``index<TAB>identity/image``) and joins it with the index; returns its sha256."""
        self.list_path = list_path
        disp = safe_paths.display_path(list_path)
        try:
            fd, _ = safe_paths.open_regular(list_path, disp, follow=True)
        except rejects.RecordError as e:
            raise rejects.DataError(f"cannot read list file: {e}") from None
        digest = hashlib.sha256()
        indices, names = array.array("q"), []
        with os.fdopen(fd, "rb", closefd=True) as f:
            for ln, line in enumerate(iter(lambda: f.readline(_MAX_LIST_LINE + 1), b""), 1):
                digest.update(line)
                if len(line) > _MAX_LIST_LINE:
                    raise rejects.DataError(f"{disp}:{ln}: line longer than {_MAX_LIST_LINE} bytes")
                body = line[:-1] if line.endswith(b"\n") else line
                body = body[:-1] if body.endswith(b"\r") else body
                if not body.strip():
                    continue
                idx_tok, sep, name = body.partition(b"\t")
                try:
                    if not sep:
                        raise ValueError(body)
                    index = _parse_int(idx_tok)
                    if not 0 <= index < _KEY_LIMIT:
                        raise ValueError(body)
                except ValueError:
                    raise rejects.DataError(f"{disp}:{ln}: expected 'index<TAB>identity/image', got {line!r}") from None
                indices.append(index)
                names.append(name)
        idx = np.frombuffer(indices, np.int64)
        # Records: the union of index keys and list indices, in index order.
        union = np.union1d(self._keys, idx)
        pos_in_idx = np.searchsorted(self._keys, union)
        in_idx = (pos_in_idx < len(self._keys)) & (self._keys[np.minimum(pos_in_idx, len(self._keys) - 1)] == union)
        offs = np.full(len(union), -1, np.int64)
        offs[in_idx] = self._offs[pos_in_idx[in_idx]]
        # First list entry per index; an index listed more than once is ambiguous.
        order = np.argsort(idx, kind="stable")
        sorted_idx = idx[order]
        first = np.ones(len(sorted_idx), bool)
        first[1:] = sorted_idx[1:] != sorted_idx[:-1]
        counts = np.diff(np.append(np.nonzero(first)[0], len(sorted_idx)))
        uniq, first_entry = sorted_idx[first], order[first]
        pos_in_list = np.searchsorted(uniq, union)
        in_list = (pos_in_list < len(uniq)) & (uniq[np.minimum(pos_in_list, max(len(uniq) - 1, 0))] == union) \
            if len(uniq) else np.zeros(len(union), bool)
        codes = np.zeros(len(union), np.int8)
        record_names: list[bytes] = []
        identities: list[bytes | None] = []
        for r in range(len(union)):
            if not in_list[r]:
                codes[r] = rejects.NOT_IN_LIST
                record_names.append(b"")
                identities.append(None)
                continue
            p = int(pos_in_list[r])
            name = names[int(first_entry[p])]
            record_names.append(name)
            parts = name.split(b"/")
            ident = parts[0] if len(parts) >= 2 and parts[0] and parts[-1] else None
            identities.append(ident)
            if counts[p] > 1:
                codes[r] = rejects.DUPLICATE_RECORD
            elif ident is None:
                codes[r] = rejects.BAD_LABEL
            elif not in_idx[r]:
                codes[r] = rejects.NOT_IN_RECORD
        class_bytes = sorted({i for i in identities if i is not None})
        class_of = {c: j for j, c in enumerate(class_bytes)}
        self._list_labels = np.asarray([class_of[i] if i is not None else -1 for i in identities], np.int64)
        self._list_codes = codes
        self._names = Listing.from_bytes(record_names)
        self.class_names = [os.fsdecode(c) for c in class_bytes]
        self.num_classes = len(class_bytes)
        self._keys, self._offs = union, offs
        if os.path.basename(self.rec_path) == "file.rec":
            self.release = "dcface_recordio"
        return digest.digest()

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
            # Regular file only, opened without blocking (the .rec may have been swapped since the constructor).
            self._fd, _ = safe_paths.open_regular(self.rec_path, self._rec_display, follow=True)
        return os.pread(self._fd, n, off)

    def _where(self, key: int, off: int) -> str:
        return f"{self._rec_display}:{off} (key {key})"

    def _read_payload(self, off: int, where: str | None = None) -> bytes:
        """Reads and joins the parts of the record starting at byte ``off`` (at most ``max_file_bytes``).

        Every part length is checked against the end of the file and the running total against the cap before
        the part is read; memory is at most twice the record (parts + joined payload).
        """
        where = where or f"{self._rec_display}:{off}"
        parts = []
        pos, total = off, 0
        try:
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
                total += length + (4 if parts else 0)
                if total > self.max_file_bytes:
                    raise rejects.RecordError(rejects.TOO_LARGE, f"{where}: record of more than {self.max_file_bytes} "
                                                                 "bytes (max_file_bytes)")
                parts.append(self._pread(length, pos + 8))
                pos += 8 + ((length + 3) & ~3)
                if cflag in (0, 3):
                    break
            return MAGIC_BYTES.join(parts)
        except MemoryError:
            raise rejects.RecordError(rejects.OUT_OF_MEMORY, f"{where}: {total} bytes") from None
        except OSError as e:  # EIO, or the .rec replaced by something that is not a regular file
            raise rejects.RecordError(rejects.UNREADABLE, f"{where}: {e.strerror or e}") from None

    def _read_head(self, off: int, where: str) -> bytes:
        """The start of the payload at ``off``: the 24-byte header and up to two labels (what the layout needs),
        without reading an image record whole; a record split inside those bytes is read whole (capped)."""
        head = self._pread(8 + HEADER.size + 8, off)
        if len(head) >= 8 + HEADER.size and struct.unpack_from("<I", head)[0] == MAGIC:
            lrec = struct.unpack_from("<I", head, 4)[0]
            length = lrec & _LEN_MASK
            if lrec >> 29 in (0, 1) and off + 8 + length <= self._size:
                payload = head[8:8 + length]
                flag = struct.unpack_from("<I", payload)[0] if len(payload) >= 4 else 0
                needed = HEADER.size + (8 if flag >= 2 else 4 * flag)
                if len(payload) >= needed or lrec >> 29 == 0:
                    return payload
        return self._read_payload(off, where)  # split header, bad magic or short file: the full checks

    # -- Source interface --------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._keys)

    def key(self, i: int) -> int:
        """The ``.idx`` key (DCFace: the image index of list.txt) of record ``i``."""
        return int(self._keys[self._check(i)])

    def relpath(self, i: int) -> str:
        """With a list file: the record's ``identity/image`` name (OS string; "" when it is not listed)."""
        if self._names is None:
            raise AttributeError("relpath() needs a list file (list.txt); this RecordIO has none")
        return self._names[self._check(i)]

    def describe(self, i: int) -> str:
        i = self._check(i)
        key, off = int(self._keys[i]), int(self._offs[i])
        if self._names is None:
            return self._where(key, off)
        name = safe_paths.display_path(self._names[i]) or "not in list.txt"
        if off < 0:
            return f"{safe_paths.display_path(self.list_path)}: index {key} ({name}), no record in {self._rec_display}"
        return f"{self._rec_display}:{off} (key {key}, {name})"

    def fingerprint(self) -> str:
        return self._fingerprint

    def _check_record(self, i: int, where: str) -> tuple[int, int]:
        """(key, offset) of record ``i`` after the index-level rejects (list, duplicates, offset range)."""
        key, off = int(self._keys[i]), int(self._offs[i])
        if self._list_codes is not None and self._list_codes[i]:
            raise rejects.RecordError(int(self._list_codes[i]), where)
        if key in self._dup_key:
            raise rejects.RecordError(rejects.DUPLICATE_RECORD,
                                      f"{where}: same offset as key {self._dup_key[key]} (an image listed twice)")
        if not 0 <= off <= self._size - 8:
            raise rejects.RecordError(rejects.BAD_RECORD, f"{where}: offset outside the file")
        return key, off

    def read_record(self, i: int) -> tuple[bytes, int]:
        i = self._check(i)
        where = self.describe(i)
        key, off = self._check_record(i, where)
        flag, label, id_, _, img = unpack_payload(self._read_payload(off, where), where)
        if self._list_labels is not None:
            if id_ != key:
                raise rejects.RecordError(rejects.BAD_RECORD,
                                          f"{where}: header id {id_} differs from its index {key} in list.txt")
            return img, int(self._list_labels[i])
        raw = label[0] if flag > 0 else label
        value = label_value(raw)
        if value is None:
            raise rejects.RecordError(rejects.BAD_LABEL, f"{where}: label {float(raw)!r}")
        return img, value

    def read_bytes(self, i: int) -> bytes:
        return self.read_record(i)[0]

    def _read_label(self, i: int) -> int:
        try:
            return self.read_record(i)[1]
        except rejects.RecordError:
            return -1

    def label(self, i: int) -> int:
        """The record's label (list.txt identity or header label); -1 where it is unknown or invalid."""
        i = self._check(i)
        if self._list_labels is not None:
            return int(self._list_labels[i])
        if self._labels is not None:
            return int(self._labels[i])
        return self._read_label(i)

    def labels(self) -> np.ndarray:
        """All image labels, int64 ``[N]`` (list.txt: no read; else one header read per record, cached); -1 for
        records that cannot be read or whose label is not a finite integer in ``[0, 2**31)``."""
        if self._list_labels is not None:
            return self._list_labels.copy()
        if self._labels is None:
            out = np.empty(len(self), dtype=np.int64)
            for i in range(len(self)):
                off, key = int(self._offs[i]), int(self._keys[i])
                ok = 0 <= off <= self._size - 8 and key not in self._dup_key
                head = self._pread(8 + HEADER.size + 4, off) if ok else b""
                if len(head) >= 8 + HEADER.size and struct.unpack_from("<I", head)[0] == MAGIC:
                    lrec = struct.unpack_from("<I", head, 4)[0]
                    length = lrec & _LEN_MASK
                    if (lrec >> 29 == 0 and HEADER.size + 4 <= length <= self.max_file_bytes
                            and off + 8 + length <= self._size):
                        flag, lab = struct.unpack_from("<If", head, 8)
                        if flag > 0:
                            if HEADER.size + 4 * flag > length:
                                out[i] = -1  # header says more labels than the record holds: a reject
                                continue
                            lab = struct.unpack_from("<f", head, 8 + HEADER.size)[0]
                        value = label_value(lab)
                        out[i] = -1 if value is None else value
                        continue
                out[i] = self._read_label(i) if ok else -1  # split or short record: take the slow path
            self._labels = out
        return self._labels.copy()

    def identity_records(self) -> list[tuple[int, int, int]]:
        """Header layout only: (identity index, start key, end key) from the identity records (DataError naming
        the record if one cannot be read or holds no integer range)."""
        if self.layout != "header":
            return []
        out = []
        for j, (k, off) in enumerate(zip(self._id_keys.tolist(), self._id_offs.tolist())):
            where = self._where(k, off)
            try:
                flag, lab, *_ = unpack_payload(self._read_payload(off, where), where)
            except rejects.RecordError as e:
                raise rejects.DataError(f"identity record unreadable: {e}") from None
            start = label_value(lab[0], _KEY_LIMIT) if flag >= 2 else None
            end = label_value(lab[1], _KEY_LIMIT) if flag >= 2 else None
            if start is None or end is None:
                raise rejects.DataError(f"{where}: identity record without an integer [start, end) range")
            out.append((j, start, end))
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
