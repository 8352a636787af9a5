"""Download, here, the wheels the GPU machine's image lacks; ``device_check.py`` unpacks them on the device.

The GPU machines (REFERENCE.md section 6) run Python 3.12 with jax/jaxlib (CUDA), flax, optax, orbax-checkpoint,
numpy, torch (CUDA), triton, onnx, onnxruntime, scikit-learn and tensorstore (and their dependencies), have no
network, and lack grain, ml-collections, tensorflow-datasets, array-record, simplejpeg and faiss. The code paths
``scripts/device_check.py`` runs need ``ml-collections`` (the config schemas are ml_collections ConfigDicts; its
own dependencies absl-py and PyYAML ship with flax/optax), Pillow (the data layer the audit imports decodes
images with it), matplotlib with its requirements (the audit's report plots) and jsonschema with its requirements
(each report is validated against its schema before it is written): ``DEVICE_WHEEL_IMPORTS``.

Run here, before a device session (needs the package registry):

    python scripts/fetch_device_wheels.py                     # DEVICE_WHEELS, pinned to this venv's versions
                                                              # (newest 3.12 wheel where the index lacks the pin)
    python scripts/fetch_device_wheels.py --packages=ml-collections==1.1.0,grain==0.2.18
    python scripts/fetch_device_wheels.py --unpinned --packages=...   # newest 3.12 wheels the index has

It writes the wheels and ``manifest.json`` (file, size, sha256 of each) into the git-ignored
``.device_wheels/wheels`` — carry that folder with the device tool (``carry=[".device_wheels/wheels"]``; the
tool carries at most 64 MiB in all, and wheels are compressed: matplotlib with its dependencies is ~26 MB as
wheels, ~84 MB unpacked). On the device, ``device_check.py`` calls :func:`ensure_site`, which checks each
wheel's sha256 against the manifest and unpacks them into ``.device_wheels/site`` (a wheel's archive layout is
its installed layout), then puts that folder on ``sys.path`` after the image's own packages.

Wheels are fetched with ``pip download --python-version 3.12 --platform manylinux2014_x86_64
--only-binary=:all: --no-deps`` (pure-Python wheels are accepted by that query as well): list every dependency
the image lacks yourself.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import zipfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The wheels' root folder: <repo>/.device_wheels unless SYNLEAK_DEVICE_WHEELS_DIR names another (the tests'
# imitation of the device image uses a temporary one, so a real carried set is never touched).
DEVICE_WHEELS_ROOT = os.environ.get("SYNLEAK_DEVICE_WHEELS_DIR") or os.path.join(REPO, ".device_wheels")
WHEELS_DIR = os.path.join(DEVICE_WHEELS_ROOT, "wheels")  # carried to the device
SITE_DIR = os.path.join(DEVICE_WHEELS_ROOT, "site")  # unpacked there by device_check.py
MANIFEST = "manifest.json"
SITE_MARKER = ".manifest-sha256"

# Distributions the device image lacks that device_check.py's code paths import (see the module docstring),
# each with its top-level import names (what tests/scripts/test_device_check.py lets through when it imitates
# the image). The audit reads images through Pillow, writes its report's plots with matplotlib and validates
# the report with jsonschema (the rest are their requirements; six for python-dateutil 2.x, which a fallback
# may fetch).
DEVICE_WHEEL_IMPORTS: dict[str, tuple[str, ...]] = {
    "ml-collections": ("ml_collections",),
    "pillow": ("PIL",),
    "matplotlib": ("matplotlib", "mpl_toolkits", "pylab"),
    "contourpy": ("contourpy",),
    "cycler": ("cycler",),
    "fonttools": ("fontTools",),
    "kiwisolver": ("kiwisolver",),
    "pyparsing": ("pyparsing",),
    "python-dateutil": ("dateutil",),
    "six": ("six",),
    "tzdata": ("tzdata",),
    "jsonschema": ("jsonschema",),  # every report is validated against its schema before it is written
    "jsonschema-specifications": ("jsonschema_specifications",),
    "referencing": ("referencing",),
    "rpds-py": ("rpds",),
    "attrs": ("attr", "attrs"),
}
DEVICE_WHEELS = tuple(DEVICE_WHEEL_IMPORTS)
DEVICE_WHEEL_MODULES = tuple(m for modules in DEVICE_WHEEL_IMPORTS.values() for m in modules)

PYTHON_VERSION = "3.12"
PLATFORM = "manylinux2014_x86_64"
MAX_CARRY_BYTES = 64 << 20  # the device tool carries at most 64 MiB of ignored paths in all


def pinned(package: str) -> str:
    """``package`` pinned to the version installed in this environment (what the tests here ran), unless it
    already names a version or is not installed here."""
    if any(op in package for op in "=<>~!"):
        return package
    try:
        return f"{package}=={importlib.metadata.version(package)}"
    except importlib.metadata.PackageNotFoundError:
        return package


def download(requirements: list[str], dest: str, fallback_unpinned: bool = False) -> tuple[list[str], list[str]]:
    """``pip download`` of each requirement (no dependencies) for CPython 3.12 manylinux x86_64 into a fresh
    ``dest``. With ``fallback_unpinned``, a pinned requirement the index has no 3.12 wheel of is fetched unpinned
    (the newest: it may differ from what ran here). Returns (wheel paths, the requirements actually fetched).
    Raises SystemExit with pip's message on failure."""
    if os.path.isdir(dest):
        shutil.rmtree(dest)  # only this run's wheels end up in the folder
    os.makedirs(dest)
    fetched = []
    for requirement in requirements:
        tries = [requirement]
        if fallback_unpinned and "==" in requirement:
            tries.append(requirement.split("==", 1)[0])
        for attempt in tries:
            cmd = [sys.executable, "-m", "pip", "download", "--python-version", PYTHON_VERSION, "--platform",
                   PLATFORM, "--only-binary=:all:", "--no-deps", "-d", dest, attempt]
            print(" ".join(cmd), flush=True)
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode == 0:
                fetched.append(attempt)
                break
            if attempt == tries[-1]:
                raise SystemExit(f"pip download failed for {attempt}: {proc.stderr.strip()[-1000:]}")
            print(f"no Python {PYTHON_VERSION} wheel of {attempt}; taking the newest {tries[-1]}", flush=True)
    return sorted(os.path.join(dest, f) for f in os.listdir(dest) if f.endswith(".whl")), fetched


def sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def unpack(wheel: str, site: str) -> None:
    """Unzips ``wheel`` into ``site``, refusing members that would land outside ``site``."""
    root = os.path.realpath(site)
    with zipfile.ZipFile(wheel) as archive:
        for member in archive.namelist():
            target = os.path.realpath(os.path.join(root, member))
            if not target.startswith(root + os.sep):
                raise SystemExit(f"{wheel}: member {member!r} would be written outside {site}; refusing")
        archive.extractall(root)


def ensure_site(wheels_dir: str = WHEELS_DIR, site: str = SITE_DIR) -> dict | None:
    """Unpacks the manifest's wheels into ``site`` unless it already holds exactly them. Returns None when
    there is no manifest (nothing carried), else {"site", "wheels", "unpacked" (False: already there)}.
    Raises SystemExit naming the file when a wheel is missing or its sha256 differs from the manifest."""
    manifest_path = os.path.join(wheels_dir, MANIFEST)
    if not os.path.isfile(manifest_path):
        return None
    with open(manifest_path, "rb") as f:
        raw = f.read()
    manifest = json.loads(raw)
    digest = hashlib.sha256(raw).hexdigest()
    names = [w["file"] for w in manifest["wheels"]]
    marker = os.path.join(site, SITE_MARKER)
    if os.path.isfile(marker) and open(marker).read().strip() == digest:
        return {"site": site, "wheels": names, "unpacked": False}
    for entry in manifest["wheels"]:
        path = os.path.join(wheels_dir, os.path.basename(entry["file"]))
        if not os.path.isfile(path):
            raise SystemExit(f"{manifest_path}: wheel {entry['file']} is missing")
        if sha256(path) != entry["sha256"]:
            raise SystemExit(f"{path}: sha256 differs from {manifest_path}; fetch the wheels again")
    if os.path.isdir(site):
        shutil.rmtree(site)  # a stale unpacked set must not shadow the carried one
    os.makedirs(site)
    for name in names:
        unpack(os.path.join(wheels_dir, os.path.basename(name)), site)
    with open(marker, "w") as f:
        f.write(digest + "\n")
    return {"site": site, "wheels": names, "unpacked": True}


def folder_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--packages", default=",".join(DEVICE_WHEELS),
                        help="comma-separated requirements (default: %(default)s, pinned to this venv's versions; "
                             "a pin the index has no Python 3.12 wheel of falls back to the newest wheel)")
    parser.add_argument("--dest", default=WHEELS_DIR, help="output folder (default: %(default)s)")
    parser.add_argument("--unpinned", action="store_true",
                        help="do not pin to this venv's versions (when the index has no Python 3.12 wheel of "
                             "them: the newest available is taken, which may differ from what ran here)")
    args = parser.parse_args()
    requirements = [p.strip() if args.unpinned else pinned(p.strip()) for p in args.packages.split(",") if p.strip()]
    if not requirements:
        raise SystemExit("--packages is empty")
    wheels, fetched = download(requirements, args.dest, fallback_unpinned=not args.unpinned)
    manifest = {"python_version": PYTHON_VERSION, "platform": PLATFORM, "requirements": fetched,
                "wheels": [{"file": os.path.basename(w), "bytes": os.path.getsize(w), "sha256": sha256(w)}
                           for w in wheels]}
    with open(os.path.join(args.dest, MANIFEST), "w") as f:
        json.dump(manifest, f, indent=1)
    for w in manifest["wheels"]:
        print(f"{w['file']}  {w['bytes'] / 2**20:.2f} MiB")
    size = folder_bytes(args.dest)
    rel = os.path.relpath(args.dest, REPO)
    print(f"{args.dest}: {size / 2**20:.1f} MiB; carry it with the device tool: carry=[\"{rel}\"]")
    if size > MAX_CARRY_BYTES:
        print(f"WARNING: {size / 2**20:.1f} MiB exceeds the device tool's 64 MiB carry limit; fetch fewer "
              "packages", file=sys.stderr)


if __name__ == "__main__":
    main()
