"""Converters from the original PyTorch state dicts of the ArcFace-family backbones to Flax variables.

Families (registered with :func:`synleak_jax.weights.converters.register_converter`):

* ``iresnet``  (insightface arcface_torch ``backbone.pth``): ``conv1.weight``, ``bn1.*``, ``prelu.weight``,
  ``layer{L}.{b}.{bn1,conv1,bn2,prelu,conv2,bn3}.*``, ``layer{L}.0.downsample.{0,1}.*``, ``bn2.*``,
  ``fc.{weight,bias}``, ``features.*``;
* ``adaface_ir`` (AdaFace ``net.py``): ``input_layer.{0,1,2}``, ``body.N.res_layer.{0..5}``,
  ``body.N.shortcut_layer.{0,1}``, ``output_layer.{0,3,4}``;
* ``mobilefacenet`` (insightface ``mobilefacenet.py``): ``layers.{i}...``, ``conv_sep.layers.{0,1,2}``,
  ``features.layers.{0,2,3}``.

Every model is described once, as an ordered list of :class:`Slot` s (the parameterised layers in forward
order, each with its Flax path and its original key prefix). The state-dict converter reads the slots by key;
the ONNX importer (``onnx_import.py``) matches the same slots against the graph's nodes in order.

Layout conversions: conv OIHW -> HWIO; Linear [out, in] -> [in, out], and for the IResNet/AdaFace fc the rows
are permuted from torch's channel-major (C, H, W) flatten order to the NHWC (H, W, C) order of the Flax model.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from typing import Mapping

import numpy as np

from synleak_jax.weights.converters import register_converter
from synleak_jax.weights.mapping import SourceTensors, conv_kernel_oihw_to_hwio, linear_oi_to_io

FC_CHW = (512, 7, 7)  # the IResNet/AdaFace trunk output for a 112x112 input


@dataclasses.dataclass(frozen=True)
class Slot:
    """One parameterised layer of a model, in forward order.

    kind: "conv" (conv without bias followed by a BatchNorm: ``bn_path``/``bn_key``), "bn", "prelu" or "fc".
    path: Flax module path ("layer1_0/conv1"); key: original state-dict prefix ("layer1.0.conv1").
    affine: for "bn": whether scale/bias exist. chw: for "fc": the (C, H, W) of the flattened input, when the
      rows need the channel-major -> NHWC permutation (None for 1x1 spatial inputs). bias: for "fc".
    """

    kind: str
    path: str
    key: str
    bn_path: str | None = None
    bn_key: str | None = None
    affine: bool = True
    chw: tuple[int, int, int] | None = None
    bias: bool = True


def _conv_bn(path: str, key: str, bn_path: str, bn_key: str) -> Slot:
    return Slot("conv", path, key, bn_path=bn_path, bn_key=bn_key)


def _iresnet_slots(blocks) -> list[Slot]:
    s = [_conv_bn("conv1", "conv1", "bn1", "bn1"), Slot("prelu", "prelu", "prelu")]
    for stage, n in enumerate(blocks, start=1):
        for b in range(n):
            p, k = f"layer{stage}_{b}", f"layer{stage}.{b}"
            s += [
                Slot("bn", f"{p}/bn1", f"{k}.bn1"),
                _conv_bn(f"{p}/conv1", f"{k}.conv1", f"{p}/bn2", f"{k}.bn2"),
                Slot("prelu", f"{p}/prelu", f"{k}.prelu"),
                _conv_bn(f"{p}/conv2", f"{k}.conv2", f"{p}/bn3", f"{k}.bn3"),
            ]
            if b == 0:
                s.append(_conv_bn(f"{p}/downsample_conv", f"{k}.downsample.0", f"{p}/downsample_bn", f"{k}.downsample.1"))
    s += [Slot("bn", "bn2", "bn2"), Slot("fc", "fc", "fc", chw=FC_CHW), Slot("bn", "features", "features")]
    return s


def _adaface_slots(blocks) -> list[Slot]:
    from synleak_jax.models.adaface_ir import adaface_units

    s = [_conv_bn("input_conv", "input_layer.0", "input_bn", "input_layer.1"), Slot("prelu", "input_prelu", "input_layer.2")]
    for i, (cin, cout, _) in enumerate(adaface_units(blocks)):
        p, r = f"body_{i}", f"body.{i}.res_layer"
        s += [
            Slot("bn", f"{p}/bn1", f"{r}.0"),
            _conv_bn(f"{p}/conv1", f"{r}.1", f"{p}/bn2", f"{r}.2"),
            Slot("prelu", f"{p}/prelu", f"{r}.3"),
            _conv_bn(f"{p}/conv2", f"{r}.4", f"{p}/bn3", f"{r}.5"),
        ]
        if cin != cout:
            sc = f"body.{i}.shortcut_layer"
            s.append(_conv_bn(f"{p}/downsample_conv", f"{sc}.0", f"{p}/downsample_bn", f"{sc}.1"))
    s += [
        Slot("bn", "output_bn", "output_layer.0"),
        Slot("fc", "output_fc", "output_layer.3", chw=FC_CHW),
        Slot("bn", "output_bn1d", "output_layer.4", affine=False),
    ]
    return s


def _mbf_convblock(path: str, key: str, linear: bool = False) -> list[Slot]:
    s = [_conv_bn(f"{path}/conv", f"{key}.layers.0", f"{path}/bn", f"{key}.layers.1")]
    if not linear:
        s.append(Slot("prelu", f"{path}/prelu", f"{key}.layers.2"))
    return s


def _mbf_depthwise(path: str, key: str) -> list[Slot]:
    return (
        _mbf_convblock(f"{path}/expand", f"{key}.layers.0")
        + _mbf_convblock(f"{path}/dw", f"{key}.layers.1")
        + _mbf_convblock(f"{path}/project", f"{key}.layers.2", linear=True)
    )


def _mobilefacenet_slots(blocks=(1, 4, 6, 2)) -> list[Slot]:
    s = _mbf_convblock("layers_0", "layers.0")
    if blocks[0] == 1:
        s += _mbf_convblock("layers_1", "layers.1")
    else:
        for i in range(blocks[0]):
            s += _mbf_depthwise(f"layers_1/block_{i}", f"layers.1.layers.{i}")
    for idx, n in ((2, None), (3, blocks[1]), (4, None), (5, blocks[2]), (6, None), (7, blocks[3])):
        if n is None:
            s += _mbf_depthwise(f"layers_{idx}", f"layers.{idx}")
        else:
            for i in range(n):
                s += _mbf_depthwise(f"layers_{idx}/block_{i}", f"layers.{idx}.layers.{i}")
    s += _mbf_convblock("conv_sep", "conv_sep")
    s += _mbf_convblock("features/dw", "features.layers.0", linear=True)
    s += [Slot("fc", "features/linear", "features.layers.2", bias=False), Slot("bn", "features/bn", "features.layers.3")]
    return s


@functools.lru_cache(maxsize=None)
def model_slots(model_name: str) -> tuple[Slot, ...]:
    """The ordered parameterised layers of registry model ``model_name``."""
    from synleak_jax.models.adaface_ir import ADAFACE_BLOCKS
    from synleak_jax.models.iresnet import IRESNET_BLOCKS

    if m := re.fullmatch(r"iresnet(\d+)", model_name):
        return tuple(_iresnet_slots(IRESNET_BLOCKS[int(m.group(1))]))
    if m := re.fullmatch(r"adaface_ir(\d+)", model_name):
        return tuple(_adaface_slots(ADAFACE_BLOCKS[int(m.group(1))]))
    if model_name == "mobilefacenet":
        return tuple(_mobilefacenet_slots())
    raise KeyError(f"no ArcFace-family layout for model {model_name!r}")


@functools.lru_cache(maxsize=None)
def expected_shapes(model_name: str) -> dict[str, tuple[int, ...]]:
    """Flat ``{flax_path: shape}`` of the model's variables (abstract evaluation; no memory)."""
    from synleak_jax.models import registry
    from synleak_jax.weights.mapping import variable_shapes

    entry = registry.get_entry(model_name)
    example = np.zeros((1, entry.spec.height, entry.spec.width, 3), np.float32)
    return variable_shapes(entry.factory(), example)


