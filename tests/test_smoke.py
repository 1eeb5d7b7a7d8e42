"""The README's main job, `rayot sweep sweeps/smoke.yaml`, end to end on an embedded local Ray,
with its numbers pinned within a measured cross-CPU tolerance: numerical drift anywhere (data,
model, prompts, loss, training, evaluation, aggregation) beyond a few test images fails here,
and so does losing the result the table shows. A second run is a no-op."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]

#: Base / Novel / HM means over seeds 1-2, as the sweep prints them (measured on an AVX-512
#: machine; see README).
PINNED = {
    "CLIP (zero-shot)": (65.83, 90.62, 76.26),
    "Prompt-OT (λ=0)": (76.77, 70.52, 73.51),
    "Prompt-OT (λ=10)": (75.10, 87.71, 80.92),
}
#: (Since issue 13 the initial prompts are drawn from the seed right before they are built: the
#: trained rows moved from 77.08/68.75/72.68 and 75.83/88.85/81.83. The sweep packs its seeds;
#: the same sweep unpacked, --pack 1, printed this table digit for digit and saved the same prompts.)
#: Float kernels differ between CPUs. Measured (on this table's previous version, whose only
#: difference was the learning-rate schedule): an AVX2-only machine gave the λ = 0 row Base
#: 0.10 lower and HM 0.04 lower (one of the 480 base test images of one seed), every other
#: number equal. The tolerance allows five times that, five test images on one seed, and is still
#: far below what any real change of the method moves (a changed λ, schedule or evaluation moves
#: these numbers by whole points).
TOLERANCE = 0.5


def _table(text: str) -> dict[str, tuple[float, ...]]:
    rows = {}
    for method in PINNED:
        line = next((ln for ln in text.splitlines() if method in ln), "")
        rows[method] = tuple(float(c) for c in line.replace("│", " ").split() if c[:1].isdigit())
    return rows


def _sweep(tmp_path: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "rayot", "sweep", str(ROOT / "sweeps" / "smoke.yaml"),
           "--results", str(tmp_path / "results"), "--checkpoints", str(tmp_path / "checkpoints"),
           "--set", f"data.root={tmp_path / 'data'}"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=1200, cwd=tmp_path,
                          env={**__import__("os").environ, "COLUMNS": "120"})


_EMBEDDED: dict[str, tuple[subprocess.CompletedProcess, Path]] = {}


def embedded_smoke(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess, Path]:
    """The smoke sweep on an embedded Ray and the folder it ran in (``results/``, ``data/``), run
    once per test session: the test below checks it, and tests/test_cluster_local.py compares the
    same sweep on a local multi-node cluster with it (2 minutes fewer than a second run)."""
    if "run" not in _EMBEDDED:
        tmp = tmp_path_factory.mktemp("smoke-embedded")
        _EMBEDDED["run"] = (_sweep(tmp), tmp)
    return _EMBEDDED["run"]


def test_smoke_sweep_prints_the_pinned_table_and_reruns_as_a_no_op(tmp_path_factory):
    first, tmp_path = embedded_smoke(tmp_path_factory)
    text = first.stdout + first.stderr
    assert first.returncode == 0, text
    assert len(list((tmp_path / "results").glob("*.parquet"))) == 6
    assert "6 trials in 3 packs" in text  # its seeds train together: 3 Ray Train runs
    table = _table(text)
    for method, numbers in PINNED.items():
        assert table[method] == pytest.approx(numbers, abs=TOLERANCE), (method, table[method])
    zs, ivlp, ot = (dict(zip(("base", "novel", "hm"), table[m], strict=True)) for m in PINNED)
    # what the demo world shows, whatever the CPU: prompt learning without the regulariser gains
    # on base and forgets novel classes; Prompt-OT keeps novel accuracy near zero-shot and wins HM
    assert ivlp["base"] > zs["base"] + 5 and ivlp["novel"] < zs["novel"] - 10
    assert ot["base"] > zs["base"] + 5 and ot["novel"] > zs["novel"] - 5
    assert ot["hm"] > max(zs["hm"], ivlp["hm"]) + 3

    second = _sweep(tmp_path)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "all 6 trials already have results: nothing to run" in second.stdout
    assert "Started a local Ray instance" not in second.stdout + second.stderr
