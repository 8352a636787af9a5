"""Layout hints (synleak_jax/data/layout_hints.py) on real folders: each common mistake gets its sentence, and a
matching layout gets none. The mistakes are checked against what the data layer itself does with the path."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from synleak_jax.data import recordio, rejects
from synleak_jax.data.layout_hints import layout_hint, recordio_index_hint
from synleak_jax.data.sources import FlatFolderSource, ImageFolderSource


def _images(folder, n, rng):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(folder / f"{i:03d}.jpg")


def test_flat_folder_given_as_image_folder(tmp_path, rng):
    _images(tmp_path / "cats", 40, rng)
    with pytest.raises(rejects.DataError, match="no image files"):  # what the data layer says by itself
        ImageFolderSource(tmp_path / "cats")
    hint = layout_hint(str(tmp_path / "cats"), "image_folder")
    assert hint == f"{tmp_path / 'cats'} holds 40 image files and no class subfolders: did you mean kind=flat_folder?"
    assert len(FlatFolderSource(tmp_path / "cats")) == 40  # and the suggestion works
    assert layout_hint(str(tmp_path / "cats"), "flat_folder") is None


def test_matching_layouts_get_no_hint(tmp_path, rng):
    for c in ("a", "b"):
        _images(tmp_path / "ids" / c, 3, rng)
    assert layout_hint(str(tmp_path / "ids"), "image_folder") is None
    assert layout_hint(str(tmp_path / "ids"), "flat_folder") is None  # flat folders recurse
    assert layout_hint(str(tmp_path / "missing"), "image_folder") is None  # "not found" is the caller's message


def test_folders_given_as_recordio(tmp_path, rng):
    for c in ("a", "b"):
        _images(tmp_path / "ids" / c, 2, rng)
    assert layout_hint(str(tmp_path / "ids"), "recordio").endswith("did you mean kind=image_folder?")
    _images(tmp_path / "flat", 5, rng)
    assert layout_hint(str(tmp_path / "flat"), "recordio").endswith("5 images, not RecordIO: did you mean "
                                                                     "kind=flat_folder?")
    items = [(np.asarray(Image.open(p)).tobytes()[:10] + b"x", 0) for p in sorted((tmp_path / "flat").iterdir())]
    rec = recordio.write_recordio(str(tmp_path / "casia" / "train"), items)
    assert layout_hint(str(tmp_path / "casia"), "recordio") == (
        f"{tmp_path / 'casia'} is a directory: give the .rec file inside it, path={rec['rec']} (its .idx next to it)")
    assert layout_hint(rec["rec"], "recordio") is None
    assert layout_hint(rec["rec"], "image_folder") == f"{rec['rec']} is a RecordIO file, not a folder: did you mean " \
                                                      "kind=recordio?"
    assert layout_hint(str(tmp_path / "casia"), "image_folder").endswith(f"did you mean kind=recordio with "
                                                                          f"path={rec['rec']}?")


def test_rec_without_idx(tmp_path):
    rec = recordio.write_recordio(str(tmp_path / "train"), [(b"abc", 0)])
    (tmp_path / "train.idx").unlink()
    with pytest.raises(rejects.DataError, match="index not found"):
        recordio.RecordIOSource(rec["rec"])
    for given in (rec["rec"], str(tmp_path / "train")):
        hint = layout_hint(given, "recordio")
        assert hint is not None and str(tmp_path / "train.idx") in hint and "needs both files" in hint
    assert recordio_index_hint(str(tmp_path / "nothing.rec")) is None
