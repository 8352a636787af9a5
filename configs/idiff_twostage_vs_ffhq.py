"""Preset: IDiff-Face (Two-Stage) vs its real source (FFHQ), as in "Unveiling Synthetic Faces" (Otroshi Shahreza & Marcel).

What you bring (nothing is downloaded):
* synthetic set: IDiff-Face Two-Stage release (10k ids x 50), aligned 112x112 folders <class>/<image> (synthetic identities).
  --config.data.synthetic.path=/data/idiff_twostage
* real training images (members): see configs help in synleak_jax/attack/config.py
  (FFHQ images1024x1024 folder: --config.data.members.path=/data/ffhq/images1024x1024 (MTCNN detect+align in the audit; run synleak-fetch-mtcnn once)).
* non-members (membership inference): The generator saw all 70k FFHQ images: no FFHQ non-members; give another face collection or leave empty.
  --config.data.nonmembers.path=...   (empty = leakage only; the report says so)
* matcher weights: AdaFace IR-101 trained on WebFace12M (the paper's matcher), the Lightning checkpoint from the
  AdaFace project page (e.g. adaface_ir101_webface12m.ckpt): --config.weights.adaface_ir101=/w/adaface_ir101_webface12m.ckpt

    synleak-audit --config=configs/idiff_twostage_vs_ffhq.py --config.data.synthetic.path=... --config.data.members.path=... \
        --config.weights.adaface_ir101=...

Calibration: all impostor pairs of the member set (set --config.calibration.max_images=N for a seeded subset
on small machines). Embedding stores are reused across audits with --config.stores_dir=/stores.
"""

from synleak_jax.attack.config import unveiling_preset


def get_config():
    c = unveiling_preset("idiff_twostage_vs_ffhq", "IDiff-Face (Two-Stage)", "ffhq",
                         "IDiff-Face Two-Stage release (10k ids x 50), aligned 112x112 folders <class>/<image> (synthetic identities)",
                         "The generator saw all 70k FFHQ images: no FFHQ non-members; give another face collection or leave empty")
    c.attack.identity_relation = "off"
    return c
