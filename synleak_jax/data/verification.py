"""insightface verification bins (``lfw.bin``, ``cfp_fp.bin``, ``agedb_30.bin``) read with a restricted unpickler.

A bin is a pickle of ``(images, issame)``: ``images`` a list of encoded images (two per pair, pair i is
images 2i and 2i+1), ``issame`` a list of bools (or a numpy bool array). insightface loads them with
``pickle.load(f, encoding="bytes")`` (the originals were written by Python 2); we read the same way, but a
pickle can run arbitrary code, so the unpickler resolves only these globals, each to an inert stand-in of
ours (numpy's own functions are never called on pickle data):

* ``_codecs.encode`` (Python 3 protocol <= 2 writes ``bytes`` this way), only with a latin-1 codec;
* numpy's ``_reconstruct`` / ``ndarray`` / ``dtype`` / ``scalar`` / ``_frombuffer`` (numpy arrays and
  np.bool_ values), only for dtypes bool and uint8. ``_reconstruct`` must ask for the empty array numpy
  always pickles (shape ``(0,)``); the array is then made from the BUILD state, whose raw bytes must hold
  exactly ``prod(shape)`` items — an array never exists without its bytes in the file, and is a view of
  them (no copy).

Anything else (``os.system``, ``builtins.eval``, any class) is refused with :class:`UnsafePickleError`
naming the file and the global, before it is called.

Memory (the rule of docs/weights.md, "Bounded reading"): the file is read once; the unpickler is the metered
one of :mod:`synleak_jax.weights.read_limits`, and every image REFERENCE is charged its full length (a
pickle can list one memoised image a million times for 2 bytes each; each reference is decoded and hashed
downstream), each distinct object is converted to ``bytes`` at most once. Total <= 4x the file size + 64 MiB
(or ``max_read_bytes`` / ``$SYNLEAK_MAX_READ_BYTES``), refused otherwise with :class:`rejects.DataError`.
``issame`` must be bools, 0/1 integers or a bool/uint8 array of 0/1: strings or objects are refused, not
coerced by truthiness.
"""

from __future__ import annotations

import dataclasses
import io
import math
import os
import pickle

import numpy as np

from synleak_jax.data import rejects
from synleak_jax.data.sources import ArraySource
from synleak_jax.weights.read_limits import BoundedUnpickler, ReadBudget, open_regular_file

_ALLOWED_DTYPES = {np.dtype(np.bool_), np.dtype(np.uint8)}
_MAX_NDIM = 32


class UnsafePickleError(rejects.DataError):
    """The pickle references a global outside the allow-list."""


def _safe_encode(obj, encoding="utf-8", errors="strict"):
    if not isinstance(encoding, str) or encoding.lower().replace("_", "-") not in ("latin1", "latin-1", "iso-8859-1"):
        raise UnsafePickleError(f"_codecs.encode with encoding {encoding!r} is not allowed")
    if not isinstance(obj, (str, bytes)):
        raise UnsafePickleError(f"_codecs.encode of a {type(obj).__name__} is not allowed")
    return obj.encode("latin-1", "strict") if isinstance(obj, str) else obj


class _Inert:
    """Slotted stand-in; attributes are set only by our own code (object.__setattr__)."""

    __slots__ = ()

    def __setattr__(self, key, value):
        raise UnsafePickleError(f"attribute assignment on {type(self).__name__} is not allowed")


class _DType(_Inert):
    """What ``numpy.dtype(spec, align, copy)`` gives here: a bool/uint8 descriptor; BUILD may only confirm it."""

    __slots__ = ("dtype",)

    def __init__(self, dtype: np.dtype):
        object.__setattr__(self, "dtype", dtype)

    def __setstate__(self, state):
        # numpy pickles dtype state as (version, byteorder, subarray, names, fields, elsize, alignment, flags).
        if not (isinstance(state, tuple) and len(state) >= 5 and state[1] in ("|", b"|", "=", b"=", "<", b"<")
                and state[2] is None and state[3] is None and state[4] is None):
            raise UnsafePickleError(f"numpy dtype state {state!r} is not allowed (only plain bool and uint8)")


def _safe_dtype(spec, align=False, copy=False):
    if isinstance(spec, bytes):
        spec = spec.decode("latin-1")
    if not isinstance(spec, str):
        raise UnsafePickleError(f"numpy dtype from a {type(spec).__name__} is not allowed")
    try:
        d = np.dtype(spec)
    except TypeError:
        raise UnsafePickleError(f"numpy dtype {spec!r} is not allowed (only bool and uint8)") from None
    if d not in _ALLOWED_DTYPES:
        raise UnsafePickleError(f"numpy dtype {d} is not allowed (only bool and uint8)")
    return _DType(d)


