"""The conformance kit: hold a method, built-in or a researcher's own, to the contracts every
built-in keeps (in the spirit of scikit-learn's ``check_estimator``).

``check_method("mypkg.plot:PLOT")`` runs each property below on a tiny random CLIP and a tiny
rendering of the demo world, on the CPU, in seconds, and raises :class:`MethodCheckError` naming
every property that fails (or returns the results with ``raise_on_failure=False``):

- ``registered``: the method loads through the registry and declares itself properly;
- ``bad_settings_refused``: a setting out of its choices or range, of the wrong type or unknown is
  one ConfigError naming ``<method>.<setting>``;
- ``trains_only_learned``: a training step gives gradients to the method's learned tensors only,
  the frozen CLIP keeps its weights and its eval mode;
- ``settings_take_effect``: each declared setting, set to another value, changes the outputs or
  the step (logits, loss, diagnostics, gradients) or else the trial (prompts, losses, accuracies).
  The other value comes from the declaration (:func:`rayot.typed.setting`): its ``test_value``,
  another of its ``choices``, or a larger number within its range; a setting declared
  ``inert="why"`` cannot show in the tiny trial, is not tried and the reason is reported;
- ``deterministic``: a seed gives the same prompts, losses and accuracies twice; another seed
  other prompts;
- ``packed_equals_alone``: two seeds of the method trained as one pack end where each ends alone;
- ``two_workers_equal_one``: a trial sharded over two ranks (torch.distributed, gloo) ends where
  it ends on one;
- ``resume_mid_schedule``: a trial resumed from the checkpoint of a mid-schedule epoch past the
  warm-up (3 epochs, warm-up 1: after epoch 2) ends where the uninterrupted one does (the name
  ``resume_equals_uninterrupted`` is accepted for it);
- ``deterministic_every_way``: the trial packed behind another seed (whose seed the pack's global
  generators take), on 2 workers and resumed mid-schedule ends where it ends alone on 1 worker,
  while the kit puts every global generator (Python's ``random``, NumPy's, torch's) in another
  state before each step of the two-worker and resumed runs: a draw from a generator the trial
  does not own, in any step, shows;
- ``reference_round_trip``: where a reference checkpoint format is declared, export then import
  gives back the same tensors and logits.

A property that does not apply (a method that does not train has no step to check) is skipped,
and says why. Every property runs one tiny trial of the method (:func:`kit_trial`): the shapes of
:func:`tiny_overrides` (2 shots, batch 4, prompts 2 layers deep) trained 2 epochs past the
preset's warm-up (3 epochs with warm-up 1), so that one trial has a mid-schedule epoch past the
warm-up, in a world of 2 training and 2 test images per class; ``overrides`` (dotted keys) adapt
it to a method (its settings, prompt shapes).
:class:`Kit` makes each run once and shares it across properties (the run alone is the baseline
of six; the pack of two seeds serves two) and keeps a pair of rank processes warm across methods;
:func:`check_method` makes one per call, and a pytest session fixture makes one per session for
:func:`parametrize_with_checks`. docs/methods.md shows how to run it on a method of one's own.
"""

from __future__ import annotations

import atexit
import copy
import dataclasses
import json
import logging
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rayot import config as C
from rayot import methods
from rayot.errors import ConfigError, RayotError
from rayot.methods import Method
from rayot.train import DistributedHooks, TrialHooks, run_pack, run_trial
from rayot.typed import dotted_tree

log = logging.getLogger(__name__)

PROPERTIES: tuple[str, ...] = (
    "registered",
    "bad_settings_refused",
    "trains_only_learned",
    "settings_take_effect",
    "deterministic",
    "packed_equals_alone",
    "two_workers_equal_one",
    "resume_mid_schedule",
    "deterministic_every_way",
    "reference_round_trip",
)
#: Former names of properties, still accepted.
ALIASES: dict[str, str] = {"resume_equals_uninterrupted": "resume_mid_schedule"}
#: Largest difference of a learned tensor between two computations that must agree (packed and
#: alone, 2 ranks and 1, resumed and not): float32 kernels of other batch shapes round differently
#: (measured: 0 to 6e-8 for the built-ins after 2 epochs); a real difference is many orders above.
TOLERANCE = 1e-5
#: The tiny trials' shapes (dotted keys): the tiny CLIP has 2 layers per tower.
BASE: dict[str, Any] = {
    "data.dataset": "synthetic", "data.shots": 2, "data.num_workers": 0,
    "model.name": "rayot-tiny", "model.pretrained": None,
    "prompt.depth_text": 2, "prompt.depth_vision": 2,
    "optim.epochs": 2, "optim.batch_size": 4, "optim.eval_batch_size": 64,
    "device": "cpu",
}
def tiny_overrides(method: str | Method | type[Method] | None = None) -> dict[str, Any]:
    """The dotted keys of a seconds-long trial of ``method``: :data:`BASE`, then the values its
    settings declare for a tiny trial (``setting(..., tiny=...)``: a schedule point inside it, say),
    without paths: the one table of tiny shapes of rayot's tests."""
    if method is None:
        return dict(BASE)
    ref = method_ref(method)
    found = methods.get(ref)
    tiny = {f"{found.name}.{f.name}": f.metadata["tiny"] for f in dataclasses.fields(found.Settings)
            if f.metadata.get("tiny") is not None}
    return {**BASE, "method": ref, **tiny}


