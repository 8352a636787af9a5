"""The one door from a dataset and a matcher to embeddings: open the data, load the matcher, ensure the store.

``synleak-embed`` and ``synleak-audit`` both come through here, so the same dataset embedded by the same matcher
with the same settings gives the same manifest — a store made by one is reused by the other — and every dataset
kind ends up as an :class:`EmbeddingSet` that the analyses read in blocks:

* image kinds (``image_folder``, ``flat_folder``, ``recordio``, ``tfds``, ``verification_bin``): embedded by the
  matcher into a chunked, resumable store (``store.py``, ``engine.py``);
* ``store``: an existing ``synleak-embed`` store, used as it is after checking that its manifest fits the
  matcher (model, weights, embedding dimension, metric);
* ``embeddings``: an ``[N, D]`` .npy of features computed elsewhere (optional labels .npy and names .txt).

Errors about a user's settings or files raise :class:`DoorError` naming the ``--config.*`` field.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from synleak_jax import config as config_lib
from synleak_jax.data import channels, detect, layout_hints, rejects, safe_paths
from synleak_jax.data.sources import content_fingerprint
from synleak_jax.data.kinds import open_source
from synleak_jax.embed import distributed, feed
from synleak_jax.embed import engine as eng
from synleak_jax.embed.store import (
    FORMAT_VERSION,
    MANIFEST,
    ChunkPlan,
    EmbeddingStore,
    StoreError,
    StoreMismatchError,
    identity_diff,
)
from synleak_jax.files import NpyFile, safe_name
from synleak_jax.progress import Progress
from synleak_jax.models import registry
from synleak_jax.weights import convert_dlib, load_weights
from synleak_jax.weights import loader as weights_loader

#: config kind -> prefix understood by ``data.kinds.open_source``.
SOURCE_PREFIX = {"image_folder": "folder", "flat_folder": "flat", "recordio": "recordio", "tfds": "tfds",
                 "verification_bin": "bin"}


class DoorError(ValueError):
    """A dataset, matcher or store setting is unusable; the message names the --config field (or file)."""


# --------------------------------------------------------------------------------------------------- data


@dataclasses.dataclass
class Dataset:
    """An opened dataset of any kind. ``source`` is the data-layer source for image kinds (None otherwise)."""

    field: str  # "--config.data.members" (audit) or "--config.data" (synleak-embed)
    name: str
    kind: str
    path: str
    source: Any
    labelled: bool
    label_from: str
    align: str
    align_policy: str
    max_pixels: int
    channel_order: str  # the stored pixels' order, resolved ("rgb" | "bgr") for image kinds
    description: str
    labels_path: str = ""
    names_path: str = ""
    channel_order_reason: str = ""  # why the stored colour order is what it is (data/channels.py)
    fingerprint: str = "listing"  # listing | content: how the store manifest fingerprints the data

    @property
    def num_records(self) -> int:
        if self.source is not None:
            return len(self.source)
        if self.kind == "embeddings":
            return NpyFile(self.path).shape[0]
        return int(EmbeddingStore.open(self.path).manifest["plan"]["num_records"])


def open_data(d, field: str) -> Dataset | None:
    """Opens the dataset described by a :func:`synleak_jax.config.data_config` (None when its path is empty).

    Image kinds are listed here (a wrong layout fails now, before any weights are read); ``store`` and
    ``embeddings`` are only checked for existence (they are opened by :func:`ensure_embeddings`).
    """
    if not d.path:
        return None
    kind = d.kind
    name = d.name or os.path.basename(os.path.normpath(d.path)) or d.path
    source = None
    if kind in SOURCE_PREFIX:

        kwargs = {"data_dir": d.tfds_data_dir} if kind == "tfds" and d.tfds_data_dir else {}
        try:
            source = open_source(f"{SOURCE_PREFIX[kind]}:{d.path}", **kwargs)
        except (rejects.DataError, OSError, ValueError) as e:
            raise DoorError(f"{field}.path={d.path!r} (kind={kind}): {e}{_hint(d.path, kind)}") from None
        if len(source) == 0:
            raise DoorError(f"{field}.path={d.path!r} (kind={kind}) holds no images{_hint(d.path, kind)}")
        if d.get("records"):
            try:
                start, stop = feed.parse_record_range(d.records, len(source))
            except ValueError as e:
                raise DoorError(f"{field}.{e}") from None
            source = feed.RecordRange(source, start, stop)
        try:
            order = channels.resolve_channel_order(d.channel_order, source)
        except ValueError as e:
            raise DoorError(f"{field}.channel_order: {e}") from None
    labelled = bool(d.labelled) and (kind in ("image_folder", "recordio", "tfds", "store") or
                                     (kind == "embeddings" and bool(d.labels)))
    return Dataset(field=field, name=name, kind=kind, path=d.path, source=source, labelled=labelled,
                   label_from=d.label_from, align=d.align, align_policy=d.align_policy, max_pixels=int(d.max_pixels),
                   channel_order=order.resolved if source is not None else d.channel_order,
                   description=d.description, labels_path=d.labels, names_path=d.names,
                   channel_order_reason=order.reason if source is not None else "",
                   fingerprint=d.get("fingerprint", "listing"))


def _hint(path: str, kind: str) -> str:
    hint = layout_hints.layout_hint(path, kind)
    return f" ({hint})" if hint else ""


# ------------------------------------------------------------------------------------------------ matcher


@dataclasses.dataclass
class Matcher:
    """A loaded matcher: its Flax module (built for the compute dtype), variables, input spec and the weights'
    manifest entry."""

    name: str
    family: str
    spec: Any  # models.registry.InputSpec
    module: Any = None
    variables: Any = None
    weights: dict = dataclasses.field(default_factory=dict)
    compute_dtype: str = "float32"

    @property
    def metric(self) -> str:
        return self.spec.metric


def matcher_entry(name: str, field: str = "--config.matchers"):

    try:
        return registry.get_entry(name)
    except KeyError as e:
        raise DoorError(f"{field}: {e.args[0]}") from None


def load_matcher(name: str, weights: str, *, field: str, random_init: bool = False, seed: int = 0,
                 compute_dtype: str = "") -> Matcher:
    """Loads matcher ``name`` with its weights file (dlib's ships in a package and is found without a path).

    Args:
      field: the config field of the weights path (named in errors), e.g. "--config.weights.iresnet100".
      random_init: tests and benchmarks only (labelled in the manifest); compute_dtype: "" = platform default.
    """

    entry = matcher_entry(name)
    compute_dtype = compute_dtype or eng.default_compute_dtype()
    module = registry.get_model(name, dtype=jnp.dtype(compute_dtype))
    spec = entry.spec
    if weights:
        if random_init:
            raise DoorError(f"{field}: random_init cannot be combined with a weights file")

        try:
            variables, info = load_weights(weights, name)
        except FileNotFoundError:
            raise DoorError(f"{field}={weights!r}: no such file") from None
        except (ValueError, OSError, KeyError) as e:  # the weights readers' errors name the file
            raise DoorError(f"{field}={weights!r}: {e}") from None
        wentry = {"sha256": info.sha256, "source": os.path.basename(str(info.source_file)), "format": info.format,
                  "model_name": info.model_name}
    elif name == "dlib_resnet_v1" and not random_init:

        path = convert_dlib.default_dlib_weights_path()
        variables = convert_dlib.load_dlib_dat(path)
        wentry = {"sha256": weights_loader.file_sha256(path), "source": os.path.basename(str(path)),
                  "format": "dlib_dat", "model_name": name, "shipped_in": "face-recognition-models (PyPI)"}
    elif random_init:
        logging.warning("RANDOM-INIT weights (seed %d): embeddings are meaningless for face recognition", seed)
        variables = module.init(jax.random.PRNGKey(seed), jnp.zeros((1, spec.height, spec.width, 3), jnp.float32))
        wentry = {"random_init": True, "seed": int(seed),
                  "note": "RANDOM INITIALISATION - not a trained model (tests/benchmarks only)"}
    else:
        raise DoorError(f"{field} is required: the weights file of matcher {name} (see docs/audit.md for where "
                        "each is published)")
    return Matcher(name=name, family=entry.family, spec=spec, module=module, variables=variables, weights=wentry,
                   compute_dtype=compute_dtype)


# ---------------------------------------------------------------------------------------------- embeddings


class EmbeddingSet:
    """What the analyses read: rows of embeddings with their labels, record ids and how to show them.

    embeddings: array-like [N, D] float (read in blocks: a store's ChunkedArray, an NpyFile);
    labels: int64 [N] (-1 = unknown); record_ids: int64 [N] (rows -> records of the dataset);
    manifest: the store manifest (or a description of the .npy); rejects: records that could not be embedded;
    metric: "cosine" | "euclidean"; path: the store or file.
    """

    def __init__(self, *, embeddings, labels: np.ndarray, record_ids: np.ndarray, manifest: dict, rejects: list,
                 metric: str, path: str, describe_record: Callable[[int], str] | None = None,
                 read_record_rgb: Callable[[int], np.ndarray] | None = None, names: list[str] | None = None,
                 root: str | None = None, record_path: Callable[[int], str] | None = None):
        self.embeddings = embeddings
        self.labels = np.asarray(labels, np.int64)
        self.record_ids = np.asarray(record_ids, np.int64)
        self.manifest = manifest
        self.rejects = rejects
        self.metric = metric
        self.path = path
        self._describe = describe_record
        self._read_rgb = read_record_rgb
        self._names = names
        self._record_path = record_path
        self.root = root  # dataset root (relative captions); None when there is none

    def __len__(self) -> int:
        return int(self.embeddings.shape[0])

    def describe(self, row: int) -> str:
        """The image's path (or file:offset, or the given name) of row ``row``."""
        rec = int(self.record_ids[row])
        if self._names is not None:
            return safe_paths.display_path(self._names[rec])  # a display string, like every source's describe
        if self._describe is not None:
            return self._describe(rec)
        return f"record {rec}"

    def exact_name(self, row: int) -> str | None:
        """The exact file path of row ``row``'s image (an OS string: ``os.fsencode`` gives the bytes on disk) or the
        exact name from kind=embeddings' names file, for writers that must round-trip names; None when there is
        neither (RecordIO, embeddings without names, moved data)."""
        rec = int(self.record_ids[row])
        if self._names is not None:
            return self._names[rec]
        return self._record_path(rec) if self._record_path is not None else None

    def read_rgb(self, row: int) -> np.ndarray | None:
        """uint8 [H, W, 3] of row ``row``'s image, or None when there are no images (embeddings, moved data)."""
        if self._read_rgb is None:
            return None
        return self._read_rgb(int(self.record_ids[row]))

    @property
    def has_images(self) -> bool:
        return self._read_rgb is not None


class _Normalised:
    """Array-like view of an [N, D] array whose rows are L2-normalised on read (kind=embeddings, cosine)."""

    def __init__(self, x, path: str):
        self._x = x
        self.shape = x.shape
        self.dtype = np.dtype(np.float32)
        self.path = path

    def __len__(self) -> int:
        return self.shape[0]

    #: Rows normalised at a time: the float64 temporaries stay ~8 MB whatever the read (a 65,536-row read made
    #: three 268 MB float64 copies at once: the audit's peak RSS, BENCHMARKS.md).
    SUB_ROWS = 2048

    def _norm(self, blk: np.ndarray, first: int | None) -> np.ndarray:
        blk = np.asarray(blk, np.float32)
        flat = blk.reshape(-1, blk.shape[-1]) if blk.ndim > 1 else blk.reshape(1, -1)
        out = np.empty(flat.shape, np.float32)
        for a in range(0, flat.shape[0], self.SUB_ROWS):
            sub = flat[a:a + self.SUB_ROWS].astype(np.float64)
            n = np.linalg.norm(sub, axis=-1, keepdims=True)  # per row, as before the sub-blocks: same bits
            if np.any(n == 0) or not np.all(np.isfinite(n)):
                bad = a + int(np.argmax((n[:, 0] == 0) | ~np.isfinite(n[:, 0])))
                where = f"row {first + bad}" if first is not None else "a row"
                raise ValueError(f"{self.path}: {where} has zero or non-finite norm (cannot be cosine-normalised)")
            np.divide(sub, n, out=sub)
            out[a:a + self.SUB_ROWS] = sub
        return out.reshape(blk.shape)

    def __getitem__(self, idx):
        first = idx.indices(self.shape[0])[0] if isinstance(idx, slice) else None
        return self._norm(self._x[idx], first)

    def __array__(self, dtype=None, copy=None):
        a = self[0:self.shape[0]]
        return a if dtype is None else a.astype(dtype)


def open_embeddings_file(ds: Dataset, metric: str) -> EmbeddingSet:
    """kind=embeddings: an [N, D] float .npy (optional labels .npy [N] int, names .txt one per row)."""
    try:
        x = NpyFile(ds.path)
    except ValueError as e:
        raise DoorError(f"{ds.field}.path: {e}") from None
    if x.ndim != 2 or x.dtype.kind != "f" or x.shape[0] == 0 or x.shape[1] == 0:
        raise DoorError(f"{ds.field}.path={ds.path!r}: expected a non-empty [N, D] float array, got "
                        f"{x.shape} {x.dtype}")
    n = x.shape[0]
    labels = np.full(n, -1, np.int64)
    if ds.labels_path:
        try:
            lab = np.asarray(NpyFile(ds.labels_path))
        except ValueError as e:
            raise DoorError(f"{ds.field}.labels: {e}") from None
        if lab.shape != (n,) or lab.dtype.kind not in "iu":
            raise DoorError(f"{ds.field}.labels={ds.labels_path!r}: expected [{n}] integers, got {lab.shape} "
                            f"{lab.dtype}")
        labels = lab.astype(np.int64)
    names = None
    if ds.names_path:
        with open(ds.names_path, encoding="utf-8", errors="surrogateescape") as f:
            names = f.read().splitlines()
        if len(names) != n:
            raise DoorError(f"{ds.field}.names={ds.names_path!r}: {len(names)} lines for {n} rows")
    emb = _Normalised(x, ds.path) if metric == "cosine" else x
    st = os.stat(ds.path)
    manifest = {"kind": "embeddings", "path": os.path.abspath(ds.path), "shape": list(x.shape),
                "dtype": str(x.dtype), "size": st.st_size, "mtime_ns": st.st_mtime_ns, "metric": metric,
                "normalized_on_read": metric == "cosine", "labels": ds.labels_path or None,
                "names": ds.names_path or None,
                "dataset": {"kind": "embeddings", "fingerprint": f"{st.st_size}:{st.st_mtime_ns}:{x.shape}",
                            "num_records": n}}
    return EmbeddingSet(embeddings=emb, labels=labels, record_ids=np.arange(n), manifest=manifest, rejects=[],
                        metric=metric, path=ds.path, names=names)


def _store_set(store: EmbeddingStore, ds: Dataset, source=None) -> EmbeddingSet:
    metric = store.manifest.get("metric", "cosine")
    labels = store.labels if ds.labelled else np.full(len(store.record_ids), -1, np.int64)
    root = None
    if source is not None and ds.kind in ("image_folder", "flat_folder"):
        root = os.path.abspath(ds.path)
    order = ds.channel_order if ds.channel_order in ("rgb", "bgr") else \
        (store.manifest.get("preprocessing") or {}).get("source_channel_order", "rgb")

    def read_rgb(record: int) -> np.ndarray:
        return source.read_rgb(record, channel_order=order)

    return EmbeddingSet(embeddings=store.embeddings, labels=labels, record_ids=store.record_ids,
                        manifest=store.manifest, rejects=store.rejects, metric=metric, path=store.path,
                        describe_record=source.describe if source is not None else None,
                        read_record_rgb=read_rgb if source is not None else None, root=root,
                        record_path=getattr(source, "path", None))  # folder sources have exact paths


def _fits(store: EmbeddingStore, matcher: Matcher, field: str) -> None:
    """Refuses (one line naming the field) a store whose manifest does not fit the matcher."""
    m = store.manifest
    problems = []
    model = (m.get("model") or {}).get("name")
    if model != matcher.name:
        problems.append(f"made by matcher {model!r}, not {matcher.name!r}")
    if m.get("embedding_dim") != matcher.spec.embedding_dim:
        problems.append(f"embedding_dim {m.get('embedding_dim')} != {matcher.spec.embedding_dim}")
    if m.get("metric") != matcher.metric:
        problems.append(f"metric {m.get('metric')!r} != {matcher.metric!r}")
    want_sha = matcher.weights.get("sha256")
    have_sha = (m.get("weights") or {}).get("sha256")
    if want_sha and have_sha != want_sha:
        problems.append(f"weights sha256 {str(have_sha)[:12]} != {want_sha[:12]} (the given weights)")
    if problems:
        raise DoorError(f"{field}.path={store.path!r}: the store does not fit matcher {matcher.name}: "
                        + "; ".join(problems))


def open_store(ds: Dataset, matcher: Matcher | None) -> EmbeddingSet:
    """kind=store: a complete synleak-embed store, checked against ``matcher`` (None: taken as it is)."""
    try:
        store = EmbeddingStore.open(ds.path)
    except StoreError as e:
        raise DoorError(f"{ds.field}.path: {e}") from None
    if matcher is not None:
        _fits(store, matcher, ds.field)
    source = _reopen_source(store)
    return _store_set(store, ds, source)


def _reopen_source(store: EmbeddingStore):
    """The data source a store was made from, when it is still where the manifest says and unchanged (for
    names and gallery thumbnails); None otherwise."""
    path = store.manifest.get("dataset_path")
    kind = (store.manifest.get("dataset") or {}).get("kind")
    if not path or kind not in SOURCE_PREFIX or not os.path.exists(path):
        return None
    try:

        src = open_source(f"{SOURCE_PREFIX[kind]}:{path}")
    except Exception:  # a moved or changed dataset only costs the thumbnails
        return None
    dataset = store.manifest["dataset"]
    return src if src.fingerprint() == dataset.get("listing_fingerprint", dataset.get("fingerprint")) else None


def preprocessing_entry(ds: Dataset, matcher: Matcher) -> tuple[dict, dict]:
    """(the manifest's preprocessing entry, the pipeline's keyword arguments) — one place, for both programs."""
    spec = matcher.spec
    pre = {"alignment": ds.align, "template": spec.alignment, "resize": [spec.height, spec.width],
           "channel_order": spec.channel_order, "source_channel_order": ds.channel_order,
           "decode": "PIL via synleak_jax.data.decode", "max_pixels": int(ds.max_pixels)}
    kwargs: dict[str, Any] = {"channel_order": ds.channel_order}  # resolved: the pipeline sees a subset view
    if ds.max_pixels:
        kwargs["max_pixels"] = int(ds.max_pixels)
    if ds.align == "mtcnn":

        kwargs["align_fn"] = detect.DetectAlign(spec, policy=ds.align_policy)
        pre["detector"] = {"name": "mtcnn", "policy": ds.align_policy,
                           **dataclasses.asdict(kwargs["align_fn"].config)}
    return pre, kwargs


def ensure_store(ds: Dataset, matcher: Matcher, settings, output: str, *, overwrite: bool = False) -> EmbeddingSet:
    """Fills or resumes the store of ``ds`` under ``matcher`` at ``output`` (chunked, resumable; refused when it
    exists with other settings unless ``overwrite``); kinds store/embeddings are opened as they are.

    settings: a :func:`synleak_jax.config.embed_settings` ConfigDict (batch_size, chunk_batches, flip, dtypes,
    workers).
    """
    if ds.kind == "store":
        return open_store(ds, matcher)
    if ds.kind == "embeddings":
        raise DoorError(f"{ds.field}.kind=embeddings: features are audited as given, not embedded by a matcher")

    engine, manifest, batches = _request(ds, matcher, settings)
    source = ds.source
    try:
        eng.embed_to_store(output, engine, manifest, batches, describe=source.describe, reasons=rejects.REASONS,
                           overwrite=overwrite, progress_every_s=float(settings.progress_every_s))
    except StoreMismatchError as e:
        if ds.field == "--config.data":  # synleak-embed
            remedy = "Use another --config.output, or pass --overwrite to recompute it."
        else:  # the audit keeps its stores under --config.stores_dir and has no overwrite option
            remedy = (f"Point --config.stores_dir at another folder (the default is <output_dir>/stores), or "
                      f"delete {e.path} to recompute it.")
        raise DoorError(f"{e.summary}\n{remedy}") from None
    store = EmbeddingStore.open(output)
    if len(store.record_ids) == 0:
        raise DoorError(f"{ds.field}.path={ds.path!r}: every image was rejected (see {output}/chunks/*.rejects.jsonl)")
    return _store_set(store, ds, source)


def _request(ds: Dataset, matcher: Matcher, settings):
    """(engine, the requested store manifest, the batches function) for embedding ``ds`` with ``matcher`` — the
    one place both programs build a store request, so their manifests are identical."""

    if settings.storage_dtype not in config_lib.STORAGE_DTYPES:
        raise DoorError(f"--config.storage_dtype={settings.storage_dtype!r}: choose float32 or float16")
    engine = eng.EmbeddingEngine(matcher.module, matcher.variables, matcher.spec, flip=bool(settings.flip),
                                 storage_dtype=settings.storage_dtype)
    pre, pipe_kwargs = preprocessing_entry(ds, matcher)
    source = ds.source
    plan = ChunkPlan(len(source), int(settings.batch_size), int(settings.chunk_batches))
    dataset = {"kind": ds.kind, "fingerprint": source.fingerprint(), "num_records": len(source),
               "num_classes": getattr(source, "num_classes", None)}
    if ds.fingerprint == "content":  # opt-in: a same-size change of an image's bytes is a different dataset
        dataset.update(fingerprint=content_fingerprint(source), fingerprint_kind="content",
                       listing_fingerprint=source.fingerprint())
    manifest = eng.build_manifest(
        model_name=matcher.name, model_family=matcher.family, spec=matcher.spec, weights=matcher.weights,
        dataset=dataset,
        preprocessing=pre, flip=bool(settings.flip), flip_combine=engine.flip_combine, normalized=engine.normalize,
        compute_dtype=matcher.compute_dtype, storage_dtype=settings.storage_dtype, plan=plan)
    # Where the data lives is provenance, not identity: a moved dataset with the same fingerprint is reusable.
    manifest["dataset_path"] = os.path.abspath(ds.path)
    batches = feed.pipeline_batches(source, matcher.spec, num_workers=int(settings.num_workers),
                                    read_threads=int(settings.read_threads), **pipe_kwargs)
    return engine, manifest, batches


def store_status(ds: Dataset, matcher: Matcher, settings, output: str) -> dict:
    """What :func:`ensure_store` would do at ``output``, without writing: {"status": "absent" | "complete" |
    "partial" | "mismatch" | "given", "chunks_done", "chunks_total", "records_to_embed", "differences"}."""

    if ds.kind in ("store", "embeddings"):
        return {"status": "given", "path": ds.path, "records_to_embed": 0}
    _, manifest, _ = _request(ds, matcher, settings)
    manifest.setdefault("format_version", FORMAT_VERSION)
    plan = ChunkPlan.from_dict(manifest["plan"])
    out = {"path": output, "chunks_total": plan.num_chunks, "chunks_done": 0, "records_to_embed": plan.num_records}
    mpath = os.path.join(output, MANIFEST)
    if not os.path.exists(mpath):
        return {**out, "status": "absent"}

    with open(mpath) as f:
        diffs = identity_diff(json.load(f), manifest)
    if diffs:
        return {**out, "status": "mismatch", "differences": [f"{k}: stored {a!r} vs requested {b!r}"
                                                             for k, a, b in diffs[:8]],
                "note": "the audit would refuse this store (made with other settings): remove it or set another "
                        "--config.stores_dir"}
    done = [j for j in range(plan.num_chunks)
            if os.path.exists(os.path.join(output, "chunks", f"chunk_{j:06d}.done.json"))]
    left = sum(b - a for a, b in (plan.chunk_range(j) for j in range(plan.num_chunks) if j not in set(done)))
    return {**out, "status": "complete" if len(done) == plan.num_chunks else "partial", "chunks_done": len(done),
            "records_to_embed": left}


def embed_records(ds: Dataset, matcher: Matcher, record_ids, *, channel_order: str | None = None,
                  batch_size: int = 64, flip: bool = False,
                  progress: str = "embedding a sample in memory") -> tuple[np.ndarray, np.ndarray]:
    """Embeds the records ``record_ids`` of an image dataset in memory (no store): (record ids embedded int64
    [m], embeddings [m, D]); rejected records are left out. Runs on this process's devices only (every process
    can call it independently). ``channel_order`` overrides the dataset's resolved order ("rgb" | "bgr").
    ``progress`` names the progress lines (images/s, ETA; every 10 s, so a short call logs none)."""

    local = distributed.global_mesh(eng.DATA_AXIS, jax.local_devices())
    engine = eng.EmbeddingEngine(matcher.module, matcher.variables, matcher.spec, flip=flip, mesh=local)
    _, kwargs = preprocessing_entry(ds, matcher)
    if channel_order is not None:
        kwargs["channel_order"] = channel_order
    batch = max(engine.num_devices, batch_size // engine.num_devices * engine.num_devices)
    ids = np.asarray(record_ids, np.int64)
    batches = feed.pipeline_batches(ds.source, matcher.spec, **kwargs)(ids, batch)
    rows, embs = [], []
    for res in engine.run(batches, batch, progress=Progress(len(ids), 10.0, f"{ds.field}: {progress}")):
        rows.append(res.record_id)
        embs.append(res.embedding)
    if not rows:
        return np.zeros(0, np.int64), np.zeros((0, matcher.spec.embedding_dim), np.float32)
    rid, emb = np.concatenate(rows), np.concatenate(embs)
    order = np.argsort(rid, kind="stable")
    return rid[order], emb[order]


def measure_embedding(ds: Dataset, matcher: Matcher, settings, n_batches: int = 2) -> float:
    """Images per second of this dataset through the pipeline and the matcher on this machine (a few batches,
    after one warm-up batch that compiles; this process's devices)."""

    n = min(len(ds.source), int(settings.batch_size) * (n_batches + 1))
    ids = np.arange(n, dtype=np.int64)
    warm = ids[: min(n, int(settings.batch_size))]
    embed_records(ds, matcher, warm, batch_size=int(settings.batch_size), flip=bool(settings.flip))
    rest = ids[len(warm):]
    if not len(rest):
        rest = warm
    t = time.perf_counter()
    embed_records(ds, matcher, rest, batch_size=int(settings.batch_size), flip=bool(settings.flip))
    return len(rest) / max(time.perf_counter() - t, 1e-9)


def store_path(stores_dir: str, role: str, ds: Dataset, matcher_name: str) -> str:
    """Where the audit keeps the store of ``ds`` under ``matcher_name``."""
    return os.path.join(stores_dir, f"{role}.{safe_name(ds.name)}.{safe_name(matcher_name)}")


def embed_from_config(cfg, overwrite: bool = False) -> EmbeddingSet:
    """``synleak-embed``: validate, imports, distributed init, open the data, load the matcher, ensure the store."""
    for mod in filter(None, (m.strip() for m in cfg.get("imports", "").split(","))):
        importlib.import_module(mod)  # first: they may register matchers the validation must know
    config_lib.validate_embed(cfg)

    d = cfg.distributed
    distributed.initialize(d.coordinator_address or None, d.num_processes or None,
                           d.process_id if d.process_id >= 0 else None, mode=d.mode)
    ds = open_data(cfg.data, "--config.data")
    matcher = load_matcher(cfg.model, cfg.weights, field="--config.weights", random_init=bool(cfg.random_init),
                           seed=int(cfg.seed), compute_dtype=cfg.compute_dtype)
    return ensure_store(ds, matcher, cfg, cfg.output, overwrite=bool(overwrite or cfg.overwrite))
