"""Reads PyTorch checkpoints (``.pt``/``.pth``/``.ckpt``) into numpy arrays without importing torch.

Two on-disk formats exist:

* zip (torch >= 1.6, the default): a zip archive with one top-level folder (any name) holding
  ``<prefix>/data.pkl`` (the pickled object; tensors refer to storages through persistent ids
  ``("storage", StorageType, key, location, numel)``), ``<prefix>/data/<key>`` (each storage's raw bytes) and
  ``<prefix>/byteorder`` ("little"/"big"; absent in old files = little).
* legacy (``_use_new_zipfile_serialization=False`` and torch < 1.6): a stream of pickles — the magic number
  0x1950a86a20f9469cfc6c, the protocol version 1001, a sys-info dict, the object itself (persistent ids
  ``("storage", StorageType, root_key, location, numel, view_metadata)``), the list of storage keys, then for
  each key an int64 element count followed by the raw little-endian bytes.

Security model: a pickle can call any importable function, so nothing here uses :func:`pickle.load` on
untrusted data. :class:`_RestrictedUnpickler` resolves globals only from a fixed allowlist and maps each of
them to an inert stand-in defined in this module (nothing is imported from the named module, no torch code
runs):

* tensor rebuild functions ``torch._utils._rebuild_tensor``/``_rebuild_tensor_v2``/``_rebuild_tensor_v3``,
  ``_rebuild_parameter``/``_rebuild_parameter_with_state``, ``torch._tensor._rebuild_from_type_v2`` (only for
  plain tensors/parameters) -> numpy views over the storage buffers, bounds-checked;
* storage classes (``torch.FloatStorage`` ..., ``torch.storage.UntypedStorage``) and ``torch.<dtype>`` names ->
  frozen dtype descriptors;
* ``collections.OrderedDict`` (state dicts), builtins ``set``/``frozenset``, ``_codecs.encode`` (how protocol-2
  pickles store ``bytes``; only ``(str, "latin1")``);
* for Lightning/argparse hyper-parameters only: ``argparse.Namespace`` and Lightning's ``AttributeDict`` ->
  plain data stand-ins (a frozen-class namespace / dict subclass).

Every other global raises :class:`ForbiddenGlobalError` naming ``module.name`` and the file, before anything
is called. The objects handed to the unpickler are immutable (slotted instances, frozen metaclass or C types),
so a crafted BUILD opcode cannot monkeypatch them either. Opt-in ``allow_opaque=True`` turns other globals
into inert :class:`OpaqueObject` placeholders (still nothing imported or run) so that training checkpoints with
extra objects (OmegaConf configs, callbacks) can be read; :func:`load_torch_file` still refuses a placeholder
inside the state dict. See docs/weights.md.

Memory model: everything a read materialises is charged to a :class:`read_limits.ReadBudget` before it is
allocated (default 4x the file size + 64 MiB; ``max_read_bytes=`` / ``$SYNLEAK_MAX_READ_BYTES``); the
unpickler is the metered pure-Python VM; zip records are read by :class:`_ZipRecords` (no overlapping or
duplicate records, local names checked, bounded decompression). MemoryError never escapes: it becomes a
TorchFileError naming the file.
"""

from __future__ import annotations

import _compat_pickle
import bz2
import collections
import io
import os
import pickle
import struct
import zipfile
import zlib
from typing import Any, BinaryIO, Mapping

import ml_dtypes
import numpy as np

from synleak_jax.weights.read_limits import BoundedUnpickler, ReadBudget, open_regular_file, regular_file_size

MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
PROTOCOL_VERSION = 1001
# How pickle protocol 2 encodes MAGIC_NUMBER: LONG1 opcode (0x8a), 10 bytes, little-endian.
_LEGACY_MAGIC_BYTES = b"\x8a\x0a" + MAGIC_NUMBER.to_bytes(10, "little")

# Records that are not torch's stored data: small, read whole.
_MAX_BYTEORDER_RECORD = 16
# Compressed input read per step while inflating a deflate/bzip2 record (bounds the decompressor's output
# per call together with max_length).
_INFLATE_CHUNK = 1 << 20
_ZIP_METHOD_NAMES = {0: "stored", 8: "deflate", 9: "deflate64", 12: "bzip2", 14: "lzma", 93: "zstandard",
                     95: "xz", 98: "ppmd", 99: "AES-encrypted"}


class TorchFileError(ValueError):
    """A PyTorch checkpoint could not be read (truncated, malformed, unsupported); names the file."""


class ForbiddenGlobalError(TorchFileError):
    """The pickle references a global outside the allowlist (possibly malicious); names it and the file."""


# --------------------------------------------------------------------------------------------------------
# Inert stand-ins handed to the unpickler.
# --------------------------------------------------------------------------------------------------------


class _Frozen(type):
    """Metaclass forbidding attribute assignment on the class (a BUILD opcode could otherwise patch it)."""

    def __setattr__(cls, key, value):
        raise TypeError(f"attribute assignment on {cls.__name__} is not allowed")

    def __delattr__(cls, key):
        raise TypeError(f"attribute deletion on {cls.__name__} is not allowed")


class _Inert:
    """Base of slotted, immutable helper objects; refuses BUILD (``__setstate__``) and attribute writes."""

    __slots__ = ()

    def __setattr__(self, key, value):
        raise TypeError(f"{type(self).__name__} is immutable")

    def __setstate__(self, state):
        raise TypeError(f"pickle BUILD on {self!r} is not allowed")


class _DType(_Inert):
    """A torch dtype or storage class resolved to a numpy dtype (``None``: untyped bytes)."""

    __slots__ = ("qualname", "np_dtype", "is_storage")

    def __init__(self, qualname: str, np_dtype, is_storage: bool):
        object.__setattr__(self, "qualname", qualname)
        object.__setattr__(self, "np_dtype", np.dtype(np_dtype))
        object.__setattr__(self, "is_storage", is_storage)

    def __repr__(self):
        return f"<{self.qualname}>"


