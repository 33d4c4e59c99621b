"""Review s37 (helper e): a mutation audit of the VLM judge's answer reading (hmrcritic/agent/vlm.py).

Each test pins a behaviour the module's docstrings promise, on a case whose answer is worked out by hand, that a
mutant of vlm.py survived the existing tests with: a score paired with the wrong hypothesis, a 0-10 answer
rescaled, a garbage answer accepted, or the retry policy's counts and waits changed. No scoring is changed here.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from openai_stub_server import JSONAnswerServer, _completion, _error, _user_text, good_critique  # noqa: E402
from test_review_s22_vlmdown import judge_for  # noqa: E402
from test_vlm_judge import assert_valid, make_ctx  # noqa: E402

from hmrcritic.agent import vlm  # noqa: E402
from hmrcritic.agent.vlm import Unparseable, normalise_critique  # noqa: E402
from hmrcritic.errors import JudgeError  # noqa: E402


def entry(index=None, overall=None, axes=None, **extra) -> dict:
    """One score entry; ``axes`` a number for all three axes, or a dict."""
    out: dict = dict(extra)
    if index is not None:
        out["index"] = index
    if overall is not None:
        out["overall"] = overall
    if axes is not None:
        out.update(axes if isinstance(axes, dict) else dict.fromkeys(vlm.AXES, axes))
    return out


def overalls(crit) -> list[float]:
    return [round(s.overall, 6) for s in crit.scores]


# ----------------------------------------------------------------------------------- scores to hypotheses


def test_scores_stay_with_the_hypothesis_they_name_when_listed_out_of_order():
    """Listed 2, 0, 1 with overall 1, 9, 5: hypothesis 0 scored 9, 1 scored 5, 2 scored 1, and the critique lists
    them by index (a mutant pairing the sorted indices with the listed rows gave 0 the score of 2)."""
    crit = normalise_critique([entry(2, 1, 1), entry(0, 9, 9), entry(1, 5, 5)], 3)
    assert [s.index for s in crit.scores] == [0, 1, 2]
    assert overalls(crit) == [9.0, 5.0, 1.0]
    assert [s.motion_structure for s in crit.scores] == [9.0, 5.0, 1.0]


def test_one_based_labels_out_of_order_are_shifted_with_their_scores():
    """"h3", "#1", "hyp 2" are hypotheses 2, 0, 1 (1..n shifted): their scores 3, 1, 2 follow them."""
    crit = normalise_critique([entry("h3", 3, 3), entry("#1", 1, 1), entry("hyp 2", 2, 2)], 3)
    assert overalls(crit) == [1.0, 2.0, 3.0]


def test_an_answer_with_one_hypothesis_too_many_is_refused():
    """"Answers with the wrong hypotheses are rejected": three entries for a group of two."""
    with pytest.raises(Unparseable, match="scores 3 hypotheses, expected 2"):
        normalise_critique([entry(0, 5, 5), entry(1, 6, 6), entry(2, 7, 7)], 2)


def test_indices_given_for_some_entries_only_are_refused():
    """"indices: all given or none given": one entry naming hypothesis 1 and one naming none cannot be paired by
    position (the named one is second in the list, and the unnamed one would be taken as 1 too)."""
    with pytest.raises(Unparseable, match="indices"):
        normalise_critique([entry(None, 5, 5), entry(0, 6, 6)], 2)


def test_a_fractional_or_boolean_index_is_refused_and_an_integral_float_is_read():
    # truncated, 0.5 would be 0 and ``true`` 1: each completes a valid 0..1 pairing, silently
    for bad, other in ((0.5, 1), (True, 0)):
        with pytest.raises(Unparseable, match="indices"):
            normalise_critique([entry(bad, 5, 5), entry(other, 6, 6)], 2)
    crit = normalise_critique([entry(1.0, 5, 5), entry("0", 6, 6)], 2)
    assert overalls(crit) == [6.0, 5.0]


# ----------------------------------------------------------------------------------- the score read


@pytest.mark.parametrize(("written", "score"), [("70%", 7.0), ("85/100", 8.5), ("7 out of 10", 7.0),
                                                ("3/5", 6.0), ("9/10", 9.0)])
def test_a_score_written_as_a_fraction_is_read_on_its_scale(written, score):
    assert vlm._score(written, 0, "overall") == pytest.approx(score)


@pytest.mark.parametrize("value", ["7/0", True, "seven", float("inf")])
def test_a_score_that_is_no_number_is_refused_as_unusable(value):
    """Refused (and retried with the reason), never read as a number or a ZeroDivisionError out of critique."""
    with pytest.raises(Unparseable):
        vlm._score(value, 0, "overall")


def test_a_perfect_group_on_the_0_10_scale_stays_perfect():
    """Every hypothesis 10/10 on every axis is a 0-10 answer (none above 10): not rescaled to 1."""
    crit = normalise_critique([entry(i, 10, 10) for i in range(3)], 3)
    assert overalls(crit) == [10.0] * 3
    assert all(s.image_alignment == 10.0 for s in crit.scores)


def test_two_values_just_above_10_in_a_0_10_answer_are_clamped_not_rescaled():
    """"a value or two just above 10 in a 0-10 answer are clamped (dividing everything by 10 for one 10.5 would
    shrink the whole group's scores tenfold)": overall 10.5, 11, 6 beside axes of 7 are 10, 10, 6."""
    crit = normalise_critique([entry(0, 10.5, 7), entry(1, 11, 7), entry(2, 6, 7)], 3)
    assert overalls(crit) == [10.0, 10.0, 6.0]
    assert [s.physical_feasibility for s in crit.scores] == [7.0] * 3


