"""Identity leakage between a synthetic and a real embedding set (Otroshi Shahreza & Marcel), calibrated.

From the exact top-k neighbours both ways (``neighbours.py``): for every synthetic image its top-k real
neighbours and for every real image its top-k synthetic neighbours; a pair matches at ``tau(FMR)`` when
``score > tau``. Arrays in, results out.

Exact counts at each threshold:
* synthetic images that match some real image: top-1 real score > tau;
* distinct real images matched by some synthetic image: top-1 synthetic score (reverse direction) > tau;
* distinct real identities matched (when the real set is labelled);
* the ranked list of matching pairs: the union of both directions' top-k pairs above tau. It holds every matching
  pair unless a query has more than k matches; ``truncated_*`` counts such queries (raise ``k`` to see all).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from synleak_jax.attack.neighbours import Neighbours
from synleak_jax import units


@dataclasses.dataclass
class LeakageAtThreshold:
    fmr: float
    tau: float
    tau_native: float
    source: str
    n_synthetic: int
    n_real: int
    synthetic_matched: int
    real_images_matched: int
    real_identities_matched: int | None
    real_identities_total: int | None
    n_pairs: int
    truncated_synthetic_queries: int  # synthetic images whose k-th real neighbour still matches
    truncated_real_queries: int
    pairs: dict  # columns: syn_idx, real_idx (int32; int64 past 2^31 rows), score (float32), ranked by score desc
    per_synthetic_class: list[dict] | None = None
    per_real_identity: list[dict] | None = None

    def summary(self) -> dict:
        d = {k: v for k, v in dataclasses.asdict(self).items() if k not in ("pairs", "per_synthetic_class",
                                                                          "per_real_identity")}
        d["synthetic_matched_fraction"] = self.synthetic_matched / max(self.n_synthetic, 1)
        d["real_images_matched_fraction"] = self.real_images_matched / max(self.n_real, 1)
        return d


def match_pairs(nb: Neighbours, tau: float) -> dict:
    """Union of both directions' top-k pairs with score > tau, ranked by score desc then (syn, real) index."""
    fm = nb.syn_to_real_scores > tau
    s1 = np.nonzero(fm)[0]
    r1 = nb.syn_to_real_idx[fm]
    sc1 = nb.syn_to_real_scores[fm]
    rm = nb.real_to_syn_scores > tau
    r2 = np.nonzero(rm)[0]
    s2 = nb.real_to_syn_idx[rm]
    sc2 = nb.real_to_syn_scores[rm]
    # int32 rows and float32 scores (the neighbour lists' own precision): at scale every top-k pair of both
    # directions is above tau (200k x 100k: 3M pairs per threshold and real set), so the lists are held compactly.
    index = np.int32 if max(nb.syn_to_real_scores.shape[0], nb.real_to_syn_scores.shape[0]) < 2**31 else np.int64
    syn = np.concatenate([s1, s2]).astype(index)
    real = np.concatenate([r1, r2]).astype(index)
    sc = np.concatenate([sc1, sc2]).astype(np.float32)
    if syn.size:
        key = syn.astype(np.int64) * (int(real.max()) + 1) + real
        _, first = np.unique(key, return_index=True)
        syn, real, sc = syn[first], real[first], sc[first]
        order = np.lexsort((real, syn, -sc))
        syn, real, sc = syn[order], real[order], sc[order]
    return {"syn_idx": syn, "real_idx": real, "score": sc}


def leakage_at(
    nb: Neighbours,
    tau: float,
    *,
    fmr: float = float("nan"),
    source: str = "calibrated",
    real_labels: np.ndarray | None = None,
    syn_labels: np.ndarray | None = None,
) -> LeakageAtThreshold:
    """Exact leakage counts at one threshold (score units)."""
    ns, nr = nb.syn_to_real_scores.shape[0], nb.real_to_syn_scores.shape[0]
    syn_hit = nb.syn_to_real_scores[:, 0] > tau if nb.syn_to_real_scores.shape[1] else np.zeros(ns, bool)
    real_hit = nb.real_to_syn_scores[:, 0] > tau if nb.real_to_syn_scores.shape[1] else np.zeros(nr, bool)
    pairs = match_pairs(nb, tau)
    ids_matched = ids_total = None
    if real_labels is not None:
        rl = np.asarray(real_labels)
        known = rl >= 0
        ids_total = int(np.unique(rl[known]).size)
        ids_matched = int(np.unique(rl[real_hit & known]).size)
    out = LeakageAtThreshold(
        fmr=float(fmr), tau=float(tau), tau_native=float(units.to_native(nb.metric, tau)), source=source,
        n_synthetic=ns, n_real=nr, synthetic_matched=int(syn_hit.sum()), real_images_matched=int(real_hit.sum()),
        real_identities_matched=ids_matched, real_identities_total=ids_total, n_pairs=int(pairs["score"].size),
        truncated_synthetic_queries=int((nb.syn_to_real_scores[:, -1] > tau).sum()) if ns else 0,
        truncated_real_queries=int((nb.real_to_syn_scores[:, -1] > tau).sum()) if nr else 0,
        pairs=pairs)
    if syn_labels is not None:
        out.per_synthetic_class = per_synthetic_class(pairs, np.asarray(syn_labels), syn_hit, real_labels)
    if real_labels is not None:
        out.per_real_identity = per_real_identity(pairs, np.asarray(real_labels), real_hit)
    return out


