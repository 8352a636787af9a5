"""The commands the newcomer docs show (README.md, docs/audit.md's walkthrough, docs/cli.md) are valid as written:
every command names a console script, every flag is one that script defines, and every --config override names a
real field and reaches it. Config-driven commands are run as written with --show_config appended (absl's own
parser reads every flag and override; nothing is read or written), so a renamed field or flag in the code, or a
typo in the docs, fails here. The demo itself (the README's first command) runs in tests/cli/test_audit.py;
the walkthrough's real datasets cannot be brought here, so its commands are checked up to the first file read."""

from __future__ import annotations

import os
import re
import shlex
from concurrent.futures import ThreadPoolExecutor

import pytest

from synleak_jax import config as schemas
from synleak_jax.cli import config_doc
from tests.cli.test_help import REPO, SCRIPTS, declared_flags, run_cli

DOCS = ("README.md", "docs/audit.md", "docs/cli.md")
CONFIG_PROGRAMS = {"synleak-audit", "synleak-embed", "synleak-knn"}
COMMON_FLAGS = {"help", "helpfull", "helpshort", "debug"}
ERROR_EXAMPLE = ["synleak-audit", "--config=dcface"]  # docs/cli.md's example of an unknown preset


def doc_commands() -> list[tuple[str, list[str]]]:
    """(doc, argv) of every runnable command line in the docs' code blocks (fenced, or indented after ``$ ``):
    backslash continuations joined, ``&&`` chains split, comments dropped; lines with placeholders (``...``,
    ``<...>``) or prose after the script name are left out."""
    out = []
    for doc in DOCS:
        with open(os.path.join(REPO, doc), encoding="utf-8") as f:
            text = f.read()
        lines = []
        for block in re.findall(r"^```[^\n]*\n(.*?)^```", text, re.M | re.S):
            lines += re.sub(r"\\\n\s*", " ", block).splitlines()
        lines += re.findall(r"^    \$ (.*)$", text, re.M)
        for line in lines:
            for part in line.split("&&"):
                part = part.split(" #")[0].strip()
                if not part.split(" ")[0] in SCRIPTS or "..." in part or "<" in part:
                    continue
                try:
                    argv = shlex.split(part)
                except ValueError:  # prose with an apostrophe (a help text quoted in the docs)
                    continue
                if all(a.startswith("--") for a in argv[1:]):
                    out.append((doc, argv))
    return out


COMMANDS = doc_commands()


def _flag(arg: str) -> str:
    return arg[2:].split("=")[0]


def test_the_docs_show_commands_of_every_kind():
    shown = {argv[0] for _, argv in COMMANDS}
    assert shown == set(SCRIPTS)
    walkthrough = [argv for doc, argv in COMMANDS if doc == "docs/audit.md" and "--dry_run" in argv]
    assert walkthrough and "--config=dcface_vs_casia" in walkthrough[0]  # the DCFace walkthrough's dry run


@pytest.mark.parametrize("doc,argv", [c for c in COMMANDS if c[1][0] not in CONFIG_PROGRAMS],
                         ids=lambda x: x if isinstance(x, str) else " ".join(x)[:60])
def test_flags_of_other_programs_exist(doc, argv):
    module = SCRIPTS[argv[0]].split(":")[0]
    unknown = {_flag(a) for a in argv[1:]} - declared_flags(module) - COMMON_FLAGS
    assert not unknown, (doc, argv)


def test_config_commands_parse_as_written():
    """Each distinct config-driven command, run with --show_config: exit 0, and each override lands in its field."""
    runs = {}
    for doc, argv in COMMANDS:
        if argv[0] in CONFIG_PROGRAMS and "--help" not in argv and argv != ERROR_EXAMPLE:
            runs.setdefault(tuple(argv), doc)
    assert len(runs) >= 5
    with ThreadPoolExecutor(max_workers=3) as pool:
        done = {argv: pool.submit(run_cli, SCRIPTS[argv[0]].split(":")[0], *argv[1:], "--show_config")
                for argv in runs if "--show_config" not in argv} | \
               {argv: pool.submit(run_cli, SCRIPTS[argv[0]].split(":")[0], *argv[1:])
                for argv in runs if "--show_config" in argv}
    for argv, future in done.items():
        p = future.result()
        assert p.returncode == 0, (runs[argv], argv, p.stderr[-2000:])
        shown = p.stdout.splitlines()
        for arg in argv[1:]:
            m = re.fullmatch(r"--config\.([\w.]+)=(.*)", arg)
            if m:
                line = next((x for x in shown if x.startswith(f"  {m.group(1)} = ")), None)
                assert line is not None and m.group(2) in line, (runs[argv], arg, line)


def test_the_documented_error_is_the_error_printed():
    """docs/cli.md shows ``$ synleak-audit --config=dcface`` and the line it prints: the same line comes out."""
    with open(os.path.join(REPO, "docs/cli.md"), encoding="utf-8") as f:
        documented = re.search(r"^    \$ synleak-audit --config=dcface\n    (.*)$", f.read(), re.M).group(1)
    p = run_cli("synleak_jax.cli.audit", *ERROR_EXAMPLE[1:])
    assert p.returncode == 2 and p.stderr.strip() == documented


def test_every_config_field_the_docs_name_exists():
    """Every ``--config.<field>`` written anywhere in the docs (prose included) is a field or group of a schema."""
    names = set()
    for schema in (schemas.base_config, schemas.embed_config, schemas.knn_config):
        for leaf in config_doc.leaves(schema()):
            parts = leaf.split(".")
            names |= {".".join(parts[:i]) for i in range(1, len(parts) + 1)}
    docs = [os.path.join("docs", f) for f in os.listdir(os.path.join(REPO, "docs")) if f.endswith(".md")]
    bad = []
    for doc in ["README.md", *docs]:
        with open(os.path.join(REPO, doc), encoding="utf-8") as f:
            text = f.read()
        for field in set(re.findall(r"--config\.([A-Za-z_][\w.]*\w)", text)):
            if field not in names and field != "attack.kk":  # docs/cli.md's example of a misspelt field
                bad.append((doc, field))
    assert bad == []
