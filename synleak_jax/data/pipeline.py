"""grain input pipeline: source -> process shard -> decode (+ optional align) -> resize -> normalise -> batches.

Every batch is a dict of numpy arrays with leading dimension ``batch_size`` (docs/architecture.md):

* ``image``       float32 ``[B, H, W, 3]``: the stored colour order undone (``channel_order``, data/channels.py),
                  then normalised by the model's :class:`InputSpec` (its channel order applied);
                  all zeros for padding and rejected rows;
* ``valid``       bool ``[B]``: True only for records that decoded (and aligned) correctly;
* ``record_id``   int64 ``[B]``: global index into the source, -1 for padding;
* ``label``       int64 ``[B]``: the source's label, -1 when unlabelled or padding;
* ``reject_code`` int32 ``[B]``: 0 for good rows and padding, else a code of :data:`rejects.REASONS`.

Sharding is by JAX process, deterministic and independent of the worker count: "contiguous" gives process p
the ids ``[p*S, min((p+1)*S, N))`` with ``S = ceil(N/P)``; "strided" gives ``p, p+P, p+2P, ...``. Every process
yields :func:`num_batches` batches (short shards are padded), and the union of valid + rejected ids over the
processes is exactly ``range(N)``, each id once.

Worker processes (``num_workers > 0``) use grain's ``mp_prefetch``; batch i is always built from the same
records, so the output does not depend on the number of workers. Module import has no side effects (grain
workers re-import it).
"""

from __future__ import annotations

import time
from typing import Callable, Iterator

import grain
import numpy as np
from absl import flags, logging

from synleak_jax.data import channels, decode, rejects

AlignFn = Callable[[np.ndarray], "np.ndarray | None"]


