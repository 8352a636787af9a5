"""Tests for synleak_jax/weights/read_limits.py: the read budget, its configuration, the metered unpickler."""

import collections
import io
import pickle

import numpy as np
import pytest

from synleak_jax.weights import read_limits as rl

MiB = 1 << 20


class _Error(ValueError):
    pass


def test_parse_byte_count():
    assert rl.parse_byte_count("123") == 123
    assert rl.parse_byte_count("512M") == 512 * MiB
    assert rl.parse_byte_count("1.5G") == 3 << 29
    assert rl.parse_byte_count("8GiB") == 8 << 30
    assert rl.parse_byte_count(" 2 k ") == 2048
    for bad in ("", "-1", "lots", "1.5.2G", "0", "12X"):
        with pytest.raises(ValueError):
            rl.parse_byte_count(bad)


def test_limit_precedence(monkeypatch):
    monkeypatch.delenv(rl.ENV_VAR, raising=False)
    assert rl.read_limit(1000) == rl.READ_MULTIPLE * 1000 + rl.READ_SLACK_BYTES
    monkeypatch.setenv(rl.ENV_VAR, "1G")
    assert rl.read_limit(1000) == 1 << 30
    assert rl.read_limit(1000, cap=5000) == 5000  # the argument wins over the environment
    with pytest.raises(ValueError):
        rl.read_limit(1000, cap=0)
    monkeypatch.setenv(rl.ENV_VAR, "nonsense")
    with pytest.raises(_Error, match=r"^f\.bin: \$SYNLEAK_MAX_READ_BYTES: not a byte count"):
        rl.ReadBudget("f.bin", 10, _Error)


def test_budget_refuses_past_the_limit_naming_the_file(monkeypatch):
    monkeypatch.delenv(rl.ENV_VAR, raising=False)
    budget = rl.ReadBudget("/x/w.pt", 1000, _Error)
    budget.charge(rl.READ_SLACK_BYTES, "a")
    budget.charge(4000, "b")  # exactly at the limit
    with pytest.raises(_Error, match=r"^/x/w\.pt: reading it would materialise more than .*4x its 1,000 bytes on disk"
                                     r".*c needs 1 more bytes"):
        budget.charge(1, "c")
    capped = rl.ReadBudget("/x/w.pt", 1000, _Error, cap=10)
    with pytest.raises(_Error, match="the cap of 10 bytes"):
        capped.charge(11, "d")
    grown = rl.ReadBudget("/x/m.onnx", 1000, _Error)
    grown.add_input(MiB)  # external data: the limit follows the total size on disk
    assert grown.limit == rl.READ_MULTIPLE * (1000 + MiB) + rl.READ_SLACK_BYTES
    assert "ran out of memory" in str(grown.out_of_memory())


def test_regular_file_size(tmp_path):
    f = tmp_path / "a.bin"
    f.write_bytes(b"x" * 7)
    assert rl.regular_file_size(str(f), _Error) == 7
    with pytest.raises(_Error, match="a directory, not a regular file"):
        rl.regular_file_size(str(tmp_path), _Error)
    with pytest.raises(_Error, match="a device, not a regular file"):
        rl.regular_file_size("/dev/zero", _Error)
    with pytest.raises(FileNotFoundError):
        rl.regular_file_size(str(tmp_path / "nope"), _Error)


def _unpickle(data: bytes, cap=None):
    budget = rl.ReadBudget("<test>", len(data), _Error, cap)
    return rl.BoundedUnpickler(io.BytesIO(data), budget).load(), budget


@pytest.mark.parametrize("protocol", range(0, pickle.HIGHEST_PROTOCOL + 1))
def test_metered_unpickler_gives_what_pickle_gives(protocol, rng):
    shared = [1, 2.5, "shared"]
    obj = {
        "ints": list(rng.integers(-(2**62), 2**62, 50).tolist()), "floats": rng.standard_normal(20).tolist(),
        "text": "naïve ☃ " * 10, "bytes": bytes(rng.integers(0, 256, 300, dtype=np.uint8)),
        "nested": [shared, (shared, {"k": shared}), {1, 2, 3}, frozenset({"a"})],
        "od": collections.OrderedDict(a=1, b=[None, True, False]), "big": 2**200, "empty": ((), [], {}, set()),
    }
    data = pickle.dumps(obj, protocol=protocol)
    got, budget = _unpickle(data)
    assert got == pickle.loads(data) == obj
    assert got["nested"][1][0] is got["nested"][0]  # memo references stay references
    assert 0 < budget.used < 40 * len(data) + 20_000


