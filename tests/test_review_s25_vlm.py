"""Review s25 (the VLM judge against real OpenAI-compatible servers): interop quirks that failed every group.

* vLLM's ``--reasoning-parser`` files the whole answer in the message's reasoning field (``reasoning_content``,
  newer vLLM ``reasoning``) with ``content`` null when the model writes no ``</think>``: the client drops that
  field, and every group failed as "the answer is empty" although the server had answered;
* a proxy in the environment (``HTTP_PROXY``, a corporate setting) took the requests to a server on 127.0.0.1:
  they never reached it, and the error said "cannot connect to http://127.0.0.1:…/v1 (Connection refused)" of a
  server that was up;
* a server or gateway that streams (server-sent events) although the request did not ask to: every group was
  retried as a 502 ("answered 200 with text/event-stream, not JSON") and failed, each answer whole.

Against local servers on 127.0.0.1 (the network edge) with the real langchain-openai client.
"""

from __future__ import annotations

import json
import socket
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from openai_stub_server import JSONAnswerServer, _completion, _user_text, good_critique  # noqa: E402
from test_review_s22_vlmdown import judge_for  # noqa: E402
from test_vlm_judge import WORST, assert_valid, make_ctx  # noqa: E402


def _scores(crit) -> list[float]:
    return [s.overall for s in crit.scores]


def _good_scores(paths) -> list[float]:
    """The scores of the same answer sent plainly (the reference: interop must not change them)."""
    with JSONAnswerServer(lambda body: (200, _completion("stub-vlm", content=json.dumps(
            good_critique(_user_text(body)))))) as srv:
        return _scores(judge_for(srv.url).critique(make_ctx(paths)))


# ------------------------------------------------------------------------------------- reasoning field


@pytest.mark.parametrize("field", ["reasoning_content", "reasoning"])
def test_an_answer_filed_whole_in_the_reasoning_field_is_read(images, field):
    """vLLM --reasoning-parser with no </think> in the output: content null, the answer in the reasoning field."""
    calls = []

    def answer(body):
        calls.append(1)
        out = _completion("stub-vlm", content=json.dumps(good_critique(_user_text(body))))
        message = out["choices"][0]["message"]
        message[field], message["content"] = message["content"], None
        return 200, out

    with JSONAnswerServer(answer) as srv:
        crit = judge_for(srv.url).critique(make_ctx(images))
    assert_valid(crit)
    assert _scores(crit) == _good_scores(images)  # scored as the same answer in content is
    assert len(calls) == 1


def test_reasoning_cut_at_the_output_limit_is_still_a_cut_not_an_answer(images):
    """Content null because the model thought until its limit: the drafts in the reasoning are no answer."""

    def answer(body):
        out = _completion("stub-vlm", content=None)
        out["choices"][0]["message"]["reasoning_content"] = "Let me think. " + json.dumps(
            good_critique(_user_text(body)))
        out["choices"][0]["finish_reason"] = "length"
        return 200, out

    with JSONAnswerServer(answer) as srv, pytest.raises(Exception, match="cut off at the endpoint's output limit"):
        judge_for(srv.url).critique(make_ctx(images))


# ------------------------------------------------------------------------------------------- proxies


@pytest.fixture
def dead_proxy(monkeypatch):
    """HTTP(S)_PROXY set to an address where nothing listens (a proxy unreachable from here)."""
    with socket.socket() as held:
        held.bind(("127.0.0.2", 0))
        url = f"http://127.0.0.2:{held.getsockname()[1]}"
        for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
            monkeypatch.setenv(name, url)
        for name in ("NO_PROXY", "no_proxy"):
            monkeypatch.delenv(name, raising=False)
        yield url


def test_a_local_server_is_reached_directly_whatever_the_proxy_settings(images, dead_proxy):
    seen = []

    def answer(body):
        seen.append(1)
        return 200, _completion("stub-vlm", content=json.dumps(good_critique(_user_text(body))))

    with JSONAnswerServer(answer) as srv:
        crit = judge_for(srv.url, max_retries=0).critique(make_ctx(images))
    assert_valid(crit)
    assert seen
    assert min(range(len(crit.scores)), key=lambda i: crit.scores[i].overall) == WORST


def test_a_remote_endpoint_still_goes_through_the_proxy(dead_proxy):
    """Only this machine's addresses bypass it: a remote endpoint still uses the proxy the environment names."""
    from hmrcritic.agent.vlm import _http_client

    client = _http_client("http://10.1.2.3:8000/v1")
    try:
        assert any(t is not None for t in client._mounts.values())  # the proxy's transport
    finally:
        client.close()


# ------------------------------------------------------------------------------------------ streaming


class _Streaming(JSONAnswerServer):
    """A server that answers every chat request as server-sent events (as a gateway forcing ``stream`` does),
    the content cut into small chunks, ``usage`` in the last chunk only."""

    def __init__(self, make_text):
        def answer(body: dict) -> tuple[int, bytes, str]:
            text = make_text(body)
            base = {"id": "chatcmpl-s", "object": "chat.completion.chunk", "created": 1, "model": "stub-vlm"}
            events = [dict(base, choices=[{"index": 0, "delta": {"role": "assistant", "content": ""},
                                           "finish_reason": None}])]
            events += [dict(base, choices=[{"index": 0, "delta": {"content": text[i:i + 7]},
                                            "finish_reason": None}]) for i in range(0, len(text), 7)]
            events.append(dict(base, choices=[{"index": 0, "delta": {}, "finish_reason": "stop"}],
                               usage={"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}))
            data = ("".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n").encode()
            return 200, data, "text/event-stream; charset=utf-8"

        super().__init__(answer)


def test_an_answer_streamed_unasked_is_read_whole(images):
    with _Streaming(lambda body: json.dumps(good_critique(_user_text(body)))) as srv:
        crit = judge_for(srv.url, max_retries=0).critique(make_ctx(images))
    assert_valid(crit)
    assert _scores(crit) == _good_scores(images)


def test_a_streamed_answer_that_is_garbage_is_still_unusable(images):
    from hmrcritic.errors import JudgeError

    with _Streaming(lambda body: "no idea") as srv, pytest.raises(JudgeError, match="unusable answer"):
        judge_for(srv.url, max_retries=0).critique(make_ctx(images))
