"""The Ray executor of the export under failure: a dead actor, a wrong address, an error in the driver.

A dead Ray worker (killed, out of memory, ``SystemExit``) must fail only the group it was running (stage "worker",
as the process pool does), the export finishes the others, a re-run retries it, and the Ray the export started
is shut down whatever happens. Scoring is ``test_export.fake_score``, with a worker that dies on chosen ids.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

import pytest
from test_export import cfg_for, fake_score, make_inputs, model_path  # noqa: F401  (fixture)

from hmrcritic.alignment import dataset as D
from hmrcritic.alignment import export as E
from hmrcritic.alignment.export import export, format_summary
from hmrcritic.errors import InputError

ray = pytest.importorskip("ray")
TESTS = Path(__file__).resolve().parent
SCORER = "test_export_ray:dying_score"


def dying_score(sample, hypotheses, **kw):
    """fake_score, except that the worker process dies on HMRCRITIC_TEST_EXIT_IDS (``os._exit``: killed, OOM)
    and raises ``SystemExit`` on HMRCRITIC_TEST_SYSEXIT_IDS."""
    if sample.sample_id in os.environ.get("HMRCRITIC_TEST_EXIT_IDS", "").split(","):
        os._exit(3)
    if sample.sample_id in os.environ.get("HMRCRITIC_TEST_SYSEXIT_IDS", "").split(","):
        raise SystemExit(2)
    return fake_score(sample, hypotheses, **kw)


@pytest.fixture()
def ray_env(monkeypatch):
    """The local Ray the export starts inherits this environment: its workers can import this module."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]))
    if ray.is_initialized():  # pragma: no cover - another test left one behind
        ray.shutdown()
    yield
    if ray.is_initialized():  # pragma: no cover - the export under test did not shut it down
        ray.shutdown()
        pytest.fail("the export left Ray running")


def _failures(root: Path) -> list[dict]:
    return [json.loads(line) for line in (root / D.FAILURES).read_text().splitlines()]


@pytest.mark.slow
def test_a_dead_ray_worker_fails_only_its_group_and_a_rerun_retries_it(model_path, tmp_path, monkeypatch,  # noqa: F811
                                                                      ray_env, capfd):
    """ActorPool raised ActorDiedError out of export(): no failure record, the other groups lost, and the
    long "(raylet) A worker died…" paragraph printed on stdout (into --json output, under the progress bar)."""
    monkeypatch.setenv("HMRCRITIC_TEST_EXIT_IDS", "img001")
    monkeypatch.setenv("HMRCRITIC_TEST_SYSEXIT_IDS", "img003")
    root = tmp_path / "ds"
    inputs = make_inputs(5)
    cfg = cfg_for(root, model_path, workers=2, ray_address="local", score_group=SCORER)
    s = export(cfg, inputs=inputs)
    assert not ray.is_initialized(), "the local Ray started by the export is still up"
    assert s.executor == "ray(local)×2"
    assert (s.groups, s.new_groups, s.failures) == (3, 3, 2)
    fails = _failures(root)
    assert [(f["input_id"], f["stage"]) for f in fails] == [("img001", "worker"), ("img003", "worker")]
    assert all(set(f) == {"group_id", "input_id", "stage", "error", "checksum"} for f in fails)
    assert all("re-run retries it" in f["error"] for f in fails)
    assert sum(s.failure_reasons.values()) == 2 and "failures.jsonl" in format_summary(s)
    assert [r.input_id for r in D.read_manifest(root)] == ["img000", "img002", "img004"]
    rep = D.validate_dataset(root)
    assert rep.ok, rep.errors
    assert any("2 input(s) failed" in w for w in rep.warnings)
    assert D.read_header(root).counts["finished"] is True
    out, err = capfd.readouterr()
    assert "worker died" not in out + err and "(raylet)" not in out + err, out + err
    # a re-run (any executor) retries exactly the failed groups
    monkeypatch.setenv("HMRCRITIC_TEST_EXIT_IDS", "")
    monkeypatch.setenv("HMRCRITIC_TEST_SYSEXIT_IDS", "")
    again = export(cfg_for(root, model_path, score_group=SCORER), inputs=inputs)
    assert (again.groups, again.new_groups, again.done_before, again.failures) == (5, 2, 3, 0)
    assert (root / D.FAILURES).read_text() == "" and D.validate_dataset(root).ok


