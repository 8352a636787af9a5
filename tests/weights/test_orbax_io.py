"""Tests for synleak_jax/weights/orbax_io.py: bit-exact round trips, metadata, overwrite protection."""

import json

import ml_dtypes
import numpy as np
import pytest

from synleak_jax.weights import orbax_io


def _variables(rng):
    return {
        "params": {
            "conv1": {"kernel": rng.normal(size=(3, 3, 3, 8)).astype(np.float32)},
            "fc": {"kernel": rng.normal(size=(16, 4)).astype(np.float32), "bias": rng.normal(size=4).astype(np.float32)},
            "half": rng.normal(size=5).astype(ml_dtypes.bfloat16),
        },
        "batch_stats": {"bn1": {"mean": rng.normal(size=8).astype(np.float32),
                                "var": rng.uniform(0.5, 2, size=8).astype(np.float32)},
                        "count": rng.integers(0, 2**40, size=()).astype(np.int64)},
    }


def _meta():
    return {"model_name": "iresnet18", "input_spec": {"height": 112, "width": 112}, "source_file": "x.pth",
            "source_sha256": "ab" * 32, "format": "torch_zip"}


def _flat(tree, prefix=""):
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}/"))
        else:
            out[prefix + k] = v
    return out


def test_round_trip_bit_exact(tmp_path, rng):
    v = _variables(rng)
    out = orbax_io.save_variables(tmp_path / "ck", v, _meta())
    assert orbax_io.is_weights_dir(out)
    got, meta = orbax_io.restore_variables(tmp_path / "ck")
    fv, fg = _flat(v), _flat(got)
    assert set(fv) == set(fg)
    for k in fv:
        assert isinstance(fg[k], np.ndarray) and fg[k].dtype == fv[k].dtype and fg[k].shape == fv[k].shape, k
        assert fg[k].tobytes() == fv[k].tobytes(), k  # bit-exact
    for k, val in _meta().items():
        assert meta[k] == val
    assert meta["synleak_version"] and meta["format_version"] == orbax_io.FORMAT_VERSION
    assert meta["variables"]["params/conv1/kernel"] == [[3, 3, 3, 8], "float32"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # temporary directory cleaned up


def test_overwrite_rules(tmp_path, rng):
    target = tmp_path / "ck"
    orbax_io.save_variables(target, _variables(rng), _meta())
    v2 = _variables(rng)
    with pytest.raises(FileExistsError, match="already exists"):
        orbax_io.save_variables(target, v2, _meta())
    orbax_io.save_variables(target, v2, dict(_meta(), model_name="iresnet50"), overwrite=True)
    got, meta = orbax_io.restore_variables(target)
    assert meta["model_name"] == "iresnet50"
    np.testing.assert_array_equal(got["params"]["fc"]["kernel"], v2["params"]["fc"]["kernel"])
    # A foreign non-empty directory is never replaced, even with overwrite.
    foreign = tmp_path / "mydata"
    foreign.mkdir()
    (foreign / "precious.txt").write_text("keep")
    with pytest.raises(FileExistsError, match="not a synleak weights directory"):
        orbax_io.save_variables(foreign, v2, _meta(), overwrite=True)
    assert (foreign / "precious.txt").read_text() == "keep"


def test_errors(tmp_path, rng):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        orbax_io.restore_variables(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(orbax_io.CheckpointError, match="not a synleak weights directory"):
        orbax_io.restore_variables(tmp_path / "empty")
    with pytest.raises(orbax_io.CheckpointError, match="model_name"):
        orbax_io.save_variables(tmp_path / "x", _variables(rng), {"format": "torch_zip"})
    with pytest.raises(orbax_io.CheckpointError, match="JSON"):
        orbax_io.save_variables(tmp_path / "y", _variables(rng), dict(_meta(), bad=object()))
    # Metadata tampered with: recorded shapes no longer match the arrays.
    ck = orbax_io.save_variables(tmp_path / "ck", _variables(rng), _meta())
    meta = json.loads((ck / orbax_io.METADATA_FILE).read_text())
    meta["variables"]["params/fc/bias"] = [[5], "float32"]
    (ck / orbax_io.METADATA_FILE).write_text(json.dumps(meta))
    with pytest.raises(orbax_io.CheckpointError, match="differ"):
        orbax_io.restore_variables(ck)
