"""RecordIO writer checked byte-by-byte against a hand-assembled layout; reader on both layouts and bad records."""

import os
import pickle
import struct

import numpy as np
import pytest

from synleak_jax.data import kinds, pipeline, recordio, rejects, sources
from synleak_jax.models.registry import InputSpec
from tests.data import fixtures
from tests.data.isolated import run_isolated

MAGIC = 0xCED7230A


def part(cflag, data):
    """magic | lrec | data | pad to 4, assembled by hand from REFERENCE.md section 4."""
    return struct.pack("<II", MAGIC, (cflag << 29) | len(data)) + data + b"\0" * ((-len(data)) % 4)


def hdr(flag, label, id_, id2=0):
    return struct.pack("<IfQQ", flag, label, id_, id2)


def _images(rng, n):
    return [fixtures.encode(fixtures.random_rgb(rng, 6, 5), "JPEG") for _ in range(n)]


def test_keys_layout_bytes(tmp_path, rng):
    imgs = _images(rng, 3)
    labels = [2, 0, 1]
    out = recordio.write_recordio(str(tmp_path / "train"), zip(imgs, labels), layout="keys", image_size=(6, 5))
    expected, idx, pos = b"", "", 0
    for k, (im, lab) in enumerate(zip(imgs, labels)):
        rec = part(0, hdr(0, float(lab), k) + im)
        idx += f"{k}\t{pos}\n"
        expected += rec
        pos += len(rec)
    assert open(out["rec"], "rb").read() == expected
    assert open(out["idx"]).read() == idx
    assert open(tmp_path / "property").read() == "3,6,5"
    src = recordio.RecordIOSource(str(tmp_path / "train"))
    assert src.layout == "keys" and len(src) == 3 and src.num_classes == 3 and src.image_size == (6, 5)
    assert [src[i] for i in range(3)] == imgs
    assert [src.label(i) for i in range(3)] == labels and src.labels().tolist() == labels


def test_header_layout_bytes(tmp_path, rng):
    imgs = _images(rng, 4)
    labels = [0, 0, 2, 2]  # identity 1 has no image: range [0, 0)
    out = recordio.write_recordio(str(tmp_path / "train"), zip(imgs, labels), layout="header", num_classes=3,
                                  write_property=False)
    n, c = 4, 3
    recs = [part(0, hdr(2, 0.0, 0) + struct.pack("<2f", n + 1, n + 1 + c))]
    recs += [part(0, hdr(0, float(l), k + 1) + im) for k, (im, l) in enumerate(zip(imgs, labels))]
    ranges = [(1, 3), (0, 0), (3, 5)]
    recs += [part(0, hdr(2, 0.0, n + 1 + j) + struct.pack("<2f", *r)) for j, r in enumerate(ranges)]
    assert open(out["rec"], "rb").read() == b"".join(recs)
    offs = np.cumsum([0] + [len(r) for r in recs[:-1]])
    assert open(out["idx"]).read() == "".join(f"{k}\t{o}\n" for k, o in enumerate(offs))
    assert not os.path.exists(tmp_path / "property")
    src = recordio.RecordIOSource(out["rec"])
    assert src.layout == "header" and len(src) == 4 and src.num_classes == 3
    assert [src[i] for i in range(4)] == imgs and src.labels().tolist() == labels
    assert [src.key(i) for i in range(4)] == [1, 2, 3, 4]
    assert src.identity_records() == [(0, 1, 3), (1, 0, 0), (2, 3, 5)]
    assert src.describe(0) == f"{out['rec']}:{offs[1]} (key 1)"
    with pytest.raises(ValueError, match="non-decreasing"):
        recordio.write_recordio(str(tmp_path / "x"), zip(imgs, [1, 0, 0, 0]), layout="header")


def test_magic_inside_payload_is_split_with_cflags(tmp_path):
    m = struct.pack("<I", MAGIC)
    # Payload = 24-byte header + image; image offsets 0, 4 and 12 are 4-aligned in the payload (split there,
    # two adjacent magics give an empty middle part), offset 17 is not (kept inside the data).
    image = m + m + b"abcd" + m + b"x" + m + b"tail!"
    payload = hdr(0, 7.0, 0) + image
    got = recordio.frame_record(payload)
    want = part(1, payload[:24]) + part(2, b"") + part(2, b"abcd") + part(3, b"x" + m + b"tail!")
    assert got == want
    recordio.write_recordio(str(tmp_path / "t"), [(image, 7)], layout="keys", write_property=False)
    src = recordio.RecordIOSource(str(tmp_path / "t"))
    assert src[0] == image and src.label(0) == 7 and src.labels().tolist() == [7]


