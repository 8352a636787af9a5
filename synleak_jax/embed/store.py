"""On-disk embedding store: chunked, memory-mappable, resumable, identified by a manifest.

Layout of a store directory (one per (dataset, model, settings))::

    manifest.json                      identity of the store (see :func:`identity_diff`) + provenance
    chunks/chunk_000012.emb.npy        float32/float16 [n_valid, D] embeddings of chunk 12's valid records
    chunks/chunk_000012.ids.npy        int64 [n_valid] record ids (ascending)
    chunks/chunk_000012.labels.npy     int64 [n_valid] labels (-1 when unlabelled)
    chunks/chunk_000012.rejects.jsonl  one JSON object per rejected record: record_id, path, code, reason
    chunks/chunk_000012.done.json      commit marker, written LAST: counts, sha256 of each file, run id
    runs/computed.p<process>.jsonl     one line per chunk a run computed (run id, chunk, rows, time)
    runs/run.<run_id>.p<process>.json  per-run summary (throughput) written at the end of a run

Chunk plan: records ``[0, num_records)`` are cut into chunks of ``chunk_size = chunk_batches * batch_size``
consecutive record ids (the last chunk may be shorter); chunk ``j`` covers ``[j*chunk_size, (j+1)*chunk_size)``
and is owned by process ``j % process_count``. Every file of a chunk is written under a temporary name and
moved into place with ``os.replace``; the chunk counts as done only once its ``done.json`` marker exists, and
the marker is written after all other files. Several processes can therefore fill disjoint chunks of the
same store without any coordination beyond the plan, and a run killed at any moment leaves only whole
chunks behind; a rerun skips chunks whose marker exists.

:class:`EmbeddingStore` reads a complete store: ``.embeddings`` is an array-like ``[N, D]`` whose slices read
the memory-mapped chunk files (never the whole store), ``.record_ids`` / ``.labels`` int64 ``[N]``,
``.manifest`` dict, ``.rejects`` list of dicts. Rows are the valid records in record-id order.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
import uuid
from typing import Any, Iterable, Sequence

import numpy as np

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
CHUNK_DIR = "chunks"
RUNS_DIR = "runs"

#: Manifest keys that do not identify the store's content: they record where/how fast it was made and
#: may differ between runs that produce identical embeddings.
VOLATILE_KEYS = ("versions", "throughput", "created", "process_count", "notes", "dataset_path")


class StoreError(Exception):
    """A store is incomplete, corrupt, or does not match the request."""


class StoreMismatchError(StoreError):
    """An existing store was made with different settings than requested (lists what differs)."""

    def __init__(self, path: str, diffs: Sequence[tuple[str, Any, Any]]):
        self.path = path
        self.diffs = list(diffs)
        lines = "\n".join(f"  {k}: stored {_short(a)} vs requested {_short(b)}" for k, a, b in self.diffs)
        super().__init__(
            f"embedding store {path} was made with different settings; refusing to reuse it:\n{lines}\n"
            "Use a different output directory, or pass --overwrite to recompute it."
        )


def _short(v: Any, n: int = 120) -> str:
    s = json.dumps(v, sort_keys=True, default=str)
    return s if len(s) <= n else s[: n - 3] + "..."


# ----------------------------------------------------------------------------------------------- plan


@dataclasses.dataclass(frozen=True)
class ChunkPlan:
    """Deterministic cut of record ids ``[0, num_records)`` into chunks.

    Attributes:
      num_records: number of records in the source (valid + rejected).
      batch_size: global batch size (rows per jitted step over all devices of all processes).
      chunk_batches: global batches per chunk; ``chunk_size = chunk_batches * batch_size`` records.
    """

    num_records: int
    batch_size: int
    chunk_batches: int

    def __post_init__(self):
        if self.num_records < 0 or self.batch_size <= 0 or self.chunk_batches <= 0:
            raise ValueError(f"invalid chunk plan {self}")

    @property
    def chunk_size(self) -> int:
        return self.batch_size * self.chunk_batches

    @property
    def num_chunks(self) -> int:
        return -(-self.num_records // self.chunk_size)

    def chunk_range(self, j: int) -> tuple[int, int]:
        """Record-id range ``[start, stop)`` of chunk ``j``."""
        if not 0 <= j < self.num_chunks:
            raise IndexError(f"chunk {j} out of range [0, {self.num_chunks})")
        start = j * self.chunk_size
        return start, min(start + self.chunk_size, self.num_records)

    def chunk_of(self, record_id: np.ndarray) -> np.ndarray:
        return np.asarray(record_id) // self.chunk_size

    def owned_chunks(self, process_index: int, process_count: int) -> list[int]:
        """Chunks process ``process_index`` computes: ``j % process_count == process_index``."""
        return [j for j in range(self.num_chunks) if j % process_count == process_index]

    def to_dict(self) -> dict:
        return {
            "num_records": self.num_records,
            "batch_size": self.batch_size,
            "chunk_batches": self.chunk_batches,
            "chunk_size": self.chunk_size,
            "num_chunks": self.num_chunks,
        }

    @classmethod
    def from_dict(cls, d: dict) -> "ChunkPlan":
        return cls(int(d["num_records"]), int(d["batch_size"]), int(d["chunk_batches"]))


# -------------------------------------------------------------------------------------- atomic files


def _chunk_base(path: str, j: int) -> str:
    return os.path.join(path, CHUNK_DIR, f"chunk_{j:06d}")


def _atomic_write_bytes(dest: str, data: bytes) -> None:
    d = os.path.dirname(dest)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-" + os.path.basename(dest) + ".", dir=d)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, dest)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _atomic_save_npy(dest: str, arr: np.ndarray) -> str:
    """Writes ``arr`` as .npy under a temp name, fsyncs, renames; returns the file's sha256."""
    d = os.path.dirname(dest)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-" + os.path.basename(dest) + ".", dir=d)
    try:
        with os.fdopen(fd, "wb") as f:
            np.save(f, np.ascontiguousarray(arr), allow_pickle=False)
            f.flush()
            os.fsync(f.fileno())
        digest = _sha256_file(tmp)
        os.replace(tmp, dest)
        return digest
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _dumps(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, indent=1, default=str)


