"""Tests for synleak_jax/weights/torch_pickle.py: real torch.save files in both formats, and hostile pickles."""

import argparse
import bz2
import collections
import copyreg
import functools
import io
import os
import pickle
import subprocess
import sys
import types
import zipfile
import zlib

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from synleak_jax.weights import torch_pickle as tp  # noqa: E402
from tests.weights import hostile  # noqa: E402

FORMATS = pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])


def _save(obj, path, zip_format):
    torch.save(obj, path, _use_new_zipfile_serialization=zip_format)
    return path


def _ref(t):
    """numpy value of a torch tensor; bfloat16/float8 compared bit-exactly through an integer view."""
    t = t.detach().resolve_conj().resolve_neg()
    if t.dtype in (torch.bfloat16, torch.float8_e4m3fn, torch.float8_e5m2):
        return t.view(torch.int16 if t.element_size() == 2 else torch.uint8).numpy(), True
    return t.numpy(), False


def _assert_same(got, t):
    ref, bits = _ref(t)
    assert isinstance(got, np.ndarray)
    assert got.shape == ref.shape
    if bits:
        assert got.dtype.itemsize == ref.dtype.itemsize and str(got.dtype) == str(t.dtype).replace("torch.", "")
        got = got.view(ref.dtype)
    else:
        assert got.dtype == ref.dtype, (got.dtype, ref.dtype)
    np.testing.assert_array_equal(got, ref)


def _random_tensors(rng):
    g = torch.Generator().manual_seed(int(rng.integers(2**31)))
    return {
        "f32": torch.randn(3, 5, generator=g),
        "f16": torch.randn(4, 2, generator=g).half(),
        "bf16": torch.randn(7, generator=g).bfloat16(),
        "f64": torch.randn(2, 3, 2, generator=g).double(),
        "i64": torch.randint(-(2**40), 2**40, (6,), generator=g),
        "i32": torch.randint(-(2**30), 2**30, (2, 3), generator=g, dtype=torch.int32),
        "i16": torch.randint(-1000, 1000, (5,), generator=g, dtype=torch.int16),
        "i8": torch.randint(-100, 100, (5,), generator=g, dtype=torch.int8),
        "u8": torch.randint(0, 255, (4, 4), generator=g, dtype=torch.uint8),
        "bool": torch.rand(9, generator=g) > 0.5,
        "c64": torch.randn(3, generator=g, dtype=torch.complex64),
        "u16": torch.randint(0, 60000, (5,), generator=g).to(torch.uint16),  # _rebuild_tensor_v3
        "f8": torch.randn(6, generator=g).to(torch.float8_e4m3fn),  # _rebuild_tensor_v3
        "scalar": torch.tensor(float(rng.normal())),
        "empty": torch.zeros(0, 3),
        "param": torch.nn.Parameter(torch.randn(2, 2, generator=g)),
        "frozen_param": torch.nn.Parameter(torch.randn(3, generator=g), requires_grad=False),
    }


@FORMATS
def test_every_dtype_matches_torch(tmp_path, rng, zip_format):
    tensors = _random_tensors(rng)
    path = _save(tensors, tmp_path / "t.pt", zip_format)
    got = tp.read_torch_pickle(path)
    assert set(got) == set(tensors)
    for k, t in tensors.items():
        _assert_same(got[k], t)
    if zip_format:  # torch's own loader agrees (it cannot read its legacy files with uint16/float8 storages)
        back = torch.load(path, weights_only=True)
        np.testing.assert_array_equal(back["f32"].numpy(), got["f32"])


@FORMATS
def test_views_strides_offsets_and_shared_storage(tmp_path, rng, zip_format):
    g = torch.Generator().manual_seed(int(rng.integers(2**31)))
    base = torch.randn(6, 8, generator=g)
    obj = collections.OrderedDict(
        base=base,
        transposed=base.t(),
        sliced=base[1:5:2, 3::2],
        row=base[4],
        expanded=torch.randn(1, 3, generator=g).expand(4, 3),  # stride 0
        flat_tail=base.view(-1)[17:29],
        conj=torch.randn(4, generator=g, dtype=torch.complex64).conj(),  # conj bit in metadata
        neg=torch.randn(4, generator=g, dtype=torch.complex64).conj().imag,  # neg bit
    )
    path = _save(obj, tmp_path / "v.pt", zip_format)
    got = tp.read_torch_pickle(path)
    assert isinstance(got, collections.OrderedDict) and list(got) == list(obj)
    for k, t in obj.items():
        _assert_same(got[k], t)
    # Shared storage stays shared (as torch does), offsets land on the right elements.
    assert np.shares_memory(got["base"], got["sliced"])
    assert got["transposed"].strides == (4, 32)


@FORMATS
def test_nested_containers_and_python_values(tmp_path, rng, zip_format):
    t = torch.randn(3)
    obj = {"list": [t, (t * 2, 3)], "epoch": 7, "name": "x", "lr": 0.5, "none": None, "b": b"\x00\xffraw",
           "set": {1, 2}, "ns": argparse.Namespace(depth=50, lr=0.1)}
    got = tp.read_torch_pickle(_save(obj, tmp_path / "n.pt", zip_format))
    _assert_same(got["list"][0], t)
    _assert_same(got["list"][1][0], t * 2)
    assert got["list"][1][1] == 3 and got["epoch"] == 7 and got["name"] == "x" and got["lr"] == 0.5
    assert got["none"] is None and got["b"] == b"\x00\xffraw" and got["set"] == {1, 2}
    assert isinstance(got["ns"], tp.Namespace) and got["ns"].depth == 50 and got["ns"].lr == 0.1


