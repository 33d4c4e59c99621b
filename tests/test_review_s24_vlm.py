"""Review s24 (the VLM judge): what the request-form step-down and the score reader still got wrong.

* a group flagged by a content filter or policy check (a 400 about its content) was resent as function calling
  and as plain text, three paid requests to the same flag, before it failed; a flag after a step-down also put
  the judge back on the form the server had refused;
* a call whose mode another group put back (after a request refused in every form) stepped down again, beyond
  the two step-downs the judge's time bound allows;
* ``Infinity`` (or 1e999) as a score read as absent (an infinite ``overall`` swapped for the axes' mean, or "no
  scores"), and an integer too large for a float (hundreds of digits) raised OverflowError out of the critique.

Against local servers on 127.0.0.1 (the network edge) with the real langchain-openai client.
"""

from __future__ import annotations

import json
import re
import sys
import threading
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from openai_stub_server import JSONAnswerServer, StubOpenAIServer, _user_text  # noqa: E402
from test_review_s16_vlm import _content, _Quirky  # noqa: E402
from test_review_s22_vlmdown import Canned, judge_for  # noqa: E402
from test_vlm_judge import N, assert_valid, make_ctx, make_judge  # noqa: E402

from hmrcritic.agent.vlm import EndpointUnusableError, Unparseable, normalise_critique, normalise_proposals  # noqa: E402
from hmrcritic.errors import JudgeError  # noqa: E402

FLAGGED = {
    "content_filter": {"error": {"code": "content_filter", "message": "The response was filtered due to the prompt "
                                 "triggering Azure OpenAI's content management policy.", "type": None,
                                 "param": "prompt"}},
    "invalid_prompt": {"error": {"message": "Invalid prompt: your prompt was flagged as potentially violating our "
                                            "usage policy.", "type": "invalid_request_error", "param": None,
                                 "code": "invalid_prompt"}},
}
FORM_REFUSED = {"detail": "response_format is not supported"}  # a server without structured outputs (no flag)


class ByForm(JSONAnswerServer):
    """A server answering each chat request by its form (``json_schema``, ``function_calling``, ``text``) and
    group, as ``answer(form, group) -> (status, body)`` says; it records ``(group, form)`` per request and may
    hold a request (``hold(form, group)`` is called before answering, in the server's thread)."""

    def __init__(self, answer, hold=None):
        self.seen: list[tuple[str, str]] = []
        self._lock = threading.Lock()

        def by_form(body: dict) -> tuple[int, dict]:
            form = ("json_schema" if "response_format" in body else
                    "function_calling" if "tools" in body else "text")
            text = json.dumps(body["messages"])
            group = m.group(1) if (m := re.search(r"GROUP (\w+):", text)) else "?"
            with self._lock:
                self.seen.append((group, form))
            if hold is not None:
                hold(form, group)
            return answer(form, group)

        super().__init__(by_form)

    def sent(self, group: str) -> list[str]:
        with self._lock:
            return [form for g, form in self.seen if g == group]


# ------------------------------------------------------------------------------------- flagged content


@pytest.mark.parametrize("code", sorted(FLAGGED))
def test_a_flagged_group_is_sent_once_not_in_every_request_form(code):
    """A content flag judges the prompt and its images: no request form changes it. It was resent as function
    calling and as text (3 requests) before the group failed."""
    with Canned(400, FLAGGED[code]) as srv:
        judge = judge_for(srv.url, max_retries=2)
        with pytest.raises(JudgeError) as info:
            judge.critique(make_ctx((None, None)))
        assert srv.count == 1
    assert type(info.value) is JudgeError  # its group alone: no endpoint failure
    assert judge.mode == "json_schema"  # the forms were never refused


def test_a_flag_after_a_step_down_keeps_the_form_the_server_refused():
    """json_schema refused as a form (stepped down), then function calling flagged: one request per form, and the
    judge stays on function calling. It was sent as text too, and then put back on json_schema as if the request,
    not the form, had been refused: every later group paid the refused json_schema request again."""
    def answer(form, group):
        return (400, FORM_REFUSED) if form == "json_schema" else (400, FLAGGED["invalid_prompt"])

    with ByForm(answer) as srv:
        judge = judge_for(srv.url, max_retries=2)
        with pytest.raises(JudgeError) as info:
            judge.critique(make_ctx((None, None), group_id="g0"))
        assert srv.sent("g0") == ["json_schema", "function_calling"]
    assert type(info.value) is JudgeError and "flagged" in str(info.value)
    assert judge.mode == "function_calling"


def test_a_400_that_refuses_the_form_still_steps_down_through_every_form():
    """The other side of the line: a 400 that is about the form (no flag) is sent in each simpler form."""
    with Canned(400, FORM_REFUSED) as srv:
        with pytest.raises(EndpointUnusableError):
            judge_for(srv.url, max_retries=2).critique(make_ctx((None, None)))
        assert srv.count == 3


