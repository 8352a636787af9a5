"""Writes an audit's outputs: report.json (validated against ``schema.json``), pairs.csv, thumbnails, index.html.

Every file is written atomically (temporary name, then ``os.replace``), so an interrupted run never leaves a
half-written report that a resumed run would mistake for a finished one.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from importlib import resources
from typing import Callable, Iterable

import numpy as np
from PIL import Image

from synleak_jax.report import html as H

SCHEMA_VERSION = "1.0"
THUMB_DIR = "thumbs"
PAIRS_COLUMNS = ["matcher", "threshold", "tau_native", "rank", "syn_idx", "syn_id", "syn_label", "real_idx", "real_id",
                 "real_label", "score_native"]


def load_schema() -> dict:
    return json.loads(resources.files("synleak_jax.report").joinpath("schema.json").read_text())


def validate(report: dict) -> None:
    """Raises ``jsonschema.ValidationError`` if the report does not follow the schema ."""
    import jsonschema
    jsonschema.validate(report, load_schema())


def to_jsonable(x):
    """numpy scalars/arrays -> Python; non-finite floats -> None (JSON has no NaN)."""
    if isinstance(x, dict):
        return {str(k): to_jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [to_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return to_jsonable(x.tolist())
    if isinstance(x, (np.bool_,)):
        return bool(x)
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, (float, np.floating)):
        x = float(x)
        return x if math.isfinite(x) else None
    return x


def atomic_write(path: str, data: bytes | str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)
    os.replace(tmp, path)


def thumbnail_png(rgb: np.ndarray, size: int = 100) -> bytes:
    img = Image.fromarray(np.asarray(rgb, np.uint8)).convert("RGB")
    img = img.resize((size, size), Image.BILINEAR)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def write_pairs_csv(path: str, rows: Iterable[dict]) -> int:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=PAIRS_COLUMNS, extrasaction="ignore")
    w.writeheader()
    n = 0
    for r in rows:
        w.writerow({k: r.get(k) for k in PAIRS_COLUMNS})
        n += 1
    atomic_write(path, buf.getvalue())
    return n


def write_gallery(out_dir: str, items: list[dict], read_syn: Callable[[int], np.ndarray],
                  read_real: Callable[[int], np.ndarray], size: int = 100) -> list[dict]:
    """Writes thumbnails ``thumbs/<matcher>_<rank>_{syn,real}.png`` and fills the items' thumb paths."""
    out = []
    for it in items:
        stem = f"{_safe(it['matcher'])}_{int(it['rank']):04d}"
        syn_rel = f"{THUMB_DIR}/{stem}_syn.png"
        real_rel = f"{THUMB_DIR}/{stem}_real.png"
        atomic_write(os.path.join(out_dir, syn_rel), thumbnail_png(read_syn(int(it["syn_idx"])), size))
        atomic_write(os.path.join(out_dir, real_rel), thumbnail_png(read_real(int(it["real_idx"])), size))
        out.append({**it, "syn_thumb": syn_rel, "real_thumb": real_rel})
    return out


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def write_report(out_dir: str, report: dict, *, check_schema: bool = True) -> dict:
    """Writes report.json and index.html (pairs.csv, plots and thumbnails are written before, by the caller).
    Returns the JSON-ready report."""
    rep = to_jsonable(report)
    rep["schema_version"] = SCHEMA_VERSION
    if check_schema:
        validate(rep)  # a report that breaks its own schema is a bug: fail before writing it
    atomic_write(os.path.join(out_dir, "report.json"), json.dumps(rep, indent=1, sort_keys=False))
    atomic_write(os.path.join(out_dir, "index.html"), H.render(rep))
    return rep
