"""Tests for synleak_jax/cli/convert.py (synleak-convert): in-process main() with flags, and the console."""

import hashlib
import os
import subprocess
import sys

import numpy as np
import pytest
from absl import app, flags

torch = pytest.importorskip("torch")

from synleak_jax.cli import convert  # noqa: E402
from synleak_jax.weights import load_weights, restore_variables  # noqa: E402
from synleak_jax.weights.loader import parameter_count  # noqa: E402
from synleak_jax.weights.mapping import flatten_variables  # noqa: E402
from tests.models.torch_refs_arcface import make_reference, randomize_  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory):
    seed = int(np.random.SeedSequence().entropy % (2**32))
    print(f"seed: {seed}")
    net = randomize_(make_reference("mobilefacenet"), np.random.default_rng(seed))
    path = tmp_path_factory.mktemp("w") / "mbf.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}, "epoch": 1}, path)
    return path


def _run_main(*argv):
    """Parses ``argv`` as synleak-convert flags and runs main (flags reset afterwards)."""
    flags.FLAGS.unparse_flags()
    flags.FLAGS(["synleak-convert", *argv])
    try:
        convert.main(["synleak-convert"])
    finally:
        flags.FLAGS.unparse_flags()


def test_convert_writes_restorable_directory(weights_file, tmp_path, capsys):
    out = tmp_path / "conv"
    _run_main(f"--weights={weights_file}", f"--out={out}")
    printed = capsys.readouterr().out
    want_vars, info = load_weights(weights_file)
    sha = hashlib.sha256(weights_file.read_bytes()).hexdigest()
    assert "mobilefacenet" in printed and sha in printed and str(out) in printed
    assert f"{parameter_count(want_vars):,}" in printed
    got, meta = restore_variables(out)
    assert meta["model_name"] == "mobilefacenet" and meta["source_sha256"] == sha and meta["source_file"] == "mbf.pth"
    fw, fg = flatten_variables(want_vars), flatten_variables(got)
    assert set(fw) == set(fg)
    for k in fw:
        assert fg[k].tobytes() == np.asarray(fw[k]).tobytes(), k

    # Exists: refused without --overwrite (exit 1, message names the directory), replaced with it.
    with pytest.raises(SystemExit) as e:
        _run_main(f"--weights={weights_file}", f"--out={out}")
    assert e.value.code == 2 and "already exists" in capsys.readouterr().err
    _run_main(f"--weights={weights_file}", f"--out={out}", "--model=mobilefacenet", "--overwrite")
    assert "mobilefacenet" in capsys.readouterr().out


def test_convert_errors(weights_file, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        _run_main(f"--weights={tmp_path / 'missing.pth'}", f"--out={tmp_path / 'o1'}")
    assert e.value.code == 2 and "missing.pth" in capsys.readouterr().err
    with pytest.raises(app.UsageError, match="unknown model 'iresnet9'.*available models: .*iresnet50"):
        _run_main(f"--weights={weights_file}", f"--out={tmp_path / 'o2'}", "--model=iresnet9")
    cut = tmp_path / "cut.pth"
    cut.write_bytes(weights_file.read_bytes()[:5000])
    with pytest.raises(SystemExit) as e:
        _run_main(f"--weights={cut}", f"--out={tmp_path / 'o3'}")
    assert e.value.code == 2 and str(cut) in capsys.readouterr().err
    with pytest.raises(app.UsageError, match="--out is required"):
        _run_main(f"--weights={weights_file}")
    # Wrong model for the weights: the converter's message, no traceback.
    with pytest.raises(SystemExit) as e:
        _run_main(f"--weights={weights_file}", f"--out={tmp_path / 'o4'}", "--model=iresnet18")
    assert e.value.code == 2 and "synleak-convert: error:" in capsys.readouterr().err
    assert not any((tmp_path / f"o{i}").exists() for i in range(1, 5))


def test_console_script_errors_without_traceback(tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not weights at all" * 10)
    proc = subprocess.run(
        [sys.executable, "-m", "synleak_jax.cli.convert", f"--weights={junk}", f"--out={tmp_path / 'o'}"],
        capture_output=True, text=True, cwd=REPO, timeout=300,
    )
    assert proc.returncode == 2
    assert "format not recognised" in proc.stderr and str(junk) in proc.stderr
    assert "Traceback" not in proc.stderr


def test_allow_opaque_objects_flag(tmp_path, capsys, monkeypatch):
    import types

    monkeypatch.setitem(sys.modules, "omegaconf", types.ModuleType("omegaconf"))

    class DictConfig:
        def __init__(self, content):
            self._content = content

    DictConfig.__module__, DictConfig.__qualname__ = "omegaconf", "DictConfig"
    sys.modules["omegaconf"].DictConfig = DictConfig
    net = randomize_(make_reference("mobilefacenet"), np.random.default_rng(0))
    path = tmp_path / "hydra.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in net.state_dict().items()},
                "hyper_parameters": {"cfg": DictConfig({"lr": 0.1})}}, path)
    with pytest.raises(SystemExit) as e:
        _run_main(f"--weights={path}", f"--out={tmp_path / 'a'}")
    err = capsys.readouterr().err
    assert e.value.code == 2 and "'omegaconf.DictConfig'" in err and "--allow_opaque_objects" in err
    _run_main(f"--weights={path}", f"--out={tmp_path / 'b'}", "--allow_opaque_objects")
    assert "mobilefacenet" in capsys.readouterr().out
    got, _ = restore_variables(tmp_path / "b")
    want, _ = load_weights(path, allow_opaque=True)
    fg, fw = flatten_variables(got), flatten_variables(want)
    assert set(fg) == set(fw)
    for k in fw:
        np.testing.assert_array_equal(fg[k], fw[k], err_msg=k)


