"""Builders of hostile input files (made inside each test) and a runner under an address-space limit.

* :func:`craft_torch_zip` writes a torch zip checkpoint whose pickle we control exactly: tensors are
  :class:`TensorRef` (any storage, offset, size, stride, rebuild function) over :class:`StorageRef` records.
* zip surgery on the bytes of an archive: :func:`patch_zip_entry` (flags / compression method in both
  headers), :func:`alias_central_entry` (more central-directory names for one record),
  :func:`rename_central_entry` (central name differs from the local header's).
* deflate/bzip2 bombs made in milliseconds (:func:`deflate_zeros`).
* :func:`run_limited` calls a function in a fresh interpreter under ``RLIMIT_AS`` and returns what happened
  and the peak RSS.
"""

from __future__ import annotations

import collections
import io
import json
import os
import pickle
import struct
import zipfile
import zlib
from pathlib import Path

from tests.data.isolated import run_isolated


class StorageRef:
    """A storage, pickled as torch's persistent id ``("storage", torch.<type>, key, "cpu", numel)``."""

    def __init__(self, key: str, numel: int, storage_type: str = "FloatStorage"):
        self.key, self.numel, self.storage_type = key, numel, storage_type


class TensorRef:
    """A tensor, pickled as ``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, False, {})``
    (or ``_rebuild_tensor_v3(..., torch.<dtype>)`` when ``dtype`` is given)."""

    def __init__(self, storage, offset, size, stride, dtype: str | None = None, metadata=None):
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride
        self.dtype, self.metadata = dtype, metadata

    def __reduce__(self):
        import torch

        hooks = collections.OrderedDict()
        if self.dtype is not None:
            return torch._utils._rebuild_tensor_v3, (self.storage, self.offset, self.size, self.stride, False, hooks,
                                                     getattr(torch, self.dtype))
        args = (self.storage, self.offset, self.size, self.stride, False, hooks)
        return torch._utils._rebuild_tensor_v2, args + ((self.metadata,) if self.metadata is not None else ())


class Call:
    """Pickles as ``func(*args)`` where ``func`` is a real function object (written as its global name)."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


class _TorchPickler(pickle.Pickler):
    def persistent_id(self, obj):
        import torch

        if isinstance(obj, StorageRef):
            return ("storage", getattr(torch, obj.storage_type), obj.key, "cpu", obj.numel)
        return None


def torch_pickle_bytes(obj) -> bytes:
    """``obj`` pickled as torch.save would (protocol 2, storages as persistent ids)."""
    buf = io.BytesIO()
    _TorchPickler(buf, protocol=2).dump(obj)
    return buf.getvalue()


def craft_torch_zip(path, obj, storages: dict[str, bytes], *, byteorder: str | None = "little",
                    pickle_bytes: bytes | None = None, pkl_compression: int = zipfile.ZIP_STORED) -> Path:
    """Writes a torch zip checkpoint: ``archive/data.pkl`` (``obj`` pickled, or ``pickle_bytes``),
    ``archive/byteorder``, ``archive/data/<key>`` for each storage."""
    path = Path(path)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        z.writestr("archive/data.pkl", torch_pickle_bytes(obj) if pickle_bytes is None else pickle_bytes,
                   compress_type=pkl_compression)
        if byteorder is not None:
            z.writestr("archive/byteorder", byteorder)
        for key, data in storages.items():
            z.writestr(f"archive/data/{key}", data)
        z.writestr("archive/version", "3\n")
    return path


# --------------------------------------------------------------------------------------------------------
# Zip surgery (archives written by zipfile: no zip64, no archive comment).
# --------------------------------------------------------------------------------------------------------

_CENTRAL = b"PK\x01\x02"
_LOCAL = b"PK\x03\x04"
_END = b"PK\x05\x06"


def _split(data: bytes):
    end = data.rindex(_END)
    cd_size, cd_offset = struct.unpack("<II", data[end + 12:end + 20])
    entries, pos = [], cd_offset
    while pos < cd_offset + cd_size:
        name_len, extra_len, comment_len = struct.unpack("<HHH", data[pos + 28:pos + 34])
        size = 46 + name_len + extra_len + comment_len
        entries.append(bytearray(data[pos:pos + size]))
        pos += size
    return bytearray(data[:cd_offset]), entries, bytearray(data[end:])


def _join(body: bytearray, entries, end: bytearray) -> bytes:
    cd = b"".join(entries)
    end = bytearray(end)
    end[8:12] = struct.pack("<HH", len(entries), len(entries))
    end[12:20] = struct.pack("<II", len(cd), len(body))
    return bytes(body) + cd + bytes(end)


def _entry_name(entry) -> str:
    (name_len,) = struct.unpack("<H", entry[28:30])
    return bytes(entry[46:46 + name_len]).decode()


def _with_name(entry, name: str) -> bytearray:
    name_len, extra_len, comment_len = struct.unpack("<HHH", entry[28:34])
    out = bytearray(entry[:46]) + name.encode() + entry[46 + name_len:]
    out[28:30] = struct.pack("<H", len(name.encode()))
    return out


def patch_zip_entry(data: bytes, name: str, *, flags: int | None = None, method: int | None = None) -> bytes:
    """Sets the general-purpose flags and/or compression method of record ``name`` in both of its headers."""
    body, entries, end = _split(data)
    for entry in entries:
        if _entry_name(entry) == name:
            (local,) = struct.unpack("<I", entry[42:46])
            if flags is not None:
                entry[8:10] = struct.pack("<H", flags)
                body[local + 6:local + 8] = struct.pack("<H", flags)
            if method is not None:
                entry[10:12] = struct.pack("<H", method)
                body[local + 8:local + 10] = struct.pack("<H", method)
            return _join(body, entries, end)
    raise KeyError(name)


def alias_central_entry(data: bytes, name: str, aliases: list[str]) -> bytes:
    """Adds central-directory entries named ``aliases`` that all point at record ``name``'s local header."""
    body, entries, end = _split(data)
    source = next(e for e in entries if _entry_name(e) == name)
    entries += [_with_name(source, alias) for alias in aliases]
    return _join(body, entries, end)


