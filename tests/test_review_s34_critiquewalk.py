"""Session 34, a new user's walk through ``hmrcritic critique`` with a photo of their own: what the command says
and what the report shows (no graph runs here: the results are built by hand, the CLI refusals come first)."""

from __future__ import annotations

import pytest

from hmrcritic.agent.api import ScoredGroup
from hmrcritic.agent.report import memory_written_note, render_html
from hmrcritic.agent.schema import HypothesisScore
from hmrcritic.cli import main

ENDPOINT_VARS = ("HMRCRITIC_BASE_URL", "OPENAI_BASE_URL", "OPENAI_API_BASE", "HMRCRITIC_API_KEY", "OPENAI_API_KEY",
                 "HMRCRITIC_JUDGE", "LANGSMITH_GATEWAY")


def _group(**kw) -> ScoredGroup:
    scores = [HypothesisScore(index=i, motion_structure=5, physical_feasibility=5, image_alignment=5,
                              overall=5 - i, rationale="ok") for i in range(2)]
    return ScoredGroup(group_id="img-1", scores=scores, ranking=[0, 1], memory_version="abc123", **kw)


def test_vlm_without_endpoint_is_refused_before_the_input_naming_base_url(tmp_path, monkeypatch, capsys):
    """``--judge vlm`` with no endpoint and no key was refused only after the image was read and the group sampled,
    in words naming only HMRCRITIC_BASE_URL; now before anything (a missing image is not even looked at), naming
    the --base-url flag."""
    for var in ENDPOINT_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HMRCRITIC_HOME", str(tmp_path / "home"))
    rc = main(["critique", "--image", str(tmp_path / "missing.jpg"), "--keypoints", str(tmp_path / "missing.json"),
               "-n", "2", "--judge", "vlm", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc != 0
    assert "--base-url" in err and "no endpoint" in err, err
    assert "missing.jpg" not in err, err
    assert not (tmp_path / "out").exists()


def test_vlm_with_base_url_flag_passes_the_endpoint_check(tmp_path, monkeypatch, capsys):
    """The early check reads --base-url (set by with_judge_endpoint before the body runs): with it, the command goes
    on to the input, whose error is the one shown."""
    for var in ENDPOINT_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HMRCRITIC_HOME", str(tmp_path / "home"))
    rc = main(["critique", "--image", str(tmp_path / "missing.jpg"), "--keypoints", str(tmp_path / "missing.json"),
               "-n", "2", "--judge", "vlm", "--base-url", "http://127.0.0.1:9/v1", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc != 0 and "no endpoint" not in err and "missing" in err, err


def test_learning_critique_says_what_it_wrote():
    """``critique --learn`` printed nothing of what it wrote to the memory; the line says it, and why an unlabelled
    photo records no rule outcomes."""
    note = memory_written_note(_group(memory_written={"prototypes": 4, "rules_recorded": 0, "success": None}))
    assert "4 prototype(s)" in note and "abc123" in note and "rule outcomes need true errors" in note
    assert memory_written_note(_group(memory_written={"prototypes": 0, "rules_recorded": 0})) == ""
    assert memory_written_note(_group()) == ""
    again = memory_written_note(_group(memory_written={"prototypes": 4, "rules_recorded": 2}, finished_earlier=True))
    assert "first critiqued" in again and "labelled" not in again
    # a hand-edited scores.json's odd values are no crash
    assert memory_written_note(_group(memory_written={"prototypes": "x", "rules_recorded": None})) == ""


def test_report_and_table_show_what_learning_wrote(capsys):
    from hmrcritic.commands.agent import _print_table

    result = _group(memory_written={"prototypes": 4, "rules_recorded": 0})
    html = render_html(result)
    assert "learned: 4 prototype(s)" in html
    _print_table(result)
    assert "learned: 4 prototype(s)" in capsys.readouterr().out
    assert "learned" not in render_html(_group())


@pytest.mark.parametrize("judge", ["builtin"])
def test_builtin_needs_no_endpoint(tmp_path, monkeypatch, capsys, judge):
    """The check is for the VLM judge only: the builtin judge with no endpoint goes on to the input."""
    for var in ENDPOINT_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HMRCRITIC_HOME", str(tmp_path / "home"))
    rc = main(["critique", "--image", str(tmp_path / "missing.jpg"), "--keypoints", str(tmp_path / "missing.json"),
               "-n", "2", "--judge", judge, "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc != 0 and "no endpoint" not in err and "missing" in err, err
