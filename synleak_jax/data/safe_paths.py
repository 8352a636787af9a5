"""Path containment, regular-file-only reads with a size cap, and display-safe names.

Listing resolves every symlink (file or directory) once and marks entries whose real path is outside the
root; reads of ordinary entries use ``O_NOFOLLOW`` so a file swapped for a symlink after listing is refused
too (only the last path component is protected against such races; directories are checked at listing).

Reads open **regular files only**: the path is ``stat``-ed first (a socket cannot be opened, a FIFO would block
``open`` until a writer appears), then opened with ``O_NONBLOCK`` (so a FIFO swapped in between the two calls
still cannot block) and checked again with ``fstat`` on the descriptor actually read. FIFOs, devices, sockets and
directories are rejects with their own reason codes; a file larger than ``max_bytes`` is a reject before any byte
is read; ``MemoryError`` while reading becomes the reject ``OUT_OF_MEMORY``.

Names: the filesystem allows any bytes but ``/`` and NUL in a name. Python gives them to us as ``str`` with
undecodable bytes as lone surrogates (``surrogateescape``), which round-trip through :func:`os.fsencode` but cannot
be written to a UTF-8 text file. :func:`display_path` turns such a name into a one-line, UTF-8-safe,
unambiguous display string (used by every source's ``describe``).
"""

from __future__ import annotations

import os
from typing import Callable

from synleak_jax import files
from synleak_jax.data import rejects

#: Default cap on the bytes of one image file or RecordIO record (256 MiB). Why this much: an image within the
#: default pixel limit (64 Mpixel) stored uncompressed (24-bit BMP/TIFF) is 192 MiB; no face-dataset image comes
#: near it (CASIA/DCFace JPEGs ~5-10 KiB, FFHQ 1024-px PNGs ~1-3 MiB). Configurable per source (max_file_bytes).
DEFAULT_MAX_FILE_BYTES = 256 * 1024 * 1024

#: Files larger than this have their first PEEK_BYTES checked (``prefix_check``) before the rest is read.
PEEK_BYTES = 64 * 1024

#: st_mode file type -> reject code for what is not a regular file.
def real_root(root: str | os.PathLike) -> str:
    """Absolute real path of a dataset root; DataError naming the path if it is missing or not a directory."""
    root = os.fspath(root)
    if not os.path.exists(root):
        raise rejects.DataError(f"dataset root does not exist: {display_path(root)}")
    if not os.path.isdir(root):
        raise rejects.DataError(f"dataset root is not a directory: {display_path(root)}")
    return os.path.realpath(root)


def is_within(root_real: str, path: str) -> bool:
    """True if the real path of ``path`` is ``root_real`` or below it."""
    real = os.path.realpath(path)
    return real == root_real or real.startswith(root_real.rstrip(os.sep) + os.sep)


def display_path(name: str | bytes | os.PathLike) -> str:
    """A one-line, UTF-8-encodable, unambiguous rendering of a file name or path.

    Printable characters (any script) are kept; a backslash becomes ``\\\\``; an undecodable byte (a lone
    surrogate from ``surrogateescape``) becomes ``\\xNN`` (the byte); control characters (newline, tab, ...) and
    other non-printable code points become ``\\n``, ``\\t``, ``\\r`` or ``\\xNN`` / ``\\uNNNN``. A name made of
    printable characters without backslashes is returned unchanged, so ordinary paths display as themselves.
    The exact name is ``os.fsencode`` of the source's own path string, never this display form.
    """
    if isinstance(name, (bytes, bytearray)):
        name = os.fsdecode(bytes(name))
    name = os.fspath(name)
    if name.isprintable() and "\\" not in name:
        return name
    out = []
    for ch in name:
        code = ord(ch)
        if ch == "\\":
            out.append("\\\\")
        elif 0xDC80 <= code <= 0xDCFF:  # surrogateescape: the undecodable byte code - 0xDC00
            out.append(f"\\x{code - 0xDC00:02x}")
        elif ch.isprintable():
            out.append(ch)
        elif ch in "\n\t\r":
            out.append({"\n": "\\n", "\t": "\\t", "\r": "\\r"}[ch])
        elif code < 0x100:
            out.append(f"\\x{code:02x}")
        elif code < 0x10000:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    return "".join(out)


