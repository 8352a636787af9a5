"""Shared CLI machinery (synleak_jax/cli/common.py): the output-directory guard, which exceptions are user
errors and their one-line messages, the log filter (unit and end to end on a real run)."""

from __future__ import annotations

import errno
import logging as std_logging
import os
import subprocess
import sys

import pytest

from synleak_jax.cli import common
from synleak_jax.data import rejects
from synleak_jax.embed.store import StoreMismatchError
from synleak_jax.weights import loader, mtcnn_weights
from tests.cli.test_help import REPO


class Boom(Exception):
    pass


# ------------------------------------------------------------------------------------------------------------
# output_dir_guard


def test_guard_removes_the_empty_directories_it_created(tmp_path):
    target = tmp_path / "a" / "b" / "out"
    with pytest.raises(Boom):
        with common.output_dir_guard(target):
            (target / "stores" / "x").mkdir(parents=True)  # empty subfolders only
            raise Boom()
    assert list(tmp_path.iterdir()) == []  # a/, a/b/ and out/ were created by the run: all gone


def test_guard_keeps_what_existed_or_holds_files(tmp_path):
    existing = tmp_path / "existing"
    existing.mkdir()
    with pytest.raises(Boom):
        with common.output_dir_guard(existing):
            raise Boom()
    assert existing.is_dir()  # not created by this run

    parent = tmp_path / "parent"
    parent.mkdir()
    with pytest.raises(Boom):
        with common.output_dir_guard(parent / "new" / "out"):
            (parent / "new" / "out").mkdir(parents=True)
            raise Boom()
    assert parent.is_dir() and list(parent.iterdir()) == []  # only the created part removed

    with pytest.raises(Boom):
        with common.output_dir_guard(tmp_path / "work"):
            (tmp_path / "work" / "stores").mkdir(parents=True)
            (tmp_path / "work" / "stores" / "chunk_0.npy").write_bytes(b"finished work")
            raise Boom()
    assert (tmp_path / "work" / "stores" / "chunk_0.npy").read_bytes() == b"finished work"  # never lose work

    with pytest.raises(Boom):
        with common.output_dir_guard(tmp_path / "linked"):
            (tmp_path / "linked").mkdir()
            os.symlink(existing, tmp_path / "linked" / "link")
            raise Boom()
    assert (tmp_path / "linked" / "link").is_symlink()


def test_guard_on_success_and_exit_codes(tmp_path):
    with common.output_dir_guard(tmp_path / "ok"):
        (tmp_path / "ok").mkdir()
    assert (tmp_path / "ok").is_dir()  # success keeps even an empty directory
    with pytest.raises(SystemExit):
        with common.output_dir_guard(tmp_path / "exit0"):
            (tmp_path / "exit0").mkdir()
            sys.exit(0)
    assert (tmp_path / "exit0").is_dir()
    for how in (lambda: sys.exit(2), lambda: (_ for _ in ()).throw(KeyboardInterrupt())):
        with pytest.raises((SystemExit, KeyboardInterrupt)):
            with common.output_dir_guard(tmp_path / "failed"):
                (tmp_path / "failed").mkdir()
                how()
        assert not (tmp_path / "failed").exists()


# ------------------------------------------------------------------------------------------------------------
# user errors


def test_user_errors_by_class_and_errno():
    assert common.is_user_error(rejects.DataError("x"))
    assert common.is_user_error(rejects.RecordError(rejects.UNREADABLE, "x"))
    assert common.is_user_error(StoreMismatchError("/s", [("flip", True, False)]))  # a subclass of StoreError
    assert common.is_user_error(loader.WeightsFormatError("x"))
    assert common.is_user_error(FileNotFoundError(errno.ENOENT, "No such file or directory", "/x"))
    assert common.is_user_error(OSError(errno.ENOSPC, "No space left on device", "/full/disk"))
    assert common.is_user_error(OSError(errno.EROFS, "Read-only file system", "/ro"))
    assert not common.is_user_error(OSError(errno.EIO, "Input/output error", "/x"))
    assert not common.is_user_error(ValueError("a bug"))
    assert not common.is_user_error(KeyError("a bug"))

    class DataError(ValueError):  # same name, not the project's class: not a user error
        pass

    assert not common.is_user_error(DataError("x"))
    assert common.is_user_error(DataError("x"), extra=(DataError,))


