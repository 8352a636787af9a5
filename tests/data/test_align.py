"""Tests for synleak_jax/data/align.py: Umeyama, templates, bilinear warping, face chips."""

import numpy as np
import pytest
from skimage import transform as sktf

from synleak_jax.data import align


def _random_similarity(rng, scale_range=(0.3, 4.0)):
    s = rng.uniform(*scale_range)
    th = rng.uniform(-np.pi, np.pi)
    t = rng.uniform(-50, 50, size=2)
    return np.array([[s * np.cos(th), -s * np.sin(th), t[0]], [s * np.sin(th), s * np.cos(th), t[1]]])


def _bilinear_loop(img, m, oh, ow, strict=False):
    """Independent float64 reference: explicit loops, pixel centres at integer coordinates, zeros outside."""
    h, w, c = img.shape
    out = np.zeros((oh, ow, c))
    for r in range(oh):
        for cc in range(ow):
            x = m[0, 0] * cc + m[0, 1] * r + m[0, 2]
            y = m[1, 0] * cc + m[1, 1] * r + m[1, 2]
            xf, yf = int(np.floor(x)), int(np.floor(y))
            if strict and not (xf >= 0 and yf >= 0 and xf + 1 < w and yf + 1 < h):
                continue
            acc = np.zeros(c)
            for dy in (0, 1):
                for dx in (0, 1):
                    yy, xx = yf + dy, xf + dx
                    wgt = (x - xf if dx else 1 - (x - xf)) * (y - yf if dy else 1 - (y - yf))
                    if 0 <= yy < h and 0 <= xx < w:
                        acc += wgt * img[yy, xx]
            out[r, cc] = acc
    return out


def test_umeyama_recovers_exact_similarity(rng):
    for _ in range(20):
        m = _random_similarity(rng)
        src = rng.uniform(-100, 200, size=(int(rng.integers(2, 30)), 2))
        dst = align.apply_affine(m, src)
        est = align.umeyama(src, dst)
        np.testing.assert_allclose(est, m, rtol=0, atol=1e-9 * (1 + np.abs(m).max()))


def test_umeyama_matches_skimage_on_noisy_points(rng):
    for _ in range(10):
        src = rng.uniform(0, 200, size=(5, 2))
        dst = align.apply_affine(_random_similarity(rng), src) + rng.normal(0, 3.0, size=(5, 2))
        ref = sktf.SimilarityTransform.from_estimate(src, dst)
        np.testing.assert_allclose(align.umeyama(src, dst), ref.params[:2], atol=1e-9)


def test_umeyama_never_returns_a_reflection(rng):
    src = rng.uniform(0, 100, size=(6, 2))
    mirrored = src * np.array([-1.0, 1.0])  # a reflection: no proper similarity fits exactly
    m = align.umeyama(src, mirrored)
    assert np.linalg.det(m[:, :2]) > 0
    # The 3-D case works as well (rotation part is orthonormal times scale).
    src3 = rng.normal(size=(10, 3))
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    q *= np.sign(np.linalg.det(q))
    m3 = align.umeyama(src3, 2.5 * src3 @ q.T + 1.0)
    np.testing.assert_allclose(m3[:, :3], 2.5 * q, atol=1e-10)


def test_umeyama_rejects_bad_input():
    with pytest.raises(ValueError, match="coincide"):
        align.umeyama(np.ones((4, 2)), np.zeros((4, 2)))
    with pytest.raises(ValueError, match="equal shapes"):
        align.umeyama(np.zeros((4, 2)), np.zeros((5, 2)))


def test_arcface_template_scaling():
    np.testing.assert_allclose(align.arcface_template(112), align.ARCFACE_112)
    np.testing.assert_allclose(align.arcface_template(224), 2 * align.ARCFACE_112)
    t128 = align.arcface_template(128)
    np.testing.assert_allclose(t128[:, 0], align.ARCFACE_112[:, 0] + 8.0)
    np.testing.assert_allclose(t128[:, 1], align.ARCFACE_112[:, 1])
    t256 = align.arcface_template(256)
    np.testing.assert_allclose(t256, align.ARCFACE_112 * 2 + np.array([16.0, 0.0]))
    with pytest.raises(ValueError, match="multiple of 112 or of 128"):
        align.arcface_template(100)
    assert align.get_template("arcface224").height == 224
    with pytest.raises(KeyError, match="unknown alignment template"):
        align.get_template("nope")


