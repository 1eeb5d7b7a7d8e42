"""Hyper-parameter search (a sweep's search: section, docs/search.md), without Ray: the section's
checks, reproducible samples and early-stopping decisions, and search trials in the trainer: they
read no test image and no image of a novel or held-out class, and a member stopped early leaves
its pack without changing the others."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import open_clip
import pytest
import torch
import yaml
from conftest import tiny_overrides

from rayot import config as C
from rayot.data import read_dataset
from rayot.data.validation import held_out_labels
from rayot.errors import ConfigError
from rayot.sweep import search as S
from rayot.sweep.spec import load_spec
from rayot.train import TrialHooks, run_pack, run_trial

# ----------------------------------------------------------------------------- the search: section

BASE = {"method": "prompt_ot", "data": {"dataset": "synthetic", "root": "data", "protocol": "base2novel"},
        "model": {"name": "rayot-tiny", "pretrained": None}, "optim": {"epochs": 8}}
SEARCH = {"space": {"prompt_ot.lambda_ot": {"loguniform": [0.1, 100]}}, "num_samples": 6, "seed": 3,
          "scheduler": {"type": "asha", "grace_period": 2, "reduction_factor": 2}}


def _spec(tmp_path: Path, search=None, grid=None, **top):
    raw = {"name": "s", "base": BASE, "grid": grid or {"seed": [1, 2]}, "search": search or SEARCH, **top}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(raw, allow_unicode=True))
    return load_spec(path)


@pytest.mark.parametrize("search, message", [
    ({**SEARCH, "sampler": "tpe"}, "search: unknown key 'sampler'"),
    ({**SEARCH, "algorithm": "bayes"}, "search.algorithm: unknown algorithm 'bayes'"),
    ({**SEARCH, "space": {}}, "search.space: empty"),
    ({**SEARCH, "space": None}, "search.space: empty"),
    ({**SEARCH, "space": {"dataset": {"choice": ["dtd"]}}}, "search.space.dataset: dataset is a grid axis"),
    ({**SEARCH, "space": {"seed": {"randint": [1, 9]}}}, "search.space.seed: seed is a grid axis"),
    ({**SEARCH, "space": {"prompt_ot.lambda_ot": {"lognormal": [1, 2]}}}, "unknown sampler 'lognormal'"),
    ({**SEARCH, "space": {"prompt_ot.lambda_ot": {"loguniform": [0, 2]}}}, "needs a positive low bound"),
    ({**SEARCH, "space": {"prompt_ot.lambda_ot": {"uniform": [3]}}}, "uniform takes [low, high]"),
    ({**SEARCH, "space": {"prompt_ot.lambda": {"uniform": [0, 1]}}}, "search.space.prompt_ot.lambda: unknown configuration key"),
    ({**SEARCH, "space": {"optim.learning_rate": {"uniform": [0, 1]}}}, "search.space.optim.learning_rate: unknown"),
    ({**SEARCH, "space": {"data.root": {"choice": ["a", "b"]}}}, "does not change a trial's results"),
    ({**SEARCH, "algorithm": "grid"}, "algorithm grid needs a finite list of values"),
    ({**SEARCH, "algorithm": "optuna", "space": {"optim.lr": {"grid_search": [0.1, 0.2]}}}, "use choice, not grid_search"),
    ({**SEARCH, "scheduler": "median"}, "unknown scheduler 'median'"),
    ({**SEARCH, "scheduler": {"type": "asha", "grace_period": 0}}, "grace_period >= 1"),
    ({**SEARCH, "metric": "auc"}, "search.metric: unknown metric 'auc'"),
    ({**SEARCH, "method": "coop", "space": {"optim.lr": {"loguniform": [1e-3, 1e-2]}}},
     "search.method: 'coop' has no trial in the grid"),
    ({**SEARCH, "method": "coop"}, "search.space.prompt_ot.lambda_ot: prompt_ot.* are another method's settings; "
     "a search space holds only training settings: the searched method's (coop.<setting>)"),
])
def test_a_bad_search_section_gets_one_clear_message(tmp_path, search, message):
    with pytest.raises(ConfigError) as err:
        _spec(tmp_path, search)
    assert message in str(err.value)
    assert str(tmp_path / "sweep.yaml") in str(err.value)  # names the file


def test_a_sample_of_the_wrong_type_is_refused_before_ray(tmp_path):
    spec = _spec(tmp_path, {**SEARCH, "space": {"optim.epochs": {"choice": ["many"]}}})
    cells = S.cells_of(spec, __import__("rayot.sweep.spec", fromlist=["expand"]).expand(spec))
    with pytest.raises(ConfigError, match="search sample optim.epochs='many'"):
        S.preview(cells, spec.search)


def _cells(spec):
    from rayot.sweep.spec import expand

    return S.cells_of(spec, expand(spec))


def test_one_search_per_cell_whose_grid_values_are_the_fixed_settings(tmp_path):
    grids = [{"method": "zeroshot"}, {"method": "prompt_ot", "prompt_ot.lambda_ot": [0, 10]}]
    raw = {"name": "s", "base": BASE, "grid": {"seed": [1, 2, 3]}, "grids": grids, "search": SEARCH}
    (tmp_path / "a.yaml").write_text(yaml.safe_dump(raw))
    spec = load_spec(tmp_path / "a.yaml")
    cells = _cells(spec)
    assert len(cells) == 1  # λ = 0 and λ = 10 are one cell: the searched key is not part of it
    (cell,) = cells
    assert cell.seeds == (1, 2, 3) and cell.config.seed == 1 and cell.metric == "hm"
    raw["grid"]["dataset"] = ["synthetic", "dtd"]
    (tmp_path / "b.yaml").write_text(yaml.safe_dump(raw))
    assert len(_cells(load_spec(tmp_path / "b.yaml"))) == 2  # one per dataset


def test_same_seed_same_samples_and_trials(tmp_path):
    spec = _spec(tmp_path)
    first = S.preview(_cells(spec), spec.search)[0]
    again = S.preview(_cells(spec), spec.search)[0]
    assert first.samples == again.samples and first.trial_ids() == again.trial_ids()
    assert len(first.samples) == 6 and all(0.1 <= p["prompt_ot.lambda_ot"] <= 100 for p in first.samples)
    assert all(t.validation.enabled and t.seed == 1 for t in first.trials)
    assert [t.settings.lambda_ot for t in first.trials] == [p["prompt_ot.lambda_ot"] for p in first.samples]
    other = _spec(tmp_path, {**SEARCH, "seed": 4})
    assert S.preview(_cells(other), other.search)[0].samples != first.samples


def test_grid_search_enumerates_every_value(tmp_path):
    no_count = {k: v for k, v in SEARCH.items() if k != "num_samples"}  # grid: once over the grid
    spec = _spec(tmp_path, {**no_count, "algorithm": "grid",
                            "space": {"prompt_ot.lambda_ot": {"choice": [1, 5, 10]},
                                      "optim.lr": {"grid_search": [0.001, 0.01]}}})
    samples = S.preview(_cells(spec), spec.search)[0].samples
    assert sorted((p["prompt_ot.lambda_ot"], p["optim.lr"]) for p in samples) == \
        sorted((a, b) for a in (1, 5, 10) for b in (0.001, 0.01))


def test_optuna_draws_the_same_rounds_from_the_same_seed_and_scores(tmp_path):
    spec = _spec(tmp_path, {**SEARCH, "algorithm": "optuna", "num_samples": 6, "batch": 3})
    assert spec.search.rounds == 2

    def run():
        cells = _cells(spec)
        optuna = S.algorithms(cells, spec.search)
        first = S.draw_round(cells, spec.search, 0, optuna)
        lams = [t.settings.lambda_ot for t in first]
        # told the first round's scores (best near λ = 5), it draws the second
        optuna[cells[0].search_id].tell(0, [100 - abs(math.log(lam / 5)) for lam in lams])
        second = S.draw_round(cells, spec.search, 1, optuna)
        return lams, [t.settings.lambda_ot for t in second], cells[0]

    a, b = run(), run()
    assert a[0] == b[0] and a[1] == b[1] and len(a[0]) == len(a[1]) == 3
    assert len(a[2].samples) == 6 and all(0.1 <= x <= 100 for x in a[0] + a[1])


def test_search_trials_have_their_own_ids_and_ordinary_ids_do_not_change(tmp_path):
    spec = _spec(tmp_path)
    cell = S.preview(_cells(spec), spec.search)[0]
    trial = cell.trials[0]
    ordinary = C.replace(trial, **{"validation.enabled": False})
    assert C.trial_id(trial) != C.trial_id(ordinary)
    # an ordinary trial's id ignores the validation section entirely (the ids of earlier versions)
    assert C.trial_id(C.replace(ordinary, **{"validation.holdout": 0.25})) == C.trial_id(ordinary)
    assert C.eval_targets(trial) == [("base2novel", "synthetic", "val_seen"), ("base2novel", "synthetic", "val_held_out")]
    retrain = S.retrain_trials(cell, cell.samples[0])
    assert [t.seed for t in retrain] == [1, 2] and not any(t.validation.enabled for t in retrain)
    assert all(t.settings.lambda_ot == cell.samples[0]["prompt_ot.lambda_ot"] for t in retrain)


def test_the_epoch_budget_of_asha(tmp_path):
    spec = _spec(tmp_path, {**SEARCH, "num_samples": 8, "scheduler": {"type": "asha", "grace_period": 5}})
    assert S.milestones(spec.search, 20) == [5, 10]
    full, expected = S.epoch_budget(spec.search, 20)
    assert full == 160 and expected == pytest.approx(8 * (5 + 5 / 2 + 10 / 4))
    none = _spec(tmp_path, {**SEARCH, "scheduler": "none"})
    assert S.epoch_budget(none.search, 20) == (6 * 20, 6 * 20)


# ----------------------------------------------------------------------------- early stopping


def _rungs(n=6, epochs=8, grace=2, rf=2, brackets=1, kind="asha"):
    from rayot.sweep.spec import Scheduler, Search

    search = Search(space={"x": {"uniform": [0, 1]}}, scheduler=Scheduler(kind, grace, rf, brackets))
    order = [f"t{i}" for i in range(n)]
    return S.Rungs({"s": {"order": order, "metric": "hm", "search": search, "epochs": epochs,
                          "seed": 0}}), order


def _history(scores):
    return [{"epoch": e + 1, "val/hm": v} for e, v in enumerate(scores)]


SCORES = {"t0": [10, 20, 30, 40], "t1": [50, 60, 70, 80], "t2": [5, 6, 7, 8], "t3": [40, 45, 50, 55],
          "t4": [1, 2, 3, 4], "t5": [60, 70, 75, 90]}


def _decisions(rungs, order, arrival):
    """Feed every sample's epochs in ``arrival`` order; the stops after epochs 2 and 4."""
    for tid in arrival:
        rungs.report({tid: _history(SCORES[tid])})
    return {e: sorted(rungs.decide(order, e)) for e in (2, 4)}


