"""Builds tests/fixtures/dlib_reference.npz: dlib's own descriptors and face chips, for the parity tests.

Run with a Python that has dlib and numpy (dlib is NOT a project dependency), e.g.:

    python3 -m venv /work/dlib-venv && /work/dlib-venv/bin/pip install numpy dlib
    /work/dlib-venv/bin/python scripts/make_dlib_reference.py \
        --models_dir /work/venv/lib/python3.11/site-packages/face_recognition_models/models \
        --astronaut /work/venv/lib/python3.11/site-packages/skimage/data/astronaut.png \
        --out tests/fixtures/dlib_reference.npz

What it stores (all inputs are generated here deterministically or are scikit-image's astronaut photo):

* ``desc_images`` uint8 [10, 150, 150, 3] and ``desc_names``: inputs already at chip size: seeded uniform
  noise (2), smooth gradients/sinusoids (2), synthetic drawn faces (4), the astronaut's dlib chip and its mirror
  image (2). ``desc_dlib`` float64 [12, 128]: ``face_recognition_model_v1.compute_face_descriptor(chip)``.
* Chip parity: ``chip_source`` (index into ``chip_images_names``), ``chip_landmarks`` int64 [M, 5, 2] (x, y) in
  dlib's 5-point order, ``chip_dlib`` uint8 [M, 150, 150, 3] = ``dlib.get_face_chip(img, shape, 150, 0.25)``,
  ``chip_desc_dlib`` float64 [M, 128] = ``compute_face_descriptor(img, shape)`` (dlib's full pipeline),
  ``synthetic_big`` uint8 [320, 288, 3] (a generated face image); source 2 is the astronaut upscaled 3x by pixel
  repetition (large faces: dlib samples pyramid levels), ``astronaut_sha256`` (so the test can check
  that scikit-image's copy is the same picture). The astronaut's landmarks come from dlib's HOG detector +
  ``shape_predictor_5_face_landmarks.dat``; the other landmark sets are similarity transforms of them or of
  the dlib template, rounded to integers (dlib points are integers).
* ``astronaut_landmarks_arcface_order`` float64 [5, 2] (eye centres = means of 68-point eye contours, nose tip
  = point 30, mouth corners = points 48/54), ``astronaut_chip68_dlib`` and ``astronaut_desc68_dlib``: dlib's chip
  and descriptor from the 68-point shape (the approximation check of detector-order alignment).
* ``pyr_input`` uint8 [41, 38, 3] (seeded noise) and ``pyr_dlib`` = ``dlib.pyramid_down(2)(pyr_input)``.
* ``dlib_version``.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import os

import numpy as np

# Template of dlib::get_face_chip_details (5-point order), in [0, 1] chip units.
_DLIB5_UNIT = np.array(
    [[0.8595674595992, 0.2134981538014], [0.6460604764104, 0.2289674387677], [0.1205750620789, 0.2137274526848],
     [0.3340850613712, 0.2290642403242], [0.4901123135679, 0.6277975316475]])


def _ellipse_mask(h, w, cx, cy, rx, ry, angle=0.0):
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    c, s = math.cos(angle), math.sin(angle)
    u = (xx - cx) * c + (yy - cy) * s
    v = -(xx - cx) * s + (yy - cy) * c
    return (u / rx) ** 2 + (v / ry) ** 2 <= 1.0


def synthetic_face(h: int, w: int, rs: np.random.RandomState, cx: float, cy: float, size: float) -> np.ndarray:
    """A drawn face (background gradient, head ellipse, eyes, brows, nose, mouth) as uint8 [h, w, 3]."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    bg0, bg1 = rs.uniform(0, 255, 3), rs.uniform(0, 255, 3)
    t = (xx / w * 0.6 + yy / h * 0.4)[..., None]
    img = (1 - t) * bg0 + t * bg1
    skin = rs.uniform([150, 100, 80], [240, 190, 160])
    tilt = rs.uniform(-0.15, 0.15)
    head = _ellipse_mask(h, w, cx, cy, 0.42 * size, 0.55 * size, tilt)
    img[head] = skin
    # Soft shading across the face so it is not flat.
    shade = 1.0 - 0.25 * np.clip((xx - cx) / size, -1, 1)[..., None]
    img = np.where(head[..., None], img * shade, img)
    hair = _ellipse_mask(h, w, cx, cy - 0.45 * size, 0.45 * size, 0.2 * size, tilt) & ~_ellipse_mask(
        h, w, cx, cy - 0.1 * size, 0.42 * size, 0.42 * size, tilt)
    img[hair] = rs.uniform(0, 90, 3)
    eye_dx, eye_y = 0.17 * size, cy - 0.1 * size
    for sgn in (-1, 1):
        ex = cx + sgn * eye_dx
        img[_ellipse_mask(h, w, ex, eye_y, 0.08 * size, 0.04 * size, tilt)] = (245, 245, 245)
        img[_ellipse_mask(h, w, ex + rs.uniform(-2, 2), eye_y, 0.035 * size, 0.035 * size)] = rs.uniform(20, 90, 3)
        img[_ellipse_mask(h, w, ex, eye_y - 0.09 * size, 0.1 * size, 0.018 * size, tilt)] = rs.uniform(10, 80, 3)
    nose = _ellipse_mask(h, w, cx, cy + 0.08 * size, 0.03 * size, 0.11 * size)
    img[nose] = skin * 0.8
    mouth = _ellipse_mask(h, w, cx, cy + 0.3 * size, 0.16 * size, 0.04 * size, tilt)
    img[mouth] = rs.uniform([140, 20, 30], [220, 80, 90])
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def generated_chips() -> list[tuple[str, np.ndarray]]:
    """The eight generated 150x150 descriptor inputs (noise, gradients, drawn faces)."""
    out = []
    for seed in (1, 2):
        rs = np.random.RandomState(seed)
        out.append((f"noise_seed{seed}", rs.randint(0, 256, size=(150, 150, 3)).astype(np.uint8)))
    yy, xx = np.mgrid[0:150, 0:150].astype(np.float64)
    for seed in (11, 12):
        rs = np.random.RandomState(seed)
        ch = []
        for _ in range(3):
            fx, fy, ph = rs.uniform(0.01, 0.08), rs.uniform(0.01, 0.08), rs.uniform(0, 6.3)
            ramp = rs.uniform(-1, 1)
            ch.append(127.5 + 90 * np.sin(fx * xx + fy * yy + ph) + 35 * ramp * (xx - 75) / 75)
        out.append((f"gradient_seed{seed}", np.clip(np.rint(np.stack(ch, -1)), 0, 255).astype(np.uint8)))
    for seed in (21, 22, 23, 24):
        rs = np.random.RandomState(seed)
        img = synthetic_face(150, 150, rs, 75 + rs.uniform(-5, 5), 80 + rs.uniform(-5, 5), rs.uniform(95, 120))
        out.append((f"drawn_face_seed{seed}", img))
    return out


