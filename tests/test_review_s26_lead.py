"""Session 26, the lead engineer's follow-ups to the helpers' reports."""

from __future__ import annotations

import os

import pytest

from hmrcritic.errors import InputError


@pytest.mark.parametrize("bad, flag", [({"scale_rewards": "global"}, "--scale-rewards"), ({"beta": -1.0}, "--beta"),
                                       ({"gpa_weight": float("inf")}, "--gpa-weight"),
                                       ({"base_loss_weight": float("nan")}, "--base-loss-weight")])
def test_finetune_names_the_flag_for_a_bad_objective_setting(bad, flag):
    """The objective's settings are checked by ObjectiveConfig, whose messages name its fields ("scale_rewards must
    be one of …"); through ``hmrcritic finetune`` the user set ``--scale-rewards``, and the message says so."""
    import typer

    from hmrcritic.alignment.finetune import FinetuneConfig
    from hmrcritic.cli import app

    flags = {o for p in typer.main.get_command(app).commands["finetune"].params for o in p.opts}
    assert flag in flags
    with pytest.raises(InputError) as info:
        FinetuneConfig("d", "o.pt", **bad)
    assert str(info.value).startswith(f"{flag} must be"), str(info.value)


def test_doctor_and_the_prior_share_the_least_number_of_poses():
    """doctor's split-scale check counts against the pose prior's own minimum, not a copy of the number."""
    from hmrcritic.agent import prior
    from hmrcritic.commands import doctor

    assert "PRIOR_MIN_POSES" not in vars(doctor)
    assert prior.PRIOR_MIN_POSES == 50


@pytest.mark.parametrize("depth", [500, 3000])
def test_a_log_line_nested_hundreds_deep_is_skipped_not_the_end_of_the_read(tmp_path, depth):
    """``read_jsonl`` skips a line it cannot trust; a checksummed line nested ~500 deep parsed as JSON and then
    raised RecursionError from the checksum's key walk, ending every reader of that log (trace, finetune resume,
    an export's failures) — the good records around it were lost with it."""
    from hmrcritic.io import append_jsonl, read_jsonl

    log = tmp_path / "log.jsonl"
    append_jsonl(log, {"step": 1}, durable=False)
    nested = "[" * depth + "]" * depth
    with open(log, "a") as fh:
        fh.write('{"checksum": "x", "a": ' + nested + "}\n")
    append_jsonl(log, {"step": 2}, durable=False)
    assert [r["step"] for r in read_jsonl(log)] == [1, 2]


def test_the_checksum_key_walk_still_sees_a_nested_non_string_key():
    from hmrcritic.io import _string_keys

    assert _string_keys({"a": [{"b": [1, {"c": 2}]}]})
    assert not _string_keys({"a": [{"b": [1, {3: 2}]}]})
    assert not _string_keys([({"x": {(1, 2): 0}},)])


def test_prune_keeps_the_thread_of_an_old_run_folder_a_critique_holds_now(tmp_path):
    """A thread whose run folder lies outside ``groups/`` (``critique_group(run_dir=…)``) and is old by its date is
    still kept while a critique holds that folder (``runs.in_use``): its age says nothing about a critique running on
    it now (the mutation review found no test of this branch)."""
    import os
    import time

    from hmrcritic.agent import runs
    from tests.test_review_s26_mutation_b import _thread_naming

    root = tmp_path / "runs"
    db = root / "checkpoints.sqlite"
    held, free = tmp_path / "elsewhere" / "held", tmp_path / "elsewhere" / "free"
    for name, folder in (("held", held), ("free", free)):
        folder.mkdir(parents=True)
        _thread_naming(db, name, str(folder))
    with runs.in_use(held):
        week_ago = time.time() - 8 * 86400
        for folder in (held, free):
            os.utime(folder, (week_ago, week_ago))
        out = runs.prune_runs(7, root)
    assert out["removed"]["checkpoints"] == 1
    assert runs._threads(db) == ["held"]


@pytest.mark.parametrize("argv, flag", [(["evaluate-critic", "--split", "test", "--max-reflections", "-1"],
                                         "--max-reflections"),
                                        (["explore", "--split", "train", "--ucb-c=-1"], "--ucb-c")])
def test_an_agent_setting_typed_as_a_flag_is_named_with_the_flag(tmp_path, monkeypatch, capsys, argv, flag):
    """``evaluate-critic --max-reflections -1`` said "invalid AgentConfig setting: max_reflections: …", a name the
    user never typed; the flag they typed is named (an ``HMRCRITIC_*`` variable is named as before)."""
    from hmrcritic.cli import main

    monkeypatch.setenv("HMRCRITIC_HOME", str(tmp_path / "home"))
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"({flag})" in err and "greater than or equal to 0" in err, err
    assert not (tmp_path / "home" / "data").exists()  # refused before any split was made


