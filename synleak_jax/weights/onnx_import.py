"""Importer for insightface-style ONNX recognition graphs (``w600k_r50.onnx``, ``glintr100.onnx``,
``w600k_mbf.onnx``, and the same backbones exported with ``torch.onnx.export``).

These exports are made in eval mode with constant folding, which fuses every Conv and the BatchNorm that
follows it into one Conv with a bias. Only the BatchNorms that do not follow a conv survive (IResNet: each
block's ``bn1``, the head's ``bn2`` and ``features``; MobileFaceNet: the final BatchNorm1d). The weight names
of the folded convs are meaningless (``onnx::Conv_269``), so this importer maps the GRAPH, not names: it walks
the nodes in (topological) order, collects the parameterised ones (Conv, BatchNormalization, PRelu,
Gemm/MatMul[+Add]) and matches them one by one against the model's ordered layer list
(``convert_arcface.model_slots``), checking every shape.

Representation of a folded conv in Flax: the model keeps its conv + BatchNorm pair; the conv gets the folded
kernel and the BatchNorm becomes an exact identity plus bias: scale 1, bias = the folded conv bias, mean 0,
var = 1 - eps (so ``rsqrt(var + eps) == 1`` up to one float32 rounding, ~6e-8). The variables therefore have
the same structure as a state-dict conversion and work with the same module.

Untrusted input (docs/weights.md, "Bounded reading" and "ONNX external data"): before ``onnx.load`` parses
the file, a scan of its protobuf wire format charges every message, string and repeated value to a
:class:`read_limits.ReadBudget` (a parsed empty ``NodeProto`` costs ~150 bytes for its 2 bytes on disk, so an
unchecked 4 MB file parses into ~300 MB); external data is checked and read by us, not by onnx (relative path,
no ``..``, inside the model's directory after resolving symlinks, a regular file with one link, offset and
length inside it; read from a descriptor opened without following links and checked again with ``fstat``,
so nothing swapped in after the check is read) and charged per tensor; every initializer is charged before numpy copies it. Any failure is
an :class:`OnnxImportError` naming the file.

Input normalisation: the model-zoo graphs expect NCHW float32 RGB, ``(x - 127.5) / 127.5`` applied outside the
graph. Some graphs (mxnet-era exports) start with Sub/Mul (or Div/Add) nodes that normalise raw pixels
inside the graph. Such a leading chain is folded into one per-channel affine map, checked to be exactly the
registry spec's normalisation (else an error names the nodes and the mean/std found), and dropped: the
Flax model always takes spec-normalised inputs.
"""

from __future__ import annotations

import dataclasses
import math
import mmap
import os
import stat
from typing import Any

import numpy as np

from synleak_jax.weights.convert_arcface import (
    emit_bn,
    emit_conv,
    emit_fc,
    emit_prelu,
    expected_shapes,
    model_slots,
)
from synleak_jax.weights.mapping import WeightMappingError, assign_variables
from synleak_jax.weights.read_limits import ReadBudget, open_regular_file, regular_file_size

BN_EPS = 1e-5  # epsilon of every BatchNorm in the Flax ArcFace-family models
_PARAM_OPS = ("Conv", "BatchNormalization", "PRelu", "Gemm", "MatMul")
_PREPROC_OPS = ("Sub", "Add", "Mul", "Div")


class OnnxImportError(WeightMappingError):
    """An ONNX graph does not fit the model; the message names the node and/or initializer."""


@dataclasses.dataclass
class OnnxImport:
    """Result of :func:`import_onnx`.

    variables: Flax variables ``{"params": ..., "batch_stats": ...}`` for ``model_name``.
    model_name: registry name (given or inferred from the graph).
    input_normalization: "external" (the graph takes normalised input, as the model-zoo files) or
      "in-graph" (a leading Sub/Mul chain equal to the spec's normalisation was found and dropped).
    folded_convs: number of convs whose BatchNorm had been folded into them by the exporter.
    """

    variables: dict
    model_name: str
    input_normalization: str
    folded_convs: int


