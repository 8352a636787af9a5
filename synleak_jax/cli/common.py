"""What every ``synleak-*`` program shares: the entry wrapper (help, ``--show_config``, one-line user errors,
quiet logs), the preset-aware ``--config`` flag and the output-directory guard.

Every CLI module ends with::

    def run():
        common.run_program(main, doc=__doc__, ...)

* ``--help`` (``-h``, ``-?``, ``--helpshort``) prints the module docstring (what the program does, with its
  examples), the program's own flags and, for the audit, the presets; exit 0. ``--helpfull`` adds absl's flags.
* ``--show_config`` (config-driven programs) prints every config field with its value, the schema default where
  a preset or an override changed it, and the field's comment from ``synleak_jax/config.py``; exit 0.
* A user error (a missing or unreadable file, bad weights, a bad store, a bad dataset layout, a bad flag) is
  one line on stderr, ``synleak-<prog>: error: <message>``, exit status 2, no traceback. ``--debug`` (or the
  environment variable ``SYNLEAK_DEBUG=1``) prints the traceback above that line. An interrupt is one line, status 130.
  Anything else is a bug and keeps its traceback.
* Logs: JAX's "Unable to initialize backend 'tpu'" (an INFO line on every CPU-only run) and orbax's INFO
  chatter are dropped; warnings and errors from both still show.

Exit status: 0 success (and ``--help``, ``--show_config``), 1 an unexpected failure (a bug: traceback),
2 a user error, 130 interrupted.
"""

from __future__ import annotations

import contextlib
import errno
import importlib.util
import logging as std_logging
import os
import re
import sys
import textwrap
import traceback
from typing import Any, Callable, Iterator, NoReturn, Sequence

from absl import app, flags
from absl import logging
from ml_collections import ConfigDict, config_flags
from ml_collections.config_flags import config_path

from synleak_jax import configs

FLAGS = flags.FLAGS

#: Exit status of a user error (argparse's convention) and of an interrupted run (128 + SIGINT).
EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130

#: Names of the project's exception classes that mean "the user gave something wrong" (matched by class name
#: anywhere in the exception's MRO, for classes defined in synleak_jax). Names, not imports: a module that was
#: never imported cannot have raised its exception, importing them all would load JAX for ``--help``, and a
#: class that moves to another module is still found.
USER_ERROR_NAMES = frozenset({
    "AuditError",  # audit.py
    "ConfigError",  # config validation (config.validate_*)
    "UnknownPresetError",  # configs/__init__.py
    "DoorError",  # embed/door.py
    "RemedyError",  # report/remedy.py
    "StoreError", "StoreMismatchError",  # embed/store.py
    "WeightsFormatError", "UnknownModelError",  # weights/loader.py
    "WeightMappingError", "OnnxImportError",  # weights/mapping.py, weights/onnx_import.py
    "TorchFileError", "ForbiddenGlobalError",  # weights/torch_pickle.py
    "CheckpointError",  # weights/orbax_io.py
    "DlibFormatError",  # weights/convert_dlib.py
    "DataError", "RecordError", "UnsafePickleError",  # data/rejects.py, data/verification.py
    "FaceCheckError",  # data/face_check.py (require_faces)
})

#: OS errors that are the user's to fix (the file named in the message), beyond the OSError subclasses below.
USER_OS_ERRNOS = frozenset({errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.ENAMETOOLONG, errno.ELOOP,
                            errno.ENOTDIR, errno.EISDIR, errno.EACCES, errno.EPERM, errno.ENOENT, errno.EEXIST})
USER_OS_ERRORS = (FileNotFoundError, FileExistsError, PermissionError, IsADirectoryError, NotADirectoryError)


def is_user_error(exc: BaseException, extra: Sequence[type] = ()) -> bool:
    """Whether ``exc`` is a user mistake to report in one line (see :data:`USER_ERROR_NAMES`)."""
    if isinstance(exc, (app.UsageError, flags.Error)) or (extra and isinstance(exc, tuple(extra))):
        return True
    if isinstance(exc, USER_OS_ERRORS) or (isinstance(exc, OSError) and exc.errno in USER_OS_ERRNOS):
        return True
    return any(cls.__name__ in USER_ERROR_NAMES and cls.__module__.startswith("synleak_jax")
               for cls in type(exc).__mro__)