def test_error_messages_are_one_line_and_name_the_file():
    assert common.error_message(OSError(errno.ENOSPC, "No space left on device", "/out/x.npy")) == \
        "/out/x.npy: No space left on device"
    assert common.error_message(PermissionError(errno.EACCES, "Permission denied", "/a", None, "/b")) == \
        "/a: Permission denied (-> /b)"
    assert common.error_message(StoreMismatchError("/s", [("flip", True, False), ("seed", 1, 2)])) == (
        "embedding store /s was made with different settings; refusing to reuse it: flip: stored true vs requested "
        "false; seed: stored 1 vs requested 2; Use a different output directory, or pass --overwrite to recompute it.")
    assert common.error_message(FileNotFoundError("--wheel=x.whl: no such file")) == "--wheel=x.whl: no such file"


# ------------------------------------------------------------------------------------------------------------
# logs


def _record(name, level, msg, pathname="x.py"):
    return std_logging.LogRecord(name, level, pathname, 1, msg, None, None)


def test_log_filter_drops_only_the_noise():
    keep = common._QuietFilter().filter
    tpu = "Unable to initialize backend 'tpu': INTERNAL: Failed to open libtpu.so"
    assert not keep(_record("jax._src.xla_bridge", std_logging.INFO, tpu))
    assert keep(_record("jax._src.xla_bridge", std_logging.INFO, "Unable to initialize backend 'cuda': no GPU"))
    orbax = "/venv/lib/python3.11/site-packages/orbax/checkpoint/_src/futures/future.py"
    assert not keep(_record("absl", std_logging.INFO, "if no error is raised then it is a bug", orbax))
    assert keep(_record("absl", std_logging.WARNING, "orbax warning", orbax))
    assert keep(_record("absl", std_logging.INFO, "our own progress", "/repo/synleak_jax/embed/api.py"))


def test_a_real_run_logs_no_tpu_line_and_no_orbax_chatter(tmp_path):
    wheel = mtcnn_weights.cached_wheel(mtcnn_weights.cache_dir())
    if wheel is None:
        pytest.skip("needs the facenet-pytorch wheel kept by synleak-fetch-mtcnn")
    env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}  # let jax probe for a TPU as users' runs do
    env["PYTHONPATH"] = REPO
    p = subprocess.run([sys.executable, "-c", "from synleak_jax.cli.fetch_mtcnn import run; run()", f"--wheel={wheel}",
                        f"--cache_dir={tmp_path / 'cache'}"], env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "Unable to initialize backend" not in p.stderr
    assert "orbax" not in p.stderr and "if no error is raised" not in p.stderr
    lines = p.stderr.strip().splitlines()
    assert 1 <= len(lines) <= 4, lines  # "converting ..." and "written to ..." (was ~70 lines)
    assert p.stdout.strip() == str(tmp_path / "cache")
    assert mtcnn_weights.cache_is_valid(tmp_path / "cache")[0]


# ------------------------------------------------------------------------------------------------------------
# run_program on mains that fail in other ways


def _program(body: str, *args: str):
    code = ("from synleak_jax.cli import common\n"
            "def main(argv):\n"
            f"    {body}\n"
            "common.run_program(main, doc='synleak-test: a test program.')\n")
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": REPO})


def test_interrupt_bug_and_success():
    p = _program("raise KeyboardInterrupt()")
    assert p.returncode == 130 and p.stderr.strip() == ("synleak-test: error: interrupted (rerun the same command "
                                                        "to resume)")
    p = _program("raise ZeroDivisionError('a bug')")
    assert p.returncode == 1 and "Traceback" in p.stderr and "ZeroDivisionError: a bug" in p.stderr
    p = _program("print('done')")
    assert p.returncode == 0 and p.stdout == "done\n" and p.stderr == ""
    p = _program("print('done')", "--help")
    assert p.returncode == 0 and p.stdout.startswith("synleak-test: a test program.\n\nflags of synleak-test:")