def test_metered_unpickler_refuses_opcode_amplification():
    # One byte per EMPTY_SET opcode, 216 bytes per set: 5 MB of pickle would build ~1 GB with pickle.loads.
    n = 5_000_000
    data = b"\x80\x04" + b"\x8f" * n + b"."
    assert pickle.loads(b"\x80\x04" + b"\x8f" * 10 + b".") == set()  # the opcode stream is valid pickle
    with pytest.raises(_Error, match="materialise more than"):
        _unpickle(data)
    # Memo references are charged as references: a list of 10^6 references to one string is fine.
    refs = b"\x80\x04]\x94(" + b"\x8c\x01x\x94" + b"h\x01" * 1_000_000 + b"e."
    got, budget = _unpickle(refs)
    assert len(got) == 1_000_001 and budget.used < 40 * len(refs)


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_honest_checkpoint_charges_about_twice_its_size(tmp_path, zip_format):
    """The module docstring's figure: a real state dict is charged ~2x its size (storages + the tensors handed
    to the converters + pickle objects), well inside the default 4x; so the multiple is not tight for honest
    files, and a cap below the real need refuses it (the budget is what the reader uses)."""
    torch = pytest.importorskip("torch")
    from synleak_jax.weights import torch_pickle as tp
    from tests.models.torch_refs_arcface import make_reference

    path = tmp_path / "mbf.pth"
    torch.save(make_reference("mobilefacenet").state_dict(), path, _use_new_zipfile_serialization=zip_format)
    size = path.stat().st_size
    assert len(tp.load_torch_file(path, max_read_bytes=int(2.3 * size))) > 100
    with pytest.raises(tp.TorchFileError, match="the cap of"):
        tp.load_torch_file(path, max_read_bytes=int(1.9 * size))


# --------------------------------------------------------------------------------------------------------------
# A file replaced after it was checked: the race between ``stat`` and ``open``. The swap is made real (a FIFO or
# a symlink sits at the path) and ``os.stat`` is made to answer as it would have before the swap, so the real
# ``open`` and ``fstat`` meet the swapped file. A reader that reopened by path without O_NONBLOCK would block on
# the FIFO forever: the alarm turns that into a failure.


@pytest.fixture
def swapped_fifo(tmp_path, monkeypatch):
    """(path of a FIFO, install) — ``install()`` makes ``os.stat`` of that path report a regular file."""
    import os
    import signal

    regular = tmp_path / "checked.bin"
    regular.write_bytes(b"\x80\x02}q\x00." * 10)
    fifo = tmp_path / "swapped.bin"
    os.mkfifo(fifo)
    real_stat = os.stat

    def stat_before_the_swap(path, *args, **kwargs):
        if os.fspath(path) == str(fifo):
            return real_stat(regular)
        return real_stat(path, *args, **kwargs)

    def on_alarm(signum, frame):  # pragma: no cover - only when a reader blocks
        raise AssertionError("blocked opening a FIFO swapped in after the check")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(20)
    yield str(fifo), lambda: monkeypatch.setattr(os, "stat", stat_before_the_swap)
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def test_open_regular_file_checks_the_descriptor(tmp_path, swapped_fifo):
    import os

    f = tmp_path / "a.bin"
    f.write_bytes(b"abc")
    opened, size = rl.open_regular_file(str(f), _Error)
    with opened:
        assert size == 3 and opened.read() == b"abc"
    link = tmp_path / "link.bin"
    os.symlink(f, link)
    with pytest.raises(_Error, match="symlink"):
        rl.open_regular_file(str(link), _Error, follow=False)  # the symlink itself: lstat says so
    fifo, install = swapped_fifo
    install()
    with pytest.raises(_Error, match=r"a FIFO \(named pipe\), not a regular file"):
        rl.open_regular_file(fifo, _Error)


def test_symlink_swapped_in_after_the_check_is_not_followed(tmp_path, monkeypatch):
    import os

    inside = tmp_path / "inside.bin"
    inside.write_bytes(b"inside")
    outside = tmp_path / "outside.bin"
    outside.write_bytes(b"secret")
    swapped = tmp_path / "swapped.bin"
    os.symlink(outside, swapped)
    real_stat = os.stat
    monkeypatch.setattr(os, "stat", lambda p, *a, **k: real_stat(inside) if os.fspath(p) == str(swapped)
                        else real_stat(p, *a, **k))
    with pytest.raises(_Error, match="cannot open it"):
        rl.open_regular_file(str(swapped), _Error, follow=False)


@pytest.mark.parametrize("reader", ["torch", "verification_bin", "dlib", "onnx", "weights_sniff"])
def test_every_reader_refuses_a_fifo_swapped_in_after_the_check(reader, swapped_fifo):
    from synleak_jax.data import rejects, verification
    from synleak_jax.weights import convert_dlib, loader, onnx_import, torch_pickle

    fifo, install = swapped_fifo
    call, error = {
        "torch": (torch_pickle.load_torch_file, torch_pickle.TorchFileError),
        "verification_bin": (verification.load_bin, rejects.DataError),
        "dlib": (convert_dlib.read_dlib_dat, convert_dlib.DlibFormatError),
        "onnx": (onnx_import.import_onnx, onnx_import.OnnxImportError),
        "weights_sniff": (loader.file_sha256, loader.WeightsFormatError),
    }[reader]
    install()
    with pytest.raises(error, match="FIFO"):
        call(fifo)


def test_readers_open_inputs_only_through_the_checked_open():
    """Every read of an untrusted weights or bin file goes through ``open_regular_file`` (or the data layer's
    ``safe_paths.open_regular``; both are ``files.open_checked``): a bare ``open(..., "rb")`` would reopen by path after the check."""
    import pathlib
    import re

    package = pathlib.Path(rl.__file__).parents[1]
    readers = sorted(package.glob("weights/*.py")) + [package / "data" / "verification.py",
                                                       package / "data" / "recordio.py"]
    bare = re.compile(r"""(?<![\w.])open\([^)]*["']rb?["']""")
    offenders = [f"{path.name}:{n}" for path in readers
                 for n, line in enumerate(path.read_text().splitlines(), 1) if bare.search(line)]
    assert offenders == []
