"""The tile engine: every pair computation of synleak_jax as one pass over score tiles on a device Mesh.

A *pass* walks over all pairs (row i, column j) of two embedding sets (or the pairs i < j of one set) and, per
score tile, applies the reductions its :class:`PassSpec` names:

* ``row_k``: the top-k columns of every row (exact, ties -> lower column index);
* ``col_k``: the top-k rows of every column (the reverse direction, from the same tiles);
* ``n_taus``: per-row counts of pairs with score > tau, for each tau, split into impostor / genuine pairs;
* ``nbins``: a histogram of the scores (impostor / genuine), optionally restricted to one bin of a coarser one;
* ``key_hist``: an exact histogram of the float32 scores by their bit pattern (:func:`score_keys`): 65,536 bins by
  the top 16 bits, and the ``key_refine`` bins named at run time split into their 65,536 single float32 values
  (a radix select: exact order statistics and counts from integers, no scores collected);
* ``moments``: per-row sums of scores and squared scores (impostor / genuine);
* ``collect_cap``: the exact scores (with their row and class) whose histogram bin is flagged;
* ``screen_t``: the bf16 group-maximum screen of the certified top-k (``certified.py``).

Layout over devices (one device is the trivial mesh; several processes are one global mesh): the mesh has one
axis, ``"rows"``. Rows are cut into groups of ``G x R`` (G devices, R rows each); device d scans its R rows
against every column, column chunk by column chunk, the chunks replicated on every device (streamed from the
host, or resident when the column set fits the budget). So every per-row result is computed by one device with
the same tiles in the same order, whatever the device count; per-column top-k lists from the devices are merged
by (score desc, row asc); histograms are integers; per-row moments are summed on the host in float64 in row
order. The result is identical on 1 device, 8 devices or several processes.

Inside a device: an outer scan over row blocks (``bq`` rows) and, per row block, a scan over super-tiles of
``ct`` column tiles (``bdb`` columns each). Row-wise candidates (top-k, group maxima) are stacked over the ``ct``
tiles of a super-tile and merged into the running lists once per super-tile: one ``top_k`` over
``k + ct * k`` entries instead of ``ct`` merges (the running list, holding lower column indices, comes first,
so ``top_k``'s lower-position rule is the lower-index rule). Column-wise candidates are merged per tile.

Memory: O(R x D + chunk x D + bq x bdb + rows x k + columns x k) per device, never rows x columns.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax import lax
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from synleak_jax.embed.distributed import global_mesh
from synleak_jax.search.hostmem import aligned_empty, is_aligned

ROWS = "rows"
_NEG_INF = float("-inf")
_HIGHEST = lax.Precision.HIGHEST
SCORES = ("ip", "neg_euclidean")
SELECTIONS = ("top_k", "tiled")


# ----------------------------------------------------------------------------------------------------------
# Mesh and inputs
# ----------------------------------------------------------------------------------------------------------


def make_mesh(devices=None) -> Mesh:
    """The engine's 1-D ``("rows",)`` mesh over ``devices`` (default: every device of every process)."""
    return global_mesh(ROWS, devices)


class Source:
    """A 2-D float input read in row ranges: numpy / jax arrays, memmaps, or store-like array-likes.

    Attributes: n (rows), d (dim), name (the argument name used in error messages).
    """

    def __init__(self, x: Any, name: str):
        if x is None:
            raise ValueError(f"{name} is None; expected a 2-D array [n, dim]")
        if isinstance(x, Source):
            x = x.x
        shape = getattr(x, "shape", None)
        if shape is None:
            try:
                x = np.asarray(x, dtype=np.float32)
            except (TypeError, ValueError) as e:
                raise ValueError(f"{name} is not a numeric 2-D array: {e}") from None
            shape = x.shape
        if len(shape) != 2:
            raise ValueError(f"{name} must be 2-D [n, dim], got shape {tuple(shape)}")
        self.n, self.d = int(shape[0]), int(shape[1])
        if self.n == 0 or self.d == 0:
            raise ValueError(f"{name} is empty (shape {tuple(shape)}); need at least one row and one column")
        dtype = getattr(x, "dtype", None)
        if dtype is not None:
            try:
                kind = np.dtype(dtype).kind
            except TypeError:
                kind = "f"  # e.g. a jax bfloat16 dtype object that numpy understands anyway
            if kind not in "fiub":
                raise ValueError(f"{name} has non-real dtype {dtype}; expected float embeddings")
        self.x = x
        self.name = name
        self.is_jax = isinstance(x, jax.Array)

    def read(self, a: int, b: int, pad_to: int | None = None) -> np.ndarray:
        """Rows [a, b) as float32 numpy, zero-padded to ``pad_to`` rows (rows past n read as zeros).

        Raises ValueError naming the argument and the row when a row holds NaN or inf.
        """
        hi = min(b, self.n)
        if hi > a:
            blk = self.x[a:hi]
            blk = np.asarray(jax.device_get(blk) if self.is_jax else blk, dtype=np.float32)
            if blk.shape != (hi - a, self.d):
                raise ValueError(f"{self.name}[{a}:{hi}] returned shape {blk.shape}, expected {(hi - a, self.d)}")
            finite = np.isfinite(blk)
            if not finite.all():
                bad = int(np.argmax(~finite.all(axis=1)))
                raise ValueError(f"{self.name} row {a + bad} contains NaN or inf")
        else:
            blk = np.zeros((0, self.d), np.float32)
        rows = max(b - a, 0) if pad_to is None else pad_to
        if blk.shape[0] == rows:
            return blk
        out = np.zeros((rows, self.d), np.float32)
        out[: blk.shape[0]] = blk
        return out

    def aligned_host(self, chunk_rows: int = 16384) -> np.ndarray:
        """All rows as a float32, C-contiguous, 64-byte-aligned numpy array [n, D] (the CPU backend uses it in
        place, hostmem.py): the input itself when it already is one (not checked for NaN/inf here, see
        `raise_if_nonfinite`), otherwise one copy read in chunks, finiteness checked."""
        x = self.x
        if isinstance(x, np.ndarray) and x.dtype == np.float32 and x.flags.c_contiguous and is_aligned(x):
            return x
        host = aligned_empty((self.n, self.d), np.float32)
        for a in range(0, self.n, chunk_rows):
            b = min(self.n, a + chunk_rows)
            host[a:b] = self.read(a, b)
        return host

    def raise_if_nonfinite(self, chunk_rows: int = 16384) -> None:
        """Raise ValueError naming the first row holding NaN or inf (reads the input in chunks)."""
        for a in range(0, self.n, chunk_rows):
            self.read(a, min(self.n, a + chunk_rows))

    def take(self, idx) -> np.ndarray:
        """Rows at the given indices (int [m], any order) as float32 numpy [m, D]; checks finiteness."""
        idx = np.asarray(idx, np.int64)
        if self.is_jax:
            out = np.asarray(jnp.take(self.x, jnp.asarray(idx), axis=0), np.float32)
        else:
            try:  # numpy, memmap, embedding-store ChunkedArray: fancy indexing reads only those rows
                out = np.asarray(self.x[idx], np.float32)
            except (TypeError, IndexError, ValueError, KeyError):
                out = np.stack([np.asarray(self.x[j:j + 1], np.float32)[0] for j in idx]) if len(idx) else \
                    np.zeros((0, self.d), np.float32)
        if out.shape != (len(idx), self.d):
            raise ValueError(f"{self.name}[rows] returned shape {out.shape}, expected {(len(idx), self.d)}")
        if not np.isfinite(out).all():
            bad = int(idx[np.argmax(~np.isfinite(out).all(axis=1))])
            raise ValueError(f"{self.name} row {bad} contains NaN or inf")
        return out


