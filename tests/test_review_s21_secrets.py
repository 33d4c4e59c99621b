"""Session 21 review, secrets: addresses whose password holds an unencoded "#", "/" or "?", and doctor's report of
a check that failed with a long message or a key JSON escapes."""

from __future__ import annotations

import pytest

from hmrcritic import redact
from hmrcritic.cli import main
from hmrcritic.commands import doctor
from hmrcritic.config import check_base_url
from hmrcritic.errors import InputError


@pytest.mark.parametrize("url", ["http://chromauser:FAKEpre#tail-s21@127.0.0.1:9",
                                 "http://chromauser:FAKEpre/tail-s21@127.0.0.1:9",
                                 "chromauser:FAKEpre?tail-s21@127.0.0.1:9"])
@pytest.mark.parametrize("given", ["flag", "env"])
def test_a_chroma_password_with_a_hash_slash_or_question_mark_is_not_printed(url, given, tmp_path, monkeypatch,
                                                                              capsys):
    """A URL parser ends the authority at the first "#", "/" or "?", so ``user:FAKEpre#tail@host`` had no
    credentials to register or mask: ``chroma url 'http://chromauser:FAKEpre#tail-s21@127.0.0.1:9' is not of the
    form …`` quoted the password whole, and the parser's own "(Port could not be cast to integer value as
    'FAKEpre')" its first part."""
    monkeypatch.setenv("HMRCRITIC_HOME", str(tmp_path))
    argv = ["memory", "stats"]
    if given == "env":
        monkeypatch.setenv("HMRCRITIC_CHROMA_URL", url)
    else:
        monkeypatch.delenv("HMRCRITIC_CHROMA_URL", raising=False)
        argv += ["--chroma-url", url]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "127.0.0.1:9" in err  # where the server is stays readable
    assert "FAKEpre" not in err and "tail-s21" not in err, err


def test_a_judge_base_url_whose_password_holds_a_hash_is_refused_without_showing_it(monkeypatch):
    url = "http://baseuser:FAKEbase#pw-s21@127.0.0.1:9/v1"
    with pytest.raises(InputError) as info:
        check_base_url(url)
    assert "FAKEbase" not in str(info.value) and "pw-s21" not in str(info.value)
    assert redact.redact_url(url) == "http://***@127.0.0.1:9/v1"
    # doctor names the same refusal from the environment
    monkeypatch.setenv("HMRCRITIC_BASE_URL", url)
    report = doctor.run_checks(skip=tuple(n for n, _ in doctor.CHECKS if n != "judge"))
    assert "FAKEbase" not in str(report) and "pw-s21" not in str(report)
    assert report["checks"][0]["ok"] is False


def test_an_at_sign_in_an_addresses_path_is_still_not_a_credential():
    """The other side of the test above (a guard, passing before too): ``http://h/a@b`` and a query's e-mail keep
    their text."""
    for url in ("http://h/a@b", "http://h:8000/v1/x@y", "http://h:8000/v1?e=a@b.example", "http://[::1]:80/a@b"):
        assert redact.url_secrets(url) == [] and redact.redact_url(url) == url


def test_doctor_masks_a_key_that_a_failed_checks_long_message_cuts_through(monkeypatch):
    """A check's exception was cut to 400 characters before run_checks scrubbed the report: a key straddling
    the cut lost its end, and what was left of it matched no secret, so the report showed most of it."""
    key = "sk-FAKE-s21-doctor-0123456789abcdef"
    monkeypatch.setenv("HMRCRITIC_API_KEY", key)
    pad = "x" * (400 - len("RuntimeError: ") - 10)

    def failing():
        raise RuntimeError(pad + key + " and more")

    monkeypatch.setattr(doctor, "CHECKS", [("failing", failing)])
    report = doctor.run_checks()
    assert report["checks"][0]["ok"] is False
    assert key[:10] not in report["checks"][0]["error"], report["checks"][0]["error"][-40:]


def test_doctor_masks_a_key_with_a_character_json_escapes(monkeypatch):
    """run_checks scrubbed the JSON text of the report, where a key's backslash or quote is escaped, so the
    escaped key matched nothing and came back whole from json.loads."""
    key = 'sk-FAKE-s21\\quoted"0123456789'
    monkeypatch.setenv("OPENAI_API_KEY", key)
    monkeypatch.delenv("HMRCRITIC_API_KEY", raising=False)

    def failing():
        raise RuntimeError(f"the endpoint said: bad key {key}")

    monkeypatch.setattr(doctor, "CHECKS", [("failing", failing)])
    report = doctor.run_checks()
    assert key not in str(report["checks"][0]["error"]) and "0123456789" not in report["checks"][0]["error"]


@pytest.mark.parametrize("argv", [["memory", "stats", "http://bob:FAKEusage-pw-s21@127.0.0.1:8000"],
                                  ["memory", "stats", "sk-FAKE-usage-key-s21"]])
def test_a_usage_error_does_not_quote_a_secret_typed_without_its_option(argv, tmp_path, monkeypatch, capsys):
    """click's usage errors went out unscrubbed (every other error line is scrubbed): an address or a key pasted
    without its option came back whole in "Got unexpected extra argument(s) (…)"."""
    monkeypatch.setenv("HMRCRITIC_HOME", str(tmp_path))
    monkeypatch.setenv("HMRCRITIC_API_KEY", "sk-FAKE-usage-key-s21")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "unexpected extra argument" in err and "memory stats [OPTIONS]" in err
    assert "FAKEusage-pw-s21" not in err and "sk-FAKE-usage-key-s21" not in err, err


def test_the_trace_docs_promise_no_langfuse_tracing_from_the_environment():
    """trace.py said "LangSmith / Langfuse tracing needs nothing here: LangChain picks them up from their
    environment variables". LangChain reads no Langfuse variable (Langfuse traces only through a callback
    handler, which the agent cannot be given), and only LangSmith's uploads are scrubbed (guard_langsmith)."""
    import importlib.util
    from pathlib import Path

    import hmrcritic.agent.trace as trace

    core = Path(importlib.util.find_spec("langchain_core").origin).parent
    assert not any("langfuse" in f.read_text(encoding="utf-8", errors="replace").lower() for f in core.rglob("*.py"))
    doc = " ".join(trace.__doc__.split())
    assert "Langfuse tracing needs nothing here" not in doc and "guard_langsmith" in doc


def test_doctor_fails_a_server_address_given_as_the_memory_folder_without_showing_its_password(tmp_path,
                                                                                                monkeypatch):
    """``HMRCRITIC_MEMORY=http://user:pw@host:8000`` (meant for HMRCRITIC_CHROMA_URL) is a folder named after it
    to every command; doctor called the folders fine and printed "memory=http:/bob:FAKE…@127.0.0.1:8000" (a
    path's single slash is no URL to the scrubber), the password in a report people paste into issues."""
    monkeypatch.setenv("HMRCRITIC_HOME", str(tmp_path))
    monkeypatch.setenv("HMRCRITIC_MEMORY", "http://bob:FAKEmem-s21-pw@127.0.0.1:8000")
    report = doctor.run_checks(skip=tuple(n for n, _ in doctor.CHECKS if n != "folders"))
    check = report["checks"][0]
    assert "FAKEmem-s21-pw" not in str(report), check
    assert check["ok"] is False and "HMRCRITIC_MEMORY" in check["error"] and "HMRCRITIC_CHROMA_URL" in check["error"]
    assert "127.0.0.1:8000" in check["error"]
