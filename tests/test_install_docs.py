"""The local cluster of docs/cluster.md installs as documented, and says in one line what is
missing when it is not (scripts/local_cluster.py ``check``, and ``up`` before it starts anything).

The install line is read from docs/cluster.md itself, so that the page and the test cannot drift
apart; the slow test runs it in a fresh virtual environment.
"""

from __future__ import annotations

import importlib
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import load_script

ROOT = Path(__file__).resolve().parents[1]
LOCAL = load_script("local_cluster")
SECTION = "## Try the cluster path on one machine"


def documented_install_line() -> str:
    """The one ``pip install`` of docs/cluster.md's local cluster section."""
    text = (ROOT / "docs" / "cluster.md").read_text()
    section = text.split(SECTION, 1)[1].split("\n## ", 1)[0]
    lines = re.findall(r"`(pip install [^`]*)`", section)
    assert len(lines) == 1, f"expected one install line in {SECTION!r}, found {lines}"
    return lines[0]


def test_the_documented_line_is_the_scripts_and_its_extra_brings_what_up_imports() -> None:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    line = documented_install_line()
    assert line == LOCAL.INSTALL
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    (named,) = re.findall(r'"\.\[([^\]]+)\]"', line)
    brought = [req for extra in named.split(",") for req in extras[extra.strip()]]
    # ray itself comes with rayot; every other package the script checks for is in the extra
    for _, package in LOCAL.REQUIREMENTS:
        if package != "ray":
            assert any(req.startswith(package) for req in brought), (package, brought)


def _without(monkeypatch: pytest.MonkeyPatch, missing: dict[str, str]) -> None:
    """Make importing each key of ``missing`` fail as if the module in its value were absent."""
    real = importlib.import_module

    def fake(name: str, package: str | None = None):
        if name in missing:
            raise ModuleNotFoundError(f"No module named {missing[name]!r}", name=missing[name])
        return real(name, package)

    monkeypatch.setattr(LOCAL.importlib, "import_module", fake)


def test_up_names_what_is_missing_in_one_line_and_starts_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    # moto without flask fails on moto's own import of it; grpcio is Ray Client's
    _without(monkeypatch, {"moto.server": "flask", "grpc": "grpc"})
    state = tmp_path / "state"
    assert LOCAL.main(["up", "--state", str(state)]) == 2
    out, err = capsys.readouterr()
    assert out == ""  # nothing for `eval` to export
    assert err.splitlines() == [
        "error: the local cluster needs moto[server] (no module 'flask'), ray[client] (no module "
        "'grpc'), not installed here; install with: pip install -e \".[local-cluster]\""]
    assert not state.exists()  # `up` makes it before it starts the background process
    assert LOCAL.main(["check"]) == 2
    assert capsys.readouterr().err == err
    with pytest.raises(LOCAL.MissingRequirement, match=r"ray\[client\] \(no module 'grpc'\)"):
        LOCAL.start()


def test_check_passes_where_the_test_extra_is_installed(capsys: pytest.CaptureFixture[str]) -> None:
    assert LOCAL.main(["check"]) == 0
    assert "ray[client]" in capsys.readouterr().out


def _run(args: list[str], timeout_s: float) -> subprocess.CompletedProcess[str]:
    # a clean environment: none of this test run's virtual environment or import path
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
    return subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout_s)


@pytest.mark.slow
def test_the_documented_install_line_is_enough_in_a_fresh_environment(tmp_path: Path) -> None:
    # Installs torch, Ray and the rest into an empty virtual environment: about 5 minutes on a
    # loaded 2-core machine with pip's cache warm, nearly all of it the first install
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = str(venv / "bin" / "python")
    check = [python, "scripts/local_cluster.py", "check"]

    # the main install (README) works without the extra, and the script says what it lacks
    done = _run([python, "-m", "pip", "install", "-q", "-e", "."], timeout_s=1500)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    done = _run([str(venv / "bin" / "rayot"), "--help"], timeout_s=120)
    assert done.returncode == 0, done.stderr[-3000:]
    done = _run(check, timeout_s=120)
    assert done.returncode == 2 and done.stdout == "", done.stdout + done.stderr
    (line,) = done.stderr.splitlines()
    for package in ("boto3", "moto[server]", "ray[client] (no module 'grpc')", LOCAL.INSTALL):
        assert package in line, line

    # then exactly the line docs/cluster.md gives
    args = shlex.split(documented_install_line())
    assert args[:2] == ["pip", "install"], args
    done = _run([python, "-m", "pip", *args[1:]], timeout_s=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    done = _run(check, timeout_s=120)
    assert done.returncode == 0, done.stdout + done.stderr
    shutil.rmtree(venv)  # gigabytes (torch and its CUDA libraries); kept when the test fails
