"""CLI review: defects found by running the commands as a new user would (runs, trace, critique, doctor)."""

from __future__ import annotations

import json

import pytest

from hmrcritic.cli import main


@pytest.fixture()
def home(tmp_path, monkeypatch):
    """A fresh HMRCRITIC_HOME for one test."""
    monkeypatch.setenv("HMRCRITIC_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("HMRCRITIC_MEMORY", raising=False)
    return tmp_path / "home"


def _write_trace(home, run_id: str) -> None:
    traces = home / "runs" / "traces"
    traces.mkdir(parents=True, exist_ok=True)
    (traces / f"{run_id}.jsonl").write_text(json.dumps({"run_id": run_id, "group_id": "g", "event": "finish",
                                                         "seconds": 0.5, "rounds": 0}) + "\n")


def test_runs_prune_json_confirmation_prompt_stays_off_stdout(home, monkeypatch, capsys):
    """``runs prune --json`` asked its question on stdout, in front of the JSON (and, redirected to a file, the
    question was invisible while the command waited for an answer)."""
    import io
    import sys

    monkeypatch.setattr(sys, "stdin", io.StringIO("y\n"))
    rc = main(["runs", "prune", "--older-than", "0", "--json"])
    out = capsys.readouterr()
    assert rc == 0, out.err
    assert json.loads(out.out)["older_than_days"] == 0
    assert "Remove runs older than" in out.err


@pytest.mark.parametrize("pattern", ["*", "**", "*run-a*"])
def test_trace_run_id_with_glob_characters_is_one_line(home, capsys, pattern):
    """A run id is matched as text: ``trace '*'`` raised glob's "Invalid pattern: '**'" ValueError (exit 1)."""
    _write_trace(home, "20260101-000000-000001-run-a")
    _write_trace(home, "20260101-000000-000002-run-b")
    rc = main(["trace", pattern])
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert err.startswith("error:") and len(err.splitlines()) == 1 and "ValueError" not in err, err


def test_trace_run_id_wildcards_are_not_wildcards(home, capsys):
    """``?`` in a run id used to match any character, so ``trace ?`` printed some run as if it were named so."""
    _write_trace(home, "20260101-000000-000001-run-a")
    assert main(["trace", "?"]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(["trace", "run-a", "--json"]) == 0  # a real part of the id still finds it
    assert json.loads(capsys.readouterr().out)[0]["run_id"] == "20260101-000000-000001-run-a"


@pytest.mark.parametrize("n", ["0", "-1", "5000"])
def test_critique_bad_n_names_the_flag_before_any_work(home, tmp_path, capsys, n):
    """``critique -n 0`` named the library's ``num_generations`` (not the ``-n/--num-generations`` option), and only
    after loading (on first use: generating) the scene split."""
    rc = main(["critique", "--scene", "test:0", "-n", n, "--no-render", "--out", str(tmp_path / "c")])
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert err.startswith("error: --num-generations") and len(err.splitlines()) == 1, err
    assert not (home / "data").exists()  # refused before the split was generated
    assert not (tmp_path / "c").exists()


@pytest.mark.parametrize("where", ["home", "memory"])
def test_doctor_folders_check_fails_when_a_file_is_in_the_way(tmp_path, monkeypatch, where):
    """A file where the home (or memory) folder goes passed the folders check ("writable"), while every command
    then failed with NotADirectoryError."""
    from hmrcritic.commands.doctor import _folders

    afile = tmp_path / "afile"
    afile.write_text("x")
    monkeypatch.setenv("HMRCRITIC_HOME", str(afile if where == "home" else tmp_path / "home"))
    if where == "memory":
        monkeypatch.setenv("HMRCRITIC_MEMORY", str(afile))
    else:
        monkeypatch.delenv("HMRCRITIC_MEMORY", raising=False)
    res = _folders()
    assert res["ok"] is False
    assert not res["folders"]["memory"]["writable"]
    assert str(afile) in res["error"] and "memory" in res["error"]


@pytest.mark.parametrize("which", ["image", "keypoint"])
def test_a_folder_given_as_an_input_file_is_named_as_a_folder(tmp_path, which):
    """``--image DIR`` said "image file not found" for a folder that plainly exists."""
    from hmrcritic.errors import InputError
    from hmrcritic.hmr.data import read_image, read_keypoints_json

    read = read_image if which == "image" else read_keypoints_json
    with pytest.raises(InputError, match=rf"is a folder; give the {which} file"):
        read(tmp_path)
    with pytest.raises(InputError, match=rf"{which} file not found"):
        read(tmp_path / "missing")