class MethodCheckError(AssertionError):
    """A method broke one or more properties; the message names each with what was found."""


@dataclass
class CheckResult:
    method: str
    property: str
    passed: bool
    detail: str = ""
    seconds: float = 0.0
    skipped: bool = False

    def __str__(self) -> str:
        state = "skipped" if self.skipped else "passed" if self.passed else "FAILED"
        return f"{self.method}: {self.property} {state}{f' ({self.detail})' if self.detail else ''}"


class _Skip(Exception):
    """The property does not apply to this method (the message says why)."""


# ----------------------------------------------------------------------------- the tiny world


@dataclass(frozen=True)
class Workspace:
    """A rendering of the demo world and a fixed tiny CLIP checkpoint, in a temporary folder."""

    root: Path
    data: Path
    weights: Path


_workspace: Workspace | None = None


def workspace() -> Workspace:
    """This process's kit workspace (made on first use, removed at exit): 2 training images per
    class (the trials' 2 shots) and 2 test images, as few as show the properties."""
    global _workspace
    if _workspace is None:
        import open_clip

        import rayot.model  # noqa: F401 - registers the tiny model configurations
        from rayot.data.synth import write_synthetic

        root = Path(tempfile.mkdtemp(prefix="rayot-kit-"))
        atexit.register(shutil.rmtree, root, True)
        write_synthetic(root / "data", seed=0, n_train=2, n_val=1, n_test=2)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = open_clip.create_model("rayot-tiny", pretrained=None)
        weights = root / "tiny-clip.pt"
        torch.save(model.state_dict(), weights)
        _workspace = Workspace(root, root / "data", weights)
    return _workspace


def method_ref(method: str | Method | type[Method]) -> str:
    """What a configuration names ``method`` by: its registry name or dotted path."""
    if isinstance(method, str):
        return method
    cls = method if isinstance(method, type) else type(method)
    registered = methods.known(cls.name)
    if registered is not None and type(registered) is cls:
        return cls.name
    return f"{cls.__module__}:{cls.__qualname__}"


def kit_config(method: str | Method | type[Method], overrides: Mapping[str, Any] | None = None,
               **extra: Any) -> C.TrialConfig:
    """A tiny trial of ``method`` in the kit's workspace: :func:`tiny_overrides` under the method's
    preset, ``overrides`` and ``extra`` (dotted keys) over both; every step's losses logged."""
    ws = workspace()
    ref = method_ref(method)
    flat = {**tiny_overrides(ref), "optim.log_every": 1, "data.root": str(ws.data),
            "model.checkpoint": str(ws.weights), "output.results": str(ws.root / "results"),
            "output.checkpoints": str(ws.root / "checkpoints")}
    flat.pop("method")
    over = {"method": ref, **dict(overrides or {}), **extra}
    return C.resolve_config(dotted_tree(flat), dotted_tree(over))


def kit_trial(method: str | Method | type[Method], overrides: Mapping[str, Any] | None = None,
              **extra: Any) -> tuple[C.TrialConfig, int]:
    """The one trial every property of ``method`` runs (:func:`kit_config`, trained 2 epochs past
    its warm-up unless ``overrides`` sets the epochs: 3 with warm-up 1) and the mid-schedule epoch
    past the warm-up after which a resumed run starts (2)."""
    cfg = kit_config(method, overrides, **extra)
    warmup = cfg.optim.warmup_epochs
    if "optim.epochs" not in {**dict(overrides or {}), **extra}:
        cfg = C.replace(cfg, **{"optim.epochs": max(cfg.optim.epochs, warmup + 2)})
    return cfg, max(1, min(warmup + 1, C.epochs_trained(cfg) - 1))


def _other_seed(cfg: C.TrialConfig) -> C.TrialConfig:
    return C.replace(cfg, seed=cfg.seed + 1)


# ----------------------------------------------------------------------------- running trials


def stir_generators(salt: int) -> None:
    """Put Python's, NumPy's and torch's global generators in a state no trial seeds them to: what
    a method draws from them in a step then differs from an unstirred run, certainly."""
    random.seed(f"rayot-kit-{salt}")
    np.random.seed((0x5EED_0000 + salt) % 2**32)
    torch.manual_seed(0x5EED_0000 + salt)


class _Keep(DistributedHooks):
    """Trial hooks, one process or one of two ranks, that start from ``resume`` and keep a copy of
    every epoch's state and metrics; ``stir``: the global generators are stirred as training
    starts and after every step's gradients are summed, before the method's step hooks see them."""

    def __init__(self, resume: dict | None = None, stir: bool = False, rank: int = 0, world_size: int = 1) -> None:
        super().__init__(rank, world_size, torch.device("cpu"))
        self.saved: list[tuple[int, dict, dict]] = []
        self.resume, self.stir, self.steps = resume, stir, 0

    def resume_state(self) -> dict | None:
        if self.stir:
            stir_generators(-1)
        return self.resume

    def sum_gradients(self, params: list[torch.nn.Parameter]) -> None:
        super().sum_gradients(params)
        if self.stir:
            self.steps += 1
            stir_generators(self.steps)

    def save_epoch(self, epoch: int, state: dict, metrics: dict) -> None:
        self.saved.append((epoch, copy.deepcopy(state), dict(metrics)))  # as written to storage