def _fake_lightning_attribute_dict(monkeypatch):
    """A class pickled under Lightning's module path, without installing Lightning."""
    names = ["pytorch_lightning", "pytorch_lightning.utilities", "pytorch_lightning.utilities.parsing"]
    for n in names:
        monkeypatch.setitem(sys.modules, n, types.ModuleType(n))

    class AttributeDict(dict):
        pass

    AttributeDict.__module__ = names[-1]
    AttributeDict.__qualname__ = "AttributeDict"
    sys.modules[names[-1]].AttributeDict = AttributeDict
    return AttributeDict


@FORMATS
def test_lightning_like_checkpoint(tmp_path, rng, monkeypatch, zip_format):
    attribute_dict = _fake_lightning_attribute_dict(monkeypatch)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(int(rng.integers(2**31)))))
    sd = {f"model.{k}": v for k, v in model.state_dict().items()}
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(2, 3, 8, 8)).sum().backward()
    opt.step()
    ckpt = {
        "epoch": 3,
        "global_step": 1200,
        "pytorch-lightning_version": "1.8.6",
        "state_dict": collections.OrderedDict(sd),
        "loops": {"fit_loop": {"state_dict": {}, "epoch_progress": {"total": {"ready": 4}}}},
        "callbacks": {"ModelCheckpoint{'monitor': 'val_acc'}": {"best_model_score": torch.tensor(0.93),
                                                                 "best_model_path": "/ckpt/best.ckpt"}},
        "optimizer_states": [opt.state_dict()],
        "lr_schedulers": [{"milestones": {8: 1, 12: 1}, "base_lrs": [0.1], "last_epoch": 3}],
        "hparams_name": "kwargs",
        "hyper_parameters": attribute_dict(arch="ir_18", head="adaface", m=0.4, gpus=[0, 1]),
    }
    path = _save(ckpt, tmp_path / "l.ckpt", zip_format)
    raw = tp.read_torch_pickle(path)
    assert isinstance(raw["hyper_parameters"], tp.AttributeDict)
    assert raw["hyper_parameters"]["arch"] == "ir_18" and raw["hyper_parameters"]["gpus"] == [0, 1]
    loaded = tp.load_torch_file(path)
    # Every key had "model." -> stripped; values equal torch's; num_batches_tracked (int64) kept.
    assert set(loaded) == set(model.state_dict())
    for k, v in model.state_dict().items():
        _assert_same(loaded[k], v)
        assert loaded[k].flags.c_contiguous


@FORMATS
def test_wrappers_and_prefix_stripping(tmp_path, rng, zip_format):
    g = torch.Generator().manual_seed(int(rng.integers(2**31)))
    sd = {"conv.weight": torch.randn(2, 3, generator=g).t(), "bn.running_mean": torch.randn(2, generator=g)}
    cases = {
        "plain": sd,
        "module": {f"module.{k}": v for k, v in sd.items()},
        "module_model": {f"module.model.{k}": v for k, v in sd.items()},
        "wrapped_state_dict": {"state_dict": {f"module.{k}": v for k, v in sd.items()}, "epoch": 2},
        "wrapped_model": {"model": sd, "optimizer": {"lr": 0.1}, "epoch": 9},
    }
    for name, obj in cases.items():
        got = tp.load_torch_file(_save(obj, tmp_path / f"{name}.pth", zip_format))
        assert set(got) == set(sd), name
        for k, v in sd.items():
            _assert_same(got[k], v)
            assert got[k].flags.c_contiguous
    # Not every key has the prefix -> nothing is stripped (AdaFace-style "model." + "head.kernel").
    mixed = {"model.a": torch.ones(1), "head.kernel": torch.zeros(2)}
    assert set(tp.load_torch_file(_save(mixed, tmp_path / "mixed.pt", zip_format))) == set(mixed)
    # strip_prefixes=() keeps keys as saved.
    got = tp.load_torch_file(tmp_path / "module.pth", strip_prefixes=())
    assert set(got) == {f"module.{k}" for k in sd}


def test_big_endian_zip_is_byteswapped(tmp_path, rng):
    t = {"a": torch.from_numpy(rng.normal(size=(3, 4)).astype(np.float32)),
         "b": torch.from_numpy(rng.integers(-(2**40), 2**40, size=5)), "c": torch.randn(3, dtype=torch.complex64),
         "d": torch.randn(4).bfloat16()}
    src = _save(t, tmp_path / "le.pt", True)
    dst = tmp_path / "be.pt"
    sizes = {"0": 4, "1": 8, "2": 4, "3": 2}  # storage keys in pickling order; complex swaps per component
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            data = zin.read(info)
            prefix, _, rest = info.filename.partition("/")
            if rest == "byteorder":
                data = b"big"
            elif rest.startswith("data/"):
                size = sizes[rest[5:]]
                data = np.frombuffer(data, np.dtype(f"u{size}")).byteswap().tobytes()
            zout.writestr(info.filename, data)
    ours = tp.read_torch_pickle(dst)
    theirs = torch.load(dst, weights_only=True)  # torch swaps too: our crafted file is a valid BE checkpoint
    for k in t:
        _assert_same(ours[k], t[k])
        _assert_same(ours[k], theirs[k])


