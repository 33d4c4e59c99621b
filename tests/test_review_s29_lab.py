"""Review s29 (a lab walk-through): three messages that did not say what to change or what happened.

* A 401/403 from the VLM endpoint said "(the key is refused)" without the variable the key came from
  (HMRCRITIC_API_KEY or OPENAI_API_KEY: the first one set wins), though README promises every cause of an
  unusable endpoint "named with what to change".
* ``critique`` after an earlier critique of the same group *failed* (a JudgeError, exit 2) said "resumed an
  interrupted run": nothing was interrupted.
* ``doctor`` with HMRCRITIC_CHROMA_URL showed the local memory folder as ``memory=`` and the server only inside
  the judge line's agent settings; the judge line left out the judge's max_concurrency (--json had it).
"""

from __future__ import annotations

import json

import pytest
from openai_stub_server import JSONAnswerServer, StubOpenAIServer
from test_vlm_judge import make_ctx

from hmrcritic.agent.vlm import EndpointUnusableError, VLMJudge
from hmrcritic.cli import main
from hmrcritic.commands import doctor
from hmrcritic.config import JudgeSettings

KEY = "sk-s29-lab-SECRET-4e1d"
OTHER = "sk-s29-lab-OTHER-77aa"


def judge_for(url: str) -> VLMJudge:
    s = JudgeSettings(base_url=url, model="stub-vlm", timeout_s=5.0, max_retries=0, max_concurrency=1)
    return VLMJudge(s, backoff_base_s=0.01, backoff_max_s=0.02)


# ------------------------------------------------------------------------------------- 1. the refused key


@pytest.mark.parametrize("which", ["HMRCRITIC_API_KEY", "OPENAI_API_KEY"])
def test_a_refused_key_names_the_variable_it_came_from(monkeypatch, which):
    monkeypatch.setenv(which, KEY)
    with StubOpenAIServer(default="401_echo", require_images=False) as srv, \
            pytest.raises(EndpointUnusableError) as info:  # quotes the key back
        judge_for(srv.base_url).critique(make_ctx((None, None)))
    text = str(info.value)
    assert srv.requests[0].auth == f"Bearer {KEY}"  # it was sent, and refused
    assert f"the key sent is the one in {which}" in text and "set a valid key" in text
    assert info.value.cause == f"the key is refused: the one in {which}"
    assert KEY not in text + info.value.cause


def test_a_refused_key_says_which_variable_wins_when_both_are_set(monkeypatch):
    """A user who fixes OPENAI_API_KEY while a stale HMRCRITIC_API_KEY is set changes nothing: said so."""
    monkeypatch.setenv("HMRCRITIC_API_KEY", KEY)
    monkeypatch.setenv("OPENAI_API_KEY", OTHER)
    with StubOpenAIServer(default="401_echo", require_images=False) as srv, \
            pytest.raises(EndpointUnusableError) as info:
        judge_for(srv.base_url).critique(make_ctx((None, None)))
    text = str(info.value)
    assert "the one in HMRCRITIC_API_KEY (it wins over OPENAI_API_KEY)" in text
    assert KEY not in text and OTHER not in text


def test_a_401_without_any_key_names_both_variables():
    """conftest unsets both: the judge sent a placeholder, and "the key is refused" named no way out."""
    with StubOpenAIServer(default="401_echo", require_images=False) as srv, \
            pytest.raises(EndpointUnusableError) as info:
        judge_for(srv.base_url).critique(make_ctx((None, None)))
    text = str(info.value)
    assert "no key was sent" in text and "HMRCRITIC_API_KEY" in text and "OPENAI_API_KEY" in text