def error_message(exc: BaseException) -> str:
    """One line for ``exc``: an OSError names its file(s); a multi-line message is joined with "; "."""
    if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        text = f"{exc.filename}: {exc.strerror}"
        if exc.filename2 is not None:
            text += f" (-> {exc.filename2})"
    else:
        text = str(exc) or type(exc).__name__
    if isinstance(exc, KeyError) and len(exc.args) == 1 and isinstance(exc.args[0], str):
        text = exc.args[0]  # str(KeyError) quotes its message
    return one_line(text)


def one_line(text: str) -> str:
    """Joins the non-empty lines of ``text`` with "; " (" " after a line ending in ":"), no line breaks left."""
    out = ""
    for line in (line.strip() for line in str(text).splitlines()):
        if line:
            out += ("" if not out else " " if out.endswith(":") else "; ") + line
    return out


def fail(prog: str, message: str, code: int = EXIT_USER_ERROR) -> NoReturn:
    """Prints ``<prog>: error: <message>`` as one line on stderr and exits with ``code``.

    asyncio is silenced first: a write that failed inside orbax/tensorstore (ENOSPC, EFBIG, EROFS) leaves
    futures whose exception asyncio logs when they are collected at exit ("Future exception was never
    retrieved" + the same error again): after the one line that says what happened, that is noise (seen in
    ~1 of 3 runs of the full-disk tests)."""
    std_logging.getLogger("asyncio").setLevel(std_logging.CRITICAL + 1)
    sys.stdout.flush()
    print(f"{prog}: error: {one_line(message)}", file=sys.stderr, flush=True)
    sys.exit(code)


def debug_enabled() -> bool:
    """``--debug`` given, or ``SYNLEAK_DEBUG`` set to something other than "", "0", "false", "no"."""
    env = os.environ.get("SYNLEAK_DEBUG", "").strip().lower() not in ("", "0", "false", "no")
    flag = "debug" in FLAGS and FLAGS.is_parsed() and bool(FLAGS["debug"].value)
    return env or flag


# ----------------------------------------------------------------------------------------------------------
# Logs


class _QuietFilter(std_logging.Filter):
    """Drops two kinds of INFO noise, keeps everything at WARNING and above.

    * JAX's ``Unable to initialize backend 'tpu': ... libtpu.so ...`` (logger ``jax._src.xla_bridge``, INFO):
      printed by every CPU-only run because jax probes the TPU plugin first. Other backends' messages (a
      failing CUDA plugin on a GPU machine) are kept: there the line explains a slow run.
    * orbax-checkpoint's INFO records (it logs through absl: ~20 lines per checkpoint saved, e.g.
      "if no error is raised then it is a bug"); recognised by the file that logged them.
    """

    def filter(self, record: std_logging.LogRecord) -> bool:
        if record.levelno >= std_logging.WARNING:
            return True
        if record.name == "jax._src.xla_bridge" and str(record.msg).startswith("Unable to initialize backend 'tpu'"):
            return False
        path = (record.pathname or "").replace("\\", "/")
        return "/orbax/" not in path


_FILTER = _QuietFilter()


def setup_logging() -> None:
    """Installs :class:`_QuietFilter` on absl's handler (every record of a CLI run passes it) and on the
    emitting loggers (for other handlers). Idempotent."""
    targets = [logging.get_absl_handler(), std_logging.getLogger("jax._src.xla_bridge"),
               std_logging.getLogger("absl")]
    for target in targets:
        if _FILTER not in target.filters:
            target.addFilter(_FILTER)


# ----------------------------------------------------------------------------------------------------------
# The preset-aware --config flag


