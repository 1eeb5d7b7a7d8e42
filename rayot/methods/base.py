"""What a prompt-learning method is to rayot: one object that the trainer, packing, sharding,
sweeps, reports and the command line consult. ``docs/methods.md`` walks through writing one.

A method (a subclass of :class:`Method`) is the single place that says:

- its ``name`` (the registry key, the ``method`` of a configuration and of a result row), its
  ``display`` name in reports and where it sorts there (``order``);
- its typed settings (``Settings``, a frozen dataclass of :func:`~rayot.typed.setting` fields,
  given in a configuration under a section named after the method) and its reference presets per
  protocol and dataset with their sources (:meth:`Method.preset`);
- how its prompt module is built around a frozen CLIP (:meth:`Method.build`);
- the frozen references its loss needs (:meth:`Method.references`): the frozen CLIP's features of
  each training batch, and frozen class text features from a set of templates;
- its loss on a batch (:meth:`Method.loss`), with the diagnostics it reports while training;
- what it does around the optimiser step (:meth:`Method.step_hooks`): gradient changes once the
  gradients are whole, bookkeeping at the end of each epoch (prompt averaging), the tensors that are
  finally evaluated;
- its reference-checkpoint format, if it has one (:meth:`Method.export_reference`,
  :meth:`Method.import_reference`);
- what two of its trials must share to train as one computation (:meth:`Method.architecture`).

The trainer asks every question of the method of each trial; nothing outside a method's module
branches on its name. A method is stateless: its per-trial state lives in the prompt module it
builds and in the :class:`StepHooks` it returns.

This module is the contract alone. The built-ins' shared families (deep prompts, one module
class, template settings) are in :mod:`rayot.methods.family`, the trial ids they keep from earlier
versions in the registry (:data:`rayot.methods.LEGACY_IDS`).
"""

from __future__ import annotations

import dataclasses
import typing
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rayot.metrics import DIAGNOSTIC_PREFIX as DIAGNOSTIC_PREFIX  # re-exported: diag/<name>
from rayot.model.prompts import PromptOutput
from rayot.typed import plain

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

    from rayot.config import PromptConfig, TrialConfig
    from rayot.model.loading import LoadedCLIP

#: A method's settings type: its ``Settings`` dataclass (``class PLOT(Method[Settings])``).
S = TypeVar("S")


@dataclass(frozen=True)
class NoSettings:
    """The settings of a method that has none of its own."""


@dataclass(frozen=True)
class Preset:
    """A method's reference configuration for one protocol and dataset.

    ``reference``: general keys (dotted: ``optim.lr``, ``prompt.depth_text``, ...) that the
    configuration file may change; ``settings``: the reference values of the method's own
    settings; ``defines``: general keys applied over the file, without which the trial would be
    another method (a frozen classifier trains 0 epochs, a text context has no vision prompts); ``source``: where the
    reference values come from (paper, repository, configuration file).
    """

    reference: Mapping[str, Any] = field(default_factory=dict)
    settings: Mapping[str, Any] = field(default_factory=dict)
    defines: Mapping[str, Any] = field(default_factory=dict)
    source: str = ""


@dataclass(frozen=True)
class References:
    """The frozen CLIP's features a method's loss uses.

    ``image``: the frozen features (B, D) of every training batch, the same augmented images the
    prompted model sees. ``templates``: the frozen class text features (n_cls, D) from these
    templates (the raw features averaged over templates, then normalised), computed once per
    trial; ``()``: none.
    """

    image: bool = False
    templates: tuple[str, ...] = ()


@dataclass
class Batch:
    """What a method's loss sees of one training step of one trial: the global batch.

    ``output``: the prompt module's output on the batch (logits (B, n_cls), features);
    ``labels`` (B,); ``image_ref`` (B, D): the frozen image features of the same images, when
    :attr:`References.image`; ``text_ref`` (n_cls, D): the frozen class text features, when
    :attr:`References.templates`; ``logit_scale`` (), float32: the frozen CLIP's temperature,
    exp'ed (``clip.logit_scale.exp()``, about 100 for OpenAI's weights), the factor of its
    zero-shot logits ``logit_scale * image_ref @ text_ref.T``; ``epoch``: 0-based. On N workers
    every rank sees the whole global batch.
    """

    output: PromptOutput
    labels: Tensor
    image_ref: Tensor | None
    text_ref: Tensor | None
    logit_scale: Tensor
    epoch: int


