"""Review s20 (VLM judge against real servers' quirks, round 2): loose JSON (comments, trailing commas, Python's
single quotes), a tool call written out as text, scores keyed by hypothesis or on a 0-1 scale, rule ids cited as the
prompt shows them, an unclosed or empty ``<think>`` answer, a model looping on "[[[[", OpenAI's insufficient_quota
429, a 200 that is an HTML page, LM Studio's 200 for an address it does not serve. Against the local stub server
(tests/openai_stub_server.py) with the real langchain-openai client."""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from openai_stub_server import _completion, _user_text, good_critique  # noqa: E402
from test_review_s16_vlm import _content, _Quirky, _Raw, _worst_is_lowest  # noqa: E402
from test_vlm_judge import make_ctx, make_judge  # noqa: E402

from hmrcritic.agent.schema import AXES  # noqa: E402
from hmrcritic.agent.vlm import extract_json, normalise_critique  # noqa: E402
from hmrcritic.errors import JudgeError  # noqa: E402
from hmrcritic.memory.schema import Rule, RuleCondition  # noqa: E402


def _message(content, finish="stop"):
    """An answer whose message content is ``content(good critique)`` as it is (a str, a list of parts, None)."""

    def answer(rec, stub):
        status, headers, body = stub()
        if status != 200:
            return status, headers, body
        out = _completion("stub-vlm", content="x")
        out["choices"][0]["message"]["content"] = content(good_critique(_user_text(rec.body)))
        out["choices"][0]["finish_reason"] = finish
        return 200, {}, out

    return answer


# ------------------------------------------------------------------------------------------------ parsing


@pytest.mark.parametrize("loose", [
    lambda a: json.dumps(a, indent=1).replace('"rationale"', '// the deciding evidence\n  /* note */ "rationale"'),
    lambda a: json.dumps(a).replace("}]", "},]").replace('"rules_applied": []', '"rules_applied": [],'),
    lambda a: "Here's my verdict: " + repr(a) + " That's all.",
    lambda a: re.sub(r'"(\w+)":', r"\1:", json.dumps(a)),
], ids=["comments", "trailing_commas", "python_quotes", "bare_keys"])
def test_loose_json_is_read_not_refused_with_a_wrong_reason(images, loose):
    """JSON with comments, trailing commas, Python's quotes or bare keys (small local models write it in text mode)
    was refused on every retry, each a paid call, and with a misleading reason: "answer scores 0 hypotheses,
    expected 5" (the empty ``rules_applied`` list inside was taken for the answer) or "no 'scores' list"."""
    with _Quirky(_content(loose)) as srv:
        _worst_is_lowest(make_judge(srv, max_retries=1).critique(make_ctx(images)))
    assert len(srv.requests) == 1
    # a quote inside a single-quoted string and // inside a string stay as they are
    assert extract_json("""{'scores': [{'rationale': 'a "bent" knee // odd', 'ok': True, 'x': None}]}""") == {
        "scores": [{"rationale": 'a "bent" knee // odd', "ok": True, "x": None}]}


def test_the_relaxed_reader_is_bounded():
    """Text full of unclosed braces (a model in a loop) is read in bounded time, and still refused."""
    for text in ("{ [ 'x " * 3000, "{ 'a': 1, " * 3000):
        t = time.monotonic()
        with pytest.raises(ValueError, match="no JSON object"):
            extract_json(text)
        assert time.monotonic() - t < 5.0


@pytest.mark.parametrize("as_string", [False, True])
def test_a_tool_call_written_as_text_is_its_arguments(images, as_string):
    """A model without native tool calls writes the call as text (``{"name": ..., "arguments": {...}}``, Hermes and
    Llama formats): the wrapper was taken for the answer and refused on every retry ("no 'scores' list")."""
    def wrap(a):
        return json.dumps({"name": "GroupCritique", "arguments": json.dumps(a) if as_string else a})

    with _Quirky(_content(wrap)) as srv:
        _worst_is_lowest(make_judge(srv, max_retries=1).critique(make_ctx(images)))
    assert len(srv.requests) == 1


@pytest.mark.parametrize("key", ["{}", "h{}", "hyp_{}"])
def test_scores_keyed_by_hypothesis_are_read(images, key):
    """``{"scores": {"0": {...}, "1": {...}}}`` names each hypothesis as plainly as a list does; it was refused on
    every retry. Labels with a separator ("hyp_2", "hypothesis-2") were refused as indices too."""
    def keyed(a):
        return {**a, "scores": {key.format(e.pop("index")): e for e in a["scores"]}}

    with _Quirky(_content(keyed)) as srv:
        _worst_is_lowest(make_judge(srv, max_retries=1).critique(make_ctx(images)))
    assert len(srv.requests) == 1
    rows = [{"index": label, "overall": 5 + i} for i, label in enumerate(["hyp_0", "Hypothesis-1", "tile #2"])]
    assert [s.overall for s in normalise_critique({"scores": rows}, 3).scores] == [5, 6, 7]
    with pytest.raises(ValueError, match="indices"):
        normalise_critique({"scores": [{"index": "-1", "overall": 1}, {"index": 0, "overall": 2}]}, 2)