# ------------------------------------------------------------------------------------------------------
# Hostile pickles: the reader must refuse with the global's name, and nothing may run.
# ------------------------------------------------------------------------------------------------------


class _Reduce:
    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


def _payloads(marker):
    m = str(marker)
    return {
        "posix.system": _Reduce(os.system, f"touch {m}"),
        "builtins.eval": _Reduce(eval, f"open({m!r}, 'w').close()"),
        "builtins.exec": _Reduce(exec, f"open({m!r}, 'w').close()"),
        "subprocess.Popen": _Reduce(subprocess.Popen, ["touch", m]),
        "functools.partial": _Reduce(functools.partial(os.system, f"touch {m}")),
        "builtins.getattr": _Reduce(getattr, 1, "real"),
    }


def _hand_pickles(marker):
    """Raw opcode streams (protocol tricks the pickler would not emit for us)."""
    cmd = f"touch {marker}".encode()
    return {
        # GLOBAL 'os system' + REDUCE (protocol 0 text form).
        "os.system": b"cos\nsystem\n(S'" + cmd + b"'\ntR.",
        # INST opcode: resolves a class/function by name and calls it.
        "posix.system": b"(S'" + cmd + b"'\niposix\nsystem\n.",
        # OBJ opcode with the callable pushed by GLOBAL.
        "subprocess.call": b"(csubprocess\ncall\n(S'touch'\nS'" + str(marker).encode() + b"'\nlo.",
        # STACK_GLOBAL (protocol 4): module and name as strings on the stack.
        "nt.system": b"\x80\x04\x8c\x02nt\x8c\x06system\x93\x8c\x04echo\x85R.",
        # copyreg._reconstructor (protocol 0/1 object reconstruction).
        "copyreg._reconstructor": b"ccopyreg\n_reconstructor\n(cbuiltins\nobject\ncbuiltins\nobject\nNtR.",
        # torch globals outside the allowlist.
        "torch.load": b"ctorch\nload\n(S'" + str(marker).encode() + b"'\ntR.",
        "torch.jit.load": b"ctorch.jit\nload\n(S'x'\ntR.",
        "torch.nn.modules.conv.Conv2d": b"\x80\x02ctorch.nn.modules.conv\nConv2d\n)\x81.",
    }


def _zip_with_pickle(tmp_path, payload_pickle, name):
    """A genuine torch zip checkpoint whose data.pkl is replaced by ``payload_pickle``."""
    src = _save({"w": torch.ones(3)}, tmp_path / f"{name}_src.pt", True)
    dst = tmp_path / f"{name}.pt"
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            data = payload_pickle if info.filename.endswith("/data.pkl") else zin.read(info)
            zout.writestr(info.filename, data)
    return dst


def _legacy_with_pickle(tmp_path, payload_pickle, name):
    head = b"".join(pickle.dumps(x, protocol=2) for x in (
        tp.MAGIC_NUMBER, tp.PROTOCOL_VERSION, {"protocol_version": 1001, "little_endian": True}))
    dst = tmp_path / f"{name}.pt"
    dst.write_bytes(head + payload_pickle + pickle.dumps([], protocol=2))
    return dst


def _all_hostile(marker):
    out = {name: pickle.dumps({"state_dict": {"w": obj}}, protocol=2) for name, obj in _payloads(marker).items()}
    out.update(_hand_pickles(marker))
    return out


@pytest.mark.parametrize("container", ["zip", "legacy"])
def test_hostile_pickles_are_refused_and_nothing_runs(tmp_path, container):
    marker = tmp_path / "pwned"
    for name, payload in _all_hostile(marker).items():
        fname = name.replace(".", "_")
        path = (_zip_with_pickle if container == "zip" else _legacy_with_pickle)(tmp_path, payload, fname)
        with pytest.raises(tp.ForbiddenGlobalError) as err:
            tp.load_torch_file(path)
        msg = str(err.value)
        assert f"'{name}'" in msg and str(path) in msg, msg
        assert not marker.exists(), f"{name}: payload ran"
    # Control: the same payload through the standard unpickler really does run (the test can fail).
    pickle.loads(pickle.dumps(_Reduce(os.system, f"touch {marker}")))
    assert marker.exists()


def test_whole_module_pickle_gives_hint(tmp_path):
    path = tmp_path / "model.pt"
    torch.save(torch.nn.Linear(2, 2), path)
    with pytest.raises(tp.ForbiddenGlobalError, match="whole pickled model"):
        tp.read_torch_pickle(path)


def test_extension_registry_goes_through_allowlist(tmp_path):
    marker = tmp_path / "pwned"
    copyreg.add_extension("posix", "system", 241)
    try:
        payload = b"\x80\x02\x82\xf1(X" + len(f"touch {marker}").to_bytes(4, "little") + f"touch {marker}".encode() + b"tR."
        path = _legacy_with_pickle(tmp_path, payload, "ext")
        with pytest.raises(tp.ForbiddenGlobalError, match="'posix.system'"):
            tp.read_torch_pickle(path)
    finally:
        copyreg.remove_extension("posix", "system", 241)
    assert not marker.exists()


