"""Benchmark: decode + preprocess throughput of the data pipeline vs a plain PIL loop, in the same run.

    flock /tmp/synleak_bench.lock python scripts/bench_data.py [--n_small=3000] [--n_large=60] [--workers=0,2]

Cases:
  small: 112x112 JPEGs (quality 95, like insightface's CASIA/synthetic releases) in an identity folder,
         target 112x112 (arcface spec, BGR, normalised), no resize needed.
  large: 1024x1024 PNGs (FFHQ-like) in a flat folder, resized to 112x112; and "aligned": the same PNGs
         through data/align.py's align_face with fixed 5-point landmarks (measures the warp, not a detector);
         and the same images as 1024x1024 JPEGs (quality 95) resized to 112x112 (the pipeline decodes them
         DCT-downscaled by 1/8 first, like PIL's draft; the plain loop decodes them whole).
Reference (same run, same files): a plain loop ``np.asarray(Image.open(path).convert("RGB"))`` (+ PIL
bilinear resize for the large case) followed by the same float normalisation, one image at a time.
Images are natural-photo content (crops of skimage's astronaut with mild noise), not random noise, so
file sizes and decode costs resemble real face images. Reports medians over repeats, images/s, and the
pipeline/reference ratio, both end to end (including worker start-up, ~1-2 s per run here) and after the
first batch (steady state, what matters for a 500k-image dataset). num_workers=0 decodes in the calling process (one core); num_workers=k uses k
grain worker processes (the main process also works to assemble batches).
Also reported, for the reference and the in-process configurations: images per CPU-second of this process
(``time.process_time``, all its threads), which a shared, loaded machine distorts much less than wall time
(the ratio of the two shows how much of a core the run actually got). The JPEG decoder in use
(``decode.jpeg_decoder()``: simplejpeg when installed, else PIL) is printed and stored in the JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time

import numpy as np
from absl import flags
from PIL import Image

from synleak_jax.data import align, decode, pipeline, sources
from synleak_jax.models.registry import InputSpec

SPEC = InputSpec(112, 112, "BGR", (127.5,) * 3, (127.5,) * 3, 512, "cosine", "arcface112")


def _photo(rng, size):
    from skimage import data as skdata
    base = skdata.astronaut()
    y, x = rng.integers(0, 512 - 200, 2)
    s = int(rng.integers(200, 312))
    crop = base[y:y + s, x:x + s] if y + s <= 512 and x + s <= 512 else base[:s, :s]
    img = np.asarray(Image.fromarray(crop).resize((size, size), Image.BILINEAR)).astype(np.int16)
    img = img + rng.integers(-6, 7, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def make_small(root, n, rng):
    for i in range(n):
        d = os.path.join(root, f"id_{i // 50:05d}")
        os.makedirs(d, exist_ok=True)
        Image.fromarray(_photo(rng, 112)).save(os.path.join(d, f"{i:06d}.jpg"), "JPEG", quality=95)


def make_large(root, n, rng, fmt="PNG"):
    tiles = [_photo(rng, 1024) for _ in range(min(n, 8))]
    ext, kw = (".png", {"compress_level": 6}) if fmt == "PNG" else (".jpg", {"quality": 95})
    for i in range(n):
        d = os.path.join(root, f"{i // 1000 * 1000:05d}")
        os.makedirs(d, exist_ok=True)
        Image.fromarray(tiles[i % len(tiles)]).save(os.path.join(d, f"{i:05d}{ext}"), fmt, **kw)


def plain_loop(paths, resize):
    mean = np.asarray(SPEC.mean, np.float32)
    std = np.asarray(SPEC.std, np.float32)
    out = 0.0
    for p in paths:
        img = Image.open(p).convert("RGB")
        if resize:
            img = img.resize((112, 112), Image.BILINEAR)
        x = (np.asarray(img, np.float32)[..., ::-1] - mean) / std
        out += float(x[0, 0, 0])
    return out


class FixedLandmarkAlign:
    """align_fn using fixed landmarks (the ArcFace template scaled to the image, slightly rotated)."""

    def __call__(self, rgb):
        h, w = rgb.shape[:2]
        t = align.arcface_template(112).astype(np.float64)
        c = t.mean(0)
        th = np.deg2rad(7.0)
        rot = np.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]])
        lm = (t - c) @ rot.T * (w / 112 * 0.45) + np.array([w / 2, h / 2])
        return align.align_face(rgb, lm, "arcface112")


def time_it(fn, repeats):
    """(median wall seconds, median CPU seconds of this process) over ``repeats`` calls."""
    times, cpus = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        times.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    return statistics.median(times), statistics.median(cpus)


def run_pipeline(src, workers, batch, align_fn=None, threads=0):
    """Returns (seconds to the first batch, seconds for the remaining images, number of remaining images,
    CPU seconds of this process for the whole run)."""
    n = 0
    c0 = time.process_time()
    t0 = time.perf_counter()
    t_first = None
    n_first = 0
    for b in pipeline.make_pipeline(src, SPEC, batch, num_workers=workers, align_fn=align_fn, log_every_s=0,
                                    read_threads=threads):
        n += int(b["valid"].sum())
        if t_first is None:
            t_first, n_first = time.perf_counter(), n
    t_end = time.perf_counter()
    cpu = time.process_time() - c0
    assert n == len(src), (n, len(src))
    return t_first - t0, t_end - t_first, n - n_first, cpu


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n_small", type=int, default=3000)
    ap.add_argument("--n_large", type=int, default=60)
    ap.add_argument("--workers", default="1,2", help="grain worker-process counts (0 = in-process) to time")
    ap.add_argument("--threads", default="2", help="in-process decode thread counts to time besides 0")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--batch_large", type=int, default=8, help="batch size for the 1024x1024 cases")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    flags.FLAGS.mark_as_parsed()
    rng = np.random.default_rng(0)
    workers = [int(w) for w in args.workers.split(",") if w]
    threads = [int(t) for t in args.threads.split(",") if t]
    results = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cpus",
               "jpeg_decoder": decode.jpeg_decoder(), "load_avg_start": os.getloadavg(), "cases": {}}
    print("JPEG decoder:", results["jpeg_decoder"], "| load average:", results["load_avg_start"], flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        small, large = os.path.join(tmp, "small"), os.path.join(tmp, "large")
        large_jpeg = os.path.join(tmp, "large_jpeg")
        make_small(small, args.n_small, rng)
        make_large(large, args.n_large, rng)
        make_large(large_jpeg, args.n_large, rng, "JPEG")
        cases = [("jpeg112", sources.ImageFolderSource(small), False, None),
                 ("png1024_resize", sources.FlatFolderSource(large), True, None),
                 ("png1024_align", sources.FlatFolderSource(large), True, FixedLandmarkAlign()),
                 ("jpeg1024_resize", sources.FlatFolderSource(large_jpeg), True, None)]
        for name, src, resize, align_fn in cases:
            paths = [src.path(i) for i in range(len(src))]
            plain_loop(paths[:20], resize)  # warm up the page cache and PIL plugins
            t_ref, cpu_ref = time_it(lambda: plain_loop(paths, resize), args.repeats)
            case = {"n": len(src), "avg_file_bytes": int(np.mean([os.path.getsize(p) for p in paths])),
                    "plain_pil_img_s": len(src) / t_ref, "plain_pil_img_per_cpu_s": len(src) / cpu_ref,
                    "pipeline": {}}
            bs = args.batch_large if resize else args.batch
            case["batch_size"] = bs
            configs = [(0, 0, False)] + [(0, t, False) for t in threads if t] + [(w, 0, False) for w in workers if w]
            if name.startswith("jpeg") and decode._simplejpeg is not None:
                configs.append((0, 0, True))  # the same pipeline with PIL decoding every JPEG (A/B of the decoder)
            for w, th, pil_only in configs:
                sj = decode._simplejpeg
                if pil_only:
                    decode._simplejpeg = None
                try:
                    run_pipeline(src, w, bs, align_fn, th)  # warm-up (page cache, imports)
                    runs = [run_pipeline(src, w, bs, align_fn, th) for _ in range(args.repeats)]
                finally:
                    decode._simplejpeg = sj
                total = statistics.median(a + b for a, b, _, _ in runs)
                steady = (statistics.median(c / b for _, b, c, _ in runs if b > 0)
                          if any(r[1] > 0 for r in runs) else 0.0)
                res = {"img_s_end_to_end": len(src) / total, "ratio_vs_plain": t_ref / total,
                       "img_s_after_first_batch": steady, "steady_ratio_vs_plain": steady / case["plain_pil_img_s"],
                       "seconds_to_first_batch": statistics.median(a for a, _, _, _ in runs)}
                if w == 0:  # worker processes' CPU time is not this process's: reported for in-process only
                    cpu = statistics.median(r[3] for r in runs)
                    res["img_per_cpu_s"] = len(src) / cpu
                    res["cpu_ratio_vs_plain"] = cpu_ref / cpu
                case["pipeline"][f"workers={w},threads={th}" + (",decoder=PIL" if pil_only else "")] = res
            results["cases"][name] = case
            print(name, json.dumps(case, indent=1), flush=True)
    results["load_avg_end"] = os.getloadavg()
    print(json.dumps(results, indent=1))
    print(f"\nJPEG decoder {results['jpeg_decoder']}; load average {results['load_avg_start'][0]:.2f} -> "
          f"{results['load_avg_end'][0]:.2f}")
    for name, case in results["cases"].items():
        print(f"{name}: plain PIL loop {case['plain_pil_img_s']:.0f} img/s")
        for cfg, r in case["pipeline"].items():
            cpu = f", {r['img_per_cpu_s']:.0f} img/CPU-s" if "img_per_cpu_s" in r else ""
            print(f"  {cfg:36s} {r['img_s_end_to_end']:8.1f} img/s ({r['ratio_vs_plain']:.2f}x), after first batch "
                  f"{r['img_s_after_first_batch']:8.1f} ({r['steady_ratio_vs_plain']:.2f}x){cpu}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
