"""Training and evaluating trials: a trial alone, or a pack of trials around one frozen CLIP.

- :mod:`rayot.train.trial`: running a trial or a pack (:func:`run_trial`, :func:`run_pack`);
- :mod:`rayot.train.loop`: the training loop, the schedule, each member's state;
- :mod:`rayot.train.evaluate`: top-1 accuracy on a test split;
- :mod:`rayot.train.sampling`: the order and augmentation of the training images;
- :mod:`rayot.train.collectives`: what the ranks of a trial share, agreement on failures;
- :mod:`rayot.train.features`: the feature passes a pack shares;
- :mod:`rayot.train.runtime`: device, precision, seeds, the weights loaded.

The library imports neither Ray nor Typer; `rayot train` and a Ray trial call the same functions.
"""

from __future__ import annotations

from rayot.train.collectives import DistributedHooks, PeerFailure, TrialHooks
from rayot.train.evaluate import evaluate, evaluate_pack
from rayot.train.loop import (
    EPOCH_METRICS,
    Progress,
    lr_at_epoch,
    trial_objective,
)
from rayot.train.runtime import (
    autocast_dtype,
    resolve_device,
    resolve_weights_path,
    seed_everything,
)
from rayot.train.trial import (
    MemberResult,
    TrialOutcome,
    build_model,
    init_model,
    plan,
    run_pack,
    run_trial,
)

__all__ = [
    "EPOCH_METRICS",
    "DistributedHooks",
    "MemberResult",
    "PeerFailure",
    "Progress",
    "TrialHooks",
    "TrialOutcome",
    "autocast_dtype",
    "build_model",
    "evaluate",
    "evaluate_pack",
    "init_model",
    "lr_at_epoch",
    "plan",
    "resolve_device",
    "resolve_weights_path",
    "run_pack",
    "run_trial",
    "seed_everything",
    "trial_objective",
]