def _make_array(raw, dtype, shape, fortran) -> np.ndarray:
    """A read-only view of ``raw`` as ``dtype[shape]``; the size must match exactly."""
    if not isinstance(dtype, _DType):
        raise UnsafePickleError(f"array dtype {dtype!r} is not allowed")
    if not (isinstance(shape, tuple) and len(shape) <= _MAX_NDIM
            and all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape)):
        raise UnsafePickleError(f"array shape {shape!r} is not allowed")
    if not isinstance(raw, (bytes, bytearray)):
        raise UnsafePickleError(f"array data of type {type(raw).__name__} is not allowed")
    count = math.prod(shape)
    if count * dtype.dtype.itemsize != len(raw):
        raise UnsafePickleError(f"array of shape {shape} {dtype.dtype} with {len(raw)} bytes of data")
    flat = np.frombuffer(raw, dtype=dtype.dtype, count=count)
    return flat.reshape(shape, order="F" if fortran else "C")


class _Array(_Inert):
    """What numpy's ``_reconstruct(ndarray, (0,), b"b")`` gives here; BUILD supplies shape, dtype and bytes."""

    __slots__ = ("array",)

    def __init__(self):
        object.__setattr__(self, "array", None)

    def __setstate__(self, state):
        if self.array is not None:
            raise UnsafePickleError("array state set twice")
        if isinstance(state, tuple) and len(state) == 5:
            _version, shape, dtype, fortran, raw = state
        elif isinstance(state, tuple) and len(state) == 4:
            shape, dtype, fortran, raw = state
        else:
            raise UnsafePickleError(f"array state of type {type(state).__name__} is not allowed")
        object.__setattr__(self, "array", _make_array(raw, dtype, shape, bool(fortran)))


_NDARRAY = object()  # what the global numpy.ndarray resolves to: only a marker for _reconstruct


def _safe_reconstruct(cls, shape, dtype_code):
    if cls is not _NDARRAY:
        raise UnsafePickleError(f"array reconstruction of {cls!r} is not allowed")
    if shape != (0,):
        raise UnsafePickleError(f"array reconstruction with shape {shape!r} is not allowed (numpy pickles (0,))")
    return _Array()


def _safe_frombuffer(buf, dtype, shape, order):
    return _make_array(bytes(buf) if isinstance(buf, memoryview) else buf, dtype, tuple(shape), order == "F")


def _safe_scalar(dtype, data=None):
    if not isinstance(dtype, _DType):
        raise UnsafePickleError(f"numpy scalar of dtype {dtype!r} is not allowed")
    if isinstance(data, str):
        data = data.encode("latin-1")
    if not isinstance(data, bytes) or len(data) != dtype.dtype.itemsize:
        raise UnsafePickleError(f"numpy scalar data {data!r} is not allowed")
    return np.frombuffer(data, dtype=dtype.dtype, count=1)[0]


class _Global(_Inert):
    """An allowlisted global: calls our function. Immutable, so a BUILD opcode cannot patch the function
    (its ``__defaults__`` etc.) for later reads."""

    __slots__ = ("qualname", "fn")

    def __init__(self, qualname: str, fn):
        object.__setattr__(self, "qualname", qualname)
        object.__setattr__(self, "fn", fn)

    def __call__(self, *args):
        return self.fn(*args)

    def __setstate__(self, state):
        raise UnsafePickleError(f"pickle BUILD on {self.qualname} is not allowed")


_ALLOWED = {
    (module, name): _Global(f"{module}.{name}", fn) if fn is not _NDARRAY else fn
    for (module, name), fn in {
        ("_codecs", "encode"): _safe_encode,
        ("numpy.core.multiarray", "_reconstruct"): _safe_reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _safe_reconstruct,
        ("numpy.core.multiarray", "scalar"): _safe_scalar,
        ("numpy._core.multiarray", "scalar"): _safe_scalar,
        ("numpy.core.numeric", "_frombuffer"): _safe_frombuffer,
        ("numpy._core.numeric", "_frombuffer"): _safe_frombuffer,
        ("numpy", "ndarray"): _NDARRAY,
        ("numpy", "dtype"): _safe_dtype,
    }.items()
}


class _RestrictedUnpickler(BoundedUnpickler):
    def __init__(self, f, where: str, budget: ReadBudget):
        super().__init__(f, budget, encoding="bytes")
        self._where = where

    def find_class(self, module, name):
        if isinstance(module, bytes):
            module = module.decode("latin-1")
        if isinstance(name, bytes):
            name = name.decode("latin-1")
        fn = _ALLOWED.get((module, name))
        if fn is None:
            raise UnsafePickleError(
                f"{self._where}: refusing to load global {module}.{name} (verification bins may only contain "
                "lists of image bytes and booleans)")
        return fn

    def persistent_load(self, pid):
        raise UnsafePickleError(f"{self._where}: persistent ids are not allowed in verification bins")


