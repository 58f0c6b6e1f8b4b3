"""ResNet definitions: the CIFAR-style family of He et al. 2015 (section 4.2) and torchvision's ImageNet ResNets.

The CIFAR family has 6n+2 layers: a 3x3 stem conv, three stages of n basic blocks with 16, 32 and 64 channels,
global average pooling and a linear classifier. Stage changes use the paper's option A shortcut (stride-2
subsampling and zero-padded channels), so the residual network has exactly the plain network's parameters.
With ``residual=False`` the blocks drop the skip addition: that is the paper's "plain" baseline.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

CIFAR_DEPTHS = (20, 32, 44, 56, 110)
TORCHVISION_ARCHS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")


class BasicBlock(nn.Module):
    """Two 3x3 convs; with ``residual`` the input is added back before the last ReLU: H(x) = relu(F(x) + x)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, residual: bool) -> None:
        super().__init__()
        self.residual = residual
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.subsample = stride != 1
        self.extra_channels = out_channels - in_channels

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        # Option A: parameter-free identity, subsampled and zero-padded where the stage changes shape.
        if self.subsample:
            x = x[:, :, ::2, ::2]
        if self.extra_channels:
            half = self.extra_channels // 2
            x = F.pad(x, (0, 0, 0, 0, half, self.extra_channels - half))
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.residual:
            out = out + self.shortcut(x)
        return F.relu(out)


@dataclass(frozen=True)
class CifarResNetConfig:
    """Everything needed to rebuild a CifarResNet; stored in checkpoints."""

    depth: int = 20
    residual: bool = True
    in_channels: int = 1
    num_classes: int = 10

    @property
    def name(self) -> str:
        return f"{'resnet' if self.residual else 'plain'}{self.depth}"

    def to_dict(self) -> dict:
        return asdict(self)


class CifarResNet(nn.Module):
    """ResNet (or plain net) of depth 6n+2 for small images, after He et al. 2015, section 4.2."""

    def __init__(self, config: CifarResNetConfig) -> None:
        super().__init__()
        if (config.depth - 2) % 6 != 0 or config.depth < 8:
            raise ValueError(f"depth must be 6n+2 with n >= 1 (20, 32, 44, 56, 110, ...), got {config.depth}")
        self.config = config
        blocks_per_stage = (config.depth - 2) // 6
        self.conv1 = nn.Conv2d(config.in_channels, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        stages: list[nn.Module] = []
        in_channels = 16
        for stage, channels in enumerate((16, 32, 64)):
            blocks = []
            for index in range(blocks_per_stage):
                stride = 2 if stage > 0 and index == 0 else 1
                blocks.append(BasicBlock(in_channels, channels, stride, config.residual))
                in_channels = channels
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.fc = nn.Linear(64, config.num_classes)
        self._initialise()

    def _initialise(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.stages(x)
        # mean() rather than AdaptiveAvgPool2d: its CUDA backward has no deterministic implementation.
        x = x.mean(dim=(2, 3))
        return self.fc(x)

    def weight_layers(self) -> list[tuple[str, nn.Module]]:
        """The weighted layers (convs and the classifier) in forward order; depth counts exactly these."""
        return [(n, m) for n, m in self.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def cifar_resnet(depth: int = 20, *, residual: bool = True, in_channels: int = 1, num_classes: int = 10) -> CifarResNet:
    return CifarResNet(CifarResNetConfig(depth, residual, in_channels, num_classes))


def parse_cifar_arch(name: str) -> CifarResNetConfig:
    """'resnet20' -> residual depth 20; 'plain56' -> plain depth 56."""
    for prefix, residual in (("resnet", True), ("plain", False)):
        if name.startswith(prefix) and name[len(prefix) :].isdigit():
            return CifarResNetConfig(depth=int(name[len(prefix) :]), residual=residual)
    raise ValueError(f"unknown CIFAR-style architecture {name!r}; use resnetN or plainN with N = 6n+2 (e.g. resnet20)")


def torchvision_resnet(arch: str, weights: str | Path | None = None) -> nn.Module:
    """A torchvision ImageNet ResNet with weights from a local state_dict file, a torchvision weights name
    (for example 'IMAGENET1K_V2', which downloads and so needs internet), or random initialisation (None)."""
    import torchvision.models as tvm

    if arch not in TORCHVISION_ARCHS:
        raise ValueError(f"unknown torchvision architecture {arch!r}; choose one of {', '.join(TORCHVISION_ARCHS)}")
    builder = getattr(tvm, arch)
    if weights is None:
        return builder(weights=None)
    path = Path(weights)
    if path.suffix in {".pt", ".pth", ".bin"} or path.exists():
        if not path.is_file():
            raise FileNotFoundError(f"state_dict file {path} does not exist")
        state = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and "state_dict" in state:
            state = state["state_dict"]
        model = builder(weights=None, num_classes=state["fc.weight"].shape[0])
        model.load_state_dict(state)
        return model
    return builder(weights=torchvision_weights_enum(arch)[str(weights)])


def torchvision_weights_enum(arch: str):
    import torchvision.models as tvm

    return tvm.get_model_weights(arch)


def imagenet_categories(arch: str) -> list[str]:
    """ImageNet class names as torchvision ships them in code (no download needed)."""
    enum = torchvision_weights_enum(arch)
    return list(next(iter(enum)).meta["categories"])
