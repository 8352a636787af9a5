"""Presets: each module's ``get_config()`` returns a ConfigDict built on a schema of ``synleak_jax.config``.

``synleak-audit --config=<name>`` takes a preset by name (``dcface_vs_casia``); a path to any ``.py`` file
with a ``get_config()`` works too. The presets ship inside the package, so every install has them.

The registry below answers by reading this directory (no preset module is imported to list or describe them):

* :func:`available` - preset names (optionally only those of one program),
* :func:`preset_path` - the preset's file,
* :func:`describe` - the first line of its docstring,
* :func:`resolve` - what a ``--config`` value means: an existing file, a preset name, or an old checkout
  path (``configs/<name>`` or ``configs/<name>.py``) that names a preset.
"""

from __future__ import annotations

import ast
import functools
import os

#: This directory: the presets are the ``.py`` files next to this one.
PRESET_DIR = os.path.dirname(os.path.abspath(__file__))

#: Presets that configure a program other than the audit (the rest are audit presets).
_PROGRAM_OF = {"embed": "embed"}


class UnknownPresetError(ValueError):
    """A ``--config`` value that is neither an existing file nor a preset name (message: one line)."""


def available(program: str | None = None) -> list[str]:
    """Sorted preset names; ``program`` ("audit", "embed") keeps only that program's presets."""
    names = sorted(entry[:-3] for entry in os.listdir(PRESET_DIR)
                   if entry.endswith(".py") and not entry.startswith("_"))
    if program is None:
        return names
    return [name for name in names if _PROGRAM_OF.get(name, "audit") == program]


def preset_path(name: str, program: str | None = None) -> str:
    """Absolute path of preset ``name``'s file (of ``program``'s presets when given);
    :class:`UnknownPresetError` (one line listing the known ones) if there is none."""
    known = available(program)
    if name not in known:
        raise UnknownPresetError(f"unknown preset {name!r}; known presets: {', '.join(known)}")
    return os.path.join(PRESET_DIR, name + ".py")


@functools.lru_cache(maxsize=None)
def _docstring(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return ast.get_docstring(ast.parse(f.read(), filename=path)) or ""


def describe(name: str) -> str:
    """First line of preset ``name``'s docstring (read without importing the preset), "" if it has none."""
    doc = _docstring(preset_path(name)).strip()
    return doc.splitlines()[0].strip() if doc else ""


def resolve(value: str, program: str | None = None) -> str:
    """The file a ``--config`` value designates, keeping any ``:argument`` suffix of ml_collections.

    In order: an existing file is used as given; otherwise a bare preset name (``dcface_vs_casia``, with or
    without ``.py``), or a path whose last directory is ``configs`` (``configs/dcface_vs_casia.py``, the form
    of a source checkout, from any directory), resolves to the packaged preset. Anything else raises
    :class:`UnknownPresetError` with one line listing the known presets (of ``program``, when given).
    """
    known = available(program)
    path, sep, argument = value.partition(":")
    if not path:
        raise UnknownPresetError(f"empty config; known presets: {', '.join(known)}")
    if os.path.isfile(path):
        return value
    if os.path.isdir(path):
        raise UnknownPresetError(f"{path} is a directory, not a config file; give a preset name "
                                 f"({', '.join(known)}) or a .py file with get_config()")
    parent, base = os.path.split(os.path.normpath(path))
    name = base[:-3] if base.endswith(".py") else base
    if (not parent or os.path.basename(parent) == "configs") and name in known:
        return preset_path(name, program) + sep + argument
    if parent or base.endswith(".py"):
        raise UnknownPresetError(f"config file not found: {path} (and no preset named {name!r}; known presets: "
                                 f"{', '.join(known)})")
    raise UnknownPresetError(f"unknown preset {name!r}; known presets: {', '.join(known)}")
