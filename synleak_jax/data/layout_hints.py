"""Hints for the common dataset-layout mistakes: a path whose layout does not match the ``kind`` it was given as.

:func:`layout_hint` looks at a path (a bounded look: at most :data:`MAX_ENTRIES` directory entries per folder)
and returns one sentence saying what the path looks like and which ``kind`` or path fits it, or None when the
layout matches (or the path does not exist: the caller's "not found" message covers that). The data layer or
the audit appends it to the error it raises, e.g.

    /data/cats holds 40 image files and no class subfolders: did you mean kind=flat_folder?

Kinds are those of the config schemas: image_folder (root/<class>/<image>), flat_folder (images anywhere below
the root), recordio (insightface ``train.rec`` + ``train.idx``), tfds, verification_bin.
"""

from __future__ import annotations

import os

from synleak_jax.data.sources import IMAGE_EXTENSIONS

#: Most directory entries looked at per folder (a hint must stay cheap on a 500k-image folder).
MAX_ENTRIES = 2000
#: Most subfolders searched for images when telling a class folder from an empty one.
MAX_SUBDIRS = 20


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _scan(path: str) -> tuple[int, list[str], list[str], bool]:
    """(image files directly in ``path``, subfolder paths, .rec files, listing truncated) of a directory."""
    images, subdirs, recs, truncated = 0, [], [], False
    try:
        with os.scandir(path) as entries:
            for count, entry in enumerate(entries):
                if count >= MAX_ENTRIES:
                    truncated = True
                    break
                if entry.name.startswith("."):
                    continue
                try:
                    is_dir = entry.is_dir()
                except OSError:
                    continue
                if is_dir:
                    subdirs.append(entry.path)
                elif entry.name.endswith(".rec"):
                    recs.append(entry.path)
                elif _is_image(entry.name):
                    images += 1
    except OSError:
        pass
    return images, sorted(subdirs), sorted(recs), truncated


def _subfolders_with_images(subdirs: list[str]) -> int:
    found = 0
    for sub in subdirs[:MAX_SUBDIRS]:
        if _scan(sub)[0]:
            found += 1
    return found


def _count(n: int, truncated: bool) -> str:
    return f"at least {n}" if truncated else str(n)


def recordio_index_hint(rec_path: str) -> str | None:
    """For a ``.rec`` path (or prefix) without its ``.idx``: one sentence naming the missing index."""
    prefix = rec_path[:-4] if rec_path.endswith((".rec", ".idx")) else rec_path
    rec, idx = prefix + ".rec", prefix + ".idx"
    if os.path.isfile(rec) and not os.path.isfile(idx):
        return (f"{rec} has no index {idx} next to it: RecordIO is read by random access and needs both files "
                "(insightface releases ship train.rec with train.idx; copy the .idx next to the .rec)")
    return None


def layout_hint(path: str, kind: str) -> str | None:
    """One sentence for a ``path`` that does not look like a dataset of ``kind``, or None.

    Args:
      path: the dataset path as given (``--config.data.<role>.path``).
      kind: the kind it was given as (``image_folder``, ``flat_folder``, ``recordio``, ...).
    """
    path = os.fspath(path)
    if kind == "recordio" and path and not os.path.isdir(path):
        return recordio_index_hint(path)
    if not path or not os.path.exists(path):
        return None
    if kind in ("image_folder", "flat_folder"):
        if os.path.isfile(path):
            if path.endswith((".rec", ".idx")):
                return f"{path} is a RecordIO file, not a folder: did you mean kind=recordio?"
            if path.endswith(".bin"):
                return f"{path} is a file, not a folder: did you mean kind=verification_bin?"
            return f"{path} is a file, not a folder of images"
        images, subdirs, recs, truncated = _scan(path)
        if recs and not images:
            return f"{path} holds RecordIO data ({os.path.basename(recs[0])}): did you mean kind=recordio with " \
                   f"path={recs[0]}?"
        if kind == "image_folder" and images and not _subfolders_with_images(subdirs):
            return (f"{path} holds {_count(images, truncated)} image files and no class subfolders: did you mean "
                    "kind=flat_folder?")
        if kind == "image_folder" and not images and subdirs and not _subfolders_with_images(subdirs):
            return f"{path} has subfolders but no images in the first {min(len(subdirs), MAX_SUBDIRS)} of them"
        return None
    if kind == "recordio":  # a directory (files were handled above)
        images, subdirs, recs, truncated = _scan(path)
        if recs:
            return f"{path} is a directory: give the .rec file inside it, path={recs[0]} (its .idx next to it)"
        if subdirs and _subfolders_with_images(subdirs):
            return f"{path} is a folder of class subfolders, not RecordIO: did you mean kind=image_folder?"
        if images:
            return (f"{path} is a folder of {_count(images, truncated)} images, not RecordIO: did you mean "
                    "kind=flat_folder?")
        return f"{path} is a directory, not a RecordIO .rec file"
    return None
