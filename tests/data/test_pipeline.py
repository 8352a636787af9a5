"""Pipeline: every record reaches exactly one batch across processes and worker counts; batch contract."""

import io

import numpy as np
import pytest
from PIL import Image

from synleak_jax.data import pipeline, rejects, sources
from synleak_jax.models.registry import InputSpec
from tests.data import fixtures

SPEC = InputSpec(8, 6, "BGR", (127.5, 120.0, 100.0), (127.5, 64.0, 32.0), 16, "cosine", "arcface112")


def _source(rng, n=23, bad=(4, 17)):
    imgs, labels = [], []
    for i in range(n):
        imgs.append(b"\xff\xd8garbage" if i in bad else fixtures.encode(fixtures.random_rgb(rng, 8, 6), "PNG"))
        labels.append(i % 5)
    return sources.ArraySource(imgs, labels, num_classes=5)


def _run(src, procs, workers, batch=4, shard="contiguous"):
    out = []
    for p in range(procs):
        bs = list(pipeline.make_pipeline(src, SPEC, batch, p, procs, workers, shard=shard))
        assert len(bs) == pipeline.num_batches(len(src), batch, procs)
        out.append(bs)
    return out


def test_num_batches_formula():
    assert pipeline.num_batches(23, 4, 1) == 6
    assert pipeline.num_batches(23, 4, 3) == 2  # ceil(23/3)=8 -> 2 batches
    assert pipeline.num_batches(24, 4, 2) == 3
    assert pipeline.num_batches(1, 4, 3) == 1
    assert pipeline.num_batches(0, 4, 3) == 0


_FAST = [(1, 0), (2, 0), (3, 0), (2, 1), (3, 2)]
_ALL = [(p, w) for p in (1, 2, 3) for w in (0, 1, 2)]


@pytest.mark.parametrize(
    "procs,workers",
    _FAST + [pytest.param(p, w, marks=pytest.mark.slow) for p, w in _ALL if (p, w) not in _FAST])
def test_every_record_exactly_once(rng, procs, workers):
    src = _source(rng)
    ref = _run(src, procs, 0)
    got = _run(src, procs, workers) if workers else ref
    seen = []
    for p in range(procs):
        for b_ref, b in zip(ref[p], got[p]):
            # Same batches whatever the worker count.
            for k in b_ref:
                np.testing.assert_array_equal(b_ref[k], b[k])
            assert b["image"].shape == (4, 8, 6, 3) and b["image"].dtype == np.float32
            assert b["valid"].dtype == np.bool_ and b["record_id"].dtype == np.int64
            assert b["label"].dtype == np.int64 and b["reject_code"].dtype == np.int32
            ids = b["record_id"]
            seen.extend(ids[ids >= 0].tolist())
            pad = ids < 0
            assert not b["valid"][pad].any() and (b["label"][pad] == -1).all() and (b["reject_code"][pad] == 0).all()
            assert (b["image"][~b["valid"]] == 0).all()
            rej = b["reject_code"] > 0
            assert set(ids[rej].tolist()) <= {4, 17} and not b["valid"][rej].any()
            np.testing.assert_array_equal(b["label"][ids >= 0], ids[ids >= 0] % 5)
    assert sorted(seen) == list(range(len(src)))


def test_strided_sharding_covers_once(rng):
    src = _source(rng, n=11, bad=())
    seen = []
    for bs in _run(src, 3, 0, batch=2, shard="strided"):
        for b in bs:
            seen.extend(b["record_id"][b["record_id"] >= 0].tolist())
    assert sorted(seen) == list(range(11))


@pytest.mark.parametrize("order", ["BGR", "RGB"])
def test_images_normalised_by_spec(rng, order):
    spec = InputSpec(8, 6, order, tuple(rng.uniform(0, 255, 3)), tuple(rng.uniform(1, 130, 3)), 16, "cosine",
                     "arcface112")
    rgbs = [fixtures.random_rgb(rng, 8, 6) for _ in range(3)]
    src = sources.ArraySource([fixtures.encode(x, "PNG") for x in rgbs])
    b = next(iter(pipeline.make_pipeline(src, spec, 4)))
    for i, x in enumerate(rgbs):
        xo = x[..., ::-1] if order == "BGR" else x
        # InputSpec.normalize works in float32 with float32-rounded constants; compare against that in float64.
        mean32, std32 = (np.asarray(v, np.float32).astype(np.float64) for v in (spec.mean, spec.std))
        ref = (xo.astype(np.float64) - mean32) / std32
        np.testing.assert_allclose(b["image"][i], ref, rtol=1e-6, atol=1e-6)
        np.testing.assert_array_equal(b["image"][i], spec.normalize(x))  # bit-identical to the spec
    assert b["valid"].tolist() == [True, True, True, False]
    assert b["label"].tolist() == [-1, -1, -1, -1]


