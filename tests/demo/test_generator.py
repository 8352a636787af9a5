"""The demo generator: deterministic split, training reduces the loss, sampling is seeded."""

import numpy as np

from synleak_jax.demo import generator as g


def test_lfw_faces_and_split():
    faces = g.lfw_faces()
    assert faces.shape == (100, 25, 25) and 0.0 <= faces.min() and faces.max() <= 1.0
    m, n = g.split_members(100, 50, seed=0)
    assert len(m) == len(n) == 50 and not set(m) & set(n) and set(m) | set(n) == set(range(100))
    m2, _ = g.split_members(100, 50, seed=0)
    np.testing.assert_array_equal(m, m2)


def test_train_and_sample_deterministic():
    x = g.resize(g.lfw_faces()[:8], g.SIZE)
    assert x.shape == (8, 32, 32)
    a = g.train(x, steps=30, seed=0)
    b = g.train(x, steps=30, seed=0)
    assert a.final_loss == b.final_loss
    short = g.train(x, steps=2, seed=0)
    assert a.final_loss < short.final_loss  # training does something
    s1, src1 = g.sample(a, 5, bandwidth=0.5, seed=3)
    s2, src2 = g.sample(a, 5, bandwidth=0.5, seed=3)
    assert s1.shape == (5, 32, 32) and 0 <= s1.min() and s1.max() <= 1
    np.testing.assert_array_equal(s1, s2)
    np.testing.assert_array_equal(src1, src2)
