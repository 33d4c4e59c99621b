"""Session 35: `demo`, `runs`, `doctor` and `trace` walked as a new user on a fresh home.

- The demo said "1 rules added" after each round, nothing at all while the score calibration critiqued 32 more
  groups (as long as the exploration: it looked stuck after "round 2"), dropped the note of a calibration that
  was not fitted, and a second run into the same folder re-explored the same rules without saying that it starts
  the memory afresh.
"""

from __future__ import annotations

import json
import types

import pytest


class _Stop(Exception):
    """Raised by the stand-in exploration: the demo's lines up to there are what the tests read."""


class _FakeMemory:
    def __init__(self, path, chroma_url=None):
        from pathlib import Path

        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        (self.path / "chroma.sqlite3").write_bytes(b"")  # what a real memory leaves in its folder

    def reset(self):
        pass

    def close(self):
        pass


@pytest.fixture()
def demo_until_explored(tmp_path, monkeypatch):
    """Run ``run_demo`` with stand-ins for the body model, the model, the test split and the memory, and an
    exploration that emits ``events`` and stops; returns the lines the demo said."""
    from hmrcritic.agent import explore as ex
    from hmrcritic.hmr import body, data, diffusion
    from hmrcritic.memory import store

    monkeypatch.setenv("HMRCRITIC_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("HMRCRITIC_CHROMA_URL", raising=False)
    monkeypatch.setattr(body, "load_body_model", lambda: types.SimpleNamespace(name="mannequin", num_vertices=4008))
    monkeypatch.setattr(diffusion, "load_model", lambda *a, **k: object())
    monkeypatch.setattr(data, "load_split", lambda split: [object()] * 5)
    monkeypatch.setattr(store, "MemoryStore", _FakeMemory)

    def run(events, out=None):
        def fake_explore(memory, progress=None, **kw):
            for event, payload in events:
                progress(event, payload)
            raise _Stop

        monkeypatch.setattr(ex, "explore", fake_explore)
        from hmrcritic.demo import run_demo

        said: list[str] = []
        with pytest.raises(_Stop):
            run_demo(out or tmp_path / "demo", num_scenes=1, say=said.append)
        return said

    return run


@pytest.fixture()
def whole_demo(tmp_path, monkeypatch, demo_until_explored):
    """``run_demo`` end to end on stand-ins (no sampling, rendering or critique: a few milliseconds a scene)."""
    import numpy as np

    from hmrcritic.agent import api, groups, report
    from hmrcritic.agent import explore as ex
    from hmrcritic.hmr import data, diffusion

    scene = types.SimpleNamespace(sample_id="test-000000", image_path=None, category="standing")
    monkeypatch.setattr(data, "load_split", lambda split: [scene] * 5)
    monkeypatch.setattr(ex, "explore", lambda memory, **kw: None)
    monkeypatch.setattr(ex, "frozen_copy", lambda memory: types.SimpleNamespace(version=lambda: "v1",
                                                                                close=lambda: None))

    def fake_sample(model, item, folder, **kw):
        folder.mkdir(parents=True, exist_ok=True)
        np.savez(folder / "hypotheses.npz", x=np.zeros(2))

    def fake_report(res, folder, image_path=None):
        (folder / "report.html").write_text("r")
        return folder / "report.html"

    monkeypatch.setattr(diffusion, "sample_to_dir", fake_sample)
    monkeypatch.setattr(api, "critique_group", lambda *a, **k: types.SimpleNamespace(
        scores=[types.SimpleNamespace(overall=2.0), types.SimpleNamespace(overall=1.0)], ranking=[0, 1]))
    monkeypatch.setattr(report, "write_report", fake_report)
    monkeypatch.setattr(groups, "true_errors", lambda hyps, item, body: [50.0, 70.0])

    def run(num_scenes, out):
        from hmrcritic.demo import run_demo

        said: list[str] = []
        run_demo(out, num_scenes=num_scenes, num_generations=2, say=said.append)
        return said

    return run


def test_demo_round_line_says_rule_in_the_singular(demo_until_explored):
    said = demo_until_explored([("round", {"round": 1, "groups": 6, "mean_spearman": 0.44,
                                           "rules_added": ["r1"], "retired": []}),
                                ("round", {"round": 2, "groups": 6, "mean_spearman": 0.39,
                                           "rules_added": ["r1", "r2"], "retired": []})])
    rounds = [s for s in said if "round " in s and "groups" in s]
    assert "1 rule added" in rounds[0] and "1 rules" not in rounds[0], rounds
    assert "2 rules added" in rounds[1], rounds


def test_demo_says_it_is_calibrating_before_the_long_silent_part(demo_until_explored):
    said = demo_until_explored([("calibrate", {"index": i, "total": 32}) for i in range(1, 33)])
    lines = [s for s in said if "calibrat" in s]
    assert len(lines) == 1 and "32 more train groups" in lines[0], said  # one line, not one per group


def test_demo_shows_the_note_of_a_calibration_that_was_not_fitted(demo_until_explored):
    note = "score calibration not refitted: the critiques of all 32 calibration group(s) failed; first: g0: boom"
    said = demo_until_explored([("calibrated", {"calibration": None, "note": note})])
    assert any(note in s for s in said), said


def test_a_second_demo_into_the_same_folder_says_it_starts_the_memory_afresh(demo_until_explored, tmp_path):
    first = demo_until_explored([])
    assert not any("afresh" in s for s in first), first  # nothing earlier to replace
    second = demo_until_explored([])
    assert any("afresh" in s and str(tmp_path / "demo" / "memory") in s for s in second), second


@pytest.mark.parametrize("first, stale", [(2, "1 scene folder of"), (3, "2 scene folders of")])
def test_demo_says_scene_folder_in_the_right_number(whole_demo, tmp_path, first, stale):
    out = tmp_path / "demo"
    whole_demo(first, out)
    said = whole_demo(1, out)
    removed = [s for s in said if "removed" in s]
    assert len(removed) == 1 and stale in removed[0] and "(s)" not in removed[0], said


# ---- trace: the finish line ------------------------------------------------------------------------------------


@pytest.fixture()
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("HMRCRITIC_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("HMRCRITIC_RUNS", raising=False)
    return tmp_path / "home"


def _finished_run(run_id: str, rounds: int) -> None:
    from hmrcritic.agent.state import AgentConfig
    from hmrcritic.agent.trace import TraceWriter

    tw = TraceWriter(run_id, "g1")
    tw.start(AgentConfig())
    tw.node("render", {}, 0.001)
    tw.finish({"round": rounds, "done": True})


@pytest.mark.parametrize("rounds, words", [(0, "0 revision rounds"), (1, "1 revision round"),
                                           (2, "2 revision rounds")])
def test_trace_finish_says_revision_rounds_in_the_right_number(home, rounds, words):
    from hmrcritic.agent.trace import format_trace, read_trace, trace_mermaid

    _finished_run("20260101-000000-000000-g1", rounds)
    records = read_trace(last=True)
    for text in (format_trace(records), trace_mermaid(records)):
        finish = [line for line in text.splitlines() if "finish" in line and "ms" in line]
        assert len(finish) == 1 and finish[0].rstrip('"])').endswith(words), text
        assert "(s)" not in finish[0]


# ---- runs prune: what the question and the result say -------------------------------------------------------


@pytest.fixture()
def runs_home(tmp_path, monkeypatch):
    runs = tmp_path / "runs"
    (runs / "traces").mkdir(parents=True)
    (runs / "traces" / "20260101-000000-000001-g.jsonl").write_text("{}\n")
    (runs / "frozen-memory" / "snap").mkdir(parents=True)
    (runs / "frozen-memory" / "snap" / "f").write_bytes(b"x" * 1000)
    monkeypatch.setenv("HMRCRITIC_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HMRCRITIC_RUNS", str(runs))
    return runs


def test_prune_asks_about_what_it_would_remove(runs_home, monkeypatch, capsys):
    """The question was "Remove runs older than 0 days from DIR?": nothing to decide on."""
    import io
    import sys

    from hmrcritic.cli import main

    monkeypatch.setattr(sys, "stdin", io.StringIO("n\n"))
    assert main(["runs", "prune", "--older-than", "0"]) == 1
    err = capsys.readouterr().err
    assert "Remove runs older than 0 days from" in err and "(1 trace, 1 memory snapshot: under 0.1 MB)?" in err, err
    assert "run folder" not in err.split("?")[0]  # only the parts with anything in them
    assert (runs_home / "traces" / "20260101-000000-000001-g.jsonl").exists()  # "n": nothing removed
    (runs_home / "frozen-memory" / "snap" / "f").write_bytes(b"x" * 200_000)
    monkeypatch.setattr(sys, "stdin", io.StringIO("n\n"))
    assert main(["runs", "prune", "--older-than", "0"]) == 1
    assert "(1 trace, 1 memory snapshot: about 0.2 MB)?" in capsys.readouterr().err


def test_prune_question_on_an_empty_runs_folder_says_none_found(tmp_path, monkeypatch, capsys):
    import io
    import sys

    from hmrcritic.cli import main

    monkeypatch.setenv("HMRCRITIC_HOME", str(tmp_path / "missing"))
    monkeypatch.delenv("HMRCRITIC_RUNS", raising=False)
    monkeypatch.setattr(sys, "stdin", io.StringIO("n\n"))
    assert main(["runs", "prune"]) == 1
    assert "(none found now)?" in capsys.readouterr().err
    assert not (tmp_path / "missing").exists()  # counting made nothing


def test_prune_says_what_it_kept_beside_a_running_critique(runs_home, capsys):
    """``--older-than 0`` ("everything") beside a running critique kept its trace without a word."""
    import fcntl

    from hmrcritic.cli import main

    trace = runs_home / "traces" / "20260101-000000-000001-g.jsonl"
    with open(trace, "rb") as held:  # as a running critique holds its trace (TraceWriter._hold_file)
        fcntl.flock(held, fcntl.LOCK_SH)
        assert main(["runs", "prune", "--older-than", "0", "--yes"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("removed: 0 checkpoint threads, 0 run folders, 0 traces, 1 memory snapshot,"), out
    assert "kept: 1 trace (written since, or held by a running command)" in out, out
    assert trace.exists()
    assert main(["runs", "prune", "--older-than", "7", "--yes"]) == 0
    assert "kept: 1 trace (newer than 7 days, or held by a running command)" in capsys.readouterr().out
    trace.unlink()
    assert main(["runs", "prune", "--older-than", "0", "--yes"]) == 0
    assert "kept:" not in capsys.readouterr().out  # nothing left, nothing said


# ---- doctor: the text report -----------------------------------------------------------------------------------


@pytest.fixture()
def quick_doctor(tmp_path, monkeypatch):
    """doctor with three of its checks (packages, gl_render, judge): the others load models (seconds)."""
    from hmrcritic.commands import doctor

    monkeypatch.setenv("HMRCRITIC_HOME", str(tmp_path / "home"))
    for var in ("HMRCRITIC_JUDGE", "HMRCRITIC_BASE_URL", "HMRCRITIC_API_KEY", "OPENAI_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(doctor, "CHECKS", [c for c in doctor.CHECKS if c[0] in ("packages", "gl_render", "judge")])


def test_doctor_no_render_shows_the_render_check_as_skipped_in_its_place(quick_doctor, capsys):
    """``--no-render`` dropped the render line without a word, above "all checks passed"."""
    from hmrcritic.cli import main

    assert main(["doctor", "--no-render"]) == 0
    lines = capsys.readouterr().out.splitlines()
    names = [line[7:18].strip() for line in lines if line.startswith("[")]
    assert names == ["packages", "gl_render", "judge"], lines
    assert lines[1] == "[skip] gl_render   not run (--no-render)", lines
    assert lines[-1] == "all checks passed"


def test_doctor_json_no_render_is_unchanged(quick_doctor, capsys):
    from hmrcritic.cli import main

    assert main(["doctor", "--no-render", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)  # no skip line in front of the JSON
    assert [c["name"] for c in report["checks"]] == ["packages", "judge"]


def test_doctor_builtin_judge_line_says_the_endpoint_settings_are_the_vlm_judges(quick_doctor, capsys,
                                                                                 monkeypatch):
    """"judge builtin; base_url=(none: OpenAI default), …, api key not set" read as a builtin judge set up wrong."""
    from hmrcritic.cli import main

    assert main(["doctor", "--no-render"]) == 0
    judge = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("[ok  ] judge"))
    assert "judge builtin (needs no endpoint); the VLM judge's settings: base_url=" in judge, judge
    monkeypatch.setenv("HMRCRITIC_JUDGE", "vlm")
    monkeypatch.setenv("HMRCRITIC_BASE_URL", "http://127.0.0.1:9/v1")
    assert main(["doctor", "--no-render"]) == 0
    judge = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("[ok  ] judge"))
    assert judge.startswith("[ok  ] judge       judge vlm; base_url=http://127.0.0.1:9/v1,"), judge
