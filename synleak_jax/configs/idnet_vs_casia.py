"""Preset: IDnet vs its real source (CASIA-WebFace), as in "Unveiling Synthetic Faces" (Otroshi Shahreza & Marcel).

How IDnet is published (docs/releases.md): identity folders ``<ID:06d>/<ID:06d>_normal_<i:03d>.jpg`` (10.5k x 50),
generated at 128x128 and MTCNN-aligned to 112x112 before saving, true-colour; class c from CASIA label c as for
SFace (label correspondence with insightface's RecordIO unconfirmed): ``label_from=name``, identity relation on.

What you bring (nothing is downloaded):
* synthetic set: --config.data.synthetic.path=/data/idnet
* members: --config.data.members.path=/data/faces_webface_112x112/train.rec
* non-members: IDnet trained on all of CASIA: none from CASIA (leave empty, or outside faces with the
  distribution-shift caveat): --config.data.nonmembers.path=...
* matcher weights: --config.weights.adaface_ir101=/w/adaface_ir101_webface12m.ckpt

    synleak-audit --config=idnet_vs_casia --config.data.synthetic.path=... --config.data.members.path=... \
        --config.weights.adaface_ir101=...
"""

from synleak_jax.config import unveiling_preset


def get_config():
    c = unveiling_preset(
        "idnet_vs_casia", "IDnet", "casia",
        "IDnet release: folders <ID:06d>/<ID>_normal_<i>.jpg, class c from CASIA label c (label_from=name), "
        "aligned 112x112, true-colour",
        "IDnet was trained on all of CASIA: no CASIA non-members; outside faces (distribution shift) or none")
    c.data.synthetic.label_from = "name"
    c.data.synthetic.channel_order = "rgb"
    c.attack.identity_relation = "on"
    return c
