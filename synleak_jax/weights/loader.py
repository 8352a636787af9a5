"""``load_weights(path, model_name=None)``: one entry point for every supported weights format.

The format is detected from the file's content (the extension is only a tie-breaker):

============== ====================================================== ==========================================
format         recognised by                                          read with
============== ====================================================== ==========================================
torch_zip      zip local-file magic ``PK\\x03\\x04``                     :func:`torch_pickle.load_torch_file`
torch_legacy   pickled magic number 0x1950a86a20f9469cfc6c              :func:`torch_pickle.load_torch_file`
onnx           protobuf ModelProto header (``ir_version`` field first)  :func:`onnx_import.import_onnx`
dlib_dat       dlib ``serialize`` header of a ``loss_*`` network        :func:`convert_dlib.load_dlib_dat`
orbax          a directory holding ``synleak_weights.json``              :func:`orbax_io.restore_variables`
============== ====================================================== ==========================================

Torch state dicts go through the per-family converters (``converters.detect_model_name`` when no model name
is given, then ``converters.load_state_dict_into``), which check every key and shape.
"""

from __future__ import annotations

import dataclasses
import os
import re
import stat
from pathlib import Path

import numpy as np

from synleak_jax import files
from synleak_jax.weights import orbax_io, torch_pickle
from synleak_jax.weights.read_limits import describe_file_type, open_regular_file

FORMATS = ("torch_zip", "torch_legacy", "onnx", "dlib_dat", "orbax")

# ModelProto field tags that may follow ir_version (1): producer_name (2), producer_version (3), domain (4),
# model_version (5), doc_string (6), graph (7), opset_import (8), metadata_props (14), training_info (20),
# functions (25).
_ONNX_NEXT_TAGS = {0x12, 0x1A, 0x22, 0x28, 0x32, 0x3A, 0x42, 0x72, 0xA2, 0xCA}
_DLIB_HEADER = re.compile(rb"\A\x01\x01\x01[\x01-\x40]loss_[a-z0-9_]+")


class WeightsFormatError(ValueError):
    """The weights file/directory is missing, of an unknown format or unreadable; names the path."""


class UnknownModelError(ValueError):
    """A model name that is not in the registry; lists the available names."""


@dataclasses.dataclass(frozen=True)
class WeightsInfo:
    """Where loaded variables came from.

    Attributes:
      model_name: registry name of the backbone the variables belong to.
      source_file: base name of the original weights file (for an orbax directory: the file it was converted
        from, as recorded in its metadata).
      sha256: hex SHA-256 of the original weights file (for an orbax directory: the recorded one, so the
        fingerprint of a set of weights does not change when it is converted).
      format: one of ``FORMATS`` — what was actually read.
    """

    model_name: str
    source_file: str
    sha256: str
    format: str


def file_sha256(path: str | os.PathLike, chunk_bytes: int = 1 << 20) -> str:
    """Hex SHA-256 of a weights file, streamed in ``chunk_bytes`` blocks (constant memory); WeightsFormatError
    naming the file if it is not a regular file."""
    with open_regular_file(os.fspath(path), WeightsFormatError)[0] as f:
        return files.sha256_stream(f, chunk_bytes)


def _looks_like_onnx(head: bytes) -> bool:
    if len(head) < 3 or head[0] != 0x08:
        return False
    i = 1
    while i < len(head) and head[i] & 0x80:  # varint ir_version
        i += 1
    if i >= 4 or i + 1 >= len(head):
        return False
    return head[i + 1] in _ONNX_NEXT_TAGS and 1 <= head[1] <= 30


