"""Preset: DCFace vs its real source (CASIA-WebFace), as in "Unveiling Synthetic Faces" (Otroshi Shahreza & Marcel).

How DCFace is published (docs/releases.md has the sources): an MXNet indexed RecordIO, ``<release>/record/file.rec``
+ ``file.idx`` + ``list.txt`` (``index<TAB><subject>/<image>.jpg``); identities live only in list.txt (every record
header carries label 0), which the reader picks up beside file.rec. 112x112 aligned JPEGs; their stored colour order
resolves to true RGB from DCFace's code (``channel_order=auto``; the audit's channel-order check confirms or
corrects it on your copy). DCFace trained on the first 95% of CASIA-WebFace's image records (its data module's
``0-0.95`` split): the members are those, the held-out last 5% are natural non-members, both read from the same
train.rec with ``records``.

What you bring (nothing is downloaded):
* synthetic set: --config.data.synthetic.path=/data/dcface_0.5m_oversample_xid/record/file.rec (0.5M: 10k ids x 50;
  or the 1.2M release)
* members: --config.data.members.path=/data/faces_webface_112x112/train.rec (records 0:0.95 by default)
* non-members: --config.data.nonmembers.path=/data/faces_webface_112x112/train.rec (records 0.95:1.0 by default)
* matcher weights: AdaFace IR-101 trained on WebFace12M (the paper's matcher), the Lightning checkpoint from the
  AdaFace project's model zoo (adaface_ir101_webface12m.ckpt): --config.weights.adaface_ir101=/w/adaface_ir101_webface12m.ckpt

    synleak-audit --config=dcface_vs_casia --config.data.synthetic.path=... --config.data.members.path=... \
        --config.data.nonmembers.path=... --config.weights.adaface_ir101=...

DCFace's identities are new people (filtered against CASIA at cosine 0.3 with an IR-101 WebFace4M AdaFace), so
the identity relation is off. Calibration: all impostor pairs of the members (--config.calibration.max_images=N
for a seeded subset on small machines). Share stores across audits with --config.stores_dir=/stores.
"""

from synleak_jax.config import unveiling_preset


def get_config():
    c = unveiling_preset(
        "dcface_vs_casia", "DCFace", "casia",
        "DCFace release as published: RecordIO record/file.rec + file.idx + list.txt (identities from list.txt), "
        "112x112 aligned JPEGs, true-colour (channel_order=auto; checked on a sample)",
        "CASIA-WebFace's last 5% of image records (records=0.95:1.0): DCFace's held-out split, never seen in training")
    c.data.synthetic.kind = "recordio"
    c.data.synthetic.channel_order = "auto"
    c.data.members.records = "0:0.95"
    c.data.nonmembers.kind = "recordio"
    c.data.nonmembers.records = "0.95:1.0"
    c.data.nonmembers.channel_order = "rgb"
    c.attack.identity_relation = "off"
    return c