def test_scores_on_a_0_1_scale_are_read_on_it(images):
    """A model that answers 0.85 for a good pose was read on 0-10: every hypothesis near-worthless, silently (the
    scores go on as prototypes' calibration and into the reports). All values within [0, 1] with a fraction among
    them are that scale; integer 0/1 answers and any answer with a value above 1 stay on 0-10."""
    def fractional(a):
        return {**a, "scores": [{**e, **{k: round(e[k] / 10, 4) for k in ("overall", *AXES)}} for e in a["scores"]]}

    with _Quirky(_content(fractional)) as srv:
        crit = make_judge(srv, max_retries=1).critique(make_ctx(images))
    _worst_is_lowest(crit)
    expected = good_critique(_user_text(srv.requests[0].body))["scores"]
    assert [s.overall for s in crit.scores] == pytest.approx([e["overall"] for e in expected], abs=1e-3)
    assert max(s.overall for s in crit.scores) > 9.0
    for values, read in (([0, 1, 1], [0, 1, 1]), ([0.5, 1.5, 0.2], [0.5, 1.5, 0.2])):
        rows = [{"index": i, "overall": v} for i, v in enumerate(values)]
        assert [s.overall for s in normalise_critique({"scores": rows}, 3).scores] == read


@pytest.mark.parametrize("cited", [["[r-knee]"], "r-knee", "r-knee, [importedrule7]", ["`importedrule7`"]])
def test_rule_ids_cited_as_the_prompt_shows_them_count(images, cited):
    """The prompt lists rules as ``- [r-knee] "..."`` and shows an id without its whitespace; a model that cited
    "[r-knee]", one string instead of a list, or an imported rule's id as shown ("importedrule7" for "imported
    rule 7") had the citation dropped: the rule was not counted as used, and the reflection asked for a revision
    (another paid call) for a deduction the answer had made."""
    imported = Rule(rule_id="imported rule 7", text="arm through torso -> take off 4 points",
                    condition=RuleCondition(measure="reproj_px", comparator=">", threshold=30.0, points=4.0))
    ctx = make_ctx(images)
    ctx = make_ctx(images, rules=[*ctx.rules, imported])
    with _Quirky(_content(lambda a: {**a, "rules_applied": cited})) as srv:
        crit = make_judge(srv, max_retries=1).critique(ctx)
    text = json.dumps(cited)
    want = [rid for rid, shown in (("r-knee", "r-knee"), ("imported rule 7", "rule")) if shown in text]
    assert crit.rules_applied == want
    assert "[importedrule7]" in _user_text(srv.requests[0].body)


# ------------------------------------------------------------------------------------------------ reasoning


def test_an_unclosed_think_block_is_no_answer(images):
    """A reply that opens ``<think>`` and never closes it holds no answer: a score list drafted in the reasoning was
    taken for it, silently (here every hypothesis 5). It is now an unusable answer, retried, and said so."""
    draft = json.dumps({"scores": [{"index": i, "overall": 5} for i in range(5)]})
    with _Quirky(_message(lambda a: f"<think>first guess: {draft} but hyp 3 looks off"),
                 reject_response_format=True, reject_tools=True) as srv, pytest.raises(JudgeError) as info:
        make_judge(srv, max_retries=1).critique(make_ctx(images))
    assert "the answer is empty after the model's reasoning" in str(info.value)
    assert [r.mode for r in srv.requests] == ["json_schema", "tools", "text", "text"]


@pytest.mark.parametrize("content", [None, "", "<think>all reasoning</think>\n"])
def test_an_empty_answer_says_so(images, content):
    """An answer with no text (vLLM's reasoning parser with thinking off puts it all into ``reasoning_content``)
    was reported as "no JSON object in the answer"."""
    with _Quirky(_message(lambda a: content)) as srv, pytest.raises(JudgeError) as info:
        make_judge(srv, max_retries=0).critique(make_ctx(images))
    assert "unusable answer (the answer is empty" in str(info.value)


