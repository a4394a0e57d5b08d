"""A learned non-digit detector: a small MLP on a network's features that scores how little an input
looks like a digit, beside the softmax-confidence threshold.

Usage::

    detector = fit_detector(digits=(feats, logits), nondigits=(feats_x, logits_x), temperature=0.46)
    scores = detector(features, logits)                   # (N,): higher is less digit-like
    t_soft, t_det = rejection_thresholds(val_conf, val_scores, rate=0.007, softmax_rate=0.003)

A classifier trained on digits alone reads anything as some digit, often confidently; a confidence
threshold alone does not reject enough non-digits (docs/decisions.md#rejection). The detector is a
binary classifier, digits (0) against the library's synthetic non-digits (1,
``digitlab.data.nondigits``), reading what the network already computed: the input of its last
linear layer, each conv block's output averaged over space (see the families' ``forward_features``),
the calibrated max confidence and the energy (``-logsumexp`` of the logits). Why this score and not
another: docs/decisions.md#non-digit-detector. Its input scaler lives in the module (buffers), so the
rejection file (``inference.rejection``) and the ONNX graph hold all of it.
"""

import math

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from digitlab.core.errors import DigitlabError

HIDDEN = 128
EPOCHS = 15
MIN_STEPS = 150  # tiny runs (a few hundred images) still get enough updates
BATCH = 256
LR = 1e-3
# Adam's L2 penalty: stronger trades non-digits caught for digits kept (docs/decisions.md#detector-weight-decay).
WEIGHT_DECAY = 2e-3
_MIN_SCALE = 1e-6  # a feature that never varies (a dead channel) is centred, not scaled


class DetectorError(DigitlabError):
    """Inputs a detector cannot be fitted on."""


class NonDigitDetector(nn.Module):
    """``(features (N, F), logits (N, C)) -> (N,)`` non-digit score (a logit: > 0 means "more likely not a
    digit" to the detector; the rejection threshold is chosen on validation digits instead)."""

    def __init__(self, n_features: int, hidden: int = HIDDEN, temperature: float = 1.0) -> None:
        super().__init__()
        n_inputs = n_features + 2  # + calibrated confidence, energy
        self.register_buffer("mean", torch.zeros(n_inputs))
        self.register_buffer("scale", torch.ones(n_inputs))
        self.register_buffer("temperature", torch.tensor(float(temperature)))
        self.hidden = nn.Linear(n_inputs, hidden)
        self.out = nn.Linear(hidden, 1)

    @property
    def n_features(self) -> int:
        return self.hidden.in_features - 2

    def inputs(self, features: Tensor, logits: Tensor) -> Tensor:
        """The unscaled inputs ``(N, F + 2)``: features, calibrated max confidence, energy."""
        # TopK and ReduceSum rather than amax and logsumexp: the dynamo exporter writes opset 18, and its
        # ReduceMax / ReduceLogSumExp do not convert down to opset 17 (see export.onnx)
        confidence = torch.topk(torch.softmax(logits / self.temperature, dim=1), 1, dim=1).values
        top = torch.topk(logits, 1, dim=1).values  # (N, 1)
        energy = -(top + torch.log(torch.exp(logits - top).sum(dim=1, keepdim=True)))  # -logsumexp, stable
        return torch.cat([features, confidence, energy], dim=1)

    def classify(self, scaled: Tensor) -> Tensor:
        """Scores ``(N,)`` of already scaled inputs."""
        return self.out(torch.relu(self.hidden(scaled))).squeeze(1)

    def forward(self, features: Tensor, logits: Tensor) -> Tensor:
        return self.classify((self.inputs(features, logits) - self.mean) / self.scale)


class ScoredModel(nn.Module):
    """A network and its detector as one module: ``x -> (logits, nondigit_score)`` (what ONNX export traces)."""

    def __init__(self, model: nn.Module, detector: NonDigitDetector) -> None:
        super().__init__()
        self.model = model
        self.detector = detector

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        logits, features = self.model.forward_features(x)  # type: ignore[operator]
        return logits, self.detector(features, logits)


