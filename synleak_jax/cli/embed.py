r"""synleak-embed: embed a dataset with one backbone into a resumable embedding store.

    synleak-embed --config=embed \
        --config.data.kind=image_folder --config.data.path=/data/casia_aligned \
        --config.model=iresnet100 --config.weights=/w/backbone.pth \
        --config.output=/stores/casia.iresnet100 [--overwrite]

Rerunning the same command resumes (finished chunks are skipped). A store made with other settings
(model, weights, preprocessing, dataset, flip, dtypes, chunk plan) is refused with the list of differences
unless ``--overwrite`` is given. ``--show_config`` lists every field with its meaning.
Multi-host: start one process per host with ``--config.distributed.coordinator_address=host0:1234
--config.distributed.num_processes=N --config.distributed.process_id=i`` (TPU pods:
``--config.distributed.mode=on``, everything auto-detected).
The work is done by :func:`synleak_jax.embed.door.embed_from_config`, the same door synleak-audit uses.
See docs/embed.md.
"""

from __future__ import annotations

from absl import app, flags, logging

from synleak_jax.cli import common
from synleak_jax.config import embed_config

_CONFIG = common.define_config_flag("config", "embed", "Embed config: preset embed (the default) or a .py file "
                                   "with get_config(); override fields with --config.<field>=<value>.",
                                   program="embed")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Recompute the store even if it exists with other settings.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from synleak_jax.config import ConfigError
    from synleak_jax.embed.door import DoorError, embed_from_config

    try:
        with common.output_dir_guard(_CONFIG.value.output or "."):  # no empty store directory after a failure
            store = embed_from_config(_CONFIG.value, overwrite=_OVERWRITE.value)
    except (ConfigError, DoorError) as e:
        raise app.UsageError(str(e)) from None
    logging.info("store complete: %s (%d embeddings, %d rejects)", store.path, len(store), len(store.rejects))


def run():
    common.run_program(main, doc=__doc__, config=_CONFIG, schema=embed_config)


if __name__ == "__main__":
    run()
