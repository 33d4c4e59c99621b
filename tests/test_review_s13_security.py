"""Security review (s13): credentials of server addresses without a scheme, and an end-to-end search of every
file a VLM critique writes for recognisable fake secrets."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from hmrcritic import redact  # noqa: E402

pytestmark = pytest.mark.usefixtures("small_prior")


@pytest.fixture(autouse=True)
def _fresh_registry(monkeypatch):
    """Secrets registered by one test must not hide a leak from the next."""
    monkeypatch.setattr(redact, "_extra", set())


def _files_holding(root: Path, secrets: list[str]) -> dict[str, list[str]]:
    """Every file under ``root`` (binary ones too: the SQLite checkpoints) that holds one of ``secrets``."""
    hits = {}
    for f in root.rglob("*"):
        if f.is_file():
            data = f.read_bytes()
            found = [s for s in secrets if s.encode() in data]
            if found:
                hits[str(f)] = found
    return hits


def _scene(seed: int = 3):
    from test_agent_graph import make_group

    return make_group(seed, n=4)


def test_trace_of_a_scheme_less_chroma_address_keeps_no_password(tmp_path, monkeypatch):
    """Chroma takes ``user:password@host:port`` without a scheme; scrub cannot tell that from text, so the
    trace's config record and its error line kept the password verbatim."""
    from hmrcritic.agent.state import AgentConfig
    from hmrcritic.agent.trace import TraceWriter

    monkeypatch.setenv("HMRCRITIC_RUNS", str(tmp_path / "runs"))
    url = "alice:chpw-FAKE-9876@127.0.0.1:9"
    tracer = TraceWriter("run-s13-chroma", "g")
    tracer.start(AgentConfig(render=False, chroma_url=url))
    tracer.error(RuntimeError(f"cannot reach the Chroma server at {url}"))
    text = tracer.path.read_text()
    assert "chpw-FAKE-9876" not in text and "alice:" not in text
    assert "***@127.0.0.1:9" in text  # where the server is stays readable


def test_credentials_of_the_chroma_address_in_the_environment_are_scrubbed(monkeypatch):
    """``HMRCRITIC_CHROMA_URL=user:pw@host:port`` (no scheme) or a percent-encoded password quoted decoded
    (as a Basic-auth error may) passed through scrub untouched."""
    monkeypatch.setenv("HMRCRITIC_CHROMA_URL", "bob:envpw-FAKE-4321@10.0.0.3:8000")
    out = redact.scrub("connect to bob:envpw-FAKE-4321@10.0.0.3:8000 refused")
    assert "envpw-FAKE-4321" not in out and "10.0.0.3:8000" in out
    monkeypatch.setenv("HMRCRITIC_CHROMA_URL", "https://carol:p%40ss-FAKE-77@chroma.example:443")
    assert "p@ss-FAKE-77" not in redact.scrub("credentials carol:p@ss-FAKE-77 rejected")
    # an address without credentials, or with "@" only in its path, masks nothing
    assert redact.url_secrets("http://localhost:8000/v1") == [] and redact.url_secrets("http://h/a@b") == []


def test_a_failed_critique_against_a_chroma_server_leaves_no_password_in_any_file(tmp_path, monkeypatch):
    """End to end: the agent config holds the server address; the run fails reaching it; nothing written
    (trace, checkpoints, run folder) holds the password."""
    from hmrcritic.agent.api import critique_group
    from hmrcritic.agent.state import AgentConfig
    from hmrcritic.errors import HMRCriticError

    monkeypatch.setenv("HMRCRITIC_RUNS", str(tmp_path / "runs"))
    sample, hyps, _ = _scene()
    cfg = AgentConfig(render=False, chroma_url="dave:chpw-FAKE-e2e-5555@127.0.0.1:9")
    with pytest.raises(HMRCriticError) as info:
        critique_group(sample, hyps, config=cfg, group_id="s13-chroma")
    assert "chpw-FAKE-e2e-5555" not in str(info.value)
    assert list((tmp_path / "runs").rglob("*.jsonl"))  # a trace was written (so the search below means something)
    assert _files_holding(tmp_path / "runs", ["chpw-FAKE-e2e-5555"]) == {}


FAKE = {"HMRCRITIC_API_KEY": "sk-FAKE-hmr-0a1b2c3d4e", "OPENAI_API_KEY": "sk-FAKE-oai-5f6a7b8c9d",
        "LANGSMITH_API_KEY": "lsv2_FAKE_ls_13579bdf", "LANGCHAIN_API_KEY": "lsv2_FAKE_lc_2468aceg"}


