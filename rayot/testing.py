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
- ``deterministic``: a seed gives the same prompts, losses and accuracies twice; another seed
  other prompts;
- ``packed_equals_alone``: two trials of the method trained as one pack end where each ends alone;
- ``two_workers_equal_one``: a trial sharded over two ranks (torch.distributed, gloo) ends where
  it ends on one;
- ``resume_equals_uninterrupted``: a trial resumed from its first epoch's checkpoint ends where
  the uninterrupted one does;
- ``reference_round_trip``: where a reference checkpoint format is declared, export then import
  gives back the same tensors and logits.

A property that does not apply (a method that does not train has no step to check) is skipped,
and says why. ``overrides`` (dotted keys) adapt the tiny trials to a method (its settings, prompt
shapes); the defaults: 2 shots, 2 epochs, batch 4, prompts 2 layers deep. For pytest,
:func:`parametrize_with_checks` makes one test per (method, property). docs/methods.md shows how
to run it on a method of one's own.
"""

from __future__ import annotations

import atexit
import copy
import dataclasses
import json
import logging
import os
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
    "deterministic",
    "packed_equals_alone",
    "two_workers_equal_one",
    "resume_equals_uninterrupted",
    "reference_round_trip",
)
#: Largest difference of a learned tensor between two computations that must agree (packed and
#: alone, 2 ranks and 1, resumed and not): float32 kernels of other batch shapes round differently
#: (measured: 0 to 6e-8 for the built-ins after 2 epochs); a real difference is many orders above.
TOLERANCE = 1e-5
#: The tiny trials' shared settings (dotted keys); a method's preset and ``overrides`` go over them.
BASE: dict[str, Any] = {
    "data.dataset": "synthetic", "data.shots": 2, "data.num_workers": 0,
    "model.name": "rayot-tiny", "model.pretrained": None,
    "prompt.depth_text": 2, "prompt.depth_vision": 2,
    "optim.epochs": 2, "optim.batch_size": 4, "optim.eval_batch_size": 64, "optim.log_every": 1,
    "device": "cpu",
}


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
    """This process's kit workspace (made on first use, removed at exit)."""
    global _workspace
    if _workspace is None:
        import open_clip

        import rayot.model  # noqa: F401 - registers the tiny model configurations
        from rayot.data.synth import write_synthetic

        root = Path(tempfile.mkdtemp(prefix="rayot-kit-"))
        atexit.register(shutil.rmtree, root, True)
        write_synthetic(root / "data", seed=0, n_train=6, n_val=2, n_test=6)
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
    """A tiny trial of ``method`` in the kit's workspace: :data:`BASE` under the method's preset,
    ``overrides`` and ``extra`` (dotted keys) over both."""
    ws = workspace()
    flat = {**BASE, "data.root": str(ws.data), "model.checkpoint": str(ws.weights),
            "output.results": str(ws.root / "results"), "output.checkpoints": str(ws.root / "checkpoints")}
    ref = method_ref(method)
    over = {"method": ref, **dict(overrides or {}), **extra}
    return C.resolve_config(dotted_tree(flat), dotted_tree(over))


# ----------------------------------------------------------------------------- running trials


class _Keep(TrialHooks):
    """Trial hooks (one process) that keep a copy of every epoch's state and metrics."""

    def __init__(self, resume: dict | None = None) -> None:
        self.saved: list[tuple[int, dict, dict]] = []
        self.resume = resume

    def resume_state(self) -> dict | None:
        return self.resume

    def save_epoch(self, epoch: int, state: dict, metrics: dict) -> None:
        self.saved.append((epoch, copy.deepcopy(state), dict(metrics)))  # as written to storage


@dataclass
class _Run:
    prompt: dict[str, torch.Tensor]
    correct: list[tuple[str, str, int]]
    losses: list[tuple[float, float, float]]
    saved: list[tuple[int, dict, dict]]


def _run(cfg: C.TrialConfig, resume: dict | None = None) -> _Run:
    hooks, seen = _Keep(resume), []
    outcome = run_trial(cfg, device=torch.device("cpu"), hooks=hooks, progress=seen.append)
    return _Run(outcome.prompt_state, [(e.eval_dataset, e.split, e.n_correct) for e in outcome.evals],
                [(p.loss, p.ce, p.reg) for p in seen], hooks.saved)