def test_bad_records_rejected_not_fatal(tmp_path, rng):
    imgs = _images(rng, 5)
    out = recordio.write_recordio(str(tmp_path / "train"), zip(imgs, range(5)), layout="keys")
    offs = [int(l.split("\t")[1]) for l in open(out["idx"])]
    raw = bytearray(open(out["rec"], "rb").read())
    raw[offs[1]:offs[1] + 4] = b"\0\0\0\0"  # wrong magic
    struct.pack_into("<I", raw, offs[3] + 4, (1 << 29) - 1)  # length past the end of the file
    open(out["rec"], "wb").write(bytes(raw))
    with open(out["idx"], "a") as f:
        f.write(f"5\t{len(raw) + 100}\n")  # offset outside the file
    src = recordio.RecordIOSource(out["rec"])
    codes = {}
    for i in range(len(src)):
        try:
            assert src[i] == imgs[i]
        except rejects.RecordError as e:
            codes[i] = e.code
            assert out["rec"] in str(e)
    assert codes == {1: rejects.BAD_RECORD, 3: rejects.BAD_RECORD, 5: rejects.BAD_RECORD}
    assert src.labels().tolist() == [0, -1, 2, -1, 4, -1]
    spec = InputSpec(6, 5, "RGB", (0.0,) * 3, (1.0,) * 3, 4, "cosine", "arcface112")
    clone = pickle.loads(pickle.dumps(src))
    batches = list(pipeline.make_pipeline(clone, spec, 4, num_workers=0))
    ids = np.concatenate([b["record_id"] for b in batches])
    codes_b = np.concatenate([b["reject_code"] for b in batches])
    assert ids.tolist() == [0, 1, 2, 3, 4, 5, -1, -1]
    assert codes_b.tolist() == [0, 7, 0, 7, 0, 7, 0, 0]
    assert np.concatenate([b["label"] for b in batches]).tolist() == [0, -1, 2, -1, 4, -1, -1, -1]


def test_missing_files_name_the_path(tmp_path, rng):
    out = recordio.write_recordio(str(tmp_path / "train"), zip(_images(rng, 2), [0, 1]))
    os.remove(out["idx"])
    with pytest.raises(rejects.DataError, match="index not found.*train.idx"):
        recordio.RecordIOSource(str(tmp_path / "train"))
    with pytest.raises(rejects.DataError, match="not found.*other.rec"):
        recordio.RecordIOSource(str(tmp_path / "other"))


def test_export_roundtrip_from_folder(tmp_path, rng):
    from synleak_jax.data import sources
    fixtures.make_identity_folder(str(tmp_path / "ds"), rng, 3, 2)
    fixtures.write(str(tmp_path / "ds" / "id_001" / "zz_bad.jpg"), b"")
    src = sources.ImageFolderSource(str(tmp_path / "ds"))
    out = recordio.export_source(src, str(tmp_path / "rec" / "train"), layout="header")
    assert [e.code for e in out["rejects"]] == [rejects.EMPTY_FILE]
    back = recordio.RecordIOSource(str(tmp_path / "rec" / "train"))
    good = [i for i in range(len(src)) if src.relpath(i) != os.path.join("id_001", "zz_bad.jpg")]
    assert [back[j] for j in range(len(back))] == [src[i] for i in good]
    assert back.labels().tolist() == [src.label(i) for i in good] and back.num_classes == 3


# -- hostile RecordIO files (issue #13, finding 4): one bad record is a reject, a bad index a DataError ----------