@dataclasses.dataclass
class _Op:
    node: Any  # onnx.NodeProto
    index: int

    @property
    def label(self) -> str:
        return f"node #{self.index} {self.node.op_type} {self.node.name!r}"


class _Graph:
    """Constants, producers/consumers and the parameterised nodes of an ONNX graph."""

    def __init__(self, model, source: str, budget: ReadBudget):
        self.source = source
        self.budget = budget
        g = model.graph
        self.consts: dict[str, np.ndarray] = {i.name: self._to_array(i) for i in g.initializer}
        self.nodes = list(g.node)
        self.alias: dict[str, str] = {}
        for node in self.nodes:
            if node.op_type == "Constant":
                for a in node.attribute:
                    if a.name == "value":
                        self.consts[node.output[0]] = self._to_array(a.t)
            elif node.input and node.input[0] in self.consts:
                self._fold_shape_op(node)
        self.inputs = [i.name for i in g.input if i.name not in self.consts]
        self.consumers: dict[str, list[int]] = {}
        for idx, node in enumerate(self.nodes):
            for name in node.input:
                self.consumers.setdefault(name, []).append(idx)

    def _to_array(self, tensor) -> np.ndarray:
        """numpy copy of a TensorProto, its declared size charged to the budget first."""
        from onnx import helper, numpy_helper

        dims = list(tensor.dims)
        if any(d < 0 for d in dims):
            raise OnnxImportError(f"{self.source}: initializer {tensor.name!r} has negative dims {dims}")
        try:
            itemsize = np.dtype(helper.tensor_dtype_to_np_dtype(tensor.data_type)).itemsize
        except (KeyError, TypeError, ValueError):
            raise OnnxImportError(
                f"{self.source}: initializer {tensor.name!r} has unsupported data type {tensor.data_type}") from None
        self.budget.charge(math.prod(dims) * itemsize, f"initializer {tensor.name!r} {dims}")
        return numpy_helper.to_array(tensor)

    def _fold_shape_op(self, node) -> None:
        """Evaluates Identity/Unsqueeze/Squeeze/Reshape of constants (un-folded exports route weights and
        PReLU slopes through them)."""
        x = np.asarray(self.consts[node.input[0]])
        at = self.attrs(node)
        second = node.input[1] if len(node.input) > 1 and node.input[1] in self.consts else None
        if node.op_type == "Identity":
            y = x
        elif node.op_type == "Unsqueeze":
            axes = at.get("axes") if second is None else self.consts[second].tolist()
            if axes is None:
                return
            y = x
            for a in sorted(int(a) % (x.ndim + len(axes)) for a in axes):
                y = np.expand_dims(y, a)
        elif node.op_type == "Squeeze":
            axes = at.get("axes") if second is None else self.consts[second].tolist()
            y = np.squeeze(x) if axes is None else np.squeeze(x, tuple(int(a) for a in axes))
        elif node.op_type == "Reshape" and second is not None:
            shape = [int(d) for d in self.consts[second].reshape(-1)]
            shape = [x.shape[i] if d == 0 else d for i, d in enumerate(shape)]
            y = x.reshape(shape)
        else:
            return
        self.consts[node.output[0]] = y

    def const(self, name: str, op: _Op, what: str) -> np.ndarray:
        if name not in self.consts:
            raise OnnxImportError(
                f"{self.source}: {op.label}: {what} {name!r} is not a constant initializer"
            )
        return np.asarray(self.consts[name])

    def attrs(self, node) -> dict[str, Any]:
        from onnx import helper

        return {a.name: helper.get_attribute_value(a) for a in node.attribute}


# Memory a parsed protobuf element costs at most (upb, 64-bit), measured: an empty NodeProto ~150 bytes.
_PB_MESSAGE_BYTES = 256
_PB_STRING_BYTES = 48  # + the string's length
_PB_SCALAR_BYTES = 8
_PB_MAX_DEPTH = 100  # protobuf's own default recursion limit


