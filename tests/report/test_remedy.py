"""The remedy export and the report files under hostile names and files changed after listing (issue #13,
findings 5 and 7). Every hostile file is made inside the test: names with a newline, a tab, a backslash, quotes,
commas and an undecodable byte; entries swapped after listing for a symlink to a file outside the dataset, a
FIFO, a directory, deleted or corrupted."""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import stat
from contextlib import contextmanager
from pathlib import Path

import jsonschema
import numpy as np
import pytest
from PIL import Image

from synleak_jax.config import embed_config
from synleak_jax.data import rejects
from synleak_jax.data.recordio import RecordIOSource, write_recordio
from synleak_jax.data.rejects import REASONS
from synleak_jax.embed import door
from synleak_jax.report import html, remedy
from synleak_jax.report import writer

SECRET = b"root:x:0:0:SECRET-OUTSIDE-THE-DATASET\n"

#: Names (bytes on disk) a filesystem allows and a line-based or UTF-8 writer would break on.
HOSTILE_NAMES = [b"new\nline.png", b"tab\there.png", b"back\\slash.png", b'quote"s,comma.png', b"latin1_\xe9\xff.png",
                 b" leading space.png", "caf\u00e9_\u4e2d.png".encode()]


@contextmanager
def _deadline(seconds: int):
    """A hang (e.g. open() of a FIFO) fails the test instead of blocking it forever."""
    def _fire(signum, frame):
        raise TimeoutError(f"no answer within {seconds} s (a blocking read?)")
    old = signal.signal(signal.SIGALRM, _fire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def _png(path: bytes | str, rng) -> None:
    with open(path, "wb") as f:
        Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)).save(f, format="PNG")


def _folder(root: str, rng, names: list[bytes]) -> list[bytes]:
    """root/id_0/<name> for every name (bytes); returns the absolute paths as bytes, in listing order."""
    ident = os.path.join(os.fsencode(root), b"id_0")
    os.makedirs(ident, exist_ok=True)
    for n in names:
        _png(os.path.join(ident, n), rng)
    return sorted(os.path.join(os.fsencode(os.path.realpath(root)), b"id_0", n) for n in names)


def _opened(root: str) -> tuple[door.Dataset, door.EmbeddingSet]:
    """The real door.Dataset of an image folder and an EmbeddingSet over all its records, built as the door's
    _store_set builds it from a store (the embeddings themselves do not matter to the remedy)."""
    d = embed_config().data
    d.path = root
    ds = door.open_data(d, "--config.data.synthetic")
    src = ds.source
    n = len(src)
    es = door.EmbeddingSet(embeddings=np.zeros((n, 4), np.float32), labels=src.labels(), record_ids=np.arange(n),
                           manifest={}, rejects=[], metric="cosine", path=root, describe_record=src.describe,
                           read_record_rgb=src.read_rgb, root=root, record_path=src.path)
    return ds, es


def _write(tmp_path, ds, es, keep, export):
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    with _deadline(60):
        return out, remedy.write_filtered_set(str(out), es, np.asarray(keep), export=export, dataset=ds,
                                              matcher="m", fmr=1e-3)


def _listed(out) -> list[bytes]:
    lines = (out / remedy.LIST_FILE).read_bytes().split(b"\n")
    assert lines[-1] == b""
    return [os.fsencode(json.loads(line)) for line in lines[:-1]]


# ------------------------------------------------------------------------------------------ finding 5: names


def test_filtered_list_round_trips_every_name(tmp_path, rng):
    root = str(tmp_path / "ds")
    paths = _folder(root, rng, HOSTILE_NAMES + [b"plain.png"])
    ds, es = _opened(root)
    keep = np.arange(len(es))[::-1]  # any order, all rows
    out, entry = _write(tmp_path, ds, es, keep, "")
    assert entry["list_file"] == "filtered_synthetic.jsonl" and entry["kept"] == len(paths)
    listed = _listed(out)
    assert listed == [paths[i] for i in keep]  # exact bytes of every name, newline and \xff included
    assert (out / remedy.LIST_FILE).read_bytes().isascii()
    assert not (out / "filtered_synthetic.txt").exists()