def test_overall_on_the_paper_scale_beside_axes_on_0_10_keeps_its_ranking():
    crit = normalise_critique([entry(0, 80, 7), entry(1, 40, 6), entry(2, 60, 5)], 3)
    assert overalls(crit) == [8.0, 4.0, 6.0]
    assert [s.motion_structure for s in crit.scores] == [7.0, 6.0, 5.0]


def test_a_whole_answer_on_the_paper_scale_is_rescaled():
    crit = normalise_critique([entry(0, 90, 85), entry(1, 30, 20)], 2)
    assert overalls(crit) == [9.0, 3.0]
    assert [s.image_alignment for s in crit.scores] == [8.5, 2.0]


def test_a_0_1_answer_is_rescaled_but_0_and_1_integers_on_0_10_are_not():
    """0-1: "every value within [0, 1], one a fraction". A 0-10 answer of 1s and 0s has no fraction: as it is."""
    crit = normalise_critique([entry(0, 0.9, 0.8), entry(1, 0.2, 1.0)], 2)
    assert overalls(crit) == [9.0, 2.0]
    assert [s.motion_structure for s in crit.scores] == [8.0, 10.0]
    crit = normalise_critique([entry(0, 1, 1), entry(1, 0, 0)], 2)
    assert overalls(crit) == [1.0, 0.0]


def test_a_negative_score_is_clamped_to_0():
    crit = normalise_critique([entry(0, -3, {"motion_structure": -1, "physical_feasibility": 4,
                                              "image_alignment": 5}), entry(1, 6, 6)], 2)
    assert crit.scores[0].overall == 0.0
    assert crit.scores[0].motion_structure == 0.0
    assert crit.scores[0].physical_feasibility == 4.0


def test_a_missing_overall_is_the_mean_of_the_axes_and_a_missing_axis_is_overall():
    """Axes 6, 8, 10 without overall: overall 8. Overall 4 with only motion_structure 2: the other axes are 4."""
    crit = normalise_critique([
        entry(0, None, {"motion_structure": 6, "physical_feasibility": 8, "image_alignment": 10}),
        entry(1, 4, {"motion_structure": 2}),
    ], 2)
    assert crit.scores[0].overall == pytest.approx(8.0)
    assert (crit.scores[1].motion_structure, crit.scores[1].physical_feasibility,
            crit.scores[1].image_alignment) == (2.0, 4.0, 4.0)


def test_an_entry_with_no_score_at_all_is_refused():
    with pytest.raises(Unparseable, match="no scores"):
        normalise_critique([entry(0, "N/A"), entry(1, 5, 5)], 2)


# ----------------------------------------------------------------------------------- the text read


def test_an_unclosed_think_block_is_no_answer_even_with_a_draft_score_list_in_it():
    """A reasoning block never closed (cut at the output limit) is all reasoning: a score list drafted in it was
    taken for the answer."""
    from langchain_core.messages import AIMessage

    draft = json.dumps({"scores": [entry(0, 9, 9), entry(1, 1, 1)]})
    with pytest.raises(Unparseable, match="empty"):
        vlm.VLMJudge._payload(AIMessage(content=f"<think>maybe {draft} ... let me check"))
    # closed, the answer after the last </think> is read, not the draft before it
    answer = json.dumps({"scores": [entry(0, 2, 2), entry(1, 8, 8)]})
    got = vlm.VLMJudge._payload(AIMessage(content=f"<think>{draft}</think>{answer}"))
    assert overalls(normalise_critique(got, 2)) == [2.0, 8.0]
    # "everything up to the last </think>": reasoning that names the tag before its draft is still reasoning
    text = f"<think>I must close with </think> only at the end. Draft: {draft}</think>\n{answer}"
    got = vlm.VLMJudge._payload(AIMessage(content=text))
    assert overalls(normalise_critique(got, 2)) == [2.0, 8.0]


