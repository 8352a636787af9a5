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