class _Callable(_Inert):
    """An allowlisted global: calling it runs our own ``fn`` (never the foreign one)."""

    __slots__ = ("qualname", "fn")

    def __init__(self, qualname: str, fn):
        object.__setattr__(self, "qualname", qualname)
        object.__setattr__(self, "fn", fn)

    def __call__(self, *args):
        return self.fn(*args)

    def __repr__(self):
        return f"<{self.qualname}>"


class _TypeMarker(_Inert):
    """``torch.Tensor`` / ``torch.nn.Parameter`` when they appear as arguments of _rebuild_from_type_v2."""

    __slots__ = ("qualname",)

    def __init__(self, qualname: str):
        object.__setattr__(self, "qualname", qualname)

    def __repr__(self):
        return f"<{self.qualname}>"


class Namespace(metaclass=_Frozen):
    """Data stand-in for ``argparse.Namespace`` found in hyper-parameters: attributes only, no behaviour."""

    def __init__(self, **kwargs):
        self.__dict__.update(kwargs)

    def __repr__(self):
        return "Namespace(" + ", ".join(f"{k}={v!r}" for k, v in self.__dict__.items()) + ")"

    def __eq__(self, other):
        return isinstance(other, Namespace) and vars(self) == vars(other)


class AttributeDict(dict, metaclass=_Frozen):
    """Data stand-in for Lightning's ``AttributeDict`` (a dict subclass holding hyper-parameters)."""


class OpaqueObject:
    """Inert placeholder for a non-allowlisted global, only in ``allow_opaque`` mode.

    The named module is never imported and nothing of it runs: "calling" the global or instantiating the class
    just records the arguments here; BUILD/APPEND/SETITEM opcodes record their data too. ``global_name`` is
    the ``module.name`` the pickle asked for.
    """

    __slots__ = ("args", "kwargs", "state", "items", "entries")
    global_name = "?"

    def __new__(cls, *args, **kwargs):
        self = object.__new__(cls)
        for slot, value in (("args", args), ("kwargs", kwargs), ("state", None), ("items", []), ("entries", {})):
            object.__setattr__(self, slot, value)
        return self

    def __init__(self, *args, **kwargs):
        pass

    def __setattr__(self, key, value):
        raise TypeError(f"opaque {self.global_name} is immutable")

    def __setstate__(self, state):
        object.__setattr__(self, "state", state)

    def append(self, item):
        self.items.append(item)

    def extend(self, items):
        self.items.extend(items)

    def __setitem__(self, key, value):
        self.entries[key] = value

    def __repr__(self):
        return f"<opaque {self.global_name}>"


_OPAQUE_TYPES: dict[str, type] = {}


def _opaque_type(qualname: str) -> type:
    if qualname not in _OPAQUE_TYPES:

        class _Meta(_Frozen):
            pass

        _OPAQUE_TYPES[qualname] = _Meta("OpaqueObject", (OpaqueObject,), {"__slots__": (), "global_name": qualname})
    return _OPAQUE_TYPES[qualname]


class _Storage(_Inert):
    """A storage: a flat uint8 buffer (filled now for zip files, after the pickle for legacy files).

    ``swap_bytes``: the file is big-endian and the storage is untyped/1-byte (its element size is only known
    from the view's dtype), so multi-byte views of it are byte-swapped copies (see :func:`_view`).
    ``budget``: the read's :class:`ReadBudget`, charged before any copy made from this storage.
    """

    __slots__ = ("key", "dtype", "numel", "buffer", "swap_bytes", "budget")

    def __init__(self, key: str, dtype: np.dtype, numel: int, buffer: np.ndarray, budget: ReadBudget,
                 swap_bytes: bool = False):
        object.__setattr__(self, "key", key)
        object.__setattr__(self, "dtype", dtype)
        object.__setattr__(self, "numel", numel)
        object.__setattr__(self, "buffer", buffer)
        object.__setattr__(self, "swap_bytes", swap_bytes)
        object.__setattr__(self, "budget", budget)

    def __repr__(self):
        return f"<storage {self.key!r} {self.dtype} x {self.numel}>"


_STORAGE_DTYPES = {
    "DoubleStorage": np.float64,
    "FloatStorage": np.float32,
    "HalfStorage": np.float16,
    "BFloat16Storage": ml_dtypes.bfloat16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
    "ComplexDoubleStorage": np.complex128,
    "ComplexFloatStorage": np.complex64,
}

_TORCH_DTYPES = {
    "float64": np.float64, "double": np.float64,
    "float32": np.float32, "float": np.float32,
    "float16": np.float16, "half": np.float16,
    "bfloat16": ml_dtypes.bfloat16,
    "int64": np.int64, "long": np.int64,
    "int32": np.int32, "int": np.int32,
    "int16": np.int16, "short": np.int16,
    "int8": np.int8,
    "uint8": np.uint8, "uint16": np.uint16, "uint32": np.uint32, "uint64": np.uint64,
    "bool": np.bool_,
    "complex64": np.complex64, "cfloat": np.complex64,
    "complex128": np.complex128, "cdouble": np.complex128,
    "float8_e4m3fn": ml_dtypes.float8_e4m3fn,
    "float8_e5m2": ml_dtypes.float8_e5m2,
    "float8_e4m3fnuz": ml_dtypes.float8_e4m3fnuz,
    "float8_e5m2fnuz": ml_dtypes.float8_e5m2fnuz,
}

_LIGHTNING_ATTRIBUTE_DICT_MODULES = (
    "pytorch_lightning.utilities.parsing",
    "lightning_fabric.utilities.data",
    "lightning.fabric.utilities.data",
    "lightning.pytorch.utilities.parsing",
)


# --------------------------------------------------------------------------------------------------------
# Rebuild functions (our own implementations of what torch would do, on numpy buffers).
# --------------------------------------------------------------------------------------------------------


