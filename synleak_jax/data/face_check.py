"""Face check: are the images of a dataset faces, aligned the way the matcher expects?

An audit embeds whatever it is given; cat photos embedded by a face matcher still produce scores, and a report
of "leakage" among them would mean nothing. :func:`check_faces` looks at a seeded random sample of a source
with MTCNN (:mod:`synleak_jax.data.detect`) and measures, per image, where the face's five landmarks fall in
the matcher's aligned frame (:mod:`synleak_jax.data.align` template).

Definition (per sampled image):

* **aligned crops** (``aligned=True``, a dataset used with ``align=none``: the pipeline only resizes each image
  to the template's size): the image is resized exactly as the pipeline does (``read_rgb(i, size=(h, w))``),
  padded by ``pad_fraction`` of its larger side with flat grey (MTCNN misplaces landmarks of faces that touch
  the image border: on a 112x96 ArcFace chip of skimage's astronaut the mean error drops from 0.39 to 0.12 IOD
  with the padding), and searched for faces. The image is **ok** when exactly one detected face has its
  landmarks within ``tolerance`` of the template: landmark error = mean over the 5 points of the distance
  between the detected point and the template point, divided by the template's inter-ocular distance (IOD,
  the distance between its two eye points: 35.2 px at arcface112, 79.4 px at dlib150).
* **unaligned images** (``aligned=False``, ``align=mtcnn``: the pipeline detects and aligns): the face the
  pipeline would take (largest box) is mapped into the template frame by the least-squares similarity
  (Umeyama, what the alignment does) and the **residual** error, same units, must be within ``tolerance``:
  a face is found and its five points form a face the template can be fitted to.
* Templates without landmarks (``facenet160``: a box crop) are checked the unaligned way against
  ``arcface112`` (is it a face at all), whatever ``aligned`` says.

Outcomes: "ok", "off_template" (faces, none near the template), "several_faces" (aligned crops: more than one
face near the template), "no_face", "image_too_small", "unreadable". Shares are over the readable images.
The verdict is "ok" when the ok share is at least ``ok_share``, "warn" from ``warn_share``, "fail" below
(or when no image could be read).

Measured (docs/cli.md has the table and the command): correctly aligned chips (skimage's astronaut and LFW
faces detected and aligned with MTCNN) have errors ~0.1-0.2 IOD; the raw 25x25 LFW crops of
``skimage.data.lfw_subset()``, upscaled, are faces but not ArcFace-aligned (median 0.38 IOD vs arcface112,
0.22 vs dlib150); an unaligned 512x512 photo given as an aligned crop scores 1.3 IOD; coffee, chelsea (a cat),
rocket and lfw_subset's 100 non-face patches give no face at all. The default tolerance 0.35 IOD sits between
the aligned population and the misaligned one.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import numpy as np

from synleak_jax.data import align, detect, rejects
from synleak_jax.progress import Progress


class FaceCheckError(ValueError):
    """A dataset failed the face check where faces are required (``require_faces``)."""


@dataclasses.dataclass(frozen=True)
class FaceCheckConfig:
    """Settings of :func:`check_faces`.

    sample_size: images drawn (without replacement; all of them if the source is smaller).
    seed: seed of the sample (same seed + same source = same images).
    tolerance: largest mean landmark error counted as near the template, in units of the template's
      inter-ocular distance.
    ok_share, warn_share: verdict "ok" at an ok share >= ok_share, "warn" >= warn_share, else "fail".
    pad_fraction: grey border added around aligned crops before detection, as a fraction of the larger side.
    policy: which face of an unaligned image is checked ("largest" or "best"), as the pipeline's ``align_policy``.
    """

    sample_size: int = 32
    seed: int = 0
    tolerance: float = 0.35
    ok_share: float = 0.8
    warn_share: float = 0.5
    pad_fraction: float = 0.25
    policy: str = "largest"

    def __post_init__(self):
        if self.sample_size < 1:
            raise ValueError(f"face check: sample_size must be >= 1, got {self.sample_size}")
        if not self.tolerance > 0:
            raise ValueError(f"face check: tolerance must be > 0, got {self.tolerance}")
        if not 0 <= self.warn_share <= self.ok_share <= 1:
            raise ValueError(f"face check: need 0 <= warn_share <= ok_share <= 1, got {self.warn_share}, "
                             f"{self.ok_share}")
        if self.pad_fraction < 0:
            raise ValueError(f"face check: pad_fraction must be >= 0, got {self.pad_fraction}")
        if self.policy not in ("largest", "best"):
            raise ValueError(f"face check: policy must be 'largest' or 'best', got {self.policy!r}")


@dataclasses.dataclass(frozen=True)
class ImageOutcome:
    """One sampled image: record id, where it lives, outcome, faces detected, the landmark error of the face
    judged (IOD units; None without a face) and its detector score."""

    record_id: int
    where: str
    status: str
    num_faces: int
    error: float | None = None
    score: float | None = None


@dataclasses.dataclass(frozen=True)
class FaceCheckResult:
    """What :func:`check_faces` measured (shares over the readable sampled images)."""

    template: str
    aligned: bool
    population: int
    outcomes: tuple[ImageOutcome, ...]
    config: FaceCheckConfig
    seconds: float

    @property
    def sample_size(self) -> int:
        return len(self.outcomes)

    @property
    def readable(self) -> int:
        return sum(o.status != "unreadable" for o in self.outcomes)

    @property
    def faces_found(self) -> int:
        return sum(o.num_faces > 0 for o in self.outcomes)

    @property
    def near_template(self) -> int:
        return sum(o.status == "ok" for o in self.outcomes)

    @property
    def faces_found_share(self) -> float:
        return self.faces_found / self.readable if self.readable else 0.0

    @property
    def near_template_share(self) -> float:
        return self.near_template / self.readable if self.readable else 0.0

    @property
    def verdict(self) -> str:
        if not self.readable:
            return "fail"
        share = self.near_template_share
        return "ok" if share >= self.config.ok_share else "warn" if share >= self.config.warn_share else "fail"

    @property
    def seconds_per_image(self) -> float:
        return self.seconds / max(1, self.sample_size)

    def counts(self) -> dict[str, int]:
        """Number of sampled images per outcome."""
        out: dict[str, int] = {}
        for o in self.outcomes:
            out[o.status] = out.get(o.status, 0) + 1
        return out

    def summary(self) -> str:
        """One line: verdict, shares, template, tolerance."""
        how = "aligned crops" if self.aligned else "detect + align"
        return (f"face check {self.verdict}: faces in {self.faces_found}/{self.readable} sampled images "
                f"({self.faces_found_share:.0%}), {self.near_template}/{self.readable} near the {self.template} "
                f"template ({self.near_template_share:.0%}; {how}, tolerance {self.config.tolerance:g} IOD)")

    def to_dict(self) -> dict[str, Any]:
        """JSON-able record for reports (per-image outcomes included)."""
        return {"verdict": self.verdict, "template": self.template, "aligned": self.aligned,
                "population": self.population, "sample_size": self.sample_size, "readable": self.readable,
                "faces_found": self.faces_found, "faces_found_share": self.faces_found_share,
                "near_template": self.near_template, "near_template_share": self.near_template_share,
                "counts": self.counts(), "seconds": self.seconds, "config": dataclasses.asdict(self.config),
                "outcomes": [dataclasses.asdict(o) for o in self.outcomes]}

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> "FaceCheckResult":
        """The result :meth:`to_dict` wrote (the derived counts and shares are recomputed, not read)."""
        return cls(template=str(record["template"]), aligned=bool(record["aligned"]),
                   population=int(record["population"]),
                   outcomes=tuple(ImageOutcome(**o) for o in record["outcomes"]),
                   config=FaceCheckConfig(**record["config"]), seconds=float(record["seconds"]))


def sample_ids(population: int, sample_size: int, seed: int) -> np.ndarray:
    """Sorted record ids of the seeded sample: ``min(sample_size, population)`` distinct ids, int64."""
    if population <= sample_size:
        return np.arange(population, dtype=np.int64)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(population, size=sample_size, replace=False)).astype(np.int64)


def inter_ocular(template: align.AlignTemplate) -> float:
    """Distance between the template's two eye points (pixels of the chip)."""
    return float(np.linalg.norm(template.points[1] - template.points[0]))