def test_the_answer_follows_a_quoted_example_in_prose():
    """The first JSON value is an example of one entry; the answer (an object holding a list) follows."""
    text = ('The format is {"index": 0, "overall": 7}. Here: {"scores": [{"index": 0, "overall": 3}, '
            '{"index": 1, "overall": 9}]}')
    assert overalls(normalise_critique(vlm.extract_json(text), 2)) == [3.0, 9.0]


def test_a_score_list_nested_in_a_quoted_example_is_not_the_answer():
    """"not inside it: an entry of a quoted example is no answer either": the example's inner list (all 1s) is
    skipped with the object that holds it, and the answer after it (3, 9) is read."""
    example = {"example": {"scores": [{"index": 0, "overall": 1}, {"index": 1, "overall": 1}]}}
    text = f"Answer like {json.dumps(example)}. Mine: " + '{"scores": [{"index": 0, "overall": 3}, ' \
        '{"index": 1, "overall": 9}]}'
    assert overalls(normalise_critique(vlm.extract_json(text), 2)) == [3.0, 9.0]


# ----------------------------------------------------------------------------------- retry policy


def test_backoff_doubles_from_the_base_and_stops_at_the_cap(monkeypatch):
    """Retry k waits min(max, base * 2**k) scaled by a jitter in [0.5, 1] (k = 0 for the first retry)."""
    judge = SimpleNamespace(backoff_base_s=1.0, backoff_max_s=30.0)
    monkeypatch.setattr(vlm.random, "uniform", lambda a, b: b)
    assert [vlm.VLMJudge._backoff(judge, k) for k in (1, 2, 3, 4, 9)] == [1.0, 2.0, 4.0, 8.0, 30.0]
    monkeypatch.setattr(vlm.random, "uniform", lambda a, b: a)
    assert vlm.VLMJudge._backoff(judge, 2) == 1.0


def test_retry_after_ms_is_read_in_milliseconds():
    exc = SimpleNamespace(response=SimpleNamespace(headers={"retry-after-ms": "1500"}))
    assert vlm._retry_after_s(exc) == pytest.approx(1.5)
    exc = SimpleNamespace(response=SimpleNamespace(headers={"retry-after": "7"}))
    assert vlm._retry_after_s(exc) == pytest.approx(7.0)


def test_a_server_retry_after_longer_than_the_backoff_is_waited(images, monkeypatch):
    """A 429 with Retry-After: 2 is waited 2 s (below the 120 s cap), not the 0.01 s backoff."""
    waits: list[float] = []
    monkeypatch.setattr(vlm.time, "sleep", waits.append)
    calls = []

    def answer(body):
        calls.append(1)
        if len(calls) == 1:
            return 429, _error("slow down", 429)
        return 200, _completion("stub-vlm", content=json.dumps(good_critique(_user_text(body))))

    with JSONAnswerServer(answer) as srv:
        # the stub server sends no Retry-After header: the hint is given through _retry_after_s
        monkeypatch.setattr(vlm, "_retry_after_s", lambda exc: 2.0)
        crit = judge_for(srv.url).critique(make_ctx(images))
    assert_valid(crit)
    assert waits == [2.0]


def test_an_unusable_answer_is_tried_exactly_1_plus_max_retries_times(images, monkeypatch):
    monkeypatch.setattr(vlm.time, "sleep", lambda s: None)
    calls = []

    def answer(body):
        calls.append(1)
        return 200, _completion("stub-vlm", content="I think hypothesis two looks best.")

    with JSONAnswerServer(answer) as srv, pytest.raises(JudgeError, match="after 3 attempts"):
        judge_for(srv.url, max_retries=2).critique(make_ctx(images))
    assert len(calls) == 3


def test_a_408_is_retried_and_the_group_scored(images, monkeypatch):
    monkeypatch.setattr(vlm.time, "sleep", lambda s: None)
    calls = []

    def answer(body):
        calls.append(1)
        if len(calls) == 1:
            return 408, _error("request timeout", 408)
        return 200, _completion("stub-vlm", content=json.dumps(good_critique(_user_text(body))))

    with JSONAnswerServer(answer) as srv:
        assert_valid(judge_for(srv.url).critique(make_ctx(images)))
    assert len(calls) == 2