# ------------------------------------------------------------------------------------------ writing


def identity(manifest: dict) -> dict:
    """The part of a manifest that identifies the store's content (drops :data:`VOLATILE_KEYS`)."""
    return {k: v for k, v in manifest.items() if k not in VOLATILE_KEYS}


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict):
        out: dict[str, Any] = {}
        for k in d:
            out.update(_flatten(d[k], f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: d}


def identity_diff(stored: dict, requested: dict) -> list[tuple[str, Any, Any]]:
    """Fields (dotted names) whose values differ between two manifests' identities, with both values."""
    a = _flatten(json.loads(json.dumps(identity(stored), default=str)))
    b = _flatten(json.loads(json.dumps(identity(requested), default=str)))
    missing = object()
    diffs = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k, missing), b.get(k, missing)
        if va != vb:
            diffs.append((k, None if va is missing else va, None if vb is missing else vb))
    return diffs


class StoreWriter:
    """Creates or resumes a store directory and commits whole chunks atomically.

    Args:
      path: store directory.
      manifest: requested manifest; must contain ``"plan"`` (a :meth:`ChunkPlan.to_dict`) and
        ``"embedding_dim"``. An existing store with a different identity raises
        :class:`StoreMismatchError` unless ``overwrite`` is True, in which case its chunks are deleted.
      overwrite: recompute everything (remove existing chunks; only process 0 deletes).
      process_index: this process (0 writes nothing special; every process writes the same manifest).
    """

    def __init__(self, path: str, manifest: dict, *, overwrite: bool = False, process_index: int = 0,
                 run_id: str | None = None):
        self.path = os.path.abspath(path)
        self.manifest = dict(manifest)
        self.manifest.setdefault("format_version", FORMAT_VERSION)
        self.plan = ChunkPlan.from_dict(self.manifest["plan"])
        self.process_index = process_index
        self.run_id = run_id or uuid.uuid4().hex[:12]
        os.makedirs(os.path.join(self.path, CHUNK_DIR), exist_ok=True)
        os.makedirs(os.path.join(self.path, RUNS_DIR), exist_ok=True)
        mpath = os.path.join(self.path, MANIFEST)
        reuse = False
        if os.path.exists(mpath):
            with open(mpath) as f:
                stored = json.load(f)
            diffs = identity_diff(stored, self.manifest)
            if diffs and not overwrite:
                raise StoreMismatchError(self.path, diffs)
            reuse = not diffs and not overwrite
        if overwrite and process_index == 0:
            self._clear()
        if process_index == 0:
            # Temp files left by a killed run (never by this run: every process passes the init barrier
            # before writing a chunk).
            cdir = os.path.join(self.path, CHUNK_DIR)
            for name in os.listdir(cdir):
                if name.startswith(".tmp-"):
                    os.unlink(os.path.join(cdir, name))
        # Every process writes the same identity; atomic replace makes concurrent writes harmless. A resumed
        # store keeps its manifest (same identity; its provenance fields are updated at the end of the run).
        if not reuse:
            _atomic_write_bytes(mpath, _dumps(self.manifest).encode())

    def _clear(self) -> None:
        cdir = os.path.join(self.path, CHUNK_DIR)
        for name in os.listdir(cdir):
            os.unlink(os.path.join(cdir, name))

    def is_done(self, j: int) -> bool:
        return os.path.exists(_chunk_base(self.path, j) + ".done.json")

    def pending_chunks(self, chunks: Iterable[int]) -> list[int]:
        return [j for j in chunks if not self.is_done(j)]

    def commit_chunk(
        self,
        j: int,
        record_ids: np.ndarray,
        labels: np.ndarray,
        embeddings: np.ndarray,
        rejects: Sequence[dict],
    ) -> None:
        """Writes chunk ``j``'s files then its done marker (the commit point).

        Args:
          record_ids: int64 ``[n]`` valid record ids of the chunk, any order (sorted here).
          labels: int64 ``[n]``.
          embeddings: ``[n, D]`` in the manifest's storage dtype.
          rejects: dicts with at least ``record_id``; together with ``record_ids`` they must cover the
            chunk's record range exactly once.
        """
        start, stop = self.plan.chunk_range(j)
        record_ids = np.asarray(record_ids, np.int64)
        order = np.argsort(record_ids, kind="stable")
        record_ids, labels, embeddings = record_ids[order], np.asarray(labels, np.int64)[order], embeddings[order]
        rej_ids = sorted(int(r["record_id"]) for r in rejects)
        covered = np.sort(np.concatenate([record_ids, np.asarray(rej_ids, np.int64)]))
        if covered.shape[0] != stop - start or not np.array_equal(covered, np.arange(start, stop)):
            raise StoreError(
                f"chunk {j} of {self.path}: rows do not cover record ids [{start}, {stop}) exactly once "
                f"(got {covered.shape[0]} rows)"
            )
        D = int(self.manifest["embedding_dim"])
        sdt = np.dtype(self.manifest.get("storage_dtype", "float32"))
        if embeddings.shape != (record_ids.shape[0], D) or embeddings.dtype != sdt:
            raise StoreError(f"chunk {j}: embeddings {embeddings.shape} {embeddings.dtype}, expected [n,{D}] {sdt}")
        base = _chunk_base(self.path, j)
        shas = {
            "emb": _atomic_save_npy(base + ".emb.npy", embeddings),
            "ids": _atomic_save_npy(base + ".ids.npy", record_ids),
            "labels": _atomic_save_npy(base + ".labels.npy", labels),
        }
        rej_sorted = sorted(rejects, key=lambda r: int(r["record_id"]))
        rej_bytes = "".join(json.dumps(r, sort_keys=True) + "\n" for r in rej_sorted).encode()
        _atomic_write_bytes(base + ".rejects.jsonl", rej_bytes)
        shas["rejects"] = hashlib.sha256(rej_bytes).hexdigest()
        marker = {
            "chunk": j,
            "range": [start, stop],
            "num_valid": int(record_ids.shape[0]),
            "num_rejected": len(rej_sorted),
            "sha256": shas,
            "run_id": self.run_id,
            "process_index": self.process_index,
        }
        _atomic_write_bytes(base + ".done.json", _dumps(marker).encode())
        # Log line after the commit: a rerun's log lists exactly the chunks that rerun computed.
        self.log_event({"event": "chunk_done", "chunk": j, "rows": stop - start})

    def log_event(self, event: dict) -> None:
        line = json.dumps({"run_id": self.run_id, "process_index": self.process_index, **event}, sort_keys=True)
        logf = os.path.join(self.path, RUNS_DIR, f"computed.p{self.process_index}.jsonl")
        with open(logf, "a") as f:
            f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())

    def write_run_summary(self, summary: dict) -> None:
        dest = os.path.join(self.path, RUNS_DIR, f"run.{self.run_id}.p{self.process_index}.json")
        _atomic_write_bytes(dest, _dumps({"run_id": self.run_id, **summary}).encode())

    def update_manifest(self, **volatile) -> None:
        """Adds volatile fields (throughput, versions) to the manifest; identity fields never change."""
        for k in volatile:
            if k not in VOLATILE_KEYS:
                raise ValueError(f"{k!r} is an identity field of the manifest; it cannot be updated")
        mpath = os.path.join(self.path, MANIFEST)
        with open(mpath) as f:
            m = json.load(f)
        m.update(volatile)
        _atomic_write_bytes(mpath, _dumps(m).encode())


