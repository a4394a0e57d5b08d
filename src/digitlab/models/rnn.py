"""Recurrent network that reads the image row by row (28 steps of 28 pixels).

Usage: ``create_model("rnn", cell="lstm", hidden_size=128, num_layers=2, bidirectional=True)``.
"""

from typing import Literal

from pydantic import Field
from torch import Tensor, nn

from digitlab.models.layers import Init
from digitlab.models.registry import Dropout, ModelConfig, Size, register_model

_CELLS = {"rnn": nn.RNN, "gru": nn.GRU, "lstm": nn.LSTM}


class RNNConfig(ModelConfig):
    cell: Literal["rnn", "gru", "lstm"] = "lstm"
    hidden_size: Size = 128
    num_layers: int = Field(1, ge=1, le=16)
    bidirectional: bool = False
    dropout: Dropout = 0.0
    readout: Literal["last", "mean"] = "last"
    # "torch": PyTorch's uniform(+-1/sqrt(hidden)); "keras": Glorot-uniform input weights, orthogonal
    # recurrent weights, zero biases (what Keras' SimpleRNN/LSTM/GRU start from; steadier for plain RNNs).
    init: Init = "torch"


class RowRNN(nn.Module):
    def __init__(self, cfg: RNNConfig) -> None:
        super().__init__()
        self.readout = cfg.readout
        self.rnn = _CELLS[cfg.cell](
            input_size=cfg.input_size[1],
            hidden_size=cfg.hidden_size,
            num_layers=cfg.num_layers,
            batch_first=True,
            bidirectional=cfg.bidirectional,
            dropout=cfg.dropout if cfg.num_layers > 1 else 0.0,
        )
        self.head = nn.Linear(cfg.hidden_size * (2 if cfg.bidirectional else 1), cfg.n_classes)
        if cfg.init == "keras":
            self._keras_init(cfg.hidden_size)

    def _keras_init(self, hidden_size: int) -> None:
        for name, param in self.rnn.named_parameters():
            if name.startswith("weight_ih"):
                nn.init.xavier_uniform_(param)  # fan-out over all gates, as Keras' kernel
            elif name.startswith("weight_hh"):
                nn.init.orthogonal_(param)
            else:
                nn.init.zeros_(param)
                if isinstance(self.rnn, nn.LSTM) and name.startswith("bias_ih"):
                    param.data[hidden_size : 2 * hidden_size] = 1.0  # Keras' unit_forget_bias
        nn.init.xavier_uniform_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self._readout(x))

    def forward_features(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Logits and features: the read-out state ``(B, hidden * directions)``, the head's input."""
        feat = self._readout(x)
        return self.head(feat), feat

    def _readout(self, x: Tensor) -> Tensor:
        seq = x.flatten(1, 2) if x.dim() == 4 else x  # (B, 1, H, W) -> (B, H, W): H steps of W pixels
        out, _ = self.rnn(seq)  # (B, H, hidden * directions)
        return out.mean(dim=1) if self.readout == "mean" else out[:, -1]


@register_model("rnn", RNNConfig)
def build_rnn(cfg: RNNConfig) -> RowRNN:
    """Row-by-row recurrent network: cell rnn/gru/lstm, layers, hidden size, bidirectional."""
    return RowRNN(cfg)
