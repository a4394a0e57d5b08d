"""Batches of digit strings for a CTC string model: fresh synthetic strings every epoch, bucketed by width.

Usage::

    loader = StringBatches(digits, labels, spec, strings_per_epoch=24000, batch_size=64, seed=0)
    crnn = create_model("crnn")
    for x, y in loader:        # x: (B, 1, 32, W) normalised, W the batch's widest string; y: StringTargets
        loss = ctc_loss(crnn(x), y.targets, y.frame_lengths, y.target_lengths)

Every epoch draws new strings (``synthetic_strings``) from the training digits, in chunks of ``CHUNK``
strings seeded by (seed, epoch, chunk), so any epoch can be replayed and a resumed run sees exactly what it
would have. Inside a chunk the strings are sorted by width and cut into batches, which are then shuffled:
each batch is trimmed to its own widest string, so short strings cost little padding. A user's prepared
strings (fine-tuning) are mixed into every chunk at ``user_share``. In a data-parallel job each rank takes
its share of every global batch, as ``BatchLoader`` does.
"""

import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from digitlab.core.fileio import atomic_path
from digitlab.data.errors import DataError
from digitlab.data.preprocess import PreprocessSpec
from digitlab.data.synth_strings import StringOptions, synthetic_strings

CHUNK = 2048  # strings generated at once (then bucketed by width): 32 batches of 64
WIDTH_STRIDE = 4  # widths are rounded up to the string model's frame stride (models.crnn.WIDTH_STRIDE)


@dataclass(frozen=True)
class StringTargets:
    """What a batch of strings should read: zero-padded CTC targets, their lengths, and the frames each
    string covers in the model's output (its width over the frame stride)."""

    targets: torch.Tensor  # (B, S) int64, classes 1..len(alphabet), 0-padded
    target_lengths: torch.Tensor  # (B,) int64
    widths: torch.Tensor  # (B,) int64, each string's own width in pixels

    def __len__(self) -> int:
        return len(self.target_lengths)

    @property
    def frame_lengths(self) -> torch.Tensor:
        return (self.widths + WIDTH_STRIDE - 1) // WIDTH_STRIDE

    def to(self, device: torch.device) -> "StringTargets":
        return StringTargets(self.targets.to(device), self.target_lengths.to(device), self.widths.to(device))


@dataclass(frozen=True)
class StringSet:
    """Prepared strings held in memory: lines ``(N, 1, H, W)`` float32 in [0, 1] (light ink on dark, zero
    beyond each width), their widths and targets; validation strings, or a user's labelled strings."""

    lines: torch.Tensor
    widths: torch.Tensor
    targets: torch.Tensor
    target_lengths: torch.Tensor

    def __len__(self) -> int:
        return len(self.widths)

    def subset(self, idx: torch.Tensor) -> "StringSet":
        return StringSet(self.lines[idx], self.widths[idx], self.targets[idx], self.target_lengths[idx])

    def concat(self, other: "StringSet") -> "StringSet":
        """Both sets in one (padded to the wider lines and the longer targets)."""
        w = max(self.lines.shape[-1], other.lines.shape[-1])
        s = max(self.targets.shape[1], other.targets.shape[1])
        return StringSet(torch.cat([_pad_last(self.lines, w), _pad_last(other.lines, w)]),
                         torch.cat([self.widths, other.widths]),
                         torch.cat([_pad_last(self.targets, s), _pad_last(other.targets, s)]),
                         torch.cat([self.target_lengths, other.target_lengths]))

    def take(self, idx: torch.Tensor) -> tuple[torch.Tensor, StringTargets]:
        """Strings ``idx``, trimmed to the widest of them: ``(lines in [0, 1], targets)``."""
        w = _round_width(int(self.widths[idx].max())) if len(idx) else WIDTH_STRIDE
        s = max(1, int(self.target_lengths[idx].max())) if len(idx) else 1
        return self.lines[idx, :, :, :w], StringTargets(self.targets[idx, :s], self.target_lengths[idx],
                                                        self.widths[idx])