def _write_raw(tmp_path, records, idx_lines=None, name="train"):
    """Writes hand-framed records; returns (rec path, offsets). ``idx_lines`` overrides the generated index."""
    rec, offs, pos = b"", [], 0
    for r in records:
        offs.append(pos)
        rec += r
        pos += len(r)
    (tmp_path / f"{name}.rec").write_bytes(rec)
    lines = idx_lines if idx_lines is not None else [f"{k}\t{o}\n".encode() for k, o in enumerate(offs)]
    (tmp_path / f"{name}.idx").write_bytes(b"".join(lines))
    return str(tmp_path / f"{name}.rec"), offs


@pytest.mark.parametrize("layout", ["keys", "label_array"])
def test_non_integer_labels_are_rejects_with_file_and_offset(tmp_path, rng, layout):
    img = _images(rng, 1)[0]
    bad = [float("nan"), float("inf"), float("-inf"), 1e30, -1.0, 2.5, 2.0 ** 31]
    values = [3.0] + bad + [7.0]

    n = len(values)
    if layout == "keys":  # images are keys 0..n-1 with scalar labels
        records = [part(0, hdr(0, v, k) + img) for k, v in enumerate(values)]
    else:  # insightface header record 0 (one identity record), images 1..n with label arrays (first is used)
        records = [part(0, hdr(2, 0.0, 0) + struct.pack("<2f", n + 1, n + 2))]
        records += [part(0, hdr(2, 0.0, k + 1) + struct.pack("<2f", v, 0.0) + img) for k, v in enumerate(values)]
        records += [part(0, hdr(2, 0.0, n + 1) + struct.pack("<2f", 1, n + 1))]
    rec, offs = _write_raw(tmp_path, records)
    first_key = 0 if layout == "keys" else 1
    src = recordio.RecordIOSource(rec)
    assert src.layout == ("keys" if layout == "keys" else "header") and len(src) == n
    for i, v in enumerate(values):
        if i in (0, n - 1):
            assert src.read_record(i) == (img, int(v))
            continue
        with pytest.raises(rejects.RecordError) as e:
            src.read_record(i)
        assert e.value.code == rejects.BAD_LABEL
        assert f"{rec}:{offs[i + first_key]} (key {i + first_key})" in str(e.value)
    assert src.labels().tolist() == [3] + [-1] * len(bad) + [7]
    spec = InputSpec(6, 5, "RGB", (0.0,) * 3, (1.0,) * 3, 4, "cosine", "arcface112")
    codes = np.concatenate([b["reject_code"] for b in pipeline.make_pipeline(src, spec, 4, read_threads=0)])
    assert codes[:len(values)].tolist() == [0] + [rejects.BAD_LABEL] * len(bad) + [0]


@pytest.mark.parametrize("case,match", [
    ("flag1", "record 0 has header flag 1"),
    ("nan", "not counts"),
    ("huge", "not counts"),
    ("zero", "not counts"),
    ("flag_2_31", "cannot read RecordIO record 0"),
    ("short", "cannot read RecordIO record 0"),
])
def test_bad_header_record_is_a_data_error_naming_the_file(tmp_path, rng, case, match):
    img = _images(rng, 1)[0]
    head = {
        "flag1": hdr(1, 0.0, 0) + struct.pack("<f", 2.0),
        "nan": hdr(2, 0.0, 0) + struct.pack("<2f", float("nan"), 3.0),
        "huge": hdr(2, 0.0, 0) + struct.pack("<2f", 1e30, 1e30),
        "zero": hdr(2, 0.0, 0) + struct.pack("<2f", 0.0, 0.0),
        "flag_2_31": hdr(2 ** 31, 0.0, 0),
        "short": b"\0" * 7,
    }[case]
    rec, _ = _write_raw(tmp_path, [part(0, head), part(0, hdr(0, 0.0, 1) + img)])
    with pytest.raises(rejects.DataError, match=match) as e:
        recordio.RecordIOSource(rec)
    assert rec in str(e.value)


def test_flag_2_31_in_image_records_does_not_crash_labels(tmp_path, rng):
    img = _images(rng, 1)[0]
    rec, offs = _write_raw(tmp_path, [part(0, hdr(0, 1.0, 0) + img), part(0, hdr(2 ** 31, 5.0, 1) + img),
                                      part(0, hdr(2 ** 32 - 1, 5.0, 2) + img), part(0, hdr(0, 2.0, 3) + img)])
    src = recordio.RecordIOSource(rec)
    assert src.labels().tolist() == [1, -1, -1, 2]
    for i in (1, 2):
        with pytest.raises(rejects.RecordError) as e:
            src[i]
        assert e.value.code == rejects.BAD_RECORD and f":{offs[i]} " in str(e.value)


