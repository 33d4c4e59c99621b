"""Review s22 (vlmdown): a VLM endpoint that is down, or can never answer, during a long batch.

An endpoint that refuses connections, refuses the key, serves no such model, or refuses every request of the
judge's shape (vLLM's one-image limit, its context overflow) failed every group of an export in turn, each after
its retries. Now such failures are :class:`EndpointUnusableError`, and after three in a row (none scored in
between) the export stops in one line naming the endpoint, keeps what it wrote, lists the groups it did not
attempt, and continues when run again; ``critique_many`` stops sending likewise. Transient failures (5xx, 429,
garbage) still fail their group alone.
"""

from __future__ import annotations

import pickle
import socket
from types import SimpleNamespace

import pytest
from openai_stub_server import JSONAnswerServer, StubOpenAIServer
from test_export import cfg_for, make_inputs, tiny_model
from test_vlm_judge import make_ctx

from hmrcritic.agent.vlm import EndpointUnusableError, VLMJudge
from hmrcritic.alignment import dataset as D
from hmrcritic.alignment.export import export
from hmrcritic.config import JudgeSettings
from hmrcritic.errors import JudgeError
from hmrcritic.io import read_jsonl

SCORER = "test_review_s22_vlmdown:vlm_score"
KEY = "sk-s22-vlmdown-SECRET-0c9f"


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return tiny_model(tmp_path_factory.mktemp("model") / "tiny.pt")


def vlm_score(sample, hypotheses, judge="builtin", memory=None, config=None, group_id=None):
    """A scorer that asks the VLM judge (settings from the environment) once per group."""
    n = int(hypotheses.body_pose.shape[1])
    crit = VLMJudge(backoff_base_s=0.01, backoff_max_s=0.02).critique(make_ctx((None, None), group_id=group_id, n=n))
    return SimpleNamespace(scores=crit.scores, memory_version="s22")


def vlm_env(monkeypatch, url: str) -> None:
    monkeypatch.setenv("HMRCRITIC_BASE_URL", url)
    monkeypatch.setenv("HMRCRITIC_VLM_MODEL", "stub-vlm")
    monkeypatch.setenv("HMRCRITIC_VLM_RETRIES", "0")
    monkeypatch.setenv("HMRCRITIC_VLM_TIMEOUT", "5")
    monkeypatch.setenv("HMRCRITIC_API_KEY", KEY)


def judge_for(url: str, **kw) -> VLMJudge:
    s = dict(base_url=url, model="stub-vlm", timeout_s=5.0, max_retries=1, max_concurrency=1)
    s.update(kw)
    return VLMJudge(JudgeSettings(**s), backoff_base_s=0.01, backoff_max_s=0.02)


class Canned(JSONAnswerServer):
    """A server that answers every chat request with one status and JSON body (vLLM's error objects), counting."""

    def __init__(self, status: int, body: dict):
        self.count = 0

        def answer(_request: dict) -> tuple[int, dict]:
            self.count += 1
            return status, body

        super().__init__(answer)


def vllm_error(message: str) -> dict:
    return {"object": "error", "message": message, "type": "BadRequestError", "param": None, "code": 400}


# ----------------------------------------------------------------------------------------- the judge


