"""Review s33 (the VLM judge): the lines a user reads when an endpoint fails, against servers on 127.0.0.1.

* an HTTP error said its status twice ("HTTP 401: Error code: 401 - Incorrect API key provided"): the openai
  client's own "Error code: N" prefix followed ours;
* a group that met a 429 on every try ended at the server's "rate limit reached" and named no setting; a 5xx on
  every try, and a 404 naming the model, likewise ended without a next step;
* a reply that is no chat completion read as the client library's exception ("malformed answer (IndexError: list
  index out of range)");
* an export stopped by an unusable endpoint said so in one line of about 600 characters: the address three times,
  the group twice (by both its ids), the advice twice ("is a server running there? Else correct the address" and
  "fix the endpoint").
"""

from __future__ import annotations

import logging
import re
import socket

import pytest
from openai_stub_server import JSONAnswerServer, StubOpenAIServer, _error
from test_export import cfg_for, make_inputs
from test_review_s22_vlmdown import SCORER, Canned, judge_for, model_path, vlm_env  # noqa: F401 - a fixture
from test_vlm_judge import make_ctx

from hmrcritic.agent.vlm import EndpointUnusableError
from hmrcritic.alignment import export as E
from hmrcritic.alignment.export import export
from hmrcritic.errors import JudgeError

# ------------------------------------------------------------------------------------ the status said once


@pytest.mark.parametrize("status", [400, 401, 403, 404, 429, 500, 503])
def test_an_http_error_says_its_status_once_with_the_servers_words(status, monkeypatch):
    monkeypatch.setenv("HMRCRITIC_API_KEY", "sk-s33-status")
    with Canned(status, _error("the server's own words", status)) as srv, pytest.raises(JudgeError) as info:
        judge_for(srv.url, max_retries=0).critique(make_ctx((None, None)))
    line = str(info.value)
    assert "Error code" not in line, line
    assert f"HTTP {status}: the server's own words" in line, line


def test_a_status_without_words_is_said_alone():
    """No message in the body: the status alone, not "HTTP 401: Error code: 401"."""
    with Canned(500, {}) as srv, pytest.raises(JudgeError) as info:
        judge_for(srv.url, max_retries=0).critique(make_ctx((None, None)))
    line = str(info.value)
    assert "(HTTP 500)" in line and "Error code" not in line, line


def test_a_body_that_is_no_json_is_said_after_the_status_once():
    page = b"<html><body><h1>502 Bad Gateway</h1> upstream went away</body></html>"
    with JSONAnswerServer(lambda _body: (502, page, "text/html")) as srv, pytest.raises(JudgeError) as info:
        judge_for(srv.url, max_retries=0).critique(make_ctx((None, None)))
    line = str(info.value)
    assert "HTTP 502: 502 Bad Gateway upstream went away" in line and "Error code" not in line, line


# ---------------------------------------------------------------------- a next step once the retries are spent


def test_a_rate_limit_on_every_try_names_the_settings_that_bear_on_it(caplog):
    srv = StubOpenAIServer(default="429", retry_after="0", require_images=False)
    with srv, caplog.at_level(logging.WARNING, logger="hmrcritic.agent.vlm"), pytest.raises(JudgeError) as info:
        judge_for(srv.base_url, max_retries=1, max_concurrency=3).critique(make_ctx((None, None)))
    line = str(info.value)
    assert "after 2 attempts: rate limited (HTTP 429: rate limit reached, slow down)" in line, line
    assert "HMRCRITIC_VLM_CONCURRENCY, now 3" in line and "HMRCRITIC_VLM_RETRIES, now 1" in line, line
    # the retry's warning is no place for "kept limiting": one 429 amid answers is no reason to change a setting
    assert "rate limited" in caplog.text and "HMRCRITIC_VLM_CONCURRENCY" not in caplog.text, caplog.text


def test_a_spent_quota_names_no_rate_setting():
    """OpenAI's insufficient_quota is a 429 no wait cures: fewer requests at once would not help either."""
    body = {"error": {"message": "You exceeded your current quota.", "type": "insufficient_quota",
                      "code": "insufficient_quota", "param": None}}
    with Canned(429, body) as srv, pytest.raises(EndpointUnusableError) as info:
        judge_for(srv.url, max_retries=2).critique(make_ctx((None, None)))
    assert "quota is used up" in str(info.value) and "HMRCRITIC_VLM_CONCURRENCY" not in str(info.value)


