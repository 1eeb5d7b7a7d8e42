"""Checkpoint I/O in one place: rayot's own prompt checkpoints, and the reference code's files.

- A trial's final checkpoint, ``<checkpoints>/<trial id>/prompt.pt`` (:func:`save_checkpoint`,
  :func:`load_checkpoint`): the learned tensors and the resolved configuration, kilobytes,
  readable with ``torch.load(weights_only=True)``.
- A checkpoint that a method's reference code saved (Dassl's ``model.pth.tar-E``, or a state
  dict): :func:`load_reference_file` reads it without running code from the file, the method
  says how its keys map onto its model (:meth:`rayot.methods.Method.import_reference`);
  :func:`from_reference` and :func:`to_reference` are the two directions in one call.
- ``model.init_from`` (:func:`init_prompts`): either of the two, for a trial to start from.
- A sweep's epoch checkpoints, ``epoch_NNNN/`` in a Ray Train run folder: the training state and a
  record that says the folder is complete (:func:`write_epoch_checkpoint`); a resumed run starts
  from the newest complete one (:func:`newest_complete_epoch`).

The reference trainers save with Dassl: ``torch.save`` of a dict holding ``state_dict`` (the
model's, with the reference's own key names), ``epoch``, ``optimizer``, ``scheduler``, ... The
scheduler entry pickles a learning-rate scheduler *object* (Dassl's warm-up scheduler keeps its
successor, a ``CosineAnnealingLR``, in its state), so ``torch.load(weights_only=True)`` refuses
the file. :func:`load_reference_file` then reads it with a restricted unpickler that admits
tensors, storages, ``OrderedDict`` and plain containers and turns every other global into an
inert :class:`PickledObject` that only records its dotted name and arguments.
"""

from __future__ import annotations

import collections
import hashlib
import io
import json
import logging
import pickle
import types
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar

import pyarrow.fs as pafs
import torch
from torch import Tensor, nn

from rayot import config as C
from rayot import methods
from rayot.errors import ConfigError, ModelError
from rayot.model.loading import torch_load_problem
from rayot.typed import dotted_tree

logger = logging.getLogger(__name__)

# ----- reading a reference file without running it -----


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


# ----- rayot's own prompt checkpoints -----


def checkpoint_payload(cfg: C.TrialConfig, prompt_state: dict[str, Tensor]) -> dict[str, Any]:
    """What a final checkpoint holds: the prompt parameters and the resolved configuration only.

    The configuration names its method by the registry's name (``plot``, not the dotted path
    ``rayot_plot:PLOT`` a configuration may give), which a reader compares as text."""
    tree = {**C.to_dict(cfg), "method": C.method_of(cfg).name}
    return {"prompt": {k: v.detach().cpu() for k, v in prompt_state.items()},
            "config": json.dumps(tree, sort_keys=True)}


def save_checkpoint(location: str, name: str, cfg: C.TrialConfig, prompt_state: dict[str, Tensor]) -> str:
    """Write a final checkpoint to ``<location>/<name>`` (a path or URI) atomically."""
    from rayot.results import write_file

    buffer = io.BytesIO()
    torch.save(checkpoint_payload(cfg, prompt_state), buffer)
    return write_file(location, name, buffer.getvalue())


def load_checkpoint(path: str | Path) -> tuple[C.TrialConfig, dict[str, Tensor]]:
    """Read a final checkpoint (``weights_only=True``): its configuration and prompt state.

    The method the configuration names must be installed (or already loaded by this process): it
    is compared as text (:func:`saved_method`), never imported from the file's say-so."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"checkpoint {path}: not found")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is a bad file
        raise ModelError(f"checkpoint {path}: not a rayot checkpoint ({torch_load_problem(exc)})") from exc
    if not isinstance(payload, dict) or "prompt" not in payload or "config" not in payload:
        raise ModelError(f"checkpoint {path}: expected keys 'prompt' and 'config'")
    tree = _config_tree(path, payload["config"])
    tree["method"] = saved_method(path, tree)
    return C.from_dict(tree), payload["prompt"]


# ----- a method's reference checkpoints -----


def from_reference(
    method: str,
    state: Mapping[str, Any] | str | Path,
    clip: Any,
    classnames: list[str],
    **shapes: Any,
) -> nn.Module:
    """The prompted model of ``method`` for ``classnames``, with the prompts of a reference checkpoint.

    ``state``: a Dassl checkpoint dict (its ``state_dict`` is used), a state dict with the
    reference's key names, or the path of a file (:func:`load_reference_file`). The model has
    the method's reference shapes (its base-to-novel preset); ``shapes`` change them: the keys of
    the configuration's ``prompt`` section (``depth_text=3``, ``ctx_init=""``) or dotted
    configuration keys (``**{"prompt.depth_text": 3}``). Returned in eval mode.
    """
    if isinstance(state, (str, Path)):
        state = load_reference_file(state)
    cfg = _reference_config(method, shapes)
    m = methods.get(cfg.method)
    _require_format(m)
    model = m.build(clip, classnames, cfg.prompt, cfg.settings)
    m.import_reference(model, reference_state_dict(state), cfg.settings)
    return model.eval()


def _reference_config(method: str, shapes: Mapping[str, Any]) -> C.TrialConfig:
    """``method``'s base-to-novel preset with ``shapes`` (``prompt`` keys or dotted keys) over it."""
    flat = {"method": method, **{k if "." in k else f"prompt.{k}": v for k, v in shapes.items()}}
    return C.resolve_config({}, dotted_tree(flat))


