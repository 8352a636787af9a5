"""synleak_jax/data/decode.py: reject classification of cut-off and corrupt files, and the simplejpeg fast path
(pixels identical to PIL's, same reject codes, pixel limit checked before decoding, PIL-only without it)."""

import io
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from synleak_jax.data import decode, rejects, sources
from tests.data import fixtures

needs_simplejpeg = pytest.mark.skipif(decode._simplejpeg is None, reason="simplejpeg not installed")


@pytest.fixture(params=["default", "pil"])
def decoder(request, monkeypatch):
    """Runs a test with the default decoders (simplejpeg for JPEGs when installed) and with PIL alone."""
    if request.param == "pil":
        monkeypatch.setattr(decode, "_simplejpeg", None)
    return request.param


def _jpeg(rgb_or_gray: np.ndarray, **kw) -> bytes:
    b = io.BytesIO()
    Image.fromarray(rgb_or_gray).save(b, "JPEG", **kw)
    return b.getvalue()


def _photo_like(rng, h: int, w: int, gray: bool = False) -> np.ndarray:
    """uint8 [h, w, 3] (or [h, w]): gradients plus noise, like photos (pure noise is not what JPEG is for, and
    PIL's encoder fails on large progressive pure-noise images)."""
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 255 / max(w - 1, 1), yy * 255 / max(h - 1, 1), (xx + yy) % 256], -1)
    rgb = np.clip(base + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)
    return rgb[..., 1] if gray else rgb


