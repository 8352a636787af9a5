"""Labelled colour face folders the tests can make: skimage's LFW crops coloured with a skin-tone curve (the only
faces of several people that ship in a package are grayscale), each crop an identity with augmented views."""

import os

import numpy as np
from PIL import Image


def colourise(gray: np.ndarray) -> np.ndarray:
    """[H, W] in [0, 1] -> uint8 RGB with a warm skin tone (red > green > blue)."""
    g = np.clip(gray, 0, 1)
    rgb = np.stack([np.clip(1.15 * g ** 0.8, 0, 1), 0.72 * g, 0.5 * g ** 1.2], -1)
    return np.round(rgb * 255).astype(np.uint8)


def views(rgb: np.ndarray, n: int, rng, size: int = 150) -> list[np.ndarray]:
    """n augmented views of one face: rotation, crop, brightness, noise, mirror."""
    out = []
    for j in range(n):
        im = Image.fromarray(rgb).rotate(rng.uniform(-12, 12), resample=Image.BILINEAR)
        w, h = im.size
        s = rng.uniform(0.85, 1.0)
        cw, ch = int(w * s), int(h * s)
        x0, y0 = rng.integers(0, w - cw + 1), rng.integers(0, h - ch + 1)
        a = np.asarray(im.crop((x0, y0, x0 + cw, y0 + ch)).resize((size, size), Image.BILINEAR), np.float32)
        a = np.clip(a * rng.uniform(0.8, 1.2) + rng.normal(0, 4, a.shape), 0, 255)
        if j % 2:
            a = a[:, ::-1]
        out.append(a.astype(np.uint8))
    return out


def write_identity_folders(root: str, identities: int, per_identity: int, seed: int = 0, swap: bool = False) -> str:
    """``root/<id>/<j>.png`` (PNG: lossless, so the swapped copy is exactly the correct one reversed)."""
    import skimage.data

    rng = np.random.default_rng(seed)
    faces = np.asarray(skimage.data.lfw_subset())[:identities]
    for i, face in enumerate(faces):
        os.makedirs(os.path.join(root, f"{i:03d}"), exist_ok=True)
        for j, v in enumerate(views(colourise(face), per_identity, rng)):
            Image.fromarray(v[..., ::-1] if swap else v).save(os.path.join(root, f"{i:03d}", f"{j}.png"))
    return root
