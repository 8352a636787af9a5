"""PyTorch reference modules for the FaceNet, SphereFace-20 and MTCNN parity tests.

Written from the public descriptions of the original networks (facenet-pytorch's Inception-ResNet-v1 and
MTCNN, the sphere20a PyTorch port), with the same state-dict key names and shapes, so a ``state_dict()``
of these modules has exactly the layout of the released weight files. Test-only code.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

# ------------------------------------------------------------------------------------------------
# FaceNet Inception-ResNet-v1 (facenet-pytorch layout).


class ConvBnRelu(nn.Module):
    """conv (no bias) -> BN(eps 1e-3) -> ReLU; keys conv.weight, bn.{weight,bias,running_*}."""

    def __init__(self, cin, cout, k, stride=1, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=1e-3)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


class Block35(nn.Module):
    def __init__(self, scale):
        super().__init__()
        self.scale = scale
        self.branch0 = ConvBnRelu(256, 32, 1)
        self.branch1 = nn.Sequential(ConvBnRelu(256, 32, 1), ConvBnRelu(32, 32, 3, padding=1))
        self.branch2 = nn.Sequential(ConvBnRelu(256, 32, 1), ConvBnRelu(32, 32, 3, padding=1),
                                     ConvBnRelu(32, 32, 3, padding=1))
        self.conv2d = nn.Conv2d(96, 256, 1)

    def forward(self, x):
        y = torch.cat([self.branch0(x), self.branch1(x), self.branch2(x)], 1)
        return F.relu(self.conv2d(y) * self.scale + x)


class Block17(nn.Module):
    def __init__(self, scale):
        super().__init__()
        self.scale = scale
        self.branch0 = ConvBnRelu(896, 128, 1)
        self.branch1 = nn.Sequential(ConvBnRelu(896, 128, 1), ConvBnRelu(128, 128, (1, 7), padding=(0, 3)),
                                     ConvBnRelu(128, 128, (7, 1), padding=(3, 0)))
        self.conv2d = nn.Conv2d(256, 896, 1)

    def forward(self, x):
        y = torch.cat([self.branch0(x), self.branch1(x)], 1)
        return F.relu(self.conv2d(y) * self.scale + x)


class Block8(nn.Module):
    def __init__(self, scale=1.0, relu=True):
        super().__init__()
        self.scale, self.relu = scale, relu
        self.branch0 = ConvBnRelu(1792, 192, 1)
        self.branch1 = nn.Sequential(ConvBnRelu(1792, 192, 1), ConvBnRelu(192, 192, (1, 3), padding=(0, 1)),
                                     ConvBnRelu(192, 192, (3, 1), padding=(1, 0)))
        self.conv2d = nn.Conv2d(384, 1792, 1)

    def forward(self, x):
        y = self.conv2d(torch.cat([self.branch0(x), self.branch1(x)], 1)) * self.scale + x
        return F.relu(y) if self.relu else y


class Mixed6a(nn.Module):
    def __init__(self):
        super().__init__()
        self.branch0 = ConvBnRelu(256, 384, 3, stride=2)
        self.branch1 = nn.Sequential(ConvBnRelu(256, 192, 1), ConvBnRelu(192, 192, 3, padding=1),
                                     ConvBnRelu(192, 256, 3, stride=2))

    def forward(self, x):
        return torch.cat([self.branch0(x), self.branch1(x), F.max_pool2d(x, 3, 2)], 1)


class Mixed7a(nn.Module):
    def __init__(self):
        super().__init__()
        self.branch0 = nn.Sequential(ConvBnRelu(896, 256, 1), ConvBnRelu(256, 384, 3, stride=2))
        self.branch1 = nn.Sequential(ConvBnRelu(896, 256, 1), ConvBnRelu(256, 256, 3, stride=2))
        self.branch2 = nn.Sequential(ConvBnRelu(896, 256, 1), ConvBnRelu(256, 256, 3, padding=1),
                                     ConvBnRelu(256, 256, 3, stride=2))

    def forward(self, x):
        return torch.cat([self.branch0(x), self.branch1(x), self.branch2(x), F.max_pool2d(x, 3, 2)], 1)


class InceptionResnetV1Ref(nn.Module):
    """Returns the raw last_bn output (before the L2 normalisation facenet-pytorch applies)."""

    def __init__(self, num_logits: int | None = None):
        super().__init__()
        self.conv2d_1a = ConvBnRelu(3, 32, 3, stride=2)
        self.conv2d_2a = ConvBnRelu(32, 32, 3)
        self.conv2d_2b = ConvBnRelu(32, 64, 3, padding=1)
        self.conv2d_3b = ConvBnRelu(64, 80, 1)
        self.conv2d_4a = ConvBnRelu(80, 192, 3)
        self.conv2d_4b = ConvBnRelu(192, 256, 3, stride=2)
        self.repeat_1 = nn.Sequential(*[Block35(0.17) for _ in range(5)])
        self.mixed_6a = Mixed6a()
        self.repeat_2 = nn.Sequential(*[Block17(0.10) for _ in range(10)])
        self.mixed_7a = Mixed7a()
        self.repeat_3 = nn.Sequential(*[Block8(0.20) for _ in range(5)])
        self.block8 = Block8(relu=False)
        self.last_linear = nn.Linear(1792, 512, bias=False)
        self.last_bn = nn.BatchNorm1d(512, eps=1e-3)
        if num_logits:
            self.logits = nn.Linear(512, num_logits)

    def forward(self, x):
        x = self.conv2d_2b(self.conv2d_2a(self.conv2d_1a(x)))
        x = F.max_pool2d(x, 3, 2)
        x = self.conv2d_4b(self.conv2d_4a(self.conv2d_3b(x)))
        x = self.repeat_2(self.mixed_6a(self.repeat_1(x)))
        x = self.block8(self.repeat_3(self.mixed_7a(x)))
        x = x.mean(dim=(2, 3))
        return self.last_bn(self.last_linear(x))


# ------------------------------------------------------------------------------------------------
# SphereFace-20 (sphere20a layout).


class Sphere20aRef(nn.Module):
    """conv/PReLU stages 64-128-256-512 with residual pairs; fc5 on the (C,H,W) flatten of 512x7x6.

    ``fc6`` is the AngleLinear classifier weight [512, classes] (a bare parameter here, unused in forward).
    """

    def __init__(self, classnum: int = 10574):
        super().__init__()
        plan = [("1", 3, 64, 1), ("2", 64, 128, 2), ("3", 128, 256, 4), ("4", 256, 512, 1)]
        for stage, cin, cout, pairs in plan:
            setattr(self, f"conv{stage}_1", nn.Conv2d(cin, cout, 3, 2, 1))
            setattr(self, f"relu{stage}_1", nn.PReLU(cout))
            for j in range(2, 2 + 2 * pairs):
                setattr(self, f"conv{stage}_{j}", nn.Conv2d(cout, cout, 3, 1, 1))
                setattr(self, f"relu{stage}_{j}", nn.PReLU(cout))
        self._plan = plan
        self.fc5 = nn.Linear(512 * 7 * 6, 512)
        self.fc6 = nn.Module()
        self.fc6.weight = nn.Parameter(torch.randn(512, classnum))

    def forward(self, x):
        for stage, _, _, pairs in self._plan:
            c = lambda j: getattr(self, f"conv{stage}_{j}")
            r = lambda j: getattr(self, f"relu{stage}_{j}")
            x = r(1)(c(1)(x))
            for j in range(2, 2 + 2 * pairs, 2):
                x = x + r(j + 1)(c(j + 1)(r(j)(c(j)(x))))
        return self.fc5(x.flatten(1))


# ------------------------------------------------------------------------------------------------
# MTCNN (facenet-pytorch layout).


class PNetRef(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 10, 3), nn.PReLU(10)
        self.conv2, self.prelu2 = nn.Conv2d(10, 16, 3), nn.PReLU(16)
        self.conv3, self.prelu3 = nn.Conv2d(16, 32, 3), nn.PReLU(32)
        self.conv4_1, self.conv4_2 = nn.Conv2d(32, 2, 1), nn.Conv2d(32, 4, 1)

    def forward(self, x):
        x = F.max_pool2d(self.prelu1(self.conv1(x)), 2, 2, ceil_mode=True)
        x = self.prelu3(self.conv3(self.prelu2(self.conv2(x))))
        return self.conv4_2(x), F.softmax(self.conv4_1(x), dim=1)


class RNetRef(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 28, 3), nn.PReLU(28)
        self.conv2, self.prelu2 = nn.Conv2d(28, 48, 3), nn.PReLU(48)
        self.conv3, self.prelu3 = nn.Conv2d(48, 64, 2), nn.PReLU(64)
        self.dense4, self.prelu4 = nn.Linear(576, 128), nn.PReLU(128)
        self.dense5_1, self.dense5_2 = nn.Linear(128, 2), nn.Linear(128, 4)

    def forward(self, x):
        x = F.max_pool2d(self.prelu1(self.conv1(x)), 3, 2, ceil_mode=True)
        x = F.max_pool2d(self.prelu2(self.conv2(x)), 3, 2, ceil_mode=True)
        x = self.prelu3(self.conv3(x)).permute(0, 3, 2, 1).reshape(x.shape[0], -1)
        x = self.prelu4(self.dense4(x))
        return self.dense5_2(x), F.softmax(self.dense5_1(x), dim=1)


class ONetRef(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 32, 3), nn.PReLU(32)
        self.conv2, self.prelu2 = nn.Conv2d(32, 64, 3), nn.PReLU(64)
        self.conv3, self.prelu3 = nn.Conv2d(64, 64, 3), nn.PReLU(64)
        self.conv4, self.prelu4 = nn.Conv2d(64, 128, 2), nn.PReLU(128)
        self.dense5, self.prelu5 = nn.Linear(1152, 256), nn.PReLU(256)
        self.dense6_1, self.dense6_2, self.dense6_3 = nn.Linear(256, 2), nn.Linear(256, 4), nn.Linear(256, 10)

    def forward(self, x):
        x = F.max_pool2d(self.prelu1(self.conv1(x)), 3, 2, ceil_mode=True)
        x = F.max_pool2d(self.prelu2(self.conv2(x)), 3, 2, ceil_mode=True)
        x = F.max_pool2d(self.prelu3(self.conv3(x)), 2, 2, ceil_mode=True)
        x = self.prelu4(self.conv4(x)).permute(0, 3, 2, 1).reshape(x.shape[0], -1)
        x = self.prelu5(self.dense5(x))
        return self.dense6_2(x), self.dense6_3(x), F.softmax(self.dense6_1(x), dim=1)


MTCNN_REFS = {"pnet": PNetRef, "rnet": RNetRef, "onet": ONetRef}


def randomize_(module: nn.Module, generator: torch.Generator) -> nn.Module:
    """Fills every parameter and BN running statistic with random values (in place), for parity tests.

    Conv/linear weights ~ N(0, 1/fan_in); biases, BN affine and means ~ small normals; running variances
    in [0.5, 1.5]; PReLU slopes in [0, 0.5].
    """
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("weight") and p.ndim >= 2:
                fan_in = p[0].numel() if not name.startswith("fc6") else p.shape[0]
                p.copy_(torch.randn(p.shape, generator=generator) / fan_in**0.5)
            elif "prelu" in name or ".relu" in name or name.startswith("relu"):
                p.copy_(torch.rand(p.shape, generator=generator) * 0.5)
            elif name.endswith("bn.weight") or name == "last_bn.weight":
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=generator))
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=generator))
        for name, b in module.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(0.1 * torch.randn(b.shape, generator=generator))
            elif name.endswith("running_var"):
                b.copy_(0.5 + torch.rand(b.shape, generator=generator))
    return module.eval()