def aligned_errors(landmarks: np.ndarray, template: align.AlignTemplate) -> np.ndarray:
    """Mean landmark error of each face ``[n, 5, 2]`` (chip pixels) vs the template, in IOD units: ``[n]``."""
    lm = np.asarray(landmarks, np.float64).reshape(-1, 5, 2)
    return np.linalg.norm(lm - template.points[None], axis=2).mean(axis=1) / inter_ocular(template)


def fit_residual(landmarks: np.ndarray, template: align.AlignTemplate) -> float:
    """Mean error, in IOD units, of 5 image landmarks mapped into the template frame by their least-squares
    similarity (the alignment's own fit): 0 for a face exactly shaped like the template."""
    lm = np.asarray(landmarks, np.float64).reshape(5, 2)
    mapped = align.apply_affine(align.umeyama(lm, template.points), lm)
    return float(np.linalg.norm(mapped - template.points, axis=1).mean() / inter_ocular(template))


def _template(spec_or_template) -> tuple[align.AlignTemplate, bool]:
    """(template, has_landmarks): facenet box crops have none and are checked against arcface112."""
    name = detect.template_name(spec_or_template)
    if isinstance(name, str) and name.startswith("facenet"):
        return align.get_template("arcface112"), False
    return align.get_template(name), True


