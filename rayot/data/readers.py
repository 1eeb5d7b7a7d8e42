"""Readers turning each on-disk layout of docs/protocol.md §1 into a :class:`DatasetSplits`.

Split-file datasets need only their split file (no image is opened), so few-shot subsets can be
drawn and published without the images. Folder-scanned datasets sort every listing so that the
result is the same on every machine. (The original reference code used unsorted directory listings
for ImageNet, so its ImageNet few-shot subsets cannot be reproduced; rayot's can.)
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from rayot.data.items import DatasetSplits, Item
from rayot.data.specs import (
    CLASSNAMES_FILE,
    FGVC_LIST_FILE,
    FGVC_VARIANTS_FILE,
    DatasetSpec,
    get_spec,
)
from rayot.errors import DataError

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})


def dataset_folder(spec: DatasetSpec, root: str | Path) -> Path:
    """The dataset's folder under ``root``; a DataError if the root or the folder is missing."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{spec.name}: data root {root} does not exist or is not a folder")
    folder = root / spec.folder
    if not folder.is_dir():
        raise DataError(f"{spec.name}: dataset folder {folder} does not exist")
    return folder


def image_root(spec: DatasetSpec, root: str | Path) -> Path:
    """Where item paths of ``spec`` are rooted (not checked for existence)."""
    return Path(root) / spec.folder / spec.image_root if spec.image_root else Path(root) / spec.folder


def read_dataset(name: str, root: str | Path, *, check_classes: bool = True) -> DatasetSplits:
    """Read all train/val/test items of dataset ``name`` under data root ``root``.

    Raises DataError naming the dataset and file for a missing root, folder or list file and for
    malformed contents, including a class absent from one of the splits (``check_classes``;
    ``rayot data check`` reports that one next to its other findings).
    """
    spec = get_spec(name)
    folder = dataset_folder(spec, root)
    reader = _READERS[spec.kind]
    train, val, test, classnames = reader(spec, folder)
    log.debug("%s: %d train, %d val, %d test items, %d classes", name, len(train), len(val),
              len(test), len(classnames))
    splits = DatasetSplits(name, image_root(spec, root), train, val, test, classnames)
    if check_classes:
        check_classes_in_splits(spec, folder, splits)
    return splits


def check_classes_in_splits(spec: DatasetSpec, folder: Path, splits: DatasetSplits) -> None:
    """A DataError unless every class of a listed dataset (split file, FGVC lists) has an image
    in each of its splits: the lists define the experiment, so a class absent from one of them is
    a damaged file, not a smaller experiment. (Before this check, the base/novel cut followed the
    labels present in the train split, and a class missing there silently turned a novel class
    into a base one under the same trial id.) Scanned datasets take their classes from folders;
    ``rayot data check`` names a missing class folder there.
    """
    if spec.kind not in ("split_file", "fgvc_lists"):
        return
    source = folder / spec.split_file if spec.split_file else folder
    classnames = splits.classnames
    for split in SPLITS:
        items: list[Item] = getattr(splits, split)
        if not items:
            continue
        present = {item.label for item in items}
        missing = [label for label in range(len(classnames)) if label not in present]
        if missing:
            named = ", ".join(f"{classnames[y]!r} (label {y})" for y in missing[:3])
            more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
            raise DataError(f"{spec.name}: {source}: the {split} split has no image of class "
                            f"{named}{more}; every class must appear in every split, or the "
                            f"base/novel halves would shift")


# ----------------------------------------------------------------------------- split files


def read_split_file(path: Path, dataset: str) -> tuple[list[Item], list[Item], list[Item], list[str]]:
    """Parse and validate a benchmark split file (``split_zhou_*.json``); returns (train, val, test, classnames)."""
    if not path.is_file():
        raise DataError(f"{dataset}: split file {path} does not exist")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{dataset}: split file {path} is not valid JSON ({exc})") from None
    if not isinstance(raw, dict):
        raise DataError(f"{dataset}: split file {path} must hold an object with keys "
                        f"train, val, test; found a {type(raw).__name__}")
    lists: dict[str, list[Item]] = {}
    for split in SPLITS:
        if split not in raw:
            raise DataError(f"{dataset}: split file {path} has no {split!r} list")
        entries = raw[split]
        if not isinstance(entries, list):
            raise DataError(f"{dataset}: split file {path}: {split!r} must be a list, "
                            f"found a {type(entries).__name__}")
        lists[split] = [_parse_entry(e, f"{split}[{i}]", path, dataset) for i, e in enumerate(entries)]
    classnames = _classnames_from_items(lists, path, dataset)
    return lists["train"], lists["val"], lists["test"], classnames