def test_a_file_given_for_a_memory_or_dataset_folder_is_named_as_a_file(tmp_path):
    """``explore-eval --memory-dir notes.txt`` offered "`hmrcritic memory reset --yes --memory-dir notes.txt`" (a
    memory reset onto a file) and ``finetune --data prefs.jsonl`` said "prefs.jsonl/dataset.json: not a group
    preference dataset"; each names the file as a file."""
    from hmrcritic.agent.explore import frozen_copy
    from hmrcritic.alignment.dataset import read_header
    from hmrcritic.errors import HMRCriticError

    f = tmp_path / "notes.txt"
    f.write_text("x")
    for call in (lambda: frozen_copy(f, root=tmp_path / "frozen"), lambda: read_header(f)):
        with pytest.raises(HMRCriticError) as info:
            call()
        assert f"{f} is a file" in str(info.value) and "reset" not in str(info.value), str(info.value)
    assert f.read_text() == "x" and not (tmp_path / "frozen").exists()


def test_a_broken_pipe_that_is_not_stdout_is_an_error_line(tmp_path, capsys):
    """typer turns every EPIPE raised inside a command into a silent exit 1 — meant for ``| head -1``; a pipe to a
    worker process that died ended the command without a word. A real pipe whose reader is closed, written by a
    command registered for the test: stdout is still read, so the error is said (exit 2)."""
    from hmrcritic.cli import app, main

    @app.command("s26-write-to-closed-pipe", hidden=True)
    def _write() -> None:
        r, w = os.pipe()
        os.close(r)
        try:
            os.write(w, b"x")
        finally:
            os.close(w)

    try:
        rc = main(["s26-write-to-closed-pipe"])
    finally:
        app.registered_commands[:] = [c for c in app.registered_commands if c.name != "s26-write-to-closed-pipe"]
    err = capsys.readouterr().err
    assert rc == 2 and "Broken pipe" in err and "not stdout" in err, (rc, err)


@pytest.mark.parametrize("argv", [["memory", "--help"], ["body", "info", "--json"]])
def test_stdout_closed_early_stays_a_quiet_exit(tmp_path, argv):
    """``hmrcritic … | head -c0``: the reader is gone, the command ends with 1 and no error line (as documented),
    whether rich (help) or print (``--json``) met the broken pipe."""
    import subprocess
    import sys

    r, w = os.pipe()
    os.close(r)
    env = {**os.environ, "HMRCRITIC_HOME": str(tmp_path / "home")}
    proc = subprocess.run([sys.executable, "-m", "hmrcritic", *argv], stdout=w,
                          stderr=subprocess.PIPE, env=env, timeout=120)
    os.close(w)
    assert proc.returncode == 1 and b"error" not in proc.stderr, proc.stderr


def test_doctor_checks_a_small_split_scale_without_writing_the_home(tmp_path, monkeypatch):
    """doctor's split-scale check looked for an existing train split through ``load_split``, which loads the body
    model — writing the mannequin into ``<home>/cache`` of a home doctor promises to leave as it is."""
    from hmrcritic.commands.doctor import _folders

    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HMRCRITIC_HOME", str(home))
    monkeypatch.setenv("HMRCRITIC_SPLIT_SIZE_SCALE", "0.002")
    res = _folders()
    assert not res["ok"] and "0.002475" in res["error"], res
    assert sorted(p.relative_to(home).as_posix() for p in home.rglob("*")) == []


def test_a_flipped_byte_in_a_training_state_is_refused_by_resume_and_by_model_from_state(tmp_path):
    """``train-base``'s ``state.pt`` is a torch zip too, and torch.load checks no CRC: a byte flipped inside the
    weights resumed (or evaluated, ``model_from_state``) as a model with other weights. Both now name the damage and
    leave the file as it is."""
    import random
    import sys
    from pathlib import Path

    from hmrcritic.errors import AssetError
    from hmrcritic.hmr.train import TrainConfig, model_from_state, train_base
    from tests.test_review_s25_model import TINY
    from tests.test_review_s26_fuzz2 import _flip, _largest_member_span

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from test_diffusion import _tiny_data

    cfg = TrainConfig(steps=2, batch_size=4, warmup=1, log_every=1, ckpt_every=1, model=TINY)
    run = tmp_path / "run"
    train_base(cfg, run, data=_tiny_data(16))
    state = run / "state.pt"
    lo, _ = _largest_member_span(state, "/data/21")  # a tensor's bytes (the largest member is the pickle)
    damaged = _flip(state.read_bytes(), random.Random(1), lo, lo + 64)
    state.write_bytes(damaged)
    with pytest.raises(AssetError, match="state.pt is damaged: its part .* does not match the checksum"):
        model_from_state(state)
    with pytest.raises(AssetError, match="cannot resume from .*state.pt: its part .* does not match the checksum"):
        train_base(TrainConfig(steps=3, batch_size=4, warmup=1, log_every=1, ckpt_every=1, model=TINY), run,
                   data=_tiny_data(16))
    assert state.read_bytes() == damaged



def test_a_folder_in_a_logs_place_is_one_line_naming_it(tmp_path):
    from hmrcritic.errors import InputError
    from hmrcritic.io import read_jsonl

    (tmp_path / "log.jsonl").mkdir()
    with pytest.raises(InputError, match="log.jsonl is a folder, not a log file"):
        read_jsonl(tmp_path / "log.jsonl")
    assert read_jsonl(tmp_path / "none.jsonl") == []