def _round_width(w: int) -> int:
    return max(WIDTH_STRIDE, -(-w // WIDTH_STRIDE) * WIDTH_STRIDE)


def make_string_set(lines: Sequence[np.ndarray] | torch.Tensor, targets: torch.Tensor, target_lengths: torch.Tensor,
                    widths: torch.Tensor | None = None) -> StringSet:
    """A ``StringSet`` from prepared lines: a padded ``(N, 1, H, W)`` tensor with ``widths``, or a list of
    ``(H, W_i)`` arrays (padded here)."""
    if isinstance(lines, torch.Tensor):
        if widths is None:
            raise DataError("make_string_set: a padded batch of lines needs its widths")
        return StringSet(lines.float(), widths.long(), targets.long(), target_lengths.long())
    if not len(lines):
        raise DataError("make_string_set: no lines")
    h = lines[0].shape[0]
    ws = torch.tensor([line.shape[1] for line in lines], dtype=torch.int64)
    batch = torch.zeros(len(lines), 1, h, _round_width(int(ws.max())))
    for i, line in enumerate(lines):  # once per user folder, at set-up: not a training path
        batch[i, 0, :, : line.shape[1]] = torch.from_numpy(np.asarray(line, np.float32))
    return StringSet(batch, ws, targets.long(), target_lengths.long())


def synthetic_string_set(images: np.ndarray, labels: np.ndarray, n: int, *, seed: int, height: int,
                         max_chars: int, options: StringOptions | None = None) -> StringSet:
    """``n`` synthetic strings as a ``StringSet`` (validation and test strings)."""
    with _one_thread():
        batch, widths, targets, lengths, _ = synthetic_strings(images, labels, n, seed=seed, height=height,
                                                               max_chars=max_chars, options=options)
    return StringSet(batch, widths, targets, lengths)


class _one_thread:
    """The generator runs fastest on one thread (its ops are small and many); training keeps its own count."""

    def __enter__(self) -> None:
        self.threads = torch.get_num_threads()
        torch.set_num_threads(1)

    def __exit__(self, *exc: object) -> None:
        torch.set_num_threads(self.threads)


class StringBatches:
    """Seeded, width-bucketed, normalised batches of fresh synthetic strings (and a user's strings).

    Args:
        images, labels: the digits strings are made from, ``(N, 28, 28)`` uint8 light on dark, ``(N,)``.
        spec: normalises each batch (``standardize`` on [0, 1] pixels), as for the digit models.
        strings_per_epoch: synthetic strings per epoch.
        batch_size: strings per (global) batch.
        seed: base seed; epoch ``e``, chunk ``k`` draw from ``(seed, e, k)``.
        height, max_chars, options: passed to ``synthetic_strings``.
        user: a user's prepared strings, mixed in at ``user_share`` of every chunk (fine-tuning).
        device: where batches are produced.
        rank, world_size: this process's share of each global batch in a data-parallel job.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, spec: PreprocessSpec, *, strings_per_epoch: int,
                 batch_size: int = 64, seed: int = 0, height: int = 32, max_chars: int = 12,
                 options: StringOptions | None = None, user: StringSet | None = None, user_share: float = 0.0,
                 device: str | torch.device = "cpu", rank: int = 0, world_size: int = 1) -> None:
        if batch_size < world_size:
            raise DataError(f"batch size {batch_size} is smaller than the {world_size} ranks sharing it")
        if strings_per_epoch < batch_size:
            raise DataError(f"strings per epoch ({strings_per_epoch}) is fewer than one batch ({batch_size})")
        if not 0 <= user_share < 1 or (user_share > 0 and (user is None or not len(user))):
            raise DataError(f"user_share {user_share} needs user strings and must lie in [0, 1)")
        self.images, self.labels, self.spec = images, labels, spec
        self.n, self.batch_size, self.seed = strings_per_epoch, batch_size, seed
        self.height, self.max_chars, self.options = height, max_chars, options
        self.user, self.user_share = user, user_share
        self.device = torch.device(device)
        self.rank, self.world_size = rank, world_size
        self.epoch = 0

    def __len__(self) -> int:
        return math.ceil(self.n / self.batch_size)

    def global_batch_size(self, i: int) -> int:
        """Strings in global batch ``i``: every batch is full (a chunk's last batch is topped up)."""
        return self.batch_size

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _chunk(self, epoch: int, k: int, size: int) -> StringSet:
        """Chunk ``k`` of ``epoch``: ``size`` strings (synthetic, then the user's)."""
        seed = int(np.random.SeedSequence([self.seed, epoch, k]).generate_state(1)[0])
        n_user = round(size * self.user_share) if self.user is not None else 0
        with _one_thread():
            batch, widths, targets, lengths, _ = synthetic_strings(
                self.images, self.labels, size - n_user, seed=seed, height=self.height, max_chars=self.max_chars,
                options=self.options)
        chunk = StringSet(batch, widths, targets, lengths)
        if n_user:
            assert self.user is not None
            pick = torch.randint(len(self.user), (n_user,), generator=torch.Generator().manual_seed(seed))
            lines, y = self.user.take(pick)  # trimmed to the widest picked line, not the user's widest
            chunk = chunk.concat(StringSet(lines, y.widths, y.targets, y.target_lengths))
        return chunk

    def __iter__(self) -> Iterator[tuple[torch.Tensor, StringTargets]]:
        epoch = self.epoch
        self.epoch += 1
        n_batches = len(self)
        per_chunk = max(1, CHUNK // self.batch_size)
        gen = torch.Generator().manual_seed(int(np.random.SeedSequence([self.seed, epoch]).generate_state(1)[0]))
        for k, first in enumerate(range(0, n_batches, per_chunk)):
            n_here = min(per_chunk, n_batches - first)
            chunk = self._chunk(epoch, k, n_here * self.batch_size)
            by_width = torch.argsort(chunk.widths, stable=True)
            batches = by_width.view(n_here, self.batch_size)[torch.randperm(n_here, generator=gen)]
            for idx in batches:
                if self.world_size > 1:
                    idx = idx.tensor_split(self.world_size)[self.rank]
                lines, y = chunk.take(idx)
                yield self.spec.standardize(lines.to(self.device)), y.to(self.device)  # indexing copied the lines


def _pad_last(t: torch.Tensor, size: int) -> torch.Tensor:
    """``t`` zero-padded on its last axis to ``size``."""
    return torch.nn.functional.pad(t, (0, size - t.shape[-1])) if t.shape[-1] < size else t


USER_STRINGS_FILE = "user_strings.safetensors"  # in a run fine-tuned on a user's labelled strings
_META_SPEC = "digitlab.preprocess"


@dataclass(frozen=True)
class UserStrings:
    """A user's prepared strings, split into training and held-out validation, and the spec they were prepared
    for (the init run's)."""

    train: StringSet
    val: StringSet
    spec: PreprocessSpec


def save_user_strings(path: str | os.PathLike[str], strings: UserStrings) -> None:
    """Write the strings (lines as uint8: the file stays small) and their spec as one safetensors file, atomically."""
    from safetensors.torch import save_file

    tensors = {f"{part}_{key}": value for part, s in (("train", strings.train), ("val", strings.val))
               for key, value in (("lines", (s.lines * 255).round().to(torch.uint8)), ("widths", s.widths),
                                  ("targets", s.targets), ("target_lengths", s.target_lengths))}
    with atomic_path(path, overwrite=True) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp),
                  metadata={_META_SPEC: strings.spec.to_json()})


def load_user_strings(path: str | os.PathLike[str]) -> UserStrings:
    """Read what ``save_user_strings`` wrote.

    Raises:
        DataError: a missing or unreadable file; one line.
    """
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            t = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not a mapping)
        parts = [StringSet(t[f"{p}_lines"].float() / 255, t[f"{p}_widths"], t[f"{p}_targets"],
                           t[f"{p}_target_lengths"]) for p in ("train", "val")]
    except (OSError, SafetensorError, KeyError) as e:
        raise DataError(f"{path}: cannot read the run's user strings: {str(e).splitlines()[0] if str(e) else e!r}") \
            from None
    if _META_SPEC not in meta:
        raise DataError(f"{path}: no preprocessing spec in its metadata")
    return UserStrings(parts[0], parts[1], PreprocessSpec.from_json(meta[_META_SPEC], source=str(path)))
