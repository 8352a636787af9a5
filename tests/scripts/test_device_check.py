"""scripts/device_check.py cannot rot: its CPU smoke run, under an imitation of the GPU machine's image.

The GPU machines (REFERENCE.md s.6) have jax, jaxlib, flax, optax, orbax-checkpoint, numpy, torch, triton, onnx,
onnxruntime, scikit-learn and tensorstore (with their dependencies) and nothing else; device_check.py carries
ml-collections as a wheel (scripts/fetch_device_wheels.py). The subprocesses here get a ``sitecustomize`` that
makes every other installed top-level module unimportable (ModuleNotFoundError), the dependency closure of the
image's packages being read from this environment's package metadata. So a new import of grain, PIL,
matplotlib, ... on a code path the check runs fails here, not on the device.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import re
import subprocess
import sys

import pytest
from packaging.requirements import Requirement

from scripts.fetch_device_wheels import DEVICE_WHEEL_MODULES

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(REPO, "scripts", "device_check.py")

# The distributions the GPU image ships (REFERENCE.md s.6); their dependencies come with them.
IMAGE_DISTRIBUTIONS = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy", "torch", "triton", "onnx",
                       "onnxruntime", "scikit-learn", "tensorstore")
REPO_PACKAGES = ("synleak_jax", "tests", "scripts")


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def image_closure(roots: tuple[str, ...] = IMAGE_DISTRIBUTIONS) -> set[str]:
    """Canonical names of ``roots`` and everything they require (extras off), per the installed metadata."""
    seen: set[str] = set()
    queue = [_canonical(r) for r in roots]
    while queue:
        name = queue.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = importlib.metadata.distribution(name).requires or []
        except importlib.metadata.PackageNotFoundError:
            continue
        for line in requires:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                queue.append(_canonical(req.name))
    return seen


def blocked_modules() -> list[str]:
    """Installed top-level modules that the device image (plus the carried wheels) would not have."""
    closure = image_closure()
    allowed = set(REPO_PACKAGES) | set(DEVICE_WHEEL_MODULES)
    provided = importlib.metadata.packages_distributions()
    for module, dists in provided.items():
        if any(_canonical(d) in closure for d in dists):
            allowed.add(module)
    return sorted(m for m in provided if m not in allowed)


SITECUSTOMIZE = '''"""Imitates the GPU machine's image: written by tests/scripts/test_device_check.py."""
import sys

BLOCKED = frozenset({blocked!r})


class DeviceImageBlocker:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in BLOCKED:
            raise ModuleNotFoundError(
                f"No module named {{name!r}} (not on the GPU image; blocked by test_device_check)", name=name)
        return None


