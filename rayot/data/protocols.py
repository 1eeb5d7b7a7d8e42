"""Which datasets each protocol trains on and evaluates, in which label space (protocol.md §4)."""

from __future__ import annotations

from typing import NamedTuple

from rayot.errors import ConfigError

BASE2NOVEL_DATASETS = (
    "imagenet", "caltech101", "oxford_pets", "stanford_cars", "oxford_flowers", "food101",
    "fgvc_aircraft", "sun397", "dtd", "eurosat", "ucf101",
)
CROSS_DATASET_TARGETS = BASE2NOVEL_DATASETS[1:]
DOMAIN_GENERALIZATION_TARGETS = ("imagenetv2", "imagenet_sketch", "imagenet_a", "imagenet_r")
FEW_SHOT_SHOTS = (1, 2, 4, 8, 16)
SEEDS = (1, 2, 3)
PROTOCOLS = ("base2novel", "cross_dataset", "domain_generalization", "few_shot")


class EvalTarget(NamedTuple):
    """One evaluation: the test split of ``dataset`` restricted to the ``subsample`` half."""

    dataset: str
    subsample: str


def train_subsample(protocol: str) -> str:
    """The class half a protocol trains on: base for base2novel, all classes otherwise."""
    _check(protocol)
    return "base" if protocol == "base2novel" else "all"


def eval_targets(protocol: str, dataset: str) -> list[EvalTarget]:
    """Evaluations of a model trained on ``dataset`` under ``protocol``.

    Cross-dataset and domain-generalization targets use their full label space (imagenet_a and
    imagenet_r are 200-way), scored by the one imagenet-trained model; its own test comes first.
    """
    _check(protocol)
    if protocol == "base2novel":
        return [EvalTarget(dataset, "base"), EvalTarget(dataset, "novel")]
    if protocol == "few_shot":
        return [EvalTarget(dataset, "all")]
    others = CROSS_DATASET_TARGETS if protocol == "cross_dataset" else DOMAIN_GENERALIZATION_TARGETS
    return [EvalTarget(dataset, "all")] + [EvalTarget(t, "all") for t in others]


def _check(protocol: str) -> None:
    if protocol not in PROTOCOLS:
        raise ConfigError(f"unknown protocol {protocol!r}; known protocols: {', '.join(PROTOCOLS)}")
