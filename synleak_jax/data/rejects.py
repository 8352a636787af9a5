"""Reject reasons and reject entries: every record that cannot be used is reported, never dropped silently.

A pipeline batch carries ``reject_code`` int32 ``[B]`` (0 = good row or padding). The code indexes
:data:`REASONS`; the record id plus ``source.describe(record_id)`` give the file or file:offset, so a caller
can rebuild a full :class:`RejectEntry` for any rejected row (see :func:`entries_from_batch`).
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Iterable, Sequence

import numpy as np

OK = 0
EMPTY_FILE = 1
UNREADABLE = 2
NOT_AN_IMAGE = 3
TRUNCATED = 4
TOO_MANY_PIXELS = 5
PATH_ESCAPE = 6
BAD_RECORD = 7
ALIGN_FAILED = 8
MISSING_FILE = 9
BAD_IMAGE_MODE = 10
FIFO = 11
DEVICE = 12
SOCKET = 13
DIRECTORY = 14
TOO_LARGE = 15
OUT_OF_MEMORY = 16
BAD_LABEL = 17
DUPLICATE_RECORD = 18
NOT_IN_LIST = 19
NOT_IN_RECORD = 20
UNEXPECTED = 21

#: reason code -> short human-readable reason.
REASONS: dict[int, str] = {
    OK: "ok",
    EMPTY_FILE: "empty file (0 bytes)",
    UNREADABLE: "file cannot be read (permission or I/O error)",
    NOT_AN_IMAGE: "not a decodable image (unknown format or corrupt data)",
    TRUNCATED: "truncated image data",
    TOO_MANY_PIXELS: "image exceeds the pixel limit (possible decompression bomb)",
    PATH_ESCAPE: "path resolves outside the dataset root (symlink escape)",
    BAD_RECORD: "malformed record (RecordIO magic, length or header; or a corrupt prepared TFDS record)",
    ALIGN_FAILED: "face detection/alignment rejected the image",
    MISSING_FILE: "file listed but no longer present",
    BAD_IMAGE_MODE: "image mode cannot be converted to RGB",
    FIFO: "named pipe (FIFO), not a regular file",
    DEVICE: "character or block device, not a regular file",
    SOCKET: "socket, not a regular file",
    DIRECTORY: "directory, not a regular file",
    TOO_LARGE: "file or record exceeds the size cap (max_file_bytes)",
    OUT_OF_MEMORY: "reading or decoding ran out of memory",
    BAD_LABEL: "label is not a finite integer >= 0 (NaN, inf, fraction, negative or out of range)",
    DUPLICATE_RECORD: "record listed twice (a second .idx key at the same offset, or an index repeated in list.txt)",
    NOT_IN_LIST: "record has no entry in list.txt (identity and name unknown)",
    NOT_IN_RECORD: "list.txt entry has no record in the .idx/.rec",
    UNEXPECTED: "unexpected error while reading or decoding (traceback in the log; please report it)",
}


class RecordError(Exception):
    """Raised while reading or decoding one record; carries a reason code and a detail string.

    Pipelines catch it and turn it into a reject row; direct callers (``source.read_rgb``) see it.
    """

    def __init__(self, code: int, detail: str):
        if code not in REASONS or code == OK:
            raise ValueError(f"invalid reject code {code}")
        super().__init__(f"{REASONS[code]}: {detail}")
        self.code = code
        self.detail = detail

    def __reduce__(self):  # picklable across grain worker processes
        return (RecordError, (self.code, self.detail))


class DataError(ValueError):
    """A dataset-level problem (missing root or index, empty dataset): the whole source is unusable."""


@dataclasses.dataclass(frozen=True)
class RejectEntry:
    """One rejected record: its global id, where it lives (path or file:offset), and why."""

    record_id: int
    where: str
    code: int
    reason: str

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def make_entry(source, record_id: int, code: int) -> RejectEntry:
    """Builds the entry for ``record_id`` of ``source`` rejected with ``code``."""
    return RejectEntry(int(record_id), source.describe(int(record_id)), int(code), REASONS[int(code)])


def entries_from_batch(source, batch: dict) -> list[RejectEntry]:
    """Reject entries for the rejected rows of one pipeline batch (record_id >= 0 and reject_code > 0)."""
    codes = np.asarray(batch["reject_code"])
    ids = np.asarray(batch["record_id"])
    rows = np.nonzero((codes > 0) & (ids >= 0))[0]
    return [make_entry(source, ids[r], codes[r]) for r in rows]


def write_rejects(path: str | os.PathLike, entries: Iterable[RejectEntry], append: bool = False) -> int:
    """Writes entries as JSON lines (one object per line, keys record_id/where/code/reason); returns count."""
    n = 0
    with open(path, "a" if append else "w", encoding="utf-8") as f:
        for e in entries:
            f.write(json.dumps(e.to_dict(), sort_keys=True) + "\n")
            n += 1
    return n


def read_rejects(path: str | os.PathLike) -> list[RejectEntry]:
    """Reads a file written by :func:`write_rejects`."""
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                d = json.loads(line)
                out.append(RejectEntry(int(d["record_id"]), d["where"], int(d["code"]), d["reason"]))
    return out


def summarize(entries: Sequence[RejectEntry]) -> dict[str, int]:
    """Counts per reason text (for logs and reports)."""
    counts: dict[str, int] = {}
    for e in entries:
        counts[e.reason] = counts.get(e.reason, 0) + 1
    return counts