@dataclass
class _Run:
    """What the properties compare of a trial's run: its learned tensors, correct counts, every
    step's losses (a trial alone: a pack reports none), every epoch's metrics, and the epoch
    states its hooks kept (of the pack, for a pack's members)."""

    prompt: dict[str, torch.Tensor]
    correct: list[tuple[str, str, int]]
    losses: list[tuple[float, float, float]]
    history: list[dict[str, float]]
    saved: list[tuple[int, dict, dict]]


def _runs(cfgs: list[C.TrialConfig], hooks: _Keep) -> list[_Run]:
    """Each trial's run, alone (one config) or in one pack; a member that failed fails the check."""
    seen: list[Any] = []
    if len(cfgs) == 1:
        outcomes = [run_trial(cfgs[0], device=torch.device("cpu"), hooks=hooks, progress=seen.append)]
    else:
        outcomes = []
        for cfg, result in zip(cfgs, run_pack(cfgs, device=torch.device("cpu"), hooks=hooks), strict=True):
            if result.error is not None:
                raise AssertionError(f"seed {cfg.seed} failed in the pack: {result.error}")
            outcomes.append(result.outcome)
    return [_Run(o.prompt_state, [(e.eval_dataset, e.split, e.n_correct) for e in o.evals],
                 [(p.loss, p.ce, p.reg) for p in seen], [dict(h) for h in o.history], hooks.saved)
            for o in outcomes]


def _run(cfg: C.TrialConfig, resume: dict | None = None, stir: bool = False) -> _Run:
    """The trial's run alone on one worker."""
    return _runs([cfg], _Keep(resume, stir))[0]


def _packed(cfgs: list[C.TrialConfig]) -> list[_Run]:
    """Each member's run in one pack of ``cfgs``."""
    from rayot.packing import check_packable

    try:
        check_packable(cfgs)
    except ConfigError as exc:
        raise AssertionError(f"two seeds of the method cannot share a pack: {exc}") from None
    return _runs(cfgs, _Keep())


def _key(cfgs: C.TrialConfig | list[C.TrialConfig], *how: Any) -> str:
    return json.dumps([[C.to_json(c) for c in (cfgs if isinstance(cfgs, list) else [cfgs])], *how])