class PresetFileParser(flags.ArgumentParser):
    """``--config`` values: a preset name, an old checkout path ``configs/<name>[.py]`` or any ``.py`` file
    with ``get_config()`` (see :func:`synleak_jax.configs.resolve`). Errors are one line (ValueError)."""

    def __init__(self, name: str, program: str | None = None, lock_config: bool = True):
        self.name = name
        self.program = program
        self.lock_config = lock_config

    def parse(self, argument: Any) -> ConfigDict:
        if not isinstance(argument, str):
            return argument
        path, _, config_argument = configs.resolve(argument, self.program).partition(":")
        spec = importlib.util.spec_from_file_location(f"{self.name}_config", path)
        if spec is None or spec.loader is None:
            raise ValueError(f"{path} is not a Python file")
        module = importlib.util.module_from_spec(spec)
        try:
            spec.loader.exec_module(module)
        except OSError as e:
            raise ValueError(f"cannot read {path}: {e.strerror or e}") from e
        except Exception as e:  # the user's own config file failed: say where, keep the cause for --debug
            raise ValueError(f"{path} failed to load: {type(e).__name__}: {one_line(str(e))}") from e
        if not callable(getattr(module, "get_config", None)):
            raise ValueError(f"{path} has no get_config() function")
        config = module.get_config(*([config_argument] if config_argument else []))
        if self.lock_config and callable(getattr(config, "lock", None)):
            config.lock()
        return config

    def flag_type(self) -> str:
        return "config object"


#: One-line errors found while defining a config flag (an override naming no field), reported by run_program.
_DEFERRED_ERRORS: list[str] = []


def _override_paths(name: str, argv: Sequence[str]) -> list[tuple[int, str]]:
    """(argv index, field path) of every ``--<name>.<field>[=value]`` (or ``--no<name>.<field>``) in argv."""
    out = []
    for i, arg in enumerate(argv):
        match = re.match(rf"^--?(?:no)?{re.escape(name)}\.([^=]+)", arg)
        if match:
            out.append((i, match.group(1)))
    return out


def _chosen_config(name: str, argv: Sequence[str]) -> str | None:
    """The value of ``--<name>`` in argv (the last one), None when absent."""
    chosen = None
    for i, arg in enumerate(argv):
        if arg in (f"--{name}", f"-{name}") and i + 1 < len(argv):
            chosen = argv[i + 1]
        elif arg.startswith((f"--{name}=", f"-{name}=")):
            chosen = arg.split("=", 1)[1]
    return chosen


def _unknown_overrides(name: str, argv: Sequence[str], load: Callable[[], ConfigDict]) -> list[tuple[int, str]]:
    """The overrides in ``argv`` that name no field of the config ``load()`` returns (ml_collections would raise
    a bare AttributeError with a traceback for them). Empty when the config itself cannot be loaded: its own
    one-line error comes when the flags are parsed."""
    overrides = _override_paths(name, argv)
    if not overrides:
        return []
    try:
        config = load()
    except Exception:
        return []
    bad = []
    for i, path in overrides:
        try:
            config_path.get_type(path, config)
        except (AttributeError, KeyError, IndexError, TypeError, ValueError):
            bad.append((i, path))
    return bad


def _defer_unknown_overrides(name: str, load: Callable[[], ConfigDict]) -> list[str] | None:
    """Records a one-line error per unknown override in sys.argv; returns sys.argv without them (for the flag's
    ``sys_argv``), or None when every override names a field."""
    argv = list(sys.argv)
    bad = _unknown_overrides(name, argv, load)
    for _, path in bad:
        _DEFERRED_ERRORS.append(f"--{name}.{path}: no such config field (--show_config lists every field)")
    return [arg for i, arg in enumerate(argv) if i not in {index for index, _ in bad}] if bad else None


def define_config_flag(name: str, default_preset: str, help_string: str, program: str) -> flags.FlagHolder:
    """``config_flags.DEFINE_config_file`` whose values are parsed by :class:`PresetFileParser` (the default
    is the packaged preset ``default_preset``; names resolve among ``program``'s presets);
    ``--<name>.<field>=value`` overrides work as usual. An override that names no field becomes a one-line
    error of :func:`run_program` (ml_collections would raise it from inside this definition, at import)."""
    default_path = configs.preset_path(default_preset, program)
    kept = _defer_unknown_overrides(name, lambda: PresetFileParser(name, program, lock_config=False).parse(
        _chosen_config(name, sys.argv) or default_path))
    holder = config_flags.DEFINE_config_file(name, default_path, help_string, sys_argv=kept)
    FLAGS[name].parser = PresetFileParser(name, program)
    FLAGS[name].default_preset = default_preset
    return holder


def define_config_dict_flag(name: str, config: ConfigDict, help_string: str) -> flags.FlagHolder:
    """``config_flags.DEFINE_config_dict`` with the one-line error for an override that names no field."""
    kept = _defer_unknown_overrides(name, lambda: config)
    return config_flags.DEFINE_config_dict(name, config, help_string, sys_argv=kept)