def test_pairs_csv_never_crashes_on_a_name(tmp_path, rng):
    root = str(tmp_path / "ds")
    _folder(root, rng, HOSTILE_NAMES)
    _, es = _opened(root)
    n = len(es)
    block = {"matcher": "m", "rank": list(range(1, n + 1)), "syn_idx": list(range(n)),
             "syn_id": [es.describe(i) for i in range(n)],
             "real_id": [es.exact_name(i) for i in range(n)]}  # real_id: the raw OS string (surrogates) on purpose
    writer.write_pairs_csv(str(tmp_path / "pairs.csv"), [block])
    text = (tmp_path / "pairs.csv").read_bytes().decode("utf-8")  # valid UTF-8
    got = list(csv.DictReader(io.StringIO(text)))
    assert len(got) == len(HOSTILE_NAMES)
    shown = {os.path.basename(r["syn_id"]) for r in got}
    assert "latin1_\\xe9\\xff.png" in shown and "new\\nline.png" in shown and "back\\\\slash.png" in shown
    raw = [r for r in got if "xff" in r["syn_id"]]
    assert len(raw) == 1 and raw[0]["real_id"] == raw[0]["syn_id"]  # a raw undecodable name: its display form
    assert sum("\n" in r["real_id"] for r in got) == 1  # a raw newline survives CSV quoting (csv reads it back)


# ------------------------------------------------------------------------------ finding 7: export after listing


def _swap_after_listing(tmp_path, rng):
    """A folder listed with 8 regular images and one symlink to a sibling (inside the root: allowed); then
    swapped: img_0 -> symlink to a secret outside, img_1 deleted, img_2 -> FIFO, img_3 -> directory,
    img_4 -> symlink to img_7 (inside, but not a link at listing), img_5 corrupted (still a regular file)."""
    secret = tmp_path / "passwd"
    secret.write_bytes(SECRET)
    root = str(tmp_path / "ds")
    _folder(root, rng, [f"img_{i}.png".encode() for i in range(8)])
    ident = os.path.join(root, "id_0")
    os.symlink("img_6.png", os.path.join(ident, "link_to_6.png"))
    ds, es = _opened(root)
    assert len(es) == 9

    def p(i):
        return os.path.join(ident, f"img_{i}.png")

    os.unlink(p(0))
    os.symlink(str(secret), p(0))
    os.unlink(p(1))
    os.unlink(p(2))
    os.mkfifo(p(2))
    os.unlink(p(3))
    os.mkdir(p(3))
    os.unlink(p(4))
    os.symlink(p(7), p(4))
    with open(p(5), "wb") as f:
        f.write(b"not an image any more")
    return ds, es, secret


def _export_tree(out):
    """{relative path: (lstat, bytes)} of everything under the export folder."""
    tree = {}
    for dirpath, dirnames, filenames in os.walk(out / remedy.EXPORT_DIR):
        for name in filenames + dirnames:
            full = os.path.join(dirpath, name)
            st = os.lstat(full)
            data = Path(full).read_bytes() if stat.S_ISREG(st.st_mode) else None
            tree[os.path.relpath(full, out / remedy.EXPORT_DIR)] = (st, data)
    return tree


@pytest.mark.parametrize("mode", ["copy", "hardlink"])
def test_export_after_swaps_skips_and_counts_never_follows(tmp_path, rng, mode):
    ds, es, secret = _swap_after_listing(tmp_path, rng)
    out, entry = _write(tmp_path, ds, es, np.arange(len(es)), mode)
    tree = _export_tree(out)
    # nothing but regular files and their folder; the secret nowhere
    assert all(stat.S_ISREG(st.st_mode) for rel, (st, _) in tree.items() if rel != "id_0"), tree.keys()
    assert all(SECRET not in (data or b"") for _, data in tree.values())
    assert os.stat(secret).st_nlink == 1  # never hardlinked either
    exported = sorted(rel for rel in tree if rel != "id_0")
    # img_5 is still a regular file (corrupted content is the source's business: exported as it is now)
    assert exported == ["id_0/img_5.png", "id_0/img_6.png", "id_0/img_7.png", "id_0/link_to_6.png"]
    ident = os.path.join(ds.source.root_real, "id_0")
    assert tree["id_0/link_to_6.png"][1] == Path(ident, "img_6.png").read_bytes()
    if mode == "hardlink":  # regular files are links to the very same inode, the listed symlink is a copy
        for name in ("img_5.png", "img_6.png", "img_7.png"):
            assert tree[f"id_0/{name}"][0].st_ino == os.stat(os.path.join(ident, name)).st_ino
        assert tree["id_0/link_to_6.png"][0].st_ino != os.stat(os.path.join(ident, "img_6.png")).st_ino
    assert entry["exported"] == 4 and entry["skipped"] == 5 and entry["kept"] == 9
    assert entry["skip_reasons"] == {
        REASONS[rejects.PATH_ESCAPE]: 2,  # img_0 -> secret, img_4 -> sibling swapped in
        REASONS[rejects.MISSING_FILE]: 1, REASONS[rejects.FIFO]: 1, REASONS[rejects.DIRECTORY]: 1}
    skipped = {os.path.basename(x["name"]): x["reason"] for x in entry["skipped_examples"]}
    assert set(skipped) == {"img_0.png", "img_1.png", "img_2.png", "img_3.png", "img_4.png"}


