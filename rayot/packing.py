"""Which trials can train as one computation (a pack), and how a sweep's trials are grouped.

Trials pack together when they share everything the fused computation shares: the dataset, its
protocol and shot count (the same classes and test sets), the frozen CLIP (backbone and weights),
the prompt architecture and shapes (what the method says, :meth:`rayot.methods.Method.architecture`:
its module and shapes, so two methods of one module may pack), whether they train, the batch size,
the epoch count and the precision, the device and the worker count. They may differ in anything
that only enters their own loss or schedule: seed, the method's settings, learning rate. A model
with random weights draws them from the trial's seed, so its seed is part of the key. This module
knows nothing about Ray.
"""

from __future__ import annotations

import json
from typing import Any

from rayot import config as C
from rayot.errors import ConfigError


def pack_key(cfg: C.TrialConfig) -> str:
    """What a trial shares with its pack-mates (a JSON string); equal keys may pack together."""
    method = C.method_of(cfg)
    m, d, o = cfg.model, cfg.data, cfg.optim
    key: dict[str, Any] = {
        "trains": method.trains,
        "architecture": method.architecture(cfg.prompt, cfg.settings),
        "data": [d.dataset, d.protocol, d.root, d.shots if method.trains else 0, d.num_workers],
        "model": [m.name, m.pretrained, m.checkpoint, m.cache_dir],
        "precision": cfg.precision,
        "device": cfg.device,
        "world_size": cfg.world_size,
        "eval_batch_size": o.eval_batch_size,
    }
    if cfg.validation.enabled:  # a search trial: its training classes and validation sets
        key["validation"] = [cfg.validation.holdout, cfg.validation.holdout_seed]
    if not m.pretrained and not m.checkpoint:
        key["random_weights_seed"] = cfg.seed  # its frozen CLIP is drawn from the seed
    if method.trains:
        key["schedule"] = [o.batch_size, o.epochs, C.epochs_trained(cfg)]
    return json.dumps(key, sort_keys=True, default=str)


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