def detect_format(path: str | os.PathLike) -> str:
    """Returns the format name of ``path`` (see ``FORMATS``) from its content.

    Raises:
      FileNotFoundError: nothing at ``path``.
      WeightsFormatError: not a recognised format.
    """
    p = Path(path)
    try:
        mode = p.stat().st_mode
    except FileNotFoundError:
        raise FileNotFoundError(f"{p}: no such weights file or directory") from None
    except OSError as e:
        raise WeightsFormatError(f"{p}: cannot read ({e.strerror or e})") from None
    if stat.S_ISDIR(mode):
        if orbax_io.is_weights_dir(p):
            return "orbax"
        raise WeightsFormatError(
            f"{p}: a directory, but not a converted-weights directory (no {orbax_io.METADATA_FILE}; "
            "write one with synleak-convert, or pass the weights file itself)"
        )
    if not stat.S_ISREG(mode):  # a FIFO would block open() forever, a device never ends
        raise WeightsFormatError(f"{p}: {describe_file_type(mode)}, not a regular weights file")
    with open_regular_file(str(p), WeightsFormatError)[0] as f:
        head = f.read(512)
    if not head:
        raise WeightsFormatError(f"{p}: empty file")
    kind = torch_pickle.sniff_torch_format(head)
    if kind is not None:
        return kind
    if _DLIB_HEADER.match(head):
        return "dlib_dat"
    if _looks_like_onnx(head):
        return "onnx"
    if len(head) >= 262 and head[257:262] == b"ustar":
        raise WeightsFormatError(f"{p}: legacy tar checkpoint (PyTorch < 0.4) is not supported")
    suffix = p.suffix.lower()
    if suffix == ".onnx":  # a damaged ONNX file: let the ONNX reader name the problem
        return "onnx"
    if suffix == ".dat":
        return "dlib_dat"
    raise WeightsFormatError(
        f"{p}: weights format not recognised (expected a PyTorch .pt/.pth/.ckpt (zip or legacy), an .onnx "
        "model, a dlib .dat network or a synleak-convert directory)"
    )


# Training-only classification/margin heads saved next to the backbone (AdaFace's Lightning checkpoints hold
# "model.*" + "head.kernel"); their own inference code keeps only the "model." keys, and so do we.
_BACKBONE_PREFIXES = ("module.model.", "module.backbone.", "model.", "backbone.")
_TRAINING_HEAD_PREFIXES = ("head.", "margin_head.", "partial_fc.", "loss.", "module.head.")


def select_backbone_tensors(tensors: dict, source: str = "<weights>") -> dict:
    """Drops a training-only head stored beside a prefixed backbone, and strips the backbone prefix.

    Applies only when some keys carry one backbone prefix and EVERY other key is under a known head prefix;
    otherwise ``tensors`` is returned unchanged (and the converter reports unexpected keys).
    """
    for prefix in _BACKBONE_PREFIXES:
        body = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        rest = [k for k in tensors if not k.startswith(prefix)]
        if body and rest and all(k.startswith(_TRAINING_HEAD_PREFIXES) for k in rest):
            from absl import logging

            logging.info("%s: using the %d %r tensors, dropping the training head %s", source, len(body), prefix,
                         rest[:5])
            return body
    return tensors


def check_model_name(model_name: str) -> None:
    """Raises :class:`UnknownModelError` (listing the available names) if ``model_name`` is not registered."""
    from synleak_jax.models import registry

    names = registry.available()
    if model_name not in names:
        raise UnknownModelError(f"unknown model {model_name!r}; available models: {', '.join(names)}")


