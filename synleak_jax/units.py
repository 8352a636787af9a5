"""Score conventions shared by ``attack/`` (which computes) and ``report/`` (which writes).

* A *score* is a similarity: larger means more alike. Cosine matchers: score = inner product of the
  L2-normalised embeddings. Euclidean matchers (dlib): score = -distance, so that one "larger is more similar"
  code path serves both.
* A pair *matches* at threshold ``tau`` when ``score > tau`` (strictly).
* Everything a person reads (report.json, pairs.csv, HTML, terminal) is in the matcher's *native* unit:
  cosine similarity, or Euclidean distance (smaller = more similar) for Euclidean matchers.
"""

from __future__ import annotations

import numpy as np

METRICS = ("cosine", "euclidean")


def check_metric(metric: str) -> str:
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    return metric


def to_native(metric: str, score):
    """Score (larger = more similar) -> the matcher's own units (cosine similarity, or Euclidean distance)."""
    check_metric(metric)
    if np.isscalar(score) or score is None:
        if score is None:
            return None
        return -float(score) if metric == "euclidean" else float(score)
    a = np.asarray(score, dtype=np.float64)
    return -a if metric == "euclidean" else a


def from_native(metric: str, value):
    """Inverse of :func:`to_native` (both maps are their own inverse)."""
    return to_native(metric, value)


def native_unit(metric: str) -> str:
    """A reader's name of the native unit."""
    check_metric(metric)
    return "euclidean distance (smaller = more similar)" if metric == "euclidean" else "cosine similarity"


def short_unit(metric: str) -> str:
    """The unit as one word (pairs.csv's ``unit`` column)."""
    check_metric(metric)
    return "distance" if metric == "euclidean" else "cosine"


def more_similar_is(metric: str) -> str:
    """'higher' (cosine) or 'lower' (distance): how to read a native value."""
    check_metric(metric)
    return "lower" if metric == "euclidean" else "higher"
