"""Benchmark of the dlib matcher port: .dat reading, chip alignment, and descriptor throughput vs dlib itself.

    flock /tmp/synleak_bench.lock python scripts/bench_dlib_resnet.py --batch 16 --reps 5 \
        [--dlib_python /work/dlib-venv/bin/python]

Measures in one run (medians; jitted forward compiled ahead and warmed up, ``block_until_ready``):
  * ``read_dlib_dat`` and ``load_dlib_dat`` wall time;
  * ``align_face(..., "dlib150")`` per chip (host numpy) on the astronaut photo, direct and pyramid paths;
  * Flax ``dlib_resnet_v1`` images/s at float32 (and bfloat16 compute);
  * with ``--dlib_python`` (a Python with dlib installed; dlib is not a project dependency): dlib's
    ``compute_face_descriptor`` on the same chips in a subprocess, images/s, and the ratio.
Prints one JSON object.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import tempfile
import time

import numpy as np
from absl import app, flags

flags.DEFINE_integer("batch", 16, "chips per forward call")
flags.DEFINE_integer("reps", 5, "timed repetitions (median reported)")
flags.DEFINE_string("dlib_python", None, "python executable with dlib installed, for the same-run reference")
FLAGS = flags.FLAGS

_DLIB_CODE = r"""
import json, statistics, sys, time
import numpy as np, dlib
net = dlib.face_recognition_model_v1(sys.argv[1])
chips = [np.ascontiguousarray(c) for c in np.load(sys.argv[2])]
reps = int(sys.argv[3])
net.compute_face_descriptor(chips[:2])  # warm-up
times = []
for _ in range(reps):
    t = time.perf_counter(); net.compute_face_descriptor(chips); times.append(time.perf_counter() - t)
print(json.dumps({"dlib_median_s": statistics.median(times), "n": len(chips), "dlib_version": dlib.__version__}))
"""


def _median_time(fn, reps: int) -> float:
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main(argv):
    del argv
    import jax
    import jax.numpy as jnp
    from skimage import data as skdata

    from synleak_jax.data import align
    from synleak_jax.models import registry
    from synleak_jax.weights import convert_dlib

    out: dict = {"jax_backend": jax.default_backend(), "devices": len(jax.devices()), "batch": FLAGS.batch,
                 "cpu_count": os.cpu_count(), "loadavg_start": os.getloadavg()[0]}
    path = convert_dlib.default_dlib_weights_path()
    out["read_dlib_dat_s"] = _median_time(lambda: convert_dlib.read_dlib_dat(path), FLAGS.reps)
    out["load_dlib_dat_s"] = _median_time(lambda: convert_dlib.load_dlib_dat(path), max(1, FLAGS.reps // 2))

    astronaut = skdata.astronaut()
    lm = np.array([[255, 104], [238, 105], [195, 101], [212, 103], [224, 135]], np.float64)  # dlib 5-point
    big = np.repeat(np.repeat(astronaut, 3, axis=0), 3, axis=1)
    out["align_direct_ms"] = 1e3 * _median_time(
        lambda: align.align_face(astronaut, lm, "dlib150", landmark_format="dlib5"), 20)
    out["align_pyramid_ms"] = 1e3 * _median_time(
        lambda: align.align_face(big, lm * 3 + 1, "dlib150", landmark_format="dlib5"), 10)

    rng = np.random.default_rng(0)
    base = align.align_face(astronaut, lm, "dlib150", landmark_format="dlib5")
    chips = np.stack([np.clip(base.astype(np.int16) + rng.integers(-8, 9, base.shape), 0, 255).astype(np.uint8)
                      for _ in range(FLAGS.batch)])
    spec = registry.get_spec("dlib_resnet_v1")
    variables = jax.device_put(convert_dlib.load_dlib_dat(path))
    x = jax.device_put(spec.normalize(chips))
    for name, kw in (("f32", dict(precision=jax.lax.Precision.HIGHEST)), ("bf16", dict(dtype=jnp.bfloat16))):
        model = registry.get_model("dlib_resnet_v1", **kw)
        compiled = jax.jit(model.apply).lower(variables, x).compile()
        compiled(variables, x).block_until_ready()
        t = _median_time(lambda: compiled(variables, x).block_until_ready(), FLAGS.reps)
        out[f"flax_{name}_img_per_s"] = FLAGS.batch / t

    if FLAGS.dlib_python:
        with tempfile.TemporaryDirectory() as tmp:
            np.save(os.path.join(tmp, "chips.npy"), chips)
            res = subprocess.run([FLAGS.dlib_python, "-c", _DLIB_CODE, str(path), os.path.join(tmp, "chips.npy"),
                                  str(FLAGS.reps)], capture_output=True, text=True, check=True)
        d = json.loads(res.stdout.strip().splitlines()[-1])
        out["dlib_img_per_s"] = d["n"] / d["dlib_median_s"]
        out["dlib_version"] = d["dlib_version"]
        out["flax_f32_over_dlib"] = out["flax_f32_img_per_s"] / out["dlib_img_per_s"]
    out["loadavg_end"] = os.getloadavg()[0]
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    app.run(main)
