"""Face alignment: similarity transforms (Umeyama), landmark templates and bilinear warping (host side, numpy).

Coordinate convention (everywhere in this module): a point ``(x, y)`` is in pixel units, ``x`` along columns and
``y`` along rows, and the CENTRE of pixel ``[r, c]`` is the point ``(c, r)``. This is the convention of OpenCV's
``warpAffine``, of insightface's alignment and of dlib's ``extract_image_chip``, so their matrices carry over.

Templates (5 points each, ``[5, 2]`` float64, ``(x, y)`` in output-chip pixels):

* ``arcface112`` (and any size that is a multiple of 112 or of 128, :func:`arcface_template`): insightface's
  template, landmark order (left eye, right eye, nose tip, left mouth corner, right mouth corner) where "left" is
  the subject's right, i.e. the eye on the image's left. Detectors (MTCNN, RetinaFace) output this order.
* ``arcface112x96``: the same points shifted 8 px left, for 112 (rows) x 96 (columns) SphereFace crops.
* ``dlib150``: dlib's face chip of size 150 with padding 0.25 (what ``dlib.get_face_chip`` and
  ``compute_face_descriptor`` use). For landmarks in dlib's own 5-point shape-predictor order
  (``landmark_format="dlib5"``) it reproduces ``dlib::get_face_chip_details`` + ``extract_image_chip`` exactly
  (template :func:`dlib_chip_template`, chip-to-image Umeyama fit, dlib's chip sampling grid, border and truncation),
  see :func:`dlib_chip_matrix`. For detector landmarks in ArcFace order (``landmark_format="arcface"``) the
  template is derived from dlib's 68-point mean face shape (:func:`dlib_chip_template_arcface_order`: eye centres =
  mean of the six eye-contour points, nose tip = point 30, mouth corners = points 48/54), which is the shape
  dlib's 5-point template comes from; that path is an approximation of dlib's alignment, not a copy.

dlib chips, exactly: for faces larger than about twice the chip (chip-to-image scale > ~2) dlib crops the
image around the chip, downsamples the crop with its ``pyramid_down<2>`` filter (as many levels as needed) and
samples the chip from that level; :func:`dlib_extract_chip` reproduces this (ignoring it would move the
descriptor of such a face by ~0.1). tests/data/test_align.py checks 8 cases (direct sampling, pyramid levels
0 and 1, a chip running off the image) against ``dlib.get_face_chip``: all bit-identical with dlib 20.0.1.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

# --------------------------------------------------------------------------------------------------------------
# Similarity estimation


def umeyama(src: np.ndarray, dst: np.ndarray, estimate_scale: bool = True) -> np.ndarray:
    """Least-squares similarity transform mapping ``src`` points onto ``dst`` points (Umeyama 1991).

    Minimises ``sum_i || dst_i - (s R src_i + t) ||^2`` over rotations ``R`` (det +1: reflections are
    excluded by the sign correction of the SVD), scale ``s > 0`` and translation ``t``, in float64.

    Args:
      src: ``[N, D]`` source points (N >= 2 for D = 2).
      dst: ``[N, D]`` destination points.
      estimate_scale: if False, ``s = 1`` (rigid transform).

    Returns:
      ``[D, D + 1]`` float64 matrix ``[s R | t]``: ``dst ~= M[:, :D] @ p + M[:, D]``.

    Raises:
      ValueError: if the shapes differ, there are fewer than 2 points, or the source points coincide.
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    if src.ndim != 2 or src.shape != dst.shape:
        raise ValueError(f"umeyama: src and dst must both be [N, D] with equal shapes, got {src.shape} and {dst.shape}")
    if not (np.all(np.isfinite(src)) and np.all(np.isfinite(dst))):
        raise ValueError("umeyama: points must be finite")
    n, dim = src.shape
    if n < 2:
        raise ValueError(f"umeyama: need at least 2 point pairs, got {n}")
    mu_s = src.mean(axis=0)
    mu_d = dst.mean(axis=0)
    sc = src - mu_s
    dc = dst - mu_d
    var_s = float(np.sum(sc * sc) / n)
    if var_s <= 0.0:
        raise ValueError("umeyama: source points all coincide; no similarity is defined")
    cov = dc.T @ sc / n  # [D, D]
    u, sing, vt = np.linalg.svd(cov)
    d = np.ones(dim)
    if np.linalg.det(cov) < 0:
        d[-1] = -1.0
    rank = int(np.sum(sing > 1e-12 * max(1.0, sing[0])))
    if rank == dim - 1:
        # Degenerate (collinear) configuration: the last singular direction is free; pick the proper rotation.
        d = np.ones(dim)
        if np.linalg.det(u) * np.linalg.det(vt) < 0:
            d[-1] = -1.0
    rot = u @ np.diag(d) @ vt
    scale = float(np.sum(sing * d) / var_s) if estimate_scale else 1.0
    t = mu_d - scale * rot @ mu_s
    out = np.empty((dim, dim + 1), dtype=np.float64)
    out[:, :dim] = scale * rot
    out[:, dim] = t
    return out


