"""--help of every console script (run as the console-script wrapper does: ``from synleak_jax.cli.<x> import run;
run()`` in a ``__main__`` that is not the CLI module): exit 0, the module docstring (what it does, its examples),
its own flags and no absl internals; the audit's help lists the presets; --helpfull adds absl's flags."""

from __future__ import annotations

import ast
import importlib.util
import os
import re
import subprocess
import sys
import tomllib
from concurrent.futures import ThreadPoolExecutor

import pytest

from synleak_jax import configs

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
with open(os.path.join(REPO, "pyproject.toml"), "rb") as _f:
    SCRIPTS = tomllib.load(_f)["project"]["scripts"]  # {"synleak-audit": "synleak_jax.cli.audit:run", ...}


def run_cli(module: str, *args: str, cwd: str | None = None, env: dict | None = None, timeout: float = 300):
    """Runs ``module``'s run() the way its console script does (PYTHONPATH = this checkout)."""
    full_env = {**os.environ, "PYTHONPATH": REPO, "JAX_PLATFORMS": "cpu", **(env or {})}
    return subprocess.run([sys.executable, "-c", f"from {module} import run; run()", *args], cwd=cwd or REPO,
                          env=full_env, capture_output=True, text=True, timeout=timeout)


def module_source(module: str) -> str:
    with open(importlib.util.find_spec(module).origin) as f:
        return f.read()


def module_doc(module: str) -> str:
    """A CLI module's docstring, read without importing it (the CLIs' flags cannot share one process)."""
    return ast.get_docstring(ast.parse(module_source(module)), clean=False)


def declared_flags(module: str) -> set[str]:
    """Flag names a CLI module defines, read from its source (independent of absl's registry)."""
    source = module_source(module)
    return set(re.findall(r'DEFINE_\w+\(\s*"(\w+)"', source)) | set(re.findall(r'define_config(?:_dict)?_flag\(\s*"(\w+)"',
                                                                              source))


@pytest.fixture(scope="module")
def helps():
    """{script: CompletedProcess of `--help`}, all seven run in parallel."""
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = {name: pool.submit(run_cli, target.split(":")[0], "--help") for name, target in SCRIPTS.items()}
        return {name: future.result() for name, future in futures.items()}


def test_every_console_script_is_covered():
    assert set(SCRIPTS) == {"synleak-audit", "synleak-convert", "synleak-embed", "synleak-knn", "synleak-bench-knn",
                            "synleak-prepare", "synleak-fetch-mtcnn"}
    assert all(target.endswith(":run") for target in SCRIPTS.values())


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_help_shows_docstring_and_own_flags(helps, script):
    p = helps[script]
    module = SCRIPTS[script].split(":")[0]
    assert p.returncode == 0, p.stderr[-2000:]
    doc = module_doc(module)
    first = doc.strip().splitlines()[0]
    assert first.startswith(f"{script}:") and p.stdout.startswith(first)
    assert doc.strip() in p.stdout  # the whole docstring: what it does and its examples
    assert sum(script in line for line in doc.splitlines()[1:]) >= 1  # ... which has an example
    own = declared_flags(module)
    assert own, module
    section = p.stdout.split(f"flags of {script}:")[1].split("shared flags:")[0]
    listed = set(re.findall(r"^  --(?:\[no\])?(\w+)$", section, re.M))
    assert listed == own, (listed, own)
    assert "--[no]debug" in p.stdout
    for internal in ("--verbosity", "--logtostderr", "--pdb_post_mortem", "--only_check_args"):
        assert internal not in p.stdout
    assert "USAGE:" not in p.stdout and "Traceback" not in p.stderr


def test_show_config_is_offered_by_config_driven_programs_only(helps):
    for script in ("synleak-audit", "synleak-embed", "synleak-knn"):
        assert "--[no]show_config" in helps[script].stdout, script
    for script in ("synleak-convert", "synleak-bench-knn", "synleak-prepare", "synleak-fetch-mtcnn"):
        assert "show_config" not in helps[script].stdout, script


def test_audit_help_lists_the_presets(helps):
    out = helps["synleak-audit"].stdout
    presets = out.split("presets (--config=<name>")[1]
    for name in configs.available("audit"):
        assert re.search(rf"^  {name} +{re.escape(configs.describe(name))}$", presets, re.M), name
    assert not re.search(r"^  embed ", presets, re.M)
    assert "(default: preset demo)" in out


def test_other_help_spellings_and_helpfull():
    for arg in ("-h", "-?", "--helpshort"):
        p = run_cli("synleak_jax.cli.convert", arg)
        assert p.returncode == 0 and p.stdout.startswith("synleak-convert:"), arg
    p = run_cli("synleak_jax.cli.prepare", "--helpfull")
    assert p.returncode == 0 and p.stdout.startswith("synleak-prepare:") and "--verbosity" in p.stdout
    # --help wins over other (even bad) arguments, as with argparse
    p = run_cli("synleak_jax.cli.audit", "--config=nope", "--help")
    assert p.returncode == 0 and "presets (--config=<name>" in p.stdout


def test_help_as_python_dash_m():
    # run as a module, absl records the flags under sys.argv[0]: they must still be found
    p = subprocess.run([sys.executable, "-m", "synleak_jax.cli.knn", "--help"], cwd=REPO, capture_output=True,
                       text=True, env={**os.environ, "PYTHONPATH": REPO, "JAX_PLATFORMS": "cpu"}, timeout=300)
    assert p.returncode == 0 and p.stdout.startswith("synleak-knn:") and "\n  --config\n" in p.stdout
