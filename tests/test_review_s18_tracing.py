"""Review s18 (tracing): LangSmith uploads of whole critiques against a local recording server, and the
``trace`` command end to end."""

from __future__ import annotations

import base64
import gzip
import sys
import threading
from http.server import ThreadingHTTPServer
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from openai_stub_server import StubOpenAIServer  # noqa: E402
from test_redact import _Recorder  # noqa: E402

from hmrcritic import redact  # noqa: E402

pytestmark = pytest.mark.usefixtures("small_prior")

KEY = "sk-CANARY-s18-hmr-4f3e2d1c"
LS_KEY = "lsv2-CANARY-s18-ls-9a8b7c"


class _LangSmith(_Recorder):
    """A LangSmith endpoint on 127.0.0.1 keeping every request (method, path, decompressed body)."""

    requests: list[tuple[str, str, bytes]] = []

    def do_GET(self) -> None:
        type(self).requests.append(("GET", self.path, b""))
        self._ok({"version": "0.0"})  # no compression advertised: plain multipart uploads

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        type(self).requests.append((self.command, self.path, body))
        self._ok({})

    do_PATCH = do_POST


_recorder = _LangSmith


@pytest.fixture()
def langsmith(tmp_path, monkeypatch):
    """A recording LangSmith server, a fresh cached client, and the home, keys and VLM retries of a test.
    Yields a function that switches tracing on (the environment is read once per process by langsmith, so
    its cache is cleared here and on the way out)."""
    from langsmith import run_trees
    from langsmith import utils as ls_utils

    global _recorder
    # a handler class (and request list) per test: an earlier test's client may still call its own server
    _recorder = type("_Recorder", (_LangSmith,), {"requests": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), _recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setattr(run_trees, "_CLIENT", None)
    monkeypatch.setattr(redact, "_extra", set())
    for var in ("LANGCHAIN_TRACING_V2", "LANGSMITH_TRACING", "LANGCHAIN_API_KEY", "LANGCHAIN_ENDPOINT",
                "HTTP_PROXY", "HTTPS_PROXY", "HMRCRITIC_CHROMA_URL"):
        monkeypatch.delenv(var, raising=False)
    for var, val in (("HMRCRITIC_API_KEY", KEY), ("LANGSMITH_API_KEY", LS_KEY),
                     ("LANGSMITH_ENDPOINT", f"http://127.0.0.1:{server.server_port}"),
                     ("LANGSMITH_PROJECT", "s18"), ("HMRCRITIC_VLM_RETRIES", "0"),
                     ("HMRCRITIC_RUNS", str(tmp_path / "runs")), ("HMRCRITIC_MEMORY", str(tmp_path / "memory"))):
        monkeypatch.setenv(var, val)
    ls_utils.get_env_var.cache_clear()

    def tracing_on() -> None:
        monkeypatch.setenv("LANGSMITH_TRACING", "true")
        ls_utils.get_env_var.cache_clear()

    try:
        yield tracing_on
    finally:
        # the server is left running (a daemon thread): a client asks it for its settings, and drains its
        # queue, from LangSmith's exit handler too, which printed connection errors against a closed port
        _uploaded()
        monkeypatch.delenv("LANGSMITH_TRACING", raising=False)
        ls_utils.get_env_var.cache_clear()


def _uploaded() -> bytes:
    from langchain_core.tracers.langchain import wait_for_all_tracers
    from langsmith import run_trees

    wait_for_all_tracers()
    if run_trees._CLIENT is not None:  # noqa: SLF001
        run_trees._CLIENT.flush()  # noqa: SLF001
    return b"".join(body for _, _, body in _recorder.requests)


def _scene(seed: int = 3):
    from test_agent_graph import make_group

    return make_group(seed, n=4)


def test_a_vlm_critique_after_a_builtin_one_uploads_no_key(langsmith):
    """Only the VLM judge installed the scrubbing client, and only when no client existed yet: a builtin critique
    traced first (LangSmith then made its plain client) left a later VLM critique of the same process uploading
    the key that the endpoint's 401 body quoted back."""
    from hmrcritic.agent.api import critique_group
    from hmrcritic.errors import JudgeError

    langsmith()
    sample, hyps, _ = _scene()
    critique_group(sample, hyps, judge="builtin", config={"render": False}, group_id="s18-builtin")
    with StubOpenAIServer(default="401_echo") as srv, pytest.MonkeyPatch.context() as mp:
        mp.setenv("HMRCRITIC_BASE_URL", srv.base_url)
        with pytest.raises(JudgeError):
            critique_group(sample, hyps, judge="vlm", config={"render": False}, group_id="s18-vlm")
    assert srv.requests[0].auth == f"Bearer {KEY}"  # sent, and quoted back in the 401 body
    uploads = _uploaded()
    assert b"401" in uploads and b'"name":"critique"' in uploads  # the failed VLM run was uploaded
    assert KEY.encode() not in uploads and b"CANARY-s18-hmr" not in uploads
    assert LS_KEY.encode() not in uploads
    for shift in range(3):  # nor base64-encoded (an image part, a Basic header), at any alignment
        assert base64.b64encode(("xx" + KEY)[2 - shift:].encode())[4:-4] not in uploads


def test_a_builtin_critique_uploads_through_the_scrubbing_client(langsmith):
    """The builtin judge never installed the scrubbing client: its runs (node inputs, outputs, error text)
    went out through LangSmith's plain one."""
    from langsmith import run_trees

    from hmrcritic.agent.api import critique_group

    langsmith()
    sample, hyps, _ = _scene()
    critique_group(sample, hyps, judge="builtin", config={"render": False}, group_id="s18-builtin-only")
    uploads = _uploaded()
    names = {n for n in ("render", "recall", "critique", "reflect", "memory_write") if f'"name":"{n}"'.encode()
             in uploads}
    assert names == {"render", "recall", "critique", "reflect", "memory_write"}  # the graph's runs by node name
    assert run_trees._CLIENT._anonymizer is redact.scrub_tree  # noqa: SLF001


def test_guard_makes_a_plain_client_made_earlier_scrub_and_leaves_a_callers_own_alone(langsmith):
    from langsmith import Client, run_trees

    langsmith()
    plain = Client(info={})  # what LangSmith makes on the first traced call of a process
    run_trees._CLIENT = plain  # noqa: SLF001 (restored by the fixture)
    assert redact.guard_langsmith() is True and plain._anonymizer is redact.scrub_tree  # noqa: SLF001
    own = Client(hide_inputs=lambda d: {}, info={})  # a caller's own masking is theirs to choose
    run_trees._CLIENT = own  # noqa: SLF001
    assert redact.guard_langsmith() is False and own._anonymizer is None  # noqa: SLF001


def test_the_older_langchain_variables_switch_the_scrubbing_client_on_too(langsmith, monkeypatch):
    from langsmith import run_trees
    from langsmith import utils as ls_utils

    monkeypatch.setenv("LANGCHAIN_TRACING_V2", "true")
    ls_utils.get_env_var.cache_clear()
    assert redact.guard_langsmith() is True and run_trees._CLIENT._anonymizer is redact.scrub_tree  # noqa: SLF001


def test_nothing_is_uploaded_with_tracing_off_even_with_a_langsmith_key(langsmith):
    from hmrcritic.agent.api import critique_group

    sample, hyps, _ = _scene()
    critique_group(sample, hyps, judge="builtin", config={"render": False}, group_id="s18-off")
    assert _uploaded() == b"" and _recorder.requests == []


def test_prune_keeps_the_trace_of_a_running_critique(tmp_path, monkeypatch):
    """``runs prune --older-than 0`` kept a running critique's folder and thread but deleted its trace: the run
    went on writing a trace without its start record, and ``LAST`` was pointed at another run (or removed)."""
    from hmrcritic.agent.runs import prune_runs
    from hmrcritic.agent.state import AgentConfig
    from hmrcritic.agent.trace import TraceWriter, read_trace, resolve_run, traces_dir

    monkeypatch.setenv("HMRCRITIC_RUNS", str(tmp_path / "runs"))
    done = TraceWriter("20260101-000000-000000-done", "done")
    done.start(AgentConfig(render=False))
    done.finish({"round": 0, "done": True})
    running = TraceWriter("20260101-000001-000000-running", "running")
    running.start(AgentConfig(render=False))
    running.node("render", {}, 0.01)
    out = prune_runs(0, root=tmp_path / "runs", vacuum=False)
    assert out["removed"]["traces"] == 1 and not done.path.exists()
    assert running.path.exists() and resolve_run(last=True) == running.path
    running.node("recall", {}, 0.01)
    running.finish({"round": 0, "done": True})
    assert [r["event"] for r in read_trace(last=True)] == ["start", "node", "node", "finish"]
    assert prune_runs(0, root=tmp_path / "runs", vacuum=False)["removed"]["traces"] == 1  # finished: it may go
    assert not list(traces_dir().glob("*.jsonl")) and not (traces_dir() / "LAST").exists()
