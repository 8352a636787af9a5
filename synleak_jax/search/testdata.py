"""Seeded unit embeddings with identity structure ("face-structured" data) for benchmarks and tests.

Face embeddings are not isotropic noise: a dataset is a set of identities with 5-50 images each, two images of
one person score ~0.6 (cosine), two people ~0 +- 0.04 at 512-D. This module generates such data, of any size,
chunk by chunk, with labels and planted ground truth, so that a benchmark (k-NN recall and speed, leak recall,
calibration) can run on something that looks like the problem.

The model (every quantity below is a documented parameter of :class:`IdentitySpec`):

* Identity ``i`` has a centre ``c_i``: a uniformly random unit direction (normalised standard normal draw).
* Image ``r`` of identity ``i`` is ``x_r = a_r c_i + sqrt(1 - a_r^2) n_r`` with ``n_r`` a uniformly random unit
  direction orthogonal to ``c_i`` (a normal draw with its ``c_i`` component removed, normalised). ``x_r`` is a
  unit vector. ``a_r`` ("quality": how much of the identity the image carries) is ``clip(N(m, s^2), 0,
  max_quality)``, one draw per image.
* Genuine pairs (same identity): ``x_r . x_t = a_r a_t + b_r b_t (n_r . n_t)``, ``b = sqrt(1 - a^2)``, where
  ``n_r . n_t`` has mean 0 and variance ``1 / (D - 1)``. So the genuine mean is ``E[a]^2`` and the genuine
  variance ``E[a^2]^2 - E[a]^4 + (1 - E[a^2])^2 / (D - 1)``; ``(m, s)`` are solved (closed-form clipped-normal
  moments, bisection) so that these equal ``genuine_cosine`` and ``genuine_std^2``. The smallest reachable
  genuine std is ``(1 - genuine_cosine) / sqrt(D - 1)`` (every image of the same quality; 0.018 at 512-D,
  genuine 0.6); the largest genuine cosine is about ``max_quality^2`` (0.81 by default; see ``copy_cosine``).
* Impostor pairs (different identities): because the centre is uniform and the noise is uniform around it,
  every image is a uniformly random unit vector as seen from another identity, so an impostor score is
  distributed as one coordinate of a uniform point on the sphere: mean 0, std exactly ``1 / sqrt(D)``
  (0.0442 at 512-D), whatever the qualities. Real embeddings are anisotropic (a lower intrinsic dimension and
  a wider impostor spread, e.g. ~0.05-0.07 for ArcFace); this generator does not model that.
* Images per identity: uniform integers in ``images_per_identity`` (inclusive; ``(n, n)`` for a fixed count).
  Rows are stored identity by identity (like a dataset's folders); the last identity of a set is cut at the
  requested row count and may have fewer images than the minimum.

Queries (the "synthetic" side of an audit) follow the same model, with identities of their own:

* A share ``leaked_identity_share`` of the query identities ARE database identities (same centre: new images
  of a database person; genuine-level scores against all that person's database rows); the others are new.
* A share ``copy_share`` of the query rows are planted near-copies: ``q = copy_cosine d + sqrt(1 -
  copy_cosine^2) n`` with ``d`` a database row (distinct rows, uniformly chosen) and ``n`` a random unit
  direction orthogonal to ``d``, so ``q . d == copy_cosine`` up to float32 rounding. The planted (query row,
  database row) pairs are returned as ground truth. They are each other's nearest neighbours (q's best
  database row is d and d's best query is q) whenever ``copy_cosine`` exceeds every other score either takes
  part in; the largest genuine cosine is about ``max_quality^2 + (1 - max_quality^2) 5 / sqrt(D - 1)`` (0.85
  for the defaults, :meth:`IdentityEmbeddings.describe` gives it), and ``q . d' ~= copy_cosine (d . d')`` for
  d's same-identity rows d'. With the defaults (copy 0.9, max quality 0.9) the property is tested.

Labels: database identities are ``0 .. n_database_identities - 1`` (in row order); a leaked query identity
carries its database label; new query identities are numbered from ``n_database_identities``; a planted copy
carries the label of the row it copies.

Determinism and memory: all randomness comes from fixed blocks of ``ROW_BLOCK`` rows (noise, qualities) and
``CENTRE_BLOCK`` identities (centres), each seeded by ``SeedSequence([seed, stream, block])``. Any chunk of
rows is therefore the same values whichever chunking produced it (``database(0, n)`` equals the concatenation
of any split), and memory is bounded by a chunk plus per-row metadata (labels: 8 bytes a row) plus the planted
copies' source rows (``n_planted x D``). 1.2M x 512 is written chunk by chunk into a .npy
(:meth:`IdentityEmbeddings.save_npy`).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Iterable, Iterator

import numpy as np

from synleak_jax import files

#: Rows per randomness block (noise and quality draws): the unit that makes any chunking give the same values.
ROW_BLOCK = 4096
#: Identities per centre block.
CENTRE_BLOCK = 1024

# Random streams (the second SeedSequence word): independent for every purpose.
_STREAM_DB_COUNTS, _STREAM_DB_CENTRES, _STREAM_DB_ROWS = 1, 2, 3
_STREAM_Q_COUNTS, _STREAM_Q_CENTRES, _STREAM_Q_ROWS, _STREAM_Q_PLAN = 4, 5, 6, 7

#: Query row kinds (``IdentityEmbeddings.query_kind``).
KIND_NEW, KIND_LEAKED_IDENTITY, KIND_COPY = 0, 1, 2


@dataclasses.dataclass(frozen=True)
class IdentitySpec:
    """Parameters of a face-structured query/database pair (see the module docstring for the model).

    Attributes:
      database_rows: rows of the database ("real" set), >= 1.
      query_rows: rows of the query set ("synthetic" set), >= 0.
      dim: embedding dimension D, >= 3.
      images_per_identity: (min, max) images per identity, inclusive, uniform; (n, n) for a fixed count.
      genuine_cosine: mean cosine of two images of one identity (0 < . < max_quality^2).
      genuine_std: standard deviation of the genuine cosine (>= (1 - genuine_cosine) / sqrt(D - 1)).
      max_quality: upper clip of the per-image quality a (0 < . < 1); bounds the genuine cosine near
        max_quality^2.
      leaked_identity_share: share of query identities that are database identities (rounded to a count).
      copy_share: share of query rows that are planted near-copies of database rows (rounded to a count).
      copy_cosine: cosine of a planted copy with its database row (0 < . < 1).
      seed: the seed; every value is a function of (spec, row).
    """

    database_rows: int
    query_rows: int
    dim: int = 512
    images_per_identity: tuple[int, int] = (5, 50)
    genuine_cosine: float = 0.6
    genuine_std: float = 0.1
    max_quality: float = 0.9
    leaked_identity_share: float = 0.1
    copy_share: float = 0.01
    copy_cosine: float = 0.9
    seed: int = 0

    def validate(self) -> None:
        """Raises ValueError naming the first bad field."""
        if int(self.database_rows) < 1:
            raise ValueError(f"database_rows must be >= 1, got {self.database_rows}")
        if int(self.query_rows) < 0:
            raise ValueError(f"query_rows must be >= 0, got {self.query_rows}")
        if int(self.dim) < 3:
            raise ValueError(f"dim must be >= 3, got {self.dim}")
        lo, hi = self.images_per_identity
        if not 1 <= int(lo) <= int(hi):
            raise ValueError(f"images_per_identity must be (min, max) with 1 <= min <= max, got "
                             f"{self.images_per_identity}")
        if not 0.0 < self.max_quality < 1.0:
            raise ValueError(f"max_quality must be in (0, 1), got {self.max_quality}")
        if not 0.0 < self.genuine_cosine < self.max_quality ** 2:
            raise ValueError(f"genuine_cosine must be in (0, max_quality^2 = {self.max_quality ** 2:.4f}), got "
                             f"{self.genuine_cosine}")
        if not self.genuine_std > 0:
            raise ValueError(f"genuine_std must be > 0, got {self.genuine_std}")
        for name in ("leaked_identity_share", "copy_share"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {v}")
        if not 0.0 < self.copy_cosine < 1.0:
            raise ValueError(f"copy_cosine must be in (0, 1), got {self.copy_cosine}")
        if not 0 <= int(self.seed) < 2**63:
            raise ValueError(f"seed must be in [0, 2^63), got {self.seed}")


# ------------------------------------------------------------------------------------- quality distribution


def _phi(z: float) -> float:
    return math.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi) if math.isfinite(z) else 0.0


def _cdf(z: float) -> float:
    return 0.5 * (1.0 + math.erf(z / math.sqrt(2.0)))


def clipped_normal_moments(mean: float, std: float, lo: float, hi: float) -> tuple[float, float]:
    """(E[a], E[a^2]) of a = clip(N(mean, std^2), lo, hi), in closed form (std = 0: a point mass)."""
    if std == 0:
        a = min(max(mean, lo), hi)
        return a, a * a
    alpha, beta = (lo - mean) / std, (hi - mean) / std
    p_lo, p_hi = _cdf(alpha), 1.0 - _cdf(beta)
    inside = 1.0 - p_lo - p_hi
    d_phi = _phi(alpha) - _phi(beta)
    ea = lo * p_lo + hi * p_hi + mean * inside + std * d_phi
    tail_term = (alpha * _phi(alpha) if math.isfinite(alpha) else 0.0) - (beta * _phi(beta) if math.isfinite(beta)
                                                                          else 0.0)
    ea2 = lo * lo * p_lo + hi * hi * p_hi + (mean * mean + std * std) * inside + 2 * mean * std * d_phi \
        + std * std * tail_term
    return ea, ea2


def genuine_moments(mean: float, std: float, max_quality: float, dim: int) -> tuple[float, float]:
    """(mean, std) of the genuine cosine for qualities clip(N(mean, std^2), 0, max_quality) at dimension dim."""
    ea, ea2 = clipped_normal_moments(mean, std, 0.0, max_quality)
    var = ea2 * ea2 - ea ** 4 + (1.0 - ea2) ** 2 / (dim - 1)
    return ea * ea, math.sqrt(max(var, 0.0))


def _bisect(f, lo: float, hi: float, iters: int = 200) -> float:
    """Root of an increasing f on [lo, hi] (f(lo) <= 0 <= f(hi))."""
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        if f(mid) < 0:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def solve_quality(genuine_cosine: float, genuine_std: float, max_quality: float, dim: int) -> tuple[float, float]:
    """The (m, s) of the quality distribution clip(N(m, s^2), 0, max_quality) that give the stated genuine
    cosine mean and std at dimension ``dim``. Raises ValueError when the std is out of reach."""
    target_mean_a = math.sqrt(genuine_cosine)

    def mean_for(s: float) -> float:  # E[a] is increasing in m: pin it to sqrt(genuine_cosine)
        return _bisect(lambda m: clipped_normal_moments(m, s, 0.0, max_quality)[0] - target_mean_a, -50.0, 50.0)

    floor = genuine_moments(target_mean_a, 0.0, max_quality, dim)[1]
    s_max = 4.0
    ceiling = genuine_moments(mean_for(s_max), s_max, max_quality, dim)[1]
    if not floor < genuine_std < ceiling:
        raise ValueError(f"genuine_std={genuine_std} is out of reach for genuine_cosine={genuine_cosine}, "
                         f"max_quality={max_quality}, dim={dim}: it must be in ({floor:.4f}, {ceiling:.4f})")
    s = _bisect(lambda s: genuine_moments(mean_for(s), s, max_quality, dim)[1] - genuine_std, 0.0, s_max, 100)
    return mean_for(s), s


# ------------------------------------------------------------------------------------------------ generator


def _rng(seed: int, stream: int, block: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(seed), stream, int(block)])))


def _identity_counts(n_rows: int, lo: int, hi: int, seed: int, stream: int) -> np.ndarray:
    """Images per identity (uniform in [lo, hi]) until n_rows are covered; the last one cut. int64 [n_ids]."""
    rng = _rng(seed, stream, 0)
    counts = []
    total = 0
    while total < n_rows:  # draws in batches; the sequence does not depend on n_rows
        c = rng.integers(lo, hi + 1, size=4096)
        counts.append(c)
        total += int(c.sum())
    counts = np.concatenate(counts) if counts else np.zeros(0, np.int64)
    ends = np.cumsum(counts)
    n_ids = int(np.searchsorted(ends, n_rows) + 1) if n_rows else 0
    counts = counts[:n_ids].astype(np.int64)
    if n_ids:
        counts[-1] -= int(ends[n_ids - 1]) - n_rows
    return counts


def _unit_rows(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _orthogonal_unit(noise: np.ndarray, directions: np.ndarray) -> np.ndarray:
    """Rows of ``noise`` with their component along the (unit) ``directions`` rows removed, normalised."""
    noise = noise - np.sum(noise * directions, axis=1, keepdims=True) * directions
    return _unit_rows(noise)


class IdentityEmbeddings:
    """A face-structured (queries, database) pair, generated on demand chunk by chunk.

    Attributes (metadata, computed at construction; O(rows) integers):
      spec: the IdentitySpec.
      database_labels: int64 [database_rows], identity of every database row (0 .. n_database_identities - 1).
      query_labels: int64 [query_rows] (database label for leaked identities and copies; new identities from
        n_database_identities).
      query_kind: int8 [query_rows]: KIND_NEW, KIND_LEAKED_IDENTITY or KIND_COPY.
      planted: int64 [n_planted, 2]: (query row, database row) of every planted near-copy, by query row.
      quality_mean, quality_std: the solved (m, s) of the per-image quality distribution.
    """

    def __init__(self, spec: IdentitySpec):
        spec.validate()
        self.spec = spec
        self.dim = int(spec.dim)
        lo, hi = (int(v) for v in spec.images_per_identity)
        self.quality_mean, self.quality_std = solve_quality(spec.genuine_cosine, spec.genuine_std,
                                                            spec.max_quality, self.dim)
        db_counts = _identity_counts(int(spec.database_rows), lo, hi, spec.seed, _STREAM_DB_COUNTS)
        self.n_database_identities = len(db_counts)
        self.database_labels = np.repeat(np.arange(len(db_counts), dtype=np.int64), db_counts)

        nq = int(spec.query_rows)
        q_counts = _identity_counts(nq, lo, hi, spec.seed, _STREAM_Q_COUNTS)
        n_qids = len(q_counts)
        plan = _rng(spec.seed, _STREAM_Q_PLAN, 0)
        n_leaked = int(round(spec.leaked_identity_share * n_qids))
        if n_leaked > self.n_database_identities:
            raise ValueError(f"leaked_identity_share={spec.leaked_identity_share} asks for {n_leaked} leaked "
                             f"identities but the database has only {self.n_database_identities}")
        leaked_qids = plan.choice(n_qids, n_leaked, replace=False)
        leaked_db_ids = plan.choice(self.n_database_identities, n_leaked, replace=False)
        # query identity -> label (database id for a leaked identity, else n_db_ids + running new index)
        qid_label = np.full(n_qids, -1, np.int64)
        qid_label[leaked_qids] = leaked_db_ids
        is_new = qid_label < 0
        qid_label[is_new] = self.n_database_identities + np.arange(int(is_new.sum()), dtype=np.int64)
        self.n_query_identities = n_qids
        self.n_leaked_query_identities = n_leaked
        self.query_labels = np.repeat(qid_label, q_counts)
        self.query_kind = np.repeat(np.where(is_new, KIND_NEW, KIND_LEAKED_IDENTITY).astype(np.int8), q_counts)

        n_copies = int(round(spec.copy_share * nq))
        if n_copies > spec.database_rows:
            raise ValueError(f"copy_share={spec.copy_share} asks for {n_copies} planted copies but the database "
                             f"has only {spec.database_rows} rows")
        copy_rows = np.sort(plan.choice(nq, n_copies, replace=False)) if n_copies else np.zeros(0, np.int64)
        targets = plan.choice(int(spec.database_rows), n_copies, replace=False) if n_copies \
            else np.zeros(0, np.int64)
        self.planted = np.stack([copy_rows.astype(np.int64), targets.astype(np.int64)], axis=1)
        self.query_kind[copy_rows] = KIND_COPY
        self.query_labels[copy_rows] = self.database_labels[targets]
        self._copy_target = np.full(nq, -1, np.int64)
        self._copy_target[copy_rows] = np.arange(n_copies)
        # The database rows the planted copies copy: harvested whenever a database block is generated (so
        # generating the database first makes them free), the missing ones generated on first use.
        self._copy_sources_rows = np.zeros((n_copies, self.dim), np.float64)
        self._copy_sources_have = np.zeros(n_copies, bool)
        self._copy_block_order = np.argsort(targets // ROW_BLOCK, kind="stable") if n_copies else np.zeros(0, int)
        self._copy_block_keys = (targets // ROW_BLOCK)[self._copy_block_order] if n_copies else np.zeros(0, int)
        self._centre_cache: dict[tuple[int, int], np.ndarray] = {}

    # ---------------------------------------------------------------------------------------- descriptions

    @property
    def shapes(self) -> dict[str, tuple[int, int]]:
        return {"queries": (int(self.spec.query_rows), self.dim), "database": (int(self.spec.database_rows),
                                                                                self.dim)}

    def genuine_cosine_bound(self, z: float = 5.0) -> float:
        """About the largest genuine cosine: max_quality^2 + (1 - max_quality^2) z / sqrt(D - 1)."""
        h2 = self.spec.max_quality ** 2
        return h2 + (1.0 - h2) * z / math.sqrt(self.dim - 1)

    def describe(self) -> dict:
        """JSON-able summary: the spec, derived counts, the model's expected statistics."""
        return {
            "generator": "synleak_jax.search.testdata.IdentityEmbeddings",
            "spec": dataclasses.asdict(self.spec),
            "n_database_identities": self.n_database_identities,
            "n_query_identities": self.n_query_identities,
            "n_leaked_query_identities": self.n_leaked_query_identities,
            "query_rows_by_kind": {name: int(np.sum(self.query_kind == kind)) for name, kind in
                                   (("new_identity", KIND_NEW), ("leaked_identity", KIND_LEAKED_IDENTITY),
                                    ("planted_copy", KIND_COPY))},
            "n_planted": int(len(self.planted)),
            "quality_mean": self.quality_mean, "quality_std": self.quality_std,
            "expected_genuine_mean_std": list(genuine_moments(self.quality_mean, self.quality_std,
                                                              self.spec.max_quality, self.dim)),
            "expected_impostor_mean_std": [0.0, 1.0 / math.sqrt(self.dim)],
            "genuine_cosine_bound_5sigma": self.genuine_cosine_bound(),
        }

    # ------------------------------------------------------------------------------------------ generation

    def _centres(self, stream: int, ids: np.ndarray) -> np.ndarray:
        """Unit centres (float64 [len(ids), D]) of identities ``ids`` of a centre stream."""
        out = np.empty((len(ids), self.dim), np.float64)
        blocks = ids // CENTRE_BLOCK
        for b in np.unique(blocks):
            key = (stream, int(b))
            block = self._centre_cache.get(key)
            if block is None:
                block = _unit_rows(_rng(self.spec.seed, stream, int(b)).standard_normal(
                    (CENTRE_BLOCK, self.dim), dtype=np.float32).astype(np.float64))
                if len(self._centre_cache) >= 8:  # bounded: a few 4 MB blocks
                    self._centre_cache.pop(next(iter(self._centre_cache)))
                self._centre_cache[key] = block
            sel = blocks == b
            out[sel] = block[ids[sel] - int(b) * CENTRE_BLOCK]
        return out

    def _row_block_draws(self, stream: int, block: int, n_rows: int) -> tuple[np.ndarray, np.ndarray]:
        """(quality [n], float64 noise [n, D]) for rows of one randomness block."""
        rng = _rng(self.spec.seed, stream, block)
        n = min(ROW_BLOCK, n_rows - block * ROW_BLOCK)
        quality = np.clip(self.quality_mean + self.quality_std * rng.standard_normal(n), 0.0,
                          self.spec.max_quality)
        noise = rng.standard_normal((n, self.dim), dtype=np.float32).astype(np.float64)
        return quality, noise

    def _image_rows(self, centres: np.ndarray, quality: np.ndarray, noise: np.ndarray) -> np.ndarray:
        n = _orthogonal_unit(noise, centres)
        return quality[:, None] * centres + np.sqrt(1.0 - quality * quality)[:, None] * n

    def _database_block(self, block: int) -> np.ndarray:
        n_rows = int(self.spec.database_rows)
        quality, noise = self._row_block_draws(_STREAM_DB_ROWS, block, n_rows)
        a = block * ROW_BLOCK
        centres = self._centres(_STREAM_DB_CENTRES, self.database_labels[a:a + len(quality)])
        rows = self._image_rows(centres, quality, noise)
        lo, hi = np.searchsorted(self._copy_block_keys, [block, block + 1])
        if hi > lo:  # harvest the rows planted copies need
            which = self._copy_block_order[lo:hi]
            self._copy_sources_rows[which] = rows[self.planted[which, 1] - a]
            self._copy_sources_have[which] = True
        return rows

    def _query_block(self, block: int) -> np.ndarray:
        n_rows = int(self.spec.query_rows)
        quality, noise = self._row_block_draws(_STREAM_Q_ROWS, block, n_rows)
        a, b = block * ROW_BLOCK, block * ROW_BLOCK + len(quality)
        labels, kind = self.query_labels[a:b], self.query_kind[a:b]
        out = np.empty((b - a, self.dim), np.float64)
        ident = kind != KIND_COPY
        centres = np.empty((int(ident.sum()), self.dim), np.float64)
        from_db = kind[ident] == KIND_LEAKED_IDENTITY
        centres[from_db] = self._centres(_STREAM_DB_CENTRES, labels[ident][from_db])
        centres[~from_db] = self._centres(_STREAM_Q_CENTRES, labels[ident][~from_db] - self.n_database_identities)
        out[ident] = self._image_rows(centres, quality[ident], noise[ident])
        copies = ~ident
        if copies.any():
            src = self._copy_sources()[self._copy_target[a:b][copies]]
            c = float(self.spec.copy_cosine)
            out[copies] = c * src + math.sqrt(1.0 - c * c) * _orthogonal_unit(noise[copies], src)
        return out

    def _copy_sources(self) -> np.ndarray:
        """float64 [n_planted, D]: the database rows the planted copies copy (blocks not generated yet are
        generated once, here)."""
        missing = np.unique(self.planted[~self._copy_sources_have, 1] // ROW_BLOCK)
        for block in missing:
            self._database_block(int(block))
        return self._copy_sources_rows

    def _chunk(self, which: str, start: int, stop: int) -> np.ndarray:
        n_rows = self.shapes[which][0]
        if not 0 <= start <= stop <= n_rows:
            raise ValueError(f"{which} rows [{start}, {stop}) out of range [0, {n_rows})")
        make = self._database_block if which == "database" else self._query_block
        parts = []
        for block in range(start // ROW_BLOCK, (stop - 1) // ROW_BLOCK + 1 if stop > start else start // ROW_BLOCK):
            a = block * ROW_BLOCK
            parts.append(make(block)[max(start - a, 0):stop - a].astype(np.float32))
        if not parts:
            return np.zeros((0, self.dim), np.float32)
        return np.concatenate(parts)

    def database(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """float32 [stop - start, D] unit rows of the database (identity-contiguous)."""
        return self._chunk("database", start, int(self.spec.database_rows) if stop is None else stop)

    def queries(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """float32 [stop - start, D] unit rows of the query set."""
        return self._chunk("queries", start, int(self.spec.query_rows) if stop is None else stop)

    def iter_chunks(self, which: str, chunk_rows: int = 65536) -> Iterator[tuple[int, np.ndarray]]:
        """Yields (start row, float32 chunk) over the whole "queries" or "database" set."""
        if which not in self.shapes:
            raise ValueError(f"which must be 'queries' or 'database', got {which!r}")
        if chunk_rows < 1:
            raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
        n_rows = self.shapes[which][0]
        for a in range(0, n_rows, chunk_rows):
            yield a, self._chunk(which, a, min(a + chunk_rows, n_rows))

    def save_npy(self, path: str, which: str, chunk_rows: int = 16384) -> str:
        """Writes the "queries" or "database" set as a float32 .npy, chunk by chunk (memory: one chunk), through
        the project's atomic writer (a temp file renamed into place). Returns the file's sha256."""
        return write_npy_chunks(path, self.shapes[which], (chunk for _, chunk in self.iter_chunks(which, chunk_rows)))


def write_npy_chunks(path: str, shape: tuple[int, int], chunks: Iterable[np.ndarray]) -> str:
    """Streams float32 row chunks (in order, together exactly ``shape``) into a .npy file written atomically
    (files.py's temp-file-and-rename writer; the 64-byte-padded v1.0 header keeps the data aligned for
    in-place use). Memory: one chunk. Returns the file's sha256. Raises ValueError if the rows do not add up."""
    shape = (int(shape[0]), int(shape[1]))

    def produce(f) -> None:
        np.lib.format.write_array_header_1_0(
            f, {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)), "fortran_order": False, "shape": shape})
        rows = 0
        for chunk in chunks:
            chunk = np.ascontiguousarray(chunk, np.float32)
            if chunk.ndim != 2 or chunk.shape[1] != shape[1]:
                raise ValueError(f"{path}: chunk of shape {chunk.shape} does not fit rows of width {shape[1]}")
            rows += len(chunk)
            if rows > shape[0]:
                raise ValueError(f"{path}: more than {shape[0]} rows supplied")
            f.write(chunk.data)
        if rows != shape[0]:
            raise ValueError(f"{path}: {rows} rows supplied, {shape[0]} declared")

    return files.atomic_write_stream(path, produce)


def make_identity_embeddings(spec: IdentitySpec) -> tuple[np.ndarray, np.ndarray, IdentityEmbeddings]:
    """In-memory (queries float32 [nq, D], database float32 [ndb, D], generator with labels and planted pairs)
    for sizes that fit in memory; use IdentityEmbeddings.save_npy / iter_chunks for large ones."""
    gen = IdentityEmbeddings(spec)
    return gen.queries(), gen.database(), gen
