"""Review s31 (a logic read of the CLI, settings and secrets layer): what a line-by-line read found and proved.

* ``check_base_url`` let urlsplit's ValueError out (``http://[::1/v1``: "error: ValueError: Invalid IPv6 URL",
  exit 1, an unexpected error, where README promises 2 for bad input) and passed a port of letters, which failed
  only at the first critique, after the split had been generated;
* ``cli.main`` turned ``sys.exit("message")`` into a ValueError traceback (``int("message")``);
* the scrubber left a lowercase ``bearer`` token in view.

Real CLI (``hmrcritic.cli.main``) and real settings; nothing is mocked but the one command that raises."""

from __future__ import annotations

import pytest

from hmrcritic import cli, config
from hmrcritic.errors import InputError
from hmrcritic.redact import scrub


@pytest.mark.parametrize("url", ["http://[::1/v1", "http://[zz]/v1", "http://h:abc/v1", "http://h:99999/v1",
                                 "http://user:pa/ss@host/v1"])
def test_check_base_url_refuses_a_malformed_url_as_bad_input(url):
    with pytest.raises(InputError) as err:
        config.check_base_url(url)
    assert "pa/ss" not in str(err.value) and "'pa'" not in str(err.value)  # a password's piece is never quoted


def test_check_base_url_still_takes_good_urls():
    for url in ("http://localhost:8000/v1", "https://[::1]:8000/v1", "http://h:/v1", "https://api.example.com/v1"):
        assert config.check_base_url(url) == url


@pytest.mark.parametrize("url", ["http://[::1/v1", "http://h:abc/v1"])
def test_a_malformed_base_url_flag_is_exit_2_before_any_work(url, tmp_path, monkeypatch, capsys):
    """Exit 2 with a line naming the flag, before the data is generated (no split appears in the data folder)."""
    monkeypatch.setenv("HMRCRITIC_DATA", str(tmp_path / "data"))
    rc = cli.main(["critique", "--scene", "test:0", "--judge", "vlm", "--base-url", url, "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "--base-url" in err and "not a valid URL" in err and "ValueError" not in err
    assert not (tmp_path / "data").exists()


def test_a_malformed_base_url_variable_is_bad_input_to_the_settings_check(monkeypatch):
    """The check the VLM judge and doctor run on the variable: an InputError, not a ValueError. (doctor's own
    ``_strip_userinfo`` still parses it after that check: reported, commands/doctor.py is not this review's.)"""
    monkeypatch.setenv("HMRCRITIC_BASE_URL", "http://[::1/v1")
    with pytest.raises(InputError):
        config.check_base_url(config.JudgeSettings().base_url)


@pytest.fixture()
def exiting_command():
    """A command that stops as a library may: ``sys.exit(<message>)`` (or ``sys.exit()``)."""
    import sys

    how = {}

    @cli.app.command("s31-exits")
    def s31_exits() -> None:
        sys.exit(*how["args"])

    yield how
    cli.app.registered_commands[:] = [c for c in cli.app.registered_commands if c.name != "s31-exits"]


def test_sys_exit_with_a_message_is_an_error_line_and_exit_1(exiting_command, monkeypatch, capsys):
    monkeypatch.setenv("HMRCRITIC_API_KEY", "sk-proj-Qw3rTy7uIo9pAs2dFg5hJk")
    exiting_command["args"] = ("stopped: key sk-proj-Qw3rTy7uIo9pAs2dFg5hJk refused",)
    assert cli.main(["s31-exits"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: stopped: key ") and "Qw3rTy7u" not in err and "Traceback" not in err


@pytest.mark.parametrize("args, code", [((), 0), ((0,), 0), ((3,), 3), ((None,), 0)])
def test_sys_exit_with_a_code_keeps_it(exiting_command, capsys, args, code):
    exiting_command["args"] = args
    assert cli.main(["s31-exits"]) == code
    assert "error" not in capsys.readouterr().err


def test_a_lowercase_bearer_token_is_masked():
    assert scrub("authorization: bearer abcd1234efgh5678") == "authorization: bearer ***"
    assert scrub("AUTHORIZATION: BEARER abcd1234efgh5678") == "AUTHORIZATION: BEARER ***"
    # "Basic" stays as written: lowercase "basic" is prose
    assert scrub("a basic 10-degree tolerance") == "a basic 10-degree tolerance"
    assert scrub("Basic YWxhZGRpbjpvcGVuc2VzYW1l") == "Basic ***"
