"""Review s13 (fresh): a fresh machine and a non-developer install (packaging, environment, Makefile)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _run(args: list[str], tmp_path: Path, **env) -> subprocess.CompletedProcess:
    full = {**os.environ, **env}
    return subprocess.run(args, cwd=tmp_path, env=full, capture_output=True, text=True, timeout=300)


def test_python_dash_m_hmrcritic_runs_the_cli(tmp_path):
    """``python -m hmrcritic`` said "No module named hmrcritic.__main__" (there was no __main__.py), the way in when
    the venv's bin folder is not on PATH."""
    res = _run([sys.executable, "-m", "hmrcritic", "--help"], tmp_path)
    assert res.returncode == 0, res.stderr
    assert "Usage: python -m hmrcritic" in res.stdout and "doctor" in res.stdout


@pytest.mark.parametrize("value, want", [("", "egl"), ("  ", "egl"), ("osmesa", "osmesa")])
def test_blank_pyopengl_platform_counts_as_unset(tmp_path, value, want):
    """``PYOPENGL_PLATFORM=`` (set but empty, as ``export PYOPENGL_PLATFORM=`` leaves it) was kept by setdefault and
    every render failed ("Unsupported PyOpenGL platform: "); a real choice (osmesa) is still respected."""
    code = "import os, hmrcritic.config; print(os.environ['PYOPENGL_PLATFORM'], os.environ['HF_HUB_OFFLINE'])"
    res = _run([sys.executable, "-c", code], tmp_path, PYOPENGL_PLATFORM=value, HF_HUB_OFFLINE="")
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == [want, "1"]


def test_ascii_only_stdout_does_not_crash_help_or_messages(tmp_path):
    """With ``PYTHONIOENCODING=ascii`` (or a Latin-1 locale) ``--help`` (its "—") and any message with ≥, ρ, → died
    with UnicodeEncodeError half-way through; they now print, the odd characters escaped."""
    main = "import sys; from hmrcritic.cli import main; sys.exit(main(sys.argv[1:]))"
    res = _run([sys.executable, "-c", main, "--help"], tmp_path, PYTHONIOENCODING="ascii")
    assert res.returncode == 0, res.stderr
    assert "UnicodeEncodeError" not in res.stderr and "reproduce" in res.stdout
    res = _run([sys.executable, "-c", main, "doctor", "--no-render"], tmp_path, PYTHONIOENCODING="ascii",
               HMRCRITIC_VLM_RETRIES="-1")
    assert res.returncode == 1
    assert "UnicodeEncodeError" not in res.stdout + res.stderr
    assert "must be \\u2265 0" in res.stdout and "some checks failed" in res.stdout


def test_permission_error_on_the_default_home_names_hmrcritic_home(tmp_path, monkeypatch):
    """``HOME=/nonexistent`` (a service account) or a read-only home: every command said "Permission denied:
    /nonexistent (check the folder's permissions)", never that the folder can be moved with HMRCRITIC_HOME."""
    from hmrcritic.cli import _os_error

    home = tmp_path / "home" / ".local" / "share" / "hmrcritic"
    monkeypatch.setenv("HMRCRITIC_HOME", str(home))
    for where in (tmp_path / "home", home / "cache"):  # above the home folder and inside it
        msg = _os_error(PermissionError(13, "Permission denied", str(where)))
        assert msg.startswith(f"Permission denied: {where}") and "set HMRCRITIC_HOME to a writable folder" in msg
    other = _os_error(PermissionError(13, "Permission denied", str(tmp_path / "elsewhere" / "x.npz")))
    assert "HMRCRITIC_HOME" not in other  # a file the user named: their folder, not ours


