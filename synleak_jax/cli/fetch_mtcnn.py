"""synleak-fetch-mtcnn: get MTCNN weights from the facenet-pytorch wheel into the local cache.

    synleak-fetch-mtcnn                      # pip-downloads facenet-pytorch==2.6.0 (no deps, not installed)
    synleak-fetch-mtcnn --wheel=PATH.whl     # use a wheel you already have
    synleak-fetch-mtcnn --force              # convert again even if the cache is valid

The wheel is opened with zipfile; its three legacy torch files are read with the project's restricted
reader (no torch, no code from the wheel runs) and converted to orbax checkpoints in
``$SYNLEAK_CACHE/mtcnn`` (default ``~/.cache/synleak_jax/mtcnn``). Idempotent: a valid cache is kept.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

from absl import app, flags, logging

FACENET_PYTORCH_VERSION = "2.6.0"

_WHEEL = flags.DEFINE_string("wheel", None, "Path to an already-downloaded facenet-pytorch wheel.")
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


def fetch(wheel: str | None = None, cache_dir: str | None = None, force: bool = False) -> Path:
    """Ensures the cache holds converted MTCNN weights; returns the cache directory."""
    from synleak_jax.weights import mtcnn_weights

    directory = Path(cache_dir).expanduser() if cache_dir else mtcnn_weights.cache_dir()
    ok, why = mtcnn_weights.cache_is_valid(directory)
    if ok and not force:
        logging.info("MTCNN weights already present and valid in %s; nothing to do", directory)
        return directory
    logging.info("converting MTCNN weights into %s (%s)", directory, "forced" if ok else why)
    with tempfile.TemporaryDirectory() as tmp:
        if wheel:
            wheel_path = Path(wheel).expanduser()
            if not wheel_path.is_file():
                raise FileNotFoundError(f"--wheel={wheel}: no such file")
        else:
            wheel_path = download_wheel(Path(tmp))
        variables, hashes = mtcnn_weights.convert_wheel(wheel_path)
        mtcnn_weights.save_to_cache(variables, hashes, origin=wheel_path.name, directory=directory)
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
    app.run(main)


if __name__ == "__main__":
    run()
