"""MTCNN face detection (P-Net -> R-Net -> O-Net) and detection + alignment, host-side orchestration.

The networks run as jitted Flax modules (``models/mtcnn.py``, weights from ``synleak-fetch-mtcnn``); the
pyramid, box bookkeeping and NMS run in numpy. The algorithm follows facenet-pytorch's ``detect_face``
step by step (the reference behaviour of the released weights):

1. Pyramid: scales ``m * factor**k`` with ``m = 12 / min_face_size`` while ``min(H, W) * scale >= 12``;
   each level is the image resized to ``(int(H*s + 1), int(W*s + 1))`` with area interpolation (PyTorch
   ``interpolate(mode="area")`` = adaptive average pooling; here from one exact integer integral image).
2. P-Net on every level (shapes bucketed to multiples of 32, the true size passed in so padding changes
   nothing); cells with face probability >= t0 give boxes ``floor((2*cell + 1) / s)``,
   ``floor((2*cell + 12) / s)``; NMS (IoU 0.5) per level, NMS (IoU 0.7) over all levels; box regression
   with the box width/height; boxes made square.
3. R-Net on 24x24 area-resampled crops of the squared boxes (crops clipped to the image, as
   facenet-pytorch does, then resized); keep probability > t1; NMS (IoU 0.7); regression (width + 1);
   square again.
4. O-Net on 48x48 crops; keep probability > t2; landmarks from the O-Net fractions of the box; regression;
   NMS with the "Min" overlap (intersection / smaller area, 0.7).

Defaults: ``min_face_size=20``, thresholds ``(0.6, 0.7, 0.7)``, ``factor=0.709``.

Outcomes for awkward inputs (never an exception for a valid array):
  * grayscale ``[H, W]`` / ``[H, W, 1]`` is replicated to RGB; RGBA drops alpha; float input is taken as
    [0, 255] values;
  * an image whose shorter side is below ``min_face_size`` (no pyramid level) or without a face gives an
    empty :class:`Detections` (``n == 0``); :func:`detect_and_align` then returns ``(None, info)`` with
    ``info.status`` "image_too_small" or "no_face".
  * a malformed array (wrong rank, 2 or > 4 channels, empty) raises ValueError naming the shape.
"""

from __future__ import annotations

import dataclasses
import threading
from typing import NamedTuple

import numpy as np

#: P-Net input sizes are padded up to a multiple of this (limits recompiles across image sizes).
PNET_BUCKET = 32
#: R-/O-Net crops are run in chunks of at most this many (see RO_BATCH_LADDER for the padding).
RO_MAX_BATCH = 512


@dataclasses.dataclass(frozen=True)
class DetectConfig:
    """MTCNN settings (facenet-pytorch defaults)."""

    min_face_size: float = 20.0
    thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7)
    factor: float = 0.709
    nms_level: float = 0.5  # P-Net, within one pyramid level (IoU)
    nms_pnet: float = 0.7  # P-Net, across levels (IoU)
    nms_rnet: float = 0.7  # after R-Net (IoU)
    nms_onet: float = 0.7  # after O-Net ("Min" overlap)


class Detections(NamedTuple):
    """Faces found in one image, in decreasing score order.

    boxes: float32 ``[n, 4]`` (x1, y1, x2, y2) in image pixels; scores: float32 ``[n]`` (O-Net face
    probability); landmarks: float32 ``[n, 5, 2]`` (x, y) for left eye, right eye, nose, left and right
    mouth corner (the subject's left/right as seen in the image: "left eye" has the smaller x).
    """

    boxes: np.ndarray
    scores: np.ndarray
    landmarks: np.ndarray

    def __len__(self) -> int:  # number of faces (a NamedTuple's own len would be 3)
        return int(self.scores.shape[0])

    @staticmethod
    def empty() -> "Detections":
        return Detections(np.zeros((0, 4), np.float32), np.zeros((0,), np.float32), np.zeros((0, 5, 2), np.float32))


@dataclasses.dataclass(frozen=True)
class DetectionInfo:
    """What :func:`detect_and_align` found. status: "ok", "no_face" or "image_too_small"."""

    status: str
    num_faces: int
    index: int | None = None  # index of the chosen face in the Detections
    box: np.ndarray | None = None
    score: float | None = None
    landmarks: np.ndarray | None = None


# --------------------------------------------------------------------------------------------------
# Input conversion and area resampling


