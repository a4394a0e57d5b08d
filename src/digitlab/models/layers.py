"""Small building blocks shared by the model families.

Usage: ``make_activation("gelu")``.
"""

from typing import Literal

from torch import nn

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
