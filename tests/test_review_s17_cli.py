"""hmrcritic as a script uses it: ``--json`` gives one strict JSON document on stdout, exit codes say what
happened, and the same concept has the same flag everywhere.

Each test failed before its fix: ``explore-eval --json`` printed the bare word NaN (not JSON) for a variant
whose critiques all failed — and exited 0 in silence with a table of nothing; ``explore --json`` and
``learning-curve --json`` did the same for a NaN in their results; ``memory calibration --clear --json`` printed
a sentence; ``-n`` (the short ``--num-generations`` of sample, evaluate, critique and demo) was "No such option"
for explore, explore-eval, learning-curve, export and finetune; ``memory reset`` asked on stdout and about "the
default memory folder" wherever HMRCRITIC_MEMORY pointed; ``runs prune --older-than inf --json`` printed
Infinity; ``learning-curve --tau 5`` was refused only after round 0 had been scored; ``export`` with no group
written and ``export validate`` of an invalid dataset exited 1 with an empty stderr."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from hmrcritic.cli import main

NAN = float("nan")


def _strict(text: str):
    """``json.loads`` that refuses NaN/Infinity, as jq, JavaScript and every strict parser do."""
    def refuse(const):
        raise AssertionError(f"not JSON: {const} in the output")

    return json.loads(text, parse_constant=refuse)


def _failed_explore_eval(*args, **kwargs) -> dict:
    """What ``explore_eval`` returns when every critique of the one variant failed (a VLM endpoint down):
    the shape and NaNs of a real run with ``--judge vlm`` against a closed port."""
    row = {"variant": "full", "groups_scored": 0, "per_group_spearman": [NAN]}
    for m in ("", "_mpjpe", "_pve"):
        row.update({f"spearman{m}": NAN, f"kendall{m}": NAN})
    row.update(top1_pa_mpjpe_mm=NAN, top1_mpjpe_mm=NAN, top1_pve_mm=NAN, memory_version=[])
    return {"rows": [row], "random_pa_mpjpe_mm": 113.6, "oracle_pa_mpjpe_mm": 63.4, "num_groups": 1,
            "split": "test", "memory_version": "4484e4a91c1a9ca8"}


def test_explore_eval_json_is_strict_and_a_run_that_scored_nothing_fails(monkeypatch, capsys, tmp_path):
    import hmrcritic.agent.learning_curve as lc

    monkeypatch.setattr(lc, "explore_eval", _failed_explore_eval)
    out = tmp_path / "ee.json"
    rc = main(["explore-eval", "--num-groups", "1", "-n", "2", "--judge", "vlm", "--out", str(out), "--json"])
    cap = capsys.readouterr()
    res = _strict(cap.out)  # the whole stdout is one document
    assert res["rows"][0]["spearman"] is None and res["rows"][0]["per_group_spearman"] == [None]
    assert _strict(out.read_text()) == res  # the --out copy too
    assert rc == 1
    assert "variant full scored 0 of 1 groups" in cap.err and "no variant scored any group" in cap.err
    assert "Traceback" not in cap.err


def test_explore_eval_partial_failure_warns_and_succeeds(monkeypatch, capsys):
    import hmrcritic.agent.learning_curve as lc

    def partial(*args, **kwargs):
        res = _failed_explore_eval()
        res["num_groups"] = 2
        res["rows"][0].update(groups_scored=1, per_group_spearman=[0.4, NAN], spearman=0.4)
        return res

    monkeypatch.setattr(lc, "explore_eval", partial)
    assert main(["explore-eval", "--num-groups", "2", "--json"]) == 0
    cap = capsys.readouterr()
    assert _strict(cap.out)["rows"][0]["per_group_spearman"] == [0.4, None]
    assert "variant full scored 1 of 2 groups" in cap.err


def test_explore_json_is_strict_with_a_round_of_unrankable_groups(monkeypatch, capsys, tmp_path):
    """A round whose groups were all skipped as unrankable keeps ``mean_spearman`` NaN (RoundReport's default)."""
    import hmrcritic.agent.explore as ex

    summary = SimpleNamespace(
        as_dict=lambda: {"memory": str(tmp_path), "rounds": [{"round": 1, "groups": 0, "mean_spearman": NAN,
                                                              "failed": []}], "calibration": None},
        rounds=[], groups=0, source="model", memory_version="x", log_path="log", stopped=None)
    monkeypatch.setattr(ex, "explore", lambda *a, **k: summary)
    assert main(["explore", "--rounds", "1", "-n", "4", "--memory-dir", str(tmp_path / "m"), "--json"]) == 0
    assert _strict(capsys.readouterr().out)["rounds"][0]["mean_spearman"] is None


def test_learning_curve_json_is_strict(monkeypatch, capsys, tmp_path):
    import hmrcritic.agent.learning_curve as lc

    res = {"rows": [{"round": 0, "spearman": NAN, "per_group_spearman": [NAN], "rules": 18}], "num_groups": 1,
           "heldout_split": "test", "batch_size": 1, "split": "train", "png": str(tmp_path / "c.png")}
    monkeypatch.setattr(lc, "learning_curve", lambda *a, **k: res)
    rc = main(["learning-curve", "--memory-dir", str(tmp_path / "m"), "--out", str(tmp_path / "o"), "-n", "2",
               "--json"])
    assert rc == 0
    assert _strict(capsys.readouterr().out)["rows"][0]["per_group_spearman"] == [None]


def test_memory_calibration_clear_json_prints_json(capsys, tmp_path):
    mem = tmp_path / "mem"
    assert main(["memory", "reset", "--yes", "--memory-dir", str(mem)]) == 0
    capsys.readouterr()
    assert main(["memory", "calibration", "--clear", "--json", "--memory-dir", str(mem)]) == 0
    res = _strict(capsys.readouterr().out)
    assert res["cleared"] is True and res["calibration"] is None and res["location"] == str(mem)
    assert isinstance(res["version"], str)


@pytest.mark.parametrize("path", [("explore",), ("explore-eval",), ("learning-curve",), ("export",),
                                  ("finetune",), ("sample",), ("evaluate",), ("critique",), ("demo",)])
def test_num_generations_has_the_same_short_flag_everywhere(path):
    import typer

    from hmrcritic.cli import app

    cmd = typer.main.get_command(app)
    for name in path:
        cmd = cmd.commands[name]
    opts = [p.opts for p in cmd.params if "--num-generations" in p.opts]
    assert opts and "-n" in opts[0], opts


def test_memory_reset_asks_on_stderr(monkeypatch, capsys, tmp_path):
    """The question went to stdout: ``memory reset > reset.log`` waited for an answer to a question nobody saw
    (``runs prune`` already asked on stderr)."""
    import io

    monkeypatch.setattr("sys.stdin", io.StringIO("n\n"))
    assert main(["memory", "reset", "--memory-dir", str(tmp_path / "m")]) == 1
    cap = capsys.readouterr()
    assert "Delete all rules and prototypes" in cap.err and cap.out.strip() == ""  # (click echoes one space)
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize("value", ["inf", "-1", "nan"])
def test_runs_prune_refuses_a_non_finite_or_negative_age_before_asking(monkeypatch, capsys, value):
    """``--older-than inf --json`` printed ``"older_than_days": Infinity`` (not JSON), and ``--older-than -1``
    asked "Remove runs older than -1 days?" before refusing it."""
    import io

    monkeypatch.setattr("sys.stdin", io.StringIO("y\n"))
    assert main(["runs", "prune", "--older-than", value, "--json"]) == 2
    cap = capsys.readouterr()
    assert cap.out == "" and "Remove runs" not in cap.err
    assert cap.err.startswith("error: --older-than must be") and len(cap.err.splitlines()) == 1


@pytest.mark.parametrize("tau", ["5", "nan"])
def test_learning_curve_refuses_a_bad_tau_before_any_work(monkeypatch, capsys, tmp_path, tau):
    """``--tau 5`` was refused by the first exploration, after round 0's held-out groups had been scored."""
    import hmrcritic.agent.learning_curve as lc

    def no_work(*args, **kwargs):
        raise AssertionError("learning_curve ran with a τ that explore refuses")

    monkeypatch.setattr(lc, "learning_curve", no_work)
    rc = main(["learning-curve", "--memory-dir", str(tmp_path / "m"), "--out", str(tmp_path / "o"), "--tau", tau])
    assert rc == 2 and "--tau" in capsys.readouterr().err


def test_export_validate_invalid_says_why_on_stderr(capsys, tmp_path):
    """An INVALID dataset exited 1 with an empty stderr (with --json the reason was only inside the report)."""
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "dataset.json").write_text("{}")
    assert main(["export", "validate", str(tmp_path / "ds"), "--json"]) == 1
    cap = capsys.readouterr()
    assert _strict(cap.out)["ok"] is False
    assert cap.err.startswith("error: ") and "invalid dataset" in cap.err and "malformed header" in cap.err
    assert len(cap.err.splitlines()) == 1


