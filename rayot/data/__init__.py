"""The benchmark's data protocol, without the Dassl toolbox (docs/protocol.md).

Readers for the 15 benchmark datasets (and the synthetic one), exact few-shot sampling, the
base/novel split, pre-processing and a torch Dataset. No Typer, no Ray.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from rayot.data.fewshot import (
    SUBSAMPLES,
    fewshot,
    read_subset,
    sample_fewshot,
    subsample_classes,
    write_subset,
)
from rayot.data.items import DatasetSplits, Item
from rayot.data.readers import read_dataset, read_split_file
from rayot.data.specs import DATASETS, DatasetSpec, get_spec, prompt_classname, template_for
from rayot.data.task import Task, build_task
from rayot.data.validation import SearchData, search_data

if TYPE_CHECKING:
    from rayot.data.dataset import ImageDataset, load_image, make_loader
    from rayot.data.transforms import CLIP_MEAN, CLIP_STD, test_transform, train_transform

# torch and torchvision load only when a loader or transform is asked for, so that
# `rayot data fewshot` and `rayot data check` start in well under a second.
_LAZY = {
    "ImageDataset": "rayot.data.dataset",
    "load_image": "rayot.data.dataset",
    "make_loader": "rayot.data.dataset",
    "CLIP_MEAN": "rayot.data.transforms",
    "CLIP_STD": "rayot.data.transforms",
    "test_transform": "rayot.data.transforms",
    "train_transform": "rayot.data.transforms",
}


def __getattr__(name: str) -> object:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'rayot.data' has no attribute {name!r}")

__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "DATASETS",
    "SUBSAMPLES",
    "DatasetSpec",
    "DatasetSplits",
    "ImageDataset",
    "Item",
    "SearchData",
    "Task",
    "build_task",
    "fewshot",
    "get_spec",
    "load_image",
    "make_loader",
    "prompt_classname",
    "read_dataset",
    "read_split_file",
    "read_subset",
    "sample_fewshot",
    "search_data",
    "subsample_classes",
    "template_for",
    "test_transform",
    "train_transform",
    "write_subset",
]
