"""Review s22 (vlmbatch): the VLM judge's batch paths under concurrency, with the stop after 3 groups in a row
failed because the endpoint cannot be used (``VLMJudge.critique_many`` / ``acritique_many``, ``critique_groups``).

* ``acritique_many`` ran ``critique_many`` in a thread that nothing could stop: cancelled (``asyncio.wait_for``'s
  timeout), it went on sending every group of the batch, and ``asyncio.run`` waited for all of them at its exit.
* At the stop, the groups not started were cancelled (``critique_many``) or answered "not tried" at once
  (``critique_groups``) while groups were still in flight: one of those scored (the endpoint back) came too late,
  and the rest of the batch was "not tried" against an endpoint that answers.
"""

from __future__ import annotations

import asyncio
import threading
import time
from types import SimpleNamespace

import pytest
from openai_stub_server import JSONAnswerServer, StubOpenAIServer
from test_vlm_judge import make_ctx

from hmrcritic.agent.vlm import EndpointUnusableError, VLMJudge
from hmrcritic.config import JudgeSettings
from hmrcritic.errors import JudgeError

KEY = "sk-s22-vlmbatch-SECRET-7d1e"


def judge_for(url: str, **kw) -> VLMJudge:
    s = dict(base_url=url, model="stub-vlm", timeout_s=5.0, max_retries=0, max_concurrency=1)
    s.update(kw)
    return VLMJudge(JudgeSettings(**s), backoff_base_s=0.01, backoff_max_s=0.02)


def ctxs_for(n: int) -> list:
    return [make_ctx((None, None), group_id=f"g{i}") for i in range(n)]


# ------------------------------------------------------------------------------------------ acritique_many


def test_a_cancelled_acritique_many_sends_no_more_groups():
    with StubOpenAIServer(latency_s=0.2, require_images=False) as srv:
        judge = judge_for(srv.base_url)

        async def main() -> None:
            with pytest.raises((asyncio.TimeoutError, TimeoutError)):
                await asyncio.wait_for(judge.acritique_many(ctxs_for(15), return_exceptions=True), 0.5)

        t0 = time.monotonic()
        asyncio.run(main())
        took, sent = time.monotonic() - t0, srv.arrivals
        time.sleep(0.6)
        assert srv.arrivals == sent <= 4, srv.arrivals  # 15 before: every group, 3 s at 0.2 s each
    assert took < 2.0


def test_acritique_many_still_returns_every_result_in_order():
    with StubOpenAIServer(require_images=False) as srv:
        srv.push("good", "401_echo")
        out = asyncio.run(judge_for(srv.base_url).acritique_many(ctxs_for(4), return_exceptions=True))
    assert len(out) == 4 and sum(isinstance(r, JudgeError) for r in out) == 1
    assert all(r is not None for r in out)


# ------------------------------------------------------------------------------- the endpoint comes back


def test_critique_many_sends_the_rest_when_a_group_in_flight_is_scored_after_the_stop(monkeypatch):
    """Four groups at a time: one slow, the others refused (401) until the endpoint is back. The slow one is
    scored after the stop: the groups not started go on to be scored, not "did not try"."""
    monkeypatch.setenv("HMRCRITIC_API_KEY", KEY)
    with StubOpenAIServer(default="401_echo", slow_s=0.8, require_images=False) as srv:
        srv.push("slow")
        threading.Timer(0.4, setattr, (srv, "default", "good")).start()
        done: list[int] = []
        out = judge_for(srv.base_url, max_concurrency=4).critique_many(
            ctxs_for(20), return_exceptions=True, on_done=lambda i, r: done.append(i))
    assert sorted(done) == list(range(20)) and all(r is not None for r in out)
    assert not any("did not try" in str(r) for r in out), [str(r)[:80] for r in out]
    scored = [r for r in out if not isinstance(r, Exception)]
    assert len(scored) >= 12
    assert not any(KEY in str(r) for r in out)


def test_critique_many_still_stops_when_nothing_in_flight_is_scored():
    with StubOpenAIServer(default="401_echo", require_images=False) as srv:
        done: list[int] = []
        out = judge_for(srv.base_url, max_concurrency=4).critique_many(
            ctxs_for(20), return_exceptions=True, on_done=lambda i, r: done.append(i))
        sent = srv.arrivals
    assert sorted(done) == list(range(20)) and sent < 20
    assert all(isinstance(r, EndpointUnusableError) for r in out)
    assert sum("did not try" in str(r) for r in out) == 20 - sent


