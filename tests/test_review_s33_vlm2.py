"""Review s33 (the VLM judge), second part: the step-down warnings, the advice after unusable answers, and the
retry paths, against servers on 127.0.0.1.

* a request refused in every form (the request at fault, not the form) first warned "the endpoint refused
  json_schema requests; sending function_calling from now on", then the same for text, and only then failed with
  the error that showed the forms were not at fault: the warnings said what was not so. A step-down is now warned
  about when the call ends with it standing (answered in a simpler form, or failed for another reason);
* "unusable answer (no JSON object in the answer)" after the retries named no next step;
* the retry paths (see the tests below for each finding).
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import threading

import pytest
from openai_stub_server import StubOpenAIServer, _completion, _user_text, good_critique
from test_review_s22_vlmdown import judge_for
from test_review_s32_vlm import _ByForm
from test_vlm_judge import assert_valid, make_ctx

from hmrcritic.agent.vlm import EndpointUnusableError
from hmrcritic.errors import JudgeError

LOG = "hmrcritic.agent.vlm"


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and r.name == LOG]


def _answer_json(body: dict, form: str) -> tuple[int, dict]:
    crit = json.dumps(good_critique(_user_text(body)))
    if form == "function_calling":
        return 200, _completion("stub-vlm", tool=(body["tools"][0]["function"]["name"], crit))
    return 200, _completion("stub-vlm", content=crit)


# ------------------------------------------------------------------------------------- the step-down warnings


def test_a_request_refused_in_every_form_warns_of_no_step_down(caplog):
    """The request is at fault (an image too large): no warning says the endpoint refuses a form; the error says
    what happened, and the next group starts on json_schema again."""
    with StubOpenAIServer(default="400", require_images=False) as srv, caplog.at_level(logging.INFO, LOG):
        judge = judge_for(srv.base_url, max_retries=0)
        with pytest.raises(EndpointUnusableError) as info:
            judge.critique(make_ctx((None, None)))
        assert srv.arrivals == 3  # json_schema, function calling, text: the policy is unchanged
    assert "endpoint rejected the request (HTTP 400: image too large for this model)" in str(info.value)
    assert not [w for w in _warnings(caplog) if "from now on" in w or "refused json_schema" in w], _warnings(caplog)
    assert judge.mode == "json_schema"


def test_a_step_down_that_stands_is_warned_once_after_the_simpler_form_answered(caplog):
    """The server lacks json_schema: one warning, said once the function-calling request was answered (so the form
    is known to be at fault), not once per group."""
    def answer(form, group, body):
        return (400, {"detail": "response_format is not supported"}) if form == "json_schema" else \
            _answer_json(body, form)

    with _ByForm(answer) as srv, caplog.at_level(logging.INFO, LOG):
        judge = judge_for(srv.url, max_retries=0)
        for gid in ("g0", "g1"):
            assert_valid(judge.critique(make_ctx((None, None), group_id=gid)))
        assert srv.sent("g0") == ["json_schema", "function_calling"] and srv.sent("g1") == ["function_calling"]
    assert _warnings(caplog) == ["vlm judge: the endpoint refused json_schema requests; sending function_calling "
                                 "from now on"], _warnings(caplog)


def test_two_forms_refused_are_warned_in_one_line_naming_the_form_that_answered(caplog):
    def answer(form, group, body):
        return (400, {"detail": f"{form} is not supported"}) if form != "text" else _answer_json(body, form)

    with _ByForm(answer) as srv, caplog.at_level(logging.INFO, LOG):
        judge = judge_for(srv.url, max_retries=0)
        assert_valid(judge.critique(make_ctx((None, None), group_id="g0")))
    assert _warnings(caplog) == ["vlm judge: the endpoint refused json_schema and function_calling requests; "
                                 "sending text from now on"], _warnings(caplog)
    assert judge.mode == "text"


def test_a_step_down_that_stands_after_another_failure_is_still_warned(caplog):
    """json_schema refused, then function calling timed out: the refusal stands (the judge sends function calling
    from now on), so the user is told, although this group failed."""
    def answer(form, group, body):
        if form == "json_schema":
            return 400, {"detail": "response_format is not supported"}
        return 503, {"error": {"message": "loading", "type": "server_error", "code": None, "param": None}}

    with _ByForm(answer) as srv, caplog.at_level(logging.INFO, LOG):
        judge = judge_for(srv.url, max_retries=0)
        with pytest.raises(JudgeError, match="server error"):
            judge.critique(make_ctx((None, None), group_id="g0"))
    assert judge.mode == "function_calling"
    assert [w for w in _warnings(caplog) if "from now on" in w] == [
        "vlm judge: the endpoint refused json_schema requests; sending function_calling from now on"]


def test_many_groups_stepping_down_at_once_warn_once(caplog):
    """Four groups on four threads are each refused json_schema before any is answered: one warning in all."""
    arrived = threading.Barrier(4, timeout=5)

    def hold(form, group):
        if form == "json_schema":
            with contextlib.suppress(threading.BrokenBarrierError):
                arrived.wait()

    def answer(form, group, body):
        return (400, {"detail": "response_format is not supported"}) if form == "json_schema" else \
            _answer_json(body, form)

    with _ByForm(answer, hold) as srv, caplog.at_level(logging.INFO, LOG):
        judge = judge_for(srv.url, max_retries=0, max_concurrency=4)
        out = judge.critique_many([make_ctx((None, None), group_id=f"g{i}") for i in range(4)])
    for crit in out:
        assert_valid(crit)
    assert [w for w in _warnings(caplog) if "from now on" in w] == [
        "vlm judge: the endpoint refused json_schema requests; sending function_calling from now on"]


# ------------------------------------------------------------------------------ an answer without JSON, at the end


def test_answers_without_json_on_every_try_name_the_setting_that_can_help(caplog):
    """A model that answers in prose whatever it is asked: the line names the model setting, once the retries are
    spent (not in the retry's warning: one such answer amid good ones is no reason to change the model)."""
    with StubOpenAIServer(default="garbage", require_images=False) as srv, caplog.at_level(logging.WARNING, LOG):
        with pytest.raises(JudgeError) as info:
            judge_for(srv.base_url, max_retries=1).critique(make_ctx((None, None)))
        assert srv.arrivals == 2
    line = str(info.value)
    assert type(info.value) is JudgeError  # a group's failure, as before: a batch does not stop for it
    assert line.endswith("after 2 attempts: unusable answer (no JSON object in the answer); the model does not "
                         "answer in JSON as asked: use a model that follows JSON instructions (--vlm-model or "
                         "HMRCRITIC_VLM_MODEL)"), line
    assert "no JSON object" in caplog.text and "HMRCRITIC_VLM_MODEL" not in caplog.text, caplog.text


def test_another_unusable_answer_gets_no_json_advice():
    """The advice is for an answer without JSON only: a critique of the wrong hypotheses is JSON."""
    with StubOpenAIServer(default="wrong_count", require_images=False) as srv, pytest.raises(JudgeError) as info:
        judge_for(srv.base_url, max_retries=0).critique(make_ctx((None, None)))
    assert "expected" in str(info.value) and "HMRCRITIC_VLM_MODEL" not in str(info.value), str(info.value)


# ------------------------------------------------------------------------------------------- the retry paths


def test_a_retry_after_an_answer_without_json_spells_out_the_shape():
    """A server that takes response_format and ignores it (a proxy dropping it, an older local server): the model
    never sees the schema and answers in prose. The retry said "answer again" and nothing of the shape, so each
    retry got the same prose; it now carries the shape as text mode's prompt does, which such a model follows."""
    asked: list[bool] = []

    def answer(form, group, body):
        shape = "Reply with ONLY a JSON object" in _user_text(body)
        asked.append(shape)
        if not shape:  # the schema went nowhere: the model writes prose
            return 200, _completion("stub-vlm", content="All of them look plausible to me; the first is best.")
        return _answer_json(body, "text")

    with _ByForm(answer) as srv:
        crit = judge_for(srv.url, max_retries=2).critique(make_ctx((None, None)))
        assert srv.sent("g0") == ["json_schema", "json_schema"]  # the form stays: the server took it
    assert_valid(crit)
    assert asked == [False, True]  # the first request as before: the shape is asked for on the retry only


def test_an_https_address_for_a_plain_http_server_is_not_retried(caplog):
    """The handshake fails on what the two ends are ("wrong version number"): every retry failed the same way,
    each after its backoff, for every group until a batch stopped. It fails at once, said as before."""
    with StubOpenAIServer(require_images=False) as srv, caplog.at_level(logging.WARNING, LOG):
        url = srv.base_url.replace("http://", "https://")
        with pytest.raises(EndpointUnusableError) as info:
            judge_for(url, max_retries=3).critique(make_ctx((None, None)))
        assert srv.arrivals == 0
    assert "after 1 attempt: cannot connect to" in str(info.value), str(info.value)
    assert "an https address for a plain http server" in str(info.value)
    assert info.value.cause.startswith("the TLS handshake fails")
    assert not [w for w in _warnings(caplog) if "retrying" in w], _warnings(caplog)


def test_a_refused_connection_is_still_retried():
    """A server not up yet (vLLM binds its port once the model is loaded) may be up on the next try."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{held.getsockname()[1]}/v1"
        with pytest.raises(EndpointUnusableError) as info:
            judge_for(url, max_retries=2).critique(make_ctx((None, None)))
    assert "after 3 attempts: cannot connect to" in str(info.value), str(info.value)
