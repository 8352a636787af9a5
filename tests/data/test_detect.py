"""MTCNN detection pipeline: pieces vs independent references, end to end vs faceie (pure-numpy MTCNN).

The exact end-to-end reference is facenet-pytorch's own ``detect_face`` (test_detect_facenet_pytorch.py).
faceie is a second, looser cross-check: the same released weights (its own converted copy) in a different
pipeline (pyramid by repeated PIL resizes of the full image, first level at scale ~0.71, PIL bicubic crops
from a pyramid level, crop window [x1, x2 + 1) where facenet-pytorch crops [x1 - 1, x2), plain IoU NMS at
the end). We run it with the closest settings (factor 1/0.709, thresholds 0.6/0.7/0.7, NMS 0.5/0.7/0.7, no
rotations). Its networks must agree with ours to float precision on the same crops; end to end the face
count must agree, and boxes/landmarks within 8% of the face size: each of those pipeline differences alone
moves MTCNN's output by 1-5 px on 70-155 px faces (docs/detection.md section 5 has the breakdown).
"""

from __future__ import annotations

import pickle

import jax
import numpy as np
import pytest
import torch
from PIL import Image

from synleak_jax.data import detect
from synleak_jax.models import mtcnn, registry
from tests.data.detect_fixtures import detector, lfw_canvas  # noqa: F401  (detector: fixture)

skimage_data = pytest.importorskip("skimage.data")


def faceie_detect(img):
    from faceie.mtcnn.detect_faces import detect_faces

    f = detect_faces(
        Image.fromarray(img), pyramid_downscale_factor=1 / 0.709, rotations=np.array([0.0]),
        proposal_skip_downscale_factor=1 / 0.6, proposal_probability_threshold=0.6,
        refine_probability_threshold=0.7, output_probability_threshold=0.7, proposal_maximum_iou=0.5,
        refine_maximum_iou=0.7, output_maximum_iou=0.7, extract_images=None)
    return f.bounding_boxes, f.probabilities, f.landmarks.reshape(-1, 5, 2)


# ------------------------------------------------------------------------------------------------
# Pieces


def test_area_resample_matches_torch_area_interpolation(rng):
    img = rng.integers(0, 256, (37, 53, 3)).astype(np.uint8)
    ii = detect.integral_image(img)
    t = torch.from_numpy(img.astype(np.float32)).permute(2, 0, 1)[None]
    for oh, ow in [(24, 24), (48, 48), (20, 31), (37, 53), (60, 70)]:
        ref = torch.nn.functional.interpolate(t, size=(oh, ow), mode="area")[0].permute(1, 2, 0).numpy()
        ours = detect.area_resample(ii, 0, 37, 0, 53, oh, ow)[0]
        np.testing.assert_allclose(ours, ref, atol=2e-4)
    # batched crops
    r0, c0 = rng.integers(0, 15, 4), rng.integers(0, 20, 4)
    r1, c1 = r0 + rng.integers(1, 20, 4), c0 + rng.integers(1, 30, 4)
    ours = detect.area_resample(ii, r0, r1, c0, c1, 24, 24)
    for k in range(4):
        crop = t[:, :, r0[k]:r1[k], c0[k]:c1[k]]
        ref = torch.nn.functional.interpolate(crop, size=(24, 24), mode="area")[0].permute(1, 2, 0).numpy()
        np.testing.assert_allclose(ours[k], ref, atol=2e-4)


def _nms_reference(boxes, scores, thr, method):
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    keep, removed = [], set()
    plus = 1.0 if method == "min" else 0.0
    area = lambda b: (b[2] - b[0] + plus) * (b[3] - b[1] + plus)
    for i in order:
        if i in removed:
            continue
        keep.append(i)
        for j in order:
            if j in removed or j == i or j in keep:
                continue
            a, b = boxes[i], boxes[j]
            inter = max(0.0, min(a[2], b[2]) - max(a[0], b[0]) + plus) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]) + plus)
            o = inter / min(area(a), area(b)) if method == "min" else inter / (area(a) + area(b) - inter)
            if o > thr:
                removed.add(j)
    return keep


