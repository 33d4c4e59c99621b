"""Review s32 (the VLM judge): three leftovers of the endpoint-failure policy, against servers on 127.0.0.1.

* a connect timeout (an address that drops packets: the TCP handshake never completes) was retried as a slow
  answer and never counted as an unusable endpoint, so a batch paid every group's retries; a read timeout (the
  server took the request and is slow) stays transient;
* an error while building the prompt (bad data in the group's context), before any request, was retried as a
  "malformed answer" of the endpoint's;
* a request refused in every form put the shared request form back on the one it had started in, undoing the
  step-down another thread had made on its own refusal: every later group paid the refused form again.

The connect timeout is a real one, at the network edge: a listening socket with a backlog of 0 whose accept queue
is full (one handshake completed, never accepted) makes Linux drop further SYNs, so a client's connect times out.
"""

from __future__ import annotations

import json
import logging
import re
import socket
import sys
import threading
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from openai_stub_server import (  # noqa: E402
    JSONAnswerServer,
    StubOpenAIServer,
    _completion,
    _user_text,
    good_critique,
)
from test_review_s22_vlmdown import judge_for  # noqa: E402
from test_vlm_judge import assert_valid, make_ctx  # noqa: E402

from hmrcritic.agent.vlm import EndpointUnusableError  # noqa: E402
from hmrcritic.errors import JudgeError  # noqa: E402

# ------------------------------------------------------------------------------------- connect timeout


@pytest.fixture
def black_hole():
    """``http://127.0.0.1:PORT/v1`` where a connect times out: the accept queue (backlog 0) holds one handshake
    never accepted, so the kernel drops every further SYN. Skipped where the kernel completes them anyway."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(0)
    port = srv.getsockname()[1]
    held = []
    try:
        for _ in range(8):
            c = socket.socket()
            c.settimeout(0.3)
            held.append(c)
            try:
                c.connect(("127.0.0.1", port))
            except TimeoutError:
                break
        else:
            pytest.skip("this kernel completes every handshake: no connect timeout to test with")
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        for c in held:
            c.close()
        srv.close()


def test_a_connect_timeout_on_every_attempt_is_an_unusable_endpoint(black_hole):
    """Nothing answered at the address: as a refused connection, said as what happened, with what to change."""
    with pytest.raises(EndpointUnusableError) as info:
        judge_for(black_hole, timeout_s=0.5, max_retries=1).critique(make_ctx((None, None)))
    msg = str(info.value)
    assert f"after 2 attempts: nothing answered at {black_hole} within 0.5 s (connect timeout)" in msg, msg
    assert "is a server running there" in msg and "correct the address" in msg, msg
    assert info.value.endpoint == black_hole and info.value.cause == "nothing answered there within 0.5 s"
    assert info.value.endpoint_unusable is True


def test_a_batch_stops_after_three_groups_nothing_answered(black_hole):
    """The batch-stop policy applies: three groups time out connecting, the rest are not sent."""
    judge = judge_for(black_hole, timeout_s=0.5, max_retries=0, max_concurrency=1)
    out = judge.critique_many([make_ctx((None, None), group_id=f"g{i}") for i in range(5)], return_exceptions=True)
    assert all(isinstance(r, EndpointUnusableError) for r in out), out
    tried = ["after 1 attempt: nothing answered at" in str(r) for r in out]
    # the one worker may have taken one more group before the third failure was read (critique_many's rule)
    assert tried[:3] == [True] * 3 and sum(tried) <= 4, out
    assert all("did not try" in str(r) for r, t in zip(out, tried, strict=True) if not t) and not tried[-1], out


def test_doctor_says_nothing_answered_rather_than_a_bare_cannot_connect(black_hole):
    """``check_endpoint`` (doctor) reads the same words: "cannot connect to ..." alone named no cause."""
    out = judge_for(black_hole, timeout_s=0.5).check_endpoint()
    assert out["ok"] is False and "nothing answered at" in out["error"] and "connect timeout" in out["error"], out


def test_doctor_tells_a_silent_server_from_one_that_cannot_be_reached():
    """A server that took the connection (the kernel completed the handshake) and never answers: "no answer from
    ... within", not "cannot connect to ...", which sent the user looking for a server that was up."""
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(8)  # never accepted, never answered
        url = f"http://127.0.0.1:{srv.getsockname()[1]}/v1"
        out = judge_for(url, timeout_s=0.5).check_endpoint()
    assert out["ok"] is False and out["error"] == f"no answer from {url} within 0.5 s", out


def test_a_read_timeout_stays_transient():
    """The server accepted and is slow: a plain JudgeError (its group fails alone), retried, worded as before."""
    with StubOpenAIServer(default="slow", slow_s=1.5, require_images=False) as srv:
        with pytest.raises(JudgeError) as info:
            judge_for(srv.base_url, timeout_s=0.4, max_retries=1).critique(make_ctx((None, None)))
        assert srv.arrivals == 2
    assert type(info.value) is JudgeError
    assert "after 2 attempts: no answer within 0.4 s" in str(info.value), str(info.value)


# ------------------------------------------------------------------------------------- prompt building


