"""Which trials can train as one computation (a pack), and how a sweep's trials are grouped.

Trials pack together when they share everything the fused computation shares: the dataset, its
protocol and shot count (the same classes and test sets), the frozen CLIP (backbone and weights),
the prompt architecture and shapes (the method's module and its token counts and depths), the
batch size, the epoch count and the precision, the device and the worker count. They may differ
in anything that only enters their own loss or schedule: seed, λ, η, solver, modality, ε,
learning rate, templates. A model with random weights draws them from the trial's seed, so its
seed is part of the key. This module knows nothing about Ray.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from rayot import config as C
from rayot.errors import ConfigError


def pack_key(cfg: C.TrialConfig) -> str:
    """What a trial shares with its pack-mates (a JSON string); equal keys may pack together."""
    from rayot.model.reference import model_settings

    zero_shot = cfg.method == "zeroshot"
    m, d, o = cfg.model, cfg.data, cfg.optim
    key: dict[str, Any] = {
        "zero_shot": zero_shot,
        "data": [d.dataset, d.protocol, d.root, 0 if zero_shot else d.shots, d.num_workers],
        "model": [m.name, m.pretrained, m.checkpoint, m.cache_dir],
        "precision": cfg.precision,
        "device": cfg.device,
        "world_size": cfg.world_size,
        "eval_batch_size": o.eval_batch_size,
    }
    if not m.pretrained and not m.checkpoint:
        key["random_weights_seed"] = cfg.seed  # its frozen CLIP is drawn from the seed
    if not zero_shot:
        key["architecture"] = [_architecture(cfg.method), model_settings(cfg.method, cfg.prompt)]
        key["schedule"] = [o.batch_size, o.epochs, C.epochs_trained(cfg)]
    return json.dumps(key, sort_keys=True, default=str)


def _architecture(method: str) -> str:
    """The prompt module a method trains (methods of one module and shapes pack together)."""
    return {"cocoop": "CoCoOpCLIP", "maple": "MaPLeCLIP"}.get(method, "PromptedCLIP")


def check_packable(cfgs: list[C.TrialConfig]) -> None:
    """ConfigError unless every trial of ``cfgs`` has the first one's :func:`pack_key`."""
    if not cfgs:
        raise ConfigError("a pack needs at least one trial")
    first = pack_key(cfgs[0])
    for cfg in cfgs[1:]:
        if pack_key(cfg) != first:
            raise ConfigError(f"trials {C.trial_id(cfgs[0])} and {C.trial_id(cfg)} cannot share a pack: "
                              f"they differ in what a pack shares ({_difference(cfgs[0], cfg)})")


def _difference(a: C.TrialConfig, b: C.TrialConfig) -> str:
    ka, kb = json.loads(pack_key(a)), json.loads(pack_key(b))
    return ", ".join(k for k in sorted(set(ka) | set(kb)) if ka.get(k) != kb.get(k))


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