def _varint(buf, pos: int, end: int, source: str) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise OnnxImportError(f"{source}: not a readable ONNX model (malformed protobuf varint)")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos


def _charge_protobuf(buf, start: int, end: int, descriptor, budget: ReadBudget, depth: int = 0) -> None:
    """Walks the wire format of one message (guided by its descriptor) and charges what parsing it creates.

    Length-delimited payloads (raw_data, strings) are skipped by length, so the walk costs one step per field,
    not per byte.
    """
    from google.protobuf.descriptor import FieldDescriptor

    source = budget.source
    if depth > _PB_MAX_DEPTH:
        raise OnnxImportError(f"{source}: ONNX messages nested deeper than {_PB_MAX_DEPTH} levels")
    fields = descriptor.fields_by_number
    pos = start
    while pos < end:
        key, pos = _varint(buf, pos, end, source)
        wire = key & 7
        if wire == 0:
            _, pos = _varint(buf, pos, end, source)
            budget.charge(_PB_SCALAR_BYTES, "protobuf values")
            continue
        if wire in (1, 5):
            pos += 8 if wire == 1 else 4
            budget.charge(_PB_SCALAR_BYTES, "protobuf values")
            continue
        if wire != 2:
            raise OnnxImportError(f"{source}: not a readable ONNX model (protobuf wire type {wire})")
        length, pos = _varint(buf, pos, end, source)
        if pos + length > end:
            raise OnnxImportError(f"{source}: not a readable ONNX model (truncated protobuf field)")
        field = fields.get(key >> 3)
        if field is not None and field.type == FieldDescriptor.TYPE_MESSAGE:
            budget.charge(_PB_MESSAGE_BYTES, f"protobuf {field.message_type.name} messages")
            _charge_protobuf(buf, pos, pos + length, field.message_type, budget, depth + 1)
        elif field is not None and field.type not in (FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_BYTES):
            budget.charge(_PB_SCALAR_BYTES * length, "packed protobuf values")  # >= 1 byte per value
        else:  # strings, bytes, unknown fields (kept as bytes)
            budget.charge(_PB_STRING_BYTES + length, "protobuf strings")
        pos += length
    if pos != end:
        raise OnnxImportError(f"{source}: not a readable ONNX model (protobuf field runs past its message)")


def _all_tensors(message):
    """Every TensorProto inside ``message`` (initializers, Constant values, subgraphs, functions)."""
    import onnx

    stack = [message]
    while stack:
        msg = stack.pop()
        if isinstance(msg, onnx.TensorProto):
            yield msg
            continue
        for field, value in msg.ListFields():
            if field.type == field.TYPE_MESSAGE:
                stack.extend(value if field.is_repeated else [value])