def test_critique_many_with_an_on_done_that_raises_does_not_hang():
    """Workers wait on counts the loop updates: the loop left early must release them."""
    with StubOpenAIServer(default="401_echo", require_images=False, latency_s=0.05) as srv:
        judge = judge_for(srv.base_url, max_concurrency=4)

        calls: list[int] = []

        def boom(i, r):  # after the stop, with groups waiting for those in flight
            calls.append(i)
            if len(calls) == 3:
                raise RuntimeError("progress bar closed")

        result: list = []
        t = threading.Thread(target=lambda: result.append(
            pytest.raises(RuntimeError, judge.critique_many, ctxs_for(12), return_exceptions=True, on_done=boom)),
            daemon=True)
        t.start()
        t.join(10)
        assert not t.is_alive()


def _groups(n):
    return [{"sample": SimpleNamespace(sample_id=f"s{i}"), "hypotheses": None, "group_id": f"g{i}"} for i in range(n)]


def test_critique_groups_sends_the_rest_when_a_group_in_flight_is_scored_after_the_stop(monkeypatch):
    from hmrcritic.agent import api

    failed, back = [], threading.Event()

    def fake(**job):
        if job["group_id"] == "g0":  # in flight through the stop, then scored: the endpoint answers again
            deadline = time.monotonic() + 5
            while len(failed) < 3 and time.monotonic() < deadline:
                time.sleep(0.01)
            time.sleep(0.2)
            back.set()
            return "ok"
        if back.is_set():
            return "ok"
        failed.append(job["group_id"])
        raise EndpointUnusableError("VLM judge failed: HTTP 401", "http://127.0.0.1:9/v1", "the key is refused")

    monkeypatch.setattr(api, "critique_group", fake)
    seen: list[int] = []
    res = api.critique_groups(_groups(20), judge="vlm", workers=4, progress=lambda i, n, r: seen.append(i))
    assert seen == list(range(1, 21)) and [r.group_id for r in res] == [f"g{i}" for i in range(20)]
    assert not any("not tried" in (r.error or "") for r in res), [r.error for r in res]
    assert sum(r.result == "ok" for r in res) == 20 - len(failed) >= 14


def test_critique_groups_still_stops_when_nothing_in_flight_is_scored(monkeypatch):
    from hmrcritic.agent import api

    calls = []

    def refused(**job):
        calls.append(job["group_id"])
        time.sleep(0.02)
        raise EndpointUnusableError("VLM judge failed: HTTP 401", "http://127.0.0.1:9/v1", "the key is refused")

    monkeypatch.setattr(api, "critique_group", refused)
    res = api.critique_groups(_groups(30), judge="vlm", workers=4)
    assert len(res) == 30 and len(calls) < 30
    assert sum("not tried" in r.error for r in res) == 30 - len(calls)


# ------------------------------------------------------------------ a group too large for the endpoint


class SizeLimited(JSONAnswerServer):
    """A vLLM-like server whose context fits small groups only: a group named ``big…`` gets vLLM's overflow
    (400), one named ``huge…`` a proxy's 413; the others are scored. ``overflow`` picks vLLM's wording."""

    def __init__(self, overflow: str = "This model's maximum context length is 4096 tokens. However, you "
                 "requested 6120 tokens (5096 in the messages, 1024 in the completion).", status: int = 400):
        import json

        from openai_stub_server import _completion, _user_text, good_critique

        self.texts: list[str] = []

        def answer(body: dict) -> tuple[int, dict]:
            text = _user_text(body)
            self.texts.append(text)
            if "GROUP big" in text:
                if status == 422:  # TGI's validation error
                    return status, {"error": f"Input validation error: {overflow}", "error_type": "validation"}
                return status, {"object": "error", "message": overflow, "type": "BadRequestError", "param": None,
                                "code": 400}
            if "GROUP huge" in text:
                return 413, {"error": {"message": "request entity too large", "type": "invalid_request"}}
            return 200, _completion("stub-vlm", content=json.dumps(good_critique(text)))

        super().__init__(answer)