# ----------------------------------------------------------------------------------------------- emitters
# Each takes tensors in torch layout and writes flat Flax entries into ``out``.


def emit_conv(out: dict, path: str, w_oihw: np.ndarray) -> None:
    out[f"params/{path}/kernel"] = conv_kernel_oihw_to_hwio(np.asarray(w_oihw, np.float32))


def emit_bn(out: dict, path: str, scale, bias, mean, var) -> None:
    if scale is not None:
        out[f"params/{path}/scale"] = np.asarray(scale, np.float32)
    if bias is not None:
        out[f"params/{path}/bias"] = np.asarray(bias, np.float32)
    out[f"batch_stats/{path}/mean"] = np.asarray(mean, np.float32)
    out[f"batch_stats/{path}/var"] = np.asarray(var, np.float32)


def emit_prelu(out: dict, path: str, slope) -> None:
    out[f"params/{path}/negative_slope"] = np.asarray(slope, np.float32).reshape(-1)


def fc_kernel_from_torch(w_oi: np.ndarray, chw: tuple[int, int, int] | None) -> np.ndarray:
    """torch Linear weight [out, C*H*W] (channel-major input) -> Flax kernel [H*W*C, out] (NHWC input)."""
    w = np.asarray(w_oi, np.float32)
    if chw is None:
        return linear_oi_to_io(w)
    c, h, wd = chw
    return np.ascontiguousarray(w.reshape(w.shape[0], c, h, wd).transpose(2, 3, 1, 0).reshape(h * wd * c, w.shape[0]))


def emit_fc(out: dict, path: str, w_oi, b, chw) -> None:
    out[f"params/{path}/kernel"] = fc_kernel_from_torch(w_oi, chw)
    if b is not None:
        out[f"params/{path}/bias"] = np.asarray(b, np.float32)


def _hwio_to_oihw_shape(shape):
    kh, kw, i, o = shape
    return (o, i, kh, kw)


