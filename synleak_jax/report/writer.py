"""Writes an audit's outputs: report.json (validated against ``schema.json``), pairs.csv, thumbnails, index.html.

Every file is written atomically (temporary name, then ``os.replace``), so an interrupted run never leaves a
half-written report that a resumed run would mistake for a finished one.
"""

from __future__ import annotations

import io
import json
import os
from importlib import resources
from typing import Callable, Iterable

import numpy as np
from absl import logging
from PIL import Image

from synleak_jax.data import rejects, safe_paths
from synleak_jax.files import atomic_write, atomic_write_stream, safe_name, to_jsonable
from synleak_jax.report import html

SCHEMA_VERSION = "2.0"
THUMB_DIR = "thumbs"
#: pairs.csv's columns (first row of the file); what each means: docs/report.md. ``role``: the real set of the pair
#: (members, or the non-member control); ``unit``: cosine (similarity) or distance (smaller = more similar).
PAIRS_COLUMNS = ["matcher", "unit", "role", "threshold", "target_fmr", "tau_native", "rank", "syn_idx", "syn_id",
                 "syn_label", "real_idx", "real_id", "real_label", "score_native"]


def load_schema() -> dict:
    return json.loads(resources.files("synleak_jax.report").joinpath("schema.json").read_text())


def validate(report: dict) -> None:
    """Raises ``jsonschema.ValidationError`` if the report does not follow the schema ."""
    import jsonschema
    jsonschema.validate(report, load_schema())


