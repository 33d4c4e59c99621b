"""VLMJudge against a real HTTP endpoint on 127.0.0.1 (tests/openai_stub_server.py): the real
langchain-openai client, real requests, scripted failures. Backoffs are shortened; timing is asserted only
where it is the behaviour under test (Retry-After honoured, all-timeouts bounded)."""

from __future__ import annotations

import logging
import socket
import sys
import threading
import time
import traceback
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))

from openai_stub_server import StubOpenAIServer  # noqa: E402

from hmrcritic.agent.judges import Judge, JudgeContext, Mistake, PrototypeHit  # noqa: E402
from hmrcritic.agent.schema import GroupCritique, ProposedRule  # noqa: E402
from hmrcritic.agent.vlm import VLMJudge, extract_json, normalise_critique, normalise_proposals  # noqa: E402
from hmrcritic.config import JudgeSettings  # noqa: E402
from hmrcritic.errors import InputError, JudgeError  # noqa: E402
from hmrcritic.memory.schema import Rule, RuleCondition  # noqa: E402

N = 5
WORST = 3  # the hypothesis with clearly the worst evidence


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> tuple[str, str]:
    d = tmp_path_factory.mktemp("grids")
    rng = np.random.default_rng(0)
    paths = []
    for name, size in (("overlay.png", (96, 64)), ("side.png", (80, 48))):
        arr = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
        Image.fromarray(arr).save(d / name)
        paths.append(str(d / name))
    return paths[0], paths[1]


def make_ctx(images, group_id="g0", n=N, **kw) -> JudgeContext:
    reproj = [4.0 + i for i in range(n)]
    limit = [0.0] * n
    iou = [0.8] * n
    if n > WORST:
        reproj[WORST], limit[WORST], iou[WORST] = 40.0, 35.0, 0.3
    rule = Rule(
        rule_id="r-knee",
        text="knee bent backwards -> take off 3 points",
        tags=["hyperextension"],
        condition=RuleCondition(measure="joint_limit_deg", comparator=">", threshold=10.0, points=3.0),
    )
    proto = PrototypeHit(
        proto_id="p1",
        similarity=0.91,
        overall=3.5,
        motion_structure=4,
        physical_feasibility=3,
        image_alignment=5,
        rationale="left knee hyperextended; arm through torso",
    )
    fields = dict(
        group_id=group_id,
        num_hypotheses=n,
        evidence={"reproj_px": reproj, "joint_limit_deg": limit, "silhouette_iou": iou},
        measure_info={
            "reproj_px": "px; higher is worse; mean 2D keypoint reprojection error",
            "joint_limit_deg": "deg; higher is worse; degrees outside joint limits",
            "silhouette_iou": "ratio; higher is better; overlap with the person mask",
        },
        rules=[rule],
        prototypes=[[proto]] + [[] for _ in range(n - 1)],
        overlay_grid_path=images[0],
        side_grid_path=images[1],
    )
    fields.update(kw)
    return JudgeContext(**fields)


def make_judge(srv: StubOpenAIServer, **kw) -> VLMJudge:
    s = dict(base_url=srv.base_url, model="stub-vlm", timeout_s=5.0, max_retries=2, max_concurrency=4,
             max_tokens=None)
    s.update({k: kw.pop(k) for k in list(kw) if k in s})
    return VLMJudge(JudgeSettings(**s), backoff_base_s=0.01, backoff_max_s=0.05, **kw)


def assert_valid(crit: GroupCritique, n: int = N) -> None:
    assert isinstance(crit, GroupCritique)
    assert [s.index for s in crit.scores] == list(range(n))
    for s in crit.scores:
        for v in (s.overall, s.motion_structure, s.physical_feasibility, s.image_alignment):
            assert 0.0 <= v <= 10.0


# ------------------------------------------------------------------------------------------ good path


