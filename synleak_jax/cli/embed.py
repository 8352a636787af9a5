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
See docs/embed.md.
"""

from __future__ import annotations

import importlib
import os

from absl import app, flags, logging
from ml_collections import config_flags

_DEFAULT_CONFIG = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "embed.py")
_CONFIG = config_flags.DEFINE_config_file("config", _DEFAULT_CONFIG, "Embed config (configs/embed.py).")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Recompute the store even if it exists with other settings.")

DATA_KINDS = {"image_folder": "folder", "flat_folder": "flat", "recordio": "recordio", "tfds": "tfds",
              "verification_bin": "bin"}


def open_data(cfg):
    """The data-layer source named by ``cfg.data``; errors name the flag."""
    from synleak_jax.data.sources import open_source

    if cfg.data.kind not in DATA_KINDS:
        raise app.UsageError(f"--config.data.kind={cfg.data.kind!r}: choose one of {', '.join(DATA_KINDS)}")
    if not cfg.data.path:
        raise app.UsageError("--config.data.path is required")
    kwargs = {}
    if cfg.data.kind == "tfds":
        if not cfg.data.tfds_data_dir:
            raise app.UsageError("--config.data.tfds_data_dir is required for --config.data.kind=tfds")
        kwargs["data_dir"] = cfg.data.tfds_data_dir
    return open_source(f"{DATA_KINDS[cfg.data.kind]}:{cfg.data.path}", **kwargs)


def load_variables(cfg, module, spec):
    """(variables, weights manifest entry) from ``cfg.weights`` or a labelled random init."""
    import jax
    import jax.numpy as jnp

    if cfg.weights:
        if cfg.random_init:
            raise app.UsageError("--config.random_init=True cannot be combined with --config.weights")
        try:
            from synleak_jax.weights import load_weights
        except ImportError as e:
            raise app.UsageError(f"weights loading is unavailable in this build ({e})") from None
        variables, info = load_weights(cfg.weights, cfg.model)
        return variables, {"sha256": info.sha256, "source": os.path.basename(str(info.source_file)),
                           "format": info.format, "model_name": info.model_name}
    if not cfg.random_init:
        raise app.UsageError("--config.weights is required (an empty value is only allowed with "
                             "--config.random_init=True, for tests and benchmarks)")
    logging.warning("RANDOM-INIT weights (seed %d): embeddings are meaningless for face recognition", cfg.seed)
    v = module.init(jax.random.PRNGKey(cfg.seed), jnp.zeros((1, spec.height, spec.width, 3), jnp.float32))
    return v, {"random_init": True, "seed": int(cfg.seed),
               "note": "RANDOM INITIALISATION - not a trained model (tests/benchmarks only)"}


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    cfg = _CONFIG.value
    for mod in filter(None, (m.strip() for m in cfg.imports.split(","))):
        importlib.import_module(mod)
    from synleak_jax.embed import distributed

    d = cfg.distributed
    distributed.initialize(d.coordinator_address or None, d.num_processes or None,
                           d.process_id if d.process_id >= 0 else None, mode=d.mode)

    import jax
    import jax.numpy as jnp

    from synleak_jax.data import rejects
    from synleak_jax.embed import engine as eng
    from synleak_jax.embed import feed
    from synleak_jax.embed.store import ChunkPlan
    from synleak_jax.models import registry

    if not cfg.output:
        raise app.UsageError("--config.output (the store directory) is required")
    if cfg.data.align not in ("none", "mtcnn"):
        raise app.UsageError(f"--config.data.align={cfg.data.align!r}: choose 'none' (pre-aligned crops, resized "
                             "only) or 'mtcnn' (detect + align to the model's template)")
    entry = registry.get_entry(cfg.model)
    spec = entry.spec
    compute_dtype = cfg.compute_dtype or eng.default_compute_dtype()
    module = registry.get_model(cfg.model, dtype=jnp.dtype(compute_dtype))
    variables, weights = load_variables(cfg, module, spec)
    source = open_data(cfg)
    plan = ChunkPlan(len(source), cfg.batch_size, cfg.chunk_batches)
    engine = eng.EmbeddingEngine(module, variables, spec, flip=cfg.flip, storage_dtype=cfg.storage_dtype)
    preprocessing = {
        "alignment": cfg.data.align,
        "template": spec.alignment,
        "resize": [spec.height, spec.width],
        "channel_order": spec.channel_order,
        "decode": "PIL via synleak_jax.data.decode",
        "max_pixels": int(cfg.data.max_pixels),
    }
    pipe_kwargs = {"read_threads": cfg.read_threads}
    if cfg.data.align == "mtcnn":
        import dataclasses

        from synleak_jax.data import detect

        pipe_kwargs["align_fn"] = detect.DetectAlign(spec, policy=cfg.data.align_policy)
        preprocessing["detector"] = {"name": "mtcnn", "policy": cfg.data.align_policy,
                                     **dataclasses.asdict(pipe_kwargs["align_fn"].config)}
    manifest = eng.build_manifest(
        model_name=cfg.model, model_family=entry.family, spec=spec, weights=weights,
        dataset={"kind": cfg.data.kind, "fingerprint": source.fingerprint(), "num_records": len(source),
                 "num_classes": getattr(source, "num_classes", None)},
        preprocessing=preprocessing, flip=cfg.flip, flip_combine=engine.flip_combine,
        normalized=engine.normalize, compute_dtype=compute_dtype, storage_dtype=cfg.storage_dtype, plan=plan)
    # Where the data lives is provenance, not identity: a moved dataset with the same fingerprint is reusable.
    manifest["dataset_path"] = os.path.abspath(cfg.data.path)
    if cfg.data.max_pixels:
        pipe_kwargs["max_pixels"] = int(cfg.data.max_pixels)
    summary = eng.embed_to_store(
        cfg.output, engine, manifest,
        feed.pipeline_batches(source, spec, num_workers=cfg.num_workers, **pipe_kwargs),
        describe=source.describe, reasons=rejects.REASONS,
        overwrite=bool(_OVERWRITE.value or cfg.overwrite), progress_every_s=cfg.progress_every_s)
    logging.info("process %d: computed chunks %s, skipped %s", jax.process_index(),
                 summary["chunks_computed"], summary["chunks_skipped"])


def run():
    app.run(main)


if __name__ == "__main__":
    run()
