"""A trial's result rows, built from its configuration and its evaluations (the columns of
:data:`rayot.results.SCHEMA`, which writes and reads them).

Every row records what a report needs of its method (display name, fixed label, order, whether it
trains), taken from the method at training time, so that `rayot report` renders the rows without
the method installed (README, "Reports").
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from rayot import config as C
from rayot.results import SETTING_ID_KEYS


@dataclass(frozen=True)
class EvalResult:
    """One evaluation of a trial: its correct count on a test split."""

    protocol: str
    eval_dataset: str
    split: str
    n_correct: int
    n_test: int
    n_classes: int

    @property
    def accuracy(self) -> float:
        return 100.0 * self.n_correct / self.n_test


def trial_fields(cfg: C.TrialConfig, sweep: str | None) -> dict[str, Any]:
    """The columns every row of a trial shares."""
    ids = C.id_fields(cfg)
    method = C.method_of(cfg)
    return {
        "trial_id": C.trial_id(cfg),
        "method": method.name,
        "method_display": method.display,
        "method_label": method.label,
        "method_order": method.order,
        "method_trains": method.trains,
        "dataset": cfg.data.dataset,
        "seed": cfg.seed,
        "shots": cfg.data.shots,
        "backbone": cfg.model.name,
        "pretrained": cfg.model.checkpoint or cfg.model.pretrained or "random",
        **{column: ids.get(key) for column, key in SETTING_ID_KEYS.items()},
        "epochs": cfg.optim.epochs,
        "sweep": sweep,
        "config": C.to_json(cfg),
    }


def result_rows(cfg: C.TrialConfig, results: Sequence[EvalResult], *, train_seconds: float,
                sweep: str | None = None, history: Sequence[Mapping[str, float]] | None = None,
                stopped_at: int | None = None) -> list[dict[str, Any]]:
    """The Parquet rows of a finished trial: one per evaluation; ``history``: its epochs' metrics;
    ``stopped_at``: the epoch after which a search's scheduler stopped it."""
    shared = trial_fields(cfg, sweep)
    metrics = json.dumps([dict(h) for h in history]) if history else None
    return [
        {
            **shared,
            "status": "done",
            "protocol": r.protocol,
            "eval_dataset": r.eval_dataset,
            "split": r.split,
            "accuracy": r.accuracy,
            "n_correct": r.n_correct,
            "n_test": r.n_test,
            "n_classes": r.n_classes,
            "train_seconds": train_seconds,
            "epoch_metrics": metrics,
            "stopped_at": stopped_at,
        }
        for r in results
    ]


def failure_row(cfg: C.TrialConfig, error: str, *, sweep: str | None = None) -> dict[str, Any]:
    """The single row that records a failed trial with its error (no accuracy)."""
    return {
        **trial_fields(cfg, sweep),
        "status": "failed",
        "protocol": cfg.data.protocol,
        "eval_dataset": cfg.data.dataset,
        "split": "",
        "error": error,
    }
