"""hostmem: aligned loading (the CPU backend then aliases instead of copying) and the glibc setting."""

import jax
import numpy as np
import pytest

from synleak_jax.search.engine import Source
from synleak_jax.search.hostmem import aligned_empty, is_aligned, limit_malloc_retention, load_npy_aligned


def test_load_npy_aligned_equals_np_load_and_is_aliased(rng, tmp_path):
    for shape, dtype in [((123, 37), np.float32), ((5,), np.int64), ((0, 4), np.float32), ((3, 2, 2), np.float16)]:
        x = rng.standard_normal(shape).astype(dtype)
        np.save(tmp_path / "x.npy", x)
        y = load_npy_aligned(tmp_path / "x.npy")
        assert (y.size == 0 or is_aligned(y)) and y.flags.c_contiguous
        assert y.dtype == x.dtype and y.shape == x.shape
        np.testing.assert_array_equal(y, x)
    x = rng.standard_normal((300, 64)).astype(np.float32)
    np.save(tmp_path / "db.npy", x)
    y = load_npy_aligned(tmp_path / "db.npy")
    assert jax.device_put(y).unsafe_buffer_pointer() == y.ctypes.data  # used in place, no copy


def test_load_npy_aligned_refuses_bad_files(tmp_path):
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="obj.npy: object arrays are refused"):
        load_npy_aligned(tmp_path / "obj.npy")
    np.save(tmp_path / "f.npy", np.asfortranarray(np.ones((4, 3), np.float32)))
    with pytest.raises(ValueError, match="f.npy: Fortran-ordered"):
        load_npy_aligned(tmp_path / "f.npy")
    np.save(tmp_path / "t.npy", np.ones((100, 8), np.float32))
    raw = (tmp_path / "t.npy").read_bytes()
    (tmp_path / "t.npy").write_bytes(raw[:-40])
    with pytest.raises(ValueError, match=r"t.npy: truncated .npy file \(3160 of 3200"):
        load_npy_aligned(tmp_path / "t.npy")
    (tmp_path / "n.npy").write_bytes(b"not a numpy file at all")
    with pytest.raises(ValueError, match="n.npy: not a readable .npy file"):
        load_npy_aligned(tmp_path / "n.npy")


def test_aligned_inputs_used_in_place_others_copied_once(rng):
    import jax

    from synleak_jax.search.engine import make_mesh, put_replicated

    x = aligned_empty((200, 48))
    x[:] = rng.standard_normal(x.shape)
    assert jax.device_put(x).unsafe_buffer_pointer() == x.ctypes.data
    assert Source(x, "database").aligned_host() is x
    one = make_mesh(jax.devices()[:1])
    assert put_replicated(one, x).addressable_shards[0].data.unsafe_buffer_pointer() == x.ctypes.data  # aliased
    raw = np.empty(200 * 48 + 1, np.float32)[1:].reshape(200, 48)  # 4 bytes off: never 64-byte aligned
    raw[:] = x
    assert not is_aligned(raw)
    host = Source(raw, "database").aligned_host(chunk_rows=64)
    assert host is not raw and is_aligned(host)
    np.testing.assert_array_equal(host, x)
    half = Source(x.astype(np.float16), "database").aligned_host()
    assert half.dtype == np.float32
    np.testing.assert_array_equal(half, x.astype(np.float16).astype(np.float32))
    raw[77, 3] = np.inf
    with pytest.raises(ValueError, match="database row 77 contains NaN or inf"):
        Source(raw, "database").aligned_host(chunk_rows=64)


def test_limit_malloc_retention_applies_on_glibc():
    assert limit_malloc_retention() is True  # this machine runs glibc
