"""Face check (synleak_jax/data/face_check.py): faces the project can make pass, non-faces fail, and the landmark
error is what its definition says (checked against independent numpy computations).

MTCNN runs with the cached released weights (``synleak-fetch-mtcnn``), like tests/data/test_detect.py. Measured
shares over larger sets are in docs/cli.md (scripts/measure_face_check.py).
"""

from __future__ import annotations

import json
import io
import os

import numpy as np
import pytest
from PIL import Image

from synleak_jax.data import align, detect, face_check
from synleak_jax.data.sources import ArraySource, FlatFolderSource
from tests.data.detect_fixtures import detector  # noqa: F401  (fixture)

skimage_data = pytest.importorskip("skimage.data")


def _png(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


def _source(images, name="test") -> ArraySource:
    return ArraySource([_png(np.asarray(im)) for im in images], name=name)


def _gray_to_rgb(x: np.ndarray) -> np.ndarray:
    return np.repeat(np.round(x * 255).clip(0, 255).astype(np.uint8)[..., None], 3, axis=2)


@pytest.fixture(scope="module")
def lfw():
    return skimage_data.lfw_subset()


@pytest.fixture(scope="module")
def astronaut():
    return skimage_data.astronaut()


# ------------------------------------------------------------------------------------------------------------
# The error metric against independent computations


def _similarity_lstsq(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity src -> dst by a linear solve of x' = a x - b y + tx, y' = b x + a y + ty
    (an independent reference for align.umeyama, which uses the SVD)."""
    rows, rhs = [], []
    for (x, y), (u, v) in zip(src, dst):
        rows += [[x, -y, 1, 0], [y, x, 0, 1]]
        rhs += [u, v]
    a, b, tx, ty = np.linalg.lstsq(np.asarray(rows, float), np.asarray(rhs, float), rcond=None)[0]
    return np.array([[a, -b, tx], [b, a, ty]])


def test_fit_residual_matches_an_independent_least_squares_fit(rng):
    template = align.get_template("arcface112")
    iod = np.hypot(*(template.points[1] - template.points[0]))
    for _ in range(20):
        angle, scale = rng.uniform(-1.0, 1.0), rng.uniform(0.3, 4.0)
        rot = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
        image_points = template.points @ rot.T + rng.uniform(-300, 300, 2)
        # an exact similarity image of the template fits with no residual
        assert face_check.fit_residual(image_points, template) < 1e-9
        noisy = image_points + rng.normal(0, 4.0, (5, 2))
        m = _similarity_lstsq(noisy, template.points)
        want = np.mean(np.hypot(*(noisy @ m[:, :2].T + m[:, 2] - template.points).T)) / iod
        assert face_check.fit_residual(noisy, template) == pytest.approx(want, rel=1e-9)


def test_aligned_errors_are_mean_point_distance_over_inter_ocular(rng):
    template = align.get_template("dlib150")
    faces = template.points[None] + rng.normal(0, 6.0, (4, 5, 2))
    iod = float(np.sqrt(np.sum((template.points[1] - template.points[0]) ** 2)))
    want = [np.mean([np.sqrt(np.sum((f[k] - template.points[k]) ** 2)) for k in range(5)]) / iod for f in faces]
    np.testing.assert_allclose(face_check.aligned_errors(faces, template), want, rtol=1e-12)
    assert face_check.inter_ocular(align.get_template("arcface112")) == pytest.approx(35.2372, abs=1e-3)


def test_sample_is_seeded_distinct_and_bounded():
    a = face_check.sample_ids(10_000, 32, seed=3)
    assert len(a) == 32 and len(set(a.tolist())) == 32 and np.all(np.diff(a) > 0) and a.max() < 10_000
    np.testing.assert_array_equal(a, face_check.sample_ids(10_000, 32, seed=3))
    assert not np.array_equal(a, face_check.sample_ids(10_000, 32, seed=4))
    np.testing.assert_array_equal(face_check.sample_ids(5, 32, seed=0), np.arange(5))


def test_config_is_validated():
    with pytest.raises(ValueError, match="sample_size"):
        face_check.FaceCheckConfig(sample_size=0)
    with pytest.raises(ValueError, match="warn_share <= ok_share"):
        face_check.FaceCheckConfig(ok_share=0.4, warn_share=0.6)
    with pytest.raises(ValueError, match="tolerance"):
        face_check.FaceCheckConfig(tolerance=0)


# ------------------------------------------------------------------------------------------------------------
# Faces pass


def test_astronaut_photo_and_its_aligned_chips_pass(detector, astronaut):  # noqa: F811
    photo = face_check.check_faces(_source([astronaut]), "arcface112", aligned=False, detector=detector)
    assert photo.verdict == "ok" and photo.outcomes[0].status == "ok" and photo.outcomes[0].num_faces == 1
    for template in ("arcface112", "arcface112x96", "dlib150"):
        chip, info = detect.detect_and_align(astronaut, template, detector=detector)
        result = face_check.check_faces(_source([chip, chip[:, ::-1]]), template, aligned=True, detector=detector)
        assert result.verdict == "ok", (template, result.summary())
        assert all(o.error < 0.2 for o in result.outcomes), (template, result.outcomes)
    spec = type("Spec", (), {"alignment": "arcface112"})()  # an InputSpec-like object: its alignment is used
    assert face_check.check_faces(_source([chip]), spec, aligned=True, detector=detector).template == "arcface112"


def test_lfw_faces_pass_as_photos_and_as_mtcnn_aligned_chips(detector, lfw):  # noqa: F811
    faces = [_gray_to_rgb(x) for x in lfw[:100:6]]  # 17 of the 100 faces
    canvases = []
    for face in faces:
        canvas = np.full((400, 400, 3), 110, np.uint8)
        canvas[75:325, 75:325] = np.asarray(Image.fromarray(face).resize((250, 250), Image.BICUBIC))
        canvases.append(canvas)
    photos = face_check.check_faces(_source(canvases), "arcface112", aligned=False, detector=detector)
    assert photos.verdict == "ok" and photos.faces_found_share == 1.0 and photos.near_template_share >= 0.9
    chips = [detect.detect_and_align(c, "arcface112", detector=detector)[0] for c in canvases]
    aligned = face_check.check_faces(_source([c for c in chips if c is not None]), "arcface112", aligned=True,
                                     detector=detector)
    assert aligned.verdict == "ok" and aligned.near_template_share >= 0.9, aligned.summary()


def test_raw_lfw_crops_fit_dlibs_chip_not_arcfaces(detector, lfw):  # noqa: F811
    # lfw_subset's 25x25 crops (the demo's members) are faces framed roughly like dlib's chip, not like ArcFace's
    crops = _source([_gray_to_rgb(x) for x in lfw[:100]])
    config = face_check.FaceCheckConfig(sample_size=32, seed=0)
    dlib = face_check.check_faces(crops, "dlib150", aligned=True, config=config, detector=detector)
    arcface = face_check.check_faces(crops, "arcface112", aligned=True, config=config, detector=detector)
    assert dlib.faces_found_share >= 0.95 and arcface.faces_found_share >= 0.95
    assert dlib.verdict in ("ok", "warn") and dlib.near_template_share >= 0.7, dlib.summary()
    assert arcface.near_template_share < dlib.near_template_share
    assert face_check.format_warning(arcface, "members") is not None
    # the stage cache's round trip (a rerun's audit reuses the check): the same result, verdict and warning
    for result in (dlib, arcface):
        back = face_check.FaceCheckResult.from_dict(json.loads(json.dumps(result.to_dict())))
        assert back == result and back.to_dict() == result.to_dict()
        assert face_check.format_warning(back, "members") == face_check.format_warning(result, "members")


# ------------------------------------------------------------------------------------------------------------
# Non-faces and misaligned faces fail


@pytest.mark.parametrize("name", ["coffee", "chelsea", "rocket"])
def test_non_faces_fail(detector, name):  # noqa: F811
    img = getattr(skimage_data, name)()
    for aligned in (False, True):
        result = face_check.check_faces(_source([img, img[:, ::-1]]), "arcface112", aligned=aligned,
                                        detector=detector)
        assert result.verdict == "fail" and result.faces_found == 0, (name, aligned, result.outcomes)
        warning = face_check.format_warning(result, f"synthetic ({name})")
        assert "FACE CHECK FAIL" in warning and name in warning and "may not be faces" in warning


def test_lfw_non_face_patches_fail(detector, lfw):  # noqa: F811
    patches = _source([_gray_to_rgb(x) for x in lfw[100:]])
    result = face_check.check_faces(patches, "dlib150", aligned=True,
                                    config=face_check.FaceCheckConfig(sample_size=32), detector=detector)
    assert result.sample_size == 32 and result.verdict == "fail" and result.faces_found_share <= 0.1


def test_unaligned_photo_given_as_aligned_crop_is_off_template(detector, astronaut):  # noqa: F811
    result = face_check.check_faces(_source([astronaut]), "arcface112", aligned=True, detector=detector)
    outcome = result.outcomes[0]
    assert outcome.num_faces >= 1 and outcome.status == "off_template" and outcome.error > 0.7
    assert result.verdict == "fail"
    warning = face_check.format_warning(result, "members (/data/photos)")
    assert "align=mtcnn" in warning
    with pytest.raises(face_check.FaceCheckError, match="--config.data.members.require_faces"):
        face_check.require_faces(result, "members (/data/photos)", "--config.data.members.require_faces")


def test_unreadable_records_are_counted_apart(detector, astronaut):  # noqa: F811
    src = ArraySource([_png(astronaut), b"not an image at all", b""], name="mixed")
    result = face_check.check_faces(src, "arcface112", aligned=False, detector=detector)
    assert [o.status for o in result.outcomes] == ["ok", "unreadable", "unreadable"]
    assert result.readable == 1 and result.near_template_share == 1.0 and result.verdict == "ok"
    assert face_check.format_warning(result, "x") is None
    face_check.require_faces(result, "x", "--flag")  # ok: no exception
    record = result.to_dict()
    assert record["counts"] == {"ok": 1, "unreadable": 2} and len(record["outcomes"]) == 3


def test_verdict_thresholds():
    def result(statuses, **cfg):
        outcomes = tuple(face_check.ImageOutcome(i, str(i), s, int(s != "no_face")) for i, s in enumerate(statuses))
        return face_check.FaceCheckResult("arcface112", True, 100, outcomes, face_check.FaceCheckConfig(**cfg), 1.0)

    assert result(["ok"] * 8 + ["no_face"] * 2).verdict == "ok"  # 0.8 >= ok_share
    assert result(["ok"] * 7 + ["no_face"] * 3).verdict == "warn"
    assert result(["ok"] * 4 + ["off_template"] * 6).verdict == "fail"
    assert result(["ok"] * 4 + ["off_template"] * 6, ok_share=0.4, warn_share=0.2).verdict == "ok"
    assert result(["unreadable"] * 3).verdict == "fail"


@pytest.mark.slow
def test_demo_data_members_pass_for_the_demo_matcher(detector, tmp_path):  # noqa: F811
    """The demo's folders (made by its generator, ~2-5 min on 2 cores) checked against dlib's chip (the demo's
    matcher): the LFW members pass; most synthetic samples are faces."""
    from synleak_jax.demo.generator import make_demo_data

    make_demo_data(str(tmp_path / "demo"))
    config = face_check.FaceCheckConfig(sample_size=32)
    members = face_check.check_faces(FlatFolderSource(os.path.join(tmp_path, "demo", "members")), "dlib150",
                                     aligned=True, config=config, detector=detector)
    synthetic = face_check.check_faces(FlatFolderSource(os.path.join(tmp_path, "demo", "synthetic")), "dlib150",
                                       aligned=True, config=config, detector=detector)
    assert members.verdict == "ok", members.summary()
    assert synthetic.faces_found_share >= 0.6, synthetic.summary()


def test_progress_lines_with_rate_and_eta(detector, astronaut, caplog):  # noqa: F811
    import logging
    import re

    chip = np.asarray(Image.fromarray(astronaut).resize((112, 112)))
    with caplog.at_level(logging.INFO, logger="absl"):  # an earlier in-process CLI may have set absl to WARNING
        face_check.check_faces(_source([chip] * 4), "arcface112", aligned=True, detector=detector,
                               progress_every_s=0.0)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("face check vs arcface112: ")]
    assert [re.fullmatch(r"face check vs arcface112: (\d)/4 images, [\d.]+ images/s, ETA \d+ s", ln).group(1)
            for ln in lines] == ["1", "2", "3"]
