"""Multi-layer perceptron on the flattened image.

Usage: ``create_model("mlp", hidden_sizes=[256, 128])`` is the 784-256-128-10 network.
"""

import math

from torch import Tensor, nn

from digitlab.models.layers import Activation, Init, apply_init, make_activation
from digitlab.models.registry import Dropout, ModelConfig, Size, register_model


class MLPConfig(ModelConfig):
    hidden_sizes: list[Size] = [256, 128]
    activation: Activation = "relu"
    dropout: Dropout = 0.0
    batch_norm: bool = False
    init: Init = "torch"


class MLP(nn.Module):
    def __init__(self, cfg: MLPConfig) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = math.prod(cfg.input_size)
        for hidden in cfg.hidden_sizes:
            layers.append(nn.Linear(width, hidden, bias=not cfg.batch_norm))
            if cfg.batch_norm:
                layers.append(nn.BatchNorm1d(hidden))
            layers.append(make_activation(cfg.activation))
            if cfg.dropout > 0:
                layers.append(nn.Dropout(cfg.dropout))
            width = hidden
        layers.append(nn.Linear(width, cfg.n_classes))
        self.net = nn.Sequential(*layers)
        apply_init(self, cfg.init)

    def forward(self, x: Tensor) -> Tensor:  # (B, 1, H, W) -> (B, n_classes)
        return self.net(x)

    def forward_features(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Logits and features: the input of the last linear layer ``(B, last hidden size)``."""
        penultimate = self.net[:-1](x)
        return self.net[-1](penultimate), penultimate


@register_model("mlp", MLPConfig)
def build_mlp(cfg: MLPConfig) -> MLP:
    """Multi-layer perceptron: hidden sizes, activation, dropout, batch norm."""
    return MLP(cfg)
