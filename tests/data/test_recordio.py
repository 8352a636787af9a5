"""RecordIO writer checked byte-by-byte against a hand-assembled layout; reader on both layouts and bad records."""

import os
import pickle
import struct

import numpy as np
import pytest

from synleak_jax.data import pipeline, recordio, rejects
from synleak_jax.models.registry import InputSpec
from tests.data import fixtures

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
    made = fixtures.make_identity_folder(str(tmp_path / "ds"), rng, 3, 2)
    fixtures.write(str(tmp_path / "ds" / "id_001" / "zz_bad.jpg"), b"")
    src = sources.ImageFolderSource(str(tmp_path / "ds"))
    out = recordio.export_source(src, str(tmp_path / "rec" / "train"), layout="header")
    assert [e.code for e in out["rejects"]] == [rejects.EMPTY_FILE]
    back = recordio.RecordIOSource(str(tmp_path / "rec" / "train"))
    good = [i for i in range(len(src)) if src.relpath(i) != os.path.join("id_001", "zz_bad.jpg")]
    assert [back[j] for j in range(len(back))] == [src[i] for i in good]
    assert back.labels().tolist() == [src.label(i) for i in good] and back.num_classes == 3
