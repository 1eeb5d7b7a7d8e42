"""A torch Dataset over items, and loaders with the batching rules of docs/protocol.md §6.

Test instrument: when the switch ``RAYOT_TEST_IMAGE_READ_LOG`` (rayot.switches) names a file,
:func:`load_image` appends the absolute path of every image it is asked for. Tests use it to check
which images a run reads, e.g. that a search trial reads no test image. Unset, it costs one
environment lookup per image.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset, Sampler

from rayot import switches
from rayot.data.items import Item
from rayot.errors import DataError


def _log_read(path: Path) -> None:
    """Append ``path`` (absolute) to the read log, if one is set, in a single O_APPEND write."""
    log_file = switches.value(switches.IMAGE_READ_LOG)
    if not log_file:
        return
    fd = os.open(log_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, os.fsencode(os.path.abspath(path)) + b"\n")
    finally:
        os.close(fd)


def load_image(path: Path, dataset: str) -> Image.Image:
    """Open and fully decode ``path`` as RGB; a DataError naming dataset and file otherwise.

    Every call is recorded in the read log when ``RAYOT_TEST_IMAGE_READ_LOG`` is set (module docstring).
    """
    _log_read(path)
    if not path.is_file():
        raise DataError(f"{dataset}: image {path} does not exist")
    try:
        with Image.open(path) as img:
            return img.convert("RGB")  # convert() decodes, so truncation surfaces here
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"{dataset}: cannot decode image {path} ({exc})") from None


class ImageDataset(Dataset):
    """Items read from ``image_root``; ``__getitem__`` returns (Tensor (3, H, W), int label)."""

    def __init__(self, items: Sequence[Item], image_root: Path, transform: Callable,
                 dataset: str) -> None:
        self.items = list(items)
        self.image_root = Path(image_root)
        self.transform = transform
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        item = self.items[index]
        image = load_image(self.image_root / item.impath, self.dataset)
        return self.transform(image), item.label


def make_loader(dataset: Dataset, *, batch_size: int, train: bool, num_workers: int = 0,
                generator: torch.Generator | None = None, sampler: Sampler | None = None) -> DataLoader:
    """Train: shuffled (or ordered by ``sampler``), last incomplete batch
    dropped when the set (or this worker's shard) holds at least one full batch (as the reference toolbox does, so
    a tiny 1-shot set still yields a batch). Test: in order, every image."""
    size = len(sampler) if sampler is not None else len(dataset)  # type: ignore[arg-type]
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=train and sampler is None,
        sampler=sampler,
        drop_last=train and size >= batch_size,
        num_workers=num_workers,
        generator=generator,
        persistent_workers=False,
    )
