"""Checkpoints of the reference code (CoOp, KgCoOp, CoCoOp, MaPLe, IVLP, PromptSRC, Prompt-OT).

The reference trainers save with Dassl: ``torch.save`` of a dict holding ``state_dict`` (the
model's, with the reference's own key names), ``epoch``, ``optimizer``, ``scheduler``, ... The
scheduler entry pickles a learning-rate scheduler *object* (Dassl's warm-up scheduler keeps its
successor, a ``CosineAnnealingLR``, in its state), so ``torch.load(weights_only=True)`` refuses
the file. :func:`load_reference_file` reads it without running code from it: a restricted
unpickler admits tensors, storages, ``OrderedDict`` and plain containers and turns every other
global into an inert :class:`PickledObject` that only records its dotted name and arguments.

Key names (peers.md §2, §3, §5, §6.1, §7):

- IVLP, PromptSRC, Prompt-OT (whole model): ``prompt_learner.ctx`` (text, layer 0: the context
  vectors after SOS, positional embedding added), ``text_encoder.transformer.resblocks.N.VPT_shallow``
  (text, replaces the context positions before block N >= 1), ``image_encoder.VPT`` (vision, layer
  0: appended after the class and patch tokens, no positional embedding, through ``ln_pre``),
  ``image_encoder.transformer.resblocks.N.VPT_shallow`` (vision, replaces the last tokens before
  block N >= 1). That is rayot's :class:`PromptedCLIP`, row N of its prompt tensors.
- CoOp and KgCoOp save their prompt learner alone: ``ctx``; a whole-model file has
  ``prompt_learner.ctx``. Both are accepted.
- MaPLe and CoCoOp: :class:`MaPLeCLIP` / :class:`CoCoOpCLIP` ``load_reference`` and
  ``reference_state`` (CoCoOp's prompt learner alone: ``ctx``, ``meta_net.*``, prefix optional).

Everything else in a checkpoint is ignored: the frozen CLIP weights, PromptSRC's frozen
zero-shot image encoder, and the class buffers ``token_prefix`` / ``token_suffix``, which belong
to the classes the checkpoint was trained on (prompts are built for the given class names).
The reference loads with ``strict=False``; here every tensor the model needs must be present with
its shape, and a learned prompt tensor the model would not use (a deeper layer, a MaPLe or CoCoOp
tensor) is refused too, each error naming the key.
"""

from __future__ import annotations

import collections
import logging
import pickle
import re
import types
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from rayot.errors import ConfigError, ModelError
from rayot.model.cocoop import CoCoOpCLIP
from rayot.model.loading import LoadedCLIP
from rayot.model.maple import MaPLeCLIP
from rayot.model.prompts import PromptedCLIP

logger = logging.getLogger(__name__)

#: Every method whose reference checkpoints rayot reads and writes.
REFERENCE_METHODS: tuple[str, ...] = (
    "coop",
    "kgcoop",
    "cocoop",
    "maple",
    "ivlp",
    "promptsrc",
    "prompt_ot",
    "pointwise",
)

#: The shapes of the reference configurations come from the method presets (rayot.config,
#: peers.md §2.3, §4.3, §6.4, §6.6, §7); ``settings`` of :func:`from_reference` override them (a
#: tiny model, PromptSRC's cross-dataset depth 3, ...).
def model_settings(method: str, prompt: Any) -> dict[str, Any]:
    """The constructor settings of ``method``'s module from a ``PromptConfig`` (rayot.config)."""
    match method:
        case "maple":  # the vision prompts are projections of the text ones
            return dict(n_ctx=prompt.n_ctx_text, depth=prompt.depth_text, ctx_init=prompt.ctx_init)
        case "cocoop":
            return dict(n_ctx=prompt.n_ctx_text, ctx_init=prompt.ctx_init)
    return dict(n_ctx_text=prompt.n_ctx_text, n_ctx_vision=prompt.n_ctx_vision,
                depth_text=prompt.depth_text, depth_vision=prompt.depth_vision, ctx_init=prompt.ctx_init)


def reference_settings(method: str) -> dict[str, Any]:
    """The module settings of ``method``'s preset (rayot.config): the reference's shapes."""
    from rayot import config as C

    return model_settings(method, C.resolve_config({}, {"method": method}).prompt)