def test_a_vlm_critique_writes_no_key_anywhere(tmp_path, monkeypatch, capsys):
    """Recognisable fake keys in all four variables; one critique answered, one refused with a 401 that quotes
    the key back: no file under the runs folder or the output folder, no trace print-out, no doctor report and
    no error line holds any of them (a check that passed: kept as a guard)."""
    from openai_stub_server import StubOpenAIServer

    from hmrcritic.agent.api import critique_group, write_scores
    from hmrcritic.agent.report import write_report
    from hmrcritic.agent.trace import format_trace, read_trace
    from hmrcritic.cli import main
    from hmrcritic.commands.doctor import run_checks
    from hmrcritic.errors import JudgeError

    for k, v in FAKE.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("HMRCRITIC_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("HMRCRITIC_MEMORY", str(tmp_path / "memory"))
    monkeypatch.setenv("HMRCRITIC_VLM_RETRIES", "0")
    sample, hyps, _ = _scene()
    out = tmp_path / "out"
    with StubOpenAIServer(default="good") as srv:
        monkeypatch.setenv("HMRCRITIC_BASE_URL", srv.base_url)
        res = critique_group(sample, hyps, judge="vlm", config={"render": False}, group_id="s13-good")
        write_scores(res, out)
        write_report(res, out)
        printed = format_trace(read_trace(last=True))
        srv.push("401_echo")
        with pytest.raises(JudgeError) as info:
            critique_group(sample, hyps, judge="vlm", config={"render": False}, group_id="s13-401")
        assert main(["--debug", "trace", "--last", "--json"]) == 0
        doctor = str(run_checks(skip=("gl_render", "body_model", "checkpoint")))
    assert srv.requests[0].auth == f"Bearer {FAKE['HMRCRITIC_API_KEY']}"  # the key really went out
    assert any(r.status == 401 for r in srv.requests)
    std = capsys.readouterr()
    texts = [printed, str(info.value), doctor, std.out, std.err]
    for secret in FAKE.values():
        assert not any(secret in t for t in texts), secret
    assert _files_holding(tmp_path, list(FAKE.values())) == {}
    assert (out / "report.html").is_file() and list((tmp_path / "runs" / "traces").glob("*.jsonl"))


def test_atomic_writes_honour_the_umask_and_keep_a_private_files_mode(tmp_path):
    """Every output went through mkstemp + fchmod(0644): ``umask 077`` was ignored and a file the user had made
    private (chmod 600) was widened to 0644 by the next rewrite."""
    import os

    from hmrcritic.io import atomic_write_json, atomic_write_text

    old = os.umask(0o077)
    try:
        new = atomic_write_text(tmp_path / "trace.txt", "x")
    finally:
        os.umask(old)
    assert new.stat().st_mode & 0o777 == 0o600
    private = atomic_write_json(tmp_path / "memory_export.json", {"a": 1})
    private.chmod(0o600)
    atomic_write_json(private, {"a": 2})
    assert private.stat().st_mode & 0o777 == 0o600 and '"a": 2' in private.read_text()
    old = os.umask(0o022)
    try:
        assert atomic_write_text(tmp_path / "ordinary.txt", "x").stat().st_mode & 0o777 == 0o644
    finally:
        os.umask(old)


def test_public_judge_settings_carry_no_url_credentials():
    """``JudgeSettings.public()`` ("settings safe to print") returned the base URL verbatim, password included."""
    from hmrcritic.config import JudgeSettings

    pub = JudgeSettings(base_url="http://vlm:pw-FAKE-public-42@10.0.0.4:8000/v1?api_key=qk-FAKE-99").public()
    assert "pw-FAKE-public-42" not in str(pub) and "qk-FAKE-99" not in str(pub)
    assert pub["base_url"].startswith("http://***@10.0.0.4:8000/v1")
    assert JudgeSettings(base_url=None).public()["base_url"] is None


def test_keypoint_json_nested_too_deep_or_too_big_is_one_line(tmp_path):
    """A deeply nested keypoint file raised RecursionError (exit 1, no file named); a huge one was read whole."""
    from hmrcritic.errors import InputError
    from hmrcritic.hmr import data as D

    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(InputError, match="nested too deeply"):
        D.read_keypoints_json(deep)
    big = tmp_path / "big.json"
    big.write_bytes(b" " * (D.MAX_KEYPOINT_FILE_BYTES + 1))
    with pytest.raises(InputError, match="not a keypoint file"):
        D.read_keypoints_json(big)


def test_a_chroma_url_given_in_code_has_its_password_scrubbed_from_later_messages(tmp_path):
    """A --chroma-url's credentials were masked where the URL was shown, but the password quoted elsewhere
    (an error from the server, a log line) stayed: parsing the address now registers them with the scrubber."""
    from hmrcritic.memory.store import _parse_chroma_url
    from hmrcritic.redact import scrub

    _parse_chroma_url("http://admin:Sup3rSecretPw@chroma.example:8000")
    assert "Sup3rSecretPw" not in scrub("server said: bad password Sup3rSecretPw")
