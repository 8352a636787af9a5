"""How much memory a reader may materialise from one untrusted input file, and a pickle VM that counts it.

The rule (docs/weights.md, "Bounded reading"): memory materialised while reading any input is bounded by a
small multiple of its size on disk, or by a documented, configurable cap, and refused otherwise with the
reader's own error naming the file. Concretely a reader charges a :class:`ReadBudget` BEFORE it allocates
(storage buffers, decompressed records, tensor copies, byte-swapped or conjugated copies, the objects a
pickle builds) and the budget refuses once the running total would pass

    limit = READ_MULTIPLE * size_on_disk + READ_SLACK_BYTES        (default: 4 x the file + 64 MiB)

unless a cap is given: ``max_read_bytes=`` on the reader, else the environment variable
``SYNLEAK_MAX_READ_BYTES`` (bytes, or with a K/M/G/T suffix: ``8G``), which replaces the formula. The
running total only grows (nothing is credited back), so it is an upper bound on the peak.

Why a multiple and not exactly 1x: an honest checkpoint is charged for its storages (1x), the per-tensor
sizes handed to the converters (about 1x), its pickle's objects and a few copies (transposed views); tied
weights add another 1x. Measured on torch.save files: IResNet-18/100 2.00-2.02x, MobileFaceNet 2.09x (zip)
and 2.20x (legacy: its pickle is read twice); tests/weights/test_read_limits.py checks < 2.3x. The 64 MiB
slack covers tiny files with many small objects.

:class:`BoundedUnpickler` is the pure-Python unpickler (``pickle._Unpickler``) with every opcode charged to a
budget: a 1-byte opcode can create a 216-byte object (EMPTY_SET), so without counting, a pickle alone
amplifies its size about 200-fold. The C unpickler cannot be instrumented; the pure-Python one is slower per
opcode, which matters little for weights (data.pkl of IResNet-100: 30,556 opcodes; load_torch_file of its
261 MB file 0.38 s vs 0.24 s with the C unpickler, load average 5.5 on the shared 2-core machine) and not for
verification bins (a few opcodes per image, the image bytes are read in one piece).
"""

from __future__ import annotations

import os
import pickle
import re
import stat
import sys
from typing import BinaryIO, Callable

import numpy as np

from synleak_jax import files

ENV_VAR = "SYNLEAK_MAX_READ_BYTES"
READ_MULTIPLE = 4
READ_SLACK_BYTES = 64 << 20

_SUFFIXES = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_byte_count(text: str) -> int:
    """``"123"``, ``"512M"``, ``"1.5G"``, ``"8GiB"`` -> bytes (binary units). Raises ValueError."""
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([KMGT]?)(?:i?B)?\s*", str(text), re.IGNORECASE)
    if not match:
        raise ValueError(f"not a byte count: {text!r} (expected e.g. 1073741824, 512M or 8G)")
    value = float(match.group(1)) * _SUFFIXES[match.group(2).upper()]
    if value < 1:
        raise ValueError(f"byte count must be positive: {text!r}")
    return int(value)


def read_limit(size_on_disk: int, cap: int | None = None) -> int:
    """The number of bytes a reader may materialise from an input of ``size_on_disk`` bytes.

    ``cap`` (if given) wins, then ``$SYNLEAK_MAX_READ_BYTES``, then ``READ_MULTIPLE * size + READ_SLACK_BYTES``.
    Raises ValueError for a malformed cap.
    """
    if cap is not None:
        if isinstance(cap, bool) or not isinstance(cap, int) or cap < 1:
            raise ValueError(f"max_read_bytes must be a positive int, got {cap!r}")
        return cap
    env = os.environ.get(ENV_VAR)
    if env:
        try:
            return parse_byte_count(env)
        except ValueError as e:
            raise ValueError(f"${ENV_VAR}: {e}") from None
    return READ_MULTIPLE * max(0, int(size_on_disk)) + READ_SLACK_BYTES