def _check_aligned(rgb: np.ndarray, template: align.AlignTemplate, config: FaceCheckConfig,
                   detector: detect.MTCNNDetector) -> tuple[str, int, float | None, float | None]:
    pad = int(round(config.pad_fraction * max(rgb.shape[:2])))
    padded = np.pad(rgb, ((pad, pad), (pad, pad), (0, 0)), constant_values=127) if pad else rgb
    found = detector.detect(padded)
    if len(found) == 0:
        return "no_face", 0, None, None
    errors = aligned_errors(found.landmarks - pad, template)
    best = int(np.argmin(errors))
    near = int(np.sum(errors <= config.tolerance))
    status = "ok" if near == 1 else "several_faces" if near > 1 else "off_template"
    return status, len(found), float(errors[best]), float(found.scores[best])


def _check_unaligned(rgb: np.ndarray, template: align.AlignTemplate, config: FaceCheckConfig,
                     detector: detect.MTCNNDetector) -> tuple[str, int, float | None, float | None]:
    found = detector.detect(rgb)
    if len(found) == 0:
        small = min(rgb.shape[:2]) < detector.config.min_face_size
        return ("image_too_small" if small else "no_face"), 0, None, None
    if config.policy == "best":
        chosen = int(np.argmax(found.scores))
    else:
        area = (found.boxes[:, 2] - found.boxes[:, 0]) * (found.boxes[:, 3] - found.boxes[:, 1])
        chosen = int(np.argmax(area))
    error = fit_residual(found.landmarks[chosen], template)
    status = "ok" if error <= config.tolerance else "off_template"
    return status, len(found), error, float(found.scores[chosen])