def test_hardlink_swapped_between_check_and_link_is_undone(tmp_path, rng):
    """The race the inode check closes: the entry checked by lstat is not what link() linked."""
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    _png(str(a), rng)
    _png(str(b), rng)
    checked = os.lstat(a)
    target = tmp_path / "t.png"
    assert remedy._link_same_inode(str(b), str(target), checked) is False  # b is not the inode checked
    assert not os.path.lexists(target)
    assert remedy._link_same_inode(str(a), str(target), checked) is True
    assert os.stat(target).st_ino == checked.st_ino
    os.unlink(target)
    os.symlink(str(a), tmp_path / "link.png")  # a symlink is linked as a symlink by link(): refused
    assert remedy._link_same_inode(str(tmp_path / "link.png"), str(target), checked) is False
    assert not os.path.lexists(target)


def test_recordio_export_skips_vanished_files(tmp_path, rng):
    root = str(tmp_path / "ds")
    paths = _folder(root, rng, [f"img_{i}.png".encode() for i in range(5)] + [b"odd\n\xff.png"])
    ds, es = _opened(root)
    os.unlink(paths[1])
    os.unlink(paths[2])
    os.mkfifo(paths[2])
    out, entry = _write(tmp_path, ds, es, np.arange(len(es)), "recordio")
    rec = RecordIOSource(str(out / remedy.EXPORT_DIR / "train"))
    assert len(rec) == entry["exported"] == 4 and entry["skipped"] == 2
    assert entry["skip_reasons"] == {REASONS[rejects.MISSING_FILE]: 1, REASONS[rejects.FIFO]: 1}
    kept = [Path(os.fsdecode(p)).read_bytes() for i, p in enumerate(paths) if i not in (1, 2)]
    assert [rec[i] for i in range(len(rec))] == kept
    assert _listed(out) == paths  # the list holds every kept row, exported or not


def test_export_of_a_recordio_dataset_as_folder_is_refused_with_the_field(tmp_path, rng):

    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(buf, format="PNG")
    write_recordio(str(tmp_path / "r" / "train"), [(buf.getvalue(), 0)] * 3, layout="keys")
    d = embed_config().data
    d.kind, d.path = "recordio", str(tmp_path / "r" / "train.rec")
    ds = door.open_data(d, "--config.data.synthetic")
    src = ds.source
    es = door.EmbeddingSet(embeddings=np.zeros((3, 4), np.float32), labels=src.labels(), record_ids=np.arange(3),
                           manifest={}, rejects=[], metric="cosine", path="", describe_record=src.describe)
    with pytest.raises(remedy.RemedyError, match=r"--config.remedy.export=copy: works for image folders only"):
        _write(tmp_path, ds, es, np.arange(3), "copy")
    _, entry = _write(tmp_path, ds, es, np.arange(3), "")
    assert [json.loads(line) for line in (tmp_path / "out" / remedy.LIST_FILE).read_text().splitlines()] == \
        [src.describe(i) for i in range(3)]  # no files: the record's description
    assert entry["kept"] == 3


# ------------------------------------------------------------------------------------- the gallery survives


def test_gallery_survives_files_changed_after_listing(tmp_path, rng):
    _, es, _ = _swap_after_listing(tmp_path, rng)
    items = [{"matcher": "m/x", "role": "members", "unit": "cosine", "rank": r + 1, "syn_idx": r, "real_idx": 8 - r, "score_native": 0.5,
              "syn_id": es.describe(r), "real_id": es.describe(8 - r)} for r in range(9)]
    out = tmp_path / "report"
    with _deadline(60):
        gallery = writer.write_gallery(str(out), items, es.read_rgb, es.read_rgb)
    assert len(gallery) == 9
    bad = {0, 1, 2, 3, 4, 5}  # swapped, deleted, FIFO, directory, swapped link, corrupted
    placeholder = np.asarray(Image.open(io.BytesIO(writer.placeholder_png(100))))
    for g in gallery:
        for side, idx in (("syn", g["syn_idx"]), ("real", g["real_idx"])):
            png = np.asarray(Image.open(out / g[f"{side}_thumb"]))
            assert png.shape == (100, 100, 3)
            if idx in bad:
                assert np.array_equal(png, placeholder) and g[f"{side}_thumb_error"], (side, idx)
            else:
                assert f"{side}_thumb_error" not in g and not np.array_equal(png, placeholder)
    reasons = {g["syn_idx"]: g.get("syn_thumb_error", "") for g in gallery}
    assert "outside the dataset root" in reasons[0] and "no longer present" in reasons[1]
    assert "FIFO" in reasons[2] and "directory" in reasons[3] and "not a decodable image" in reasons[5]
    # the items follow the report schema, and the report around them is written
    schema = writer.load_schema()
    for g in gallery:
        jsonschema.validate(g, {**schema["$defs"]["gallery_item"], "$defs": schema["$defs"]})
    # the HTML gallery shows all nine, placeholders with their reasons
    page = html._galleries({"matchers": [{"name": "m/x"}], "gallery": gallery})
    assert page.count("figure class='pair'") == 9 and page.count("image unreadable now") == 12


