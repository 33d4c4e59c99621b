"""Secrets never leak: the scrubber itself, base-URL checks, the CLI's error lines and LangSmith uploads."""

from __future__ import annotations

import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from openai_stub_server import StubOpenAIServer  # noqa: E402

from hmrcritic.config import JudgeSettings, check_base_url  # noqa: E402
from hmrcritic.errors import InputError, JudgeError  # noqa: E402
from hmrcritic.redact import redact_url, scrub, scrub_tree  # noqa: E402

KEY = "sk-CANARY-redact-9f8e7d6c"


def test_scrub_masks_every_kind_of_secret_and_keeps_prose(monkeypatch):
    monkeypatch.setenv("HMRCRITIC_API_KEY", KEY)
    text = (f"key {KEY}; url http://bob:hunter2pass@10.0.0.1:8000/v1 and https://tok123@h.example/x; "
            "query https://h.example/v1?model=m&api_key=abc123def&Token=zz9 ; header Bearer sk-live-0123456789 "
            "and Basic YXVkaXR1c2VyOnNr; Basic authentication required; model gpt-4o-mini at "
            "http://localhost:11434/v1")
    out = scrub(text)
    for secret in (KEY, "hunter2pass", "bob:", "tok123", "abc123def", "zz9", "sk-live-0123456789",
                   "YXVkaXR1c2VyOnNr"):
        assert secret not in out, secret
    assert "http://***@10.0.0.1:8000/v1" in out and "api_key=***" in out and "model=m" in out
    assert "Basic authentication required" in out  # prose survives
    assert "http://localhost:11434/v1" in out and "gpt-4o-mini" in out
    assert redact_url(None) is None and redact_url("http://h:1/v1") == "http://h:1/v1"
    # an address without a scheme (Ray's, Chroma's host:port form) keeps no credentials either
    assert redact_url("alice:s3cret@10.0.0.2:6379") == "***@10.0.0.2:6379"
    assert redact_url("ray://alice:s3cret@10.0.0.2:10001") == "ray://***@10.0.0.2:10001"
    assert redact_url("10.0.0.2:6379") == "10.0.0.2:6379"
    tree = scrub_tree({"a": [f"x {KEY}", ("Bearer abcdef12345",)], KEY: 3})
    assert KEY not in json.dumps(tree) and "abcdef12345" not in json.dumps(tree)


@pytest.mark.parametrize("url", ["http://user:sk-CANARY-url-1@127.0.0.1:9/v1",
                                 "http://127.0.0.1:9/v1?api_key=sk-CANARY-url-1", "127.0.0.1:8000/v1",
                                 "ftp://127.0.0.1/v1"])
def test_base_url_with_credentials_or_no_scheme_is_refused_without_echoing_them(url):
    from hmrcritic.agent.vlm import VLMJudge

    with pytest.raises(InputError) as info:
        VLMJudge(JudgeSettings(base_url=url, model="m"))
    assert "sk-CANARY-url-1" not in str(info.value)
    assert check_base_url("http://localhost:8000/v1") == "http://localhost:8000/v1"