def test_doctor_folders_failure_names_the_folders(tmp_path, monkeypatch):
    """The FAIL line (all the text report shows of a failed check) said "not writable: cache, data, memory, runs":
    roles, not the folders, and not how to move them."""
    from hmrcritic import config
    from hmrcritic.commands.doctor import _folders

    afile = tmp_path / "afile"
    afile.write_text("x")
    monkeypatch.setenv("HMRCRITIC_HOME", str(afile))
    for name in ("HMRCRITIC_CACHE", "HMRCRITIC_DATA", "HMRCRITIC_MEMORY", "HMRCRITIC_RUNS"):
        monkeypatch.delenv(name, raising=False)
    res = _folders()
    assert res["ok"] is False
    assert f"cache={config.cache_dir()}" in res["error"] and f"runs={config.runs_dir()}" in res["error"]
    assert "HMRCRITIC_HOME" in res["error"]


@pytest.mark.parametrize("platform_, fix", [("osmesa", "libosmesa6"), ("egl", "libegl1")])
def test_doctor_render_failure_says_what_to_install(monkeypatch, platform_, fix):
    """``PYOPENGL_PLATFORM=osmesa`` without OSMesa: pyrender's ImportError escaped the render self-test and doctor
    printed only "ImportError: ('Unable to load OpenGL library', 'OSMesa: cannot open shared object file…')"."""
    import hmrcritic.hmr.render as render
    from hmrcritic.commands.doctor import _check, _render

    def broken(*a, **k):
        raise ImportError("Unable to load OpenGL library", "OSMesa: cannot open shared object file", "OSMesa", None)

    monkeypatch.setattr(render, "self_test", broken)
    monkeypatch.setenv("PYOPENGL_PLATFORM", platform_)
    res = _check("gl_render", _render)
    assert res["ok"] is False and res["platform"] == platform_
    assert f"PYOPENGL_PLATFORM={platform_}" in res["error"] and fix in res["error"]
    assert "Unable to load OpenGL library" in res["error"]


@pytest.mark.skipif(shutil.which("make") is None, reason="no make")
def test_make_finishes_a_half_created_venv(tmp_path):
    """A venv left without pip (python3-venv missing on Debian/Ubuntu, or Ctrl-C during creation) has bin/python,
    which the Makefile took for a finished venv: every later `make` failed with "No module named pip"."""
    shutil.copy(ROOT / "Makefile", tmp_path / "Makefile")
    for name in ("requirements.lock", "pyproject.toml"):
        (tmp_path / name).write_text("")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(tmp_path / ".venv")], check=True)
    assert (tmp_path / ".venv" / "bin" / "python").exists() and not (tmp_path / ".venv" / "bin" / "pip").exists()
    res = _run(["make", f"PYTHON={sys.executable}", ".venv/bin/pip"], tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    check = _run([str(tmp_path / ".venv" / "bin" / "python"), "-m", "pip", "--version"], tmp_path)
    assert check.returncode == 0, check.stderr
    # and `make setup` now depends on that step (a full venv is left alone: the target is a file that exists)
    dry = _run(["make", "-n", f"PYTHON={sys.executable}", "setup"], tmp_path)
    assert "-m venv" not in dry.stdout and "pip install -q -r requirements.lock" in dry.stdout


def test_ci_entry_point_is_executable_and_runs_make_test():
    run = ROOT / ".ci" / "run"
    assert os.access(run, os.X_OK)
    assert "make test" in run.read_text()


@pytest.mark.parametrize("xdg, want", [("relative/share", None), ("/srv/xdg", "/srv/xdg/hmrcritic"), ("", None)])
def test_relative_xdg_data_home_is_ignored(monkeypatch, xdg, want):
    """A relative ``XDG_DATA_HOME`` (invalid per the XDG spec, which says to ignore it) made the home folder relative
    to wherever a command ran: the memory and data of one folder were missing in the next."""
    from hmrcritic import config

    monkeypatch.delenv("HMRCRITIC_HOME", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", xdg)
    got = config.home_dir()
    assert got == Path(want or Path.home() / ".local" / "share" / "hmrcritic")
    assert got.is_absolute()