def _load_external_data(model, path: str, budget: ReadBudget) -> None:
    """Checks every external-data reference (see the module docstring), charges it and reads it into its
    tensor (``raw_data``; the reference is then removed, as onnx's own loader does).

    Read here rather than by ``onnx.external_data_helper``, which reopens each location by path: between our
    check and its open a FIFO (blocks forever) or a symlink (reads outside the directory) could be swapped in.
    Each file is opened without following links and checked on its descriptor to be the file that was checked.
    """
    import onnx

    base_dir = os.path.dirname(os.path.abspath(path))
    base_real = os.path.realpath(base_dir)
    files: dict[str, int] = {}
    checked = []
    for tensor in _all_tensors(model):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        entries = {e.key: e.value for e in tensor.external_data}
        what = f"{path}: external data of tensor {tensor.name!r}"
        location = entries.get("location", "")
        parts = location.replace("\\", "/").split("/")
        if not location or "\x00" in location:
            raise OnnxImportError(f"{what}: empty or invalid location {location!r}")
        if os.path.isabs(location) or location[:1] in ("/", "\\") or (len(location) > 1 and location[1] == ":"):
            raise OnnxImportError(f"{what}: absolute location {location!r} (must be relative to the model's directory)")
        if ".." in parts:
            raise OnnxImportError(f"{what}: location {location!r} climbs out of the model's directory ('..')")
        target = os.path.join(base_dir, location)
        real = os.path.realpath(target)
        if os.path.commonpath([real, base_real]) != base_real:
            raise OnnxImportError(f"{what}: location {location!r} resolves outside the model's directory")
        try:
            st = os.lstat(target)
        except FileNotFoundError:
            raise OnnxImportError(f"{what}: file {location!r} not found next to the model") from None
        except OSError as e:
            raise OnnxImportError(f"{what}: cannot stat {location!r} ({e.strerror})") from None
        if stat.S_ISLNK(st.st_mode):
            raise OnnxImportError(f"{what}: {location!r} is a symbolic link (refused: it could point anywhere)")
        if not stat.S_ISREG(st.st_mode):
            raise OnnxImportError(f"{what}: {location!r} is not a regular file")
        if st.st_nlink > 1:
            raise OnnxImportError(f"{what}: {location!r} has {st.st_nlink} hard links (refused, as onnx does)")
        try:
            offset = int(entries.get("offset", 0))
            length = int(entries["length"]) if "length" in entries else st.st_size - offset
        except ValueError:
            raise OnnxImportError(f"{what}: offset/length are not integers: {entries}") from None
        if offset < 0 or length < 0 or offset + length > st.st_size:
            raise OnnxImportError(
                f"{what}: offset {offset} + length {length} outside {location!r} ({st.st_size} bytes)")
        if real not in files:
            files[real] = st.st_size
            budget.add_input(st.st_size)
        budget.charge(length, f"external data of tensor {tensor.name!r} ({location!r})")
        checked.append((tensor, what, location, target, st, offset, length))
    # Every reference is checked and charged before the first byte is read: a refused model reads nothing.
    for tensor, what, location, target, st, offset, length in checked:
        try:
            opened, _ = open_regular_file(target, OnnxImportError, follow=False)
        except FileNotFoundError:
            raise OnnxImportError(f"{what}: file {location!r} vanished after it was checked") from None
        with opened as f:
            now = os.fstat(f.fileno())
            if (now.st_dev, now.st_ino, now.st_nlink) != (st.st_dev, st.st_ino, 1) or now.st_size < offset + length:
                raise OnnxImportError(f"{what}: {location!r} was replaced after it was checked")
            f.seek(offset)
            data = f.read(length)
        if len(data) != length:
            raise OnnxImportError(f"{what}: {location!r} ended after {len(data)} of {length} bytes")
        tensor.raw_data = data
        del tensor.external_data[:]
        tensor.data_location = onnx.TensorProto.DEFAULT


def _load_model(path: str | os.PathLike, budget: ReadBudget | None = None):
    """Parses ``path`` (after the memory scan) and loads its checked external data."""
    try:
        import onnx
    except ImportError as e:  # pragma: no cover - onnx is a dependency
        raise ImportError("reading .onnx files needs the 'onnx' package") from e
    source = os.fspath(path)
    try:
        opened, size = open_regular_file(source, OnnxImportError)
    except FileNotFoundError:
        raise FileNotFoundError(f"{source}: no such ONNX file") from None
    with opened as f:  # one descriptor for the scan and the parse: what is parsed is what was scanned
        budget = budget or ReadBudget(source, size, OnnxImportError)
        if size == 0:
            raise OnnxImportError(f"{source}: empty file")
        try:
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
                _charge_protobuf(mapped, 0, len(mapped), onnx.ModelProto.DESCRIPTOR, budget)
            budget.charge(2 * size, "the file's bytes and their parsed copy")
            f.seek(0)
            model = onnx.load_model_from_string(f.read(size))  # external data: read below, checked
            _load_external_data(model, source, budget)
        except (OnnxImportError, FileNotFoundError):
            raise
        except MemoryError:
            raise budget.out_of_memory("parsing it") from None
        except Exception as e:  # noqa: BLE001 - any parse error: name the file
            raise OnnxImportError(f"{source}: not a readable ONNX model ({type(e).__name__}: {e})") from None
    return model, budget


