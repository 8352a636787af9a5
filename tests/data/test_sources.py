"""Folder sources: listing order, labels, extensions, containment, planted bad files, errors."""

import os
import pickle
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from synleak_jax.data import decode, kinds, rejects, sources
from tests.data import fixtures


def test_identity_folder_order_labels_and_bytes(tmp_path, rng):
    made = fixtures.make_identity_folder(str(tmp_path), rng, num_ids=3, per_id=4)
    fixtures.write(str(tmp_path / "id_001" / "notes.txt"), b"not an image")  # skipped by extension
    fixtures.write(str(tmp_path / "README"), b"top-level file: not an identity")
    os.makedirs(tmp_path / "id_003_empty")
    src = sources.ImageFolderSource(str(tmp_path))
    assert src.class_names == ["id_000", "id_001", "id_002", "id_003_empty"]
    assert src.num_classes == 4 and src.empty_classes == ["id_003_empty"]
    rels = [src.relpath(i) for i in range(len(src))]
    assert rels == sorted(made, key=lambda r: (r.split(os.sep)[0], r.split(os.sep)[1]))
    for i, rel in enumerate(rels):
        assert src[i] == made[rel][1]
        assert src.label(i) == made[rel][0]
        assert src.describe(i) == os.path.join(os.path.realpath(tmp_path), rel)
    np.testing.assert_array_equal(src.labels(), [made[r][0] for r in rels])
    assert src.num_skipped == 2
    # Picklable (grain workers) and a stable fingerprint that changes with the listing.
    clone = pickle.loads(pickle.dumps(src))
    assert clone.fingerprint() == src.fingerprint() and clone[5] == src[5]
    fp = src.fingerprint()
    fixtures.write(str(tmp_path / "id_000" / "zz_new.webp"), fixtures.encode(fixtures.random_rgb(rng), "WEBP"))
    src2 = sources.ImageFolderSource(str(tmp_path))
    assert len(src2) == len(src) + 1 and src2.fingerprint() != fp
    with pytest.raises(IndexError):
        src[len(src)]


def test_flat_folder_nested_sorted_unlabelled(tmp_path, rng):
    rels = ["00000/00001.png", "00000/00000.png", "01000/01000.PNG", "top.jpg"]
    data = {}
    for r in rels:
        data[r] = fixtures.encode(fixtures.random_rgb(rng), "PNG" if r.lower().endswith("png") else "JPEG")
        fixtures.write(str(tmp_path / r), data[r])
    src = sources.FlatFolderSource(str(tmp_path))
    got = [src.relpath(i) for i in range(len(src))]
    assert got == ["00000/00000.png", "00000/00001.png", "01000/01000.PNG", "top.jpg"]
    assert all(src.label(i) == -1 for i in range(len(src))) and src.num_classes is None
    assert [src[i] for i in range(len(src))] == [data[r] for r in got]
    # A symlinked directory leaving the root is never entered; one inside the root is listed.
    fixtures.write(str(tmp_path.parent / f"{tmp_path.name}_outside" / "x.png"), data[rels[0]])
    os.symlink(str(tmp_path.parent / f"{tmp_path.name}_outside"), str(tmp_path / "zz_out"))
    os.symlink(str(tmp_path / "00000"), str(tmp_path / "zz_in"))
    src2 = sources.FlatFolderSource(str(tmp_path))
    assert [src2.relpath(i) for i in range(len(src2))] == got + ["zz_in/00000.png", "zz_in/00001.png"]
    assert src2.num_skipped == src.num_skipped + 1
    assert src2[5] == data["00000/00001.png"]