def test_a_403_names_the_variable_too(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    denied = {"error": {"message": "This key may not use this model.", "type": "permission_error"}}
    with JSONAnswerServer(lambda _body: (403, denied)) as srv, \
            pytest.raises(EndpointUnusableError) as info:
        judge_for(srv.url).critique(make_ctx((None, None)))
    assert "the key sent is the one in OPENAI_API_KEY" in str(info.value)
    assert info.value.cause == "access is denied to the key in OPENAI_API_KEY"


def test_the_groups_not_tried_name_the_variable(monkeypatch):
    """A batch stops after three refused groups; the groups not sent carry only the cause: it names the
    variable too (their line ended "(the key is refused)")."""
    monkeypatch.setenv("HMRCRITIC_API_KEY", KEY)
    with StubOpenAIServer(default="401_echo", require_images=False) as srv:
        out = judge_for(srv.base_url).critique_many([make_ctx((None, None), group_id=f"g{i}") for i in range(6)],
                                                     return_exceptions=True)
    assert len(srv.requests) < 6
    assert "did not try group g5" in str(out[5]) and "(the key is refused: the one in HMRCRITIC_API_KEY)" in str(out[5])
    assert KEY not in str(out[5])


# ---------------------------------------------------------------------------- 2. resumed after a failure


def test_critique_after_a_failed_critique_does_not_say_interrupted(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HMRCRITIC_VLM_MODEL", "stub-vlm")
    monkeypatch.setenv("HMRCRITIC_VLM_RETRIES", "0")
    monkeypatch.setenv("HMRCRITIC_VLM_TIMEOUT", "5")
    args = ["critique", "--scene", "test:1", "-n", "4", "--no-render", "--judge", "vlm", "--max-reflections", "0",
            "--group-id", "s29-resume", "--memory", str(tmp_path / "mem"), "--out", str(tmp_path / "out")]
    with StubOpenAIServer(require_images=False) as srv:
        monkeypatch.setenv("HMRCRITIC_BASE_URL", srv.base_url)
        srv.push("500")  # the first critique fails at the judge (no retries): exit 2, its checkpoint kept
        assert main(args) == 2
        capsys.readouterr()
        assert main(args) == 0
    run_line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("run: "))
    assert "interrupted" not in run_line and "(resumed an earlier unfinished run)" in run_line


# ------------------------------------------------------------------------------------------- 3. doctor


def _doctor_text(capsys) -> list[str]:
    """doctor's text lines: ``[ok  ] <check name, 11 wide> <summary>``."""
    code = main(["doctor", "--no-render"])
    lines = capsys.readouterr().out.splitlines()
    assert code in (0, 1)
    return lines


def test_doctor_says_the_memory_is_on_the_chroma_server(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("HMRCRITIC_HOME", str(tmp_path))
    monkeypatch.setenv("HMRCRITIC_CHROMA_URL", "http://alice:pw-s29-chroma@chroma.lab:8123")
    lines = _doctor_text(capsys)
    (memory,) = [line for line in lines if line[7:].startswith("memory ")]
    assert "Chroma server http://***@chroma.lab:8123 (not contacted; its local lock folder: " in memory
    assert str(tmp_path / "memory") in memory
    (folders,) = [line for line in lines if line[7:].startswith("folders ")]
    assert "its write lock and exploration records only" in folders
    assert "pw-s29-chroma" not in "\n".join(lines)
    report = doctor.run_checks(skip=tuple(n for n, _ in doctor.CHECKS if n != "folders"))
    assert report["checks"][0]["memory_server"] == "http://***@chroma.lab:8123"
    assert report["checks"][0]["folders"]["memory"]["path"] == str(tmp_path / "memory")  # the existing keys


def test_doctor_names_the_memory_folder_without_a_server(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("HMRCRITIC_HOME", str(tmp_path))
    (memory,) = [line for line in _doctor_text(capsys) if line[7:].startswith("memory ")]
    assert memory.endswith(f"{tmp_path / 'memory'} (on disk, not yet created)")


def test_doctor_judge_line_shows_the_concurrency(monkeypatch, capsys):
    monkeypatch.setenv("HMRCRITIC_VLM_CONCURRENCY", "7")
    report = doctor.run_checks(skip=tuple(n for n, _ in doctor.CHECKS if n != "judge"))
    judge = report["checks"][0]
    assert judge["settings"]["max_concurrency"] == 7  # what --json said all along
    assert "concurrency 7" in doctor._summary(judge)
    assert json.dumps(report)  # still JSON-safe