@pytest.mark.parametrize("method", ["iou", "min"])
def test_nms_matches_loop_reference(rng, method):
    xy = rng.uniform(0, 100, (60, 2))
    wh = rng.uniform(5, 40, (60, 2))
    boxes = np.concatenate([xy, xy + wh], 1)
    scores = rng.permutation(60) / 60.0  # distinct scores
    for thr in (0.3, 0.5, 0.7):
        assert list(detect.nms(boxes, scores, thr, method)) == _nms_reference(boxes, scores, thr, method)


def test_pnet_padding_with_valid_size_is_exact(detector, rng):
    apply = jax.jit(mtcnn.PNet().apply)
    for h, w in [(13, 13), (37, 50), (61, 29)]:
        x = rng.uniform(-1, 1, (1, h, w, 3)).astype(np.float32)
        reg, prob = apply(detector.variables["pnet"], x)
        pad = np.zeros((1, 64, 64, 3), np.float32)
        pad[:, :h, :w] = x[0]
        pad[:, h:, :] = 5.0  # padding content must not matter, even when it is large
        pad[:, :, w:] = 5.0
        reg_p, prob_p = apply(detector.variables["pnet"], pad, np.array([h, w], np.int32))
        oh, ow = prob.shape[1:3]
        np.testing.assert_allclose(np.asarray(prob_p)[:, :oh, :ow], prob, atol=1e-6)
        np.testing.assert_allclose(np.asarray(reg_p)[:, :oh, :ow], reg, atol=1e-5)


def test_networks_match_faceie_on_same_inputs(detector, rng):
    """faceie's numpy nets with its own weight copy: same probabilities, landmarks (interleaved there)
    and regressions (faceie stores x2/y2 offsets + 1)."""
    from faceie.mtcnn.model import o_net, p_net, r_net

    v = detector.variables
    x = rng.uniform(-1, 1, (1, 41, 57, 3)).astype(np.float32)
    reg, prob = jax.jit(mtcnn.PNet().apply)(v["pnet"], x)
    fprob, freg = p_net(np.transpose(x[0], (2, 0, 1)))
    np.testing.assert_allclose(np.asarray(prob)[0, ..., 1], fprob, atol=1e-5)
    np.testing.assert_allclose(np.asarray(reg)[0] + [0, 0, 1, 1], freg, atol=1e-5)
    x = rng.uniform(-1, 1, (6, 24, 24, 3)).astype(np.float32)
    reg, prob = jax.jit(mtcnn.RNet().apply)(v["rnet"], x)
    fprob, freg = r_net(np.transpose(x, (0, 3, 1, 2)))
    np.testing.assert_allclose(np.asarray(prob)[:, 1], fprob, atol=1e-5)
    np.testing.assert_allclose(np.asarray(reg) + [0, 0, 1, 1], freg, atol=1e-5)
    x = rng.uniform(-1, 1, (6, 48, 48, 3)).astype(np.float32)
    reg, lm, prob = jax.jit(mtcnn.ONet().apply)(v["onet"], x)
    fprob, freg, flm = o_net(np.transpose(x, (0, 3, 1, 2)))
    np.testing.assert_allclose(np.asarray(prob)[:, 1], fprob, atol=1e-5)
    np.testing.assert_allclose(np.asarray(reg) + [0, 0, 1, 1], freg, atol=1e-5)
    lm = np.asarray(lm)
    np.testing.assert_allclose(np.stack([lm[:, :5], lm[:, 5:]], -1).reshape(6, 10), flm, atol=1e-5)


# ------------------------------------------------------------------------------------------------
# End to end vs faceie


