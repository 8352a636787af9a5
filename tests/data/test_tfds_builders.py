"""TFDS builders prepared without TensorFlow (array_record), read back as sources with equal bytes/labels."""

import os
import pickle

import numpy as np
import pytest

tfds = pytest.importorskip("tensorflow_datasets")

from synleak_jax.data import kinds, pipeline, recordio, rejects, sources, tfds_builders  # noqa: E402
from synleak_jax.models.registry import InputSpec  # noqa: E402
from tests.data import fixtures  # noqa: E402


def test_no_tensorflow_needed():
    import importlib.util
    assert importlib.util.find_spec("tensorflow") is None  # the point: everything here runs without it


def test_identity_folder_dataset(tmp_path, rng):
    manual = str(tmp_path / "manual")
    fixtures.make_identity_folder(manual, rng, num_ids=3, per_id=3)
    fixtures.write(os.path.join(manual, "id_001", "broken.jpg"), b"not a jpeg")
    os.symlink("/etc/hostname", os.path.join(manual, "id_002", "zz_escape.jpg"))
    data_dir = str(tmp_path / "tfds")
    tfds_builders.prepare("sface", manual, data_dir)
    src = sources.ImageFolderSource(manual)
    back = tfds_builders.TfdsSource("sface", data_dir=data_dir)
    assert len(back) == len(src) == 11
    assert back.num_classes == 3 and back.class_names == ["id_000", "id_001", "id_002"]
    for i in range(len(src)):
        assert back.label(i) == src.label(i)
        assert back.file_name(i) == src.relpath(i)
        if src.relpath(i).endswith("zz_escape.jpg"):
            with pytest.raises(rejects.RecordError) as e:
                back[i]
            assert e.value.code == rejects.PATH_ESCAPE and "sface" in str(e.value)
        else:
            assert back[i] == src[i]
    np.testing.assert_array_equal(back.labels(), src.labels())
    clone = pickle.loads(pickle.dumps(back))
    assert clone[0] == src[0] and clone.fingerprint() == back.fingerprint()
    # Through the pipeline with a worker process: the same valid/reject pattern as the folder source.
    spec = InputSpec(12, 10, "RGB", (0.0,) * 3, (1.0,) * 3, 4, "cosine", "arcface112")
    a = list(pipeline.make_pipeline(src, spec, 4))
    b = list(pipeline.make_pipeline(back, spec, 4, num_workers=1))
    for x, y in zip(a, b):
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])
    assert sum(int((x["reject_code"] > 0).sum()) for x in b) == 2
    # Also readable through the plain tfds API.
    ds = tfds.data_source("sface", split="train", data_dir=data_dir)
    assert bytes(ds[0]["image"]) == src[0]


def test_casia_from_recordio(tmp_path, rng):
    manual = tmp_path / "manual" / "faces_webface_112x112"
    imgs = [fixtures.encode(fixtures.random_rgb(rng, 8, 8), "JPEG") for _ in range(7)]
    labels = [0, 0, 1, 1, 1, 3, 3]
    recordio.write_recordio(str(manual / "train"), zip(imgs, labels), layout="header", num_classes=4)
    data_dir = str(tmp_path / "tfds")
    tfds_builders.prepare("casia_webface", str(tmp_path / "manual"), data_dir)
    back = tfds_builders.TfdsSource("casia_webface", data_dir=data_dir)
    assert [back[i] for i in range(len(back))] == imgs
    assert back.labels().tolist() == labels and back.num_classes == 4
    assert back.file_name(2) == "train.rec:3"
    via_open = kinds.open_source("tfds:casia_webface", data_dir=data_dir)
    by_dir = kinds.open_source("tfds:" + back.builder_dir)
    assert via_open[6] == by_dir[6] == imgs[6] and by_dir.fingerprint() == back.fingerprint()


def test_errors_name_things(tmp_path):
    with pytest.raises(rejects.DataError, match="unknown dataset 'nope'"):
        tfds_builders.prepare("nope", str(tmp_path), str(tmp_path / "d"))
    with pytest.raises(rejects.DataError, match="manual_dir.*missing"):
        tfds_builders.prepare("ffhq", str(tmp_path / "missing"), str(tmp_path / "d"))
    with pytest.raises(rejects.DataError, match="no prepared dataset 'ffhq'"):
        tfds_builders.TfdsSource("ffhq", data_dir=str(tmp_path / "d"))
    assert sorted(tfds_builders.BUILDERS) == sorted([
        "casia_webface", "ffhq", "dcface", "idiff_face_uniform", "idiff_face_two_stage", "sface", "idnet",
        "gandiffface"])


