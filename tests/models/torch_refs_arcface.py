"""Independent PyTorch reference modules for the ArcFace-family backbones (tests only).

Written from the public architecture descriptions (REFERENCE.md section 2 and the original repositories'
structure); module attribute names are chosen so that ``state_dict()`` keys and shapes equal the originals'
(insightface ``iresnet.py`` / ``mobilefacenet.py``, AdaFace ``net.py``). NCHW, as in torch.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

IRESNET_BLOCKS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 14, 3), 100: (3, 13, 30, 3), 200: (6, 26, 60, 6)}
ADAFACE_BLOCKS = {18: (2, 2, 2, 2), 50: (3, 4, 14, 3), 101: (3, 13, 30, 3)}


# ----------------------------------------------------------------------------------------------- IResNet
class RefIBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, downsample: bool):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin, eps=1e-5)
        self.conv1 = nn.Conv2d(cin, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout, eps=1e-5)
        self.prelu = nn.PReLU(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, stride, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout, eps=1e-5)
        self.downsample = (
            nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout, eps=1e-5))
            if downsample
            else None
        )

    def forward(self, x):
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        shortcut = self.downsample(x) if self.downsample is not None else x
        return out + shortcut


class RefIResNet(nn.Module):
    def __init__(self, blocks, num_features: int = 512):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64, eps=1e-5)
        self.prelu = nn.PReLU(64)
        cin = 64
        for i, (n, w) in enumerate(zip(blocks, (64, 128, 256, 512)), start=1):
            mods = [RefIBlock(cin, w, 2, True)] + [RefIBlock(w, w, 1, False) for _ in range(n - 1)]
            setattr(self, f"layer{i}", nn.Sequential(*mods))
            cin = w
        self.bn2 = nn.BatchNorm2d(512, eps=1e-5)
        self.dropout = nn.Dropout(p=0.0)
        self.fc = nn.Linear(512 * 7 * 7, num_features)
        self.features = nn.BatchNorm1d(num_features, eps=1e-5)
        nn.init.constant_(self.features.weight, 1.0)
        self.features.weight.requires_grad = False

    def forward(self, x):
        x = self.prelu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = self.dropout(torch.flatten(self.bn2(x), 1))
        return self.features(self.fc(x))


# ----------------------------------------------------------------------------------------------- AdaFace
class RefAdaBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        if cin == cout:
            self.shortcut_layer = nn.MaxPool2d(1, stride)
        else:
            self.shortcut_layer = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        self.res_layer = nn.Sequential(
            nn.BatchNorm2d(cin),
            nn.Conv2d(cin, cout, 3, 1, 1, bias=False),
            nn.BatchNorm2d(cout),
            nn.PReLU(cout),
            nn.Conv2d(cout, cout, 3, stride, 1, bias=False),
            nn.BatchNorm2d(cout),
        )

    def forward(self, x):
        return self.res_layer(x) + self.shortcut_layer(x)


class RefAdaFaceIR(nn.Module):
    """Returns the raw output-layer embedding (the original also returns it L2-normalised with its norm)."""

    def __init__(self, blocks):
        super().__init__()
        self.input_layer = nn.Sequential(nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.PReLU(64))
        units, cin = [], 64
        for n, w in zip(blocks, (64, 128, 256, 512)):
            units.append(RefAdaBlock(cin, w, 2))
            units.extend(RefAdaBlock(w, w, 1) for _ in range(n - 1))
            cin = w
        self.body = nn.Sequential(*units)
        self.output_layer = nn.Sequential(
            nn.BatchNorm2d(512), nn.Dropout(0.4), nn.Flatten(), nn.Linear(512 * 7 * 7, 512),
            nn.BatchNorm1d(512, affine=False),
        )

    def forward(self, x):
        return self.output_layer(self.body(self.input_layer(x)))


# ----------------------------------------------------------------------------------------------- MobileFaceNet
class RefConvBlock(nn.Module):
    def __init__(self, cin, cout, k=1, s=1, p=0, groups=1, linear=False):
        super().__init__()
        mods = [nn.Conv2d(cin, cout, k, s, p, groups=groups, bias=False), nn.BatchNorm2d(cout)]
        if not linear:
            mods.append(nn.PReLU(cout))
        self.layers = nn.Sequential(*mods)

    def forward(self, x):
        return self.layers(x)


class RefDepthWise(nn.Module):
    def __init__(self, cin, cout, residual, stride, groups):
        super().__init__()
        self.residual = residual
        self.layers = nn.Sequential(
            RefConvBlock(cin, groups, 1, 1, 0),
            RefConvBlock(groups, groups, 3, stride, 1, groups=groups),
            RefConvBlock(groups, cout, 1, 1, 0, linear=True),
        )

    def forward(self, x):
        y = self.layers(x)
        return x + y if self.residual else y


class RefResidual(nn.Module):
    def __init__(self, c, num_block, groups):
        super().__init__()
        self.layers = nn.Sequential(*[RefDepthWise(c, c, True, 1, groups) for _ in range(num_block)])

    def forward(self, x):
        return self.layers(x)


class RefGDC(nn.Module):
    def __init__(self, num_features):
        super().__init__()
        self.layers = nn.Sequential(
            RefConvBlock(512, 512, 7, 1, 0, groups=512, linear=True), nn.Flatten(),
            nn.Linear(512, num_features, bias=False), nn.BatchNorm1d(num_features),
        )

    def forward(self, x):
        return self.layers(x)


class RefMobileFaceNet(nn.Module):
    def __init__(self, blocks=(1, 4, 6, 2), scale=2, num_features=512):
        super().__init__()
        c1, c2 = 64 * scale, 128 * scale
        self.layers = nn.ModuleList(
            [
                RefConvBlock(3, c1, 3, 2, 1),
                RefConvBlock(c1, c1, 3, 1, 1, groups=64),
                RefDepthWise(c1, c1, False, 2, 128),
                RefResidual(c1, blocks[1], 128),
                RefDepthWise(c1, c2, False, 2, 256),
                RefResidual(c2, blocks[2], 256),
                RefDepthWise(c2, c2, False, 2, 512),
                RefResidual(c2, blocks[3], 256),
            ]
        )
        self.conv_sep = RefConvBlock(c2, 512, 1, 1, 0)
        self.features = RefGDC(num_features)

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return self.features(self.conv_sep(x))


# ----------------------------------------------------------------------------------------------- helpers
def make_reference(model_name: str) -> nn.Module:
    """The reference module for a registry name (eval mode, float32)."""
    if model_name.startswith("iresnet"):
        net = RefIResNet(IRESNET_BLOCKS[int(model_name[len("iresnet"):])])
    elif model_name.startswith("adaface_ir"):
        net = RefAdaFaceIR(ADAFACE_BLOCKS[int(model_name[len("adaface_ir"):])])
    elif model_name == "mobilefacenet":
        net = RefMobileFaceNet()
    else:
        raise KeyError(model_name)
    return net.eval()


def randomize_(net: nn.Module, rng: np.random.Generator) -> nn.Module:
    """Sets EVERY parameter and BN running statistic to fresh random values (in place), keeping the
    activations' scale sane: conv/linear weights ~ N(0, 1/fan_in), BN scale ~ U(0.5, 1.5), bias/mean ~
    N(0, 0.1), var ~ U(0.5, 2), PReLU slopes ~ U(0, 0.5)."""
    with torch.no_grad():
        for mod in net.modules():
            if isinstance(mod, (nn.Conv2d, nn.Linear)):
                fan_in = int(np.prod(mod.weight.shape[1:]))
                mod.weight.copy_(torch.from_numpy(rng.normal(0, 1 / np.sqrt(fan_in), mod.weight.shape).astype(np.float32)))
                if mod.bias is not None:
                    mod.bias.copy_(torch.from_numpy(rng.normal(0, 0.1, mod.bias.shape).astype(np.float32)))
            elif isinstance(mod, (nn.BatchNorm1d, nn.BatchNorm2d)):
                c = mod.num_features
                if mod.affine:
                    mod.weight.copy_(torch.from_numpy(rng.uniform(0.5, 1.5, c).astype(np.float32)))
                    mod.bias.copy_(torch.from_numpy(rng.normal(0, 0.1, c).astype(np.float32)))
                mod.running_mean.copy_(torch.from_numpy(rng.normal(0, 0.1, c).astype(np.float32)))
                mod.running_var.copy_(torch.from_numpy(rng.uniform(0.5, 2.0, c).astype(np.float32)))
                mod.num_batches_tracked.fill_(int(rng.integers(1, 1000)))
            elif isinstance(mod, nn.PReLU):
                mod.weight.copy_(torch.from_numpy(rng.uniform(0.0, 0.5, mod.weight.shape).astype(np.float32)))
    return net


def torch_param_count(net: nn.Module) -> int:
    """What torch counts as parameters (BN weight/bias included, running statistics excluded)."""
    return sum(p.numel() for p in net.parameters())


def state_dict_numpy(net: nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy() for k, v in net.state_dict().items()}


def forward_numpy(net: nn.Module, x_nhwc: np.ndarray) -> np.ndarray:
    """Runs the reference on an NHWC float32 batch (transposed to NCHW), returns float64 numpy."""
    with torch.no_grad():
        out = net(torch.from_numpy(np.ascontiguousarray(x_nhwc.transpose(0, 3, 1, 2))))
    return out.double().numpy()


# ----------------------------------------------------------------------------------------------- JAX-side helpers
# Shared by the model, converter and ONNX tests: one compiled forward per (model, dtype) per test process.
import functools  # noqa: E402


@functools.lru_cache(maxsize=None)
def jitted_apply(model_name: str, dtype_name: str = "float32"):
    """``jax.jit(model.apply)`` for a registry model in the given compute dtype (cached)."""
    import jax
    import jax.numpy as jnp

    from synleak_jax.models import get_model

    return jax.jit(get_model(model_name, dtype=getattr(jnp, dtype_name)).apply)


def run_flax(model_name: str, variables, x_nhwc: np.ndarray, dtype_name: str = "float32") -> np.ndarray:
    """Flax forward with float32 'highest' matmul/conv precision; returns float64 numpy."""
    import jax

    with jax.default_matmul_precision("highest"):
        out = jitted_apply(model_name, dtype_name)(variables, x_nhwc)
    return np.asarray(out, np.float64)


def rel_l2(a: np.ndarray, ref: np.ndarray) -> float:
    return float(np.linalg.norm(np.asarray(a, np.float64) - ref) / np.linalg.norm(ref))


def min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    return float(np.min((a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)))


def check_state_dict_parity(model_name: str, rng: np.random.Generator, n_images: int = 2, bf16: bool = True):
    """Randomised reference -> state dict -> load_state_dict_into -> Flax forward, vs the torch forward.

    Asserts relative L2 error <= 1e-5 (float32) and, when ``bf16``, <= 2e-2 with cosine >= 0.999 to the
    float32 embedding. Returns (reference module, state dict, variables) for further checks.
    """
    from synleak_jax.weights.converters import load_state_dict_into

    net = randomize_(make_reference(model_name), rng)
    sd = state_dict_numpy(net)
    variables = load_state_dict_into(model_name, sd)
    x = rng.standard_normal((n_images, 112, 112, 3)).astype(np.float32)
    ref = forward_numpy(net, x)
    out = run_flax(model_name, variables, x)
    assert out.shape == (n_images, 512)
    err = rel_l2(out, ref)
    assert err <= 1e-5, f"{model_name}: float32 relative L2 error {err:.3g} > 1e-5"
    if bf16:
        out16 = run_flax(model_name, variables, x, "bfloat16")
        err16 = rel_l2(out16, ref)
        cos = min_cosine(out16, out)
        assert err16 <= 2e-2, f"{model_name}: bf16 relative L2 error {err16:.3g} > 2e-2"
        assert cos >= 0.999, f"{model_name}: bf16 cosine to float32 {cos:.6f} < 0.999"
    return net, sd, variables