def test_a_prompt_that_cannot_be_built_fails_at_once_with_its_own_reason(caplog):
    """Bad data in the context (an evidence value that is no number) fails in the prompt, before any request:
    it was retried as "malformed answer (ValueError: ...)", each retry after a backoff, the same way each time."""
    ctx = make_ctx((None, None))
    ctx.evidence["reproj_px"] = ["not a number"] * ctx.num_hypotheses
    with StubOpenAIServer(require_images=False) as srv, caplog.at_level(logging.WARNING, "hmrcritic.agent.vlm"):
        with pytest.raises(JudgeError) as info:
            judge_for(srv.base_url, max_retries=3).critique(ctx)
        assert srv.arrivals == 0  # nothing was sent
    msg = str(info.value)
    assert type(info.value) is JudgeError  # no endpoint failure: a batch does not stop for it
    assert "cannot build the prompt (ValueError:" in msg and "nothing was sent" in msg, msg
    assert "malformed" not in msg and "attempt" not in msg, msg
    assert not [r for r in caplog.records if "retrying" in r.getMessage()]  # not retried


# ------------------------------------------------------------------------------------- the shared request form


class _ByForm(JSONAnswerServer):
    """Answers by request form and group (``answer(form, group, body)``), recording ``(group, form)``; ``hold``
    runs first in the server's thread, to order requests of two groups."""

    def __init__(self, answer, hold=None):
        self.seen: list[tuple[str, str]] = []
        self._lock = threading.Lock()

        def by_form(body: dict):
            form = "json_schema" if "response_format" in body else "function_calling" if "tools" in body else "text"
            m = re.search(r"GROUP (\w+):", json.dumps(body["messages"]))
            group = m.group(1) if m else "?"
            with self._lock:
                self.seen.append((group, form))
            if hold is not None:
                hold(form, group)
            return answer(form, group, body)

        super().__init__(by_form)

    def sent(self, group: str) -> list[str]:
        with self._lock:
            return [f for g, f in self.seen if g == group]


def test_a_request_refused_in_every_form_keeps_the_step_down_another_thread_made():
    """The server refuses json_schema (a form it lacks). Groups A and B both start on json_schema; A's refusal
    steps the judge down to function calling, where A is scored. B's own request is refused in every form (a bad
    image): it put the shared mode back on json_schema, the form it had started in, so group C (and every later
    group) paid a refused json_schema request again."""
    b_sent_json, a_in_fc = threading.Event(), threading.Event()

    def hold(form, group):
        if group == "gA" and form == "json_schema":
            b_sent_json.wait(5)  # both read json_schema before either is refused
        elif group == "gB" and form == "json_schema":
            b_sent_json.set()
            a_in_fc.wait(5)  # refused only once A has stepped down
        elif group == "gA" and form == "function_calling":
            a_in_fc.set()

    def answer(form, group, body):
        if form == "json_schema":
            return 400, {"detail": "response_format is not supported"}
        if group == "gB":
            return 400, {"detail": "bad image"}
        crit = json.dumps(good_critique(_user_text(body)))
        if form == "function_calling":
            return 200, _completion("stub-vlm", tool=(body["tools"][0]["function"]["name"], crit))
        return 200, _completion("stub-vlm", content=crit)

    results: dict[str, object] = {}

    def run(judge, gid):
        try:
            results[gid] = judge.critique(make_ctx((None, None), group_id=gid))
        except JudgeError as exc:
            results[gid] = exc

    with _ByForm(answer, hold) as srv:
        judge = judge_for(srv.url, max_retries=0, max_concurrency=2)
        threads = [threading.Thread(target=run, args=(judge, g)) for g in ("gA", "gB")]
        for t in threads:
            t.start()
        for t in threads:
            t.join(15)
        assert srv.sent("gA") == ["json_schema", "function_calling"]
        assert srv.sent("gB") == ["json_schema", "function_calling", "text"]
        assert isinstance(results["gB"], EndpointUnusableError), results
        assert_valid(results["gA"])
        assert judge.mode == "function_calling"  # A's step-down stands (B's json_schema refusal confirmed it)
        assert_valid(judge.critique(make_ctx((None, None), group_id="gC")))
        assert srv.sent("gC") == ["function_calling"]  # one request: no refused json_schema first


def test_a_request_refused_in_every_form_alone_still_puts_its_own_step_down_back():
    """The other side: with no other call involved, a request refused in every form (the request, not the forms,
    at fault) undoes its own step-downs, so the next group starts on json_schema again."""
    calls = {"n": 0}

    def answer(form, group, body):
        calls["n"] += 1
        if group == "g0":
            return 400, {"detail": "bad image"}
        return 200, _completion("stub-vlm", content=json.dumps(good_critique(_user_text(body))))

    with _ByForm(answer) as srv:
        judge = judge_for(srv.url, max_retries=0)
        with pytest.raises(EndpointUnusableError):
            judge.critique(make_ctx((None, None), group_id="g0"))
        assert srv.sent("g0") == ["json_schema", "function_calling", "text"]
        assert judge.mode == "json_schema"
