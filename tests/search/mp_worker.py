"""Worker for the 2-process mesh search test (launched by test_mesh.py; not collected by pytest).

argv: port process_id num_local_devices seed out_path
"""

import os
import sys


def main():
    port, pid, nloc, seed, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
    os.environ["JAX_PLATFORMS"] = "cpu"
    os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={nloc}"
    import jax
    import numpy as np

    jax.distributed.initialize(coordinator_address=f"localhost:{port}", num_processes=2, process_id=pid)
    from synleak_jax.search import exact_topk

    rng = np.random.default_rng(seed)
    q = rng.standard_normal((45, 24)).astype(np.float32)
    db = rng.standard_normal((2003, 24)).astype(np.float32)
    db /= np.linalg.norm(db, axis=1, keepdims=True)
    db[300:330] = db[5]  # exact ties spanning devices
    q[:3] = db[5]
    results = {}
    for name, kw in (("f32", dict(precision="float32")), ("f32_stream", dict(precision="float32", db_chunk_rows=256)),
                     ("bf16", dict(precision="bf16_certified"))):
        s, i = exact_topk(q, db, 11, query_block=16, db_block=128, query_chunk_rows=16, **kw)  # every device
        results[f"{name}_s"], results[f"{name}_i"] = s, i
    np.savez(out, **results)
    jax.distributed.shutdown()


if __name__ == "__main__":
    main()