def test_good_path_scores_follow_evidence(images):
    with StubOpenAIServer() as srv:
        judge = make_judge(srv)
        assert isinstance(judge, Judge) and judge.name == "vlm"
        crit = judge.critique(make_ctx(images))
    assert_valid(crit)
    overall = [s.overall for s in crit.scores]
    assert int(np.argmin(overall)) == WORST
    assert max(overall) - min(overall) > 2.0
    (req,) = srv.requests
    assert srv.violations == []
    assert req.mode == "json_schema" and req.images == 2 and req.kind == "critique"
    assert req.body["temperature"] == 0 and req.body["model"] == "stub-vlm"
    text = "\n".join(p["text"] for p in req.body["messages"][1]["content"] if p["type"] == "text")
    assert "r-knee" in text and "joint_limit_deg > 10" in text  # recalled rule with its condition
    assert "similarity 0.91" in text and "hyperextended" in text  # prototype
    assert "hyp | reproj_px | joint_limit_deg | silhouette_iou" in text  # evidence table


def test_json_schema_rejected_falls_back_to_tools_then_text(images):
    with StubOpenAIServer(reject_response_format=True) as srv:
        judge = make_judge(srv)
        assert_valid(judge.critique(make_ctx(images)))
        assert judge.mode == "function_calling"
        assert_valid(judge.critique(make_ctx(images, group_id="g1")))  # sticky: no new json_schema try
    assert [r.mode for r in srv.requests] == ["json_schema", "tools", "tools"]
    assert [r.status for r in srv.requests] == [400, 200, 200]
    assert srv.violations == []

    with StubOpenAIServer(reject_response_format=True, reject_tools=True) as srv:
        judge = make_judge(srv)
        crit = judge.critique(make_ctx(images))
        mistake = Mistake(index=0, overall=9, critic_rank=0, true_rank=4, error_mm=80.0, evidence={})
        props = judge.propose_rules(make_ctx(images), [mistake])  # rule mining in text mode too
    assert_valid(crit)
    assert int(np.argmin([s.overall for s in crit.scores])) == WORST
    assert judge.mode == "text"
    assert [r.mode for r in srv.requests] == ["json_schema", "tools", "text", "text"]
    assert 1 <= len(props.rules) <= 2 and props.rules[0].measure == "reproj_px"
    assert "Reply with ONLY a JSON object" in str(srv.requests[-1].body["messages"])
    assert srv.violations == []


def test_json_in_prose_and_100_scale_are_parsed(images):
    with StubOpenAIServer() as srv:
        judge = make_judge(srv)
        srv.push("prose")
        a = judge.critique(make_ctx(images))
        srv.push("good100")
        b = judge.critique(make_ctx(images))
        c = judge.critique(make_ctx(images))
    assert len(srv.requests) == 3  # no retries were needed
    for crit in (a, b):
        assert_valid(crit)
    assert [s.overall for s in b.scores] == pytest.approx([s.overall for s in c.scores], abs=1e-3)
    assert [s.overall for s in a.scores] == pytest.approx([s.overall for s in c.scores], abs=1e-3)


# ------------------------------------------------------------------------------------------ retries


def test_malformed_then_good_retries(images):
    with StubOpenAIServer() as srv:
        srv.push("garbage")
        crit = make_judge(srv).critique(make_ctx(images))
    assert_valid(crit)
    assert len(srv.requests) == 2
    assert "could not be used" in str(srv.requests[1].body["messages"])


def test_wrong_count_rejected_then_retried(images):
    with StubOpenAIServer() as srv:
        srv.push("wrong_count")
        assert_valid(make_judge(srv).critique(make_ctx(images)))
    assert len(srv.requests) == 2
    with StubOpenAIServer(default="wrong_count") as srv, pytest.raises(JudgeError, match=f"expected {N}"):
        make_judge(srv, max_retries=1).critique(make_ctx(images))


def test_always_garbage_raises_judge_error(images):
    with StubOpenAIServer(default="garbage") as srv, pytest.raises(JudgeError) as info:
        make_judge(srv, max_retries=2).critique(make_ctx(images, group_id="train/000042"))
    assert len(srv.requests) == 3
    msg = str(info.value)
    assert "\n" not in msg and "train/000042" in msg and "no JSON object" in msg and "3 attempts" in msg


