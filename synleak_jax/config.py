"""Config schemas of the programs (``ml_collections.ConfigDict``) and their validators.

* :func:`base_config` — the audit (``synleak-audit``); :func:`embed_config` — ``synleak-embed``;
  :func:`knn_config` — ``synleak-knn``. Presets in ``synleak_jax/configs/`` start from them.
* Shared pieces: :func:`data_config` (one dataset: kind, path, alignment, labels, ...), :func:`embed_settings`
  (how a matcher embeds it) and :func:`distributed_config` (multi-process runs) appear in the audit and in
  ``synleak-embed`` with the same fields, so a store made by one is reused by the other.
* :func:`validate_audit` / :func:`validate_embed` / :func:`validate_knn` check every field before any work and
  raise :class:`ConfigError` listing every problem, each naming its ``--config.*`` field.

Every field can be overridden on the command line (``--config.attack.k=20``). The comment after a field is its
help text (``--show_config`` prints them).
"""

from __future__ import annotations

import math
import os

import ml_collections

#: Data kinds: images (image_folder, flat_folder, recordio, tfds, verification_bin) are embedded by a matcher;
#: ``store`` is a synleak-embed store; ``embeddings`` is an [N, D] .npy of features computed elsewhere.
IMAGE_KINDS = ("image_folder", "flat_folder", "recordio", "tfds", "verification_bin")
DATA_KINDS = IMAGE_KINDS + ("store", "embeddings")
ALIGNS = ("none", "mtcnn")
ALIGN_POLICIES = ("largest", "best")
CHANNEL_ORDERS = ("auto", "rgb", "bgr")
FINGERPRINTS = ("listing", "content")
LABEL_FROM = ("index", "name")
CALIBRATION_SOURCES = ("members", "nonmembers", "real_all", "verification_bin")
IDENTITY_RELATION = ("auto", "on", "off")
REMEDY_EXPORTS = ("", "copy", "hardlink", "recordio")
DISTRIBUTED_MODES = ("auto", "on", "off")
COMPUTE_DTYPES = ("", "float32", "bfloat16")
STORAGE_DTYPES = ("float32", "float16")
METRICS = ("cosine", "euclidean")
PRECISIONS = ("auto", "float32", "bf16_certified")


class ConfigError(ValueError):
    """One or more config fields are invalid; ``errors`` lists them, each starting with its --config field."""

    def __init__(self, errors: list[str]):
        self.errors = list(errors)
        super().__init__("\n".join(self.errors))


def data_config(name: str = "", kind: str = "image_folder", labelled: bool = True, description: str = ""
                ) -> ml_collections.ConfigDict:
    """One dataset (the audit's data.synthetic / members / nonmembers and synleak-embed's data)."""
    d = ml_collections.ConfigDict()
    d.name = name  # a short name for reports and store folders ("" = the folder name)
    d.kind = kind  # image_folder (root/<class>/<img>) | flat_folder | recordio | tfds | verification_bin | store | embeddings
    d.path = ""  # the dataset: folder, train.rec, tfds name, .bin, a synleak-embed store, or an [N, D] .npy
    d.records = ""  # "" = all records | "start:stop": record indices, or fractions like "0.95:1.0" (a split)
    d.labelled = labelled  # use the source's class labels as identities
    d.label_from = "index"  # index: the source's labels | name: class folder names are integer identity ids
    d.labels = ""  # kind=embeddings: optional [N] integer .npy of identity labels
    d.names = ""  # kind=embeddings: optional text file, one name per row (shown in pair lists and the gallery)
    d.tfds_data_dir = ""  # kind=tfds: the TFDS data_dir
    d.align = "none"  # none: aligned face crops (resized only) | mtcnn: detect + align (e.g. raw FFHQ)
    d.align_policy = "largest"  # align=mtcnn with several faces: largest | best (highest detector score)
    d.max_pixels = 0  # decoded-image pixel limit (0 = the data layer's default decompression-bomb limit)
    d.channel_order = "auto"  # order of the stored pixels: auto (the release's known order, else rgb) | rgb | bgr
    d.fingerprint = "listing"  # store identity: listing (names, sizes, labels) | content (+ every file's bytes)
    d.description = description  # what this dataset is expected to be (a preset's expectation; shown as such)
    d.require_faces = False  # audit: stop when the face check of this dataset does not pass (else a loud warning)
    return d