def to_rgb_uint8(image: np.ndarray) -> np.ndarray:
    """Any ``[H, W]``, ``[H, W, 1]``, ``[H, W, 3]`` or ``[H, W, 4]`` image -> ``[H, W, 3]`` uint8 RGB."""
    a = np.asarray(image)
    if a.ndim == 2:
        a = a[:, :, None]
    if a.ndim != 3 or a.shape[2] not in (1, 3, 4):
        raise ValueError(f"detect: expected an image [H, W], [H, W, 1|3|4], got shape {a.shape}")
    if a.shape[0] == 0 or a.shape[1] == 0:
        raise ValueError(f"detect: empty image of shape {a.shape}")
    if a.dtype != np.uint8:
        if not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)):
            raise ValueError(f"detect: unsupported image dtype {a.dtype}")
        a = np.clip(np.rint(a.astype(np.float64)), 0, 255).astype(np.uint8)
    if a.shape[2] == 1:
        a = np.repeat(a, 3, axis=2)
    elif a.shape[2] == 4:
        a = a[:, :, :3]
    return np.ascontiguousarray(a)


def integral_image(rgb: np.ndarray) -> np.ndarray:
    """``[H, W, C]`` uint8 -> ``[H+1, W+1, C]`` integer integral image, ``ii[r, c] = sum(rgb[:r, :c])``.

    int32 while ``255 * H * W`` fits (exact and half the memory traffic of float64), int64 beyond.
    """
    h, w, c = rgb.shape
    dtype = np.int32 if 255 * h * w < 2**31 else np.int64
    ii = np.zeros((h + 1, w + 1, c), dtype)
    np.cumsum(rgb, axis=0, dtype=dtype, out=ii[1:, 1:])
    np.cumsum(ii[1:, 1:], axis=1, out=ii[1:, 1:])
    return ii


def resize_area(ii: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Whole-image area resampling (PyTorch ``interpolate(mode="area")``) from an integral image.

    Separable: whole rows of the integral image are differenced first (contiguous copies), then columns.
    Returns float32 ``[out_h, out_w, C]``.
    """
    rs, re = area_bounds(ii.shape[0] - 1, out_h)
    cs, ce = area_bounds(ii.shape[1] - 1, out_w)
    rows = ii[re] - ii[rs]  # [out_h, W+1, C]
    s = rows[:, ce] - rows[:, cs]  # [out_h, out_w, C]
    area = ((re - rs)[:, None] * (ce - cs)[None, :]).astype(np.float64)
    return (s / area[..., None]).astype(np.float32)


def area_bounds(n_in: int, n_out: int, start: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Adaptive-average-pool cell bounds: output i averages input ``[floor(i*n_in/n_out), ceil((i+1)*n_in/n_out))``."""
    i = np.arange(n_out, dtype=np.int64)
    return start + (i * n_in) // n_out, start - ((-(i + 1) * n_in) // n_out)


def area_resample(ii: np.ndarray, r0, r1, c0, c1, out_h: int, out_w: int) -> np.ndarray:
    """Area-resamples image rectangles (rows [r0, r1), cols [c0, c1)) to ``out_h x out_w``, float32.

    ``r0, r1, c0, c1`` are int arrays ``[n]`` (or scalars, giving one image); uses the integral image, so
    every crop costs O(out_h * out_w) whatever its size. Returns ``[n, out_h, out_w, C]``.
    """
    r0, r1, c0, c1 = (np.atleast_1d(np.asarray(v, np.int64)) for v in (r0, r1, c0, c1))
    i = np.arange(out_h, dtype=np.int64)[None, :]
    j = np.arange(out_w, dtype=np.int64)[None, :]
    hh, ww = (r1 - r0)[:, None], (c1 - c0)[:, None]
    rs, re = r0[:, None] + (i * hh) // out_h, r0[:, None] - ((-(i + 1) * hh) // out_h)
    cs, ce = c0[:, None] + (j * ww) // out_w, c0[:, None] - ((-(j + 1) * ww) // out_w)
    rs, re = rs[:, :, None], re[:, :, None]
    cs, ce = cs[:, None, :], ce[:, None, :]
    s = (ii[re, ce] - ii[rs, ce] - ii[re, cs] + ii[rs, cs]).astype(np.float64)
    area = ((re - rs) * (ce - cs)).astype(np.float64)
    return (s / area[..., None]).astype(np.float32)


# --------------------------------------------------------------------------------------------------
# NMS (numpy)


def nms(boxes: np.ndarray, scores: np.ndarray, threshold: float, method: str = "iou") -> np.ndarray:
    """Greedy non-maximum suppression; returns kept indices in decreasing score order.

    method "iou": torchvision semantics (area = (x2-x1)*(y2-y1), drop overlaps with IoU > threshold);
    method "min": MTCNN's "Min" (areas with +1, overlap = intersection / smaller area, drop > threshold).
    """
    n = boxes.shape[0]
    if n == 0:
        return np.zeros((0,), np.int64)
    b = boxes.astype(np.float64)
    x1, y1, x2, y2 = b[:, 0], b[:, 1], b[:, 2], b[:, 3]
    plus = 1.0 if method == "min" else 0.0
    area = (x2 - x1 + plus) * (y2 - y1 + plus)
    order = np.argsort(-scores.astype(np.float64), kind="stable")
    keep = []
    while order.size:
        i = order[0]
        keep.append(i)
        rest = order[1:]
        w = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + plus)
        h = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + plus)
        inter = w * h
        if method == "min":
            overlap = inter / np.minimum(area[i], area[rest])
        else:
            overlap = inter / (area[i] + area[rest] - inter)
        order = rest[~(overlap > threshold)]
    return np.asarray(keep, np.int64)


