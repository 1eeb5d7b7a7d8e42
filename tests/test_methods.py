"""Every method as rayot runs it: the reference schedule, the peers' loss terms against direct
formulas, Gaussian prompt aggregation (and its resumption), stop-after-S training, `--plan`,
and `model.init_from` with a reference-format checkpoint. Each method's training on the tiny demo
world is the conformance kit's (tests/test_kit.py)."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_overrides
from typer.testing import CliRunner

from rayot import config as C
from rayot import methods
from rayot.cli import app
from rayot.methods.kgcoop import kgcoop_loss
from rayot.methods.promptsrc import ensemble_templates, gpa_weights, l1_consistency, logit_kl
from rayot.train import TrialHooks, build_model, lr_at_epoch, run_trial


def _cfg(synth_root, tmp_path, **extra):
    return C.load_config(None, tiny_overrides(synth_root, tmp_path, **extra))


# ----------------------------------------------------------------------------- schedule


def _dassl_rates(lr: float, warmup_lr: float, epochs: int) -> list[float]:
    """The reference toolbox's rule, written out: epoch 0 at the warm-up rate, epoch k >= 1 at
    lr (1 + cos(pi (k - 1) / E)) / 2 (docs/peers.md §0.4, docs/method.md)."""
    return [warmup_lr] + [0.5 * lr * (1 + math.cos(math.pi * (k - 1) / epochs)) for k in range(1, epochs)]


@pytest.mark.parametrize("method", [m for m in methods.BUILTINS if methods.get(m).trains])
def test_every_preset_follows_the_reference_schedule(method):
    cfg = C.load_config(None, [f"method={method}"])
    o = cfg.optim
    rates = [lr_at_epoch(e, o) for e in range(C.epochs_trained(cfg))]
    assert rates == pytest.approx(_dassl_rates(o.lr, o.warmup_lr, o.epochs)[: len(rates)], rel=1e-12)


def test_published_rate_tables():
    maple = C.load_config(None, ["method=maple"]).optim
    assert [round(lr_at_epoch(e, maple), 7) for e in range(5)] == pytest.approx(
        [1e-5, 3.5e-3, 3.17e-3, 2.29e-3, 1.21e-3], abs=6e-6)  # docs/peers.md §0.4
    cocoop = C.load_config(None, ["method=cocoop"]).optim
    assert lr_at_epoch(9, cocoop) == pytest.approx(1.9e-4, abs=1e-5)
    ot = C.load_config(None, ["method=prompt_ot"])
    assert lr_at_epoch(1, ot.optim) == 0.005 and lr_at_epoch(29, ot.optim) > 0  # never reaches 0


def test_plan_prints_the_schedule_without_training(tmp_path):
    out = CliRunner().invoke(app, ["train", "--plan", str(_write(tmp_path, "method: maple\n"))])
    assert out.exit_code == 0, out.output
    plan = json.loads(out.output)
    assert plan["epochs_trained"] == 5 and len(plan["lr_per_epoch"]) == 5
    assert plan["lr_per_epoch"][1] == 0.0035
    assert plan["trial_id"] == C.trial_id(C.load_config(tmp_path / "c.yaml"))
    assert [e["split"] for e in plan["evaluated"]] == ["base", "novel"]
    assert plan["config"]["prompt"]["n_ctx_text"] == 2
    ot = json.loads(CliRunner().invoke(app, ["train", "--plan", str(_write(tmp_path, "method: prompt_ot\n"))]).output)
    assert ot["epochs_trained"] == 30 and ot["config"]["optim"]["epochs"] == 40


def _write(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


# ----------------------------------------------------------------------------- loss terms


def test_kgcoop_term_is_the_code_s_cosine_form():
    torch.manual_seed(0)
    t, w = F.normalize(torch.randn(7, 16), dim=-1), F.normalize(torch.randn(7, 16), dim=-1)
    expected = 1 - sum(float(t[c] @ w[c]) for c in range(7)) / 7
    assert float(kgcoop_loss(t, w)) == pytest.approx(expected, rel=1e-6)
    # for unit vectors: half the mean squared distance (docs/peers.md §4.2)
    assert float(kgcoop_loss(t, w)) == pytest.approx(0.5 * float(((t - w) ** 2).sum(-1).mean()), rel=1e-5)


def test_promptsrc_terms_against_direct_formulas():
    torch.manual_seed(1)
    f, f0 = torch.randn(4, 8, dtype=torch.float64), torch.randn(4, 8, dtype=torch.float64)
    assert float(l1_consistency(f, f0)) == pytest.approx(float((f - f0).abs().sum()) / 32)
    z, z0 = torch.randn(4, 5, dtype=torch.float64), torch.randn(4, 5, dtype=torch.float64)
    p0, p = z0.softmax(-1), z.softmax(-1)
    kl = float((p0 * (p0.log() - p.log())).sum()) / (4 * 5)  # divided by B·C, as the reference
    assert float(logit_kl(z, z0)) == pytest.approx(kl, rel=1e-10)


def test_gpa_weights_match_the_reference_numbers():
    w = gpa_weights(15.0, 1.0, 20)
    assert sum(w) == pytest.approx(1.0)
    assert [round(w[e - 1], 3) for e in (13, 14, 15, 16, 17)] == [0.054, 0.242, 0.399, 0.242, 0.054]
    flat = gpa_weights(6.0, 10.0, 20)  # cross-dataset: nearly flat (docs/peers.md §6.3)
    assert round(flat[0], 3) == 0.055 and round(flat[5], 3) == 0.063 and round(flat[19], 3) == 0.024
    far = gpa_weights(45.0, 5.0, 3)  # a mean far past the last epoch: no underflow to 0/0
    assert sum(far) == pytest.approx(1.0) and far[2] > far[1] > far[0]


def test_ensemble_templates_are_promptsrc_s_sixty():
    templates = ensemble_templates()
    assert len(templates) == 60 and len(set(templates)) == 60
    assert templates[0] == "a photo of a {}." and "itap of a {}." not in templates


# ----------------------------------------------------------------------------- training


class _Keep(TrialHooks):
    def __init__(self, resume=None):
        self.saved, self.resume = [], resume

    def resume_state(self):
        return self.resume

    def save_epoch(self, epoch, state, metrics):
        self.saved.append(copy.deepcopy(state))  # as if written to storage: later steps mutate state


def test_gpa_loads_the_weighted_average_and_resumes_exactly(synth_root, tmp_path):
    cfg = _cfg(synth_root, tmp_path, method="promptsrc", **{"optim.epochs": 3, "promptsrc.gpa_mean": 2.0,
                                                             "promptsrc.gpa_std": 1.0, "prompt.depth_text": 2,
                                                             "prompt.depth_vision": 2})
    hooks = _Keep()
    outcome = run_trial(cfg, hooks=hooks)
    w = gpa_weights(2.0, 1.0, 3)
    for key, value in outcome.prompt_state.items():
        expected = sum(w[e] * hooks.saved[e]["prompt"][key] for e in range(3))
        torch.testing.assert_close(value, expected, rtol=1e-6, atol=1e-7)
        assert not torch.allclose(value, hooks.saved[-1]["prompt"][key])  # not the last epoch's
    resumed = run_trial(cfg, hooks=_Keep(resume=hooks.saved[0]))  # killed after epoch 1
    for key, value in outcome.prompt_state.items():
        torch.testing.assert_close(resumed.prompt_state[key], value, rtol=0, atol=1e-6)
    assert [e.n_correct for e in resumed.evals] == [e.n_correct for e in outcome.evals]


def test_stop_epoch_trains_s_epochs_of_the_e_epoch_schedule(synth_root, tmp_path):
    cfg = _cfg(synth_root, tmp_path, **{"optim.epochs": 4, "optim.stop_epoch": 2})
    hooks = _Keep()
    seen = []
    run_trial(cfg, hooks=hooks, progress=seen.append)
    assert [s["epoch"] for s in hooks.saved] == [0, 1]
    assert {p.lr for p in seen} == {lr_at_epoch(0, cfg.optim), lr_at_epoch(1, cfg.optim)}


@pytest.mark.parametrize("method", ["ivlp", "maple", "cocoop"])
def test_init_from_a_reference_checkpoint_evaluates_those_prompts(synth_root, tmp_path, method):
    from rayot.checkpoints import to_reference
    from rayot.model import load_clip

    cfg = _cfg(synth_root, tmp_path, method=method, **{"optim.epochs": 1})
    trained = run_trial(cfg)
    model = build_model(cfg, load_clip(cfg.model.name, None, device=torch.device("cpu")), ["x"])
    model.load_prompt_state_dict(trained.prompt_state)
    path = tmp_path / "model.pth.tar-1"
    lr_sched = torch.optim.lr_scheduler.StepLR(torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1), 1)
    torch.save({"state_dict": to_reference(method, model), "epoch": 1, "scheduler": lr_sched}, path)
    imported = run_trial(C.replace(cfg, **{"optim.epochs": 0, "model.init_from": str(path)}))
    assert [e.n_correct for e in imported.evals] == [e.n_correct for e in trained.evals]
