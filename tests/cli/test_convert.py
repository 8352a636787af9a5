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
    assert e.value.code == 1 and "already exists" in capsys.readouterr().err
    _run_main(f"--weights={weights_file}", f"--out={out}", "--model=mobilefacenet", "--overwrite")
    assert "mobilefacenet" in capsys.readouterr().out


def test_convert_errors(weights_file, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        _run_main(f"--weights={tmp_path / 'missing.pth'}", f"--out={tmp_path / 'o1'}")
    assert e.value.code == 1 and "missing.pth" in capsys.readouterr().err
    with pytest.raises(app.UsageError, match="unknown model 'iresnet9'.*available models: .*iresnet50"):
        _run_main(f"--weights={weights_file}", f"--out={tmp_path / 'o2'}", "--model=iresnet9")
    cut = tmp_path / "cut.pth"
    cut.write_bytes(weights_file.read_bytes()[:5000])
    with pytest.raises(SystemExit) as e:
        _run_main(f"--weights={cut}", f"--out={tmp_path / 'o3'}")
    assert e.value.code == 1 and str(cut) in capsys.readouterr().err
    with pytest.raises(app.UsageError, match="--out is required"):
        _run_main(f"--weights={weights_file}")
    # Wrong model for the weights: the converter's message, no traceback.
    with pytest.raises(SystemExit) as e:
        _run_main(f"--weights={weights_file}", f"--out={tmp_path / 'o4'}", "--model=iresnet18")
    assert e.value.code == 1 and "synleak-convert: error:" in capsys.readouterr().err
    assert not any((tmp_path / f"o{i}").exists() for i in range(1, 5))


def test_console_script_errors_without_traceback(tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not weights at all" * 10)
    proc = subprocess.run(
        [sys.executable, "-m", "synleak_jax.cli.convert", f"--weights={junk}", f"--out={tmp_path / 'o'}"],
        capture_output=True, text=True, cwd=REPO, timeout=300,
    )
    assert proc.returncode == 1
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
    assert e.value.code == 1 and "'omegaconf.DictConfig'" in err and "--allow_opaque_objects" in err
    _run_main(f"--weights={path}", f"--out={tmp_path / 'b'}", "--allow_opaque_objects")
    assert "mobilefacenet" in capsys.readouterr().out
    got, _ = restore_variables(tmp_path / "b")
    want, _ = load_weights(path, allow_opaque=True)
    fg, fw = flatten_variables(got), flatten_variables(want)
    assert set(fg) == set(fw)
    for k in fw:
        np.testing.assert_array_equal(fg[k], fw[k], err_msg=k)