def test_index_must_be_utf8_decimal_and_bounded(tmp_path, rng):
    img = _images(rng, 1)[0]
    good = [part(0, hdr(0, 0.0, 0) + img)]
    for lines, match in [
        ([b"0\t0\n", b"\xff\xfe\t12\n"], r"train\.idx:2: expected"),
        ([b"0\t0\n", b"1\t\xc3\xa9\n"], r"train\.idx:2: expected"),
        ([b"0\t0 junk\n"], r"train\.idx:1: expected"),
        ([b"-3\t0\n"], r"train\.idx:1: expected"),
        ([b"0\t" + b"9" * 40 + b"\n"], r"train\.idx:1: expected"),
        ([b"\0" * 100000], r"train\.idx:1: line longer"),
        ([b"0\t0\n", b"0\t0\n"], "key 0 is listed twice"),
        ([b"\n", b"  \n"], "index is empty"),
    ]:
        rec, _ = _write_raw(tmp_path, good, idx_lines=lines)
        with pytest.raises(rejects.DataError, match=match):
            recordio.RecordIOSource(rec)


def test_two_keys_at_one_offset_are_reported(tmp_path, rng):
    imgs = _images(rng, 3)
    rec, offs = _write_raw(tmp_path, [part(0, hdr(0, float(k), k) + im) for k, im in enumerate(imgs)])
    lines = [f"{k}\t{o}\n".encode() for k, o in enumerate(offs)] + [f"7\t{offs[1]}\n".encode(),
                                                                      f"5\t{offs[1]}\n".encode()]
    _write_raw(tmp_path, [part(0, hdr(0, float(k), k) + im) for k, im in enumerate(imgs)], idx_lines=lines)
    src = recordio.RecordIOSource(rec)
    assert [src.key(i) for i in range(len(src))] == [0, 1, 2, 5, 7]
    assert [src[i] for i in range(3)] == imgs
    for i in (3, 4):
        with pytest.raises(rejects.RecordError) as e:
            src[i]
        assert e.value.code == rejects.DUPLICATE_RECORD and "same offset as key 1" in str(e.value)
    assert src.labels().tolist() == [0, 1, 2, -1, -1]


def test_record_over_the_cap_is_too_large(tmp_path, rng):
    imgs = _images(rng, 2)
    out = recordio.write_recordio(str(tmp_path / "train"), zip(imgs, [0, 1]), layout="keys")
    small = recordio.RecordIOSource(out["rec"], max_file_bytes=len(imgs[0]) + 24 - 1)
    with pytest.raises(rejects.RecordError) as e:
        small[0]
    assert e.value.code == rejects.TOO_LARGE
    assert recordio.RecordIOSource(out["rec"], max_file_bytes=max(map(len, imgs)) + 24)[1] == imgs[1]


def test_special_files_as_rec_or_idx_are_data_errors_without_blocking(tmp_path, rng):
    out = recordio.write_recordio(str(tmp_path / "good" / "train"), zip(_images(rng, 2), [0, 1]), layout="keys")
    bad = tmp_path / "bad"
    os.makedirs(bad)
    os.mkfifo(bad / "fifo_idx.idx")
    os.symlink(out["rec"], bad / "fifo_idx.rec")
    os.mkfifo(bad / "fifo_rec.rec")
    os.symlink(out["idx"], bad / "fifo_rec.idx")
    os.symlink("/dev/zero", bad / "zero.rec")
    os.symlink(out["idx"], bad / "zero.idx")
    os.mkdir(bad / "dir.rec")
    os.symlink(out["idx"], bad / "dir.idx")
    res = run_isolated(f"""
        from synleak_jax.data import recordio, rejects
        limit_address_space(64)
        for name in ("fifo_idx", "fifo_rec", "zero", "dir"):
            try:
                recordio.RecordIOSource({str(bad)!r} + "/" + name)
                result[name] = "opened"
            except rejects.DataError as e:
                result[name] = str(e)
    """, timeout=60)
    assert "not a regular file" in res["fifo_idx"] and "named pipe" in res["fifo_idx"]
    assert "fifo_idx.idx" in res["fifo_idx"]
    assert "named pipe" in res["fifo_rec"] and "fifo_rec.rec" in res["fifo_rec"]
    assert "device" in res["zero"] and "directory" in res["dir"]


