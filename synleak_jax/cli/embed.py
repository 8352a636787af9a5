"""synleak-embed: embed a dataset with one backbone into a resumable embedding store.

    synleak-embed --config=configs/embed.py \
        --config.data.kind=image_folder --config.data.path=/data/casia_aligned \
        --config.model=iresnet100 --config.weights=/w/backbone.pth \
        --config.output=/stores/casia.iresnet100 [--overwrite]

Rerunning the same command resumes (finished chunks are skipped). A store made with other settings
(model, weights, preprocessing, dataset, flip, dtypes, chunk plan) is refused with the list of differences
unless ``--overwrite`` is given. Multi-host: start one process per host with
``--config.distributed.coordinator_address=host0:1234 --config.distributed.num_processes=N
--config.distributed.process_id=i`` (TPU pods: ``--config.distributed.mode=on``, everything auto-detected).
The work is done by :func:`synleak_jax.embed.api.embed_from_config`. See docs/embed.md.
"""

from __future__ import annotations

import os

from absl import app, flags, logging
from ml_collections import config_flags

_DEFAULT_CONFIG = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "embed.py")
_CONFIG = config_flags.DEFINE_config_file("config", _DEFAULT_CONFIG, "Embed config (configs/embed.py).")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Recompute the store even if it exists with other settings.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from synleak_jax.embed.api import EmbedConfigError, embed_from_config

    try:
        store = embed_from_config(_CONFIG.value, overwrite=_OVERWRITE.value)
    except EmbedConfigError as e:
        raise app.UsageError(str(e)) from None
    logging.info("store complete: %s (%d embeddings, %d rejects)", store.path, len(store), len(store.rejects))


def run():
    app.run(main)


if __name__ == "__main__":
    run()
