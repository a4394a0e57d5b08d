"""Small building blocks shared by the model families.

Usage: ``make_activation("gelu")``, ``apply_init(model, "keras")``, ``run_with_taps(seq, x, taps)``,
``logits_and_features(body, head, taps, x)``.
"""

from typing import Literal

import torch
from torch import Tensor, nn

Activation = Literal["relu", "gelu", "silu", "tanh", "sigmoid", "leaky_relu"]
_ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "leaky_relu": nn.LeakyReLU,
}


def make_activation(name: Activation) -> nn.Module:
    """A fresh activation module by name."""
    return _ACTIVATIONS[name]()


Init = Literal["torch", "keras"]
"""How weights start: "torch" keeps PyTorch's defaults (Kaiming-uniform with a=sqrt(5), which is
small); "keras" is Glorot-uniform weights and zero biases, what Keras' Dense and Conv2D start from,
so replicas of Keras designs train as their references did."""


def apply_init(module: nn.Module, init: Init) -> None:
    """Re-initialise every Linear and Conv layer of ``module`` in the named scheme."""
    if init == "torch":
        return
    for layer in module.modules():
        if isinstance(layer, (nn.Linear, nn.Conv1d, nn.Conv2d)):
            nn.init.xavier_uniform_(layer.weight)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)


def run_with_taps(layers: nn.Sequential, x: Tensor, taps: tuple[int, ...]) -> tuple[Tensor, list[Tensor]]:
    """``layers(x)``, and the global average over space of the output of each layer whose index is in
    ``taps``: ``(B, C, H, W) -> (B, C)`` each. A plain loop over a fixed structure (no hooks, no
    stored state), so that ``torch.onnx.export`` traces it like ``forward``."""
    pooled = []
    for i, layer in enumerate(layers):
        x = layer(x)
        if i in taps:
            # a sum, not .mean(): opset 18's ReduceMean does not convert down to 17 from the dynamo exporter
            pooled.append(x.sum(dim=(2, 3)) / (x.shape[2] * x.shape[3]))
    return x, pooled


def logits_and_features(body: nn.Sequential, head: nn.Sequential, taps: tuple[int, ...],
                        x: Tensor) -> tuple[Tensor, Tensor]:
    """``head(body(x))`` and the features a non-digit detector reads: the input of ``head``'s last (linear)
    layer, then the outputs of ``body``'s ``taps`` averaged over space."""
    h, pooled = run_with_taps(body, x, taps)
    penultimate = head[:-1](h)  # (B, width of the last linear layer's input)
    return head[-1](penultimate), torch.cat([penultimate, *pooled], dim=1)