def test_dlib_chip_template_values():
    # REFERENCE.md section 2 (size 150, padding 0.25), dlib 5-point order.
    expected = [(110.957, 46.350), (89.606, 47.897), (37.058, 46.373), (58.409, 47.906), (74.011, 87.780)]
    np.testing.assert_allclose(align.dlib_chip_template(150, 0.25), expected, atol=1e-3)
    # padding 0 and size 1 is the unit template itself; scaling is linear in size.
    np.testing.assert_allclose(align.dlib_chip_template(300, 0.25), 2 * align.dlib_chip_template(150, 0.25))
    u = align.dlib_chip_template(1, 0.0)
    assert 0.85 < u[0, 0] < 0.86 and 0.62 < u[4, 1] < 0.63


@pytest.mark.parametrize("channels", [1, 3])
def test_sample_affine_matches_float64_loops(rng, channels):
    img = rng.integers(0, 256, size=(23, 31, channels)).astype(np.uint8)
    # A random similarity that maps a 20x20 grid partly outside the image (exercises the border).
    m = np.array([[0.9, -0.4, 3.3], [0.4, 0.9, -2.6]])
    ref = _bilinear_loop(img.astype(np.float64), m, 20, 20)
    got = align.sample_affine(img, m, (20, 20), rounding=None)
    np.testing.assert_allclose(got, ref, atol=1e-4)
    got_u8 = align.sample_affine(img, m, (20, 20), rounding="round")
    # Nearest rounding (ties can fall either way by float association order).
    assert np.abs(got_u8 - ref).max() <= 0.5 + 1e-9
    ref_strict = _bilinear_loop(img.astype(np.float64), m, 20, 20, strict=True)
    got_strict = align.sample_affine(img, m, (20, 20), border="strict", rounding="floor")
    diff = ref_strict - got_strict  # truncation: in [0, 1) up to float association order
    assert diff.min() >= -1e-9 and diff.max() < 1 + 1e-9
    assert (ref_strict == 0).all(axis=-1).sum() > (ref == 0).all(axis=-1).sum()  # strict border zeroed more


def test_warp_affine_matches_skimage_interior(rng):
    img = rng.uniform(0, 255, size=(64, 80, 3))
    image_to_out = _random_similarity(rng, (0.6, 1.5))
    # Map the image centre near the output centre so that most of the output samples the image.
    image_to_out[:, 2] = np.array([28.0, 24.0]) + rng.uniform(-5, 5, size=2) - image_to_out[:, :2] @ [40.0, 32.0]
    out = align.warp_affine(img, image_to_out, (48, 56))
    inv = align.to_homogeneous(align.invert_affine(image_to_out))
    ref = sktf.warp(img, sktf.AffineTransform(matrix=inv), output_shape=(48, 56), order=1, mode="constant",
                    cval=0.0, preserve_range=True)
    # Compare where all four neighbours are inside the image (skimage's edge handling differs at the border).
    cols, rows = np.meshgrid(np.arange(56), np.arange(48))
    pts = align.apply_affine(inv[:2], np.stack([cols.ravel(), rows.ravel()], 1))
    inside = ((pts[:, 0] >= 0) & (pts[:, 0] < 79) & (pts[:, 1] >= 0) & (pts[:, 1] < 63)).reshape(48, 56)
    assert inside.sum() > 200
    np.testing.assert_allclose(out[inside], ref[inside], atol=1e-3)


def test_align_face_arcface_inverts_known_similarity(rng):
    img = rng.integers(0, 256, size=(300, 260, 3)).astype(np.uint8)
    tmpl = align.arcface_template(112)
    chip_to_img = _random_similarity(rng, (1.2, 2.0))
    chip_to_img[:, 2] = [130, 150] - chip_to_img[:, :2] @ np.array([56.0, 56.0])  # centre the face
    landmarks = align.apply_affine(chip_to_img, tmpl)
    m = align.alignment_matrix(landmarks, "arcface112")
    np.testing.assert_allclose(m, chip_to_img, atol=1e-9)
    chip = align.align_face(img, landmarks, "arcface112")
    assert chip.shape == (112, 112, 3) and chip.dtype == np.uint8
    ref = _bilinear_loop(img.astype(np.float64), chip_to_img, 112, 112)
    assert np.abs(chip - ref).max() <= 0.5 + 1e-9


