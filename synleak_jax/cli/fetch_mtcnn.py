"""synleak-fetch-mtcnn: get MTCNN weights from the facenet-pytorch wheel into the local cache.

    synleak-fetch-mtcnn                      # pip-downloads facenet-pytorch==2.6.0 (no deps, not installed)
    synleak-fetch-mtcnn --wheel=PATH.whl     # use a wheel you already have
    synleak-fetch-mtcnn --force              # convert again even if the cache is valid

The wheel is opened with zipfile; its three legacy torch files are read with the project's restricted
reader (no torch, no code from the wheel runs) and converted to orbax checkpoints in
``$SYNLEAK_CACHE/mtcnn`` (default ``~/.cache/synleak_jax/mtcnn``). The wheel itself is kept as
``<cache>/wheel/<wheel name>`` (the detection tests run facenet-pytorch's own ``detect_face`` from it as
the reference; nothing installs it). Idempotent: a valid cache with its wheel is left alone; a valid cache
without the wheel only gets the wheel (converted again only if the wheel's weights differ from the cache's).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from absl import app, flags, logging

from synleak_jax.cli import common

FACENET_PYTORCH_VERSION = "2.6.0"

_WHEEL = flags.DEFINE_string("wheel", None, "Path to an already-downloaded facenet-pytorch wheel (copied into "
                             "the cache, not installed).")
_CACHE = flags.DEFINE_string("cache_dir", None, "Output directory (default: $SYNLEAK_CACHE/mtcnn or "
                             "~/.cache/synleak_jax/mtcnn).")
_FORCE = flags.DEFINE_bool("force", False, "Convert again even if the cache is already valid.")


def download_wheel(dest: Path) -> Path:
    """``python -m pip download --no-deps facenet-pytorch==2.6.0 -d dest``; returns the wheel path."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           f"facenet-pytorch=={FACENET_PYTORCH_VERSION}", "-d", str(dest)]
    logging.info("running: %s", " ".join(cmd))
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"pip download failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}\n"
                           "Download the wheel elsewhere and pass --wheel=PATH.")
    wheels = sorted(dest.glob("facenet_pytorch-*.whl"))
    if not wheels:
        raise RuntimeError(f"pip download left no facenet_pytorch wheel in {dest}")
    return wheels[0]


def keep_wheel(wheel_path: Path, directory: Path) -> Path:
    """Copies the wheel to ``<directory>/wheel/`` (atomically, replacing any other wheel kept there)."""
    from synleak_jax.weights import mtcnn_weights

    target_dir = directory / mtcnn_weights.WHEEL_SUBDIR
    target = target_dir / wheel_path.name
    if target.exists() and target.resolve() == wheel_path.resolve():
        return target
    target_dir.mkdir(parents=True, exist_ok=True)
    partial = target_dir / (wheel_path.name + ".partial")
    shutil.copyfile(wheel_path, partial)
    os.replace(partial, target)
    for other in target_dir.glob("*.whl"):
        if other != target:
            other.unlink()
    return target


def fetch(wheel: str | None = None, cache_dir: str | None = None, force: bool = False) -> Path:
    """Ensures the cache holds converted MTCNN weights and their source wheel; returns the cache directory.

    The wheel comes from ``wheel`` (a path) if given, else from ``pip download``.
    """
    from synleak_jax.weights import mtcnn_weights

    directory = Path(cache_dir).expanduser() if cache_dir else mtcnn_weights.cache_dir()
    ok, why = mtcnn_weights.cache_is_valid(directory)
    kept = mtcnn_weights.cached_wheel(directory)
    if ok and kept is not None and not force:
        logging.info("MTCNN weights and wheel already present and valid in %s; nothing to do", directory)
        return directory
    with tempfile.TemporaryDirectory() as tmp:
        if wheel:
            wheel_path = Path(wheel).expanduser()
            if not wheel_path.is_file():
                raise FileNotFoundError(f"--wheel={wheel}: no such file")
        else:
            wheel_path = download_wheel(Path(tmp))
        if ok and not force:
            hashes = mtcnn_weights.wheel_hashes(wheel_path)
            if hashes == mtcnn_weights.read_manifest(directory).get("sha256"):
                kept = keep_wheel(wheel_path, directory)
                logging.info("MTCNN weights already valid in %s; kept their wheel as %s", directory, kept)
                return directory
            why = f"{wheel_path.name} carries other weights than the cache"
        logging.info("converting MTCNN weights into %s (%s)", directory, "forced" if force else why)
        variables, hashes = mtcnn_weights.convert_wheel(wheel_path)
        mtcnn_weights.save_to_cache(variables, hashes, origin=wheel_path.name, directory=directory)
        keep_wheel(wheel_path, directory)
    ok, why = mtcnn_weights.cache_is_valid(directory)
    if not ok:
        raise RuntimeError(f"conversion finished but the cache is not valid: {why}")
    logging.info("MTCNN weights written to %s (%s)", directory, ", ".join(f"{k} {v[:12]}" for k, v in hashes.items()))
    return directory


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    directory = fetch(_WHEEL.value, _CACHE.value, _FORCE.value)
    print(directory)


def run():
    common.run_program(main, doc=__doc__)


if __name__ == "__main__":
    run()