def restricted_load(data: bytes, where: str, budget: ReadBudget | None = None):
    """Unpickles ``data`` allowing only containers, bytes, bools and bool/uint8 numpy arrays.

    ``budget``: what the objects may cost (default: 4x ``len(data)`` + 64 MiB, see read_limits).
    Numpy arrays come back as ``_Array`` holders (``.array``), see :func:`load_bin`.
    """
    budget = budget or ReadBudget(where, len(data), rejects.DataError)
    try:
        return _RestrictedUnpickler(io.BytesIO(data), where, budget).load()
    except UnsafePickleError as e:
        if where not in str(e):
            raise UnsafePickleError(f"{where}: {e}") from None
        raise
    except rejects.DataError:
        raise
    except MemoryError:
        raise budget.out_of_memory("unpickling it") from None
    except Exception as e:
        raise rejects.DataError(f"{where}: not a readable verification bin ({type(e).__name__}: {e})") from None


def _images(bins, path: str, budget: ReadBudget) -> list[bytes]:
    """The encoded images; each distinct object converted once, each reference charged its length."""
    if not isinstance(bins, (list, tuple)):
        raise rejects.DataError(f"{path}: images must be a list, got {type(bins).__name__}")
    converted: dict[int, bytes] = {}
    images = []
    for i, b in enumerate(bins):
        if isinstance(b, _Array):
            b = b.array
        if isinstance(b, np.ndarray):
            if b.dtype != np.uint8 or b.ndim != 1:
                raise rejects.DataError(f"{path}: image {i} is a {b.dtype} array of shape {b.shape}, expected bytes")
        elif not isinstance(b, (bytes, bytearray)):
            raise rejects.DataError(f"{path}: image {i} is {type(b).__name__}, expected encoded bytes")
        size = b.nbytes if isinstance(b, np.ndarray) else len(b)
        budget.charge(size, f"image {i} ({size} bytes)")
        key = id(b)
        if key not in converted:
            converted[key] = b if type(b) is bytes else (b.tobytes() if isinstance(b, np.ndarray) else bytes(b))
        images.append(converted[key])
    return images


def _issame(issame, path: str) -> np.ndarray:
    """bool ``[P]`` from a list of bools / 0-1 ints / np.bool_, or a bool/uint8 array of 0/1."""
    if isinstance(issame, _Array):
        issame = issame.array
    if isinstance(issame, np.ndarray):  # only bool/uint8 arrays can be built here
        flat = issame.reshape(-1)
        if flat.dtype != np.bool_ and flat.size and int(flat.max()) > 1:
            raise rejects.DataError(f"{path}: issame array holds values other than 0/1 (max {int(flat.max())})")
        return flat.astype(bool)
    if not isinstance(issame, (list, tuple)):
        raise rejects.DataError(f"{path}: issame must be a list of bools, got {type(issame).__name__}")
    out = np.empty(len(issame), dtype=bool)
    for i, x in enumerate(issame):
        if isinstance(x, (bool, np.bool_)):
            out[i] = bool(x)
        elif isinstance(x, (int, np.integer)) and int(x) in (0, 1):
            out[i] = bool(int(x))
        else:
            raise rejects.DataError(f"{path}: issame[{i}] is {x!r} ({type(x).__name__}); expected a bool or 0/1")
    return out


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


def load_bin(path: str | os.PathLike, *, max_read_bytes: int | None = None) -> VerificationPairs:
    """Reads an insightface verification bin; DataError naming the file on any problem.

    ``max_read_bytes``: cap on the memory the read may materialise (default 4x the file + 64 MiB, or
    ``$SYNLEAK_MAX_READ_BYTES``); see the module docstring.
    """
    path = os.fspath(path)
    try:
        opened, size = open_regular_file(path, rejects.DataError)
    except FileNotFoundError:
        raise rejects.DataError(f"verification bin not found: {path!r}") from None
    try:
        budget = ReadBudget(path, size, rejects.DataError, max_read_bytes)
    except BaseException:
        opened.close()
        raise
    try:
        budget.charge(size, "the file's bytes")
        with opened as f:
            data = f.read(size + 1)
        if len(data) != size:
            raise rejects.DataError(f"{path}: changed size while being read ({size} -> {len(data)} bytes)")
        obj = restricted_load(data, path, budget)
        if not (isinstance(obj, (tuple, list)) and len(obj) == 2):
            raise rejects.DataError(f"{path}: expected a pickled (images, issame) pair, got {type(obj).__name__}")
        bins, issame = obj
        images = _images(bins, path, budget)
        issame = _issame(issame, path)
    except MemoryError:
        raise budget.out_of_memory() from None
    except OSError as e:
        raise rejects.DataError(f"{path}: cannot read ({e.strerror or e})") from None
    if len(images) != 2 * len(issame):
        raise rejects.DataError(f"{path}: {len(images)} images for {len(issame)} pairs (expected 2 per pair)")
    name = os.path.splitext(os.path.basename(path))[0]
    return VerificationPairs(ArraySource(images, name=path), issame, name)


def write_bin(path: str | os.PathLike, images: list[bytes], issame, protocol: int = pickle.HIGHEST_PROTOCOL) -> None:
    """Writes ``(images, issame)`` like insightface's packing scripts (lists of bytes and bools)."""
    with open(path, "wb") as f:
        pickle.dump((list(images), [bool(x) for x in issame]), f, protocol=protocol)
