"""One call from a dataset + backbone to an embedding store (used by ``synleak-embed`` and the audit CLI).

    from synleak_jax.embed.api import embed_source, embed_from_config
    store = embed_source(source, "/stores/x", model="iresnet100", weights="/w/r100.pth", flip=True)
    store = embed_from_config(cfg)          # cfg: configs/embed.py's ConfigDict (or the audit's sub-config)

Both resume an existing store with the same settings, refuse one made with other settings (listing what
differs) unless ``overwrite``, and return the opened :class:`EmbeddingStore`. Errors about settings raise
:class:`EmbedConfigError` naming the ``--config.*`` field.
"""

from __future__ import annotations

import dataclasses
import importlib
import os

from absl import logging

from synleak_jax.embed.store import ChunkPlan, EmbeddingStore

#: ``--config.data.kind`` -> prefix understood by ``data.sources.open_source``.
DATA_KINDS = {"image_folder": "folder", "flat_folder": "flat", "recordio": "recordio", "tfds": "tfds",
              "verification_bin": "bin"}


class EmbedConfigError(ValueError):
    """A setting of the embed config is missing or invalid (the message names the --config field)."""


def open_data(data_cfg):
    """The data-layer source named by ``data_cfg`` (kind, path, tfds_data_dir)."""
    from synleak_jax.data.sources import open_source

    if data_cfg.kind not in DATA_KINDS:
        raise EmbedConfigError(f"--config.data.kind={data_cfg.kind!r}: choose one of {', '.join(DATA_KINDS)}")
    if not data_cfg.path:
        raise EmbedConfigError("--config.data.path is required")
    kwargs = {}
    if data_cfg.kind == "tfds":
        if not data_cfg.get("tfds_data_dir"):
            raise EmbedConfigError("--config.data.tfds_data_dir is required for --config.data.kind=tfds")
        kwargs["data_dir"] = data_cfg.tfds_data_dir
    return open_source(f"{DATA_KINDS[data_cfg.kind]}:{data_cfg.path}", **kwargs)


def load_variables(model: str, weights: str, random_init: bool, seed: int, module, spec):
    """(variables, weights manifest entry) from a weights file or a clearly labelled random init."""
    import jax
    import jax.numpy as jnp

    if weights:
        if random_init:
            raise EmbedConfigError("--config.random_init=True cannot be combined with --config.weights")
        from synleak_jax.weights import load_weights

        variables, info = load_weights(weights, model)
        return variables, {"sha256": info.sha256, "source": os.path.basename(str(info.source_file)),
                           "format": info.format, "model_name": info.model_name}
    if not random_init:
        raise EmbedConfigError("--config.weights is required (an empty value is only allowed with "
                               "--config.random_init=True, for tests and benchmarks)")
    logging.warning("RANDOM-INIT weights (seed %d): embeddings are meaningless for face recognition", seed)
    v = module.init(jax.random.PRNGKey(seed), jnp.zeros((1, spec.height, spec.width, 3), jnp.float32))
    return v, {"random_init": True, "seed": int(seed),
               "note": "RANDOM INITIALISATION - not a trained model (tests/benchmarks only)"}


