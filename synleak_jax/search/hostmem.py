"""Host arrays that the XLA CPU backend can use in place (no device copy).

`jax.device_put(x)` on the CPU backend aliases a numpy array instead of copying it when the array is float32,
C-contiguous and its data pointer is a multiple of 64 bytes (XLA's minimum buffer alignment); otherwise it
copies the whole array. `np.load` returns 16-byte aligned memory, so a database loaded with it is copied once
more on every search that needs it whole on the device. `np.load(..., mmap_mode="r")` (the .npy header is
padded to 64 bytes, the mapping is page-aligned) and `load_npy_aligned` below are aliased.
"""

from __future__ import annotations

import os

import numpy as np

XLA_ALIGN = 64  # bytes; cpu_function_runtime::MinAlign()


def is_aligned(x: np.ndarray, align: int = XLA_ALIGN) -> bool:
    """True when x's data pointer is a multiple of `align` bytes."""
    return x.ctypes.data % align == 0


def aligned_empty(shape: tuple[int, ...], dtype=np.float32, align: int = XLA_ALIGN) -> np.ndarray:
    """Uninitialised C-contiguous array whose data starts on an `align`-byte boundary."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    raw = np.empty(nbytes + align, np.uint8)
    off = (-raw.ctypes.data) % align
    return raw[off:off + nbytes].view(dtype).reshape(shape)


def load_npy_aligned(path: str | os.PathLike) -> np.ndarray:
    """Read a numeric .npy file into 64-byte-aligned memory (one read, like `np.load`, no extra copy).

    Raises ValueError naming the file for object dtypes (never unpickled), Fortran order or a truncated file.
    """
    path = os.fspath(path)
    with open(path, "rb") as f:
        try:
            version = np.lib.format.read_magic(f)
            read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                           (2, 0): np.lib.format.read_array_header_2_0}.get(version)
            if read_header is None:
                raise ValueError(f"unsupported .npy version {version}")
            shape, fortran, dtype = read_header(f)
        except ValueError as e:
            raise ValueError(f"{path}: not a readable .npy file: {e}") from None
        if dtype.hasobject:
            raise ValueError(f"{path}: object arrays are refused (they would need unpickling)")
        if fortran:
            raise ValueError(f"{path}: Fortran-ordered arrays are not supported; save it C-contiguous")
        out = aligned_empty(tuple(shape), dtype)
        buf = memoryview(out.reshape(-1).view(np.uint8))
        got = 0
        while got < out.nbytes:  # one read() returns at most ~2 GiB on Linux
            n = f.readinto(buf[got:])
            if not n:
                break
            got += n
        if got != out.nbytes:
            raise ValueError(f"{path}: truncated .npy file ({got} of {out.nbytes} data bytes)")
    return out


def limit_malloc_retention() -> bool:
    """glibc: one malloc arena for all threads (mallopt M_ARENA_MAX = 1). Call before threads start.

    By default every thread that allocates under contention gets its own heap. XLA's CPU runtime allocates and
    frees 1-32 MB buffers on its worker threads; their per-thread heaps keep the freed memory and the resident
    set grows from call to call (measured for bf16_certified at 200k x 512: peak 609 -> 654 MB above the
    runtime over 4 calls; with one arena 531 MB, same speed). Fixing glibc's mmap threshold instead also stops
    the growth but then every large free is trimmed and re-faulted: the screen ran 2.2x slower (measured).
    Process-wide; called by the synleak-knn CLI and the benchmark worker (for every backend), not by the
    library. Returns False where it does not apply (not glibc).
    """
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_arena_max = -8  # <malloc.h>
    return bool(libc.mallopt(m_arena_max, 1))