def test_endpoint_failures_are_told_from_transient_ones():
    """Refused connections, a name that does not resolve, 401 and 404 are the endpoint's; 500, 429 and garbage
    are not (a plain JudgeError, the group failing alone)."""
    with socket.socket() as held:  # bound, never listening: connection refused
        held.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{held.getsockname()[1]}/v1"
        with pytest.raises(EndpointUnusableError, match="cannot connect.*refused") as info:
            judge_for(url).critique(make_ctx((None, None)))
    assert info.value.endpoint == url and info.value.cause == "nothing answers there"
    with pytest.raises(EndpointUnusableError, match="cannot connect"):
        judge_for("http://no-such-host.invalid/v1", max_retries=0).critique(make_ctx((None, None)))
    with StubOpenAIServer(default="401_echo", require_images=False) as srv:
        with pytest.raises(EndpointUnusableError, match="HTTP 401") as info:
            judge_for(srv.base_url).critique(make_ctx((None, None)))
        assert info.value.cause == "the key is refused" and len(srv.requests) == 1
    missing = {"error": {"message": "The model `nope` does not exist.", "type": "NotFoundError"}}
    with Canned(404, missing) as srv, pytest.raises(EndpointUnusableError, match="does not exist"):
        judge_for(srv.url).critique(make_ctx((None, None)))
    filtered = {"error": {"code": "content_filter", "message": "The response was filtered due to the prompt "
                          "triggering Azure OpenAI's content management policy.", "type": None, "param": "prompt"}}
    with Canned(400, filtered) as srv:  # Azure's content filter judges one group's prompt: no dead endpoint
        with pytest.raises(JudgeError) as info:
            judge_for(srv.url).critique(make_ctx((None, None)))
        assert type(info.value) is JudgeError
    for bad in ("500", "429", "garbage"):
        with StubOpenAIServer(default=bad, retry_after="0", require_images=False) as srv:
            with pytest.raises(JudgeError) as info:
                judge_for(srv.base_url).critique(make_ctx((None, None)))
            assert type(info.value) is JudgeError, bad
    # a pool process's error: pickled with its fields
    again = pickle.loads(pickle.dumps(EndpointUnusableError("m", "http://h/v1", "the key is refused")))
    assert (str(again), again.endpoint, again.cause) == ("m", "http://h/v1", "the key is refused")


def test_vllm_context_overflow_fails_at_once_with_advice(images_png):
    """vLLM's context overflow was resent in two simpler forms (json_schema, tools, text: 3 requests a group) and
    reported as a bare "endpoint rejected the request"."""
    msg = ("This model's maximum context length is 4096 tokens. However, you requested 6120 tokens (5096 in the "
           "messages, 1024 in the completion). Please reduce the length of the messages or completion.")
    with Canned(400, vllm_error(msg)) as srv:
        judge = judge_for(srv.url)
        with pytest.raises(EndpointUnusableError, match="--num-generations.*max-model-len") as info:
            judge.critique(make_ctx(images_png))
        assert srv.count == 1 and judge.mode == "json_schema"
    assert "HTTP 400" in str(info.value) and "IMAGE_MAX_SIDE" in str(info.value)


def test_vllm_one_image_limit_says_how_to_raise_it(images_png):
    """Older vLLM serves one image per request by default; the judge sends two grids: every request got a 400
    that said nothing of what to change."""
    with Canned(400, vllm_error("At most 1 image(s) may be provided in one request.")) as srv:
        with pytest.raises(EndpointUnusableError, match="at most 1 image.*sends 2.*--limit-mm-per-prompt image=2"):
            judge_for(srv.url).critique(make_ctx(images_png))
        assert srv.count == 1


def test_a_model_refusing_temperature_zero_fails_at_once_saying_so():
    """OpenAI's reasoning models refuse temperature=0, which every request of the judge carries: it was resent in
    two simpler forms, then reported without a word on why every group would fail so."""
    refused = {"error": {"message": "Unsupported value: 'temperature' does not support 0 with this model. Only the "
                                    "default (1) value is supported.", "type": "invalid_request_error",
                         "param": "temperature", "code": "unsupported_value"}}
    with Canned(400, refused) as srv:
        with pytest.raises(EndpointUnusableError, match="refuses temperature=0"):
            judge_for(srv.url).critique(make_ctx((None, None)))
        assert srv.count == 1


@pytest.fixture(scope="module")
def images_png(tmp_path_factory):
    import numpy as np
    from PIL import Image

    d = tmp_path_factory.mktemp("grids")
    for name in ("overlay.png", "side.png"):
        Image.fromarray(np.zeros((32, 48, 3), np.uint8)).save(d / name)
    return str(d / "overlay.png"), str(d / "side.png")


def test_critique_many_stops_sending_after_three_endpoint_failures_in_a_row():
    ctxs = [make_ctx((None, None), group_id=f"g{i}") for i in range(7)]
    with StubOpenAIServer(default="401_echo", require_images=False) as srv:
        out = judge_for(srv.base_url).critique_many(ctxs, return_exceptions=True)
        sent = len(srv.requests)
        assert 3 <= sent <= 4  # not 7 (the one worker may have taken the next group while the third was read)
    assert all(isinstance(r, EndpointUnusableError) for r in out)
    assert sum("did not try" in str(r) for r in out) == 7 - sent
    # a group scored in between resets the count: nothing is skipped
    with StubOpenAIServer(default="good", require_images=False) as srv:
        srv.push("401_echo", "401_echo", "good", "401_echo", "401_echo", "good", "good")
        out = judge_for(srv.base_url).critique_many(ctxs, return_exceptions=True)
        assert len(srv.requests) == 7
    assert sum(isinstance(r, EndpointUnusableError) for r in out) == 4 and not any("did not try" in str(r)
                                                                                   for r in out)


