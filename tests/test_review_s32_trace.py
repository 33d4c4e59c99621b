"""Session 32 review of run traces: what `trace` says when there is no run, an unknown run, or a damaged trace.

- ``trace --last`` on a fresh home said only "no runs recorded yet in DIR": nothing said how a run gets there or
  which variable picks the folder.
- ``trace RUN_ID`` with an unknown id said "run 'x' not found in DIR", with no way on (no command lists runs).
- ``trace --last`` with ``LAST`` removed beside traces said "no runs recorded yet", which was untrue.
- A trace cut short within its first record (or emptied) printed "(empty trace)" and exited 0; one damaged in the
  middle showed its steps with one missing and nothing saying why."""

from __future__ import annotations

import json
import logging

import pytest

from hmrcritic.agent.state import AgentConfig
from hmrcritic.agent.trace import TraceWriter, read_trace, resolve_run, traces_dir
from hmrcritic.cli import main
from hmrcritic.errors import InputError


@pytest.fixture()
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("HMRCRITIC_HOME", str(tmp_path))
    monkeypatch.delenv("HMRCRITIC_RUNS", raising=False)
    return tmp_path


def _run(run_id: str = "20260101-000000-000000-g1") -> TraceWriter:
    tw = TraceWriter(run_id, "g1")
    tw.start(AgentConfig())
    for node in ("render", "recall", "critique", "reflect"):
        tw.node(node, {}, 0.001)
    tw.finish({"round": 0, "done": True})
    return tw


def test_last_on_a_fresh_home_says_how_a_run_is_recorded(home):
    with pytest.raises(InputError) as err:
        resolve_run(last=True)
    msg = str(err.value)
    assert str(traces_dir()) in msg and "no runs recorded yet" in msg
    assert "hmrcritic critique --scene test:0" in msg and "HMRCRITIC_RUNS" in msg and "HMRCRITIC_HOME" in msg


def test_the_fresh_home_message_names_the_folder_hmrcritic_runs_chose(home, tmp_path, monkeypatch):
    monkeypatch.setenv("HMRCRITIC_RUNS", str(tmp_path / "elsewhere"))
    with pytest.raises(InputError, match="elsewhere/traces: a critique records one"):
        read_trace(last=True)


def test_an_unknown_run_id_names_the_folder_and_the_way_on(home):
    _run()
    with pytest.raises(InputError) as err:
        read_trace("no-such-run")
    msg = str(err.value)
    assert f"not found in {traces_dir()}" in msg
    assert "hmrcritic trace --last" in msg and f"ls {traces_dir()}" in msg


def test_an_unknown_run_id_on_a_fresh_home_says_none_is_recorded(home):
    with pytest.raises(InputError, match="run 'abc' not found: no runs recorded yet in .*a critique records one"):
        read_trace("abc")


def test_last_without_its_pointer_beside_traces_names_the_newest(home):
    tw = _run()
    (traces_dir() / "LAST").unlink()
    with pytest.raises(InputError) as err:
        resolve_run(last=True)
    msg = str(err.value)
    assert "no runs recorded yet" not in msg and f"hmrcritic trace {tw.run_id}" in msg and "LAST is missing" in msg


@pytest.mark.parametrize("keep", [0, 100])
def test_a_trace_cut_within_its_first_record_is_refused_naming_it(home, keep):
    tw = _run()
    tw.path.write_bytes(tw.path.read_bytes()[:keep])
    with pytest.raises(InputError) as err:
        read_trace(tw.run_id)
    assert str(tw.path) in str(err.value)
    assert ("is empty" if keep == 0 else "cut short or damaged") in str(err.value)


def test_a_trace_damaged_mid_file_is_read_with_a_warning(home, caplog):
    tw = _run()
    lines = tw.path.read_bytes().splitlines(keepends=True)
    lines[1] = lines[1][:10] + b"\x00" * 20 + lines[1][30:]  # the first node's record garbled
    tw.path.write_bytes(b"".join(lines))
    with caplog.at_level(logging.WARNING, logger="hmrcritic.agent.trace"):
        records = read_trace(tw.run_id)
    assert [r.get("step") for r in records if r["event"] == "node"] == [2, 3, 4]
    assert any("1 of the 6 lines" in r.getMessage() and str(tw.path) in r.getMessage() for r in caplog.records)


def test_an_intact_trace_reads_without_a_warning(home, caplog):
    _run()
    with caplog.at_level(logging.WARNING, logger="hmrcritic.agent.trace"):
        assert [r["event"] for r in read_trace(last=True)] == ["start", "node", "node", "node", "node", "finish"]
    assert not caplog.records


def _edited(tw: TraceWriter, step: int, **fields) -> None:
    """The node record of ``step`` edited by hand: ``fields`` set, its checksum dropped (nothing left to fail)."""
    lines = tw.path.read_text(encoding="utf-8").splitlines()
    for i, line in enumerate(lines):
        rec = json.loads(line)
        if rec.get("step") == step:
            rec.pop("checksum")
            rec.update(fields)
            lines[i] = json.dumps(rec)
    tw.path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _strict(text: str):
    def refuse(token):
        raise ValueError(f"{token} is not JSON")

    return json.loads(text, parse_constant=refuse)


@pytest.mark.parametrize("fields", [{"seconds": float("nan")}, {"seconds": float("inf")},
                                    {"changed": {"keys": [], "x": [float("-inf")]}}],
                         ids=["nan", "inf", "nested-inf"])
def test_trace_json_of_a_record_edited_to_nan_is_valid_json(home, capsys, fields):
    tw = _run()
    _edited(tw, 2, **fields)
    assert main(["trace", tw.run_id, "--json"]) == 0
    printed = _strict(capsys.readouterr().out)  # NaN / Infinity are no JSON
    assert [r.get("step") for r in printed if r["event"] == "node"] == [1, 3, 4]


def test_trace_json_of_a_record_nested_hundreds_deep_is_printed(home, capsys):
    tw = _run()
    deep: list = []
    for _ in range(700):
        deep = [deep]
    _edited(tw, 2, extra=deep)
    assert main(["trace", tw.run_id, "--json"]) == 0
    captured = capsys.readouterr()
    assert "RecursionError" not in captured.err
    assert [r.get("step") for r in _strict(captured.out) if r["event"] == "node"] == [1, 3, 4]
