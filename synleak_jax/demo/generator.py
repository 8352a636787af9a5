"""A small, deliberately over-fitting face generator for the built-in demo (JAX + Flax + optax, CPU, seconds).

Data: ``skimage.data.lfw_subset()`` ships 200 grayscale 25x25 crops; the first 100 are LFW faces (the rest are
non-faces). A fixed seeded permutation splits those 100 faces into 50 *members* (the generator's training set)
and 50 held-out *non-members*. Everything runs at the generator's working resolution, 32x32 (bilinear resize).

Generator: a convolutional autoencoder (encoder 32x32x1 -> 16-D latent -> decoder) trained to reconstruct the
50 members, then sampled by drawing latents around the training latents (a Gaussian kernel density in latent
space with bandwidth ``bandwidth`` x the per-dimension latent spread). That is the failure mode the audit looks
for: a generator whose samples stay close to its training images. With a small bandwidth the samples are
near-copies (strong leakage); with a large one they drift towards blends of faces.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from PIL import Image

from synleak_jax.progress import Progress
from synleak_jax.files import atomic_write

SIZE = 32  # generator working resolution (pixels)


def lfw_faces() -> np.ndarray:
    """The 100 LFW face crops of ``skimage.data.lfw_subset()``: float32 ``[100, 25, 25]`` in [0, 1]."""
    import skimage.data

    x = np.asarray(skimage.data.lfw_subset(), np.float32)
    if x.shape != (200, 25, 25):
        raise RuntimeError(f"skimage.data.lfw_subset() returned shape {x.shape}, expected (200, 25, 25)")
    return x[:100]


def resize(images: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize of grayscale images ``[N, h, w]`` in [0, 1] -> ``[N, size, size]``."""
    out = [np.asarray(Image.fromarray(im.astype(np.float32), mode="F").resize((size, size), Image.BILINEAR))
           for im in images]
    return np.clip(np.stack(out), 0.0, 1.0).astype(np.float32)


