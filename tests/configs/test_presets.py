"""Presets by name (synleak_jax/configs/__init__.py): the registry, the old checkout paths, an unknown name in one
line, every preset loading, from another directory, and inside a built wheel (a non-editable install)."""

from __future__ import annotations

import re
import ast
import importlib
import os
import shutil
import subprocess
import sys
import zipfile

import ml_collections
import pytest

from synleak_jax import config as schemas
from synleak_jax import configs
from synleak_jax.cli import config_doc
from synleak_jax.cli.common import PresetFileParser

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PRESET_FILES = sorted(f[:-3] for f in os.listdir(os.path.join(REPO, "synleak_jax", "configs"))
                      if f.endswith(".py") and f != "__init__.py")


def _audit(*args, cwd, pythonpath=REPO):
    env = {**os.environ, "PYTHONPATH": pythonpath, "JAX_PLATFORMS": "cpu"}
    return subprocess.run([sys.executable, "-c", "from synleak_jax.cli.audit import run; run()", *args], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=300)


def test_registry_lists_the_preset_files():
    assert configs.available() == PRESET_FILES
    assert {"demo", "dcface_vs_casia", "sface_vs_casia", "tinsley_style", "embed"} <= set(PRESET_FILES)
    assert configs.available("embed") == ["embed"]
    assert configs.available("audit") == [name for name in PRESET_FILES if name != "embed"]
    for name in PRESET_FILES:
        assert configs.preset_path(name) == os.path.join(REPO, "synleak_jax", "configs", f"{name}.py")


def test_describe_is_the_first_docstring_line():
    for name in PRESET_FILES:
        module = importlib.import_module(f"synleak_jax.configs.{name}")
        assert configs.describe(name) == module.__doc__.strip().splitlines()[0].strip()
    assert configs.describe("dcface_vs_casia").startswith("Preset: DCFace vs its real source (CASIA-WebFace)")


def test_every_preset_loads_and_stays_within_its_schema():
    parser = PresetFileParser("config")
    for name in PRESET_FILES:
        cfg = parser.parse(name)
        assert isinstance(cfg, ml_collections.ConfigDict) and cfg.is_locked, name
        schema = schemas.embed_config if name == "embed" else schemas.base_config
        assert set(config_doc.leaves(cfg)) == set(config_doc.leaves(schema())), name


@pytest.mark.parametrize("form", ["dcface_vs_casia", "dcface_vs_casia.py", "configs/dcface_vs_casia",
                                  "configs/dcface_vs_casia.py", "./configs/dcface_vs_casia.py",
                                  "/old/checkout/configs/dcface_vs_casia.py"])