@pytest.mark.parametrize("mode", ["json_schema", "tools"])
def test_an_answer_cut_at_the_output_limit_fails_at_once_saying_so(images, mode):
    """finish_reason "length": the JSON stops mid-way. It was retried as "unusable" (at temperature 0 the same
    cut every time) and reported as a parse error that did not say the cause or the cure."""
    with StubOpenAIServer(default="cut_off", reject_response_format=mode == "tools") as srv, \
            pytest.raises(JudgeError) as info:
        make_judge(srv, max_retries=3).critique(make_ctx(images, group_id="g-long"))
    assert [r.status for r in srv.requests if r.mode == mode] == [200]  # one answer, no retries
    msg = str(info.value)
    assert "finish_reason=length" in msg and "123 tokens" in msg and "HMRCRITIC_VLM_MAX_TOKENS" in msg, msg
    assert "\n" not in msg and "g-long" in msg


def test_max_tokens_is_sent_when_set_and_checked(images, monkeypatch):
    with StubOpenAIServer() as srv:
        assert_valid(make_judge(srv, max_tokens=4096).critique(make_ctx(images)))
        assert_valid(make_judge(srv).critique(make_ctx(images)))
    with_cap, default = srv.requests
    assert (with_cap.body.get("max_completion_tokens") or with_cap.body.get("max_tokens")) == 4096
    assert "max_tokens" not in default.body and "max_completion_tokens" not in default.body
    monkeypatch.setenv("HMRCRITIC_VLM_MAX_TOKENS", "2048")
    assert JudgeSettings().max_tokens == 2048
    for bad in ("0", "lots", "1.5"):
        monkeypatch.setenv("HMRCRITIC_VLM_MAX_TOKENS", bad)
        with pytest.raises(InputError, match="HMRCRITIC_VLM_MAX_TOKENS"):
            JudgeSettings()
    monkeypatch.delenv("HMRCRITIC_VLM_MAX_TOKENS")
    with pytest.raises(InputError, match="max_tokens"):
        JudgeSettings(max_tokens=0)


@pytest.mark.parametrize("status", ["429", "503"])  # rate limited; unavailable (a model loading)
def test_retry_after_is_honoured_then_good(images, status):
    with StubOpenAIServer(retry_after="1") as srv:
        srv.push(status)
        assert_valid(make_judge(srv).critique(make_ctx(images)))
    first, second = srv.requests
    assert first.status == int(status) and second.status == 200
    assert second.t_start - first.t_start >= 0.9  # backoff alone is ≤ 0.05 s here


def test_500_then_good(images):
    with StubOpenAIServer() as srv:
        srv.push("500", "500")
        assert_valid(make_judge(srv).critique(make_ctx(images)))
    assert [r.status for r in srv.requests] == [500, 500, 200]


def test_timeout_then_good(images):
    with StubOpenAIServer(slow_s=3.0) as srv:
        srv.push("slow")
        crit = make_judge(srv, timeout_s=0.5).critique(make_ctx(images))
        assert srv.arrivals == 2  # the slow one, abandoned after 0.5 s, then the retry
    assert_valid(crit)


def test_all_timeouts_raise_within_bounded_time(images):
    with StubOpenAIServer(default="slow", slow_s=10.0) as srv:
        judge = make_judge(srv, timeout_s=0.3, max_retries=2)
        t0 = time.monotonic()
        with pytest.raises(JudgeError, match="no answer within 0.3 s"):
            judge.critique(make_ctx(images))
        elapsed = time.monotonic() - t0
    assert elapsed < 5.0  # 3 attempts x 0.3 s + backoffs, far below the server's 10 s


def test_a_stalled_stream_is_cut_at_the_call_deadline(images):
    """A server that sends a byte every 50 ms passes every read timeout; the call deadline still ends it."""
    with StubOpenAIServer(default="trickle") as srv:
        judge = make_judge(srv, timeout_s=0.5, max_retries=1)
        t0 = time.monotonic()
        with pytest.raises(JudgeError, match="no answer within 0.5 s"):
            judge.critique(make_ctx(images))
        assert time.monotonic() - t0 < 5.0 and srv.arrivals == 2