def _as_int_tuple(value, what: str) -> tuple[int, ...]:
    if not isinstance(value, (tuple, list)) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise TorchFileError(f"tensor {what} must be a tuple of ints, got {value!r}")
    return tuple(value)


def _view(storage, offset, size, stride, dtype: np.dtype | None = None) -> np.ndarray:
    """A numpy view of ``storage`` as torch's ``set_(storage, offset, size, stride)`` (units: elements)."""
    if not isinstance(storage, _Storage):
        raise TorchFileError(f"tensor storage must be a persistent storage reference, got {type(storage).__name__}")
    dtype = storage.dtype if dtype is None else dtype
    if storage.dtype.itemsize != 1 and dtype != storage.dtype:
        raise TorchFileError(f"tensor of dtype {dtype} over a typed {storage.dtype} storage")
    size = _as_int_tuple(size, "size")
    stride = _as_int_tuple(stride, "stride")
    if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
        raise TorchFileError(f"tensor storage offset must be a non-negative int, got {offset!r}")
    if len(size) != len(stride) or any(s < 0 for s in size) or any(s < 0 for s in stride):
        raise TorchFileError(f"invalid tensor geometry size={size} stride={stride}")
    itemsize = dtype.itemsize
    nbytes = storage.buffer.nbytes
    if 0 not in size:
        last = offset + sum((n - 1) * s for n, s in zip(size, stride))
        if (last + 1) * itemsize > nbytes:
            raise TorchFileError(
                f"tensor size={size} stride={stride} offset={offset} reaches element {last}, beyond its storage "
                f"{storage.key!r} of {nbytes // itemsize} elements"
            )
        byte_offset = offset * itemsize
    else:
        byte_offset = 0
    arr = np.ndarray(
        shape=size, dtype=dtype, buffer=storage.buffer, offset=byte_offset, strides=tuple(s * itemsize for s in stride)
    )
    if storage.swap_bytes and _swap_unit(dtype) > 1:
        arr = _byteswapped_copy(arr, storage)
    return arr


def _swap_unit(dtype: np.dtype) -> int:
    """Bytes per byte-swapped unit: the item, or each component of a complex number."""
    return dtype.itemsize // 2 if dtype.kind == "c" else dtype.itemsize


def _byteswapped_copy(arr: np.ndarray, storage: _Storage) -> np.ndarray:
    """A native-order copy of a view whose bytes are big-endian (a multi-byte view of an untyped storage)."""
    storage.budget.charge(arr.nbytes, f"byte-swapped copy of a {arr.dtype} tensor {arr.shape} over big-endian "
                                      f"untyped storage {storage.key!r}")
    out = arr.copy(order="C")
    out.reshape(-1).view(np.dtype(f"u{_swap_unit(arr.dtype)}")).byteswap(inplace=True)
    return out


def _apply_metadata(arr: np.ndarray, metadata, storage: _Storage) -> np.ndarray:
    # torch stores conj/neg views lazily: the bytes are the un-conjugated/un-negated values.
    if metadata:
        if not isinstance(metadata, dict):
            raise TorchFileError(f"tensor metadata must be a dict, got {type(metadata).__name__}")
        for flag, op in (("conj", np.conj), ("neg", np.negative)):
            if metadata.get(flag):
                storage.budget.charge(arr.nbytes, f"{flag} copy of a tensor {arr.shape} over storage {storage.key!r}")
                arr = op(arr)
    return arr


def _rebuild_tensor(storage, storage_offset, size, stride):
    return _view(storage, storage_offset, size, stride)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None):
    return _apply_metadata(_view(storage, storage_offset, size, stride), metadata, storage)


def _rebuild_tensor_v3(storage, storage_offset, size, stride, requires_grad, backward_hooks, dtype, metadata=None):
    if not isinstance(dtype, _DType) or dtype.is_storage:
        raise TorchFileError(f"_rebuild_tensor_v3 needs a torch dtype, got {dtype!r}")
    return _apply_metadata(_view(storage, storage_offset, size, stride, dtype.np_dtype), metadata, storage)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, state=None):
    if not isinstance(data, np.ndarray):
        raise TorchFileError(f"parameter data must be a tensor, got {type(data).__name__}")
    return data


def _rebuild_from_type_v2(func, new_type, args, state):
    # torch uses this for tensors carrying Python attributes; only plain tensors/parameters are accepted.
    if not isinstance(func, _Callable) or func.fn not in (_rebuild_tensor_v2, _rebuild_tensor_v3, _rebuild_parameter):
        raise TorchFileError(f"_rebuild_from_type_v2 with unsupported function {func!r}")
    if not isinstance(new_type, _TypeMarker):
        raise TorchFileError(f"_rebuild_from_type_v2 with unsupported type {new_type!r}")
    if not isinstance(args, tuple):
        raise TorchFileError("_rebuild_from_type_v2 arguments must be a tuple")
    return func(*args)


def _codecs_encode(text, encoding="utf-8"):
    # Protocol-2 pickles store bytes as _codecs.encode(latin1_text, "latin1").
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise TorchFileError(f"_codecs.encode only allowed as (str, 'latin1'), got ({type(text).__name__}, {encoding!r})")
    return text.encode("latin1")


