"""Measures the face check (synleak_jax/data/face_check.py) on the faces and non-faces the project can make.

    flock /tmp/synleak_bench.lock python scripts/measure_face_check.py [--demo_root=DIR] [--out=shares.json]

Sets (all offline, from scikit-image and the demo generator):
  * astronaut: skimage.data.astronaut() (512x512 photo, one face) as an unaligned image; its MTCNN-aligned chips
    (arcface112, arcface112x96, dlib150) and their mirror images as aligned crops;
  * lfw_raw: the 100 face crops of skimage.data.lfw_subset() (25x25) as aligned crops (resized by the check);
  * lfw_chips: the same faces upscaled to 250x250 (PIL bicubic) on a 500x500 grey canvas, detected and aligned
    with MTCNN to arcface112 (properly aligned chips);
  * lfw_photos: those 500x500 canvases as unaligned images (align=mtcnn);
  * demo members / synthetic: the demo's folders (built with synleak_jax.demo.generator.make_demo_data if
    --demo_root does not hold them yet: ~2-5 min on 2 cores);
  * non-faces: coffee, chelsea (a cat), rocket as unaligned photos and as aligned crops, and the 100 non-face
    patches of lfw_subset (as aligned crops).
Prints one line per (set, template, mode): sampled images, faces-found share, near-template share, error
quantiles, seconds per image; --out writes them as JSON.
"""

from __future__ import annotations

import io
import json
import os
import time

import numpy as np
from absl import app, flags
from PIL import Image

_DEMO_ROOT = flags.DEFINE_string("demo_root", "/tmp/synleak_face_check_demo", "Demo data folder (made if absent).")
_OUT = flags.DEFINE_string("out", None, "Write the measured rows here (JSON).")
_SAMPLE = flags.DEFINE_integer("sample_size", 200, "Images sampled per set (all of a smaller set).")


def _png(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


def _source(images, name):
    from synleak_jax.data.sources import ArraySource

    return ArraySource([_png(np.asarray(im)) for im in images], name=name)


def _gray_to_rgb(x: np.ndarray) -> np.ndarray:
    return np.repeat(np.round(x * 255).clip(0, 255).astype(np.uint8)[..., None], 3, axis=2)


def _lfw_canvases(faces: np.ndarray) -> list[np.ndarray]:
    out = []
    for face in faces:
        big = np.asarray(Image.fromarray(face).resize((250, 250), Image.BICUBIC))
        canvas = np.full((500, 500, 3), 110, np.uint8)
        canvas[120:370, 125:375] = big
        out.append(canvas)
    return out


def main(argv):
    del argv
    import skimage.data

    from synleak_jax.data import detect, face_check
    from synleak_jax.data.sources import FlatFolderSource

    detector = detect.default_detector()
    lfw = skimage.data.lfw_subset()
    lfw_faces = [_gray_to_rgb(x) for x in lfw[:100]]
    lfw_nonfaces = [_gray_to_rgb(x) for x in lfw[100:]]
    astronaut = skimage.data.astronaut()
    canvases = _lfw_canvases(lfw_faces)

    sets = []  # (name, source, template, aligned)
    sets.append(("astronaut photo", _source([astronaut], "astronaut"), "arcface112", False))
    big = np.asarray(Image.fromarray(astronaut).resize((1024, 1024), Image.BICUBIC))
    sets.append(("astronaut photo 1024x1024", _source([big], "astronaut1024"), "arcface112", False))
    sets.append(("astronaut photo given as a crop", _source([astronaut], "astronaut"), "arcface112", True))
    for template in ("arcface112", "arcface112x96", "dlib150"):
        chip, _ = detect.detect_and_align(astronaut, template, detector=detector)
        sets.append(("astronaut chip + mirror", _source([chip, chip[:, ::-1]], "astronaut_chip"), template, True))
    for template in ("arcface112", "dlib150"):
        sets.append(("lfw_raw crops", _source(lfw_faces, "lfw_raw"), template, True))
    chips = []
    for canvas in canvases:
        chip, _ = detect.detect_and_align(canvas, "arcface112", detector=detector)
        if chip is not None:
            chips.append(chip)
    sets.append((f"lfw_chips ({len(chips)} of 100 aligned)", _source(chips, "lfw_chips"), "arcface112", True))
    sets.append(("lfw_photos", _source(canvases, "lfw_photos"), "arcface112", False))
    sets.append(("lfw_photos", _source(canvases, "lfw_photos"), "dlib150", False))

    if not os.path.isdir(os.path.join(_DEMO_ROOT.value, "synthetic")):
        from synleak_jax.demo.generator import make_demo_data

        make_demo_data(_DEMO_ROOT.value)
    for role in ("members", "synthetic"):
        src = FlatFolderSource(os.path.join(_DEMO_ROOT.value, role))
        for template in ("dlib150", "arcface112"):
            sets.append((f"demo {role}", src, template, True))

    others = {name: getattr(skimage.data, name)() for name in ("coffee", "chelsea", "rocket")}
    for name, img in others.items():
        sets.append((f"{name} photo", _source([img], name), "arcface112", False))
        sets.append((f"{name} as crop", _source([img], name), "arcface112", True))
    sets.append(("lfw_subset non-face patches", _source(lfw_nonfaces, "lfw_nonfaces"), "arcface112", True))
    sets.append(("lfw_subset non-face patches", _source(lfw_nonfaces, "lfw_nonfaces"), "dlib150", True))

    config = face_check.FaceCheckConfig(sample_size=_SAMPLE.value)
    # compile the detector's shapes once per set size so the per-image cost excludes the first compilation
    rows = []
    print(f"{'set':38s} {'template':14s} {'mode':8s} {'n':>4s} {'faces':>6s} {'near':>6s} "
          f"{'err q10/q50/q90 (IOD)':>24s} {'verdict':>7s} {'ms/img':>7s}")
    for name, src, template, aligned in sets:
        face_check.check_faces(src, template, aligned=aligned, config=face_check.FaceCheckConfig(sample_size=1),
                               detector=detector)  # warm-up (compilation)
        t0 = time.perf_counter()
        result = face_check.check_faces(src, template, aligned=aligned, config=config, detector=detector)
        ms = (time.perf_counter() - t0) * 1000 / max(1, result.sample_size)
        errors = np.array([o.error for o in result.outcomes if o.error is not None])
        q = np.quantile(errors, [0.1, 0.5, 0.9]) if errors.size else np.full(3, np.nan)
        mode = "aligned" if result.aligned else "detect"
        print(f"{name:38s} {template:14s} {mode:8s} {result.sample_size:4d} {result.faces_found_share:6.0%} "
              f"{result.near_template_share:6.0%} {q[0]:8.3f}/{q[1]:.3f}/{q[2]:.3f} {result.verdict:>7s} {ms:7.1f}")
        rows.append({"set": name, "template": template, "mode": mode, "n": result.sample_size,
                     "faces_found_share": result.faces_found_share, "near_template_share": result.near_template_share,
                     "error_q10_q50_q90": [float(v) for v in q], "verdict": result.verdict, "ms_per_image": ms,
                     "counts": result.counts()})
    print(f"load average: {os.getloadavg()}")
    if _OUT.value:
        with open(_OUT.value, "w") as f:
            json.dump({"rows": rows, "tolerance": config.tolerance, "load_average": os.getloadavg()}, f, indent=1)


if __name__ == "__main__":
    app.run(main)