def shard_size(num_records: int, process_count: int) -> int:
    """Records per process slot: ``ceil(N / P)``."""
    return -(-int(num_records) // int(process_count)) if num_records else 0


def num_batches(num_records: int, batch_size: int, process_count: int = 1) -> int:
    """Batches every process yields: ``ceil(ceil(N / P) / B)`` (the same on all processes)."""
    if batch_size <= 0 or process_count <= 0:
        raise ValueError("batch_size and process_count must be positive")
    return -(-shard_size(num_records, process_count) // int(batch_size))


def shard_ids(num_records: int, process_index: int, process_count: int, strategy: str = "contiguous") -> np.ndarray:
    """Global record ids owned by one process, int64 ``[n_p]`` in increasing order."""
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} not in [0, {process_count})")
    if strategy == "contiguous":
        s = shard_size(num_records, process_count)
        return np.arange(min(process_index * s, num_records), min((process_index + 1) * s, num_records),
                         dtype=np.int64)
    if strategy == "strided":
        return np.arange(process_index, num_records, process_count, dtype=np.int64)
    raise ValueError(f"shard strategy must be 'contiguous' or 'strided', got {strategy!r}")


class LoadRecord:
    """Picklable per-record transform: local position -> dict(image uint8 [H,W,3], record_id, label, reject_code).

    Runs in grain workers. Any :class:`rejects.RecordError` (read, decode, pixel limit, alignment) becomes a
    reject row; any other exception from ``align_fn`` too (code ALIGN_FAILED), an ``OSError`` below the source
    UNREADABLE, a ``MemoryError`` OUT_OF_MEMORY, and anything else UNEXPECTED (logged with its traceback), so one
    bad record never stops the pipeline. ``swap``: reverse the decoded channels (stored BGR, see data/channels.py)
    before alignment and resizing.
    """

    def __init__(self, source, ids: np.ndarray, height: int, width: int, align_fn: AlignFn | None = None,
                 max_pixels: int = decode.DEFAULT_MAX_PIXELS, swap: bool = False):
        self.source = source
        self.ids = np.asarray(ids, dtype=np.int64)
        self.height, self.width = int(height), int(width)
        self.align_fn = align_fn
        self.max_pixels = int(max_pixels)
        self.swap = bool(swap)

    def __call__(self, pos: int) -> dict:
        h, w = self.height, self.width
        pos = int(pos)
        if pos >= len(self.ids):
            return {"image": np.zeros((h, w, 3), np.uint8), "record_id": -1, "label": -1, "reject_code": 0}
        rid = int(self.ids[pos])
        label = -1
        try:
            data, label = self.source.read_record(rid)
            # Error details only; reject entries take source.describe(rid) later (costly for some sources).
            where = f"record {rid}"
            if self.align_fn is None:
                rgb = decode.decode_rgb(data, where, size=(h, w), max_pixels=self.max_pixels)
                if self.swap:  # per-channel resize commutes with the swap: swap the small image
                    rgb = np.ascontiguousarray(rgb[..., ::-1])
            else:
                rgb = decode.decode_rgb(data, where, size=None, max_pixels=self.max_pixels)
                if self.swap:  # the detector needs true RGB
                    rgb = np.ascontiguousarray(rgb[..., ::-1])
                rgb = self._align(rgb, where)
                rgb = decode.resize_rgb(rgb, h, w)
            code = 0
        except rejects.RecordError as e:
            rgb, code = np.zeros((h, w, 3), np.uint8), e.code
            if label == -1:
                label = self._safe_label(rid)
        except OSError:  # I/O error below the source (EIO, stale NFS handle, ...): reject, keep going
            rgb, code = np.zeros((h, w, 3), np.uint8), rejects.UNREADABLE
            label = self._safe_label(rid)
        except MemoryError:
            rgb, code = np.zeros((h, w, 3), np.uint8), rejects.OUT_OF_MEMORY
            label = self._safe_label(rid)
        except Exception:  # a bug or a foreign library's error on one record: keep the run, report it loudly
            logging.exception("unexpected error reading record %d (rejected as UNEXPECTED)", rid)
            rgb, code = np.zeros((h, w, 3), np.uint8), rejects.UNEXPECTED
            label = self._safe_label(rid)
        return {"image": rgb, "record_id": rid, "label": int(label), "reject_code": code}

    def _align(self, rgb: np.ndarray, where: str) -> np.ndarray:
        try:
            out = self.align_fn(rgb)
        except rejects.RecordError:
            raise
        except Exception as e:  # a detector failure on one image must not stop the run
            raise rejects.RecordError(rejects.ALIGN_FAILED, f"{where}: {type(e).__name__}: {e}") from None
        if out is None:
            raise rejects.RecordError(rejects.ALIGN_FAILED, f"{where}: no face")
        out = np.asarray(out)
        if out.dtype != np.uint8:
            out = np.clip(np.rint(out), 0, 255).astype(np.uint8)
        return out

    def _safe_label(self, rid: int) -> int:
        try:
            return int(self.source.label(rid))
        except Exception:  # the label of an unreadable RecordIO record is unknown
            return -1


class CollateNormalize:
    """Picklable batch function: list of per-record dicts -> the batch dict (normalised float32 images).

    Normalisation is ``(x - mean) / std`` in float32, one image at a time into its slot of the batch (each image
    stays in cache), on flat contiguous arrays: the uint8 pixels are cast to float32 in place (channels permuted
    to the model's order by three strided column copies when it is BGR), then one subtraction of the tiled
    ``mean`` and one division by the tiled ``std``. numpy never iterates a length-3 inner axis, which made
    ``(img[..., ::-1] - mean) / std`` ~5x slower. These are the float32 ops of ``spec.normalize``, so the result
    is bit-identical to it (checked at construction on a probe, with a fallback to ``spec.normalize`` for specs
    that are not a per-channel affine map of the levels).
    """

    def __init__(self, spec, normalize: bool = True):
        self.spec = spec
        self.normalize = normalize
        self._affine = False
        if normalize and hasattr(spec, "mean") and hasattr(spec, "std"):
            try:  # per-channel constants in the model's channel order (a scalar applies to all three)
                self._mean, self._std = (np.broadcast_to(np.asarray(v, np.float32), (3,)).copy()
                                         for v in (spec.mean, spec.std))
            except ValueError:
                return  # not per-channel constants: spec.normalize does the work
            # Source (RGB) channel read for each model channel; None = same order.
            self._src = (2, 1, 0) if getattr(spec, "channel_order", "RGB") == "BGR" else None
            probe = np.random.default_rng(0).integers(0, 256, (4, 5, 3), dtype=np.uint8)
            got = np.empty(probe.shape, np.float32)
            self._affine_one(probe, got, *self._tables(4 * 5))
            self._affine = np.array_equal(got, np.asarray(spec.normalize(probe), dtype=np.float32))

    def _tables(self, pixels: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(mean tiled float32 [pixels*3], std tiled float32 [pixels*3], scratch float32 [pixels, 3])."""
        return np.tile(self._mean, pixels), np.tile(self._std, pixels), np.empty((pixels, 3), np.float32)

    def _affine_one(self, img: np.ndarray, out: np.ndarray, mean_flat: np.ndarray, std_flat: np.ndarray,
                    scratch: np.ndarray) -> None:
        """``out[h, w, c] = (img[h, w, src[c]] - mean[c]) / std[c]``; img uint8 [H,W,3], out float32 [H,W,3]."""
        flat = out.reshape(-1)
        if self._src is None:
            flat[...] = img.reshape(-1)
        else:
            scratch[...] = img.reshape(-1, 3)  # contiguous uint8 -> float32 cast, then float column copies
            dst = out.reshape(-1, 3)
            for c in range(3):
                dst[:, c] = scratch[:, self._src[c]]
        np.subtract(flat, mean_flat, out=flat)
        np.divide(flat, std_flat, out=flat)

    def normalize_images(self, images, valid: np.ndarray) -> np.ndarray:
        """uint8 ``[B, H, W, 3]`` (array or sequence of images) -> normalised float32; rows not ``valid`` = 0."""
        h, w, _ = images[0].shape
        out = np.empty((len(images), h, w, 3), np.float32)
        tables = self._tables(h * w) if self._affine else None
        for i, img in enumerate(images):
            if not valid[i]:
                out[i] = 0  # padding / rejected rows are zeros
            elif tables is not None:
                self._affine_one(img, out[i], *tables)
            else:
                out[i] = self.spec.normalize(img)
        return out

    def __call__(self, rows: list[dict]) -> dict:
        rid = np.fromiter((r["record_id"] for r in rows), np.int64, len(rows))
        code = np.fromiter((r["reject_code"] for r in rows), np.int32, len(rows))
        label = np.fromiter((r["label"] for r in rows), np.int64, len(rows))
        valid = (rid >= 0) & (code == 0)
        label = np.where(rid >= 0, label, -1)
        if self.normalize:
            img = self.normalize_images([r["image"] for r in rows], valid)
        else:
            img = np.stack([r["image"] for r in rows])
            img[~valid] = 0
        return {"image": img, "valid": valid, "record_id": rid, "label": label, "reject_code": code}


def _ensure_flags_parsed() -> None:
    # grain's mp_prefetch reads absl flags; outside absl.app.run they are unparsed.
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


class Pipeline:
    """Iterable of batches for one process; ``len()`` = :func:`num_batches`. Re-iterable (fresh each time).

    Attributes:
      ids: int64 global record ids of this process's shard.
      start_batch: first batch yielded (resume support); iteration yields batches start_batch..len-1.
    """

    def __init__(self, source, spec, batch_size: int, process_index: int = 0, process_count: int = 1,
                 num_workers: int = 0, *, align_fn: AlignFn | None = None, shard: str = "contiguous",
                 max_pixels: int = decode.DEFAULT_MAX_PIXELS, normalize: bool = True, start_batch: int = 0,
                 read_threads: int | None = None, worker_buffer: int = 2, log_every_s: float = 30.0,
                 channel_order: str = "auto"):
        if isinstance(spec, str):
            from synleak_jax.models.registry import get_spec
            spec = get_spec(spec)
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        n = len(source)
        if n == 0:
            raise rejects.DataError(f"dataset is empty: {getattr(source, 'root', source)!r}")
        self.source, self.spec = source, spec
        self.batch_size = int(batch_size)
        self.process_index, self.process_count = int(process_index), int(process_count)
        self.num_workers = int(num_workers)
        self.ids = shard_ids(n, process_index, process_count, shard)
        self.num_batches = num_batches(n, batch_size, process_count)
        if not 0 <= start_batch <= self.num_batches:
            raise ValueError(f"start_batch {start_batch} not in [0, {self.num_batches}]")
        self.start_batch = int(start_batch)
        #: The stored colour order, resolved for this source (applied right after decoding, before InputSpec's).
        self.channel_order = channels.resolve_channel_order(channel_order, source)
        self._load = LoadRecord(source, self.ids, spec.height, spec.width, align_fn, max_pixels,
                                swap=self.channel_order.swap)
        # With worker processes the batches cross process boundaries as uint8 (4x less shared memory to write,
        # map and copy than float32) and are normalised here on arrival (same operations, same bits).
        self._collate = CollateNormalize(spec, normalize and self.num_workers == 0)
        self._normalize_on_arrival = CollateNormalize(spec) if normalize and self.num_workers > 0 else None
        if read_threads is None:
            # PIL and simplejpeg release the GIL while decoding, so decode threads help in-process (measured
            # 1.45x for 112px JPEGs, 1.9x for 1024px PNGs on 2 cores); inside worker processes one thread each.
            import os
            read_threads = min(4, os.cpu_count() or 1) if self.num_workers == 0 else 0
        self.read_threads, self.worker_buffer = int(read_threads), int(worker_buffer)
        self.log_every_s = log_every_s

    def __len__(self) -> int:
        return self.num_batches

    def describe_preprocessing(self) -> dict:
        """Data-layer settings that change the pixels, for the embedding-store manifest."""
        return {"channel_order": self.channel_order.to_dict(), "max_pixels": self._load.max_pixels}

    def dataset(self) -> "grain.IterDataset":
        """The grain dataset (positions padded to a whole number of batches)."""
        b = self.batch_size
        ds = grain.MapDataset.range(self.num_batches * b).map(self._load)
        ds = ds.batch(b, batch_fn=self._collate)
        ds = ds[self.start_batch:]
        it = ds.to_iter_dataset(grain.ReadOptions(num_threads=self.read_threads,
                                                  prefetch_buffer_size=max(1, 2 * self.read_threads)))
        if self.num_workers > 0:
            _ensure_flags_parsed()
            it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=self.num_workers,
                                                             per_worker_buffer_size=self.worker_buffer))
        return it

    def __iter__(self) -> Iterator[dict]:
        total = self.num_batches - self.start_batch
        t0 = last = time.perf_counter()
        copy, norm = self.num_workers > 0, self._normalize_on_arrival
        for k, batch in enumerate(self.dataset(), 1):
            if copy:
                # Batches from workers arrive in grain shared-memory arrays; copy them into ordinary arrays (the
                # uint8 images into their normalised float32 batch) so each segment is released now rather than
                # whenever the consumer drops the batch.
                batch = {key: norm.normalize_images(v, batch["valid"]) if key == "image" and norm else np.array(v)
                         for key, v in batch.items()}
            now = time.perf_counter()
            if self.log_every_s and now - last >= self.log_every_s:
                rate = k * self.batch_size / (now - t0)
                eta = (total - k) * self.batch_size / max(rate, 1e-9)
                logging.info("data: batch %d/%d, %.0f images/s, ETA %.0f s", k, total, rate, eta)
                last = now
            yield batch


def make_pipeline(source, spec, batch_size: int, process_index: int = 0, process_count: int = 1,
                  num_workers: int = 0, **kwargs) -> Pipeline:
    """Builds the batch iterator for one process (see module docstring and :class:`Pipeline`).

    Args:
      source: a source (data/sources.py, recordio.py, tfds_builders.py, verification.py).
      spec: :class:`InputSpec` or a registered model name.
      batch_size: rows per batch (the last batch is padded with record_id -1, valid False).
      process_index, process_count: e.g. ``jax.process_index(), jax.process_count()``.
      num_workers: grain worker processes for decoding (0 = in this process).
      kwargs: align_fn, shard ("contiguous"/"strided"), max_pixels, normalize, start_batch, read_threads
        (decode threads per process; default min(4, cpus) without workers, 0 inside workers; batches and
        their order do not depend on it), channel_order ("rgb" | "bgr" | "auto": the order of the stored
        pixels, see data/channels.py; resolved into ``pipeline.channel_order``).
    """
    return Pipeline(source, spec, batch_size, process_index, process_count, num_workers, **kwargs)


def collect_rejects(source, batches) -> list[rejects.RejectEntry]:
    """Reject entries of an iterable of batches (consumes it)."""
    out = []
    for b in batches:
        out.extend(rejects.entries_from_batch(source, b))
    return out
