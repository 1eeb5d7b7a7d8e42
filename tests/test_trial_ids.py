"""Built-in trials keep their ids: the ids computed before methods owned their settings
(tests/fixtures/trial_ids.json, written by rayot at commit 3ccbad6) are those of the same
experiments now, in the old spelling of the settings and in the new one, and the shipped sweep
files expand to the same trials in the same order."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rayot import config as C
from rayot.sweep.spec import expand, load_spec

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = json.loads((Path(__file__).parent / "fixtures" / "trial_ids.json").read_text())
MOVED = {"optim.gpa_mean": "gpa_mean", "optim.gpa_std": "gpa_std", "data.template": "template"}


def _new_spelling(overrides: list[str]) -> list[str]:
    """``loss.X=v`` -> ``<method>.X=v`` (and the GPA and template keys) for the method given."""
    method = next((o.split("=", 1)[1] for o in overrides if o.startswith("method=")), "prompt_ot")
    out = []
    for item in overrides:
        key, _, value = item.partition("=")
        if key.startswith("loss."):
            key = f"{method}.{key[len('loss.'):]}"
        elif key in MOVED:
            key = f"{method}.{MOVED[key]}"
        out.append(f"{key}={value}")
    return out


@pytest.mark.parametrize(("overrides", "trial_id"), FIXTURE["configs"], ids=lambda v: " ".join(v) if isinstance(v, list) else v)
def test_a_built_in_trial_keeps_its_id(overrides, trial_id):
    if overrides[0].endswith(".yaml"):
        cfg = C.load_config(ROOT / overrides[0])
        assert C.trial_id(cfg) == trial_id
        return
    assert C.trial_id(C.load_config(None, overrides)) == trial_id  # the old spelling still loads
    assert C.trial_id(C.load_config(None, _new_spelling(overrides))) == trial_id


@pytest.mark.parametrize("path", sorted(FIXTURE["sweeps"]))
def test_a_shipped_sweep_expands_to_the_same_trials(path):
    ids = [C.trial_id(cfg) for cfg in expand(load_spec(ROOT / path))]
    assert ids == FIXTURE["sweeps"][path]


def test_the_fixture_covers_every_method_and_protocol():
    methods = {o.split("=", 1)[1] for overrides, _ in FIXTURE["configs"] for o in overrides if o.startswith("method=")}
    protocols = {o.split("=", 1)[1] for overrides, _ in FIXTURE["configs"] for o in overrides
                 if o.startswith("data.protocol=")}
    assert methods == set(C.METHODS) and protocols == set(C.PROTOCOLS)
