"""Colour order of the stored pixels (issue #17, item 2): rgb | bgr | auto, resolved per source, applied by the
pipeline before the matcher's own channel order; DCFace's RecordIO written the way its code writes it."""

import numpy as np
import pytest
import simplejpeg
from PIL import Image

from synleak_jax.data import channels, pipeline, recordio, sources
from synleak_jax.models.registry import InputSpec
from tests.data import fixtures
from tests.data.test_recordio import write_dcface_record

SIZE = 112


def smooth_faces(rng, n: int) -> list[np.ndarray]:
    """uint8 RGB [112, 112, 3] images with independent smooth R, G, B fields (JPEG at q100 keeps them within a few
    levels, while swapping R and B changes them by tens of levels)."""
    out = []
    for _ in range(n):
        low = rng.integers(0, 256, (7, 7, 3), dtype=np.uint8)
        out.append(np.asarray(Image.fromarray(low).resize((SIZE, SIZE), Image.BICUBIC)))
    return out


def pack_img_q100(array: np.ndarray) -> bytes:
    """The JPEG ``mx.recordio.pack_img(header, array, quality=100, img_fmt='.jpg')`` stores: OpenCV's
    ``imencode``, which takes ``array`` as BGR. Done here by libjpeg-turbo itself (simplejpeg) told the array is BGR,
    at quality 100 with OpenCV's default 4:2:0 chroma subsampling and accurate DCT."""
    return simplejpeg.encode_jpeg(np.ascontiguousarray(array), quality=100, colorspace="BGR",
                                  colorsubsampling="420", fastdct=False)


def _mean_abs(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int32) - b.astype(np.int32)).mean())


def test_resolution_and_validation():
    class Dcface:
        release = "dcface_recordio"

    assert channels.resolve_channel_order("auto", object()).resolved == "rgb"
    assert channels.resolve_channel_order("AUTO", Dcface()).resolved == channels.KNOWN_RELEASES["dcface_recordio"][0]
    assert "dcface_recordio" in channels.resolve_channel_order("auto", Dcface()).reason
    assert channels.resolve_channel_order("bgr", Dcface()).to_dict() == {
        "requested": "bgr", "resolved": "bgr", "reason": "set explicitly"}
    with pytest.raises(ValueError, match="channel_order='brg'"):
        channels.resolve_channel_order("brg")
    x = np.arange(12, dtype=np.uint8).reshape(2, 2, 3)
    assert np.array_equal(channels.to_rgb(x, "bgr"), x[..., ::-1]) and channels.to_rgb(x, "rgb") is x
    assert channels.to_rgb(x, "bgr").flags.c_contiguous
    with pytest.raises(ValueError, match="resolve"):
        channels.to_rgb(x, "auto")


def _dcface_release(tmp_path, rng, writer_array):
    """DCFace layout, 3 subjects x 2 images (``<subject>/<image>.jpg``), written as ``Writer.write`` does: header
    (flag 0, label 0, id index, id2 0), ``list.txt``, JPEG = pack_img_q100(writer_array(generated RGB image))."""
    originals = smooth_faces(rng, 6)
    items = [(f"{k // 2}/{k % 2}.jpg", pack_img_q100(writer_array(img))) for k, img in enumerate(originals)]
    write_dcface_record(str(tmp_path / "record"), items)
    return recordio.RecordIOSource(str(tmp_path / "record" / "file.rec")), originals


def _pipeline_pixels(src, order: str) -> tuple[np.ndarray, dict]:
    spec = InputSpec(SIZE, SIZE, "RGB", (0.0,) * 3, (1.0,) * 3, 4, "cosine", "arcface112")
    pipe = pipeline.make_pipeline(src, spec, 6, normalize=False, read_threads=0, channel_order=order)
    batch = next(iter(pipe))
    assert batch["valid"].all()
    return batch["image"], pipe.describe_preprocessing()