# --------------------------------------------------------------------------------------------------
# Box helpers (facenet-pytorch conventions)


def square(boxes: np.ndarray) -> np.ndarray:
    """Makes ``[n, >=4]`` boxes square around their centre (side = max(w, h), w = x2 - x1)."""
    out = boxes.copy()
    w, h = out[:, 2] - out[:, 0], out[:, 3] - out[:, 1]
    side = np.maximum(w, h)
    out[:, 0] = out[:, 0] + w * 0.5 - side * 0.5
    out[:, 1] = out[:, 1] + h * 0.5 - side * 0.5
    out[:, 2] = out[:, 0] + side
    out[:, 3] = out[:, 1] + side
    return out


def regress(boxes: np.ndarray, reg: np.ndarray) -> np.ndarray:
    """Box calibration after R-/O-Net: ``x1 += reg0 * (x2 - x1 + 1)`` etc."""
    out = boxes.copy()
    w = out[:, 2] - out[:, 0] + 1
    h = out[:, 3] - out[:, 1] + 1
    out[:, 0] += reg[:, 0] * w
    out[:, 1] += reg[:, 1] * h
    out[:, 2] += reg[:, 2] * w
    out[:, 3] += reg[:, 3] * h
    return out


def crop_windows(boxes: np.ndarray, width: int, height: int):
    """Integer crop windows ``rows [y-1, ey), cols [x-1, ex)`` of boxes truncated and clipped to the image.

    Returns ``(r0, r1, c0, c1, ok)``; ``ok`` is False for boxes with no pixel inside the image.
    """
    t = np.trunc(boxes[:, :4]).astype(np.int64)
    x, y, ex, ey = t[:, 0], t[:, 1], t[:, 2], t[:, 3]
    x, y = np.maximum(x, 1), np.maximum(y, 1)
    ex, ey = np.minimum(ex, width), np.minimum(ey, height)
    ok = (ey > y - 1) & (ex > x - 1)
    return y - 1, ey, x - 1, ex, ok


# --------------------------------------------------------------------------------------------------
# The detector


#: R-/O-Net batch sizes: a ~1.5x ladder (at most ~1.5x padding waste, few compiled shapes).
RO_BATCH_LADDER = (16, 32, 48, 64, 96, 128, 192, 256, 384, 512)


def _batch_bucket(n: int) -> int:
    for b in RO_BATCH_LADDER:
        if n <= b:
            return b
    return RO_BATCH_LADDER[-1]