def test_build_cannot_patch_allowed_objects(tmp_path):
    # BUILD with slot state on the OrderedDict class and on an allowed rebuild function.
    od = b"\x80\x02ccollections\nOrderedDict\nN}X\x05\x00\x00\x00itemsK\x01s\x86b."
    fn = b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\nN}X\x08\x00\x00\x00__call__K\x01s\x86b."
    for i, payload in enumerate((od, fn)):
        with pytest.raises(tp.TorchFileError):
            tp.read_torch_pickle(_legacy_with_pickle(tmp_path, payload, f"build{i}"))
    assert callable(collections.OrderedDict.items)
    assert list(collections.OrderedDict([(1, 2)]).items()) == [(1, 2)]
    assert callable(tp._ALLOWED[("torch._utils", "_rebuild_tensor_v2")].fn)


def test_out_of_bounds_view_is_refused(tmp_path):
    # A tensor whose size/stride reaches beyond its storage must not read foreign memory.
    src = _save({"w": torch.ones(3)}, tmp_path / "ok.pt", True)  # same tensor as _zip_with_pickle's
    with zipfile.ZipFile(src) as z:
        data = z.read(next(n for n in z.namelist() if n.endswith("data.pkl")))
    bad = data.replace(b"K\x03\x85", b"M\x00\x01\x85", 1)  # size (3,) -> (256,)
    assert bad != data
    path = _zip_with_pickle(tmp_path, bad, "oob")
    with pytest.raises(tp.TorchFileError, match="beyond its storage"):
        tp.read_torch_pickle(path)


# ------------------------------------------------------------------------------------------------------
# Broken files.
# ------------------------------------------------------------------------------------------------------


