"""A search trial's validation: its scores on the few-shot validation subset, never on a test split.

A search trial (``validation.enabled``, docs/search.md) trains on its few-shot subset less the
held-out classes (:func:`rayot.data.search_data`) and is scored after every epoch and at the end
on validation images only: those of the classes it trained on (``val_seen``; ``val`` outside
base-to-novel) and, for base-to-novel, those of the held-out base classes, each among its own
classes as base and novel accuracy are (``val_held_out``). The scores join the epoch's metrics as
``val/<metric>``: ``seen``, ``held_out`` and their harmonic mean ``hm``, or ``accuracy``
(the names of :mod:`rayot.metrics`).
"""

from __future__ import annotations

from rayot import config as C
from rayot.data import SearchData, Task
from rayot.metrics import VALIDATION_PREFIX, validation_scores

#: The metrics a search may optimise, by protocol: base-to-novel, the others.
METRICS = {"base2novel": ("hm", "seen", "held_out"), "other": ("accuracy",)}


def metrics_of(cfg: C.TrialConfig) -> tuple[str, ...]:
    """The validation metrics a search trial of ``cfg`` reports (``val/<name>``)."""
    if cfg.data.protocol != "base2novel":
        return METRICS["other"]
    return METRICS["base2novel"] if cfg.validation.holdout > 0 else ("seen",)


def validation_task(data: SearchData, split: str) -> Task:
    """The task whose ``test`` holds the validation images of ``split`` (C.VALIDATION_SPLITS)."""
    if split in ("val_seen", "val"):
        return data.seen
    if split == "val_held_out" and data.held_out is not None:
        return data.held_out
    raise ValueError(f"no validation task for split {split!r}")


def scores(accuracy: dict[str, float]) -> dict[str, float]:
    """``{"val/seen", "val/held_out", "val/hm"}`` or ``{"val/accuracy"}`` from the accuracies
    (percent) by validation split."""
    return {VALIDATION_PREFIX + metric: score for metric, score in validation_scores(accuracy).items()}
