"""Fixture builders for the data tests: tiny image folders with planted bad files (generated per test)."""

from __future__ import annotations

import io
import os

import numpy as np
from PIL import Image


def encode(rgb: np.ndarray, fmt: str = "JPEG", mode: str | None = None, **kw) -> bytes:
    img = Image.fromarray(rgb) if mode is None else Image.fromarray(rgb, mode)
    b = io.BytesIO()
    img.save(b, fmt, **kw)
    return b.getvalue()


def random_rgb(rng, h=12, w=10) -> np.ndarray:
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def write(path: str, data: bytes) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    return path


def make_identity_folder(root: str, rng, num_ids: int = 3, per_id: int = 4, exts=(".jpg", ".PNG", ".jpeg", ".bmp"),
                         h: int = 12, w: int = 10) -> dict:
    """root/id_k/img_j.ext with random pixels; returns {relpath: (label, encoded bytes)}."""
    fmts = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".bmp": "BMP", ".webp": "WEBP", ".tif": "TIFF"}
    out = {}
    for k in range(num_ids):
        for j in range(per_id):
            ext = exts[(k + j) % len(exts)]
            data = encode(random_rgb(rng, h, w), fmts[ext.lower()])
            rel = os.path.join(f"id_{k:03d}", f"img_{j:02d}{ext}")
            write(os.path.join(root, rel), data)
            out[rel] = (k, data)
    return out
