"""hmrcritic as a package, not a checkout: what the sdist and the wheel hold, what the wheel declares, and an
installed wheel run from outside the repository (``pip install --target``, no dependencies reinstalled)."""

from __future__ import annotations

import ast
import email
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from importlib import metadata
from pathlib import Path

import pytest

import hmrcritic

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
# imported only behind `except ImportError` (an optional extra or an optional tracer), never needed to run
OPTIONAL_IMPORTS = {"langsmith"}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _req_name(req: str) -> str:
    return _norm(re.split(r"[\s<>=!~;\[(]", req.strip(), maxsplit=1)[0])


def _imported_top_modules() -> set[str]:
    mods: set[str] = set()
    for path in (ROOT / "hmrcritic").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                mods.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                mods.add(node.module.split(".")[0])
    return {m for m in mods if m not in sys.stdlib_module_names and m != "hmrcritic" and m not in OPTIONAL_IMPORTS}


def test_every_third_party_import_is_a_declared_dependency():
    """click, rich, openai, httpx, PyOpenGL, scipy and transformers were imported by hmrcritic but only installed
    because another package happened to require them (typer 0.29 vendors click and does not depend on it)."""
    declared = {_req_name(r) for r in PYPROJECT["project"]["dependencies"]}
    for extra in PYPROJECT["project"].get("optional-dependencies", {}).values():
        declared |= {_req_name(r) for r in extra}
    dists = metadata.packages_distributions()
    missing = {}
    for mod in sorted(_imported_top_modules()):
        names = {_norm(d) for d in dists.get(mod, [])}
        assert names, f"{mod} is imported by hmrcritic but no installed distribution provides it"
        if not names & declared:
            missing[mod] = sorted(names)
    assert not missing, f"imported but not declared in pyproject.toml dependencies: {missing}"


def test_declared_dependencies_are_pinned_in_requirements_lock():
    lock = {}
    for line in (ROOT / "requirements.lock").read_text(encoding="utf-8").splitlines():
        if "==" in line and not line.lstrip().startswith("#"):
            name, ver = line.split("==", 1)
            lock[_norm(name)] = ver.strip()
    unpinned = [r for r in PYPROJECT["project"]["dependencies"] if _req_name(r) not in lock]
    assert not unpinned, f"declared but not in requirements.lock: {unpinned}"


# ------------------------------------------------------------------------------------------- sdist and wheel
def _build(cwd: Path, hook: str, out: Path) -> tuple[str, str]:
    code = f"from setuptools import build_meta as b; print(b.{hook}({str(out)!r}))"
    res = subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return res.stdout.strip().splitlines()[-1], res.stdout + res.stderr


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """An sdist built from a copy of the source tree, then a wheel built from that sdist (as pip would)."""
    if shutil.which("git") is None:
        pytest.skip("needs git to list the source files")
    tmp = tmp_path_factory.mktemp("pkg")
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, capture_output=True,
                            check=True).stdout.decode().split("\0")
    src = tmp / "src"
    for rel in filter(None, listed):
        if (ROOT / rel).is_file():
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, src / rel)
    dist = tmp / "dist"
    dist.mkdir()
    sdist_name, sdist_log = _build(src, "build_sdist", dist)
    with tarfile.open(dist / sdist_name) as tf:
        sdist_names = [n.split("/", 1)[1] for n in tf.getnames() if "/" in n]
        tf.extractall(tmp / "unpacked", filter="data")
    (unpacked,) = (tmp / "unpacked").iterdir()
    wheel_name, wheel_log = _build(unpacked, "build_wheel", dist)
    return {"tmp": tmp, "sdist": set(sdist_names), "wheel": dist / wheel_name, "log": sdist_log + wheel_log}


def test_build_has_no_deprecated_license_table(built):
    """``license = { text = "MIT" }`` made every build warn that setuptools refuses it after 2027-02-18 (and
    ``pip install .`` with build isolation fetches the newest setuptools)."""
    assert "project.license` as a TOML table is deprecated" not in built["log"]
    assert isinstance(PYPROJECT["project"]["license"], str)


