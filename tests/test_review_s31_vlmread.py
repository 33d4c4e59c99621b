"""Review s31: a line-by-line logic read of the VLM judge (hmrcritic/agent/vlm.py, prompts.py).

Each test shows, against a local OpenAI-compatible server on 127.0.0.1 and the real langchain-openai/openai
client, a way in which the judge's documented behaviour and what it did differed:

* under ``json_schema`` (the default mode) langchain-openai sends the request through the openai client's
  ``chat.completions.parse``, which raises ``LengthFinishReasonError`` on any ``finish_reason == "length"``
  before the judge sees the answer: a complete answer padded with whitespace up to the output limit (local
  servers' JSON modes do so) failed the group outright, although the judge reads such answers in the other
  modes (only an unusable answer is blamed on the cut);
* under function calling the answer was taken as langchain validated it with pydantic, which reads ``true`` as
  1 (a score of 1 out of 10, or index 1): the judge's own reader refuses booleans for that reason, and did so in
  the other modes only.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from openai_stub_server import JSONAnswerServer, _completion, _error, _user_text, good_critique  # noqa: E402
from test_review_s22_vlmdown import judge_for  # noqa: E402
from test_vlm_judge import assert_valid, make_ctx  # noqa: E402

from hmrcritic.errors import JudgeError  # noqa: E402


def _length_answer(content: str) -> dict:
    out = _completion("stub-vlm", content=content)
    out["choices"][0]["finish_reason"] = "length"
    out["usage"]["completion_tokens"] = 777
    return out


# ------------------------------------------------------------------------- json_schema, finish_reason length


def test_a_complete_json_schema_answer_padded_to_the_token_limit_is_used(images):
    """vLLM's guided decoding / Ollama's JSON mode pad a whole answer with whitespace until max_tokens: every
    score is there, finish_reason is "length". Under json_schema the openai client raised LengthFinishReasonError
    on it and the judge failed the group at once ("cut off at the endpoint's output limit")."""
    seen = []

    def answer(body):
        seen.append("response_format" in body)
        return 200, _length_answer(json.dumps(good_critique(_user_text(body))) + "\n" * 400)

    with JSONAnswerServer(answer) as srv:
        crit = judge_for(srv.url).critique(make_ctx(images))
    assert_valid(crit)
    assert seen == [True]  # one request, in json_schema mode: neither retried nor resent in a simpler form


def test_a_json_schema_answer_really_cut_mid_way_still_fails_at_once(images):
    """The other half of the rule: an answer the limit cut in two is unusable, and a retry would cut it again."""
    calls = []

    def answer(body):
        calls.append(1)
        payload = json.dumps(good_critique(_user_text(body)))
        return 200, _length_answer(payload[: len(payload) // 2])

    with JSONAnswerServer(answer) as srv, pytest.raises(JudgeError, match="finish_reason=length, 777 tokens"):
        judge_for(srv.url, max_retries=2).critique(make_ctx(images))
    assert len(calls) == 1


# ------------------------------------------------------------------------- function calling, booleans


def _tools_only(entry_patch: dict):
    """A server without json_schema (400 to response_format) that answers the tool call with ``entry_patch``
    applied to hypothesis 0 of a good critique."""
    modes = []

    def answer(body):
        if "response_format" in body:
            modes.append("json_schema")
            return 400, _error("response_format json_schema is not supported by this server", 400)
        modes.append("tools" if body.get("tools") else "text")
        crit = good_critique(_user_text(body))
        crit["scores"][0].update(entry_patch)
        if body.get("tools"):
            return 200, _completion("stub-vlm", tool=(body["tools"][0]["function"]["name"], json.dumps(crit)))
        return 200, _completion("stub-vlm", content=json.dumps(crit))

    return answer, modes


@pytest.mark.parametrize("patch", [{"overall": True}, {"physical_feasibility": False}],
                         ids=["overall-true", "axis-false"])
def test_a_boolean_score_is_refused_under_function_calling_as_in_text(images, patch):
    """pydantic's lax mode reads true as 1.0: the tool call's validated model was used as it was, so
    ``"overall": true`` became a score of 1 (the ranking silently changed); the judge's own reader refuses it."""
    answer, modes = _tools_only(patch)
    with JSONAnswerServer(answer) as srv, pytest.raises(JudgeError, match="not a number"):
        judge_for(srv.url, max_retries=0).critique(make_ctx(images))
    assert modes == ["json_schema", "tools"]


def test_a_boolean_index_is_refused_under_function_calling(images):
    """Likewise ``"index": true`` (pydantic: 1) for hypothesis 0 paired its scores with hypothesis 1 when the
    answer happened to name every other index but 1 (here: 0 is replaced by true, 1 is dropped)."""
    answer, modes = _tools_only({"index": True})

    def answer_dup(body):
        status, out = answer(body)
        if body.get("tools"):
            call = out["choices"][0]["message"]["tool_calls"][0]["function"]
            crit = json.loads(call["arguments"])
            crit["scores"][1]["index"] = 0  # true + 0, 2, 3, 4: a permutation only when true reads as 1
            call["arguments"] = json.dumps(crit)
        return status, out

    with JSONAnswerServer(answer_dup) as srv, pytest.raises(JudgeError, match="not integers"):
        judge_for(srv.url, max_retries=0).critique(make_ctx(images))
    assert modes == ["json_schema", "tools"]


def test_a_good_tool_call_answer_is_still_used(images):
    """The fix reads the tool call's own arguments: a conforming answer scores as it did."""
    answer, modes = _tools_only({})
    with JSONAnswerServer(answer) as srv:
        crit = judge_for(srv.url, max_retries=0).critique(make_ctx(images))
    assert_valid(crit)
    assert modes == ["json_schema", "tools"]


# ------------------------------------------------------------------------- context overflow, not a 400


@pytest.mark.parametrize("status", [500, 413])
def test_a_context_overflow_that_is_no_400_is_told_with_advice(images, status):
    """langchain-openai turns any API error but a 400 whose words say "exceeds the context window" into
    OpenAIAPIContextOverflowError, which carries no status: it reached the judge's catch-all and the group failed
    with the bare server line, as a plain JudgeError, where the 500 and 413 branches give the advice and mark the
    group too large (a smaller one may pass; a batch does not stop for it)."""
    from hmrcritic.agent.vlm import GroupTooLargeError

    calls = []

    def answer(_body):
        calls.append(1)
        return status, _error("Input exceeds the context window of this model", status)

    with JSONAnswerServer(answer) as srv, pytest.raises(GroupTooLargeError) as info:
        judge_for(srv.url, max_retries=2).critique(make_ctx(images))
    assert "too long for the model's context" in str(info.value) and f"HTTP {status}" in str(info.value)
    assert info.value.endpoint_unusable is False and len(calls) == 1  # not retried, not resent in other forms
