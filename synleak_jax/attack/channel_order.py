"""Which colour order does a labelled dataset's matcher see best? The channel-order check (issue #17).

A matcher fed channel-swapped faces still produces embeddings, only worse ones: genuine pairs (two images of one
person) score lower and impostors relatively higher, so leakage is under-counted and nothing says so. On a
labelled sample embedded twice — in the dataset's colour order as given and with red and blue swapped — this
compares how well genuine and impostor pairs separate:

* d' = |mean_g - mean_i| / sqrt((var_g + var_i) / 2) over all pairs of the sample (genuine: same label), and
* the exact EER (``stats.exact_eer``),

and decides with an identity bootstrap of the d' difference (identities resampled with replacement, seeded; the
images of one person are not independent): the other order is **clearly better** when the lower end of the
one-sided interval of ``d'(other) - d'(given)`` at ``confidence`` is above zero and the other order's EER is
lower too. Measured (tests/attack/test_channel_order.py, seed 3): LFW crops coloured with a skin-tone curve, 100
identities x 5 augmented views, real dlib matcher: correct order d' 2.68 / EER 0.088, swapped d' 2.41 / EER 0.113;
the identity-bootstrap lower bound of d'(other) - d'(given) is +0.154 for the swapped folder (switched to bgr) and
-0.368 for the correct one (kept). Cost: 2 x 500 dlib embeddings per dataset (docs/audit.md).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from synleak_jax import units
from synleak_jax.attack import stats
from synleak_jax.files import to_jsonable


@dataclasses.dataclass
class ChannelOrderCheck:
    """The check's result (JSON-ready with :meth:`to_dict`)."""

    given_order: str  # "rgb" | "bgr": the dataset's order as configured/resolved
    other_order: str
    n_images: int
    n_identities: int
    dprime_given: float
    dprime_other: float
    eer_given: float
    eer_other: float
    dprime_difference_ci_low: float  # one-sided lower bound of d'(other) - d'(given)
    confidence: float
    other_clearly_better: bool
    reading: str

    def to_dict(self) -> dict:
        return to_jsonable(dataclasses.asdict(self))


def _pair_scores(emb: np.ndarray, metric: str) -> np.ndarray:
    e = np.asarray(emb, np.float64)
    if units.check_metric(metric) == "cosine":
        return e @ e.T
    sq = (e * e).sum(1)
    return -np.sqrt(np.maximum(sq[:, None] + sq[None, :] - 2 * e @ e.T, 0.0))


def _dprime(scores: np.ndarray, same: np.ndarray, w: np.ndarray) -> float:
    """d' of the upper-triangle pairs with pair weights ``w`` (bootstrap multiplicities)."""
    def moments(mask):
        ww = w[mask]
        s = scores[mask]
        tot = ww.sum()
        mu = (ww * s).sum() / tot
        return mu, (ww * (s - mu) ** 2).sum() / tot

    mg, vg = moments(same & (w > 0))
    mi, vi = moments(~same & (w > 0))
    den = np.sqrt((vg + vi) / 2.0)
    return float(abs(mg - mi) / den) if den > 0 else float("inf")


def compare_channel_orders(emb_given: np.ndarray, emb_other: np.ndarray, labels: np.ndarray, *, metric: str,
                           given_order: str, confidence: float = 0.95, replicates: int = 300, seed: int = 0
                           ) -> ChannelOrderCheck:
    """Compares genuine/impostor separation of the same labelled images embedded in two colour orders.

    Args:
      emb_given, emb_other: [n, D] embeddings of the same n images (given order; red and blue swapped).
      labels: int [n] identities (>= 0); at least two identities with two images each.
      metric: "cosine" or "euclidean"; given_order: "rgb" or "bgr" (named in the result).
    """
    labels = np.asarray(labels, np.int64)
    if emb_given.shape != emb_other.shape or emb_given.shape[0] != labels.size:
        raise ValueError("compare_channel_orders: embeddings and labels must describe the same images")
    ids, codes, counts = np.unique(labels, return_inverse=True, return_counts=True)
    if ids.size < 2 or (counts >= 2).sum() < 1:
        raise ValueError("compare_channel_orders: needs two identities and one identity with two images")
    iu = np.triu_indices(labels.size, 1)
    same = codes[iu[0]] == codes[iu[1]]
    s_given = _pair_scores(emb_given, metric)[iu]
    s_other = _pair_scores(emb_other, metric)[iu]
    ones = np.ones(same.size)
    d_given, d_other = _dprime(s_given, same, ones), _dprime(s_other, same, ones)
    eer_given = stats.exact_eer(s_given[same], s_given[~same]).eer
    eer_other = stats.exact_eer(s_other[same], s_other[~same]).eer
    # Identity bootstrap of the paired difference: a pair's weight is the product of its identities' counts.
    rng = np.random.default_rng(seed)
    diffs = np.empty(replicates)
    for r in range(replicates):
        mult = np.bincount(rng.integers(0, ids.size, ids.size), minlength=ids.size).astype(np.float64)
        w = mult[codes[iu[0]]] * mult[codes[iu[1]]]
        if not (w[same] > 0).any() or not (w[~same] > 0).any():
            diffs[r] = 0.0
            continue
        diffs[r] = _dprime(s_other, same, w) - _dprime(s_given, same, w)
    low = float(np.quantile(diffs, 1.0 - confidence))
    better = bool(low > 0 and eer_other < eer_given)
    other = "bgr" if given_order == "rgb" else "rgb"
    if better:
        reading = (f"the other colour order ({other}) separates genuine from impostor pairs clearly better (d' "
                   f"{d_other:.2f} vs {d_given:.2f}, EER {eer_other:.3f} vs {eer_given:.3f}): the images are most "
                   f"likely stored in {other} order")
    else:
        reading = (f"the given order ({given_order}) is not beaten by the other (d' {d_given:.2f} vs {d_other:.2f}, "
                   f"EER {eer_given:.3f} vs {eer_other:.3f})")
    return ChannelOrderCheck(given_order, other, int(labels.size), int(ids.size), d_given, d_other, eer_given,
                             eer_other, low, float(confidence), better, reading)


def sample_identities(labels: np.ndarray, identities: int, per_identity: int, seed: int = 0) -> np.ndarray:
    """Record ids of a seeded sample: up to ``identities`` identities with at least ``per_identity`` images each,
    ``per_identity`` images of each (sorted). Empty when fewer than two identities qualify."""
    labels = np.asarray(labels, np.int64)
    rng = np.random.default_rng(seed)
    ids, counts = np.unique(labels[labels >= 0], return_counts=True)
    ok = ids[counts >= per_identity]
    if ok.size < 2:
        return np.zeros(0, np.int64)
    chosen = rng.choice(ok, min(identities, ok.size), replace=False)
    out = [rng.choice(np.nonzero(labels == c)[0], per_identity, replace=False) for c in chosen]
    return np.sort(np.concatenate(out)).astype(np.int64)