class ConcatRows:
    """Array-like [sum n_i, D] of several 2-D inputs one after another (read in blocks, never concatenated)."""

    def __init__(self, parts: list):
        self.parts = list(parts)
        d = {int(p.shape[1]) for p in self.parts}
        if len(d) != 1:
            raise ValueError(f"cannot stack inputs of dimensions {sorted(d)}")
        self.offsets = np.concatenate([[0], np.cumsum([int(p.shape[0]) for p in self.parts])]).astype(np.int64)
        self.shape = (int(self.offsets[-1]), d.pop())
        self.dtype = np.dtype(np.float32)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, idx):
        if isinstance(idx, slice):
            a, b, _ = idx.indices(self.shape[0])
            out = []
            for p, lo, hi in zip(self.parts, self.offsets[:-1], self.offsets[1:]):
                x, y = max(a, lo), min(b, hi)
                if y > x:
                    out.append(np.asarray(p[int(x - lo):int(y - lo)], np.float32))
            return np.concatenate(out) if out else np.zeros((0, self.shape[1]), np.float32)
        idx = np.asarray(idx, np.int64)
        part = np.searchsorted(self.offsets, idx, side="right") - 1
        out = np.empty(idx.shape + (self.shape[1],), np.float32)
        for j in np.unique(part):
            sel = part == j
            out[sel] = np.asarray(self.parts[j][idx[sel] - self.offsets[j]], np.float32)
        return out


class RowSubset:
    """Array-like view of the rows ``rows`` (int [m], any order) of a 2-D input (read on demand)."""

    def __init__(self, x, rows):
        self.x = x
        self.rows = np.asarray(rows, np.int64)
        self.shape = (int(self.rows.size), int(x.shape[1]))
        self.dtype = np.dtype(np.float32)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, idx):
        sel = self.rows[idx]
        return Source(self.x, "rows").take(sel) if sel.size else np.zeros((0, self.shape[1]), np.float32)


def as_source(x: Any, name: str) -> Source:
    return x if isinstance(x, Source) else Source(x, name)


def check_positive_int(v: Any, name: str) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or int(v) < 1:
        raise ValueError(f"{name} must be a positive integer, got {v!r}")
    return int(v)


def check_k(k: Any, n: int, name: str = "k") -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise ValueError(f"{name} must be an integer, got {k!r}")
    k = int(k)
    if k < 1:
        raise ValueError(f"{name} must be >= 1, got {k}")
    if k > n:
        raise ValueError(f"{name}={k} exceeds the number of database rows ({n})")
    return k


