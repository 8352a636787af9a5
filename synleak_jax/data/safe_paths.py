"""Path containment: dataset reads never leave the dataset root.

Listing resolves every symlink (file or directory) once and marks entries whose real path is outside the
root; reads of ordinary entries use ``O_NOFOLLOW`` so a file swapped for a symlink after listing is refused
too (only the last path component is protected against such races; directories are checked at listing).
"""

from __future__ import annotations

import errno
import os

from synleak_jax.data import rejects


def real_root(root: str | os.PathLike) -> str:
    """Absolute real path of a dataset root; DataError naming the path if it is missing or not a directory."""
    root = os.fspath(root)
    if not os.path.exists(root):
        raise rejects.DataError(f"dataset root does not exist: {root!r}")
    if not os.path.isdir(root):
        raise rejects.DataError(f"dataset root is not a directory: {root!r}")
    return os.path.realpath(root)


def is_within(root_real: str, path: str) -> bool:
    """True if the real path of ``path`` is ``root_real`` or below it."""
    real = os.path.realpath(path)
    return real == root_real or real.startswith(root_real.rstrip(os.sep) + os.sep)


def read_bytes(path: str, where: str, follow: bool = False) -> bytes:
    """Reads a whole file; any failure becomes a RecordError with a reason code.

    Args:
      path: the file to read.
      where: description used in the error (usually the same path).
      follow: if False, the last component must not be a symlink (O_NOFOLLOW).
    """
    flags = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0)
    if not follow:
        flags |= getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise rejects.RecordError(rejects.MISSING_FILE, where) from None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise rejects.RecordError(rejects.PATH_ESCAPE, f"{where}: became a symlink after listing") from None
        raise rejects.RecordError(rejects.UNREADABLE, f"{where}: {e.strerror}") from None
    try:
        with os.fdopen(fd, "rb", closefd=True) as f:
            return f.read()
    except OSError as e:  # e.g. EISDIR, EIO
        raise rejects.RecordError(rejects.UNREADABLE, f"{where}: {e.strerror or e}") from None
