"""Benchmark: MTCNN detection + alignment throughput on 1024x1024 images, ours vs faceie, same run.

    flock /tmp/synleak_bench.lock python scripts/bench_detect.py [--reps 5] [--json out.json]

Inputs (built from images that ship with scikit-image, all 1024x1024 RGB):
  astronaut   skimage's astronaut portrait upscaled (one large face, FFHQ-like framing)
  lfw6        6 LFW-subset faces upscaled to 200 px on a flat canvas
  lfw9        9 LFW-subset faces upscaled to 120 px
  no_face     skimage's coffee image upscaled (no face)

Ours: ``data.detect.detect_and_align(img, "arcface112", "largest")`` (jitted networks, compiled and warmed
up on every input first; P-Net shapes are bucketed so all four images share the compiled shapes).
Reference: faceie's pure-numpy MTCNN with the same weights and the closest settings (factor 1/0.709,
thresholds 0.6/0.7/0.7, one orientation instead of its default five), followed by the same alignment
call on its landmarks. The two are timed interleaved, image by image, so machine load hits both alike;
the figure is the median over ``--reps`` of the per-image time, summed over the images.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np


def make_inputs() -> dict[str, np.ndarray]:
    import skimage.data
    from PIL import Image

    def up(img):
        return np.asarray(Image.fromarray(img).resize((1024, 1024), Image.BICUBIC))

    lfw = skimage.data.lfw_subset()

    def canvas(ids, size, per_row):
        c = np.full((1024, 1024, 3), 96, np.uint8)
        step = 1024 // per_row
        for k, i in enumerate(ids):
            face = np.asarray(Image.fromarray((lfw[i] * 255).astype(np.uint8)).resize((size, size), Image.BICUBIC))
            y, x = (k // per_row) * step + (step - size) // 2, (k % per_row) * step + (step - size) // 2
            c[y:y + size, x:x + size] = face[..., None]
        return c

    return {
        "astronaut": up(skimage.data.astronaut()),
        "lfw6": canvas(range(6), 200, 3),
        "lfw9": canvas(range(10, 19), 120, 3),
        "no_face": up(skimage.data.coffee()),
    }


def faceie_detect_align(img):
    from faceie.mtcnn.detect_faces import detect_faces
    from PIL import Image

    from synleak_jax.data import align

    f = detect_faces(
        Image.fromarray(img), pyramid_downscale_factor=1 / 0.709, rotations=np.array([0.0]),
        proposal_skip_downscale_factor=1 / 0.6, proposal_probability_threshold=0.6,
        refine_probability_threshold=0.7, output_probability_threshold=0.7, proposal_maximum_iou=0.5,
        refine_maximum_iou=0.7, output_maximum_iou=0.7, extract_images=None)
    if len(f.probabilities) == 0:
        return None, 0
    b = f.bounding_boxes
    i = int(np.argmax((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])))
    return align.align_face(img, f.landmarks[i].reshape(5, 2), "arcface112"), len(f.probabilities)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    import jax

    from synleak_jax.data import detect

    inputs = make_inputs()
    det = detect.MTCNNDetector()
    ours = lambda img: detect.detect_and_align(img, "arcface112", "largest", det)

    t0 = time.perf_counter()
    faces = {}
    for name, img in inputs.items():  # compile + warm up every shape both pipelines will see
        _, info = ours(img)
        _, n_ref = faceie_detect_align(img)
        faces[name] = {"ours": info.num_faces, "faceie": n_ref}
    warm_s = time.perf_counter() - t0

    times = {name: {"ours": [], "faceie": []} for name in inputs}
    for _ in range(args.reps):
        for name, img in inputs.items():
            t = time.perf_counter()
            chip, _ = ours(img)
            times[name]["ours"].append(time.perf_counter() - t)
            t = time.perf_counter()
            faceie_detect_align(img)
            times[name]["faceie"].append(time.perf_counter() - t)

    med = {name: {k: float(np.median(v)) for k, v in d.items()} for name, d in times.items()}
    total_ours = sum(m["ours"] for m in med.values())
    total_ref = sum(m["faceie"] for m in med.values())
    result = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, jax {jax.__version__} "
                   f"({jax.default_backend()})",
        "load_average_1min": os.getloadavg()[0],
        "reps": args.reps,
        "warmup_s": warm_s,
        "faces_found": faces,
        "median_s_per_image": med,
        "ours_images_per_s": len(inputs) / total_ours,
        "faceie_images_per_s": len(inputs) / total_ref,
        "speedup_vs_faceie": total_ref / total_ours,
    }
    print(json.dumps(result, indent=1))
    print("\n| image | faces (ours / faceie) | ours s/img | faceie s/img | ratio |")
    print("|---|---|---|---|---|")
    for name in inputs:
        m, f = med[name], faces[name]
        print(f"| {name} | {f['ours']} / {f['faceie']} | {m['ours']:.3f} | {m['faceie']:.3f} | "
              f"{m['faceie'] / m['ours']:.1f}x |")
    print(f"| **all (1024x1024)** | | **{result['ours_images_per_s']:.2f} img/s** | "
          f"**{result['faceie_images_per_s']:.2f} img/s** | **{result['speedup_vs_faceie']:.1f}x** |")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=1)


if __name__ == "__main__":
    main()