# ------------------------------------------------------------------------------------------------------
# Issue #13: failures are one line naming the file, never a traceback (the console script, real failures).
# ------------------------------------------------------------------------------------------------------


def _console(*args, wrap=None):
    cmd = [sys.executable, "-m", "synleak_jax.cli.convert", *args]
    if wrap:
        cmd = wrap(cmd)
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=300, env=env)


def _assert_one_line(proc, *words):
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("synleak-convert: error: "), proc.stderr[-3000:]
    for word in words:
        assert word in lines[0], lines[0]


def _mount_namespaces_work():
    import shutil

    if not shutil.which("unshare"):
        return False
    probe = subprocess.run(["unshare", "-m", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt && umount /mnt"],
                           capture_output=True)
    return probe.returncode == 0


needs_mounts = pytest.mark.skipif(not _mount_namespaces_work(), reason="needs unshare -m and mount (root)")


def _in_tmpfs(mount_point, options):
    """Runs the command in a private mount namespace with a tmpfs of ``options`` at ``mount_point``."""
    def wrap(cmd):
        quoted = " ".join(f"'{c}'" for c in cmd)
        return ["unshare", "-m", "sh", "-c", f"mount -t tmpfs -o {options} tmpfs '{mount_point}' && exec {quoted}"]
    return wrap


@needs_mounts
def test_full_disk_is_one_line(weights_file, tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    out = disk / "conv"
    proc = _console(f"--weights={weights_file}", f"--out={out}", wrap=_in_tmpfs(disk, "size=2m"))
    _assert_one_line(proc, str(out), "not enough free space")
    assert "Traceback" not in proc.stderr


@needs_mounts
def test_read_only_filesystem_is_one_line(weights_file, tmp_path):
    disk = tmp_path / "ro"
    disk.mkdir()
    out = disk / "conv"
    proc = _console(f"--weights={weights_file}", f"--out={out}", wrap=_in_tmpfs(disk, "ro,size=1m"))
    _assert_one_line(proc, str(out), "Read-only file system")


def test_write_failing_midway_is_one_line(weights_file, tmp_path):
    # The free-space check passes; a 1 MiB file-size limit then makes orbax's writer threads fail (EFBIG),
    # which used to print one traceback per pending write.
    # (The limit is set by a tiny launcher, not preexec_fn: forking this multithreaded JAX process could deadlock.)
    def limited(cmd):
        launcher = ("import os, resource, sys; resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20)); "
                    "os.execv(sys.argv[1], sys.argv[1:])")
        return [sys.executable, "-c", launcher, *cmd]

    out = tmp_path / "conv"
    proc = _console(f"--weights={weights_file}", f"--out={out}", wrap=limited)
    _assert_one_line(proc, str(out), "File too large")
    assert not any(p.name.startswith(".conv.") for p in tmp_path.iterdir())  # no temporary left behind
    assert not out.exists()


def test_hostile_inputs_are_one_line(tmp_path):
    fifo = tmp_path / "pipe.pth"
    os.mkfifo(fifo)
    stride0 = tmp_path / "stride0.pt"
    torch.save({f"k{i}": torch.ones(1).expand(1 << 28) for i in range(8)}, stride0)
    cases = {fifo: "a FIFO", tmp_path: "not a converted-weights directory", stride0: "materialise more than"}
    for weights, message in cases.items():
        proc = _console(f"--weights={weights}", f"--out={tmp_path / 'o'}")
        _assert_one_line(proc, str(weights), message)
