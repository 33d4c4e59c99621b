"""Review s23 (mutation): tests that kill mutants of the code changed in sessions 22-23 which the existing tests
let live (the endpoint-unusable stop of the VLM judge's batches, the export's stop and its not_attempted
records, ...). Real parts throughout; the only double is the OpenAI-compatible stub server on 127.0.0.1."""

from __future__ import annotations

import json

import pytest
from openai_stub_server import StubOpenAIServer
from test_export import cfg_for, make_inputs, tiny_model
from test_review_s22_vlmdown import SCORER, vlm_env
from test_vlm_judge import make_ctx

from hmrcritic.agent.vlm import EndpointUnusableError, VLMJudge
from hmrcritic.alignment import dataset as D
from hmrcritic.alignment.export import export
from hmrcritic.config import JudgeSettings
from hmrcritic.errors import JudgeError
from hmrcritic.io import read_jsonl, record_checksum

KEY = "sk-s23-mutation-SECRET-41ab"


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return tiny_model(tmp_path_factory.mktemp("model") / "tiny.pt")


def _judge(url: str, **kw) -> VLMJudge:
    s = dict(base_url=url, model="stub-vlm", timeout_s=10.0, max_retries=0, max_concurrency=1)
    s.update(kw)
    return VLMJudge(JudgeSettings(**s), backoff_base_s=0.01, backoff_max_s=0.02)


# ---------------------------------------------------------------------------------------- critique_many


def test_critique_many_waits_for_the_group_in_flight_before_skipping_the_rest(monkeypatch):
    """At the stop (three refused keys in a row) one group is still in flight (slow). The groups not started wait
    for it; it is scored (the endpoint is back), so they are sent and scored, none "did not try". The endpoint is
    switched back by ``on_done`` as the third refusal is read, i.e. only once the stop has been reached, so the
    check does not depend on how fast this machine is."""
    monkeypatch.setenv("HMRCRITIC_API_KEY", KEY)
    ctxs = [make_ctx((None, None), group_id=f"g{i}") for i in range(16)]
    with StubOpenAIServer(default="401_echo", slow_s=2.0, require_images=False) as srv:
        srv.push("slow")  # the first request to arrive: in flight through the stop
        refused: list[int] = []

        def on_done(i, r):
            if isinstance(r, EndpointUnusableError) and "did not try" not in str(r):
                refused.append(i)
                if len(refused) == 3:
                    srv.default = "good"

        out = _judge(srv.base_url, max_concurrency=4).critique_many(ctxs, return_exceptions=True, on_done=on_done)
    assert len(refused) >= 3  # the stop was reached
    assert not any("did not try" in str(r) for r in out), [str(r)[:90] for r in out]
    scored = [r for r in out if not isinstance(r, Exception)]
    assert len(scored) >= len(ctxs) - 6, [str(r)[:90] for r in out]
    assert not any(KEY in str(r) for r in out)


# ---------------------------------------------------------------------------------------------- export


def test_export_does_not_stop_when_a_written_group_breaks_the_run_of_endpoint_failures(model_path, tmp_path,
                                                                                        monkeypatch):
    """Two refused keys, a group written, two refused keys, a group written: never three in a row with nothing
    written in between, so the export goes through every input (the count restarts at each written group)."""
    with StubOpenAIServer(default="good", require_images=False) as srv:
        vlm_env(monkeypatch, srv.base_url)
        srv.push("401_echo", "401_echo", "good", "401_echo", "401_echo", "good")
        s = export(cfg_for(tmp_path / "ds", model_path, judge="vlm", score_group=SCORER), inputs=make_inputs(6))
        assert len(srv.requests) == 6
    assert (s.groups, s.failures) == (2, 4)
    fails = read_jsonl(tmp_path / "ds" / D.FAILURES)
    assert [f["stage"] for f in fails] == ["score"] * 4
    assert all(f["endpoint_unusable"].startswith(srv.base_url) for f in fails)
    assert D.read_header(tmp_path / "ds").counts["finished"] is True


def test_not_attempted_records_carry_their_checksum(model_path, tmp_path, monkeypatch):
    """The records the stop adds to failures.jsonl are checksummed as the appended ones are: a damaged line is
    then told from a whole one (read_jsonl drops it) instead of being read as a failure that never was."""
    with StubOpenAIServer(default="401_echo", require_images=False) as srv:
        vlm_env(monkeypatch, srv.base_url)
        srv.push("good")
        with pytest.raises(JudgeError, match="export stopped"):
            export(cfg_for(tmp_path / "ds", model_path, judge="vlm", score_group=SCORER), inputs=make_inputs(6))
    lines = [json.loads(x) for x in (tmp_path / "ds" / D.FAILURES).read_text().splitlines()]
    assert [f["stage"] for f in lines] == ["score"] * 3 + ["not_attempted"] * 2
    for rec in lines:
        assert rec.get("checksum") == record_checksum(rec), rec