def assert_close_to_faceie(ours: detect.Detections, img, rel=0.08):
    fb, fp, fl = faceie_detect(img)
    assert len(ours) == len(fb), f"faces: ours {len(ours)}, faceie {len(fb)}"
    for i in range(len(ours)):
        centre = (ours.boxes[i, :2] + ours.boxes[i, 2:]) / 2
        j = int(np.argmin(np.linalg.norm((fb[:, :2] + fb[:, 2:]) / 2 - centre, axis=1)))
        side = float(ours.boxes[i, 2] - ours.boxes[i, 0])
        tol = rel * side
        assert np.abs(fb[j] - ours.boxes[i]).max() <= tol, (ours.boxes[i], fb[j], tol)
        assert np.abs(fl[j] - ours.landmarks[i]).max() <= tol, (ours.landmarks[i], fl[j], tol)
        assert ours.scores[i] > 0.7 and fp[j] > 0.7


def test_astronaut_matches_faceie(detector):
    img = skimage_data.astronaut()
    det = detector.detect(img)
    assert len(det) == 1
    assert det.boxes.shape == (1, 4) and det.landmarks.shape == (1, 5, 2)
    assert_close_to_faceie(det, img)
    lm = det.landmarks[0]
    assert lm[0, 0] < lm[1, 0] and lm[3, 0] < lm[4, 0]  # "left" eye/mouth have the smaller x
    assert lm[0, 1] < lm[2, 1] < lm[3, 1]  # eyes above nose above mouth
    box = det.boxes[0]
    assert np.all((lm[:, 0] > box[0]) & (lm[:, 0] < box[2]) & (lm[:, 1] > box[1]) & (lm[:, 1] < box[3]))


def test_several_lfw_faces_match_faceie(detector):
    img = lfw_canvas(range(6))
    det = detector.detect(img)
    assert len(det) == 6
    assert_close_to_faceie(det, img)
    assert np.all(np.diff(det.scores) <= 0)  # decreasing score order


# ------------------------------------------------------------------------------------------------
# Awkward inputs


def test_defined_outcomes_for_awkward_inputs(detector):
    empty = detector.detect(np.zeros((15, 15, 3), np.uint8))  # below min_face_size: no pyramid level
    assert len(empty) == 0 and empty.boxes.shape == (0, 4) and empty.landmarks.shape == (0, 5, 2)
    assert len(detector.detect(np.full((120, 160, 3), 128, np.uint8))) == 0  # flat image: no face
    with pytest.raises(ValueError, match="shape"):
        detector.detect(np.zeros((0, 10, 3), np.uint8))
    with pytest.raises(ValueError, match="shape"):
        detector.detect(np.zeros((10, 10, 2), np.uint8))
    img = lfw_canvas([3], shape=(200, 200))
    ref = detector.detect(img)
    assert len(ref) == 1
    gray = detector.detect(img[:, :, 0])  # grayscale [H, W]
    rgba = detector.detect(np.concatenate([img, np.full(img.shape[:2] + (1,), 7, np.uint8)], -1))
    flt = detector.detect(img.astype(np.float32))
    for other in (gray, rgba, flt):
        np.testing.assert_array_equal(other.boxes, ref.boxes)
        np.testing.assert_array_equal(other.landmarks, ref.landmarks)


