"""Where and how a trial computes: its device, its precision, its seeds, the weights it loads."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from rayot.errors import ConfigError


def resolve_device(name: str) -> torch.device:
    """The torch device a configuration's ``device`` names (its spelling was checked at load), or
    one line saying this machine has no such device, before the model loads: torch itself fails
    only later, at the first tensor moved there, with an error of its own."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if not count:
            raise ConfigError(f"config key 'device': {name!r}, but this machine has no CUDA device; "
                              "device=auto uses a GPU where there is one, the CPU elsewhere")
        if device.index is not None and device.index >= count:
            raise ConfigError(f"config key 'device': {name!r}, but this machine has {count} CUDA "
                              f"device{'s' if count > 1 else ''} (cuda:0 to cuda:{count - 1})")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"config key 'device': {name!r}, but this machine has no MPS (Apple GPU) device; "
                          "device=auto or device=cpu")
    return device


ASSET_PREFIX = "rayot:"


def resolve_weights_path(checkpoint: str | None) -> str | None:
    """``rayot:NAME`` names a file shipped in the package (``rayot/assets/NAME``), e.g. the
    demo model; it keeps a configuration, and so its trial id, the same on every machine. A name
    that leads out of the assets folder (``rayot:../../x``, an absolute path) is a ConfigError."""
    if checkpoint is None or not checkpoint.startswith(ASSET_PREFIX):
        return checkpoint
    from importlib.resources import files

    assets = Path(str(files("rayot") / "assets")).resolve()
    path = (assets / checkpoint[len(ASSET_PREFIX):]).resolve()
    if not path.is_relative_to(assets) or path == assets:
        raise ConfigError(f"config key 'model.checkpoint': {checkpoint!r} names no file inside rayot's "
                          f"assets folder ({ASSET_PREFIX}NAME is a file shipped there, such as "
                          f"{ASSET_PREFIX}demo-clip.pt; give any other file by its own path)")
    return str(path)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The one autocast path: ``None`` for fp32, else the low-precision compute dtype."""
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
