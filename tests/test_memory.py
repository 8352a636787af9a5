"""synleak_jax/memory.py against the kernel's own accounting: an allocation of known size moves the numbers."""

import numpy as np
import pytest

from synleak_jax import memory


def test_resident_and_peak_follow_a_known_allocation():
    if not memory.reset_peak():
        pytest.skip("the kernel offers no peak reset (/proc/self/clear_refs)")
    before = memory.resident_mb()
    assert 0 < before <= memory.peak_resident_mb() + 1
    block = np.ones(64 << 20, np.uint8)  # 64 MiB, every page touched
    assert memory.resident_mb() - before >= 60
    del block
    peak = memory.peak_resident_mb()
    assert peak - before >= 60  # the peak keeps the allocation after it is freed
    memory.reset_peak()
    assert memory.peak_resident_mb() < peak - 30  # ... until the peak is reset to the current resident set
