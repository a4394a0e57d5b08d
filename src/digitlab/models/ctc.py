"""CTC for string models: the alphabet, targets from texts and back, the loss, greedy and beam decoding.

Usage::

    targets, target_lengths = text_to_targets(["12.50", "3-7"])
    loss = ctc_loss(log_probs, targets, frame_lengths, target_lengths)   # log_probs (N, T, C), batch first
    texts = [d.text for d in ctc_greedy_decode(log_probs, frame_lengths)]
    best = ctc_beam_decode(log_probs, frame_lengths, beam=8)

Layout: class 0 is the CTC blank, class ``k + 1`` is ``alphabet[k]``. Log-probabilities are batch first,
``(N, T, C)``, like every other digitlab model's output (the batch is axis 0 everywhere: batching, ONNX's
symbolic batch axis, the Predictor); ``ctc_loss`` turns them into the ``(T, N, C)`` that CTC kernels want.
Targets are zero-padded ``(N, S)`` rows, as the synthetic string generator writes them, so that a batch of
targets is sliced by the same index as its images.
"""

import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from digitlab.data.synth_strings import ALPHABET  # one alphabet: the classes the generator's targets use
from digitlab.models.registry import ModelError

BLANK = 0


class CTCDecoding(NamedTuple):
    """One decoded string and the confidence of each of its characters (a probability in [0, 1])."""

    text: str
    confidences: tuple[float, ...]


def text_to_targets(texts: Sequence[str], alphabet: str = ALPHABET) -> tuple[Tensor, Tensor]:
    """Texts -> CTC targets: ``(N, S)`` int64 classes ``1..len(alphabet)`` padded with the blank 0 (S is the
    longest text's length, 0 when all are empty), and ``(N,)`` int64 lengths.

    Raises:
        ModelError: a character outside ``alphabet``, naming the text and the character.
    """
    index = {c: k + 1 for k, c in enumerate(alphabet)}
    lengths = torch.tensor([len(t) for t in texts], dtype=torch.int64)
    targets = torch.zeros(len(texts), int(lengths.max()) if len(texts) else 0, dtype=torch.int64)
    for i, text in enumerate(texts):
        try:
            targets[i, : len(text)] = torch.tensor([index[c] for c in text], dtype=torch.int64)
        except KeyError as e:
            raise ModelError(f"text {text!r}: character {e.args[0]!r} is not in the alphabet {alphabet!r}") from None
    return targets, lengths


def targets_to_text(targets: Tensor, lengths: Tensor, alphabet: str = ALPHABET) -> list[str]:
    """The inverse of ``text_to_targets``: ``(N, S)`` padded classes and ``(N,)`` lengths -> texts."""
    chars = np.array(["", *alphabet])
    rows = targets.cpu().numpy()
    return ["".join(chars[rows[i, :n]]) for i, n in enumerate(lengths.tolist())]


def ctc_loss(log_probs: Tensor, targets: Tensor, input_lengths: Tensor, target_lengths: Tensor,
             reduction: str = "mean") -> Tensor:
    """CTC loss of batch-first ``(N, T, C)`` log-probabilities against ``(N, S)`` padded targets.

    ``input_lengths`` are the frames each string spans (``frame_lengths`` of its width), ``target_lengths`` its
    characters. A string too long for its frames (CTC needs a frame per character, plus one between
    repeats) adds 0 instead of infinity (``zero_infinity``), so one bad sample cannot poison a batch.
    """
    return F.ctc_loss(log_probs.transpose(0, 1), targets, input_lengths, target_lengths, blank=BLANK,
                      reduction=reduction, zero_infinity=True)


def ctc_greedy_decode(log_probs: Tensor | np.ndarray, lengths: Tensor | np.ndarray | None = None,
                      alphabet: str = ALPHABET) -> list[CTCDecoding]:
    """Best-path decoding: the likeliest class per frame, repeats collapsed, blanks dropped.

    Args:
        log_probs: ``(N, T, C)`` log-probabilities, batch first; C = 1 + len(alphabet).
        lengths: ``(N,)`` frames to read per string (the rest is padding); all T when None.
        alphabet: class k + 1 is ``alphabet[k]``.

    Returns:
        One ``CTCDecoding`` per string; a character's confidence is its highest probability over the run of
        frames it was read from.
    """
    lp = torch.as_tensor(log_probs).detach().float().cpu()
    best_lp, best = lp.max(dim=-1)  # (N, T) each: one vectorised pass over the batch
    conf, path = best_lp.exp().numpy(), best.numpy()
    n, t = path.shape
    lens = np.full(n, t) if lengths is None else np.minimum(torch.as_tensor(lengths).cpu().numpy(), t)
    chars = np.array(["", *alphabet])
    out = []
    for i in range(n):
        p, c = path[i, : lens[i]], conf[i, : lens[i]]
        if len(p) == 0:
            out.append(CTCDecoding("", ()))
            continue
        starts = np.flatnonzero(np.concatenate(([True], p[1:] != p[:-1])))  # first frame of each run
        labels, peaks = p[starts], np.maximum.reduceat(c, starts)
        keep = labels != BLANK
        out.append(CTCDecoding("".join(chars[labels[keep]]), tuple(peaks[keep].tolist())))
    return out