def test_dcface_release_as_its_published_code_writes_it(tmp_path, rng):
    """The writer chain of mk-minchul/dcface @ 1d2c523: the generator's RGB output is reversed to BGR by
    extra_visualization.sample_batch, Writer.write hands that array to mx.recordio.pack_img (OpenCV, which takes
    BGR), so the JPEG holds the true colours. Read back with list.txt identities and channel_order=auto: the
    original colours within JPEG error; channel_order=bgr swaps them."""
    # sample_batch returns the generator's RGB reversed (plotting_images[:, :, :, ::-1]); the encoder takes it as BGR.
    src, originals = _dcface_release(tmp_path, rng, lambda rgb: rgb[..., ::-1])
    assert src.labels().tolist() == [0, 0, 1, 1, 2, 2] and src.release == "dcface_recordio"
    auto, info = _pipeline_pixels(src, "auto")
    assert info["channel_order"]["resolved"] == "rgb" and "dcface_recordio" in info["channel_order"]["reason"]
    swapped, info_bgr = _pipeline_pixels(src, "bgr")
    assert info_bgr["channel_order"]["resolved"] == "bgr"
    for k, orig in enumerate(originals):
        assert _mean_abs(auto[k], orig) < 1.5 and np.abs(auto[k].astype(int) - orig).max() <= 16
        assert _mean_abs(swapped[k], orig[..., ::-1]) < 1.5
        assert _mean_abs(swapped[k], orig) > 20  # the two readings are far apart
        np.testing.assert_array_equal(src.read_rgb(k), auto[k])
        np.testing.assert_array_equal(src.read_rgb(k, channel_order="bgr"), swapped[k])


def test_swapped_release_is_restored_with_bgr(tmp_path, rng):
    """A release written the way issue #17 describes (an RGB array handed to OpenCV as if BGR, i.e. the JPEG of the
    channel-reversed array): channel_order=bgr gives the original colours, channel_order=rgb the swapped ones."""
    src, originals = _dcface_release(tmp_path, rng, lambda rgb: rgb)  # the RGB array itself, taken as BGR
    restored, _ = _pipeline_pixels(src, "bgr")
    as_stored, _ = _pipeline_pixels(src, "rgb")
    for k, orig in enumerate(originals):
        assert _mean_abs(restored[k], orig) < 1.5 and np.abs(restored[k].astype(int) - orig).max() <= 16
        assert _mean_abs(as_stored[k], orig[..., ::-1]) < 1.5 and _mean_abs(as_stored[k], orig) > 20


@pytest.mark.parametrize("model_order", ["RGB", "BGR"])
def test_stored_order_is_undone_before_the_matchers_order(rng, model_order):
    """Normalised batches: stored BGR + channel_order=bgr equals stored RGB + rgb, for an RGB and a BGR matcher;
    with the alignment hook the hook sees true RGB."""
    imgs = [fixtures.random_rgb(rng, 8, 8) for _ in range(3)]
    rgb_src = sources.ArraySource([fixtures.encode(x, "PNG") for x in imgs])
    bgr_src = sources.ArraySource([fixtures.encode(np.ascontiguousarray(x[..., ::-1]), "PNG") for x in imgs])
    spec = InputSpec(8, 8, model_order, (127.5, 120.0, 100.0), (128.0, 60.0, 70.0), 4, "cosine", "arcface112")
    a = next(iter(pipeline.make_pipeline(rgb_src, spec, 3, read_threads=0, channel_order="rgb")))
    b = next(iter(pipeline.make_pipeline(bgr_src, spec, 3, read_threads=0, channel_order="bgr")))
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["image"][0], spec.normalize(imgs[0]))
    seen = []

    def hook(rgb):
        seen.append(rgb.copy())
        return rgb

    next(iter(pipeline.make_pipeline(bgr_src, spec, 3, read_threads=0, channel_order="bgr", align_fn=hook)))
    for got, want in zip(seen, imgs):
        np.testing.assert_array_equal(got, want)