def open_regular_file(path: str, error: Callable[[str], Exception], follow: bool = True) -> tuple[BinaryIO, int]:
    """Opens ``path`` for binary reading after checking it is a regular file: (file, size in bytes).

    Every reader of an untrusted weights or bin file opens it here, once per read: the project's one checked
    open, :func:`synleak_jax.files.open_checked` (``stat``, an ``O_NONBLOCK`` open, ``O_NOFOLLOW`` unless
    ``follow``, ``fstat`` of the descriptor), so a FIFO or symlink swapped in after the check is refused, never
    waited on or followed. Raises FileNotFoundError when nothing is there, ``error(message)`` naming ``path``
    otherwise.
    """
    try:
        fd, size = files.open_checked(path, follow=follow)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such file") from None
    except files.NotARegularFile as e:
        what = {"fifo": "a FIFO (named pipe)", "device": "a device", "socket": "a socket",
                "directory": "a directory"}.get(e.kind)
        if what is not None:
            raise error(f"{path}: {what}, not a regular file") from None
        raise error(f"{path}: cannot open it ({e.detail or e.kind})") from None
    return os.fdopen(fd, "rb"), size


def regular_file_size(path: str, error: Callable[[str], Exception]) -> int:
    """Size in bytes of ``path`` after checking it is a regular file (symlinks followed): the check of
    :func:`open_regular_file`, for a reader that sizes its budget before it reads."""
    opened, size = open_regular_file(path, error)
    opened.close()
    return size


def describe_file_type(mode: int) -> str:
    """"a directory", "a FIFO (named pipe)", ... for an ``st_mode``."""
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISLNK, "a symbolic link"),
                       (stat.S_ISREG, "a regular file")):
        if test(mode):
            return name
    return "not a regular file"


class ReadBudget:
    """Running total of the bytes a reader materialised from one input; refuses past :attr:`limit`.

    Args:
      source: the input's path (every refusal names it).
      size_on_disk: its size in bytes (for several files, e.g. an ONNX model and its external data, the sum).
      error: the reader's exception type; called with one message string.
      cap: ``max_read_bytes`` of the reader (None: environment variable, else the multiple of the size).
    """

    def __init__(self, source: str, size_on_disk: int, error: Callable[[str], Exception], cap: int | None = None):
        self.source = source
        self.size_on_disk = int(size_on_disk)
        self.error = error
        try:
            self.limit = read_limit(self.size_on_disk, cap)
        except ValueError as e:
            raise error(f"{source}: {e}") from None
        self.used = 0
        self.explicit_cap = cap is not None or bool(os.environ.get(ENV_VAR))

    def add_input(self, nbytes: int) -> None:
        """Another file belongs to this input (ONNX external data): its size raises the default limit."""
        self.size_on_disk += int(nbytes)
        if not self.explicit_cap:
            self.limit = read_limit(self.size_on_disk)

    def charge(self, nbytes: int, what: str) -> None:
        """Adds ``nbytes`` (about to be allocated for ``what``) or raises the reader's error."""
        nbytes = int(nbytes)
        if nbytes < 0:
            raise self.error(f"{self.source}: {what}: negative size {nbytes}")
        if self.used + nbytes > self.limit:
            how = (f"the cap of {self.limit:,} bytes" if self.explicit_cap else
                   f"{self.limit:,} bytes ({READ_MULTIPLE}x its {self.size_on_disk:,} bytes on disk + "
                   f"{READ_SLACK_BYTES >> 20} MiB)")
            raise self.error(
                f"{self.source}: reading it would materialise more than {how}: {what} needs {nbytes:,} more "
                f"bytes after {self.used:,} (a crafted or corrupt file? raise the limit with max_read_bytes= or "
                f"${ENV_VAR} only for a file you trust)")
        self.used += nbytes

    def out_of_memory(self, what: str = "reading it") -> Exception:
        """The reader's error for a MemoryError that happened anyway (never let MemoryError escape)."""
        return self.error(f"{self.source}: ran out of memory while {what} ({self.used:,} bytes charged so far; "
                          f"limit {self.limit:,})")


