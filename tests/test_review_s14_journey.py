"""Review s14 (a new user typing what the docs say): one-line errors that name the fix, said before work runs."""

from __future__ import annotations

import contextlib

from hmrcritic.cli import main


def test_memory_rules_refuses_an_unknown_tag_instead_of_ignoring_it(tmp_path, capsys):
    """`memory rules --tags leg` (typo of legs) dropped the tag silently while the title still named it."""
    mem = str(tmp_path / "m")
    assert main(["memory", "reset", "--yes", "--memory-dir", mem]) == 0
    capsys.readouterr()
    assert main(["memory", "rules", "--tags", "leg", "--memory-dir", mem]) == 2
    err = capsys.readouterr().err
    assert "unknown tag(s) leg" in err and "legs" in err and len(err.strip().splitlines()) == 1
    # vocabulary tags, in any case, still work
    assert main(["memory", "rules", "--tags", "Legs,hyperextension", "-k", "2", "--memory-dir", mem]) == 0


def test_evaluate_critic_refuses_a_missing_memory_dir_before_sampling(tmp_path, capsys, monkeypatch):
    """A mistyped --memory-dir was noticed only after every held-out group was sampled (and a run folder made)."""
    import hmrcritic.agent.groups as groups

    def no_sampling(*args, **kwargs):
        raise AssertionError("groups were sampled before the --memory-dir check")

    monkeypatch.setattr(groups, "make_groups", no_sampling)
    rc = main(["evaluate-critic", "--memory-dir", str(tmp_path / "typo"), "--num-groups", "2"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "--memory-dir" in err and "does not exist" in err and "hmrcritic explore" in err
    assert len(err.strip().splitlines()) == 1
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert main(["evaluate-critic", "--memory-dir", str(afile), "--num-groups", "2"]) == 2
    assert "is a file" in capsys.readouterr().err


class _Stop(Exception):
    pass


def _stop(*args, **kwargs):
    raise _Stop


def test_critique_says_when_its_memory_dir_holds_no_memory(tmp_path, capsys, monkeypatch):
    """A mistyped --memory-dir was silently seeded with the starter rules and critiqued with them."""
    import hmrcritic.agent.api as api

    monkeypatch.setattr(api, "critique_group", _stop)
    with contextlib.suppress(_Stop):
        main(["critique", "--scene", "test:0", "-n", "2", "--no-render", "--memory-dir", str(tmp_path / "typo"),
              "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert "note: no memory at" in err and "starter rules" in err


def test_export_says_when_its_memory_dir_holds_no_memory(tmp_path, capsys, monkeypatch):
    import hmrcritic.alignment.export as export_mod

    monkeypatch.setattr(export_mod, "export", _stop)
    with contextlib.suppress(_Stop):
        main(["export", "--split", "wild", "--out", str(tmp_path / "ds"), "--memory-dir", str(tmp_path / "typo")])
    assert "note: no memory at" in capsys.readouterr().err
    # an existing memory, or scoring without one, says nothing
    from hmrcritic.memory.store import MemoryStore

    MemoryStore(tmp_path / "mem")
    for extra in (["--memory-dir", str(tmp_path / "mem")], ["--memory-dir", str(tmp_path / "typo2"), "--no-memory"]):
        with contextlib.suppress(_Stop):
            main(["export", "--split", "wild", "--out", str(tmp_path / "ds"), *extra])
        assert "note: no memory" not in capsys.readouterr().err


def test_train_base_help_names_the_runs_folder_as_its_default():
    """The help said "Default: runs/train-base-seed<S>", read as ./runs; the run goes to the runs folder."""
    import typer

    from hmrcritic.cli import app

    cmd = typer.main.get_command(app).commands["train-base"]
    out_help = next(p.help for p in cmd.params if p.name == "out")
    assert "<runs>/train-base-seed<S>" in out_help and "HMRCRITIC_RUNS" in out_help


def test_export_help_says_it_resumes_and_shows_the_examples(capsys, monkeypatch):
    """`export --help` showed only the group's one-line help: the callback docstring with the examples (and that
    a killed export resumes) never reached the user."""
    monkeypatch.setenv("COLUMNS", "200")
    with contextlib.suppress(SystemExit):
        main(["export", "--help"])
    out = capsys.readouterr().out
    assert "run the same command again" in out and "hmrcritic export validate runs/wild-prefs" in out