class Kit:
    """What the properties share within a session: each run they compare, made once (the trial's
    run alone is the baseline of several properties, one pack serves two), and a warm pair of
    rank processes (starting one costs seconds). A context manager: leaving it stops the rank
    processes."""

    def __init__(self) -> None:
        self._runs: dict[str, Any] = {}
        self._ranks: _RankPair | None = None

    def _once(self, key: str, make: Callable[[], Any]) -> Any:
        if key not in self._runs:
            self._runs[key] = make()
        return self._runs[key]

    def alone(self, cfg: C.TrialConfig) -> _Run:
        """The trial's run alone on one worker (made on first use)."""
        return self._once(_key(cfg), lambda: _run(cfg))

    def again(self, cfg: C.TrialConfig, *, stir: bool = False) -> _Run:
        """A second run of the trial alone on one worker."""
        return self._once(_key(cfg, "again", stir), lambda: _run(cfg, stir=stir))

    def packed(self, cfgs: list[C.TrialConfig]) -> list[_Run]:
        """Each member's run in one pack of ``cfgs``."""
        return self._once(_key(cfgs, "packed"), lambda: _packed(cfgs))

    def resumed(self, cfg: C.TrialConfig, after: int, *, stir: bool = False) -> _Run:
        """The trial resumed from the checkpoint its run alone saved after epoch ``after``."""
        whole = self.alone(cfg)
        if len(whole.saved) < after:
            raise AssertionError(f"no checkpoint of epoch {after} was saved")
        # a run resumed from the checkpoint changes it in place: a copy
        return self._once(_key(cfg, "resumed", after, stir),
                          lambda: _run(cfg, resume=copy.deepcopy(whole.saved[after - 1][1]), stir=stir))

    def two_ranks(self, cfg: C.TrialConfig, *, stir: bool = False) -> list[_Run]:
        """Each rank's run of the trial on two gloo ranks (``world_size`` 2)."""
        return [members[0] for members in self.on_two_ranks([cfg], stir=stir)]

    def on_two_ranks(self, cfgs: list[C.TrialConfig], *, stir: bool = False,
                     resume: list[dict] | None = None) -> list[list[_Run]]:
        """Each rank's run of each trial of ``cfgs`` (one trial, or a pack) on two gloo ranks
        (``world_size`` 2), from ``resume``, each rank's epoch state, if given (not kept then)."""
        job = {"configs": [C.to_json(C.replace(c, world_size=2)) for c in cfgs], "stir": stir}
        if resume is not None:
            return self._on_ranks({**job, "resume": resume})
        return self._once(_key(cfgs, "two ranks", stir), lambda: self._on_ranks(job))

    def call_on_two_ranks(self, function: str) -> list[Any]:
        """What ``function`` (``module:name``, importable where this process imports from) returns on
        each of two gloo ranks, given the rank's :class:`~rayot.train.DistributedHooks`."""
        return self._on_ranks({"call": function})

    def _on_ranks(self, job: dict[str, Any]) -> Any:
        if self._ranks is None:
            self._ranks = _RankPair()
        try:
            return self._ranks.run(job)
        except AssertionError:
            self._ranks.close()  # a rank that failed may leave the other in a collective
            self._ranks = None
            raise

    def close(self) -> None:
        if self._ranks is not None:
            self._ranks.close()
            self._ranks = None

    def __enter__(self) -> Kit:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _max_diff(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> float:
    if set(a) != set(b):
        raise AssertionError(f"the learned tensors differ in name: {sorted(a)} against {sorted(b)}")
    return max(((a[k].double() - b[k].double()).abs().max().item() for k in a), default=0.0)


def _same_run(name: str, got: _Run, want: _Run, tol: float) -> None:
    """``got`` ends as ``want``: its learned tensors within ``tol``, the same correct counts, and
    its losses (every step's where both log them, else every epoch's) within ``10 tol``."""
    diff = _max_diff(got.prompt, want.prompt)
    if not diff <= tol:  # NaN fails too
        raise AssertionError(f"{name}: the learned tensors differ by {diff:.3g} (tolerance {tol:g})")
    if got.correct != want.correct:
        raise AssertionError(f"{name}: correct counts {got.correct} against {want.correct}")
    if got.losses and len(got.losses) == len(want.losses):
        pairs = [(x, y) for a, b in zip(got.losses, want.losses, strict=True) for x, y in zip(a, b, strict=True)]
    else:  # a pack's or a resumed run's epochs against the last as many of the run alone
        pairs = [(a["loss"], b["loss"]) for a, b in zip(got.history[::-1], want.history[::-1], strict=False)]
    worst = max((abs(x - y) for x, y in pairs), default=0.0)
    if not worst <= max(10 * tol, 1e-4):
        raise AssertionError(f"{name}: the logged losses differ by up to {worst:.3g}")


def _needs_training(cfg: C.TrialConfig) -> None:
    if not C.method_of(cfg).trains:
        raise _Skip("the method does not train")
    if C.epochs_trained(cfg) < 2:
        raise _Skip("the kit's trial trains fewer than 2 epochs (overrides)")


@dataclass
class _Step:
    """One training step's computation up to the loss, on a fixed batch of random images."""

    method: Method
    clip: Any
    model: torch.nn.Module
    images: torch.Tensor
    classnames: list[str]
    objective: Any


def _first_step(cfg: C.TrialConfig, shared: dict[str, Any] | None = None) -> _Step:
    """The step; ``shared``: the loaded CLIP and the task of earlier calls to reuse (one method's
    trials that differ in a setting only)."""
    from rayot.data import build_task
    from rayot.model import load_clip
    from rayot.train import init_model, trial_objective
    from rayot.train.features import global_output, reference_text_features
    from rayot.train.runtime import resolve_weights_path

    shared = {} if shared is None else shared
    method = C.method_of(cfg)
    m, d = cfg.model, cfg.data
    clip_key, task_key = (m.name, m.pretrained, m.checkpoint), (d.dataset, d.root, d.shots, cfg.seed, C.train_subsample(cfg))
    if clip_key not in shared:
        shared[clip_key] = load_clip(m.name, m.pretrained, checkpoint=resolve_weights_path(m.checkpoint))
    if task_key not in shared:
        shared[task_key] = build_task(d.dataset, d.root, shots=d.shots, seed=cfg.seed, subsample=C.train_subsample(cfg))
    clip, task = shared[clip_key], shared[task_key]
    model = init_model(cfg, clip, task.classnames, torch.device("cpu"))
    method.for_dataset(model, cfg.settings, task.dataset)
    g = torch.Generator().manual_seed(0)
    images = torch.randn(4, 3, clip.image_size, clip.image_size, generator=g)
    labels = torch.randint(0, len(task.classnames), (4,), generator=g)
    if not method.trains:
        return _Step(method, clip, model, images, task.classnames, None)
    model.train()
    hooks = TrialHooks()
    out = global_output(model, images, task.classnames, [4], hooks)
    refs = method.references(cfg.settings, task.dataset)
    image_ref = model.frozen_image_features(images) if refs.image else None
    text_ref = reference_text_features(model, task.classnames, refs.templates, hooks) if refs.templates else None
    objective = trial_objective(cfg, model, out, labels, image_ref, text_ref)
    return _Step(method, clip, model, images, task.classnames, objective)


def _step_outputs(cfg: C.TrialConfig, shared: dict[str, Any] | None = None) -> dict[str, torch.Tensor]:
    """What one step computes from the same start: the evaluation logits, and for a method that
    trains the loss, its diagnostics and aux terms and every learned tensor's gradient."""
    step = _first_step(cfg, shared)
    found: dict[str, torch.Tensor] = {}
    if step.objective is not None:
        objective = step.objective
        found["loss"] = objective.loss.detach()
        found.update({f"diagnostic {k}": v.detach() for k, v in objective.diagnostics.items()})
        found.update({f"aux {k}": v.detach() for k, v in (objective.aux or {}).items()})
        params = list(step.model.trainable_parameters())
        grads = torch.autograd.grad(objective.loss, params, allow_unused=True)
        found.update({f"gradient {i}": g for i, g in enumerate(grads) if g is not None})
    step.model.eval()
    with torch.no_grad():
        found["logits"] = step.model(step.images).logits
    return found


# ----------------------------------------------------------------------------- the properties

#: A property: (method reference, overrides, tolerance, the shared runs) -> what it found.
Property = Callable[[str, Mapping[str, Any], float, Kit], str]


def _registered(ref: str, overrides: Mapping[str, Any], tol: float, kit: Kit) -> str:
    method = methods.get(ref)
    cfg = kit_config(ref, overrides)
    back = C.from_dict(json.loads(C.to_json(cfg)))
    if back != cfg or C.trial_id(back) != C.trial_id(cfg):
        raise AssertionError("the configuration does not survive its JSON (what a Ray worker receives)")
    preset = method.preset("base2novel", "synthetic", 16)
    return f"{method.display}, {method.origin}; preset source: {preset.source or 'none given'}"


def _bad_settings_refused(ref: str, overrides: Mapping[str, Any], tol: float, kit: Kit) -> str:
    method = methods.get(ref)
    name, tried = method.name, 0
    cases: list[tuple[str, Any]] = [("no_such_setting", 1)]
    for f in dataclasses.fields(method.Settings):
        meta = f.metadata
        if meta.get("choices"):
            cases.append((f.name, "not-one-of-the-choices"))
        if meta.get("minimum") is not None:
            cases.append((f.name, meta["minimum"] - 1))
        if meta.get("positive"):
            cases.append((f.name, 0))
        default = f.default
        if isinstance(default, (int, float)) and not isinstance(default, bool):
            cases.append((f.name, "a string"))
        elif isinstance(default, str):
            cases.append((f.name, [1, 2]))
    for key, value in cases:
        tried += 1
        try:
            kit_config(ref, overrides, **{f"{name}.{key}": value})
        except ConfigError as exc:
            message = str(exc)
            if f"{name}.{key}" not in message or "\n" in message:
                raise AssertionError(f"{name}.{key}={value!r}: the error does not name the key in one "
                                     f"line: {message!r}") from None
            continue
        raise AssertionError(f"{name}.{key}={value!r} was accepted")
    return f"{tried} bad values refused"


def _trains_only_learned(ref: str, overrides: Mapping[str, Any], tol: float, kit: Kit) -> str:
    cfg = kit_config(ref, overrides)
    if not C.method_of(cfg).trains:
        raise _Skip("the method does not train")
    step = _first_step(cfg)
    model, clip, objective = step.model, step.clip, step.objective
    frozen = {k: v.clone() for k, v in clip.model.state_dict().items()}
    params = list(model.trainable_parameters())
    if not params:
        raise AssertionError("the method trains but its model has no learned tensors")
    wanting = {id(p) for p in model.parameters() if p.requires_grad}
    if {id(p) for p in params} != wanting:
        raise AssertionError("trainable_parameters() are not exactly the parameters that require gradients")
    before = {k: v.clone() for k, v in model.prompt_state_dict().items()}
    if clip.model.training:
        raise AssertionError("the frozen CLIP left eval mode when the model trains")
    if objective.loss.dim() != 0 or not torch.isfinite(objective.loss):
        raise AssertionError(f"the loss is not a finite scalar: {objective.loss}")
    for key, value in objective.diagnostics.items():
        if value.dim() != 0 or not torch.isfinite(value):
            raise AssertionError(f"diagnostic {key!r} is not a finite scalar: {value}")
    optimizer = torch.optim.SGD(params, lr=0.5, momentum=0.9)
    objective.loss.backward()
    for name, p in clip.model.named_parameters():
        if p.grad is not None:
            raise AssertionError(f"the frozen CLIP's {name} got a gradient")
    own = model.prompt_state_dict()
    named = dict(zip(own, params, strict=False)) if len(own) == len(params) else {}
    for i, p in enumerate(params):
        if p.grad is None or not p.grad.abs().sum() > 0:
            which = next((k for k, q in named.items() if q is p), f"#{i}")
            raise AssertionError(f"learned tensor {which} got no gradient from the loss")
    optimizer.step()
    for key, value in clip.model.state_dict().items():
        if not torch.equal(value, frozen[key]):
            raise AssertionError(f"the frozen CLIP's {key} changed in a step")
    moved = [k for k, v in model.prompt_state_dict().items() if not torch.equal(v, before[k])]
    if not moved:
        raise AssertionError("no learned tensor moved in a step")
    return f"{len(params)} learned tensors, {sum(p.numel() for p in params)} values; the CLIP unchanged"


def other_value(field: dataclasses.Field, value: Any) -> Any:
    """The value :func:`settings_take_effect <check_property>` tries for a setting now at ``value``:
    its declared ``test_value``, another of its ``choices``, the other boolean, a larger number
    (within any lower bound), a tuple reversed; ``None`` where the declaration gives none."""
    meta = field.metadata
    if meta.get("test_value") is not None:
        return meta["test_value"]
    if meta.get("choices"):
        return next((c for c in meta["choices"] if c != value), None)
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + type(value)(max(abs(value), 1))
    if isinstance(value, tuple) and len(set(value)) > 1:
        return value[::-1]
    return None


def _differs(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> bool:
    return set(a) != set(b) or any(a[k].shape != b[k].shape or not torch.equal(a[k], b[k]) for k in a)


def _settings_take_effect(ref: str, overrides: Mapping[str, Any], tol: float, kit: Kit) -> str:
    cfg, _ = kit_trial(ref, overrides)
    method = C.method_of(cfg)
    fields = dataclasses.fields(method.Settings)
    if not fields:
        raise _Skip("the method declares no settings")
    shared: dict[str, Any] = {}  # one CLIP and task for every step below: only a setting differs
    start: dict[str, torch.Tensor] | None = None
    shown, inert, ignored = [], [], []
    for f in fields:
        key = f"{method.name}.{f.name}"
        if f.metadata.get("inert"):
            inert.append(f"{f.name} ({f.metadata['inert']})")
            continue
        other = other_value(f, getattr(cfg.settings, f.name))
        if other is None:
            ignored.append(f"{f.name} (no other value to try: declare setting(..., test_value=...))")
            continue
        try:
            changed, _ = kit_trial(ref, overrides, **{key: other})
        except ConfigError as exc:
            raise AssertionError(f"{key}={other!r}, the value tried, is refused: {exc}") from None
        start = start if start is not None else _step_outputs(cfg, shared)
        if _differs(_step_outputs(changed, shared), start):
            shown.append(f.name)
            continue
        if method.trains:  # a setting of the schedule or the step hooks shows in the trial only
            alone, moved = kit.alone(cfg), _run(changed)
            if _differs(moved.prompt, alone.prompt) or moved.losses != alone.losses or moved.correct != alone.correct:
                shown.append(f.name)
                continue
        ignored.append(f"{f.name}={other!r}")
    if ignored:
        raise AssertionError(f"{method.name}: {', '.join(ignored)}: no effect on the outputs, the step or the "
                             "trial (declare inert='why' where the tiny trial cannot show a setting)")
    return f"{len(shown)} settings take effect" + (f"; inert: {'; '.join(inert)}" if inert else "")


def _deterministic(ref: str, overrides: Mapping[str, Any], tol: float, kit: Kit) -> str:
    cfg, _ = kit_trial(ref, overrides)
    first, again = kit.alone(cfg), kit.again(cfg)
    _same_run("the same seed twice", again, first, 0.0)
    if first.losses != again.losses:
        raise AssertionError("the same seed twice: the logged losses differ")
    if C.method_of(cfg).trains and first.prompt:
        other = kit.alone(_other_seed(cfg))
        if _max_diff(other.prompt, first.prompt) == 0.0:
            raise AssertionError("another seed gives the very same prompts: the seed does not reach them")
    return "the same seed gives identical prompts, losses and accuracies"


def _packed_equals_alone(ref: str, overrides: Mapping[str, Any], tol: float, kit: Kit) -> str:
    cfg, _ = kit_trial(ref, overrides)
    cfgs = [_other_seed(cfg), cfg]  # the pack deterministic_every_way runs too
    for member, got in zip(cfgs, kit.packed(cfgs), strict=True):
        _same_run(f"seed {member.seed} packed against alone", got, kit.alone(member), tol)
    return "2 seeds in one pack end as each alone"


def _two_workers_equal_one(ref: str, overrides: Mapping[str, Any], tol: float, kit: Kit) -> str:
    cfg, _ = kit_trial(ref, overrides)
    if cfg.optim.batch_size % 2:
        raise _Skip(f"batch size {cfg.optim.batch_size} cannot be shared by 2 workers")
    alone = kit.alone(cfg)
    for rank, run in enumerate(kit.two_ranks(cfg)):
        _same_run(f"rank {rank} of 2 against 1 worker", run, alone, tol)
    return "2 gloo ranks end as 1 worker"


def _resume_mid_schedule(ref: str, overrides: Mapping[str, Any], tol: float, kit: Kit) -> str:
    cfg, after = kit_trial(ref, overrides)
    _needs_training(cfg)
    whole = kit.alone(cfg)
    if len(whole.saved) < C.epochs_trained(cfg):
        raise AssertionError(f"{len(whole.saved)} epoch checkpoints saved of {C.epochs_trained(cfg)} epochs")
    resumed = kit.resumed(cfg, after)
    if [e for e, _, _ in resumed.saved] != [e for e, _, _ in whole.saved[after:]]:
        raise AssertionError(f"the resumed run did not start after epoch {after}, its checkpoint's")
    _same_run(f"resumed after epoch {after} of {C.epochs_trained(cfg)} against uninterrupted", resumed, whole, tol)
    return f"resumed after epoch {after} of {C.epochs_trained(cfg)} (warm-up {cfg.optim.warmup_epochs}): the same end"


def _deterministic_every_way(ref: str, overrides: Mapping[str, Any], tol: float, kit: Kit) -> str:
    cfg, after = kit_trial(ref, overrides)
    alone = kit.alone(cfg)
    ways: dict[str, Callable[[], _Run]] = {}
    if C.method_of(cfg).trains:
        # the pack takes its generators' seeds from its first member: another state from the start
        ways["packed behind another seed"] = lambda: kit.packed([_other_seed(cfg), cfg])[1]
        if cfg.optim.batch_size % 2 == 0:
            ways["on 2 workers (rank 1)"] = lambda: kit.two_ranks(cfg, stir=True)[1]
        else:  # the path of a trial alone, stirred on one worker instead
            ways["run again"] = lambda: kit.again(cfg, stir=True)
        if C.epochs_trained(cfg) > after:
            ways[f"resumed after epoch {after}"] = lambda: kit.resumed(cfg, after, stir=True)
    else:  # no step to stir: what runs is the evaluation, run again
        ways["run again"] = lambda: kit.again(cfg)
    differ = []
    for way, run in ways.items():
        try:
            _same_run(way, run(), alone, tol)
        except AssertionError as exc:
            differ.append(str(exc))
    if differ:
        raise AssertionError("with the global generators in another state before each step, against alone on "
                             "1 worker: " + "; ".join(differ))
    return f"{len(alone.losses)} steps: {', '.join(ways)} end as alone on 1 worker"


def _reference_round_trip(ref: str, overrides: Mapping[str, Any], tol: float, kit: Kit) -> str:
    from rayot.model import load_clip
    from rayot.train.runtime import resolve_weights_path

    cfg = kit_config(ref, overrides)
    method = C.method_of(cfg)
    if method.reference_format is None:
        raise _Skip("no reference checkpoint format declared")
    clip = load_clip(cfg.model.name, cfg.model.pretrained, checkpoint=resolve_weights_path(cfg.model.checkpoint))
    classes = ["dog", "sea lion", "golden retriever"]
    torch.manual_seed(1)
    model = method.build(clip, classes, cfg.prompt, cfg.settings)
    g = torch.Generator().manual_seed(5)
    model.load_prompt_state_dict({k: v + 0.3 * torch.randn(v.shape, generator=g, dtype=v.dtype)
                                  for k, v in model.prompt_state_dict().items()})
    exported = method.export_reference(model, cfg.settings)
    torch.manual_seed(2)  # another initialisation, overwritten by the import
    fresh = method.build(clip, classes, cfg.prompt, cfg.settings)
    method.import_reference(fresh, {k: v.clone() for k, v in exported.items()}, cfg.settings)
    if _max_diff(fresh.prompt_state_dict(), model.prompt_state_dict()) != 0.0:
        raise AssertionError("export then import does not give back the learned tensors")
    again = method.export_reference(fresh, cfg.settings)
    if set(again) != set(exported) or any(not torch.equal(again[k], exported[k]) for k in exported):
        raise AssertionError("export, import, export: the reference tensors differ")
    images = torch.randn(2, 3, clip.image_size, clip.image_size, generator=g)
    model.eval(), fresh.eval()
    with torch.no_grad():
        if not torch.equal(fresh(images).logits, model(images).logits):
            raise AssertionError("the imported model's logits differ from the exported one's")
    return f"{len(exported)} reference tensors ({method.reference_format})"


CHECKS: dict[str, Property] = {
    "registered": _registered,
    "bad_settings_refused": _bad_settings_refused,
    "trains_only_learned": _trains_only_learned,
    "settings_take_effect": _settings_take_effect,
    "deterministic": _deterministic,
    "packed_equals_alone": _packed_equals_alone,
    "two_workers_equal_one": _two_workers_equal_one,
    "resume_mid_schedule": _resume_mid_schedule,
    "deterministic_every_way": _deterministic_every_way,
    "reference_round_trip": _reference_round_trip,
}


def check_property(method: str | Method | type[Method], prop: str, *, overrides: Mapping[str, Any] | None = None,
                   tolerance: float = TOLERANCE, kit: Kit | None = None) -> CheckResult:
    """Run one property (:data:`PROPERTIES`, or a former name of :data:`ALIASES`) on ``method``;
    never raises for a failure of the method. ``kit``: the runs to share (else a kit of its own)."""
    prop = ALIASES.get(prop, prop)
    if prop not in CHECKS:
        raise ValueError(f"unknown property {prop!r} (known: {', '.join(PROPERTIES)})")
    if kit is None:
        with Kit() as own:
            return check_property(method, prop, overrides=overrides, tolerance=tolerance, kit=own)
    ref = method_ref(method)
    name = ref
    t0 = time.perf_counter()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the tiny models run fastest on one thread, and as in the two ranks
    try:
        name = methods.get(ref).name
        detail = CHECKS[prop](ref, dict(overrides or {}), tolerance, kit)
        return CheckResult(name, prop, True, detail, time.perf_counter() - t0)
    except _Skip as skip:
        return CheckResult(name, prop, True, str(skip), time.perf_counter() - t0, skipped=True)
    except (AssertionError, RayotError) as exc:
        return CheckResult(name, prop, False, str(exc), time.perf_counter() - t0)
    except Exception as exc:  # noqa: BLE001 - a method that crashes fails the property, with where
        where = traceback.format_exception(exc)[-2].strip().splitlines()[0] if exc.__traceback__ else ""
        return CheckResult(name, prop, False, f"{type(exc).__name__}: {exc} ({where})", time.perf_counter() - t0)
    finally:
        torch.set_num_threads(threads)


def check_method(method: str | Method | type[Method], *, overrides: Mapping[str, Any] | None = None,
                 properties: Iterable[str] = PROPERTIES, tolerance: float = TOLERANCE,
                 raise_on_failure: bool = True, kit: Kit | None = None) -> list[CheckResult]:
    """Run every property on ``method`` (a registry name, a dotted path ``package.module:Class``, or
    the class or instance of an importable module); :class:`MethodCheckError` names each failure.
    The properties share one :class:`Kit` (``kit``, or one of this call's own)."""
    if kit is None:
        with Kit() as own:
            return check_method(method, overrides=overrides, properties=properties, tolerance=tolerance,
                                raise_on_failure=raise_on_failure, kit=own)
    results = [check_property(method, p, overrides=overrides, tolerance=tolerance, kit=kit) for p in properties]
    for r in results:
        log.info("%s (%.1fs)", r, r.seconds)
    failed = [r for r in results if not r.passed]
    if failed and raise_on_failure:
        lines = "\n".join(f"- {r.property}: {r.detail}" for r in failed)
        raise MethodCheckError(f"method {failed[0].method} breaks {len(failed)} propert"
                               f"{'y' if len(failed) == 1 else 'ies'}:\n{lines}")
    return results


def parametrize_with_checks(methods_: Iterable[str | Method | type[Method]], *,
                            overrides: Mapping[str, Mapping[str, Any]] | None = None,
                            properties: Iterable[str] = PROPERTIES) -> Any:
    """A ``pytest.mark.parametrize`` of ``(method, check)`` over every method and property; the test
    calls ``check(method)``, which fails naming the property, or ``check(method, kit)`` with a
    :class:`Kit` that a session fixture keeps, so that the methods' tests share its runs::

        @pytest.fixture(scope="session")
        def kit():
            with Kit() as kit:
                yield kit

        @parametrize_with_checks(["mypkg.plot:PLOT"])
        def test_plot_keeps_the_contracts(method, check, kit):
            check(method, kit)

    ``overrides``: per method (by the reference given), dotted keys for its tiny trials.
    """
    import pytest

    overrides, properties = dict(overrides or {}), tuple(properties)
    cases, ids = [], []
    for method in methods_:
        ref = method_ref(method)
        for prop in properties:
            cases.append((ref, _Check(prop, dict(overrides.get(ref, {})))))
            ids.append(f"{ref}-{prop}")
    return pytest.mark.parametrize(("method", "check"), cases, ids=ids)


@dataclass(frozen=True)
class _Check:
    """One property as a callable for :func:`parametrize_with_checks`."""

    prop: str
    overrides: dict

    def __call__(self, method: str | Method | type[Method], kit: Kit | None = None) -> None:
        result = check_property(method, self.prop, overrides=self.overrides, kit=kit)
        if result.skipped:
            import pytest

            pytest.skip(f"{result.property}: {result.detail}")
        if not result.passed:
            raise MethodCheckError(f"method {result.method} breaks {result.property}: {result.detail}")


# ----------------------------------------------------------------------------- two ranks


class _RankPair:
    """Two gloo ranks, two Python processes (``python -m rayot.testing FOLDER RANK``) that import a
    method as a configuration names it and run the jobs they are given, one at a time, until
    closed: started once, they serve every two-rank run of a :class:`Kit`."""

    def __init__(self, timeout: float = 600.0) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="rayot-kit-ranks-"))
        self.timeout, self.jobs = timeout, 0
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        self.procs = [subprocess.Popen([sys.executable, "-m", "rayot.testing", str(self.folder), str(rank)],
                                       env=env, stdin=subprocess.PIPE, text=True,
                                       stdout=(self.folder / f"rank{rank}.log").open("w"), stderr=subprocess.STDOUT)
                      for rank in range(2)]

    def run(self, job: dict[str, Any]) -> list[Any]:
        """Each rank's answer to ``job`` (:func:`_rank_job`); ``job["resume"]``: each rank's own."""
        self.jobs += 1
        path = self.folder / f"job{self.jobs}.pt"
        torch.save(job, path)
        for proc in self.procs:
            proc.stdin.write(f"{path}\n")
            proc.stdin.flush()
        outs = [path.with_suffix(f".rank{r}.pt") for r in range(2)]
        deadline = time.monotonic() + self.timeout
        while not all(o.exists() for o in outs):
            for rank, proc in enumerate(self.procs):
                if proc.poll() is not None or time.monotonic() > deadline:
                    log_lines = (self.folder / f"rank{rank}.log").read_text().strip().splitlines()
                    state = "timed out" if proc.poll() is None else f"exit {proc.returncode}"
                    raise AssertionError(f"rank {rank} of 2 failed ({state}): {' | '.join(log_lines[-3:])}")
            time.sleep(0.02)
        found = [torch.load(o, weights_only=True) for o in outs]  # plain data: read back with weights_only
        if "call" in job:
            return found
        return [[_Run(**member, saved=rank["saved"]) for member in rank["members"]] for rank in found]

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.stdin.close()  # a rank between jobs exits at the end of its input
        for proc in self.procs:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(self.folder, ignore_errors=True)


