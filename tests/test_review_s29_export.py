"""Export when a worker process or the Chroma memory server dies mid-run (a lab walk-through).

A ``kill -9`` of one of two workers failed every group not finished — the healthy worker's too — with a message
about notebooks' ``__main__`` classes, and the summary's counts cut that message inside its parenthesis. A memory
server killed mid-export failed the groups left one by one (exit 0) where a VLM endpoint that cannot be used
stops the batch after ``UNUSABLE_IN_A_ROW`` groups. Real spawned workers, a real ``chroma run`` server.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import time

import pytest
from test_export import TESTS, Inp, cfg_for, fake_score, make_inputs, model_path  # noqa: F401  (a fixture)

from hmrcritic.agent.api import UNUSABLE_IN_A_ROW
from hmrcritic.alignment import dataset as D
from hmrcritic.alignment.export import export, format_summary
from hmrcritic.errors import AssetError


def killing_score(sample, hypotheses, **kw):
    """fake_score, except that the worker process is killed with SIGKILL on the ids in HMRCRITIC_TEST_KILL_IDS
    (``*``: every id)."""
    ids = os.environ.get("HMRCRITIC_TEST_KILL_IDS", "").split(",")
    if sample.sample_id in ids or "*" in ids:
        os.kill(os.getpid(), signal.SIGKILL)
    return fake_score(sample, hypotheses, **kw)


def memory_score(sample, hypotheses, memory=None, **kw):
    """fake_score after a read of the frozen memory's server, as the agent's prototype recall does for every group."""
    memory.prototypes.count()
    return fake_score(sample, hypotheses, memory=memory, **kw)


def _failures(out) -> list[dict]:
    return [json.loads(line) for line in (out / D.FAILURES).read_text().splitlines()]


@pytest.fixture()
def spawned(monkeypatch):
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]))


@pytest.mark.slow
def test_a_killed_worker_costs_only_the_group_it_held(model_path, tmp_path, monkeypatch, spawned):  # noqa: F811
    """One of two workers killed with -9: the pool broke and every group not finished failed (the other worker's
    too), each with the same line about notebooks' __main__ classes. Now the group it held fails, naming the
    process and its exit code, and the others run in a new pool; the summary counts it under a whole phrase."""
    monkeypatch.setenv("HMRCRITIC_TEST_KILL_IDS", "img001")
    out = tmp_path / "ds"
    s = export(cfg_for(out, model_path, workers=2, score_group="test_review_s29_export:killing_score"),
               inputs=make_inputs(6))
    assert (s.groups, s.failures) == (5, 1), format_summary(s)
    [fail] = _failures(out)
    assert fail["input_id"] == "img001" and fail["stage"] == "worker"
    assert "exit code -9" in fail["error"] and "SIGKILL" in fail["error"] and "pid " in fail["error"]
    assert "__main__" not in fail["error"]  # it loaded its task: the hint does not apply
    assert s.failure_reasons == {"a worker process died while running this group": 1}


@pytest.mark.slow
def test_workers_that_all_die_stop_after_a_few_pools(model_path, tmp_path, monkeypatch, spawned):  # noqa: F811
    """Every task kills its worker: a new pool is started only a bounded number of times, then the groups left
    fail (a re-run retries them) instead of the export starting pool after pool."""
    monkeypatch.setenv("HMRCRITIC_TEST_KILL_IDS", "*")
    out = tmp_path / "ds"
    t0 = time.monotonic()
    s = export(cfg_for(out, model_path, workers=2, score_group="test_review_s29_export:killing_score"),
               inputs=make_inputs(8))
    assert (s.groups, s.failures) == (0, 8) and time.monotonic() - t0 < 240
    fails = _failures(out)
    assert all(f["stage"] == "worker" and "exit code -9" in f["error"] for f in fails), fails
    assert any("kept dying" in f["error"] for f in fails), fails
    assert all("(" not in k for k in s.failure_reasons), s.failure_reasons


def test_a_memory_server_killed_mid_export_stops_it_naming_the_server(model_path, tmp_path):  # noqa: F811
    """The Chroma server killed after two groups: the groups left failed one by one as AssetError "the Chroma
    server … stopped answering", and the export ended 0, where a VLM endpoint that cannot be used stops the batch.
    Now it stops after UNUSABLE_IN_A_ROW such groups, the rest listed not_attempted, with an error that names the
    memory server (not "the VLM endpoint")."""
    from conftest import start_chroma_server

    from hmrcritic.memory.store import MemoryStore

    proc, port = start_chroma_server(tmp_path / "srv")
    try:
        url = f"http://bob:hunter2secret@127.0.0.1:{port}"
        MemoryStore(tmp_path / "lock", chroma_url=url)  # creates and seeds the server's memory

        def kill_after_two(done: int, total: int) -> None:
            if done == 2 and proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)

        out = tmp_path / "ds"
        cfg = cfg_for(out, model_path, use_memory=True, memory=str(tmp_path / "lock"), chroma_url=url,
                      score_group="test_review_s29_export:memory_score")
        with pytest.raises(AssetError) as info:
            export(cfg, inputs=make_inputs(8), progress=kill_after_two)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    msg = str(info.value)
    assert f"{UNUSABLE_IN_A_ROW} groups in a row" in msg and "memory server" in msg and "VLM" not in msg, msg
    assert f"127.0.0.1:{port}" in msg and "hunter2secret" not in msg and "start the memory server again" in msg
    assert len(D.read_manifest(out)) == 2
    fails = _failures(out)
    assert [f["stage"] for f in fails] == ["score"] * UNUSABLE_IN_A_ROW + ["not_attempted"] * 3, fails
    assert all("stopped answering" in f["endpoint_unusable"] and "memory server" in f["endpoint_unusable"]
               for f in fails), fails
    assert all("VLM" not in f["error"] and "hunter2secret" not in json.dumps(f) for f in fails), fails
    # what validate and finetune then say of the groups not attempted names the memory server too
    note = D.not_attempted_note(out, [f["group_id"] for f in fails])
    assert "3 of them were not attempted, the export having stopped because its memory server could not" in note


@pytest.mark.slow
def test_samples_no_worker_can_load_fail_with_the_main_hint_after_a_few_pools(model_path, tmp_path, monkeypatch,  # noqa: F811
                                                                            spawned):
    """The worker dies loading its task (it holds no group): the hint about __main__ classes applies there, and
    the pools started for it are bounded."""
    import sys

    # a sample class the parent pickles as __main__.S29MainInp (a notebook's, a script's): no spawned worker has it
    main_inp = type("S29MainInp", (Inp,), {"__module__": "__main__"})
    monkeypatch.setattr(sys.modules["__main__"], "S29MainInp", main_inp, raising=False)
    inputs = [main_inp(**dataclasses.asdict(i)) for i in make_inputs(3)]
    out = tmp_path / "ds"
    s = export(cfg_for(out, model_path, workers=2), inputs=inputs)
    assert (s.groups, s.failures) == (0, 3), format_summary(s)
    fails = _failures(out)
    assert all("kept dying" in f["error"] and "__main__" in f["error"] for f in fails), fails


def exiting_score(sample, hypotheses, **kw):
    """fake_score, except that the worker process ends with os._exit(0) on the ids in HMRCRITIC_TEST_EXIT_IDS."""
    if sample.sample_id in os.environ.get("HMRCRITIC_TEST_EXIT_IDS", "").split(","):
        os._exit(0)
    return fake_score(sample, hypotheses, **kw)


@pytest.mark.slow
def test_a_worker_that_exits_0_holding_a_group_is_the_one_blamed(model_path, tmp_path, monkeypatch, spawned):  # noqa: F811
    """Exit codes of 0 were dropped: a worker ending with os._exit(0) inside a group was never found, its group was
    retried pool after pool and failed with the hint about tasks that cannot be loaded (they were loaded)."""
    monkeypatch.setenv("HMRCRITIC_TEST_EXIT_IDS", "img002")
    out = tmp_path / "ds"
    s = export(cfg_for(out, model_path, workers=2, score_group="test_review_s29_export:exiting_score"),
               inputs=make_inputs(5))
    assert (s.groups, s.failures) == (4, 1), format_summary(s)
    [fail] = _failures(out)
    assert fail["input_id"] == "img002" and "exit code 0" in fail["error"] and "__main__" not in fail["error"]


def test_a_memory_server_gone_before_the_workers_open_it_stops_the_export(model_path, tmp_path, monkeypatch):  # noqa: F811
    """A server that went after the export read its version and before a worker opened the memory (a new pool, a
    replaced Ray actor): every group failed at its set-up, one by one, and the export ended 0. The unreachable
    server's error now carries the same flags as one that stops answering."""
    from conftest import start_chroma_server

    import hmrcritic.alignment.export as E
    from hmrcritic.memory.store import MemoryStore

    proc, port = start_chroma_server(tmp_path / "srv")
    real = E.frozen_memory

    def then_the_server_goes(cfg):
        got = real(cfg)
        proc.kill()
        proc.wait(timeout=10)
        return got

    try:
        url = f"http://127.0.0.1:{port}"
        MemoryStore(tmp_path / "lock", chroma_url=url).close()  # creates and seeds the server's memory
        monkeypatch.setattr(E, "frozen_memory", then_the_server_goes)
        out = tmp_path / "ds"
        cfg = cfg_for(out, model_path, use_memory=True, memory=str(tmp_path / "lock"), chroma_url=url,
                      score_group="test_review_s29_export:memory_score")
        with pytest.raises(AssetError, match=r"the memory server cannot be used: .*cannot be reached"):
            export(cfg, inputs=make_inputs(6))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    fails = _failures(out)
    assert [f["stage"] for f in fails] == ["setup"] * UNUSABLE_IN_A_ROW + ["not_attempted"] * 3, fails