def test_export_that_wrote_nothing_says_why_on_stderr(monkeypatch, capsys, tmp_path):
    """Every group failed (a VLM endpoint down): exit 1, and the reason was only in the summary on stdout."""
    import hmrcritic.alignment.export as ex

    summary = SimpleNamespace(groups=0, failures=2, first_failure="test-000000: JudgeError: cannot connect",
                              model_dump=lambda mode=None: {"groups": 0, "failures": 2})
    monkeypatch.setattr(ex, "export", lambda cfg, progress=False: summary)
    rc = main(["export", "--split", "test", "--num-generations", "2", "--no-memory", "--out", str(tmp_path / "ds"),
               "--json"])
    cap = capsys.readouterr()
    assert rc == 1 and _strict(cap.out) == {"groups": 0, "failures": 2}
    assert cap.err.strip() == ("error: export wrote no group: all 2 failed; first: test-000000: JudgeError: "
                               "cannot connect")


def test_memory_reset_prompt_names_the_folder_from_the_environment(monkeypatch, capsys, tmp_path):
    """Without --memory-dir it asked about "the default memory folder", also when HMRCRITIC_MEMORY had moved
    the memory elsewhere: the question did not name what it was about to delete."""
    import io

    monkeypatch.setenv("HMRCRITIC_MEMORY", str(tmp_path / "prod-memory"))
    monkeypatch.setattr("sys.stdin", io.StringIO("n\n"))
    assert main(["memory", "reset"]) == 1
    cap = capsys.readouterr()
    assert str(tmp_path / "prod-memory") in cap.out + cap.err and "default memory folder" not in cap.out + cap.err
