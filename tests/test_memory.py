"""synleak_jax/memory.py against the kernel's own accounting: a mapping of known size moves the numbers."""

import mmap

import pytest

from synleak_jax import memory


def test_resident_and_peak_follow_a_known_allocation():
    if not memory.reset_peak():
        pytest.skip("the kernel offers no peak reset (/proc/self/clear_refs)")
    before = memory.resident_mb()
    assert 0 < before <= memory.peak_resident_mb() + 1
    # A fresh anonymous mapping, every page written: new resident pages whatever malloc has kept from earlier
    # tests (numpy's allocator may hand back heap memory that is already resident).
    block = mmap.mmap(-1, 64 << 20)
    for offset in range(0, len(block), mmap.PAGESIZE):
        block[offset] = 1
    assert memory.resident_mb() - before >= 60
    block.close()
    peak = memory.peak_resident_mb()
    assert peak - before >= 60  # the peak keeps the mapping after it is unmapped
    memory.reset_peak()
    assert memory.peak_resident_mb() < peak - 30  # ... until the peak is reset to the current resident set
