"""Converter family "sphereface": sphere20a state dicts (public PyTorch port) -> Flax variables.

Keys: ``conv{s}_{j}.{weight,bias}`` (conv, OIHW -> HWIO), ``relu{s}_{j}.weight`` (per-channel PReLU slope),
``fc5.{weight,bias}`` (Linear 21504 -> 512; the Flax module flattens in the original (C, H, W) order so the
kernel is the plain transpose).

``fc6.weight`` ([512, classes], the AngleLinear A-Softmax classifier over the CASIA-WebFace training
identities) is skipped on purpose: it only produces training logits, the embedding is ``fc5``'s output,
and the audit never uses class scores. Any other unknown key is an error.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from synleak_jax.models.sphereface import STAGES
from synleak_jax.weights.converters import register_converter
from synleak_jax.weights.mapping import SourceTensors, WeightMappingError, conv_kernel_oihw_to_hwio, linear_oi_to_io

MODEL_NAME = "sphereface20"
SKIPPED_KEYS = ("fc6.weight",)


def convert(src: SourceTensors, model_name: str = MODEL_NAME) -> dict[str, np.ndarray]:
    if model_name != MODEL_NAME:
        raise WeightMappingError(f"{src.source}: the sphereface converter builds {MODEL_NAME}, not {model_name!r}")
    out: dict[str, np.ndarray] = {}
    for stage, _, units in STAGES:
        for j in range(1, 2 + 2 * units):
            name = f"conv{stage}_{j}"
            out[f"params/{name}/kernel"] = conv_kernel_oihw_to_hwio(src.get(f"{name}.weight"))
            out[f"params/{name}/bias"] = src.get(f"{name}.bias")
            out[f"params/relu{stage}_{j}/negative_slope"] = src.get(f"relu{stage}_{j}.weight")
    out["params/fc5/kernel"] = linear_oi_to_io(src.get("fc5.weight", (512, 512 * 7 * 6)))
    out["params/fc5/bias"] = src.get("fc5.bias", (512,))
    for key in SKIPPED_KEYS:
        src.skip(key)
    return out


def detect(shapes: Mapping[str, tuple[int, ...]]) -> str | None:
    """A sphere20a state dict: its stem conv and the 21504 -> 512 fc5."""
    if tuple(shapes.get("conv1_1.weight", ())) == (64, 3, 3, 3) and tuple(shapes.get("fc5.weight", ())) == (
        512, 512 * 7 * 6
    ):
        return MODEL_NAME
    return None


register_converter("sphereface", convert, detect)