def _build_graph(path: str | os.PathLike, max_read_bytes: int | None = None) -> _Graph:
    """Parsed, checked model -> :class:`_Graph`; every failure an OnnxImportError naming the file."""
    source = os.fspath(path)
    budget = None
    if max_read_bytes is not None:
        try:
            size = regular_file_size(source, OnnxImportError)
        except FileNotFoundError:
            raise FileNotFoundError(f"{source}: no such ONNX file") from None
        budget = ReadBudget(source, size, OnnxImportError, max_read_bytes)
    model, budget = _load_model(source, budget)
    try:
        return _Graph(model, source, budget)
    except OnnxImportError:
        raise
    except MemoryError:
        raise budget.out_of_memory("reading its initializers") from None
    except Exception as e:  # noqa: BLE001 - a malformed graph: name the file
        raise OnnxImportError(f"{source}: malformed ONNX graph ({type(e).__name__}: {e})") from None


def _param_ops(graph: _Graph) -> list[_Op]:
    ops = []
    for idx, node in enumerate(graph.nodes):
        if node.op_type in _PARAM_OPS:
            if node.op_type == "MatMul" and not any(i in graph.consts for i in node.input):
                continue  # activation x activation: not a layer
            ops.append(_Op(node, idx))
    return ops


def infer_model_name(graph: _Graph) -> str:
    """Registry name from the conv structure: grouped convs -> MobileFaceNet; else IResNet (4 projection
    shortcuts) or AdaFace IR (3 projections), depth from the number of residual units."""
    from synleak_jax.models.adaface_ir import ADAFACE_BLOCKS
    from synleak_jax.models.iresnet import IRESNET_BLOCKS

    convs = [n for n in graph.nodes if n.op_type == "Conv"]
    if not convs:
        raise OnnxImportError(f"{graph.source}: graph has no Conv node; not a recognised backbone")
    groups = [graph.attrs(n).get("group", 1) for n in convs]
    if any(g > 1 for g in groups):
        n_units = sum(1 for n in convs if graph.attrs(n).get("group", 1) > 1)
        if n_units == 1 + 3 + 12 + 1:  # layers.1, 3 strided dw, 4+6+2 residual dw, GDC 7x7
            return "mobilefacenet"
        raise OnnxImportError(
            f"{graph.source}: grouped-conv graph with {n_units} grouped convs; only the insightface "
            "MobileFaceNet (blocks (1,4,6,2), 17 grouped convs) is supported"
        )
    k1 = sum(1 for n in convs if tuple(graph.attrs(n).get("kernel_shape", ())) == (1, 1))
    units = (len(convs) - 1 - k1) // 2
    table = {"iresnet": (4, IRESNET_BLOCKS), "adaface_ir": (3, ADAFACE_BLOCKS)}
    for family, (n_proj, blocks) in table.items():
        if k1 == n_proj:
            for depth, b in blocks.items():
                if sum(b) == units and len(convs) == 1 + 2 * units + n_proj:
                    return f"{family}{depth}"
    raise OnnxImportError(
        f"{graph.source}: cannot infer the model: {len(convs)} convs, {k1} of them 1x1 "
        f"({units} residual units); pass model_name"
    )