def to_reference(method: str, model: nn.Module) -> dict[str, Tensor]:
    """The learned tensors of ``model`` under the reference key names of ``method``.

    Detached copies, on the model's device and in its prompt dtype. The reference code reads them
    with its ``load_model`` from ``torch.save({"state_dict": sd, "epoch": E}, "model.pth.tar-E")``
    (it loads with ``strict=False`` and rebuilds the frozen weights and class buffers itself).
    """
    m = methods.get(method)
    _require_format(m)
    return m.export_reference(model, _reference_config(method, {}).settings)


def load_reference_into(model: nn.Module, method: str, path: str | Path, settings: Any = None) -> None:
    """Load the prompts of the reference checkpoint file ``path`` into ``model`` (``settings``:
    the method's; its preset's when not given)."""
    m = methods.get(method)
    _require_format(m)
    settings = _reference_config(method, {}).settings if settings is None else settings
    m.import_reference(model, reference_state_dict(load_reference_file(path)), settings)
    logger.info("%s prompts loaded from reference checkpoint %s", m.name, path)


def init_prompts(model: nn.Module, cfg: C.TrialConfig, path: str) -> None:
    """Start from saved prompts (``model.init_from``): a rayot ``prompt.pt`` of the same method,
    or a checkpoint written by the method's reference code."""
    payload, ours = _init_source(cfg, path)
    if ours:
        model.load_prompt_state_dict(payload["prompt"])
    else:
        methods.get(cfg.method).import_reference(model, reference_state_dict(payload), cfg.settings)
    logger.info("prompts initialised from %s", path)


def check_init_from(cfg: C.TrialConfig) -> None:
    """Refuse the trial's ``model.init_from`` now, before a model loads, where :func:`init_prompts`
    would refuse it later (a missing or unreadable file, another method's prompts)."""
    if cfg.model.init_from:
        _init_source(cfg, cfg.model.init_from)


def _init_source(cfg: C.TrialConfig, path: str) -> tuple[dict[str, Any], bool]:
    """The checkpoint ``path`` read for a trial of ``cfg`` to start from, and whether it is a rayot
    ``prompt.pt`` (else the method's reference format); ModelError where it cannot serve."""
    payload = load_reference_file(path)
    method = methods.get(cfg.method)  # the user's own configuration: a dotted path there is imported
    if "prompt" in payload and "config" in payload:  # a rayot prompt.pt
        saved = saved_method(path, _config_tree(path, payload["config"]))
        if saved != method.name:
            raise ModelError(f"checkpoint {path}: its prompts are of method {saved!r}, not {method.name!r}")
        return payload, True
    if method.reference_format is None:
        raise ModelError(f"checkpoint {path}: not a rayot prompt.pt, and method {method.name!r} "
                         "declares no reference checkpoint format to read it as")
    return payload, False


def _config_tree(path: str | Path, config_json: Any) -> dict[str, Any]:
    """The configuration a rayot checkpoint holds (JSON text), as a dict; ModelError otherwise."""
    try:
        tree = json.loads(config_json)
    except (TypeError, ValueError) as exc:
        raise ModelError(f"checkpoint {path}: its 'config' is not JSON ({exc})") from exc
    if not isinstance(tree, dict):
        raise ModelError(f"checkpoint {path}: its 'config' is not a configuration (a JSON object)")
    return tree