def embed_settings() -> ml_collections.ConfigDict:
    """How a matcher embeds a dataset (the audit's ``embed`` and synleak-embed's top level share these)."""
    e = ml_collections.ConfigDict()
    e.batch_size = 64  # global batch (all devices of all processes); a multiple of the device count
    e.chunk_batches = 16  # global batches per store chunk (the unit of resume)
    e.flip = True  # flip TTA (sum + L2 for cosine matchers, mean for euclidean ones), as insightface evaluates
    e.compute_dtype = ""  # "" = bfloat16 on GPU/TPU, float32 on CPU | float32 | bfloat16
    e.storage_dtype = "float32"  # float32 | float16
    e.num_workers = 0  # grain decoding processes per host (0 = decode threads in this process)
    e.read_threads = 0  # decode threads (0 = automatic)
    e.progress_every_s = 10.0  # seconds between progress lines
    return e


def distributed_config() -> ml_collections.ConfigDict:
    """Multi-process runs (GPU clusters, TPU pods): one process per host, all sharing every computation."""
    d = ml_collections.ConfigDict()
    d.mode = "auto"  # auto (initialise when a coordinator and several processes are given, or on a TPU pod) | on | off
    d.coordinator_address = ""  # host:port of process 0
    d.num_processes = 0  # 0 = auto-detect
    d.process_id = -1  # -1 = auto-detect
    return d


def base_config() -> ml_collections.ConfigDict:
    """The audit (``synleak-audit``)."""
    c = ml_collections.ConfigDict()
    c.title = ""  # report title ("" = built from the datasets actually given)
    c.preset = ""  # the preset this config came from (its descriptions are that preset's expectations)
    c.output_dir = "synleak_out/audit"  # where report.json, pairs.csv, index.html, plots and stages go
    c.stores_dir = ""  # "" = <output_dir>/stores; point several audits at one folder to share embedding stores
    c.notes = ()  # free-text notes copied into the report
    c.matchers = "adaface_ir101"  # comma-separated registry names (ignored with kind=embeddings)
    c.weights = ml_collections.ConfigDict()  # weights.<matcher> = path (dlib_resnet_v1 defaults to the shipped file)
    c.weights.adaface_ir101 = ""
    c.weights.adaface_ir50 = ""
    c.weights.dlib_resnet_v1 = ""
    c.weights.iresnet100 = ""
    c.weights.iresnet50 = ""
    c.weights.mobilefacenet = ""
    c.weights.facenet_inception_resnet_v1 = ""
    c.weights.sphereface20 = ""

    c.data = ml_collections.ConfigDict()
    c.data.synthetic = data_config("synthetic", "image_folder", True, "the synthetic dataset under audit")
    c.data.members = data_config("members", "image_folder", True, "real images the generator was trained on")
    c.data.nonmembers = data_config("nonmembers", "image_folder", True,
                                    "held-out real images the generator never saw")

    c.embed = embed_settings()
    c.embeddings = ml_collections.ConfigDict()
    c.embeddings.metric = "cosine"  # kind=embeddings: cosine (rows L2-normalised here) | euclidean (raw)
    c.embeddings.name = "embeddings"  # kind=embeddings: the matcher's name in the report
    c.distributed = distributed_config()

    c.face_check = ml_collections.ConfigDict()
    c.face_check.enabled = True  # MTCNN on a seeded sample of every image dataset: are these aligned faces?
    c.face_check.sample_size = 32  # images per dataset
    c.face_check.seed = 0
    c.face_check.tolerance = 0.35  # mean landmark error allowed, in inter-ocular distances of the template

    c.channel_check = ml_collections.ConfigDict()
    c.channel_check.enabled = True  # labelled image datasets: embed a sample in both colour orders, compare
    c.channel_check.identities = 100  # identities in the sample (seeded; 100 x 5 told LFW colour faces apart)
    c.channel_check.images_per_identity = 5  # images per identity (genuine pairs within, impostors across)
    c.channel_check.seed = 0

    c.calibration = ml_collections.ConfigDict()
    c.calibration.source = "members"  # members | nonmembers | real_all (members + non-members) | verification_bin
    c.calibration.path = ""  # verification_bin: an insightface bin (lfw.bin: 6,000 pairs)
    c.calibration.align = "none"  # verification_bin images: none (aligned 112x112, as insightface ships) | mtcnn
    c.calibration.max_images = 0  # 0 = all; else a seeded random subset (all pairs of it)
    c.calibration.seed = 0  # seed of that subset
    c.calibration.shared_label_space = False  # real_all: members and non-members labels name the same people
    c.calibration.note = ""  # a note shown beside the calibration

    c.attack = ml_collections.ConfigDict()
    c.attack.fmrs = (1e-2, 1e-3, 1e-4)  # false match rates at which tau is calibrated
    c.attack.published_threshold = True  # also report the matcher's published threshold (dlib 0.6)
    c.attack.k = 10  # neighbours per image kept for the pair lists (both directions)
    c.attack.membership_topk = 5  # second membership score: mean of the top-k similarities
    c.attack.membership_fprs = (1e-3, 1e-2)  # FPRs at which the membership TPR is reported
    c.attack.identity_relation = "auto"  # auto (when both sets are labelled) | on | off
    c.attack.agreement_fmr = 0.0  # FMR for the agreement between matchers (0 = the first FMR)
    c.attack.nbins = 1 << 16  # identity relation's first histogram (the calibration counts float32 keys)
    c.attack.precision = "auto"  # neighbour search: auto (fastest exact mode) | float32 | bf16_certified

    c.report = ml_collections.ConfigDict()
    c.report.gallery_n = 24  # top pairs shown per matcher in index.html
    c.report.per_group_top = 20  # rows of the per-class / per-identity tables
    c.report.confidence = 0.95  # of every interval and of the epsilon bound (docs/statistics.md)
    c.report.alpha = 0.05  # family-wise level of the member-vs-control test behind "leakage detected"
    c.report.delta = 1e-5  # delta of the epsilon lower bound
    c.report.test = "auto"  # member-vs-control test: auto (Boschloo when small, else Fisher) | boschloo | fisher
    c.report.bootstrap = False  # identity bootstrap of membership AUC/TPR and of the achieved FMR (labels needed)
    c.report.bootstrap_replicates = 1000  # bootstrap replicates (seeded)

    c.remedy = ml_collections.ConfigDict()
    c.remedy.emit_filtered_list = False  # also --emit_filtered_list: write the synthetic set minus its leaks
    c.remedy.matcher = ""  # "" = first matcher
    c.remedy.fmr = 0.0  # 0 = first FMR
    c.remedy.export = ""  # "" | copy | hardlink (image-folder synthetic sets) | recordio (train.rec/.idx)

    c.demo = ml_collections.ConfigDict()
    c.demo.enabled = False  # the built-in demo: makes its own data under <output_dir>/demo_data
    c.demo.n_members = 50  # training images of the demo generator
    c.demo.n_synthetic = 200  # images sampled from it
    c.demo.steps = 1000  # training steps
    c.demo.bandwidth = 0.25  # latent sampling bandwidth
    c.demo.seed = 0
    return c


