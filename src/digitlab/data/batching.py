"""In-memory batching over a uint8 image tensor: no per-sample Python, no PIL.

Usage::

    loader = BatchLoader(images, labels, spec, batch_size=256, shuffle=True, seed=0)
    for x, y in loader:            # x: (B, 1, 28, 28) float32 normalised, y: (B,) int64
        ...

Each epoch draws a fresh permutation from ``seed + epoch`` (so any epoch can be replayed), slices
batches from it, and converts and normalises one batch at a time on the target device. In a
data-parallel job (``world_size`` > 1) every rank draws the same permutation and takes its own
contiguous share of each global batch: the ranks together see exactly the batches of one process.
"""

from collections.abc import Callable, Iterator

import numpy as np
import torch

from digitlab.data.errors import DataError
from digitlab.data.preprocess import PreprocessSpec


class BatchLoader:
    """Seeded, shuffled, normalised batches from uint8 images held in memory.

    Args:
        images: ``(N, H, W)`` uint8, numpy or torch (shared, not copied, when already on ``device``).
        labels: ``(N,)`` integer labels.
        spec: the preprocessing spec that normalises each batch.
        batch_size: images per batch.
        shuffle: draw a new permutation each epoch; else keep the stored order.
        seed: base seed; epoch ``e`` uses ``seed + e``.
        drop_last: skip the final short batch.
        device: where batches are produced (the whole uint8 set is moved there once).
        augment: optional batch transform applied in [0, 1] pixel units before normalisation.
        rank: this process's rank in a data-parallel job.
        world_size: the number of ranks; ``batch_size`` is then the global batch. A final batch
            smaller than ``world_size`` is dropped (every rank must take every step).
    """

    def __init__(
        self,
        images: np.ndarray | torch.Tensor,
        labels: np.ndarray | torch.Tensor,
        spec: PreprocessSpec,
        *,
        batch_size: int = 256,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
        device: str | torch.device = "cpu",
        augment: Callable[[torch.Tensor], torch.Tensor] | None = None,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if batch_size < 1:
            raise DataError(f"batch size must be at least 1, got {batch_size}")
        if not 0 <= rank < world_size:
            raise DataError(f"rank {rank} is outside a world of {world_size}")
        if batch_size < world_size:
            raise DataError(f"batch size {batch_size} is smaller than the {world_size} ranks sharing it")
        self.device = torch.device(device)
        self.images = torch.as_tensor(images).to(self.device)
        self.labels = torch.as_tensor(labels).to(self.device, dtype=torch.int64)
        if self.images.dtype != torch.uint8:
            raise DataError(f"BatchLoader expects uint8 images, got {self.images.dtype}")
        if len(self.images) != len(self.labels):
            raise DataError(f"{len(self.images)} images but {len(self.labels)} labels")
        self.spec = spec
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last
        self.epoch = 0
        self.augment = augment
        self.rank = rank
        self.world_size = world_size

    def __len__(self) -> int:
        n = len(self.images)
        if self.drop_last or n % self.batch_size < self.world_size:  # no final batch, or too small to share
            return n // self.batch_size
        return n // self.batch_size + 1

    def global_batch_size(self, i: int) -> int:
        """Images in global batch ``i`` (all ranks together)."""
        return min(self.batch_size, len(self.images) - i * self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        """Make the next iteration use epoch ``epoch``'s permutation (to resume or replay)."""
        self.epoch = epoch

    def order(self, epoch: int) -> torch.Tensor:
        """The sample order of ``epoch``: a permutation seeded by ``seed + epoch``, or identity."""
        n = len(self.images)
        if not self.shuffle:
            return torch.arange(n, device=self.device)
        gen = torch.Generator().manual_seed(self.seed + epoch)
        return torch.randperm(n, generator=gen).to(self.device)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = self.order(self.epoch)
        self.epoch += 1
        n_used = min(len(self) * self.batch_size, len(order))
        for start in range(0, n_used, self.batch_size):
            idx = order[start : start + self.batch_size]
            if self.world_size > 1:
                idx = idx.tensor_split(self.world_size)[self.rank]
            raw = self.images.index_select(0, idx)
            if self.augment is None:
                x = self.spec.normalize(raw)
            else:
                x = self.spec.standardize(self.augment(self.spec.to_unit(raw)))
            yield x, self.labels.index_select(0, idx)