def saved_method(path: str | Path, tree: Mapping[str, Any]) -> str:
    """The registry's name of the method a checkpoint's configuration ``tree`` names.

    Compared as text (:func:`rayot.methods.canonical`): a file never makes rayot import a module,
    so a checkpoint that names a method not installed here (a dotted path among them) is refused
    by that name with a ModelError, whatever import-time code that module holds. Files written
    before checkpoints recorded the registry's name (a built-in's ``module:Class``) still read.
    """
    ref = tree.get("method", methods.DEFAULT)
    name = methods.canonical(ref) if isinstance(ref, str) else None
    if name is None:
        raise ModelError(f"checkpoint {path}: its prompts are of method {ref!r}, which is not installed "
                         "here (a method named in a file is compared by name, never imported; install "
                         "it, or name its dotted path as 'method' in your configuration)")
    return name


def _require_format(m: methods.Method) -> None:
    if m.reference_format is None:
        with_format = [x.name for x in methods.available() if x.reference_format is not None]
        raise ConfigError(f"method {m.name!r} has no reference checkpoint format (methods with one: "
                          f"{', '.join(with_format)})")


# ----- a sweep's epoch checkpoints (resumable training state) -----

#: The training state of a pack after an epoch, in its run folder's ``epoch_NNNN/``.
EPOCH_STATE_FILE = "state.pt"
#: Written beside the state: its epoch, size and SHA-256. A folder whose state matches its record
#: is complete, whatever order its files reached the storage in (Ray Train copies them one by one).
EPOCH_RECORD_FILE = "complete.json"
_EPOCH_PREFIX = "epoch_"


def epoch_folder_name(epoch: int) -> str:
    """The folder of the checkpoint taken after 1-based ``epoch``: ``epoch_0018``."""
    return f"{_EPOCH_PREFIX}{epoch:04d}"


def write_epoch_checkpoint(directory: str | Path, epoch: int, state: Mapping[str, Any]) -> None:
    """Write ``state`` (after 1-based ``epoch``) and its completion record into ``directory``."""
    buffer = io.BytesIO()
    torch.save(dict(state), buffer)
    data = buffer.getvalue()
    (Path(directory) / EPOCH_STATE_FILE).write_bytes(data)
    record = {"epoch": epoch, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (Path(directory) / EPOCH_RECORD_FILE).write_text(json.dumps(record))


def _read(fs: pafs.FileSystem, path: str) -> bytes:
    with fs.open_input_stream(path) as f:
        return f.read()


def _complete_state(fs: pafs.FileSystem, folder: str, epoch: int) -> bytes | None:
    """The state file of an epoch folder when its record matches it; ``None`` for a folder that a
    run stopped copying part-way (no record, a shorter or other state, a record of another epoch).
    A storage that fails to answer raises: an outage is not taken for an incomplete folder."""
    listing = fs.get_file_info(pafs.FileSelector(folder, allow_not_found=True))
    sizes = {info.base_name: info.size for info in listing}
    if EPOCH_RECORD_FILE not in sizes or EPOCH_STATE_FILE not in sizes:
        return None
    try:
        record = json.loads(_read(fs, f"{folder}/{EPOCH_RECORD_FILE}"))
        if not isinstance(record, dict) or record.get("epoch") != epoch or sizes[EPOCH_STATE_FILE] != record.get("bytes"):
            return None
        data = _read(fs, f"{folder}/{EPOCH_STATE_FILE}")
    except (ValueError, FileNotFoundError):  # not JSON, or removed since the listing
        return None
    return data if hashlib.sha256(data).hexdigest() == record.get("sha256") else None


def newest_complete_epoch(fs: pafs.FileSystem, run_path: str) -> tuple[int, bytes] | None:
    """The newest complete epoch checkpoint of a run folder: (1-based epoch, its state file's bytes).

    Ray Train registers a reported checkpoint only when its controller next polls the workers (every
    2 s), so a run stopped between epochs leaves the last one or two epoch folders on the storage
    unregistered: resuming from Ray's registered checkpoint would train those epochs again. A
    folder without a matching record (copied part-way, or written before records existed) is passed
    over. ``None`` when no folder is complete.
    """
    infos = fs.get_file_info(pafs.FileSelector(run_path, allow_not_found=True))
    epochs = sorted((int(info.base_name.removeprefix(_EPOCH_PREFIX)), info.path) for info in infos
                    if info.type == pafs.FileType.Directory and info.base_name.startswith(_EPOCH_PREFIX)
                    and info.base_name.removeprefix(_EPOCH_PREFIX).isdigit())
    for epoch, folder in reversed(epochs):
        data = _complete_state(fs, folder, epoch)
        if data is not None:
            return epoch, data
        logger.info("epoch checkpoint %s is incomplete: passed over", folder)
    return None


def read_epoch_state(data: bytes) -> dict[str, Any]:
    """An epoch checkpoint's state from its file's bytes (``weights_only``: tensors and plain data)."""
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
