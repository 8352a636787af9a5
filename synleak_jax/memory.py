"""This process's memory, as the audit's estimates and the benchmarks measure it (Linux ``/proc``).

* :func:`resident_mb`: the resident set now (``VmRSS``).
* :func:`peak_resident_mb`: its peak (``VmHWM``). Not ``getrusage``'s ``ru_maxrss``: Linux keeps that across
  ``execve``, so a worker started by a large parent reports the parent's peak (measured: an 800 MB parent gave its
  child ru_maxrss 795 MB, VmHWM 11 MB).
* :func:`reset_peak`: starts a new peak from the current resident set (``/proc/self/clear_refs``, Linux >= 4.0),
  so one phase's peak can be measured after an earlier, larger one.

Memory-mapped files count once their pages are read (embedding stores are read whole by every pass over them).
Where ``/proc`` is missing the functions return ``nan`` (peak: ``ru_maxrss``) and :func:`reset_peak` False.
"""

from __future__ import annotations

import math
import resource


def _status_mb(field: str) -> float:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024.0  # kB
    except OSError:
        pass
    return math.nan


def resident_mb() -> float:
    """Resident set size of this process now (MB = 2^20 bytes)."""
    return _status_mb("VmRSS")


def peak_resident_mb() -> float:
    """Peak resident set size of this process since it started or since the last :func:`reset_peak` (MB)."""
    peak = _status_mb("VmHWM")
    if math.isnan(peak):  # not Linux: the best there is
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    return peak


def reset_peak() -> bool:
    """Resets the peak to the current resident set; False where the kernel does not offer it."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False
