"""`rayot data check` as a library: what is present, what is missing (with exact paths), which
counts disagree with the split file or docs/protocol.md §1, and which images cannot be decoded.

Problems are collected rather than raised, so one run lists everything that is wrong.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from rayot.data.items import DatasetSplits, Item
from rayot.data.readers import SPLITS, check_classes_in_splits, read_classnames_file, read_dataset
from rayot.data.specs import (
    CLASSNAMES_FILE,
    DATASETS,
    FGVC_LIST_FILE,
    FGVC_VARIANTS_FILE,
    DatasetSpec,
    get_spec,
)
from rayot.errors import DataError

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]  # (images checked so far, images to check)


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a dataset: kind is missing, malformed, count or undecodable."""

    kind: str
    message: str
    path: Path | None = None


@dataclass
class CheckReport:
    """Outcome of checking one dataset. ``counts[split] = (found, expected)``."""

    dataset: str
    folder: Path
    present: bool
    num_classes: int | None = None
    counts: dict[str, tuple[int, int | None]] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.present and not self.problems

    def add(self, kind: str, message: str, path: Path | None = None) -> None:
        self.problems.append(Problem(kind, message, path))


def expected_paths(spec: DatasetSpec, folder: Path) -> list[Path]:
    """Files and folders that must exist before any image is looked at."""
    img = folder / spec.image_root if spec.image_root else folder
    match spec.kind:
        case "split_file":
            assert spec.split_file is not None
            return [folder / spec.split_file, img]
        case "fgvc_lists":
            return [folder / FGVC_VARIANTS_FILE,
                    *(folder / FGVC_LIST_FILE.format(split=s) for s in SPLITS), img]
        case "imagenet":
            return [folder / CLASSNAMES_FILE, img / "train", img / "val"]
        case "imagenetv2" | "wnid_folders":
            return [folder / CLASSNAMES_FILE, img]
    raise AssertionError(spec.kind)


def check_dataset(name: str, root: str | Path, *, decode: bool = True, workers: int = 4,
                  progress: Progress | None = None) -> CheckReport:
    """Check dataset ``name`` under ``root``. A missing root is a DataError; everything else
    wrong with the dataset is a :class:`Problem` in the report."""
    spec = get_spec(name)
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"data root {root} does not exist or is not a folder")
    folder = root / spec.folder
    report = CheckReport(name, folder, present=folder.is_dir())
    if not report.present:
        report.add("missing", "dataset folder missing", folder)
        return report

    missing = [p for p in expected_paths(spec, folder) if not p.exists()]
    for path in missing:
        report.add("missing", "missing " + ("file" if path.suffix else "folder"), path)
    # Split-file datasets can be read without their images; other kinds need every list/folder.
    needed = [p for p in missing if spec.kind != "split_file" or p.suffix == ".json"]
    if needed:
        return report
    try:
        splits = read_dataset(name, root, check_classes=False)
    except DataError as exc:
        report.add("malformed", str(exc))
        return report
    try:
        check_classes_in_splits(spec, folder, splits)
    except DataError as exc:  # reported, and the images are still counted and decoded
        report.add("malformed", str(exc))

    report.num_classes = len(splits.classnames)
    if spec.num_classes is not None and report.num_classes != spec.num_classes:
        report.add("count", f"{report.num_classes} classes, expected {spec.num_classes}")
    _check_expected_folders(spec, folder, report)

    present = _count_images(spec, splits, report)
    if decode and present:
        _decode_all(present, name, report, workers, progress)
    return report


