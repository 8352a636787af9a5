"""Preset: DCFace vs its real source (CASIA), as in "Unveiling Synthetic Faces" (Otroshi Shahreza & Marcel).

What you bring (nothing is downloaded):
* synthetic set: DCFace release (0.5M: 10k ids x 50, or 1.2M), aligned 112x112 folders <class>/<image>; class ids are synthetic (not CASIA labels), so the identity relation is off.
  --config.data.synthetic.path=/data/dcface
* real training images (members): see configs help in synleak_jax/attack/config.py
  (CASIA RecordIO: --config.data.members.path=/data/faces_webface_112x112/train.rec).
* non-members (membership inference): DCFace trained on CASIA-WebFace; its held-out 5% CASIA split (images DCFace never saw) are the natural non-members: export them as an image folder.
  --config.data.nonmembers.path=...   (empty = leakage only; the report says so)
* matcher weights: AdaFace IR-101 trained on WebFace12M (the paper's matcher), the Lightning checkpoint from the
  AdaFace project page (e.g. adaface_ir101_webface12m.ckpt): --config.weights.adaface_ir101=/w/adaface_ir101_webface12m.ckpt

    synleak-audit --config=configs/dcface_vs_casia.py --config.data.synthetic.path=... --config.data.members.path=... \
        --config.weights.adaface_ir101=...

Calibration: all impostor pairs of the member set (set --config.calibration.max_images=N for a seeded subset
on small machines). Embedding stores are reused across audits with --config.stores_dir=/stores.
"""

from synleak_jax.attack.config import unveiling_preset


def get_config():
    c = unveiling_preset("dcface_vs_casia", "DCFace", "casia",
                         "DCFace release (0.5M: 10k ids x 50, or 1.2M), aligned 112x112 folders <class>/<image>; class ids are synthetic (not CASIA labels), so the identity relation is off",
                         "DCFace trained on CASIA-WebFace; its held-out 5% CASIA split (images DCFace never saw) are the natural non-members: export them as an image folder")
    c.attack.identity_relation = "off"
    return c