def _build_allowlist() -> dict[tuple[str, str], Any]:
    allow: dict[tuple[str, str], Any] = {
        ("torch._utils", "_rebuild_tensor"): _Callable("torch._utils._rebuild_tensor", _rebuild_tensor),
        ("torch._utils", "_rebuild_tensor_v2"): _Callable("torch._utils._rebuild_tensor_v2", _rebuild_tensor_v2),
        ("torch._utils", "_rebuild_tensor_v3"): _Callable("torch._utils._rebuild_tensor_v3", _rebuild_tensor_v3),
        ("torch._utils", "_rebuild_parameter"): _Callable("torch._utils._rebuild_parameter", _rebuild_parameter),
        ("torch._utils", "_rebuild_parameter_with_state"): _Callable(
            "torch._utils._rebuild_parameter_with_state", _rebuild_parameter
        ),
        ("torch._tensor", "_rebuild_from_type_v2"): _Callable(
            "torch._tensor._rebuild_from_type_v2", _rebuild_from_type_v2
        ),
        ("torch", "Tensor"): _TypeMarker("torch.Tensor"),
        ("torch._tensor", "Tensor"): _TypeMarker("torch.Tensor"),
        ("torch.nn.parameter", "Parameter"): _TypeMarker("torch.nn.Parameter"),
        ("torch", "UntypedStorage"): _DType("torch.UntypedStorage", np.uint8, True),
        ("torch.storage", "UntypedStorage"): _DType("torch.UntypedStorage", np.uint8, True),
        ("collections", "OrderedDict"): collections.OrderedDict,  # a C type: immutable, calls nothing foreign
        ("builtins", "set"): set,
        ("builtins", "frozenset"): frozenset,
        ("_codecs", "encode"): _Callable("_codecs.encode", _codecs_encode),
        ("argparse", "Namespace"): Namespace,
    }
    for name, dt in _STORAGE_DTYPES.items():
        allow[("torch", name)] = _DType(f"torch.{name}", dt, True)
    for name, dt in _TORCH_DTYPES.items():
        allow[("torch", name)] = _DType(f"torch.{name}", dt, False)
    for module in _LIGHTNING_ATTRIBUTE_DICT_MODULES:
        allow[(module, "AttributeDict")] = AttributeDict
    return allow


_ALLOWED = _build_allowlist()


def allowed_globals() -> list[str]:
    """The ``module.name`` globals the restricted unpickler accepts (for documentation and error messages)."""
    return sorted(f"{m}.{n}" for m, n in _ALLOWED)


# --------------------------------------------------------------------------------------------------------
# The restricted unpickler.
# --------------------------------------------------------------------------------------------------------


class _RestrictedUnpickler(BoundedUnpickler):
    """Unpickler that resolves only allowlisted globals and resolves storages through ``storage_loader``.

    It is the metered pure-Python VM (:class:`read_limits.BoundedUnpickler`): every object the pickle builds
    is charged to the read's budget.
    """

    def __init__(self, file, source: str, budget: ReadBudget, storage_loader=None, opaque: bool = False):
        super().__init__(file, budget, encoding="utf-8")
        self._source = source
        self._storage_loader = storage_loader
        self._opaque = opaque

    def find_class(self, module, name):  # noqa: D401 - pickle API
        if not isinstance(module, str) or not isinstance(name, str):
            raise ForbiddenGlobalError(f"{self._source}: malformed global reference {module!r}.{name!r}")
        # Python 2 pickles name builtins "__builtin__" etc.; map names only (a dict lookup, nothing imported).
        module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        obj = _ALLOWED.get((module, name))
        if obj is None and self._opaque:
            return _opaque_type(f"{module}.{name}")
        if obj is None:
            hint = ""
            if module.startswith("torch.nn.modules") or module == "__main__" or module.startswith("__torch__"):
                hint = (
                    " This looks like a whole pickled model or TorchScript archive: those are not supported, "
                    "save model.state_dict() instead."
                )
            raise ForbiddenGlobalError(
                f"{self._source}: refusing to load global '{module}.{name}' from the pickle: only tensor/storage "
                f"rebuild functions and plain containers are allowed (the file may be malicious or hold "
                f"non-weight objects).{hint or _OPAQUE_HINT}"
            )
        return obj

    def persistent_load(self, pid):
        if self._storage_loader is None:
            raise TorchFileError(f"{self._source}: unexpected persistent id in a header pickle")
        if not isinstance(pid, tuple) or not pid:
            raise TorchFileError(f"{self._source}: malformed persistent id {pid!r}")
        typename = pid[0].decode("ascii") if isinstance(pid[0], bytes) else pid[0]
        if typename == "module":
            raise TorchFileError(
                f"{self._source}: the file contains a whole pickled nn.Module (torch.save(model)); not supported, "
                "save model.state_dict() instead"
            )
        if typename != "storage":
            raise TorchFileError(f"{self._source}: unknown persistent id type {typename!r}")
        return self._storage_loader(pid[1:])


_OPAQUE_HINT = (
    " If it is a training checkpoint whose extra objects (e.g. OmegaConf configs) should just be skipped, "
    "retry with allow_opaque=True (--allow_opaque_objects): they become inert placeholders, nothing is run."
)


def _restricted_load(f, source: str, budget: ReadBudget, storage_loader=None, opaque: bool = False):
    """One pickle from ``f`` through the restricted, metered unpickler; every failure is a TorchFileError
    naming ``source`` (the rebuild functions raise theirs without it)."""
    try:
        return _RestrictedUnpickler(f, source, budget, storage_loader, opaque).load()
    except TorchFileError as e:
        if str(e).startswith(source):
            raise
        raise type(e)(f"{source}: {e}") from None
    except (pickle.UnpicklingError, EOFError, struct.error) as e:
        raise TorchFileError(f"{source}: corrupt or truncated pickle data ({type(e).__name__}: {e})") from None
    except MemoryError:
        raise budget.out_of_memory("unpickling it") from None
    except (TypeError, ValueError, AttributeError, LookupError, RecursionError, ArithmeticError, BufferError,
            NotImplementedError, UnicodeError) as e:
        raise TorchFileError(f"{source}: malformed pickle data ({type(e).__name__}: {e})") from None