def test_a_server_error_on_every_try_says_where_to_look():
    srv = StubOpenAIServer(default="503", retry_after="0", require_images=False)
    with srv, pytest.raises(JudgeError) as info:
        judge_for(srv.base_url, max_retries=1).critique(make_ctx((None, None)))
    line = str(info.value)
    assert "server error (HTTP 503: model is loading, try again)" in line, line
    assert "the server's own log says why" in line and "HMRCRITIC_VLM_RETRIES, now 1" in line, line


def test_a_model_not_served_says_where_to_set_the_name():
    body = {"error": {"message": "The model `stub-vlm` does not exist.", "type": "NotFoundError", "code": 404}}
    with Canned(404, body) as srv, pytest.raises(EndpointUnusableError) as info:
        judge_for(srv.url).critique(make_ctx((None, None)))
    line = str(info.value)
    # the server's full stop gives way to the advice's semicolon (it read "does not exist.; give ...")
    said = ("the model 'stub-vlm' is not served there: HTTP 404: The model `stub-vlm` does not exist; give the name "
            "of a model it serves (--vlm-model or HMRCRITIC_VLM_MODEL; `hmrcritic doctor --probe` lists them)")
    assert said in line, line


@pytest.mark.parametrize("bad", ["empty_choices", "not_completion"])
def test_a_reply_that_is_no_chat_completion_says_so(bad):
    with StubOpenAIServer(default=bad, require_images=False) as srv, pytest.raises(JudgeError) as info:
        judge_for(srv.base_url, max_retries=0).critique(make_ctx((None, None)))
    assert "malformed answer, not a chat completion (" in str(info.value), str(info.value)


# ------------------------------------------------------------------------------------- the export's stop line


def _closed_port() -> tuple[socket.socket, str]:
    held = socket.socket()
    held.bind(("127.0.0.1", 0))  # bound, not listening: nothing answers there
    return held, f"http://127.0.0.1:{held.getsockname()[1]}/v1"


def test_the_exports_stop_line_says_the_cause_and_the_advice_once(model_path, tmp_path, monkeypatch):  # noqa: F811
    held, url = _closed_port()
    with held:
        vlm_env(monkeypatch, url)
        out = tmp_path / "ds"
        with pytest.raises(JudgeError, match=f"export stopped.*{url}.*nothing answers there") as info:
            export(cfg_for(out, model_path, judge="vlm", score_group=SCORER), inputs=make_inputs(5))
    line = str(info.value)
    assert "\n" not in line
    assert line.count(url) == 1, line  # was 3
    assert line.count("is a server running there?") == 1 and "fix the endpoint" not in line, line
    assert line.count("Connection refused") == 1 and "VLM judge failed for group" not in line, line
    assert re.search(r"\. Last, group img002-\w+: cannot connect \(", line), line
    assert f"No group was written to {out} yet; the 2 not attempted are listed in {out / 'failures.jsonl'}" in line
    assert line.endswith("once the endpoint works, run the same command again to continue"), line


def test_the_exports_stop_line_on_a_refused_key(model_path, tmp_path, monkeypatch):  # noqa: F811
    with StubOpenAIServer(default="401_echo", require_images=False) as srv:
        vlm_env(monkeypatch, srv.base_url)
        srv.push("good")
        out = tmp_path / "ds"
        with pytest.raises(JudgeError, match="export stopped: 3 groups in a row") as info:
            export(cfg_for(out, model_path, judge="vlm", score_group=SCORER), inputs=make_inputs(6))
    line = str(info.value)
    assert line.count(srv.base_url) == 1 and "key is refused" in line and "Error code" not in line, line
    assert line.count("HTTP 401") == 1 and line.count("set a valid key") == 1, line
    assert f"The 1 group(s) written to {out} are kept; the 2 not attempted" in line, line


def test_the_last_failure_keeps_a_path_under_the_endpoint():
    """A 404's "at <base>/chat/completions" says which address was asked: only the base URL said whole goes."""
    url = "http://127.0.0.1:9/v1"
    error = (f"EndpointUnusableError: VLM judge failed for group export-img0-ab after 1 attempt: at {url}/chat/"
             f"completions (OpenAI-compatible servers answer under /v1): HTTP 404: no route")
    assert E._last_failure(error, url) == f"at {url}/chat/completions (OpenAI-compatible servers answer under /v1): " \
                                        "HTTP 404: no route"
    assert E._last_failure("AssetError: the memory server at http://h:8000 cannot be reached", "") == \
        "AssetError: the memory server at http://h:8000 cannot be reached"
