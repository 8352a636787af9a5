"""Forward throughput of the IResNet backbones: JAX (jit) vs PyTorch on CPU, and GPU figures when available.

CPU mode (always): for each model, the same randomly initialised weights are run by
  * JAX: ``jax.jit(model.apply)`` compiled ahead (``.lower().compile(compiler_options=...)``) with the
    project's CPU compiler options (``models.layers.cpu_compiler_options()``: Eigen convolutions, as the
    embedding engine compiles), warmed up, timed with ``block_until_ready``;
  * JAX with XLA's default CPU options (YNNPACK convolutions), for comparison (``--xla_default``);
  * PyTorch: the independent reference module (``tests/models/torch_refs_arcface.py``), eval mode,
    ``torch.no_grad()``, ``torch.set_num_threads`` = the JAX CPU thread count, NCHW float32;
and the median images/s of each plus the JAX/PyTorch ratios are printed (interleaved repeats, so a load spike
on the shared machine hits every side). The embeddings are compared once (relative L2 error) so the sides
provably compute the same network.

GPU mode (when JAX sees a GPU): bf16 compute at ``--gpu_batch`` (512), images/s and achieved TFLOP/s, as a
fraction of a bf16 matmul peak measured in the same run with a large ``jnp.dot``. FLOP per image at
112x112 (REFERENCE.md): r50 12.6 GFLOP, r100 24.2 GFLOP (2 x the multiply-accumulates).

Usage (the machine is shared: serialise benchmarks):
  flock /tmp/synleak_bench.lock python scripts/bench_backbone.py --models=iresnet50,iresnet100 --batch=64 --iters=5
"""

from __future__ import annotations

import os
import statistics
import sys
import time

from absl import app, flags, logging

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

FLAGS = flags.FLAGS
flags.DEFINE_list("models", ["iresnet50", "iresnet100"], "Registry model names to benchmark.")
flags.DEFINE_integer("batch", 64, "CPU batch size.")
flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "JAX compute dtype on CPU.")
flags.DEFINE_integer("iters", 5, "Timed repeats per side (median reported).")
flags.DEFINE_integer("warmup", 1, "Untimed warm-up runs per side after compilation.")
flags.DEFINE_integer("threads", 0, "PyTorch intra-op threads (0: os.cpu_count(), the XLA CPU default).")
flags.DEFINE_bool("torch", True, "Also time the PyTorch reference on CPU.")
flags.DEFINE_bool("xla_default", True, "Also time JAX compiled with XLA's default CPU options (YNNPACK convs).")
flags.DEFINE_integer("gpu_batch", 512, "Batch size in GPU mode (bf16).")
flags.DEFINE_integer("gpu_iters", 20, "Timed repeats in GPU mode.")
flags.DEFINE_string("xla_flags", "", "Extra XLA_FLAGS for this run (e.g. '--xla_cpu_use_onednn=true'); set "
                    "before JAX initialises.")

GFLOP_PER_IMAGE = {"iresnet50": 12.6, "iresnet100": 24.2}


def _median_time(fn, iters: int) -> tuple[float, list[float]]:
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times


def _jax_runner(name, variables, batch, dtype, compiler_options):
    import jax
    import jax.numpy as jnp
    import numpy as np

    from synleak_jax.models import get_model

    model = get_model(name, dtype=getattr(jnp, dtype))
    x = jax.device_put(np.random.default_rng(0).standard_normal((batch, 112, 112, 3)).astype(np.float32))
    variables = jax.device_put(variables)
    t0 = time.perf_counter()
    compiled = jax.jit(model.apply).lower(variables, x).compile(compiler_options=compiler_options or None)
    compile_s = time.perf_counter() - t0
    return (lambda: compiled(variables, x).block_until_ready()), compile_s, (lambda xx: compiled(variables, xx))