def test_detect_and_align_templates_and_statuses(detector):
    img = skimage_data.astronaut()
    chip, info = detect.detect_and_align(img, "arcface112", detector=detector)
    assert info.status == "ok" and chip.shape == (112, 112, 3) and chip.dtype == np.uint8
    for spec_name, shape in [("sphereface20", (112, 96, 3)), ("facenet_inception_resnet_v1", (160, 160, 3))]:
        c, _ = detect.detect_and_align(img, registry.get_spec(spec_name), detector=detector)
        assert c.shape == shape and c.dtype == np.uint8
    c, _ = detect.detect_and_align(img, "dlib150", detector=detector)
    assert c.shape == (150, 150, 3)
    # the aligned 224 chip, detected again, has its landmarks where the similarity transform put them
    chip224, info = detect.detect_and_align(img, "arcface224", detector=detector)
    again = detector.detect(chip224)
    assert len(again) >= 1
    from synleak_jax.data.align import apply_affine, arcface_template, umeyama

    expected = apply_affine(umeyama(info.landmarks.astype(np.float64), arcface_template(224)),
                            info.landmarks.astype(np.float64))
    err = np.abs(again.landmarks[int(np.argmax(again.scores))] - expected).max()
    print("re-detected landmark error on the 224 chip (px):", err)
    assert err < 6.0, err
    chip, info = detect.detect_and_align(np.full((100, 100, 3), 128, np.uint8), "arcface112", detector=detector)
    assert chip is None and info.status == "no_face" and info.num_faces == 0
    chip, info = detect.detect_and_align(np.zeros((12, 12), np.uint8), "arcface112", detector=detector)
    assert chip is None and info.status == "image_too_small"
    with pytest.raises(ValueError, match="policy"):
        detect.detect_and_align(img, "arcface112", policy="first", detector=detector)


def test_policy_largest_vs_best(detector):
    img = lfw_canvas([0], size=160, shape=(300, 480))
    small = lfw_canvas([5], size=70, shape=(130, 130))
    img[100:230, 300:430] = small
    det = detector.detect(img)
    assert len(det) == 2
    _, largest = detect.detect_and_align(img, "arcface112", "largest", detector)
    _, best = detect.detect_and_align(img, "arcface112", "best", detector)
    sides = det.boxes[:, 2] - det.boxes[:, 0]
    assert largest.index == int(np.argmax(sides))
    assert best.index == int(np.argmax(det.scores))


def test_align_fn_is_picklable_and_rejects_no_face(detector):
    original = detect.DetectAlign("arcface112")
    desc = original.describe()
    assert desc["template"] == "arcface112" and set(desc["weights_sha256"]) == {"pnet.pt", "rnet.pt", "onet.pt"}
    fn = pickle.loads(pickle.dumps(original))
    fn._detector = detector  # reuse the compiled detector (a worker would build its own from the cache)
    assert fn(np.full((64, 64, 3), 100, np.uint8)) is None
    assert fn(skimage_data.astronaut()).shape == (112, 112, 3)


def test_chunked_refinement_gives_the_same_faces(detector, monkeypatch):
    """Many candidates: R-/O-Net run in chunks; chunk size must not change the result."""
    img = lfw_canvas(range(40, 46))
    ref = detector.detect(img)
    monkeypatch.setattr(detect, "RO_MAX_BATCH", 16)
    chunked = detector.detect(img)
    assert len(ref) == len(chunked) == 6
    np.testing.assert_allclose(chunked.boxes, ref.boxes, atol=1e-4)
    np.testing.assert_allclose(chunked.landmarks, ref.landmarks, atol=1e-4)


def test_align_fn_fails_early_without_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("SYNLEAK_CACHE", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="synleak-fetch-mtcnn"):
        detect.DetectAlign("arcface112")


def test_facenet_crop_matches_torch_area_crop(rng):
    """facenet-pytorch's tensor path: crop the int box, interpolate(mode="area") to 160, truncate to uint8."""
    img = rng.integers(0, 256, (300, 260, 3)).astype(np.uint8)
    box = np.array([30.7, 41.2, 190.9, 230.4], np.float32)
    ours = detect.facenet_crop(img, box, 160)
    x0, y0, x1, y1 = int(30.7), int(41.2), int(190.9), int(230.4)
    t = torch.from_numpy(img[y0:y1, x0:x1].astype(np.float32)).permute(2, 0, 1)[None]
    ref = torch.nn.functional.interpolate(t, size=(160, 160), mode="area").byte()[0].permute(1, 2, 0).numpy()
    diff = np.abs(ours.astype(int) - ref.astype(int))
    assert ours.shape == (160, 160, 3) and diff.max() <= 1 and (diff > 0).mean() < 1e-3
