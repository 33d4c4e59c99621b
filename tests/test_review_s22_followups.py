"""Follow-ups (session 22) to the helpers' reports: what they found outside their own files."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from test_export import cfg_for, make_inputs, model_path  # noqa: F401  (fixture)

from hmrcritic.alignment import dataset as D
from hmrcritic.alignment.export import export

sys.path.insert(0, str(Path(__file__).parent))


def test_a_failures_line_without_a_group_id_does_not_stop_the_export(model_path, tmp_path, monkeypatch):  # noqa: F811
    """failures.jsonl is JSON lines anyone can edit: a line that parses to another object (``{}``) ended the
    export's summary in a KeyError after every group was written (the reader skips torn lines, not these)."""
    out, inputs = tmp_path / "ds", make_inputs(3)
    monkeypatch.setenv("HMRCRITIC_TEST_FAIL_IDS", "img001")
    assert export(cfg_for(out, model_path), inputs=inputs).failures == 1
    with open(out / D.FAILURES, "a") as fh:
        fh.write(json.dumps({}) + "\n" + json.dumps({"group_id": 5}) + "\n")
    # validate counts the one input that failed, not "None" and "5" beside it
    assert [w for w in D.validate_dataset(out).warnings if "failed" in w][0].startswith("1 input(s) failed")
    monkeypatch.setenv("HMRCRITIC_TEST_FAIL_IDS", "")
    summary = export(cfg_for(out, model_path), inputs=inputs)
    assert (summary.groups, summary.failures) == (3, 0), summary.first_failure
    assert D.validate_dataset(out).ok


def test_a_variant_that_failed_names_its_first_reason(monkeypatch, capsys, tmp_path):
    """explore-eval / evaluate-critic with every critique failing said "with --judge vlm: check the endpoint"
    whatever the cause (the curve helper's home with a train split too small for the pose prior never saw "only 40
    train poses available"): score_groups dropped each group's error."""
    from types import SimpleNamespace

    from hmrcritic.agent import api
    from hmrcritic.agent.learning_curve import score_groups
    from hmrcritic.commands import say_failed_groups
    from hmrcritic.errors import AssetError

    monkeypatch.setenv("HMRCRITIC_HOME", str(tmp_path))

    def fails(sample, hyps, **kw):
        raise AssetError("pose prior: only 40 train poses available")

    monkeypatch.setattr(api, "critique_group", fails)
    groups = [SimpleNamespace(sample=None, hypotheses=None, group_id=f"g{i}") for i in range(2)]
    failed: list[str] = []
    scores, _ = score_groups(groups, None, "evidence_only", failures=failed)
    assert scores == [None, None]
    assert failed == ["g0: pose prior: only 40 train poses available", "g1: pose prior: only 40 train poses available"]

    res = {"num_groups": 2, "rows": [{"variant": "full", "groups_scored": 0, "first_failure": failed[0]}]}
    with pytest.raises(SystemExit):
        say_failed_groups(res, "explore-eval")
    err = capsys.readouterr().err
    assert "only 40 train poses available" in err and "check the endpoint" not in err
    # without a reason (an older result) the hint stays
    with pytest.raises(SystemExit):
        say_failed_groups({"num_groups": 2, "rows": [{"variant": "full", "groups_scored": 0}]}, "explore-eval")
    assert "check the endpoint" in capsys.readouterr().err


def _groups(n):
    from types import SimpleNamespace

    return [{"sample": SimpleNamespace(sample_id=f"s{i}"), "hypotheses": None, "group_id": f"g{i}"} for i in range(n)]


def test_critique_groups_stops_sending_to_an_endpoint_that_cannot_be_used(monkeypatch):
    """``critique_groups`` (the Python API's batch, as export's loop) sent every group to an endpoint that refused
    the key, each after its retries; now three such failures in a row end the sending, the rest read "not tried"."""
    from hmrcritic.agent import api
    from hmrcritic.agent.vlm import EndpointUnusableError
    from hmrcritic.errors import JudgeError

    calls = []

    def refused(**job):
        calls.append(job["group_id"])
        try:
            raise EndpointUnusableError("VLM judge failed: HTTP 401", "http://127.0.0.1:9/v1", "the key is refused")
        except EndpointUnusableError as exc:  # as the graph passes it on: wrapped
            raise JudgeError(f"group {job['group_id']}: {exc}") from exc

    monkeypatch.setattr(api, "critique_group", refused)
    for workers in (1, 2):
        calls.clear()
        res = api.critique_groups(_groups(8), judge="vlm", workers=workers)
        assert len(res) == 8 and all(r.error and r.result is None for r in res)
        assert 3 <= len(calls) <= 3 + workers - 1, calls  # the threads already running finish theirs
        assert sum("not tried" in r.error for r in res) == 8 - len(calls)
        assert all("the key is refused" in r.error for r in res if "not tried" in r.error)


