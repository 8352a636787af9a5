"""Reject classification of cut-off files, wherever the cut lands (synleak_jax/data/decode.py)."""

import io

import numpy as np
import pytest
from PIL import Image

from synleak_jax.data import decode, rejects


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_cut_files_are_truncated_wherever_the_cut_lands(rng, fmt):
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(buf, fmt)
    good = buf.getvalue()
    assert decode.decode_rgb(good, "good").shape == (16, 16, 3)
    for cut in range(8, len(good) - 1):  # every offset past the signature
        try:
            decode.decode_rgb(good[:cut], f"cut{cut}")
        except rejects.RecordError as e:
            assert e.code == rejects.TRUNCATED, (cut, e)
        else:
            # Only a PNG cut inside its trailer still holds every pixel; anything else must be rejected.
            assert fmt == "PNG" and cut >= len(good) - 24, cut  # zlib adler + IDAT CRC + IEND
