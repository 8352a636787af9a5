"""Hostile files made inside each test (issue #13, findings 3 and the reader side of the memory rule).

FIFOs, devices, sockets and directories where images are expected are rejects with their own codes, never a
hang; a sparse 3 GiB ``.jpg`` is refused by the size cap before a byte is read; a large file that does not start
like an image costs its first 64 KiB; ``MemoryError`` becomes the reject OUT_OF_MEMORY. Reads of special files
and every memory bound run in a subprocess (tests/data/isolated.py: timeout, RLIMIT_AS).
"""

import os
import socket
import stat
import struct
import zlib

import pytest

from synleak_jax.data import pipeline, rejects, safe_paths, sources
from synleak_jax.models.registry import InputSpec
from tests.data import fixtures
from tests.data.isolated import run_isolated

GIB = 1 << 30


def _try_mknod(path: str, kind: int, device: tuple[int, int]) -> bool:
    try:
        os.mknod(path, kind | 0o600, os.makedev(*device))
        return True
    except (PermissionError, OSError):
        return False


def test_special_files_are_rejects_and_never_block(tmp_path, rng, monkeypatch):
    root = tmp_path / "ds"
    good = {f"id_0/img_{j}.jpg": fixtures.encode(fixtures.random_rgb(rng, 8, 8), "JPEG") for j in range(3)}
    for rel, data in good.items():
        fixtures.write(str(root / rel), data)
    special = root / "id_1"
    os.makedirs(special)
    expected = {rel: 0 for rel in good}
    os.mkfifo(special / "pipe.jpg")  # no writer: a blocking open would wait forever
    expected["id_1/pipe.jpg"] = rejects.FIFO
    os.symlink(special / "pipe.jpg", special / "link_to_pipe.jpg")  # inside the root: followed, then refused
    expected["id_1/link_to_pipe.jpg"] = rejects.FIFO
    if _try_mknod(str(special / "zero.jpg"), stat.S_IFCHR, (1, 5)):  # the device /dev/zero is
        expected["id_1/zero.jpg"] = rejects.DEVICE
    if _try_mknod(str(special / "loop.jpg"), stat.S_IFBLK, (7, 0)):
        expected["id_1/loop.jpg"] = rejects.DEVICE
    os.symlink("/dev/zero", special / "devzero.jpg")  # without privileges: leaves the root, never opened
    expected["id_1/devzero.jpg"] = rejects.PATH_ESCAPE
    monkeypatch.chdir(special)  # bind by relative name: AF_UNIX paths are limited to 108 bytes
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind("sock.jpg")
    expected["id_1/sock.jpg"] = rejects.SOCKET
    try:
        out = run_isolated(f"""
            from synleak_jax.data import pipeline, rejects, sources
            from synleak_jax.models.registry import InputSpec
            src = sources.ImageFolderSource({str(root)!r})
            codes = {{}}
            for i in range(len(src)):
                try:
                    src.read_rgb(i)
                    codes[src.relpath(i)] = 0
                except rejects.RecordError as e:
                    codes[src.relpath(i)] = e.code
            result["codes"] = codes
            spec = InputSpec(8, 8, "RGB", (0.0,) * 3, (1.0,) * 3, 4, "cosine", "arcface112")
            batches = list(pipeline.make_pipeline(src, spec, 4, read_threads=0))
            result["pipeline"] = {{src.relpath(int(r)): int(c) for b in batches
                                   for r, c in zip(b["record_id"], b["reject_code"]) if r >= 0}}
            flat = sources.FlatFolderSource({str(root)!r})
            result["flat"] = {{}}
            for i in range(len(flat)):
                try:
                    flat[i]
                    result["flat"][flat.relpath(i)] = 0
                except rejects.RecordError as e:
                    result["flat"][flat.relpath(i)] = e.code
        """, timeout=180)
    finally:
        sock.close()
    assert out["codes"] == expected
    assert out["pipeline"] == expected
    assert out["flat"] == expected


def test_directory_swapped_in_after_listing(tmp_path, rng):
    p = fixtures.write(str(tmp_path / "a" / "x.jpg"), fixtures.encode(fixtures.random_rgb(rng), "JPEG"))
    src = sources.ImageFolderSource(str(tmp_path))
    os.remove(p)
    os.mkdir(p)
    with pytest.raises(rejects.RecordError) as e:
        src[0]
    assert e.value.code == rejects.DIRECTORY and "x.jpg" in str(e.value)


