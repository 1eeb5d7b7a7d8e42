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
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rayot.data.specs import DEFAULT_TEMPLATE, template_for
from rayot.errors import ConfigError, ModelError
from rayot.model.dassl_keys import Layout, export_state, import_state
from rayot.model.prompts import PromptedCLIP
from rayot.typed import plain, setting

if TYPE_CHECKING:
    from rayot.model.loading import LoadedCLIP
    from rayot.model.prompts import PromptOutput


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
    :attr:`References.templates`; ``logit_scale`` (): the frozen CLIP's temperature, exp'ed;
    ``epoch``: 0-based. On N workers every rank sees the whole global batch.
    """

    output: PromptOutput
    labels: Tensor
    image_ref: Tensor | None
    text_ref: Tensor | None
    logit_scale: Tensor
    epoch: int


#: The prefix under which a method's diagnostics are logged and kept (``diag/<name>``).
DIAGNOSTIC_PREFIX = "diag/"


@dataclass
class Objective:
    """A method's loss on a batch.

    ``loss`` (): what the optimiser minimises. ``diagnostics``: scalars () logged per epoch (their
    mean over the epoch's steps) in the trackers and the result rows, never differentiated.
    ``aux``: further scalars () whose gradients the method's :class:`StepHooks` asks for
    (:attr:`StepHooks.aux_gradients`), for a step that is not the gradient of ``loss`` alone.
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

    def gradients(self, params: list[nn.Parameter], aux: Mapping[str, list[Tensor | None]]) -> None:
        """Change the parameters' gradients (``p.grad``, whole: summed over the workers) before
        the optimiser step; ``aux[name]`` holds each parameter's gradient of that aux term."""

    def end_epoch(self, epoch: int, model: nn.Module) -> None:
        """After the optimiser steps of 0-based ``epoch``."""

    def finish(self, model: nn.Module) -> None:
        """After the last epoch, before evaluation: for example load averaged prompts."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        pass


class Method:
    """A prompt-learning method; subclass it and override what differs (docs/methods.md).

    Class attributes: ``name`` (a lowercase identifier), ``display``, ``label`` (a fixed tag shown
    after the display name in tables, e.g. "zero-shot"), ``summary`` (one line), ``order`` (the
    position in report tables: lower first), ``Settings`` (a frozen dataclass of settings, every
    field with a default), ``trains`` (False: evaluated as built, no few-shot training subset),
    ``reference_format`` (one line naming the reference code's checkpoint format, or ``None``).
    """

    name: ClassVar[str] = ""
    display: ClassVar[str] = ""
    label: ClassVar[str | None] = None
    summary: ClassVar[str] = ""
    order: ClassVar[int] = 500
    Settings: ClassVar[type] = NoSettings
    trains: ClassVar[bool] = True
    reference_format: ClassVar[str | None] = None
    #: constant entries of the trial id (``None``: none). A built-in method sets what its trials'
    #: ids held before methods owned their settings (with :data:`LEGACY_ID_DEFAULTS`), so that
    #: they keep their ids; a new method leaves it ``None``.
    id_constants: ClassVar[Mapping[str, Any] | None] = None
    #: where it was found (set by the registry): "built-in", "entry point ...", "dotted path ..."
    origin: str = ""
    #: what a configuration names it by: its name, or the dotted path it was loaded from
    ref: str = ""

    # ----- configuration

    def preset(self, protocol: str, dataset: str, shots: int = 16) -> Preset:
        """The reference configuration for ``protocol``, ``dataset`` and ``shots`` per class (see
        :class:`Preset`)."""
        return Preset()

    def check(self, cfg: Any) -> None:
        """Rules across keys that field metadata cannot say; raise ConfigError naming the key."""

    def id_fields(self, settings: Any) -> dict[str, Any]:
        """The settings as they enter the trial id: ``{"<name>.<field>": value}``, unless a field
        names its own ``id_key``; with :attr:`id_constants` over :data:`LEGACY_ID_DEFAULTS`."""
        out = {}
        for f in dataclasses.fields(settings):
            out[f.metadata.get("id_key") or f"{self.name}.{f.name}"] = plain(getattr(settings, f.name))
        if self.id_constants is None:
            return out
        return {**LEGACY_ID_DEFAULTS, **self.id_constants, **out}

    # ----- the model

    def build(self, clip: LoadedCLIP, classnames: list[str], prompt: Any, settings: Any) -> nn.Module:
        """The prompt module around ``clip`` (frozen) for ``classnames``, from the trial's prompt
        shapes (``prompt``: :class:`rayot.config.PromptConfig`) and the method's settings. Its
        learned tensors draw from torch's global generator, which the caller has seeded."""
        raise NotImplementedError(f"method {self.name!r} does not say how to build its model")

    def for_dataset(self, model: nn.Module, settings: Any, dataset: str) -> None:
        """Called before the model trains on or is evaluated on ``dataset``: dataset-dependent
        state (a zero-shot classifier's template). The classes are set by the caller."""

    def architecture(self, prompt: Any, settings: Any) -> Any:
        """What trials of this method must share (besides data, model and schedule) to train as one
        computation: the prompt module's class and shapes, as JSON-able values. Two methods that
        build the same module with the same shapes may return the same and pack together."""
        return [self.name, plain(prompt)]

    # ----- training

    def references(self, settings: Any, dataset: str) -> References:
        """The frozen features the loss needs on ``dataset`` (see :class:`References`)."""
        return References()

    def loss(self, batch: Batch, settings: Any) -> Objective:
        """The objective on ``batch``: cross-entropy on the logits unless overridden."""
        return Objective(cross_entropy(batch.output.logits, batch.labels))

    def step_hooks(self, settings: Any, epochs: int) -> StepHooks:
        """A fresh :class:`StepHooks` for one trial that trains ``epochs`` epochs."""
        return StepHooks()

    # ----- reference checkpoints

    def export_reference(self, model: nn.Module, settings: Any) -> dict[str, Tensor]:
        """The learned tensors under the reference code's key names (detached copies)."""
        raise NotImplementedError(f"method {self.name!r} declares no reference checkpoint format")

    def import_reference(self, model: nn.Module, state: Mapping[str, Any], settings: Any) -> None:
        """Load the learned tensors of a reference checkpoint's state dict into ``model``; a
        ModelError names the first key that is missing, of another shape or foreign."""
        raise NotImplementedError(f"method {self.name!r} declares no reference checkpoint format")

    def __repr__(self) -> str:
        return f"<method {self.name} ({self.origin or 'not registered'})>"


#: The keys every trial id held before methods owned their settings, at their defaults then.
LEGACY_ID_DEFAULTS: Mapping[str, Any] = {
    "data.template": "default", "loss.lambda_ot": 10.0, "loss.regularizer": "ot", "loss.eta": 0.5,
    "loss.modality": "joint", "loss.solver": "emd", "loss.epsilon": 0.05, "loss.tau": 1.0,
    "loss.n_iters": 100, "loss.kg_weight": 0.0, "loss.text_l1": 0.0, "loss.image_l1": 0.0,
    "loss.logit_kl": 0.0, "optim.gpa_mean": 0.0, "optim.gpa_std": 0.0,
}
#: What a method without a regularizer of that kind held in those keys.
NO_REGULARIZER_ID: Mapping[str, Any] = {"loss.lambda_ot": 0.0, "loss.regularizer": "none"}
#: The warm-up of the Dassl toolbox that most reference trainers run on: one epoch at 1e-5.
DASSL_WARMUP: Mapping[str, Any] = {"optim.warmup_epochs": 1, "optim.warmup_lr": 1e-5}
#: The transfer protocols (trained on imagenet, evaluated on other datasets).
TRANSFER_PROTOCOLS: tuple[str, ...] = ("cross_dataset", "domain_generalization", "transfer")


def named_templates(template: str, dataset: str, named: Mapping[str, tuple[str, ...]] | None = None) -> tuple[str, ...]:
    """The class text templates a ``template`` setting names on ``dataset``: ``"default"`` = "a photo
    of a {}.", ``"dataset"`` = the dataset's own template (docs/protocol.md §7), a name of ``named``
    (a method's own sets), or the literal template itself."""
    if named and template in named:
        return named[template]
    if template == "default":
        return (DEFAULT_TEMPLATE,)
    if template == "dataset":
        return (template_for(dataset),)
    return (template,)


def check_template(template: str, key: str, names: tuple[str, ...] = ()) -> None:
    """ConfigError unless ``template`` is a known name or a literal template with ``{}``."""
    known = ("default", "dataset", *names)
    if template not in known and "{}" not in template:
        raise ConfigError(f"config key {key!r}: {template!r} is neither one of {', '.join(known)} "
                          "nor a template with {}")


def template_setting(default: str, help: str, names: tuple[str, ...] = ()) -> Any:
    """A method's ``template`` setting (:func:`named_templates`): checked when it loads, entering the
    trial id as ``data.template`` (where it was before methods owned their settings)."""
    return setting(default, id_key="data.template", help=help,
                   check=lambda value, key: check_template(value, key, names))


def deep_prompt_shapes(prompt: Any) -> dict[str, Any]:
    """The constructor arguments of :class:`~rayot.model.prompts.PromptedCLIP` from a prompt section."""
    return dict(n_ctx_text=prompt.n_ctx_text, n_ctx_vision=prompt.n_ctx_vision, depth_text=prompt.depth_text,
                depth_vision=prompt.depth_vision, ctx_init=prompt.ctx_init)


class DeepPromptMethod(Method):
    """A method whose model is :class:`~rayot.model.prompts.PromptedCLIP` (text and vision deep
    prompts, either side possibly off) and whose reference saves it in the Dassl key layout
    (:mod:`rayot.model.dassl_keys`). Methods of this kind with equal shapes pack together."""

    reference_format = "Dassl model.pth.tar: the deep prompts under the reference's key names"
    #: the reference saves the text context alone, key ``ctx`` (text depth 1, no vision prompts)
    text_only_reference: ClassVar[bool] = False
    #: keys the reference saves but never uses (accepted and ignored on import)
    unused_reference_keys: ClassVar[Any] = None

    def check(self, cfg: Any) -> None:
        if cfg.prompt.depth_text == 0:
            raise ConfigError("config key 'prompt.depth_text': must be >= 1 (the text prompt is learned)")

    def build(self, clip: LoadedCLIP, classnames: list[str], prompt: Any, settings: Any) -> nn.Module:
        return PromptedCLIP(clip, classnames, **deep_prompt_shapes(prompt))

    def architecture(self, prompt: Any, settings: Any) -> Any:
        return ["PromptedCLIP", deep_prompt_shapes(prompt)]

    def _layout(self) -> Any:
        return Layout(self.display, text_only=self.text_only_reference, ignore=self.unused_reference_keys)

    def export_reference(self, model: nn.Module, settings: Any) -> dict[str, Tensor]:
        return export_state(model, self._layout())

    def import_reference(self, model: nn.Module, state: Mapping[str, Any], settings: Any) -> None:
        import_state(model, state, self._layout())


class ModuleMethod(Method):
    """A method whose model is one module class (:attr:`module`) built from :meth:`shapes`, and whose
    reference format, when it declares one, the module reads and writes itself
    (``reference_state()`` and ``load_reference(state)``)."""

    module: ClassVar[type[nn.Module]]

    def shapes(self, prompt: Any, settings: Any) -> dict[str, Any]:
        """The module's constructor arguments besides the CLIP and the class names."""
        raise NotImplementedError

    def build(self, clip: LoadedCLIP, classnames: list[str], prompt: Any, settings: Any) -> nn.Module:
        return self.module(clip, classnames, **self.shapes(prompt, settings))

    def architecture(self, prompt: Any, settings: Any) -> Any:
        return [self.module.__name__, plain(self.shapes(prompt, settings))]

    def own_module(self, model: nn.Module) -> nn.Module:
        """``model`` if it is this method's module, else a ModelError naming both."""
        if not isinstance(model, self.module):
            raise ModelError(f"{self.display}: expected a {self.module.__name__}, got {type(model).__name__}")
        return model

    def export_reference(self, model: nn.Module, settings: Any) -> dict[str, Tensor]:
        return self.own_module(model).reference_state()

    def import_reference(self, model: nn.Module, state: Mapping[str, Any], settings: Any) -> None:
        self.own_module(model).load_reference(state)


def cross_entropy(logits: Tensor, labels: Tensor) -> Tensor:
    """Cross-entropy of ``logits`` (B, n_cls) against ``labels`` (B,), in float32 at least."""
    return F.cross_entropy(logits.to(torch.promote_types(logits.dtype, torch.float32)), labels)


def class_rows(text: Tensor, labels: Tensor) -> Tensor:
    """Each sample's own class feature (B, D) from class features (n_cls, D), or from per-image
    class features (B, n_cls, D)."""
    if text.dim() == 2:
        return text[labels]
    return text[torch.arange(len(labels), device=labels.device), labels]
