"""Preset: GANDiffFace vs its real source (FFHQ), as in "Unveiling Synthetic Faces" (Otroshi Shahreza & Marcel).

How GANDiffFace is published: UNCONFIRMED (docs/releases.md: no public repository or release description could be
checked). The paper builds identities with StyleGAN3 (trained on FFHQ) and varies them with a DreamBooth-tuned
Stable Diffusion, whose outputs are typically 512x512 and unaligned. This preset therefore detects and aligns the
synthetic images with MTCNN (align=mtcnn) and reads them as a flat folder; if your copy is 112x112 aligned crops in
identity folders, set --config.data.synthetic.kind=image_folder --config.data.synthetic.align=none. The face
check reports which it is.

What you bring (nothing is downloaded):
* synthetic set: --config.data.synthetic.path=/data/gandiffface
* members: --config.data.members.path=/data/ffhq/images1024x1024 (MTCNN detect + align; synleak-fetch-mtcnn once)
* non-members: none from FFHQ (all 70k trained the StyleGAN3): --config.data.nonmembers.path=... or leave empty
* matcher weights: --config.weights.adaface_ir101=/w/adaface_ir101_webface12m.ckpt

    synleak-audit --config=gandiffface_vs_ffhq --config.data.synthetic.path=... --config.data.members.path=... \
        --config.weights.adaface_ir101=...
"""

from synleak_jax.config import unveiling_preset


def get_config():
    c = unveiling_preset(
        "gandiffface_vs_ffhq", "GANDiffFace", "ffhq",
        "GANDiffFace release: layout, size and alignment unconfirmed; read as unaligned images (detect + align)",
        "the StyleGAN3 saw all 70k FFHQ images: no FFHQ non-members; another face collection or none")
    c.data.synthetic.kind = "flat_folder"
    c.data.synthetic.labelled = False
    c.data.synthetic.align = "mtcnn"
    c.attack.identity_relation = "off"
    return c
