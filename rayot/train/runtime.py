"""Where and how a trial computes: its device, its precision, its seeds, the weights it loads."""

from __future__ import annotations

import random

import numpy as np
import torch


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


ASSET_PREFIX = "rayot:"


def resolve_weights_path(checkpoint: str | None) -> str | None:
    """``rayot:NAME`` names a file shipped in the package (``rayot/assets/NAME``), e.g. the
    demo model; it keeps a configuration, and so its trial id, the same on every machine."""
    if checkpoint is None or not checkpoint.startswith(ASSET_PREFIX):
        return checkpoint
    from importlib.resources import files

    return str(files("rayot") / "assets" / checkpoint[len(ASSET_PREFIX):])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The one autocast path: ``None`` for fp32, else the low-precision compute dtype."""
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