# ----------------------------------------------------------------------------------------------- state dicts
def _read_bn(src: SourceTensors, key: str, path: str, shapes, affine: bool, out: dict) -> None:
    c = shapes[f"batch_stats/{path}/mean"]
    scale = src.get(f"{key}.weight", c) if affine else None
    bias = src.get(f"{key}.bias", c) if affine else None
    emit_bn(out, path, scale, bias, src.get(f"{key}.running_mean", c), src.get(f"{key}.running_var", c))
    src.skip(f"{key}.num_batches_tracked")


def convert(src: SourceTensors, model_name: str) -> dict[str, np.ndarray]:
    """Reads an original state dict (key names as in the original repository) -> flat Flax variables."""
    shapes = expected_shapes(model_name)
    out: dict[str, np.ndarray] = {}
    for slot in model_slots(model_name):
        if slot.kind == "conv":
            kshape = _hwio_to_oihw_shape(shapes[f"params/{slot.path}/kernel"])
            emit_conv(out, slot.path, src.get(f"{slot.key}.weight", kshape))
            _read_bn(src, slot.bn_key, slot.bn_path, shapes, True, out)
        elif slot.kind == "bn":
            _read_bn(src, slot.key, slot.path, shapes, slot.affine, out)
        elif slot.kind == "prelu":
            emit_prelu(out, slot.path, src.get(f"{slot.key}.weight", shapes[f"params/{slot.path}/negative_slope"]))
        elif slot.kind == "fc":
            n_in, n_out = shapes[f"params/{slot.path}/kernel"]
            w = src.get(f"{slot.key}.weight", (n_out, n_in))
            b = src.get(f"{slot.key}.bias", (n_out,)) if slot.bias else None
            emit_fc(out, slot.path, w, b, slot.chw)
        else:  # pragma: no cover - slots are built above
            raise AssertionError(slot.kind)
    return out


# ----------------------------------------------------------------------------------------------- detection
_KNOWN_PREFIXES = ("module.", "model.", "backbone.")


def _strip_common_prefix(keys) -> list[str]:
    keys = list(keys)
    changed = True
    while changed and keys:
        changed = False
        for p in _KNOWN_PREFIXES:
            if all(k.startswith(p) for k in keys):
                keys = [k[len(p):] for k in keys]
                changed = True
    return keys


def _count_by(keys, pattern: str) -> dict[int, set[int]]:
    """For keys matching ``pattern`` with groups (stage, index): {stage: {indices}}."""
    found: dict[int, set[int]] = {}
    for k in keys:
        if m := re.fullmatch(pattern, k):
            found.setdefault(int(m.group(1)), set()).add(int(m.group(2)))
    return found


def detect_iresnet(shapes: Mapping[str, tuple[int, ...]]) -> str | None:
    from synleak_jax.models.iresnet import IRESNET_BLOCKS

    keys = set(_strip_common_prefix(shapes))
    if not {"conv1.weight", "fc.weight", "features.running_mean", "layer1.0.bn1.weight"} <= keys:
        return None
    per_stage = _count_by(keys, r"layer(\d)\.(\d+)\.conv1\.weight")
    blocks = tuple(len(per_stage.get(s, ())) for s in (1, 2, 3, 4))
    for depth, b in IRESNET_BLOCKS.items():
        if b == blocks:
            return f"iresnet{depth}"
    return None


def detect_adaface(shapes: Mapping[str, tuple[int, ...]]) -> str | None:
    from synleak_jax.models.adaface_ir import ADAFACE_BLOCKS

    stripped = dict(zip(_strip_common_prefix(shapes), shapes.values()))
    if not {"input_layer.0.weight", "output_layer.3.weight", "body.0.res_layer.1.weight"} <= set(stripped):
        return None
    # Units per stage, from the output width of each unit's first conv.
    widths = {}
    for k, shp in stripped.items():
        if m := re.fullmatch(r"body\.(\d+)\.res_layer\.1\.weight", k):
            widths[int(m.group(1))] = int(shp[0])
    if sorted(widths) != list(range(len(widths))):
        return None
    blocks = tuple(sum(1 for w in widths.values() if w == c) for c in (64, 128, 256, 512))
    for depth, b in ADAFACE_BLOCKS.items():
        if b == blocks:
            return f"adaface_ir{depth}"
    return None


def detect_mobilefacenet(shapes: Mapping[str, tuple[int, ...]]) -> str | None:
    stripped = dict(zip(_strip_common_prefix(shapes), shapes.values()))
    if not {"conv_sep.layers.0.weight", "features.layers.2.weight", "layers.0.layers.0.weight"} <= set(stripped):
        return None
    if tuple(stripped.get("layers.1.layers.0.weight", ())) != (128, 2, 3, 3):
        return None
    units = _count_by(stripped, r"layers\.(\d)\.layers\.(\d+)\.layers\.0\.layers\.0\.weight")
    if tuple(len(units.get(i, ())) for i in (3, 5, 7)) == (4, 6, 2):
        return "mobilefacenet"
    return None


register_converter("iresnet", convert, detect_iresnet)
register_converter("adaface_ir", convert, detect_adaface)
register_converter("mobilefacenet", convert, detect_mobilefacenet)