def _max_diff(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> float:
    if set(a) != set(b):
        raise AssertionError(f"the learned tensors differ in name: {sorted(a)} against {sorted(b)}")
    return max(((a[k].double() - b[k].double()).abs().max().item() for k in a), default=0.0)


def _same_run(name: str, got: _Run, want: _Run, tol: float, *, losses: bool = True) -> None:
    diff = _max_diff(got.prompt, want.prompt)
    if not diff <= tol:  # NaN fails too
        raise AssertionError(f"{name}: the learned tensors differ by {diff:.3g} (tolerance {tol:g})")
    if got.correct != want.correct:
        raise AssertionError(f"{name}: correct counts {got.correct} against {want.correct}")
    if losses and len(got.losses) == len(want.losses):
        worst = max((abs(x - y) for a, b in zip(got.losses, want.losses, strict=True)
                     for x, y in zip(a, b, strict=True)), default=0.0)
        if not worst <= max(10 * tol, 1e-4):
            raise AssertionError(f"{name}: the logged losses differ by up to {worst:.3g}")


def _needs_training(cfg: C.TrialConfig) -> None:
    if not C.method_of(cfg).trains:
        raise _Skip("the method does not train")
    if C.epochs_trained(cfg) < 2:
        raise _Skip("the kit's trial trains fewer than 2 epochs (overrides)")


# ----------------------------------------------------------------------------- the properties


def _registered(ref: str, overrides: Mapping[str, Any], tol: float) -> str:
    method = methods.get(ref)
    cfg = kit_config(ref, overrides)
    back = C.from_dict(json.loads(C.to_json(cfg)))
    if back != cfg or C.trial_id(back) != C.trial_id(cfg):
        raise AssertionError("the configuration does not survive its JSON (what a Ray worker receives)")
    preset = method.preset("base2novel", "synthetic", 16)
    return f"{method.display}, {method.origin}; preset source: {preset.source or 'none given'}"


def _bad_settings_refused(ref: str, overrides: Mapping[str, Any], tol: float) -> str:
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


def _trains_only_learned(ref: str, overrides: Mapping[str, Any], tol: float) -> str:
    from rayot.data import build_task
    from rayot.model import load_clip
    from rayot.train import TrialHooks, init_model, trial_objective
    from rayot.train.features import global_output, reference_text_features
    from rayot.train.runtime import resolve_weights_path

    cfg = kit_config(ref, overrides)
    method = C.method_of(cfg)
    if not method.trains:
        raise _Skip("the method does not train")
    clip = load_clip(cfg.model.name, cfg.model.pretrained, checkpoint=resolve_weights_path(cfg.model.checkpoint))
    task = build_task(cfg.data.dataset, cfg.data.root, shots=cfg.data.shots, seed=cfg.seed,
                      subsample=C.train_subsample(cfg))
    model = init_model(cfg, clip, task.classnames, torch.device("cpu"))
    method.for_dataset(model, cfg.settings, task.dataset)
    frozen = {k: v.clone() for k, v in clip.model.state_dict().items()}
    params = list(model.trainable_parameters())
    if not params:
        raise AssertionError("the method trains but its model has no learned tensors")
    wanting = {id(p) for p in model.parameters() if p.requires_grad}
    if {id(p) for p in params} != wanting:
        raise AssertionError("trainable_parameters() are not exactly the parameters that require gradients")
    before = {k: v.clone() for k, v in model.prompt_state_dict().items()}
    model.train()
    if clip.model.training:
        raise AssertionError("the frozen CLIP left eval mode when the model trains")
    g = torch.Generator().manual_seed(0)
    images = torch.randn(4, 3, clip.image_size, clip.image_size, generator=g)
    labels = torch.randint(0, len(task.classnames), (4,), generator=g)
    hooks = TrialHooks()
    out = global_output(model, images, task.classnames, [4], hooks)
    refs = method.references(cfg.settings, task.dataset)
    image_ref = model.frozen_image_features(images) if refs.image else None
    text_ref = reference_text_features(model, task.classnames, refs.templates, hooks) if refs.templates else None
    objective = trial_objective(cfg, model, out, labels, image_ref, text_ref)
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


def _deterministic(ref: str, overrides: Mapping[str, Any], tol: float) -> str:
    cfg = kit_config(ref, overrides)
    first, again = _run(cfg), _run(cfg)
    _same_run("the same seed twice", again, first, 0.0)
    if first.losses != again.losses:
        raise AssertionError("the same seed twice: the logged losses differ")
    if C.method_of(cfg).trains and first.prompt:
        other = _run(C.replace(cfg, seed=cfg.seed + 1))
        if _max_diff(other.prompt, first.prompt) == 0.0:
            raise AssertionError("another seed gives the very same prompts: the seed does not reach them")
    return "the same seed gives identical prompts, losses and accuracies"


def _packed_equals_alone(ref: str, overrides: Mapping[str, Any], tol: float) -> str:
    from rayot.packing import check_packable

    cfgs = [kit_config(ref, overrides, seed=s) for s in (1, 2)]
    try:
        check_packable(cfgs)
    except ConfigError as exc:
        raise AssertionError(f"two seeds of the method cannot share a pack: {exc}") from None
    hooks = _Keep()
    results = run_pack(cfgs, device=torch.device("cpu"), hooks=hooks)
    for cfg, result in zip(cfgs, results, strict=True):
        if result.error is not None:
            raise AssertionError(f"seed {cfg.seed} failed in the pack: {result.error}")
        alone = _run(cfg)
        got = _Run(result.outcome.prompt_state, [(e.eval_dataset, e.split, e.n_correct) for e in result.outcome.evals],
                   [], [])
        _same_run(f"seed {cfg.seed} packed against alone", got, alone, tol, losses=False)
        if result.outcome.history and alone.saved:
            packed_losses = [h["loss"] for h in result.outcome.history]
            alone_losses = [m["loss"] for _, _, m in alone.saved]
            worst = max(abs(a - b) for a, b in zip(packed_losses, alone_losses, strict=True))
            if not worst <= max(10 * tol, 1e-4):
                raise AssertionError(f"seed {cfg.seed}: the epochs' losses differ packed and alone by {worst:.3g}")
    return "2 seeds in one pack end as each alone"


#: Two-rank runs already made, by (method reference, overrides), and the methods whose runs the
#: next pair of rank processes makes too (:func:`parametrize_with_checks` announces them): one
#: pair of processes for many methods, as starting one costs seconds.
_two_rank_runs: dict[tuple[str, str], list[_Run]] = {}
_two_rank_pending: dict[tuple[str, str], Mapping[str, Any]] = {}


def _two_rank_config(ref: str, overrides: Mapping[str, Any]) -> C.TrialConfig | None:
    cfg = kit_config(ref, overrides)
    return None if cfg.optim.batch_size % 2 else C.replace(cfg, world_size=2)


def _two_workers_equal_one(ref: str, overrides: Mapping[str, Any], tol: float) -> str:
    cfg = kit_config(ref, overrides)
    if cfg.optim.batch_size % 2:
        raise _Skip(f"batch size {cfg.optim.batch_size} cannot be shared by 2 workers")
    key = (ref, json.dumps(dict(overrides), sort_keys=True, default=str))
    if key not in _two_rank_runs:
        batch = {key: overrides}
        for other, other_overrides in list(_two_rank_pending.items()):
            if other not in _two_rank_runs:
                try:
                    if _two_rank_config(other[0], other_overrides) is not None:
                        batch[other] = other_overrides
                except (RayotError, AssertionError):
                    pass  # that method's own check reports it
        try:
            found = on_two_ranks([_two_rank_config(k[0], o) for k, o in batch.items()])
        except AssertionError:
            if len(batch) == 1:
                raise
            batch = {key: overrides}  # another method broke the shared processes: this one alone
            found = on_two_ranks([_two_rank_config(ref, overrides)])
        for k, runs in zip(batch, found, strict=True):
            _two_rank_runs[k] = runs
            _two_rank_pending.pop(k, None)
    got = _two_rank_runs[key]
    alone = _run(cfg)
    for rank, run in enumerate(got):
        _same_run(f"rank {rank} of 2 against 1 worker", run, alone, tol)
    return "2 gloo ranks end as 1 worker"


def _resume_equals_uninterrupted(ref: str, overrides: Mapping[str, Any], tol: float) -> str:
    cfg = kit_config(ref, overrides)
    _needs_training(cfg)
    whole = _run(cfg)
    if not whole.saved:
        raise AssertionError("no epoch checkpoint was saved")
    _, state, _ = whole.saved[0]
    resumed = _run(cfg, resume=state)
    if [e for e, _, _ in resumed.saved] != [e for e, _, _ in whole.saved[1:]]:
        raise AssertionError("the resumed run did not start after the checkpoint's epoch")
    _same_run("resumed after epoch 1 against uninterrupted", resumed, whole, tol, losses=False)
    return "resumed after epoch 1: the same end"


def _reference_round_trip(ref: str, overrides: Mapping[str, Any], tol: float) -> str:
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


CHECKS: dict[str, Callable[[str, Mapping[str, Any], float], str]] = {
    "registered": _registered,
    "bad_settings_refused": _bad_settings_refused,
    "trains_only_learned": _trains_only_learned,
    "deterministic": _deterministic,
    "packed_equals_alone": _packed_equals_alone,
    "two_workers_equal_one": _two_workers_equal_one,
    "resume_equals_uninterrupted": _resume_equals_uninterrupted,
    "reference_round_trip": _reference_round_trip,
}


def check_property(method: str | Method | type[Method], prop: str, *, overrides: Mapping[str, Any] | None = None,
                   tolerance: float = TOLERANCE) -> CheckResult:
    """Run one property (:data:`PROPERTIES`) on ``method``; never raises for a failure of the method."""
    if prop not in CHECKS:
        raise ValueError(f"unknown property {prop!r} (known: {', '.join(PROPERTIES)})")
    ref = method_ref(method)
    name = ref
    t0 = time.perf_counter()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the tiny models run fastest on one thread, and as in the two ranks
    try:
        name = methods.get(ref).name
        detail = CHECKS[prop](ref, dict(overrides or {}), tolerance)
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
                 raise_on_failure: bool = True) -> list[CheckResult]:
    """Run every property on ``method`` (a registry name, a dotted path ``package.module:Class``, or
    the class or instance of an importable module); :class:`MethodCheckError` names each failure."""
    results = [check_property(method, p, overrides=overrides, tolerance=tolerance) for p in properties]
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
    calls ``check(method)``, which fails naming the property::

        @parametrize_with_checks(["mypkg.plot:PLOT"])
        def test_plot_keeps_the_contracts(method, check):
            check(method)

    ``overrides``: per method (by the reference given), dotted keys for its tiny trials.
    """
    import pytest

    overrides, properties = dict(overrides or {}), tuple(properties)
    cases, ids = [], []
    for method in methods_:
        ref = method_ref(method)
        if "two_workers_equal_one" in properties:
            own = dict(overrides.get(ref, {}))
            _two_rank_pending[(ref, json.dumps(own, sort_keys=True, default=str))] = own
        for prop in properties:
            cases.append((ref, _Check(prop, dict(overrides.get(ref, {})))))
            ids.append(f"{ref}-{prop}")
    return pytest.mark.parametrize(("method", "check"), cases, ids=ids)


@dataclass(frozen=True)
class _Check:
    """One property as a callable for :func:`parametrize_with_checks`."""

    prop: str
    overrides: dict

    def __call__(self, method: str | Method | type[Method]) -> None:
        result = check_property(method, self.prop, overrides=self.overrides)
        if result.skipped:
            import pytest

            pytest.skip(f"{result.property}: {result.detail}")
        if not result.passed:
            raise MethodCheckError(f"method {result.method} breaks {result.property}: {result.detail}")


# ----------------------------------------------------------------------------- two ranks


def on_two_ranks(cfgs: list[C.TrialConfig], timeout: float = 600.0) -> list[list[_Run]]:
    """Run each trial (``world_size`` 2) on two gloo ranks, two fresh Python processes that import the
    method as a configuration names it (``python -m rayot.testing``); each rank's run, per trial."""
    with tempfile.TemporaryDirectory(prefix="rayot-kit-ranks-") as tmp:
        jobs = Path(tmp) / "jobs.json"
        jobs.write_text(json.dumps([C.to_json(c) for c in cfgs]))
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        procs = [subprocess.Popen([sys.executable, "-m", "rayot.testing", str(jobs), str(rank), tmp],
                                  env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                 for rank in range(2)]
        outputs = []
        try:
            for proc in procs:
                outputs.append(proc.communicate(timeout=timeout)[0])
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
        for rank, (proc, output) in enumerate(zip(procs, outputs, strict=True)):
            if proc.returncode != 0:
                tail = "\n".join(output.strip().splitlines()[-3:])
                raise AssertionError(f"rank {rank} of 2 failed (exit {proc.returncode}): {tail}")
        found = [torch.load(f"{tmp}/rank{r}.pt", weights_only=True) for r in range(2)]
    return [[_Run(**found[r][i], saved=[]) for r in range(2)] for i in range(len(cfgs))]


def _rank_main(jobs_file: str, rank: int, folder: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{folder}/init", rank=rank, world_size=2)
    try:
        runs = []
        for job in json.loads(Path(jobs_file).read_text()):
            cfg = C.from_dict(json.loads(job))
            seen: list[Any] = []
            outcome = run_trial(cfg, device=torch.device("cpu"), progress=seen.append,
                                hooks=DistributedHooks(rank, 2, torch.device("cpu")))
            runs.append({"prompt": outcome.prompt_state,
                         "correct": [(e.eval_dataset, e.split, e.n_correct) for e in outcome.evals],
                         "losses": [(p.loss, p.ce, p.reg) for p in seen]})
        torch.save(runs, f"{folder}/rank{rank}.pt")  # plain data: read back with weights_only
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":  # one rank of on_two_ranks: python -m rayot.testing JOBS RANK FOLDER
    _rank_main(sys.argv[1], int(sys.argv[2]), sys.argv[3])
