"""What the one training loop needs to train a string model (registry kind ``sequence``) with CTC.

The loop itself (``trainer._train_torch``) is shared with the digit classifiers; only these differ:
the batches (``data.string_batches.StringBatches``: fresh synthetic strings every epoch), the loss (CTC
over each string's own frames), what counts as right (the whole string, greedy decoding), and what is
written after training: the string-confidence threshold of the reader (``reading.json``).
"""

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from digitlab.core.config import ConfigError, RunConfig
from digitlab.data.preprocess import PreprocessSpec
from digitlab.data.string_batches import StringBatches, StringSet, StringTargets, synthetic_string_set
from digitlab.models.ctc import ctc_greedy_decode, ctc_loss, targets_to_text

READING_FILE = "reading.json"  # the reader's policy: {"min_confidence": float}
KEPT_ACCURACY = 0.99  # strings kept are read right this often (docs/decisions.md#string-rejection)
MIN_POLICY_STRINGS = 100  # a fine-tune fits its reading policy on the user's held-out strings from this many
EVAL_BATCH = 256  # strings per evaluation batch (sorted by width, so padding stays small)


def check_sequence_config(cfg: RunConfig) -> None:
    """Options of the digit loop that mean nothing for strings are refused, not silently ignored.

    Raises:
        ConfigError: augmentation, outlier exposure or label smoothing set for a string model.
    """
    defaults = type(cfg.augment)()
    if cfg.augment != defaults:
        raise ConfigError(f"model {cfg.model.name!r} reads strings: its synthetic strings carry their own "
                          "variation (data.synth_strings); remove the augment: section")
    if cfg.train.outlier_exposure:
        raise ConfigError(f"model {cfg.model.name!r} reads strings: train.outlier_exposure is for digit classifiers")
    if cfg.train.label_smoothing:
        raise ConfigError(f"model {cfg.model.name!r} reads strings: train.label_smoothing does not apply to CTC")
    if "input_size" in cfg.model.args:
        raise ConfigError(f"model {cfg.model.name!r} reads strings: its input height is strings.height "
                          "(model.args.input_size is set from it)")


def string_loader(cfg: RunConfig, images: np.ndarray, labels: np.ndarray, spec: PreprocessSpec, *,
                  device: torch.device, rank: int, world_size: int, user: StringSet | None = None,
                  user_share: float = 0.0) -> StringBatches:
    s = cfg.strings
    return StringBatches(images, labels, spec, strings_per_epoch=s.per_epoch, batch_size=cfg.train.batch_size,
                         seed=cfg.seed, height=s.height, max_chars=s.max_chars, user=user, user_share=user_share,
                         device=device, rank=rank, world_size=world_size)


def eval_strings(cfg: RunConfig, images: np.ndarray, labels: np.ndarray, n: int, *, seed: int) -> StringSet:
    """Fixed synthetic strings from held-out digits (validation or test), with every page effect."""
    return synthetic_string_set(images, labels, n, seed=seed, height=cfg.strings.height,
                                max_chars=cfg.strings.max_chars)


def ctc_loss_sum(log_probs: torch.Tensor, y: StringTargets) -> torch.Tensor:
    """The batch's summed CTC loss (float32, each string over its own frames)."""
    return ctc_loss(log_probs.float(), y.targets, y.frame_lengths.clamp_max(log_probs.shape[1]), y.target_lengths,
                    reduction="sum")


def exact_matches(log_probs: torch.Tensor, y: StringTargets) -> torch.Tensor:
    """How many strings greedy decoding reads exactly, without leaving the tensors (the training loop's
    running accuracy): best class per frame, repeats and blanks dropped, compared with the targets."""
    path = log_probs.detach().argmax(-1)  # (B, T)
    b, t = path.shape
    inside = torch.arange(t, device=path.device) < y.frame_lengths[:, None]
    keep = (path != 0) & (path != F.pad(path[:, :-1], (1, 0))) & inside
    s = y.targets.shape[1]
    read = torch.zeros(b, max(s, t) + 1, dtype=path.dtype, device=path.device)
    read.scatter_(1, torch.where(keep, keep.cumsum(1) - 1, read.shape[1] - 1), path)  # dropped frames: last column
    same = (read[:, :s] == y.targets).all(1) & (read[:, s:-1] == 0).all(1)
    return (same & (keep.sum(1) == y.target_lengths)).sum()


@dataclass
class StringScores:
    """Greedy readings of a ``StringSet``: exact or not, string confidence, CTC loss, per string."""

    right: np.ndarray  # (N,) bool
    confidence: np.ndarray  # (N,) float: product of the characters' confidences (1.0 for an empty reading)
    loss: np.ndarray  # (N,) float

    @property
    def accuracy(self) -> float:
        return float(self.right.mean()) if len(self.right) else float("nan")


@torch.no_grad()
def score_strings(model: nn.Module, strings: StringSet, spec: PreprocessSpec, *, device: torch.device,
                  amp: torch.dtype | None = None, batch_size: int = EVAL_BATCH) -> StringScores:
    """Read every string of ``strings`` (batched by width) and score it against its target."""
    model.eval()
    n = len(strings)
    right, conf, loss = np.zeros(n, bool), np.ones(n), np.zeros(n)
    if n == 0:
        return StringScores(right, conf, loss)
    order = torch.argsort(strings.widths, stable=True)
    for idx in order.split(batch_size):
        lines, y = strings.take(idx)
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            lp = model(spec.standardize(lines.to(device))).float()
        y = y.to(device)
        frames = y.frame_lengths.clamp_max(lp.shape[1])
        loss[idx.numpy()] = ctc_loss(lp, y.targets, frames, y.target_lengths, reduction="none").cpu().numpy()
        reads = ctc_greedy_decode(lp, frames)
        truth = targets_to_text(y.targets, y.target_lengths)
        i = idx.numpy()
        right[i] = [r.text == t for r, t in zip(reads, truth, strict=True)]
        conf[i] = [math.prod(r.confidences) if r.text else 0.0 for r in reads]  # as the reader: nothing read, no trust
    return StringScores(right, conf, loss)


def fit_min_confidence(scores: StringScores, kept_accuracy: float = KEPT_ACCURACY) -> float | None:
    """The lowest string confidence that keeps the validation strings read right at least ``kept_accuracy`` of
    the time (the reader keeps a string whose confidence is at least this): 0.0 when every threshold does,
    just above the highest confidence when none does, None for no strings (no policy)."""
    if not len(scores.right):
        return None
    conf = scores.confidence
    order = np.argsort(-conf, kind="stable")
    right, sorted_conf = scores.right[order], conf[order]
    acc_kept = np.cumsum(right) / np.arange(1, len(right) + 1)
    # a threshold keeps whole groups of equal confidence: only the last string of each group is a place to cut
    cut = np.r_[sorted_conf[1:] < sorted_conf[:-1], True]
    ok = np.flatnonzero((acc_kept >= kept_accuracy) & cut)
    if not len(ok):
        return float(min(np.nextafter(sorted_conf[0], np.inf), 1.0))
    last = ok[-1]  # keep the strings up to the last cut that is still accurate enough
    return 0.0 if last == len(right) - 1 else float(sorted_conf[last])