def _check_input_normalization(graph: _Graph, model_name: str) -> tuple[str, set[int]]:
    """Finds a leading Sub/Add/Mul/Div chain on the data input; returns ("in-graph"|"external", node ids)."""
    from synleak_jax.models.registry import get_spec

    if len(graph.inputs) != 1:
        raise OnnxImportError(f"{graph.source}: expected one data input, graph has {graph.inputs}")
    spec = get_spec(model_name)
    cur = graph.inputs[0]
    scale, shift = np.ones(3), np.zeros(3)  # y = scale * pixel + shift, per channel (NCHW axis 1)
    chain: list[int] = []
    while True:
        users = graph.consumers.get(cur, [])
        if len(users) != 1 or graph.nodes[users[0]].op_type not in _PREPROC_OPS:
            break
        idx = users[0]
        node = graph.nodes[idx]
        other = [i for i in node.input if i != cur]
        if len(other) != 1 or other[0] not in graph.consts:
            break
        c = np.asarray(graph.consts[other[0]], np.float64)
        if c.size not in (1, 3):
            break
        c = np.broadcast_to(c.reshape(-1), (3,)) if c.size == 1 else c.reshape(-1)
        if node.op_type == "Sub":
            if node.input[0] != cur:
                break  # constant - x: not a normalisation
            shift = shift - c
        elif node.op_type == "Add":
            shift = shift + c
        elif node.op_type == "Mul":
            scale, shift = scale * c, shift * c
        else:  # Div
            if node.input[0] != cur:
                break
            scale, shift = scale / c, shift / c
        chain.append(idx)
        cur = node.output[0]
    if not chain:
        return "external", set()
    # spec: (pixel - mean) / std in the model's channel order.
    want_scale = 1.0 / np.asarray(spec.std, np.float64)
    want_shift = -np.asarray(spec.mean, np.float64) / np.asarray(spec.std, np.float64)
    names = ", ".join(repr(graph.nodes[i].name or graph.nodes[i].op_type) for i in chain)
    if not (np.allclose(scale, want_scale, rtol=1e-5, atol=0) and np.allclose(shift, want_shift, rtol=1e-5, atol=1e-6)):
        mean, std = -shift / scale, 1.0 / scale
        raise OnnxImportError(
            f"{graph.source}: input nodes {names} normalise pixels with mean {mean.round(4).tolist()} and std "
            f"{std.round(4).tolist()}, but {model_name} expects mean {list(spec.mean)} std {list(spec.std)}"
        )
    # Only parameters are imported, so dropping the chain needs no graph rewriting.
    return "in-graph", set(chain)


def import_onnx(path: str | os.PathLike, model_name: str | None = None, *,
                max_read_bytes: int | None = None) -> OnnxImport:
    """Reads an ONNX recognition graph into Flax variables for ``model_name`` (inferred when None).

    ``max_read_bytes``: cap on the memory the read may materialise (default 4x the model's and its external
    data's size on disk + 64 MiB, or ``$SYNLEAK_MAX_READ_BYTES``).

    Raises:
      FileNotFoundError: no file at ``path``.
      OnnxImportError: naming the file, and the node / initializer and shapes when the graph does not fit the
        model; also for unreadable, malformed or over-limit files and refused external data.
    """
    source = os.fspath(path)
    graph = _build_graph(path, max_read_bytes)
    try:
        return _import_graph(graph, source, model_name)
    except WeightMappingError:
        raise
    except MemoryError:
        raise graph.budget.out_of_memory("converting it") from None
    except Exception as e:  # noqa: BLE001 - a malformed graph (missing inputs, odd attributes): name the file
        raise OnnxImportError(f"{source}: malformed ONNX graph ({type(e).__name__}: {e})") from None


