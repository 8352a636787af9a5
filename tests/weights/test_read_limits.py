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
    with pytest.raises(_Error, match="a character device"):
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
