"""Load a frozen open_clip model offline: by name and pretrained tag, or from a local checkpoint.

Nothing here downloads. A pretrained tag is resolved to a file already in the local cache (the
Hugging Face hub cache, or open_clip's URL cache), looked up the way open_clip would download it;
when no such file exists the error names the weights and how to fetch them in advance.
"""

from __future__ import annotations

import difflib
import logging
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import open_clip
import torch
from torch import nn

from rayot.errors import ModelError

logger = logging.getLogger(__name__)

CONFIG_DIR = Path(__file__).parent / "configs"
TINY_MODELS: list[str] = sorted(p.stem for p in CONFIG_DIR.glob("*.json"))

# open_clip's names for the weight files of an HF hub repo (open_clip.constants).
_HF_WEIGHTS = "open_clip_pytorch_model.bin"
_HF_SAFE_WEIGHTS = "open_clip_model.safetensors"
_URL_CACHE_DEFAULT = "~/.cache/clip"

_registered = False


def register_model_configs() -> None:
    """Register every json in ``rayot/model/configs`` with open_clip (idempotent)."""
    global _registered
    if not _registered:
        open_clip.add_model_config(CONFIG_DIR)
        _registered = True


@dataclass
class LoadedCLIP:
    """A frozen open_clip model with what is needed to feed it.

    ``image_size`` is the side of the square input; ``mean``/``std`` the normalisation of the
    weights' preprocessing. ``pretrained`` is the tag the weights come from (None for random
    weights or a checkpoint of unknown origin); ``checkpoint`` the local file, if one was given.
    """

    model: nn.Module
    tokenizer: Any
    image_size: int
    model_name: str
    pretrained: str | None
    checkpoint: Path | None = None
    mean: tuple[float, ...] = field(default=open_clip.OPENAI_DATASET_MEAN)
    std: tuple[float, ...] = field(default=open_clip.OPENAI_DATASET_STD)


