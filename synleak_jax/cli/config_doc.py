"""The comments of the config schemas (``synleak_jax/config.py``) as field documentation, and ``--show_config``.

The schemas are plain functions that assign fields (``c.attack.k = 10  # neighbours per query``); the comment
is the documentation. :func:`field_comments` reads them from the source with :mod:`ast` (which statement
assigns which dotted field) and :mod:`tokenize` (where the comments are), so it never guesses from text:

* a comment on the lines of an assignment statement (trailing) documents that field;
* a block of comment-only lines directly above an assignment documents that field too (both are joined);
* ``c.data.synthetic = _data(...)`` inherits every comment of the schema function ``_data`` under
  ``data.synthetic.``; ``c = base_config()`` inherits all of ``base_config``'s (presets built on it).

:func:`render_config` prints every leaf field of a config with its value, its schema default when the value
differs (a preset or an override changed it), and its comment.
"""

from __future__ import annotations

import ast
import functools
import inspect
import io
import tokenize
from typing import Any, Callable

import ml_collections


def _comment_lines(source: str) -> tuple[dict[int, str], set[int]]:
    """({line: comment text}, {lines holding code}) of a module's source (1-based line numbers)."""
    comments: dict[int, str] = {}
    code_lines: set[int] = set()
    skip = {tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT,
            tokenize.ENCODING, tokenize.ENDMARKER}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = tok.string.lstrip("#").strip()
        elif tok.type not in skip:
            code_lines.update(range(tok.start[0], tok.end[0] + 1))
    return comments, code_lines


def _dotted(node: ast.AST) -> list[str] | None:
    """``c.a.b`` -> ["c", "a", "b"]; anything else (subscripts, calls) -> None."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        return [node.id, *reversed(parts)]
    return None


def _called_function(node: ast.AST) -> str | None:
    """Name of the module-level function a value calls (``_data(...)`` -> "_data"), else None."""
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
        return node.func.id
    return None


@functools.lru_cache(maxsize=None)
def _module_comments(module_name: str) -> dict[str, dict[str, str]]:
    """{schema function name: {dotted field: comment}} for every top-level function of a module."""
    module = __import__(module_name, fromlist=["_"])
    source = inspect.getsource(module)
    tree = ast.parse(source)
    comments, code_lines = _comment_lines(source)
    functions = {node.name: node for node in tree.body if isinstance(node, ast.FunctionDef)}
    done: dict[str, dict[str, str]] = {}

    def statement_comment(stmt: ast.stmt) -> str:
        own = [comments[line] for line in range(stmt.lineno, stmt.end_lineno + 1) if line in comments]
        above = []
        line = stmt.lineno - 1
        while line in comments and line not in code_lines:
            above.append(comments[line])
            line -= 1
        return " ".join([*reversed(above), *own]).strip()

    def collect(name: str, stack: tuple[str, ...] = ()) -> dict[str, str]:
        if name in done:
            return done[name]
        out: dict[str, str] = {}
        roots: set[str] = set()  # local names bound to the function's config
        for stmt in ast.walk(functions[name]):
            if not isinstance(stmt, ast.Assign) or len(stmt.targets) != 1:
                continue
            target = _dotted(stmt.targets[0])
            if target is None:
                continue
            callee = _called_function(stmt.value)
            inherited = (collect(callee, stack + (name,)) if callee in functions and callee not in stack
                         else {})
            if len(target) == 1:  # c = ml_collections.ConfigDict() / c = base_config()
                roots.add(target[0])
                out.update(inherited)
                continue
            if target[0] not in roots:
                continue
            field = ".".join(target[1:])
            for sub, text in inherited.items():
                out[f"{field}.{sub}"] = text
            text = statement_comment(stmt)
            if text:
                out[field] = text
        done[name] = out
        return out

    return {name: collect(name) for name in functions}


def field_comments(schema: Callable[[], Any]) -> dict[str, str]:
    """{dotted field: comment} of a schema function of ``synleak_jax.config`` (e.g. ``base_config``)."""
    return dict(_module_comments(schema.__module__)[schema.__name__])


def leaves(config: ml_collections.ConfigDict, prefix: str = "") -> dict[str, Any]:
    """{dotted field: value} of every leaf of a (nested) ConfigDict, in definition order."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, ml_collections.ConfigDict):
            out.update(leaves(value, name + "."))
        else:
            out[name] = value
    return out


def render_config(config: ml_collections.ConfigDict, schema: Callable[[], ml_collections.ConfigDict],
                  flag: str = "config", source: str = "") -> str:
    """Every leaf field of ``config`` as ``field = value`` with its comment; values a preset or an override
    changed are marked with the schema default. Groups (``attack``, ``data.members``) head their fields.
    ``source`` (e.g. "preset demo") is named in the header."""
    defaults = leaves(schema())
    comments = field_comments(schema)
    lines = [f"# {source + ': ' if source else ''}every field; override one with --{flag}.<field>=<value>"]
    group = None
    # top-level fields first, then each group (ConfigDict iterates keys sorted, which interleaves them)
    ordered = sorted(leaves(config).items(), key=lambda item: (item[0].count(".") > 0, item[0].rpartition(".")[0]))
    for field, value in ordered:
        parent = field.rpartition(".")[0]
        if parent != group:
            group = parent
            head = f"{parent}:" if parent else "(top level):"
            if comments.get(parent):
                head += f"  # {comments[parent]}"
            lines.append("")
            lines.append(head)
        text = f"  {field} = {value!r}"
        if field in defaults and defaults[field] != value:
            text += f"   [schema default: {defaults[field]!r}]"
        elif field not in defaults:
            text += "   [not in the schema]"
        if comments.get(field):
            text += f"   # {comments[field]}"
        lines.append(text)
    return "\n".join(lines) + "\n"
