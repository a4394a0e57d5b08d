"""Convolutional networks: a configurable conv-block CNN, and LeNet-5.

Usage::

    create_model("cnn", blocks=[{"filters": 32}, {"filters": 64}], dense=[128])
    create_model("lenet5")
    logits, features = model.forward_features(x)   # (B, n_classes), (B, F): what a non-digit detector reads
"""

from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn

from digitlab.models.layers import Activation, Init, apply_init, logits_and_features, make_activation
from digitlab.models.registry import Dropout, ModelConfig, Size, register_model


class ConvBlock(BaseModel):
    """``convs`` conv layers of ``filters`` channels, then optional pooling and dropout."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    filters: Size
    kernel: int = Field(3, ge=1, le=31)
    convs: int = Field(1, ge=1, le=16)
    padding: Literal["same", "valid"] = "same"
    pool: Literal["max", "avg", "none"] = "max"
    batch_norm: bool = False
    dropout: Dropout = 0.0
    pool_first: bool = Field(False, description="pool right after the block's last conv, before norm and "
                             "activation: a quarter of the elementwise work, as speed-run CNNs do")


class CNNConfig(ModelConfig):
    blocks: list[ConvBlock] = [ConvBlock(filters=32), ConvBlock(filters=64)]
    dense: list[Size] = [128]
    dense_dropout: Dropout = 0.0
    activation: Activation = "relu"
    global_pool: bool = False
    init: Init = "torch"


def _flat_features(features: nn.Module, input_size: tuple[int, int]) -> int:
    """Width of ``features``' flattened output, found by running it once (no magic numbers)."""
    with torch.no_grad():
        was_training = features.training
        features.eval()
        out = features(torch.zeros(1, 1, *input_size))
        features.train(was_training)
    return out.flatten(1).shape[1]


class CNN(nn.Module):
    def __init__(self, cfg: CNNConfig) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        taps: list[int] = []  # index of each block's last activation in self.features
        channels = 1
        for block in cfg.blocks:
            pool = None if block.pool == "none" else (nn.MaxPool2d(2) if block.pool == "max" else nn.AvgPool2d(2))
            for i in range(block.convs):
                pad = block.kernel // 2 if block.padding == "same" else 0
                layers.append(nn.Conv2d(channels, block.filters, block.kernel, padding=pad, bias=not block.batch_norm))
                if pool is not None and block.pool_first and i == block.convs - 1:
                    layers.append(pool)
                    pool = None
                if block.batch_norm:
                    layers.append(nn.BatchNorm2d(block.filters))
                layers.append(make_activation(cfg.activation))
                channels = block.filters
            taps.append(len(layers) - 1)
            if pool is not None:
                layers.append(pool)
            if block.dropout > 0:
                layers.append(nn.Dropout(block.dropout))
        if cfg.global_pool:
            layers.append(nn.AdaptiveAvgPool2d(1))
        self.features = nn.Sequential(*layers)
        self.taps = tuple(taps)
        head: list[nn.Module] = [nn.Flatten()]
        width = _flat_features(self.features, cfg.input_size)
        for units in cfg.dense:
            head += [nn.Linear(width, units), make_activation(cfg.activation)]
            if cfg.dense_dropout > 0:
                head.append(nn.Dropout(cfg.dense_dropout))
            width = units
        head.append(nn.Linear(width, cfg.n_classes))
        self.head = nn.Sequential(*head)
        apply_init(self, cfg.init)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))

    def forward_features(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Logits ``(B, n_classes)`` and features ``(B, F)``: the input of the last linear layer, then each
        conv block's last activation averaged over space (``F = penultimate + sum of block filters``)."""
        return logits_and_features(self.features, self.head, self.taps, x)


@register_model("cnn", CNNConfig)
def build_cnn(cfg: CNNConfig) -> CNN:
    """Conv blocks (filters, kernel, pooling, batch norm, dropout) and a dense head."""
    return CNN(cfg)


class LeNet5Config(ModelConfig):
    activation: Activation = "tanh"
    pool: Literal["avg", "max"] = "avg"


class LeNet5(nn.Module):
    """LeCun et al. 1998: C1 6@5x5, S2, C3 16@5x5, S4, C5 120@5x5, F6 84, output.

    Faithful in layout and sizes (the 28x28 input is padded to the paper's 32x32), with today's
    simplifications: C3 connects to all six S2 maps (the paper's sparse table saved compute that
    no longer matters), subsampling is plain average pooling without trainable coefficients, and
    the RBF output layer is a linear layer trained with cross-entropy.
    """

    def __init__(self, cfg: LeNet5Config) -> None:
        super().__init__()
        act = lambda: make_activation(cfg.activation)  # noqa: E731
        pool = lambda: nn.AvgPool2d(2) if cfg.pool == "avg" else nn.MaxPool2d(2)  # noqa: E731
        pad = max(0, (32 - cfg.input_size[0]) // 2)
        self.features = nn.Sequential(
            nn.Conv2d(1, 6, 5, padding=pad), act(), pool(),   # C1, S2: (6, 14, 14)
            nn.Conv2d(6, 16, 5), act(), pool(),               # C3, S4: (16, 5, 5)
            nn.Conv2d(16, 120, 5), act(),                     # C5: (120, 1, 1)
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(_flat_features(self.features, cfg.input_size), 84), act(),
                                  nn.Linear(84, cfg.n_classes))
        self.taps = (1, 4, 7)  # the activations of C1, C3 and C5

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))

    def forward_features(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Logits and features ``(B, 84 + 6 + 16 + 120)``: F6's input, then C1, C3 and C5 averaged over space."""
        return logits_and_features(self.features, self.head, self.taps, x)


@register_model("lenet5", LeNet5Config)
def build_lenet5(cfg: LeNet5Config) -> LeNet5:
    """LeNet-5 (LeCun et al. 1998), as faithful as makes sense today."""
    return LeNet5(cfg)
