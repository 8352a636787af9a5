"""The embedding engine: one jitted step over a Mesh spanning every device of every process.

Data flow of one step (``B`` = global batch, ``b = B / process_count`` rows fed by each process)::

    local batch dict (numpy, leading dim b)  --make_array_from_process_local_data-->  image [B, H, W, 3]
        sharded NamedSharding(mesh, P("data")), variables replicated NamedSharding(mesh, P())
    jit:  e = f(x)            (+ f(flip_W(x)) when flip-sum TTA is on)      [B, D] in compute dtype
          e = float32(e);   cosine models: e / ||e||_2;   euclidean models: raw (mean of the two views)
          -> storage dtype (float32 or float16)
    each process reads back only its addressable shards: the rows it fed, in the order it fed them.

Why euclidean models are not normalised: dlib's ResNet is compared by Euclidean distance with a fixed
0.6 threshold on the raw 128-D output; rescaling the vectors would invalidate that threshold. With
flip TTA their two views are averaged (not summed) for the same reason. The manifest records
``normalized`` and ``flip_combine`` so readers know which they got.

Padding rows (``valid=False``) are computed like any row (shapes stay static) but are dropped on the
host before anything reaches the store; rejected rows (``reject_code > 0``) become reject entries.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, Iterable, Iterator, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from synleak_jax.embed import distributed
from synleak_jax.files import versions
from synleak_jax.progress import Progress
from synleak_jax.embed.store import ChunkPlan, StoreWriter
from synleak_jax.models.registry import InputSpec
from synleak_jax.models.layers import cpu_compiler_options

DATA_AXIS = "data"


def default_compute_dtype() -> str:
    """bfloat16 on accelerators, float32 on CPU (XLA:CPU bf16 convs are slower than float32 here)."""
    return "bfloat16" if jax.default_backend() in ("gpu", "tpu", "cuda", "rocm") else "float32"


def make_data_mesh(devices: Sequence[jax.Device] | None = None) -> jax.sharding.Mesh:
    """1-D mesh ``("data",)`` over ``devices`` (default: all devices of all processes)."""
    return distributed.global_mesh(DATA_AXIS, devices)


@dataclasses.dataclass
class StepResult:
    """Host-side result of one step for this process's rows (padding removed).

    Attributes:
      record_id: int64 ``[n]`` valid rows' record ids.
      label: int64 ``[n]``.
      embedding: ``[n, D]`` storage dtype.
      rejected_ids: int64 ``[r]`` record ids of rejected rows; ``reject_codes`` int32 ``[r]``.
      num_rows: rows of this step that were real records (valid + rejected), i.e. not padding.
    """

    record_id: np.ndarray
    label: np.ndarray
    embedding: np.ndarray
    rejected_ids: np.ndarray
    reject_codes: np.ndarray

    @property
    def num_rows(self) -> int:
        return int(self.record_id.shape[0] + self.rejected_ids.shape[0])


class EmbeddingEngine:
    """Jitted, sharded embedding of normalised image batches.

    Args:
      module: Flax module mapping float32 NHWC ``[B, H, W, 3]`` to raw embeddings ``[B, D]`` (built with
        the compute dtype, e.g. ``get_model(name, dtype=jnp.bfloat16)``).
      variables: its variables ``{"params": ..., "batch_stats": ...}`` (float32; replicated on the mesh).
      spec: the model's :class:`InputSpec` (input size, metric).
      flip: flip-sum TTA (embedding of the image plus its horizontal flip).
      storage_dtype: "float32" or "float16": dtype of returned embeddings.
      normalize: L2-normalise; default: True for cosine models, False for euclidean ones.
      mesh: 1-D mesh with a "data" axis; default all devices of all processes.
    """

    def __init__(
        self,
        module: nn.Module,
        variables: Any,
        spec: InputSpec,
        *,
        flip: bool = False,
        storage_dtype: str = "float32",
        normalize: bool | None = None,
        mesh: jax.sharding.Mesh | None = None,
    ):
        if storage_dtype not in ("float32", "float16"):
            raise ValueError(f"storage_dtype must be 'float32' or 'float16', got {storage_dtype!r}")
        self.module = module
        self.spec = spec
        self.flip = bool(flip)
        self.storage_dtype = np.dtype(storage_dtype)
        self.normalize = (spec.metric == "cosine") if normalize is None else bool(normalize)
        self.mesh = mesh if mesh is not None else make_data_mesh()
        self.data_sharding = NamedSharding(self.mesh, P(DATA_AXIS))
        self.replicated = NamedSharding(self.mesh, P())
        self.variables = jax.device_put(variables, self.replicated)
        self.num_devices = self.mesh.devices.size
        # Processes feeding this engine: all of them for the global mesh, one for a mesh of local devices
        # (an in-memory sample embedded by each process on its own, e.g. the audit's channel-order check).
        self.feeding_processes = len({d.process_index for d in self.mesh.devices.flat})
        self._compiled: dict[tuple, Any] = {}
        # On CPU, XLA's Eigen convolutions beat its default YNNPACK ones for these backbones (1.2-2.5x; models
        # that run faster on YNNPACK, MobileFaceNet, opt out): docs/models.md. A no-op elsewhere.
        self._fn = jax.jit(
            self._step,
            in_shardings=(self.replicated, self.data_sharding),
            out_shardings=self.data_sharding,
            compiler_options=cpu_compiler_options(self.mesh.devices.flat[0].platform, module),
        )

    @property
    def flip_combine(self) -> str:
        """How the two views are combined: "sum" (normalised afterwards) or "mean" (raw euclidean)."""
        return "none" if not self.flip else ("sum" if self.normalize else "mean")

    def _step(self, variables, x: jax.Array) -> jax.Array:
        """``x`` float32 ``[B, H, W, 3]`` -> embeddings ``[B, D]`` in the storage dtype."""
        e = self.module.apply(variables, x).astype(jnp.float32)
        if self.flip:
            e_flip = self.module.apply(variables, x[:, :, ::-1, :]).astype(jnp.float32)
            e = e + e_flip if self.normalize else 0.5 * (e + e_flip)
        if self.normalize:
            # Floor the squared norm so an all-zero embedding stays zero instead of NaN.
            e = e * jax.lax.rsqrt(jnp.maximum(jnp.sum(e * e, axis=-1, keepdims=True), 1e-24))
        return e.astype(self.storage_dtype)

    # ---------------------------------------------------------------------------------- feeding

    def local_batch_size(self, global_batch: int) -> int:
        pc = self.feeding_processes
        if global_batch % self.num_devices:
            raise ValueError(
                f"batch size {global_batch} must be a multiple of the number of devices ({self.num_devices})"
            )
        return global_batch // pc

    def _put(self, local_images: np.ndarray) -> jax.Array:
        b = local_images.shape[0]
        global_shape = (b * self.feeding_processes,) + local_images.shape[1:]
        return jax.make_array_from_process_local_data(self.data_sharding, local_images, global_shape)

    def _local_rows(self, out: jax.Array) -> np.ndarray:
        """This process's rows of a data-sharded result, in the order this process fed them."""
        shards = sorted(out.addressable_shards, key=lambda s: s.index[0].start or 0)
        parts, seen = [], set()
        for s in shards:
            start = s.index[0].start or 0
            if start in seen:  # replicated copies (not with a 1-D data mesh, but be safe)
                continue
            seen.add(start)
            parts.append(np.asarray(s.data))
        return np.concatenate(parts, axis=0)

    def compile(self, local_batch: int) -> None:
        """Compiles the step for ``local_batch`` rows per process ahead of time (kept for :meth:`step`)."""
        shape = (local_batch * self.feeding_processes, self.spec.height, self.spec.width, 3)
        if shape not in self._compiled:
            arg = jax.ShapeDtypeStruct(shape, jnp.float32, sharding=self.data_sharding)
            self._compiled[shape] = self._fn.lower(self.variables, arg).compile()

    def step(self, x: jax.Array) -> jax.Array:
        """The jitted step on a global data-sharded ``[B, H, W, 3]`` array (AOT executable when compiled)."""
        exe = self._compiled.get(x.shape)
        return exe(self.variables, x) if exe is not None else self._fn(self.variables, x)

    def embed_local(self, local_images: np.ndarray) -> np.ndarray:
        """One step: this process's float32 ``[b, H, W, 3]`` -> its ``[b, D]`` embeddings (storage dtype)."""
        return self._local_rows(self.step(self._put(np.asarray(local_images, np.float32))))

    def padding_batch(self, local_batch: int) -> dict[str, np.ndarray]:
        """A batch of ``local_batch`` padding rows (valid=False, record_id=-1)."""
        return {
            "image": np.zeros((local_batch, self.spec.height, self.spec.width, 3), np.float32),
            "valid": np.zeros((local_batch,), bool),
            "record_id": np.full((local_batch,), -1, np.int64),
            "label": np.full((local_batch,), -1, np.int64),
            "reject_code": np.zeros((local_batch,), np.int32),
        }

    def run(self, batches: Iterable[dict], local_batch: int, num_steps: int | None = None,
            progress: "Progress | None" = None) -> Iterator[StepResult]:
        """Embeds a stream of this process's batches; yields one :class:`StepResult` per step.

        Args:
          batches: batch dicts as the data pipeline yields them (leading dim ``local_batch``).
          local_batch: rows per batch fed by this process.
          num_steps: total steps every process runs; when ``batches`` ends earlier, padding batches are fed
            (so all processes execute the same jitted steps); more batches than this is an error.
            None = as many as ``batches`` yields (single process only).
          progress: optional progress reporter (rows counted are non-padding rows).

        The next step is dispatched before the previous one is read back, so host work (the
        pipeline, the store) overlaps device work.
        """
        if num_steps is None and self.feeding_processes > 1:
            raise ValueError("num_steps is required with several processes (all must run the same steps)")
        it = iter(batches)
        pending: tuple[jax.Array, dict] | None = None
        step = 0
        exhausted = False
        while num_steps is None or step < num_steps:
            batch = None
            if not exhausted:
                batch = next(it, None)
                if batch is None:
                    exhausted = True
            if batch is None:
                if num_steps is None:
                    break
                batch = self.padding_batch(local_batch)
            _check_batch(batch, local_batch, self.spec)
            out = self.step(self._put(np.asarray(batch["image"], np.float32)))
            if pending is not None:
                yield self._finish(*pending, progress)
            pending = (out, batch)
            step += 1
        if not exhausted and next(it, None) is not None:
            raise ValueError(f"the batch iterator yielded more than the planned {num_steps} steps")
        if pending is not None:
            yield self._finish(*pending, progress)

    def _finish(self, out: jax.Array, batch: dict, progress: "Progress | None") -> StepResult:
        emb = self._local_rows(out)
        valid = np.asarray(batch["valid"], bool)
        rid = np.asarray(batch["record_id"], np.int64)
        code = np.asarray(batch["reject_code"], np.int32)
        rej = (~valid) & (code > 0)
        if np.any(valid & (rid < 0)):
            raise ValueError("a batch marks a row valid whose record_id is -1")
        res = StepResult(
            record_id=rid[valid],
            label=np.asarray(batch["label"], np.int64)[valid],
            embedding=emb[valid],
            rejected_ids=rid[rej],
            reject_codes=code[rej],
        )
        if progress is not None:
            progress.update(res.num_rows)
        return res