def _group_index(labels: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Position of each label in the sorted array ``groups`` (every label is one of them)."""
    return np.searchsorted(groups, labels)


def _per_group(groups: np.ndarray, image_labels: np.ndarray, hit: np.ndarray, pair_group: np.ndarray,
               pair_other: np.ndarray, pair_score: np.ndarray) -> dict:
    """Per group (sorted distinct labels): images, images matched, distinct partners among the pairs, best pair
    score (NaN without pairs). Vectorised: O((n + pairs) log) whatever the number of groups (a loop over groups
    with a mask per group cost groups x pairs: 10k identities x 3M pairs in the 200k x 100k benchmark)."""
    g = groups.size
    images = np.bincount(_group_index(image_labels, groups), minlength=g)
    matched = np.bincount(_group_index(image_labels[hit], groups), minlength=g)
    partners = np.zeros(g, np.int64)
    best = np.full(g, np.nan)
    if pair_group.size:
        gi = _group_index(pair_group, groups)
        distinct = np.unique(gi * (int(pair_other.max()) + 1) + pair_other)
        partners = np.bincount(distinct // (int(pair_other.max()) + 1), minlength=g)
        np.fmax.at(best, gi, pair_score)
    return {"images": images, "matched": matched, "partners": partners, "best": best}


def per_synthetic_class(pairs: dict, syn_labels: np.ndarray, syn_hit: np.ndarray, real_labels=None) -> list[dict]:
    """Per synthetic class: images, images matched, distinct real images/identities matched, best score.
    Only classes with at least one match are listed (ranked by matched images, then class)."""
    syn_labels = np.asarray(syn_labels, np.int64)
    groups = np.unique(syn_labels)
    pl = syn_labels[pairs["syn_idx"]]
    st = _per_group(groups, syn_labels, syn_hit, pl, pairs["real_idx"], pairs["score"])
    ids = None
    if real_labels is not None:
        rl = np.asarray(real_labels, np.int64)[pairs["real_idx"]]
        known = rl >= 0
        ids = _per_group(groups, syn_labels, syn_hit, pl[known], rl[known] - rl[known].min(initial=0),
                         pairs["score"][known])["partners"]
    rows = []
    for j in np.nonzero(st["matched"])[0].tolist():
        row = {"class": int(groups[j]), "images": int(st["images"][j]), "images_matched": int(st["matched"][j]),
               "real_images_matched": int(st["partners"][j]),
               "best_score": None if np.isnan(st["best"][j]) else float(st["best"][j])}
        if ids is not None:
            row["real_identities_matched"] = int(ids[j])
        rows.append(row)
    rows.sort(key=lambda r: (-r["images_matched"], r["class"]))
    return rows


def per_real_identity(pairs: dict, real_labels: np.ndarray, real_hit: np.ndarray) -> list[dict]:
    """Per real identity with a match: images, images matched, synthetic images matching them, best score
    (ranked by matched images, then identity; unknown identities, label < 0, are left out)."""
    real_labels = np.asarray(real_labels, np.int64)
    groups = np.unique(real_labels)
    st = _per_group(groups, real_labels, real_hit, real_labels[pairs["real_idx"]], pairs["syn_idx"],
                    pairs["score"])
    rows = [{"identity": int(groups[j]), "images": int(st["images"][j]), "images_matched": int(st["matched"][j]),
             "synthetic_images_matching": int(st["partners"][j]),
             "best_score": None if np.isnan(st["best"][j]) else float(st["best"][j])}
            for j in np.nonzero(st["matched"])[0].tolist() if groups[j] >= 0]
    rows.sort(key=lambda r: (-r["images_matched"], r["identity"]))
    return rows


def filtered_synthetic(n_synthetic: int, leak: LeakageAtThreshold, nb: Neighbours) -> np.ndarray:
    """Indices of synthetic images that match NO real image at ``leak.tau`` (the remedy list)."""
    hit = nb.syn_to_real_scores[:, 0] > leak.tau if nb.syn_to_real_scores.shape[1] else np.zeros(n_synthetic, bool)
    return np.nonzero(~hit)[0]