def test_sdist_carries_the_lock_makefile_and_test_support(built):
    """setuptools alone shipped tests/test_*.py without conftest.py (a test run from the sdist could not even
    collect) and left out requirements.lock, the pins pyproject.toml and the Makefile refer to."""
    want = {"requirements.lock", "Makefile", "README.md", "pyproject.toml", "tests/conftest.py",
            "tests/openai_stub_server.py", "docs/CONTRACTS.md", "hmrcritic/assets/base_model.pt",
            "hmrcritic/assets/base_model.json", "hmrcritic/memory/starter_rules.json"}
    assert want <= built["sdist"], sorted(want - built["sdist"])
    assert not [n for n in built["sdist"] if "__pycache__" in n or n.endswith(".pyc")]


def test_wheel_from_sdist_holds_runtime_files_and_metadata(built):
    with zipfile.ZipFile(built["wheel"]) as zf:
        names = set(zf.namelist())
        meta_name = next(n for n in names if n.endswith(".dist-info/METADATA"))
        meta = email.message_from_string(zf.read(meta_name).decode())
        eps = zf.read(meta_name.replace("METADATA", "entry_points.txt")).decode()
    for f in ("hmrcritic/assets/base_model.pt", "hmrcritic/assets/base_model.json",
              "hmrcritic/memory/starter_rules.json", "hmrcritic/__main__.py"):
        assert f in names, f
    # every source file the code hashes at run time (code digests of explore/evaluate-critic/reproduce) is there
    src = {str(p.relative_to(ROOT)) for p in (ROOT / "hmrcritic").rglob("*.py")}
    assert src <= names, sorted(src - names)
    assert not [n for n in names if n.startswith(("tests/", "docs/", "benchmarks/"))]
    assert meta["Version"] == hmrcritic.__version__
    assert meta["Requires-Python"] == ">=3.11"
    assert "hmrcritic = hmrcritic.cli:main" in eps
    requires = {_req_name(r) for r in meta.get_all("Requires-Dist") if "extra ==" not in r}
    assert {"click", "rich", "openai", "httpx", "pyopengl", "scipy", "torch", "smplx"} <= requires
    # the MIT notice ships with the code (the licence asks for it in every copy)
    assert meta["License-Expression"] == "MIT" and "LICENSE" in built["sdist"]
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)


def test_installed_wheel_runs_from_outside_the_checkout(built, tmp_path):
    """The wheel, installed without its dependencies into a folder of its own, imports from there (not from the
    editable checkout), finds its checkpoint, and ``doctor`` says which copy and version runs."""
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--target", str(site),
                    str(built["wheel"])], check=True, capture_output=True, timeout=300)
    before = {p for p in site.rglob("*") if "__pycache__" not in p.parts}
    env = {**os.environ, "PYTHONPATH": str(site), "HMRCRITIC_HOME": str(tmp_path / "home")}
    run = tmp_path / "cwd"
    run.mkdir()
    res = subprocess.run([sys.executable, "-m", "hmrcritic", "doctor", "--json", "--no-render"], cwd=run, env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    checks = {c["name"]: c for c in json.loads(res.stdout)["checks"]}
    who = checks["python"]["hmrcritic"]
    assert who == {"version": hmrcritic.__version__, "location": str((site / "hmrcritic").resolve()),
                   "installed": hmrcritic.__version__, "install": "package"}
    assert checks["checkpoint"]["path"].startswith(str(site))
    # nothing written into the installed package, the working folder or the checkout
    assert {p for p in site.rglob("*") if "__pycache__" not in p.parts} == before
    assert not list(run.iterdir())


def test_doctor_names_the_running_copy_and_version():
    """doctor reported torch's version but not hmrcritic's, nor which copy (wheel, editable checkout, a checkout on
    PYTHONPATH) was running: the first thing to know about a bug report."""
    from hmrcritic.commands import doctor

    c = doctor._check("python", doctor._python)
    who = c["hmrcritic"]
    assert who["version"] == hmrcritic.__version__
    assert who["location"] == str(Path(hmrcritic.__file__).resolve().parent)
    assert f"hmrcritic {hmrcritic.__version__} from {who['location']}" in doctor._summary(c)


def test_doctor_ignores_another_copys_metadata(tmp_path, monkeypatch):
    """A checkout's ``hmrcritic.egg-info`` (or another install) on the path is not the copy that runs."""
    from hmrcritic.commands import doctor

    other = tmp_path / "hmrcritic-9.9.dist-info"
    other.mkdir()
    (other / "METADATA").write_text("Metadata-Version: 2.1\nName: hmrcritic\nVersion: 9.9\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    who = doctor._hmrcritic()
    assert who["installed"] != "9.9" and "9.9" not in doctor._summary(doctor._check("python", doctor._python))