def similarity_landmarks(points: np.ndarray, angle_deg: float, scale: float, shift, centre) -> np.ndarray:
    """Rotates/scales ``points`` about ``centre``, shifts them, rounds to integers (dlib points are integers)."""
    a = math.radians(angle_deg)
    rot = scale * np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    p = (np.asarray(points, np.float64) - centre) @ rot.T + centre + np.asarray(shift, np.float64)
    return np.rint(p).astype(np.int64)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models_dir", required=True, help="face_recognition_models/models directory")
    ap.add_argument("--astronaut", required=True, help="scikit-image's data/astronaut.png")
    ap.add_argument("--out", default="tests/fixtures/dlib_reference.npz")
    args = ap.parse_args()

    import dlib  # only here: the project never imports dlib

    net = dlib.face_recognition_model_v1(os.path.join(args.models_dir, "dlib_face_recognition_resnet_model_v1.dat"))
    sp = dlib.shape_predictor(os.path.join(args.models_dir, "shape_predictor_5_face_landmarks.dat"))
    detector = dlib.get_frontal_face_detector()

    astronaut = np.ascontiguousarray(dlib.load_rgb_image(args.astronaut))
    dets = sorted(detector(astronaut, 1), key=lambda d: d.area(), reverse=True)
    if not dets:
        raise SystemExit("no face found in the astronaut image")
    shape = sp(astronaut, dets[0])  # the largest detection is the astronaut's face
    astro_lm = np.array([[shape.part(i).x, shape.part(i).y] for i in range(5)], np.int64)
    print("astronaut face", dets[0], "landmarks", astro_lm.tolist())

    def make_shape(lm: np.ndarray):
        pts = dlib.points()
        for x, y in lm:
            pts.append(dlib.point(int(x), int(y)))
        x0, y0 = lm.min(0)
        x1, y1 = lm.max(0)
        return dlib.full_object_detection(dlib.rectangle(int(x0), int(y0), int(x1), int(y1)), pts)

    # ---- chip parity cases: (source image index, landmarks)
    rs = np.random.RandomState(31)
    big = synthetic_face(320, 288, rs, 150, 165, 190)
    # The astronaut upscaled 3x (pixel repetition): a large real face, so dlib samples from pyramid levels.
    astronaut3 = np.ascontiguousarray(np.repeat(np.repeat(astronaut, 3, axis=0), 3, axis=1))
    sources = [astronaut, big, astronaut3]
    tmpl = (0.25 + _DLIB5_UNIT) / 1.5 * 150.0
    centre_a = astro_lm.mean(0)
    cases = [
        (0, astro_lm),
        (0, similarity_landmarks(astro_lm, 20.0, 1.0, (0, 0), centre_a)),
        (0, similarity_landmarks(astro_lm, -12.0, 0.55, (4, -3), centre_a)),  # small face: chip upsamples
        (1, similarity_landmarks(tmpl, -15.0, 1.3, (150 - 75, 165 - 80), np.array([75.0, 75.0]))),
        (1, similarity_landmarks(tmpl, 30.0, 1.1, (288 - 120, 320 - 110), np.array([75.0, 75.0]))),  # off the edge
        # Large faces (chip-to-image scale ~2.4, ~3.2, ~4.9): dlib's pyramid_down<2> path, levels 0, 0 and 1.
        (2, astro_lm * 3 + 1),
        (2, similarity_landmarks(astro_lm * 3 + 1, -10.0, 1.3, (0, 0), centre_a * 3 + 1)),
        (2, similarity_landmarks(astro_lm * 3 + 1, 25.0, 2.0, (-40, 30), centre_a * 3 + 1)),
    ]
    chip_src, chip_lm, chip_dlib, chip_desc = [], [], [], []
    for src_idx, lm in cases:
        img = sources[src_idx]
        s = make_shape(lm)
        chip = np.asarray(dlib.get_face_chip(img, s, size=150, padding=0.25), np.uint8)
        desc = np.asarray(net.compute_face_descriptor(img, s, num_jitters=0, padding=0.25), np.float64)
        chip_src.append(src_idx)
        chip_lm.append(lm)
        chip_dlib.append(chip)
        chip_desc.append(desc)

    # ---- detector-order (ArcFace order) landmarks of the astronaut from dlib's 68-point predictor, with dlib's
    # 68-point chip and descriptor: measures how close align_face(..., landmark_format="arcface") gets.
    sp68 = dlib.shape_predictor(os.path.join(args.models_dir, "shape_predictor_68_face_landmarks.dat"))
    s68 = sp68(astronaut, dets[0])
    p68 = np.array([[s68.part(i).x, s68.part(i).y] for i in range(68)], np.float64)
    lm_arcface = np.stack([p68[36:42].mean(0), p68[42:48].mean(0), p68[30], p68[48], p68[54]])
    chip68 = np.asarray(dlib.get_face_chip(astronaut, s68, size=150, padding=0.25), np.uint8)
    desc68 = np.asarray(net.compute_face_descriptor(astronaut, s68, num_jitters=0, padding=0.25), np.float64)

    # ---- dlib's pyramid_down<2> on a small random image (exact integer filter)
    pyr_in = np.random.RandomState(41).randint(0, 256, size=(41, 38, 3)).astype(np.uint8)
    pyr_out = np.asarray(dlib.pyramid_down(2)(pyr_in), np.uint8)

    # ---- descriptor parity on chip-sized inputs
    named = generated_chips()
    named.append(("astronaut_dlib_chip", chip_dlib[0]))
    named.append(("astronaut_dlib_chip_mirrored", np.ascontiguousarray(chip_dlib[0][:, ::-1])))
    names = [n for n, _ in named]
    images = np.stack([im for _, im in named])
    desc = np.stack([np.asarray(net.compute_face_descriptor(np.ascontiguousarray(im)), np.float64) for im in images])
    # Batch API agrees with the single-image one (sanity check of how the chips are fed).
    batch = np.asarray([np.asarray(d) for d in net.compute_face_descriptor([np.ascontiguousarray(im) for im in images])])
    assert np.abs(batch - desc).max() < 1e-5, np.abs(batch - desc).max()

    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    np.savez_compressed(
        args.out,
        desc_images=images,
        desc_names=np.array(names),
        desc_dlib=desc,
        chip_source=np.array(chip_src, np.int64),
        chip_images_names=np.array(["skimage.data.astronaut", "synthetic_big", "astronaut_upscaled_3x"]),
        pyr_input=pyr_in,
        pyr_dlib=pyr_out,
        chip_landmarks=np.stack(chip_lm),
        chip_dlib=np.stack(chip_dlib),
        chip_desc_dlib=np.stack(chip_desc),
        synthetic_big=big,
        astronaut_landmarks_arcface_order=lm_arcface,
        astronaut_chip68_dlib=chip68,
        astronaut_desc68_dlib=desc68,
        astronaut_sha256=np.array(hashlib.sha256(astronaut.tobytes()).hexdigest()),
        dlib_version=np.array(dlib.__version__),
    )
    print(f"wrote {args.out} ({os.path.getsize(args.out)} bytes): {len(names)} descriptor inputs, "
          f"{len(cases)} chip cases; dlib {dlib.__version__}")
    print("descriptor norms:", np.round(np.linalg.norm(desc, axis=1), 4).tolist())


if __name__ == "__main__":
    main()