@dataclass
class Objective:
    """A method's loss on a batch.

    ``loss`` (): what the optimiser minimises. ``diagnostics``: scalars () logged per epoch (their
    mean over the epoch's steps) in the trackers and the result rows, never differentiated.
    ``aux``: further scalars () whose gradients the method's :class:`StepHooks` asks for
    (:attr:`StepHooks.aux_gradients`), for a step that is not the gradient of ``loss`` alone; they
    are not minimised.
    """

    loss: Tensor
    diagnostics: dict[str, Tensor] = field(default_factory=dict)
    aux: dict[str, Tensor] = field(default_factory=dict)


class StepHooks:
    """What a method does around the optimiser step of one trial (default: nothing).

    Its state must survive a resumed run: :meth:`state_dict` goes into every epoch checkpoint and
    :meth:`load_state_dict` gets it back.
    """

    #: names of :attr:`Objective.aux` terms whose gradients :meth:`gradients` receives
    aux_gradients: tuple[str, ...] = ()

    def gradients(self, params: list[nn.Parameter],
                  aux: Mapping[str, list[Tensor | None]]) -> Mapping[str, Tensor] | None:
        """Change the parameters' gradients in place before the optimiser step.

        ``params``: the learned tensors (``trainable_parameters()``), their ``p.grad`` whole: the
        gradient of ``Objective.loss`` summed over the workers (unscaled under fp16).
        ``aux[name]``: for each term named in :attr:`aux_gradients`, its gradients, a list aligned
        with ``params`` (``aux[name][i]`` is d term / d ``params[i]``), summed over the workers
        like ``p.grad``; the trainer gives zeros for a tensor the term does not reach, so an entry
        is ``None`` only when a caller other than the trainer passes one.
        Returns ``None`` or this step's diagnostics: scalars () that join the objective's (their
        mean over the epoch's steps, as ``diag/<name>``; names of their own).
        """
        return None

    def end_epoch(self, epoch: int, model: nn.Module) -> None:
        """After the optimiser steps of 0-based ``epoch``."""

    def finish(self, model: nn.Module) -> None:
        """After the last epoch, before evaluation: for example load averaged prompts."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        pass


class Method(Generic[S]):
    """A prompt-learning method; subclass it and override what differs (docs/methods.md).

    Generic in its settings: ``class PLOT(Method[Settings])`` types ``settings`` in every hook and
    sets the class attribute ``Settings`` (a frozen dataclass of settings, every field with a
    default; :class:`NoSettings` when none). Other class attributes: ``name`` (a lowercase
    identifier), ``display``, ``label`` (a fixed tag shown after the display name in tables, e.g.
    "zero-shot"), ``summary`` (one line), ``order`` (the position in report tables: lower first),
    ``trains`` (False: evaluated as built, no few-shot training subset), ``reference_format`` (one
    line naming the reference code's checkpoint format, or ``None``).
    """

    name: ClassVar[str] = ""
    display: ClassVar[str] = ""
    label: ClassVar[str | None] = None
    summary: ClassVar[str] = ""
    order: ClassVar[int] = 500
    Settings: ClassVar[type[Any]] = NoSettings
    trains: ClassVar[bool] = True
    reference_format: ClassVar[str | None] = None
    #: where it was found (set by the registry): "built-in", "entry point ...", "dotted path ..."
    origin: str = ""
    #: what a configuration names it by: its name, or the dotted path it was loaded from
    ref: str = ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """``Settings`` from the type argument (``Method[Settings]``, ``DeepPromptMethod[Settings]``),
        unless the class sets it itself (as methods written before 0.4.0 do)."""
        super().__init_subclass__(**kwargs)
        if "Settings" in vars(cls):
            return
        for base in getattr(cls, "__orig_bases__", ()):
            origin, args = typing.get_origin(base), typing.get_args(base)
            if isinstance(origin, type) and issubclass(origin, Method) and args and isinstance(args[0], type):
                cls.Settings = args[0]

    # ----- configuration

    def preset(self, protocol: str, dataset: str, shots: int = 16) -> Preset:
        """The reference configuration for ``protocol``, ``dataset`` and ``shots`` per class (see
        :class:`Preset`)."""
        return Preset()

    def check(self, cfg: TrialConfig) -> None:
        """Rules across keys that field metadata cannot say (``cfg.settings`` is this method's
        ``Settings``); raise ConfigError naming the key."""

    def id_fields(self, settings: S) -> dict[str, Any]:
        """The settings as they enter the trial id: ``{"<name>.<field>": value}``, unless a field
        names its own ``id_key``; a built-in's over what its ids held before (the registry's
        :data:`~rayot.methods.LEGACY_IDS`)."""
        from rayot.methods import legacy_ids  # the registry imports this module

        out = {}
        for f in dataclasses.fields(cast("DataclassInstance", settings)):
            out[f.metadata.get("id_key") or f"{self.name}.{f.name}"] = plain(getattr(settings, f.name))
        return {**legacy_ids(self), **out}

    # ----- the model

    def build(self, clip: LoadedCLIP, classnames: list[str], prompt: PromptConfig, settings: S) -> nn.Module:
        """The prompt module around ``clip`` (frozen; ``clip.model`` is open_clip's ``CLIP``) for
        ``classnames``, from the trial's prompt shapes and the method's settings. Its learned
        tensors draw from torch's global generator, which the caller has seeded."""
        raise NotImplementedError(f"method {self.name!r} does not say how to build its model")

    def for_dataset(self, model: nn.Module, settings: S, dataset: str) -> None:
        """Called before the model trains on or is evaluated on ``dataset``: dataset-dependent
        state (a zero-shot classifier's template). The classes are set by the caller."""

    def architecture(self, prompt: PromptConfig, settings: S) -> list[Any]:
        """What trials of this method must share (besides data, model and schedule) to train as one
        computation: the prompt module's class and shapes, as a list of JSON-able values. Two
        methods that build the same module with the same shapes may return the same and pack
        together."""
        return [self.name, plain(prompt)]

    # ----- training

    def references(self, settings: S, dataset: str) -> References:
        """The frozen features the loss needs on ``dataset`` (see :class:`References`)."""
        return References()

    def loss(self, batch: Batch, settings: S) -> Objective:
        """The objective on ``batch``: cross-entropy on the logits unless overridden."""
        return Objective(cross_entropy(batch.output.logits, batch.labels))

    def step_hooks(self, settings: S, epochs: int) -> StepHooks:
        """A fresh :class:`StepHooks` for one trial that trains ``epochs`` epochs."""
        return StepHooks()

    # ----- reference checkpoints

    def export_reference(self, model: nn.Module, settings: S) -> dict[str, Tensor]:
        """The learned tensors under the reference code's key names (detached copies)."""
        raise NotImplementedError(f"method {self.name!r} declares no reference checkpoint format")

    def import_reference(self, model: nn.Module, state: Mapping[str, Any], settings: S) -> None:
        """Load the learned tensors of a reference checkpoint's state dict into ``model``; a
        ModelError names the first key that is missing, of another shape or foreign."""
        raise NotImplementedError(f"method {self.name!r} declares no reference checkpoint format")

    def __repr__(self) -> str:
        return f"<method {self.name} ({self.origin or 'not registered'})>"


def cross_entropy(logits: Tensor, labels: Tensor) -> Tensor:
    """Cross-entropy of ``logits`` (B, n_cls) against ``labels`` (B,), in float32 at least."""
    return F.cross_entropy(logits.to(torch.promote_types(logits.dtype, torch.float32)), labels)


def class_rows(text: Tensor, labels: Tensor) -> Tensor:
    """Each sample's own class feature (B, D) from class features (n_cls, D), or from per-image
    class features (B, n_cls, D)."""
    if text.dim() == 2:
        return text[labels]
    return text[torch.arange(len(labels), device=labels.device), labels]


#: Names this module held before 0.4.0 -> (the module, the name) they are now. Deprecated in 0.4.0,
#: removed in 0.6.0.
_MOVED: dict[str, tuple[str, str]] = {
    **{name: ("rayot.methods.family", name) for name in (
        "DASSL_WARMUP", "TRANSFER_PROTOCOLS", "named_templates", "check_template", "template_setting",
        "deep_prompt_shapes", "DeepPromptMethod", "ModuleMethod")},
    # the trial ids' legacy entries are one table of the registry now (LEGACY_IDS), made of these
    "LEGACY_ID_DEFAULTS": ("rayot.methods", "_LEGACY_ID_DEFAULTS"),
    "NO_REGULARIZER_ID": ("rayot.methods", "_NO_REGULARIZER_ID"),
}


def __getattr__(name: str) -> Any:
    """A name that moved out of the contract module, with a DeprecationWarning saying where."""
    if name not in _MOVED:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    module, attr = _MOVED[name]
    where = "rayot.methods.LEGACY_IDS" if attr != name else module
    warnings.warn(f"rayot.methods.base.{name} is deprecated since 0.4.0 and will be removed in 0.6.0: "
                  f"use {where}", DeprecationWarning, stacklevel=2)
    return getattr(importlib.import_module(module), attr)
