"""Preset: IDiff-Face (Uniform) vs its real source (FFHQ), as in "Unveiling Synthetic Faces" (Otroshi Shahreza & Marcel).

How IDiff-Face is published (docs/releases.md): 10k synthetic identities x 50 images, 112x112, aligned with MTCNN
to the ArcFace template (identities whose alignment failed are plain resizes, not aligned: the face check reports
the share), true-colour PNGs. Its README says identity folders; its published split script writes one flat folder
of ``<id>_<i>.png``: if your copy is flat, give it as kind=flat_folder (the identities are synthetic and not used
here). The generator trained on FFHQ's 128x128 thumbnails of the same 70,000 images: every FFHQ image is a member.

What you bring (nothing is downloaded):
* synthetic set: --config.data.synthetic.path=/data/idiff_uniform
* members: --config.data.members.path=/data/ffhq/images1024x1024 (MTCNN detect + align in the audit; run
  synleak-fetch-mtcnn once)
* non-members: no FFHQ non-members exist (all 70k were used); another unaligned face collection (distribution-shift
  caveat) or leave empty: --config.data.nonmembers.path=...
* matcher weights: --config.weights.adaface_ir101=/w/adaface_ir101_webface12m.ckpt

    synleak-audit --config=idiff_uniform_vs_ffhq --config.data.synthetic.path=... --config.data.members.path=... \
        --config.weights.adaface_ir101=...
"""

from synleak_jax.config import unveiling_preset


def idiff_config(name: str, variant: str):
    """Both IDiff-Face presets (Uniform and Two-Stage: the same layout, members and matcher)."""
    c = unveiling_preset(
        name, f"IDiff-Face ({variant})", "ffhq",
        f"IDiff-Face {variant} release: 10k identities x 50, 112x112 aligned (failed alignments resized), "
        "true-colour PNGs, identity folders (or one flat folder of <id>_<i>.png)",
        "the generator saw all 70k FFHQ images: no FFHQ non-members; another face collection (distribution shift) "
        "or none")
    c.data.synthetic.channel_order = "rgb"
    c.attack.identity_relation = "off"
    return c


def get_config():
    return idiff_config("idiff_uniform_vs_ffhq", "Uniform")