def test_rung_decisions_do_not_depend_on_arrival_order():
    forward = _decisions(*_rungs(), arrival=[f"t{i}" for i in range(6)])
    rungs, order = _rungs()
    backward = _decisions(rungs, order, arrival=[f"t{i}" for i in reversed(range(6))])
    assert forward == backward
    # Tune's ASHA in sample order at epoch 2: t0 passes unopposed, t2 and t4 fall below the cutoff
    assert forward[2] == ["t2", "t4"]


def test_a_decision_waits_for_the_samples_before_it():
    rungs, _ = _rungs()
    rungs.report({"t1": _history([50, 60])})
    assert rungs.decide(["t1"], 2) is None  # t0 has not reached epoch 2
    rungs.report({"t0": _history([10])})
    assert rungs.decide(["t1"], 2) is None
    rungs.end(["t0"])  # t0 ended after epoch 1 (failed): t1 waits no more
    assert rungs.decide(["t1"], 2) == []
    assert rungs.decide(["t0"], 2) == []  # a decision once taken is kept


def test_a_sample_stopped_at_a_rung_holds_up_no_later_sample():
    rungs, order = _rungs()
    for tid in order[:3]:
        rungs.report({tid: _history(SCORES[tid][:2])})  # t2 is stopped after epoch 2
    assert rungs.decide(order[:3], 2) == ["t2"]
    rungs.report({"t0": _history(SCORES["t0"][:3]), "t1": _history(SCORES["t1"][:3])})
    rungs.report({"t3": _history(SCORES["t3"][:3])})
    assert rungs.decide(["t3"], 3) == []  # t2 never reports epoch 3, and is not waited for


