"""Evaluation: top-1 accuracy of every member of a pack on a test split, in one pass over its images.

Accuracy is per test image (docs/protocol.md §5), from the final model. The class features are
encoded once per test set, not per test batch (except for a module whose class features depend on
each image). Over N ranks each rank encodes its share of the classes and classifies its contiguous
share of the test images; the correct counts are summed, so every rank returns the single-worker
numbers.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from rayot import distributed
from rayot.data import ImageDataset, Task, make_loader, test_transform
from rayot.errors import DataError, RayotError
from rayot.train.collectives import TrialHooks, agree
from rayot.train.features import pack_class_features, pack_logits
from rayot.train.runtime import autocast_dtype
from rayot.train.sampling import batches


def evaluate(
    model: nn.Module,
    task: Task,
    *,
    image_size: int,
    device: torch.device,
    precision: str,
    batch_size: int,
    num_workers: int,
    hooks: TrialHooks | None = None,
) -> tuple[int, int]:
    """Top-1 correct count and test size of ``model`` on ``task``'s test split."""
    (n_correct,), n_test = evaluate_pack(
        [model], task, image_size=image_size, device=device, precision=precision, batch_size=batch_size,
        num_workers=num_workers, hooks=hooks)
    return n_correct, n_test


@torch.no_grad()
def evaluate_pack(
    models: list[nn.Module],
    task: Task,
    *,
    image_size: int,
    device: torch.device,
    precision: str,
    batch_size: int,
    num_workers: int,
    hooks: TrialHooks | None = None,
) -> tuple[list[int], int]:
    """:func:`evaluate` of every member of a pack in one pass over the test images: each member's
    correct count, and the test size. Each test batch goes through the image encoder once for all
    members where their module allows it (:mod:`rayot.model.packed`)."""
    hooks = hooks or TrialHooks()
    if not task.test:
        raise DataError(f"dataset {task.dataset}: the test split is empty")
    amp = autocast_dtype(precision)
    for model in models:
        model.eval()
    texts: list[Tensor | None]
    with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
        if models[0].text_per_image:
            for model in models:
                model.set_classnames(task.classnames)
            texts = [None] * len(models)  # it depends on the image: encoded per test batch
        else:
            texts = list(pack_class_features(models, task.classnames, hooks))  # each (n_cls, ...)
    start, stop = distributed.shard_range(len(task.test), hooks.world_size, hooks.rank)
    dataset = ImageDataset(task.test[start:stop], task.image_root, test_transform(image_size), task.dataset)
    correct = torch.zeros(len(models), dtype=torch.long, device=device)
    loader = make_loader(dataset, batch_size=batch_size, train=False, num_workers=num_workers)
    error: RayotError | None = None
    try:  # a bad test image on one rank must stop every rank (agree) before the count is summed
        for images, labels in batches(loader):
            images, labels = images.to(device), labels.to(device)
            with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
                logits = pack_logits(models, images, texts)  # each (B, n_cls)
            for m, member_logits in enumerate(logits):
                correct[m] += (member_logits.argmax(dim=-1) == labels).sum()
    except RayotError as exc:
        error = exc
    if error is not None or hooks.world_size > 1:
        agree(hooks, error)
    return hooks.sum_counts([int(n) for n in correct.tolist()]), len(task.test)
