"""CRNN: a segmentation-free reader of handwritten digit strings (conv features, a bidirectional RNN, CTC).

Usage::

    model = create_model("crnn")                    # (N, 1, 32, W) normalised lines, W any multiple of 4
    log_probs = model(x)                            # (N, W / 4, 1 + len(ALPHABET)) CTC log-probabilities
    texts = ctc_greedy_decode(log_probs, frame_lengths(widths))

The input follows the MNIST convention (light ink on dark, normalised by the preprocessing spec like every
other model), with a fixed height and any width. Conv blocks (conv 3x3, batch norm, ReLU, max pool) halve
the height in every block and the width in the first two only, so each output frame is a 4-pixel column
of the line, seen through the convolutions' wider receptive field. The rows left at the end
(``height / 2**blocks``) are flattened into the frame's features rather than averaged away: a dot, a comma
and a dash differ mostly in where they sit on the line. A bidirectional LSTM or GRU reads the frames and a
linear layer scores class 0 (the CTC blank) and one class per character of the alphabet.
"""

from typing import Literal

from pydantic import Field, model_validator
from torch import Tensor, nn

from digitlab.models.ctc import ALPHABET
from digitlab.models.registry import MAX_WIDTH, Dropout, ModelConfig, Side, Size, register_model

WIDTH_STRIDE = 4  # input columns per output frame: the first two blocks pool the width by 2 each
_WIDTH_POOLS = 2
_CELLS = {"lstm": nn.LSTM, "gru": nn.GRU}


class CRNNConfig(ModelConfig):
    """Architecture of a CRNN; ``input_size`` is (height, a nominal width): the height is fixed, the width is
    only what an export or a shape check starts from (any multiple of 4 is read)."""

    input_size: tuple[Side, Side] = (32, 128)
    n_classes: int = Field(1 + len(ALPHABET), ge=2, le=MAX_WIDTH)
    alphabet: str = Field(ALPHABET, min_length=1, max_length=MAX_WIDTH - 1)
    channels: list[Size] = Field([16, 32, 64, 96], min_length=_WIDTH_POOLS, max_length=8)
    cell: Literal["lstm", "gru"] = "lstm"
    hidden_size: Size = 96
    num_layers: int = Field(2, ge=1, le=4)
    dropout: Dropout = 0.0

    @model_validator(mode="after")
    def _consistent(self) -> "CRNNConfig":
        if len(set(self.alphabet)) != len(self.alphabet):
            raise ValueError(f"alphabet {self.alphabet!r} repeats a character")
        if self.n_classes != 1 + len(self.alphabet):
            raise ValueError(f"n_classes must be 1 + len(alphabet) = {1 + len(self.alphabet)} (the CTC blank and "
                             f"one class per character), got {self.n_classes}")
        height, width = self.input_size
        if height >> len(self.channels) < 1:
            raise ValueError(f"input height {height} is below 2**{len(self.channels)}: each of the "
                             f"{len(self.channels)} conv blocks halves it")
        if width % WIDTH_STRIDE:
            raise ValueError(f"input width {width} is not a multiple of {WIDTH_STRIDE}")
        return self


def frame_lengths(widths: Tensor) -> Tensor:
    """Output frames that cover each string of a padded batch, from its own width in pixels (rounded up: a
    frame with some of the string's columns counts); the ``input_lengths`` of ``ctc_loss`` and the
    ``lengths`` of the decoders."""
    return (widths + WIDTH_STRIDE - 1) // WIDTH_STRIDE


class CRNN(nn.Module):
    def __init__(self, cfg: CRNNConfig) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels, height = 1, cfg.input_size[0]
        for i, filters in enumerate(cfg.channels):
            pool = (2, 2) if i < _WIDTH_POOLS else (2, 1)
            layers += [nn.Conv2d(channels, filters, 3, padding=1, bias=False), nn.BatchNorm2d(filters),
                       nn.ReLU(inplace=True), nn.MaxPool2d(pool)]
            channels, height = filters, height // 2
        self.features = nn.Sequential(*layers)
        self.rnn = _CELLS[cfg.cell](
            input_size=channels * height,
            hidden_size=cfg.hidden_size,
            num_layers=cfg.num_layers,
            batch_first=True,
            bidirectional=True,
            dropout=cfg.dropout if cfg.num_layers > 1 else 0.0,
        )
        self.dropout = nn.Dropout(cfg.dropout)
        self.head = nn.Linear(2 * cfg.hidden_size, cfg.n_classes)

    def forward(self, x: Tensor) -> Tensor:
        """``(N, 1, H, W)`` -> ``(N, W // 4, n_classes)`` log-probabilities over the blank and the alphabet."""
        return self.forward_features(x)[0]

    def forward_features(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Log-probabilities ``(N, T, n_classes)`` and the frame features ``(N, T, 2 * hidden)`` the head reads."""
        f = self.features(x)  # (N, C, H / 2**blocks, W / 4)
        frames = f.flatten(1, 2).transpose(1, 2)  # (N, T, C * rows)
        seq, _ = self.rnn(frames)  # (N, T, 2 * hidden)
        return self.head(self.dropout(seq)).log_softmax(-1), seq


@register_model("crnn", CRNNConfig, kind="sequence")
def build_crnn(cfg: CRNNConfig) -> CRNN:
    """Digit-string reader: conv blocks, a bidirectional LSTM/GRU over W/4 frames, CTC log-probabilities."""
    return CRNN(cfg)
