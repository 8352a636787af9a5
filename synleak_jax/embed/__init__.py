"""synleak_jax.embed: the sharded embedding engine and the on-disk embedding store.

* :class:`EmbeddingEngine` — jit over a Mesh whose "data" axis spans all devices of all processes.
* :func:`embed_to_store` — resumable, chunked, multi-process writing of a store.
* :class:`EmbeddingStore` — read API (``.embeddings``, ``.record_ids``, ``.labels``, ``.manifest``, ``.rejects``).
"""

from synleak_jax.embed.store import (
    ChunkPlan,
    ChunkedArray,
    EmbeddingStore,
    StoreError,
    StoreMismatchError,
    StoreWriter,
    identity_diff,
    read_log,
)

__all__ = [
    "ChunkPlan",
    "ChunkedArray",
    "EmbeddingStore",
    "StoreError",
    "StoreMismatchError",
    "StoreWriter",
    "identity_diff",
    "read_log",
    "EmbeddingEngine",
    "embed_to_store",
    "build_manifest",
    "array_batches",
    "embed_array",
]


def __getattr__(name):
    # The engine imports jax; keep `import synleak_jax.embed` (store reading) light for grain workers.
    if name in ("EmbeddingEngine", "embed_to_store", "build_manifest", "array_batches", "embed_array"):
        from synleak_jax.embed import engine

        return getattr(engine, name)
    raise AttributeError(name)