# Whole-model key names of the IVLP family (PromptSRC's clip/model.py and trainers).
_TEXT_CTX = "prompt_learner.ctx"
_TEXT_DEEP = "text_encoder.transformer.resblocks.{}.VPT_shallow"
_VISION_CTX = "image_encoder.VPT"
_VISION_DEEP = "image_encoder.transformer.resblocks.{}.VPT_shallow"
_DEEP_RE = re.compile(r"^(text|image)_encoder\.transformer\.resblocks\.(\d+)\.VPT_shallow$")

# Learned tensors of other methods: a checkpoint holding one is not the method's checkpoint.
_FOREIGN_RE = re.compile(
    r"(^|\.)(compound_prompts_text|compound_prompt_projections|proj|meta_net)\.|VPT"
)
# KgCoOp's prompt learner saves a meta-net and bias vectors that its forward never uses.
_KGCOOP_UNUSED_RE = re.compile(r"^(prompt_learner\.)?(meta_net\.|bias_vectors$)")


# ----- reading a file without running it -----


class PickledObject:
    """An object of a class the restricted loader does not admit: inert, never imported or run.

    ``dotted_name`` is the global the file named (for example
    ``torch.optim.lr_scheduler.CosineAnnealingLR``); ``args``, ``state``, ``items`` and
    ``list_items`` hold what the pickle passed to its constructor, ``__setstate__``,
    ``__setitem__`` and ``append``.
    """

    dotted_name: ClassVar[str] = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> PickledObject:
        obj = super().__new__(cls)
        obj.args = args
        obj.kwargs = kwargs
        obj.state = None
        obj.items = {}
        obj.list_items = []
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass  # __new__ recorded the arguments; nothing to run

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __setitem__(self, key: Any, value: Any) -> None:
        self.items[key] = value

    def append(self, value: Any) -> None:
        self.list_items.append(value)

    def extend(self, values: Any) -> None:
        self.list_items.extend(values)

    def __repr__(self) -> str:
        return f"<PickledObject {self.dotted_name}>"


def _placeholder(dotted: str) -> type[PickledObject]:
    """A PickledObject subclass named after ``dotted`` (pickle's NEWOBJ needs a class)."""
    return type(dotted.rsplit(".", 1)[-1], (PickledObject,), {"dotted_name": dotted})


def _plain_dict(*_args: Any) -> dict:
    """``collections.defaultdict(factory)`` read back as a plain dict (the factory is dropped)."""
    return {}


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    """How protocol-2 pickles store bytes (``_codecs.encode(text, 'latin1')``); no other codec."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"_codecs.encode with encoding {encoding!r} is not admitted")
    return text.encode("latin1")


def _rebuild_parameter(data: Tensor, requires_grad: bool, backward_hooks: Any, *_: Any) -> Tensor:
    """A pickled ``nn.Parameter`` (optimizer internals) read back as a plain tensor."""
    return data


# Globals the restricted unpickler admits: torch's own tensor rebuild and plain containers.
# torch.load resolves storage classes (``torch.FloatStorage``, ...) itself before asking here.
_ADMITTED: dict[tuple[str, str], Callable[..., Any]] = {
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch", "Size"): torch.Size,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("collections", "defaultdict"): _plain_dict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "complex"): complex,
    ("_codecs", "encode"): _latin1_encode,
}
_DTYPES = {name for name in dir(torch) if isinstance(getattr(torch, name), torch.dtype)}
# Protocol-2 pickles (torch.save's default) name Python 3 modules by their Python 2 names.
_PY2_MODULES = {"__builtin__": "builtins", "copy_reg": "copyreg"}


class _RestrictedUnpickler(pickle.Unpickler):
    """Admits the globals in ``_ADMITTED`` and torch dtypes; any other becomes a placeholder."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._placeholders: dict[str, type[PickledObject]] = {}  # one class per name and file

    def find_class(self, module: str, name: str) -> Any:
        module = _PY2_MODULES.get(module, module)
        admitted = _ADMITTED.get((module, name))
        if admitted is not None:
            return admitted
        if module == "torch" and name in _DTYPES:
            return getattr(torch, name)
        dotted = f"{module}.{name}"
        if dotted not in self._placeholders:
            logger.debug("checkpoint global %s read as an inert placeholder", dotted)
            self._placeholders[dotted] = _placeholder(dotted)
        return self._placeholders[dotted]