def test_a_forced_decision_goes_on_without_the_missing_samples():
    rungs, _ = _rungs()
    rungs.report({"t2": _history([5, 6])})
    assert rungs.ask(["t2"], 2) is None
    assert rungs.ask(["t2"], 2, force=True) == []  # alone at its rung: nothing to compare with


def test_hyperband_brackets_are_seeded():
    a, order = _rungs(brackets=3, kind="hyperband")
    b, _ = _rungs(brackets=3, kind="hyperband")
    assert _decisions(a, order, order) == _decisions(b, order, order)


# ----------------------------------------------------------------------------- search trials


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "tiny.pt"
    torch.save(open_clip.create_model("rayot-tiny", pretrained=None).state_dict(), path)
    return path


def _search_cfg(root, tmp, weights, **extra):
    over = {"method": "prompt_ot", "model.checkpoint": str(weights), "optim.epochs": 3, "validation.enabled": True,
            "validation.holdout": 0.5, **extra}
    return C.load_config(None, tiny_overrides(root, tmp, **over))


def test_a_search_trial_reads_no_test_novel_or_held_out_image(synth_root, tmp_path, tiny_weights, monkeypatch):
    log = tmp_path / "reads.log"
    monkeypatch.setenv("RAYOT_TEST_IMAGE_READ_LOG", str(log))
    cfg = _search_cfg(synth_root, tmp_path, tiny_weights)
    outcome = run_trial(cfg)
    reads = set(log.read_text().split())
    splits = read_dataset("synthetic", synth_root)
    n_base = (len(splits.classnames) + 1) // 2
    held = set(held_out_labels(n_base, 0.5, 0, "synthetic"))
    path = {str((splits.image_root / it.impath).resolve()) for it in splits.train + splits.val + splits.test}
    assert reads and reads <= path
    for it in splits.test:
        assert str((splits.image_root / it.impath).resolve()) not in reads
    for it in splits.train + splits.val:
        p = str((splits.image_root / it.impath).resolve())
        if it.label >= n_base or (it.label in held and it in splits.train):
            assert p not in reads, it  # a novel class, or a held-out class's training image
    assert {e.split for e in outcome.evals} == {"val_seen", "val_held_out"}
    assert all(e.n_test and e.n_classes == 6 for e in outcome.evals)  # 12 base classes: 6 trained, 6 held out
    assert [sorted(k for k in h if k.startswith("val/")) for h in outcome.history] == \
        [["val/held_out", "val/hm", "val/seen"]] * 3


