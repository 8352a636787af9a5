"""Tiny on-disk datasets for the embed tests (PNG identity folders with planted bad files)."""

from __future__ import annotations

import os

import numpy as np
from PIL import Image


def make_png_folder(root: str, rng, num_ids: int = 3, per_id: int = 10, size: int = 16, bad: int = 1) -> None:
    """root/id_k/img_j.png random ``size x size`` RGB images plus ``bad`` undecodable files in id_000."""
    for k in range(num_ids):
        os.makedirs(os.path.join(root, f"id_{k:03d}"), exist_ok=True)
        for j in range(per_id):
            Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(
                os.path.join(root, f"id_{k:03d}", f"img_{j:03d}.png"))
    for b in range(bad):
        with open(os.path.join(root, "id_000", f"broken_{b}.png"), "wb") as f:
            f.write(b"\x89PNG not really")


def reference_embeddings(paths, spec, model, variables, flip: bool) -> np.ndarray:
    """Independent path: PIL decode -> InputSpec.normalize -> model.apply per image -> float64 flip-sum + L2."""
    import jax

    out = []
    for p in paths:
        x = spec.normalize(np.asarray(Image.open(p).convert("RGB")))[None]
        e = np.asarray(model.apply(variables, x), np.float64)[0]
        if flip:
            e = e + np.asarray(model.apply(variables, np.ascontiguousarray(x[:, :, ::-1])), np.float64)[0]
        out.append(e / np.linalg.norm(e))
    jax.block_until_ready(out)
    return np.stack(out)