def load_clip(
    model_name: str = "ViT-B-16",
    pretrained: str | None = "openai",
    *,
    checkpoint: str | Path | None = None,
    cache_dir: str | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> LoadedCLIP:
    """Build a frozen (eval mode, no gradients) open_clip model without touching the network.

    - ``pretrained`` tag, no ``checkpoint``: the tag's weights from the local cache
      (``cache_dir`` as open_clip's ``cache_dir``; None = the HF hub cache and ``~/.cache/clip``).
    - ``checkpoint``: a local file holding an open_clip state dict (or a dict with
      ``"state_dict"``), read with ``torch.load(weights_only=True)``. A ``pretrained`` tag known
      for the model then only sets the architecture it implies (QuickGELU for OpenAI weights);
      an unknown one is ignored.
    - ``pretrained=None`` and no checkpoint: random weights (tiny test models).

    Raises ModelError for an unknown model or tag, weights missing from the cache, and a
    checkpoint that cannot be read or does not match the model.
    """
    register_model_configs()
    _check_model_name(model_name)
    tag_cfg = _pretrained_cfg(model_name, pretrained, required=checkpoint is None)
    weights_file = None
    if checkpoint is None and tag_cfg:
        weights_file = _find_cached_weights(model_name, pretrained, tag_cfg, cache_dir)

    force_quick_gelu = bool(tag_cfg.get("quick_gelu", False))
    preprocess = {
        k: tag_cfg[k] for k in ("mean", "std", "interpolation", "resize_mode") if k in tag_cfg
    }
    kwargs: dict[str, Any] = dict(
        device=device,
        precision="fp32",
        force_quick_gelu=force_quick_gelu,
        force_preprocess_cfg=preprocess or None,
        cache_dir=cache_dir,
    )
    if weights_file is not None:
        try:
            model = open_clip.create_model(model_name, pretrained=weights_file, **kwargs)
        except Exception as err:  # a corrupt or foreign file in the cache
            raise ModelError(
                f"weights of {model_name!r} (pretrained={pretrained!r}) at {weights_file} could not "
                f"be loaded: {err}"
            ) from err
        logger.info("loaded %s / %s from %s", model_name, pretrained, weights_file)
    else:
        with _quiet_random_init_warning(checkpoint is not None):
            model = open_clip.create_model(model_name, pretrained=None, **kwargs)
        if checkpoint is not None:
            _load_checkpoint(model, Path(checkpoint), model_name)
            logger.info("loaded %s from checkpoint %s", model_name, checkpoint)

    model = model.to(device=device, dtype=dtype)
    model.requires_grad_(False)
    model.eval()

    pre = open_clip.get_model_preprocess_cfg(model)
    size = getattr(model.visual, "image_size", pre.get("size", 224))
    image_size = int(size[0] if isinstance(size, (tuple, list)) else size)
    return LoadedCLIP(
        model=model,
        tokenizer=open_clip.get_tokenizer(model_name),
        image_size=image_size,
        model_name=model_name,
        pretrained=pretrained if tag_cfg else None,
        checkpoint=Path(checkpoint) if checkpoint is not None else None,
        mean=tuple(pre.get("mean", open_clip.OPENAI_DATASET_MEAN)),
        std=tuple(pre.get("std", open_clip.OPENAI_DATASET_STD)),
    )


def _check_model_name(model_name: str) -> None:
    if ":" in model_name:
        raise ModelError(
            f"model {model_name!r}: names with a schema (hf-hub:, local-dir:) are not supported; "
            "use a registered open_clip name and pass the weights file as checkpoint="
        )
    known = open_clip.list_models()
    if model_name not in known:
        close = difflib.get_close_matches(model_name, known, n=5, cutoff=0.5)
        hint = f"; close matches: {', '.join(close)}" if close else ""
        raise ModelError(f"model {model_name!r} is not an open_clip or rayot model{hint}")


def _pretrained_cfg(model_name: str, pretrained: str | None, *, required: bool) -> dict[str, Any]:
    """The open_clip pretrained config of the tag; {} for no tag (or an unknown one if not required)."""
    if not pretrained:
        return {}
    cfg = open_clip.get_pretrained_cfg(model_name, pretrained)
    if cfg or not required:
        if not cfg:
            logger.debug("ignoring pretrained=%r: not a tag of %s", pretrained, model_name)
        return dict(cfg)
    tags = open_clip.list_pretrained_tags_by_model(model_name)
    if not tags:
        raise ModelError(
            f"model {model_name!r} has no pretrained tags (pretrained={pretrained!r}); use "
            "pretrained=None for random weights or checkpoint=FILE for local weights"
        )
    close = difflib.get_close_matches(pretrained, tags, n=5, cutoff=0.4)
    hint = f"close matches: {', '.join(close)}; " if close else ""
    file_hint = "; to load a local file pass checkpoint=" if os.path.isfile(pretrained) else ""
    raise ModelError(
        f"pretrained tag {pretrained!r} is not known for model {model_name!r}; {hint}"
        f"available: {', '.join(tags)}{file_hint}"
    )


def _hf_candidates(hf_hub: str) -> tuple[str, list[str]]:
    """Repo id and file names open_clip would try for an ``org/repo/[file]`` entry, in order."""
    # A trailing slash means "the default file" in open_clip's pretrained table.
    repo_id, filename = os.path.split(hf_hub)
    filename = filename or _HF_WEIGHTS
    names = []
    if filename == _HF_WEIGHTS:
        names.append(_HF_SAFE_WEIGHTS)
    elif filename.endswith((".bin", ".pth")):
        names.append(filename[:-4] + ".safetensors")
    names.append(filename)
    return repo_id, names


def _find_cached_weights(
    model_name: str, pretrained: str | None, cfg: dict[str, Any], cache_dir: str | None
) -> str:
    """Path of the tag's weight file in the local cache, found without any network access."""
    looked: list[str] = []
    if cfg.get("file"):
        if os.path.isfile(cfg["file"]):
            return str(cfg["file"])
        looked.append(f"file {cfg['file']}")

    hf_hub = cfg.get("hf_hub", "")
    hub_cache = None
    if hf_hub:
        try:
            from huggingface_hub import try_to_load_from_cache
            from huggingface_hub.constants import HF_HUB_CACHE
        except ImportError:  # without the hub client open_clip uses the URL, as here
            pass
        else:
            hub_cache = cache_dir or HF_HUB_CACHE
            repo_id, names = _hf_candidates(hf_hub)
            for name in names:  # never downloads: only reads the cache's folder layout
                found = try_to_load_from_cache(repo_id, name, cache_dir=cache_dir)
                if isinstance(found, str) and os.path.isfile(found):
                    return found
            looked.append(f"HF hub repo {repo_id} file {' or '.join(names)} in {hub_cache}")

    url = cfg.get("url", "")
    url_cache = os.path.expanduser(cache_dir or _URL_CACHE_DEFAULT)
    if url:
        target = os.path.join(url_cache, os.path.basename(url))
        if os.path.isfile(target):
            return target
        looked.append(f"{target} (from {url})")

    cache_arg = f", cache_dir={cache_dir!r}" if cache_dir else ""
    copy_from = cache_dir or " and ".join(d for d in (hub_cache, _URL_CACHE_DEFAULT) if d)
    raise ModelError(
        f"weights of {model_name!r} pretrained={pretrained!r} are not in the local cache "
        f"(looked for {'; '.join(looked)}). Fetch them in advance on a machine with network "
        f'access: python -c "import open_clip; open_clip.create_model_and_transforms('
        f"'{model_name}', pretrained='{pretrained}'{cache_arg})\", then copy {copy_from} to "
        "the same place here (or pass cache_dir=), or pass the weights file as checkpoint="
    )


@contextmanager
def _quiet_random_init_warning(active: bool) -> Iterator[None]:
    """Hide open_clip's 'initialized randomly' warning when a checkpoint is loaded right after."""

    def _filter(record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("No pretrained weights loaded")

    root = logging.getLogger()
    if active:
        root.addFilter(_filter)
    try:
        yield
    finally:
        if active:
            root.removeFilter(_filter)


# torch's refusal of a pickled object names it so ("Unsupported global: GLOBAL module.Name ...").
_UNSAFE_GLOBAL = re.compile(r"Unsupported global: GLOBAL ([\w.]+)")
# and any other refusal of its weights-only reader gives its detail after "WeightsUnpickler error:"
_UNPICKLER_DETAIL = re.compile(r"WeightsUnpickler error:\s*(\S[^\n]*)")


def torch_load_problem(err: BaseException) -> str:
    """What ``torch.load(weights_only=True)`` refused, in one line.

    torch explains a refusal over some eight lines, with advice to load the file with
    ``weights_only=False``, which would run any code the file holds: rayot never does. A file that
    pickles an object says which one; a damaged file gives torch's own detail, first line only.
    """
    text = str(err)
    unsafe = _UNSAFE_GLOBAL.search(text)
    if unsafe:
        return (f"it holds a pickled object ({unsafe.group(1)}), not only tensors, and rayot never loads "
                "a file with torch.load(weights_only=False), which could run code; save the tensors "
                "alone (torch.save(model.state_dict(), PATH))")
    detail = _UNPICKLER_DETAIL.search(text)
    if detail:
        return f"not a file of tensors that torch can read ({detail.group(1).strip()})"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise ModelError(f"checkpoint {path}: file not found")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any refusal is a file that cannot be read
        raise ModelError(f"checkpoint {path} cannot be read: {torch_load_problem(err)}") from err
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ModelError(
            f"checkpoint {path} holds no state dict (a dict of tensors, or a dict with a "
            "'state_dict' entry)"
        )
    if obj and all(k.startswith("module.") for k in obj):  # saved from a DDP wrapper
        obj = {k[len("module.") :]: v for k, v in obj.items()}
    return obj


def _first(keys: list[str], n: int = 5) -> str:
    more = f" (+{len(keys) - n} more)" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def _load_checkpoint(model: nn.Module, path: Path, model_name: str) -> None:
    state = _read_state_dict(path)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    problems = []
    if missing:
        problems.append(f"missing keys: {_first(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_first(unexpected)}")
    if shapes:
        problems.append(f"shape mismatch (file vs model): {_first(shapes, 3)}")
    if problems:
        raise ModelError(
            f"checkpoint {path} does not match model {model_name!r}: {'; '.join(problems)}"
        )
    model.load_state_dict(state, strict=True)
