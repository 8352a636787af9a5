"""Runs a snippet in a fresh interpreter with a timeout and an optional address-space limit (RLIMIT_AS).

Why a subprocess: a regression that blocks (a FIFO opened for reading waits for a writer forever) must fail the
test at the timeout instead of hanging the suite, and a memory limit must not constrain the test runner itself.

Why RLIMIT_AS (and not only the peak RSS from ``getrusage``): the limit is set to the interpreter's current
virtual size plus a budget, after its imports, so any allocation of more than the budget fails *at once* with
``MemoryError``. A bound checked this way is deterministic and does not depend on pages being touched (a read of
a sparse file allocates its buffer before any page is filled) or on the allocator returning memory. The peak RSS
(``ru_maxrss``) is reported beside it for the figures.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

_PRELUDE = '''
import json, resource, sys

def _vm_kib(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0

def limit_address_space(budget_mib):
    """Caps the address space at the current virtual size + budget_mib MiB; returns the cap in bytes."""
    cap = _vm_kib("VmSize") * 1024 + int(budget_mib) * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    return cap

result = {}
'''

_EPILOGUE = '''
result["maxrss_kib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
result["vm_hwm_kib"] = _vm_kib("VmHWM")
print("@@RESULT@@" + json.dumps(result))
'''


def run_isolated(body: str, timeout: float = 120.0) -> dict:
    """Runs ``body`` (which fills the dict ``result`` and may call ``limit_address_space(mib)``) in a new
    interpreter with this checkout on ``PYTHONPATH``; returns ``result`` (plus ``maxrss_kib``/``vm_hwm_kib``).

    Raises AssertionError with the child's output if it fails, and ``subprocess.TimeoutExpired`` if it hangs.
    """
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ)
    env["PYTHONPATH"] = repo + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("JAX_PLATFORMS", "cpu")
    code = _PRELUDE + textwrap.dedent(body) + _EPILOGUE
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, env=env,
                          cwd=repo)
    marker = [ln for ln in proc.stdout.splitlines() if ln.startswith("@@RESULT@@")]
    assert proc.returncode == 0 and marker, (
        f"child failed (rc {proc.returncode})\n--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-4000:]}")
    return json.loads(marker[-1][len("@@RESULT@@"):])