@pytest.mark.parametrize("order", ["BGR", "RGB"])
def test_jpeg_batches_same_with_and_without_simplejpeg(rng, monkeypatch, order):
    """112x112 JPEGs (the fast path) + bad files: the same batches with simplejpeg and with PIL alone, and
    every image bit-identical to spec.normalize of PIL's decode."""
    from synleak_jax.data import decode
    spec = InputSpec(112, 112, order, tuple(rng.uniform(0, 255, 3)), tuple(rng.uniform(1, 130, 3)), 16, "cosine",
                     "arcface112")
    imgs = [fixtures.encode(fixtures.random_rgb(rng, 112, 112), "JPEG", quality=int(q), subsampling=int(s))
            for q, s in zip(rng.integers(50, 100, 9), rng.integers(0, 3, 9))]
    imgs[3] = imgs[3][: len(imgs[3]) // 2]  # truncated
    imgs[6] = b"\xff\xd8\xffnot a jpeg\xff\xd9"  # JPEG magic and end marker, garbage between
    src = sources.ArraySource(imgs)
    fast = list(pipeline.make_pipeline(src, spec, 4, read_threads=2))
    monkeypatch.setattr(decode, "_simplejpeg", None)
    slow = list(pipeline.make_pipeline(src, spec, 4, read_threads=2))
    assert len(fast) == len(slow) == 3
    for a, b in zip(fast, slow):
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])
    image = np.concatenate([b["image"] for b in fast])
    codes = np.concatenate([b["reject_code"] for b in fast])
    assert codes[:9].tolist() == [0, 0, 0, rejects.TRUNCATED, 0, 0, rejects.NOT_AN_IMAGE, 0, 0]
    for i, data in enumerate(imgs):
        if codes[i] == 0:
            rgb = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
            np.testing.assert_array_equal(image[i], spec.normalize(rgb))
        else:
            assert (image[i] == 0).all()
    assert (image[9:] == 0).all()  # padding


class _GammaSpec:
    """A spec whose normalisation is not a per-channel affine map of the levels (the collate falls back)."""

    height, width, channel_order, mean, std = 8, 6, "RGB", (0.0,) * 3, (1.0,) * 3

    def normalize(self, rgb):
        return (np.asarray(rgb, np.float32) / np.float32(255)) ** np.float32(2.2)


def test_non_affine_spec_falls_back_to_its_normalize(rng):
    rgbs = [fixtures.random_rgb(rng, 8, 6) for _ in range(3)]
    src = sources.ArraySource([fixtures.encode(x, "PNG") for x in rgbs])
    collate = pipeline.CollateNormalize(_GammaSpec())
    assert not collate._affine
    b = next(iter(pipeline.make_pipeline(src, _GammaSpec(), 4)))
    for i, x in enumerate(rgbs):
        np.testing.assert_array_equal(b["image"][i], _GammaSpec().normalize(x))
    assert (b["image"][3] == 0).all()


class _ScalarSpec:
    """One mean/std for all channels, given as scalars (broadcast like numpy does in normalize)."""

    height, width, channel_order, mean, std = 8, 6, "BGR", 127.5, 128.0

    def normalize(self, rgb):
        return (np.asarray(rgb, np.float32)[..., ::-1] - np.float32(127.5)) / np.float32(128.0)


def test_scalar_mean_std_spec_uses_the_fast_path_bit_identically(rng):
    rgbs = [fixtures.random_rgb(rng, 8, 6) for _ in range(3)]
    src = sources.ArraySource([fixtures.encode(x, "PNG") for x in rgbs])
    assert pipeline.CollateNormalize(_ScalarSpec())._affine
    b = next(iter(pipeline.make_pipeline(src, _ScalarSpec(), 3)))
    for i, x in enumerate(rgbs):
        np.testing.assert_array_equal(b["image"][i], _ScalarSpec().normalize(x))


