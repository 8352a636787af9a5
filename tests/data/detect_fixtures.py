"""Shared pieces of the detection tests: the detector over the cached released weights, test images.

Import the fixture into a test module (``from tests.data.detect_fixtures import detector``); it is
session-scoped so the detection test modules share one set of compiled networks.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from synleak_jax.data import detect
from synleak_jax.weights import mtcnn_weights


@pytest.fixture(scope="session")
def detector() -> detect.MTCNNDetector:
    try:
        return detect.MTCNNDetector(mtcnn_weights.load_mtcnn_variables())
    except FileNotFoundError as e:
        pytest.fail(f"{e}\n(the detection tests need the converted weights: run `synleak-fetch-mtcnn` first)")


def lfw_canvas(ids, size=112, shape=(400, 600), gap=(60, 80), background=90) -> np.ndarray:
    """LFW-subset faces (25x25 grayscale, from scikit-image) upscaled to ``size`` with PIL bicubic and
    pasted on a flat canvas, 3 per row. Returns uint8 ``[*shape, 3]``."""
    import skimage.data

    lfw = skimage.data.lfw_subset()
    canvas = np.full(shape + (3,), background, np.uint8)
    for k, i in enumerate(ids):
        face = np.asarray(Image.fromarray((lfw[i] * 255).astype(np.uint8)).resize((size, size), Image.BICUBIC))
        y, x = 30 + (k // 3) * (size + gap[0]), 20 + (k % 3) * (size + gap[1])
        canvas[y:y + size, x:x + size] = face[..., None]
    return canvas


def upscale(img: np.ndarray, size: int = 1024) -> np.ndarray:
    """``img`` resized to ``size x size`` with PIL bicubic (the 1024x1024 benchmark inputs are made so)."""
    return np.asarray(Image.fromarray(img).resize((size, size), Image.BICUBIC))