def test_dlib_chip_matrix_geometry(rng):
    tmpl = align.dlib_chip_template(150, 0.25)
    chip_to_img = _random_similarity(rng, (0.8, 1.8))
    landmarks = align.apply_affine(chip_to_img, tmpl)
    m = align.dlib_chip_matrix(landmarks, tmpl, 150)
    s = np.hypot(*chip_to_img[:, 0])
    # Same rotation as the fit, grid step (150 s - 1) / 149, chip centre (74.5, 74.5) -> image of (75, 75).
    np.testing.assert_allclose(m[:, :2], chip_to_img[:, :2] * ((150 * s - 1) / 149) / s, atol=1e-9)
    np.testing.assert_allclose(align.apply_affine(m, [[74.5, 74.5]]), align.apply_affine(chip_to_img, [[75, 75]]),
                               atol=1e-9)
    chip = align.align_face(np.full((400, 400, 3), 200, np.uint8), landmarks, "dlib150", landmark_format="dlib5")
    assert chip.shape == (150, 150, 3)
    with pytest.raises(ValueError, match="landmarks must be"):
        align.align_face(chip, np.zeros((4, 2)), "dlib150")


# --------------------------------------------------------------------------------------------------------------
# Parity with dlib.get_face_chip (fixture made by scripts/make_dlib_reference.py with dlib itself)

_FIXTURE = __import__("pathlib").Path(__file__).resolve().parents[1] / "fixtures" / "dlib_reference.npz"


def test_chip_matches_dlib_get_face_chip():
    """Our "dlib150" chip (dlib 5-point landmarks) vs dlib.get_face_chip(img, shape, 150, 0.25).

    Tolerance: dlib truncates the double-precision bilinear value to uint8; our transform comes from the same
    formulas but not the same floating-point operations, so a value that sits within ~1e-9 of an integer can
    truncate the other way. Allowed: every value within 1 gray level, and at most 0.1% of values differ.
    Measured here (dlib 20.0.1): all 5 chips bit-identical.
    """
    from skimage import data as skdata

    fx = np.load(_FIXTURE)
    astronaut = skdata.astronaut()
    import hashlib

    assert hashlib.sha256(astronaut.tobytes()).hexdigest() == str(fx["astronaut_sha256"])
    sources = [astronaut, fx["synthetic_big"], np.repeat(np.repeat(astronaut, 3, axis=0), 3, axis=1)]
    levels = []
    for i, (s, lm) in enumerate(zip(fx["chip_source"], fx["chip_landmarks"])):
        d = align.dlib_chip_details(lm, align.dlib_chip_template(150, 0.25), 150)
        levels.append(int(np.log2(max(1.0, (d.rect[2] - d.rect[0] + 1) / 150.0))))
        ours = align.align_face(sources[s], lm, "dlib150", landmark_format="dlib5").astype(np.int16)
        ref = fx["chip_dlib"][i].astype(np.int16)
        diff = np.abs(ours - ref)
        assert diff.max() <= 1, (i, diff.max())
        assert (diff > 0).mean() <= 0.001, (i, (diff > 0).mean())
    # The off-the-edge case really has a zero border (dlib's strict rule), and we reproduce it.
    assert (fx["chip_dlib"][4] == 0).all(axis=-1).sum() > 100
    # The fixture covers direct sampling and pyramid levels 0 and 1 (faces ~1x, ~2.4-3.2x and ~4.9x the chip).
    assert {0, 1, 2} <= set(levels), levels


def test_pyramid_down2_matches_dlib():
    fx = np.load(_FIXTURE)
    np.testing.assert_array_equal(align.pyramid_down2(fx["pyr_input"]), fx["pyr_dlib"])


def test_pyramid_down2_is_the_binomial_filter(rng):
    img = rng.integers(0, 256, size=(20, 17, 3)).astype(np.uint8)
    w = np.array([1, 4, 6, 4, 1], np.int64)
    k = np.outer(w, w)
    out = align.pyramid_down2(img)
    assert out.shape == (8, 7, 3)
    for i in range(8):
        for j in range(7):
            ref = (img[2 * i:2 * i + 5, 2 * j:2 * j + 5].astype(np.int64) * k[..., None]).sum((0, 1)) // 256
            np.testing.assert_array_equal(out[i, j], ref)
    assert align.pyramid_down2(img[:8]).size == 0