@pytest.mark.parametrize("bad", ["empty_choices", "not_completion"])
def test_a_200_that_is_no_completion_is_retried_and_fails_only_its_group(images, bad):
    with StubOpenAIServer() as srv:
        srv.push(bad)
        assert_valid(make_judge(srv).critique(make_ctx(images)))  # retried, then good
        assert srv.arrivals == 2
    with StubOpenAIServer(default=bad) as srv:
        out = make_judge(srv, max_retries=1).critique_many([make_ctx(images), make_ctx(images)],
                                                          return_exceptions=True)
        assert all(isinstance(r, JudgeError) and "malformed answer" in str(r) for r in out)


def test_unreachable_endpoint_and_missing_image(images, tmp_path):
    # bound for the test but never listening: connection refused. A port closed again could be taken by another
    # process's server meanwhile (a busy CI machine runs several), which then answered instead.
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{held.getsockname()[1]}/v1"
        judge = VLMJudge(
            JudgeSettings(base_url=url, model="m", timeout_s=2.0, max_retries=1), backoff_base_s=0.01
        )
        with pytest.raises(JudgeError, match="cannot connect"):
            judge.critique(make_ctx(images))
    missing = tmp_path / "nope.png"
    with pytest.raises(JudgeError, match="nope.png"):
        judge.critique(make_ctx(images, overlay_grid_path=str(missing)))


# ------------------------------------------------------------------------------------------ concurrency


def test_concurrency_limit_is_respected_across_judges(images):
    with StubOpenAIServer(latency_s=0.25) as srv:
        a = make_judge(srv, max_concurrency=3)
        b = make_judge(srv, max_concurrency=3)  # same endpoint: shares the process-wide semaphore
        ctxs = [make_ctx(images, group_id=f"g{i}") for i in range(6)]
        done: list[int] = []
        out: dict[str, list] = {}
        ta = threading.Thread(
            target=lambda: out.setdefault("a", a.critique_many(ctxs, on_done=lambda i, r: done.append(i)))
        )
        tb = threading.Thread(target=lambda: out.setdefault("b", b.critique_many(ctxs)))
        ta.start(), tb.start()
        ta.join(), tb.join()
    assert len(srv.requests) == 12
    assert 2 <= srv.max_in_flight <= 3
    assert sorted(done) == list(range(6))
    for crit in out["a"] + out["b"]:
        assert_valid(crit)


def test_critique_many_return_exceptions(images):
    with StubOpenAIServer() as srv:
        judge = make_judge(srv)
        ctxs = [
            make_ctx(images, group_id="ok0"),
            make_ctx(images, group_id="bad", side_grid_path="/nonexistent.png"),
        ]
        res = judge.critique_many(ctxs, return_exceptions=True)
        assert isinstance(res[0], GroupCritique) and isinstance(res[1], JudgeError)
        with pytest.raises(JudgeError, match="bad"):
            judge.critique_many(ctxs)


# ------------------------------------------------------------------------------------------ secrets


def test_api_key_never_leaks(images, monkeypatch, caplog):
    key = "sk-hmrcritic-SECRET-4b1d7e9a"
    monkeypatch.setenv("HMRCRITIC_API_KEY", key)
    caplog.set_level(logging.DEBUG)  # every logger, including openai/httpx debug output
    failures = []
    with StubOpenAIServer(default="500") as srv:
        judge = make_judge(srv, max_retries=2)
        srv.push("401_echo")  # the server quotes the Authorization header back
        for ctx in (make_ctx(images, group_id="a"), make_ctx(images, group_id="b")):
            with pytest.raises(JudgeError) as info:
                judge.critique(ctx)
            failures.append(info.value)
    assert srv.requests[0].auth == f"Bearer {key}"  # the key really was sent (so the test can fail)
    assert srv.requests[0].status == 401 and len(srv.requests) == 4  # 401 is fatal; 500 x 3
    texts = [caplog.text, repr(judge), str(judge.settings.public()), str(judge.__dict__)]
    for exc in failures:
        texts += [str(exc), repr(exc), "".join(traceback.format_exception(exc))]
    assert "HTTP 401" in str(failures[0])
    for t in texts:
        assert key not in t
    assert "***" in str(failures[0])  # the echoed key was scrubbed, not just absent


# ------------------------------------------------------------------------------------------ rule mining