def test_missing_and_empty_roots_name_the_path(tmp_path):
    with pytest.raises(rejects.DataError, match="does not exist.*nope"):
        sources.ImageFolderSource(str(tmp_path / "nope"))
    os.makedirs(tmp_path / "empty" / "id0")
    with pytest.raises(rejects.DataError, match="no image files.*empty"):
        sources.ImageFolderSource(str(tmp_path / "empty"))
    with pytest.raises(rejects.DataError, match="no image files"):
        sources.FlatFolderSource(str(tmp_path / "empty"))


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG signature + IHDR claiming width x height, with a tiny IDAT: a decompression-bomb shaped file."""
    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


def plant_bad_files(root, rng, outside):
    """Adds bad and odd files to an identity folder; returns {relpath: expected reject code (0 = valid)}."""
    good = fixtures.encode(fixtures.random_rgb(rng, 16, 16), "JPEG")
    exp = {}

    def put(rel, data, code):
        fixtures.write(os.path.join(root, rel), data)
        exp[rel] = code

    put("bad/empty.jpg", b"", rejects.EMPTY_FILE)
    put("bad/truncated.jpg", good[: len(good) // 2], rejects.TRUNCATED)
    put("bad/random.png", rng.integers(0, 256, 300, dtype=np.uint8).tobytes(), rejects.NOT_AN_IMAGE)
    put("bad/text.jpg", b"hello, I am a text file\n" * 10, rejects.NOT_AN_IMAGE)
    put("bad/bomb.png", _png_header_only(20000, 20000), rejects.TOO_MANY_PIXELS)
    # Odd but valid: converted, never rejected.
    put("odd/gray.png", fixtures.encode(rng.integers(0, 256, (9, 7), dtype=np.uint8), "PNG"), 0)
    put("odd/rgba.png", fixtures.encode(rng.integers(0, 256, (9, 7, 4), dtype=np.uint8), "PNG"), 0)
    cmyk = Image.fromarray(rng.integers(0, 256, (9, 7, 4), dtype=np.uint8), "CMYK")
    import io
    b = io.BytesIO(); cmyk.save(b, "JPEG"); put("odd/cmyk.jpg", b.getvalue(), 0)
    g16 = Image.fromarray(rng.integers(0, 65536, (9, 7), dtype=np.uint16))
    b = io.BytesIO(); g16.save(b, "PNG"); put("odd/gray16.png", b.getvalue(), 0)
    pal = Image.fromarray(fixtures.random_rgb(rng, 9, 7)).convert("P")
    b = io.BytesIO(); pal.save(b, "PNG"); put("odd/palette.png", b.getvalue(), 0)
    # Symlinks: escaping file, escaping identity dir, in-root link, dangling in-root link.
    fixtures.write(os.path.join(outside, "secret.jpg"), good)
    fixtures.write(os.path.join(outside, "ext_id", "a.jpg"), good)
    os.makedirs(os.path.join(root, "links"), exist_ok=True)
    os.symlink(os.path.join(outside, "secret.jpg"), os.path.join(root, "links", "escape.jpg"))
    exp["links/escape.jpg"] = rejects.PATH_ESCAPE
    os.symlink(os.path.join(root, "odd", "gray.png"), os.path.join(root, "links", "inside.png"))
    exp["links/inside.png"] = 0
    os.symlink(os.path.join(root, "links", "gone.jpg"), os.path.join(root, "links", "dangling.jpg"))
    exp["links/dangling.jpg"] = rejects.MISSING_FILE
    os.symlink(os.path.join(outside, "ext_id"), os.path.join(root, "zz_linked_id"))
    exp["zz_linked_id/a.jpg"] = rejects.PATH_ESCAPE
    return exp


def test_planted_bad_files_become_reject_codes(tmp_path, rng):
    root, outside = str(tmp_path / "ds"), str(tmp_path / "outside")
    exp = plant_bad_files(root, rng, outside)
    src = sources.ImageFolderSource(root)
    got = {}
    for i in range(len(src)):
        try:
            rgb = src.read_rgb(i)
            assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3
            got[src.relpath(i)] = 0
        except rejects.RecordError as e:
            assert src.describe(i) in str(e) or src.relpath(i) in str(e)
            got[src.relpath(i)] = e.code
    assert got == exp


def test_mode_conversions_values(rng):
    g = rng.integers(0, 256, (5, 6), dtype=np.uint8)
    out = decode.decode_rgb(fixtures.encode(g, "PNG"), "g")
    np.testing.assert_array_equal(out, np.repeat(g[..., None], 3, -1))
    g16 = rng.integers(0, 65536, (5, 6), dtype=np.uint16)
    import io
    b = io.BytesIO(); Image.fromarray(g16).save(b, "PNG")
    out = decode.decode_rgb(b.getvalue(), "g16")
    np.testing.assert_array_equal(out[..., 0], np.clip(np.rint(g16 / 257.0), 0, 255).astype(np.uint8))
    rgba = rng.integers(0, 256, (5, 6, 4), dtype=np.uint8)
    out = decode.decode_rgb(fixtures.encode(rgba, "PNG"), "rgba")
    np.testing.assert_array_equal(out, rgba[..., :3])


def test_pixel_limit_and_resize(rng):
    rgb = fixtures.random_rgb(rng, 20, 30)
    data = fixtures.encode(rgb, "PNG")
    with pytest.raises(rejects.RecordError) as e:
        decode.decode_rgb(data, "big.png", max_pixels=599)
    assert e.value.code == rejects.TOO_MANY_PIXELS and "big.png" in str(e.value)
    assert decode.decode_rgb(data, "ok", max_pixels=600).shape == (20, 30, 3)
    out = decode.decode_rgb(data, "r", size=(10, 15))
    ref = np.asarray(Image.fromarray(rgb).resize((15, 10), Image.BILINEAR))
    np.testing.assert_array_equal(out, ref)


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root reads any file")
def test_unreadable_file(tmp_path, rng):
    p = fixtures.write(str(tmp_path / "a" / "x.jpg"), fixtures.encode(fixtures.random_rgb(rng), "JPEG"))
    os.chmod(p, 0)
    src = sources.ImageFolderSource(str(tmp_path))
    with pytest.raises(rejects.RecordError) as e:
        src[0]
    assert e.value.code == rejects.UNREADABLE


def test_file_replaced_by_symlink_after_listing(tmp_path, rng):
    root = tmp_path / "ds"
    p = fixtures.write(str(root / "a" / "x.jpg"), fixtures.encode(fixtures.random_rgb(rng), "JPEG"))
    secret = fixtures.write(str(tmp_path / "secret.jpg"), fixtures.encode(fixtures.random_rgb(rng), "JPEG"))
    src = sources.ImageFolderSource(str(root))
    os.remove(p)
    os.symlink(secret, p)
    with pytest.raises(rejects.RecordError) as e:
        src[0]
    assert e.value.code == rejects.PATH_ESCAPE
    os.remove(p)
    with pytest.raises(rejects.RecordError) as e:
        src[0]
    assert e.value.code == rejects.MISSING_FILE


def test_open_source_guesses(tmp_path, rng):
    fixtures.make_identity_folder(str(tmp_path / "ids"), rng, 2, 2)
    assert isinstance(kinds.open_source(str(tmp_path / "ids")), sources.ImageFolderSource)
    assert isinstance(kinds.open_source("flat:" + str(tmp_path / "ids")), sources.FlatFolderSource)
    with pytest.raises(rejects.DataError, match="missing_dir"):
        kinds.open_source(str(tmp_path / "missing_dir"))


def _old_fingerprint(kind, src):
    """The former encoding (entries joined with unescaped tabs and newlines), as a reference for the collision."""
    import hashlib
    h = hashlib.sha256(kind.encode())
    for i in range(len(src)):
        h.update(f"{src.relpath(i)}\t{src._sizes[i]}\t{src.label(i)}\n".encode("utf-8", "surrogateescape"))
    return h.hexdigest()


def test_fingerprint_is_unambiguous_for_names_with_tabs_and_newlines(tmp_path, rng):
    """Flat folder B holds a.jpg and b.jpg; flat folder A holds ONE file named 'a.jpg<TAB>S1<TAB>-1<LF>b.jpg' with
    b.jpg's bytes. Joined with unescaped separators both listings encode to the same text (the old scheme
    collides, checked); the length-prefixed encoding tells them apart."""
    a_bytes = fixtures.encode(fixtures.random_rgb(rng, 8, 8), "PNG")
    b_bytes = fixtures.encode(fixtures.random_rgb(rng, 9, 9), "PNG")
    fixtures.write(str(tmp_path / "B" / "a.jpg"), a_bytes)
    fixtures.write(str(tmp_path / "B" / "b.jpg"), b_bytes)
    fixtures.write(str(tmp_path / "A" / f"a.jpg\t{len(a_bytes)}\t-1\nb.jpg"), b_bytes)
    src_a = sources.FlatFolderSource(str(tmp_path / "A"))
    src_b = sources.FlatFolderSource(str(tmp_path / "B"))
    assert len(src_a) == 1 and len(src_b) == 2
    assert _old_fingerprint("flat_folder", src_a) == _old_fingerprint("flat_folder", src_b)
    assert src_a.fingerprint() != src_b.fingerprint()
    # Stable for the same listing, sensitive to a rename, a size change and a label change.
    assert sources.FlatFolderSource(str(tmp_path / "B")).fingerprint() == src_b.fingerprint()
    fp = sources.listing_fingerprint
    assert fp("k", ["x"], [1], [0]) != fp("k", ["y"], [1], [0]) != fp("k", ["y"], [2], [0]) != fp("k", ["y"], [2], [1])
    assert fp("k", ["ab", "c"], [1, 1], [0, 0]) != fp("k", ["a", "bc"], [1, 1], [0, 0])
    assert fp("image_folder", [], [], []) != fp("flat_folder", [], [], [])
