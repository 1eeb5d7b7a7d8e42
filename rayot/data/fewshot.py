"""Few-shot sampling (docs/protocol.md §2) and the base/novel class split (§3).

The sampler reproduces the subsets of the reference code (KaiyangZhou/CoOp on Dassl) exactly: one ``random`` stream seeded with the
seed, the train split sampled first and the val split right after it on the same stream.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Sequence
from pathlib import Path

from rayot.data.items import DatasetSplits, Item
from rayot.errors import ConfigError, DataError

SUBSAMPLES = ("all", "base", "novel")
VAL_SHOTS_CAP = 4  # the reference draws at most 4 val images per class


def fewshot(items: Sequence[Item], shots: int, rng: random.Random) -> list[Item]:
    """Up to ``shots`` items per label, drawn with ``rng.sample``.

    Groups are visited in order of first appearance in ``items``, not in label order: that is the
    order Dassl's dict-based grouping produces, and it decides how the stream is consumed.
    A group smaller than ``shots`` is kept whole and consumes no randomness.
    """
    groups: dict[int, list[Item]] = {}
    for item in items:
        groups.setdefault(item.label, []).append(item)
    out: list[Item] = []
    for group in groups.values():
        out.extend(rng.sample(group, shots) if len(group) >= shots else group)
    return out


def sample_fewshot(splits: DatasetSplits, shots: int, seed: int) -> tuple[list[Item], list[Item]]:
    """The (train, val) few-shot subsets of ``splits`` for ``shots`` per class and ``seed``.

    ``random.Random(seed)`` yields the same stream as ``random.seed(seed)`` on the module-level
    generator that the original code used, without touching global state.
    """
    if shots < 1:
        raise ConfigError(f"shots must be at least 1 to sample a few-shot subset, got {shots}")
    rng = random.Random(seed)
    train = fewshot(splits.train, shots, rng)
    val = fewshot(splits.val, min(shots, VAL_SHOTS_CAP), rng)
    return train, val


def subsample_classes(*item_lists: list[Item], subsample: str,
                      classnames: Sequence[str] | None = None) -> tuple[list[list[Item]], list[str]]:
    """Keep the base or novel half of the classes in every list and relabel it 0..m-1.

    The halves cut the sorted labels in two (base gets the extra class when the count is odd):
    the dataset's labels ``0..len(classnames)-1`` when ``classnames`` is given, which is how rayot
    itself calls it, so that the cut never depends on which labels a list happens to hold;
    otherwise the labels of the FIRST list. Returns the filtered, relabelled lists and the half's
    class names in new-label order. ``subsample="all"`` returns copies of the lists unchanged and
    the names of all labels.
    """
    if subsample not in SUBSAMPLES:
        raise ConfigError(f"subsample must be one of {', '.join(SUBSAMPLES)}, got {subsample!r}")
    if not item_lists:
        raise ValueError("subsample_classes needs at least one item list")
    if classnames is not None:
        name_of = dict(enumerate(classnames))
    else:
        name_of = {item.label: item.classname for item in item_lists[0]}
    labels = sorted(name_of)
    if subsample == "all":
        return [list(items) for items in item_lists], [name_of[y] for y in labels]
    m = math.ceil(len(labels) / 2)
    chosen = labels[:m] if subsample == "base" else labels[m:]
    new_label = {old: new for new, old in enumerate(chosen)}
    out = [[Item(it.impath, new_label[it.label], it.classname) for it in items
            if it.label in new_label] for items in item_lists]
    return out, [name_of[y] for y in chosen]


# ----------------------------------------------------------------------------- subsets as data


def items_to_json(items: Sequence[Item]) -> list[list[object]]:
    """Items as split-file entries ``[path, label, classname]``."""
    return [[it.impath, it.label, it.classname] for it in items]


def write_subset(path: str | Path, train: Sequence[Item], val: Sequence[Item]) -> Path:
    """Write a few-shot subset as ``{"train": [[path, label, classname], ...], "val": [...]}``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # One entry per line: diffable, and readable next to the split file it came from.
    blocks = []
    for key, items in (("train", train), ("val", val)):
        lines = ",\n".join("  " + json.dumps(entry) for entry in items_to_json(items))
        blocks.append(f' "{key}": [\n{lines}\n ]' if lines else f' "{key}": []')
    path.write_text("{\n" + ",\n".join(blocks) + "\n}\n", encoding="utf-8")
    return path


def read_subset(path: str | Path) -> tuple[list[Item], list[Item]]:
    """Read a subset written by :func:`write_subset`."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"few-shot subset file {path} does not exist") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"few-shot subset file {path} is not valid JSON ({exc})") from None
    try:
        return tuple(  # type: ignore[return-value]
            [Item(str(p), int(y), str(c)) for p, y, c in raw[key]] for key in ("train", "val"))
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(f"few-shot subset file {path} is malformed ({exc!r}); expected "
                        '{"train": [[path, label, classname], ...], "val": [...]}') from None
