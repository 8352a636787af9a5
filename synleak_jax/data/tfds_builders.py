"""TFDS builders for the audited datasets, prepared from the user's copy (``manual_dir``) without TensorFlow.

Every builder writes ``array_record`` files with plain features only (TFDS's ``Image`` feature needs
TensorFlow to encode/decode; plain tensors and bytes do not):

* ``image``       ``Tensor(shape=(), dtype=object)``: the encoded file bytes exactly as stored (no re-encoding);
* ``label``       int64 (-1 for unlabelled FFHQ);
* ``file_name``   text: path relative to ``manual_dir`` (RecordIO: ``train.rec:key``);
* ``reject_code`` int32: 0, or the reason code (data/rejects.py) of a file that could not even be read at
  prepare time (symlink escape, permission, bad RecordIO framing); such records keep their slot with empty
  bytes, so record ids match the source and nothing is dropped. Decoding problems are found by the pipeline.

Shuffling is disabled: record i of the prepared split is record i of the source (sorted order), so record ids
agree between ``folder:`` / ``recordio:`` and ``tfds:`` sources. Dataset metadata (``metadata.json``) stores
``num_classes``, ``class_names``, the source fingerprint and the prepare-time reject count.

Names: casia_webface (insightface RecordIO release: ``train.rec``/``train.idx``/``property``, found in
``manual_dir`` or one level below), ffhq (flat PNG folder; ``images1024x1024/`` if present), and the
synthetic identity-folder releases dcface, idiff_face_uniform, idiff_face_two_stage, sface, idnet, gandiffface
(``manual_dir/<identity>/<image>``).
"""

from __future__ import annotations

import hashlib
import os

import numpy as np
import tensorflow_datasets as tfds

from synleak_jax.data import rejects, safe_paths
from synleak_jax.data.recordio import RecordIOSource
from synleak_jax.data.sources import FlatFolderSource, ImageFolderSource, Source

_VERSION = tfds.core.Version("1.0.0")


