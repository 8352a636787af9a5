"""The remedy: the synthetic set minus its leaked images, as a list (and optionally exported files).

``filtered_synthetic.jsonl`` lists the kept images, one JSON string per line: the exact path
(``EmbeddingSet.exact_name``) where the data has files, else the record's description. JSON lines cannot be split
by a name (a newline in a name is ``\\n`` inside the string) and ``json.dumps`` escapes undecodable bytes
(``surrogateescape`` surrogates), so ``os.fsencode(json.loads(line))`` gives back the name's bytes on disk.
``--config.remedy.export`` also writes the kept images as an image folder (copy or hardlink, relative paths kept)
or as a RecordIO file. Which images are kept is decided by the audit (attack.leakage.filtered_synthetic); this
module only writes.

The export reads the dataset again, after the listing, so a file may have vanished or been swapped meanwhile
(for a symlink, a FIFO, a directory). ``copy`` reads through the source's own reads (regular files only,
``O_NOFOLLOW``, the size cap: data/safe_paths.py); ``hardlink`` links only what ``os.lstat`` shows is a regular
file and checks afterwards that the link is that very inode (a swap between the check and the link is undone);
a symlink is never linked, it is copied by the source's rules instead (followed only where the listing allowed
it, inside the dataset root). An entry that cannot be exported is skipped and counted in the remedy entry
(``skipped``, ``skip_reasons``, ``skipped_examples``) — never the end of the report.
"""

from __future__ import annotations

import collections
import errno
import json
import os
import stat

import numpy as np

from synleak_jax.data import rejects, safe_paths
from synleak_jax.files import atomic_write

LIST_FILE = "filtered_synthetic.jsonl"
EXPORT_DIR = "filtered_synthetic"
#: Skipped entries listed by name in the report (all are counted by reason).
MAX_SKIPPED_EXAMPLES = 50


class RemedyError(ValueError):
    """The export cannot be done for this dataset (the message names the --config field)."""


class _Skip(Exception):
    """One entry cannot be exported: ``reason`` (a REASONS text or a short phrase) and ``detail``."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


def list_name(synthetic, row: int) -> str:
    """What the filtered list holds for ``row``: the exact path (or given name), else the display string."""
    name = synthetic.exact_name(row)
    return name if name is not None else synthetic.describe(row)


def write_filtered_set(out_dir: str, synthetic, keep_rows: np.ndarray, *, export: str, dataset, matcher: str,
                       fmr: float) -> dict:
    """Writes the list (and the export) of the kept synthetic rows; returns the report's remedy entry.

    synthetic: the synthetic EmbeddingSet (exact_name(row), describe(row), record_ids); dataset: its door.Dataset
    (kind, path, source).
    """
    keep_rows = np.asarray(keep_rows, np.int64)
    names = [list_name(synthetic, int(r)) for r in keep_rows]
    # ensure_ascii (the default) writes surrogates as \udcXX escapes: the file is ASCII and round-trips
    atomic_write(os.path.join(out_dir, LIST_FILE), "".join(json.dumps(n) + "\n" for n in names))
    out = {"matcher": matcher, "fmr": fmr, "kept": int(keep_rows.size), "removed": int(len(synthetic) - keep_rows.size),
           "list_file": LIST_FILE, "list_format": "JSON lines: one JSON string per kept image (exact path; "
                                                  "os.fsencode(json.loads(line)) gives the bytes of the name)",
           "note": "rejected synthetic images (undecodable) are neither kept nor removed"}
    if export not in ("copy", "hardlink", "recordio"):
        return out
    src = dataset.source
    records = synthetic.record_ids[keep_rows].tolist()
    skipped: list[tuple[str, str, str]] = []  # (display name, reason, detail)
    if export in ("copy", "hardlink"):
        if src is None or dataset.kind not in ("image_folder", "flat_folder") or not hasattr(src, "relpath"):
            raise RemedyError(f"--config.remedy.export={export}: works for image folders only (the synthetic data "
                              f"is kind={dataset.kind}); use export=recordio or leave it empty")
        dest = os.path.join(out_dir, EXPORT_DIR)
        exported = 0
        for rec in records:
            try:
                _export_file(src, int(rec), dest, export)
                exported += 1
            except _Skip as e:
                skipped.append((src.describe(int(rec)), e.reason, e.detail))
        out["export"] = EXPORT_DIR + "/"
    else:
        from synleak_jax.data import recordio

        items = []
        for rec in records:
            try:
                data, label = src.read_record(int(rec))
                items.append((data, max(int(label), 0)))
            except rejects.RecordError as e:
                skipped.append((src.describe(int(rec)), rejects.REASONS[e.code], e.detail))
        prefix = os.path.join(out_dir, EXPORT_DIR, "train")
        os.makedirs(os.path.dirname(prefix), exist_ok=True)
        info = recordio.write_recordio(prefix, items, layout="keys")
        exported = int(info.get("num_images", len(items)))
        out["export"] = EXPORT_DIR + "/train.rec"
    out["exported"] = exported
    out["skipped"] = len(skipped)
    out["skip_reasons"] = dict(collections.Counter(reason for _, reason, _ in skipped))
    out["skipped_examples"] = [{"name": name, "reason": reason, "detail": _printable(detail)}
                               for name, reason, detail in skipped[:MAX_SKIPPED_EXAMPLES]]
    return out


def _printable(text: str) -> str:
    """``text`` if it can be written as UTF-8, else its display form (a message holding a raw OS name)."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return safe_paths.display_path(text)


def _export_file(src, rec: int, dest_root: str, mode: str) -> None:
    """Copies or hardlinks record ``rec`` of folder source ``src`` to ``dest_root/<relpath>``; :class:`_Skip` when
    the entry cannot be exported (vanished, swapped for a symlink/FIFO/device/directory, unreadable)."""
    target = os.path.join(dest_root, src.relpath(rec))
    os.makedirs(os.path.dirname(target), exist_ok=True)
    if os.path.lexists(target):
        os.remove(target)  # removes a link itself, never what it points to
    if mode == "hardlink":
        path = src.path(rec)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            raise _Skip(rejects.REASONS[rejects.MISSING_FILE], "vanished after listing") from None
        except OSError as e:
            raise _Skip(rejects.REASONS[rejects.UNREADABLE], e.strerror or str(e)) from None
        if stat.S_ISREG(st.st_mode):
            if _link_same_inode(path, target, st):
                return
            # cross-device output, a filesystem without hard links, or the entry changed between lstat and
            # link: copy it by the source's rules instead
        elif not stat.S_ISLNK(st.st_mode):  # FIFO, device, socket, directory: never linked, never read
            raise _Skip(rejects.REASONS[safe_paths.non_regular_code(st.st_mode)], "not a regular file")
    try:
        data = src.read_bytes(rec)  # regular files only, O_NOFOLLOW, listing-checked links, size cap
    except rejects.RecordError as e:
        raise _Skip(rejects.REASONS[e.code], e.detail) from None
    atomic_write(target, data)


def _link_same_inode(path: str, target: str, checked: os.stat_result) -> bool:
    """Hardlinks ``path`` (never following a symlink) to ``target``; True only if ``target`` is now the very
    regular file ``checked`` described. A link to anything else (swapped in after the check) is removed."""
    try:
        os.link(path, target, follow_symlinks=False)
    except OSError as e:
        if e.errno in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.ENOENT):
            return False
        raise
    st = os.lstat(target)
    if stat.S_ISREG(st.st_mode) and (st.st_dev, st.st_ino) == (checked.st_dev, checked.st_ino):
        return True
    os.remove(target)
    return False