def _restricted_load(file: Any, **kwargs: Any) -> Any:
    return _RestrictedUnpickler(file, **kwargs).load()


# torch.load takes a pickle *module*: it subclasses ``Unpickler`` (adding its storage lookup and
# persistent_load) and calls ``load`` for the headers of the legacy format.
_restricted_pickle = types.ModuleType("rayot_restricted_pickle")
_restricted_pickle.Unpickler = _RestrictedUnpickler  # type: ignore[attr-defined]
_restricted_pickle.load = _restricted_load  # type: ignore[attr-defined]


def load_reference_file(path: str | Path) -> dict[str, Any]:
    """The dict saved in ``path`` by the reference code (Dassl) or ``torch.save(state_dict)``.

    Read on the CPU with ``torch.load(weights_only=True)``; a file that holds other objects (a
    Dassl scheduler) is read again with a restricted unpickler that never imports or calls
    anything outside tensors and plain containers: each other object comes back as a
    :class:`PickledObject`. TorchScript archives and the pre-1.6 tar format are refused.
    ModelError, naming the file, for a missing, corrupt or unreadable file and for one that does
    not hold a dict.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"reference checkpoint {path}: file not found")
    _check_format(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as safe_err:  # noqa: BLE001 - any refusal: try the restricted reader
        logger.debug("%s: weights_only load refused (%s); restricted unpickler", path, safe_err)
        obj = _load_restricted(path)
    if not isinstance(obj, Mapping):
        raise ModelError(
            f"reference checkpoint {path} holds a {type(obj).__name__}, not a dict (a Dassl "
            "checkpoint or a state dict)"
        )
    return dict(obj)


def _check_format(path: Path) -> None:
    """Refuse what torch.load would hand to other loaders: TorchScript (code) and tar archives."""
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except (zipfile.BadZipFile, OSError) as err:
            raise ModelError(f"reference checkpoint {path}: corrupt zip archive ({err})") from err
        if any(n.endswith("constants.pkl") for n in names):
            raise ModelError(
                f"reference checkpoint {path} is a TorchScript archive (code), not a checkpoint"
            )
    else:
        with path.open("rb") as f:
            head = f.read(512)
        if len(head) >= 262 and head[257:262] == b"ustar":
            raise ModelError(f"reference checkpoint {path}: the legacy tar format is not supported")


def _load_restricted(path: Path) -> Any:
    try:
        return torch.load(
            path, map_location="cpu", weights_only=False, pickle_module=_restricted_pickle
        )
    except Exception as err:  # noqa: BLE001 - any failure here is an unreadable file
        # the weights_only error (logged at debug level) suggests an unsafe load: not repeated
        raise ModelError(f"reference checkpoint {path} cannot be read: {err}") from err


def reference_state_dict(state: Mapping[str, Any]) -> dict[str, Any]:
    """The state dict inside a Dassl checkpoint dict (its ``state_dict``), or ``state`` itself."""
    inner = state.get("state_dict")
    if isinstance(inner, Mapping):
        return dict(inner)
    return dict(state)


# ----- building and loading the prompted models -----


def from_reference(
    method: str,
    state: Mapping[str, Any] | str | Path,
    clip: LoadedCLIP,
    classnames: list[str],
    **settings: Any,
) -> nn.Module:
    """The prompted model of ``method`` for ``classnames``, with the prompts of a reference checkpoint.

    ``state``: a Dassl checkpoint dict (its ``state_dict`` is used), a state dict with the
    reference's key names, or the path of a file (:func:`load_reference_file`). ``settings``
    override the reference shapes of the method (``n_ctx_text``, ``n_ctx_vision``,
    ``depth_text``, ``depth_vision``, ``ctx_init`` for the PromptedCLIP methods; ``n_ctx``,
    ``depth``, ``ctx_init`` for MaPLe; ``n_ctx``, ``ctx_init`` for CoCoOp). Returned in eval mode.
    """
    if isinstance(state, (str, Path)):
        state = load_reference_file(state)
    model = build_model(method, clip, classnames, **settings)
    load_reference_state(model, method, state)
    return model


def build_model(method: str, clip: LoadedCLIP, classnames: list[str], **settings: Any) -> nn.Module:
    """The prompt module of ``method`` with its reference shapes, ``settings`` overriding them."""
    if method not in REFERENCE_METHODS:
        raise ConfigError(_unknown_method(method))
    shapes = _merge_settings(method, reference_settings(method), settings)
    match method:
        case "maple":
            return MaPLeCLIP(clip, classnames, **shapes)
        case "cocoop":
            return CoCoOpCLIP(clip, classnames, **shapes)
    return PromptedCLIP(clip, classnames, **shapes)


def load_reference_state(model: nn.Module, method: str, state: Mapping[str, Any]) -> None:
    """Load the prompts of a reference checkpoint (Dassl dict or state dict) into ``model``.

    ``model`` is the method's module (built from a configuration, or by :func:`build_model`); its
    own shapes decide which tensors are needed. Nothing is changed when anything is missing.
    """
    sd = reference_state_dict(state)
    match method:
        case "coop" | "kgcoop" | "ivlp" | "promptsrc" | "prompt_ot" | "pointwise":
            _expect_type(model, PromptedCLIP, method)
            _load_prompted(model, method, sd)
        case "maple":
            _expect_type(model, MaPLeCLIP, method)
            model.load_reference(sd)
        case "cocoop":
            _expect_type(model, CoCoOpCLIP, method)
            model.load_reference(sd)
        case _:
            raise ConfigError(_unknown_method(method))


def load_reference_into(model: nn.Module, method: str, path: str | Path) -> None:
    """Load the prompts of the reference checkpoint file ``path`` into ``model`` (``init_from``)."""
    load_reference_state(model, method, load_reference_file(path))
    logger.info("%s prompts loaded from reference checkpoint %s", method, path)


def to_reference(method: str, model: nn.Module) -> dict[str, Tensor]:
    """The learned tensors of ``model`` under the reference key names of ``method``.

    Detached copies, on the model's device and in its prompt dtype. The reference code reads them
    with its ``load_model`` from ``torch.save({"state_dict": sd, "epoch": E}, "model.pth.tar-E")``
    (it loads with ``strict=False`` and rebuilds the frozen weights and class buffers itself).
    """
    match method:
        case "coop" | "kgcoop" | "ivlp" | "promptsrc" | "prompt_ot" | "pointwise":
            _expect_type(model, PromptedCLIP, method)
            return {key: tensor.clone() for key, tensor in _prompted_views(model, method).items()}
        case "maple":
            _expect_type(model, MaPLeCLIP, method)
            return model.reference_state()
        case "cocoop":
            _expect_type(model, CoCoOpCLIP, method)
            return model.reference_state()
    raise ConfigError(_unknown_method(method))


# ----- PromptedCLIP (CoOp, KgCoOp, IVLP, PromptSRC, Prompt-OT) -----


def _is_coop(method: str) -> bool:
    return method in ("coop", "kgcoop")


def _prompted_views(model: PromptedCLIP, method: str) -> dict[str, Tensor]:
    """Reference key -> the row of rayot's prompt tensor it is (detached views)."""
    if _is_coop(method) and (model.vision_prompts is not None or model.depth_text > 1):
        raise ModelError(
            f"{method}: the reference model has text context only (text depth 1, no vision "
            f"prompts); this one has text depth {model.depth_text}, vision depth "
            f"{model.depth_vision}"
        )
    # CoOp and KgCoOp save their prompt learner alone; the IVLP family saves the whole model.
    text_ctx = "ctx" if _is_coop(method) else _TEXT_CTX
    views: dict[str, Tensor] = {}
    if model.text_prompts is not None:
        text = model.text_prompts.detach()  # (depth_text, n_ctx_text, W_text)
        for i in range(text.shape[0]):
            views[text_ctx if i == 0 else _TEXT_DEEP.format(i)] = text[i]
    if model.vision_prompts is not None:
        vision = model.vision_prompts.detach()  # (depth_vision, n_ctx_vision, W_vision)
        for i in range(vision.shape[0]):
            views[_VISION_CTX if i == 0 else _VISION_DEEP.format(i)] = vision[i]
    return views