class _ManualBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Shared builder: one ``train`` split generated from a data source over ``manual_dir``."""

    VERSION = _VERSION
    RELEASE_NOTES = {"1.0.0": "Encoded bytes as stored, int64 label, file name, prepare-time reject code."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = "Point --manual_dir at your copy of the dataset (see docs/data.md)."
    DESCRIPTION = ""

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=self.DESCRIPTION,
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Tensor(shape=(), dtype=np.object_),
                "label": tfds.features.Scalar(dtype=np.int64),
                "file_name": tfds.features.Text(),
                "reject_code": tfds.features.Scalar(dtype=np.int32),
            }),
            disable_shuffling=True,
            metadata=tfds.core.MetadataDict(),
        )

    def make_source(self, manual_dir: str) -> Source:
        raise NotImplementedError

    def _file_name(self, src: Source, i: int) -> bytes:
        # The bytes on disk: a name that is not UTF-8 cannot be encoded as text, and TfdsSource.file_name
        # decodes these bytes back to the same OS string (surrogateescape).
        return os.fsencode(src.relpath(i))

    def _split_generators(self, dl_manager):
        manual_dir = os.fspath(dl_manager.manual_dir)
        src = self.make_source(manual_dir)
        self._source = src
        self.info.metadata.update({
            "num_classes": src.num_classes,
            "class_names": list(src.class_names) if src.class_names else None,
            "source_fingerprint": src.fingerprint(),
            "num_records": len(src),
            "release": getattr(src, "release", None),
        })
        return {"train": self._generate_examples(src)}

    def _generate_examples(self, src: Source):
        n_rej = 0
        for i in range(len(src)):
            try:
                data, label = src.read_record(i)
                code = 0
            except rejects.RecordError as e:
                data, code, n_rej = b"", e.code, n_rej + 1
                label = _label_or_missing(src, i)
            # Keys are zero-padded record numbers: sorted keys == source order.
            yield f"{i:012d}", {"image": data, "label": int(label), "file_name": self._file_name(src, i),
                                "reject_code": code}
        self.info.metadata["prepare_rejects"] = n_rej


def _label_or_missing(src: Source, i: int) -> int:
    try:
        return int(src.label(i))
    except Exception:  # unreadable RecordIO record: label unknown
        return -1


class _IdentityFolderBuilder(_ManualBuilder, skip_registration=True):
    def make_source(self, manual_dir: str) -> Source:
        return ImageFolderSource(manual_dir)


class Dcface(_IdentityFolderBuilder):
    """DCFace synthetic release: its RecordIO as published (``record/file.rec`` + ``file.idx`` + ``list.txt``, found
    in ``manual_dir`` or ``manual_dir/record``), else identity folders (e.g. exported by DCFace's converter)."""
    name = "dcface"
    DESCRIPTION = "DCFace synthetic face dataset (RecordIO with list.txt as released, or identity folders)."

    def make_source(self, manual_dir: str) -> Source:
        for cand in (os.path.join(manual_dir, "file.rec"), os.path.join(manual_dir, "record", "file.rec")):
            if os.path.isfile(cand):
                return RecordIOSource(cand)
        return ImageFolderSource(manual_dir)

    def _file_name(self, src, i: int) -> bytes:
        if getattr(src, "list_path", None):
            return os.fsencode(src.relpath(i) or f"{os.path.basename(src.rec_path)}:{src.key(i)}")
        return super()._file_name(src, i)


class IdiffFaceUniform(_IdentityFolderBuilder):
    """IDiff-Face (Uniform) synthetic release."""
    name = "idiff_face_uniform"
    DESCRIPTION = "IDiff-Face synthetic dataset, uniform-sampled contexts (identity folders)."


class IdiffFaceTwoStage(_IdentityFolderBuilder):
    """IDiff-Face (Two-Stage) synthetic release."""
    name = "idiff_face_two_stage"
    DESCRIPTION = "IDiff-Face synthetic dataset, two-stage sampling (identity folders)."


class Sface(_IdentityFolderBuilder):
    """SFace synthetic release (class-conditional StyleGAN2-ADA on CASIA-WebFace labels)."""
    name = "sface"
    DESCRIPTION = "SFace synthetic dataset (identity folders, labels follow CASIA-WebFace classes)."


class Idnet(_IdentityFolderBuilder):
    """IDnet synthetic release."""
    name = "idnet"
    DESCRIPTION = "IDnet synthetic dataset (identity folders)."


class Gandiffface(_IdentityFolderBuilder):
    """GANDiffFace synthetic release."""
    name = "gandiffface"
    DESCRIPTION = "GANDiffFace synthetic dataset (identity folders)."


class Ffhq(_ManualBuilder):
    """FFHQ (70,000 unlabelled 1024x1024 PNGs, ``00000/00000.png``...)."""
    name = "ffhq"
    DESCRIPTION = "Flickr-Faces-HQ, unlabelled (label -1)."

    def make_source(self, manual_dir: str) -> Source:
        sub = os.path.join(manual_dir, "images1024x1024")
        return FlatFolderSource(sub if os.path.isdir(sub) else manual_dir)


class CasiaWebface(_ManualBuilder):
    """CASIA-WebFace from insightface's RecordIO release (``faces_webface_112x112``)."""
    name = "casia_webface"
    DESCRIPTION = "CASIA-WebFace, insightface RecordIO release (aligned 112x112 JPEGs, 10,572 identities)."

    def make_source(self, manual_dir: str) -> Source:
        for cand in [os.path.join(manual_dir, "train")] + [
                os.path.join(manual_dir, d, "train") for d in sorted(os.listdir(manual_dir))
                if os.path.isdir(os.path.join(manual_dir, d))]:
            if os.path.isfile(cand + ".rec"):
                return RecordIOSource(cand)
        raise rejects.DataError(f"no train.rec found in {manual_dir!r} or its sub-directories")

    def _file_name(self, src, i: int) -> bytes:
        return os.fsencode(f"{os.path.basename(src.rec_path)}:{src.key(i)}")


#: Builder classes by dataset name.
BUILDERS: dict[str, type[_ManualBuilder]] = {
    b.name: b for b in (CasiaWebface, Ffhq, Dcface, IdiffFaceUniform, IdiffFaceTwoStage, Sface, Idnet, Gandiffface)
}


def prepare(name: str, manual_dir: str, data_dir: str, file_format: str = "array_record") -> tfds.core.DatasetBuilder:
    """Prepares dataset ``name`` from ``manual_dir`` into ``data_dir``; returns the builder."""
    if name not in BUILDERS:
        raise rejects.DataError(f"unknown dataset {name!r}; known: {', '.join(sorted(BUILDERS))}")
    if not os.path.isdir(manual_dir):
        raise rejects.DataError(f"--manual_dir does not exist or is not a directory: {manual_dir!r}")
    builder = BUILDERS[name](data_dir=data_dir, file_format=file_format)
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
    return builder


class TfdsSource(Source):
    """A prepared dataset read back through ``tfds`` data sources (array_record), same interface as the others.

    Args:
      name: dataset name (one of :data:`BUILDERS`, or any prepared dataset with the same features).
      split: split name ("train").
      data_dir: the TFDS data directory given to ``synleak-prepare``.
      builder_dir: alternatively the exact prepared directory (``data_dir/name/version``).
    """

    def __init__(self, name: str | None = None, split: str = "train", data_dir: str | None = None,
                 builder_dir: str | None = None):
        if builder_dir is None:
            if name is None or data_dir is None:
                raise ValueError("TfdsSource needs name and data_dir, or builder_dir")
            base = os.path.join(data_dir, name)
            versions = sorted(v for v in os.listdir(base)) if os.path.isdir(base) else []
            versions = [v for v in versions if os.path.isfile(os.path.join(base, v, "dataset_info.json"))]
            if not versions:
                raise rejects.DataError(f"no prepared dataset {name!r} under {data_dir!r} (run synleak-prepare)")
            builder_dir = os.path.join(base, versions[-1])
        self.builder_dir = os.fspath(builder_dir)
        self.split = split
        self._ds = None
        b = tfds.builder_from_directory(self.builder_dir)
        self.name = b.name
        if split not in b.info.splits:
            raise rejects.DataError(f"{self.builder_dir}: no split {split!r} (have {list(b.info.splits)})")
        self._len = int(b.info.splits[split].num_examples)
        meta = dict(b.info.metadata or {})
        self.num_classes = meta.get("num_classes")
        self.class_names = meta.get("class_names")
        self.release = meta.get("release")  # a recognised release keeps its known channel order
        h = hashlib.sha256(f"tfds\t{self.name}\t{b.info.version}\t{split}\t{self._len}\n".encode())
        h.update(str(meta.get("source_fingerprint")).encode())
        for fi in b.info.splits[split].file_instructions:
            h.update(f"{os.path.basename(fi.filename)}\t{fi.take}\n".encode())
        self._fingerprint = h.hexdigest()
        self._labels = None

    def __getstate__(self):
        d = dict(self.__dict__)
        d["_ds"] = None  # readers are reopened in each worker
        return d

    def _source(self):
        if self._ds is None:
            self._ds = tfds.builder_from_directory(self.builder_dir).as_data_source(self.split)
        return self._ds

    def __len__(self) -> int:
        return self._len

    def _row(self, i: int) -> dict:
        return self._source()[int(i)]

    def _where(self, i: int) -> str:
        return f"tfds:{self.name}/{self.split}[{int(i)}] in {safe_paths.display_path(self.builder_dir)}"

    def _checked_row(self, i: int) -> dict:
        """Row ``i``; a record array_record/TFDS cannot read or parse is the reject BAD_RECORD, not a crash."""
        try:
            row = self._row(i)
            int(row["reject_code"]), int(row["label"])
            return row
        except MemoryError:
            raise rejects.RecordError(rejects.OUT_OF_MEMORY, self._where(i)) from None
        except Exception as e:  # array_record/protobuf raise many types on corrupt data (RuntimeError, ValueError...)
            raise rejects.RecordError(rejects.BAD_RECORD, f"{self._where(i)}: {type(e).__name__}: {e}") from None

    def read_record(self, i: int) -> tuple[bytes, int]:
        row = self._checked_row(self._check(i))
        if int(row["reject_code"]):
            code = int(row["reject_code"])
            raise rejects.RecordError(code if code in rejects.REASONS and code else rejects.BAD_RECORD,
                                      self.describe(i))
        label = int(row["label"])
        return bytes(row["image"]), label if label >= 0 else -1

    def read_bytes(self, i: int) -> bytes:
        return self.read_record(i)[0]

    def _label_or_missing(self, i: int) -> int:
        try:
            return max(int(self._checked_row(i)["label"]), -1)
        except rejects.RecordError:
            return -1

    def label(self, i: int) -> int:
        """The record's label; -1 when unlabelled or the record cannot be read."""
        if self._labels is not None:
            return int(self._labels[self._check(i)])
        return self._label_or_missing(self._check(i))

    def labels(self) -> np.ndarray:
        """All labels (reads every record once; cached; -1 for records that cannot be read)."""
        if self._labels is None:
            self._labels = np.asarray([self._label_or_missing(i) for i in range(len(self))], dtype=np.int64)
        return self._labels.copy()

    def file_name(self, i: int) -> str:
        """The name recorded at prepare time (OS string: ``os.fsencode`` gives the original bytes)."""
        fn = self._checked_row(self._check(i))["file_name"]
        return os.fsdecode(fn) if isinstance(fn, bytes) else str(fn)

    def describe(self, i: int) -> str:
        try:
            name = safe_paths.display_path(self.file_name(i))
        except rejects.RecordError:
            name = "unreadable record"
        return f"tfds:{self.name}/{self.split}[{int(i)}] ({name})"

    def fingerprint(self) -> str:
        return self._fingerprint