def ctc_beam_decode(log_probs: Tensor | np.ndarray, lengths: Tensor | np.ndarray | None = None, beam: int = 8,
                    alphabet: str = ALPHABET) -> list[CTCDecoding]:
    """Prefix beam search: the likeliest text summed over all its alignments, among ``beam`` kept prefixes.

    Finds what best path misses when a character's probability is spread over frames that each prefer the
    blank. A character's confidence is its highest probability at a frame where a kept path wrote or
    continued it. Arguments and result as ``ctc_greedy_decode``; a Python loop over strings and frames,
    for reading, not for the training loop.

    Raises:
        ValueError: ``beam`` below 1.
    """
    if beam < 1:
        raise ValueError(f"ctc_beam_decode: beam must be at least 1, got {beam}")
    lp = torch.as_tensor(log_probs).detach().double().cpu().numpy()
    n, t, n_classes = lp.shape
    lens = np.full(n, t) if lengths is None else np.minimum(torch.as_tensor(lengths).cpu().numpy(), t)
    return [_beam_one(lp[i, : lens[i]], beam, alphabet, n_classes) for i in range(n)]


_NEG = -math.inf


def _logadd(a: float, b: float) -> float:
    if a == _NEG:
        return b
    if b == _NEG:
        return a
    hi, lo = (a, b) if a > b else (b, a)
    return hi + math.log1p(math.exp(lo - hi))


def _beam_one(lp: np.ndarray, beam: int, alphabet: str, n_classes: int) -> CTCDecoding:
    # prefix -> [log P(ends in blank), log P(ends in its last character)], and its characters' confidences
    beams: dict[tuple[int, ...], list[float]] = {(): [0.0, _NEG]}
    confs: dict[tuple[int, ...], tuple[float, ...]] = {(): ()}
    for frame, prob in zip(lp.tolist(), np.exp(lp).tolist(), strict=True):
        nxt: dict[tuple[int, ...], list[float]] = {}
        nxt_conf: dict[tuple[int, ...], tuple[float, ...]] = {}
        for prefix, (p_b, p_nb) in beams.items():
            total, conf = _logadd(p_b, p_nb), confs[prefix]
            _extend(nxt, nxt_conf, prefix, frame[BLANK] + total, _NEG, conf)
            for k in range(1, n_classes):
                if prefix and prefix[-1] == k:
                    # the same character again: one character unless a blank separates the two
                    _extend(nxt, nxt_conf, prefix, _NEG, frame[k] + p_nb, (*conf[:-1], max(conf[-1], prob[k])))
                    _extend(nxt, nxt_conf, (*prefix, k), _NEG, frame[k] + p_b, (*conf, prob[k]))
                else:
                    _extend(nxt, nxt_conf, (*prefix, k), _NEG, frame[k] + total, (*conf, prob[k]))
        kept = sorted(nxt, key=lambda p: _logadd(*nxt[p]), reverse=True)[:beam]
        beams, confs = {p: nxt[p] for p in kept}, {p: nxt_conf[p] for p in kept}
    best = max(beams, key=lambda p: _logadd(*beams[p]))
    return CTCDecoding("".join(alphabet[k - 1] for k in best), confs[best])


def _extend(beams: dict[tuple[int, ...], list[float]], confs: dict[tuple[int, ...], tuple[float, ...]],
            prefix: tuple[int, ...], blank: float, nonblank: float, conf: tuple[float, ...]) -> None:
    """Add one path's mass to ``prefix`` in the next frame's beams; confidences merge by the maximum."""
    slot = beams.setdefault(prefix, [_NEG, _NEG])
    slot[0], slot[1] = _logadd(slot[0], blank), _logadd(slot[1], nonblank)
    old = confs.get(prefix)
    confs[prefix] = conf if old is None else tuple(map(max, old, conf))
