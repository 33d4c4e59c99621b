"""Session 34: the critic's research path walked as a new user (explore, explore-eval, evaluate-critic,
learning-curve), each command run twice, with ``--json``, interrupted and with flags out of range.

* ``explore``'s out-of-range flags were refused in the library's words, two flags at a time and neither named:
  "need rounds ≥ 0 and batch size ≥ 1 (got 3, 0)", "need ≥ 2 hypotheses per group and calibration groups ≥ 0
  (got 16, -1)", "τ = 2.0 is not a Spearman value" — learning-curve names the flag ("--batch-size must be ≥ 1, got
  0"); explore now does too, before any memory folder is made.
* learning-curve's per-round line said "top-1 62.0 mm" without the error (its JSON holds PA-MPJPE and MPJPE top-1).
* ``explore --json`` and ``learning-curve --json`` dropped their progress: minutes of silence, not even "resuming: …"
  or "nothing to explore", where README promises progress on stderr with ``--json`` (evaluate-critic logs its
  stages there).
* ``explore --rounds 0`` (or a run with every round done) ended "explored 0 groups of train (hypotheses: auto)":
  the unresolved flag value, not what the hypotheses are.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from hmrcritic.cli import main


@pytest.mark.parametrize(("flags", "named"), [
    (["--rounds", "-1"], "--rounds must be ≥ 0, got -1"),
    (["--batch-size", "0"], "--batch-size must be ≥ 1, got 0"),
    (["-n", "1"], "--num-generations must be ≥ 2 hypotheses per group, got 1"),
    (["--calibration-groups", "-1"], "--calibration-groups must be ≥ 0, got -1"),
    (["--tau", "2"], "--tau 2.0 is not a Spearman value in [-1, 1]"),
    (["--tau", "nan"], "--tau nan is not a Spearman value in [-1, 1]"),
])
def test_explore_refuses_an_out_of_range_flag_in_one_line_naming_it(tmp_path, capsys, flags, named):
    memory = tmp_path / "m"
    assert main(["explore", "--split", "train", "--memory-dir", str(memory), *flags]) == 2
    err = capsys.readouterr().err
    assert err == f"error: explore: {named}\n", err
    assert not memory.exists()  # refused before the memory folder was made


def test_the_learning_curve_line_names_the_error_of_its_top1_pick():
    """learning-curve's per-round line said "top-1 62.0 mm" where every other critic table names the error
    ("top-1 PA", "top1 PA", README's "top-1 PA-MPJPE (mm)"); the curve's JSON holds an MPJPE top-1 too."""
    from hmrcritic.commands.explore import curve_line

    row = {"round": 2, "spearman": 0.721, "kendall": 0.542, "top1_pa_mpjpe_mm": 59.04, "rules": 21,
           "prototypes": 28, "groups_scored": 4, "rho_undefined": 0}
    line = curve_line(row)
    assert "top-1 PA-MPJPE 59.0 mm" in line, line
    nan = curve_line({**row, "spearman": float("nan"), "kendall": float("nan"), "top1_pa_mpjpe_mm": float("nan")})
    assert "top-1 PA-MPJPE" in nan and "nan" not in nan, nan


def test_explore_json_keeps_its_progress_on_stderr(monkeypatch, capsys, tmp_path):
    import hmrcritic.agent.explore as ex

    def fake(*a, progress, **k):
        progress("resumed", {"rounds_done": [0, 1], "rounds": 2})
        return SimpleNamespace(as_dict=lambda: {"rounds": [], "groups": 0}, rounds=[], groups=0, source="model",
                               memory_version="x", log_path="log", stopped=None)

    monkeypatch.setattr(ex, "explore", fake)
    assert main(["explore", "--rounds", "2", "--memory-dir", str(tmp_path / "m"), "--json"]) == 0
    cap = capsys.readouterr()
    assert json.loads(cap.out) == {"rounds": [], "groups": 0}  # stdout: the one JSON document
    assert "nothing to explore: round(s) 1–2 of 2" in cap.err, cap.err


def test_learning_curve_json_keeps_its_progress_on_stderr(monkeypatch, capsys, tmp_path):
    import hmrcritic.agent.learning_curve as lc

    row = {"round": 0, "spearman": 0.5, "kendall": 0.4, "top1_pa_mpjpe_mm": 60.0, "rules": 18, "prototypes": 0,
           "groups_scored": 1, "per_group_spearman": [0.5], "rho_undefined": 0}
    res = {"rows": [row], "num_groups": 1, "heldout_split": "test", "batch_size": 1, "split": "train",
           "png": str(tmp_path / "o" / "c.png")}

    def fake(*a, progress, status, **k):
        status("resuming: round 0 was evaluated by an earlier run")
        progress(row)
        return res

    monkeypatch.setattr(lc, "learning_curve", fake)
    assert main(["learning-curve", "--memory-dir", str(tmp_path / "m"), "--out", str(tmp_path / "o"), "--json"]) == 0
    cap = capsys.readouterr()
    assert json.loads(cap.out)["rows"][0]["round"] == 0
    assert "resuming: round 0" in cap.err and "round 0: ρ +0.500" in cap.err, cap.err



def test_explore_summary_does_not_print_the_raw_auto_source(monkeypatch, capsys, tmp_path):
    import hmrcritic.agent.explore as ex

    summary = SimpleNamespace(as_dict=dict, rounds=[], groups=0, source="auto", memory_version="x", log_path="log",
                              stopped=None, memory=str(tmp_path / "m"))  # its memory: named since session 35
    monkeypatch.setattr(ex, "explore", lambda *a, **k: summary)
    assert main(["explore", "--rounds", "0", "--memory-dir", str(tmp_path / "m")]) == 0
    out = capsys.readouterr().out
    assert "hypotheses: auto" not in out and "the model's if it loads, else perturbed from the labels" in out, out