def _count_images(spec: DatasetSpec, splits: DatasetSplits, report: CheckReport) -> list[Path]:
    """Fill ``report.counts``, report missing images (collapsed to their highest missing folder)
    and return the paths that exist."""
    base = splits.image_root
    listed = spec.kind in ("split_file", "fgvc_lists")
    exists_cache: dict[Path, bool] = {}
    missing_tops: dict[Path, int] = {}  # highest missing path -> images below it
    missing_files: set[Path] = set()
    present: list[Path] = []
    for split, expected_size in zip(SPLITS, spec.sizes, strict=True):
        items: list[Item] = getattr(splits, split)
        if not listed:
            # Scanned items exist by construction; compare with the published size.
            present.extend(base / it.impath for it in items)
            if expected_size is not None or items:
                report.counts[split] = (len(items), expected_size)
            if expected_size is not None and len(items) != expected_size:
                report.add("count", f"{split}: {len(items)} images found, expected {expected_size}")
            continue
        found = 0
        for it in items:
            path = base / it.impath
            if path.is_file():
                found += 1
                present.append(path)
            else:
                top = _highest_missing(path, report.folder, exists_cache)
                if top == path:
                    missing_files.add(path)
                missing_tops[top] = missing_tops.get(top, 0) + 1
        report.counts[split] = (found, len(items))
        if expected_size is not None and len(items) != expected_size:
            report.add("count", f"{split}: the split lists {len(items)} images, docs/protocol.md "
                       f"expects {expected_size}")
    for top, n in missing_tops.items():
        if top in {p.path for p in report.problems}:
            continue  # the image root itself, already reported
        what = "missing image" if top in missing_files else f"missing folder ({n} listed images)"
        report.add("missing", what, top)
    return present


def _highest_missing(path: Path, stop: Path, cache: dict[Path, bool]) -> Path:
    """The highest ancestor of ``path`` (or ``path``) that does not exist, below ``stop``."""
    top, cur = path, path.parent
    while cur != stop and cur != cur.parent:
        if cur not in cache:
            cache[cur] = cur.exists()
        if cache[cur]:
            break
        top, cur = cur, cur.parent
    return top


def _check_expected_folders(spec: DatasetSpec, folder: Path, report: CheckReport) -> None:
    """Class folders whose name is known in advance: imagenet/sketch wnids, imagenetv2 labels."""
    img = folder / spec.image_root
    if spec.kind == "imagenetv2":
        assert spec.num_classes is not None
        expected: Iterable[Path] = (img / str(i) for i in range(spec.num_classes))
    elif spec.kind == "imagenet" or (spec.kind == "wnid_folders" and spec.num_classes == 1000):
        wnids = read_classnames_file(folder / CLASSNAMES_FILE, spec.name)
        parents = [img / "train", img / "val"] if spec.kind == "imagenet" else [img]
        expected = (p / w for p in parents for w in wnids)
    else:
        return  # imagenet_a / imagenet_r: which 200 classes is not listed anywhere
    for path in expected:
        if not path.is_dir():
            report.add("missing", "missing class folder", path)


def _decode_one(path: Path) -> str | None:
    try:
        with Image.open(path) as img:
            # draft() lets JPEG decode at reduced scale: the whole stream is still parsed, so
            # truncated or corrupt files fail, at a fraction of the cost of a full decode.
            img.draft("RGB", (64, 64))
            img.load()
    except Exception as exc:  # any decoder failure is the finding we report
        return f"{type(exc).__name__}: {exc}"
    return None


def _decode_all(paths: list[Path], name: str, report: CheckReport, workers: int,
                progress: Progress | None) -> None:
    total, chunk = len(paths), 1024
    # Chunked so that a 1.28M-image folder never holds a million pending futures.
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for start in range(0, total, chunk):
            batch = paths[start:start + chunk]
            for path, error in zip(batch, pool.map(_decode_one, batch), strict=True):
                if error is not None:
                    report.add("undecodable", f"cannot decode image ({error})", path)
            if progress is not None:
                progress(min(start + chunk, total), total)
    log.debug("%s: decoded %d images", name, total)


def present_datasets(root: str | Path) -> list[str]:
    """Names of the datasets whose folder exists under ``root``."""
    root = Path(root)
    return [name for name, spec in DATASETS.items() if (root / spec.folder).is_dir()]