CASIA_HELP = ("CASIA-WebFace as insightface's RecordIO release (faces_webface_112x112/train.rec + train.idx + "
              "property: 10,572 identities, ~490k aligned 112x112 JPEGs, true-colour RGB); "
              "--config.data.members.path=/data/faces_webface_112x112/train.rec")
FFHQ_HELP = ("FFHQ images1024x1024 (70,000 PNGs in 70 chunk folders of 1,000: not identities; no labels; FFHQ's own "
             "dlib crop, not the ArcFace template): read as a flat folder and detect + align with MTCNN in the audit "
             "(align=mtcnn; run synleak-fetch-mtcnn once)")


def unveiling_preset(name: str, synthetic: str, real: str, synthetic_help: str, nonmember_help: str):
    """A preset of the Unveiling study (Otroshi Shahreza & Marcel): one synthetic dataset vs its real source,
    matcher AdaFace IR-101 trained on WebFace12M (the paper's matcher; bring the .ckpt). Descriptions state what
    the preset EXPECTS (how the release is published, docs/releases.md); the report shows them as such, beside
    what was actually given."""
    c = base_config()
    c.preset = name
    c.output_dir = f"synleak_out/{name}"
    c.matchers = "adaface_ir101"
    c.data.synthetic.name = synthetic
    c.data.synthetic.kind = "image_folder"
    c.data.synthetic.labelled = True
    c.data.synthetic.align = "none"
    c.data.synthetic.description = synthetic_help
    if real == "casia":
        c.data.members.name = "CASIA-WebFace"
        c.data.members.kind = "recordio"
        c.data.members.labelled = True
        c.data.members.channel_order = "rgb"
        c.data.members.description = CASIA_HELP
        c.calibration.source = "members"  # all impostor pairs of CASIA (labelled identities)
    else:
        c.data.members.name = "FFHQ"
        c.data.members.kind = "flat_folder"
        c.data.members.labelled = False
        c.data.members.align = "mtcnn"
        c.data.members.channel_order = "rgb"
        c.data.members.description = FFHQ_HELP
        c.calibration.source = "members"  # FFHQ has no labels: each image its own identity (stated in the report)
        c.calibration.note = "FFHQ has no identity labels; it holds few repeated people, so the bias is small."
    c.data.nonmembers.name = "held-out real images"
    c.data.nonmembers.kind = "image_folder" if real == "casia" else "flat_folder"
    c.data.nonmembers.labelled = real == "casia"
    c.data.nonmembers.align = "none" if real == "casia" else "mtcnn"
    c.data.nonmembers.description = nonmember_help
    c.attack.identity_relation = "auto"
    return c