def _check_storage_args(args, source: str, legacy: bool):
    n = 5 if legacy else 4
    if len(args) != n:
        raise TorchFileError(f"{source}: storage persistent id has {len(args)} fields, expected {n}")
    storage_type, key, location, numel = args[:4]
    if not isinstance(storage_type, _DType) or not storage_type.is_storage:
        raise TorchFileError(f"{source}: storage persistent id names unsupported storage type {storage_type!r}")
    if isinstance(key, bytes):
        key = key.decode("ascii")
    if not isinstance(key, (str, int)) or isinstance(key, bool):
        raise TorchFileError(f"{source}: storage key must be a string, got {key!r}")
    if not isinstance(numel, int) or isinstance(numel, bool) or numel < 0:
        raise TorchFileError(f"{source}: storage {key!r} has invalid element count {numel!r}")
    nbytes = numel * storage_type.np_dtype.itemsize
    return storage_type.np_dtype, str(key), numel, nbytes


def _byteswap_buffer(buffer: np.ndarray, dtype: np.dtype) -> bool:
    """In-place big -> little endian conversion of a storage buffer of ``dtype`` elements.

    Returns True when the element size is unknown here (an untyped or 1-byte storage): its multi-byte views
    are swapped when they are made (:func:`_view`), since only the view knows its dtype.
    """
    unit = _swap_unit(dtype)
    if unit == 1:
        return True
    buffer.view(np.dtype(f"u{unit}")).byteswap(inplace=True)
    return False


# --------------------------------------------------------------------------------------------------------
# The two container formats.
# --------------------------------------------------------------------------------------------------------


class _ZipRecords:
    """The records of a zip checkpoint, read by our own bounded reader (zipfile parses the central directory).

    Checked before any record is read: names are unique and records do not overlap (each record's header and
    data end before the next record or the central directory — the "many names, one stored record" trick is
    refused). Checked per record: the local header names the same file as the central directory (Python's
    zipfile does this too; our stored-record fast path must as well), no encryption flag, a compression method
    we can bound (stored, deflate, bzip2), decompressed size exactly the declared one (the decompressor is
    never asked for more than the declared size + 1 byte, which the budget has already admitted), CRC-32.
    """

    def __init__(self, path: str, raw, budget: ReadBudget):
        self.path = path
        self.raw = raw
        self.budget = budget
        try:
            with zipfile.ZipFile(raw) as zf:
                infos = zf.infolist()
                start_dir = zf.start_dir
        except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, ValueError, struct.error,
                UnicodeError, NotImplementedError) as e:
            raise TorchFileError(f"{path}: not a readable zip archive ({e}); truncated or corrupt file?") from None
        except MemoryError:
            raise budget.out_of_memory("reading its zip directory") from None
        self.by_name: dict[str, zipfile.ZipInfo] = {}
        for info in infos:
            if info.filename in self.by_name:
                raise TorchFileError(f"{path}: zip archive lists {info.filename!r} twice (crafted archive?)")
            self.by_name[info.filename] = info
        self.end_of: dict[str, int] = {}
        ordered = sorted(infos, key=lambda i: i.header_offset)
        for i, info in enumerate(ordered):
            end = ordered[i + 1].header_offset if i + 1 < len(ordered) else start_dir
            if info.header_offset < 0 or info.header_offset + 30 + info.compress_size > end:
                raise TorchFileError(
                    f"{path}: zip record {info.filename!r} overlaps the next record or the central directory "
                    "(crafted archive?)")
            self.end_of[info.filename] = end

    def names(self) -> list[str]:
        return list(self.by_name)

    def size(self, name: str) -> int:
        return self.by_name[name].file_size

    def read(self, name: str, what: str) -> np.ndarray:
        """Record ``name`` decompressed into a new uint8 array (charged to the budget first)."""
        info = self.by_name[name]
        method = info.compress_type
        if info.flag_bits & 0x1:
            raise TorchFileError(f"{self.path}: zip record {name!r} is encrypted; torch never writes encrypted records")
        if method not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2):
            label = _ZIP_METHOD_NAMES.get(method, "unknown")
            raise TorchFileError(
                f"{self.path}: zip record {name!r} uses compression method {method} ({label}), which is not "
                "supported (stored, deflate and bzip2 are; torch.save writes stored records)")
        try:
            start = self._check_local_header(info)
            self.budget.charge(info.file_size, what)
            buffer = np.empty(info.file_size, np.uint8)
            self.raw.seek(start)
            if method == zipfile.ZIP_STORED:
                if info.compress_size != info.file_size:
                    raise TorchFileError(f"{self.path}: stored zip record {name!r} has different compressed and "
                                         f"uncompressed sizes ({info.compress_size} vs {info.file_size})")
                got = _read_into(self.raw, buffer)
            else:
                got = self._inflate(info, buffer)
        except TorchFileError:
            raise
        except OSError as e:
            raise TorchFileError(f"{self.path}: cannot read zip record {name!r} ({e})") from None
        except (zlib.error, ValueError, EOFError) as e:  # bz2 raises OSError/ValueError/EOFError on bad data
            raise TorchFileError(f"{self.path}: corrupt compressed zip record {name!r} ({e})") from None
        except MemoryError:
            raise self.budget.out_of_memory(f"reading zip record {name!r}") from None
        if got != info.file_size:
            raise TorchFileError(
                f"{self.path}: zip record {name!r} ended after {got} of {info.file_size} bytes; truncated file?")
        if zlib.crc32(memoryview(buffer)) != info.CRC:
            raise TorchFileError(f"{self.path}: CRC-32 mismatch in zip record {name!r} (corrupt file)")
        return buffer

    def _check_local_header(self, info: zipfile.ZipInfo) -> int:
        """Validates the local header of ``info``; returns the offset of its data."""
        self.raw.seek(info.header_offset)
        header = self.raw.read(30)
        if len(header) != 30 or header[:4] != b"PK\x03\x04":
            raise TorchFileError(f"{self.path}: bad local header for zip record {info.filename!r}; truncated file?")
        (local_flags,) = struct.unpack("<H", header[6:8])
        if local_flags & 0x1:
            raise TorchFileError(
                f"{self.path}: zip record {info.filename!r} is encrypted; torch never writes encrypted records")
        name_len, extra_len = struct.unpack("<HH", header[26:30])
        raw_name = self.raw.read(name_len)
        try:  # decoded as zipfile decodes central-directory names
            local_name = raw_name.decode("utf-8" if info.flag_bits & 0x800 else "cp437")
        except UnicodeDecodeError:
            local_name = repr(raw_name)
        if local_name != info.orig_filename:
            raise TorchFileError(
                f"{self.path}: zip record {info.filename!r}: its local header names {local_name!r} (crafted "
                "archive?)")
        start = info.header_offset + 30 + name_len + extra_len
        if start + info.compress_size > self.end_of[info.filename]:
            raise TorchFileError(
                f"{self.path}: zip record {info.filename!r} overlaps the next record or the central directory "
                "(crafted archive?)")
        return start

    def _inflate(self, info: zipfile.ZipInfo, buffer: np.ndarray) -> int:
        """Decompresses ``info``'s data into ``buffer``; never produces more than len(buffer) + 1 bytes."""
        deflate = info.compress_type == zipfile.ZIP_DEFLATED
        decomp = zlib.decompressobj(-zlib.MAX_WBITS) if deflate else bz2.BZ2Decompressor()
        view = memoryview(buffer)
        size, got, left = len(buffer), 0, info.compress_size
        while True:
            if deflate:
                feed = decomp.unconsumed_tail
                if not feed:
                    if not left or decomp.eof:
                        break
                    feed = self.raw.read(min(_INFLATE_CHUNK, left))
                    left -= len(feed)
                    if not feed:
                        break
            else:
                if decomp.eof:
                    break
                if decomp.needs_input:
                    if not left:
                        break
                    feed = self.raw.read(min(_INFLATE_CHUNK, left))
                    left -= len(feed)
                    if not feed:
                        break
                else:
                    feed = b""
            out = decomp.decompress(feed, size - got + 1)
            if got + len(out) > size:
                raise TorchFileError(
                    f"{self.path}: zip record {info.filename!r} decompresses to more than its declared "
                    f"{size} bytes (crafted archive?)")
            view[got:got + len(out)] = out
            got += len(out)
        return got


