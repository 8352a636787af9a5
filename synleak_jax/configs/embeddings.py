"""Preset: an audit from embeddings — features you already hold, no images, no matcher run here.

Researchers often hold pre-extracted features (published ArcFace/AdaFace features of a synthetic set, their own
pipeline's output). Give every dataset as an [N, D] float .npy (row i = image i), optionally with identity labels
([N] integer .npy) and names (a text file, one name per row, shown in pairs.csv and the report):

    synleak-audit --config=embeddings \
        --config.data.synthetic.path=/feat/dcface.npy --config.data.synthetic.names=/feat/dcface_names.txt \
        --config.data.members.path=/feat/casia.npy --config.data.members.labels=/feat/casia_labels.npy \
        --config.data.nonmembers.path=/feat/casia_heldout.npy \
        --config.embeddings.metric=cosine --config.embeddings.name=adaface_ir101

The features of all three sets must come from the same model (the report names it by embeddings.name). cosine:
rows are L2-normalised when read; euclidean: raw vectors, scores are minus the distance. pairs.csv keeps the row
numbers (syn_idx, real_idx) into your arrays; the gallery shows names instead of images.
"""

from synleak_jax.config import base_config


def get_config():
    c = base_config()
    c.preset = "embeddings"
    c.output_dir = "synleak_out/embeddings"
    for role in ("synthetic", "members", "nonmembers"):
        c.data[role].kind = "embeddings"
        c.data[role].name = role
        c.data[role].labelled = True  # used when a labels file is given
    c.data.synthetic.description = "features of the synthetic dataset under audit"
    c.data.members.description = "features of the real images the generator was trained on"
    c.data.nonmembers.description = "features of held-out real images the generator never saw"
    c.embeddings.metric = "cosine"
    c.embeddings.name = "embeddings"
    c.calibration.source = "members"
    c.attack.identity_relation = "auto"
    return c
