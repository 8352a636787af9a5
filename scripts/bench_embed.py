"""Benchmark: end-to-end embedding (pipeline + model + store) next to model-only throughput, same run.

    flock /tmp/synleak_bench.lock python scripts/bench_embed.py                  # CPU: IResNet-50, float32
    flock /tmp/synleak_bench.lock python scripts/bench_embed.py --gpu            # GPU: IResNet-100 bf16

CPU branch (default): N aligned 112x112 JPEG crops (natural-photo content: crops of skimage's astronaut
with mild noise) in an identity folder; IResNet-50 (random init: throughput does not depend on the
weights), float32 compute. Reports, in one run:
  * model-only images/s: the jitted engine step on a device-resident batch (compiled ahead, warmed up,
    median of repeats, block_until_ready);
  * pipeline-only images/s: the grain pipeline over the same files, no model;
  * end-to-end images/s: ``embed_to_store`` (pipeline -> jit -> chunked store) into a fresh directory,
    compile excluded; busy fraction = end-to-end / model-only (the pipeline keeps the model busy if >= 0.9).
GPU branch (``--gpu``): IResNet-100, bf16 compute, batch 512, flip-sum TTA; model-only images/s, fraction of
the measured bf16 matmul peak (24.2 GFLOP/image, x2 with flip), the same end-to-end figures, and the ratio to
PyTorch eager (the reference IResNet-100 from tests/models/torch_refs_arcface.py, autocast bf16, same batch,
flip, same GPU) when torch with CUDA is importable.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import statistics
import sys
import tempfile
import time

import numpy as np
from absl import flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

GFLOP_PER_IMAGE = {"iresnet50": 12.6, "iresnet100": 24.2}  # REFERENCE.md §6 (2 x insightface MACs)


def make_images(root: str, n: int, size: int = 112, seed: int = 0) -> None:
    from PIL import Image
    from skimage import data as skdata

    rng = np.random.default_rng(seed)
    astro = skdata.astronaut()
    per_id = 50
    for i in range(n):
        y, x = rng.integers(0, astro.shape[0] - 2 * size), rng.integers(0, astro.shape[1] - 2 * size)
        crop = astro[y:y + 2 * size:2, x:x + 2 * size:2].astype(np.int16)
        crop = np.clip(crop + rng.integers(-8, 9, crop.shape), 0, 255).astype(np.uint8)
        d = os.path.join(root, f"id_{i // per_id:05d}")
        os.makedirs(d, exist_ok=True)
        buf = io.BytesIO()
        Image.fromarray(crop).save(buf, "JPEG", quality=95)
        with open(os.path.join(d, f"{i:06d}.jpg"), "wb") as f:
            f.write(buf.getvalue())


def timed(fn, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def matmul_peak(dtype, n: int = 8192, repeats: int = 10) -> float:
    import jax
    import jax.numpy as jnp

    a = jnp.ones((n, n), dtype)
    f = jax.jit(lambda x, y: x @ y)
    f(a, a).block_until_ready()
    t = statistics.median(timed(lambda: f(a, a).block_until_ready(), repeats))
    return 2 * n**3 / t


def torch_eager(model_name: str, batch: int, flip: bool, repeats: int) -> float | None:
    try:
        import torch

        from tests.models.torch_refs_arcface import make_reference
    except Exception as e:  # noqa: BLE001
        print(f"torch reference unavailable: {e}")
        return None
    if not torch.cuda.is_available():
        print("torch has no CUDA here: no PyTorch eager figure")
        return None
    net = make_reference(model_name).cuda().eval()
    x = torch.randn(batch, 3, 112, 112, device="cuda")

    def step():
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
            e = net(x)
            if flip:
                e = e + net(torch.flip(x, dims=[3]))
            e = torch.nn.functional.normalize(e.float(), dim=1)
        torch.cuda.synchronize()
        return e

    for _ in range(3):
        step()
    return batch / statistics.median(timed(step, repeats))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gpu", action="store_true")
    ap.add_argument("--model", default=None)
    ap.add_argument("--n", type=int, default=None, help="images in the end-to-end run")
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--flip", type=int, default=None)
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--read_threads", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3, help="alternating model-only / end-to-end rounds")
    ap.add_argument("--peak_n", type=int, default=8192, help="matmul size for the bf16 peak (GPU branch)")
    ap.add_argument("--json", default="")
    a = ap.parse_args()
    flags.FLAGS.mark_as_parsed()  # grain's mp_prefetch reads absl flags

    import jax
    import jax.numpy as jnp

    from synleak_jax.data import rejects
    from synleak_jax.data.sources import ImageFolderSource
    from synleak_jax.embed import engine as eng
    from synleak_jax.embed import feed
    from synleak_jax.embed.store import ChunkPlan
    from synleak_jax.models import registry

    model_name = a.model or ("iresnet100" if a.gpu else "iresnet50")
    batch = a.batch or (512 if a.gpu else 32)
    flip = bool(a.flip) if a.flip is not None else a.gpu
    n = a.n or (batch * 40 if a.gpu else 128)
    compute_dtype = "bfloat16" if a.gpu else "float32"
    if a.gpu and jax.default_backend() == "cpu":
        print("WARNING: --gpu on a CPU backend: a smoke run of the GPU branch, not a GPU figure")
    spec = registry.get_spec(model_name)
    module = registry.get_model(model_name, dtype=jnp.dtype(compute_dtype))
    variables = module.init(jax.random.PRNGKey(0), jnp.zeros((1, spec.height, spec.width, 3)))
    engine = eng.EmbeddingEngine(module, variables, spec, flip=flip)
    local = engine.local_batch_size(batch)
    res = {"model": model_name, "batch": batch, "flip": flip, "compute_dtype": compute_dtype, "n": n,
           "devices": jax.device_count(), "backend": jax.default_backend(),
           "device_kind": jax.devices()[0].device_kind, "machine": platform.processor() or platform.machine(),
           "cpus": os.cpu_count(), "workers": a.workers, "read_threads": a.read_threads}

    # 1. model only: compiled ahead, warmed up, median over repeats.
    t = time.perf_counter()
    engine.compile(local)
    res["compile_s"] = time.perf_counter() - t
    x = engine._put(np.random.default_rng(0).standard_normal((local, spec.height, spec.width, 3), np.float32))
    for _ in range(2):
        engine.step(x).block_until_ready()
    times = timed(lambda: engine.step(x).block_until_ready(), a.repeats)
    res["model_only_images_per_s"] = batch / statistics.median(times)
    res["model_step_s_median"] = statistics.median(times)
    gflop = GFLOP_PER_IMAGE.get(model_name)
    if gflop:
        res["gflop_per_image"] = gflop * (2 if flip else 1)
        res["model_only_tflops"] = res["model_only_images_per_s"] * res["gflop_per_image"] / 1e3
    if a.gpu:
        peak = matmul_peak(jnp.bfloat16, a.peak_n)
        res["bf16_matmul_peak_tflops"] = peak / 1e12
        if gflop:
            res["fraction_of_bf16_peak"] = res["model_only_tflops"] * 1e12 / peak
        te = torch_eager(model_name, batch, flip, a.repeats)
        if te:
            res["torch_eager_images_per_s"] = te
            res["jax_over_torch_eager"] = res["model_only_images_per_s"] / te
    print(json.dumps(res, indent=1), flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        root = os.path.join(tmp, "ds")
        make_images(root, n)
        src = ImageFolderSource(root)
        batches_for = feed.pipeline_batches(src, spec, num_workers=a.workers, read_threads=a.read_threads)
        # 2. pipeline only (same files, no model).
        ids = np.arange(len(src), dtype=np.int64)
        for b in batches_for(ids[: 2 * local], local):  # warm (imports, worker start)
            pass
        t = time.perf_counter()
        for b in batches_for(ids, local):
            pass
        res["pipeline_only_images_per_s"] = n / (time.perf_counter() - t)
        # 3. end to end into a fresh store (compile excluded by embed_to_store's timer), alternating with
        # model-only timings round by round: this machine is shared and its load drifts by 2x within a
        # minute, so both figures are taken in the same time window and the busy fraction is the ratio of
        # their medians (per-round ratios reported too).
        man = eng.build_manifest(
            model_name=model_name, model_family=registry.get_entry(model_name).family, spec=spec,
            weights={"random_init": True, "seed": 0},
            dataset={"kind": "image_folder", "fingerprint": src.fingerprint(), "num_records": n,
                     "num_classes": src.num_classes},
            preprocessing={"alignment": "none"}, flip=flip, flip_combine=engine.flip_combine,
            normalized=engine.normalize, compute_dtype=compute_dtype, storage_dtype="float32",
            plan=ChunkPlan(n, batch, 4))
        steps = -(-n // batch)
        e2e, model_rounds = [], []
        for r in range(a.rounds):
            mt = timed(lambda: engine.step(x).block_until_ready(), steps)
            model_rounds.append(batch * steps / sum(mt))
            summary = eng.embed_to_store(os.path.join(tmp, f"store{r}"), engine, man, batches_for,
                                         describe=src.describe, reasons=rejects.REASONS, progress_every_s=60)
            e2e.append(summary["images_per_s"])
        res["rounds"] = [{"model_only_images_per_s": m, "end_to_end_images_per_s": e, "ratio": e / m}
                         for m, e in zip(model_rounds, e2e)]
        res["model_only_images_per_s"] = statistics.median(model_rounds)
        res["end_to_end_images_per_s"] = statistics.median(e2e)
        res["model_busy_fraction"] = res["end_to_end_images_per_s"] / res["model_only_images_per_s"]
        if gflop:
            res["model_only_tflops"] = res["model_only_images_per_s"] * res["gflop_per_image"] / 1e3
    print(json.dumps(res, indent=1))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
