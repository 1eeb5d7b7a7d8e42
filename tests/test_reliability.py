"""The failure matrix of docs/reliability.md: every scenario of scripts/reliability.py, run as a
user would (`rayot sweep` in a subprocess), with its exit status, message and kept results
asserted. The scenarios are grouped in runs that share a sweep or a results folder, and the S3
runs one S3 server. Every run starts `rayot sweep` (seconds) or a Ray (more): all are marked slow,
and run in CI; the fast loop keeps the check that the document lists them."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import load_script

REPO = Path(__file__).resolve().parents[1]


RELIABILITY = load_script("reliability")


@pytest.fixture(scope="module")
def s3_server():
    pytest.importorskip("moto")
    with RELIABILITY.s3_server() as server:
        yield server


@pytest.mark.parametrize("run", [pytest.param(r, id=r.name, marks=[pytest.mark.slow]) for r in RELIABILITY.RUNS])
def test_scenarios(run, tmp_path, request):
    outcomes = run.run(tmp_path, request.getfixturevalue("s3_server") if run.s3 else None)
    assert set(outcomes) == {s.name for s in run.scenarios}
    for scenario in run.scenarios:
        outcome = outcomes[scenario.name]
        assert outcome.happens and outcome.kept, scenario.name
        if not scenario.ray:
            assert outcome.seconds < 60, scenario.name  # ends in seconds, not after Ray's minutes of retries


def test_the_document_lists_every_scenario():
    text = (REPO / "docs" / "reliability.md").read_text()
    for scenario in RELIABILITY.SCENARIOS:
        assert f"| {scenario.title} |" in text, scenario.title