# ----------------------------------------------------------------------------------------- the export


def test_export_stops_on_a_refused_key_keeps_its_groups_and_resumes(model_path, tmp_path, monkeypatch):
    with StubOpenAIServer(default="401_echo", require_images=False) as srv:
        vlm_env(monkeypatch, srv.base_url)
        srv.push("good", "good")  # two groups scored, then the key is refused (the server quotes it back)
        cfg = cfg_for(tmp_path / "ds", model_path, judge="vlm", score_group=SCORER)
        inputs = make_inputs(7)
        with pytest.raises(JudgeError, match="export stopped: 3 groups in a row") as info:
            export(cfg, inputs=inputs)
        line = str(info.value)
        assert "\n" not in line and srv.base_url in line and "key is refused" in line and KEY not in line
        assert len(srv.requests) == 5  # 2 good, 3 refused: the last 2 groups never sent
        root = tmp_path / "ds"
        assert len(D.read_manifest(root)) == 2
        fails = read_jsonl(root / D.FAILURES)
        assert KEY not in (root / D.FAILURES).read_text()
        assert [f["stage"] for f in fails] == ["score"] * 3 + ["not_attempted"] * 2
        assert all(f["endpoint_unusable"].startswith(srv.base_url) and f["error"] for f in fails)
        report = D.validate_dataset(root)
        assert any("5 input(s) failed" in w for w in report.warnings)
        assert D.read_header(root).counts["finished"] is False
        srv.default = "good"  # the endpoint fixed: the same command continues where it stopped
        s = export(cfg, inputs=inputs)
    assert (s.done_before, s.new_groups, s.groups, s.failures) == (2, 5, 7, 0)
    assert D.validate_dataset(root).ok and read_jsonl(root / D.FAILURES) == []


def test_export_goes_on_through_transient_failures(model_path, tmp_path, monkeypatch):
    """500s (and a garbage answer) fail their groups alone, however many in a row: the README's promise."""
    with StubOpenAIServer(default="500", require_images=False) as srv:
        vlm_env(monkeypatch, srv.base_url)
        srv.push("garbage")
        s = export(cfg_for(tmp_path / "ds", model_path, judge="vlm", score_group=SCORER), inputs=make_inputs(5))
    assert (s.groups, s.failures) == (0, 5)
    assert all("endpoint_unusable" not in f for f in read_jsonl(tmp_path / "ds" / D.FAILURES))


def test_export_through_the_agent_stops_at_a_closed_port(model_path, tmp_path, monkeypatch):
    """The default scorer (the critique agent's graph) passes the judge's error on: the flag survives it."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{held.getsockname()[1]}/v1"
        vlm_env(monkeypatch, url)
        monkeypatch.setenv("HMRCRITIC_HOME", str(tmp_path / "home"))
        cfg = cfg_for(tmp_path / "ds", model_path, judge="vlm", score_group=D.DEFAULT_SCORER)
        with pytest.raises(JudgeError, match=f"export stopped.*{url}.*nothing answers there"):
            export(cfg, inputs=make_inputs(4))
    fails = read_jsonl(tmp_path / "ds" / D.FAILURES)
    assert [f["stage"] for f in fails] == ["score"] * 3 + ["not_attempted"]


@pytest.mark.slow
def test_export_with_worker_processes_stops_too(model_path, tmp_path, monkeypatch):
    """The flag crosses the process boundary (a worker's result dict), and the stop ends the pool's workers."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{held.getsockname()[1]}/v1"
        vlm_env(monkeypatch, url)
        cfg = cfg_for(tmp_path / "ds", model_path, judge="vlm", score_group=SCORER, workers=2)
        with pytest.raises(JudgeError, match="export stopped.*nothing answers there"):
            export(cfg, inputs=make_inputs(8))
    fails = read_jsonl(tmp_path / "ds" / D.FAILURES)
    assert len(fails) == 8 and sum(f["stage"] == "score" for f in fails) >= 3
    assert {f["stage"] for f in fails} == {"score", "not_attempted"}
