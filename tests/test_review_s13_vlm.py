"""Review s13 (VLM judge): the key as it can be sent, 408/409/422 answers, thinking models' text answers and
hypothesis indices that are not integers. Against the local stub server (tests/openai_stub_server.py) with the
real langchain-openai client, through the helpers of tests/test_vlm_judge.py."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from openai_stub_server import StubOpenAIServer, _error  # noqa: E402
from test_vlm_judge import WORST, assert_valid, make_ctx, make_judge  # noqa: E402

from hmrcritic.agent.schema import AXES  # noqa: E402
from hmrcritic.agent.vlm import normalise_critique  # noqa: E402
from hmrcritic.errors import InputError, JudgeError  # noqa: E402

KEY = "sk-hmrcritic-review-7c1e5d"


class _Scripted(StubOpenAIServer):
    """The stub, with statuses it does not script: ``first`` answers the first requests with these statuses;
    ``reject_as`` replaces the stub's 400 rejections; ``think`` puts a reasoning block before every answer."""

    def __init__(self, *, first=(), reject_as=None, think=None, **kw):
        super().__init__(**kw)
        self.first, self.reject_as, self.think = list(first), reject_as, think

    def _answer(self, rec):
        if self.first:
            status = self.first.pop(0)
            return status, {"Retry-After": "0"}, _error(f"status {status}, try again", status)
        status, headers, body = super()._answer(rec)
        if status == 400 and self.reject_as:
            status = self.reject_as
        if self.think and status == 200 and body["choices"][0]["message"].get("content"):
            msg = body["choices"][0]["message"]
            msg["content"] = self.think + "\n" + msg["content"]
        return status, headers, body


# ------------------------------------------------------------------------------------------------ the key


@pytest.mark.parametrize("junk", ["\r", "\n", " "])
def test_a_key_with_surrounding_whitespace_is_sent_without_it(images, monkeypatch, caplog, junk):
    """``export HMRCRITIC_API_KEY=$(cat key.txt)`` of a Windows file keeps a ``\\r``: the HTTP client refused the
    header, every attempt failed as "cannot connect to <endpoint>", and the openai client's debug log quoted the
    header with the key in it."""
    monkeypatch.setenv("HMRCRITIC_API_KEY", KEY + junk)
    caplog.set_level(logging.DEBUG)
    with StubOpenAIServer() as srv:
        assert_valid(make_judge(srv, max_retries=1).critique(make_ctx(images)))
    assert [r.auth for r in srv.requests] == [f"Bearer {KEY}"]
    assert KEY not in caplog.text


@pytest.mark.parametrize("bad", ["\u2026", " ", "\t"])
def test_a_key_that_cannot_be_sent_is_refused_up_front_without_showing_it(images, monkeypatch, bad):
    """A typographic character (pasted from a document) failed each attempt as a "malformed answer"
    (UnicodeEncodeError) after all the retries; a space or tab inside failed as "cannot connect"."""
    monkeypatch.setenv("HMRCRITIC_API_KEY", KEY[:8] + bad + KEY[8:])
    with StubOpenAIServer() as srv, pytest.raises(InputError, match="API key") as info:
        make_judge(srv, max_retries=1)
    assert srv.requests == []
    msg = str(info.value)
    assert KEY[:8] not in msg and KEY[8:] not in msg and "position 9 of 27" in msg


# ------------------------------------------------------------------------------------------------ statuses


@pytest.mark.parametrize("status", [408, 409])
def test_request_timeout_and_conflict_answers_are_retried(images, status):
    """408 (a proxy's request timeout) and 409 (a lock timeout) are retried by the openai client itself; with
    its retries off (max_retries=0) they failed the group at once."""
    with _Scripted(first=[status]) as srv:
        assert_valid(make_judge(srv).critique(make_ctx(images)))
    assert srv.arrivals == 2
    with _Scripted(first=[status] * 3) as srv, pytest.raises(JudgeError, match=f"HTTP {status}.*3 attempts|"
                                                                                   f"3 attempts.*HTTP {status}"):
        make_judge(srv, max_retries=2).critique(make_ctx(images, group_id="g408"))