def rename_central_entry(data: bytes, name: str, new_name: str) -> bytes:
    """Renames record ``name`` in the central directory only (its local header keeps the old name)."""
    body, entries, end = _split(data)
    entries = [_with_name(e, new_name) if _entry_name(e) == name else e for e in entries]
    return _join(body, entries, end)


def replace_record_data(data: bytes, name: str, payload: bytes, *, method: int, declared_size: int,
                        crc: int = 0) -> bytes:
    """Rebuilds the archive with record ``name``'s data replaced by ``payload`` (already compressed with
    ``method``) and its uncompressed size declared as ``declared_size``."""
    src = zipfile.ZipFile(io.BytesIO(data))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, payload if info.filename == name else src.read(info))
    fixed = bytearray(out.getvalue())
    body, entries, end = _split(bytes(fixed))
    for entry in entries:
        if _entry_name(entry) == name:
            (local,) = struct.unpack("<I", entry[42:46])
            for header, at in ((entry, 10), (body, local + 8)):
                header[at:at + 2] = struct.pack("<H", method)
                header[at + 6:at + 10] = struct.pack("<I", crc)
                header[at + 14:at + 18] = struct.pack("<I", declared_size)
    return _join(body, entries, end)


def deflate_zeros(nbytes: int, chunk: int = 1 << 20) -> bytes:
    """A raw deflate stream of ``nbytes`` zero bytes, built in milliseconds: one fully flushed (hence
    self-contained) block for ``chunk`` zeros, repeated, then an empty final block."""
    assert nbytes % chunk == 0
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = comp.compress(bytes(chunk)) + comp.flush(zlib.Z_FULL_FLUSH)
    final = zlib.compressobj(9, zlib.DEFLATED, -15).flush()
    return block * (nbytes // chunk) + final


# --------------------------------------------------------------------------------------------------------
# Running a reader under an address-space limit (through tests/data/isolated.run_isolated, the one runner).
# --------------------------------------------------------------------------------------------------------

_CALL = """
import importlib, json
import numpy as np
spec = json.loads({spec!r})
for name in spec["preload"]:
    importlib.import_module(name)
module, _, attr = spec["func"].rpartition(".")
func = getattr(importlib.import_module(module), attr)
limit_address_space(spec["headroom"] / (1 << 20))
try:
    value = func(*spec["args"], **spec["kwargs"])
    result["outcome"] = "ok"
    result["summary"] = repr(type(value).__name__)
except BaseException as e:  # noqa: BLE001 - report anything, the parent asserts
    result["outcome"] = type(e).__name__
    result["module"] = type(e).__module__
    result["message"] = str(e)
result["peak_kib_after_call"] = _vm_kib("VmHWM")
try:  # control: the limit really bites (allocating more than the whole headroom must fail)
    np.ones(spec["headroom"] + (64 << 20), np.uint8)
    result["control"] = "allocated"
except MemoryError:
    result["control"] = "MemoryError"
"""


def run_limited(func: str, *args, headroom: int, preload=(), env=None, **kwargs) -> dict:
    """Calls ``func`` ("package.module.function") with JSON-able args in a fresh interpreter whose address
    space is limited to (its size after importing numpy, ``preload`` and ``func``'s module) + ``headroom`` bytes.

    Returns the child's report: ``outcome`` ("ok" or the exception's class name), ``message``,
    ``peak_rss`` / ``peak_vm`` (VmHWM / VmPeak of the child, bytes), ``rss_before`` (VmHWM after the
    imports), ``vm_base`` (VmSize after the imports), ``limit`` (bytes), ``control`` ("MemoryError": allocating
    more than ``headroom`` bytes afterwards failed, so the limit was in force).
    """
    spec = {"func": func, "args": [os.fspath(a) if isinstance(a, Path) else a for a in args],
            "kwargs": kwargs, "headroom": int(headroom), "preload": list(preload)}
    r = run_isolated(_CALL.format(spec=json.dumps(spec)), timeout=300, env=env)
    r.update(peak_rss=r["peak_kib_after_call"] * 1024, peak_vm=r["vm_peak_kib"] * 1024,
             rss_before=r["hwm_at_limit_kib"] * 1024, vm_base=r["vm_base_kib"] * 1024, limit=r["limit_bytes"])
    return r
