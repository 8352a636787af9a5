"""synleak-prepare end to end (subprocess): FFHQ-style flat folder with a planted escape, rejects JSONL."""

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("tensorflow_datasets")

from synleak_jax.data import rejects, sources, tfds_builders  # noqa: E402
from tests.data import fixtures  # noqa: E402


def _run(*args):
    return subprocess.run([sys.executable, "-m", "synleak_jax.cli.prepare", *args], capture_output=True, text=True,
                          cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))


def test_prepare_ffhq_cli(tmp_path, rng):
    manual = tmp_path / "ffhq" / "images1024x1024"
    for k in range(5):
        fixtures.write(str(manual / f"{k // 2 * 1000:05d}" / f"{k:05d}.png"),
                       fixtures.encode(fixtures.random_rgb(rng, 8, 8), "PNG"))
    os.symlink("/etc/hostname", manual / "00000" / "00099.png")
    data_dir = tmp_path / "tfds"
    r = _run("--dataset=ffhq", f"--manual_dir={tmp_path / 'ffhq'}", f"--data_dir={data_dir}")
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout[r.stdout.index("{"):])
    assert out["num_records"] == 6 and out["prepare_rejects"] == 1 and out["num_classes"] is None
    ents = rejects.read_rejects(data_dir / "ffhq_prepare_rejects.jsonl")
    assert [(e.record_id, e.code) for e in ents] == [(2, rejects.PATH_ESCAPE)]
    src = sources.FlatFolderSource(str(manual))
    back = tfds_builders.TfdsSource("ffhq", data_dir=str(data_dir))
    for i in range(len(src)):
        if i != 2:
            assert back[i] == src[i] and back.label(i) == -1


def test_prepare_cli_errors(tmp_path):
    r = _run("--dataset=nope", f"--manual_dir={tmp_path}", f"--data_dir={tmp_path}")
    assert r.returncode != 0 and "choose one of" in r.stderr
    r = _run("--dataset=sface", f"--data_dir={tmp_path}")
    assert r.returncode != 0 and "--manual_dir is required" in r.stderr
    r = _run("--dataset=sface", f"--manual_dir={tmp_path / 'missing'}", f"--data_dir={tmp_path}")
    assert r.returncode != 0 and "missing" in r.stderr
