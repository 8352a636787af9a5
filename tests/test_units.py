"""units.py: score conventions (similarity scores vs native units)."""

import numpy as np
import pytest

from synleak_jax import units


def test_native_units_round_trip():
    assert units.to_native("euclidean", -0.6) == 0.6
    assert units.from_native("euclidean", 0.6) == -0.6
    assert units.to_native("cosine", 0.3) == 0.3
    np.testing.assert_array_equal(units.to_native("euclidean", np.array([-0.5, 0.25])), [0.5, -0.25])
    assert units.short_unit("euclidean") == "distance" and units.more_similar_is("euclidean") == "lower"
    with pytest.raises(ValueError, match="metric"):
        units.check_metric("manhattan")
