"""The demo generator: deterministic split, training reduces the loss, sampling is seeded."""

import numpy as np

from synleak_jax.demo import generator as generator_lib


def test_lfw_faces_and_split():
    faces = generator_lib.lfw_faces()
    assert faces.shape == (100, 25, 25) and 0.0 <= faces.min() and faces.max() <= 1.0
    m, n = generator_lib.split_members(100, 50, seed=0)
    assert len(m) == len(n) == 50 and not set(m) & set(n) and set(m) | set(n) == set(range(100))
    m2, _ = generator_lib.split_members(100, 50, seed=0)
    np.testing.assert_array_equal(m, m2)


def test_train_and_sample_deterministic():
    x = generator_lib.resize(generator_lib.lfw_faces()[:8], generator_lib.SIZE)
    assert x.shape == (8, 32, 32)
    a = generator_lib.train(x, steps=30, seed=0)
    b = generator_lib.train(x, steps=30, seed=0)
    assert a.final_loss == b.final_loss
    short = generator_lib.train(x, steps=2, seed=0)
    assert a.final_loss < short.final_loss  # training does something
    s1, src1 = generator_lib.sample(a, 5, bandwidth=0.5, seed=3)
    s2, src2 = generator_lib.sample(a, 5, bandwidth=0.5, seed=3)
    assert s1.shape == (5, 32, 32) and 0 <= s1.min() and s1.max() <= 1
    np.testing.assert_array_equal(s1, s2)
    np.testing.assert_array_equal(src1, src2)


def test_training_logs_a_start_line_and_progress_with_rate_and_eta(caplog):
    """Start-up is not silent: a line before the first step compiles, then steps/s and ETA (every update here)."""
    import logging
    import re

    x = generator_lib.resize(generator_lib.lfw_faces()[:4], generator_lib.SIZE)
    with caplog.at_level(logging.INFO, logger="absl"):  # an earlier in-process CLI may have set absl to WARNING
        generator_lib.train(x, steps=3, seed=0, progress_every_s=0.0)
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == "demo generator: training 3 steps on 4 images (the first step compiles)"
    progress = [ln for ln in lines if re.fullmatch(r"demo generator: \d/3 steps, [\d.]+ steps/s, ETA \d+ s", ln)]
    assert [int(ln.split(": ")[1].split("/")[0]) for ln in progress] == [1, 2, 3]