def embed_config() -> ml_collections.ConfigDict:
    """The schema of ``synleak-embed`` (preset ``embed``): one dataset, one matcher, one store."""
    c = embed_settings()
    c.data = data_config("", "image_folder", True, "")
    c.model = "iresnet50"  # registry name of the matcher
    c.weights = ""  # path of a weights file (torch .pth/.pt/.ckpt, .onnx, dlib .dat, orbax dir)
    c.random_init = False  # allowed only without weights (tests/benchmarks); labelled in the manifest
    c.seed = 0  # seed of random_init
    c.output = ""  # the store directory
    c.batch_size = 128
    c.overwrite = False  # recompute a store made with other settings
    c.imports = ""  # comma-separated modules to import first (e.g. ones that register extra backbones)
    c.distributed = distributed_config()
    return c


def knn_config() -> ml_collections.ConfigDict:
    """The schema of ``synleak-knn``."""
    c = ml_collections.ConfigDict()
    c.queries = ""  # embedding store directory or .npy file [nq, D]
    c.database = ""  # embedding store directory or .npy file [ndb, D]
    c.output = ""  # output directory
    c.overwrite = False
    c.knn = ml_collections.ConfigDict()
    c.knn.k = 10
    c.knn.precision = "auto"  # auto (the fastest exact mode for the platform) | float32 | bf16_certified
    c.knn.selection = "tiled"
    c.knn.tile = 32
    c.knn.query_block = 0  # 0 = search.exact.default_blocks() for the backend (CPU 1024, GPU 4096)
    c.knn.db_block = 0  # 0 = default (CPU 2048, GPU 65536)
    c.knn.write_block = 16384  # queries per output part (the unit of resume)
    # glibc: one malloc arena, so buffers freed by XLA's worker threads are reused instead of piling up in
    # per-thread heaps (search.hostmem.limit_malloc_retention); False keeps glibc's default
    c.malloc_single_arena = True
    return c


# ----------------------------------------------------------------------------------------------------------
# Validation: every field checked before any work; every problem reported, each naming its --config field.
# ----------------------------------------------------------------------------------------------------------


def _enum(errors: list[str], field: str, value, allowed) -> bool:
    if value not in allowed:
        shown = ", ".join(repr(a) if a == "" else str(a) for a in allowed)
        errors.append(f"--config.{field}={value!r}: choose one of {shown}")
        return False
    return True


