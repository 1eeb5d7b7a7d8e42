"""The README's main job, `rayot sweep sweeps/smoke.yaml`, end to end on an embedded local Ray,
with its numbers pinned: silent numerical drift anywhere (data, model, prompts, loss, training,
evaluation, aggregation) fails here. A second run is a no-op."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]

#: Base / Novel / HM means over seeds 1-2, as the sweep prints them (measured; see README).
PINNED = {
    "CLIP (zero-shot)": ("65.83", "90.62", "76.26"),
    "IVLP (λ=0)": ("78.33", "68.12", "72.87"),
    "Prompt-OT": ("75.73", "88.85", "81.77"),
}


def _sweep(tmp_path: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "rayot", "sweep", str(ROOT / "sweeps" / "smoke.yaml"),
           "--results", str(tmp_path / "results"), "--checkpoints", str(tmp_path / "checkpoints"),
           "--set", f"data.root={tmp_path / 'data'}"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=1200, cwd=tmp_path,
                          env={**__import__("os").environ, "COLUMNS": "120"})


def test_smoke_sweep_prints_the_pinned_table_and_reruns_as_a_no_op(tmp_path):
    first = _sweep(tmp_path)
    text = first.stdout + first.stderr
    assert first.returncode == 0, text
    assert len(list((tmp_path / "results").glob("*.parquet"))) == 6
    for method, numbers in PINNED.items():
        line = next((ln for ln in text.splitlines() if method in ln), "")
        assert [c for c in line.replace("│", " ").split() if c[:1].isdigit()] == list(numbers), line

    second = _sweep(tmp_path)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "all 6 trials already have results: nothing to run" in second.stdout
    assert "Started a local Ray instance" not in second.stdout + second.stderr