def _parse_entry(entry: object, where: str, path: Path, dataset: str) -> Item:
    if not isinstance(entry, list) or len(entry) != 3:
        raise DataError(f"{dataset}: split file {path}: {where} must be "
                        f"[relative_path, label, classname], found {entry!r}")
    impath, label, classname = entry
    if not isinstance(impath, str) or not impath:
        raise DataError(f"{dataset}: split file {path}: {where} path must be a non-empty "
                        f"string, found {impath!r}")
    # bool is an int subclass; a true/false label is a malformed file, not label 1/0.
    if not isinstance(label, int) or isinstance(label, bool):
        raise DataError(f"{dataset}: split file {path}: {where} label must be an integer, "
                        f"found {label!r}")
    if not isinstance(classname, str) or not classname:
        raise DataError(f"{dataset}: split file {path}: {where} class name must be a non-empty "
                        f"string, found {classname!r}")
    return Item(impath, label, classname)


def _classnames_from_items(lists: dict[str, list[Item]], path: Path, dataset: str) -> list[str]:
    """Check that labels and names correspond one to one and that labels are 0..n-1."""
    name_of: dict[int, tuple[str, str]] = {}
    label_of: dict[str, tuple[int, str]] = {}
    for split, items in lists.items():
        for i, item in enumerate(items):
            where = f"{split}[{i}]"
            seen = name_of.setdefault(item.label, (item.classname, where))
            if seen[0] != item.classname:
                raise DataError(f"{dataset}: split file {path}: label {item.label} is named "
                                f"{seen[0]!r} at {seen[1]} but {item.classname!r} at {where}")
            other = label_of.setdefault(item.classname, (item.label, where))
            if other[0] != item.label:
                raise DataError(f"{dataset}: split file {path}: class {item.classname!r} has "
                                f"label {other[0]} at {other[1]} but {item.label} at {where}")
    labels = sorted(name_of)
    if labels != list(range(len(labels))):
        missing = sorted(set(range(max(labels, default=-1) + 1)) - set(labels))
        problem = f"negative label {labels[0]}" if labels and labels[0] < 0 else \
            f"labels {missing[:10]} never appear"
        raise DataError(f"{dataset}: split file {path}: labels must be 0..n-1 ({problem})")
    return [name_of[label][0] for label in labels]


def _read_split_kind(spec: DatasetSpec, folder: Path):
    assert spec.split_file is not None
    return read_split_file(folder / spec.split_file, spec.name)


# ----------------------------------------------------------------------------- fgvc aircraft


def _read_lines(path: Path, dataset: str) -> list[str]:
    if not path.is_file():
        raise DataError(f"{dataset}: list file {path} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{dataset}: list file {path} is not UTF-8 text ({exc})") from None
    return [line.strip() for line in text.splitlines() if line.strip()]


def _read_fgvc(spec: DatasetSpec, folder: Path):
    variants_path = folder / FGVC_VARIANTS_FILE
    variants = _read_lines(variants_path, spec.name)
    label_of: dict[str, int] = {}
    for label, variant in enumerate(variants):
        if variant in label_of:
            raise DataError(f"{spec.name}: {variants_path} lists variant {variant!r} twice")
        label_of[variant] = label
    out = []
    for split in SPLITS:
        path = folder / FGVC_LIST_FILE.format(split=split)
        items = []
        for lineno, line in enumerate(_read_lines(path, spec.name), start=1):
            imageid, sep, variant = line.partition(" ")
            if not sep or not variant.strip():
                raise DataError(f"{spec.name}: {path} line {lineno} must be "
                                f"'<imageid> <variant>', found {line!r}")
            variant = variant.strip()
            if variant not in label_of:
                raise DataError(f"{spec.name}: {path} line {lineno}: variant {variant!r} is "
                                f"not in {variants_path}")
            items.append(Item(f"{imageid}.jpg", label_of[variant], variant))
        out.append(items)
    return out[0], out[1], out[2], variants


# ----------------------------------------------------------------------------- folder scans