class _StopOne(TrialHooks):
    """The scheduler of a test: stops ``victim`` after epoch ``at`` (1-based)."""

    def __init__(self, victim: str, at: int) -> None:
        self.victim, self.at, self.asked = victim, at, []
        self.saved = []

    def early_stop(self, epoch, histories):
        self.asked.append((epoch, sorted(histories)))
        return {self.victim} if epoch + 1 == self.at else set()

    def save_epoch(self, epoch, state, metrics):
        self.saved.append(copy.deepcopy(state))


def test_a_member_stopped_early_leaves_its_pack_and_the_others_are_as_alone(synth_root, tmp_path, tiny_weights):
    cfgs = [_search_cfg(synth_root, tmp_path, tiny_weights, **{"prompt_ot.lambda_ot": lam}) for lam in (0.5, 4, 30)]
    victim = C.trial_id(cfgs[1])
    hooks = _StopOne(victim, 1)
    packed = run_pack(cfgs, hooks=hooks)
    alone = [run_trial(c) for c in (cfgs[0], cfgs[2])]
    for got, ref in zip((packed[0], packed[2]), alone, strict=True):
        assert got.outcome.stopped_at is None
        for key, value in ref.prompt_state.items():  # measured: 0.0 on this machine
            assert (got.outcome.prompt_state[key] - value).abs().max().item() < 1e-5, key
        assert [(e.split, e.n_correct) for e in got.outcome.evals] == [(e.split, e.n_correct) for e in ref.evals]
        assert [h["val/hm"] for h in got.outcome.history] == pytest.approx([h["val/hm"] for h in ref.history], abs=1e-9)
    stopped = packed[1].outcome
    assert stopped.stopped_at == 1 and len(stopped.history) == 1
    one_epoch = run_trial(C.replace(cfgs[1], **{"optim.stop_epoch": 1}))  # what it is after its one epoch
    for key, value in one_epoch.prompt_state.items():
        assert (stopped.prompt_state[key] - value).abs().max().item() < 1e-5, key
    # asked after every epoch; the stopped member is asked no more after it stopped
    assert hooks.asked[0][1] == sorted(C.trial_id(c) for c in cfgs)
    assert all(victim not in ids for _, ids in hooks.asked[1:])
    assert hooks.saved[-1]["members"][victim]["stopped_at"] == 1  # a resumed pack keeps it stopped


