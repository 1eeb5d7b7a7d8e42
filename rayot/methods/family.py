"""What several methods share: the deep-prompt model and its reference layout, a model of one
module class, the class-text template setting, and the reference trainers' common preset values.

A plug-in reuses the built-ins' deep-prompt model (a learned text context alone, or independent
deep prompts on both towers) by subclassing :class:`DeepPromptMethod`: its model is
:class:`~rayot.model.prompts.PromptedCLIP` built from the trial's prompt section
(:func:`deep_prompt_shapes`), and it packs with every trial of the same shapes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from torch import Tensor, nn

from rayot.data.specs import DEFAULT_TEMPLATE, template_for
from rayot.errors import ConfigError, ModelError
from rayot.methods.base import Method, S
from rayot.model.dassl_keys import Layout, export_state, import_state
from rayot.model.prompts import PromptedCLIP
from rayot.typed import plain, setting

if TYPE_CHECKING:
    import re

    from rayot.config import PromptConfig, TrialConfig
    from rayot.model.loading import LoadedCLIP

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


def template_setting(default: str, help: str, names: tuple[str, ...] = (), **more: Any) -> Any:
    """A method's ``template`` setting (:func:`named_templates`): checked when it loads, entering the
    trial id as ``data.template`` (where it was before methods owned their settings); ``more``:
    further keywords of :func:`~rayot.typed.setting`."""
    more.setdefault("test_value", "a blurry photo of a {}.")  # what the conformance kit tries instead
    return setting(default, id_key="data.template", help=help,
                   check=lambda value, key: check_template(value, key, names), **more)


def deep_prompt_shapes(prompt: PromptConfig) -> dict[str, Any]:
    """The constructor arguments of :class:`~rayot.model.prompts.PromptedCLIP` from a prompt section:
    ``n_ctx_text``, ``n_ctx_vision``, ``depth_text``, ``depth_vision``, ``ctx_init``."""
    return dict(n_ctx_text=prompt.n_ctx_text, n_ctx_vision=prompt.n_ctx_vision, depth_text=prompt.depth_text,
                depth_vision=prompt.depth_vision, ctx_init=prompt.ctx_init)


class DeepPromptMethod(Method[S]):
    """A method whose model is :class:`~rayot.model.prompts.PromptedCLIP` (text and vision deep
    prompts, either side possibly off) and whose reference saves it in the Dassl key layout
    (:mod:`rayot.model.dassl_keys`). Methods of this kind with equal shapes pack together; a
    subclass changes the loss, the references, the step hooks or the presets and keeps the model."""

    reference_format = "Dassl model.pth.tar: the deep prompts under the reference's key names"
    #: the reference saves the text context alone, key ``ctx`` (text depth 1, no vision prompts)
    text_only_reference: ClassVar[bool] = False
    #: keys the reference saves but never uses (accepted and ignored on import)
    unused_reference_keys: ClassVar[re.Pattern[str] | None] = None

    def check(self, cfg: TrialConfig) -> None:
        if cfg.prompt.depth_text == 0:
            raise ConfigError("config key 'prompt.depth_text': must be >= 1 (the text prompt is learned)")

    def build(self, clip: LoadedCLIP, classnames: list[str], prompt: PromptConfig, settings: S) -> nn.Module:
        return PromptedCLIP(clip, classnames, **deep_prompt_shapes(prompt))

    def architecture(self, prompt: PromptConfig, settings: S) -> list[Any]:
        return ["PromptedCLIP", deep_prompt_shapes(prompt)]

    def _layout(self) -> Layout:
        return Layout(self.display, text_only=self.text_only_reference, ignore=self.unused_reference_keys)

    def export_reference(self, model: nn.Module, settings: S) -> dict[str, Tensor]:
        return export_state(model, self._layout())

    def import_reference(self, model: nn.Module, state: Mapping[str, Any], settings: S) -> None:
        import_state(model, state, self._layout())


class ModuleMethod(Method[S]):
    """A method whose model is one module class (:attr:`module`) built from :meth:`shapes`, and whose
    reference format, when it declares one, the module reads and writes itself
    (``reference_state()`` and ``load_reference(state)``)."""

    module: ClassVar[type[nn.Module]]

    def shapes(self, prompt: PromptConfig, settings: S) -> dict[str, Any]:
        """The module's constructor arguments besides the CLIP and the class names."""
        raise NotImplementedError

    def build(self, clip: LoadedCLIP, classnames: list[str], prompt: PromptConfig, settings: S) -> nn.Module:
        return self.module(clip, classnames, **self.shapes(prompt, settings))

    def architecture(self, prompt: PromptConfig, settings: S) -> list[Any]:
        return [self.module.__name__, plain(self.shapes(prompt, settings))]

    def own_module(self, model: nn.Module) -> nn.Module:
        """``model`` if it is this method's module, else a ModelError naming both."""
        if not isinstance(model, self.module):
            raise ModelError(f"{self.display}: expected a {self.module.__name__}, got {type(model).__name__}")
        return model

    def export_reference(self, model: nn.Module, settings: S) -> dict[str, Tensor]:
        return self.own_module(model).reference_state()

    def import_reference(self, model: nn.Module, state: Mapping[str, Any], settings: S) -> None:
        self.own_module(model).load_reference(state)