class MTCNNDetector:
    """MTCNN with jitted networks. Thread-safe for concurrent calls; picklable (re-creates its jit state).

    Args:
      variables: ``{"pnet", "rnet", "onet"}`` Flax variables; default: ``load_mtcnn_variables()`` (cache).
      config: :class:`DetectConfig`.
    """

    def __init__(self, variables: dict | None = None, config: DetectConfig = DetectConfig()):
        if variables is None:
            from synleak_jax.weights.mtcnn_weights import load_mtcnn_variables

            variables = load_mtcnn_variables()
        self.variables = variables
        self.config = config
        self._build()

    def _build(self):
        import jax

        from synleak_jax.models import mtcnn
        from synleak_jax.models.layers import cpu_compiler_options

        # Full float32 precision: on GPUs the default may use TF32 for convolutions, which moves face
        # probabilities by ~1e-3 and can flip threshold decisions; these nets are tiny, so it costs little.
        def exact(fn):
            def wrapped(*args):
                with jax.default_matmul_precision("highest"):
                    return fn(*args)

            return jax.jit(wrapped, compiler_options=cpu_compiler_options())

        self._pnet = exact(lambda v, x, hw: mtcnn.PNet().apply(v, x, hw))
        self._rnet = exact(lambda v, x: mtcnn.RNet().apply(v, x))
        self._onet = exact(lambda v, x: mtcnn.ONet().apply(v, x))

    def __getstate__(self):
        import jax

        return {"variables": jax.tree_util.tree_map(np.asarray, self.variables), "config": self.config}

    def __setstate__(self, state):
        self.variables, self.config = state["variables"], state["config"]
        self._build()

    # -- stages -------------------------------------------------------------------------------------

    def scales(self, height: int, width: int) -> list[float]:
        cfg = self.config
        m = 12.0 / cfg.min_face_size
        minl = min(height, width) * m
        out, s = [], m
        while minl >= 12:
            out.append(s)
            s *= cfg.factor
            minl *= cfg.factor
        return out

    def _dispatch_pnet(self, level: np.ndarray):
        """Starts P-Net on one level (float32 [h, w, 3], normalised), padded to the size bucket."""
        h, w = level.shape[:2]
        hb = -(-h // PNET_BUCKET) * PNET_BUCKET
        wb = -(-w // PNET_BUCKET) * PNET_BUCKET
        x = np.zeros((1, hb, wb, 3), np.float32)
        x[0, :h, :w] = level
        return self._pnet(self.variables["pnet"], x, np.array([h, w], np.int32))

    @staticmethod
    def _collect_pnet(out, h: int, w: int):
        """-> (reg [h', w', 4], face prob [h', w']) cropped to the true output size of an h x w level."""
        reg, prob = out
        oh, ow = -(-(h - 2) // 2) - 4, -(-(w - 2) // 2) - 4
        return np.asarray(reg)[0, :oh, :ow], np.asarray(prob)[0, :oh, :ow, 1]

    def _run_batched(self, fn, variables, crops: np.ndarray):
        outs = []
        for s in range(0, crops.shape[0], RO_MAX_BATCH):
            chunk = crops[s:s + RO_MAX_BATCH]
            n = chunk.shape[0]
            padded = np.zeros((_batch_bucket(n),) + chunk.shape[1:], np.float32)
            padded[:n] = chunk
            outs.append([np.asarray(o)[:n] for o in fn(variables, padded)])
        return [np.concatenate(parts, axis=0) for parts in zip(*outs)]

    def detect(self, image: np.ndarray) -> Detections:
        """Faces in one image (any size; see the module docstring for the accepted forms)."""
        from synleak_jax.models.mtcnn import PIXEL_MEAN, PIXEL_SCALE

        rgb = to_rgb_uint8(image)
        height, width = rgb.shape[:2]
        scales = self.scales(height, width)
        if not scales:
            return Detections.empty()
        cfg = self.config
        ii = integral_image(rgb)
        norm = lambda a: (a - np.float32(PIXEL_MEAN)) * np.float32(PIXEL_SCALE)

        # Stage 1: P-Net over the pyramid. All levels are dispatched before any result is read, so the
        # host resamples level k+1 while the device (or XLA's CPU threads) runs P-Net on level k.
        pending = []
        for s in scales:
            hs, ws = int(height * s + 1), int(width * s + 1)
            pending.append((s, hs, ws, self._dispatch_pnet(norm(resize_area(ii, hs, ws)))))
        cands = []
        for s, hs, ws, out in pending:
            reg, prob = self._collect_pnet(out, hs, ws)
            ys, xs = np.nonzero(prob >= cfg.thresholds[0])
            if ys.size == 0:
                continue
            s32 = np.float32(s)
            bx = np.stack([xs, ys], 1).astype(np.float32)
            q1 = np.floor((2 * bx + 1) / s32)
            q2 = np.floor((2 * bx + 12) / s32)
            boxes = np.concatenate([q1, q2, prob[ys, xs, None], reg[ys, xs]], axis=1).astype(np.float32)
            cands.append(boxes[nms(boxes[:, :4], boxes[:, 4], cfg.nms_level)])
        if not cands:
            return Detections.empty()
        boxes = np.concatenate(cands, 0)
        boxes = boxes[nms(boxes[:, :4], boxes[:, 4], cfg.nms_pnet)]
        w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
        boxes = np.stack([boxes[:, 0] + boxes[:, 5] * w, boxes[:, 1] + boxes[:, 6] * h,
                          boxes[:, 2] + boxes[:, 7] * w, boxes[:, 3] + boxes[:, 8] * h, boxes[:, 4]], 1)
        boxes = square(boxes)

        # Stage 2: R-Net.
        boxes, crops = self._crops(ii, boxes, width, height, 24)
        if boxes.shape[0] == 0:
            return Detections.empty()
        reg, prob = self._run_batched(self._rnet, self.variables["rnet"], norm(crops))
        keep = prob[:, 1] > cfg.thresholds[1]
        boxes = np.concatenate([boxes[keep, :4], prob[keep, 1:2]], 1)
        reg = reg[keep]
        pick = nms(boxes[:, :4], boxes[:, 4], cfg.nms_rnet)
        boxes = square(regress(boxes[pick], reg[pick]))
        if boxes.shape[0] == 0:
            return Detections.empty()

        # Stage 3: O-Net.
        boxes, crops = self._crops(ii, boxes, width, height, 48)
        if boxes.shape[0] == 0:
            return Detections.empty()
        reg, lm, prob = self._run_batched(self._onet, self.variables["onet"], norm(crops))
        keep = prob[:, 1] > cfg.thresholds[2]
        boxes = np.concatenate([boxes[keep, :4], prob[keep, 1:2]], 1)
        reg, lm = reg[keep], lm[keep]
        bw = boxes[:, 2] - boxes[:, 0] + 1
        bh = boxes[:, 3] - boxes[:, 1] + 1
        px = bw[:, None] * lm[:, :5] + boxes[:, 0:1] - 1
        py = bh[:, None] * lm[:, 5:] + boxes[:, 1:2] - 1
        points = np.stack([px, py], axis=-1)
        boxes = regress(boxes, reg)
        pick = nms(boxes[:, :4], boxes[:, 4], cfg.nms_onet, method="min")
        boxes, points = boxes[pick], points[pick]
        return Detections(boxes[:, :4].astype(np.float32), boxes[:, 4].astype(np.float32), points.astype(np.float32))

    def _crops(self, ii, boxes, width, height, size):
        r0, r1, c0, c1, ok = crop_windows(boxes, width, height)
        boxes = boxes[ok]
        if boxes.shape[0] == 0:
            return boxes, np.zeros((0, size, size, 3), np.float32)
        return boxes, area_resample(ii, r0[ok], r1[ok], c0[ok], c1[ok], size, size)

    def __call__(self, image: np.ndarray) -> Detections:
        return self.detect(image)


_DEFAULT: MTCNNDetector | None = None
_DEFAULT_LOCK = threading.Lock()


def default_detector() -> MTCNNDetector:
    """The process-wide detector with the cached released weights and default settings."""
    global _DEFAULT
    with _DEFAULT_LOCK:
        if _DEFAULT is None:
            _DEFAULT = MTCNNDetector()
        return _DEFAULT


def detect_faces(image: np.ndarray, detector: MTCNNDetector | None = None) -> Detections:
    """MTCNN faces of one image: ``Detections(boxes [n, 4], scores [n], landmarks [n, 5, 2])``."""
    return (detector or default_detector()).detect(image)


# --------------------------------------------------------------------------------------------------
# Detection + alignment


def _select(det: Detections, policy: str) -> int:
    if policy == "best":
        return int(np.argmax(det.scores))
    if policy == "largest":
        area = (det.boxes[:, 2] - det.boxes[:, 0]) * (det.boxes[:, 3] - det.boxes[:, 1])
        return int(np.argmax(area))
    raise ValueError(f"detect_and_align: policy must be 'largest' or 'best', got {policy!r}")


def template_name(spec_or_template) -> str:
    """Alignment template name of an InputSpec (its ``alignment``) or of a name/AlignTemplate."""
    if hasattr(spec_or_template, "alignment"):
        return spec_or_template.alignment
    if hasattr(spec_or_template, "name") and hasattr(spec_or_template, "points"):
        return spec_or_template
    return str(spec_or_template)


def facenet_crop(rgb: np.ndarray, box: np.ndarray, size: int = 160, margin: float = 0.0) -> np.ndarray:
    """facenet-pytorch's crop for FaceNet (no landmark alignment): the box plus ``margin`` (pixels of the
    output), clipped to the image, area-resampled to ``size x size`` and truncated to uint8."""
    h, w = rgb.shape[:2]
    mx = margin * (box[2] - box[0]) / (size - margin)
    my = margin * (box[3] - box[1]) / (size - margin)
    x0, y0 = int(max(box[0] - mx / 2, 0)), int(max(box[1] - my / 2, 0))
    x1, y1 = int(min(box[2] + mx / 2, w)), int(min(box[3] + my / 2, h))
    if x1 <= x0 or y1 <= y0:
        return None
    out = area_resample(integral_image(rgb), y0, y1, x0, x1, size, size)[0]
    return np.clip(out, 0, 255).astype(np.uint8)


def detect_and_align(
    image: np.ndarray,
    spec_or_template="arcface112",
    policy: str = "largest",
    detector: MTCNNDetector | None = None,
) -> tuple[np.ndarray | None, DetectionInfo]:
    """Detects faces, picks one (``policy`` "largest" box area or "best" score) and aligns it.

    Args:
      image: any image :func:`to_rgb_uint8` accepts.
      spec_or_template: a registry ``InputSpec`` (its ``alignment`` is used), a template name of
        ``data.align`` ("arcface112", "arcface112x96", "dlib150", "arcface<S>"), an ``AlignTemplate``, or
        "facenet160" (facenet-pytorch's box crop resized to 160, no landmark alignment).
      policy: "largest" or "best".

    Returns:
      ``(chip, info)``: chip uint8 ``[h, w, 3]`` RGB or None when no face was found (``info.status``
      says why).
    """
    if policy not in ("largest", "best"):
        raise ValueError(f"detect_and_align: policy must be 'largest' or 'best', got {policy!r}")
    rgb = to_rgb_uint8(image)
    det = detect_faces(rgb, detector)
    if len(det) == 0:
        too_small = min(rgb.shape[:2]) < (detector or default_detector()).config.min_face_size
        return None, DetectionInfo("image_too_small" if too_small else "no_face", 0)
    i = _select(det, policy)
    info = DetectionInfo("ok", len(det), i, det.boxes[i].copy(), float(det.scores[i]), det.landmarks[i].copy())
    name = template_name(spec_or_template)
    if isinstance(name, str) and name.startswith("facenet"):
        size = int(name[len("facenet"):] or 160)
        chip = facenet_crop(rgb, det.boxes[i], size)
        if chip is None:
            return None, dataclasses.replace(info, status="no_face")
        return chip, info
    from synleak_jax.data import align

    chip = align.align_face(rgb, det.landmarks[i].astype(np.float64), name)
    return chip, info


class DetectAlign:
    """Picklable ``align_fn`` for ``data.pipeline``: ``rgb -> chip or None`` (None = reject "no face").

    The detector is created lazily in each worker process from the local weight cache.
    """

    def __init__(self, spec_or_template="arcface112", policy: str = "largest", config: DetectConfig = DetectConfig()):
        from synleak_jax.weights import mtcnn_weights

        if policy not in ("largest", "best"):
            raise ValueError(f"DetectAlign: policy must be 'largest' or 'best', got {policy!r}")
        # Fail here, in the launching process, rather than turning every record into an ALIGN_FAILED
        # reject inside the workers when the weights were never fetched.
        ok, why = mtcnn_weights.cache_is_valid()
        if not ok:
            raise FileNotFoundError(f"MTCNN weights unavailable ({why}); {mtcnn_weights.FETCH_HINT}")
        self.template = template_name(spec_or_template)
        self.policy = policy
        self.config = config
        self._detector = None

    def describe(self) -> dict:
        """JSON-able description for manifests: detector settings, template, policy, weight hashes."""
        from synleak_jax.weights import mtcnn_weights

        template = self.template if isinstance(self.template, str) else self.template.name
        return {"detector": "mtcnn", "config": dataclasses.asdict(self.config), "template": template,
                "policy": self.policy, "weights_sha256": mtcnn_weights.read_manifest().get("sha256", {})}

    def __getstate__(self):
        return {"template": self.template, "policy": self.policy, "config": self.config}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._detector = None

    def __call__(self, rgb: np.ndarray) -> np.ndarray | None:
        if self._detector is None:
            self._detector = MTCNNDetector(config=self.config)
        chip, _ = detect_and_align(rgb, self.template, self.policy, self._detector)
        return chip