sys.meta_path.insert(0, DeviceImageBlocker())
'''


@pytest.fixture(scope="module")
def device_env(tmp_path_factory) -> dict:
    """Environment for a subprocess that sees only the device image's packages (and this checkout)."""
    folder = tmp_path_factory.mktemp("device_image")
    blocked = blocked_modules()
    assert "grain" in blocked or importlib.util.find_spec("grain") is None
    (folder / "sitecustomize.py").write_text(SITECUSTOMIZE.format(blocked=blocked))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(folder), REPO] + [p for p in [os.environ.get("PYTHONPATH")] if p])
    # One CPU device, as the GPU machine has one accelerator (conftest forces 8 host devices for the suite).
    flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "", env.get("XLA_FLAGS", "")).strip()
    env["XLA_FLAGS"] = flags
    env["JAX_PLATFORMS"] = "cpu"
    return env


def test_blocker_imitates_the_image(device_env):
    """The imitation itself: lacking packages fail to import, the image's and the carried ones import."""
    code = ("import importlib\n"
            "def ok(m):\n"
            "    try:\n        importlib.import_module(m); return True\n"
            "    except ImportError:\n        return False\n"
            "print({m: ok(m) for m in ['grain', 'simplejpeg', 'tensorflow_datasets', 'faiss', 'skimage', 'jax', "
            "'torch', 'flax', 'ml_collections', 'PIL', 'matplotlib', 'jsonschema', 'synleak_jax']})")
    proc = subprocess.run([sys.executable, "-c", code], env=device_env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    found = eval(proc.stdout.strip().splitlines()[-1])  # a dict literal printed by the child
    assert all(found[m] for m in ("jax", "torch", "flax", "synleak_jax")), found  # the image
    assert all(found[m] for m in ("ml_collections", "PIL", "matplotlib", "jsonschema")), found  # carried wheels
    assert not any(found[m] for m in ("grain", "simplejpeg", "tensorflow_datasets", "faiss", "skimage")), found


def test_part_imports_on_the_device_image(device_env):
    """Every module the JAX parts and the torch parts import, in separate processes as the script runs them."""
    jax_side = ("import sys; import scripts.device_check as device_check; import jax; "
                "from synleak_jax.search import approx, exact; from synleak_jax.search.bench import recall_at_k; "
                "from synleak_jax.embed.engine import EmbeddingEngine; "
                "from synleak_jax.models import get_model, get_spec; "
                "from synleak_jax.weights.converters import load_state_dict_into; print('ok')")
    torch_side = ("import sys; import scripts.device_check as device_check; import torch; "
                  "refs = device_check.load_module(device_check.TORCH_REFS, 'torch_refs_arcface'); "
                  "assert 'jax' not in sys.modules, 'a torch part imported jax'; print('ok')")
    for code in (jax_side, torch_side):
        proc = subprocess.run([sys.executable, "-c", code], env=device_env, capture_output=True, text=True,
                              cwd=REPO, timeout=120)
        assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-3000:]


def _numbers(section: dict) -> list:
    return [f["value"] for f in section["figures"] if isinstance(f["value"], (int, float))]


def _figure(section: dict, prefix: str) -> dict:
    matches = [f for f in section["figures"] if f["figure"].startswith(prefix)]
    assert matches, f"no figure starting with {prefix!r} in {[f['figure'] for f in section['figures']]}"
    return matches[0]


def test_smoke_run_writes_every_section(device_env, tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, SCRIPT, "--smoke", f"--out={out}"], env=device_env, cwd=REPO,
                          capture_output=True, text=True, timeout=280)
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-3000:])
    report = json.loads((out / "device_check.json").read_text())
    assert report["meta"]["smoke"] is True
    for sec in ("environment", "search", "backbone", "audit"):
        assert sec in report, sec
        statuses = report[sec]["status"]
        assert all(s in ("ok", "partial") for s in statuses.values()), (sec, statuses, report[sec]["skipped"])
    env = report["environment"]["details"]
    assert env["backend"] == "cpu" and env["jax"] and env["versions"]["torch"]

    search, backbone, audit = report["search"], report["backbone"], report["audit"]
    # nothing in search/backbone failed (skips for the opt-in torch.compile or a spent sweep budget are fine)
    for sec in (search, backbone):
        failures = [s for s in sec["skipped"] if s["reason"].startswith(("failed", "part time limit"))]
        assert not failures, failures
    assert _numbers(search) and _numbers(backbone)
    for prefix in ("bf16 matmul peak", "float32 matmul peak", "exact top-k bf16_certified: queries/s",
                   "exact top-k float32: queries/s", "lax.approx_max_k (recall_target"):
        fig = _figure(search, prefix)
        assert fig["value"] > 0, fig
    for prefix in ("exact top-k bf16_certified: queries/s", "exact top-k float32: queries/s"):
        fig = _figure(search, prefix)
        assert fig["reference_value"] and fig["reference_value"] > 0 and fig["ratio"] > 0, fig  # torch ran
    # the certified mode is exact: the same lists as float32 on the same queries
    assert _figure(search, "exact top-k bf16_certified: identical top-k lists")["value"] == 1.0
    assert _figure(search, "torch_float32")["value"] >= 0.99  # torch float32 finds the same neighbours
    assert 0.9 <= _figure(search, "lax.approx_max_k: measured recall")["value"] <= 1.0

    ips = _figure(backbone, "iresnet18 bf16")
    assert ips["value"] > 0 and ips["reference_value"] > 0, ips
    # both backbone parts compute the same network (weights handed over through the work folder)
    assert _figure(backbone, "JAX float32 vs torch float32")["value"] <= 1e-4
    assert _figure(backbone, "JAX bf16 vs JAX float32")["value"] >= 0.99

    # audit: numbers, or an explicit reason it was skipped
    assert _numbers(audit) or (audit["skipped"] and all(s["reason"] for s in audit["skipped"])), audit
    md = (out / "device_check.md").read_text()
    assert "| section | figure | value | same-run reference | ratio | target |" in md
    assert "exact top-k bf16_certified" in md and "iresnet18" in md


def test_cpu_run_without_smoke_is_refused(device_env, tmp_path):
    proc = subprocess.run([sys.executable, SCRIPT, f"--out={tmp_path}", "--sections=audit"], env=device_env,
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("device_check: no accelerator")
    report = json.loads((tmp_path / "device_check.json").read_text())
    assert "no accelerator" in report["meta"]["error"]
    assert report["audit"]["status"] == {"audit": "not run"}


AUDIT_STAND_IN = '''"""Stand-in for scripts/bench_audit.py (the audit slot's plumbing is under test, not an audit)."""
import json
import os