def thumbnail_png(rgb: np.ndarray, size: int = 100) -> bytes:
    img = Image.fromarray(np.asarray(rgb, np.uint8)).convert("RGB")
    img = img.resize((size, size), Image.BILINEAR)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def utf8_text(value):
    """``value`` unchanged unless it is a str that cannot be encoded as UTF-8 (a raw OS name holding undecodable
    bytes as surrogates): then its display form (``safe_paths.display_path``: ``\\xNN`` for such a byte)."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return safe_paths.display_path(value)
    return value


def _csv_field(value) -> str:
    """One CSV field as ``csv.writer`` (excel dialect, minimal quoting) writes it: None -> empty, numbers by
    ``repr``, a text quoted (quotes doubled) when it holds a comma, a quote or a line break."""
    if value is None:
        return ""
    if isinstance(value, (float, np.floating)):
        return repr(float(value))
    if not isinstance(value, str):
        return str(value)
    value = utf8_text(value)
    if "," in value or '"' in value or "\n" in value or "\r" in value:
        return '"' + value.replace('"', '""') + '"'
    return value


def write_pairs_csv(path: str, blocks: Iterable[dict]) -> int:
    """pairs.csv (UTF-8, CSV as ``csv.writer`` writes it), block by block as the blocks come (memory: one block,
    whatever the number of pairs); returns the number of rows. A block maps every column of PAIRS_COLUMNS to a
    sequence (one value per row) or to one value for all its rows; names are display strings (``describe``: one
    line, escaped), and a name that is still not UTF-8-encodable is written in its display form, never a crash at
    the end of an audit. Per-row floats (scores: float32 values) get 9 significant digits, which represent every
    float32 exactly; one-per-block values ``repr``.

    Speed (scripts/bench_pairs_csv.py): fields formatted column by column, a name once per distinct name, rows
    joined as text: ``csv.writer.writerows`` spent 3.3 us a row on the same 14 columns (15M rows in an audit)."""
    n = 0
    names: dict[str, str] = {}

    def name_field(v) -> str:
        f = names.get(v)
        if f is None:
            f = names[v] = _csv_field(v)
        return f

    def column(v, rows: int) -> list[str]:
        if not isinstance(v, (list, tuple, np.ndarray)):
            return [_csv_field(v)] * rows
        if isinstance(v, np.ndarray) and v.dtype.kind == "f":
            return [format(x, ".9g") for x in v.tolist()]
        if isinstance(v, np.ndarray) and v.dtype.kind in "iub":
            return list(map(str, v.tolist()))
        try:
            joined = "".join(v)  # one C scan for the whole block: most names need no quoting and are ASCII
        except TypeError:  # not all text
            joined = None
        if joined is not None and joined.isascii() and not any(c in joined for c in ',"\r\n'):
            return list(v)
        return [name_field(x) if isinstance(x, str) else _csv_field(x) for x in v]

    def produce(f) -> None:
        nonlocal n
        text = io.TextIOWrapper(io.BufferedWriter(f, 1 << 20), encoding="utf-8", newline="")
        text.write(",".join(PAIRS_COLUMNS) + "\r\n")
        for block in blocks:
            rows = max((len(v) for v in block.values() if isinstance(v, (list, tuple, np.ndarray))), default=0)
            if rows:
                cols = [column(block.get(k), rows) for k in PAIRS_COLUMNS]
                text.write("\r\n".join(map(",".join, zip(*cols))) + "\r\n")
            n += rows
        text.flush()
        text.detach().flush()

    atomic_write_stream(path, produce)
    return n


def placeholder_png(size: int = 100) -> bytes:
    """A grey thumbnail crossed in dark grey: shown where an image could not be read."""
    img = np.full((size, size, 3), 200, np.uint8)
    diag = np.arange(size)
    for offset in (-1, 0, 1):
        keep = (diag + offset >= 0) & (diag + offset < size)
        img[diag[keep], diag[keep] + offset] = 90
        img[diag[keep], size - 1 - diag[keep] - offset] = 90
    return thumbnail_png(img, size)


def _thumbnail_or_reason(read: Callable[[int], np.ndarray], idx: int, size: int) -> tuple[bytes, str | None]:
    """(PNG bytes, None) of row ``idx``'s image, or (placeholder, why) when it cannot be read or decoded now
    (deleted, swapped for a symlink/FIFO, corrupted since the embedding)."""
    try:
        return thumbnail_png(read(idx), size), None
    except rejects.RecordError as e:
        return placeholder_png(size), utf8_text(str(e))
    except Exception as e:  # a thumbnail is never worth the report
        logging.exception("gallery: thumbnail of row %d failed unexpectedly", idx)
        return placeholder_png(size), utf8_text(f"unexpected error {type(e).__name__}: {e}")


def write_gallery(out_dir: str, items: list[dict], read_syn: Callable[[int], np.ndarray],
                  read_real: Callable[[int], np.ndarray], size: int = 100) -> list[dict]:
    """Writes thumbnails ``thumbs/<matcher>_<role>_<rank>_{syn,real}.png`` and fills the items' thumb paths.

    The images are read again after the listing: one that cannot be read now gets a placeholder thumbnail and the
    item says why (``syn_thumb_error`` / ``real_thumb_error``); the gallery and the report are always written.
    """
    out = []
    for it in items:
        stem = f"{safe_name(it['matcher'])}_{safe_name(it.get('role', 'members'))}_{int(it['rank']):04d}"
        item = dict(it)
        for side, read, idx in (("syn", read_syn, int(it["syn_idx"])), ("real", read_real, int(it["real_idx"]))):
            rel = f"{THUMB_DIR}/{stem}_{side}.png"
            png, why = _thumbnail_or_reason(read, idx, size)
            atomic_write(os.path.join(out_dir, rel), png)
            item[f"{side}_thumb"] = rel
            if why is not None:
                item[f"{side}_thumb_error"] = why
        out.append(item)
    return out


def write_report(out_dir: str, report: dict, *, check_schema: bool = True) -> dict:
    """Writes report.json and index.html (pairs.csv, plots and thumbnails are written before, by the caller).
    Returns the JSON-ready report."""
    rep = to_jsonable(report)
    rep["schema_version"] = SCHEMA_VERSION
    if check_schema:
        validate(rep)  # a report that breaks its own schema is a bug: fail before writing it
    atomic_write(os.path.join(out_dir, "report.json"), json.dumps(rep, indent=1, sort_keys=False))
    atomic_write(os.path.join(out_dir, "index.html"), html.render(rep))
    return rep