def test_sparse_rec_with_a_half_gib_record_is_refused_under_rlimit(tmp_path, rng):
    """A sparse 600 MiB .rec whose record 1 claims 2**29 - 1 bytes: the default cap refuses it before any
    allocation (RLIMIT_AS +64 MiB); record 0 and labels() still work."""
    img = _images(rng, 1)[0]
    first = part(0, hdr(0, 4.0, 0) + img)
    rec = tmp_path / "train.rec"
    with open(rec, "wb") as f:
        f.write(first + struct.pack("<II", MAGIC, (1 << 29) - 1) + hdr(0, 9.0, 1))
    os.truncate(rec, 600 << 20)
    (tmp_path / "train.idx").write_text(f"0\t0\n1\t{len(first)}\n")
    res = run_isolated(f"""
        from synleak_jax.data import recordio, rejects
        src = recordio.RecordIOSource({str(rec)!r})
        limit_address_space(64)
        result["labels"] = src.labels().tolist()
        result["first"] = len(src[0])
        try:
            src[1]
            result["second"] = 0
        except rejects.RecordError as e:
            result["second"] = e.code
    """, timeout=60)
    assert res == {**res, "labels": [4, -1], "first": len(img), "second": rejects.TOO_LARGE}


# -- DCFace's release: record/file.rec + file.idx + list.txt (issue #17, item 1) --------------------------------

def write_dcface_record(root, items):
    """Writes ``root/file.rec``, ``file.idx`` and ``list.txt`` the way mk-minchul/dcface's ``Writer`` does, framed
    by hand: for image_index k, header IRHeader(flag=0, label=0, id=k, id2=0) + JPEG bytes, idx line
    ``k<TAB>offset``, list line ``k<TAB><subject>/<image>.jpg``. ``items``: [(save_name, jpeg bytes)].
    Returns the offsets."""
    os.makedirs(root, exist_ok=True)
    rec, idx, lst, offs = b"", "", "", []
    for k, (name, jpeg) in enumerate(items):
        offs.append(len(rec))
        idx += f"{k}\t{len(rec)}\n"
        rec += part(0, hdr(0, 0.0, k, 0) + jpeg)
        lst += f"{k}\t{name}\n"
    with open(os.path.join(root, "file.rec"), "wb") as f:
        f.write(rec)
    with open(os.path.join(root, "file.idx"), "w") as f:
        f.write(idx)
    with open(os.path.join(root, "list.txt"), "w") as f:
        f.write(lst)
    return offs


def test_dcface_layout_identities_from_list_txt(tmp_path, rng):
    subjects = [0, 2, 10]  # "10" sorts before "2": labels follow the sorted names, as an exported folder's do
    items = [(f"{s}/{j}.jpg", fixtures.encode(fixtures.random_rgb(rng, 8, 8), "JPEG")) for s in subjects
             for j in range(3)]
    write_dcface_record(str(tmp_path / "record"), items)
    src = kinds.open_source("recordio:" + str(tmp_path / "record" / "file.rec"))
    assert src.release == "dcface_recordio" and src.list_path.endswith("list.txt")
    assert len(src) == 9 and src.num_classes == 3 and src.class_names == ["0", "10", "2"]
    assert [src.relpath(i) for i in range(9)] == [n for n, _ in items]
    assert [src[i] for i in range(9)] == [b for _, b in items]
    assert src.labels().tolist() == [0, 0, 0, 2, 2, 2, 1, 1, 1]
    assert src.describe(4) == f"{tmp_path}/record/file.rec:{src._offs[4]} (key 4, 2/1.jpg)"
    # Cross-check against DCFace's own converter output shape: <save>/<subject>/<image>.jpg read as a folder.
    for name, data in items:
        fixtures.write(str(tmp_path / "images" / name), data)
    folder = sources.ImageFolderSource(str(tmp_path / "images"))
    assert folder.class_names == src.class_names
    assert sorted(zip(map(folder.relpath, range(9)), folder.labels().tolist())) == \
        sorted(zip(map(src.relpath, range(9)), src.labels().tolist()))
    # Without list.txt the headers say label 0 for every image: one identity (why the list is needed).
    plain = recordio.RecordIOSource(str(tmp_path / "record" / "file.rec"), list_file="")
    assert plain.labels().tolist() == [0] * 9 and plain.release is None
    assert src.fingerprint() != plain.fingerprint()