def check_faces(source, spec_or_template="arcface112", *, aligned: bool, config: FaceCheckConfig = FaceCheckConfig(),
                detector: detect.MTCNNDetector | None = None, progress_every_s: float = 10.0) -> FaceCheckResult:
    """Runs the face check on a seeded sample of ``source``.

    Args:
      source: a data source (``len``, ``read_rgb(i, size=...)``, ``describe(i)``: ``synleak_jax.data.sources``).
      spec_or_template: the matcher's ``InputSpec`` (its ``alignment``), a template name or an ``AlignTemplate``.
      aligned: True for already-aligned crops (``align=none``), False for images the pipeline detects and
        aligns (``align=mtcnn``).
      config: :class:`FaceCheckConfig`.
      detector: an MTCNN detector (default: the process-wide one over the cached weights; FileNotFoundError
        with the fetch hint if ``synleak-fetch-mtcnn`` never ran).
      progress_every_s: seconds between progress lines (images/s, ETA); a check shorter than this logs none.

    Returns:
      :class:`FaceCheckResult` (per-image outcomes, shares, verdict, seconds spent).
    """
    template, has_landmarks = _template(spec_or_template)
    detector = detector or detect.default_detector()
    check_as_aligned = aligned and has_landmarks
    ids = sample_ids(len(source), config.sample_size, config.seed)
    outcomes = []
    start = time.perf_counter()

    progress = Progress(len(ids), progress_every_s, f"face check vs {template.name}", unit="images", scope="")
    for record_id in ids:
        if outcomes:  # the previous image is judged
            progress.update(1)
        record_id = int(record_id)
        try:
            where = source.describe(record_id)
        except Exception:  # describing must never stop the check
            where = f"record {record_id}"
        try:
            if check_as_aligned:
                rgb = source.read_rgb(record_id, size=(template.height, template.width))
            else:
                rgb = source.read_rgb(record_id)
        except (rejects.RecordError, OSError):
            outcomes.append(ImageOutcome(record_id, where, "unreadable", 0))
            continue
        rgb = detect.to_rgb_uint8(rgb)
        if check_as_aligned:
            status, faces, error, score = _check_aligned(rgb, template, config, detector)
        else:
            status, faces, error, score = _check_unaligned(rgb, template, config, detector)
        outcomes.append(ImageOutcome(record_id, where, status, faces, error, score))
    return FaceCheckResult(template.name, check_as_aligned, len(source), tuple(outcomes), config,
                           time.perf_counter() - start)


def format_warning(result: FaceCheckResult, label: str) -> str | None:
    """A loud multi-line terminal warning for a "warn" or "fail" result (None for "ok").

    ``label`` names the dataset, e.g. ``"synthetic (/data/dcface)"``.
    """
    if result.verdict == "ok":
        return None
    bar = "!" * 100
    lines = [f"FACE CHECK {result.verdict.upper()} for {label}: {result.summary()}"]
    counts = ", ".join(f"{k} {v}" for k, v in sorted(result.counts().items()))
    lines.append(f"outcomes of the {result.sample_size} sampled images: {counts}")
    if result.faces_found_share < result.config.warn_share:
        lines.append("MTCNN finds no face in most of these images: they may not be faces at all, and an identity "
                     "leakage audit of them measures nothing.")
    elif result.aligned:
        lines.append(f"Faces are found but not where the matcher's {result.template} template expects them: if these "
                     "are unaligned photos, set align=mtcnn for this dataset (detect + align); if they are aligned "
                     "to another template, scores will be degraded.")
    else:
        lines.append("Faces are found but their landmarks do not fit a face template: check the images.")
    examples = [o for o in result.outcomes if o.status != "ok"][:3]
    if examples:
        lines.append("for example: " + "; ".join(f"{o.where} ({o.status})" for o in examples))
    return "\n".join([bar, *(f"!! {line}" for line in lines), bar])


def require_faces(result: FaceCheckResult, label: str, flag: str) -> None:
    """Raises :class:`FaceCheckError` (one line naming ``flag``) unless the verdict is "ok"."""
    if result.verdict != "ok":
        raise FaceCheckError(f"{label}: {result.summary()}; {flag}=true makes this fatal (set it to false to "
                             "audit anyway)")
