"""The paper's attack model: a ResNet binary classifier over representation crops.

Stride-8 body as in the paper (DeepLab-style): stem /4, layer2 /2, layers 3 and 4 keep the resolution
with dilations 2 and 4. Then global average pooling and 2 logits (0 = non-member, 1 = member).
Random initialisation only: nothing is downloaded.
"""

import torch
from torch import Tensor, nn

from benchmark.errors import SegleakError

# size -> (block, blocks per stage, base width)
SIZES: dict[str, tuple[str, tuple[int, ...], int]] = {
    "paper": ("bottleneck", (3, 4, 6, 3), 64),  # ResNet-50
    "tiny": ("basic", (1, 1, 1, 1), 16),  # fast enough to train many attacks on a CPU
}


class _Basic(nn.Module):
    expansion = 1

    def __init__(self, cin: int, width: int, stride: int, dilation: int) -> None:
        super().__init__()
        cout = width * self.expansion
        self.body = nn.Sequential(
            nn.Conv2d(cin, width, 3, stride, dilation, dilation, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.Conv2d(width, cout, 3, 1, dilation, dilation, bias=False),
            nn.BatchNorm2d(cout),
        )
        self.skip = _shortcut(cin, cout, stride)

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(self.body(x) + self.skip(x))


class _Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, width: int, stride: int, dilation: int) -> None:
        super().__init__()
        cout = width * self.expansion
        self.body = nn.Sequential(
            nn.Conv2d(cin, width, 1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.Conv2d(width, width, 3, stride, dilation, dilation, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.Conv2d(width, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        )
        self.skip = _shortcut(cin, cout, stride)

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(self.body(x) + self.skip(x))


def _shortcut(cin: int, cout: int, stride: int) -> nn.Module:
    if cin == cout and stride == 1:
        return nn.Identity()
    return nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))


class AttackNet(nn.Module):
    """Binary member / non-member classifier; `in_channels` from `features.representation_channels`."""

    def __init__(self, in_channels: int, size: str = "tiny") -> None:
        super().__init__()
        if size not in SIZES:
            raise SegleakError(f"unknown attack network size {size!r}; known: {sorted(SIZES)}")
        kind, depths, width = SIZES[size]
        block = _Bottleneck if kind == "bottleneck" else _Basic
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, width, 7, 2, 3, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.MaxPool2d(3, 2, 1),
        ]
        cin = width
        # (stride, dilation) per stage: output stride 8, receptive field grown by dilation instead
        for i, (depth, (stride, dilation)) in enumerate(
            zip(depths, [(1, 1), (2, 1), (1, 2), (1, 4)], strict=True)
        ):
            for j in range(depth):
                layers.append(block(cin, width * 2**i, stride if j == 0 else 1, dilation))
                cin = width * 2**i * block.expansion
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(cin, 2)

    def forward(self, x: Tensor) -> Tensor:
        """Logits `[N,2]` for crops `[N,in_channels,h,w]`."""
        # mean instead of AdaptiveAvgPool2d: its CUDA backward has no deterministic implementation
        return self.head(self.body(x).mean(dim=(2, 3)))
