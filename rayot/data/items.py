"""The plain records that flow between readers, samplers and loaders."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple


class Item(NamedTuple):
    """One image: ``impath`` relative to the dataset's image root, as in the split file."""

    impath: str
    label: int
    classname: str


@dataclass(frozen=True)
class DatasetSplits:
    """All items of one dataset as read from disk, before few-shot sampling.

    ``classnames[i]`` is the name of label ``i``. Evaluation-only datasets have empty ``train``
    and ``val``; imagenet has an empty ``val`` (its val folder is the test set).
    """

    name: str
    image_root: Path
    train: list[Item]
    val: list[Item]
    test: list[Item]
    classnames: list[str] = field(default_factory=list)
