"""The report rendered by real tools: HTML in headless Chromium, LaTeX by pdflatex.

Each test is skipped with a reason where its tool is not installed.
"""

from __future__ import annotations

import io
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rayot.report import build_report, write_report
from rayot.results import make_table

PDFLATEX = shutil.which("pdflatex")
BROWSER = next((b for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)


def _rows() -> list[dict]:
    rows = []
    for method, lam, base, novel in (("ivlp", 0.0, 84.0, 68.0), ("prompt_ot", 1.0, 83.5, 72.0), ("prompt_ot", 10.0, 83.0, 73.0)):
        for seed in (1, 2, 3):
            for dataset in ("caltech101", "dtd"):
                tid = f"{method}-{lam:g}-{dataset}-{seed}"
                for split, acc in (("base", base + seed / 10), ("novel", novel - seed / 10)):
                    rows.append(
                        dict(trial_id=tid, status="done", method=method, protocol="base2novel", dataset=dataset,
                             eval_dataset=dataset, split=split, seed=seed, shots=16, backbone="ViT-B-16",
                             pretrained="openai", accuracy=acc, lambda_ot=lam, regularizer="ot", modality="joint",
                             solver="emd", epsilon=0.1, epochs=5, config="{}")
                    )
    return rows


_PROBE = """<script>
window.addEventListener("load", () => {
  const widths = [...document.images].map((i) => i.naturalWidth).join(",");
  const tables = document.querySelectorAll("table").length;
  document.body.setAttribute("data-probe", widths + "|" + tables);
});
</script>"""


def _chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [
        BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--no-first-run", "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}", *args,
    ]
    return subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=120)


@pytest.mark.slow
@pytest.mark.skipif(BROWSER is None, reason="no Chromium on this machine (apt-get install chromium)")
def test_html_report_renders_in_headless_chromium(tmp_path: Path):
    report = build_report(make_table(_rows()), published=True)
    write_report(report, tmp_path / "out", ["html"])
    page = tmp_path / "out" / "report.html"
    # the browser decodes every embedded figure at its real size and builds every table
    probe = tmp_path / "probe.html"
    probe.write_text(page.read_text().replace("</body>", _PROBE + "</body>"))
    dom = _chromium(tmp_path, "--virtual-time-budget=5000", "--dump-dom", probe.as_uri()).stdout
    found = re.search(r'data-probe="([^"]*)\|(\d+)"', dom)
    assert found, "the page did not finish loading"
    widths = [int(w) for w in found.group(1).split(",")]
    assert widths == [Image.open(io.BytesIO(f.png)).width for f in report.figures]
    assert int(found.group(2)) == len(report.tables)
    # and a screenshot (kept under tmp_path for a person to look at) shows a page, not a blank
    shot = tmp_path / "shot.png"
    _chromium(tmp_path, "--window-size=1200,3000", f"--screenshot={shot}", page.as_uri())
    pixels = np.asarray(Image.open(shot).convert("L"))  # (H, W)
    assert pixels.shape == (3000, 1200)
    assert (pixels < 128).any(axis=1).mean() > 0.3


@pytest.mark.slow
@pytest.mark.skipif(PDFLATEX is None, reason="no pdflatex on this machine (apt-get install texlive-latex-recommended)")
def test_latex_tables_compile_with_booktabs(tmp_path: Path):
    report = build_report(make_table(_rows()), published=True, figures=False)
    write_report(report, tmp_path, ["latex"])
    (tmp_path / "doc.tex").write_text(
        "\\documentclass{article}\n\\usepackage{booktabs}\n\\begin{document}\n"
        "\\input{report.tex}\n\\end{document}\n"
    )
    run = subprocess.run(
        [PDFLATEX, "-interaction=nonstopmode", "-halt-on-error", "doc.tex"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )
    assert run.returncode == 0, run.stdout[-2000:]
    assert (tmp_path / "doc.pdf").stat().st_size > 1000