def test_propose_rules_returns_at_most_two_valid_rules(images):
    ctx = make_ctx(images)
    mistakes = [
        Mistake(
            index=1,
            overall=8.0,
            critic_rank=0,
            true_rank=3,
            error_mm=90.0,
            evidence=ctx.evidence_row(1),
            note="critic: clean pose",
        ),
        Mistake(
            index=4, overall=3.0, critic_rank=4, true_rank=0, error_mm=30.0, evidence=ctx.evidence_row(4)
        ),
    ]
    with StubOpenAIServer() as srv:
        props = make_judge(srv).propose_rules(ctx, mistakes)
    assert 1 <= len(props.rules) <= 2
    assert all(isinstance(r, ProposedRule) and r.text for r in props.rules)
    executable = [r for r in props.rules if r.measure]
    assert executable and all(
        r.measure in ctx.evidence and r.comparator in (">", ">=", "<", "<=") for r in executable
    )
    (req,) = srv.requests
    assert req.kind == "rules" and req.mode == "json_schema" and srv.violations == []
    text = str(req.body["messages"])
    assert "over-rated" in text and "under-rated" in text and "r-knee" in text
    assert "critic: clean pose" in text


def test_normalise_proposals_filters(images):
    ctx = make_ctx(images)
    data = {
        "rules": [
            {"text": "knee bent backwards -> take off 3 points"},  # already known
            {
                "text": "x",
                "measure": "joint_limit_deg",
                "comparator": ">",
                "threshold": 10,
                "points": 1,
            },  # same cond
            {
                "text": "made-up measure",
                "measure": "nonsense",
                "comparator": ">",
                "threshold": 1,
                "points": 2,
            },
            {
                "text": "iou low",
                "measure": "silhouette_iou",
                "comparator": "<",
                "threshold": 0.5,
                "points": 25,
            },
            {"text": "third valid rule"},
        ]
    }
    data["rules"][3]["per"] = 0.05  # graded: 10 points for every 0.05 of IoU below 0.5
    data["rules"][2]["per"] = 4
    out = normalise_proposals(data, ctx).rules
    assert [r.text for r in out] == ["made-up measure", "iou low"]
    assert out[0].measure is None and out[0].points is None and out[0].per is None  # condition dropped, text kept
    assert out[1].points == 10.0  # clamped
    assert out[1].per == 0.05  # a graded proposal stays graded
    data["rules"][3]["per"] = -1
    assert normalise_proposals(data, ctx).rules[1].per is None  # nonsense step → a step rule
    with pytest.raises(ValueError):
        normalise_proposals({"rules": [{"text": ""}]}, ctx)
    assert normalise_proposals({"rules": []}, ctx).rules == []


# ------------------------------------------------------------------------------------------ parsing units


def test_normalise_critique_tolerance():
    # paper style: score 0-100 + comment, no axes, 1-based indices
    data = [{"id": i + 1, "score": 10 * (i + 5), "comment": f"c{i}"} for i in range(3)]
    crit = normalise_critique(data, 3)
    assert [s.index for s in crit.scores] == [0, 1, 2]
    assert [s.overall for s in crit.scores] == pytest.approx([5.0, 6.0, 7.0])
    # one value just above 10 in a 0-10 answer is clamped, not read as "the whole answer is on 0-100"
    near = normalise_critique({"scores": [{"index": 0, "overall": 10.5}, {"index": 1, "overall": 7},
                                          {"index": 2, "overall": 6}]}, 3)
    assert [s.overall for s in near.scores] == pytest.approx([10.0, 7.0, 6.0])
    assert crit.scores[0].physical_feasibility == pytest.approx(5.0) and crit.scores[0].rationale == "c0"
    # missing overall -> mean of axes; out-of-range clamped; no indices -> positional
    crit = normalise_critique(
        {
            "scores": [
                {"motion_structure": 4, "physical_feasibility": 6, "image_alignment": 8},
                {"overall": -2},
            ]
        },
        2,
    )
    assert crit.scores[0].overall == pytest.approx(6.0) and crit.scores[1].overall == 0.0
    with pytest.raises(ValueError, match="expected 3"):
        normalise_critique({"scores": [{"overall": 1}] * 2}, 3)
    with pytest.raises(ValueError, match="not exactly"):
        normalise_critique({"scores": [{"index": 0, "overall": 1}, {"index": 0, "overall": 2}]}, 2)
    with pytest.raises(ValueError, match="no scores"):
        normalise_critique({"scores": [{"index": 0, "rationale": "?"}]}, 1)