def test_names_and_old_checkout_paths_resolve(form, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # none of these paths exists here
    assert configs.resolve(form) == configs.preset_path("dcface_vs_casia")
    assert configs.resolve(form + ":arg") == configs.preset_path("dcface_vs_casia") + ":arg"


def test_an_existing_file_wins_over_a_preset_name(tmp_path, monkeypatch):
    own = tmp_path / "configs" / "demo.py"
    own.parent.mkdir()
    own.write_text("from synleak_jax.config import base_config\n\ndef get_config():\n    c = base_config()\n"
                   "    c.title = 'mine'\n    return c\n")
    monkeypatch.chdir(tmp_path)
    assert configs.resolve("configs/demo.py") == "configs/demo.py"
    assert PresetFileParser("config").parse("configs/demo.py").title == "mine"
    assert PresetFileParser("config").parse("demo").title != "mine"


def test_unknown_names_and_missing_files_are_one_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(configs.UnknownPresetError) as e:
        configs.resolve("dcface_vs_casi")
    assert str(e.value) == ("unknown preset 'dcface_vs_casi'; known presets: " + ", ".join(PRESET_FILES))
    with pytest.raises(configs.UnknownPresetError, match="config file not found: /nowhere/mine.py .*known presets"):
        configs.resolve("/nowhere/mine.py")
    with pytest.raises(configs.UnknownPresetError, match="is a directory"):
        configs.resolve(str(tmp_path))
    with pytest.raises(configs.UnknownPresetError, match="known presets: embed$"):
        configs.resolve("demo", program="embed")
    broken = tmp_path / "broken.py"
    broken.write_text("def get_config(:\n")
    with pytest.raises(ValueError, match=f"{broken} failed to load: SyntaxError"):
        PresetFileParser("config").parse(str(broken))
    (tmp_path / "empty.py").write_text("x = 1\n")
    with pytest.raises(ValueError, match="has no get_config"):
        PresetFileParser("config").parse(str(tmp_path / "empty.py"))


def test_presets_by_name_from_another_directory(tmp_path):
    for form in ("dcface_vs_casia", "configs/dcface_vs_casia", "configs/dcface_vs_casia.py"):
        p = _audit(f"--config={form}", "--show_config", cwd=tmp_path)
        assert p.returncode == 0, p.stderr[-2000:]
        assert "preset = 'dcface_vs_casia'" in p.stdout
        assert f"--config={form}" in p.stdout.splitlines()[0]
    p = _audit("--config=dcface", cwd=tmp_path)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("synleak-audit: error: flag --config=dcface: unknown preset "
                                                   "'dcface'; known presets: dcface_vs_casia, demo, ")
    assert not re.search(r"\bembed\b", lines[0])  # the embedder's preset is not an audit preset
    assert not any(tmp_path.iterdir())  # nothing written


def test_presets_ship_in_the_wheel_and_work_from_it(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(os.path.join(REPO, "pyproject.toml"), src)
    shutil.copy(os.path.join(REPO, "README.md"), src)
    shutil.copytree(os.path.join(REPO, "synleak_jax"), src / "synleak_jax",
                    ignore=shutil.ignore_patterns("__pycache__"))
    # --no-build-isolation: build with this environment's setuptools (no download)
    p = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                        str(tmp_path / "dist"), str(src)], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("synleak_jax-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        assert {f"synleak_jax/configs/{name}.py" for name in PRESET_FILES} | {"synleak_jax/configs/__init__.py"} \
            <= names
        entry_points = next(n for n in names if n.endswith("entry_points.txt"))
        scripts = z.read(entry_points).decode()
        z.extractall(tmp_path / "site")  # what pip does with a pure-Python wheel
    for script in ("synleak-audit", "synleak-convert", "synleak-embed", "synleak-knn", "synleak-bench-knn",
                   "synleak-prepare", "synleak-fetch-mtcnn"):
        assert f"{script} = synleak_jax.cli." in scripts
    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    p = _audit("--config=sface_vs_casia", "--show_config", cwd=workdir, pythonpath=str(tmp_path / "site"))
    assert p.returncode == 0, p.stderr[-2000:]
    assert "preset = 'sface_vs_casia'" in p.stdout
    p = _audit("--help", cwd=workdir, pythonpath=str(tmp_path / "site"))
    assert p.returncode == 0 and "sface_vs_casia" in p.stdout
    # the copy that ran is the wheel's, not this checkout
    probe = subprocess.run([sys.executable, "-c", "import synleak_jax.configs as c; print(c.PRESET_DIR)"],
                           cwd=workdir, env={**os.environ, "PYTHONPATH": str(tmp_path / "site")},
                           capture_output=True, text=True)
    assert probe.stdout.strip() == str(tmp_path / "site" / "synleak_jax" / "configs")


def test_preset_docstrings_parse_without_import():
    for name in PRESET_FILES:
        with open(configs.preset_path(name)) as f:
            assert ast.get_docstring(ast.parse(f.read())), f"{name} has no docstring"


def test_no_preset_titles_the_users_data(tmp_path):
    """Honest labels: a preset never sets the report title (it would title whatever paths the user gives); the
    title is built from the data given, and only the demo, when it makes its own data, titles it as the demo."""
    from synleak_jax import audit

    parser = PresetFileParser("config")
    for name in PRESET_FILES:
        if name != "embed":
            assert parser.parse(name).title == "", name
    cfg = parser.parse("demo")
    cfg.demo.steps, cfg.demo.n_synthetic = 2, 4  # a tiny demo: only its folders and title matter here
    audit._demo_data(cfg, str(tmp_path), [])
    assert cfg.title == "synleak_jax DEMO audit: tiny generator trained on 50 LFW crops, matcher dlib_resnet_v1"
    assert cfg.data.synthetic.path == str(tmp_path / "demo_data" / "synthetic")