def test_any_file_name_survives_prepare(tmp_path, rng):
    """Non-UTF-8, newline and tab names: prepare does not crash on the text feature, the name read back is the
    exact OS string, and describe() stays one UTF-8 line."""
    manual = os.fsencode(str(tmp_path / "manual"))
    names = [b"id_\xe9/a\xff.jpg", b"id_\xe9/new\nline.jpg", b"id_b/tab\tx.jpg"]
    data = {}
    for n in names:
        os.makedirs(os.path.dirname(os.path.join(manual, n)), exist_ok=True)
        data[n] = fixtures.encode(fixtures.random_rgb(rng, 8, 8), "JPEG")
        with open(os.path.join(manual, n), "wb") as f:
            f.write(data[n])
    data_dir = str(tmp_path / "tfds")
    tfds_builders.prepare("idnet", os.fsdecode(manual), data_dir)
    back = tfds_builders.TfdsSource("idnet", data_dir=data_dir)
    got = {os.fsencode(back.file_name(i)): back[i] for i in range(len(back))}
    assert got == data
    assert sorted(os.fsencode(c) for c in back.class_names) == [b"id_b", b"id_\xe9"]
    for i in range(len(back)):
        back.describe(i).encode("utf-8")
        assert "\n" not in back.describe(i)


def test_dcface_builder_reads_the_released_recordio(tmp_path, rng):
    """manual_dir/record/file.rec + list.txt (DCFace's release) is prepared with list.txt identities and keeps the
    release, so channel_order=auto resolves the same way on the prepared copy."""
    rec_dir = tmp_path / "manual" / "record"
    imgs = [fixtures.encode(fixtures.random_rgb(rng, 8, 8), "JPEG") for _ in range(4)]
    recordio.write_recordio(str(rec_dir / "file"), zip(imgs, [0] * 4), layout="keys", write_property=False)
    (rec_dir / "list.txt").write_text("".join(f"{k}\t{k % 2}/{k}.jpg\n" for k in range(4)))
    data_dir = str(tmp_path / "tfds")
    tfds_builders.prepare("dcface", str(tmp_path / "manual"), data_dir)
    back = tfds_builders.TfdsSource("dcface", data_dir=data_dir)
    assert [back[i] for i in range(4)] == imgs and back.labels().tolist() == [0, 1, 0, 1]
    assert back.class_names == ["0", "1"] and back.file_name(3) == "1/3.jpg"
    assert back.release == "dcface_recordio"


def test_corrupt_prepared_records_are_rejects_not_crashes(tmp_path, rng):
    """Bytes flipped inside the prepared array_record file: array_record raises (RuntimeError) for the records it
    cannot read; each becomes the reject BAD_RECORD naming the prepared directory, and the pipeline runs on."""
    import glob
    manual = str(tmp_path / "manual")
    fixtures.make_identity_folder(manual, rng, num_ids=2, per_id=3)
    data_dir = str(tmp_path / "tfds")
    tfds_builders.prepare("idnet", manual, data_dir)
    (path,) = glob.glob(os.path.join(data_dir, "idnet", "*", "*.array_record*"))
    raw = bytearray(open(path, "rb").read())
    for pos in range(200, len(raw) - 200, 97):
        raw[pos] ^= 0xFF
    with open(path, "wb") as f:
        f.write(bytes(raw))
    back = tfds_builders.TfdsSource("idnet", data_dir=data_dir)
    codes = []
    for i in range(len(back)):
        try:
            back.read_record(i)
            codes.append(0)
        except rejects.RecordError as e:
            codes.append(e.code)
            assert "idnet" in str(e) and back.builder_dir in str(e)
    assert rejects.BAD_RECORD in codes and set(codes) <= {0, rejects.BAD_RECORD}
    assert back.labels().shape == (len(back),)  # -1 where unreadable, no exception
    back.describe(0).encode("utf-8")
    spec = InputSpec(12, 10, "RGB", (0.0,) * 3, (1.0,) * 3, 4, "cosine", "arcface112")
    got = np.concatenate([b["reject_code"] for b in pipeline.make_pipeline(back, spec, 4, read_threads=0)])
    assert all(got[i] == rejects.BAD_RECORD for i, c in enumerate(codes) if c)  # the rest may decode or not