class _Resume(_StopOne):
    """Resumes from a given pack checkpoint, and stops nobody."""

    def __init__(self, state):
        super().__init__("", 0)
        self.state = state

    def resume_state(self):
        return copy.deepcopy(self.state)


def test_a_resumed_pack_keeps_its_stopped_member_in_every_later_checkpoint(synth_root, tmp_path, tiny_weights):
    cfgs = [_search_cfg(synth_root, tmp_path, tiny_weights, **{"prompt_ot.lambda_ot": lam}) for lam in (0.5, 4)]
    victim = C.trial_id(cfgs[1])
    first = _StopOne(victim, 1)
    uninterrupted = run_pack(cfgs, hooks=first)
    resumed_hooks = _Resume(first.saved[1])  # the checkpoint after epoch 2, the victim stopped after 1
    resumed = run_pack(cfgs, hooks=resumed_hooks)
    assert resumed[1].outcome.stopped_at == 1
    for a, b in zip(uninterrupted, resumed, strict=True):
        for key, value in a.outcome.prompt_state.items():
            assert (b.outcome.prompt_state[key] - value).abs().max().item() < 1e-5, key
    assert all(victim in s["members"] for s in resumed_hooks.saved)  # a second resume would find it


def test_the_cli_prints_a_bad_search_section_as_written_with_exit_status_2(tmp_path, monkeypatch, capsys):
    import sys

    from rayot.cli import main

    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({"name": "s", "base": BASE, "search": {**SEARCH, "algorithm": "bayes"}}))
    monkeypatch.setattr(sys, "argv", ["rayot", "sweep", str(path), "--dry-run"])
    with pytest.raises(SystemExit) as end:
        main()
    assert end.value.code == 2
    err = capsys.readouterr().err
    # one message, brackets kept (they are text, not markup)
    assert "unknown algorithm 'bayes'" in err and "pip install rayot[optuna]" in err and "Traceback" not in err


def test_trackers_get_a_search_trials_validation_scores_under_their_own_names():
    from rayot.trackers import final_metrics

    rows = [{"protocol": "base2novel", "eval_dataset": "dtd", "split": "val_seen", "accuracy": 90.0},
            {"protocol": "base2novel", "eval_dataset": "dtd", "split": "val_held_out", "accuracy": 60.0}]
    assert final_metrics(rows) == {"val/seen": 90.0, "val/held_out": 60.0, "val/hm": pytest.approx(72.0)}
    assert final_metrics([{**rows[0], "protocol": "few_shot", "split": "val"}]) == {"val/accuracy": 90.0}
