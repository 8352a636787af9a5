"""Runs a snippet in a fresh interpreter with a timeout and an optional address-space limit (RLIMIT_AS): the one
runner behind every memory-bound and no-hang test of hostile inputs (``tests/weights/hostile.run_limited`` calls a
reader through it).

Why a subprocess: a regression that blocks (a FIFO opened for reading waits for a writer forever) must fail the
test at the timeout instead of hanging the suite, and a memory limit must not constrain the test runner itself.

Why RLIMIT_AS (and not only the peak RSS): the limit is set to the interpreter's current virtual size plus a
budget, after its imports, so any allocation of more than the budget fails *at once* with ``MemoryError``. A bound
checked this way is deterministic and does not depend on pages being touched (a read of a sparse file allocates
its buffer before any page is filled) or on the allocator returning memory.

The peak RSS is reported beside it for the figures, from ``VmHWM`` in ``/proc/self/status``: ``ru_maxrss`` is no
use here, because Linux carries it over ``execve`` from the process that forked the child (the test runner,
hundreds of MiB), so it reports the parent's peak. ``peak_over_limit_kib`` is the growth of ``VmHWM`` from the
moment the limit was set: what the code under test materialised.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_PRELUDE = '''
import json, resource, sys

def _vm_kib(field):
    """A field of /proc/self/status in KiB (VmSize: address space now, VmHWM: peak resident set)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0

def limit_address_space(budget_mib):
    """Caps the address space at the current virtual size + budget_mib MiB (may be fractional); returns the cap in
    bytes, and records the peak RSS so far (result["hwm_at_limit_kib"]) as the baseline of peak_over_limit_kib."""
    cap = _vm_kib("VmSize") * 1024 + int(budget_mib * 1024 * 1024)
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    result["vm_base_kib"] = _vm_kib("VmSize")
    result["hwm_at_limit_kib"] = _vm_kib("VmHWM")
    result["limit_bytes"] = cap
    return cap

result = {}
'''

_EPILOGUE = '''
result["vm_hwm_kib"] = _vm_kib("VmHWM")
result["vm_peak_kib"] = _vm_kib("VmPeak")
if "hwm_at_limit_kib" in result:
    result["peak_over_limit_kib"] = result["vm_hwm_kib"] - result["hwm_at_limit_kib"]
print("@@RESULT@@" + json.dumps(result))
'''


def run_isolated(body: str, timeout: float = 120.0, env: dict[str, str] | None = None) -> dict:
    """Runs ``body`` (which fills the dict ``result`` and may call ``limit_address_space(mib)``) in a new
    interpreter with this checkout on ``PYTHONPATH`` and ``env`` added to the environment; returns ``result`` plus
    ``vm_hwm_kib`` (the child's peak RSS, KiB), ``vm_peak_kib`` and, when the limit was set, ``vm_base_kib``,
    ``hwm_at_limit_kib``, ``limit_bytes`` and ``peak_over_limit_kib``.

    Raises AssertionError with the child's output if it fails, and ``subprocess.TimeoutExpired`` if it hangs.
    """
    child_env = dict(os.environ)
    child_env.update(env or {})
    child_env["PYTHONPATH"] = REPO_ROOT + os.pathsep + child_env.get("PYTHONPATH", "")
    child_env.setdefault("JAX_PLATFORMS", "cpu")
    child_env.setdefault("OPENBLAS_NUM_THREADS", "1")
    code = _PRELUDE + textwrap.dedent(body) + _EPILOGUE
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout,
                          env=child_env, cwd=REPO_ROOT)
    marker = [ln for ln in proc.stdout.splitlines() if ln.startswith("@@RESULT@@")]
    assert proc.returncode == 0 and marker, (
        f"child failed (rc {proc.returncode})\n--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-4000:]}")
    result = json.loads(marker[-1][len("@@RESULT@@"):])
    if "peak_over_limit_kib" in result:  # the figure of each memory-bound test, visible with pytest -s
        test = os.environ.get("PYTEST_CURRENT_TEST", "?").rsplit(" ", 1)[0]
        print(f"RLIMIT_AS run: peak RSS {result['peak_over_limit_kib'] / 1024:.1f} MiB over its baseline, under a "
              f"budget of {(result['limit_bytes'] - result['vm_base_kib'] * 1024) / (1 << 20):.0f} MiB [{test}]")
    return result