# ----------------------------------------------------------------------------------------------------------
# Output directories


def _created_tree_is_empty(top: str) -> bool:
    for _, _, files in os.walk(top, followlinks=False):
        if files:  # symlinks to directories are listed in dirs, but os.walk does not enter them
            return False
    for root, dirs, _ in os.walk(top, followlinks=False):
        if any(os.path.islink(os.path.join(root, d)) for d in dirs):
            return False
    return True


@contextlib.contextmanager
def output_dir_guard(path: str | os.PathLike) -> Iterator[None]:
    """On failure inside the block (exception, interrupt, non-zero exit), removes the directory ``path`` and any
    parents this run created, if they hold no file at all. A directory that existed before the block, or that
    holds any file or link, is never touched; removal uses ``os.rmdir`` (which refuses non-empty directories),
    so a file written concurrently is never deleted either."""
    target = os.path.abspath(os.fspath(path))
    created_top = None  # the outermost directory of `target` that does not exist yet
    probe = target
    while not os.path.lexists(probe):
        created_top = probe
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    try:
        yield
    except BaseException as exc:
        if isinstance(exc, SystemExit) and not exc.code:
            raise
        if created_top is not None and os.path.isdir(created_top) and not os.path.islink(created_top) \
                and _created_tree_is_empty(created_top):
            for root, _, _ in sorted(os.walk(created_top), key=lambda item: -item[0].count(os.sep)):
                try:
                    os.rmdir(root)
                except OSError:
                    break
            if not os.path.exists(created_top):
                logging.debug("removed the empty output directory %s left by the failed run", created_top)
        raise


# ----------------------------------------------------------------------------------------------------------
# Help


_HELP_ARGS = ("--help", "-help", "-h", "-?", "--helpshort", "-helpshort")
_HELPFULL_ARGS = ("--helpfull", "-helpfull")


def _flag_lines(flag: flags.Flag) -> list[str]:
    name = f"--[no]{flag.name}" if flag.boolean else f"--{flag.name}"
    if getattr(flag, "default_preset", None):
        default = f"preset {flag.default_preset}"
    elif isinstance(flag.default, ConfigDict):
        default = "the program's schema (--show_config lists it)"
    elif isinstance(flag.default, bool):
        default = str(flag.default).lower()
    elif isinstance(flag.default, (list, tuple)):
        default = ",".join(map(str, flag.default))
    elif isinstance(flag.default, str):
        default = repr(flag.default)
    else:
        default = None if flag.default is None else str(flag.default)
    text = flag.help if default is None else f"{flag.help} (default: {default})"
    body = textwrap.fill(text, width=100, initial_indent="      ", subsequent_indent="      ")
    return [f"  {name}", body]


def program_flags(main: Callable, names: Sequence[str] = ()) -> list[flags.Flag]:
    """The flags the module of ``main`` defines (absl records the defining module; run as ``python -m`` that
    module is ``sys.argv[0]``) plus the flags named in ``names``, without the ``--config.<field>`` overrides."""
    by_module = FLAGS.flags_by_module_dict()
    module_keys = {main.__module__}
    if main.__module__ == "__main__" and sys.argv:
        module_keys.add(sys.argv[0])
    found: dict[str, flags.Flag] = {}
    for key in module_keys:
        for flag in by_module.get(key, []):
            found.setdefault(flag.name, flag)
    for name in names:
        if name in FLAGS:
            found.setdefault(name, FLAGS[name])
    return [found[name] for name in sorted(found) if "." not in name]


def help_text(prog: str, doc: str, own_flags: Sequence[flags.Flag], common_flags: Sequence[flags.Flag],
              preset_program: str | None = None) -> str:
    """The text ``--help`` prints: docstring, the program's flags, the shared flags, presets."""
    lines = [textwrap.dedent(doc or prog).strip(), "", f"flags of {prog}:"]
    for flag in own_flags:
        lines += _flag_lines(flag)
    lines += ["", "shared flags:"]
    for flag in common_flags:
        lines += _flag_lines(flag)
    lines += ["  --helpfull", "      also list absl's flags (logging verbosity, log files, debugger)"]
    if preset_program:
        names = configs.available(preset_program)
        width = max(len(name) for name in names)
        lines += ["", "presets (--config=<name>; any .py file with get_config() works too):"]
        lines += [f"  {name.ljust(width)}  {configs.describe(name)}" for name in names]
    lines += ["", "exit status: 0 done, 2 a user error (one line on stderr), 130 interrupted, 1 a bug (traceback)."]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------------------