def test_devices_refused_by_the_reader_itself():
    out = run_isolated("""
        from synleak_jax.data import rejects, safe_paths
        limit_address_space(64)
        codes = {}
        for path in ("/dev/zero", "/dev/null", "/dev/urandom", "/"):
            try:
                safe_paths.read_bytes(path, path, follow=True)
                codes[path] = 0
            except rejects.RecordError as e:
                codes[path] = e.code
        result["codes"] = codes
    """, timeout=60)
    assert out["codes"] == {"/dev/zero": rejects.DEVICE, "/dev/null": rejects.DEVICE,
                            "/dev/urandom": rejects.DEVICE, "/": rejects.DIRECTORY}


def test_sparse_3gib_jpg_is_not_read(tmp_path, rng):
    """A sparse 3 GiB file of zeros named .jpg, one starting with a JPEG signature, and a good image: under an
    address-space budget of 64 MiB above the imports, the cap refuses both big files before reading; with the cap
    lifted the zero file costs 64 KiB (no signature) and the JPEG-looking one hits the memory limit, which is the
    reject OUT_OF_MEMORY: the next image still reads."""
    root = tmp_path / "ds" / "id"
    os.makedirs(root)
    zeros = root / "a_sparse.jpg"
    with open(zeros, "wb"):
        pass
    os.truncate(zeros, 3 * GIB)
    jpeg_like = root / "b_sparse_jpeg.jpg"
    with open(jpeg_like, "wb") as f:
        f.write(b"\xff\xd8\xff\xe0")
    os.truncate(jpeg_like, 3 * GIB)
    fixtures.write(str(root / "c_good.jpg"), fixtures.encode(fixtures.random_rgb(rng, 16, 16), "JPEG"))
    assert os.stat(zeros).st_blocks * 512 < 1 << 20  # really sparse: the test itself costs no disk
    out = run_isolated(f"""
        from synleak_jax.data import rejects, sources
        root = {str(tmp_path / "ds")!r}
        default = sources.ImageFolderSource(root)
        lifted = sources.ImageFolderSource(root, max_file_bytes=4 << 30)
        limit_address_space(64)

        def codes(src):
            out = []
            for i in range(len(src)):
                try:
                    out.append((src.relpath(i), 0, src.read_rgb(i).shape[0]))
                except rejects.RecordError as e:
                    out.append((src.relpath(i), e.code, 0))
            return out

        result["default"] = codes(default)
        result["lifted"] = codes(lifted)
    """, timeout=120)
    assert out["default"] == [["id/a_sparse.jpg", rejects.TOO_LARGE, 0],
                              ["id/b_sparse_jpeg.jpg", rejects.TOO_LARGE, 0], ["id/c_good.jpg", 0, 16]]
    assert out["lifted"] == [["id/a_sparse.jpg", rejects.NOT_AN_IMAGE, 0],
                             ["id/b_sparse_jpeg.jpg", rejects.OUT_OF_MEMORY, 0], ["id/c_good.jpg", 0, 16]]
    print(f"peak RSS {out['peak_over_limit_kib'] / 1024:.1f} MiB over the baseline for 2 x 3 GiB hostile files read "
          "twice under RLIMIT_AS +64 MiB")


