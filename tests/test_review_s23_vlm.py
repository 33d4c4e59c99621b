"""Review s23 (the VLM judge path): what session 22's endpoint classification and error text still got wrong.

* a key an error page quotes across the 200th character of its text: the part before the cut stayed in view;
* a context overflow answered with a 500 (llama.cpp before its 400, ik_llama.cpp, LM Studio's MLX models): retried
  with the backoff to the same 500, reported as a "server error" without advice;
* a 404 for a model the server does not serve: the batch's stop said the endpoint was "not found there", which
  sent the user to an address that was right.

Against local servers on 127.0.0.1 (the network edge) with the real langchain-openai client.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from test_review_s16_vlm import _Quirky, _Raw  # noqa: E402
from test_review_s22_vlmdown import Canned, judge_for  # noqa: E402
from test_vlm_judge import make_ctx  # noqa: E402

from hmrcritic.agent.vlm import EndpointUnusableError, GroupTooLargeError  # noqa: E402
from hmrcritic.errors import JudgeError  # noqa: E402

KEY = "sk-s23-vlm-SECRET-7f3a9c2e51d04b86"


@pytest.mark.parametrize("pad", [170, 180, 190])
def test_a_key_quoted_across_the_cut_of_an_error_page_is_masked_whole(monkeypatch, pad):
    """A proxy's plain-text 401 page quoting the key: the page was cut at 200 characters before the key was
    masked, so a key straddling the cut was no longer found, and its first characters went into the error line
    (and on to failures.jsonl, the CLI's line, the retry warnings)."""
    monkeypatch.setenv("HMRCRITIC_API_KEY", KEY)
    page = _Raw(("x" * pad + " key " + KEY).encode(), "text/plain")
    quirky = _Quirky(lambda rec, stub: (401, {}, page), require_images=False)
    with quirky as srv, pytest.raises(EndpointUnusableError) as info:
        judge_for(srv.base_url, max_retries=0).critique(make_ctx((None, None)))
    line = str(info.value)
    assert "key" in line and "HTTP 401" in line
    assert KEY[:5] not in line  # not even its first 5 characters


@pytest.mark.parametrize("message", [
    "the request exceeds the available context size. try increasing the context size or enable context shift",
    "Context size has been exceeded.",
])
def test_a_context_overflow_answered_with_a_500_fails_at_once_with_advice(message):
    """llama.cpp answered a prompt over its context with a 500 (``exceed_context_size_error``) before it moved to
    a 400, and ik_llama.cpp and LM Studio's MLX models still do: each group was retried with the backoff, the same
    500 every time, and failed as a "server error" without a word on the context."""
    body = {"error": {"code": 500, "message": message, "type": "exceed_context_size_error",
                      "n_prompt_tokens": 9407, "n_ctx": 8192}}
    with Canned(500, body) as srv:
        judge = judge_for(srv.url, max_retries=2)
        with pytest.raises(JudgeError) as info:
            judge.critique(make_ctx((None, None), group_id="big0"))
        assert srv.count == 1  # not retried: a retry is as long as the first try
        assert judge.mode == "json_schema"
    assert type(info.value) is GroupTooLargeError  # stops no batch: a smaller group may fit
    assert "too long for the model's context" in str(info.value) and "HTTP 500" in str(info.value)


def test_a_500_that_is_not_about_the_context_is_still_retried():
    """The other side of the line: a plain 500 stays transient (retried, a plain JudgeError)."""
    body = {"error": {"code": 500, "message": "CUDA error: out of memory", "type": "server_error"}}
    with Canned(500, body) as srv:
        with pytest.raises(JudgeError) as info:
            judge_for(srv.url, max_retries=2).critique(make_ctx((None, None)))
        assert srv.count == 3
    assert type(info.value) is JudgeError and "server error" in str(info.value)


@pytest.mark.parametrize(("body", "model_named"), [
    ({"object": "error", "message": "The model `stub-vlm` does not exist.", "type": "NotFoundError",
      "param": None, "code": 404}, True),  # vLLM
    ({"error": "model \"stub-vlm\" not found, try pulling it first"}, True),  # Ollama
    ({"detail": "Not Found"}, False),  # a path the server does not serve (FastAPI)
])
def test_a_model_not_served_is_told_from_an_address_not_found(body, model_named):
    """Both are the endpoint's (every group meets them), but the batch's stop named the cause "not found there"
    for a wrong model name too, sending the user to check an address that was right."""
    ctxs = [make_ctx((None, None), group_id=f"g{i}") for i in range(5)]
    with Canned(404, body) as srv:
        out = judge_for(srv.url).critique_many(ctxs, return_exceptions=True)
        assert srv.count in (3, 4)
    assert all(isinstance(r, EndpointUnusableError) for r in out)
    skipped = [r for r in out if "did not try" in str(r)]
    assert skipped
    if model_named:
        assert {r.cause for r in out} == {"the model 'stub-vlm' is not served there"}
        assert "model 'stub-vlm' is not served there" in str(skipped[0])
    else:
        assert {r.cause for r in out} == {"not found there"}


def test_a_model_not_served_behind_a_long_address_keeps_the_servers_words():
    """The advice for a wrong address (the /v1 rule, the request's URL) came first for a 404 that names the model,
    and behind a gateway's longer address it filled the 300 characters of the line: "does not exist" was cut off,
    and the line sent the user to check an address that was right."""
    missing = {"error": {"message": "The model `stub-vlm` does not exist or you do not have access to it.",
                         "type": "invalid_request_error", "param": None, "code": "model_not_found"}}
    with Canned(404, missing) as srv:
        url = srv.url.removesuffix("/v1") + "/inference-gateway/team-shared-endpoints/openai/deployments/v1"
        with pytest.raises(EndpointUnusableError) as info:
            judge_for(url, max_retries=0).critique(make_ctx((None, None)))
    line = str(info.value)
    assert "does not exist" in line and "model 'stub-vlm' is not served" in line
    assert info.value.cause == "the model 'stub-vlm' is not served there"


def test_a_404_for_the_address_still_names_it():
    """An address the server does not serve keeps the /v1 advice and its cause."""
    quirky = _Quirky(lambda rec, stub: (404, {}, _Raw(b"404 page not found", "text/plain")), require_images=False)
    with quirky as srv, pytest.raises(EndpointUnusableError) as info:
        judge_for(srv.base_url, max_retries=0).critique(make_ctx((None, None)))
    assert "answer under /v1" in str(info.value) and info.value.cause == "not found there"


@pytest.mark.parametrize("field", ["overall", "physical_feasibility"])
def test_a_score_written_as_a_boolean_is_refused_not_read_as_one(field):
    """``true`` for a score was read as 1.0 (``float(True)``): a hypothesis the model marked, say, plausible was
    scored 1 out of 10 and ranked among the worst, silently; indices refuse booleans already. Refused, the answer
    is asked for again with the reason."""
    from hmrcritic.agent.vlm import Unparseable, normalise_critique

    entries = [{"index": i, "overall": 6.0 + i, "motion_structure": 7.0, "physical_feasibility": 7.0,
                "image_alignment": 7.0} for i in range(3)]
    entries[1][field] = True
    with pytest.raises(Unparseable, match=f"score entry 1 has {field} true, not a number"):
        normalise_critique({"scores": entries}, 3)
    entries[1][field] = 8.0  # the same answer with a number is read
    assert normalise_critique({"scores": entries}, 3).scores[1].overall == (8.0 if field == "overall" else 7.0)


@pytest.mark.parametrize(("status", "body", "words"), [
    (400, {"detail": "response_format is not supported"}, "response_format is not supported"),
    (422, {"detail": [{"loc": ["body", "messages"], "msg": "field required", "type": "value_error.missing"}]},
     '"msg": "field required"'),
    (400, {"error": {"code": 400, "type": "invalid_image_format"}}, "invalid_image_format"),
])
def test_a_json_error_body_without_a_message_field_is_shown(status, body, words):
    """FastAPI's ``{"detail": ...}`` (its validation errors a list) and an error object without "message": the
    client put no words of them in its message, and the line was a bare "HTTP 400: Error code: 400", for a failure
    that then stops a batch as the endpoint's fault."""
    with Canned(status, body) as srv, pytest.raises(EndpointUnusableError) as info:
        judge_for(srv.url, max_retries=0).critique(make_ctx((None, None)))
    assert f"HTTP {status}" in str(info.value) and words in str(info.value)


@pytest.mark.parametrize("code", ["content_policy_violation", "invalid_prompt"])
def test_a_group_flagged_by_openais_policy_check_does_not_stop_a_batch(code):
    """OpenAI refuses a prompt (an input photo among its images) flagged as violating its usage policy with a 400
    whose code says so: that judged the group, as Azure's content_filter does, yet counted as the endpoint's fault,
    and three such groups in a row marked every group after them "not tried"."""
    flagged = {"error": {"message": "Invalid prompt: your prompt was flagged as potentially violating our usage "
                                    "policy.", "type": "invalid_request_error", "param": None, "code": code}}
    ctxs = [make_ctx((None, None), group_id=f"g{i}") for i in range(5)]
    with Canned(400, flagged) as srv:
        out = judge_for(srv.url, max_retries=0).critique_many(ctxs, return_exceptions=True)
    assert all(type(r) is JudgeError for r in out)  # each group failed alone, none "not tried"
    assert not any("did not try" in str(r) for r in out) and "flagged" in str(out[0])