def bench_cpu(name: str) -> dict:
    import jax
    import numpy as np
    import torch

    from synleak_jax.models.layers import cpu_compiler_options
    from synleak_jax.weights.converters import load_state_dict_into
    from tests.models import torch_refs_arcface as refs

    threads = FLAGS.threads or os.cpu_count()
    torch.set_num_threads(threads)
    net = refs.randomize_(refs.make_reference(name), np.random.default_rng(0))
    variables = load_state_dict_into(name, refs.state_dict_numpy(net))
    options = cpu_compiler_options()
    sides = {"jax": _jax_runner(name, variables, FLAGS.batch, FLAGS.dtype, options)}
    if FLAGS.xla_default:
        sides["jax_xla_default"] = _jax_runner(name, variables, FLAGS.batch, FLAGS.dtype, None)

    # Same network on every side: compare embeddings once.
    x_check = np.random.default_rng(1).standard_normal((2, 112, 112, 3)).astype(np.float32)
    ref = refs.forward_numpy(net, x_check)
    pad = np.zeros((FLAGS.batch, 112, 112, 3), np.float32)
    pad[:2] = x_check
    rel = {}
    for side, (_, _, apply) in sides.items():
        out = np.asarray(apply(jax.device_put(pad)))[:2].astype(np.float64)
        rel[side] = float(np.linalg.norm(out - ref) / np.linalg.norm(ref))

    xt = torch.from_numpy(np.random.default_rng(0).standard_normal((FLAGS.batch, 3, 112, 112)).astype(np.float32))

    def run_torch():
        with torch.no_grad():
            net(xt)

    runs = {side: run for side, (run, _, _) in sides.items()}
    if FLAGS.torch:
        runs["torch"] = run_torch
    for _ in range(FLAGS.warmup):
        for run in runs.values():
            run()
    times = {side: [] for side in runs}
    for i in range(FLAGS.iters):  # interleaved so load changes hit every side
        for side, run in runs.items():
            times[side].append(_median_time(run, 1)[0])
        logging.info("%s iter %d/%d: %s", name, i + 1, FLAGS.iters,
                     ", ".join(f"{side} {t[-1]:.2f}s" for side, t in times.items()))
    ips = {side: FLAGS.batch / statistics.median(t) for side, t in times.items()}
    res = {"model": name, "batch": FLAGS.batch, "dtype": FLAGS.dtype, "threads": threads,
           "compiler_options": options, "compile_s": sides["jax"][1], "img_s": ips, "rel_err_vs_torch": rel}
    if FLAGS.torch:
        res["ratio"] = {side: ips[side] / ips["torch"] for side in sides}
    return res


def measure_bf16_matmul_peak(n: int = 8192, iters: int = 10) -> float:
    """TFLOP/s of a large bf16 matmul (the reference peak for the GPU fraction)."""
    import jax
    import jax.numpy as jnp

    a = jnp.ones((n, n), jnp.bfloat16)
    b = jnp.ones((n, n), jnp.bfloat16)
    f = jax.jit(lambda a, b: a @ b).lower(a, b).compile()
    f(a, b).block_until_ready()
    med, _ = _median_time(lambda: f(a, b).block_until_ready(), iters)
    return 2 * n**3 / med / 1e12


def bench_gpu(name: str, peak_tflops: float) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from synleak_jax.models import get_model

    model = get_model(name, dtype=jnp.bfloat16)
    variables = jax.jit(model.init)(jax.random.PRNGKey(0), jnp.zeros((1, 112, 112, 3), jnp.float32))
    x = jax.device_put(np.random.default_rng(0).standard_normal((FLAGS.gpu_batch, 112, 112, 3)).astype(np.float32))
    compiled = jax.jit(model.apply).lower(variables, x).compile()
    for _ in range(3):
        compiled(variables, x).block_until_ready()
    med, _ = _median_time(lambda: compiled(variables, x).block_until_ready(), FLAGS.gpu_iters)
    ips = FLAGS.gpu_batch / med
    res = {"model": name, "batch": FLAGS.gpu_batch, "img_s": ips}
    if name in GFLOP_PER_IMAGE:
        tflops = ips * GFLOP_PER_IMAGE[name] / 1e3
        res.update(tflops=tflops, fraction_of_peak=tflops / peak_tflops)
    return res


def main(argv):
    del argv
    if FLAGS.xla_flags:
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + FLAGS.xla_flags).strip()
    import jax

    print(f"jax {jax.__version__}, backend {jax.default_backend()}, devices {jax.devices()}, "
          f"cpu_count {os.cpu_count()}, XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")
    if jax.default_backend() == "cpu":
        import torch

        print(f"torch {torch.__version__}")
        for name in FLAGS.models:
            r = bench_cpu(name)
            print(f"[cpu] {name} batch {r['batch']} {r['dtype']}, {r['threads']} threads, JAX compiler options "
                  f"{r['compiler_options']} (compile {r['compile_s']:.1f}s):", flush=True)
            for side, ips in r["img_s"].items():
                line = f"[cpu]   {side:16s} {ips:6.1f} img/s"
                if side in r.get("ratio", {}):
                    line += f"  JAX/PyTorch {r['ratio'][side]:.2f}x"
                if side in r["rel_err_vs_torch"]:
                    line += f"  embeddings rel. L2 diff vs PyTorch {r['rel_err_vs_torch'][side]:.1e}"
                print(line, flush=True)
    else:
        peak = measure_bf16_matmul_peak()
        print(f"[gpu] measured bf16 matmul peak: {peak:.1f} TFLOP/s")
        for name in FLAGS.models:
            r = bench_gpu(name, peak)
            line = f"[gpu] {name} bf16 batch {r['batch']}: {r['img_s']:.0f} img/s"
            if "tflops" in r:
                line += f", {r['tflops']:.1f} TFLOP/s = {100 * r['fraction_of_peak']:.1f}% of the measured peak"
            print(line, flush=True)


if __name__ == "__main__":
    app.run(main)
