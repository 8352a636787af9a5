"""Identity relation of a class-conditional synthetic dataset to its real classes (SFace privacy test).

Synthetic class ``c`` was generated from real class ``c``. Real images of class c are references, synthetic
images of class c probes: *genuine* = same label, *impostor* = different labels, over ALL real x synthetic pairs
(tile-engine passes: a histogram with exact counts and moments, then exact counts above every threshold). Reported next to the real-vs-real distributions: means,
standard deviations, EER, decidability d', the share of same-label pairs accepted at the real-calibrated
tau(FMR) (1 - FNMR) and the impostor pairs accepted there, and rank-1 identification of each synthetic class
among the real classes with class-mean templates.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from synleak_jax.attack import calibration as calibration_lib
from synleak_jax import units
from synleak_jax.attack import neighbours, pairs, stats


def class_templates(x, labels: np.ndarray, metric: str, chunk: int = 65536) -> tuple[np.ndarray, np.ndarray]:
    """Class-mean templates. Returns (classes [C] sorted, templates float64 [C, D]); cosine templates are
    re-normalised to unit length."""
    labels = np.asarray(labels, np.int64)
    keep = labels >= 0
    classes = np.unique(labels[keep])
    pos = np.searchsorted(classes, labels)
    acc = np.zeros((classes.size, x.shape[1]), np.float64)
    cnt = np.zeros(classes.size, np.int64)
    for s in range(0, x.shape[0], chunk):
        blk = np.asarray(x[s : s + chunk], np.float64)
        k = keep[s : s + chunk]
        np.add.at(acc, pos[s : s + chunk][k], blk[k])
        np.add.at(cnt, pos[s : s + chunk][k], 1)
    t = acc / np.maximum(cnt, 1)[:, None]
    if metric == "cosine":
        t /= np.maximum(np.linalg.norm(t, axis=1, keepdims=True), 1e-12)
    return classes, t


def rank1_identification(real, real_labels, syn, syn_labels, metric: str) -> dict:
    """Each synthetic class template against all real class templates: rank-1 hit when its nearest real class is
    its own label. Only synthetic classes whose label exists among the real classes are scored."""
    rc, rt = class_templates(real, real_labels, metric)
    sc, st = class_templates(syn, syn_labels, metric)
    scorable = np.isin(sc, rc)
    if not scorable.any():
        return {"n_classes": 0, "rank1": None, "note": "no synthetic class label exists among the real labels"}
    _, idx = neighbours.topk(st[scorable].astype(np.float32), rt.astype(np.float32), 1, metric=metric)
    hits = rc[idx[:, 0]] == sc[scorable]
    return {"n_classes": int(scorable.sum()), "rank1": float(hits.mean()), "n_real_classes": int(rc.size),
            "chance": 1.0 / rc.size}


@dataclasses.dataclass
class IdentityRelation:
    metric: str
    hist: pairs.PairHistogram  # coarse (plots); moments over all pairs
    eer: float | None
    decidability: float | None
    at_thresholds: list[dict]
    rank1: dict

    def to_dict(self) -> dict:
        mg, sg = self.hist.moments("genuine")
        mi, si = self.hist.moments("impostor")
        return {"n_genuine_pairs": self.hist.n_genuine, "n_impostor_pairs": self.hist.n_impostor,
                "genuine_mean": calibration_lib._num(units.to_native(self.metric, mg)), "genuine_std": calibration_lib._num(sg),
                "impostor_mean": calibration_lib._num(units.to_native(self.metric, mi)), "impostor_std": calibration_lib._num(si),
                "eer": calibration_lib._num(self.eer), "decidability": calibration_lib._num(self.decidability),
                "at_thresholds": self.at_thresholds, "rank1_identification": self.rank1}


def identity_relation(real, real_labels, syn, syn_labels, calibration: calibration_lib.Calibration, *, metric: str,
                      nbins: int = 1 << 16, plot_bins: int = 256, mesh=None) -> IdentityRelation:
    """Genuine (same label) vs impostor (different label) real-vs-synthetic score distributions."""
    bins = pairs.Bins(*pairs.score_range(real, syn, metric), nbins)
    hist = pairs.histogram(real, real_labels, metric, bins, y=syn, y_labels=syn_labels, mesh=mesh,
                           progress="identity relation histogram")
    mg, sg = hist.moments("genuine")
    mi, si = hist.moments("impostor")
    taus = list(calibration.thresholds)
    rows = []
    if taus:
        _, above = pairs.count_above(real, real_labels, metric, [t.tau for t in taus], y=syn, y_labels=syn_labels,
                                     mesh=mesh, progress="identity relation counts")
        for t, (i_above, g_above) in zip(taus, above):
            rows.append({"fmr": t.fmr, "source": t.source, "tau_native": t.tau_native,
                         "same_label_accepted": (int(g_above) / hist.n_genuine) if hist.n_genuine else None,
                         "fnmr": (1 - int(g_above) / hist.n_genuine) if hist.n_genuine else None,
                         "different_label_accepted": (int(i_above) / hist.n_impostor) if hist.n_impostor else None,
                         "real_vs_real_fnmr": t.fnmr})
    return IdentityRelation(
        metric=metric, hist=hist.coarsen(plot_bins),
        eer=calibration_lib.exact_eer_of_pairs(real, real_labels, metric, bins, hist, y=syn, y_labels=syn_labels, mesh=mesh),
        decidability=stats.decidability(mg, sg, mi, si) if hist.n_genuine and hist.n_impostor else None,
        at_thresholds=rows, rank1=rank1_identification(real, real_labels, syn, syn_labels, metric))
