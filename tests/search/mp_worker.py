"""Worker for the 2-process sharded search test (launched by test_sharded.py; not collected by pytest).

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
    from synleak_jax.search.sharded import make_search_mesh, sharded_exact_topk

    rng = np.random.default_rng(seed)
    q = rng.standard_normal((45, 24)).astype(np.float32)
    db = rng.standard_normal((2003, 24)).astype(np.float32)
    db /= np.linalg.norm(db, axis=1, keepdims=True)
    db[300:330] = db[5]  # exact ties spanning devices
    q[:3] = db[5]
    n = len(jax.devices())
    results = {}
    meshes = [("db", make_search_mesh(), None)]
    if n % 2 == 0:
        meshes.append(("qdb", make_search_mesh(num_db=n // 2, num_q=2), "q"))
    for name, mesh, qa in meshes:
        s, i = sharded_exact_topk(q, db, 11, mesh=mesh, query_axis=qa, query_block=16, db_block=128,
                                  db_chunk_rows=256)
        results[f"{name}_s"], results[f"{name}_i"] = s, i
    np.savez(out, **results)
    jax.distributed.shutdown()


if __name__ == "__main__":
    main()