def test_resize_to_spec_and_align_hook(rng):
    big = fixtures.random_rgb(rng, 40, 30)
    src = sources.ArraySource([fixtures.encode(big, "PNG")] * 3)
    b = next(iter(pipeline.make_pipeline(src, SPEC, 3, normalize=False)))
    ref = np.asarray(Image.fromarray(big).resize((6, 8), Image.BILINEAR))
    np.testing.assert_array_equal(b["image"][0], ref)

    calls = []

    def align(rgb):
        calls.append(rgb.shape)
        if len(calls) == 2:
            return None  # "no face"
        if len(calls) == 3:
            raise RuntimeError("detector exploded")
        return rgb[:16, :12]

    b = next(iter(pipeline.make_pipeline(src, SPEC, 3, align_fn=align, normalize=False)))
    assert calls == [(40, 30, 3)] * 3  # alignment sees full-resolution pixels
    assert b["reject_code"].tolist() == [0, rejects.ALIGN_FAILED, rejects.ALIGN_FAILED]
    ref = np.asarray(Image.fromarray(np.ascontiguousarray(big[:16, :12])).resize((6, 8), Image.BILINEAR))
    np.testing.assert_array_equal(b["image"][0], ref)


def test_reject_entries_and_jsonl(tmp_path, rng):
    root, outside = str(tmp_path / "ds"), str(tmp_path / "out")
    from tests.data.test_sources import plant_bad_files
    exp = plant_bad_files(root, rng, outside)
    src = sources.ImageFolderSource(root)
    entries = pipeline.collect_rejects(src, pipeline.make_pipeline(src, SPEC, 4, num_workers=0))
    by_rel = {src.relpath(e.record_id): e for e in entries}
    assert {k: e.code for k, e in by_rel.items()} == {k: c for k, c in exp.items() if c}
    for e in entries:
        assert e.where == src.describe(e.record_id) and e.reason == rejects.REASONS[e.code]
    path = tmp_path / "rejects.jsonl"
    assert rejects.write_rejects(path, entries) == len(entries)
    assert rejects.read_rejects(path) == entries


def test_read_threads_do_not_change_batches(rng):
    src = _source(rng, n=30)
    a = list(pipeline.make_pipeline(src, SPEC, 4, read_threads=0))
    b = list(pipeline.make_pipeline(src, SPEC, 4, read_threads=3))
    assert len(a) == len(b) == 8
    for x, y in zip(a, b):
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])


def test_resume_from_start_batch(rng):
    src = _source(rng, n=10, bad=())
    full = list(pipeline.make_pipeline(src, SPEC, 3))
    tail = list(pipeline.make_pipeline(src, SPEC, 3, start_batch=2))
    assert len(tail) == len(full) - 2
    for a, b in zip(full[2:], tail):
        np.testing.assert_array_equal(a["record_id"], b["record_id"])
        np.testing.assert_array_equal(a["image"], b["image"])


def test_empty_source_is_an_error():
    with pytest.raises(rejects.DataError, match="empty"):
        pipeline.make_pipeline(sources.ArraySource([]), SPEC, 4)


class _FlakySource(sources.ArraySource):
    """Raises an I/O error (as a failing disk or network file system would) for chosen records."""

    def __init__(self, images, bad):
        super().__init__(images)
        self.bad = set(bad)

    def read_bytes(self, i):
        if i in self.bad:
            raise OSError(5, "Input/output error")
        return super().read_bytes(i)


def test_io_errors_become_rejects(rng):
    src = _FlakySource([fixtures.encode(fixtures.random_rgb(rng, 8, 6), "PNG") for _ in range(5)], bad=[1, 4])
    b = next(iter(pipeline.make_pipeline(src, SPEC, 5)))
    assert b["reject_code"].tolist() == [0, rejects.UNREADABLE, 0, 0, rejects.UNREADABLE]
    assert b["valid"].tolist() == [True, False, True, True, False]


_APP_SCRIPT = '''
import sys
import numpy as np
from absl import app
from synleak_jax.data import pipeline, sources
from synleak_jax.models.registry import InputSpec

def main(argv):
    src = sources.FlatFolderSource(argv[1])
    spec = InputSpec(8, 6, "RGB", (0.0,) * 3, (1.0,) * 3, 4, "cosine", "arcface112")
    ids = [b["record_id"].tolist() for b in pipeline.make_pipeline(src, spec, 3, num_workers=1)]
    print("IDS", ids)

if __name__ == "__main__":  # grain workers are spawned: the guard is required, as for any multiprocessing
    app.run(main)
'''


def test_workers_inside_absl_app_run(tmp_path, rng):
    import subprocess
    import sys
    for k in range(4):
        fixtures.write(str(tmp_path / "imgs" / f"{k}.png"), fixtures.encode(fixtures.random_rgb(rng, 8, 6), "PNG"))
    script = tmp_path / "run_app.py"
    script.write_text(_APP_SCRIPT)
    repo = __file__.rsplit("/tests/", 1)[0]
    r = subprocess.run([sys.executable, str(script), str(tmp_path / "imgs")], capture_output=True, text=True,
                       cwd=repo, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "IDS [[0, 1, 2], [3, -1, -1]]" in r.stdout
