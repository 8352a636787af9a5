"""The suite's random seeds: fresh from the OS per draw, or ``SYNLEAK_TEST_SEED=N`` to replay one (printed with a
failure, so a failure seen in CI can be reproduced)."""

import os

import numpy as np


def draw_seed(what: str = "rng") -> int:
    fixed = os.environ.get("SYNLEAK_TEST_SEED")
    seed = int(fixed) if fixed else int(np.random.SeedSequence().entropy % (2**31))
    print(f"{what} seed: {seed}")
    return seed