def round_up(x: int, m: int) -> int:
    return -(-x // m) * m


# ----------------------------------------------------------------------------------------------------------
# What a pass computes
# ----------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class PassSpec:
    """The static part of a pass (one compiled program per distinct spec and geometry).

    score: "ip" (inner product; cosine for unit vectors) or "neg_euclidean" (minus the Euclidean distance).
    pairs: "all" (every row x column) or "upper" (rows and columns are the same set: pairs i < j only).
    precision: "float32" (HIGHEST) or "bf16" (bf16 x bf16 -> float32; screening passes only).
    labels: split pairs into genuine (equal labels) and impostor (different labels).
    row_k, col_k: top-k per row / per column (0 = off). selection, tile: see :func:`block_select`.
    n_taus: per-row counts of score > tau for each of the pass's taus (0 = off; any order, NaN refused).
    nbins: histogram bins (0 = off); restrict: the histogram and the collection only see pairs whose bin of a
      coarser histogram (PassParams.restrict) is the given one; hist_every: histogram only the row blocks (of bq
      rows) whose global index is a multiple of it — a stated, systematic subset for plots (1 = every pair).
    moments: per-row sums of s and s^2.
    collect_cap: capacity of the per-device, per-step buffer of collected scores (0 = off).
    screen_t, group: the certified bf16 screen keeps the screen_t + 1 largest maxima of groups of ``group``
      consecutive columns per row (0 = off).
    key_hist: the exact float32-key histogram (:func:`score_keys`), impostor / genuine; key_refine: how many of
      its top-16-bit bins (PassParams.key_refine_bins) are counted per exact value instead.
    """

    score: str = "ip"
    pairs: str = "all"
    precision: str = "float32"
    labels: bool = False
    row_k: int = 0
    col_k: int = 0
    selection: str = "tiled"
    tile: int = 32
    n_taus: int = 0
    nbins: int = 0
    hist_every: int = 1  # histogram only the row blocks whose global index is a multiple (plots; 1 = all pairs)
    restrict: bool = False
    moments: bool = False
    collect_cap: int = 0
    screen_t: int = 0
    group: int = 16
    key_hist: bool = False
    key_refine: int = 0

    def __post_init__(self):
        if self.score not in SCORES:
            raise ValueError(f"score must be one of {SCORES}, got {self.score!r}")
        if self.pairs not in ("all", "upper"):
            raise ValueError(f"pairs must be 'all' or 'upper', got {self.pairs!r}")
        if self.precision not in ("float32", "bf16"):
            raise ValueError(f"precision must be 'float32' or 'bf16', got {self.precision!r}")
        if self.selection not in SELECTIONS:
            raise ValueError(f"selection must be one of {SELECTIONS}, got {self.selection!r}")
        if self.pairs == "upper" and (self.row_k or self.col_k or self.screen_t):
            raise ValueError("top-k lists are not defined for pairs='upper'")
        if self.collect_cap and not self.nbins:
            raise ValueError("collecting needs a histogram geometry (nbins)")
        if self.key_hist and self.nbins:
            raise ValueError("one histogram per pass: nbins or key_hist")
        if self.key_refine < 0 or (self.key_refine and not self.key_hist):
            raise ValueError("key_refine needs key_hist and must be >= 0")

    @property
    def hist_width(self) -> int:
        """Counters per class of the pass's histogram."""
        if self.key_hist:
            return KEY_BINS * (1 + self.key_refine)
        return max(self.nbins, 1)


@dataclasses.dataclass(frozen=True)
class Bins:
    """``nbins`` equal bins over ``[lo, hi)``; bin of score s = clip(floor((s - lo) * nbins / (hi - lo))).

    Scores outside [lo, hi) fall into the end bins. Every pass computes bin indices with this one formula
    (float32, same operations), so a bin means the same set of pairs in every pass.
    """

    lo: float
    hi: float
    nbins: int

    @property
    def width(self) -> float:
        return (self.hi - self.lo) / self.nbins

    @property
    def inv_width(self) -> float:
        return self.nbins / (self.hi - self.lo)

    def edges(self) -> np.ndarray:
        return np.linspace(self.lo, self.hi, self.nbins + 1)

    def sub(self, b: int, nbins: int | None = None) -> "Bins":
        """The bins that split bin ``b`` of this histogram."""
        return Bins(self.lo + b * self.width, self.lo + (b + 1) * self.width, nbins or self.nbins)


@dataclasses.dataclass
class PassParams:
    """The run-time values of a pass (no recompilation when they change).

    taus: float32 [n_taus] thresholds (score > tau counts); bins: the histogram; restrict: (coarse Bins, bin);
    collect_bins: bool [nbins] flags of the bins whose scores are collected; key_refine_bins: int [key_refine]
    distinct top-16-bit key bins counted per exact value.
    """

    taus: np.ndarray | None = None
    bins: Bins | None = None
    restrict: tuple[Bins, int] | None = None
    collect_bins: np.ndarray | None = None
    key_refine_bins: np.ndarray | None = None


@dataclasses.dataclass(frozen=True)
class Blocks:
    """Tile geometry. bq: rows per row block; bdb: columns per tile; rows_per_device: R (a multiple of bq);
    chunk: columns per host->device transfer (a multiple of bdb), None = the whole column set resident;
    ct: tiles per super-tile (row-wise merges happen once per super-tile)."""

    bq: int
    bdb: int
    rows_per_device: int
    chunk: int | None
    ct: int


def default_blocks(n_rows: int, n_cols: int, d: int, spec: PassSpec, *, resident_budget: int | None = None,
                   platform: str | None = None) -> Blocks:
    """Block sizes for the backend. CPU: 1024 x 2048 tiles (fastest of 512-8192 on the 2-core CPU VMs, see
    BENCHMARKS.md), R = 16 row blocks (pairs="upper": 4, to keep the skipped lower triangle small); the column
    set is resident when it takes <= 1 GiB, else streamed in ~16 MiB chunks. Accelerators: 4096 x 16384 tiles,
    R = 16 row blocks, resident up to a third of the device memory, else ~512 MiB chunks."""
    platform = platform or jax.default_backend()
    cpu = platform == "cpu"
    bq, bdb = (1024, 2048) if cpu else (4096, 16384)
    bq = min(bq, round_up(n_rows, 8))
    bdb = min(bdb, round_up(n_cols, 8))
    if spec.screen_t:
        bdb = round_up(bdb, spec.group)
    rows_per_device = bq * (4 if spec.pairs == "upper" else 16)
    rows_per_device = min(rows_per_device, round_up(n_rows, bq))
    if resident_budget is None:
        resident_budget = (1 << 30) if cpu else _device_memory_bytes() // 3
    col_bytes = n_cols * d * 4
    chunk = None if col_bytes <= resident_budget else max(1, ((16 << 20) if cpu else (512 << 20)) // (bdb * d * 4)) * bdb
    # Super-tiles group the row-wise merges (up to 16 tiles each); upper passes have none, and skip below-diagonal
    # work per super-tile. The full tiles are split evenly: a last super-tile padded with masked repeats of a
    # tile computed them for nothing (20,000 columns: 10 tiles per super-tile for 9 full ones, 8.3e7 pairs/s).
    full_tiles = max(1, (chunk if chunk is not None else n_cols) // bdb)
    n_super = -(-full_tiles // 16)
    ct = 1 if spec.pairs == "upper" else -(-full_tiles // n_super)
    return Blocks(bq, bdb, rows_per_device, chunk, ct)


def _device_memory_bytes() -> int:
    try:
        stats = jax.local_devices()[0].memory_stats() or {}
        return int(stats.get("bytes_limit", 16 << 30))
    except Exception:  # some backends have no memory_stats
        return 16 << 30


# ----------------------------------------------------------------------------------------------------------
# Per-tile kernels (pure functions, traced inside the scans)
# ----------------------------------------------------------------------------------------------------------


def block_select(s, k: int, selection: str, tile: int):
    """Exact per-row top-k of a score tile s [b, n] -> (scores [b, min(k,n)], positions int32).

    "top_k": one `lax.top_k` over the row.
    "tiled": the row is cut into tiles of `tile` columns and the k tiles with the largest maxima (ties: lower
    tile first) are kept. They provably hold the row's top-k: an element x outside them is beaten by each of
    the k chosen tiles' first maximum (larger, or equal and at a lower column). The chosen tiles are put back
    in column order, so the final `lax.top_k` over their k*tile entries keeps the lower-index tie rule.
    """
    b, n = s.shape
    kk = min(k, n)
    if selection == "top_k" or n % tile != 0 or n // tile <= kk:
        return lax.top_k(s, kk)
    nt = n // tile
    st = s.reshape(b, nt, tile)
    tmax = st.max(axis=2)  # [b, nt]
    _, tsel = lax.top_k(tmax, kk)  # tiles holding the top-k; ties -> lower tile first
    tsel = jnp.sort(tsel, axis=1)  # keep column order so the final top_k's tie rule is the index rule
    cand = jnp.take_along_axis(st, tsel[:, :, None], axis=1)  # [b, kk, tile]
    cs, cpos = lax.top_k(cand.reshape(b, kk * tile), kk)
    tile_of = jnp.take_along_axis(tsel, cpos // tile, axis=1)
    return cs, (tile_of * tile + cpos % tile).astype(jnp.int32)


def column_select(s, k: int, selection: str, tile: int):
    """Exact per-COLUMN top-k of a score tile s [b, n] -> (scores [n, min(k,b)], row positions int32 [n, ...]).

    The column-wise twin of :func:`block_select` without transposing the tile (a strided copy of it measured 2.2x
    the cost of this: 1.64 vs 0.75 s CPU for 64 tiles of 1024 x 2048): rows are cut into groups of ``tile``, the
    k groups with the largest maxima per column are kept (they provably hold the column's top-k, as in
    block_select), their rows gathered in row order and a final ``lax.top_k`` keeps the lower-row tie rule.
    """
    b, n = s.shape
    kk = min(k, b)
    if selection == "top_k" or b % tile != 0 or b // tile <= kk:
        return lax.top_k(s.T, kk)
    gm = s.reshape(b // tile, tile, n).max(axis=1)  # [groups, n]
    _, g = lax.top_k(gm.T, kk)  # [n, kk] groups holding the top-k; ties -> lower group first
    g = jnp.sort(g, axis=1)  # row order, so the final top_k's tie rule is the row rule
    rows = g[:, :, None] * tile + jnp.arange(tile, dtype=g.dtype)  # [n, kk, tile]
    cand = s[rows, jnp.arange(n)[:, None, None]]
    cs, pos = lax.top_k(cand.reshape(n, kk * tile), kk)
    return cs, jnp.take_along_axis(rows.reshape(n, kk * tile), pos, axis=1).astype(jnp.int32)


#: Groups per row (column) gathered by :func:`block_select_above` (:func:`column_select_above`) on the fast path.
ABOVE_GROUPS = 4


def block_select_above(s, thr, k: int, selection: str, tile: int, m: int = ABOVE_GROUPS):
    """:func:`block_select` for a merge into running row lists whose k-th score is ``thr`` [b]: the same merged
    result, cheaper once the lists are full (the row-wise twin of :func:`column_select_above`; columns come in
    increasing order, so an element equal to thr loses its tie). Fast path: no row has more than ``m`` column
    groups with a maximum > thr; then only the ``m`` groups with the largest maxima are gathered."""
    b, n = s.shape
    if selection == "top_k" or n % tile != 0 or n // tile <= m:
        return block_select(s, k, selection, tile)
    kk = min(k, m * tile)
    nt = n // tile
    st = s.reshape(b, nt, tile)
    gm = st.max(axis=2)  # [b, nt]
    crowded = jnp.max(jnp.sum((gm > thr[:, None]).astype(jnp.int32), axis=1)) > m

    def fast(_):
        _, tsel = lax.top_k(gm, m)
        tsel = jnp.sort(tsel, axis=1)  # column order: the final top_k's tie rule is the index rule
        cand = jnp.take_along_axis(st, tsel[:, :, None], axis=1)  # [b, m, tile]
        cs, cpos = lax.top_k(cand.reshape(b, m * tile), kk)
        pos = jnp.take_along_axis(tsel, cpos // tile, axis=1) * tile + cpos % tile
        pad = ((0, 0), (0, min(k, n) - kk))
        return jnp.pad(cs, pad, constant_values=_NEG_INF), jnp.pad(pos, pad).astype(jnp.int32)

    def full(_):
        cs, pos = block_select(s, k, selection, tile)
        return cs, pos.astype(jnp.int32)

    return lax.cond(crowded, full, fast, None)


def column_select_above(s, thr, k: int, selection: str, tile: int, m: int = ABOVE_GROUPS):
    """:func:`column_select` for a merge into running column lists whose k-th score is ``thr`` [n]: the same
    merged result, cheaper once the lists are full.

    Only a tile element > thr can enter a column's list (an element equal to thr has a larger row than the list's
    k-th, and loses the tie). It lies in a group of ``tile`` rows whose maximum is > thr. When no column has more
    than ``m`` such groups, the ``m`` groups with the largest maxima hold them all: only their ``m * tile`` rows
    are gathered (``column_select`` gathers ``k * tile``; the strided gather is most of its cost: 7.6 of its
    8.7 ms per 1024 x 2048 tile against a 22.9 ms matmul, 2-core CPU). Otherwise (lists not yet full, or a
    crowded tile) it is ``column_select``. Returns (scores [n, k'], rows [n, k']); entries that cannot enter the
    list may differ from ``column_select``'s, the merged lists do not.
    """
    b, n = s.shape
    if selection == "top_k" or b % tile != 0 or b // tile <= m:
        return column_select(s, k, selection, tile)
    kk = min(k, m * tile)
    gm = s.reshape(b // tile, tile, n).max(axis=1)  # [groups, n]
    crowded = jnp.max(jnp.sum((gm > thr[None, :]).astype(jnp.int32), axis=0)) > m

    def fast(_):
        _, g = lax.top_k(gm.T, m)  # [n, m] every group above thr is among these
        g = jnp.sort(g, axis=1)  # row order: the final top_k's tie rule is the row rule
        rows = g[:, :, None] * tile + jnp.arange(tile, dtype=g.dtype)  # [n, m, tile]
        cand = s[rows, jnp.arange(n)[:, None, None]]
        cs, pos = lax.top_k(cand.reshape(n, m * tile), kk)
        cs = jnp.pad(cs, ((0, 0), (0, min(k, b) - kk)), constant_values=_NEG_INF)
        ri = jnp.pad(jnp.take_along_axis(rows.reshape(n, m * tile), pos, axis=1), ((0, 0), (0, min(k, b) - kk)))
        return cs, ri.astype(jnp.int32)

    def full(_):
        cs, ri = column_select(s, k, selection, tile)
        return cs, ri.astype(jnp.int32)

    return lax.cond(crowded, full, fast, None)


def merge_topk(run_s, run_i, new_s, new_i, k: int):
    """Merge a running top-k with candidates whose indices are all larger (in index order among themselves).

    run_s/run_i: [b, k]; new_s/new_i: [b, m]. The running list goes first, so `lax.top_k`'s lower-position
    tie rule is the lower-index rule. Returns [b, k].
    """
    s = jnp.concatenate([run_s, new_s], axis=1)
    i = jnp.concatenate([run_i, new_i], axis=1)
    top_s, pos = lax.top_k(s, k)
    return top_s, jnp.take_along_axis(i, pos, axis=1)


def merge_topk_lex(s, i, k: int):
    """Top-k of arbitrary candidate lists by (score desc, index asc); s, i: [b, m] -> [b, k].

    Used where candidate lists do not come in index order (merges across devices). -0.0 is folded into +0.0 so
    the sort's total order does not split equal scores by sign; index -1 (empty slot, score -inf) sorts last.
    """
    neg = -jnp.where(s == 0.0, 0.0, s)
    key_i = jnp.where(i < 0, jnp.iinfo(jnp.int32).max, i)
    neg_sorted, i_sorted = lax.sort((neg, key_i), dimension=1, num_keys=2)
    i_sorted = jnp.where(i_sorted == jnp.iinfo(jnp.int32).max, -1, i_sorted)
    return -neg_sorted[:, :k], i_sorted[:, :k]


def _bin_index(s, lo, inv_w, nbins: int):
    # Bin indices computed the same way in every pass, so a restricted pass sees exactly the same bins.
    return jnp.clip(jnp.floor((s - lo) * inv_w), 0, nbins - 1).astype(jnp.int32)


#: Bins of the float32-key histogram: the top 16 bits of a key; a refined bin holds 2^16 single values.
KEY_BINS = 1 << 16


def score_keys(s):
    """(top, low) int32 halves of the order-preserving uint32 key of float32 scores (traced or numpy).

    key = bits | 2^31 for s >= +0.0, ~bits for negative s: a < b <=> key(a) < key(b) for finite floats (-0.0 is
    folded into +0.0 before). top = key >> 16 (sign, exponent, 7 mantissa bits: 128 bins per octave), low = the
    16 bits inside it, each one float32 value. So one bin of the top half split by the low half gives exact
    values and counts.
    """
    if isinstance(s, (np.ndarray, np.generic, float)):  # host side (thresholds, tests): fold -0.0 here
        xp, f = np, np.asarray(s, np.float32)
        u = np.where(f == 0.0, np.float32(0.0), f).astype(np.float32).view(np.uint32)
    else:  # traced: the pass has folded -0.0 already
        xp, u = jnp, lax.bitcast_convert_type(s, jnp.uint32)
    key = xp.where(u >= xp.uint32(1 << 31), ~u, u | xp.uint32(1 << 31))
    return (key >> 16).astype(xp.int32), (key & xp.uint32(0xFFFF)).astype(xp.int32)


def key_scores(top, low) -> np.ndarray:
    """The float32 scores of keys given as (top, low) halves (numpy; the inverse of :func:`score_keys`)."""
    key = (np.asarray(top, np.uint32) << np.uint32(16)) | np.asarray(low, np.uint32)
    u = np.where(key >= np.uint32(1 << 31), key & np.uint32(0x7FFFFFFF), ~key).astype(np.uint32)
    return u.view(np.float32)


#: Rows of a tile compacted in the sparse path of :func:`_collect` (more flagged rows take the dense path).
COLLECT_ROWS = 128  # 32 -> 128: collection pass 14.2 -> 7.3 s (40k-row calibration; 256: 8.8 s), BENCHMARKS.md


def _collect(flag, s, qid, gen, cbuf, crow, ccls, fill, cap: int):
    """Appends the flagged scores of a tile (with their row ids and classes) to the buffers at ``fill``.

    Flagged pairs are rare (the pairs of a few narrow bins): the rows holding any are compacted first (a prefix
    sum over the tile's rows) and only those rows' elements are compacted (a prefix sum over COLLECT_ROWS x bdb
    elements instead of bq x bdb; measured 3.1x -> see BENCHMARKS.md). A tile with more flagged rows takes the
    dense path. Positions past ``cap`` are dropped; the caller checks ``fill`` against the capacity.
    """
    bq, bdb = flag.shape
    m = min(COLLECT_ROWS, bq)
    row_any = jnp.any(flag, axis=1)

    def append(f, sc, rows, g, cbuf, crow, ccls, fill):
        flat = f.reshape(-1)
        pos = fill + jnp.cumsum(flat.astype(jnp.int32)) - 1
        pos = jnp.where(flat, pos, cap)  # out of range -> dropped
        cbuf = cbuf.at[pos].set(sc.reshape(-1), mode="drop")
        crow = crow.at[pos].set(jnp.broadcast_to(rows[:, None], sc.shape).reshape(-1), mode="drop")
        ccls = ccls.at[pos].set(g.reshape(-1).astype(jnp.int32), mode="drop")
        return cbuf, crow, ccls, fill + jnp.sum(flat.astype(jnp.int32))

    def sparse(args):
        cbuf, crow, ccls, fill = args
        rpos = jnp.where(row_any, jnp.cumsum(row_any.astype(jnp.int32)) - 1, m)
        sel = jnp.full((m,), bq - 1, jnp.int32).at[rpos].set(jnp.arange(bq, dtype=jnp.int32), mode="drop")
        live = jnp.arange(m) < jnp.sum(row_any.astype(jnp.int32))
        return append(flag[sel] & live[:, None], s[sel], qid[sel], gen[sel], cbuf, crow, ccls, fill)

    def dense(args):
        return append(flag, s, qid, gen, *args)

    return lax.cond(jnp.sum(row_any.astype(jnp.int32)) <= m, sparse, dense, (cbuf, crow, ccls, fill))


def _dot(a, b, precision: str):
    """[m, d] x [n, d] -> [m, n] float32 (bf16 inputs for the screen, full float32 otherwise)."""
    if precision == "bf16":
        return lax.dot_general(a.astype(jnp.bfloat16), b.astype(jnp.bfloat16), (((1,), (1,)), ((), ())),
                               preferred_element_type=jnp.float32)
    return lax.dot_general(a, b, (((1,), (1,)), ((), ())), precision=_HIGHEST, preferred_element_type=jnp.float32)


def _device_step(spec: PassSpec, blocks: Blocks, x, rid, rlab, rsq, cx, clab, csq, col0, ncols, taus, hlo, hinv,
                 rlo, rinv, rbin, cmask, kref, run_thr, row_s, row_i, counts, mom, gv, gi):
    """One device: its R rows against one column chunk. Shapes (per device): x [R, D], rid/rlab [R] int32
    (rid -1 = padding row), rsq [R] f32 (squared norms, neg_euclidean only); cx [C, D], clab [C], csq [C]
    (C need not be a multiple of bdb: the tail tile is zero-padded inside the program, so a resident column set
    is used in place); col0: global index of cx[0]; ncols: number of real columns (global); run_thr [Cp]: the
    k-th score of each column's list from earlier steps (their rows are all lower: a score <= it cannot enter). Running state:
    row_s/row_i [R, k], counts [R, T, 2] int32, mom [R, 2, 2] f32, gv/gi [R, t + 1] group screen. Returns the
    updated running state plus this step's column top-k [Cp, k] (Cp = C rounded up to bdb; from this device's
    rows only), histogram [2, spec.hist_width] int32, collected (scores [cap], rows [cap], classes [cap], fill) and the
    chunk's largest squared column norm."""
    bq, bdb, ct = blocks.bq, blocks.bdb, blocks.ct
    R, d = x.shape
    C = cx.shape[0]
    nrb = R // bq
    nfull, rem = divmod(C, bdb)
    nsuper = -(-nfull // ct)
    k, kc, T = spec.row_k, spec.col_k, spec.n_taus
    t1 = spec.screen_t + 1 if spec.screen_t else 0
    group = spec.group
    gpt = bdb // group if spec.screen_t else 0
    n_groups = (ncols + group - 1) // group
    nb = spec.nbins
    cap = spec.collect_cap
    hw = spec.hist_width

    def full_tile(j):
        """Full tile j (traced; j >= nfull repeats the last full tile, fully masked)."""
        start = jnp.minimum(j, nfull - 1) * bdb
        return (lax.dynamic_slice_in_dim(cx, start, bdb), lax.dynamic_slice_in_dim(clab, start, bdb),
                lax.dynamic_slice_in_dim(csq, start, bdb), start, j < nfull)

    def tail_tile():
        pad = ((0, bdb - rem),)
        return (jnp.pad(cx[nfull * bdb:], pad + ((0, 0),)), jnp.pad(clab[nfull * bdb:], pad),
                jnp.pad(csq[nfull * bdb:], pad), jnp.int32(nfull * bdb), jnp.bool_(True))

    def per_tile(carry, qb, qid, qlab, qsq, row_thr, tile):
        """All of the spec's reductions on one [bq, bdb] score tile. Returns the carry and the tile's row-wise
        candidates (merged by the caller once per super-tile; row_thr [bq]: the running lists' k-th score before
        this super-tile)."""
        rc, rm, col_s, col_i, hist, cbuf, crow, ccls, fill = carry
        tx, tl, tsq, start, live = tile
        s = _dot(qb, tx, spec.precision)
        if spec.score == "neg_euclidean":
            s = -jnp.sqrt(jnp.maximum(qsq[:, None] + tsq[None, :] - 2.0 * s, 0.0))
        s = jnp.where(s == 0.0, 0.0, s)  # -0.0 -> +0.0 (top_k's total order ranks -0.0 below +0.0)
        cid = col0 + start + jnp.arange(bdb, dtype=jnp.int32)
        valid = (qid >= 0)[:, None] & (cid < ncols)[None, :] & live
        if spec.pairs == "upper":
            valid = valid & (qid[:, None] < cid[None, :])
        if spec.labels:
            gen = valid & (qlab[:, None] == tl[None, :])
            imp = valid & ~gen
        else:
            gen = jnp.zeros_like(valid)
            imp = valid
        out = {}
        if k:
            ms = jnp.where(valid, s, _NEG_INF)
            bs, bp = block_select_above(ms, row_thr, k, spec.selection, spec.tile)
            out["row"] = (bs, jnp.where(jnp.isfinite(bs), col0 + start + bp, -1))
        if t1:
            gm = jnp.where(valid, s, _NEG_INF).reshape(bq, gpt, group).max(axis=2)
            gid = (col0 + start) // group + jnp.arange(gpt, dtype=jnp.int32)
            gm = jnp.where((gid < n_groups)[None, :], gm, _NEG_INF)
            out["groups"] = (gm, jnp.broadcast_to(gid, gm.shape))
        if kc:
            ms = jnp.where(valid, s, _NEG_INF)
            cur_s = lax.dynamic_slice_in_dim(col_s, start, bdb)
            cur_i = lax.dynamic_slice_in_dim(col_i, start, bdb)
            thr = jnp.maximum(cur_s[:, kc - 1], lax.dynamic_slice_in_dim(run_thr, start, bdb))
            bs, bp = column_select_above(ms, thr, kc, spec.selection, spec.tile)  # [bdb, kc]
            new_i = jnp.where(jnp.isfinite(bs), qid[bp], -1)
            ms2, mi2 = merge_topk(cur_s, cur_i, bs, new_i, kc)  # rows come in increasing order
            col_s = lax.dynamic_update_slice_in_dim(col_s, jnp.where(live, ms2, cur_s), start, 0)
            col_i = lax.dynamic_update_slice_in_dim(col_i, jnp.where(live, mi2, cur_i), start, 0)
        if T:
            # taus ascend (tile_pass sorts them): the number of taus below s is the interval of s ([bq, bdb] in
            # [0, T]), and one scatter-add per tile into per-(row, class, interval) counts gives every count; a
            # suffix sum turns them into counts above each tau. Summing a compare per tau over [T, bq, bdb]
            # instead ran at 1.4e7 pairs/s with T = 28 (upper pass, 40k rows); this at 6.8e7 (1.1e8 with T = 1;
            # numpy's matmul alone: 1.5e8), measured on the 2-core CPU. A binary search for the interval
            # (jnp.searchsorted "scan_unrolled") measured the same inside the pass.
            interval = jnp.sum((s[:, :, None] > taus).astype(jnp.int32), axis=-1)
            slot = (jnp.arange(bq, dtype=jnp.int32)[:, None] * 2 + gen.astype(jnp.int32)) * (T + 1) + interval
            per = jnp.zeros((bq * 2 * (T + 1),), jnp.int32).at[slot.reshape(-1)].add(
                valid.reshape(-1).astype(jnp.int32)).reshape(bq, 2, T + 1)
            above = jnp.cumsum(per[:, :, ::-1], axis=2)[:, :, T - 1::-1]  # [bq, 2, T]: pairs with s > taus[t]
            rc = rc + above.transpose(0, 2, 1)
        if spec.moments:
            fi = imp.astype(jnp.float32)
            fg = gen.astype(jnp.float32)
            rm = rm + jnp.stack([jnp.stack([jnp.sum(s * fi, 1), jnp.sum(s * s * fi, 1)], 1),
                                 jnp.stack([jnp.sum(s * fg, 1), jnp.sum(s * s * fg, 1)], 1)], 1)
        if nb:
            keep_i, keep_g = imp, gen
            if spec.restrict:
                inside = _bin_index(s, rlo, rinv, nb) == rbin
                keep_i, keep_g = keep_i & inside, keep_g & inside
            idx = _bin_index(s, hlo, hinv, nb)
            if cap:
                flag = (keep_i | keep_g) & cmask[idx]
                cbuf, crow, ccls, fill = _collect(flag, s, qid, keep_g, cbuf, crow, ccls, fill, cap)
            else:
                def add(h):
                    # one scatter into the flattened [2, nb] histogram (genuine pairs at nb + bin; impostor and
                    # genuine are disjoint), not one per class: the scatter is this pass's main cost on CPU
                    flat = (idx + nb * keep_g.astype(jnp.int32)).reshape(-1)
                    ones = (keep_i | keep_g).reshape(-1).astype(jnp.int32)
                    return h.reshape(-1).at[flat].add(ones).reshape(h.shape)

                if spec.hist_every > 1:  # a systematic subset of row blocks (plots): the scatter only there
                    hist = lax.cond((qid[0] // bq) % spec.hist_every == 0, add, lambda h: h, hist)
                else:
                    hist = add(hist)
        if spec.key_hist:
            # Radix select: one scatter-add per tile, each pair into exactly one counter — its top-16-bit bin, or
            # for the key_refine named bins the counter of its exact value (genuine pairs at hw + counter).
            top, low = score_keys(s)
            idx = top
            if spec.key_refine:
                slot = jnp.zeros_like(top)
                for r in range(spec.key_refine):  # a few compares beat a 65,536-entry gather per element on CPU
                    slot = jnp.where(top == kref[r], r + 1, slot)
                idx = jnp.where(slot > 0, slot * KEY_BINS + low, top)
            flat = (idx + hw * gen.astype(jnp.int32)).reshape(-1)
            hist = hist.reshape(-1).at[flat].add(valid.reshape(-1).astype(jnp.int32)).reshape(hist.shape)
        return (rc, rm, col_s, col_i, hist, cbuf, crow, ccls, fill), out

    def merge_rows(rs, ri, rgv, rgi, outs):
        """Merge stacked per-tile candidates [n, bq, m] (in column order) into the running row lists."""
        if k:
            bs, bi = outs["row"]
            rs, ri = merge_topk(rs, ri, bs.transpose(1, 0, 2).reshape(bq, -1), bi.transpose(1, 0, 2).reshape(bq, -1),
                                k)
        if t1:
            gm, gid = outs["groups"]
            rgv, rgi = merge_topk(rgv, rgi, gm.transpose(1, 0, 2).reshape(bq, -1),
                                  gid.transpose(1, 0, 2).reshape(bq, -1), t1)
        return rs, ri, rgv, rgi

    def per_row_block(carry, args):
        qb, qid, qlab, qsq, rs, ri, rc, rm, rgv, rgi = args
        inner = (rc, rm) + tuple(carry)

        def per_super(c2, sidx):
            rs, ri, rgv, rgi, inner = c2
            thr = rs[:, -1]
            inner, outs = lax.scan(lambda c3, t: per_tile(c3, qb, qid, qlab, qsq, thr, full_tile(sidx * ct + t)),
                                   inner, jnp.arange(ct))
            rs, ri, rgv, rgi = merge_rows(rs, ri, rgv, rgi, outs)
            return (rs, ri, rgv, rgi, inner), None

        if nfull and spec.pairs == "upper":
            # Only the super-tiles holding a column above this block's first row have pairs i < j: start there
            # (the rows of a block are consecutive; a block of padding rows skips everything). Without this the
            # upper pass computed every tile of a resident column set and masked half (measured: 0.45x the
            # pairs/s of an "all" pass; the results are identical, skipped tiles hold no valid pair).
            first = qid[0]
            s0 = jnp.where(first >= 0, jnp.clip((first + 1 - col0) // (ct * bdb), 0, nsuper), nsuper)
            rs, ri, rgv, rgi, inner = lax.fori_loop(s0, nsuper, lambda i, c2: per_super(c2, i)[0],
                                                    (rs, ri, rgv, rgi, inner))
        elif nfull:
            (rs, ri, rgv, rgi, inner), _ = lax.scan(per_super, (rs, ri, rgv, rgi, inner), jnp.arange(nsuper))
        if rem:
            inner, out = per_tile(inner, qb, qid, qlab, qsq, rs[:, -1], tail_tile())
            rs, ri, rgv, rgi = merge_rows(rs, ri, rgv, rgi, jax.tree_util.tree_map(lambda a: a[None], out))
        rc, rm = inner[:2]
        return inner[2:], (rs, ri, rc, rm, rgv, rgi)

    def blocks_of(a):
        return a.reshape((nrb, bq) + a.shape[1:])

    cp = (nfull + (1 if rem else 0)) * bdb
    init = (jnp.full((cp, max(kc, 1)), _NEG_INF, jnp.float32), jnp.full((cp, max(kc, 1)), -1, jnp.int32),
            jnp.zeros((2, hw), jnp.int32), jnp.zeros((max(cap, 1),), jnp.float32),
            jnp.zeros((max(cap, 1),), jnp.int32), jnp.zeros((max(cap, 1),), jnp.int32), jnp.zeros((), jnp.int32))
    (col_s, col_i, hist, cbuf, crow, ccls, fill), per_block = lax.scan(
        per_row_block, init,
        tuple(blocks_of(a) for a in (x, rid, rlab, rsq, row_s, row_i, counts, mom, gv, gi)))
    row_s, row_i, counts, mom, gv, gi = (a.reshape((R,) + a.shape[2:]) for a in per_block)
    cmax2 = jnp.max(jnp.where((col0 + jnp.arange(C) < ncols)[:, None], cx * cx, 0.0).sum(axis=1))
    return row_s, row_i, counts, mom, gv, gi, col_s, col_i, hist, cbuf, crow, ccls, fill, cmax2


@functools.lru_cache(maxsize=64)
def _compiled_step(mesh: Mesh, spec: PassSpec, blocks: Blocks, R: int, C: int, d: int):
    """jit(shard_map(device step)) for one mesh, spec and geometry."""
    rows, rep = P(ROWS), P()

    def local(x, rid, rlab, rsq, cx, clab, csq, col0, ncols, taus, hlo, hinv, rlo, rinv, rbin, cmask, kref,
              row_s, row_i, counts, mom, gv, gi, run_col_s, run_col_i):
        out = _device_step(spec, blocks, x, rid, rlab, rsq, cx, clab, csq, col0, ncols, taus, hlo, hinv, rlo,
                           rinv, rbin, cmask, kref, run_col_s[:, -1], row_s, row_i, counts, mom, gv, gi)
        row_s, row_i, counts, mom, gv, gi, col_s, col_i, hist, cbuf, crow, ccls, fill, cmax2 = out
        if spec.col_k:
            # Every device merged only its own rows: gather the devices' lists and merge them with the running
            # list (rows of earlier steps) by (score desc, row asc) -> the same result for any device count.
            cp = col_s.shape[0]
            gs = lax.all_gather(col_s, ROWS)  # [G, Cp, kc]
            gi_ = lax.all_gather(col_i, ROWS)
            cand_s = jnp.concatenate([run_col_s[None], gs], 0).transpose(1, 0, 2).reshape(cp, -1)
            cand_i = jnp.concatenate([run_col_i[None], gi_], 0).transpose(1, 0, 2).reshape(cp, -1)
            col_s, col_i = merge_topk_lex(cand_s, cand_i, spec.col_k)
        cmax2 = lax.pmax(cmax2, ROWS)
        return (row_s, row_i, counts, mom, gv, gi, col_s, col_i, hist[None], cbuf[None], crow[None], ccls[None],
                fill[None], cmax2)

    fn = jax.shard_map(
        local, mesh=mesh,
        in_specs=(rows, rows, rows, rows, rep, rep, rep, rep, rep, rep, rep, rep, rep, rep, rep, rep, rep,
                  rows, rows, rows, rows, rows, rows, rep, rep),
        out_specs=(rows, rows, rows, rows, rows, rows, rep, rep, rows, rows, rows, rows, rows, rep),
        check_vma=False)
    return jax.jit(fn, donate_argnums=(17, 18, 19, 20, 21, 22))


# ----------------------------------------------------------------------------------------------------------
# The driver
# ----------------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class PassResult:
    """What a pass returns (host numpy; every process gets all of it).

    row_scores/row_index: [n_rows, row_k] float32 / int32 (descending; ties -> lower column).
    col_scores/col_index: [n_cols, col_k] (descending; ties -> lower row).
    counts: int64 [n_rows, n_taus, 2] per-row counts of score > tau (impostor, genuine).
    moments: float64 [2, 2]: (impostor, genuine) x (sum s, sum s^2) over all pairs.
    row_moments: float64 [n_rows, 2, 2] per-row sums (the same, not summed).
    hist: int64 [2, nbins] (impostor, genuine); with key_hist [2, 65,536 * (1 + key_refine)]: the top-16-bit
      bins, then per refined bin its 65,536 exact values (the refined bins' own top counters stay 0).
    collected: (scores float32 [m], rows int64 [m], classes int8 [m]: 0 impostor, 1 genuine), in row order.
    group_values/group_ids: [n_rows, screen_t + 1] the certified screen's group maxima (descending).
    max_col_norm: largest column norm (float).
    pairs_evaluated: number of (valid) pairs the pass covered; seconds: wall time.
    """

    row_scores: np.ndarray | None = None
    row_index: np.ndarray | None = None
    col_scores: np.ndarray | None = None
    col_index: np.ndarray | None = None
    counts: np.ndarray | None = None
    moments: np.ndarray | None = None
    row_moments: np.ndarray | None = None
    hist: np.ndarray | None = None
    collected: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
    group_values: np.ndarray | None = None
    group_ids: np.ndarray | None = None
    max_col_norm: float = 0.0
    pairs_evaluated: int = 0
    seconds: float = 0.0


def distinct_labels(labels, n: int, offset: int) -> np.ndarray:
    """int32 labels [n] in which unknown identities (negative labels, or labels=None) get distinct negative ids
    that equal no other label (each unlabelled image its own identity)."""
    if labels is None:
        return -(np.arange(n, dtype=np.int64) + 1 + offset).astype(np.int32)
    lab = np.asarray(labels, np.int64).copy()
    if lab.shape != (n,):
        raise ValueError(f"labels have shape {lab.shape}, expected ({n},)")
    if lab.max(initial=-1) >= 2**31 - 1:
        raise ValueError("labels must be < 2^31 - 1")
    unk = lab < 0
    lab[unk] = -(np.nonzero(unk)[0] + 1 + offset)
    return lab.astype(np.int32)


def _squared_norms(blk: np.ndarray) -> np.ndarray:
    return np.einsum("ij,ij->i", blk, blk, dtype=np.float32)


def to_host(x) -> np.ndarray:
    """A global array on the host of every process (process_allgather for arrays spread over processes)."""
    if x.is_fully_addressable:
        return np.asarray(x)
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def put_rows_sharded(mesh: Mesh, host: np.ndarray) -> jax.Array:
    """A host array [G * b, ...] (the same on every process) as a global array sharded over "rows"; each process
    transfers only its own devices' slices."""
    return jax.make_array_from_callback(host.shape, NamedSharding(mesh, P(ROWS)), lambda idx: host[idx])


def put_replicated(mesh: Mesh, host: np.ndarray) -> jax.Array:
    """``host`` (the same on every process) replicated on every device of ``mesh``. One process: device_put (on
    one CPU device an aligned float32 array is aliased, hostmem.py). Several processes: built from each process's
    local copy, because jax 0.10's device_put to a replicated multi-process sharding checks equality with an
    allgather that fails with 2+ local devices per process ("cannot reshape array of size 4 into shape (2,1)")."""
    sharding = NamedSharding(mesh, P())
    if jax.process_count() > 1:
        return jax.make_array_from_callback(host.shape, sharding, lambda idx: host[idx])
    return jax.device_put(host, sharding)


def tile_pass(rows, cols, spec: PassSpec, params: PassParams | None = None, *, mesh: Mesh | None = None,
              row_labels=None, col_labels=None, blocks: Blocks | None = None, progress: str = "",
              log_every_s: float = 10.0) -> PassResult:
    """Runs one pass of ``spec`` over all pairs of ``rows`` x ``cols`` (or i < j of ``rows`` for pairs="upper").

    Args:
      rows, cols: [n, D] arrays or array-likes (numpy, memmap, embedding-store `.embeddings`, :class:`Source`).
        For pairs="upper" pass the same object twice.
      spec: what to compute (:class:`PassSpec`); params: run-time values (:class:`PassParams`).
      mesh: a ``("rows",)`` mesh (:func:`make_mesh`); default: every device of every process.
      row_labels, col_labels: int [n] identity labels (negative = unknown) when spec.labels.
      blocks: tile geometry (default :func:`default_blocks`).
      progress: a name; when set, logs progress (pairs/s, ETA) at most every ``log_every_s`` seconds.
    Returns: :class:`PassResult`.
    """
    t0 = time.perf_counter()
    rs_src = as_source(rows, "rows")
    cs_src = rs_src if (cols is rows and spec.pairs == "upper") else as_source(cols, "columns")
    if spec.pairs == "upper" and cs_src is not rs_src:
        raise ValueError("pairs='upper' needs the same set as rows and columns")
    if rs_src.d != cs_src.d:
        raise ValueError(f"dimension mismatch: rows have dim {rs_src.d}, columns have dim {cs_src.d}")
    n_rows, n_cols, d = rs_src.n, cs_src.n, rs_src.d
    if spec.row_k:
        check_k(spec.row_k, n_cols)
    if spec.col_k:
        check_k(spec.col_k, n_rows, "col_k")
    params = params or PassParams()
    mesh = mesh or make_mesh()
    if mesh.axis_names != (ROWS,):
        raise ValueError(f"the engine needs a 1-D ('rows',) mesh (search.engine.make_mesh), got {mesh.axis_names}")
    G = mesh.shape[ROWS]
    blocks = blocks or default_blocks(n_rows, n_cols, d, spec)
    bq, bdb = blocks.bq, blocks.bdb
    if blocks.rows_per_device % bq or (blocks.chunk is not None and blocks.chunk % bdb):
        raise ValueError(f"inconsistent blocks {blocks}")
    if spec.screen_t and bdb % spec.group:
        raise ValueError(f"db block {bdb} must be a multiple of the group size {spec.group}")
    R = blocks.rows_per_device
    resident = blocks.chunk is None or blocks.chunk >= n_cols
    chunk = n_cols if resident else blocks.chunk  # columns per step (a resident set is not padded)
    chunk_pad = round_up(chunk, bdb)  # column-state rows per step
    if (spec.nbins or spec.key_hist) and R * chunk_pad >= 2**31:
        raise ValueError(f"{R} rows x {chunk} columns per step overflow int32 histogram counts; use smaller blocks")
    T = spec.n_taus
    taus = np.zeros(max(T, 1), np.float32)
    tau_order = np.arange(max(T, 1))  # the device counts above ascending taus; results come back in given order
    if T:
        if params.taus is None or len(params.taus) != T:
            raise ValueError(f"spec counts {T} thresholds; params.taus has {None if params.taus is None else len(params.taus)}")
        given = np.asarray(params.taus, np.float32)
        if np.isnan(given).any():
            raise ValueError("taus must not be NaN")
        tau_order = np.argsort(given, kind="stable")
        taus[:] = given[tau_order]
    nb = spec.nbins
    bins = params.bins
    if nb and (bins is None or bins.nbins != nb):
        raise ValueError("spec.nbins needs params.bins with the same nbins")
    hlo, hinv = (bins.lo, bins.inv_width) if nb else (0.0, 1.0)
    if spec.restrict:
        if params.restrict is None or params.restrict[0].nbins != nb:
            raise ValueError("spec.restrict needs params.restrict = (Bins with the same nbins, bin)")
        rlo, rinv, rbin = params.restrict[0].lo, params.restrict[0].inv_width, int(params.restrict[1])
    else:
        rlo, rinv, rbin = 0.0, 1.0, -1
    cmask = np.zeros(max(nb, 1), bool)
    kref = np.full(max(spec.key_refine, 1), -1, np.int32)
    if spec.key_refine:
        given = np.asarray(params.key_refine_bins if params.key_refine_bins is not None else [], np.int64).ravel()
        if given.size != spec.key_refine or len(set(given.tolist())) != given.size or \
                given.min() < 0 or given.max() >= KEY_BINS:
            raise ValueError(f"spec.key_refine={spec.key_refine} needs params.key_refine_bins: that many distinct "
                             f"bins in [0, {KEY_BINS})")
        kref[:] = given
    if spec.collect_cap:
        if params.collect_bins is None or len(params.collect_bins) != nb:
            raise ValueError("spec.collect_cap needs params.collect_bins [nbins]")
        cmask[:] = params.collect_bins
    rlab_all = distinct_labels(row_labels if spec.labels else None, n_rows, 0)
    clab_all = rlab_all if spec.pairs == "upper" else distinct_labels(col_labels if spec.labels else None, n_cols,
                                                                      n_rows)
    if spec.labels and (row_labels is None or (spec.pairs == "all" and col_labels is None)):
        raise ValueError("spec.labels needs row_labels (and col_labels for pairs='all')")

    kk = max(spec.row_k, 1)
    kc = max(spec.col_k, 1)
    t1 = spec.screen_t + 1 if spec.screen_t else 1
    step = _compiled_step(mesh, spec, blocks, R, chunk, d)
    row_sh = NamedSharding(mesh, P(ROWS))
    put_rep = functools.partial(put_replicated, mesh)
    scal = lambda v, dt: put_rep(np.asarray(v, dt))  # noqa: E731
    taus_d, hlo_d, hinv_d = scal(taus, np.float32), scal(hlo, np.float32), scal(hinv, np.float32)
    rlo_d, rinv_d, rbin_d = scal(rlo, np.float32), scal(rinv, np.float32), scal(rbin, np.int32)
    cmask_d, ncols_d, kref_d = scal(cmask, bool), scal(n_cols, np.int32), scal(kref, np.int32)
    euclid = spec.score == "neg_euclidean"

    def put_rows(arr_fn, shape, dtype):
        """A global row-sharded array; each process builds only its own devices' slices."""
        return jax.make_array_from_callback(shape, row_sh, lambda idx: arr_fn(idx[0]).astype(dtype, copy=False))

    col_plan = [(a, min(n_cols, a + chunk)) for a in range(0, n_cols, chunk)]

    @functools.lru_cache(maxsize=2)
    def load_cols(ci):
        a, b = col_plan[ci]
        if resident and G == 1:
            # The input itself when it is an aligned float32 array, else one aligned copy: either way the CPU
            # backend uses it in place (hostmem.py), where an unaligned read buffer would be copied a second time
            # by device_put. Finiteness of an input used in place: the device pass.
            # (Several devices get copies anyway: read() checks every row on the way.)
            blk = cs_src.aligned_host()
        else:
            blk = cs_src.read(a, b, pad_to=chunk)
        lab = np.zeros(chunk, np.int32)
        lab[: b - a] = clab_all[a:b]
        sq = _squared_norms(blk) if euclid else np.zeros(chunk, np.float32)
        return (put_rep(blk), put_rep(lab), put_rep(sq),
                scal(a, np.int32))

    n_groups = -(-n_rows // (G * R))
    row_s = np.full((n_rows, kk), _NEG_INF, np.float32)
    row_i = np.full((n_rows, kk), -1, np.int32)
    counts = np.zeros((n_rows, max(T, 1), 2), np.int64)
    row_mom = np.zeros((n_rows, 2, 2), np.float64)
    gvals = np.full((n_rows, t1), _NEG_INF, np.float32)
    gids = np.full((n_rows, t1), -1, np.int32)
    col_s = np.full((n_cols, kc), _NEG_INF, np.float32)
    col_i = np.full((n_cols, kc), -1, np.int32)
    hist = np.zeros((2, spec.hist_width), np.int64)
    collected = ([], [], [])
    cmax2 = 0.0
    total_pairs = n_rows * (n_rows - 1) // 2 if spec.pairs == "upper" else n_rows * n_cols
    last_log = t0
    done_rows = 0
    for g in range(n_groups):
        g0 = g * G * R
        g1 = min(n_rows, g0 + G * R)

        def read_rows(sl, g0=g0):
            a, b = g0 + (sl.start or 0), g0 + (sl.stop if sl.stop is not None else G * R)
            return rs_src.read(a, b, pad_to=b - a)

        def ids(sl, g0=g0):
            a, b = g0 + (sl.start or 0), g0 + (sl.stop if sl.stop is not None else G * R)
            r = np.arange(a, b, dtype=np.int64)
            return np.where(r < n_rows, r, -1)

        def labs(sl, g0=g0):
            r = ids(sl, g0)
            return np.where(r >= 0, rlab_all[np.maximum(r, 0)], 0)

        x = put_rows(read_rows, (G * R, d), np.float32)
        rid = put_rows(ids, (G * R,), np.int32)
        rlab = put_rows(labs, (G * R,), np.int32)
        rsq = put_rows((lambda sl: _squared_norms(read_rows(sl))) if euclid else
                       (lambda sl: np.zeros((sl.stop or G * R) - (sl.start or 0), np.float32)), (G * R,), np.float32)
        st = [put_rows(lambda sl, v=v, sh=sh, dt=dt: np.full(((sl.stop or G * R) - (sl.start or 0),) + sh, v, dt),
                       (G * R,) + sh, dt)
              for v, sh, dt in ((_NEG_INF, (kk,), np.float32), (-1, (kk,), np.int32), (0, (max(T, 1), 2), np.int32),
                                (0.0, (2, 2), np.float32), (_NEG_INF, (t1,), np.float32), (-1, (t1,), np.int32))]
        for ci, (a, b) in enumerate(col_plan):
            if spec.pairs == "upper" and b <= g0 + 1:
                continue  # every column of this chunk is below every row of the group: no pair i < j
            cx, clab, csq, col0 = load_cols(ci)
            rc_s = put_rep(np.pad(col_s[a:b], ((0, chunk_pad - (b - a)), (0, 0)), constant_values=_NEG_INF))
            rc_i = put_rep(np.pad(col_i[a:b], ((0, chunk_pad - (b - a)), (0, 0)), constant_values=-1))
            out = step(x, rid, rlab, rsq, cx, clab, csq, col0, ncols_d, taus_d, hlo_d, hinv_d, rlo_d, rinv_d,
                       rbin_d, cmask_d, kref_d, *st, rc_s, rc_i)
            st = list(out[:6])
            c_s, c_i, h, cbuf, crow, ccls, fill, m2 = out[6:]
            if spec.col_k:
                col_s[a:b] = to_host(c_s)[: b - a]
                col_i[a:b] = to_host(c_i)[: b - a]
            if (nb and not spec.collect_cap) or spec.key_hist:
                hist += to_host(h).astype(np.int64).sum(axis=0)
            if spec.collect_cap:
                fills = to_host(fill)
                if fills.max(initial=0) > spec.collect_cap:
                    raise CollectOverflow(int(fills.max()))
                bufs = [to_host(v) for v in (cbuf, crow, ccls)]
                for dev in range(G):
                    f = int(fills[dev])
                    for lst, v in zip(collected, bufs):
                        lst.append(v[dev, :f])
            cmax2 = max(cmax2, float(to_host(m2)))
            now = time.perf_counter()
            if progress and now - last_log > log_every_s and jax.process_index() == 0:
                frac = (done_rows + (g1 - g0) * (ci + 1) / len(col_plan)) / n_rows
                rate = frac * total_pairs / (now - t0)
                logging.info("%s: %.1f%% of %.3g pairs, %.3g pairs/s, ETA %.0f s", progress, 100 * frac,
                             total_pairs, rate, (1 - frac) * total_pairs / max(rate, 1e-9))
                last_log = now
        rs_, ri_, rc_, rm_, gv_, gi_ = (to_host(v)[: g1 - g0] for v in st)
        row_s[g0:g1], row_i[g0:g1], gvals[g0:g1], gids[g0:g1] = rs_, ri_, gv_, gi_
        counts[g0:g1] = rc_
        row_mom[g0:g1] = rm_
        done_rows = g1
    if not math.isfinite(cmax2):
        cs_src.raise_if_nonfinite()  # names the NaN/inf column row of an input used in place
    res = PassResult(max_col_norm=math.sqrt(cmax2), seconds=time.perf_counter() - t0, pairs_evaluated=total_pairs)
    if spec.row_k:
        res.row_scores, res.row_index = row_s, row_i
    if spec.col_k:
        res.col_scores, res.col_index = col_s, col_i
    if T:
        res.counts = counts[:, np.argsort(tau_order)]  # back to the order the taus were given in
    if spec.moments:
        res.row_moments = row_mom
        res.moments = row_mom.sum(axis=0)  # float64, in row order: the same for any device count
    if (nb and not spec.collect_cap) or spec.key_hist:
        res.hist = hist
    if spec.collect_cap:
        sc, rw, cl = (np.concatenate(v) if v else np.zeros(0) for v in collected)
        order = np.lexsort((sc, rw))
        res.collected = (sc.astype(np.float32)[order], rw.astype(np.int64)[order], cl.astype(np.int8)[order])
    if spec.screen_t:
        res.group_values, res.group_ids = gvals, gids
    if progress and jax.process_index() == 0:
        logging.info("%s: %.3g pairs in %.1f s (%.3g pairs/s)", progress, total_pairs, res.seconds,
                     total_pairs / max(res.seconds, 1e-9))
    return res


class CollectOverflow(RuntimeError):
    """A device collected more scores in one step than the buffer holds (the caller retries with a larger cap)."""

    def __init__(self, needed: int):
        super().__init__(f"collect buffer overflow: {needed} scores in one step")
        self.needed = needed
