"""Worker of the 2-process audit test (tests/test_audit.py; not collected by pytest).

argv: port process_id paths_json out_dir. Each process has 2 CPU devices: a 4-device global mesh.
"""

import json
import os
import sys


def main():
    port, pid, paths, out = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3]), sys.argv[4]
    os.environ["JAX_PLATFORMS"] = "cpu"
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
    from tests import audit_helpers
    from synleak_jax.audit import run_audit

    cfg = audit_helpers.embeddings_config(paths, out)
    cfg.distributed.coordinator_address = f"localhost:{port}"
    cfg.distributed.num_processes = 2
    cfg.distributed.process_id = pid
    run_audit(cfg)
    import jax

    jax.distributed.shutdown()


if __name__ == "__main__":
    main()