def run_bench(n_synthetic, n_members, n_nonmembers, dim, seed=0):
    with open(os.environ["AUDIT_CALLS"], "w") as f:
        json.dump({"n_synthetic": n_synthetic, "n_members": n_members, "n_nonmembers": n_nonmembers,
                   "dim": dim}, f)
    return {"load": 0.25, "neighbours": 0.5, "total": 1.0, "note": "stand-in"}
'''


def test_audit_slot_calls_run_bench_and_records_stages(device_env, tmp_path):
    bench = tmp_path / "bench_audit.py"
    bench.write_text(AUDIT_STAND_IN)
    calls = tmp_path / "calls.json"
    proc = subprocess.run([sys.executable, SCRIPT, "--smoke", "--sections=audit", f"--bench_audit={bench}",
                           f"--out={tmp_path / 'out'}"], env={**device_env, "AUDIT_CALLS": str(calls)},
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(calls.read_text()) == {"n_synthetic": 2000, "n_members": 1000, "n_nonmembers": 500,
                                             "dim": 512}
    audit = json.loads((tmp_path / "out" / "device_check.json").read_text())["audit"]
    assert audit["status"] == {"audit": "ok"} and not audit["skipped"]
    total = _figure(audit, "audit from embeddings 2,000 x 1,000 x 512")
    assert total["value"] == 1.0 and total["unit"] == "s"  # the "total" stage, not the call's wall time
    values = {f["figure"]: f["value"] for f in audit["figures"]}
    assert values["stage load"] == 0.25 and values["stage neighbours"] == 0.5
    assert audit["parts"]["audit"]["items"]["audit"]["other"] == {"note": "stand-in"}


def test_audit_slot_names_a_module_the_device_lacks(device_env, tmp_path):
    bench = tmp_path / "bench_audit.py"
    bench.write_text("import grain  # not on the device image\n\n\ndef run_bench(n_synthetic, n_members, "
                     "n_nonmembers, dim):\n    return {}\n")
    proc = subprocess.run([sys.executable, SCRIPT, "--smoke", "--sections=audit", f"--bench_audit={bench}",
                           f"--out={tmp_path / 'out'}"], env=device_env, cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    audit = json.loads((tmp_path / "out" / "device_check.json").read_text())["audit"]
    (skip,) = audit["skipped"]
    assert "grain" in skip["reason"] and "not on the device image" in skip["reason"], skip
    assert not audit["figures"]