_CODES = {"fifo": rejects.FIFO, "device": rejects.DEVICE, "socket": rejects.SOCKET, "directory": rejects.DIRECTORY,
          "symlink": rejects.PATH_ESCAPE, "too_large": rejects.TOO_LARGE, "unreadable": rejects.UNREADABLE,
          "other": rejects.UNREADABLE}


def non_regular_code(mode: int) -> int:
    """Reject code for a ``st_mode`` that is not a regular file (FIFO, DEVICE, SOCKET, DIRECTORY); 0 if regular.
    Other types (e.g. a symlink seen with lstat) are UNREADABLE: they are not read."""
    kind = files.file_kind(mode)
    return 0 if kind == "regular" else _CODES[kind] if kind != "symlink" else rejects.UNREADABLE


def open_regular(path: str, where: str, follow: bool = False, max_bytes: int | None = None) -> tuple[int, int]:
    """Opens a regular file for reading: (fd, size). Everything else raises :class:`RecordError` with its code.

    :func:`synleak_jax.files.open_checked` (``stat``, a non-blocking ``open``, ``fstat`` of the descriptor), its
    refusals as reject codes; ``where`` names the record in the message.
    """
    try:
        return files.open_checked(path, follow=follow, max_bytes=max_bytes)
    except FileNotFoundError:
        raise rejects.RecordError(rejects.MISSING_FILE, where) from None
    except files.NotARegularFile as e:
        raise rejects.RecordError(_CODES[e.kind], f"{where}: {e.detail}" if e.detail else where) from None


def read_bytes(path: str, where: str, follow: bool = False, max_bytes: int = DEFAULT_MAX_FILE_BYTES,
               prefix_check: Callable[[bytes, str], None] | None = None) -> bytes:
    """Reads a whole regular file of at most ``max_bytes``; any failure is a RecordError with a reason code.

    Args:
      path: the file to read.
      where: description used in the error (a display string, see :func:`display_path`).
      follow: if False, the last component must not be a symlink (O_NOFOLLOW).
      max_bytes: size cap; a larger file is the reject TOO_LARGE before any byte is read.
      prefix_check: called with the first :data:`PEEK_BYTES` of a larger file before the rest is read (e.g.
        :func:`decode.check_signature`), so a huge file of the wrong kind is refused after 64 KiB.

    Memory: at most 2x the file size (prefix + rest joined), never above ``2 * max_bytes``.
    """
    fd, size = open_regular(path, where, follow, max_bytes)
    try:
        with os.fdopen(fd, "rb", closefd=True) as f:
            if prefix_check is not None and size > PEEK_BYTES:
                head = f.read(PEEK_BYTES)
                prefix_check(head, where)
                return head + f.read(size - len(head))
            return f.read(size)  # exactly the checked size: never an unbounded read
    except MemoryError:
        raise rejects.RecordError(rejects.OUT_OF_MEMORY, f"{where}: {size} bytes") from None
    except OSError as e:  # e.g. EIO
        raise rejects.RecordError(rejects.UNREADABLE, f"{where}: {e.strerror or e}") from None


def regular_file(path: str, what: str) -> os.stat_result:
    """``stat`` of a dataset-level file (index, list, property) that must be a regular file, else DataError.

    Symlinks are followed (the user named the file). Missing -> DataError "... not found"; a FIFO, device,
    socket or directory -> DataError naming its type, never an ``open`` that blocks.
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise rejects.DataError(f"{what} not found: {display_path(path)}") from None
    except OSError as e:
        raise rejects.DataError(f"cannot stat {what} {display_path(path)}: {e.strerror or e}") from None
    code = non_regular_code(st.st_mode)
    if code:
        raise rejects.DataError(f"{what} {display_path(path)} is not a regular file: {rejects.REASONS[code]}")
    return st


def read_small_file(path: str, what: str, max_bytes: int) -> bytes:
    """Whole content of a dataset-level regular file of at most ``max_bytes`` (DataError otherwise)."""
    try:
        fd, size = open_regular(path, display_path(path), follow=True, max_bytes=max_bytes)
        with os.fdopen(fd, "rb", closefd=True) as f:
            return f.read(size)
    except rejects.RecordError as e:
        raise rejects.DataError(f"cannot read {what}: {e}") from None
    except (OSError, MemoryError) as e:
        raise rejects.DataError(f"cannot read {what} {display_path(path)}: {e}") from None