def _read_into(raw, buffer: np.ndarray) -> int:
    """Fills ``buffer`` from the file's current position; returns the bytes read (short at end of file)."""
    view = memoryview(buffer)
    got = 0
    while got < len(view):
        n = raw.readinto(view[got:])
        if not n:
            break
        got += n
    return got


def _read_zip(path: str, opaque: bool, budget: ReadBudget) -> Any:
    with _open_checked(path) as raw:
        records = _ZipRecords(path, raw, budget)
        names = records.names()
        if any(n.split("/", 1)[-1].startswith("code/") for n in names) or any(n.endswith("constants.pkl") for n in names):
            raise TorchFileError(f"{path}: this is a TorchScript archive (torch.jit.save); not supported, export a state_dict")
        pkls = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pkls) != 1:
            raise TorchFileError(f"{path}: zip archive without a single '<prefix>/data.pkl' record (found {pkls[:5]})")
        prefix = pkls[0][: -len("data.pkl")]
        big_endian = False
        if prefix + "byteorder" in names:
            if records.size(prefix + "byteorder") > _MAX_BYTEORDER_RECORD:
                raise TorchFileError(f"{path}: byteorder record of {records.size(prefix + 'byteorder')} bytes")
            order = records.read(prefix + "byteorder", "the byteorder record").tobytes()
            if order not in (b"little", b"big"):
                raise TorchFileError(f"{path}: unknown byteorder record {order!r}")
            big_endian = order == b"big"
        storages: dict[str, _Storage] = {}

        def load_storage(args):
            dtype, key, numel, nbytes = _check_storage_args(args, path, legacy=False)
            if key in storages:
                st = storages[key]
                if st.dtype != dtype:
                    raise TorchFileError(f"{path}: storage {key!r} used with dtypes {st.dtype} and {dtype}")
                return st
            record = f"{prefix}data/{key}"
            if record not in records.by_name:
                raise TorchFileError(f"{path}: storage record {record!r} is missing from the archive")
            if records.size(record) < nbytes:
                raise TorchFileError(
                    f"{path}: storage record {record!r} has {records.size(record)} bytes, expected {nbytes} "
                    "(truncated?)")
            buffer = records.read(record, f"storage {key!r}")[:nbytes]
            swap = big_endian and _byteswap_buffer(buffer, dtype)
            st = _Storage(key, dtype, numel, buffer, budget, swap_bytes=swap)
            storages[key] = st
            return st

        pickle_bytes = records.read(pkls[0], pkls[0])
        budget.charge(pickle_bytes.nbytes, f"a copy of {pkls[0]!r} for the unpickler")
        stream = io.BytesIO(memoryview(pickle_bytes))
        del pickle_bytes
        return _restricted_load(stream, path, budget, load_storage, opaque)


