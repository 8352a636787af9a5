"""Default config of ``synleak-embed`` (override any field with ``--config.<field>=...``).

    synleak-embed --config=configs/embed.py --config.data.kind=image_folder --config.data.path=/data/casia \
        --config.model=iresnet100 --config.weights=/w/glint360k_r100.pth --config.output=/stores/casia_r100
"""

from synleak_jax.config import embed_config


def get_config():
    return embed_config()