def _pil_reference(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def _outcome(data: bytes, monkeypatch, fast: bool, **kw):
    """("ok", pixels bytes) or ("reject", code) of decode_rgb with or without the fast path."""
    with monkeypatch.context() as m:
        if not fast:
            m.setattr(decode, "_simplejpeg", None)
        try:
            return "ok", decode.decode_rgb(data, "x", **kw).tobytes()
        except rejects.RecordError as e:
            return "reject", e.code


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_cut_files_are_truncated_wherever_the_cut_lands(rng, fmt, decoder):
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(buf, fmt)
    good = buf.getvalue()
    full = decode.decode_rgb(good, "good")
    assert full.shape == (16, 16, 3)
    # Only a cut inside the trailer still holds every pixel: PNG zlib adler + IDAT CRC + IEND (24 bytes); JPEG
    # the EOI marker alone, and PIL then decodes it only when the entropy decoder needs no bits past the data
    # (seed-dependent). Such a file must give the full image's pixels; anything else must be rejected.
    trailer = 24 if fmt == "PNG" else 2
    for cut in range(8, len(good) - 1):  # every offset past the signature
        try:
            out = decode.decode_rgb(good[:cut], f"cut{cut}")
        except rejects.RecordError as e:
            assert e.code == rejects.TRUNCATED, (cut, e)
        else:
            assert cut >= len(good) - trailer, cut
            np.testing.assert_array_equal(out, full)


@needs_simplejpeg
@pytest.mark.parametrize("subsampling", [0, 1, 2], ids=["444", "422", "420"])
@pytest.mark.parametrize("progressive", [False, True], ids=["baseline", "progressive"])
def test_fast_path_pixels_equal_pil(rng, monkeypatch, subsampling, progressive):
    for (h, w), quality in [((112, 112), 95), ((37, 53), 75), ((190, 251), 50), ((1, 9), 90)]:
        data = _jpeg(_photo_like(rng, h, w), quality=quality, subsampling=subsampling, progressive=progressive)
        fast = decode._decode_jpeg_fast(data, "x", None, decode.DEFAULT_MAX_PIXELS)
        assert fast is not None, (h, w, quality)  # the fast path decoded it (not a fallback)
        ref = _pil_reference(data)
        assert fast.dtype == np.uint8 and fast.shape == (h, w, 3)
        np.testing.assert_array_equal(fast, ref)
        np.testing.assert_array_equal(decode.decode_rgb(data, "x"), ref)
        assert _outcome(data, monkeypatch, fast=False) == ("ok", ref.tobytes())


@needs_simplejpeg
def test_grayscale_jpeg_fast_path_equals_pil_convert_rgb(rng, monkeypatch):
    for h, w in [(112, 112), (23, 41)]:
        data = _jpeg(rng.integers(0, 256, (h, w), dtype=np.uint8), quality=90)
        assert Image.open(io.BytesIO(data)).mode == "L"
        fast = decode._decode_jpeg_fast(data, "x", None, decode.DEFAULT_MAX_PIXELS)
        assert fast is not None
        np.testing.assert_array_equal(fast, _pil_reference(data))
        assert _outcome(data, monkeypatch, fast=False) == ("ok", fast.tobytes())


@needs_simplejpeg
@pytest.mark.parametrize("gray", [False, True], ids=["color", "gray"])
def test_resize_dct_downscale_same_as_pil_draft(rng, monkeypatch, gray):
    """With a target size, the fast path decodes at PIL draft's 1/s (s = 1, 2, 4, 8) and then the same PIL
    bilinear resize: the final pixels equal the PIL path's."""
    cases = [((130, 150), (112, 112), 1), ((260, 300), (112, 112), 2), ((300, 200), (112, 112), 1),
             ((479, 897), (112, 112), 4), ((1024, 1000), (112, 112), 8), ((333, 250), (64, 48), 4)]
    for (h, w), size, s in cases:
        # (quality <= 90: PIL 13 fails to write some large progressive 4:4:4 JPEGs at quality 92-99,
        # "Suspension not allowed here")
        data = _jpeg(_photo_like(rng, h, w, gray), quality=int(rng.integers(60, 91)),
                     subsampling=int(rng.integers(0, 3)), progressive=bool(rng.integers(0, 2)))
        assert decode._draft_scale(w, h, size) == s
        fast = decode._decode_jpeg_fast(data, "x", size, decode.DEFAULT_MAX_PIXELS)
        assert fast is not None and fast.shape == (-(-h // s), -(-w // s), 3), (h, w)
        img = Image.open(io.BytesIO(data))
        img.draft("RGB", (size[1], size[0]))
        np.testing.assert_array_equal(fast, np.asarray(img.convert("RGB")))  # PIL's own DCT-scaled decode
        got = _outcome(data, monkeypatch, fast=True, size=size)
        assert got[0] == "ok" and len(got[1]) == size[0] * size[1] * 3
        assert got == _outcome(data, monkeypatch, fast=False, size=size)


@needs_simplejpeg
def test_cmyk_jpeg_and_other_formats_go_to_pil(rng, monkeypatch):
    cmyk = Image.fromarray(rng.integers(0, 256, (9, 7, 4), dtype=np.uint8), "CMYK")
    b = io.BytesIO()
    cmyk.save(b, "JPEG")
    data = b.getvalue()
    assert decode._decode_jpeg_fast(data, "x", None, decode.DEFAULT_MAX_PIXELS) is None
    np.testing.assert_array_equal(decode.decode_rgb(data, "x"), _pil_reference(data))
    png = fixtures.encode(fixtures.random_rgb(rng, 9, 7), "PNG")
    assert _outcome(png, monkeypatch, fast=True) == _outcome(png, monkeypatch, fast=False)


def _patch_sof_size(data: bytes, h: int, w: int) -> bytes:
    """The JPEG with the height/width of its SOF0/SOF2 frame header replaced (pixel data unchanged)."""
    for marker in (b"\xff\xc0", b"\xff\xc2"):
        k = data.find(marker)
        if k >= 0:
            return data[:k + 5] + h.to_bytes(2, "big") + w.to_bytes(2, "big") + data[k + 9:]
    raise AssertionError("no SOF marker")


def test_pixel_limit_checked_before_decoding(rng, monkeypatch, decoder):
    data = _jpeg(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8), quality=90)
    # A 16x16 image's data under a 9000x9000 header (81 Mpixel: over our 64 Mpixel default, under PIL's own
    # limit): decoding it would fail as corrupt (or allocate 243 MB); the header check must answer first,
    # whichever decoder runs.
    bomb = _patch_sof_size(data, 9000, 9000)
    with pytest.raises(rejects.RecordError) as e:
        decode.decode_rgb(bomb, "bomb.jpg")
    assert e.value.code == rejects.TOO_MANY_PIXELS and str(e.value).endswith("bomb.jpg: 9000x9000 > 67108864 pixels")
    with pytest.raises(rejects.RecordError) as e:
        decode.decode_rgb(data, "small.jpg", max_pixels=16 * 16 - 1)
    assert e.value.code == rejects.TOO_MANY_PIXELS
    assert str(e.value).endswith("small.jpg: 16x16 > 255 pixels")
    assert decode.decode_rgb(data, "ok.jpg", max_pixels=16 * 16).shape == (16, 16, 3)


@needs_simplejpeg
def test_fast_path_raises_the_pixel_limit_itself():
    data = _patch_sof_size(_jpeg(np.zeros((16, 16, 3), np.uint8)), 30000, 30000)
    with pytest.raises(rejects.RecordError) as e:
        decode._decode_jpeg_fast(data, "bomb.jpg", None, decode.DEFAULT_MAX_PIXELS)
    assert e.value.code == rejects.TOO_MANY_PIXELS


@needs_simplejpeg
def test_corrupted_jpegs_same_outcome_on_both_paths(rng, monkeypatch):
    """Random byte flips, deletions and insertions: identical reject code or identical pixels, fast vs PIL."""
    codes = set()
    for _ in range(150):
        h, w = rng.integers(8, 48, 2)
        d = bytearray(_jpeg(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), quality=int(rng.integers(40, 100)),
                            subsampling=int(rng.integers(0, 3)), progressive=bool(rng.integers(0, 2))))
        p = int(rng.integers(2, len(d)))
        kind = rng.integers(0, 3)
        if kind == 0:
            d[p] = int(rng.integers(0, 256))
        elif kind == 1:
            del d[p:p + int(rng.integers(1, 20))]
        else:
            d[p:p] = rng.integers(0, 256, int(rng.integers(1, 20)), dtype=np.uint8).tobytes()
        kw = {"size": (16, 12)} if rng.integers(0, 2) else {}  # half of them DCT-downscaled (s = 1 or 2)
        got = _outcome(bytes(d), monkeypatch, fast=True, **kw)
        assert got == _outcome(bytes(d), monkeypatch, fast=False, **kw), (kind, p, kw)
        codes.add(got[1] if got[0] == "reject" else 0)
    assert rejects.NOT_AN_IMAGE in codes and 0 in codes  # both outcomes were exercised


def test_planted_bad_files_same_codes_without_simplejpeg(tmp_path, rng, decoder):
    from tests.data.test_sources import plant_bad_files
    root, outside = str(tmp_path / "ds"), str(tmp_path / "outside")
    exp = plant_bad_files(root, rng, outside)
    src = sources.ImageFolderSource(root)
    got = {}
    for i in range(len(src)):
        try:
            src.read_rgb(i)
            got[src.relpath(i)] = 0
        except rejects.RecordError as e:
            got[src.relpath(i)] = e.code
    assert got == exp


def test_pil_only_when_simplejpeg_is_not_importable(rng, tmp_path):
    rgb = rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)
    path = tmp_path / "a.jpg"
    path.write_bytes(_jpeg(rgb, quality=90))
    code = (
        "import sys; sys.modules['simplejpeg'] = None\n"  # makes `import simplejpeg` raise ImportError
        "import numpy as np\n"
        "from synleak_jax.data import decode\n"
        "assert decode._simplejpeg is None and decode.jpeg_decoder() == 'PIL'\n"
        f"np.save(sys.argv[1], decode.decode_rgb(open({str(path)!r}, 'rb').read(), 'a.jpg'))\n"
    )
    out = tmp_path / "out.npy"
    subprocess.run([sys.executable, "-c", code, str(out)], check=True, cwd=os.getcwd(), timeout=120)
    np.testing.assert_array_equal(np.load(out), _pil_reference(path.read_bytes()))


def test_jpeg_decoder_names_the_decoder():
    name = decode.jpeg_decoder()
    assert name == "PIL" if decode._simplejpeg is None else name.startswith("simplejpeg ")
