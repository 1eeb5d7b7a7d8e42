"""A classification task ready for training or evaluation: items, class names, template."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rayot.data.fewshot import sample_fewshot, subsample_classes
from rayot.data.items import Item
from rayot.data.readers import read_dataset
from rayot.data.specs import template_for


@dataclass(frozen=True)
class Task:
    """One label space: ``classnames[i]`` names label ``i`` in ``train``, ``val`` and ``test``."""

    dataset: str
    image_root: Path
    train: list[Item]
    val: list[Item]
    test: list[Item]
    classnames: list[str]
    template: str


def build_task(name: str, root: str | Path, *, shots: int, seed: int, subsample: str = "all") -> Task:
    """Read ``name``, draw the few-shot subset and keep the requested half of the classes.

    ``shots <= 0`` skips sampling (train and val empty): the evaluation-only use, e.g. the test
    split of a cross-dataset target. The base/novel halves always cut the dataset's own labels
    (every class is in every split, :func:`~rayot.data.readers.read_dataset` checks it), so the
    split is §3's with or without sampling, for test-only datasets too.
    """
    splits = read_dataset(name, root)
    if shots > 0:
        train, val = sample_fewshot(splits, shots, seed)
    else:
        train, val = [], []
    (train, val, test), classnames = subsample_classes(
        train, val, splits.test, subsample=subsample, classnames=splits.classnames)
    return Task(name, splits.image_root, train, val, test, classnames, template_for(name))
