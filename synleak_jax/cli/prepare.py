"""synleak-prepare: turn your copy of a dataset into a TFDS array_record dataset (no TensorFlow needed).

    synleak-prepare --dataset=sface --manual_dir=/data/sface_60 --data_dir=/data/tfds
    synleak-prepare --dataset=casia_webface --manual_dir=/data/faces_webface_112x112 --data_dir=/data/tfds

Then read it with ``--config.data.kind=tfds --config.data.path=sface --config.data.tfds_data_dir=/data/tfds``
(or ``synleak_jax.data.tfds_builders.TfdsSource("sface", data_dir=...)``). Records keep the source's
sorted order; files that cannot be read at prepare time keep their slot with a reject code and are listed in
``--rejects`` (JSON lines). See docs/data.md.
"""

from __future__ import annotations

import json
import os

from absl import app, flags, logging

from synleak_jax.cli import common

_DATASET = flags.DEFINE_string("dataset", None, "Dataset name (casia_webface, ffhq, dcface, idiff_face_uniform, "
                               "idiff_face_two_stage, sface, idnet, gandiffface).")
_MANUAL_DIR = flags.DEFINE_string("manual_dir", None, "Directory holding your copy of the dataset.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data directory to write to.")
_FILE_FORMAT = flags.DEFINE_enum("file_format", "array_record", ["array_record"],
                                 "Output format (array_record: readable without TensorFlow).")
_REJECTS = flags.DEFINE_string("rejects", None, "Write prepare-time rejects here (JSON lines); default "
                               "<data_dir>/<dataset>_prepare_rejects.jsonl when there are any.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    for f in (_DATASET, _MANUAL_DIR, _DATA_DIR):
        if not f.value:
            raise app.UsageError(f"--{f.name} is required")
    from synleak_jax.data import rejects, tfds_builders

    if _DATASET.value not in tfds_builders.BUILDERS:
        raise app.UsageError(f"--dataset={_DATASET.value!r}: choose one of {', '.join(sorted(tfds_builders.BUILDERS))}")
    try:
        with common.output_dir_guard(_DATA_DIR.value):  # no empty data_dir after a failure
            builder = tfds_builders.prepare(_DATASET.value, _MANUAL_DIR.value, _DATA_DIR.value, _FILE_FORMAT.value)
    except rejects.DataError as e:
        raise app.UsageError(str(e)) from None
    src = tfds_builders.TfdsSource(builder_dir=os.fspath(builder.data_dir))
    meta = dict(builder.info.metadata or {})
    entries = []
    if meta.get("prepare_rejects"):
        for i in range(len(src)):
            try:
                src.read_record(i)
            except rejects.RecordError as e:
                entries.append(rejects.RejectEntry(i, src.describe(i), e.code, rejects.REASONS[e.code]))
    if entries:
        path = _REJECTS.value or os.path.join(_DATA_DIR.value, f"{_DATASET.value}_prepare_rejects.jsonl")
        rejects.write_rejects(path, entries)
        logging.warning("%d records could not be read at prepare time (kept as rejects): %s -> %s",
                        len(entries), json.dumps(rejects.summarize(entries)), path)
    print(json.dumps({"dataset": _DATASET.value, "builder_dir": os.fspath(builder.data_dir),
                      "num_records": len(src), "num_classes": src.num_classes,
                      "prepare_rejects": len(entries), "fingerprint": src.fingerprint()}, indent=1))


def run():
    common.run_program(main, doc=__doc__)


if __name__ == "__main__":
    run()