def load_weights(
    path: str | os.PathLike, model_name: str | None = None, *, allow_opaque: bool = False
) -> tuple[dict, WeightsInfo]:
    """Loads any supported weights file (or converted directory) as checked Flax variables.

    Args:
      path: a ``.pt``/``.pth``/``.ckpt``, ``.onnx``, dlib ``.dat`` file or a ``synleak-convert`` directory.
      model_name: registry name; None = infer it from the weights (key names/shapes, graph structure, or the
        directory's metadata).
      allow_opaque: PyTorch files only: objects of non-allowlisted types OUTSIDE the state dict (e.g. OmegaConf
        configs in a Lightning checkpoint) become inert placeholders instead of an error (nothing is imported
        or run either way; see ``torch_pickle.read_torch_pickle``).

    Returns:
      (variables, info): ``{"params": ..., "batch_stats": ...}`` of numpy arrays matching
      ``registry.get_model(info.model_name)``, and a :class:`WeightsInfo`.

    Raises:
      FileNotFoundError: ``path`` does not exist.
      UnknownModelError: ``model_name`` is not registered.
      WeightsFormatError / torch_pickle.TorchFileError / orbax_io.CheckpointError / WeightMappingError:
        unrecognised, truncated or malformed files, or weights that do not fit the model (messages name the
        path and the offending key).
    """
    p = Path(path)
    if model_name is not None:
        check_model_name(model_name)
    fmt = detect_format(p)
    source = str(p)

    if fmt == "orbax":
        meta = orbax_io.read_metadata(p)
        saved = meta["model_name"]
        if model_name is not None and model_name != saved:
            raise WeightsFormatError(f"{p}: holds weights for {saved!r}, not {model_name!r}")
        try:
            check_model_name(saved)
        except UnknownModelError as e:
            raise orbax_io.CheckpointError(f"{p}: records model_name {saved!r}, which is not a known model ({e})") from None
        from synleak_jax.weights import converters

        # A directory whose metadata names one model but holds another's variables would otherwise load and
        # fail later inside Flax. The recorded shapes are checked before restoring (restore_variables then
        # checks the arrays against them); without recorded shapes, the restored arrays are checked.
        expected = converters.model_variable_shapes(saved)
        recorded = orbax_io.recorded_shapes(meta)
        if recorded is not None:
            orbax_io.check_variables_fit(p, saved, recorded, expected)
        variables, meta = orbax_io.restore_variables(p)
        if recorded is None:
            from synleak_jax.weights.mapping import flatten_variables

            orbax_io.check_variables_fit(p, saved, {k: np.shape(v) for k, v in flatten_variables(variables).items()},
                                         expected)
        info = WeightsInfo(
            model_name=saved,
            source_file=str(meta.get("source_file", p.name)),
            sha256=str(meta.get("source_sha256", "")),
            format="orbax",
        )
        return variables, info

    sha = file_sha256(p)
    if fmt in ("torch_zip", "torch_legacy"):
        from synleak_jax.weights import converters

        tensors = select_backbone_tensors(torch_pickle.load_torch_file(p, allow_opaque=allow_opaque), source)
        if model_name is None:
            model_name = converters.detect_model_name({k: tuple(v.shape) for k, v in tensors.items()}, source)
        variables = converters.load_state_dict_into(model_name, tensors, source)
    elif fmt == "onnx":
        from synleak_jax.weights import onnx_import

        imported = onnx_import.import_onnx(p, model_name)
        variables, model_name = imported.variables, imported.model_name
    elif fmt == "dlib_dat":
        from synleak_jax.weights import convert_dlib

        if model_name is not None and model_name != convert_dlib.MODEL_NAME:
            raise WeightsFormatError(f"{p}: a dlib network file holds {convert_dlib.MODEL_NAME!r}, not {model_name!r}")
        variables = convert_dlib.load_dlib_dat(p)
        model_name = convert_dlib.MODEL_NAME
    else:  # pragma: no cover - detect_format only returns FORMATS
        raise AssertionError(fmt)
    return variables, WeightsInfo(model_name=model_name, source_file=p.name, sha256=sha, format=fmt)


def parameter_count(variables) -> int:
    """Number of scalars in ``variables["params"]`` (BatchNorm statistics excluded)."""
    import jax

    return int(sum(np.size(x) for x in jax.tree.leaves(variables.get("params", {}))))


def conversion_metadata(info: WeightsInfo) -> dict:
    """The metadata :func:`orbax_io.save_variables` records for converted weights."""
    from synleak_jax.models import registry

    return {
        "model_name": info.model_name,
        "input_spec": registry.get_spec(info.model_name).to_dict(),
        "source_file": info.source_file,
        "source_sha256": info.sha256,
        "format": info.format,
    }
