"""Session 36 review of ``hmrcritic reproduce``, walked as a new user: its messages, argument checks and resume
bookkeeping. Each test failed before its fix. The pipeline runs with the stand-in stages of session 13 (fast)."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_review_s13_alignment import stand_in_stages  # noqa: F401  (a fixture)

from hmrcritic.errors import AssetError, InputError

QUICK = {"objectives": "gpa", "critic_top1": "false"}


def _cli():
    import typer

    from hmrcritic.commands.reproduce import register

    app = typer.Typer()
    register(app)

    @app.command("noop")  # a second command keeps typer from collapsing the app into `reproduce` itself
    def _noop() -> None: ...

    return app


@pytest.mark.parametrize("value", ["", ",", " , "])
def test_an_empty_objectives_list_is_refused_before_any_work(tmp_path, monkeypatch, value):
    """``--set objectives=`` (an empty value) was taken as "no objective": the run explored and exported (what only
    the finetunes read) and wrote a table of the base row alone."""
    from hmrcritic.alignment import reproduce as rp

    def explore(*a, **k):
        raise AssertionError("explored with no objective to finetune")

    monkeypatch.setattr(rp, "_explore", explore)
    with pytest.raises(InputError, match="objectives is empty; give at least one of gpa"):
        rp.reproduce("quick", out_dir=tmp_path / "run", overrides={"objectives": value}, progress=False)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(("argv", "name"), [
    (["reproduce", "--quick", "--out", ""], "--out"), (["reproduce", "--quick", "--model", " "], "--model"),
    (["export", "--split", "wild", "--limit", "1", "--out", ""], "--out"), (["export", "--split", "wild", "--out="],
                                                                           "--out"),
    (["explore", "--memory-dir", ""], "--memory-dir"), (["memory", "stats", "--memory-dir", ""], "--memory-dir"),
    (["memory", "export", ""], "FILE"), (["body", "convert", "", "x.pkl"], "SRC"),
    (["finetune", "--data", "d", "--out", ""], "--out"),
])
def test_an_empty_path_is_refused_not_read_as_the_current_folder(tmp_path, monkeypatch, capsys, argv, name):
    """The parser turns ``--out ""`` into ``Path(".")``: ``--out "$RUN"`` with RUN unset wrote a reproduce run, an
    export's dataset.json and shards, an exploration's Chroma files into the current folder, and ``memory stats
    --memory-dir ""`` read the current folder as a memory. Refused for every path option and argument (the lead
    made the reproduce-only fix of this walk one check in ``hmrcritic.cli``)."""
    from hmrcritic import cli

    monkeypatch.setenv("HMRCRITIC_HOME", str(tmp_path / "home"))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    code = cli.main(argv)
    err = capsys.readouterr().err
    assert code == 2 and err.startswith(f"error: {name} is empty: give a path"), err
    assert list(work.iterdir()) == []


def test_a_dot_is_still_the_current_folder(tmp_path, monkeypatch, capsys):
    """``.`` typed as such is a path (the current folder), as before: only an empty or blank value is refused."""
    import hmrcritic.alignment.reproduce as rp
    from hmrcritic import cli

    calls = []

    def stand_in(*a, **k):
        calls.append(k)
        raise InputError("stand-in stops here")

    monkeypatch.setattr(rp, "reproduce", stand_in)
    monkeypatch.chdir(tmp_path)
    assert cli.main(["reproduce", "--quick", "--out", "."]) == 2
    assert "stand-in stops here" in capsys.readouterr().err
    assert calls and Path(calls[0]["out_dir"]) == Path(".")


def test_a_refused_finetune_state_says_what_to_do_in_reproduce(tmp_path, monkeypatch,
                                                               stand_in_stages):  # noqa: F811
    """A finetune state that cannot be resumed (cut short by a full disk, edited) stopped reproduce with the
    finetuner's advice ("use another --out, or --no-resume (which deletes it)"), flags reproduce does not have, or
    with torch's bare reader error and no advice at all."""
    import hmrcritic.alignment.finetune as ft
    from hmrcritic.alignment import reproduce as rp

    def finetune(cfg, progress=None):
        raise AssetError(f"cannot resume from {cfg.state_path}: RuntimeError: PytorchStreamReader failed reading "
                         "zip archive: failed finding central directory")

    monkeypatch.setattr(ft, "finetune", finetune)
    with pytest.raises(AssetError) as err:
        rp.reproduce("quick", out_dir=tmp_path / "run", overrides=QUICK, progress=False)
    msg = str(err.value)
    assert "finetune gpa: cannot resume from" in msg and "hmrcritic reproduce" in msg
    assert "delete " in msg and ".pt.state.pt to train gpa again from step 0" in msg

    # any other error passes through as it was
    def broken(cfg, progress=None):
        raise AssetError("dataset damaged")

    monkeypatch.setattr(ft, "finetune", broken)
    with pytest.raises(AssetError, match="^dataset damaged$"):
        rp.reproduce("quick", out_dir=tmp_path / "run", overrides=QUICK, progress=False)


