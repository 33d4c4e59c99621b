"""Review session 25: settings, environment and the doctor (hmrcritic/config.py, commands/doctor.py, cli.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from hmrcritic import config
from hmrcritic.errors import InputError

HMRCRITIC = [sys.executable, "-m", "hmrcritic"]


def _env(home, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HMRCRITIC_", "XDG_DATA_HOME"))}
    env.update(HMRCRITIC_HOME=str(home), **extra)
    return env


@pytest.mark.parametrize("var, reader", [("HMRCRITIC_HOME", config.home_dir), ("HMRCRITIC_CACHE", config.cache_dir),
                                         ("HMRCRITIC_MEMORY", config.memory_dir),
                                         ("HMRCRITIC_BODY_MODEL", config.body_model_path)])
def test_a_tilde_of_no_account_is_an_error_naming_the_variable(var, reader, monkeypatch):
    """``~nouser/x`` failed every command with a bare "RuntimeError: Could not determine home directory."."""
    monkeypatch.setenv(var, "~hmrcritic-no-such-user-s25/x")
    with pytest.raises(InputError, match=var):
        reader()


def test_a_tilde_of_no_account_in_xdg_data_home_is_ignored_as_a_relative_one(monkeypatch, tmp_path):
    monkeypatch.delenv("HMRCRITIC_HOME")
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_DATA_HOME", "~hmrcritic-no-such-user-s25/x")
    assert config.home_dir() == tmp_path / ".local" / "share" / "hmrcritic"


def test_a_tilde_with_an_empty_home_is_the_accounts_home_not_the_root(monkeypatch):
    """``HOME= HMRCRITIC_HOME=~/hm`` made the home ``/hm`` (the default home already used the account's)."""
    import pwd

    monkeypatch.setenv("HOME", "")
    monkeypatch.setenv("HMRCRITIC_HOME", "~/hm")
    assert config.home_dir() == config.Path(pwd.getpwuid(os.getuid()).pw_dir) / "hm"


def test_a_bad_tilde_home_is_one_clear_error_line_from_the_cli(tmp_path):
    proc = subprocess.run([*HMRCRITIC, "memory", "rules"], env=_env("~hmrcritic-no-such-user-s25/x"),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("error: HMRCRITIC_HOME=") and "RuntimeError" not in proc.stderr, proc.stderr


def test_an_address_with_a_scheme_is_not_offered_as_a_folder_name(monkeypatch):
    """``HMRCRITIC_HOME=http://u:pw@h:1`` was told "(a folder of that name: write it ./http://***@h:1)"."""
    monkeypatch.setenv("HMRCRITIC_HOME", "http://u:pw@h:1")
    with pytest.raises(InputError) as err:
        config.home_dir()
    assert "server address" in str(err.value) and "write it" not in str(err.value), err.value
    assert "pw" not in str(err.value)


def test_a_schemeless_address_is_still_offered_as_a_folder_name(monkeypatch):
    monkeypatch.setenv("HMRCRITIC_DATA", "host:8000")
    with pytest.raises(InputError, match=r"write it \./host:8000"):
        config.data_dir()


def test_a_judge_timeout_too_large_to_wait_for_is_refused_naming_the_variable(monkeypatch):
    """``HMRCRITIC_VLM_TIMEOUT=1e10`` passed the settings and doctor, and every request then overflowed."""
    from hmrcritic.agent.vlm import invoke_within

    class Slow:
        def invoke(self, messages):
            time.sleep(0.05)
            return "answer"

    with pytest.raises(OverflowError):  # what such a timeout did to the judge's deadline
        invoke_within(Slow(), [], 1e10)
    monkeypatch.setenv("HMRCRITIC_VLM_TIMEOUT", "1e10")
    with pytest.raises(InputError, match="HMRCRITIC_VLM_TIMEOUT='1e10' must be ≤"):
        config.JudgeSettings()
    with pytest.raises(InputError, match="timeout"):
        config.JudgeSettings(timeout_s=1e10)
    monkeypatch.setenv("HMRCRITIC_VLM_TIMEOUT", "3600")
    assert config.JudgeSettings().timeout_s == 3600.0
    assert invoke_within(Slow(), [], config.MAX_TIMEOUT_S) == "answer"  # the longest allowed can be waited for


def test_doctor_names_a_too_large_judge_timeout(monkeypatch):
    from hmrcritic.commands.doctor import _check, _judge

    monkeypatch.setenv("HMRCRITIC_VLM_TIMEOUT", "99999999999")
    res = _check("judge", _judge)
    assert not res["ok"] and "HMRCRITIC_VLM_TIMEOUT" in res["error"], res


def test_an_integer_of_thousands_of_digits_is_too_large_not_not_an_integer(monkeypatch):
    """int() refuses over 4300 digits: "HMRCRITIC_VLM_RETRIES='999…' is not an integer", 5000 digits quoted."""
    monkeypatch.setenv("HMRCRITIC_VLM_RETRIES", "9" * 5000)
    with pytest.raises(InputError) as err:
        config.env_number("HMRCRITIC_VLM_RETRIES", 4, int, 0)
    text = str(err.value)
    assert "too large" in text and "HMRCRITIC_VLM_RETRIES" in text and len(text) < 200, text[:300]
    for word in ("four", "+-5", "²"):
        monkeypatch.setenv("HMRCRITIC_VLM_RETRIES", word)
        with pytest.raises(InputError, match="is not an integer"):
            config.env_number("HMRCRITIC_VLM_RETRIES", 4, int, 0)


def test_a_gl_platform_from_a_windows_env_file_renders(tmp_path):
    """``PYOPENGL_PLATFORM=egl\\r``: every render failed with "Unsupported PyOpenGL platform: egl\\r"."""
    proc = subprocess.run([*HMRCRITIC, "doctor", "--json"], env=_env(tmp_path / "home", PYOPENGL_PLATFORM="egl\r"),
                          capture_output=True, text=True, timeout=300)
    report = json.loads(proc.stdout)
    gl = next(c for c in report["checks"] if c["name"] == "gl_render")
    assert gl["ok"], gl
    assert report["gl_platform"] == "egl"


def test_doctor_writes_nothing_under_the_home(tmp_path):
    """doctor generated the mannequin into ``<home>/cache/mannequin``: a report that changed the installation."""
    home = tmp_path / "home"
    proc = subprocess.run([*HMRCRITIC, "doctor", "--json", "--no-render"], env=_env(home), capture_output=True,
                          text=True, timeout=300)
    report = json.loads(proc.stdout)
    assert proc.returncode == 0 and report["ok"], proc.stdout[-2000:]
    body = next(c for c in report["checks"] if c["name"] == "body_model")
    assert body["ok"] and body["model"] == "mannequin" and body["vertices"] == 4008, body
    assert not home.exists() or not any(home.rglob("*")), sorted(home.rglob("*"))


def test_doctor_on_a_home_that_is_a_file_fails_the_folders_only(tmp_path):
    """A file as the home failed the body model too ("Not a directory: <home>/cache/mannequin")."""
    home = tmp_path / "home"
    home.write_text("not a folder")
    proc = subprocess.run([*HMRCRITIC, "doctor", "--json", "--no-render"], env=_env(home), capture_output=True,
                          text=True, timeout=300)
    report = json.loads(proc.stdout)
    failed = {c["name"] for c in report["checks"] if not c["ok"]}
    assert proc.returncode == 1 and failed == {"folders"}, report


def test_doctor_uses_the_cached_mannequin_when_there_is_one(monkeypatch, tmp_path):
    from hmrcritic.commands.doctor import _body
    from hmrcritic.hmr import mannequin

    monkeypatch.setenv("HMRCRITIC_HOME", str(tmp_path / "home"))
    mannequin.ensure_mannequin()
    res = _body()
    assert res["ok"] and res["file"] == "built-in mannequin (in cache)", res


def test_an_os_error_under_an_address_home_is_still_one_line(monkeypatch):
    """The error handler's home hint read HMRCRITIC_HOME, and an address there raised inside the handler."""
    from hmrcritic.cli import _os_error

    monkeypatch.setenv("HMRCRITIC_HOME", "http://u:pw@h:1")
    line = _os_error(PermissionError(13, "Permission denied", "/srv/out/x.obj"))
    assert line == "Permission denied: /srv/out/x.obj (check the folder's permissions)"