def embed_source(
    source,
    output: str,
    *,
    model: str,
    weights: str = "",
    random_init: bool = False,
    seed: int = 0,
    batch_size: int = 128,
    chunk_batches: int = 16,
    compute_dtype: str = "",
    storage_dtype: str = "float32",
    flip: bool = True,
    num_workers: int = 0,
    read_threads: int = 0,
    align: str = "none",
    align_policy: str = "largest",
    max_pixels: int = 0,
    overwrite: bool = False,
    data_kind: str = "custom",
    data_path: str | None = None,
    progress_every_s: float = 10.0,
) -> EmbeddingStore:
    """Embeds every record of ``source`` with backbone ``model`` into the store at ``output``.

    Args mirror configs/embed.py (see docs/embed.md). ``batch_size`` is global (all devices of all
    processes). Call :func:`synleak_jax.embed.distributed.initialize` first for multi-host runs.

    Returns:
      the complete store, opened.
    """
    import jax.numpy as jnp

    from synleak_jax.data import rejects
    from synleak_jax.embed import engine as eng
    from synleak_jax.embed import feed
    from synleak_jax.models import registry

    if not output:
        raise EmbedConfigError("--config.output (the store directory) is required")
    if align not in ("none", "mtcnn"):
        raise EmbedConfigError(f"--config.data.align={align!r}: choose 'none' (pre-aligned crops, resized only) "
                               "or 'mtcnn' (detect + align to the model's template)")
    if storage_dtype not in ("float32", "float16"):
        raise EmbedConfigError(f"--config.storage_dtype={storage_dtype!r}: choose float32 or float16")
    try:
        entry = registry.get_entry(model)
    except KeyError as e:
        raise EmbedConfigError(f"--config.model: {e.args[0]}") from None
    spec = entry.spec
    compute_dtype = compute_dtype or eng.default_compute_dtype()
    module = registry.get_model(model, dtype=jnp.dtype(compute_dtype))
    variables, weights_entry = load_variables(model, weights, random_init, seed, module, spec)
    engine = eng.EmbeddingEngine(module, variables, spec, flip=flip, storage_dtype=storage_dtype)
    preprocessing = {
        "alignment": align,
        "template": spec.alignment,
        "resize": [spec.height, spec.width],
        "channel_order": spec.channel_order,
        "decode": "PIL via synleak_jax.data.decode",
        "max_pixels": int(max_pixels),
    }
    pipe_kwargs = {"read_threads": int(read_threads)}
    if max_pixels:
        pipe_kwargs["max_pixels"] = int(max_pixels)
    if align == "mtcnn":
        from synleak_jax.data import detect

        pipe_kwargs["align_fn"] = detect.DetectAlign(spec, policy=align_policy)
        preprocessing["detector"] = {"name": "mtcnn", "policy": align_policy,
                                     **dataclasses.asdict(pipe_kwargs["align_fn"].config)}
    plan = ChunkPlan(len(source), int(batch_size), int(chunk_batches))
    manifest = eng.build_manifest(
        model_name=model, model_family=entry.family, spec=spec, weights=weights_entry,
        dataset={"kind": data_kind, "fingerprint": source.fingerprint(), "num_records": len(source),
                 "num_classes": getattr(source, "num_classes", None)},
        preprocessing=preprocessing, flip=flip, flip_combine=engine.flip_combine,
        normalized=engine.normalize, compute_dtype=compute_dtype, storage_dtype=storage_dtype, plan=plan)
    # Where the data lives is provenance, not identity: a moved dataset with the same fingerprint is reusable.
    manifest["dataset_path"] = os.path.abspath(data_path) if data_path else None
    eng.embed_to_store(
        output, engine, manifest, feed.pipeline_batches(source, spec, num_workers=num_workers, **pipe_kwargs),
        describe=source.describe, reasons=rejects.REASONS, overwrite=overwrite,
        progress_every_s=progress_every_s)
    return EmbeddingStore.open(output)


def embed_from_config(cfg, overwrite: bool = False) -> EmbeddingStore:
    """Runs configs/embed.py's ConfigDict: imports, distributed init, data source, then :func:`embed_source`."""
    for mod in filter(None, (m.strip() for m in cfg.get("imports", "").split(","))):
        importlib.import_module(mod)
    from synleak_jax.embed import distributed

    d = cfg.distributed
    distributed.initialize(d.coordinator_address or None, d.num_processes or None,
                           d.process_id if d.process_id >= 0 else None, mode=d.mode)
    source = open_data(cfg.data)
    return embed_source(
        source, cfg.output, model=cfg.model, weights=cfg.weights, random_init=cfg.random_init, seed=cfg.seed,
        batch_size=cfg.batch_size, chunk_batches=cfg.chunk_batches, compute_dtype=cfg.compute_dtype,
        storage_dtype=cfg.storage_dtype, flip=cfg.flip, num_workers=cfg.num_workers,
        read_threads=cfg.read_threads, align=cfg.data.align, align_policy=cfg.data.align_policy,
        max_pixels=cfg.data.max_pixels, overwrite=bool(overwrite or cfg.overwrite), data_kind=cfg.data.kind,
        data_path=cfg.data.path, progress_every_s=cfg.progress_every_s)
