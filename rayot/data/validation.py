"""The data of a hyper-parameter search trial: trained and scored without any test image or novel class.

A search trial trains on the few-shot train subset of the classes it is given and is scored on the
few-shot validation subset (docs/protocol.md §2) only. For base-to-novel, a fraction of the base
classes is held out of training and stands in for the novel classes: the trial is scored on the
validation images of the classes it trained on (``seen``) and on those of the held-out base
classes (``held_out``). Novel-class and test images are never part of the returned tasks.

Datasets without a validation split of their own (imagenet, whose val is the test set) get one
drawn from the train images that are not in the few-shot train subset, on a stream of its own.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from rayot.data.fewshot import VAL_SHOTS_CAP, fewshot, sample_fewshot, subsample_classes
from rayot.data.items import DatasetSplits, Item
from rayot.data.readers import read_dataset
from rayot.data.specs import template_for
from rayot.data.task import Task
from rayot.errors import ConfigError, DataError

log = logging.getLogger(__name__)

#: The halves a search trial may train on: the novel half is what a search must never see.
SEARCH_SUBSAMPLES = ("all", "base")


@dataclass(frozen=True)
class SearchData:
    """The three label spaces of a search trial.

    ``train``: the few-shot train items of the trained classes, relabelled 0..n-1 (original label
    order); ``seen``: the validation items of those classes in the same label space (as ``test``);
    ``held_out``: the validation items of the held-out classes in a label space of their own (as
    ``test``), None without held-out classes.
    """

    train: Task
    seen: Task
    held_out: Task | None


def held_out_labels(n_classes: int, holdout: float, holdout_seed: int, dataset: str) -> list[int]:
    """Sorted labels (of 0..n_classes-1) held out as pseudo-novel.

    ``round(holdout * n_classes)`` of them, clamped to 1..n_classes-1 when ``holdout > 0``, drawn
    with ``random.Random(f"{dataset}:{holdout_seed}")`` (a string seed gives the same stream in
    every process); ``[]`` when ``holdout == 0``. A ConfigError for a holdout outside [0, 1), a
    DataError when fewer than 2 classes leave nothing to hold out.
    """
    if not (isinstance(holdout, (int, float)) and math.isfinite(holdout) and 0 <= holdout < 1):
        raise ConfigError(f"{dataset}: holdout must be a fraction in [0, 1), got {holdout!r}")
    if holdout == 0:
        return []
    if n_classes < 2:
        raise DataError(f"{dataset}: cannot hold out classes from {n_classes} class(es); holding "
                        "out needs at least 2 (one trained, one held out)")
    count = min(max(round(holdout * n_classes), 1), n_classes - 1)
    rng = random.Random(f"{dataset}:{holdout_seed}")
    return sorted(rng.sample(range(n_classes), count))


def _has_own_val(splits: DatasetSplits) -> bool:
    """Whether ``splits.val`` is a validation split distinct from the test split."""
    if not splits.val:
        return False
    test_paths = {it.impath for it in splits.test}
    return not any(it.impath in test_paths for it in splits.val)


def validation_items(splits: DatasetSplits, shots: int, seed: int, train: list[Item]) -> list[Item]:
    """The few-shot validation subset for ``shots`` and ``seed``: ``min(shots, 4)`` per class.

    With a validation split of its own, exactly the val subset of :func:`sample_fewshot` (drawn
    right after the train subset on the same stream). Without one (``splits.val`` empty or sharing
    an image with ``splits.test``, as imagenet's), drawn from the train images not in ``train``
    (the few-shot train subset) with ``random.Random(f"validation:{seed}")`` and the per-class rule
    of :func:`~rayot.data.fewshot.fewshot`; a DataError if a class has no image left.
    """
    if _has_own_val(splits):
        return sample_fewshot(splits, shots, seed)[1]
    if shots < 1:
        raise ConfigError(f"shots must be at least 1 to sample a few-shot subset, got {shots}")
    if not splits.train:
        raise DataError(f"{splits.name}: no train split to draw a validation subset from "
                        "(an evaluation-only dataset cannot be searched on)")
    taken = {it.impath for it in train}
    pool = [it for it in splits.train if it.impath not in taken]
    empty = sorted({it.label for it in splits.train} - {it.label for it in pool})
    if empty:
        raise DataError(f"{splits.name}: the dataset has no validation split of its own and "
                        f"classes {empty[:10]} have no train image outside the {shots}-shot train "
                        "subset to validate on")
    log.debug("%s: validation subset drawn from %d train images outside the few-shot subset",
              splits.name, len(pool))
    return fewshot(pool, min(shots, VAL_SHOTS_CAP), random.Random(f"validation:{seed}"))


def _relabel(items: Sequence[Item], labels: Sequence[int]) -> list[Item]:
    """The items whose label is in ``labels``, relabelled to its position there."""
    new_label = {old: new for new, old in enumerate(labels)}
    return [Item(it.impath, new_label[it.label], it.classname) for it in items if it.label in new_label]


def search_data(name: str, root: str | Path, *, shots: int, seed: int, subsample: str,
                holdout: float, holdout_seed: int) -> SearchData:
    """The train, seen and held-out tasks of a search trial on dataset ``name``.

    Reads the dataset, draws the few-shot train subset and the validation subset
    (:func:`validation_items`), keeps the ``subsample`` half ("base" for base-to-novel, "all"
    otherwise) as :func:`~rayot.data.task.build_task` does, then, for "base", holds out
    :func:`held_out_labels` of the base classes. No returned task holds a test image.
    """
    if subsample not in SEARCH_SUBSAMPLES:
        raise ConfigError(f"{name}: a search trial trains on subsample 'base' or 'all', got "
                          f"{subsample!r} (the novel classes are never part of a search)")
    splits = read_dataset(name, root)
    if not splits.train:
        raise DataError(f"{name}: the dataset has no train split (it is evaluation-only) and "
                        "cannot be searched on")
    train, _ = sample_fewshot(splits, shots, seed)
    val = validation_items(splits, shots, seed, train)
    (train, val), classnames = subsample_classes(train, val, subsample=subsample,
                                                 classnames=splits.classnames)
    held = held_out_labels(len(classnames), holdout, holdout_seed, name) if subsample == "base" else []
    trained = sorted(set(range(len(classnames))) - set(held))

    test_paths = {it.impath for it in splits.test}
    leaked = [it.impath for it in (*train, *val) if it.impath in test_paths]
    if leaked:
        raise DataError(f"{name}: the train split shares images with the test split "
                        f"(e.g. {leaked[0]}); a search trial must not see a test image")

    def task(train_items: list[Item], test_items: list[Item], labels: list[int]) -> Task:
        return Task(name, splits.image_root, train_items, [], test_items,
                    [classnames[y] for y in labels], template_for(name))

    train_task = task(_relabel(train, trained), [], trained)
    seen = task([], _relabel(val, trained), trained)
    held_out = task([], _relabel(val, held), held) if held else None
    for what, t in (("trained", seen), ("held-out", held_out)):
        if t is not None and not t.test:
            raise DataError(f"{name}: the {what} classes have no validation image")
    log.debug("%s: search data with %d trained classes (%d train, %d val images), %d held out "
              "(%d val images)", name, len(trained), len(train_task.train), len(seen.test),
              len(held), len(held_out.test) if held_out else 0)
    return SearchData(train_task, seen, held_out)