# --------------------------------------------------------------------------------------------------------
# A pickle VM that charges what it builds.
# --------------------------------------------------------------------------------------------------------

_POINTER = 8  # one slot on the unpickler's stack, in a list, tuple or memo
_MEMO_ENTRY = 112  # dict entry + int key in the pure-Python unpickler's memo (measured: ~100 bytes/entry)
_MARK = 64  # MARK pushes the current stack and starts a new empty list


def _codes(*names: str) -> frozenset[int]:
    return frozenset(getattr(pickle, name)[0] for name in names if hasattr(pickle, name))


_FREE = _codes("PROTO", "STOP", "POP", "POP_MARK", "FRAME")  # FRAME: the frame bytes are the input itself
_REFERENCES = _codes("GET", "BINGET", "LONG_BINGET", "DUP", "GLOBAL", "STACK_GLOBAL", "EXT1", "EXT2", "EXT4",
                     "NONE", "NEWTRUE", "NEWFALSE", "EMPTY_TUPLE")
_MEMO = _codes("PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE")
_MARKS = _codes("MARK")
_GROW_ONE = {pickle.APPEND[0]: 2, pickle.SETITEM[0]: 3}  # opcode -> stack depth of the grown container
_GROW_MANY = _codes("APPENDS", "SETITEMS", "ADDITEMS")
_BUILD = pickle.BUILD[0]


def object_size(obj) -> int:
    """Bytes of ``obj`` as charged by :class:`BoundedUnpickler`: the object itself, not what it refers to.

    numpy arrays count their header only: whoever creates their data (a tensor rebuild, a byte-swap) charges
    it explicitly before allocating.
    """
    if isinstance(obj, np.ndarray):
        return 128
    try:
        return sys.getsizeof(obj)
    except TypeError:
        return 64


def _charging(code: int, load: Callable) -> Callable:
    if code in _FREE:
        return load
    if code in _REFERENCES:
        def run(self):
            self._budget.charge(_POINTER, "pickle data")
            load(self)
    elif code in _MEMO:
        def run(self):
            self._budget.charge(_MEMO_ENTRY, "pickle memo")
            load(self)
    elif code in _MARKS:
        def run(self):
            self._budget.charge(_MARK, "pickle data")
            load(self)
    elif code in _GROW_ONE or code in _GROW_MANY:
        depth = _GROW_ONE.get(code)

        def run(self):
            # The container grows in place: charge its growth (at least one pointer per item).
            try:
                target = self.stack[-depth] if depth else self.metastack[-1][-1]
                items = 1 if depth else max(1, len(self.stack) // (2 if code == pickle.SETITEMS[0] else 1))
            except IndexError:
                load(self)  # let the unpickler report the malformed stream
                return
            before = object_size(target)
            load(self)
            self._budget.charge(max(object_size(target) - before, _POINTER * items), "pickle containers")
    elif code == _BUILD:
        def run(self):
            # BUILD copies the state (a dict or tuple, already charged) into the instance.
            self._budget.charge(_POINTER + (object_size(self.stack[-1]) if self.stack else 0), "pickle objects")
            load(self)
    else:
        def run(self):
            load(self)
            self._budget.charge(_POINTER + (object_size(self.stack[-1]) if self.stack else 0), "pickle objects")
    return run


class BoundedUnpickler(pickle._Unpickler):  # noqa: SLF001 - the pure-Python VM is the one that can be metered
    """``pickle._Unpickler`` whose every opcode charges ``budget`` for the memory it creates.

    Subclasses override ``find_class``/``persistent_load`` exactly as for :class:`pickle.Unpickler`; the
    opcode semantics are CPython's own (same module, pure-Python implementation).
    """

    dispatch = {code: _charging(code, load) for code, load in pickle._Unpickler.dispatch.items()}  # noqa: SLF001

    def __init__(self, file, budget: ReadBudget, **kwargs):
        super().__init__(file, **kwargs)
        self._budget = budget
