"""Preset: SFace vs its real source (CASIA-WebFace), as in "Unveiling Synthetic Faces" (Otroshi Shahreza & Marcel).

How SFace is published (docs/releases.md): identity folders ``<class:06d>/<image>.png`` (10,572 classes x 10/20/40/
60 images), MTCNN-aligned 112x112, true-colour RGB; class c was generated from CASIA label c (the paper's
statement; whether the generator's label order equals insightface's RecordIO label order is unconfirmed), so the
class folder name is the identity id (``label_from=name``) and the SFace identity relation is on.

What you bring (nothing is downloaded):
* synthetic set: --config.data.synthetic.path=/data/sface
* members: --config.data.members.path=/data/faces_webface_112x112/train.rec
* non-members: SFace was trained on all of CASIA: there are no CASIA non-members; leave empty (leakage only) or
  give real faces of people outside CASIA (distribution-shift caveat): --config.data.nonmembers.path=...
* matcher weights: --config.weights.adaface_ir101=/w/adaface_ir101_webface12m.ckpt

    synleak-audit --config=sface_vs_casia --config.data.synthetic.path=... --config.data.members.path=... \
        --config.weights.adaface_ir101=...
"""

from synleak_jax.config import unveiling_preset


def get_config():
    c = unveiling_preset(
        "sface_vs_casia", "SFace", "casia",
        "SFace release: folders <class:06d>/<image>.png, class c generated from CASIA label c (label_from=name), "
        "MTCNN-aligned 112x112, true-colour",
        "SFace was trained on all of CASIA: no CASIA non-members; real faces of people outside CASIA (distribution "
        "shift) or none")
    c.data.synthetic.label_from = "name"
    c.data.synthetic.channel_order = "rgb"
    c.attack.identity_relation = "on"
    return c
