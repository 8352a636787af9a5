"""On-disk embedding store: chunked, memory-mappable, resumable, identified by a manifest.

Layout of a store directory (one per (dataset, model, settings))::

    manifest.json                      identity of the store (see :func:`identity_diff`) + provenance
    chunks/chunk_000012.emb.npy        float32/float16 [n_valid, D] embeddings of chunk 12's valid records
    chunks/chunk_000012.ids.npy        int64 [n_valid] record ids (ascending)
    chunks/chunk_000012.labels.npy     int64 [n_valid] labels (-1 when unlabelled)
    chunks/chunk_000012.rejects.jsonl  one JSON object per rejected record: record_id, path, code, reason
    chunks/chunk_000012.done.json      commit marker, written LAST: counts, size and sha256 of each file, the
                                       store identity's digest, run id
    runs/computed.p<process>.jsonl     one line per chunk a run computed (run id, chunk, rows, time)
    runs/run.<run_id>.p<process>.json  per-run summary (throughput) written at the end of a run

Chunk plan: records ``[0, num_records)`` are cut into chunks of ``chunk_size = chunk_batches * batch_size``
consecutive record ids (the last chunk may be shorter); chunk ``j`` covers ``[j*chunk_size, (j+1)*chunk_size)``
and is owned by process ``j % process_count``. Every file of a chunk is written under a temporary name and
moved into place with ``os.replace``; the chunk counts as done only once its ``done.json`` marker exists, and
the marker is written after all other files. Several processes can therefore fill disjoint chunks of the
same store without any coordination beyond the plan, and a run killed at any moment leaves only whole
chunks behind.

Verification (the store checks itself, :func:`check_chunk`): a marker records the size and sha256 of each of the
chunk's files and :func:`identity_digest` of the manifest it was written for. A rerun adopts a chunk only when
its marker names the requested identity and every file has the recorded size and sha256; any other chunk
(truncated or bit-flipped file, missing file, unreadable marker, a marker of another identity — e.g. left from
other settings after ``manifest.json`` was lost) is recomputed and logged (``chunk_damaged`` in the run log).
:meth:`EmbeddingStore.open` checks the same by default and raises :class:`StoreError` naming the damaged file.
Hashing runs at ~1 GB/s (docs/embed.md); a file verified once is not re-hashed by the same process while its
``stat`` (device, inode, size, mtime, ctime) is unchanged.

:class:`EmbeddingStore` reads a complete store: ``.embeddings`` is an array-like ``[N, D]`` whose slices read
the chunk files with positioned reads (never the whole store), ``.record_ids`` / ``.labels`` int64 ``[N]``,
``.manifest`` dict, ``.rejects`` list of dicts. Rows are the valid records in record-id order.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import stat
import uuid
from typing import Any, Iterable, Sequence

import numpy as np
from absl import logging

from synleak_jax.files import NpyFile, atomic_save_npy, atomic_write, sha256_file

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
CHUNK_DIR = "chunks"
RUNS_DIR = "runs"
#: The files of a chunk besides its marker: marker key -> file suffix.
CHUNK_FILES = (("emb", ".emb.npy"), ("ids", ".ids.npy"), ("labels", ".labels.npy"), ("rejects", ".rejects.jsonl"))
#: A marker is a few hundred bytes; anything larger is not one of ours (read with this cap).
MAX_MARKER_BYTES = 1 << 16

#: Manifest keys that do not identify the store's content: they record where/how fast it was made and
#: may differ between runs that produce identical embeddings.
VOLATILE_KEYS = ("versions", "throughput", "created", "process_count", "notes", "dataset_path")


class StoreError(Exception):
    """A store is incomplete, corrupt, or does not match the request."""


class ChunkDamagedError(StoreError):
    """A chunk's marker or files fail verification (``file``: the file named, ``reason``: what is wrong)."""

    def __init__(self, chunk: int, file: str, reason: str):
        self.chunk, self.file, self.reason = chunk, file, reason
        super().__init__(f"chunk {chunk}: {file}: {reason}")


class StoreMismatchError(StoreError):
    """An existing store was made with different settings than requested (lists what differs)."""

    def __init__(self, path: str, diffs: Sequence[tuple[str, Any, Any]]):
        self.path = path
        self.diffs = list(diffs)
        super().__init__(f"{self.summary}\nUse a different output directory, or pass --overwrite to recompute it.")

    @property
    def summary(self) -> str:
        """The refusal and the differing fields, without the remedy (programs add their own)."""
        lines = "\n".join(f"  {k}: stored {_short(a)} vs requested {_short(b)}" for k, a, b in self.diffs)
        return f"embedding store {self.path} was made with different settings; refusing to reuse it:\n{lines}"


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