def _big_png(path: str, width: int, height: int) -> None:
    """A valid RGB PNG of width x height zero pixels, written row by row (small file, large decode)."""
    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)
    comp = zlib.compressobj(9)
    row = b"\0" * (1 + 3 * width)
    idat = b"".join(comp.compress(row) for _ in range(height)) + comp.flush()
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
                + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def test_decode_out_of_memory_is_a_reject(tmp_path, rng):
    """A 7000x7000 PNG (under the pixel limit, ~150 KiB on disk, ~190 MiB decoded) decoded under a 64 MiB
    address-space budget: the decoder's MemoryError is the reject OUT_OF_MEMORY, in the source and the pipeline."""
    root = tmp_path / "ds" / "id"
    os.makedirs(root)
    _big_png(str(root / "a_big.png"), 7000, 7000)
    fixtures.write(str(root / "b_good.png"), fixtures.encode(fixtures.random_rgb(rng, 8, 8), "PNG"))
    out = run_isolated(f"""
        from synleak_jax.data import pipeline, rejects, sources
        from synleak_jax.models.registry import InputSpec
        src = sources.ImageFolderSource({str(tmp_path / "ds")!r})
        spec = InputSpec(8, 8, "RGB", (0.0,) * 3, (1.0,) * 3, 4, "cosine", "arcface112")
        pipe = pipeline.make_pipeline(src, spec, 2, read_threads=0)
        limit_address_space(64)
        try:
            src.read_rgb(0)
            result["source"] = 0
        except rejects.RecordError as e:
            result["source"] = e.code
        batch = next(iter(pipe))
        result["pipeline"] = batch["reject_code"].tolist()
        result["valid"] = batch["valid"].tolist()
    """, timeout=180)
    assert out["source"] == rejects.OUT_OF_MEMORY
    assert out["pipeline"] == [rejects.OUT_OF_MEMORY, 0] and out["valid"] == [False, True]


class _Failing(sources.ArraySource):
    """An in-memory source whose records raise what a broken reader or library might."""

    def __init__(self, rng, errors):
        super().__init__([fixtures.encode(fixtures.random_rgb(rng, 8, 8), "PNG") for _ in errors])
        self.errors = errors

    def read_bytes(self, i):
        if self.errors[i] is not None:
            raise self.errors[i]
        return super().read_bytes(i)


def test_pipeline_turns_any_per_record_failure_into_a_reject(rng):
    errors = [None, MemoryError(), OSError(5, "EIO"), ValueError("library bug"), None]
    src = _Failing(rng, errors)
    spec = InputSpec(8, 8, "RGB", (0.0,) * 3, (1.0,) * 3, 4, "cosine", "arcface112")
    batches = list(pipeline.make_pipeline(src, spec, 5, read_threads=0))
    assert batches[0]["reject_code"].tolist() == [0, rejects.OUT_OF_MEMORY, rejects.UNREADABLE,
                                                  rejects.UNEXPECTED, 0]


def test_large_file_without_signature_costs_one_peek(tmp_path, monkeypatch):
    """A 1 MiB file of random bytes named .jpg: refused after reading 64 KiB, not 1 MiB."""
    p = fixtures.write(str(tmp_path / "a" / "noise.jpg"), os.urandom(1 << 20))
    reads = []
    real_fdopen = os.fdopen

    class Counting:
        def __init__(self, f):
            self.f = f

        def read(self, n=-1):
            data = self.f.read(n)
            reads.append(len(data))
            return data

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    monkeypatch.setattr(safe_paths.os, "fdopen", lambda *a, **k: Counting(real_fdopen(*a, **k)))
    src = sources.ImageFolderSource(str(tmp_path))
    with pytest.raises(rejects.RecordError) as e:
        src[0]
    assert e.value.code == rejects.NOT_AN_IMAGE and "noise.jpg" in str(e.value)
    assert sum(reads) == safe_paths.PEEK_BYTES
    monkeypatch.undo()
    assert len(sources.ImageFolderSource(str(tmp_path), max_file_bytes=1 << 19)) == 1
    with pytest.raises(rejects.RecordError) as e:
        sources.ImageFolderSource(str(tmp_path), max_file_bytes=1 << 19)[0]
    assert e.value.code == rejects.TOO_LARGE and str(1 << 20) in str(e.value)
    assert p.endswith("noise.jpg")


def test_every_signature_passes_the_peek(rng):
    from synleak_jax.data import decode
    from PIL import Image
    import io
    rgb = fixtures.random_rgb(rng, 64, 64)
    for fmt in ("JPEG", "PNG", "BMP", "TIFF", "WEBP", "GIF", "PPM", "JPEG2000", "ICO"):
        b = io.BytesIO()
        try:
            Image.fromarray(rgb).save(b, fmt)
        except (OSError, KeyError):  # an encoder missing from this Pillow build
            continue
        assert decode.has_image_signature(b.getvalue()[:64]), fmt
    assert not decode.has_image_signature(b"\0" * 64)
    assert not decode.has_image_signature(b"hello world")
