"""Image decoding for the pipeline: bytes -> RGB uint8 [H, W, 3], with every failure a :class:`RecordError`.

Choices (documented in docs/data.md):
* Any mode PIL can open is converted to RGB rather than rejected: L/LA/P/RGBA/CMYK/YCbCr via PIL (alpha is
  dropped, not composited), 16-bit grayscale (``I;16*``/``I``) scaled by 1/257, float ``F`` clipped to [0, 255].
* A pixel limit (width x height, default :data:`DEFAULT_MAX_PIXELS`) is checked from the header, before any
  pixel is decoded; PIL's own DecompressionBombError/Warning are caught and reported the same way. The global
  ``PIL.Image.MAX_IMAGE_PIXELS`` is not touched (modules here have no import-time side effects).
* Resizing uses PIL's BILINEAR filter, which in Pillow is antialiased when downscaling (its support widens with
  the scale factor), so large FFHQ-style images are not aliased; JPEGs first use libjpeg's DCT-domain
  downscaling (``Image.draft``) to the smallest scale still >= the target, which is both faster and a
  box-like prefilter.
* EXIF orientation is not applied: pixels are used as stored (face datasets are stored upright).
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image

from synleak_jax.data import rejects

#: Default limit on width*height (64 Mpixel: 8k x 8k), far above any face dataset image.
DEFAULT_MAX_PIXELS = 64 * 1024 * 1024


def _pil_to_rgb_array(img: Image.Image, where: str) -> np.ndarray:
    """Converts an opened PIL image of any common mode into uint8 RGB ``[H, W, 3]``."""
    mode = img.mode
    if mode == "RGB":
        return np.asarray(img)
    if mode.startswith("I;16") or mode == "I":
        a = np.asarray(img).astype(np.float32)
        if mode.startswith("I;16") or a.max(initial=0) > 255:
            a = a / 257.0  # 16-bit range [0, 65535] -> [0, 255]
        g = np.clip(np.rint(a), 0, 255).astype(np.uint8)
        return np.repeat(g[..., None], 3, axis=-1)
    if mode == "F":
        g = np.clip(np.rint(np.asarray(img, dtype=np.float32)), 0, 255).astype(np.uint8)
        return np.repeat(g[..., None], 3, axis=-1)
    if mode == "L":
        g = np.asarray(img)
        return np.repeat(g[..., None], 3, axis=-1)
    try:
        return np.asarray(img.convert("RGB"))
    except (ValueError, OSError) as e:
        raise rejects.RecordError(rejects.BAD_IMAGE_MODE, f"{where}: mode {mode}: {e}") from None


def resize_rgb(rgb: np.ndarray, height: int, width: int) -> np.ndarray:
    """PIL bilinear (antialiased on downscale) resize of uint8 RGB ``[h, w, 3]`` -> ``[height, width, 3]``."""
    if rgb.shape[0] == height and rgb.shape[1] == width:
        return rgb
    img = Image.fromarray(np.ascontiguousarray(rgb), "RGB")
    return np.asarray(img.resize((width, height), Image.BILINEAR))


def decode_rgb(
    data: bytes,
    where: str,
    size: tuple[int, int] | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> np.ndarray:
    """Decodes encoded image bytes to uint8 RGB.

    Args:
      data: the encoded file (JPEG, PNG, BMP, WebP, TIFF, ...).
      where: path or file:offset, used in error details.
      size: optional (height, width): if given the result is resized to it (JPEGs are DCT-downscaled first).
      max_pixels: reject images whose header says width*height exceeds this.

    Returns:
      uint8 ``[H, W, 3]`` (``[height, width, 3]`` when ``size`` is given).

    Raises:
      RecordError: EMPTY_FILE, NOT_AN_IMAGE, TRUNCATED, TOO_MANY_PIXELS or BAD_IMAGE_MODE.
    """
    if not data:
        raise rejects.RecordError(rejects.EMPTY_FILE, where)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            w, h = img.size
            if w * h > max_pixels:
                raise rejects.RecordError(
                    rejects.TOO_MANY_PIXELS, f"{where}: {w}x{h} > {max_pixels} pixels"
                )
            if size is not None and img.format == "JPEG":
                # DCT-domain downscale to the smallest 1/2^k scale still >= target; also sets RGB mode.
                img.draft("RGB", (size[1], size[0]))
            img.load()
            rgb = _pil_to_rgb_array(img, where)
    except rejects.RecordError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise rejects.RecordError(rejects.TOO_MANY_PIXELS, f"{where}: {e}") from None
    except Image.UnidentifiedImageError:
        code = rejects.TRUNCATED if _missing_end_marker(data) else rejects.NOT_AN_IMAGE
        raise rejects.RecordError(code, where) from None
    except Exception as e:  # PIL raises OSError/SyntaxError/ValueError/struct.error on corrupt data
        msg = str(e)
        truncated = "truncated" in msg.lower() or _missing_end_marker(data)
        code = rejects.TRUNCATED if truncated else rejects.NOT_AN_IMAGE
        raise rejects.RecordError(code, f"{where}: {type(e).__name__}: {msg}") from None
    if size is not None:
        rgb = resize_rgb(rgb, size[0], size[1])
    return rgb


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _missing_end_marker(data: bytes) -> bool:
    """True for a JPEG (SOI ... EOI) or PNG (signature ... IEND) whose end marker is missing: a cut-off file.

    Why not PIL's message: where the cut lands (inside the headers or the entropy-coded data) decides which
    exception PIL raises, so the message alone would call the same truncation "not an image" half the time.
    """
    if data[:2] == b"\xff\xd8":
        return b"\xff\xd9" not in data[-64:]
    if data[:8] == _PNG_SIGNATURE:
        return b"IEND" not in data[-64:]
    return False
