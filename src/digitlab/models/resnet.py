"""A small residual network for 28x28 inputs; width and depth configurable.

Usage: ``create_model("resnet", width=32, stages=[2, 2, 2])`` (channels double per stage);
``logits, features = model.forward_features(x)`` for a non-digit detector.
"""

from typing import Annotated

from pydantic import Field
from torch import Tensor, nn

from digitlab.models.layers import logits_and_features
from digitlab.models.registry import Dropout, ModelConfig, Size, register_model


class ResNetConfig(ModelConfig):
    width: Size = 32
    stages: list[Annotated[int, Field(ge=1, le=64)]] = Field([2, 2, 2], min_length=1)
    dropout: Dropout = 0.0


class BasicBlock(nn.Module):
    """Two 3x3 convs with batch norm and an identity (or 1x1 projected) shortcut."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=True),
            nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
            nn.BatchNorm2d(c_out),
        )
        self.shortcut = (
            nn.Identity()
            if stride == 1 and c_in == c_out
            else nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out))
        )
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.body(x) + self.shortcut(x))


class ResNet(nn.Module):
    def __init__(self, cfg: ResNetConfig) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, cfg.width, 3, padding=1, bias=False), nn.BatchNorm2d(cfg.width),
                                  nn.ReLU(inplace=True))
        blocks: list[nn.Module] = []
        ends: list[int] = []  # index of each stage's last block in self.blocks
        c = cfg.width
        for i, n_blocks in enumerate(cfg.stages):
            c_out = cfg.width * 2**i
            for j in range(n_blocks):
                blocks.append(BasicBlock(c, c_out, stride=2 if (i > 0 and j == 0) else 1))
                c = c_out
            if n_blocks:
                ends.append(len(blocks) - 1)
        self.blocks = nn.Sequential(*blocks)
        # the last stage's pooled output is the penultimate feature already
        self.taps = tuple(ends[:-1])
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(cfg.dropout),
                                  nn.Linear(c, cfg.n_classes))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.blocks(self.stem(x)))

    def forward_features(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Logits and features ``(B, F)``: the input of the last linear layer (the last stage averaged over
        space), then each earlier stage's output averaged over space."""
        return logits_and_features(self.blocks, self.head, self.taps, self.stem(x))


@register_model("resnet", ResNetConfig)
def build_resnet(cfg: ResNetConfig) -> ResNet:
    """Small residual network for 28x28 inputs: width and blocks per stage."""
    return ResNet(cfg)
