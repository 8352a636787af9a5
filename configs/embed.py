"""Default config of ``synleak-embed`` (override any field with ``--config.<field>=...``).

    synleak-embed --config=configs/embed.py --config.data.kind=image_folder --config.data.path=/data/casia \
        --config.model=iresnet100 --config.weights=/w/glint360k_r100.pth --config.output=/stores/casia_r100
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.data = ml_collections.ConfigDict()
    # image_folder (root/<class>/<img>), flat_folder (unlabelled), recordio (insightface train.rec prefix),
    # tfds (registered array_record builder; path = name[:split], tfds_data_dir below), verification_bin.
    c.data.kind = "image_folder"
    c.data.path = ""
    c.data.tfds_data_dir = ""
    # "none": images are already aligned crops; they are only resized to the model's input size.
    # "mtcnn": detect faces (MTCNN, weights from synleak-fetch-mtcnn) and align to the model's template;
    # images without a face become rejects.
    c.data.align = "none"
    c.data.align_policy = "largest"  # or "best" (highest detector score)
    c.data.max_pixels = 0  # 0 = the data layer's default decompression-bomb limit
    c.model = "iresnet50"
    c.weights = ""  # path of a weights file (torch .pth/.pt/.ckpt, .onnx, dlib .dat, orbax dir)
    c.random_init = False  # allowed only without weights (tests/benchmarks); labelled in the manifest
    c.seed = 0
    c.output = ""
    c.batch_size = 128  # global: all devices of all processes; multiple of the device count
    c.chunk_batches = 16  # global batches per store chunk (the unit of resume)
    c.compute_dtype = ""  # "" = bfloat16 on GPU/TPU, float32 on CPU
    c.storage_dtype = "float32"  # or float16
    c.flip = True  # flip-sum TTA, as insightface evaluates
    c.num_workers = 0  # grain decoding processes per host
    c.read_threads = 0
    c.overwrite = False
    c.imports = ""  # comma-separated modules to import first (e.g. ones that register extra backbones)
    c.progress_every_s = 10.0
    c.distributed = ml_collections.ConfigDict()
    c.distributed.mode = "auto"  # auto | on | off (see synleak_jax/embed/distributed.py)
    c.distributed.coordinator_address = ""
    c.distributed.num_processes = 0
    c.distributed.process_id = -1
    return c
