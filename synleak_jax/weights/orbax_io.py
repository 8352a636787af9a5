"""Orbax save/restore of converted Flax variables, with the metadata that says where they came from.

Layout of a converted-weights directory::

    <directory>/
      synleak_weights.json   # metadata (JSON): model name, input spec, source file + sha256, format, versions,
                             # and the shape/dtype of every variable (checked again on restore)
      variables/             # an orbax PyTree checkpoint of {"params": ..., "batch_stats": ...}

The metadata file is also how :func:`synleak_jax.weights.loader.load_weights` recognises such a directory.
A directory is written under a temporary name and renamed into place, so a crash never leaves a
half-written checkpoint under the final name.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Mapping

import jax
import numpy as np

from synleak_jax.files import atomic_write

METADATA_FILE = "synleak_weights.json"
VARIABLES_DIR = "variables"
FORMAT_VERSION = 1
REQUIRED_METADATA = ("model_name",)


class CheckpointError(ValueError):
    """An orbax weights directory is missing, incomplete or inconsistent; names the directory."""


def is_weights_dir(path: str | os.PathLike) -> bool:
    """True if ``path`` is a directory written by :func:`save_variables`."""
    p = Path(path)
    return p.is_dir() and (p / METADATA_FILE).is_file()


def _flat_shapes(variables: Mapping[str, Any]) -> dict[str, list]:
    flat, _ = jax.tree_util.tree_flatten_with_path(variables)
    out = {}
    for keypath, leaf in flat:
        name = "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in keypath)
        leaf = np.asarray(leaf)
        out[name] = [list(leaf.shape), str(leaf.dtype)]
    return out


def save_variables(
    directory: str | os.PathLike,
    variables: Mapping[str, Any],
    metadata: Mapping[str, Any],
    *,
    overwrite: bool = False,
) -> Path:
    """Writes ``variables`` (a Flax variable pytree of arrays) and ``metadata`` (JSON-serialisable) to
    ``directory``.

    ``metadata`` must contain ``model_name``; by convention also ``input_spec`` (``InputSpec.to_dict()``),
    ``source_file``, ``source_sha256`` and ``format``. ``synleak_version``, ``format_version`` and the
    variable shapes/dtypes are added here.

    Raises:
      FileExistsError: ``directory`` exists and ``overwrite`` is False, or it exists, is not empty and is not
        a weights directory written by this function (never deletes foreign data).
      CheckpointError: metadata lacks a required key or is not JSON-serialisable; the output cannot be
        written (read-only filesystem, not enough free space, permission, I/O error) — one line naming it.
    """
    from synleak_jax import __version__

    import orbax.checkpoint as ocp

    directory = Path(directory).absolute()
    missing = [k for k in REQUIRED_METADATA if k not in metadata]
    if missing:
        raise CheckpointError(f"{directory}: metadata lacks {missing}")
    if directory.exists():
        if not overwrite:
            raise FileExistsError(f"{directory}: already exists (pass overwrite=True / --overwrite to replace it)")
        if not (is_weights_dir(directory) or (directory.is_dir() and not any(directory.iterdir()))):
            raise FileExistsError(f"{directory}: exists and is not a synleak weights directory; refusing to replace it")
    variables = jax.tree.map(np.asarray, dict(variables))
    meta = dict(metadata)
    meta.update(
        format_version=FORMAT_VERSION,
        synleak_version=__version__,
        variables=_flat_shapes(variables),
    )
    try:
        meta_text = json.dumps(meta, indent=2, sort_keys=True)
    except TypeError as e:
        raise CheckpointError(f"{directory}: metadata is not JSON-serialisable ({e})") from None

    tmp = directory.parent / f".{directory.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        directory.parent.mkdir(parents=True, exist_ok=True)
        tmp.mkdir()
        # Refuse a filesystem without room before orbax starts: once its writer threads fail they print one
        # traceback per pending write (105 on a full disk).
        needed = int(sum(np.asarray(v).nbytes for v in jax.tree.leaves(variables)) * _WRITE_OVERHEAD) + len(meta_text)
        free = _free_bytes(tmp)
        if free is not None and free < needed + _WRITE_SLACK_BYTES:
            raise CheckpointError(
                f"{directory}: not enough free space: the converted weights need about {needed:,} bytes, its "
                f"filesystem has {free:,} free")
        threads_before = set(threading.enumerate())
        try:
            with _quiet_background_errors():
                ocp.PyTreeCheckpointer().save(tmp / VARIABLES_DIR, variables)
        except Exception as e:  # orbax/tensorstore raise ValueError/OSError/RuntimeError... for write failures
            # orbax's writer threads can still be creating files in tmp: let them finish before it is removed
            # (else a half-written temporary directory can reappear after the cleanup).
            _join_new_threads(threads_before, _WRITER_JOIN_SECONDS)
            _wait_until_unchanged(tmp, _WRITER_JOIN_SECONDS)
            raise CheckpointError(f"{directory}: cannot write the converted weights ({_short(e)})") from None
        atomic_write(str(tmp / METADATA_FILE), meta_text)
        if directory.exists():
            # Move the old one aside first: at every moment a complete checkpoint sits under one of the names.
            old = directory.parent / f".{directory.name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(directory, old)
            os.replace(tmp, directory)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, directory)
    except OSError as e:  # EROFS, ENOSPC, EACCES, EDQUOT... on our own mkdir/write/rename
        raise CheckpointError(f"{directory}: cannot write the converted weights ({e.strerror or e})") from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return directory


# Orbax (OCDBT) bytes on disk per byte of arrays, and a fixed allowance for its manifests and our metadata:
# measured 1.00x + ~60 KiB for mobilefacenet and iresnet18 (du of the written directory).
_WRITE_OVERHEAD = 1.05
_WRITE_SLACK_BYTES = 1 << 20


_WRITER_JOIN_SECONDS = 30.0


def _join_new_threads(before: set, timeout: float) -> None:
    """Waits (up to ``timeout`` seconds in all) for the threads started since ``before`` was taken."""
    deadline = time.monotonic() + timeout
    for thread in set(threading.enumerate()) - before:
        if thread is not threading.current_thread():
            thread.join(max(0.0, deadline - time.monotonic()))


def _tree_state(path: Path) -> tuple:
    """(entries, bytes, newest mtime) of everything under ``path``: changes while anything writes there."""
    count = size = newest = 0
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            try:
                st = os.lstat(os.path.join(root, name))
            except OSError:
                continue
            count, size, newest = count + 1, size + st.st_size, max(newest, st.st_mtime_ns)
    return count, size, newest


def _wait_until_unchanged(path: Path, timeout: float, settle: float = 0.5) -> None:
    """Waits until nothing under ``path`` has changed for ``settle`` seconds (tensorstore's own threads, not
    Python's, finish the writes already issued when orbax gave up), at most ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last, since = None, time.monotonic()
    while time.monotonic() < deadline:
        state = _tree_state(path)
        if state != last:
            last, since = state, time.monotonic()
        elif time.monotonic() - since >= settle:
            return
        time.sleep(0.05)


def _free_bytes(path: Path) -> int | None:
    try:
        st = os.statvfs(path)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def _short(error: BaseException, limit: int = 300) -> str:
    """The OS error behind a tensorstore failure ("No space left on device"), else the message's first line,
    shortened (tensorstore's messages repeat long paths)."""
    text = str(error)
    code = re.search(r"os_error_code='?(\d+)", text)
    if code:
        return f"{os.strerror(int(code.group(1)))} [errno {code.group(1)}]"
    text = (text.strip().splitlines() or [type(error).__name__])[0]
    return text if len(text) <= limit else text[:limit] + "..."


@contextlib.contextmanager
def _quiet_background_errors():
    """While orbax writes: its worker threads' failures are not printed (the caller raises one error instead).

    A failed write makes orbax log from each writer thread and makes tensorstore's completion callbacks print
    "RuntimeError: Event loop is closed" tracebacks (through ``sys.unraisablehook``; 105 on a full disk), also after
    the save has raised. During the save everything is quiet; afterwards the process's own hooks are back,
    and after a failure they are wrapped by a filter that drops exactly that closed-event-loop error and
    passes every other one through.
    """
    import logging as std_logging

    loggers = [std_logging.getLogger(name) for name in ("absl", "orbax", "orbax.checkpoint", "asyncio")]
    levels = [lg.level for lg in loggers]
    hooks = (sys.excepthook, threading.excepthook, sys.unraisablehook)
    for lg in loggers:
        lg.setLevel(std_logging.CRITICAL)
    sys.excepthook = lambda *args: None
    threading.excepthook = lambda args: None
    sys.unraisablehook = lambda args: None
    failed = True
    try:
        yield
        failed = False
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
        sys.excepthook, threading.excepthook, sys.unraisablehook = hooks
        if failed:
            _filter_closed_loop_errors()


def _is_closed_loop_error(exc) -> bool:
    return isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed"


def _filter_closed_loop_errors() -> None:
    """Wraps sys/threading excepthooks so that late tensorstore callbacks on a closed event loop stay silent;
    any other exception still reaches the previous hook. Idempotent."""
    import logging as std_logging

    if getattr(sys.unraisablehook, "_synleak_filter", False):
        return
    previous_sys, previous_thread, previous_unraisable = sys.excepthook, threading.excepthook, sys.unraisablehook

    def sys_hook(exc_type, exc, tb):
        if not _is_closed_loop_error(exc):
            previous_sys(exc_type, exc, tb)

    def thread_hook(args):
        if not _is_closed_loop_error(args.exc_value):
            previous_thread(args)

    def unraisable_hook(args):  # how the tensorstore callbacks report (measured)
        if not _is_closed_loop_error(args.exc_value):
            previous_unraisable(args)

    unraisable_hook._synleak_filter = True
    sys.excepthook, threading.excepthook, sys.unraisablehook = sys_hook, thread_hook, unraisable_hook
    std_logging.getLogger("asyncio").addFilter(_drop_orphaned_write_errors)


def _drop_orphaned_write_errors(record) -> bool:
    """asyncio logs "Task exception was never retrieved" when an orbax write task that failed after the save
    gave up is garbage-collected; those are tensorstore status errors ("OUT_OF_RANGE: ...") already reported.
    Everything else passes."""
    exc = record.exc_info[1] if record.exc_info else None
    if exc is None and isinstance(getattr(record, "exception", None), BaseException):
        exc = record.exception
    if record.getMessage().startswith("Task exception was never retrieved"):
        context = str(exc) if exc is not None else record.getMessage()
        return not re.search(r"\b[A-Z_]{5,}: Error (writing|reading)", context)
    return True


def read_metadata(directory: str | os.PathLike) -> dict:
    """The metadata dict of a weights directory (cheap: no arrays are read)."""
    directory = Path(directory).absolute()
    if not directory.exists():
        raise FileNotFoundError(f"{directory}: no such weights directory")
    path = directory / METADATA_FILE
    if not path.is_file():
        raise CheckpointError(f"{directory}: not a synleak weights directory (no {METADATA_FILE})")
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: corrupt metadata ({e})") from None
    if not isinstance(meta, dict) or any(k not in meta for k in REQUIRED_METADATA):
        raise CheckpointError(f"{path}: metadata lacks {list(REQUIRED_METADATA)}")
    if meta.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(f"{path}: written by a newer synleak (format_version {meta['format_version']})")
    return meta


def recorded_shapes(meta: Mapping[str, Any]) -> dict[str, tuple[int, ...]] | None:
    """``{"params/conv/kernel": shape}`` recorded in a directory's metadata (None if it records none)."""
    recorded = meta.get("variables")
    if not isinstance(recorded, dict):
        return None
    try:
        return {key: tuple(int(n) for n in value[0]) for key, value in recorded.items()}
    except (TypeError, ValueError, IndexError):
        return None


def check_variables_fit(directory: str | os.PathLike, model_name: str, got: Mapping[str, tuple[int, ...]],
                        expected: Mapping[str, tuple[int, ...]]) -> None:
    """Raises CheckpointError unless the directory's variable shapes ``got`` are exactly the shapes ``expected``
    by ``model_name`` (both flat ``{"params/conv/kernel": shape}``)."""
    got = {key: tuple(shape) for key, shape in got.items()}
    want = {key: tuple(shape) for key, shape in expected.items()}
    if got == want:
        return
    missing = sorted(set(want) - set(got))
    extra = sorted(set(got) - set(want))
    wrong = sorted(k for k in set(got) & set(want) if got[k] != want[k])
    details = []
    if missing:
        details.append(f"{len(missing)} variable(s) of {model_name} missing, e.g. {missing[0]!r}")
    if extra:
        details.append(f"{len(extra)} variable(s) {model_name} does not have, e.g. {extra[0]!r}")
    if wrong:
        details.append(f"{len(wrong)} with other shapes, e.g. {wrong[0]!r} {got[wrong[0]]} vs {want[wrong[0]]}")
    raise CheckpointError(
        f"{directory}: its metadata says model_name {model_name!r} but its variables do not fit that model: "
        + "; ".join(details))


def restore_variables(directory: str | os.PathLike) -> tuple[dict, dict]:
    """Reads a directory written by :func:`save_variables`.

    Returns:
      (variables, metadata): variables as a nested dict of numpy arrays (bit-identical to what was saved),
      metadata as saved (plus the keys added by :func:`save_variables`).

    Raises:
      FileNotFoundError / CheckpointError naming the directory.
    """
    import orbax.checkpoint as ocp

    directory = Path(directory).absolute()
    meta = read_metadata(directory)
    state = directory / VARIABLES_DIR
    if not state.is_dir():
        raise CheckpointError(f"{directory}: missing {VARIABLES_DIR}/ (incomplete checkpoint)")
    ckptr = ocp.PyTreeCheckpointer()
    try:
        tree = ckptr.metadata(state).item_metadata.tree
        restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
        variables = ckptr.restore(state, restore_args=restore_args)
    except Exception as e:  # orbax/tensorstore raise many types for damaged checkpoints
        raise CheckpointError(f"{directory}: cannot restore variables ({type(e).__name__}: {e})") from None
    variables = jax.tree.map(np.asarray, variables)
    expected = meta.get("variables")
    if expected is not None:
        got = json.loads(json.dumps(_flat_shapes(variables)))
        if got != expected:
            diff = sorted(set(map(str, got.items())) ^ set(map(str, expected.items())))[:4]
            raise CheckpointError(f"{directory}: restored variables differ from the recorded shapes/dtypes: {diff}")
    return variables, meta