def test_a_server_that_rejects_structured_output_with_422_gets_the_simpler_forms(images):
    """Servers built on request validation (axum, FastAPI; TGI among them) reject an unknown request form with
    422, not 400: the judge failed at the first request instead of stepping down to tools, then text."""
    with _Scripted(reject_as=422, reject_response_format=True) as srv:
        judge = make_judge(srv)
        assert_valid(judge.critique(make_ctx(images)))
        assert judge.mode == "function_calling"
    assert [(r.mode, r.status) for r in srv.requests] == [("json_schema", 422), ("tools", 200)]
    with _Scripted(reject_as=422, reject_response_format=True, reject_tools=True) as srv:
        judge = make_judge(srv)
        assert_valid(judge.critique(make_ctx(images)))
    assert [r.mode for r in srv.requests] == ["json_schema", "tools", "text"] and judge.mode == "text"


# ------------------------------------------------------------------------------------------------ answers


@pytest.mark.parametrize("think", [
    '<think>The answer shape is {"index": 0, "overall": 7.0}; hyp 3 looks worst.</think>',
    'Let me draft {"scores": [{"index": 0, "overall": 9}]} first... no, all five.</think>',  # template opened it
])
def test_a_thinking_models_reasoning_is_not_taken_for_the_answer(images, think):
    """A reasoning model writes its thoughts (quoting the example entry, drafting scores as JSON) before the
    answer; the first JSON object of the whole text was taken and rejected on every retry."""
    with _Scripted(think=think, reject_response_format=True, reject_tools=True) as srv:
        crit = make_judge(srv, max_retries=1).critique(make_ctx(images))
    assert_valid(crit)
    assert min(crit.scores, key=lambda s: s.overall).index == WORST
    assert [r.status for r in srv.requests if r.mode == "text"] == [200]  # used at once, no retry


@pytest.mark.parametrize("indices", [[0, 1.9, 2], [0, True, 2], [0, "1.5", 2]])
def test_indices_that_are_not_integers_are_rejected_not_truncated(indices):
    """``int(1.9)`` is 1 and ``int(True)`` is 1: scores were paired with hypotheses the answer never named."""
    data = {"scores": [{"index": i, "overall": 5 + k} for k, i in enumerate(indices)]}
    with pytest.raises(ValueError, match="not integers"):
        normalise_critique(data, 3)
    ok = normalise_critique({"scores": [{"index": i, "overall": 5} for i in (0, 1.0, "2")]}, 3)
    assert [s.index for s in ok.scores] == [0, 1, 2]


def test_overall_on_0_100_beside_axes_on_0_10_keeps_the_ranking():
    """The scale was decided once for all fields: with `overall` on the paper's 0-100 and three axes on 0-10 the
    pooled median is on 0-10, so every overall was clamped to 10 and the group's ranking became a tie."""
    pairs = [(85, 8), (40, 4), (62, 6), (20, 2)]
    data = [{"index": i, "overall": o, **dict.fromkeys(AXES, a)} for i, (o, a) in enumerate(pairs)]
    crit = normalise_critique(data, 4)
    assert [s.overall for s in crit.scores] == pytest.approx([8.5, 4.0, 6.2, 2.0])
    assert [s.motion_structure for s in crit.scores] == pytest.approx([8, 4, 6, 2])
    # unchanged: a stray value just above 10 in a 0-10 answer (also a single hypothesis) is clamped, not rescaled
    assert normalise_critique([{"overall": 10.5, **dict.fromkeys(AXES, 9)}], 1).scores[0].overall == 10.0
    near = normalise_critique([{"overall": v} for v in (10.5, 7, 6)], 3)
    assert [s.overall for s in near.scores] == pytest.approx([10.0, 7.0, 6.0])


# ------------------------------------------------------------------------------------------------ redact


@pytest.mark.parametrize("url", ["http://admin:p@ss@chroma:8000", "https://user:a@b@c@host/v1?x=1"])
def test_a_password_with_an_at_sign_is_masked_whole(url):
    """The user-info mask stopped at the first "@", where URL parsers (and the HTTP client that sends the Basic
    auth) read up to the last one: ``p@ss`` showed as ``***@ss@chroma``."""
    from urllib.parse import urlsplit

    from hmrcritic.redact import redact_url, scrub

    password = urlsplit(url).password
    host = urlsplit(url).hostname
    for shown in (scrub(url), redact_url(url), scrub(f"cannot reach {url}: refused")):
        assert f"***@{host}" in shown and password.split("@")[-1] + "@" not in shown, shown
    assert scrub("http://host:8000/v1, mail a@b.example") == "http://host:8000/v1, mail a@b.example"
