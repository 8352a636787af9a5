"""files.py under faults (issue #13, findings 9 and 10): the atomic writers leave the previous file intact and no
temporary file after any failure (an exception in the producer, ENOSPC on a full tmpfs, EFBIG under RLIMIT_FSIZE,
EROFS); a stage of the cache is one atomic unit that is reused only under its key and recomputed (never raised)
when its file is damaged."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from synleak_jax import files
from synleak_jax.files import StageCache, atomic_save_npy, atomic_save_npz, atomic_write

ROOT = Path(__file__).resolve().parents[1]
BIG = 256 * 1024  # more than the 64 KiB tmpfs / file-size limit below


def _writers(big: bool):
    """(name, call(dest)) for the three public writers, writing a small or a BIG payload."""
    n = BIG if big else 100
    arr = np.arange(n // 8, dtype=np.int64)
    return [("atomic_write", lambda d: atomic_write(d, b"x" * n)),
            ("atomic_save_npy", lambda d: atomic_save_npy(d, arr)),
            ("atomic_save_npz", lambda d: atomic_save_npz(d, a=arr, b=arr[:10]))]


def _assert_only(directory, names: set[str]):
    assert set(os.listdir(directory)) == names, sorted(os.listdir(directory))


def test_writers_return_the_sha256_of_what_they_wrote(tmp_path):
    for name, write in _writers(big=False):
        dest = tmp_path / f"{name}.out"
        assert write(str(dest)) == files.sha256_file(str(dest))
    np.testing.assert_array_equal(np.load(tmp_path / "atomic_save_npy.out"), np.arange(12))


@pytest.mark.parametrize("exc", [RuntimeError("producer failed"), KeyboardInterrupt(), OSError(errno.ENOSPC, "full")])
def test_producer_failure_leaves_previous_file_and_no_temp(tmp_path, exc):
    """The mechanism all three writers share: bytes are already in the temp file when the producer raises."""
    dest = tmp_path / "out.bin"
    atomic_write(str(dest), b"previous")

    def produce(f):
        f.write(b"half of the new content")
        raise exc

    with pytest.raises(type(exc)):
        files.atomic_write_stream(str(dest), produce)
    assert dest.read_bytes() == b"previous"
    _assert_only(tmp_path, {"out.bin"})


def test_npy_and_npz_failures_midway_leave_nothing(tmp_path):
    # np.save writes the header, then refuses the object array: a failure inside the producer
    atomic_save_npy(str(tmp_path / "a.npy"), np.arange(3))
    with pytest.raises(ValueError, match="allow_pickle"):
        atomic_save_npy(str(tmp_path / "a.npy"), np.array([{"x": 1}], dtype=object))
    np.testing.assert_array_equal(np.load(tmp_path / "a.npy"), np.arange(3))
    # npz: object arrays are refused (np.savez would pickle them)
    atomic_save_npz(str(tmp_path / "b.npz"), x=np.arange(3))
    with pytest.raises(ValueError, match="object dtype"):
        atomic_save_npz(str(tmp_path / "b.npz"), x=np.arange(3), y=np.array([None, 1], dtype=object))
    with np.load(tmp_path / "b.npz") as z:
        assert z.files == ["x"]
    _assert_only(tmp_path, {"a.npy", "b.npz"})


@pytest.fixture
def tiny_tmpfs(tmp_path):
    """A 64 KiB tmpfs mounted for the test (needs root: skipped elsewhere)."""
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_enospc_on_a_full_tmpfs_leaves_previous_files_and_no_temp(tiny_tmpfs):
    previous = {}
    for name, write in _writers(big=False):
        write(str(tiny_tmpfs / name))
        previous[name] = (tiny_tmpfs / name).read_bytes()
    for name, write in _writers(big=True):
        with pytest.raises(OSError) as e:
            write(str(tiny_tmpfs / name))
        assert e.value.errno == errno.ENOSPC
        assert (tiny_tmpfs / name).read_bytes() == previous[name]
    _assert_only(tiny_tmpfs, set(previous))
    # read-only: EROFS before anything is created
    subprocess.run(["mount", "-o", "remount,ro", str(tiny_tmpfs)], check=True)
    for name, write in _writers(big=False):
        with pytest.raises(OSError) as e:
            write(str(tiny_tmpfs / name))
        assert e.value.errno == errno.EROFS
    _assert_only(tiny_tmpfs, set(previous))


def test_stage_save_on_a_full_tmpfs_keeps_the_previous_stage(tiny_tmpfs):
    cache = StageCache(str(tiny_tmpfs))
    cache.save("calibration", "key-1", {"n": 1}, {"x": np.arange(10)})
    with pytest.raises(OSError) as e:
        cache.save("calibration", "key-2", {"n": 2}, {"x": np.arange(BIG)})
    assert e.value.errno == errno.ENOSPC
    _assert_only(tiny_tmpfs, {"calibration.npz"})
    value, arrays = cache.load("calibration", "key-1")
    assert value == {"n": 1} and np.array_equal(arrays["x"], np.arange(10))
    assert cache.load("calibration", "key-2") is None


_EFBIG_SCRIPT = textwrap.dedent("""
    import json, os, resource, signal, sys
    import numpy as np
    from synleak_jax.files import StageCache, atomic_save_npy, atomic_save_npz, atomic_write
    out = sys.argv[1]
    atomic_write(os.path.join(out, "w"), b"previous")
    atomic_save_npy(os.path.join(out, "a.npy"), np.arange(3))
    StageCache(out).save("stage", "old", {"v": 1}, {"x": np.arange(3)})
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG instead of killing us
    resource.setrlimit(resource.RLIMIT_FSIZE, (65536, 65536))
    errors = []
    for call in (lambda: atomic_write(os.path.join(out, "w"), b"y" * 300000),
                 lambda: atomic_save_npy(os.path.join(out, "a.npy"), np.zeros(40000)),
                 lambda: StageCache(out).save("stage", "new", {"v": 2}, {"x": np.zeros(40000)})):
        try:
            call()
            errors.append(None)
        except OSError as e:
            errors.append(e.errno)
    print(json.dumps(errors))
