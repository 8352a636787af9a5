"""Feeding the engine from the data layer: the grain pipeline over exactly the records still to embed.

A resumed run embeds only the chunks that are not done yet, so the engine asks for a list of global
record ids. :class:`SubsetSource` presents those records as a source of their own (``len = len(ids)``),
the pipeline (``data.pipeline.make_pipeline``, single-process view) batches it, and
:func:`pipeline_batches` maps the batches' local record ids back to global ids. Everything here is
picklable, so grain worker processes can decode in parallel.
"""

from __future__ import annotations

from typing import Callable, Iterator

import numpy as np


class SubsetSource:
    """The records ``ids`` (global ids, int64 ``[n]``) of ``source``, re-indexed ``0..n-1``.

    Implements the source interface the pipeline uses (``len``, ``[i]``, ``read_record``, ``label``,
    ``describe``, ``read_rgb``, ``fingerprint``, ``num_classes``); ``describe`` keeps the global path.
    """

    def __init__(self, source, ids: np.ndarray):
        self.source = source
        self.ids = np.asarray(ids, np.int64)
        self.num_classes = getattr(source, "num_classes", None)
        n = len(source)
        if self.ids.size and (self.ids.min() < 0 or self.ids.max() >= n):
            raise IndexError(f"record ids outside [0, {n}) requested from {source!r}")

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    def _g(self, i: int) -> int:
        return int(self.ids[int(i)])

    def __getitem__(self, i: int):
        return self.source[self._g(i)]

    def read_record(self, i: int):
        if hasattr(self.source, "read_record"):
            return self.source.read_record(self._g(i))
        return self.source[self._g(i)], self.source.label(self._g(i))

    def read_bytes(self, i: int):
        return self.source[self._g(i)]

    def label(self, i: int) -> int:
        return self.source.label(self._g(i))

    def describe(self, i: int) -> str:
        return self.source.describe(self._g(i))

    def read_rgb(self, i: int, *args, **kwargs):
        return self.source.read_rgb(self._g(i), *args, **kwargs)

    def fingerprint(self) -> str:
        return self.source.fingerprint()


class RecordRange(SubsetSource):
    """Records ``[start, stop)`` of a source as a dataset of their own (``--config.data.<role>.records``): e.g.
    DCFace's training split of CASIA-WebFace is its first 95% of image records, the held-out non-members the last
    5%. The fingerprint names the range, so a range's store is never mistaken for the whole source's."""

    def __init__(self, source, start: int, stop: int):
        super().__init__(source, np.arange(start, stop, dtype=np.int64))
        self.start, self.stop = int(start), int(stop)
        self.class_names = getattr(source, "class_names", None)
        self.release = getattr(source, "release", None)

    def labels(self) -> np.ndarray:
        return np.asarray(self.source.labels(), np.int64)[self.start:self.stop]

    def path(self, i: int):
        return self.source.path(self._g(i))

    def fingerprint(self) -> str:
        return f"{self.source.fingerprint()}[{self.start}:{self.stop}]"


def parse_record_range(spec: str, n: int) -> tuple[int, int]:
    """``"start:stop"`` -> record indices ``[start, stop)`` of a source of ``n`` records. Integers are record
    indices; numbers written with a decimal point are fractions of ``n`` (``"0:0.95"``, ``"0.95:1.0"``), rounded
    down as ``int(fraction * n)`` (DCFace's own split rule). An empty side means the start / the end. Raises
    ValueError for anything else."""
    a, sep, b = str(spec).partition(":")
    if not sep:
        raise ValueError(f"records={spec!r}: expected 'start:stop' (record indices, or fractions like 0.95:1.0)")
    fractional = "." in a or "." in b

    def side(v: str, default: int) -> int:
        v = v.strip()
        if not v:
            return default
        x = float(v) if fractional else int(v)
        if fractional and not 0.0 <= x <= 1.0:
            raise ValueError(f"records={spec!r}: fractions must be in [0, 1]")
        return int(x * n) if fractional else int(x)

    try:
        start, stop = side(a, 0), side(b, n)
    except ValueError as e:
        raise ValueError(f"records={spec!r}: {e}" if "records=" not in str(e) else str(e)) from None
    if not 0 <= start < stop <= n:
        raise ValueError(f"records={spec!r}: gives [{start}, {stop}) of {n} records (empty or out of range)")
    return start, stop


def pipeline_batches(source, spec, *, num_workers: int = 0, **pipeline_kwargs) -> Callable[[np.ndarray, int], Iterator[dict]]:
    """Returns ``batches_for(ids, local_batch)`` for :func:`synleak_jax.embed.engine.embed_to_store`.

    Args:
      source: a data-layer source.
      spec: the model's InputSpec.
      num_workers: grain decoding worker processes (0 = in this process).
      pipeline_kwargs: passed to ``make_pipeline`` (align_fn, max_pixels, read_threads, ...).
    """
    from synleak_jax.data.pipeline import make_pipeline

    def batches_for(ids: np.ndarray, local_batch: int) -> Iterator[dict]:
        ids = np.asarray(ids, np.int64)
        sub = SubsetSource(source, ids)
        pipe = make_pipeline(sub, spec, local_batch, 0, 1, num_workers, **pipeline_kwargs)
        for batch in pipe:
            local = np.asarray(batch["record_id"], np.int64)
            batch = dict(batch)
            batch["record_id"] = np.where(local >= 0, ids[np.maximum(local, 0)], -1)
            yield batch

    return batches_for