def identity_digest(manifest: dict) -> str:
    """sha256 (hex) of the manifest's :func:`identity` in canonical JSON: what every chunk marker records, so a
    chunk is only ever adopted by a store of the identity it was computed for (even with ``manifest.json`` lost)."""
    canonical = json.loads(json.dumps(identity(manifest), default=str))
    return hashlib.sha256(json.dumps(canonical, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


# ------------------------------------------------------------------------------------------ verification

#: Files this process has hashed and found equal to their marker, keyed by what ``stat`` says of them
#: (device, inode, size, mtime_ns, ctime_ns) and the expected sha256: a store opened twice by one process (the
#: audit opens each store more than once) is hashed once. Any write changes ctime (which ``utime`` cannot set
#: back), so a file changed after its verification is hashed again.
_VERIFIED: set[tuple] = set()


def _file_problem(path: str, want_size: int | None, want_sha: str, hash_it: bool) -> str | None:
    """Why ``path`` does not match its marker (missing, not a regular file, size, sha256), or None."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return "missing"
    except OSError as e:
        return f"cannot stat: {e.strerror or e}"
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file"
    if want_size is not None and st.st_size != want_size:
        return (f"{st.st_size} bytes, its marker records {want_size} "
                f"({'truncated' if st.st_size < want_size else 'bytes added'})")
    if not hash_it:
        return None
    key = (path, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, want_sha)
    if key in _VERIFIED:
        return None
    try:
        got = sha256_file(path)
    except OSError as e:
        return f"cannot read: {e.strerror or e}"
    if got != want_sha:
        return f"sha256 {got[:16]}... differs from its marker's {str(want_sha)[:16]}... (content damaged)"
    _VERIFIED.add(key)
    return None


#: Fields every marker written since markers verify themselves holds.
_MARKER_V11_KEYS = ("identity", "bytes", "marker_sha256")


def _read_marker(mpath: str, j: int) -> dict | None:
    """Chunk ``j``'s marker, None when there is none; :class:`ChunkDamagedError` when it is not a marker."""
    try:
        with open(mpath, "rb") as f:
            raw = f.read(MAX_MARKER_BYTES + 1)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise ChunkDamagedError(j, mpath, f"unreadable marker: {e.strerror or e}") from None
    try:
        if len(raw) > MAX_MARKER_BYTES:
            raise ValueError(f"larger than {MAX_MARKER_BYTES} bytes")
        marker = json.loads(raw)
        if not isinstance(marker, dict) or not isinstance(marker.get("sha256"), dict):
            raise ValueError("no sha256 table")
    except ValueError as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ChunkDamagedError(j, mpath, f"unreadable marker ({e})") from None
    # Markers since format 1.1 carry all three fields; a marker with some but not all of them was altered (a
    # changed byte in a key name), one with none predates them (legacy).
    present = [k in marker for k in _MARKER_V11_KEYS]
    if any(present) and not all(present):
        raise ChunkDamagedError(j, mpath, "marker content damaged (fields missing)")
    if all(present) and marker["marker_sha256"] != _marker_digest(marker):
        raise ChunkDamagedError(j, mpath, "marker content damaged (its own sha256 does not match)")
    return marker


def _marker_digest(marker: dict) -> str:
    """sha256 of a marker's fields but ``marker_sha256`` itself: a changed byte in a marker is seen as damage
    to the marker, not blamed on the file whose recorded hash it altered."""
    body = {k: v for k, v in marker.items() if k != "marker_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def check_chunk(path: str, j: int, plan: ChunkPlan, identity_sha: str, *, verify_checksums: bool = True,
                legacy_ok: bool = False) -> dict | None:
    """Verifies chunk ``j`` of the store at ``path``; returns its marker, or None when it has none (not computed).

    Checks: the marker parses and names chunk ``j`` with the plan's record range and the store identity
    ``identity_sha`` (:func:`identity_digest`); every chunk file exists, is a regular file, has the size the
    marker records and (``verify_checksums``) its sha256. ``legacy_ok``: accept a marker written before markers
    recorded identities and sizes (it is then checked by sha256 only).

    Raises:
      ChunkDamagedError: naming the file that fails and why.
    """
    base = _chunk_base(path, j)
    mpath = base + ".done.json"
    marker = _read_marker(mpath, j)
    if marker is None:
        return None
    if marker.get("chunk") != j or marker.get("range") != list(plan.chunk_range(j)):
        raise ChunkDamagedError(j, mpath, f"marker is for chunk {marker.get('chunk')!r} records "
                                          f"{marker.get('range')!r}, not chunk {j} {list(plan.chunk_range(j))}")
    made_for = marker.get("identity")
    if made_for is None and not legacy_ok:
        raise ChunkDamagedError(j, mpath, "marker records no store identity (written before markers did)")
    if made_for is not None and made_for != identity_sha:
        raise ChunkDamagedError(j, mpath, f"chunk was computed for another store identity ({str(made_for)[:16]}..., "
                                          f"this store is {identity_sha[:16]}...): other settings")
    sizes = marker.get("bytes") or {}
    for key, suffix in CHUNK_FILES:
        want_sha = marker["sha256"].get(key)
        if not isinstance(want_sha, str):
            raise ChunkDamagedError(j, mpath, f"marker has no sha256 of its {suffix} file")
        problem = _file_problem(base + suffix, sizes.get(key), want_sha, verify_checksums)
        if problem:
            raise ChunkDamagedError(j, base + suffix, problem)
    return marker


# ------------------------------------------------------------------------------------------ writer


class StoreWriter:
    """Creates or resumes a store directory and commits whole chunks atomically.

    Args:
      path: store directory.
      manifest: requested manifest; must contain ``"plan"`` (a :meth:`ChunkPlan.to_dict`) and
        ``"embedding_dim"``. An existing store with a different identity raises
        :class:`StoreMismatchError` unless ``overwrite`` is True, in which case its chunks are deleted.
      overwrite: recompute everything (remove existing chunks; only process 0 deletes).
      process_index: this process (0 writes nothing special; every process writes the same manifest).

    A ``manifest.json`` that is missing or unreadable is (re)written from the request: chunks already present are
    adopted only if their markers name the requested identity and their files verify (:func:`check_chunk`).
    """

    def __init__(self, path: str, manifest: dict, *, overwrite: bool = False, process_index: int = 0,
                 run_id: str | None = None):
        self.path = os.path.abspath(path)
        self.manifest = dict(manifest)
        self.manifest.setdefault("format_version", FORMAT_VERSION)
        self.plan = ChunkPlan.from_dict(self.manifest["plan"])
        self.process_index = process_index
        self.run_id = run_id or uuid.uuid4().hex[:12]
        #: chunks this writer found damaged and left to recompute (see :meth:`pending_chunks`)
        self.damaged: list[int] = []
        os.makedirs(os.path.join(self.path, CHUNK_DIR), exist_ok=True)
        os.makedirs(os.path.join(self.path, RUNS_DIR), exist_ok=True)
        mpath = os.path.join(self.path, MANIFEST)
        stored = None
        if os.path.exists(mpath):
            try:
                with open(mpath, "rb") as f:
                    stored = json.loads(f.read())
                if not isinstance(stored, dict):
                    raise ValueError("not a JSON object")
            except (OSError, ValueError) as e:
                # Safe to treat as lost: the markers name the identity each chunk was made for.
                logging.warning("embedding store %s: %s is unreadable (%s); rewriting it from the request, chunks "
                                "are adopted only where their markers name this identity", self.path, mpath, e)
                stored = None
        reuse = False
        if stored is not None:
            diffs = identity_diff(stored, self.manifest)
            if diffs and not overwrite:
                raise StoreMismatchError(self.path, diffs)
            reuse = not diffs and not overwrite
        #: Markers written before they recorded identities are adopted only under a matching manifest.
        self._legacy_ok = reuse
        # Under a matching stored manifest its digest is the identity (equal content by identity_diff).
        self.identity = identity_digest(stored if reuse else self.manifest)
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
            atomic_write(mpath, _dumps(self.manifest).encode())

    def _clear(self) -> None:
        cdir = os.path.join(self.path, CHUNK_DIR)
        for name in os.listdir(cdir):
            os.unlink(os.path.join(cdir, name))

    def is_done(self, j: int) -> bool:
        """True when chunk ``j`` is committed and verifies (identity, sizes, sha256)."""
        try:
            return check_chunk(self.path, j, self.plan, self.identity, legacy_ok=self._legacy_ok) is not None
        except ChunkDamagedError:
            return False

    def pending_chunks(self, chunks: Iterable[int]) -> list[int]:
        """The chunks of ``chunks`` to compute: those without a marker and those that fail :func:`check_chunk`.

        A damaged chunk is logged (warning and a ``chunk_damaged`` event naming the file and the reason), its
        marker removed (so the store reads as incomplete until it is recomputed) and it is listed in
        :attr:`damaged`. Cost: every file of every committed chunk is hashed (~1 GB/s, docs/embed.md).
        """
        todo = []
        for j in chunks:
            try:
                marker = check_chunk(self.path, j, self.plan, self.identity, legacy_ok=self._legacy_ok)
            except ChunkDamagedError as e:
                logging.warning("embedding store %s: chunk %d is recomputed: %s: %s", self.path, j, e.file, e.reason)
                self.log_event({"event": "chunk_damaged", "chunk": j, "file": e.file, "reason": e.reason})
                try:
                    os.unlink(_chunk_base(self.path, j) + ".done.json")
                except FileNotFoundError:
                    pass
                self.damaged.append(j)
                marker = None
            if marker is None:
                todo.append(j)
        return todo

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
            "emb": atomic_save_npy(base + ".emb.npy", embeddings),
            "ids": atomic_save_npy(base + ".ids.npy", record_ids),
            "labels": atomic_save_npy(base + ".labels.npy", labels),
        }
        rej_sorted = sorted(rejects, key=lambda r: int(r["record_id"]))
        rej_bytes = "".join(json.dumps(r, sort_keys=True) + "\n" for r in rej_sorted).encode()
        shas["rejects"] = atomic_write(base + ".rejects.jsonl", rej_bytes)
        marker = {
            "chunk": j,
            "range": [start, stop],
            "num_valid": int(record_ids.shape[0]),
            "num_rejected": len(rej_sorted),
            "sha256": shas,
            "bytes": {key: os.path.getsize(base + suffix) for key, suffix in CHUNK_FILES},
            "identity": self.identity,
            "run_id": self.run_id,
            "process_index": self.process_index,
        }
        marker["marker_sha256"] = _marker_digest(marker)
        atomic_write(base + ".done.json", _dumps(marker).encode())
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
        atomic_write(dest, _dumps({"run_id": self.run_id, **summary}).encode())

    def update_manifest(self, **volatile) -> None:
        """Adds volatile fields (throughput, versions) to the manifest; identity fields never change."""
        for k in volatile:
            if k not in VOLATILE_KEYS:
                raise ValueError(f"{k!r} is an identity field of the manifest; it cannot be updated")
        mpath = os.path.join(self.path, MANIFEST)
        with open(mpath) as f:
            m = json.load(f)
        m.update(volatile)
        atomic_write(mpath, _dumps(m).encode())


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
    """Read-only array-like ``[N, D]`` over the chunk files, read with positioned reads (``files.NpyFile``).

    Supports ``.shape``, ``.dtype``, ``len``, ``[i]``, ``[a:b]`` (step 1) and integer-array indexing;
    ``np.asarray(x)`` materialises everything (only do that for small stores). Memory: the rows asked for.
    """

    def __init__(self, files: Sequence[str], counts: Sequence[int], dim: int, dtype: np.dtype):
        self._files = list(files)
        self._counts = np.asarray(counts, np.int64)
        self._offsets = np.concatenate([[0], np.cumsum(self._counts)]).astype(np.int64)
        self._readers: dict[int, NpyFile] = {}
        self.dtype = np.dtype(dtype)
        self.shape = (int(self._offsets[-1]), int(dim))
        self.ndim = 2

    def __len__(self) -> int:
        return self.shape[0]

    def _chunk(self, c: int) -> NpyFile:
        r = self._readers.get(c)
        if r is None:
            r = NpyFile(self._files[c])
            if r.shape != (int(self._counts[c]), self.shape[1]) or r.dtype != self.dtype:
                raise StoreError(f"{self._files[c]}: shape {r.shape} {r.dtype}, expected "
                                 f"({int(self._counts[c])}, {self.shape[1]}) {self.dtype}")
            self._readers[c] = r
        return r

    def _rows(self, a: int, b: int) -> np.ndarray:
        out = np.empty((max(b - a, 0), self.shape[1]), self.dtype)
        if b <= a:
            return out
        c = int(np.searchsorted(self._offsets, a, side="right") - 1)
        pos = a
        while pos < b:
            lo, hi = self._offsets[c], self._offsets[c + 1]
            take_hi = min(b, hi)
            if take_hi > pos:
                out[pos - a : take_hi - a] = self._chunk(c)[int(pos - lo) : int(take_hi - lo)]
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
    def open(cls, path: str, *, verify_checksums: bool = True) -> "EmbeddingStore":
        """Opens a store after verifying it; raises :class:`StoreError` naming the missing chunks if it is
        incomplete, or the file that fails if a chunk is damaged.

        Args:
          verify_checksums: hash every chunk file against its marker (default; reads the whole store once per
            process, ~1 GB/s: docs/embed.md). False checks everything else (markers, identity, file sizes,
            .npy headers), which catches truncation but not a changed byte.
        """
        path = os.path.abspath(path)
        mpath = os.path.join(path, MANIFEST)
        if not os.path.exists(mpath):
            raise StoreError(f"{path} is not an embedding store (no {MANIFEST})")
        try:
            with open(mpath, "rb") as f:
                manifest = json.loads(f.read())
            plan = ChunkPlan.from_dict(manifest["plan"])
            dim = int(manifest["embedding_dim"])
            dtype = np.dtype(manifest.get("storage_dtype", "float32"))
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise StoreError(f"{mpath}: not a readable store manifest ({type(e).__name__}: {e}); rerun synleak-embed "
                             "with the same settings to rewrite it (verified chunks are kept)") from None
        if manifest.get("format_version") != FORMAT_VERSION:
            raise StoreError(f"{mpath}: unsupported store format_version {manifest.get('format_version')!r}")
        missing = [j for j in range(plan.num_chunks) if not os.path.exists(_chunk_base(path, j) + ".done.json")]
        if missing:
            shown = ", ".join(map(str, missing[:20])) + (" ..." if len(missing) > 20 else "")
            raise StoreError(
                f"embedding store {path} is incomplete: {len(missing)} of {plan.num_chunks} chunks missing "
                f"(chunks {shown}); rerun synleak-embed with the same settings to finish it"
            )
        identity_sha = identity_digest(manifest)
        files, counts, ids, labels, rejects = [], [], [], [], []
        for j in range(plan.num_chunks):
            base = _chunk_base(path, j)
            try:
                marker = check_chunk(path, j, plan, identity_sha, verify_checksums=verify_checksums, legacy_ok=True)
                if marker is None:  # removed since the listing above
                    raise ChunkDamagedError(j, base + ".done.json", "missing")
                cid = _load_small_npy(base + ".ids.npy", j)
                clab = _load_small_npy(base + ".labels.npy", j)
                try:
                    emb = NpyFile(base + ".emb.npy")
                except ValueError as e:
                    raise ChunkDamagedError(j, base + ".emb.npy", str(e).removeprefix(base + ".emb.npy: ")) from None
                n = marker.get("num_valid")
                if (cid.shape != (n,) or clab.shape != (n,) or emb.shape != (n, dim) or emb.dtype != dtype):
                    raise ChunkDamagedError(j, base + ".done.json",
                                            f"files disagree with the marker/manifest: ids {cid.shape}, labels "
                                            f"{clab.shape}, embeddings {emb.shape} {emb.dtype}; expected {n} rows "
                                            f"of [{dim}] {dtype}")
                start, stop = plan.chunk_range(j)
                if cid.size and (cid[0] < start or cid[-1] >= stop or np.any(np.diff(cid) <= 0)):
                    raise ChunkDamagedError(j, base + ".ids.npy", f"record ids are not strictly increasing within "
                                                                  f"[{start}, {stop})")
                with open(base + ".rejects.jsonl", "rb") as f:
                    chunk_rejects = [json.loads(line) for line in f if line.strip()]
            except ChunkDamagedError as e:
                raise StoreError(f"embedding store {path}: chunk {j} is damaged: {e.file}: {e.reason}; rerun "
                                 "synleak-embed with the same settings on this store to recompute it") from None
            except (OSError, ValueError) as e:
                raise StoreError(f"embedding store {path}: chunk {j} is damaged: {type(e).__name__}: {e}; rerun "
                                 "synleak-embed with the same settings on this store to recompute it") from None
            files.append(base + ".emb.npy")
            counts.append(cid.shape[0])
            ids.append(cid)
            labels.append(clab)
            rejects.extend(chunk_rejects)
        record_ids = np.concatenate(ids) if ids else np.zeros((0,), np.int64)
        if record_ids.size > 1 and not np.all(np.diff(record_ids) > 0):
            raise StoreError(f"embedding store {path}: record ids are not strictly increasing")
        return cls(path, manifest, ChunkedArray(files, counts, dim, dtype), record_ids,
                   np.concatenate(labels) if labels else np.zeros((0,), np.int64), rejects)


def _load_small_npy(path: str, j: int) -> np.ndarray:
    """A chunk's ids/labels: int64 ``[n]`` (no pickles; :class:`ChunkDamagedError` otherwise)."""
    try:
        a = np.asarray(NpyFile(path))
    except ValueError as e:
        raise ChunkDamagedError(j, path, str(e).removeprefix(path + ": ")) from None
    if a.ndim != 1 or a.dtype != np.int64:
        raise ChunkDamagedError(j, path, f"expected int64 [n], got {a.dtype} {a.shape}")
    return a