def read_log(path: str) -> list[dict]:
    """All chunk log events of a store (every process, every run), in file order per process."""
    rdir = os.path.join(path, RUNS_DIR)
    out = []
    if not os.path.isdir(rdir):
        return out
    for name in sorted(os.listdir(rdir)):
        if name.startswith("computed.p") and name.endswith(".jsonl"):
            with open(os.path.join(rdir, name)) as f:
                out.extend(json.loads(line) for line in f if line.strip())
    return out


# ------------------------------------------------------------------------------------------ reading


class ChunkedArray:
    """Read-only array-like ``[N, D]`` over memory-mapped chunk files.

    Supports ``.shape``, ``.dtype``, ``len``, ``[i]``, ``[a:b]`` (step 1) and integer-array indexing;
    ``np.asarray(x)`` materialises everything (only do that for small stores).
    """

    def __init__(self, files: Sequence[str], counts: Sequence[int], dim: int, dtype: np.dtype):
        self._files = list(files)
        self._counts = np.asarray(counts, np.int64)
        self._offsets = np.concatenate([[0], np.cumsum(self._counts)]).astype(np.int64)
        self._maps: dict[int, np.ndarray] = {}
        self.dtype = np.dtype(dtype)
        self.shape = (int(self._offsets[-1]), int(dim))
        self.ndim = 2

    def __len__(self) -> int:
        return self.shape[0]

    def _chunk(self, c: int) -> np.ndarray:
        m = self._maps.get(c)
        if m is None:
            m = np.load(self._files[c], mmap_mode="r", allow_pickle=False)
            self._maps[c] = m
        return m

    def _rows(self, a: int, b: int) -> np.ndarray:
        out = np.empty((max(b - a, 0), self.shape[1]), self.dtype)
        if b <= a:
            return out
        c0 = int(np.searchsorted(self._offsets, a, side="right") - 1)
        pos = a
        c = c0
        while pos < b:
            lo, hi = self._offsets[c], self._offsets[c + 1]
            take_hi = min(b, hi)
            if take_hi > pos:
                out[pos - a : take_hi - a] = self._chunk(c)[pos - lo : take_hi - lo]
            pos = max(pos, take_hi)
            c += 1
        return out

    def __getitem__(self, idx):
        if isinstance(idx, tuple):
            rows, rest = idx[0], idx[1:]
            return self[rows][(slice(None),) + rest] if not isinstance(rows, (int, np.integer)) else self[rows][rest]
        if isinstance(idx, slice):
            a, b, step = idx.indices(self.shape[0])
            if step != 1:
                return self[np.arange(a, b, step, dtype=np.int64)]
            return self._rows(a, b)
        if isinstance(idx, (int, np.integer)):
            i = int(idx)
            if i < 0:
                i += self.shape[0]
            if not 0 <= i < self.shape[0]:
                raise IndexError(f"row {idx} out of range for {self.shape[0]} rows")
            return self._rows(i, i + 1)[0]
        idx = np.asarray(idx)
        if idx.dtype == bool:
            idx = np.nonzero(idx)[0]
        idx = np.where(idx < 0, idx + self.shape[0], idx).astype(np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= self.shape[0]):
            raise IndexError("row index out of range")
        out = np.empty(idx.shape + (self.shape[1],), self.dtype)
        chunk = np.searchsorted(self._offsets, idx, side="right") - 1
        for c in np.unique(chunk):
            sel = chunk == c
            out[sel] = self._chunk(int(c))[idx[sel] - self._offsets[c]]
        return out

    def __array__(self, dtype=None, copy=None):
        a = self._rows(0, self.shape[0])
        return a if dtype is None else a.astype(dtype)


