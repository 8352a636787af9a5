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
CARRIED = frozenset({carried!r})
SITE = {site!r}


class DeviceImageBlocker:
    def find_spec(self, name, path=None, target=None):
        top = name.partition(".")[0]
        if top in BLOCKED:
            raise ModuleNotFoundError(
                f"No module named {{name!r}} (not on the GPU image; blocked by test_device_check)", name=name)
        if top in CARRIED and SITE not in sys.path:
            raise ModuleNotFoundError(
                f"No module named {{name!r}} (a carried wheel: only where the unpacked site folder {{SITE}} is on "
                f"sys.path; blocked by test_device_check)", name=name)
        return None


sys.meta_path.insert(0, DeviceImageBlocker())
'''


@pytest.fixture(scope="module")
def device_env(tmp_path_factory) -> dict:
    """Environment for a subprocess that sees only the device image's packages (and this checkout)."""
    folder = tmp_path_factory.mktemp("device_image")
    blocked = blocked_modules()
    assert "grain" in blocked or importlib.util.find_spec("grain") is None
    # The carried wheels are importable only through the unpacked site folder, as on the device (there they are
    # installed nowhere else): an empty one here, under a wheels root of the test's own (the venv's copies are
    # what loads, but only in a process that put the folder on sys.path).
    wheels_root = tmp_path_factory.mktemp("device_wheels")
    site = wheels_root / "site"
    site.mkdir()
    (folder / "sitecustomize.py").write_text(SITECUSTOMIZE.format(blocked=blocked, carried=sorted(DEVICE_WHEEL_MODULES),
                                                                  site=str(site)))
    env = dict(os.environ)
    env["SYNLEAK_DEVICE_WHEELS_DIR"] = str(wheels_root)
    env["DEVICE_SITE"] = str(site)  # for the tests below
    env["PYTHONPATH"] = os.pathsep.join([str(folder), REPO] + [p for p in [os.environ.get("PYTHONPATH")] if p])
    # One CPU device, as the GPU machine has one accelerator (conftest forces 8 host devices for the suite).
    flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "", env.get("XLA_FLAGS", "")).strip()
    env["XLA_FLAGS"] = flags
    env["JAX_PLATFORMS"] = "cpu"
    return env


def test_blocker_imitates_the_image(device_env):
    """The imitation itself: lacking packages fail to import, the image's import, the carried ones import only
    where the unpacked site folder is on sys.path."""
    code = ("import importlib, os, sys\n"
            "def ok(m):\n"
            "    try:\n        importlib.import_module(m); return True\n"
            "    except ImportError:\n        return False\n"
            "found = {m: ok(m) for m in ['grain', 'simplejpeg', 'tensorflow_datasets', 'faiss', 'skimage', 'jax', "
            "'torch', 'flax', 'ml_collections', 'synleak_jax']}\n"
            "sys.path.append(os.environ['DEVICE_SITE'])\n"
            "found.update({m + ' (site on sys.path)': ok(m) for m in ['ml_collections', 'PIL', 'matplotlib', "
            "'jsonschema', 'grain']})\n"
            "print(found)")
    proc = subprocess.run([sys.executable, "-c", code], env=device_env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    found = eval(proc.stdout.strip().splitlines()[-1])  # a dict literal printed by the child
    assert all(found[m] for m in ("jax", "torch", "flax", "synleak_jax")), found  # the image
    assert not found["ml_collections"], found  # a carried wheel, without the site folder
    assert all(found[f"{m} (site on sys.path)"] for m in ("ml_collections", "PIL", "matplotlib", "jsonschema")), found
    assert not any(found[m] for m in ("grain", "simplejpeg", "tensorflow_datasets", "faiss", "skimage",
                                      "grain (site on sys.path)")), found


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

    # audit: scripts/bench_audit.py's run_bench, whose audit runs in a child process of its own (it must reach the
    # carried wheels too): the total and the per-stage seconds
    assert audit["status"] == {"audit": "ok"} and not audit["skipped"], audit["skipped"]
    total = _figure(audit, "audit from embeddings 2,000 x 1,000 x 512")
    assert total["value"] > 0 and total["unit"] == "s", total
    stages = {f["figure"] for f in audit["figures"]}
    assert {"stage calibration", "stage members_x_synthetic", "stage nonmembers_x_synthetic"} <= stages, stages
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


def test_sizes_adapt_to_device_memory():
    """The device run's sizes: as planned on an H100/H200, halved on a smaller device until they fit (issue #16
    item 2), as planned when the memory is unknown. Budgets written out here from docs/device_check.md."""
    from scripts import device_check as dc

    gib = 2**30
    full = dc.FULL
    for mem in (80 * gib, 141 * gib, None):  # H100, H200, unknown: the sizes
        assert dc.fit_database(full.ndb, full.dim, full.nq, full.approx_query_block, mem)[:2] == (1_000_000, 1024)
        assert dc.backbone_batch(full, mem)[0] == 512
        assert dc.audit_sizes(full, 100_000, mem)[0] == {"n_synthetic": 1_200_000, "n_members": 494_000,
                                                          "n_nonmembers": 100_000, "dim": 512}

    def search_bytes(ndb, block):  # float32 + bf16 database, float32 queries, 3 x float32 [block, ndb], 2 GiB
        return ndb * 512 * (4 + 2) + full.nq * 512 * 4 + 3 * block * ndb * 4 + 2 * gib

    for mem in (24 * gib, 16 * gib, 8 * gib):
        ndb, block, note = dc.fit_database(full.ndb, full.dim, full.nq, full.approx_query_block, mem)
        assert search_bytes(ndb, block) <= 0.6 * mem and "scaled" in note, (mem, ndb, block)
        # the largest halving that fits: the step before did not
        bigger = (ndb * 2, block) if block <= 128 else (ndb, block * 2)
        assert ndb == full.ndb and block == 1024 or search_bytes(*bigger) > 0.6 * mem, (mem, ndb, block)
        batch = dc.backbone_batch(full, mem)[0]
        assert batch * 24 * 2**20 <= 0.5 * mem < batch * 2 * 24 * 2**20 and 512 % batch == 0, (mem, batch)
        sizes = dc.audit_sizes(full, 100_000, mem)[0]
        rows = sizes["n_synthetic"] + sizes["n_members"] + sizes["n_nonmembers"]
        assert rows * 512 * 4 * 4 <= 0.5 * mem < 2 * rows * 512 * 4 * 4 * 1.001, (mem, sizes)
    # a device too small for even the floor: the floor (65,536 rows, blocks of 128), not less
    assert dc.fit_database(full.ndb, full.dim, full.nq, full.approx_query_block, 2 * gib)[:2] == (65_536, 128)
