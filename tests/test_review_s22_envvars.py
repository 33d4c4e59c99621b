"""Review round 22, environment variables: every ``HMRCRITIC_*`` value read through config.py is refused in one
line naming its variable, or — blank, or padded by an env file — read as meant, the same way for every kind."""

from __future__ import annotations

from pathlib import Path

import pytest

from hmrcritic import config
from hmrcritic.errors import InputError


def test_env_number_refuses_an_integer_beyond_any_float(monkeypatch):
    """``math.isfinite`` of a 400-digit integer raised OverflowError: doctor's judge check said
    "OverflowError: int too large to convert to float" and every VLM command died with a traceback."""
    monkeypatch.setenv("HMRCRITIC_VLM_CONCURRENCY", "1" + "0" * 400)
    with pytest.raises(InputError, match="HMRCRITIC_VLM_CONCURRENCY=.*too large"):
        config.JudgeSettings()
    with pytest.raises(InputError, match="HMRCRITIC_RULES_K=.*too large"):
        monkeypatch.setenv("HMRCRITIC_RULES_K", "9" * 320)
        config.env_number("HMRCRITIC_RULES_K", 16, int)


@pytest.mark.parametrize("raw", ["  ", "\t", " \r\n"])
def test_blank_folder_and_file_variables_are_unset(raw, monkeypatch, tmp_path):
    """A blank HMRCRITIC_HOME was the relative folder "  " (a home in whatever folder a command ran from), and a
    blank HMRCRITIC_BODY_MODEL failed every command with "body model file not found:   "."""
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    monkeypatch.setenv("HMRCRITIC_HOME", raw)
    assert config.home_dir() == tmp_path / "hmrcritic"
    monkeypatch.setenv("HMRCRITIC_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HMRCRITIC_DATA", raw)
    assert config.data_dir() == tmp_path / "home" / "data"
    monkeypatch.setenv("HMRCRITIC_BODY_MODEL", raw)
    assert config.body_model_path() is None


def test_padded_folder_variable_is_the_folder_meant(monkeypatch, tmp_path):
    """``HMRCRITIC_HOME="/data/hm "`` (a trailing space an env file keeps) was a second, empty home beside the
    real one, as the trailing ``\\r`` was before it was dropped."""
    monkeypatch.setenv("HMRCRITIC_HOME", f"{tmp_path} ")
    assert config.home_dir() == Path(str(tmp_path))
    monkeypatch.setenv("HMRCRITIC_MEMORY", f" {tmp_path}/mem \r")
    assert config.memory_dir() == tmp_path / "mem"


def test_blank_base_url_does_not_hide_openai_base_url(monkeypatch):
    """``HMRCRITIC_BASE_URL=" "`` hid OPENAI_BASE_URL (as a blank key once hid OPENAI_API_KEY) and failed every
    VLM critique with "judge base URL '  ' is not of the form …"."""
    monkeypatch.setenv("HMRCRITIC_BASE_URL", "  ")
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:8000/v1")
    assert config.JudgeSettings().base_url == "http://127.0.0.1:8000/v1"
    monkeypatch.delenv("OPENAI_BASE_URL")
    assert config.JudgeSettings().base_url is None


def test_base_url_from_a_windows_env_file_is_used_without_its_line_ending(monkeypatch):
    """``…/v1\\r`` passed check_base_url (urlsplit drops it) and then building the VLM judge raised httpx's
    "Invalid non-printable ASCII character in URL" — a traceback, not a one-line error."""
    monkeypatch.setenv("HMRCRITIC_BASE_URL", "http://127.0.0.1:8000/v1\r")
    s = config.JudgeSettings()
    assert s.base_url == "http://127.0.0.1:8000/v1"
    assert config.check_base_url(s.base_url) == s.base_url


@pytest.mark.parametrize("url", ["http://127.0.0.1:8000/v1\r", " http://127.0.0.1:8000/v1", "http://h:1/v 1"])
def test_check_base_url_refuses_spaces_and_control_characters(url):
    """A base URL given in code with a ``\\r`` or a leading space passed the check: the HTTP client then refused
    it with a traceback, or sent every request to ``%20http://…`` (reported as "cannot connect")."""
    with pytest.raises(InputError, match="space or control character at position"):
        config.check_base_url(url)


@pytest.mark.parametrize("raw", ["cpu\r", " cpu ", "   "])
def test_default_device_is_read_without_padding(raw, monkeypatch):
    """``HMRCRITIC_DEVICE=cpu\\r`` (a Windows env file) was "not a torch device", and a blank value was refused
    rather than unset (every other variable: blank → default)."""
    monkeypatch.setenv("HMRCRITIC_DEVICE", raw)
    assert config.default_device() == "cpu"
    assert config.check_device(None) == "cpu"


def test_missing_cuda_index_names_the_variable(monkeypatch):
    """``HMRCRITIC_DEVICE=cuda:3`` on a one-GPU machine said only "this machine has 1 CUDA device(s)": not
    that the device came from the variable (the user typed no --device), nor what to set instead."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setenv("HMRCRITIC_DEVICE", "cuda:3")
    with pytest.raises(InputError, match=r"\(from HMRCRITIC_DEVICE\).*1 CUDA device.*set HMRCRITIC_DEVICE"):
        config.check_device(None)
    with pytest.raises(InputError, match=r"'cuda:3': this machine has 1 .*use --device cuda:0"):
        config.check_device("cuda:3")