class EmbeddingStore:
    """A complete embedding store opened for reading (see the module docstring for the layout)."""

    def __init__(self, path: str, manifest: dict, embeddings: ChunkedArray, record_ids: np.ndarray,
                 labels: np.ndarray, rejects: list[dict]):
        self.path = path
        self.manifest = manifest
        self.embeddings = embeddings
        self.record_ids = record_ids
        self.labels = labels
        self.rejects = rejects

    def __len__(self) -> int:
        return self.embeddings.shape[0]

    @property
    def plan(self) -> ChunkPlan:
        return ChunkPlan.from_dict(self.manifest["plan"])

    @classmethod
    def open(cls, path: str, *, verify_checksums: bool = False) -> "EmbeddingStore":
        """Opens a store; raises :class:`StoreError` naming the missing chunks if it is incomplete.

        Args:
          verify_checksums: also re-hash every chunk file against its done marker (reads everything).
        """
        path = os.path.abspath(path)
        mpath = os.path.join(path, MANIFEST)
        if not os.path.exists(mpath):
            raise StoreError(f"{path} is not an embedding store (no {MANIFEST})")
        with open(mpath) as f:
            manifest = json.load(f)
        if manifest.get("format_version") != FORMAT_VERSION:
            raise StoreError(f"{mpath}: unsupported store format_version {manifest.get('format_version')!r}")
        plan = ChunkPlan.from_dict(manifest["plan"])
        missing = [j for j in range(plan.num_chunks) if not os.path.exists(_chunk_base(path, j) + ".done.json")]
        if missing:
            shown = ", ".join(map(str, missing[:20])) + (" ..." if len(missing) > 20 else "")
            raise StoreError(
                f"embedding store {path} is incomplete: {len(missing)} of {plan.num_chunks} chunks missing "
                f"(chunks {shown}); rerun synleak-embed with the same settings to finish it"
            )
        dim = int(manifest["embedding_dim"])
        dtype = np.dtype(manifest.get("storage_dtype", "float32"))
        files, counts, ids, labels, rejects = [], [], [], [], []
        for j in range(plan.num_chunks):
            base = _chunk_base(path, j)
            with open(base + ".done.json") as f:
                marker = json.load(f)
            for suffix in (".emb.npy", ".ids.npy", ".labels.npy", ".rejects.jsonl"):
                if not os.path.exists(base + suffix):
                    raise StoreError(f"embedding store {path}: chunk {j} is marked done but {base + suffix} is missing")
            if verify_checksums:
                for key, suffix in (("emb", ".emb.npy"), ("ids", ".ids.npy"), ("labels", ".labels.npy"),
                                    ("rejects", ".rejects.jsonl")):
                    if _sha256_file(base + suffix) != marker["sha256"][key]:
                        raise StoreError(f"embedding store {path}: checksum mismatch in {base + suffix}")
            cid = np.load(base + ".ids.npy", allow_pickle=False)
            clab = np.load(base + ".labels.npy", allow_pickle=False)
            emb = np.load(base + ".emb.npy", mmap_mode="r", allow_pickle=False)
            if cid.shape[0] != marker["num_valid"] or emb.shape != (cid.shape[0], dim) or emb.dtype != dtype:
                raise StoreError(f"embedding store {path}: chunk {j} files disagree with its marker/manifest")
            files.append(base + ".emb.npy")
            counts.append(cid.shape[0])
            ids.append(cid)
            labels.append(clab)
            with open(base + ".rejects.jsonl") as f:
                rejects.extend(json.loads(line) for line in f if line.strip())
        record_ids = np.concatenate(ids) if ids else np.zeros((0,), np.int64)
        if record_ids.size > 1 and not np.all(np.diff(record_ids) > 0):
            raise StoreError(f"embedding store {path}: record ids are not strictly increasing")
        return cls(path, manifest, ChunkedArray(files, counts, dim, dtype), record_ids,
                   np.concatenate(labels) if labels else np.zeros((0,), np.int64), rejects)