def _positive_int(errors: list[str], field: str, value, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        errors.append(f"--config.{field}={value!r}: must be an integer >= {minimum}")


def _rates(errors: list[str], field: str, values, allow_empty: bool = False) -> list[float]:
    try:
        rates = [float(v) for v in values]
    except (TypeError, ValueError):
        errors.append(f"--config.{field}={values!r}: must be a list of numbers in (0, 1)")
        return []
    if not rates and not allow_empty:
        errors.append(f"--config.{field} is empty: give at least one rate in (0, 1)")
    for r in rates:
        if not (0 < r < 1) or math.isnan(r):
            errors.append(f"--config.{field}: {r!r} is not in (0, 1)")
    return rates


def _data_errors(errors: list[str], field: str, d, *, required: bool) -> None:
    """Checks one data_config: kind, path existence for the kind, options; appends to ``errors``."""
    if not d.path:
        if required:
            errors.append(f"--config.{field}.path is required (the {field.rsplit('.', 1)[-1]} dataset)")
        return
    if not _enum(errors, f"{field}.kind", d.kind, DATA_KINDS):
        return
    path = d.path
    where = f"--config.{field}.path={path!r}"
    if d.kind in ("image_folder", "flat_folder"):
        if not os.path.isdir(path):
            errors.append(f"{where}: no such directory" if not os.path.exists(path) else
                          f"{where}: not a directory (kind={d.kind} reads a folder of images)")
    elif d.kind == "recordio":
        base = path[:-4] if path.endswith((".rec", ".idx")) else path
        if not (os.path.isfile(base + ".rec") or os.path.isfile(path) or os.path.isdir(path)):
            errors.append(f"{where}: no such RecordIO file (give train.rec, its prefix, or the folder holding it)")
    elif d.kind == "tfds":
        if not d.tfds_data_dir and not os.path.isdir(path):
            errors.append(f"--config.{field}.tfds_data_dir is required with kind=tfds (or give a prepared "
                          "dataset directory as path)")
        elif d.tfds_data_dir and not os.path.isdir(d.tfds_data_dir):
            errors.append(f"--config.{field}.tfds_data_dir={d.tfds_data_dir!r}: no such directory")
    elif d.kind == "verification_bin":
        if not os.path.isfile(path):
            errors.append(f"{where}: no such verification bin file")
    elif d.kind == "store":
        if not os.path.isfile(os.path.join(path, "manifest.json")):
            errors.append(f"{where}: not a synleak-embed store (no manifest.json)")
    elif d.kind == "embeddings":
        if not os.path.isfile(path):
            errors.append(f"{where}: no such file (kind=embeddings reads an [N, D] .npy)")
        elif not path.endswith(".npy"):
            errors.append(f"{where}: kind=embeddings reads a .npy file")
        for sub in ("labels", "names"):
            if d[sub] and not os.path.isfile(d[sub]):
                errors.append(f"--config.{field}.{sub}={d[sub]!r}: no such file")
    if d.kind != "embeddings":
        for sub in ("labels", "names"):
            if d[sub]:
                errors.append(f"--config.{field}.{sub} is only used with kind=embeddings (kind is {d.kind})")
    if d.records and (":" not in str(d.records) or d.kind not in IMAGE_KINDS):
        errors.append(f"--config.{field}.records={d.records!r}: 'start:stop' (indices, or fractions such as "
                      "0.95:1.0) of an image dataset")
    _enum(errors, f"{field}.align", d.align, ALIGNS)
    _enum(errors, f"{field}.align_policy", d.align_policy, ALIGN_POLICIES)
    _enum(errors, f"{field}.channel_order", d.channel_order, CHANNEL_ORDERS)
    _enum(errors, f"{field}.fingerprint", d.fingerprint, FINGERPRINTS)
    _enum(errors, f"{field}.label_from", d.label_from, LABEL_FROM)
    _positive_int(errors, f"{field}.max_pixels", d.max_pixels, 0)


def _embed_errors(errors: list[str], prefix: str, e) -> None:
    _positive_int(errors, f"{prefix}batch_size", e.batch_size)
    _positive_int(errors, f"{prefix}chunk_batches", e.chunk_batches)
    _positive_int(errors, f"{prefix}num_workers", e.num_workers, 0)
    _positive_int(errors, f"{prefix}read_threads", e.read_threads, 0)
    _enum(errors, f"{prefix}compute_dtype", e.compute_dtype, COMPUTE_DTYPES)
    _enum(errors, f"{prefix}storage_dtype", e.storage_dtype, STORAGE_DTYPES)


def _distributed_errors(errors: list[str], d) -> None:
    _enum(errors, "distributed.mode", d.mode, DISTRIBUTED_MODES)
    _positive_int(errors, "distributed.num_processes", d.num_processes, 0)
    if isinstance(d.process_id, bool) or not isinstance(d.process_id, int) or d.process_id < -1:
        errors.append(f"--config.distributed.process_id={d.process_id!r}: must be -1 (auto) or a rank >= 0")


def matcher_names(cfg) -> list[str]:
    """The audit's matchers (one pseudo-matcher, ``embeddings.name``, when the datasets are embeddings)."""
    if uses_embeddings(cfg):
        return [cfg.embeddings.name or "embeddings"]
    return [m.strip() for m in str(cfg.matchers).split(",") if m.strip()]


def uses_embeddings(cfg) -> bool:
    return any(cfg.data[r].kind == "embeddings" and cfg.data[r].path for r in ("synthetic", "members", "nonmembers"))


def _weights_errors(errors: list[str], cfg) -> None:
    from synleak_jax.models import registry  # the registry's names (flax: import only when validating)

    names = matcher_names(cfg)
    if not names:
        errors.append("--config.matchers is empty: name at least one registered model (e.g. dlib_resnet_v1)")
    known = set(registry.available())
    given = [r for r in ("synthetic", "members") if cfg.data[r].path]
    store_only = bool(given) and all(cfg.data[r].kind == "store" for r in given)
    for name in names:
        if name not in known:
            errors.append(f"--config.matchers: unknown matcher {name!r}; registered: {', '.join(sorted(known))}")
            continue
        w = cfg.weights.get(name, "")
        if not w:
            if name != "dlib_resnet_v1" and not store_only:
                errors.append(f"--config.weights.{name} is required: the weights file of matcher {name} (see "
                              "docs/audit.md for where each is published)")
        elif not os.path.exists(w):
            errors.append(f"--config.weights.{name}={w!r}: no such file or directory")


def validate_audit(cfg) -> None:
    """Raises :class:`ConfigError` listing every invalid field of an audit config (before any work)."""
    errors: list[str] = []
    roles = ("synthetic", "members", "nonmembers")
    for role in roles:
        _data_errors(errors, f"data.{role}", cfg.data[role], required=role != "nonmembers" and not cfg.demo.enabled)
    kinds = {cfg.data[r].kind for r in roles if cfg.data[r].path}
    if "embeddings" in kinds and kinds != {"embeddings"}:
        errors.append("--config.data.*.kind: kind=embeddings cannot be mixed with other kinds (features from one "
                      "model are only comparable with features from the same model); give every dataset as "
                      "kind=embeddings")
    if "embeddings" in kinds:
        _enum(errors, "embeddings.metric", cfg.embeddings.metric, METRICS)
    else:
        _weights_errors(errors, cfg)
    if "store" in kinds and len(matcher_names(cfg)) != 1:
        errors.append("--config.matchers: kind=store datasets were embedded by one matcher; name exactly that one")
    _embed_errors(errors, "embed.", cfg.embed)
    _distributed_errors(errors, cfg.distributed)
    _positive_int(errors, "face_check.sample_size", cfg.face_check.sample_size)
    if not (isinstance(cfg.face_check.tolerance, (int, float)) and cfg.face_check.tolerance > 0):
        errors.append(f"--config.face_check.tolerance={cfg.face_check.tolerance!r}: must be > 0")
    _positive_int(errors, "channel_check.identities", cfg.channel_check.identities, 2)
    _positive_int(errors, "channel_check.images_per_identity", cfg.channel_check.images_per_identity, 2)
    cal = cfg.calibration
    if _enum(errors, "calibration.source", cal.source, CALIBRATION_SOURCES):
        if cal.source == "verification_bin":
            if "embeddings" in kinds:
                errors.append("--config.calibration.source=verification_bin needs a matcher (not kind=embeddings)")
            elif not cal.path or not os.path.isfile(cal.path):
                errors.append(f"--config.calibration.path={cal.path!r}: give an existing verification bin (e.g. "
                              "lfw.bin) for calibration.source=verification_bin")
        elif cal.source == "nonmembers" and not cfg.data.nonmembers.path and not cfg.demo.enabled:
            errors.append("--config.calibration.source=nonmembers but --config.data.nonmembers.path is empty")
    _enum(errors, "calibration.align", cal.align, ALIGNS)
    _positive_int(errors, "calibration.max_images", cal.max_images, 0)
    a = cfg.attack
    fmrs = _rates(errors, "attack.fmrs", a.fmrs)
    _rates(errors, "attack.membership_fprs", a.membership_fprs, allow_empty=True)
    _positive_int(errors, "attack.k", a.k)
    _positive_int(errors, "attack.membership_topk", a.membership_topk)
    if isinstance(a.nbins, int) and (a.nbins < 16 or a.nbins & (a.nbins - 1)):
        errors.append(f"--config.attack.nbins={a.nbins!r}: must be a power of two >= 16")
    _enum(errors, "attack.identity_relation", str(a.identity_relation).lower(), IDENTITY_RELATION)
    _enum(errors, "attack.precision", a.precision, PRECISIONS)
    if a.agreement_fmr and fmrs and not any(math.isclose(float(a.agreement_fmr), f) for f in fmrs):
        errors.append(f"--config.attack.agreement_fmr={a.agreement_fmr!r} is not among --config.attack.fmrs")
    _positive_int(errors, "report.gallery_n", cfg.report.gallery_n, 0)
    for name in ("confidence", "alpha", "delta"):
        v = cfg.report[name]
        if not (isinstance(v, (int, float)) and 0 < v < 1):
            errors.append(f"--config.report.{name}={v!r}: must be in (0, 1)")
    _enum(errors, "report.test", cfg.report.test, ("auto", "boschloo", "fisher"))
    _positive_int(errors, "report.bootstrap_replicates", cfg.report.bootstrap_replicates, 10)
    _positive_int(errors, "report.per_group_top", cfg.report.per_group_top, 0)
    r = cfg.remedy
    if _enum(errors, "remedy.export", r.export, REMEDY_EXPORTS) and r.export:
        syn_kind = cfg.data.synthetic.kind
        if r.export in ("copy", "hardlink") and syn_kind not in ("image_folder", "flat_folder") and \
                not cfg.demo.enabled:
            errors.append(f"--config.remedy.export={r.export}: needs an image-folder synthetic set "
                          f"(data.synthetic.kind is {syn_kind})")
        if r.export == "recordio" and syn_kind not in IMAGE_KINDS:
            errors.append(f"--config.remedy.export=recordio: needs image records (data.synthetic.kind is {syn_kind})")
    if r.matcher and r.matcher not in matcher_names(cfg):
        errors.append(f"--config.remedy.matcher={r.matcher!r} is not among the matchers "
                      f"({', '.join(matcher_names(cfg))})")
    if r.fmr and fmrs and not any(math.isclose(float(r.fmr), f) for f in fmrs):
        errors.append(f"--config.remedy.fmr={r.fmr!r} is not among --config.attack.fmrs")
    if errors:
        raise ConfigError(errors)


def validate_embed(cfg) -> None:
    """Raises :class:`ConfigError` listing every invalid field of a synleak-embed config."""
    from synleak_jax.models import registry

    errors: list[str] = []
    if cfg.data.kind in ("store", "embeddings"):
        errors.append(f"--config.data.kind={cfg.data.kind}: synleak-embed embeds images; choose one of "
                      f"{', '.join(IMAGE_KINDS)}")
    else:
        _data_errors(errors, "data", cfg.data, required=True)
    if cfg.model not in registry.available():
        errors.append(f"--config.model: unknown matcher {cfg.model!r}; registered: "
                      f"{', '.join(sorted(registry.available()))}")
    if cfg.weights and cfg.random_init:
        errors.append("--config.random_init=True cannot be combined with --config.weights")
    elif cfg.weights and not os.path.exists(cfg.weights):
        errors.append(f"--config.weights={cfg.weights!r}: no such file or directory")
    elif not cfg.weights and not cfg.random_init and cfg.model != "dlib_resnet_v1":
        errors.append("--config.weights is required (an empty value is only allowed with --config.random_init=True, "
                      "for tests and benchmarks)")
    if not cfg.output:
        errors.append("--config.output (the store directory) is required")
    _embed_errors(errors, "", cfg)
    _distributed_errors(errors, cfg.distributed)
    if errors:
        raise ConfigError(errors)


def validate_knn(cfg) -> None:
    """Raises :class:`ConfigError` listing every invalid field of a synleak-knn config."""
    errors: list[str] = []
    for what in ("queries", "database"):
        p = cfg[what]
        if not p:
            errors.append(f"--config.{what} is required (an embedding store directory or a .npy file)")
        elif not (os.path.isfile(os.path.join(p, "manifest.json")) or (p.endswith(".npy") and os.path.isfile(p))):
            errors.append(f"--config.{what}={p!r}: neither an embedding store directory nor a .npy file")
    if not cfg.output:
        errors.append("--config.output is required (a directory)")
    _positive_int(errors, "knn.k", cfg.knn.k)
    _positive_int(errors, "knn.write_block", cfg.knn.write_block)
    _enum(errors, "knn.precision", cfg.knn.precision, PRECISIONS)
    if errors:
        raise ConfigError(errors)