# ------------------------------------------------------------------------- a non-UTF-8 name through the audit


def test_audit_with_non_utf8_names_writes_its_report(tmp_path):
    """The finding: a synthetic file whose name is not UTF-8 crashed the audit at the very end (pairs.csv), after
    all embedding. Real dlib matcher on a few real faces: one leaked copy and one kept image carry undecodable
    bytes (and a newline) in their names; the report, pairs.csv, the gallery and the filtered list are written,
    the names escaped where people read them and exact in the .jsonl."""
    import skimage.data

    from synleak_jax.audit import run_audit
    from synleak_jax.config import base_config

    faces = np.round(np.asarray(skimage.data.lfw_subset()) * 255).astype(np.uint8)
    members = tmp_path / "members"
    for i in range(20):  # 20 identities, one image each: 190 impostor pairs calibrate FMR 1e-2
        os.makedirs(members / f"m{i:02d}")
        Image.fromarray(faces[i], mode="L").save(members / f"m{i:02d}" / "0.png")
    syn = os.path.join(os.fsencode(tmp_path), b"syn", b"c\xe90")  # the identity folder's name is not UTF-8 either
    os.makedirs(syn)
    leaked, kept = b"leak_\xff.png", b"kept_\xfe\nline.png"
    Image.fromarray(faces[3], mode="L").save(os.path.join(syn, leaked).decode("utf-8", "surrogateescape"))
    Image.fromarray(faces[150], mode="L").save(os.fsdecode(os.path.join(syn, kept)))
    for j in range(4):
        Image.fromarray(faces[160 + j], mode="L").save(os.fsdecode(os.path.join(syn, b"other%d.png" % j)))
    cfg = base_config()
    cfg.output_dir = str(tmp_path / "out")
    cfg.matchers = "dlib_resnet_v1"
    cfg.data.synthetic.path = str(tmp_path / "syn")
    cfg.data.members.path = str(members)
    cfg.attack.fmrs = (1e-2,)
    cfg.embed.flip = False
    cfg.embed.batch_size, cfg.embed.chunk_batches = 8, 1
    cfg.report.gallery_n = 6
    cfg.remedy.emit_filtered_list = True
    cfg.remedy.export = "copy"
    rep = run_audit(cfg)
    out = tmp_path / "out"
    writer.validate(json.loads((out / "report.json").read_text()))
    # pairs.csv: valid UTF-8, the leaked copy listed under its escaped name
    rows = list(csv.DictReader(io.StringIO((out / "pairs.csv").read_bytes().decode("utf-8"))))
    leak_rows = [r for r in rows if r["syn_id"].endswith("c\\xe90/leak_\\xff.png")]
    assert leak_rows and leak_rows[0]["real_id"].endswith("m03/0.png")
    # the filtered list: the leaked copy removed, the kept one there with its exact bytes (newline included)
    listed = _listed(out)
    syn_real = os.path.realpath(syn)
    assert os.path.join(syn_real, kept) in listed and os.path.join(syn_real, leaked) not in listed
    rem = rep["remedy"]
    assert rem["kept"] == len(listed) == 6 - rem["removed"] and rem["removed"] >= 1 and rem["skipped"] == 0
    assert rem["list_file"] == "filtered_synthetic.jsonl" and rem["exported"] == rem["kept"]
    assert os.path.exists(os.path.join(os.fsencode(out), b"filtered_synthetic", b"c\xe90", kept))
    # the gallery shows the leaked pair with its escaped name and real thumbnails
    top = rep["gallery"][0]
    assert top["syn_id"].endswith("leak_\\xff.png") and "syn_thumb_error" not in top
    assert "leak_\\xff.png" in (out / "index.html").read_text()