def _load_prompted(model: PromptedCLIP, method: str, sd: dict[str, Any]) -> None:
    views = _prompted_views(model, method)
    if not views:
        raise ModelError(f"{method}: this model has no prompts to load ({_describe(model)})")
    if _is_coop(method) and "ctx" in views and "ctx" not in sd and _TEXT_CTX in sd:
        views = {_TEXT_CTX: views.pop("ctx"), **views}  # a whole-model CoOp file
    used = set(views)

    taken: dict[str, Tensor] = {}
    for key, target in views.items():
        if key not in sd:
            alt = f" (or {_TEXT_CTX!r})" if key == "ctx" else ""
            raise ModelError(
                f"{method} reference checkpoint: missing key {key!r}{alt} (this model: "
                f"{_describe(model)})"
            )
        value = sd[key]
        if not isinstance(value, Tensor) or not value.is_floating_point():
            kind = f"a {value.dtype} tensor" if isinstance(value, Tensor) else type(value).__name__
            raise ModelError(f"{method} reference checkpoint: key {key!r} is {kind}, not weights")
        if value.shape != target.shape:
            raise ModelError(
                f"{method} reference checkpoint: key {key!r} has shape {tuple(value.shape)}, this "
                f"model expects {tuple(target.shape)} ({_describe(model)})"
            )
        # Published checkpoints hold fp16 context vectors: cast to the prompt dtype.
        taken[key] = value.to(device=target.device, dtype=target.dtype)

    for key in sd:
        if key in used or (method == "kgcoop" and _KGCOOP_UNUSED_RE.match(key)):
            continue
        deep = _DEEP_RE.match(key)
        if deep is not None or _FOREIGN_RE.search(key) or (key == "ctx" and not _is_coop(method)):
            raise ModelError(
                f"{method} reference checkpoint: key {key!r} is a learned prompt tensor this "
                f"model would not use ({_describe(model)}{_depth_hint(sd)}); is it a checkpoint "
                "of another method or depth?"
            )
    ignored = len(sd) - len(used)
    logger.debug(
        "%s reference checkpoint: %d tensors loaded, %d keys ignored (frozen CLIP weights, "
        "class buffers token_prefix/token_suffix, teachers)",
        method,
        len(used),
        ignored,
    )
    with torch.no_grad():
        for key, value in taken.items():
            views[key].copy_(value)  # the views share storage with the parameters