def read_classnames_file(path: Path, dataset: str) -> dict[str, str]:
    """Parse ``classnames.txt`` (lines ``<wnid> <class name>``) into an ordered wnid -> name map."""
    names: dict[str, str] = {}
    for lineno, line in enumerate(_read_lines(path, dataset), start=1):
        wnid, sep, name = line.partition(" ")
        if not sep or not name.strip():
            raise DataError(f"{dataset}: {path} line {lineno} must be '<wnid> <class name>', "
                            f"found {line!r}")
        if wnid in names:
            raise DataError(f"{dataset}: {path} line {lineno}: {wnid} is listed twice")
        names[wnid] = name.strip()
    return names


def class_folders(path: Path, dataset: str) -> list[str]:
    """Sorted names of the non-hidden sub-folders of ``path`` (stray files such as a README are
    not classes)."""
    if not path.is_dir():
        raise DataError(f"{dataset}: image folder {path} does not exist")
    return sorted(p.name for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))


def image_files(path: Path) -> list[str]:
    """Sorted names of the image files directly inside ``path``."""
    return sorted(p.name for p in path.iterdir()
                  if not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES
                  and p.is_file())


def _scan(base: Path, rel: str, folders: list[str], label_of: dict[str, int],
          name_of: dict[str, str]) -> list[Item]:
    """Items of every image in ``base/<folder>`` for each folder, path prefixed with ``rel``."""
    items = []
    for folder in folders:
        prefix = f"{rel}/{folder}" if rel else folder
        for fname in image_files(base / folder):
            items.append(Item(f"{prefix}/{fname}", label_of[folder], name_of[folder]))
    return items


def _lookup_names(wnids: list[str], names: dict[str, str], path: Path, dataset: str) -> dict[str, str]:
    unknown = [w for w in wnids if w not in names]
    if unknown:
        raise DataError(f"{dataset}: class folders {unknown[:5]} have no line in {path}")
    return {w: names[w] for w in wnids}


def _read_imagenet(spec: DatasetSpec, folder: Path):
    cn_path = folder / CLASSNAMES_FILE
    names = read_classnames_file(cn_path, spec.name)
    base = folder / spec.image_root
    wnids = class_folders(base / "train", spec.name)
    label_of = {w: i for i, w in enumerate(wnids)}
    name_of = _lookup_names(wnids, names, cn_path, spec.name)
    val_wnids = class_folders(base / "val", spec.name)
    stray = [w for w in val_wnids if w not in label_of]
    if stray:
        raise DataError(f"{spec.name}: folders {stray[:5]} of {base / 'val'} have no "
                        f"counterpart in {base / 'train'}")
    train = _scan(base / "train", "train", wnids, label_of, name_of)
    test = _scan(base / "val", "val", val_wnids, label_of, name_of)
    return train, [], test, [name_of[w] for w in wnids]


def _read_imagenetv2(spec: DatasetSpec, folder: Path):
    cn_path = folder / CLASSNAMES_FILE
    names = list(read_classnames_file(cn_path, spec.name).values())
    base = folder / spec.image_root
    folders = class_folders(base, spec.name)
    bad = [f for f in folders if not f.isdigit() or int(f) >= len(names)]
    if bad:
        raise DataError(f"{spec.name}: folders {bad[:5]} in {base} are not labels "
                        f"0..{len(names) - 1} (the lines of {cn_path})")
    folders.sort(key=int)
    label_of = {f: int(f) for f in folders}
    name_of = {f: names[int(f)] for f in folders}
    return [], [], _scan(base, "", folders, label_of, name_of), names


def _read_wnid_folders(spec: DatasetSpec, folder: Path):
    cn_path = folder / CLASSNAMES_FILE
    names = read_classnames_file(cn_path, spec.name)
    base = folder / spec.image_root
    wnids = class_folders(base, spec.name)
    label_of = {w: i for i, w in enumerate(wnids)}
    # imagenet_a / imagenet_r: the classifier covers only the folders present (200 classes).
    name_of = _lookup_names(wnids, names, cn_path, spec.name)
    return [], [], _scan(base, "", wnids, label_of, name_of), [name_of[w] for w in wnids]


_READERS = {
    "split_file": _read_split_kind,
    "fgvc_lists": _read_fgvc,
    "imagenet": _read_imagenet,
    "imagenetv2": _read_imagenetv2,
    "wnid_folders": _read_wnid_folders,
}