def fit_detector(digits: tuple[Tensor, Tensor], nondigits: tuple[Tensor, Tensor], *, temperature: float,
                 hidden: int = HIDDEN, epochs: int = EPOCHS, batch_size: int = BATCH, lr: float = LR,
                 weight_decay: float = WEIGHT_DECAY, seed: int = 0, show_progress: bool = False) -> NonDigitDetector:
    """Fit a detector, digits (0) against non-digits (1), with minibatch Adam (seeded; a cosine schedule).

    Args:
        digits, nondigits: ``(features (N, F), logits (N, C))`` of each, from the network's
            ``forward_features`` (``models.runtime.predict_features``).
        temperature: the network's calibrated temperature (the confidence input is calibrated).
        show_progress: a progress bar over the optimisation steps (stderr).

    Raises:
        DetectorError: empty or mismatched inputs.
    """
    f_pos, z_pos = (torch.as_tensor(t, dtype=torch.float32) for t in digits)
    f_neg, z_neg = (torch.as_tensor(t, dtype=torch.float32) for t in nondigits)
    if not len(f_pos) or not len(f_neg):
        raise DetectorError("the detector needs digits and non-digits to fit on")
    if f_pos.shape[1] != f_neg.shape[1] or len(f_pos) != len(z_pos) or len(f_neg) != len(z_neg):
        raise DetectorError(f"mismatched detector inputs: features {tuple(f_pos.shape)} and {tuple(f_neg.shape)}, "
                            f"logits {tuple(z_pos.shape)} and {tuple(z_neg.shape)}")
    with torch.random.fork_rng(devices=[]):  # the caller's random stream is left as it was
        torch.manual_seed(seed)
        detector = NonDigitDetector(f_pos.shape[1], hidden, temperature)
    with torch.no_grad():
        x = torch.cat([detector.inputs(f_pos, z_pos), detector.inputs(f_neg, z_neg)])
        y = torch.cat([torch.zeros(len(f_pos)), torch.ones(len(f_neg))])
        std = x.std(dim=0)
        detector.mean.copy_(x.mean(dim=0))
        detector.scale.copy_(torch.where(std > _MIN_SCALE, std, torch.ones_like(std)))
        x = (x - detector.mean) / detector.scale
    n = len(x)
    batch = min(batch_size, n)
    per_epoch = math.ceil(n / batch)
    n_steps = max(MIN_STEPS, epochs * per_epoch)
    optimizer = torch.optim.Adam(detector.parameters(), lr=lr, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * s / n_steps)))
    loss_fn = nn.BCEWithLogitsLoss()
    generator = torch.Generator().manual_seed(seed)
    detector.train()
    step = 0
    bar = tqdm(total=n_steps, desc="fitting the non-digit detector", unit="step", disable=not show_progress,
               leave=False)
    while step < n_steps:
        order = torch.randperm(n, generator=generator)
        for start in range(0, n - batch + 1, batch):  # whole batches only: every step the same size
            idx = order[start : start + batch]
            loss = loss_fn(detector.classify(x[idx]), y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            step += 1
            bar.update(1)
            if step >= n_steps:
                break
    bar.close()
    return detector.eval()


def rejection_thresholds(confidence: np.ndarray, scores: np.ndarray, *, rate: float,
                         softmax_rate: float) -> tuple[float, float]:
    """The two thresholds of ``confidence < t_soft OR score > t_det``, chosen on validation digits.

    ``t_soft`` alone rejects ``softmax_rate`` of them (a quantile); ``t_det`` then rejects as many more as
    keeps the union at ``rate`` (rounded down to whole images; ties in the score never push it over).

    Raises:
        DetectorError: no validation digits, or mismatched arrays.
    """
    confidence, scores = np.asarray(confidence, np.float64), np.asarray(scores, np.float64)
    if not len(confidence) or confidence.shape != scores.shape:
        raise DetectorError("thresholds need validation confidences and scores of the same length")
    t_soft = float(np.quantile(confidence, softmax_rate))
    kept = scores[confidence >= t_soft]
    extra = math.floor(rate * len(confidence) + 1e-9) - int((confidence < t_soft).sum())
    if not len(kept):
        return t_soft, float(scores.max())
    ordered = np.sort(kept)[::-1]
    # ``score > ordered[k]`` rejects at most k of the kept ones (exactly k without ties)
    t_det = float(ordered[min(max(extra, 0), len(ordered) - 1)])
    return t_soft, t_det