def test_critique_groups_goes_on_through_transient_failures_and_resets_on_a_success(monkeypatch):
    from hmrcritic.agent import api
    from hmrcritic.agent.vlm import EndpointUnusableError
    from hmrcritic.errors import JudgeError

    calls = []

    def mixed(**job):  # two endpoint failures, a success, two more, a timeout, two more: never three in a row
        calls.append(job["group_id"])
        i = int(job["group_id"][1:])
        if i in (2, 5):
            return "ok"
        if i == 6:
            raise JudgeError("VLM judge failed: timed out")
        raise EndpointUnusableError("HTTP 401", "http://127.0.0.1:9/v1", "the key is refused")

    monkeypatch.setattr(api, "critique_group", mixed)
    res = api.critique_groups(_groups(9), judge="vlm")
    assert len(calls) == 9 and not any("not tried" in (r.error or "") for r in res)
    # jobs with judges of their own are not stopped for one another's endpoint
    calls.clear()
    jobs = [{**g, "judge": "vlm"} for g in _groups(6)]
    monkeypatch.setattr(api, "critique_group", lambda **job: mixed(**{**job, "group_id": "g0"}))
    api.critique_groups(jobs)
    assert len(calls) == 6


def test_blank_chroma_url_is_the_memory_on_disk(monkeypatch, tmp_path):
    """``HMRCRITIC_CHROMA_URL=" "`` (an env file's empty slot) was read raw in eight places: every command that
    opened a memory tried to reach a Chroma server at " " (the envvars review)."""
    from hmrcritic.agent.state import AgentConfig
    from hmrcritic.config import env_chroma_url
    from hmrcritic.memory.store import MemoryStore

    monkeypatch.setenv("HMRCRITIC_HOME", str(tmp_path))
    for blank in (" ", "\r", " \t"):
        monkeypatch.setenv("HMRCRITIC_CHROMA_URL", blank)
        assert env_chroma_url() is None and AgentConfig().chroma_url is None
    store = MemoryStore(tmp_path / "m")
    assert store.stats()["rules"] > 0 and (tmp_path / "m").is_dir()
    monkeypatch.setenv("HMRCRITIC_CHROMA_URL", " http://127.0.0.1:9\r")
    assert env_chroma_url() == "http://127.0.0.1:9"


def test_debug_and_judge_variables_read_as_the_others(monkeypatch):
    """``HMRCRITIC_DEBUG=true`` (or ``1\\r``) printed no traceback: only exactly "1" counted; a blank
    ``HMRCRITIC_JUDGE`` was "judge '' is unknown" instead of the default, as every other blank variable."""
    from hmrcritic.agent.state import AgentConfig
    from hmrcritic.config import env_debug

    for on in ("1", "true", "YES", "1\r", " on "):
        monkeypatch.setenv("HMRCRITIC_DEBUG", on)
        assert env_debug(), on
    for off in ("", "0", "no", "garbage"):
        monkeypatch.setenv("HMRCRITIC_DEBUG", off)
        assert not env_debug(), off
    monkeypatch.setenv("HMRCRITIC_JUDGE", "  ")
    assert AgentConfig().judge == "builtin"
    monkeypatch.setenv("HMRCRITIC_JUDGE", "vlm\r")
    assert AgentConfig().judge == "vlm"