def _import_graph(graph: _Graph, source: str, model_name: str | None) -> OnnxImport:
    if model_name is None:
        model_name = infer_model_name(graph)
    try:
        slots = model_slots(model_name)
    except KeyError as e:
        raise OnnxImportError(f"{source}: the ONNX importer supports the ArcFace-family models only: {e}") from e
    norm, _ = _check_input_normalization(graph, model_name)
    shapes = expected_shapes(model_name)
    ops = _param_ops(graph)
    out: dict[str, np.ndarray] = {}
    folded = 0
    pos = 0

    def need(kind: str, slot) -> _Op:
        nonlocal pos
        if pos >= len(ops):
            raise OnnxImportError(
                f"{source}: graph has only {len(ops)} parameterised nodes; {model_name} still expects a {kind} for "
                f"{slot.path!r} (original {slot.key!r})"
            )
        op = ops[pos]
        if op.node.op_type not in kind.split("|"):
            raise OnnxImportError(
                f"{source}: {op.label}: expected a {kind} for {model_name} layer {slot.path!r} "
                f"(original {slot.key!r}); wrong model_name or unsupported graph"
            )
        pos += 1
        return op

    def check(op: _Op, name: str, value: np.ndarray, shape, what: str) -> np.ndarray:
        if tuple(value.shape) != tuple(shape):
            raise OnnxImportError(
                f"{source}: {op.label}: {what} {name!r} has shape {tuple(value.shape)}, "
                f"{model_name} layer expects {tuple(shape)}"
            )
        return value

    def read_bn(op: _Op, c: int):
        names = list(op.node.input[1:5])
        vals = [check(op, n, graph.const(n, op, "BatchNorm input").astype(np.float32), (c,), "BatchNorm input")
                for n in names]
        eps = float(graph.attrs(op.node).get("epsilon", 1e-5))
        scale, bias, mean, var = vals
        # Same normalisation with our epsilon: var + eps == var' + BN_EPS.
        var = (var.astype(np.float64) + eps - BN_EPS).astype(np.float32)
        return scale, bias, mean, var

    prev_kind = None
    for slot in slots:
        if slot.kind == "conv":
            op = need("Conv", slot)
            kh, kw, i, o = shapes[f"params/{slot.path}/kernel"]
            w = check(op, op.node.input[1], graph.const(op.node.input[1], op, "weight"), (o, i, kh, kw), "weight")
            b = None
            if len(op.node.input) > 2 and op.node.input[2]:
                b = check(op, op.node.input[2], graph.const(op.node.input[2], op, "bias"), (o,), "bias")
            emit_conv(out, slot.path, w)
            nxt = ops[pos] if pos < len(ops) else None
            if (nxt is not None and nxt.node.op_type == "BatchNormalization"
                    and nxt.node.input[0] == op.node.output[0]):
                pos += 1  # un-folded export: the BatchNorm is still there
                scale, bias, mean, var = read_bn(nxt, o)
                if b is not None:
                    mean = mean - b  # BN(conv + b) == BN'(conv) with mean' = mean - b
                emit_bn(out, slot.bn_path, scale, bias, mean, var)
            else:
                folded += 1
                bias = np.zeros((o,), np.float32) if b is None else b
                emit_bn(out, slot.bn_path, np.ones((o,), np.float32), bias, np.zeros((o,), np.float32),
                        np.full((o,), 1.0 - BN_EPS, np.float32))
        elif slot.kind == "bn":
            c = shapes[f"batch_stats/{slot.path}/mean"][0]
            if prev_kind == "fc" and (pos >= len(ops) or ops[pos].node.op_type != "BatchNormalization"):
                # Some exporters fold the BatchNorm1d after the fc into the Gemm: identity BN.
                folded += 1
                emit_bn(out, slot.path, np.ones((c,), np.float32) if slot.affine else None,
                        np.zeros((c,), np.float32) if slot.affine else None,
                        np.zeros((c,), np.float32), np.full((c,), 1.0 - BN_EPS, np.float32))
                prev_kind = slot.kind
                continue
            op = need("BatchNormalization", slot)
            scale, bias, mean, var = read_bn(op, c)
            if not slot.affine:
                if not (np.all(scale == 1) and np.all(bias == 0)):
                    raise OnnxImportError(
                        f"{source}: {op.label}: {slot.key!r} is affine=False in {model_name} but the graph's scale/bias "
                        f"({op.node.input[1]!r}, {op.node.input[2]!r}) are not 1/0"
                    )
                scale = bias = None
            emit_bn(out, slot.path, scale, bias, mean, var)
        elif slot.kind == "prelu":
            op = need("PRelu", slot)
            c = shapes[f"params/{slot.path}/negative_slope"][0]
            a = graph.const(op.node.input[1], op, "slope").astype(np.float32)
            # ONNX broadcasting right-aligns the slope against NCHW: it is per channel only as [C,1,1]
            # (what torch exports) or [1,C,1,1]; a plain [C] would vary along W. A single slope is shared.
            shape4 = (1,) * (4 - a.ndim) + tuple(a.shape) if a.ndim <= 4 else a.shape
            if a.size == 1:
                a = np.full((c,), float(a.reshape(())), np.float32)
            elif a.size != c or len(shape4) != 4 or shape4[1] != c:
                raise OnnxImportError(
                    f"{source}: {op.label}: slope {op.node.input[1]!r} has shape {tuple(a.shape)}, expected {c} channels"
                )
            emit_prelu(out, slot.path, a.reshape(-1))
        elif slot.kind == "fc":
            op = need("Gemm|MatMul", slot)
            n_in, n_out = shapes[f"params/{slot.path}/kernel"]
            node = op.node
            b = None
            if node.op_type == "Gemm":
                at = graph.attrs(node)
                if at.get("transA", 0) or float(at.get("alpha", 1.0)) != 1.0 or float(at.get("beta", 1.0)) != 1.0:
                    raise OnnxImportError(f"{source}: {op.label}: unsupported Gemm attributes {at}")
                w = graph.const(node.input[1], op, "weight")
                w = w if at.get("transB", 0) else w.T  # -> [out, in]
                if len(node.input) > 2 and node.input[2]:
                    b = graph.const(node.input[2], op, "bias").reshape(-1)
            else:  # MatMul(x, W[in, out]) [+ Add(b)]
                w = graph.const(node.input[1], op, "weight").T
                users = graph.consumers.get(node.output[0], [])
                if len(users) == 1 and graph.nodes[users[0]].op_type == "Add":
                    add = graph.nodes[users[0]]
                    other = [i for i in add.input if i != node.output[0]]
                    if other and other[0] in graph.consts:
                        b = np.asarray(graph.consts[other[0]]).reshape(-1)
            check(op, node.input[1], w, (n_out, n_in), "weight (as [out, in])")
            if slot.bias:
                if b is None:
                    raise OnnxImportError(f"{source}: {op.label}: {model_name} layer {slot.key!r} needs a bias; none found")
                check(op, "bias", b, (n_out,), "bias")
            elif b is not None:
                raise OnnxImportError(f"{source}: {op.label}: {model_name} layer {slot.key!r} has no bias; graph has one")
            emit_fc(out, slot.path, w, b, slot.chw)
        prev_kind = slot.kind
    if pos != len(ops):
        extra = ", ".join(o.label for o in ops[pos:pos + 5])
        raise OnnxImportError(
            f"{source}: {len(ops) - pos} parameterised node(s) left over after mapping all of {model_name}: {extra}"
        )
    variables = assign_variables(shapes, out, source)
    return OnnxImport(variables, model_name, norm, folded)


def load_onnx(path: str | os.PathLike, model_name: str | None = None) -> dict:
    """Flax variables for an insightface-style ONNX recognition graph (see :func:`import_onnx`)."""
    return import_onnx(path, model_name).variables


def onnx_model_name(path: str | os.PathLike) -> str:
    """The registry model name inferred from an ONNX graph's structure."""
    graph = _build_graph(path)
    try:
        return infer_model_name(graph)
    except WeightMappingError:
        raise
    except Exception as e:  # noqa: BLE001 - a malformed graph: name the file
        raise OnnxImportError(f"{os.fspath(path)}: malformed ONNX graph ({type(e).__name__}: {e})") from None
