"""What a trial measures, named once: the harmonic mean, the names of a search trial's validation
metrics and of a method's diagnostics.

Plain Python (no torch, no pyarrow): the trainer, the search and the torch-free report all read
these names from here.

A search trial is scored on validation images (docs/search.md). Its metrics are ``seen`` (the
classes it trained on), ``held_out`` (base classes held out of its training), their harmonic mean
``hm``, and ``accuracy`` (every class, outside base-to-novel). A sweep's ``search.metric`` names
one of them; an epoch's metrics carry each as ``val/<metric>``; the trial's result rows carry each
measured one under its split, :data:`VALIDATION_SPLIT` (the names results on disk already use).
"""

from __future__ import annotations

from collections.abc import Mapping

#: The validation metrics, as a sweep's ``search.metric`` and a search record name them.
VALIDATION_METRICS: tuple[str, ...] = ("hm", "seen", "held_out", "accuracy")
#: The split of a trial's result rows that holds each measured validation metric (``hm`` is
#: computed from ``seen`` and ``held_out``). Never a test split (``base``, ``novel``, ``all``).
VALIDATION_SPLIT: dict[str, str] = {"seen": "val_seen", "held_out": "val_held_out", "accuracy": "val"}
#: The prefix of a validation metric among an epoch's metrics and a tracker's: ``val/hm``.
VALIDATION_PREFIX = "val/"
#: The prefix of a method's diagnostics among an epoch's metrics: ``diag/<name>``.
DIAGNOSTIC_PREFIX = "diag/"


def harmonic_mean(a: float, b: float) -> float:
    """HM = 2·a·b / (a + b) (base and novel accuracy, or seen and held-out); 0 when both are 0."""
    total = a + b
    return 0.0 if total == 0 else 2.0 * a * b / total


def validation_scores(accuracy: Mapping[str, float]) -> dict[str, float]:
    """The validation metrics (by name) of a search trial's accuracies (percent) by result split:
    those measured, and ``hm`` where both ``seen`` and ``held_out`` are."""
    out = {metric: accuracy[split] for metric, split in VALIDATION_SPLIT.items() if accuracy.get(split) is not None}
    if "seen" in out and "held_out" in out:
        out["hm"] = harmonic_mean(out["seen"], out["held_out"])
    return out
