"""PNG plots of an audit (matplotlib, Agg backend: no display needed).

All score axes are in the matcher's own units (cosine similarity, or Euclidean distance for dlib).
"""

from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from synleak_jax.attack import scores as S  # noqa: E402


def _density(edges_score: np.ndarray, counts: np.ndarray, metric: str):
    """Bin centres in native units and densities (per unit) of a histogram over score-unit edges."""
    counts = np.asarray(counts, np.float64)
    edges = np.asarray(edges_score, np.float64)
    centres = S.to_native(metric, (edges[:-1] + edges[1:]) / 2)
    widths = np.abs(np.diff(edges))
    tot = counts.sum()
    dens = counts / (tot * widths) if tot else counts
    return centres, dens


def _save(fig, path: str) -> str:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=100, bbox_inches="tight")
    plt.close(fig)
    os.replace(tmp, path)
    return path


def score_histograms(path: str, matcher: str, metric: str, series: list[tuple[str, np.ndarray, np.ndarray]],
                     thresholds: list[tuple[str, float]]) -> str:
    """Overlaid score densities. series: (label, edges in score units [P+1], counts [P]); thresholds: (label,
    native value)."""
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    for label, edges, counts in series:
        if np.sum(counts) == 0:
            continue
        x, d = _density(edges, counts, metric)
        keep = d > 0
        ax.step(x[keep], d[keep], where="mid", label=f"{label} (n={int(np.sum(counts)):,})")
    for i, (label, v) in enumerate(thresholds):
        ax.axvline(v, color="k", ls=["--", ":", "-."][i % 3], lw=1, label=label)
    ax.set_yscale("log")
    ax.set_xlabel(S.native_unit(metric))
    ax.set_ylabel("density (log)")
    ax.set_title(f"{matcher}: pair score distributions")
    ax.legend(fontsize=7)
    return _save(fig, path)


def roc_loglog(path: str, matcher: str, curves: list[tuple[str, np.ndarray, np.ndarray, float]]) -> str:
    """Membership ROC on log-log axes. curves: (label, fpr, tpr, auc)."""
    fig, ax = plt.subplots(figsize=(5, 5))
    lo = 1.0
    for label, fpr, tpr, auc in curves:
        pos = fpr > 0
        lo = min(lo, fpr[pos].min() if pos.any() else 1.0)
        ax.step(np.clip(fpr, 1e-6, 1), np.clip(tpr, 1e-6, 1), where="post", label=f"{label} (AUC {auc:.3f})")
    g = np.logspace(np.log10(max(lo, 1e-6)), 0, 50)
    ax.plot(g, g, "k:", lw=1, label="chance")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(max(lo, 1e-6) / 2, 1.05)
    ax.set_ylim(max(lo, 1e-6) / 2, 1.05)
    ax.set_xlabel("false positive rate (non-members called members)")
    ax.set_ylabel("true positive rate (members found)")
    ax.set_title(f"{matcher}: membership inference ROC")
    ax.legend(fontsize=7, loc="lower right")
    return _save(fig, path)


def tails(path: str, matcher: str, rows: list[dict]) -> str:
    """Bars of the real-vs-real and real-vs-generated shares above each threshold (log scale)."""
    fig, ax = plt.subplots(figsize=(6, 3.6))
    labels = [f"{r['source'] if r['source'] != 'calibrated' else 'FMR %g' % r['fmr']}" for r in rows]
    x = np.arange(len(rows))
    rr = [max(r["real_vs_real_tail"], 1e-12) for r in rows]
    rg = [max(r["real_vs_generated_tail"], 1e-12) for r in rows]
    ax.bar(x - 0.2, rr, 0.4, label="real vs real impostors")
    ax.bar(x + 0.2, rg, 0.4, label="real vs generated")
    ax.set_xticks(x, labels, fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("share of pairs above threshold")
    ax.set_title(f"{matcher}: upper tails")
    ax.legend(fontsize=7)
    return _save(fig, path)