def test_dcface_list_and_record_disagreements_are_rejects(tmp_path, rng):
    jpeg = fixtures.encode(fixtures.random_rgb(rng, 8, 8), "JPEG")
    root = tmp_path / "record"
    offs = write_dcface_record(str(root), [(f"{k // 2}/{k % 2}.jpg", jpeg) for k in range(6)])
    lines = (root / "list.txt").read_text().splitlines()
    # key 1 missing from the list, index 7 listed without a record, index 3 listed twice, key 4 without identity.
    lines = [ln for ln in lines if not ln.startswith("1\t")] + ["7\t3/1.jpg", "3\t9/9.jpg"]
    lines = [("4\tno_identity.jpg" if ln.startswith("4\t") else ln) for ln in lines]
    (root / "list.txt").write_text("\n".join(lines) + "\n")
    # key 5's header id does not match its index.
    raw = bytearray((root / "file.rec").read_bytes())
    struct.pack_into("<Q", raw, offs[5] + 8 + 8, 55)
    (root / "file.rec").write_bytes(bytes(raw))
    src = recordio.RecordIOSource(str(root / "file.rec"))
    assert [src.key(i) for i in range(len(src))] == [0, 1, 2, 3, 4, 5, 7]
    codes, labels = {}, src.labels().tolist()
    for i in range(len(src)):
        try:
            src.read_record(i)
            codes[src.key(i)] = 0
        except rejects.RecordError as e:
            codes[src.key(i)] = e.code
            assert str(root) in str(e)
    assert codes == {0: 0, 1: rejects.NOT_IN_LIST, 2: 0, 3: rejects.DUPLICATE_RECORD, 4: rejects.BAD_LABEL,
                     5: rejects.BAD_RECORD, 7: rejects.NOT_IN_RECORD}
    assert src.class_names == ["0", "1", "2", "3"]  # identities of the listed, identity-bearing entries
    assert labels == [0, -1, 1, 1, -1, 2, 3]
    assert "not in list.txt" in src.describe(1) and "no record in" in src.describe(6)
    spec = InputSpec(8, 8, "RGB", (0.0,) * 3, (1.0,) * 3, 4, "cosine", "arcface112")
    batches = list(pipeline.make_pipeline(src, spec, 7, read_threads=0))
    assert batches[0]["reject_code"].tolist() == [codes[src.key(i)] for i in range(7)]
    entries = pipeline.collect_rejects(src, batches)
    assert sorted(e.code for e in entries) == sorted(c for c in codes.values() if c)


def test_dcface_list_errors_name_the_file(tmp_path, rng):
    jpeg = fixtures.encode(fixtures.random_rgb(rng, 8, 8), "JPEG")
    root = tmp_path / "record"
    write_dcface_record(str(root), [("0/0.jpg", jpeg)])
    for text, match in [(b"0 0/0.jpg\n", r"list\.txt:1: expected"), (b"0\t0/0.jpg\nx\t1/1.jpg\n", r"list\.txt:2"),
                        (b"\xff\t0/0.jpg\n", r"list\.txt:1"), (b"0\t" + b"a" * 9000, "longer than")]:
        (root / "list.txt").write_bytes(text)
        with pytest.raises(rejects.DataError, match=match):
            recordio.RecordIOSource(str(root / "file.rec"))
    (root / "list.txt").unlink()
    os.mkfifo(root / "list.txt")
    res = run_isolated(f"""
        from synleak_jax.data import recordio, rejects
        try:
            recordio.RecordIOSource({str(root / "file.rec")!r})
        except rejects.DataError as e:
            result["error"] = str(e)
    """, timeout=60)
    assert "named pipe" in res["error"] and "list.txt" in res["error"]