def test_a_resumed_finetune_says_it_resumes(tmp_path, stand_in_stages):  # noqa: F811
    """A killed finetune resumes from its state file: the stage line announced "6 steps" and the next line read
    "3/6", as if steps were lost. It now says "(resuming from <name>.state.pt)"."""
    from hmrcritic.alignment import reproduce as rp

    out = tmp_path / "run"
    lines: list[str] = []
    rp.reproduce("quick", out_dir=out, overrides=QUICK, progress=lines.append)
    assert not any("resuming" in ln for ln in lines)
    ckpt = next(p for p in (out / "models").glob("gpa-*.pt"))
    ckpt.unlink()  # as a kill between state saves leaves it: the state, no checkpoint, no record
    ckpt.with_suffix(".json").unlink()
    Path(str(ckpt) + ".state.pt").write_bytes(b"")
    lines.clear()
    rp.reproduce("quick", out_dir=out, overrides=QUICK, progress=lines.append)
    assert any(ln.endswith(f"lr 0.0001 (resuming from {ckpt.name}.state.pt)") for ln in lines), lines


def test_the_log_names_the_changed_settings_and_reads_the_critic_quality_in_words(tmp_path, monkeypatch,
                                                                                 stand_in_stages):  # noqa: F811
    """The first lines said nothing of the ``--set`` in effect (a forgotten or misplaced one showed only in the
    table's first line, after the run), and the critic-quality diagnostic was a Python dict repr."""
    from hmrcritic.alignment import reproduce as rp

    monkeypatch.setattr(rp, "critic_quality", lambda *a, **k: {
        "groups": 8, "spearman_mean": 0.093, "pa_mpjpe_mean_mm": 120.32, "pa_mpjpe_top1_mm": 116.73,
        "pa_mpjpe_best_mm": 85.91})
    lines: list[str] = []
    rp.reproduce("quick", out_dir=tmp_path / "run", overrides={**QUICK, "lr": "3e-4"}, progress=lines.append)
    text = "\n".join(lines)
    assert "preset quick with lr=0.0003, critic_top1=false, objectives=gpa; run folder" in text
    assert "{'groups'" not in text
    assert ("8 groups, mean Spearman +0.093; PA-MPJPE of the critic's top-1 116.73 mm vs group mean 120.32 mm vs "
            "oracle best 85.91 mm") in text
    assert rp._setting_text(None) == "none" and rp._setting_text(True) == "true"


def test_the_explore_stage_logs_its_rounds_and_calibration(tmp_path, monkeypatch):
    """The exploration engine was called without its ``progress``: the explore stage (a minute or more on two shared
    cores) logged its first line and then nothing until the export, while every later stage logs its steps."""
    import inspect

    import hmrcritic.agent.explore as ex
    import hmrcritic.agent.groups as gr
    import hmrcritic.hmr.diffusion as hd
    from hmrcritic.alignment import reproduce as rp

    seen = {}

    def engine(memory, split="train", rounds=1, batch_size=1, *, num_generations=2, seed=0, judge="builtin",
               render=None, groups=None, calibration_groups=0, progress=None):
        seen["progress"] = progress
        if progress is not None:
            progress("group", {"index": 0, "total": 1, "group_id": "g", "spearman": 0.5})
            progress("round", {"round": 1, "groups": 3, "mean_spearman": float("nan"), "rules_added": [{}],
                               "prototypes": 4, "seconds": 2.0})
            progress("calibrated", {"calibration": {"groups": 32}})
        return {"rounds": rounds}

    assert "progress" in inspect.signature(ex.explore).parameters  # the real engine takes it
    monkeypatch.setattr(ex, "explore", engine)
    monkeypatch.setattr(gr, "groups_from_model", lambda *a, **k: [])
    monkeypatch.setattr(hd, "load_model", lambda *a, **k: None)
    lines: list[str] = []
    log = rp._Log(tmp_path, lines.append)
    preset = rp.make_preset("quick")
    rp._explore(preset, tmp_path / "memory", None, "k", log)
    assert callable(seen["progress"])
    text = "\n".join(lines)
    assert "explore round 1: 3 groups, mean Spearman —, 1 rule(s) added, +4 prototypes (2 s)" in text
    assert "explore: score calibration fitted on 32 held-out train groups" in text
    assert len(lines) == 2  # per-group events are not logged
