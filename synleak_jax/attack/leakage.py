"""Identity leakage between a synthetic and a real embedding set (Otroshi Shahreza & Marcel), calibrated.

For every synthetic image its exact top-k real neighbours (and, the other direction, for every real image its
top-k synthetic neighbours); a pair matches at ``tau(FMR)`` when ``score > tau``.

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

from synleak_jax.attack import neighbours
from synleak_jax.attack import scores as S


@dataclasses.dataclass
class Neighbours:
    """Top-k both ways. Scores float64 (cosine or -distance), indices into the other set."""

    metric: str
    syn_to_real_scores: np.ndarray  # [Ns, k]
    syn_to_real_idx: np.ndarray  # [Ns, k]
    real_to_syn_scores: np.ndarray  # [Nr, k]
    real_to_syn_idx: np.ndarray  # [Nr, k]


def compute_neighbours(synthetic, real, k: int, metric: str) -> Neighbours:
    """Exact top-k neighbours in both directions (``synthetic`` [Ns, D], ``real`` [Nr, D])."""
    fs, fi = neighbours.topk_scores(synthetic, real, k, metric)
    rs, ri = neighbours.topk_scores(real, synthetic, k, metric)
    return Neighbours(metric, fs, fi, rs, ri)


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
    pairs: dict  # columns: syn_idx, real_idx, score (all int64/float64 arrays, ranked by score desc)
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
    syn = np.concatenate([s1, s2]).astype(np.int64)
    real = np.concatenate([r1, r2]).astype(np.int64)
    sc = np.concatenate([sc1, sc2]).astype(np.float64)
    if syn.size:
        key = syn * (int(real.max()) + 1) + real
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
        fmr=float(fmr), tau=float(tau), tau_native=float(S.to_native(nb.metric, tau)), source=source,
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


def per_synthetic_class(pairs: dict, syn_labels: np.ndarray, syn_hit: np.ndarray, real_labels=None) -> list[dict]:
    """Per synthetic class: images, images matched, distinct real images/identities matched, best score.
    Only classes with at least one match are listed (ranked by matched images)."""
    rows = []
    classes, counts = np.unique(syn_labels, return_counts=True)
    n_by_class = dict(zip(classes.tolist(), counts.tolist()))
    pl = syn_labels[pairs["syn_idx"]] if pairs["syn_idx"].size else np.zeros(0, np.int64)
    for c in np.unique(syn_labels[syn_hit]).tolist():
        sel = pl == c
        real = pairs["real_idx"][sel]
        row = {"class": int(c), "images": int(n_by_class[c]), "images_matched": int((syn_hit & (syn_labels == c)).sum()),
               "real_images_matched": int(np.unique(real).size),
               "best_score": float(pairs["score"][sel].max()) if sel.any() else None}
        if real_labels is not None:
            rl = np.asarray(real_labels)[real]
            row["real_identities_matched"] = int(np.unique(rl[rl >= 0]).size)
        rows.append(row)
    rows.sort(key=lambda r: (-r["images_matched"], r["class"]))
    return rows


def per_real_identity(pairs: dict, real_labels: np.ndarray, real_hit: np.ndarray) -> list[dict]:
    """Per real identity with a match: images, images matched, synthetic images matching them, best score."""
    rows = []
    classes, counts = np.unique(real_labels, return_counts=True)
    n_by_class = dict(zip(classes.tolist(), counts.tolist()))
    pl = real_labels[pairs["real_idx"]] if pairs["real_idx"].size else np.zeros(0, np.int64)
    for c in np.unique(real_labels[real_hit]).tolist():
        if c < 0:
            continue
        sel = pl == c
        rows.append({"identity": int(c), "images": int(n_by_class[c]),
                     "images_matched": int((real_hit & (real_labels == c)).sum()),
                     "synthetic_images_matching": int(np.unique(pairs["syn_idx"][sel]).size),
                     "best_score": float(pairs["score"][sel].max()) if sel.any() else None})
    rows.sort(key=lambda r: (-r["images_matched"], r["identity"]))
    return rows


def filtered_synthetic(n_synthetic: int, leak: LeakageAtThreshold, nb: Neighbours) -> np.ndarray:
    """Indices of synthetic images that match NO real image at ``leak.tau`` (the remedy list)."""
    hit = nb.syn_to_real_scores[:, 0] > leak.tau if nb.syn_to_real_scores.shape[1] else np.zeros(n_synthetic, bool)
    return np.nonzero(~hit)[0]
