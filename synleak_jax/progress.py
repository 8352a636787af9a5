"""Progress lines for long jobs: count, rate and ETA, logged on process 0 at most every few seconds.

One implementation for every stage that takes longer than a few seconds (embedding, the demo generator, the face
check, the colour-order check). A leaf module (jax and absl only) so that data/, embed/ and demo/ can all use it.
"""

from __future__ import annotations

import math
import time

import jax
from absl import logging


class Progress:
    """Logs rows/s and ETA on process 0 at most every ``every_s`` seconds (``unit``: what a row is, e.g. "images"
    or "steps"; ``scope``: appended to the count, " (this process)" for a process's share of a global job)."""

    def __init__(self, total_rows: int, every_s: float = 10.0, name: str = "embed", *, unit: str = "images",
                 scope: str = " (this process)"):
        self.total = int(total_rows)
        self.done = 0
        self.every_s = every_s
        self.name = name
        self.unit = unit
        self.scope = scope
        self.t0 = time.perf_counter()
        self._last = self.t0

    def update(self, rows: int) -> None:
        self.done += rows
        now = time.perf_counter()
        if now - self._last >= self.every_s and jax.process_index() == 0:
            self._last = now
            rate = self.done / max(now - self.t0, 1e-9)
            eta = (self.total - self.done) / rate if rate > 0 else math.inf
            logging.info("%s: %d/%d %s%s, %.1f %s/s, ETA %.0f s",
                         self.name, self.done, self.total, self.unit, self.scope, rate, self.unit, eta)

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0
