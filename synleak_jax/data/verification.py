"""insightface verification bins (``lfw.bin``, ``cfp_fp.bin``, ``agedb_30.bin``) read with a restricted unpickler.

A bin is a pickle of ``(images, issame)``: ``images`` a list of encoded images (two per pair, pair i is
images 2i and 2i+1), ``issame`` a list of bools (or a numpy bool array). insightface loads them with
``pickle.load(f, encoding="bytes")`` (the originals were written by Python 2); we read the same way, but a
pickle can run arbitrary code, so the unpickler resolves only these globals:

* ``_codecs.encode`` (Python 3 protocol <= 2 writes ``bytes`` this way), only with a latin-1 codec;
* numpy's ``_reconstruct`` / ``ndarray`` / ``dtype`` / ``scalar`` (numpy arrays and np.bool_ values), only
  for dtypes bool and uint8.

Anything else (``os.system``, ``builtins.eval``, any class) is refused with :class:`UnsafePickleError`
naming the file and the global, before it is called.
"""

from __future__ import annotations

import dataclasses
import io
import os
import pickle

import numpy as np

from synleak_jax.data import rejects
from synleak_jax.data.sources import ArraySource

_ALLOWED_DTYPES = {np.dtype(np.bool_), np.dtype(np.uint8)}


class UnsafePickleError(rejects.DataError):
    """The pickle references a global outside the allow-list."""


def _safe_encode(obj, encoding="utf-8", errors="strict"):
    if encoding.lower().replace("_", "-") not in ("latin1", "latin-1", "iso-8859-1"):
        raise UnsafePickleError(f"_codecs.encode with encoding {encoding!r} is not allowed")
    return obj.encode("latin-1", errors) if isinstance(obj, str) else bytes(obj)


def _safe_dtype(spec, *args):
    if isinstance(spec, bytes):
        spec = spec.decode("latin-1")
    d = np.dtype(spec)
    if d not in _ALLOWED_DTYPES:
        raise UnsafePickleError(f"numpy dtype {d} is not allowed (only bool and uint8)")
    return np.dtype(spec, *args[:1]) if args else d


def _safe_reconstruct(cls, shape, dtype_code):
    if cls is not np.ndarray:
        raise UnsafePickleError(f"array reconstruction of {cls!r} is not allowed")
    return np.ndarray.__new__(np.ndarray, shape, dtype=np.uint8)


def _safe_scalar(dtype, data=None):
    if not isinstance(dtype, np.dtype) or dtype not in _ALLOWED_DTYPES:
        raise UnsafePickleError(f"numpy scalar of dtype {dtype!r} is not allowed")
    if isinstance(data, str):
        data = data.encode("latin-1")
    return np.frombuffer(data, dtype=dtype, count=1)[0]


_ALLOWED = {
    ("_codecs", "encode"): _safe_encode,
    ("numpy.core.multiarray", "_reconstruct"): _safe_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _safe_reconstruct,
    ("numpy.core.multiarray", "scalar"): _safe_scalar,
    ("numpy._core.multiarray", "scalar"): _safe_scalar,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): _safe_dtype,
}


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, f, where: str):
        super().__init__(f, encoding="bytes")
        self._where = where

    def find_class(self, module, name):
        fn = _ALLOWED.get((module, name))
        if fn is None:
            raise UnsafePickleError(
                f"{self._where}: refusing to load global {module}.{name} (verification bins may only contain "
                "lists of image bytes and booleans)")
        return fn

    def persistent_load(self, pid):
        raise UnsafePickleError(f"{self._where}: persistent ids are not allowed in verification bins")


def restricted_load(data: bytes, where: str):
    """Unpickles ``data`` allowing only containers, bytes, bools and bool/uint8 numpy arrays."""
    try:
        return _RestrictedUnpickler(io.BytesIO(data), where).load()
    except UnsafePickleError as e:
        if where not in str(e):
            raise UnsafePickleError(f"{where}: {e}") from None
        raise
    except Exception as e:
        raise rejects.DataError(f"{where}: not a readable verification bin ({type(e).__name__}: {e})") from None


@dataclasses.dataclass
class VerificationPairs:
    """Pairs of a verification set: ``images`` source (2P records) and ``issame`` bool ``[P]``.

    Pair i compares records 2i and 2i+1 of ``images``.
    """

    images: ArraySource
    issame: np.ndarray
    name: str

    def __len__(self) -> int:
        return len(self.issame)

    def pair_indices(self) -> np.ndarray:
        """int64 ``[P, 2]`` record ids of each pair."""
        return np.arange(2 * len(self), dtype=np.int64).reshape(-1, 2)


def load_bin(path: str | os.PathLike) -> VerificationPairs:
    """Reads an insightface verification bin; DataError naming the file on any problem."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise rejects.DataError(f"verification bin not found: {path!r}")
    with open(path, "rb") as f:
        obj = restricted_load(f.read(), path)
    if not (isinstance(obj, (tuple, list)) and len(obj) == 2):
        raise rejects.DataError(f"{path}: expected a pickled (images, issame) pair, got {type(obj).__name__}")
    bins, issame = obj
    images = []
    for i, b in enumerate(bins):
        if isinstance(b, np.ndarray) and b.dtype == np.uint8:
            b = b.tobytes()
        if not isinstance(b, (bytes, bytearray)):
            raise rejects.DataError(f"{path}: image {i} is {type(b).__name__}, expected encoded bytes")
        images.append(bytes(b))
    issame = np.asarray([bool(x) for x in issame], dtype=bool) if not isinstance(issame, np.ndarray) \
        else issame.astype(bool).reshape(-1)
    if len(images) != 2 * len(issame):
        raise rejects.DataError(f"{path}: {len(images)} images for {len(issame)} pairs (expected 2 per pair)")
    name = os.path.splitext(os.path.basename(path))[0]
    return VerificationPairs(ArraySource(images, name=path), issame, name)


def write_bin(path: str | os.PathLike, images: list[bytes], issame, protocol: int = pickle.HIGHEST_PROTOCOL) -> None:
    """Writes ``(images, issame)`` like insightface's packing scripts (lists of bytes and bools)."""
    with open(path, "wb") as f:
        pickle.dump((list(images), [bool(x) for x in issame]), f, protocol=protocol)