def _read_legacy(path: str, opaque: bool, budget: ReadBudget) -> Any:
    file_size = budget.size_on_disk
    with _open_checked(path) as f:
        magic = _restricted_load(f, path, budget)
        if magic != MAGIC_NUMBER:
            raise TorchFileError(f"{path}: not a PyTorch legacy file (wrong magic number)")
        version = _restricted_load(f, path, budget)
        if version != PROTOCOL_VERSION:
            raise TorchFileError(f"{path}: unsupported legacy protocol version {version!r}")
        sys_info = _restricted_load(f, path, budget)
        if not isinstance(sys_info, dict):
            raise TorchFileError(f"{path}: malformed sys-info header")
        if sys_info.get("little_endian", True) is False:
            raise TorchFileError(f"{path}: big-endian legacy checkpoint; not supported (re-save it with torch.save)")
        roots: dict[str, _Storage] = {}
        views: dict[str, _Storage] = {}

        def load_storage(args):
            dtype, key, numel, nbytes = _check_storage_args(args, path, legacy=True)
            if key in roots:
                root = roots[key]
                if root.dtype != dtype:
                    raise TorchFileError(f"{path}: storage {key!r} used with dtypes {root.dtype} and {dtype}")
            else:
                if nbytes > file_size:
                    raise TorchFileError(f"{path}: storage {key!r} claims {nbytes} bytes, more than the file holds")
                budget.charge(nbytes, f"storage {key!r}")
                # Filled after the pickle (the bytes follow it), before the second pass.
                root = _Storage(key, dtype, numel, np.zeros(nbytes, np.uint8), budget)
                roots[key] = root
            view_metadata = args[4]
            if view_metadata is None:
                return root
            if not (isinstance(view_metadata, tuple) and len(view_metadata) == 3):
                raise TorchFileError(f"{path}: malformed storage view metadata {view_metadata!r}")
            view_key, offset, view_size = view_metadata
            view_key = str(view_key)
            if view_key not in views:
                if not all(isinstance(v, int) and v >= 0 for v in (offset, view_size)) or offset + view_size > numel:
                    raise TorchFileError(f"{path}: storage view {view_metadata!r} outside storage {key!r}")
                it = dtype.itemsize
                views[view_key] = _Storage(view_key, dtype, view_size, root.buffer[offset * it : (offset + view_size) * it],
                                           budget)
            return views[view_key]

        # Pass 1 learns each storage's dtype and size (needed to parse the bytes after the pickle); the
        # objects it builds are discarded because some (conj/neg views) are computed from the data.
        pickle_start = f.tell()
        _restricted_load(f, path, budget, load_storage, opaque)
        keys = _restricted_load(f, path, budget)
        if not isinstance(keys, list):
            raise TorchFileError(f"{path}: malformed storage key list")
        for key in keys:
            key = str(key.decode("ascii", "replace") if isinstance(key, bytes) else key)
            if key not in roots:
                raise TorchFileError(f"{path}: storage {key!r} listed but never referenced")
            st = roots[key]
            head = f.read(8)
            if len(head) != 8:
                raise TorchFileError(f"{path}: truncated file: storage {key!r} header missing")
            (count,) = struct.unpack("<q", head)
            if count != st.numel:
                raise TorchFileError(f"{path}: storage {key!r} holds {count} elements, the pickle expects {st.numel}")
            got = _read_into(f, st.buffer) if st.buffer.nbytes else 0
            if got != st.buffer.nbytes:
                raise TorchFileError(
                    f"{path}: truncated file: storage {key!r} has {got} of {st.buffer.nbytes} bytes"
                )
        missing = set(roots) - {str(k.decode("ascii", "replace") if isinstance(k, bytes) else k) for k in keys}
        if missing:
            raise TorchFileError(f"{path}: storages {sorted(missing)[:10]} have no data in the file")
        # Pass 2: the same pickle again, now over filled storages (``roots``/``views`` are reused).
        f.seek(pickle_start)
        return _restricted_load(f, path, budget, load_storage, opaque)


def sniff_torch_format(head: bytes) -> str | None:
    """Returns "torch_zip", "torch_legacy" or None from the first bytes of a file (>= 16 bytes)."""
    if head[:4] == b"PK\x03\x04":
        return "torch_zip"
    if _LEGACY_MAGIC_BYTES in head[:32]:
        return "torch_legacy"
    return None


def _open_checked(path: str) -> BinaryIO:
    """``path`` opened for reading, checked on its descriptor to be a regular file (read_limits)."""
    return open_regular_file(path, TorchFileError)[0]


def _open_budget(path: str, max_read_bytes: int | None) -> ReadBudget:
    """The read budget of ``path`` after checking it is a regular file (see read_limits)."""
    try:
        size = regular_file_size(path, TorchFileError)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such weights file") from None
    return ReadBudget(path, size, TorchFileError, max_read_bytes)


def _read_any(path: str, allow_opaque: bool, budget: ReadBudget) -> Any:
    with _open_checked(path) as f:
        head = f.read(512)
    kind = sniff_torch_format(head)
    if kind == "torch_zip":
        return _read_zip(path, allow_opaque, budget)
    if kind == "torch_legacy":
        return _read_legacy(path, allow_opaque, budget)
    if len(head) >= 262 and head[257:262] == b"ustar":
        raise TorchFileError(f"{path}: legacy tar checkpoint (PyTorch < 0.4) is not supported")
    raise TorchFileError(f"{path}: not a PyTorch checkpoint (neither zip nor legacy magic number found)")


def read_torch_pickle(path: str | os.PathLike, *, allow_opaque: bool = False, max_read_bytes: int | None = None) -> Any:
    """Reads a PyTorch checkpoint into Python objects with every tensor as a numpy array (never runs torch).

    Tensors are numpy views over their storages (tensors sharing a storage share memory, as in torch);
    dtypes follow torch (bfloat16/float8 via ml_dtypes). Containers are dicts/OrderedDicts/lists/tuples;
    hyper-parameter objects become :class:`Namespace`/:class:`AttributeDict` stand-ins. With
    ``allow_opaque=True`` any other global becomes an inert :class:`OpaqueObject` instead of an error (still
    nothing is imported or executed); the default refuses it.

    Memory: everything materialised (storages, decompressed records, the pickle's objects, copies) is
    charged to a :class:`read_limits.ReadBudget`: at most 4x the file size + 64 MiB, or ``max_read_bytes``
    (else ``$SYNLEAK_MAX_READ_BYTES``) when given; beyond it the file is refused.

    Raises:
      FileNotFoundError: ``path`` does not exist.
      ForbiddenGlobalError: the pickle references a global outside the allowlist (nothing is executed).
      TorchFileError: not a regular file, truncated/corrupt/crafted file, over the memory limit, unsupported
        content (TorchScript, whole modules, tar format). Never MemoryError.
    """
    path = os.fspath(path)
    budget = _open_budget(path, max_read_bytes)
    try:
        return _read_any(path, allow_opaque, budget)
    except MemoryError:
        raise budget.out_of_memory() from None


