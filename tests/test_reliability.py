"""The failure matrix of docs/reliability.md: every scenario of scripts/reliability.py, run as a
user would (`rayot sweep` in a subprocess), with its exit status, message and kept results
asserted. Every scenario starts `rayot sweep` (seconds) or a Ray (minutes): all are marked slow,
and run in CI; the fast loop keeps the check that the document lists them."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import load_script

REPO = Path(__file__).resolve().parents[1]


RELIABILITY = load_script("reliability")


@pytest.mark.parametrize(
    "scenario",
    [pytest.param(s, id=s.name, marks=[pytest.mark.slow]) for s in RELIABILITY.SCENARIOS],
)
def test_scenario(scenario, tmp_path):
    outcome = scenario.run(tmp_path)
    assert outcome.happens and outcome.kept
    if not scenario.ray:
        assert outcome.seconds < 60  # ends in seconds, not after Ray's minutes of retries


def test_the_document_lists_every_scenario():
    text = (REPO / "docs" / "reliability.md").read_text()
    for scenario in RELIABILITY.SCENARIOS:
        assert f"| {scenario.title} |" in text, scenario.title
