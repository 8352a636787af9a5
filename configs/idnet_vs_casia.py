"""Preset: IDnet vs its real source (CASIA), as in "Unveiling Synthetic Faces" (Otroshi Shahreza & Marcel).

What you bring (nothing is downloaded):
* synthetic set: IDnet release (10.5k classes x 50), aligned 112x112 folders <class>/<image>, classes follow CASIA labels (class folders named by the CASIA label id; label_from=name).
  --config.data.synthetic.path=/data/idnet
* real training images (members): see configs help in synleak_jax/attack/config.py
  (CASIA RecordIO: --config.data.members.path=/data/faces_webface_112x112/train.rec).
* non-members (membership inference): IDnet was trained on all of CASIA: no CASIA non-members exist; leave empty (leakage only) or give outside faces (caveat).
  --config.data.nonmembers.path=...   (empty = leakage only; the report says so)
* matcher weights: AdaFace IR-101 trained on WebFace12M (the paper's matcher), the Lightning checkpoint from the
  AdaFace project page (e.g. adaface_ir101_webface12m.ckpt): --config.weights.adaface_ir101=/w/adaface_ir101_webface12m.ckpt

    synleak-audit --config=configs/idnet_vs_casia.py --config.data.synthetic.path=... --config.data.members.path=... \
        --config.weights.adaface_ir101=...

Calibration: all impostor pairs of the member set (set --config.calibration.max_images=N for a seeded subset
on small machines). Embedding stores are reused across audits with --config.stores_dir=/stores.
"""

from synleak_jax.attack.config import unveiling_preset


def get_config():
    c = unveiling_preset("idnet_vs_casia", "IDnet", "casia",
                         "IDnet release (10.5k classes x 50), aligned 112x112 folders <class>/<image>, classes follow CASIA labels (class folders named by the CASIA label id; label_from=name)",
                         "IDnet was trained on all of CASIA: no CASIA non-members exist; leave empty (leakage only) or give outside faces (caveat)")
    c.attack.identity_relation = "on"
    c.data.synthetic.label_from = "name"  # class folders named by CASIA label: 0 ... 10571
    return c