def test_a_call_steps_down_at_most_twice_when_another_group_puts_the_mode_back():
    """Group A is refused in every form (a plain 400): it puts the judge back on json_schema. Group B, started on
    function calling while A was in flight, then saw the mode changed and stepped "down" to json_schema, then
    function calling again, then text: 4 requests for a call the time bound gives 3 (max_retries=0)."""
    a_in_fc, b_arrived, a_done = threading.Event(), threading.Event(), threading.Event()

    def answer(form, group):
        return (400, {"detail": f"{form} refused"}) if form != "text" else (400, {"detail": "bad image"})

    def hold(form, group):
        if group == "gA" and form == "function_calling":
            a_in_fc.set()
            b_arrived.wait(5)
        elif group == "gB" and not b_arrived.is_set():
            b_arrived.set()
            a_done.wait(5)

    errors: dict[str, BaseException] = {}

    def run(judge, gid):
        try:
            judge.critique(make_ctx((None, None), group_id=gid))
        except JudgeError as exc:
            errors[gid] = exc

    with ByForm(answer, hold) as srv:
        judge = judge_for(srv.url, max_retries=0, max_concurrency=2)
        a = threading.Thread(target=run, args=(judge, "gA"))
        a.start()
        assert a_in_fc.wait(5)
        b = threading.Thread(target=run, args=(judge, "gB"))
        b.start()
        a.join(10)
        a_done.set()
        b.join(10)
        assert srv.sent("gA") == ["json_schema", "function_calling", "text"]
        assert srv.sent("gB")[0] == "function_calling" and len(srv.sent("gB")) <= 3, srv.sent("gB")
    assert set(errors) == {"gA", "gB"}


# ------------------------------------------------------------------------------------- scores


@pytest.mark.parametrize("value", [float("inf"), float("-inf"), 10 ** 400], ids=["inf", "-inf", "400_digits"])
@pytest.mark.parametrize("field", ["overall", "image_alignment"])
def test_an_infinite_or_overflowing_score_is_refused_naming_the_field(value, field):
    """JSON's ``Infinity`` read as absent: an infinite ``overall`` was replaced by the axes' mean (another ranking,
    silently), or the entry was said to have "no scores". An integer of 400 digits raised OverflowError."""
    entries = [{"index": i, "overall": 6.0 + i, "motion_structure": 7.0, "physical_feasibility": 7.0,
                "image_alignment": 7.0} for i in range(3)]
    entries[1][field] = value
    with pytest.raises(Unparseable, match=f"score entry 1 has {field} .*not a finite number"):
        normalise_critique({"scores": entries}, 3)
    entries[1][field] = float("nan")  # NaN stays "no score", as "N/A" does
    read = normalise_critique({"scores": entries}, 3).scores[1]
    assert (read.overall, read.image_alignment) == (7.0, 7.0)  # the axes' mean; filled from overall


def test_an_infinite_score_is_reported_to_the_model_and_the_answer_asked_again(images):
    """The revise path: the reason goes into the next request, and the next answer is used."""
    calls = []

    def infinite(answer):
        calls.append(1)
        if len(calls) > 1:
            return answer
        return json.dumps(answer).replace('"overall": ' + json.dumps(answer["scores"][2]["overall"]),
                                          '"overall": Infinity', 1)

    with _Quirky(_content(infinite)) as srv:
        crit = make_judge(srv, max_retries=1).critique(make_ctx(images))
        assert len(srv.requests) == 2
        assert "overall Infinity, not a finite number" in json.dumps(srv.requests[1].body)
    assert_valid(crit, N)


def test_a_score_of_hundreds_of_digits_fails_the_group_in_one_line_not_a_traceback(images):
    huge = "1" + "0" * 400

    def overflow(answer):
        return json.dumps(answer).replace('"overall": ' + json.dumps(answer["scores"][0]["overall"]),
                                          f'"overall": {huge}', 1)

    with _Quirky(_content(overflow)) as srv:
        with pytest.raises(JudgeError, match="unusable answer .*not a finite number"):
            make_judge(srv, max_retries=1).critique(make_ctx(images))
        assert len(srv.requests) == 2


def test_a_rule_with_a_threshold_of_hundreds_of_digits_loses_its_condition_not_the_mining():
    ctx = make_ctx((None, None))
    rule = {"text": "reprojection error far too large -> take off 3 points", "measure": "reproj_px",
            "comparator": ">", "threshold": 10 ** 400, "points": 3}
    out = normalise_proposals({"rules": [rule]}, ctx)
    assert [r.text for r in out.rules] == [rule["text"]] and out.rules[0].measure is None


# ------------------------------------------------------------------------------------- the prompt


def test_every_recalled_rule_is_shown_to_the_vlm(images):
    """The recall hands over up to ``rules_k`` (16) rules that fire on some hypothesis, and the reflection asks for
    a revision when one that fires was not applied; the prompt showed the first 12 only, so a revise round (a paid
    call) named a rule the VLM had never seen, with nothing to apply it by."""
    from hmrcritic.agent.nodes import _applicable
    from hmrcritic.memory.schema import Rule, RuleCondition

    rules = [Rule(rule_id=f"r-limit-{k}", text=f"joint outside its limit by more than {10 + k} deg -> take off 1 point",
                  tags=["hyperextension"],
                  condition=RuleCondition(measure="joint_limit_deg", comparator=">", threshold=10.0 + k, points=1.0))
             for k in range(16)]
    ctx = make_ctx(images, rules=rules)
    assert all(_applicable(r, ctx.evidence) for r in rules)  # each would be recalled (it fires on hyp 3)
    with StubOpenAIServer() as srv:
        make_judge(srv, max_retries=0).critique(ctx)
        text = _user_text(srv.requests[0].body)
    shown = re.findall(r"^- \[(r-limit-\d+)\]", text, re.MULTILINE)
    assert shown == [r.rule_id for r in rules]