# The entry wrapper


def _define_common_flags(config_driven: bool) -> list[flags.Flag]:
    if "debug" not in FLAGS:
        flags.DEFINE_bool("debug", False, "Show the full traceback of a user error (also: SYNLEAK_DEBUG=1).")
    names = ["debug"]
    if config_driven:
        if "show_config" not in FLAGS:
            flags.DEFINE_bool("show_config", False, "Print every config field with its value, its schema default "
                              "and its comment (after --config and its overrides), then exit.")
        names.append("show_config")
    return [FLAGS[name] for name in names]


def _config_source(name: str, args: Sequence[str]) -> str:
    """What the command line chose for config flag ``name``: "--config=<value>" or the default preset."""
    chosen = _chosen_config(name, args)
    if chosen is not None:
        return f"--{name}={chosen}"
    preset = getattr(FLAGS[name], "default_preset", None)
    return f"preset {preset} (the default)" if preset else "the built-in schema"


def run_program(main: Callable[[list[str]], Any], *, doc: str | None, prog: str | None = None,
                errors: Sequence[type] = (), config: flags.FlagHolder | None = None,
                schema: Callable[[], ConfigDict] | None = None, presets: str | None = None,
                extra_flags: Sequence[str] = (), argv: Sequence[str] | None = None) -> None:
    """Runs ``main`` as a ``synleak-*`` program (see the module docstring).

    Args:
      main: absl-style ``main(argv)``.
      doc: the program module's docstring; its first word (``synleak-<prog>:``) names the program.
      prog: the program name, if not the docstring's first word.
      errors: more exception types to report as one-line user errors.
      config: the program's config flag; with ``schema`` it enables ``--show_config``.
      schema: the schema function of ``synleak_jax.config`` (defaults and field comments).
      presets: list the presets of this program ("audit") in ``--help``.
      extra_flags: names of flags defined elsewhere that the program uses (listed in its help).
      argv: the command line (default ``sys.argv``).
    """
    argv = list(sys.argv if argv is None else argv)
    prog = prog or ((doc or "").strip().split(":", 1)[0].split() or ["synleak"])[0]
    common = _define_common_flags(config is not None and schema is not None)
    setup_logging()

    own = program_flags(main, [*( [config.name] if config is not None else []), *extra_flags])
    own = [flag for flag in own if flag.name not in {f.name for f in common}]
    options = argv[1:argv.index("--")] if "--" in argv else argv[1:]
    if any(arg in _HELP_ARGS + _HELPFULL_ARGS for arg in options):
        sys.stdout.write(help_text(prog, doc or "", own, common, presets))
        if any(arg in _HELPFULL_ARGS for arg in options):
            sys.stdout.write("\nall flags, including absl's:\n" + FLAGS.get_help() + "\n")
        sys.stdout.flush()
        sys.exit(0)

    def parse(args: list[str]) -> list[str]:
        if _DEFERRED_ERRORS:
            fail(prog, _DEFERRED_ERRORS[0])
        try:
            remaining = FLAGS(args)
        except flags.Error as e:
            if debug_enabled():
                raise
            fail(prog, f"{e} (see {prog} --help)")
        if config is not None and schema is not None and FLAGS["show_config"].value:
            from synleak_jax.cli.config_doc import render_config

            try:
                rendered = render_config(config.value, schema, config.name, _config_source(config.name, args))
            except OSError as e:
                fail(prog, error_message(e))
            sys.stdout.write(rendered)
            sys.stdout.flush()
            sys.exit(0)
        return remaining

    def guarded(args: list[str]) -> Any:
        try:
            return main(args)
        except KeyboardInterrupt:
            if debug_enabled():
                raise
            fail(prog, "interrupted (rerun the same command to resume)", EXIT_INTERRUPTED)
        except Exception as e:
            if not is_user_error(e, errors):
                raise  # a bug: absl prints the traceback, exit status 1
            if debug_enabled():
                traceback.print_exc()
            fail(prog, error_message(e))

    app.run(guarded, argv=argv, flags_parser=parse)