def test_doctor_checks_the_lock_timeout_and_split_scale(monkeypatch, tmp_path):
    """``HMRCRITIC_MEMORY_LOCK_TIMEOUT=abc`` or ``HMRCRITIC_SPLIT_SIZE_SCALE=-2`` passed doctor ("all checks
    passed"), and then every memory write or first-use data generation failed."""
    from hmrcritic.commands.doctor import _folders

    monkeypatch.setenv("HMRCRITIC_HOME", str(tmp_path))
    res = _folders()
    assert res["ok"] and res["settings"] == {"HMRCRITIC_MEMORY_LOCK_TIMEOUT": 300.0, "HMRCRITIC_SPLIT_SIZE_SCALE": 1.0}
    monkeypatch.setenv("HMRCRITIC_MEMORY_LOCK_TIMEOUT", "abc")
    monkeypatch.setenv("HMRCRITIC_SPLIT_SIZE_SCALE", "-2")
    res = _folders()
    assert not res["ok"]
    assert "HMRCRITIC_MEMORY_LOCK_TIMEOUT='abc'" in res["error"] and "HMRCRITIC_SPLIT_SIZE_SCALE='-2'" in res["error"]



@pytest.mark.usefixtures("small_prior")
def test_a_relative_run_dir_is_stored_absolute(monkeypatch, tmp_path):
    """``critique_group(run_dir="mine/g1")`` stored the path as given: a prune run from another folder took the
    thread for an orphan and deleted it, and a report written elsewhere found no images (traceruns review)."""
    from test_agent_graph import cfg, make_group

    from hmrcritic.agent.api import critique_group
    from hmrcritic.agent.graph import compile_graph, open_checkpointer
    from hmrcritic.memory.store import MemoryStore

    monkeypatch.chdir(tmp_path)
    saver = open_checkpointer(tmp_path / "ckpt.sqlite")
    s, h, _ = make_group(1)
    res = critique_group(s, h, memory=MemoryStore(tmp_path / "memory"), config=cfg(), checkpointer=saver,
                         run_dir="mine/g1")
    assert res.run_dir == str(tmp_path / "mine" / "g1")
    stored = compile_graph(saver).get_state({"configurable": {"thread_id": "scene-1"}}).values
    assert stored["run_dir"] == str(tmp_path / "mine" / "g1")


def _refusing_endpoint(calls):
    from hmrcritic.agent.vlm import EndpointUnusableError
    from hmrcritic.errors import JudgeError

    def refused(*args, **job):
        calls.append(job.get("group_id"))
        try:
            raise EndpointUnusableError("VLM judge failed: HTTP 401", "http://127.0.0.1:9/v1", "the key is refused")
        except EndpointUnusableError as exc:
            raise JudgeError(f"group {job.get('group_id')}: {exc}") from exc

    return refused


def test_evaluation_scoring_stops_sending_to_an_endpoint_that_cannot_be_used(monkeypatch, tmp_path):
    """explore-eval / evaluate-critic / learning-curve score every group of every variant: against a refused key each
    failed after its retries (100 groups × 6 variants). Three in a row, and the rest fail "not tried" at once."""
    from types import SimpleNamespace

    from hmrcritic.agent import api
    from hmrcritic.agent.learning_curve import score_groups

    monkeypatch.setenv("HMRCRITIC_HOME", str(tmp_path))
    calls: list = []
    monkeypatch.setattr(api, "critique_group", _refusing_endpoint(calls))
    groups = [SimpleNamespace(sample=None, hypotheses=None, group_id=f"g{i}") for i in range(7)]
    failed: list[str] = []
    scores, _ = score_groups(groups, None, "evidence_only", failures=failed)
    assert scores == [None] * 7 and len(calls) == 3
    assert len(failed) == 7 and all("not tried" in f and "the key is refused" in f for f in failed[3:])


def test_an_exploration_round_stops_on_an_endpoint_that_cannot_be_used(monkeypatch, tmp_path):
    """A round whose groups all fail raised only after every group's retries; with the endpoint itself refused it
    stops after three, nothing recorded (a re-run with the endpoint fixed explores the round)."""
    import pytest
    from test_explore import _groups, _memory

    from hmrcritic.agent import api
    from hmrcritic.agent import explore as ex
    from hmrcritic.errors import HMRCriticError

    monkeypatch.setenv("HMRCRITIC_HOME", str(tmp_path / "home"))
    train = _groups(tmp_path, "train", 6, seed=1, gens=6)
    mem = _memory(tmp_path / "mem")
    calls: list = []
    monkeypatch.setattr(api, "critique_group", _refusing_endpoint(calls))
    with pytest.raises(HMRCriticError, match="stopped after 3 groups failed because the VLM endpoint cannot be used"):
        ex.explore(mem, split="train", groups=train, rounds=1, batch_size=6)
    assert len(calls) == 3
    assert not ex.read_log(mem)
