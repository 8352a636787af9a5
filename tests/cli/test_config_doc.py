"""Field comments of the config schemas (synleak_jax/cli/config_doc.py) and --show_config.

The reference is an independent line scan of synleak_jax/config.py: inside each schema function, a line
``<var>.<field> = ...  # comment`` documents <field>, and a run of comment-only lines right above an assignment
documents it too. The ast/tokenize extractor must agree with it on every field."""

from __future__ import annotations

import inspect
import re

import pytest

from synleak_jax import config as schemas
from synleak_jax.cli import config_doc
from tests.cli.test_help import run_cli

SCHEMAS = [schemas.base_config, schemas.embed_config, schemas.knn_config]


def _line_scan(function) -> dict[str, str]:
    """{field: comment} of one schema function by scanning its source lines (no ast, no tokenize)."""
    out: dict[str, str] = {}
    block: list[str] = []
    for line in inspect.getsource(function).splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            block.append(stripped.lstrip("#").strip())
            continue
        m = re.match(r"(\w+)\.([\w.]+)\s*=[^#]*?(?:#\s*(.*))?$", stripped)
        if m and m.group(1) in ("c", "d", "e"):
            text = " ".join([*block, *( [m.group(3).strip()] if m.group(3) else [])])
            if text:
                out[m.group(2)] = text
        block = []
    return out


def _reference(schema) -> dict[str, str]:
    ref = {}
    if schema is schemas.base_config:  # c.data.<role> = data_config(...): its comments under each role, etc.
        for role in ("synthetic", "members", "nonmembers"):
            ref.update({f"data.{role}.{k}": v for k, v in _line_scan(schemas.data_config).items()})
        ref.update({f"embed.{k}": v for k, v in _line_scan(schemas.embed_settings).items()})
        ref.update({f"distributed.{k}": v for k, v in _line_scan(schemas.distributed_config).items()})
    if schema is schemas.embed_config:  # c = embed_settings(); c.data = data_config(...); c.distributed = ...
        ref.update(_line_scan(schemas.embed_settings))
        ref.update({f"data.{k}": v for k, v in _line_scan(schemas.data_config).items()})
        ref.update({f"distributed.{k}": v for k, v in _line_scan(schemas.distributed_config).items()})
    ref.update(_line_scan(schema))
    return ref


@pytest.mark.parametrize("schema", SCHEMAS, ids=lambda s: s.__name__)
def test_comments_agree_with_a_line_scan_on_every_field(schema):
    got = config_doc.field_comments(schema)
    want = _reference(schema)
    leaves = config_doc.leaves(schema())
    for field in leaves:
        assert got.get(field) == want.get(field), field
    groups = {f.rpartition(".")[0] for f in leaves}
    assert set(got) <= set(leaves) | groups  # nothing stale: every documented name is a field or a group
    assert len([f for f in leaves if f in got]) >= len(leaves) // 3  # the schemas are mostly documented


def test_known_comments():
    base = config_doc.field_comments(schemas.base_config)
    assert base["attack.k"] == "neighbours per image kept for the pair lists (both directions)"
    assert base["data.members.align"].startswith("none: aligned face crops")
    assert base["embed.batch_size"].startswith("global batch")  # from embed_settings()
    assert base["weights"].startswith("weights.<matcher> = path")
    embed = config_doc.field_comments(schemas.embed_config)
    assert embed["data.kind"].startswith("image_folder (root/<class>/<img>) | flat_folder")
    assert embed["model"] == "registry name of the matcher"
    knn = config_doc.field_comments(schemas.knn_config)
    assert knn["malloc_single_arena"].startswith("glibc: one malloc arena")
    # presets built on a schema inherit its comments
    assert config_doc.field_comments(schemas.unveiling_preset)["attack.k"] == base["attack.k"]


def test_render_marks_changed_values():
    cfg = schemas.base_config()
    cfg.attack.k = 20
    text = config_doc.render_config(cfg, schemas.base_config, source="test")
    assert ("  attack.k = 20   [schema default: 10]   # neighbours per image kept for the pair lists (both "
            "directions)") in text.splitlines()
    assert "  demo.seed = 0" in text.splitlines()  # unchanged, no comment in the schema
    assert text.splitlines()[0].startswith("# test: every field")


@pytest.mark.parametrize("module,schema,args", [
    ("synleak_jax.cli.audit", schemas.base_config, ["--config=demo", "--config.attack.k=7"]),
    ("synleak_jax.cli.embed", schemas.embed_config, ["--config.model=iresnet100"]),
    ("synleak_jax.cli.knn", schemas.knn_config, ["--config.knn.k=3"]),
])
def test_show_config_prints_every_field_with_its_comment(module, schema, args, tmp_path):
    p = run_cli(module, *args, "--show_config", cwd=str(tmp_path))
    assert p.returncode == 0, p.stderr[-2000:]
    lines = p.stdout.splitlines()
    comments = config_doc.field_comments(schema)
    for field in config_doc.leaves(schema()):
        line = next((l for l in lines if l.startswith(f"  {field} = ")), None)
        assert line is not None, field
        if field in comments:
            assert line.endswith(f"# {comments[field]}"), line
    changed = {"synleak_jax.cli.audit": "  attack.k = 7   [schema default: 10]",
               "synleak_jax.cli.embed": "  model = 'iresnet100'   [schema default: 'iresnet50']",
               "synleak_jax.cli.knn": "  knn.k = 3   [schema default: 10]"}[module]
    assert any(l.startswith(changed) for l in lines)
    assert not any(tmp_path.iterdir())  # printing the config writes nothing
    if module.endswith("audit"):
        # the default preset is demo
        assert any(line.startswith("  demo.enabled = True   [schema default: False]") for line in lines)


def test_show_config_with_a_bad_override_is_one_line():
    p = run_cli("synleak_jax.cli.audit", "--config.attack.nosuchfield=1", "--show_config")
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1 and "nosuchfield" in p.stderr