@pytest.mark.parametrize(("msg", "status"), [
    ("The decoder prompt (length 8825) is longer than the maximum model length of 8192. Make sure that "
     "`max_model_len` is no smaller than the number of text tokens plus multimodal tokens.", 400),  # vLLM
    ("`inputs` tokens + `max_new_tokens` must be <= 4096. Given: 5000 `inputs` tokens and 1024 `max_new_tokens`",
     422),  # TGI
    ("request (67311 tokens) exceeds the available context size (65536 tokens), try increasing it", 400),  # llama.cpp
], ids=["vllm", "tgi", "llama.cpp"])
def test_vllm_decoder_prompt_overflow_fails_at_once_with_advice(msg, status):
    """The overflow vLLM reports once the images are counted (the usual one for a VLM), TGI's and llama.cpp's
    were resent in two simpler forms (3 requests a group, the judge's method stepped down meanwhile), carried no
    advice, and stopped a batch as the endpoint's fault."""
    with SizeLimited(overflow=msg, status=status) as srv:
        judge = judge_for(srv.url)
        with pytest.raises(JudgeError, match="too long for the model's context.*--num-generations") as info:
            judge.critique(make_ctx((None, None), group_id="big0"))
        assert len(srv.texts) == 1 and judge.mode == "json_schema"
    from hmrcritic.agent.vlm import GroupTooLargeError

    assert "max-model-len" in str(info.value) and type(info.value) is GroupTooLargeError


def test_groups_too_large_for_the_context_do_not_stop_a_batch_of_groups_that_fit():
    """Three large groups in a row (sorted by size, say) stopped the batch: every group after them, those that fit
    included, was "did not try" — and stopping saved nothing, as an overflow fails at once without retries."""
    ctxs = [make_ctx((None, None), group_id=g) for g in ("big0", "big1", "huge2", "big3", "s4", "s5", "s6", "s7")]
    with SizeLimited() as srv:
        out = judge_for(srv.url).critique_many(ctxs, return_exceptions=True)
    assert not any(isinstance(r, Exception) for r in out[4:]), [str(r) for r in out]
    assert len(srv.texts) == 8  # one request each: no simpler forms for a request too long in every form
    from hmrcritic.agent.vlm import GroupTooLargeError

    assert [type(r) for r in out[:4]] == [GroupTooLargeError] * 4
    assert all(isinstance(r, EndpointUnusableError) and r.endpoint_unusable is False for r in out[:4])
    assert "too long for the model's context" in str(out[0]) and "HTTP 413" in str(out[2])
    import pickle

    # a pool process's error keeps its kind: the export (which reads the flag) does not stop for it either
    again = pickle.loads(pickle.dumps(out[0]))
    assert type(again) is GroupTooLargeError and again.endpoint_unusable is False


def test_critique_groups_goes_on_past_groups_too_large(monkeypatch):
    from hmrcritic.agent import api
    from hmrcritic.agent.vlm import GroupTooLargeError

    calls = []

    def sized(**job):
        calls.append(job["group_id"])
        if int(job["group_id"][1:]) < 4:
            raise GroupTooLargeError("VLM judge failed: endpoint rejected the request: too long for the model's "
                                     "context", "http://127.0.0.1:9/v1", "it refuses the request (HTTP 400)")
        return "ok"

    monkeypatch.setattr(api, "critique_group", sized)
    res = api.critique_groups(_groups(8), judge="vlm")
    assert len(calls) == 8 and [r.result for r in res[4:]] == ["ok"] * 4
    assert not any("not tried" in (r.error or "") for r in res)


def test_a_failing_tls_handshake_is_not_called_nothing_answers():
    """An https address for a plain http server (or a certificate not trusted) fails as a ConnectError too; the
    stop named it "nothing answers there" (in every "did not try" line and the export's stop line) for a server
    that was running."""
    with StubOpenAIServer(require_images=False) as srv:
        url = srv.base_url.replace("http://", "https://")
        out = judge_for(url).critique_many(ctxs_for(5), return_exceptions=True)
        assert srv.arrivals == 0
    assert all(isinstance(r, EndpointUnusableError) for r in out)
    assert all("TLS handshake fails" in r.cause and "nothing answers" not in str(r) for r in out)
    assert "did not try" in str(out[-1]) and "https address for a plain http" in str(out[-1])
