"""Names the filesystem allows (non-UTF-8 bytes, newlines, tabs, backslashes): every reader handles them, describe()
is one UTF-8-safe line, the exact name round-trips (issue #13, finding 5, data-layer side)."""

import json
import os

import numpy as np
import pytest

from synleak_jax.data import pipeline, recordio, rejects, safe_paths, sources
from synleak_jax.models.registry import InputSpec
from tests.data import fixtures

#: Hostile but legal names (bytes): undecodable bytes, control characters, a backslash, valid non-ASCII.
FILE_NAMES = [b"\xff\xfe.jpg", b"new\nline.jpg", b"tab\there.jpg", b"cr\rx.jpg", b"back\\slash.jpg",
              "caf\u00e9 ok.jpg".encode(), b"esc\x1b[31m.jpg", b"plain.jpg"]
DIR_NAMES = [b"id_\xe9", b"id\nnew", b"id_plain"]


def test_display_path_is_one_utf8_line_and_unambiguous():
    assert safe_paths.display_path("/data/id_1/img 2.jpg") == "/data/id_1/img 2.jpg"
    assert safe_paths.display_path("caf\u00e9/\u4e2d.jpg") == "caf\u00e9/\u4e2d.jpg"  # printable: kept
    assert safe_paths.display_path("a\nb\tc\rd") == "a\\nb\\tc\\rd"
    assert safe_paths.display_path(os.fsdecode(b"x\xffy")) == "x\\xffy"
    assert safe_paths.display_path(b"x\xffy") == "x\\xffy"
    assert safe_paths.display_path("a\\b") == "a\\\\b"
    assert safe_paths.display_path("\x1b\u2028\x7f") == "\\x1b\\u2028\\x7f"
    names = [os.fsdecode(n) for n in FILE_NAMES + DIR_NAMES] + ["x\\xffy", "a\\nb", "\\", "\\\\", "\udcff", "\n"]
    shown = [safe_paths.display_path(n) for n in names]
    assert len(set(shown)) == len(set(names))  # injective: a literal "\xff" and the byte 0xff differ
    for s in shown:
        s.encode("utf-8")  # strict: no lone surrogates
        assert "\n" not in s and "\t" not in s and "\r" not in s and s.isprintable()


def _make_hostile_folder(root: bytes, rng) -> dict[bytes, bytes]:
    """root/<dir>/<file> for every DIR_NAMES x FILE_NAMES; returns {relative path bytes: image bytes}."""
    out = {}
    for d in DIR_NAMES:
        os.makedirs(os.path.join(root, d), exist_ok=True)
        for f in FILE_NAMES:
            data = fixtures.encode(fixtures.random_rgb(rng, 8, 8), "PNG")
            with open(os.path.join(root, d, f), "wb") as fh:
                fh.write(data)
            out[os.path.join(d, f)] = data
    return out


@pytest.mark.parametrize("kind", ["folder", "flat"])
def test_folder_sources_handle_any_name(tmp_path, rng, kind):
    root = os.fsencode(str(tmp_path / "ds"))
    made = _make_hostile_folder(root, rng)
    src = sources.ImageFolderSource(os.fsdecode(root)) if kind == "folder" else \
        sources.FlatFolderSource(os.fsdecode(root))
    assert len(src) == len(made)
    seen = set()
    for i in range(len(src)):
        rel = os.fsencode(src.relpath(i))
        seen.add(rel)
        assert src[i] == made[rel]  # the exact bytes name reads the file
        assert os.fsencode(src.path(i)) == os.path.join(os.path.realpath(root), rel)
        shown = src.describe(i)
        shown.encode("utf-8")
        assert "\n" not in shown and "\t" not in shown
        assert src.read_rgb(i).shape == (8, 8, 3)
        # The exact name survives JSON (ensure_ascii, the default) and back to bytes: what writers should use.
        assert os.fsencode(json.loads(json.dumps(src.path(i)))) == os.fsencode(src.path(i))
    assert seen == set(made)
    if kind == "folder":
        assert sorted(os.fsencode(c) for c in src.class_names) == sorted(DIR_NAMES)
        assert [os.fsencode(c) for c in src.class_names] == [os.fsencode(c) for c in sorted(src.class_names)]
    spec = InputSpec(8, 8, "RGB", (0.0,) * 3, (1.0,) * 3, 4, "cosine", "arcface112")
    batches = list(pipeline.make_pipeline(src, spec, 8, read_threads=0))
    assert all(b["valid"][b["record_id"] >= 0].all() for b in batches)
    # A reject entry of such a file is written and read back as JSON lines (one line each).
    entries = [rejects.make_entry(src, i, rejects.NOT_AN_IMAGE) for i in range(len(src))]
    path = tmp_path / "rejects.jsonl"
    assert rejects.write_rejects(str(path), entries) == len(src)
    assert len(path.read_bytes().splitlines()) == len(src) and rejects.read_rejects(str(path)) == entries


def test_recordio_and_list_names_in_a_non_utf8_directory(tmp_path, rng):
    base = os.path.join(os.fsencode(str(tmp_path)), b"rec\xff\ndir")
    os.makedirs(base)
    imgs = [fixtures.encode(fixtures.random_rgb(rng, 6, 6), "JPEG") for _ in range(3)]
    out = recordio.write_recordio(os.fsdecode(os.path.join(base, b"file")), zip(imgs, [0, 0, 0]), layout="keys",
                                  write_property=False)
    names = [b"\xe9t\xe9/0.jpg", b"tab\tid/1.jpg", b"x/back\\slash.jpg"]
    with open(os.path.join(base, b"list.txt"), "wb") as f:
        f.write(b"".join(b"%d\t%s\n" % (k, n) for k, n in enumerate(names)))
    src = recordio.RecordIOSource(out["rec"])
    assert [os.fsencode(src.relpath(i)) for i in range(3)] == names
    assert [src[i] for i in range(3)] == imgs
    for i in range(3):
        shown = src.describe(i)
        shown.encode("utf-8")
        assert "\n" not in shown and "\\xff" in shown
    assert sorted(os.fsencode(c) for c in src.class_names) == sorted([b"\xe9t\xe9", b"tab\tid", b"x"])
    assert np.array_equal(src.labels(), [[os.fsencode(c) for c in src.class_names].index(n.split(b"/")[0])
                                         for n in names])