def _check_batch(batch: dict, local_batch: int, spec: InputSpec) -> None:
    for key in ("image", "valid", "record_id", "label", "reject_code"):
        if key not in batch:
            raise ValueError(f"batch is missing key {key!r} (contract: docs/architecture.md, data/)")
    want = (local_batch, spec.height, spec.width, 3)
    if tuple(batch["image"].shape) != want:
        raise ValueError(f"batch image has shape {tuple(batch['image'].shape)}, the model expects {want}")


# ---------------------------------------------------------------------------------- store driver


def build_manifest(
    *,
    model_name: str,
    model_family: str,
    spec: InputSpec,
    weights: dict,
    dataset: dict,
    preprocessing: dict,
    flip: bool,
    flip_combine: str,
    normalized: bool,
    compute_dtype: str,
    storage_dtype: str,
    plan: ChunkPlan,
) -> dict:
    """The store manifest. Identity fields: everything except versions/throughput/created/process_count.

    Args:
      weights: ``{"sha256", "source", "format"}`` from ``WeightsInfo``, or ``{"random_init": True,
        "seed": s}`` for tests/benchmarks without weights.
      dataset: ``{"kind", "fingerprint", "num_records", "num_classes"}`` of the source.
      preprocessing: how pixels became model inputs (alignment, resize, ...), from the data config.
    """
    return {
        "model": {"name": model_name, "family": model_family},
        "weights": weights,
        "input_spec": spec.to_dict(),
        "preprocessing": preprocessing,
        "dataset": dataset,
        "flip": bool(flip),
        "flip_combine": flip_combine,
        "metric": spec.metric,
        "normalized": bool(normalized),
        "embedding_dim": int(spec.embedding_dim),
        "compute_dtype": compute_dtype,
        "storage_dtype": storage_dtype,
        "plan": plan.to_dict(),
        "versions": versions(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "process_count": jax.process_count(),
    }


BatchFactory = Callable[[np.ndarray, int], Iterable[dict]]


def embed_to_store(
    path: str,
    engine: EmbeddingEngine,
    manifest: dict,
    batches_for: BatchFactory,
    *,
    describe: Callable[[int], str] | None = None,
    reasons: dict[int, str] | None = None,
    overwrite: bool = False,
    progress_every_s: float = 10.0,
) -> dict:
    """Fills (or resumes) the store at ``path`` with this process's chunks.

    Args:
      engine: the engine (its mesh spans every process).
      manifest: from :func:`build_manifest`; its plan fixes the chunks.
      batches_for: ``(record_ids int64 [n] ascending, local_batch) -> iterable of batch dicts`` covering
        exactly those records (valid or rejected) plus padding rows; e.g. the data pipeline over a
        subset of the source.
      describe: ``record_id -> path or file:offset`` for reject entries (``source.describe``).
      reasons: reject code -> reason text (``data.rejects.REASONS``).
      overwrite: recompute the whole store.

    Resume: a chunk is skipped only when its marker names this manifest's identity and its files have the
    recorded sizes and sha256 (``StoreWriter.pending_chunks``); any other chunk is recomputed.

    Returns:
      summary dict: chunks computed/skipped/damaged by this process, rows, seconds, images/s.
    """
    plan = ChunkPlan.from_dict(manifest["plan"])
    pi, pc = jax.process_index(), jax.process_count()
    if plan.batch_size % pc or plan.batch_size % engine.num_devices:
        raise ValueError(
            f"batch size {plan.batch_size} must be divisible by the number of processes ({pc}) and of "
            f"devices ({engine.num_devices})"
        )
    local_batch = plan.batch_size // pc
    writer = StoreWriter(path, manifest, overwrite=overwrite, process_index=pi)
    # Process 0 may have just cleared the store (--overwrite): nobody looks at markers before that.
    distributed.barrier("synleak-embed-store-init")
    owned = plan.owned_chunks(pi, pc)
    todo = writer.pending_chunks(owned)
    ranges = [plan.chunk_range(j) for j in todo]
    n_rows = sum(b - a for a, b in ranges)
    local_steps = -(-n_rows // local_batch)
    num_steps = distributed.global_max(local_steps)
    logging.info(
        "process %d/%d: %d of its %d chunks to compute (%d records, %d steps; all processes: %d steps)",
        pi, pc, len(todo), len(owned), n_rows, local_steps, num_steps)
    # pending_chunks verified every committed chunk (identity, sizes, sha256): damaged ones are recomputed.
    writer.log_event({"event": "run_start", "todo": todo, "skipped": sorted(set(owned) - set(todo)),
                      "damaged": writer.damaged})

    reasons = reasons or {}
    buffers: dict[int, dict] = {j: {"ids": [], "labels": [], "emb": [], "rejects": [], "rows": 0} for j in todo}
    need = {j: b - a for j, (a, b) in zip(todo, ranges)}
    committed: list[int] = []
    progress = Progress(n_rows, progress_every_s)
    engine.compile(local_batch)
    progress.t0 = time.perf_counter()
    if num_steps:
        ids = np.concatenate([np.arange(a, b, dtype=np.int64) for a, b in ranges]) if ranges else np.zeros(0, np.int64)
        batches = batches_for(ids, local_batch) if ids.size else iter(())
        for res in engine.run(batches, local_batch, num_steps, progress):
            touched = set()
            for j in np.unique(plan.chunk_of(res.record_id)).tolist():
                if j not in buffers:
                    raise ValueError(f"pipeline yielded record(s) of chunk {j}, which this process did not request")
                sel = plan.chunk_of(res.record_id) == j
                buf = buffers[j]
                buf["ids"].append(res.record_id[sel])
                buf["labels"].append(res.label[sel])
                buf["emb"].append(res.embedding[sel])
                buf["rows"] += int(sel.sum())
                touched.add(j)
            for rid, code in zip(res.rejected_ids.tolist(), res.reject_codes.tolist()):
                j = int(plan.chunk_of(rid))
                if j not in buffers:
                    raise ValueError(f"pipeline yielded rejected record {rid} of chunk {j}, not requested")
                buffers[j]["rejects"].append({
                    "record_id": int(rid),
                    "path": describe(int(rid)) if describe else None,
                    "code": int(code),
                    "reason": reasons.get(int(code), f"code {code}"),
                })
                buffers[j]["rows"] += 1
                touched.add(j)
            for j in sorted(touched):
                buf = buffers[j]
                if buf["rows"] > need[j]:
                    raise ValueError(f"chunk {j}: the pipeline yielded more rows than the chunk holds")
                if buf["rows"] == need[j]:
                    writer.commit_chunk(
                        j,
                        np.concatenate(buf["ids"]) if buf["ids"] else np.zeros(0, np.int64),
                        np.concatenate(buf["labels"]) if buf["labels"] else np.zeros(0, np.int64),
                        np.concatenate(buf["emb"]) if buf["emb"] else
                        np.zeros((0, manifest["embedding_dim"]), engine.storage_dtype),
                        buf["rejects"],
                    )
                    committed.append(j)
                    del buffers[j]
    if buffers:
        raise ValueError(
            f"the pipeline ended before chunks {sorted(buffers)} were complete (rows seen "
            f"{[buffers[j]['rows'] for j in sorted(buffers)]} of {[need[j] for j in sorted(buffers)]})"
        )
    elapsed = progress.elapsed()
    summary = {
        "process_index": pi,
        "process_count": pc,
        "chunks_computed": committed,
        "chunks_skipped": sorted(set(owned) - set(todo)),
        "chunks_damaged": writer.damaged,  # found damaged (or of another identity) and recomputed
        "rows": n_rows,
        "seconds": elapsed,
        "images_per_s": n_rows / elapsed if n_rows and elapsed > 0 else None,
        "devices": engine.num_devices,
        "backend": jax.default_backend(),
    }
    writer.write_run_summary(summary)
    distributed.barrier("synleak-embed-store-done")
    if pi == 0 and num_steps:  # a no-op rerun keeps the throughput of the run that did the work
        writer.update_manifest(throughput=summary, versions=versions(), process_count=pc)
    if pi == 0:
        logging.info("embed: %d records in %.1f s (%s images/s on process 0) -> %s", n_rows, elapsed,
                     f"{summary['images_per_s']:.1f}" if summary["images_per_s"] else "-", writer.path)
    return summary


# ------------------------------------------------------------------------------ simple batchers


def array_batches(
    images: np.ndarray,
    record_ids: np.ndarray,
    local_batch: int,
    labels: np.ndarray | None = None,
    reject_codes: np.ndarray | None = None,
) -> Iterator[dict]:
    """Batches already-normalised images ``[n, H, W, 3]`` following the pipeline contract.

    Rows with ``reject_codes > 0`` are marked invalid (rejected); the last batch is padded.
    """
    n = images.shape[0]
    labels = np.full((n,), -1, np.int64) if labels is None else np.asarray(labels, np.int64)
    codes = np.zeros((n,), np.int32) if reject_codes is None else np.asarray(reject_codes, np.int32)
    for s in range(0, n, local_batch):
        e = min(s + local_batch, n)
        pad = local_batch - (e - s)
        img = np.asarray(images[s:e], np.float32)
        if pad:
            img = np.concatenate([img, np.zeros((pad,) + img.shape[1:], np.float32)])
        yield {
            "image": img,
            "valid": np.concatenate([codes[s:e] == 0, np.zeros(pad, bool)]),
            "record_id": np.concatenate([np.asarray(record_ids[s:e], np.int64), np.full(pad, -1, np.int64)]),
            "label": np.concatenate([labels[s:e], np.full(pad, -1, np.int64)]),
            "reject_code": np.concatenate([codes[s:e], np.zeros(pad, np.int32)]),
        }


def embed_array(engine: EmbeddingEngine, images: np.ndarray, batch_size: int) -> np.ndarray:
    """Embeds normalised images ``[n, H, W, 3]`` (single process) -> ``[n, D]`` storage dtype."""
    if jax.process_count() != 1:
        raise ValueError("embed_array is single-process; use embed_to_store with several processes")
    local = engine.local_batch_size(batch_size)
    ids = np.arange(images.shape[0], dtype=np.int64)
    out = [r.embedding for r in engine.run(array_batches(images, ids, local), local)]
    return np.concatenate(out) if out else np.zeros((0, engine.spec.embedding_dim), engine.storage_dtype)