def test_a_stopped_export_drops_the_old_failure_of_a_group_it_has_since_written(model_path, tmp_path, monkeypatch):
    """Run 1: every group fails (500s, transient: no stop). Run 2 writes the first group, then the key is refused
    three times in a row and it stops. failures.jsonl, rewritten at the stop, lists the groups still open only:
    not the first group's old failure from run 1 (the dataset holds it)."""
    cfg = cfg_for(tmp_path / "ds", model_path, judge="vlm", score_group=SCORER)
    inputs = make_inputs(5)
    with StubOpenAIServer(default="500", require_images=False) as srv:
        vlm_env(monkeypatch, srv.base_url)
        s = export(cfg, inputs=inputs)
        assert (s.groups, s.failures) == (0, 5)
        srv.default = "401_echo"
        srv.push("good")
        with pytest.raises(JudgeError, match="export stopped"):
            export(cfg, inputs=inputs)
    root = tmp_path / "ds"
    written = {r.group_id for r in D.read_manifest(root)}
    assert len(written) == 1
    fails = read_jsonl(root / D.FAILURES)
    assert not written & {f["group_id"] for f in fails}, fails
    assert [f["stage"] for f in fails] == ["score"] * 3 + ["not_attempted"]
    assert any("4 input(s) failed" in w for w in D.validate_dataset(root).warnings)


# ------------------------------------------------------------------------------------- the judge's 404s


def test_a_404_quoting_its_path_is_no_missing_model_for_a_short_model_name():
    """A model name under 4 characters is not looked for in a 404's words: "v1" is in every path a server
    echoes ("Not Found: /v1/chat/completions"), and such a 404 is an address not found, not a model not served."""
    from test_review_s22_vlmdown import Canned

    with Canned(404, {"detail": "Not Found: /v1/chat/completions"}) as srv, \
            pytest.raises(EndpointUnusableError) as info:
        _judge(srv.url, model="v1").critique(make_ctx((None, None)))
    assert info.value.cause == "not found there", info.value.cause
    assert "is not served" not in str(info.value)


# ------------------------------------------------------------------------------------------ open_failures


def test_open_failures_leaves_out_the_groups_the_dataset_holds(tmp_path):
    """An interrupted export leaves failures.jsonl as appended: a group that failed, then was written, is still
    listed. Only the groups not in the dataset are open, each once, in file order."""
    from hmrcritic.io import append_jsonl

    for gid in ("g1", "g2", "g1", "g3"):
        append_jsonl(tmp_path / D.FAILURES, {"group_id": gid, "input_id": gid, "stage": "score", "error": "x"})
    assert D.open_failures(tmp_path, ["g2"]) == ["g1", "g3"]
    assert D.open_failures(tmp_path, []) == ["g1", "g2", "g3"]


def test_validate_after_a_stop_before_the_first_group_says_what_failed_and_what_was_not_tried(model_path, tmp_path,
                                                                                               monkeypatch):
    """The key refused from the first group: the export stops with no group written (no manifest). validate
    names the folder unfinished and also what failures.jsonl holds: 3 tried and failed, 2 never attempted."""
    root = tmp_path / "ds"
    with StubOpenAIServer(default="401_echo", require_images=False) as srv:
        vlm_env(monkeypatch, srv.base_url)
        with pytest.raises(JudgeError, match="export stopped"):
            export(cfg_for(root, model_path, judge="vlm", score_group=SCORER), inputs=make_inputs(5))
    assert not (root / D.MANIFEST).exists()
    rep = D.validate_dataset(root)
    assert not rep.ok
    assert any("before its first group" in w for w in rep.warnings), rep.warnings
    assert any("5 input(s) failed" in w and "2 of them were not attempted" in w and "3 were tried and failed" in w
               for w in rep.warnings), rep.warnings


@pytest.mark.parametrize("body", [{}, []])
def test_an_empty_json_error_body_adds_nothing_to_the_line(body):
    """A JSON error body the client found no message in has its words added; an empty one has none, and the line
    ends at the status rather than with a bare "- {}"."""
    from test_review_s22_vlmdown import Canned

    with Canned(401, body) as srv, pytest.raises(EndpointUnusableError) as info:
        _judge(srv.url).critique(make_ctx((None, None)))
    line = str(info.value)
    # a 401 ends with where the key comes from since session 29: the server's words (none here) come before it
    # (the client's "Error code: 401" beside our "HTTP 401" said the status twice until session 33)
    assert "HTTP 401: no key was sent" in line and "Error code" not in line, line
    assert "- {}" not in line and "- []" not in line, line


# ------------------------------------------------------------------------------------------------ config


def test_check_base_url_refuses_a_delete_character_and_names_its_position():
    """DEL (0x7f) is a control character too (not below 0x20, not a space): refused, at its 1-based position."""
    from hmrcritic import config
    from hmrcritic.errors import InputError

    with pytest.raises(InputError, match="control character at position 15"):
        config.check_base_url("http://h:1/v1/\x7f")
    assert config.check_base_url("http://h:1/v1/~") == "http://h:1/v1/~"  # 0x7e is printable


def test_the_vlm_model_variable_is_read_without_padding(monkeypatch):
    from hmrcritic.config import JudgeSettings

    monkeypatch.setenv("HMRCRITIC_VLM_MODEL", " qwen2.5-vl \r")
    assert JudgeSettings().model == "qwen2.5-vl"
    monkeypatch.setenv("HMRCRITIC_VLM_MODEL", "   ")  # blank: unset, the default model
    assert JudgeSettings().model == "gpt-4o-mini"


