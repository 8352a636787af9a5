"""PNG plots of an audit (matplotlib, Agg backend: no display needed).

All score axes are in the matcher's own units (cosine similarity, or Euclidean distance for dlib). Legends sit
below the axes, never over the data (the tail near the thresholds is what a reader looks at).
"""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from synleak_jax import units  # noqa: E402
from synleak_jax.files import atomic_write  # noqa: E402


def _density(edges_score: np.ndarray, counts: np.ndarray, metric: str):
    """Bin centres in native units and densities (per unit) of a histogram over score-unit edges."""
    counts = np.asarray(counts, np.float64)
    edges = np.asarray(edges_score, np.float64)
    centres = units.to_native(metric, (edges[:-1] + edges[1:]) / 2)
    widths = np.abs(np.diff(edges))
    tot = counts.sum()
    dens = counts / (tot * widths) if tot else counts
    return centres, dens


def _legend_below(ax, ncol: int = 2) -> None:
    """The legend under the axes (outside them), in ``ncol`` columns; ``bbox_inches="tight"`` keeps it in the PNG."""
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=ncol, frameon=False)


def _save(fig, path: str) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    atomic_write(path, buf.getvalue())
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
        ax.axvline(v, color="k", ls=["--", ":", "-."][i % 3], lw=1, label=f"tau at {label} ({v:.4g})")
    ax.set_yscale("log")
    ax.set_xlabel(units.native_unit(metric))
    ax.set_ylabel("density (log)")
    ax.set_title(f"{matcher}: pair score distributions")
    ax.grid(alpha=0.25)
    _legend_below(ax)
    return _save(fig, path)


def roc_loglog(path: str, matcher: str, curves: list[tuple[str, np.ndarray, np.ndarray, float]],
               n_nonmembers: int | None = None) -> str:
    """Membership ROC on log-log axes. curves: (label, fpr, tpr, auc); with ``n_nonmembers`` the FPRs below
    1/n_nonmembers (which this many non-members cannot resolve) are shaded."""
    fig, ax = plt.subplots(figsize=(4.8, 4.4))
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
    if n_nonmembers:
        ax.axvspan(max(lo, 1e-6) / 2, 1.0 / n_nonmembers, color="0.85", zorder=0,
                   label=f"FPR < 1/{n_nonmembers:,}: not resolvable")
    ax.set_xlabel("false positive rate (non-members called members)")
    ax.set_ylabel("true positive rate (members found)")
    ax.set_title(f"{matcher}: membership inference ROC")
    ax.grid(alpha=0.25, which="both")
    _legend_below(ax, ncol=1)
    return _save(fig, path)


def tails(path: str, matcher: str, rows: list[dict]) -> str:
    """Bars of the real-vs-real and real-vs-generated shares above each threshold (log scale)."""
    fig, ax = plt.subplots(figsize=(6, 3.6))
    labels = [_wrap(r.get("threshold") or (r["source"] if r["source"] != "calibrated" else "FMR %g" % r["fmr"]))
              for r in rows]
    x = np.arange(len(rows))
    rr = [max(r["real_vs_real_tail"], 1e-12) for r in rows]
    rg = [max(r["real_vs_generated_tail"], 1e-12) for r in rows]
    ax.bar(x - 0.2, rr, 0.4, label="real vs real impostors")
    ax.bar(x + 0.2, rg, 0.4, label="real vs generated")
    ax.set_xticks(x, labels, fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("share of pairs matching")
    ax.set_title(f"{matcher}: upper tails")
    _legend_below(ax)
    return _save(fig, path)


def _wrap(label: str, width: int = 16) -> str:
    """A tick label broken into lines of about ``width`` characters (long published-threshold names)."""
    words, lines, cur = label.split(), [], ""
    for w in words:
        if cur and len(cur) + 1 + len(w) > width:
            lines.append(cur)
            cur = w
        else:
            cur = f"{cur} {w}".strip()
    return "\n".join(lines + [cur])
