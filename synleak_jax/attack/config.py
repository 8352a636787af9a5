"""The audit config schema (``ml_collections.ConfigDict``); presets in ``configs/`` start from :func:`base_config`.

Every field can be overridden on the command line: ``synleak-audit --config=configs/x.py --config.attack.k=20``.
"""

from __future__ import annotations

import ml_collections


def _data(name: str = "", kind: str = "image_folder", labelled: bool = True, description: str = ""):
    d = ml_collections.ConfigDict()
    d.name = name
    d.kind = kind  # image_folder (root/<class>/<img>), flat_folder, recordio (insightface train.rec), tfds
    d.path = ""
    d.labelled = labelled  # use the source's class labels as identities
    d.tfds_data_dir = ""
    d.align = "none"  # none: already aligned face crops (resized only); mtcnn: detect + align (e.g. raw FFHQ)
    d.label_from = "index"  # index: the source's labels; name: class folder names are integer identity ids
    d.description = description
    return d


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.title = "synleak_jax audit"
    c.output_dir = "synleak_out/audit"
    c.stores_dir = ""  # "" = <output_dir>/stores; point several audits at one folder to share embedding stores
    c.notes = ()  # free-text notes copied into the report
    c.matchers = "adaface_ir101"  # comma-separated registry names
    c.weights = ml_collections.ConfigDict()  # weights.<matcher> = path (dlib_resnet_v1 defaults to the shipped file)
    c.weights.adaface_ir101 = ""
    c.weights.dlib_resnet_v1 = ""
    c.weights.iresnet100 = ""
    c.weights.iresnet50 = ""
    c.weights.facenet_inception_resnet_v1 = ""
    c.weights.sphereface20 = ""

    c.data = ml_collections.ConfigDict()
    c.data.synthetic = _data("synthetic", "image_folder", True, "the synthetic dataset under audit")
    c.data.members = _data("members", "image_folder", True, "real images the generator was trained on")
    c.data.nonmembers = _data("nonmembers", "image_folder", True, "held-out real images the generator never saw")

    c.embed = ml_collections.ConfigDict()
    c.embed.batch_size = 64  # global batch; a multiple of the device count
    c.embed.chunk_batches = 16  # batches per store chunk (unit of resume)
    c.embed.flip = True  # flip TTA (sum + L2 for cosine matchers, mean for euclidean ones)

    c.calibration = ml_collections.ConfigDict()
    c.calibration.source = "members"  # members | nonmembers | real_all (members + non-members) | verification_bin
    c.calibration.path = ""  # verification_bin: an insightface bin (lfw.bin: 6,000 pairs)
    c.calibration.align = "none"  # verification_bin images: none (aligned 112x112, as insightface ships) | mtcnn
    c.calibration.max_images = 0  # 0 = all; else a seeded random subset (all pairs of it)
    c.calibration.seed = 0
    c.calibration.shared_label_space = False  # real_all: members and non-members labels name the same people
    c.calibration.note = ""

    c.attack = ml_collections.ConfigDict()
    c.attack.fmrs = (1e-2, 1e-3, 1e-4)
    c.attack.published_threshold = True  # also report the matcher's published threshold (dlib 0.6)
    c.attack.k = 10  # neighbours per query for the pair lists
    c.attack.membership_topk = 5  # second membership score: mean of the top-k similarities
    c.attack.membership_fprs = (1e-3, 1e-2)
    c.attack.identity_relation = "auto"  # auto (when both sets are labelled) | on | off
    c.attack.agreement_fmr = 0.0  # 0 = the first FMR
    c.attack.nbins = 1 << 16
    c.attack.block = 1024

    c.report = ml_collections.ConfigDict()
    c.report.gallery_n = 24
    c.report.per_group_top = 20

    c.remedy = ml_collections.ConfigDict()
    c.remedy.emit_filtered_list = False  # also --emit_filtered_list
    c.remedy.matcher = ""  # "" = first matcher
    c.remedy.fmr = 0.0  # 0 = first FMR
    c.remedy.export = ""  # "" | copy | hardlink (image-folder synthetic sets) | recordio (train.rec/.idx)

    c.demo = ml_collections.ConfigDict()
    c.demo.enabled = False
    c.demo.n_members = 50
    c.demo.n_synthetic = 200
    c.demo.steps = 1000
    c.demo.bandwidth = 0.25
    c.demo.seed = 0
    return c


CASIA_HELP = ("CASIA-WebFace as insightface's RecordIO release (faces_webface_112x112/train.rec + train.idx, "
              "10,572 identities, ~494k aligned 112x112 images): --config.data.members.path=/data/faces_webface_112x112/train.rec")
FFHQ_HELP = ("FFHQ (70,000 unaligned 1024x1024 PNGs, no identity labels) as a flat folder; detect + align with MTCNN "
             "inside the audit (data.members.align=mtcnn; run synleak-fetch-mtcnn once)")


def unveiling_preset(name: str, synthetic: str, real: str, synthetic_help: str, nonmember_help: str):
    """A preset of the Unveiling study (Otroshi Shahreza & Marcel): one synthetic dataset vs its real source,
    matcher AdaFace IR-101 trained on WebFace12M (the paper's matcher; bring the .ckpt)."""
    c = base_config()
    c.title = f"synleak_jax audit: {synthetic} vs {'CASIA-WebFace' if real == 'casia' else 'FFHQ'}"
    c.output_dir = f"synleak_out/{name}"
    c.matchers = "adaface_ir101"
    c.data.synthetic.name = synthetic
    c.data.synthetic.kind = "image_folder"  # releases are aligned 112x112 folders <class>/<image>
    c.data.synthetic.labelled = True
    c.data.synthetic.description = synthetic_help
    if real == "casia":
        c.data.members.name = "CASIA-WebFace"
        c.data.members.kind = "recordio"
        c.data.members.labelled = True
        c.data.members.description = CASIA_HELP
        c.calibration.source = "members"  # all impostor pairs of CASIA (labelled identities)
    else:
        c.data.members.name = "FFHQ"
        c.data.members.kind = "flat_folder"
        c.data.members.labelled = False
        c.data.members.align = "mtcnn"
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
