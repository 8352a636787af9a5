"""Converter family "facenet": facenet-pytorch Inception-ResNet-v1 state dicts -> Flax variables.

Users bring the released state dicts (``20180402-114759-vggface2.pt``, ``20180408-102900-casia-webface.pt``;
torch zip files read by ``weights.torch_pickle``). Path rule: a PyTorch module path becomes the Flax path
with every Sequential index joined to its parent by "_" (``repeat_2.3.branch1.2.conv`` ->
``repeat_2_3/branch1_2/conv``; see ``models/facenet.py``). Leaves:

* conv ``weight`` [O, I, kh, kw] -> ``kernel`` [kh, kw, I, O]; conv ``bias`` -> ``bias``;
* BN ``weight``/``bias`` -> params ``scale``/``bias``; ``running_mean``/``running_var`` -> batch_stats
  ``mean``/``var``; ``num_batches_tracked`` is a training counter and is skipped;
* ``last_linear.weight`` [512, 1792] -> Dense ``kernel`` [1792, 512].

``logits.weight``/``logits.bias`` (the 8,631-class VGGFace2 or 10,575-class CASIA training classifier) are
skipped on purpose: they map embeddings to the training identities, are not part of the embedding
network, and the audit never uses class scores. Any other unknown key is an error.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from synleak_jax.weights.converters import register_converter
from synleak_jax.weights.mapping import SourceTensors, WeightMappingError, conv_kernel_oihw_to_hwio, linear_oi_to_io

MODEL_NAME = "facenet_inception_resnet_v1"
# Training-only classifier heads, skipped deliberately (see module docstring).
SKIPPED_PREFIXES = ("logits.",)
_BN_LEAVES = {"weight": ("params", "scale"), "bias": ("params", "bias"),
              "running_mean": ("batch_stats", "mean"), "running_var": ("batch_stats", "var")}


def flax_module_path(torch_module_path: str) -> str:
    """``repeat_1.0.branch1.1.conv`` -> ``repeat_1_0/branch1_1/conv`` (indices join their parent)."""
    parts: list[str] = []
    for p in torch_module_path.split("."):
        if p.isdigit() and parts:
            parts[-1] = f"{parts[-1]}_{p}"
        else:
            parts.append(p)
    return "/".join(parts)


def convert(src: SourceTensors, model_name: str = MODEL_NAME) -> dict[str, np.ndarray]:
    if model_name != MODEL_NAME:
        raise WeightMappingError(f"{src.source}: the facenet converter builds {MODEL_NAME}, not {model_name!r}")
    out: dict[str, np.ndarray] = {}
    for key in list(src.keys()):
        if key.startswith(SKIPPED_PREFIXES) or key.endswith("num_batches_tracked"):
            src.skip(key)
            continue
        module, leaf = key.rsplit(".", 1)
        path = flax_module_path(module)
        is_bn = module == "last_bn" or module.endswith(".bn") or module == "bn"
        if is_bn:
            if leaf not in _BN_LEAVES:
                continue  # left unused -> reported by check_all_used
            collection, name = _BN_LEAVES[leaf]
            out[f"{collection}/{path}/{name}"] = src.get(key)
        elif leaf == "weight":
            w = src.get(key)
            if w.ndim == 4:
                out[f"params/{path}/kernel"] = conv_kernel_oihw_to_hwio(w)
            elif w.ndim == 2:
                out[f"params/{path}/kernel"] = linear_oi_to_io(w)
            else:
                raise WeightMappingError(f"{src.source}: {key!r} has unexpected rank {w.ndim}")
        elif leaf == "bias":
            out[f"params/{path}/bias"] = src.get(key)
    return out


def detect(shapes: Mapping[str, tuple[int, ...]]) -> str | None:
    """A facenet-pytorch Inception-ResNet-v1 state dict: its stem conv and 1792->512 projection."""
    if tuple(shapes.get("conv2d_1a.conv.weight", ())) == (32, 3, 3, 3) and tuple(
        shapes.get("last_linear.weight", ())
    ) == (512, 1792):
        return MODEL_NAME
    return None


register_converter("facenet", convert, detect)
