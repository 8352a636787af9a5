"""Multi-process helpers for the embedding engine: initialisation, barriers, agreeing on step counts.

One process per host (or per GPU); every process runs the same jitted steps over one global
``Mesh`` whose ``"data"`` axis spans all devices of all processes. Nothing here is needed for a
single process: every helper is a no-op when ``jax.process_count() == 1``.
"""

from __future__ import annotations

import os

import jax
import numpy as np
from absl import logging

_INITIALIZED = False


def initialize(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    mode: str = "auto",
) -> None:
    """Calls ``jax.distributed.initialize`` when asked to (idempotent).

    Args:
      coordinator_address: "host:port" of process 0's coordinator; None/"" lets JAX detect it (TPU pods,
        SLURM, Open MPI) in mode "on".
      num_processes, process_id: this job's size and this process's rank (None = auto-detect).
      mode: "off" never initialises; "on" always does (with auto-detection for unset values); "auto"
        initialises only when ``coordinator_address`` and ``num_processes > 1`` are given, or when
        running on a TPU pod (``TPU_WORKER_HOSTNAMES`` lists several hosts).
    """
    global _INITIALIZED
    if _INITIALIZED or mode == "off":
        return
    if mode not in ("on", "auto"):
        raise ValueError(f"distributed mode must be 'on', 'off' or 'auto', got {mode!r}")
    explicit = bool(coordinator_address) and (num_processes or 0) > 1
    tpu_pod = len([h for h in os.environ.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]) > 1
    if mode == "auto" and not (explicit or tpu_pod):
        return
    kwargs = {}
    if coordinator_address:
        kwargs["coordinator_address"] = coordinator_address
    if num_processes:
        kwargs["num_processes"] = int(num_processes)
    if process_id is not None and process_id >= 0:
        kwargs["process_id"] = int(process_id)
    logging.info("jax.distributed.initialize(%s)", kwargs)
    jax.distributed.initialize(**kwargs)
    _INITIALIZED = True


def global_mesh(axis: str, devices=None) -> jax.sharding.Mesh:
    """THE mesh constructor: a 1-D mesh named ``axis`` over ``devices`` (default: every device of every process,
    in jax.devices() order, so every process builds the same mesh). The embedding engine uses axis "data", the
    search engine axis "rows"; one device is the trivial mesh."""
    devices = list(jax.devices() if devices is None else devices)
    return jax.make_mesh((len(devices),), (axis,), axis_types=(jax.sharding.AxisType.Explicit,), devices=devices)


def barrier(name: str) -> None:
    """Blocks until every process reaches the barrier ``name`` (no-op for one process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def global_max(value: int) -> int:
    """Maximum of an integer over all processes (the value itself for one process)."""
    if jax.process_count() == 1:
        return int(value)
    from jax.experimental import multihost_utils

    gathered = multihost_utils.process_allgather(np.asarray([value], np.int32))
    return int(np.max(gathered))
