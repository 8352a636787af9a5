"""Shared test setup: CPU-only JAX with 8 forced host devices (multi-device paths), float32 matmuls."""

import os

# Must be set before jax is imported anywhere in the test process.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
_flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in _flags:
    os.environ["XLA_FLAGS"] = (_flags + " --xla_force_host_platform_device_count=8").strip()

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from tests.seeds import draw_seed  # noqa: E402


@pytest.fixture
def rng():
    """A fresh random generator per test (seed drawn from the OS and printed with a failure).

    ``SYNLEAK_TEST_SEED=N`` replays one seed: how a failure seen in CI is reproduced, and how a test is swept over
    many seeds to check that a bound cannot fail by chance.
    """
    return np.random.default_rng(draw_seed("rng"))