@FORMATS
def test_truncated_files(tmp_path, rng, zip_format):
    path = _save({"w": torch.randn(64, 64)}, tmp_path / "full.pt", zip_format)
    data = path.read_bytes()
    for cut in (len(data) // 2, len(data) - 100, 40):
        short = tmp_path / f"cut{cut}.pt"
        short.write_bytes(data[:cut])
        with pytest.raises(tp.TorchFileError) as err:
            tp.load_torch_file(short)
        assert str(short) in str(err.value)


def test_wrong_magic_and_not_torch(tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(os.urandom(1000))
    with pytest.raises(tp.TorchFileError, match="not a PyTorch checkpoint"):
        tp.read_torch_pickle(junk)
    wrong = tmp_path / "wrong_magic.pt"
    good = _save({"w": torch.ones(2)}, tmp_path / "g.pt", False).read_bytes()
    wrong.write_bytes(good.replace(tp.MAGIC_NUMBER.to_bytes(10, "little"), (tp.MAGIC_NUMBER + 1).to_bytes(10, "little")))
    with pytest.raises(tp.TorchFileError, match="not a PyTorch checkpoint|magic"):
        tp.read_torch_pickle(wrong)
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        tp.load_torch_file(tmp_path / "nope.pt")


def test_missing_storage_record(tmp_path):
    src = _save({"w": torch.ones(3), "v": torch.zeros(2)}, tmp_path / "src.pt", True)
    dst = tmp_path / "missing.pt"
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            if not info.filename.endswith("/data/1"):
                zout.writestr(info.filename, zin.read(info))
    with pytest.raises(tp.TorchFileError, match=r"missing\.pt.*data/1.*missing"):
        tp.read_torch_pickle(dst)


def test_torchscript_archive_refused(tmp_path):
    path = tmp_path / "script.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(path))
    with pytest.raises(tp.TorchFileError, match="TorchScript"):
        tp.read_torch_pickle(path)


def test_no_state_dict(tmp_path):
    path = _save({"epoch": 3, "name": "x"}, tmp_path / "nosd.pt", True)
    with pytest.raises(tp.TorchFileError, match="no state dict"):
        tp.load_torch_file(path)


# ------------------------------------------------------------------------------------------------------
# allow_opaque: unknown objects outside the state dict become inert placeholders (opt-in).
# ------------------------------------------------------------------------------------------------------


def _fake_omegaconf(monkeypatch):
    names = ["omegaconf", "omegaconf.dictconfig"]
    for n in names:
        monkeypatch.setitem(sys.modules, n, types.ModuleType(n))

    class DictConfig:
        def __init__(self, content):
            self._content = dict(content)
            self._flags = {"readonly": False}

    DictConfig.__module__ = names[-1]
    DictConfig.__qualname__ = "DictConfig"
    sys.modules[names[-1]].DictConfig = DictConfig
    return DictConfig


@FORMATS
def test_opaque_objects_outside_state_dict(tmp_path, rng, monkeypatch, zip_format):
    dict_config = _fake_omegaconf(monkeypatch)
    sd = {"model.fc.weight": torch.from_numpy(rng.normal(size=(4, 3)).astype(np.float32))}
    path = _save({"state_dict": sd, "hyper_parameters": {"cfg": dict_config({"lr": 0.1, "arch": "r50"})}},
                 tmp_path / "hydra.ckpt", zip_format)
    with pytest.raises(tp.ForbiddenGlobalError, match=r"'omegaconf\.dictconfig\.DictConfig'.*allow_opaque"):
        tp.load_torch_file(path)
    got = tp.load_torch_file(path, allow_opaque=True)
    assert set(got) == {"fc.weight"}
    _assert_same(got["fc.weight"], sd["model.fc.weight"])
    raw = tp.read_torch_pickle(path, allow_opaque=True)
    cfg = raw["hyper_parameters"]["cfg"]
    assert isinstance(cfg, tp.OpaqueObject) and cfg.global_name == "omegaconf.dictconfig.DictConfig"
    assert cfg.state == {"_content": {"lr": 0.1, "arch": "r50"}, "_flags": {"readonly": False}}


@pytest.mark.parametrize("container", ["zip", "legacy"])
def test_opaque_mode_still_runs_nothing(tmp_path, container):
    marker = tmp_path / "pwned"
    for name, payload in _all_hostile(marker).items():
        fname = "opaque_" + name.replace(".", "_")
        path = (_zip_with_pickle if container == "zip" else _legacy_with_pickle)(tmp_path, payload, fname)
        with pytest.raises(tp.TorchFileError):  # payload in the state dict (or no state dict): refused
            tp.load_torch_file(path, allow_opaque=True)
        try:
            tp.read_torch_pickle(path, allow_opaque=True)
        except tp.TorchFileError:
            pass
        assert not marker.exists(), f"{name}: payload ran"
    # The state-dict case names the placeholder's global.
    path = _legacy_with_pickle(tmp_path, pickle.dumps({"state_dict": {"w": _Reduce(os.system, "true")}}, protocol=2),
                               "named")
    with pytest.raises(tp.TorchFileError, match=r"w \(posix\.system\)"):
        tp.load_torch_file(path, allow_opaque=True)


def test_corrupted_storage_bytes_fail_crc(tmp_path):
    path = _save({"w": torch.full((256,), 1.5)}, tmp_path / "crc.pt", True)
    data = bytearray(path.read_bytes())
    pattern = np.full(8, 1.5, np.float32).tobytes()
    at = data.find(pattern)
    assert at > 0
    data[at + 5] ^= 0x01  # one flipped bit inside the stored tensor bytes
    bad = tmp_path / "crc_bad.pt"
    bad.write_bytes(bytes(data))
    with pytest.raises(tp.TorchFileError, match=r"crc_bad\.pt.*CRC"):
        tp.read_torch_pickle(bad)


class _OldStyleTensor:
    """Pickles like torch 0.3 did: torch._utils._rebuild_tensor(storage, offset, size, stride)."""

    def __init__(self, t):
        self.t = t

    def __reduce_ex__(self, proto):
        storage = torch.storage.TypedStorage(wrap_storage=self.t.untyped_storage(), dtype=self.t.dtype, _internal=True)
        return torch._utils._rebuild_tensor, (storage, self.t.storage_offset(), tuple(self.t.size()), self.t.stride())


def _as_python2_strings(data: bytes) -> bytes:
    """Rewrites the object pickle of a legacy file so str values use Python 2's SHORT_BINSTRING opcode."""
    import pickletools

    f = io.BytesIO(data)
    for _ in range(3):  # magic, protocol version, sys info
        pickle.load(f)
    start = f.tell()
    ops = list(pickletools.genops(data[start:]))  # stops after STOP
    out = bytearray(data[:start])
    for i, (op, arg, at) in enumerate(ops):
        end = ops[i + 1][2] if i + 1 < len(ops) else at + 1
        if op.name == "BINUNICODE" and len(arg.encode()) < 256:
            out += b"U" + bytes([len(arg.encode())]) + arg.encode()
        else:
            out += data[start + at : start + end]
    return bytes(out) + data[start + ops[-1][2] + 1 :]


def test_python2_era_legacy_file(tmp_path, rng):
    g = torch.Generator().manual_seed(int(rng.integers(2**31)))
    base = torch.randn(5, 4, generator=g)
    path = tmp_path / "old.pth"
    torch.save(collections.OrderedDict(conv1_weight=_OldStyleTensor(base), fc_bias=_OldStyleTensor(base.t()[1])),
               path, _use_new_zipfile_serialization=False)
    py2 = tmp_path / "old_py2.pth"
    py2.write_bytes(_as_python2_strings(path.read_bytes()))
    assert b"U\x0cconv1_weight" in py2.read_bytes()  # the rewrite happened
    for p in (path, py2):
        got = tp.load_torch_file(p)
        assert list(got) == ["conv1_weight", "fc_bias"]
        _assert_same(got["conv1_weight"], base)
        _assert_same(got["fc_bias"], base.t()[1])
    # Python 2 builtins names are mapped (name only): __builtin__.set is allowed, __builtin__.eval is not.
    ok = _legacy_with_pickle(tmp_path, b"c__builtin__\nset\n((lp0\nI1\naI2\natR.", "py2set")
    assert tp.read_torch_pickle(ok) == {1, 2}
    bad = _legacy_with_pickle(tmp_path, b"c__builtin__\neval\n(S'1+1'\ntR.", "py2eval")
    with pytest.raises(tp.ForbiddenGlobalError, match="'builtins.eval'"):
        tp.read_torch_pickle(bad)


# ------------------------------------------------------------------------------------------------------
# Issue #13: hostile files. Memory bounds are checked in a child interpreter under RLIMIT_AS (the limit is
# its address-space size after importing numpy and the reader, plus a headroom the fixed reader stays far
# below and the old reader needed many times over; the child also proves the limit was in force by failing
# to allocate more than the headroom afterwards). torch_pickle does not import jax, so RLIMIT_AS measures
# the reader itself rather than XLA's reservations.
# ------------------------------------------------------------------------------------------------------

LOAD = "synleak_jax.weights.torch_pickle.load_torch_file"
MiB = 1 << 20


def _assert_clean_refusal(report, path, *words):
    assert report["outcome"] in ("TorchFileError", "ForbiddenGlobalError"), report
    assert str(path) in report["message"], report
    for word in words:
        assert word in report["message"], report
    assert report["control"] == "MemoryError", report  # the limit was in force
    print(f"{path.name}: peak RSS {(report['peak_rss'] - report['rss_before']) / MiB:.1f} MiB over the imports")


@FORMATS
@pytest.mark.parametrize("refs", [8, 40])
def test_stride0_view_shared_through_the_memo_is_bounded(tmp_path, zip_format, refs):
    # 1 GiB of float32 as a stride-0 view of ONE element, the same tensor object under many keys (memo refs):
    # the old reader copied it once per key (4.4 GB RSS at 8 keys, an uncaught MemoryError at 40).
    t = torch.ones(1).expand(1 << 28)
    path = _save({f"k{i}": t for i in range(refs)}, tmp_path / f"stride0_{refs}.pt", zip_format)
    assert path.stat().st_size < 4096
    report = hostile.run_limited(LOAD, path, headroom=512 * MiB)
    _assert_clean_refusal(report, path, "materialise more than", "'k0'")
    assert report["peak_rss"] - report["rss_before"] < 64 * MiB
    # The same geometry at a size the limit admits loads, values equal torch's.
    small = _save({"a": torch.arange(3.0)[1:2].expand(5, 4), "b": torch.arange(3.0)[1:2].expand(5, 4)},
                  tmp_path / "small.pt", zip_format)
    got = tp.load_torch_file(small)
    np.testing.assert_array_equal(got["a"], np.ones((5, 4), np.float32))


def test_memory_error_never_escapes(tmp_path):
    # With the budget lifted to 1 TiB the reader does try to allocate 1 GiB; under RLIMIT_AS that fails and
    # must come out as TorchFileError naming the file, not MemoryError.
    path = _save({"k": torch.ones(1).expand(1 << 28)}, tmp_path / "lifted.pt", True)
    report = hostile.run_limited(LOAD, path, headroom=256 * MiB, max_read_bytes=1 << 40)
    _assert_clean_refusal(report, path, "ran out of memory")


def _crc_of_zeros(nbytes, chunk=64 * MiB):
    crc = 0
    zeros = bytes(chunk)
    for _ in range(nbytes // chunk):
        crc = zlib.crc32(zeros, crc)
    return crc


def test_data_pkl_deflate_bomb_is_refused_before_inflating(tmp_path):
    size = 512 * MiB  # declared honestly; ~520 KB of deflate
    src = hostile.craft_torch_zip(tmp_path / "src.pt", {"w": hostile.TensorRef(hostile.StorageRef("0", 1), 0, (1,), (1,))},
                                  {"0": bytes(4)})
    bomb = hostile.replace_record_data(src.read_bytes(), "archive/data.pkl", hostile.deflate_zeros(size),
                                       method=zipfile.ZIP_DEFLATED, declared_size=size, crc=_crc_of_zeros(size))
    path = tmp_path / "bomb.pt"
    path.write_bytes(bomb)
    assert path.stat().st_size < 1 * MiB
    with zipfile.ZipFile(path) as z:  # reference: a valid archive whose data.pkl really inflates to 512 MiB
        assert z.getinfo("archive/data.pkl").file_size == size
    report = hostile.run_limited(LOAD, path, headroom=256 * MiB)
    _assert_clean_refusal(report, path, "materialise more than", "data.pkl")
    assert report["peak_rss"] - report["rss_before"] < 32 * MiB


@pytest.mark.parametrize("method", [zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2])
def test_record_inflating_past_its_declared_size_is_stopped(tmp_path, method):
    # data.pkl declares 1 KiB but inflates to 64 MiB: zipfile hands bzip2 a whole input chunk and gets all
    # 64 MiB back at once (the 19 KB -> 1.06 GB case); our reader asks for at most declared + 1 bytes.
    zeros = 64 * MiB
    payload = hostile.deflate_zeros(zeros) if method == zipfile.ZIP_DEFLATED else bz2.compress(bytes(zeros), 9)
    src = hostile.craft_torch_zip(tmp_path / "src.pt", {"w": hostile.TensorRef(hostile.StorageRef("0", 1), 0, (1,), (1,))},
                                  {"0": bytes(4)})
    path = tmp_path / f"liar{method}.pt"
    path.write_bytes(hostile.replace_record_data(src.read_bytes(), "archive/data.pkl", payload, method=method,
                                                 declared_size=1024))
    report = hostile.run_limited(LOAD, path, headroom=48 * MiB)
    _assert_clean_refusal(report, path, "decompresses to more than its declared 1024 bytes")
    assert report["peak_rss"] - report["rss_before"] < 16 * MiB


def test_many_central_directory_names_for_one_record_are_refused(tmp_path):
    # One stored 16 MiB record, 64 names for it in the central directory, a pickle asking for all 64
    # storages: the old reader read it 64 times (1 GiB).
    n, numel = 64, 4 * MiB
    storages = [hostile.StorageRef(str(i), numel) for i in range(n)]
    obj = {f"w{i}": hostile.TensorRef(s, 0, (numel,), (1,)) for i, s in enumerate(storages)}
    src = hostile.craft_torch_zip(tmp_path / "src.pt", obj, {"0": bytes(4 * numel)})
    path = tmp_path / "aliases.pt"
    path.write_bytes(hostile.alias_central_entry(src.read_bytes(), "archive/data/0",
                                                 [f"archive/data/{i}" for i in range(1, n)]))
    report = hostile.run_limited(LOAD, path, headroom=512 * MiB)
    _assert_clean_refusal(report, path, "overlaps")
    # Two central entries with the same name are refused as well.
    dup = tmp_path / "dup.pt"
    dup.write_bytes(hostile.alias_central_entry(src.read_bytes(), "archive/data/0", ["archive/data/0"]))
    with pytest.raises(tp.TorchFileError, match=r"dup\.pt: zip archive lists 'archive/data/0' twice"):
        tp.load_torch_file(dup)


def test_local_header_name_is_checked(tmp_path):
    obj = {"w": hostile.TensorRef(hostile.StorageRef("1", 2), 0, (2,), (1,))}
    src = hostile.craft_torch_zip(tmp_path / "src.pt", obj, {"0": np.float32([1, 2]).tobytes()})
    path = tmp_path / "renamed.pt"
    path.write_bytes(hostile.rename_central_entry(src.read_bytes(), "archive/data/0", "archive/data/1"))
    with zipfile.ZipFile(path) as z, pytest.raises(zipfile.BadZipFile, match="differ"):
        z.read("archive/data/1")  # reference: Python's zipfile refuses it too
    with pytest.raises(tp.TorchFileError, match=r"renamed\.pt: zip record 'archive/data/1': its local header names "
                                                r"'archive/data/0'"):
        tp.load_torch_file(path)


def test_encrypted_and_unsupported_compression_are_named(tmp_path):
    src = _save({"w": torch.ones(3)}, tmp_path / "src.pt", True)
    with zipfile.ZipFile(src) as z:
        names = z.namelist()
    pkl = next(n for n in names if n.endswith("/data.pkl"))
    storage = next(n for n in names if "/data/" in n)
    cases = {
        "encrypted": (pkl, {"flags": 1}, RuntimeError, "encrypted"),
        "deflate64": (pkl, {"method": 9}, NotImplementedError, r"compression method 9 \(deflate64\)"),
        "lzma_storage": (storage, {"method": 14}, Exception, r"compression method 14 \(lzma\)"),
        "unknown": (storage, {"method": 77}, NotImplementedError, r"compression method 77 \(unknown\)"),
    }
    for name, (record, patch, foreign, message) in cases.items():
        path = tmp_path / f"{name}.pt"
        path.write_bytes(hostile.patch_zip_entry(src.read_bytes(), record, **patch))
        with zipfile.ZipFile(path) as z, pytest.raises(foreign):
            z.read(record)  # what escaped before: zipfile's own exception type
        with pytest.raises(tp.TorchFileError, match=rf"{name}\.pt: zip record .*{message}"):
            tp.load_torch_file(path)


def _crafted_tensors():
    """Each entry: a tensor-like object the rebuild functions must refuse (inside the unpickler)."""
    st = hostile.StorageRef("0", 4)
    return {
        "negative_offset": hostile.TensorRef(st, -1, (2,), (1,)),
        "negative_size": hostile.TensorRef(st, 0, (-2,), (1,)),
        "negative_stride": hostile.TensorRef(st, 0, (2,), (-1,)),
        "rank_mismatch": hostile.TensorRef(st, 0, (2, 2), (1,)),
        "size_not_ints": hostile.TensorRef(st, 0, ("2",), (1,)),
        "size_bool": hostile.TensorRef(st, 0, (True,), (1,)),
        "beyond_storage": hostile.TensorRef(st, 2, (4,), (1,)),
        "huge_stride": hostile.TensorRef(st, 0, (1, 2), (1, 1 << 70)),
        "65_dims": hostile.TensorRef(st, 0, (1,) * 65, (1,) * 65),
        "not_a_storage": hostile.TensorRef(7, 0, (1,), (1,)),
        "metadata_not_dict": hostile.TensorRef(st, 0, (2,), (1,), metadata=[1]),
        "v3_storage_dtype": hostile.Call(torch._utils._rebuild_tensor_v3, st, 0, (2,), (1,), False, {},
                                         torch.FloatStorage),
        "v3_wrong_dtype_for_typed": hostile.TensorRef(st, 0, (2,), (1,), dtype="float64"),
        "parameter_of_int": hostile.Call(torch._utils._rebuild_parameter, 5, False, {}),
        "from_type_v2_function": hostile.Call(torch._tensor._rebuild_from_type_v2, torch._utils._rebuild_parameter,
                                              torch.Tensor, 3, {}),
        "codecs_utf16": hostile.Call(__import__("_codecs").encode, "x", "utf-16"),
    }


def test_crafted_tensor_errors_name_the_file(tmp_path):
    for name, obj in _crafted_tensors().items():
        path = hostile.craft_torch_zip(tmp_path / f"{name}.pt", {"w": obj}, {"0": bytes(16)})
        with pytest.raises(tp.TorchFileError) as err:
            tp.load_torch_file(path)
        assert str(err.value).startswith(f"{path}: "), (name, str(err.value))
    # Control: the same builder with sane geometry loads (so the refusals above are about the geometry).
    ok = hostile.craft_torch_zip(tmp_path / "ok.pt", {"w": hostile.TensorRef(hostile.StorageRef("0", 4), 1, (2,), (2,))},
                                 {"0": np.float32([0, 1, 2, 3]).tobytes()})
    np.testing.assert_array_equal(tp.load_torch_file(ok)["w"], np.float32([1, 3]))


def test_big_endian_untyped_storage_is_swapped_per_view(tmp_path, rng):
    # _rebuild_tensor_v3 over an UntypedStorage (how torch saves uint16/uint32/float8...): only the view
    # knows the element size, so a big-endian file's bytes are swapped when the view is made.
    u16 = rng.integers(0, 2**16, 6).astype(np.uint16)
    f32 = rng.standard_normal(3).astype(np.float32)
    c64 = (rng.standard_normal(2) + 1j * rng.standard_normal(2)).astype(np.complex64)
    raw = {"0": u16.astype(">u2").tobytes(), "1": f32.astype(">f4").tobytes(), "2": c64.astype(">c8").tobytes()}
    st = {k: hostile.StorageRef(k, len(v), "UntypedStorage") for k, v in raw.items()}
    obj = {
        "u16": hostile.TensorRef(st["0"], 0, (2, 3), (3, 1), dtype="uint16"),
        "u16_t": hostile.TensorRef(st["0"], 0, (3, 2), (1, 3), dtype="uint16"),  # a transposed view
        "bytes": hostile.TensorRef(st["0"], 0, (12,), (1,), dtype="uint8"),  # 1-byte view: raw bytes as stored
        "f32": hostile.TensorRef(st["1"], 1, (2,), (1,), dtype="float32"),
        "c64": hostile.TensorRef(st["2"], 0, (2,), (1,), dtype="complex64"),
    }
    got = tp.load_torch_file(hostile.craft_torch_zip(tmp_path / "be.pt", obj, raw, byteorder="big"))
    np.testing.assert_array_equal(got["u16"], u16.reshape(2, 3))
    np.testing.assert_array_equal(got["u16_t"], u16.reshape(2, 3).T)
    assert got["bytes"].tobytes() == raw["0"]
    np.testing.assert_array_equal(got["f32"], f32[1:])
    np.testing.assert_array_equal(got["c64"], c64)
    # Control: the same pickle over little-endian bytes, marked little, gives the same values.
    le = {"0": u16.tobytes(), "1": f32.tobytes(), "2": c64.tobytes()}
    got_le = tp.load_torch_file(hostile.craft_torch_zip(tmp_path / "le.pt", obj, le, byteorder="little"))
    np.testing.assert_array_equal(got_le["u16"], got["u16"])
    np.testing.assert_array_equal(got_le["c64"], got["c64"])


@FORMATS
def test_single_key_wrappers_are_unwrapped(tmp_path, rng, zip_format):
    g = torch.Generator().manual_seed(int(rng.integers(2**31)))
    sd = {"input_layer.0.weight": torch.randn(4, 3, 3, 3, generator=g), "output.bias": torch.randn(4, generator=g)}
    for key in ("state_dict", "model_state_dict"):
        got = tp.load_torch_file(_save({key: sd}, tmp_path / f"{key}.ckpt", zip_format))
        assert set(got) == set(sd), key
        for k, v in sd.items():
            _assert_same(got[k], v)
    # A module really named like a wrapper key, beside other keys, is not a wrapper.
    got = tp.load_torch_file(_save({"model": {"w": sd["output.bias"]}, "x": sd["output.bias"]},
                                   tmp_path / "two.pt", zip_format))
    assert set(got) == {"model.w", "x"}


def test_fifo_and_directory_are_refused_without_opening(tmp_path):
    fifo = tmp_path / "pipe.pt"
    os.mkfifo(fifo)
    with pytest.raises(tp.TorchFileError, match=r"pipe\.pt: a FIFO \(named pipe\), not a regular file"):
        tp.load_torch_file(fifo)  # would block forever in open() if it were opened
    with pytest.raises(tp.TorchFileError, match="a directory, not a regular file"):
        tp.read_torch_pickle(tmp_path)


def test_read_limit_is_configurable(tmp_path, monkeypatch):
    path = _save({"w": torch.ones(1).expand(64, 1 << 20)}, tmp_path / "256mib.pt", True)  # 256 MiB logical
    with pytest.raises(tp.TorchFileError, match="materialise more than"):
        tp.load_torch_file(path)
    assert tp.load_torch_file(path, max_read_bytes=300 * MiB)["w"].shape == (64, 1 << 20)
    monkeypatch.setenv("SYNLEAK_MAX_READ_BYTES", "300M")
    assert tp.load_torch_file(path)["w"].nbytes == 256 * MiB
    monkeypatch.setenv("SYNLEAK_MAX_READ_BYTES", "lots")
    with pytest.raises(tp.TorchFileError, match=r"256mib\.pt: \$SYNLEAK_MAX_READ_BYTES: not a byte count"):
        tp.load_torch_file(path)