def split_members(n: int, n_members: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Fixed seeded split of ``range(n)`` into (members, non-members), each sorted."""
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[:n_members]), np.sort(perm[n_members:])


class Encoder(nn.Module):
    """``[N, 32, 32, 1]`` -> latent ``[N, latent_dim]``."""

    latent_dim: int = 16
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        for f in (16, 32, 64):  # 32 -> 16 -> 8 -> 4
            x = nn.Conv(f, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)), dtype=self.dtype,
                        param_dtype=self.param_dtype)(x)
            x = nn.gelu(x)
        x = x.reshape(x.shape[0], -1)
        return nn.Dense(self.latent_dim, dtype=self.dtype, param_dtype=self.param_dtype)(x)


class Decoder(nn.Module):
    """latent ``[N, latent_dim]`` -> image ``[N, 32, 32, 1]`` in [0, 1]."""

    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, z):
        x = nn.Dense(4 * 4 * 64, dtype=self.dtype, param_dtype=self.param_dtype)(z)
        x = nn.gelu(x).reshape(z.shape[0], 4, 4, 64)
        for f in (32, 16, 8):  # 4 -> 8 -> 16 -> 32
            x = nn.ConvTranspose(f, (4, 4), strides=(2, 2), padding="SAME", dtype=self.dtype,
                                 param_dtype=self.param_dtype)(x)
            x = nn.gelu(x)
        x = nn.Conv(1, (3, 3), padding=((1, 1), (1, 1)), dtype=self.dtype, param_dtype=self.param_dtype)(x)
        return nn.sigmoid(x)


class AutoEncoder(nn.Module):
    latent_dim: int = 16

    def setup(self):
        self.encoder = Encoder(self.latent_dim)
        self.decoder = Decoder()

    def __call__(self, x):
        return self.decoder(self.encoder(x))

    def encode(self, x):
        return self.encoder(x)

    def decode(self, z):
        return self.decoder(z)


@dataclasses.dataclass
class TrainedGenerator:
    params: dict
    latents: np.ndarray  # [n_train, latent_dim] latents of the training images
    final_loss: float
    steps: int
    seconds: float
    latent_dim: int


def train(images: np.ndarray, *, steps: int = 400, lr: float = 3e-3, latent_dim: int = 16,
          seed: int = 0, progress_every_s: float = 5.0) -> TrainedGenerator:
    """Trains the autoencoder on ``images`` float32 ``[N, 32, 32]`` (full batch, Adam, MSE); deterministic. Logs
    a start line, steps/s and ETA at most every ``progress_every_s`` seconds, and the loss at each fifth."""
    x = jnp.asarray(images[..., None], jnp.float32)
    model = AutoEncoder(latent_dim)
    params = model.init(jax.random.PRNGKey(seed), x[:1])["params"]
    tx = optax.adam(optax.cosine_decay_schedule(lr, steps, alpha=0.05))
    opt = tx.init(params)

    def loss_fn(p):
        return jnp.mean((model.apply({"params": p}, x) - x) ** 2)

    @jax.jit
    def step(p, o):
        loss, g = jax.value_and_grad(loss_fn)(p)
        upd, o = tx.update(g, o, p)
        return optax.apply_updates(p, upd), o, loss

    t0 = time.time()
    loss = jnp.inf
    logging.info("demo generator: training %d steps on %d images (the first step compiles)", steps, len(images))
    progress = Progress(steps, progress_every_s, "demo generator", unit="steps", scope="")
    for i in range(steps):
        params, opt, loss = step(params, opt)
        jax.block_until_ready(loss)  # the progress rate counts finished steps, not dispatched ones
        progress.update(1)
        if (i + 1) % max(1, steps // 5) == 0:
            logging.info("demo generator: step %d/%d, reconstruction MSE %.5f (%.1f s)", i + 1, steps, float(loss),
                         time.time() - t0)
    lat = np.asarray(model.apply({"params": params}, x, method=AutoEncoder.encode))
    return TrainedGenerator(params, lat, float(loss), steps, time.time() - t0, latent_dim)


def sample(gen: TrainedGenerator, n: int, *, bandwidth: float = 0.5, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Draws ``n`` images: latent = a random training latent + bandwidth * spread * N(0, I).

    Returns (images float32 ``[n, 32, 32]`` in [0, 1], the training index each latent was drawn around
    ``[n]`` — ground truth kept for the report's notes, never used by the audit)."""
    rng = np.random.default_rng(seed)
    src = rng.integers(0, gen.latents.shape[0], n)
    spread = gen.latents.std(0, keepdims=True)
    z = gen.latents[src] + bandwidth * spread * rng.standard_normal((n, gen.latent_dim)).astype(np.float32)
    model = AutoEncoder(gen.latent_dim)
    img = model.apply({"params": gen.params}, jnp.asarray(z, jnp.float32), method=AutoEncoder.decode)
    return np.asarray(img)[..., 0], src


def save_png_folder(root: str, images: np.ndarray, prefix: str) -> list[str]:
    """Writes grayscale images ``[N, H, W]`` in [0, 1] as ``root/<prefix>_<i:04d>.png`` (atomic per file)."""
    os.makedirs(root, exist_ok=True)
    names = []
    for i, im in enumerate(images):
        name = f"{prefix}_{i:04d}.png"
        buf = io.BytesIO()
        Image.fromarray(np.round(np.clip(im, 0, 1) * 255).astype(np.uint8), mode="L").save(buf, format="PNG")
        atomic_write(os.path.join(root, name), buf.getvalue())
        names.append(name)
    return names


def make_demo_data(root: str, *, n_members: int = 50, n_synthetic: int = 200, steps: int = 1000,
                   bandwidth: float = 0.25, seed: int = 0) -> dict:
    """Builds the demo's three image folders under ``root`` (members/, nonmembers/, synthetic/) and returns a
    description (written to ``root/demo_info.json``; a finished root is reused as is)."""
    info_path = os.path.join(root, "demo_info.json")
    want = {"n_members": n_members, "n_synthetic": n_synthetic, "steps": steps, "bandwidth": bandwidth,
            "seed": seed, "size": SIZE}
    if os.path.exists(info_path):
        with open(info_path) as f:
            info = json.load(f)
        if info.get("params") == want:
            logging.info("demo data: reusing %s", root)
            return info
    t0 = time.time()
    logging.info("demo data: making %s (a generator trained on %d LFW crops, %d samples)", root, n_members,
                 n_synthetic)
    faces = resize(lfw_faces(), SIZE)
    mem, non = split_members(faces.shape[0], n_members, seed)
    gen = train(faces[mem], steps=steps, seed=seed)
    syn, src = sample(gen, n_synthetic, bandwidth=bandwidth, seed=seed + 1)
    save_png_folder(os.path.join(root, "members"), faces[mem], "lfw")
    save_png_folder(os.path.join(root, "nonmembers"), faces[non], "lfw")
    save_png_folder(os.path.join(root, "synthetic"), syn, "syn")
    info = {"params": want, "member_lfw_indices": mem.tolist(), "nonmember_lfw_indices": non.tolist(),
            "generator": {"kind": "conv autoencoder + latent kernel-density sampling", "latent_dim": gen.latent_dim,
                          "final_train_mse": gen.final_loss, "train_seconds": round(gen.seconds, 2)},
            "synthetic_source_member": src.tolist()}
    atomic_write(info_path, json.dumps(info))
    logging.info("demo data: written %s (%.1f s)", root, time.time() - t0)
    return info