def _describe(model: PromptedCLIP) -> str:
    return (
        f"text n_ctx {model.n_ctx_text} depth {model.depth_text}, "
        f"vision n_ctx {model.n_ctx_vision} depth {model.depth_vision}"
    )


def _depth_hint(sd: Mapping[str, Any]) -> str:
    """The depths the checkpoint's deep prompts imply, for an error message."""
    depths = {"text": 0, "image": 0}
    for key in sd:
        m = _DEEP_RE.match(key)
        if m is not None:
            depths[m.group(1)] = max(depths[m.group(1)], int(m.group(2)) + 1)
    if not any(depths.values()):
        return ""
    return f"; the checkpoint's depths: text {depths['text']}, vision {depths['image']}"


# ----- helpers -----


def _merge_settings(
    method: str, shapes: dict[str, Any], settings: dict[str, Any]
) -> dict[str, Any]:
    unknown = sorted(set(settings) - set(shapes))
    if unknown:
        raise ConfigError(
            f"from_reference({method!r}): unknown setting {unknown[0]!r} (settings of {method}: "
            f"{', '.join(shapes)})"
        )
    return {**shapes, **settings}


def _expect_type(model: nn.Module, cls: type, method: str) -> None:
    if not isinstance(model, cls):
        raise ModelError(f"{method}: expected a {cls.__name__}, got {type(model).__name__}")


def _unknown_method(method: str) -> str:
    return f"method {method!r} has no reference checkpoint format (one of {', '.join(REFERENCE_METHODS)})"


__all__ = [
    "REFERENCE_METHODS",
    "PickledObject",
    "build_model",
    "from_reference",
    "load_reference_file",
    "load_reference_into",
    "load_reference_state",
    "reference_state_dict",
    "to_reference",
]