def test_no_key_and_no_endpoint_fails_at_once(monkeypatch):
    from hmrcritic.agent.vlm import VLMJudge

    for var in ("HMRCRITIC_API_KEY", "OPENAI_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(InputError, match="HMRCRITIC_API_KEY"):
        VLMJudge(JudgeSettings(base_url=None, model="m"))


def test_cli_error_line_and_debug_traceback_are_scrubbed(tmp_path, capsys):
    from hmrcritic.cli import main

    url = "http://audit:sk-CANARY-chroma-77@127.0.0.1:9"
    assert main(["memory", "stats", "--chroma-url", url]) != 0
    err = capsys.readouterr().err
    assert "error:" in err and "sk-CANARY-chroma-77" not in err and "127.0.0.1:9" in err
    assert main(["--debug", "memory", "stats", "--chroma-url", url]) != 0
    err = capsys.readouterr().err
    assert "Traceback" in err and "sk-CANARY-chroma-77" not in err
    # --debug is for that command: a later in-process call prints one line again (it stayed on for the process)
    assert main(["memory", "stats", "--chroma-url", url]) != 0
    assert "Traceback" not in capsys.readouterr().err


def test_trace_records_carry_no_credentials():
    """The trace's start record holds the agent config, whose Chroma URL may carry a user and password."""
    from hmrcritic.agent.state import AgentConfig
    from hmrcritic.agent.trace import TraceWriter

    tracer = TraceWriter("run-redact-test", "g")
    tracer.start(AgentConfig(render=False, chroma_url="http://admin:s3cret-CANARY-trace@127.0.0.1:9"))
    tracer.error(RuntimeError("endpoint said: Authorization: Bearer sk-CANARY-bearer-123456"))
    text = tracer.path.read_text()
    assert "s3cret-CANARY-trace" not in text and "sk-CANARY-bearer-123456" not in text
    assert "127.0.0.1:9" in text  # the rest of the config is kept


class _Recorder(BaseHTTPRequestHandler):
    """A LangSmith endpoint on 127.0.0.1 that accepts and keeps every upload."""

    bodies: list[bytes] = []

    def log_message(self, *args) -> None:
        pass

    def _ok(self, obj: dict) -> None:
        data = json.dumps(obj).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self._ok({"version": "0.0"})  # defaults for everything else: uncompressed multipart uploads

    def do_POST(self) -> None:
        n = int(self.headers.get("Content-Length") or 0)
        type(self).bodies.append(self.rfile.read(n))
        self._ok({})

    do_PATCH = do_POST


def test_langsmith_upload_of_a_failed_call_carries_no_key(monkeypatch, tmp_path):
    """An endpoint that quotes the key in its 401 body: LangChain's tracer records that exception before our
    retry loop scrubs it, so the upload itself must be scrubbed (redact.guard_langsmith)."""
    from langchain_core.tracers.langchain import wait_for_all_tracers
    from langsmith import run_trees
    from langsmith import utils as ls_utils
    from test_vlm_judge import make_ctx

    from hmrcritic.agent.vlm import VLMJudge

    _Recorder.bodies = []
    recorder = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    threading.Thread(target=recorder.serve_forever, daemon=True).start()
    monkeypatch.setattr(run_trees, "_CLIENT", None)  # a fresh cached client for this test
    ls_utils.get_env_var.cache_clear()  # langsmith caches environment lookups per process
    for var, val in (("HMRCRITIC_API_KEY", KEY), ("LANGSMITH_TRACING", "true"),
                     ("LANGSMITH_API_KEY", "lsv2-CANARY-langsmith-55"),
                     ("LANGSMITH_ENDPOINT", f"http://127.0.0.1:{recorder.server_port}")):
        monkeypatch.setenv(var, val)
    for var in ("LANGCHAIN_TRACING_V2", "LANGCHAIN_API_KEY", "LANGCHAIN_ENDPOINT", "HTTP_PROXY", "HTTPS_PROXY"):
        monkeypatch.delenv(var, raising=False)
    images = (str(tmp_path / "overlay.png"), str(tmp_path / "side.png"))
    from PIL import Image

    for p in images:
        Image.new("RGB", (64, 48), (90, 90, 90)).save(p)
    try:
        with StubOpenAIServer(default="401_echo") as srv:
            judge = VLMJudge(JudgeSettings(base_url=srv.base_url, model="stub-vlm", timeout_s=5.0, max_retries=0),
                             backoff_base_s=0.01, backoff_max_s=0.05)
            with pytest.raises(JudgeError):
                judge.critique(make_ctx(images, group_id="ls"))
        assert srv.requests[0].auth == f"Bearer {KEY}"  # the key was sent and quoted back
        wait_for_all_tracers()
        run_trees._CLIENT.flush()  # noqa: SLF001
    finally:
        recorder.shutdown()
        ls_utils.get_env_var.cache_clear()
    uploads = b"".join(_Recorder.bodies)
    assert b"401" in uploads  # the failed call really was uploaded (so the test can fail)
    assert KEY.encode() not in uploads and b"CANARY-redact" not in uploads