def to_homogeneous(m: np.ndarray) -> np.ndarray:
    """``[2, 3]`` affine -> ``[3, 3]`` homogeneous matrix (float64)."""
    m = np.asarray(m, dtype=np.float64)
    if m.shape == (3, 3):
        return m.copy()
    if m.shape != (2, 3):
        raise ValueError(f"expected a [2, 3] or [3, 3] affine matrix, got shape {m.shape}")
    return np.vstack([m, [0.0, 0.0, 1.0]])


def invert_affine(m: np.ndarray) -> np.ndarray:
    """Inverse of a ``[2, 3]`` affine matrix, as ``[2, 3]`` (float64)."""
    return np.linalg.inv(to_homogeneous(m))[:2]


def apply_affine(m: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Applies a ``[2, 3]`` affine to ``[N, 2]`` points; returns ``[N, 2]`` float64."""
    m = np.asarray(m, dtype=np.float64)[:2]
    p = np.asarray(points, dtype=np.float64)
    return p @ m[:, :2].T + m[:, 2]


# --------------------------------------------------------------------------------------------------------------
# Templates

#: insightface's 112x112 ArcFace template (left eye, right eye, nose, left mouth, right mouth), (x, y) pixels.
ARCFACE_112 = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ],
    dtype=np.float64,
)

# dlib's 5-point template in [0, 1] chip units (dlib::get_face_chip_details), in dlib's 5-point
# shape-predictor order: outer and inner corner of the eye on the image's right, outer and inner corner of the
# eye on the image's left, base of the nose.
_DLIB5_UNIT = np.array(
    [
        [0.8595674595992, 0.2134981538014],
        [0.6460604764104, 0.2289674387677],
        [0.1205750620789, 0.2137274526848],
        [0.3340850613712, 0.2290642403242],
        [0.4901123135679, 0.6277975316475],
    ],
    dtype=np.float64,
)

# ArcFace-order landmarks in the same [0, 1] chip units, from dlib's 68-point mean face shape
# (points 36-41 / 42-47 averaged for the eye centres, point 30 nose tip, points 48 / 54 mouth corners).
_DLIB_ARCFACE_ORDER_UNIT = np.array(
    [
        [0.22549183333333334, 0.21599033333333334],
        [0.7547613333333333, 0.21599033333333334],
        [0.490127, 0.515625],
        [0.254149, 0.780233],
        [0.726104, 0.780233],
    ],
    dtype=np.float64,
)


def arcface_template(size: int = 112) -> np.ndarray:
    """ArcFace template for a ``size x size`` chip, ``[5, 2]`` float64.

    Multiples of 112 are scaled by ``size / 112``; otherwise multiples of 128 are scaled by ``size / 128`` and
    shifted right by ``8 * size / 128`` (insightface's convention for 128-pixel crops).
    """
    size = int(size)
    if size <= 0:
        raise ValueError(f"arcface_template: size must be positive, got {size}")
    if size % 112 == 0:
        return ARCFACE_112 * (size / 112.0)
    if size % 128 == 0:
        ratio = size / 128.0
        out = ARCFACE_112 * ratio
        out[:, 0] += 8.0 * ratio
        return out
    raise ValueError(f"arcface_template: size must be a multiple of 112 or of 128, got {size}")


def dlib_chip_template(size: int = 150, padding: float = 0.25) -> np.ndarray:
    """dlib's 5-point chip template (dlib 5-point order), ``[5, 2]`` float64 in chip pixels.

    ``p = (padding + u) / (2 * padding + 1) * size`` for dlib's unit template ``u``; at size 150 and padding 0.25
    the first point is (110.957, 46.350).
    """
    if size <= 0 or padding < 0:
        raise ValueError(f"dlib_chip_template: need size > 0 and padding >= 0, got size={size}, padding={padding}")
    return (padding + _DLIB5_UNIT) / (2.0 * padding + 1.0) * float(size)


def dlib_chip_template_arcface_order(size: int = 150, padding: float = 0.25) -> np.ndarray:
    """Detector-order (ArcFace order) landmarks of dlib's mean face in a dlib chip, ``[5, 2]`` float64."""
    if size <= 0 or padding < 0:
        raise ValueError(f"need size > 0 and padding >= 0, got size={size}, padding={padding}")
    return (padding + _DLIB_ARCFACE_ORDER_UNIT) / (2.0 * padding + 1.0) * float(size)


@dataclasses.dataclass(frozen=True)
class AlignTemplate:
    """An alignment target: output size, template points and how the chip is sampled.

    Attributes:
      name: registry name.
      height, width: chip size in pixels.
      points: ``[5, 2]`` template in ArcFace landmark order (detector order).
      style: "arcface" (fit image->template, sample with the inverse, round to nearest) or "dlib" (dlib's
        chip geometry: fit template->image, dlib's sampling grid, strict border, truncation).
      dlib_padding: the padding of a "dlib" template.
    """

    name: str
    height: int
    width: int
    points: np.ndarray
    style: str = "arcface"
    dlib_padding: float = 0.25


def _templates() -> dict[str, AlignTemplate]:
    a96 = ARCFACE_112.copy()
    a96[:, 0] -= 8.0
    return {
        "arcface112": AlignTemplate("arcface112", 112, 112, arcface_template(112)),
        "arcface112x96": AlignTemplate("arcface112x96", 112, 96, a96),
        "dlib150": AlignTemplate("dlib150", 150, 150, dlib_chip_template_arcface_order(150, 0.25), "dlib", 0.25),
    }


TEMPLATES: dict[str, AlignTemplate] = _templates()


def get_template(name_or_template: str | AlignTemplate) -> AlignTemplate:
    """Looks up a template by name ("arcface112", "arcface224", "arcface128", "arcface112x96", "dlib150")."""
    if isinstance(name_or_template, AlignTemplate):
        return name_or_template
    name = str(name_or_template)
    if name in TEMPLATES:
        return TEMPLATES[name]
    if name.startswith("arcface") and name[len("arcface"):].isdigit():
        size = int(name[len("arcface"):])
        return AlignTemplate(name, size, size, arcface_template(size))
    raise KeyError(
        f"unknown alignment template {name!r}; available: {', '.join(sorted(TEMPLATES))} "
        "and arcface<S> for S a multiple of 112 or 128"
    )


# --------------------------------------------------------------------------------------------------------------
# Warping


def _out_hw(out_size) -> tuple[int, int]:
    if isinstance(out_size, (int, np.integer)):
        return int(out_size), int(out_size)
    h, w = out_size
    return int(h), int(w)


def sample_affine(
    image: np.ndarray,
    out_to_image: np.ndarray,
    out_size: int | Sequence[int],
    *,
    border: str = "constant",
    rounding: str | None = "round",
) -> np.ndarray:
    """Bilinear sampling of ``image`` on an affine grid: ``out[r, c] = image(M @ (c, r, 1))``.

    Args:
      image: ``[H, W, C]`` or ``[H, W]`` uint8 or float image.
      out_to_image: ``[2, 3]`` (or ``[3, 3]``) matrix mapping output pixel centres ``(c, r)`` to image points.
      out_size: int (square) or ``(height, width)`` of the output.
      border: "constant": pixels outside the image read as 0 and are blended in (OpenCV BORDER_CONSTANT);
        "strict": a sample is 0 unless all four neighbours lie inside the image (dlib's rule:
        ``0 <= floor(x)`` and ``floor(x) + 1 <= W - 1``, same for y).
      rounding: for uint8 input: "round" (nearest, halves up), "floor" (truncate, as dlib does) or None
        (return float32 without rounding). Ignored for float input (returns float32).

    Returns:
      ``[out_h, out_w, C]`` (or ``[out_h, out_w]``) uint8 or float32.
    """
    img = np.asarray(image)
    if img.ndim not in (2, 3):
        raise ValueError(f"sample_affine: image must be [H, W] or [H, W, C], got shape {img.shape}")
    if border not in ("constant", "strict"):
        raise ValueError(f"sample_affine: border must be 'constant' or 'strict', got {border!r}")
    if rounding not in ("round", "floor", None):
        raise ValueError(f"sample_affine: rounding must be 'round', 'floor' or None, got {rounding!r}")
    squeeze = img.ndim == 2
    if squeeze:
        img = img[..., None]
    h, w, _ = img.shape
    oh, ow = _out_hw(out_size)
    m = np.asarray(out_to_image, dtype=np.float64)[:2]
    if m.shape != (2, 3) or not np.all(np.isfinite(m)):
        raise ValueError(f"sample_affine: matrix must be a finite [2, 3] affine, got {np.asarray(out_to_image)!r}")

    cols, rows = np.meshgrid(np.arange(ow, dtype=np.float64), np.arange(oh, dtype=np.float64))
    x = m[0, 0] * cols + m[0, 1] * rows + m[0, 2]
    y = m[1, 0] * cols + m[1, 1] * rows + m[1, 2]
    x0 = np.floor(x)
    y0 = np.floor(y)
    fx = (x - x0)[..., None]
    fy = (y - y0)[..., None]
    x0 = x0.astype(np.int64)
    y0 = y0.astype(np.int64)
    # Gather from a copy padded with one ring of zeros: clipping indices into [-1, W] (resp. [-1, H]) then reads
    # the zero ring for every tap outside the image, which is exactly the constant-0 border, without masks.
    nch = img.shape[2]
    padded = np.zeros((h + 2, w + 2, nch), dtype=img.dtype)
    padded[1:-1, 1:-1] = img
    flat = padded.reshape(-1, nch)
    xa = np.clip(x0, -1, w) + 1
    xb = np.clip(x0 + 1, -1, w) + 1
    ya = (np.clip(y0, -1, h) + 1) * (w + 2)
    yb = (np.clip(y0 + 1, -1, h) + 1) * (w + 2)

    def tap(yi, xi):
        return flat[yi + xi].astype(np.float64)

    # Same association order as dlib: (1 - fy) * ((1 - fx) tl + fx tr) + fy * ((1 - fx) bl + fx br).
    out = (1.0 - fy) * ((1.0 - fx) * tap(ya, xa) + fx * tap(ya, xb)) + fy * (
        (1.0 - fx) * tap(yb, xa) + fx * tap(yb, xb)
    )
    if border == "strict":
        ok = (x0 >= 0) & (y0 >= 0) & (x0 + 1 < w) & (y0 + 1 < h)
        out[~ok] = 0.0
    if img.dtype == np.uint8 and rounding is not None:
        out = np.floor(out + 0.5) if rounding == "round" else np.floor(out)
        out = np.clip(out, 0, 255).astype(np.uint8)
    else:
        out = out.astype(np.float32)
    return out[..., 0] if squeeze else out


def warp_affine(
    image: np.ndarray,
    image_to_out: np.ndarray,
    out_size: int | Sequence[int],
    *,
    border: str = "constant",
    rounding: str | None = "round",
) -> np.ndarray:
    """Like OpenCV's ``warpAffine`` (bilinear, border 0): ``image_to_out`` maps image points to output points.

    Output pixel centre ``(c, r)`` takes the bilinear value of ``image`` at ``inverse(image_to_out) @ (c, r, 1)``.
    See :func:`sample_affine` for the arguments and the exact border/rounding rules.
    """
    return sample_affine(image, invert_affine(image_to_out), out_size, border=border, rounding=rounding)


@dataclasses.dataclass(frozen=True)
class DlibChipDetails:
    """dlib's ``chip_details``: the chip's rectangle in the image (before rotation), its angle and size.

    ``rect = (left, top, right, bottom)`` (float64, inclusive corners: width = right - left + 1), rotated by
    ``angle`` (radians) about its centre.
    """

    rect: tuple[float, float, float, float]
    angle: float
    rows: int
    cols: int


def dlib_chip_details(landmarks: np.ndarray, template: np.ndarray, size: int | Sequence[int]) -> DlibChipDetails:
    """``dlib::chip_details(chip_points, img_points, dims)``: Umeyama fit template -> image, keep its rotation and
    scale ``s``, centre a ``cols*s x rows*s`` rectangle on the image of the chip centre ``(cols / 2, rows / 2)``."""
    rows, cols = _out_hw(size)
    tform = umeyama(template, landmarks)  # chip -> image
    p = tform[:, :2] @ np.array([1.0, 0.0])
    angle = float(np.arctan2(p[1], p[0]))
    scale = float(np.hypot(p[0], p[1]))
    cx, cy = tform[:, :2] @ np.array([cols / 2.0, rows / 2.0]) + tform[:, 2]
    w, h = cols * scale - 1.0, rows * scale - 1.0  # dlib's centered_drect subtracts 1 from width/height
    return DlibChipDetails((cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2), angle, rows, cols)


def _rect_area(rect) -> float:
    l, t, r, b = rect
    return 0.0 if (t > b or l > r) else (r - l + 1.0) * (b - t + 1.0)


def _rect_down(rect):
    # dlib pyramid_down<2>::point_down(p) = p / 2 - (1.25, 0.75), applied to both corners.
    l, t, r, b = rect
    return (l / 2.0 - 1.25, t / 2.0 - 0.75, r / 2.0 - 1.25, b / 2.0 - 0.75)


def _rotated_corners(rect, angle):
    l, t, r, b = rect
    c = np.array([(l + r) / 2.0, (t + b) / 2.0])
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    corners = np.array([[l, t], [r, t], [l, b], [r, b]], dtype=np.float64)
    return (corners - c) @ rot.T + c  # tl, tr, bl, br


def _chip_grid(rect, angle, rows, cols) -> np.ndarray:
    """Chip pixel -> point in ``rect``'s frame: (0, 0), (cols-1, 0), (0, rows-1) -> rotated tl, tr, bl corners."""
    tl, tr, bl, _ = _rotated_corners(rect, angle)
    ax = (tr - tl) / (cols - 1.0) if cols > 1 else np.zeros(2)
    ay = (bl - tl) / (rows - 1.0) if rows > 1 else np.zeros(2)
    return np.stack([ax, ay, tl], axis=1)


def dlib_chip_matrix(landmarks: np.ndarray, template: np.ndarray, size: int | Sequence[int]) -> np.ndarray:
    """The ``[2, 3]`` matrix mapping chip pixel ``(c, r)`` to a full-resolution image point, as dlib's chips do.

    Rotation as the Umeyama fit template -> image; the corner pixels ``(0, 0)`` and ``(cols - 1, 0)`` land on
    rectangle corners ``cols * s - 1`` pixels apart, so the grid step is ``(cols * s - 1) / (cols - 1)``
    (slightly different from ``s``), centred on the image of the chip centre ``(cols / 2, rows / 2)``.
    (For faces larger than about twice the chip, dlib samples a pyramid level instead: see
    :func:`dlib_extract_chip`.)
    """
    d = dlib_chip_details(landmarks, template, size)
    return _chip_grid(d.rect, d.angle, d.rows, d.cols)


def pyramid_down2(image: np.ndarray) -> np.ndarray:
    """dlib's ``pyramid_down<2>`` on a uint8 image: separable 5-tap [1 4 6 4 1] filter, keep every other pixel.

    ``[H, W, C]`` -> ``[(H - 3) // 2, (W - 3) // 2, C]``; ``out[i, j] = floor(sum w_a w_b img[2i + a, 2j + b] / 256)``
    in exact integer arithmetic (dlib's RGB path); output pixel ``(j, i)`` sits near input point ``(2j + 2, 2i + 2)``.
    Images with 8 or fewer rows or columns give an empty result (as dlib).
    """
    img = np.asarray(image)
    squeeze = img.ndim == 2
    if squeeze:
        img = img[..., None]
    h, w = img.shape[:2]
    if h <= 8 or w <= 8:
        out = np.zeros((0, 0, img.shape[2]), np.uint8)
        return out[..., 0] if squeeze else out
    oh, ow = (h - 3) // 2, (w - 3) // 2
    x = img.astype(np.int32)
    wts = (1, 4, 6, 4, 1)
    tmp = sum(wt * x[:, j:j + 2 * ow:2] for j, wt in enumerate(wts))  # [h, ow]
    out = sum(wt * tmp[i:i + 2 * oh:2] for i, wt in enumerate(wts)) // 256  # [oh, ow]
    out = out.astype(np.uint8)
    return out[..., 0] if squeeze else out


def dlib_extract_chip(image: np.ndarray, details: DlibChipDetails) -> np.ndarray:
    """``dlib::extract_image_chip(img, details, chip)`` for one chip (bilinear): uint8 ``[rows, cols, C]``.

    Reproduces dlib's steps: crop the image to the chip's rotated rectangle grown by a margin, and when the
    rectangle is more than about twice the chip size, downsample the crop with :func:`pyramid_down2` as many
    times as dlib does and map the rectangle with dlib's ``rect_down``; then sample the chip grid bilinearly
    with dlib's strict border (all four neighbours inside, else 0) and truncate to uint8. (dlib's batch call
    ``extract_image_chips`` crops to the union of all chips of an image; this is the single-chip case, which is
    what ``get_face_chip`` and ``compute_face_descriptor`` with one face do.)
    """
    img = np.asarray(image)
    if img.ndim == 2:
        img = img[..., None]
    if img.dtype != np.uint8 or img.ndim != 3:
        raise ValueError(f"dlib_extract_chip: expected a uint8 [H, W, C] image, got {img.dtype} {img.shape}")
    h, w = img.shape[:2]
    rows, cols = details.rows, details.cols
    rect, angle, size = details.rect, details.angle, rows * cols
    # Depth of the pyramid and the margin of the crop (extract_image_chips' first loop).
    grow = 2.0
    rd = _rect_down(rect)
    while _rect_area(rd) > size:
        rd = _rect_down(rd)
        grow = grow * 2 + 2
    corners = _rotated_corners(rect, angle)
    gl, gt = corners.min(axis=0) - grow
    gr, gb = corners.max(axis=0) + grow
    gl, gt, gr, gb = max(gl, 0.0), max(gt, 0.0), min(gr, w - 1.0), min(gb, h - 1.0)
    if gl > gr or gt > gb:
        return np.zeros((rows, cols, img.shape[2]), np.uint8)  # the chip lies entirely outside the image

    def lround(v: float) -> int:  # std::lround: halves away from zero
        return int(np.sign(v) * np.floor(abs(v) + 0.5))

    bl_, bt_, br_, bb_ = lround(gl), lround(gt), lround(gr), lround(gb)
    crop = img[bt_:bb_ + 1, bl_:br_ + 1]
    if angle == 0 and rows == rect[3] - rect[1] + 1 and cols == rect[2] - rect[0] + 1:
        # dlib's plain-copy path (no rotation, no scaling): integer rectangle, zeros outside the image.
        l0, t0 = lround(rect[0]), lround(rect[1])
        out = np.zeros((rows, cols, img.shape[2]), np.uint8)
        ys, xs = np.arange(t0, t0 + rows), np.arange(l0, l0 + cols)
        iy, ix = (ys >= 0) & (ys < h), (xs >= 0) & (xs < w)
        out[np.ix_(iy, ix)] = img[np.ix_(ys[iy], xs[ix])]
        return out
    # Level selection (second loop of extract_image_chips), in the crop's frame.
    r_ = (rect[0] - bl_, rect[1] - bt_, rect[2] - bl_, rect[3] - bt_)
    src = crop
    while _rect_area(_rect_down(r_)) > size:
        r_ = _rect_down(r_)
        src = pyramid_down2(src)
    m = _chip_grid(r_, angle, rows, cols)
    return sample_affine(src, m, (rows, cols), border="strict", rounding="floor")


def alignment_matrix(landmarks5: np.ndarray, template: str | AlignTemplate, landmark_format: str = "arcface") -> np.ndarray:
    """The ``[2, 3]`` float64 chip-to-image matrix that :func:`align_face` samples with.

    Args:
      landmarks5: ``[5, 2]`` (x, y) image points.
      template: template name or :class:`AlignTemplate`.
      landmark_format: "arcface" (detector order: eyes, nose tip, mouth corners) or "dlib5" (dlib's 5-point
        shape-predictor order; only for "dlib" style templates).
    """
    t = get_template(template)
    lm = np.asarray(landmarks5, dtype=np.float64)
    if lm.shape != (5, 2):
        raise ValueError(f"align: landmarks must be [5, 2] (x, y), got shape {lm.shape}")
    if landmark_format not in ("arcface", "dlib5"):
        raise ValueError(f"align: landmark_format must be 'arcface' or 'dlib5', got {landmark_format!r}")
    if t.style == "dlib":
        if landmark_format == "dlib5":
            pts = dlib_chip_template(t.width, t.dlib_padding)
        else:
            pts = dlib_chip_template_arcface_order(t.width, t.dlib_padding)
        return dlib_chip_matrix(lm, pts, (t.height, t.width))
    if landmark_format != "arcface":
        raise ValueError(f"align: template {t.name!r} needs ArcFace-order landmarks, got landmark_format={landmark_format!r}")
    # insightface convention: estimate image -> template, sample with its inverse.
    return invert_affine(umeyama(lm, t.points))


def align_face(
    image: np.ndarray,
    landmarks5: np.ndarray,
    template: str | AlignTemplate = "arcface112",
    *,
    landmark_format: str = "arcface",
) -> np.ndarray:
    """Aligned face chip ``[h, w, C]`` uint8 from an ``[H, W, C]`` uint8 image and 5 landmarks.

    "arcface" style: constant border, round to nearest. "dlib" style: dlib's strict border and truncation
    (``dlib.get_face_chip`` equivalent for ``landmark_format="dlib5"``).
    """
    t = get_template(template)
    if t.style == "dlib":
        if np.asarray(image).dtype != np.uint8:
            raise ValueError(f"align_face: template {t.name!r} needs a uint8 image, got {np.asarray(image).dtype}")
        lm = np.asarray(landmarks5, dtype=np.float64)
        alignment_matrix(lm, t, landmark_format)  # validates shapes and format
        pts = (dlib_chip_template if landmark_format == "dlib5" else dlib_chip_template_arcface_order)(
            t.width, t.dlib_padding)
        return dlib_extract_chip(image, dlib_chip_details(lm, pts, (t.height, t.width)))
    m = alignment_matrix(landmarks5, t, landmark_format)
    return sample_affine(image, m, (t.height, t.width), border="constant", rounding="round")