def _rank_job(job: dict[str, Any], rank: int) -> Any:
    """One rank's part of a job: ``call``, a function ``module:name`` given this rank's hooks; else
    the trials of ``configs`` (one, or a pack) from ``resume`` (this rank's epoch state, if any),
    the global generators stirred with ``stir``: each member's run as :class:`_Run` fields."""
    import importlib

    if "call" in job:
        module, name = job["call"].split(":")
        return getattr(importlib.import_module(module), name)(DistributedHooks(rank, 2, torch.device("cpu")))
    cfgs = [C.from_dict(json.loads(c)) for c in job["configs"]]
    resume = job.get("resume")
    hooks = _Keep(resume[rank] if resume else None, job["stir"], rank=rank, world_size=2)
    runs = _runs(cfgs, hooks)
    return {"members": [{k: v for k, v in vars(r).items() if k != "saved"} for r in runs], "saved": hooks.saved}


def _rank_main(folder: str, rank: int) -> None:
    import datetime

    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{folder}/init", rank=rank, world_size=2,
                            timeout=datetime.timedelta(seconds=300))
    for line in sys.stdin:
        path = Path(line.strip())
        found = _rank_job(torch.load(path, weights_only=True), rank)
        out = path.with_suffix(f".rank{rank}.pt")
        torch.save(found, out.with_suffix(".tmp"))
        os.replace(out.with_suffix(".tmp"), out)  # whole, or not there
    # the end of its input: every answer is written; tearing the process group down would wait
    # on the other rank (seconds), so the process ends at once
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":  # one rank of a Kit's pair: python -m rayot.testing FOLDER RANK
    _rank_main(sys.argv[1], int(sys.argv[2]))
