"""Preset: IDiff-Face (Two-Stage) vs its real source (FFHQ), as in "Unveiling Synthetic Faces" (Otroshi Shahreza & Marcel).

The same release layout, members and weights as the Uniform variant (preset ``idiff_uniform_vs_ffhq``: read its
description); only the synthetic set differs:

* synthetic set: IDiff-Face Two-Stage, --config.data.synthetic.path=/data/idiff_twostage
* members: --config.data.members.path=/data/ffhq/images1024x1024
* matcher weights: --config.weights.adaface_ir101=/w/adaface_ir101_webface12m.ckpt

    synleak-audit --config=idiff_twostage_vs_ffhq --config.data.synthetic.path=... --config.data.members.path=... \
        --config.weights.adaface_ir101=...
"""

from synleak_jax.configs.idiff_uniform_vs_ffhq import idiff_config


def get_config():
    return idiff_config("idiff_twostage_vs_ffhq", "Two-Stage")