# --------------------------------------------------------------------------------------------------------
# State dicts.
# --------------------------------------------------------------------------------------------------------

_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "net", "network", "module", "params")


def _flatten_tensors(obj: Mapping, prefix: str, out: dict, skipped: list) -> None:
    for key, value in obj.items():
        name = f"{prefix}{key}"
        if isinstance(value, np.ndarray):
            out[name] = value
        elif isinstance(value, Mapping):
            _flatten_tensors(value, name + ".", out, skipped)
        else:
            skipped.append((name, value))


def _is_tensor_tree(obj) -> bool:
    if not isinstance(obj, Mapping) or not obj:
        return False
    return all(isinstance(v, np.ndarray) or _is_tensor_tree(v) for v in obj.values())


def _find_state_dict(obj, path: str, depth: int = 0) -> Mapping:
    if isinstance(obj, Mapping) and len(obj) == 1 and depth < 3:
        # Exactly {"state_dict": {...}} (a Lightning checkpoint stripped of everything else): a wrapper, not a
        # module called "state_dict".
        ((key, value),) = obj.items()
        if key in _WRAPPER_KEYS and isinstance(value, Mapping):
            return _find_state_dict(value, path, depth + 1)
    if _is_tensor_tree(obj):
        return obj
    if isinstance(obj, Mapping) and depth < 3:
        for key in _WRAPPER_KEYS:
            if key in obj and isinstance(obj[key], Mapping):
                return _find_state_dict(obj[key], path, depth + 1)
        # A state dict with a few non-tensor extras (e.g. "_extra_state"): mostly tensors.
        arrays = sum(isinstance(v, np.ndarray) for v in obj.values())
        if arrays and arrays >= len(obj) / 2:
            return obj
    what = f"keys {sorted(map(str, obj))[:20]}" if isinstance(obj, Mapping) else f"a {type(obj).__name__}"
    if isinstance(obj, Mapping):
        opaque = [f"{k} ({v.global_name})" for k, v in obj.items() if isinstance(v, OpaqueObject)]
        if opaque:
            what += f"; entries that are objects of non-allowlisted types: {opaque[:5]}"
    raise TorchFileError(f"{path}: no state dict of tensors found (top level has {what})")


def strip_common_prefixes(tensors: Mapping[str, Any], prefixes=("model.", "module.")) -> dict[str, Any]:
    """Removes each prefix while EVERY key starts with it (repeatedly: "module.model.x" -> "x")."""
    out = dict(tensors)
    changed = True
    while changed and out:
        changed = False
        for p in prefixes:
            if p and all(k.startswith(p) for k in out):
                out = {k[len(p) :]: v for k, v in out.items()}
                changed = True
    return out


def load_torch_file(
    path: str | os.PathLike, *, strip_prefixes=("model.", "module."), allow_opaque: bool = False,
    max_read_bytes: int | None = None,
) -> dict[str, np.ndarray]:
    """Loads the state dict of a PyTorch checkpoint as ``{key: np.ndarray}`` without torch.

    Accepts plain state dicts and wrappers (``{"state_dict": ...}`` incl. PyTorch Lightning ``.ckpt``,
    ``{"model": ...}``, ...); nested dicts of tensors are flattened with "." joins; non-tensor entries inside
    the state dict are dropped. ``strip_prefixes`` are removed only when every key carries them.
    Arrays are C-contiguous (non-contiguous views are copied), in torch's dtype. ``allow_opaque``: see
    :func:`read_torch_pickle`; an opaque object inside the state dict itself is still an error.

    Memory (see :func:`read_torch_pickle` for the limit and ``max_read_bytes``): besides what the reader
    materialises, every state-dict tensor is charged its full size — it is either copied here (a
    non-contiguous view) or copied by the converters — so a crafted view (stride 0, or one storage shared by
    many keys or memo references) cannot make a tiny file expand into gigabytes downstream.
    """
    path = os.fspath(path)
    budget = _open_budget(path, max_read_bytes)
    try:
        return _load_state_dict(path, strip_prefixes, allow_opaque, budget)
    except MemoryError:
        raise budget.out_of_memory() from None


def _load_state_dict(path: str, strip_prefixes, allow_opaque: bool, budget: ReadBudget) -> dict[str, np.ndarray]:
    obj = _read_any(path, allow_opaque, budget)
    out: dict[str, np.ndarray] = {}
    skipped: list[tuple[str, Any]] = []
    try:
        sd = _find_state_dict(obj, path)
        _flatten_tensors(sd, "", out, skipped)
    except RecursionError:
        raise TorchFileError(f"{path}: containers nested too deeply (or cyclic) to hold a state dict") from None
    opaque = [f"{k} ({v.global_name})" for k, v in skipped if isinstance(v, OpaqueObject)]
    if opaque:
        raise TorchFileError(f"{path}: state-dict entries are objects of non-allowlisted types: {opaque[:5]}")
    if not out:
        raise TorchFileError(f"{path}: the state dict holds no tensors")
    if skipped:
        from absl import logging

        logging.warning(
            "%s: ignoring %d non-tensor state-dict entries: %s", path, len(skipped), [k for k, _ in skipped[:10]]
        )
    contiguous = {}
    for key, value in out.items():
        budget.charge(value.nbytes, f"state-dict tensor {key!r} {value.dtype}{list(value.shape)}")
        # (np.ascontiguousarray would turn 0-d tensors into 1-d arrays.)
        contiguous[key] = value if value.flags.c_contiguous else value.copy(order="C")
    return strip_common_prefixes(contiguous, strip_prefixes)
