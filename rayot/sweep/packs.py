"""How a sweep groups its pending trials into packs (several trials as one computation, one run).

Which trials may share a pack is the library's rule (:func:`rayot.packing.pack_key`); here the
sweep's trials are grouped in grid order and each pack gets its deterministic name.
"""

from __future__ import annotations

import hashlib

from rayot import config as C
from rayot.errors import ConfigError
from rayot.packing import pack_key


def make_packs(trials: list[C.TrialConfig], size: int) -> list[list[C.TrialConfig]]:
    """The trials grouped into packs of at most ``size`` trials with equal :func:`pack_key`, in
    the order of their first trial; trials keep their order inside a pack. ``size`` 1: one each."""
    if size < 1:
        raise ConfigError(f"pack size {size}: must be at least 1")
    groups: dict[str, list[list[C.TrialConfig]]] = {}
    order: list[list[C.TrialConfig]] = []
    for cfg in trials:
        packs = groups.setdefault(pack_key(cfg), [])
        if not packs or len(packs[-1]) == size:
            packs.append([])
            order.append(packs[-1])
        packs[-1].append(cfg)
    return order


def pack_id(cfgs: list[C.TrialConfig]) -> str:
    """A pack's name: its trial's id for one trial, else ``pack-`` and a hash of its trials' ids
    (deterministic: a re-run of the same pack resumes from its checkpoints)."""
    ids = sorted(C.trial_id(c) for c in cfgs)
    if len(ids) == 1:
        return ids[0]
    return "pack-" + hashlib.sha256(",".join(ids).encode()).hexdigest()[:12]