def test_a_model_looping_on_brackets_is_an_unusable_answer_not_a_traceback(images):
    """``{"scores": [[[[...`` nested deeper than Python's stack raised RecursionError out of ``critique`` (not a
    JudgeError: a traceback for the CLI, and the other groups' work lost)."""
    loop = '{"scores": ' + "[" * 5000 + "]" * 5000 + "}"
    with _Quirky(_message(lambda a: loop)) as srv, pytest.raises(JudgeError, match="unusable answer"):
        make_judge(srv, max_retries=1).critique(make_ctx(images))
    assert len(srv.requests) == 2
    t = time.monotonic()
    with pytest.raises(ValueError, match="no JSON object"):
        extract_json("[" * 30000)
    assert time.monotonic() - t < 5.0
    assert extract_json("[" * 3000 + ' {"scores": [{"index": 0}]}') == {"scores": [{"index": 0}]}


# ------------------------------------------------------------------------------------------------ HTTP


def test_insufficient_quota_is_not_retried(images):
    """OpenAI answers an account out of credit with a 429 (``insufficient_quota``): each group retried it with the
    backoff before failing as "rate limited". No wait cures it: it fails at once, saying so."""
    def quota(rec, stub):
        stub()
        return 429, {"Retry-After": "0"}, {"error": {
            "message": "You exceeded your current quota, please check your plan and billing details.",
            "type": "insufficient_quota", "code": "insufficient_quota", "param": None}}

    with _Quirky(quota) as srv, pytest.raises(JudgeError) as info:
        make_judge(srv, max_retries=3).critique(make_ctx(images))
    assert "quota is used up" in str(info.value) and "billing details" in str(info.value)
    assert len(srv.requests) == 1
    with _Quirky(lambda rec, stub: stub(), default="429", retry_after="0") as srv, pytest.raises(JudgeError) as info:
        make_judge(srv, max_retries=1).critique(make_ctx(images))
    assert "rate limited" in str(info.value) and len(srv.requests) == 2  # a plain 429 is still retried


def test_a_200_that_is_an_html_page_names_its_words(images):
    """A proxy or captive portal answering 200 with an HTML page failed as "malformed answer (AttributeError: 'str'
    object has no attribute 'choices')": the page's words, the only clue, were lost."""
    page = _Raw(b"<html><body><h1>Please sign in to the proxy</h1></body></html>", "text/html; charset=utf-8")
    with _Quirky(lambda rec, stub: (stub(), (200, {}, page))[1]) as srv, pytest.raises(JudgeError) as info:
        make_judge(srv, max_retries=1).critique(make_ctx(images))
    msg = str(info.value)
    assert "answered 200 with text/html, not JSON: Please sign in to the proxy" in msg and "<" not in msg
    assert "AttributeError" not in msg


def test_lm_studios_unexpected_endpoint_is_a_404_that_names_the_address(images):
    """LM Studio answers an address it does not serve (a base URL without /v1) with 200 and ``{"error":
    "Unexpected endpoint or method. ..."}``: read as a 502 it was retried in vain, without the hint to /v1."""
    def lms(rec, stub):
        stub()
        return 200, {}, {"error": "Unexpected endpoint or method. (POST /chat/completions)"}

    with _Quirky(lms) as srv, pytest.raises(JudgeError) as info:
        make_judge(srv, max_retries=3).critique(make_ctx(images))
    msg = str(info.value)
    assert "HTTP 404" in msg and "under /v1" in msg and "after 1 attempt" in msg
    assert len(srv.requests) == 1


@pytest.mark.parametrize("rejects", [(False, False), (True, False), (True, True)], ids=["json_schema", "tools", "text"])
@pytest.mark.parametrize("how", ["refusal", "content_filter"])
def test_a_refusal_or_a_content_filter_stop_fails_at_once_saying_so(images, rejects, how):
    """OpenAI's ``message.refusal`` and a provider's content filter (``finish_reason: content_filter``, Azure) leave
    no content: each was retried as "the answer is empty" (a paid call for the same refusal each time, at
    temperature 0) and the refusal's words were lost."""
    def answer(rec, stub):
        status, headers, body = _message(lambda a: None)(rec, stub)
        if status == 200 and how == "refusal":
            body["choices"][0]["message"]["refusal"] = "I can't help with images of people."
        elif status == 200:
            body["choices"][0]["finish_reason"] = "content_filter"
        return status, headers, body

    with _Quirky(answer, reject_response_format=rejects[0], reject_tools=rejects[1]) as srv, \
            pytest.raises(JudgeError) as info:
        make_judge(srv, max_retries=2).critique(make_ctx(images))
    assert [r.status for r in srv.requests].count(200) == 1
    assert ("refused to answer: I can't help with images of people." if how == "refusal" else "content filter") \
        in str(info.value)
