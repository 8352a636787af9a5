"""Preset: SFace vs its real source (CASIA), as in "Unveiling Synthetic Faces" (Otroshi Shahreza & Marcel).

What you bring (nothing is downloaded):
* synthetic set: SFace release (10,572 classes x 10/20/40/60 images), aligned 112x112 folders <class>/<image>, class c generated from CASIA label c (class folders named by the CASIA label id; label_from=name).
  --config.data.synthetic.path=/data/sface
* real training images (members): see configs help in synleak_jax/attack/config.py
  (CASIA RecordIO: --config.data.members.path=/data/faces_webface_112x112/train.rec).
* non-members (membership inference): SFace was trained on all of CASIA: there are no CASIA non-members; leave empty (leakage only) or give real faces of people outside CASIA (distribution-shift caveat).
  --config.data.nonmembers.path=...   (empty = leakage only; the report says so)
* matcher weights: AdaFace IR-101 trained on WebFace12M (the paper's matcher), the Lightning checkpoint from the
  AdaFace project page (e.g. adaface_ir101_webface12m.ckpt): --config.weights.adaface_ir101=/w/adaface_ir101_webface12m.ckpt

    synleak-audit --config=configs/sface_vs_casia.py --config.data.synthetic.path=... --config.data.members.path=... \
        --config.weights.adaface_ir101=...

Calibration: all impostor pairs of the member set (set --config.calibration.max_images=N for a seeded subset
on small machines). Embedding stores are reused across audits with --config.stores_dir=/stores.
"""

from synleak_jax.attack.config import unveiling_preset


def get_config():
    c = unveiling_preset("sface_vs_casia", "SFace", "casia",
                         "SFace release (10,572 classes x 10/20/40/60 images), aligned 112x112 folders <class>/<image>, class c generated from CASIA label c (class folders named by the CASIA label id; label_from=name)",
                         "SFace was trained on all of CASIA: there are no CASIA non-members; leave empty (leakage only) or give real faces of people outside CASIA (distribution-shift caveat)")
    c.attack.identity_relation = "on"
    c.data.synthetic.label_from = "name"  # class folders named by CASIA label: 0 ... 10571
    return c