@pytest.mark.slow
def test_an_error_in_the_driver_shuts_down_the_ray_it_started(model_path, tmp_path, monkeypatch, ray_env):  # noqa: F811
    """Ctrl-C (or any error) in the parent while groups run: the actors and the local Ray go at once, not when
    the suspended generator happens to be collected (the traceback kept it alive, Ray and all)."""
    calls = []

    def interrupted(*a, **kw):
        calls.append(1)
        raise KeyboardInterrupt

    monkeypatch.setattr(E, "_write_group", interrupted)
    with pytest.raises(KeyboardInterrupt) as info:
        export(cfg_for(tmp_path / "ds", model_path, workers=2, ray_address="local", score_group=SCORER),
               inputs=make_inputs(4))
    # the caller still holds the traceback (as a --debug handler or an interactive session does)
    assert calls == [1] and info.tb is not None
    assert not ray.is_initialized(), "Ray still running after the export was interrupted"
    assert not (tmp_path / "ds" / D.MANIFEST).exists() or D.read_manifest(tmp_path / "ds") == []


@pytest.fixture()
def dead_port():
    """A port where nothing listens, kept so for the test: bound here but never listening (a connection is
    refused). A port freed again before the test used it could be taken meanwhile by another process's server
    (a busy CI machine runs several), and ray.init then tried that server for many minutes."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield s.getsockname()[1]


@pytest.mark.parametrize("form", ["{host}:{port}", "ray://alice:s3cretpw@{host}:{port}",
                                  "alice:s3cretpw@{host}:{port}"])
def test_a_wrong_ray_address_fails_at_once_in_one_line_without_its_password(model_path, tmp_path, form,  # noqa: F811
                                                                           dead_port):
    """ray.init retried an address where nothing listens for 10+ minutes, printing a warning every 5 s; the
    error line showed the address's password."""
    port = dead_port
    address = form.format(host="127.0.0.1", port=port)
    t0 = time.monotonic()
    with pytest.raises(InputError) as info:
        export(cfg_for(tmp_path / "ds", model_path, ray_address=address, score_group=SCORER),
               inputs=make_inputs(1))
    msg = str(info.value)
    assert time.monotonic() - t0 < 20
    assert f"127.0.0.1:{port}" in msg and "s3cretpw" not in msg and "\n" not in msg, msg
    assert not ray.is_initialized() and not (tmp_path / "ds").exists()  # nothing written


@pytest.mark.slow
def test_a_ray_cluster_without_cpus_is_refused_in_one_line(model_path, tmp_path, ray_env):  # noqa: F811
    """Its workers could never start (each takes 1 CPU): the export waited forever under a still progress bar."""
    ray.init(num_cpus=0, include_dashboard=False, log_to_driver=False)
    try:
        t0 = time.monotonic()
        with pytest.raises(InputError, match="has no CPUs") as info:
            export(cfg_for(tmp_path / "ds", model_path, workers=2, ray_address="auto", score_group=SCORER),
                   inputs=make_inputs(2))
        assert time.monotonic() - t0 < 60 and "\n" not in str(info.value)
        assert not (tmp_path / "ds" / D.MANIFEST).exists() or D.read_manifest(tmp_path / "ds") == []
    finally:
        ray.shutdown()


@ray.remote(num_cpus=1)
class _Hog:
    """Another job's actor holding the cluster's only CPU."""

    def ready(self) -> bool:
        return True


@pytest.mark.slow
def test_workers_waiting_for_a_busy_clusters_cpu_are_reported_and_then_run(model_path, tmp_path, ray_env,  # noqa: F811
                                                                           monkeypatch, caplog):
    """Other jobs hold every CPU: the export says its workers wait for one (nothing but a still bar before),
    keeps waiting, and finishes every group once the CPU is free."""
    import logging
    import threading

    monkeypatch.setattr(E, "RAY_STARVED_NOTE_S", 1.0)
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        hog = _Hog.remote()
        ray.get(hog.ready.remote())
        threading.Timer(4.0, lambda: ray.kill(hog)).start()
        with caplog.at_level(logging.WARNING, logger="hmrcritic.export"):
            s = export(cfg_for(tmp_path / "ds", model_path, workers=1, ray_address="auto", score_group=SCORER),
                       inputs=make_inputs(2))
        assert (s.groups, s.failures) == (2, 0)
        notes = [r.getMessage() for r in caplog.records if r.name == "hmrcritic.export"]
        assert notes and "1 of 1 Ray worker(s) still wait for a free CPU" in notes[0], notes
        assert "0 of 1 CPUs free" in notes[0], notes
    finally:
        ray.shutdown()
