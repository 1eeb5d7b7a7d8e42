"""The dataset lists of the protocols (docs/protocol.md §4); `rayot.config.eval_targets` uses them."""

from __future__ import annotations

BASE2NOVEL_DATASETS = (
    "imagenet", "caltech101", "oxford_pets", "stanford_cars", "oxford_flowers", "food101",
    "fgvc_aircraft", "sun397", "dtd", "eurosat", "ucf101",
)
CROSS_DATASET_TARGETS = BASE2NOVEL_DATASETS[1:]
DOMAIN_GENERALIZATION_TARGETS = ("imagenetv2", "imagenet_sketch", "imagenet_a", "imagenet_r")
FEW_SHOT_SHOTS = (1, 2, 4, 8, 16)
SEEDS = (1, 2, 3)
#: "transfer" is cross-dataset and domain generalization from one imagenet-trained model
PROTOCOLS = ("base2novel", "cross_dataset", "domain_generalization", "transfer", "few_shot")