def test_extract_json_from_prose():
    assert extract_json('Sure! {"a": {"b": [1, 2]}} and {"c": 3}') == {"a": {"b": [1, 2]}}
    assert extract_json('{broken {"ok": true}') == {"ok": True}
    with pytest.raises(ValueError):
        extract_json("nothing here")


def test_revise_round_rules_applied_and_bad_context(images):
    fixed = {
        "scores": [{"index": i, "overall": 5 + i / 10, "rationale": "ok"} for i in range(N)],
        "rules_applied": ["r-knee", "invented-id", "r-knee"],
    }
    first = normalise_critique(fixed, N)
    ctx = make_ctx(images, previous=first, feedback="hyp 3 violates r-knee but scored above hyp 0", round=1)
    with StubOpenAIServer(default="fixed", fixed_answer=fixed) as srv:
        crit = make_judge(srv).critique(ctx)
        assert crit.rules_applied == ["r-knee"]  # only ids that were in the prompt, once
        text = str(srv.requests[0].body["messages"])
        assert "FEEDBACK" in text and "violates r-knee" in text and "3:5.30" in text
        bad = make_ctx(images, evidence={"reproj_px": [1.0, 2.0]})
        with pytest.raises(JudgeError, match="'reproj_px' has 2 values, expected 5"):
            make_judge(srv).critique(bad)
    assert len(srv.requests) == 1  # the bad context never reached the endpoint


def test_check_endpoint(images):
    with StubOpenAIServer(model="stub-vlm") as srv:
        ok = make_judge(srv).check_endpoint()
        wrong = VLMJudge(JudgeSettings(base_url=srv.base_url, model="other", timeout_s=2.0)).check_endpoint()
    assert ok["ok"] and ok["models"] == ["stub-vlm"] and ok["error"] == ""
    assert not wrong["ok"] and "not served" in wrong["error"]
    down = VLMJudge(JudgeSettings(base_url=srv.base_url, model="m", timeout_s=1.0)).check_endpoint()
    assert not down["ok"] and down["error"]


def test_async_helpers(images):
    import asyncio

    with StubOpenAIServer() as srv:
        judge = make_judge(srv)

        async def go():
            one = await judge.acritique(make_ctx(images, group_id="x"))
            many = await judge.acritique_many([make_ctx(images, group_id=f"y{i}") for i in range(3)])
            return one, many

        one, many = asyncio.run(go())
    assert_valid(one)
    assert len(many) == 3 and all(isinstance(c, GroupCritique) for c in many)
    assert len(srv.requests) == 4


def test_request_rejected_in_every_form_fails_and_restores_mode(images):
    with StubOpenAIServer(default="400") as srv:
        judge = make_judge(srv)
        with pytest.raises(JudgeError, match="image too large"):
            judge.critique(make_ctx(images))
        assert [r.mode for r in srv.requests] == ["json_schema", "tools", "text"]
        assert judge.mode == "json_schema"  # the method was not at fault
        srv.default = "good"
        assert_valid(judge.critique(make_ctx(images)))
    assert srv.requests[-1].mode == "json_schema"


def test_prototypes_block_gives_the_true_error_of_labelled_cases():
    """A labelled past case shows its true error beside its score (the calibration it carries); an unlabelled
    one shows its score only."""
    from hmrcritic.agent.prompts import prototypes_block

    def hit(err):
        return PrototypeHit(proto_id="p", similarity=0.97, overall=3.2, motion_structure=5,
                            physical_feasibility=5, image_alignment=5, rationale="r", error_mm=err)

    text = prototypes_block([[hit(87.4)], [hit(None)]])
    lines = text.splitlines()[1:]
    assert "true PA-MPJPE 87 mm" in lines[0] and "true PA-MPJPE" not in lines[1]
    assert all("scored overall 3.2" in line for line in lines)