# --------------------------------------------------------------------------------------- critique_groups


def test_critique_groups_a_transient_failure_does_not_restart_the_count(monkeypatch):
    """Two refused keys, a timeout, a third refused key: the timeout neither counts nor resets (only a group scored
    does), so the batch stops there, as critique_many and export do, and the rest read "not tried".
    (critique_group is replaced as in test_review_s22_followups: the count is critique_groups' own logic.)"""
    from types import SimpleNamespace

    from hmrcritic.agent import api

    calls: list[str] = []

    def scripted(**job):
        calls.append(job["group_id"])
        if job["group_id"] == "g2":
            raise JudgeError("VLM judge failed: timed out")
        raise EndpointUnusableError("HTTP 401", "http://127.0.0.1:9/v1", "the key is refused")

    monkeypatch.setattr(api, "critique_group", scripted)
    groups = [{"sample": SimpleNamespace(sample_id=f"s{i}"), "hypotheses": None, "group_id": f"g{i}"}
              for i in range(7)]
    res = api.critique_groups(groups, judge="vlm", workers=1)
    assert calls == ["g0", "g1", "g2", "g3"], calls
    assert [("not tried" in r.error) for r in res] == [False] * 4 + [True] * 3


def test_unusable_endpoint_masks_a_key_its_error_carries(monkeypatch):
    """The reader is duck-typed (any error with ``endpoint_unusable``), and its line goes into failures.jsonl and
    every stop's message: a key in the endpoint or the cause is masked, and a wrapped error is found through its
    cause."""
    from hmrcritic.agent.api import unusable_endpoint

    monkeypatch.setenv("HMRCRITIC_API_KEY", KEY)
    inner = EndpointUnusableError("HTTP 401", f"http://user:{KEY}@127.0.0.1:9/v1", f"the key {KEY} is refused")
    try:
        try:
            raise inner
        except EndpointUnusableError as exc:
            raise JudgeError("group g0: failed") from exc
    except JudgeError as outer:
        line = unusable_endpoint(outer)
    assert line is not None and "127.0.0.1:9/v1" in line and "is refused" in line
    assert KEY not in line and KEY[:12] not in line, line
    assert unusable_endpoint(JudgeError("timed out")) is None


# ------------------------------------------------------------------------------------------ score_groups


def test_evaluation_scoring_restarts_the_count_at_each_group_scored(monkeypatch, tmp_path):
    """Two refused keys, a group scored, two refused keys, a group scored, two refused: never three in a row, so
    every group is sent (critique_group replaced as in test_review_s22_followups)."""
    from types import SimpleNamespace

    from hmrcritic.agent import api
    from hmrcritic.agent.learning_curve import score_groups

    monkeypatch.setenv("HMRCRITIC_HOME", str(tmp_path))

    class Scored:  # a result with no run folder (discard_run takes a path)
        overall, memory_version = [1.0, 2.0], "v1"

        def __fspath__(self) -> str:
            return str(tmp_path / "no-run-folder")

    calls: list[str] = []

    def scripted(*_args, **job):
        calls.append(job["group_id"])
        if job["group_id"].endswith(("-g2", "-g5")):
            return Scored()
        raise EndpointUnusableError("HTTP 401", "http://127.0.0.1:9/v1", "the key is refused")

    monkeypatch.setattr(api, "critique_group", scripted)
    groups = [SimpleNamespace(sample=None, hypotheses=None, group_id=f"g{i}") for i in range(8)]
    failed: list[str] = []
    scores, versions = score_groups(groups, None, "evidence_only", failures=failed)
    assert len(calls) == 8, calls
    assert [s is not None for s in scores] == [i in (2, 5) for i in range(8)]
    assert not any("not tried" in f for f in failed), failed


# ---------------------------------------------------------------------------------------------- explore


def test_an_exploration_round_that_scored_a_group_is_not_stopped_by_endpoint_failures(monkeypatch, tmp_path):
    """The round stops on an unusable endpoint only while nothing of it was scored: here the first group is scored
    (the real builtin critique), the next five fail with a refused key, and the round ends as any round with
    failures does: it learns from what it scored, the failures listed."""
    from test_explore import _groups, _memory

    from hmrcritic.agent import api
    from hmrcritic.agent import explore as ex

    monkeypatch.setenv("HMRCRITIC_HOME", str(tmp_path / "home"))
    train = _groups(tmp_path, "train", 6, seed=1, gens=6)
    mem = _memory(tmp_path / "mem")
    real, calls = api.critique_group, []

    def first_then_refused(*args, **kw):
        calls.append(kw.get("group_id"))
        if len(calls) == 1:
            return real(*args, **kw)
        raise EndpointUnusableError("HTTP 401", "http://127.0.0.1:9/v1", "the key is refused")

    monkeypatch.setattr(api, "critique_group", first_then_refused)
    ex.explore(mem, split="train", groups=train, rounds=1, batch_size=6)
    assert len(calls) == 6, calls