""")


def test_efbig_under_rlimit_fsize_leaves_previous_files_and_no_temp(tmp_path):
    """A write failing part-way through in the kernel (no root needed): RLIMIT_FSIZE below the payload."""
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    p = subprocess.run([sys.executable, "-c", _EFBIG_SCRIPT, str(tmp_path)], capture_output=True, text=True,
                       env=env, timeout=120)
    assert p.returncode == 0, p.stderr[-3000:]
    assert json.loads(p.stdout.strip().splitlines()[-1]) == [errno.EFBIG] * 3
    _assert_only(tmp_path, {"w", "a.npy", "stage.npz"})
    assert (tmp_path / "w").read_bytes() == b"previous"
    np.testing.assert_array_equal(np.load(tmp_path / "a.npy"), np.arange(3))
    value, arrays = StageCache(str(tmp_path)).load("stage", "old")
    assert value == {"v": 1} and np.array_equal(arrays["x"], np.arange(3))


# ------------------------------------------------------------------------------------------------ StageCache


def test_stage_with_another_key_is_recomputed(tmp_path, rng):
    cache = StageCache(str(tmp_path))
    x = rng.standard_normal((7, 3))
    cache.save("scan", "key-a", {"tau": 0.5, "n": [1, 2]}, {"x": x, "idx": np.arange(7)})
    value, arrays = cache.load("scan", "key-a")
    assert value == {"tau": 0.5, "n": [1, 2]} and np.array_equal(arrays["x"], x) and set(arrays) == {"x", "idx"}
    assert cache.load("scan", "key-b") is None  # other settings: recomputed
    cache.save("scan", "key-b", {"tau": 0.7}, {"x": x[:2]})
    assert cache.load("scan", "key-a") is None  # the new key replaced the old one as a whole
    value, arrays = cache.load("scan", "key-b")
    assert value == {"tau": 0.7} and set(arrays) == {"x"} and np.array_equal(arrays["x"], x[:2])
    _assert_only(tmp_path, {"scan.npz"})


def test_damaged_stage_is_recomputed_never_raised(tmp_path, rng):
    """Every truncated length and a flipped bit at every byte offset of a stage file: load() returns None (the
    stage is recomputed) or exactly the stored content (a change the format does not read, e.g. a zip timestamp);
    it never raises and never returns different numbers."""
    cache = StageCache(str(tmp_path))
    x = rng.standard_normal((5, 4))
    value = {"n_pairs": 193, "tau": 0.25}
    cache.save("leak", "key", value, {"x": x, "ids": np.arange(5)})
    path = tmp_path / "leak.npz"
    original = path.read_bytes()
    damaged = [original[:n] for n in range(len(original))]
    for pos in range(len(original)):
        b = bytearray(original)
        b[pos] ^= 1 << int(rng.integers(0, 8))
        damaged.append(bytes(b))
    damaged += [b"", b"PK\x03\x04" + bytes(100), rng.integers(0, 256, 3000, dtype=np.uint8).tobytes()]
    recomputed = same = 0
    for data in damaged:
        path.write_bytes(data)
        hit = cache.load("leak", "key")
        if hit is None:
            recomputed += 1
            continue
        got_value, arrays = hit
        assert got_value == value and set(arrays) == {"x", "ids"}
        assert np.array_equal(arrays["x"], x) and np.array_equal(arrays["ids"], np.arange(5))
        same += 1
    print(f"{len(damaged)} damaged stage files: {recomputed} recomputed, {same} read back unchanged, 0 raised")
    assert recomputed + same == len(damaged) and recomputed > len(damaged) // 2


def test_stage_save_failure_keeps_the_previous_stage(tmp_path):
    cache = StageCache(str(tmp_path))
    cache.save("s", "k1", {"v": 1}, {"x": np.arange(4)})
    with pytest.raises(ValueError, match="object dtype"):
        cache.save("s", "k2", {"v": 2}, {"x": np.array([object()], dtype=object)})
    with pytest.raises(TypeError):  # a value JSON cannot hold fails before anything is written
        cache.save("s", "k2", {"v": object()}, {"x": np.arange(4)})
    _assert_only(tmp_path, {"s.npz"})
    value, arrays = cache.load("s", "k1")
    assert value == {"v": 1} and np.array_equal(arrays["x"], np.arange(4))
