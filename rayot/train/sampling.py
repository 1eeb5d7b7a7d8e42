"""The order and augmentation of a trial's training images, the same on any number of ranks.

The few-shot subset is drawn in a random order that depends only on (seed, epoch), cut into the
global batches that one worker takes; rank r takes the r-th share of each. Each image's random
crop and flip is seeded from (seed, epoch, index). A run resumed after epoch k, sharded over N
ranks or using any number of loader processes therefore sees the same inputs.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from rayot import distributed
from rayot.errors import DataError


class EpochRandomSampler(Sampler[int]):
    """A random permutation that depends only on (seed, epoch), so a resumed run sees the same order."""

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.n = len(dataset)  # type: ignore[arg-type]
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())

    def __len__(self) -> int:
        return self.n


class GlobalBatchSlices(Sampler[list[int]]):
    """This rank's slice of each global batch of the single-worker order (a batch sampler).

    The global batches are those one worker takes: ``batch_size`` consecutive indices of the
    epoch's permutation (:class:`EpochRandomSampler`), the last incomplete one dropped when the
    set holds at least one full batch (as the reference toolbox does, so a tiny 1-shot set still yields a batch).
    Rank r takes the r-th contiguous share of each (:func:`rayot.distributed.shard_sizes`).
    """

    def __init__(self, dataset: Dataset, batch_size: int, seed: int, rank: int, world_size: int) -> None:
        self.order = EpochRandomSampler(dataset, seed)
        self.batch_size, self.rank, self.world_size = batch_size, rank, world_size
        self.batches: list[list[int]] = []
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        self.order.set_epoch(epoch)
        order = list(self.order)
        b = self.batch_size
        n_full = len(order) // b
        self.batches = [order[i * b:(i + 1) * b] for i in range(n_full)] if n_full else [order]

    def sizes(self, step: int) -> list[int]:
        """Every rank's share of the global batch of ``step``."""
        return distributed.shard_sizes(len(self.batches[step]), self.world_size)

    def __iter__(self) -> Iterator[list[int]]:
        for step, batch in enumerate(self.batches):
            start = sum(self.sizes(step)[:self.rank])
            yield batch[start:start + self.sizes(step)[self.rank]]

    def __len__(self) -> int:
        return len(self.batches)


class SeededAugment(Dataset):
    """Seeds the random augmentation of each item from (seed, epoch, index).

    The crops and flips of a sample then do not depend on the number of data-loader workers,
    on how the ranks share the batch or on whether the run was resumed: the same configuration and
    seed give the same training inputs everywhere.
    """

    def __init__(self, base: Dataset, seed: int) -> None:
        self.base = base
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, index: int):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed((self.seed * 1_000_003 + self.epoch) * 10_000_019 + index)
            return self.base[index]


def batches(loader: DataLoader) -> Iterator[Any]:
    """Iterate ``loader``; a data error raised in a loader worker keeps its one-line message.

    PyTorch re-raises a worker's exception with the worker's traceback folded into the message;
    the user should see the dataset, the file and the problem, as with ``num_workers=0``.
    """
    try:
        yield from loader
    except DataError as exc:
        lines = [ln for ln in str(exc).splitlines() if ln.strip()]
        marker = f"{type(exc).__name__}: "  # the traceback's last line: "rayot.errors.DataError: ..."
        if len(lines) > 1 and marker in lines[-1]:
            raise type(exc)(lines[-1].split(marker, 1)[1]) from None
        raise
