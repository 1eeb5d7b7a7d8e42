"""The local cluster of docs/cluster.md installs as documented, and says in one line what is
missing when it is not (scripts/local_cluster.py ``check``, and ``up`` before it starts anything).

The install line is read from docs/cluster.md itself, so that the page and the test cannot drift
apart; the slow test resolves it, as pip would install it into a fresh virtual environment.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import shlex
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


#: the distributions of the files that importing the modules named on the command line loads,
#: by each installed distribution's RECORD, less those loaded at start-up (an editable install's
#: finder): what an environment must hold for these imports to succeed
_LOADED = """
import importlib, importlib.metadata as md, json, os, site, sys
def files():
    return {os.path.realpath(m.__file__) for m in list(sys.modules.values()) if getattr(m, "__file__", None)}
before = files()
for name in sys.argv[1:]:
    importlib.import_module(name)
roots = [os.path.realpath(p) for p in site.getsitepackages()]
loaded = {os.path.relpath(f, r) for f in files() - before for r in roots if f.startswith(r + os.sep)}
print(json.dumps(sorted({d.metadata["Name"] for d in md.distributions()
                         if any(str(f) in loaded for f in d.files or ())})))
"""


def _name(distribution: str) -> str:
    return re.sub(r"[-_.]+", "-", distribution).lower()


def _loaded(*modules: str) -> set[str]:
    done = subprocess.run([sys.executable, "-c", _LOADED, *modules], capture_output=True, text=True,
                          timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    return {_name(d) for d in json.loads(done.stdout)}


def _closure(report: dict, root: str, extras: tuple[str, ...] = ()) -> set[str]:
    """The distributions of pip's install ``report`` that ``root`` (with ``extras``) requires,
    itself included: a fresh environment's contents after installing it."""
    from packaging.requirements import Requirement

    metadata = {_name(item["metadata"]["name"]): item["metadata"] for item in report["install"]}
    found, todo = set(), [(_name(root), extras)]
    while todo:
        name, wanted = todo.pop()
        if (name, wanted) in found:
            continue
        found.add((name, wanted))
        for line in metadata[name].get("requires_dist", []):
            req = Requirement(line)
            if req.marker is None or any(req.marker.evaluate({"extra": e}) for e in ("", *wanted)):
                todo.append((_name(req.name), tuple(sorted(req.extras))))
    return {name for name, _ in found}


@pytest.mark.slow
def test_the_documented_install_line_is_enough_in_a_fresh_environment(tmp_path: Path) -> None:
    # What pip would install for the line docs/cluster.md gives into an empty environment
    # (--ignore-installed: nothing of this test environment counts), resolved but not installed
    # (20 s, where installing torch, Ray and the rest into a new virtual environment took two
    # minutes). Every distribution whose files the script's requirements load here must come with
    # the documented line.
    args = shlex.split(documented_install_line())
    assert args[:2] == ["pip", "install"], args
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PIP_USER")}
    done = subprocess.run([sys.executable, "-m", "pip", *args[1:], "--dry-run", "--ignore-installed", "--quiet",
                           "--report", str(tmp_path / "report.json")], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((tmp_path / "report.json").read_text())
    (named,) = re.findall(r"\.\[([^\]]+)\]", documented_install_line())
    main = _closure(report, "rayot")  # pip install -e . (README)
    documented = _closure(report, "rayot", tuple(sorted(e.strip() for e in named.split(","))))
    assert documented == {_name(item["metadata"]["name"]) for item in report["install"]}

    # the main install lacks what the script then names (its one line: the test above)
    needed = _loaded(*(module for module, _ in LOCAL.REQUIREMENTS))
    assert {"boto3", "moto", "flask", "grpcio"} <= needed - main
    # the documented line brings everything the local cluster imports
    assert not needed - documented, sorted(needed - documented)
