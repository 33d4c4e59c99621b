"""Session 32: README followed top to bottom as a new user, with the help texts read side by side.

* ``finetune --data DIR`` on a folder that holds no export (made ahead for ``--out``, a sample's folder, finetune
  run before its export) said "DIR/dataset.json: not a group preference dataset (no dataset.json)" — the file named
  twice and nothing of what writes one — where ``export validate DIR`` said both.
* One option, one text: ``--judge`` read "builtin (offline) | vlm", "builtin or vlm" and two other wordings on six
  commands; export's ``--chroma-url`` named no default (it falls back to ``HMRCRITIC_CHROMA_URL`` as every command
  does) and its ``--memory-dir`` said "the configured memory" where the others name ``HMRCRITIC_MEMORY``;
  evaluate-critic's ``--source`` listed the choices in another order without saying what ``auto`` does; critique's
  ``--max-reflections`` named no default (``HMRCRITIC_MAX_REFLECTIONS``, else 2).
"""

from __future__ import annotations

import typer.main

from hmrcritic.cli import app, main


def _options(name: str) -> dict[str, str]:
    """Every command path -> the help of its option ``name`` (``--judge``), over the whole command tree."""
    found: dict[str, str] = {}

    def walk(cmd, path: str) -> None:  # typer's own click copy: no isinstance with click's classes
        for param in cmd.params:
            if param.param_type_name == "option" and name in param.opts:
                found[path] = param.help or ""
        for sub_name, sub in getattr(cmd, "commands", {}).items():
            walk(sub, f"{path} {sub_name}".strip())

    walk(typer.main.get_command(app), "")
    return found


def test_finetune_on_a_folder_without_an_export_is_one_line_naming_the_command_that_writes_one(tmp_path, capsys):
    folder = tmp_path / "prefs"
    folder.mkdir()  # made ahead, or finetune run before `hmrcritic export --out prefs`
    assert main(["finetune", "--data", str(folder), "--out", str(tmp_path / "ft.pt"), "--steps", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: "), err
    assert f"{folder}: not a group preference dataset" in err
    assert f"`hmrcritic export --out {folder}` writes one" in err
    assert "dataset.json: not" not in err  # the folder named, not its missing file
    assert not (tmp_path / "ft.pt").exists()
    # export validate says the same of the same folder
    assert main(["export", "validate", str(folder)]) == 2
    assert capsys.readouterr().err == err


def test_judge_reads_alike_on_every_command():
    helps = _options("--judge")
    assert {"critique", "explore", "explore-eval", "evaluate-critic", "learning-curve", "export"} <= set(helps)
    first = "builtin (offline) or vlm (an OpenAI-compatible endpoint: --base-url, --vlm-model)"
    assert all(h.startswith(first) for h in helps.values()), helps
    assert "HMRCRITIC_JUDGE" in helps["critique"]  # the one whose default is the variable


def test_chroma_url_and_memory_dir_name_their_defaults_alike():
    urls = _options("--chroma-url")
    assert "export" in urls and len(urls) >= 5
    assert len(set(urls.values())) == 1 and "HMRCRITIC_CHROMA_URL" in urls["export"], urls
    dirs = _options("--memory-dir")
    assert "export" in dirs
    # where --memory-dir has a default, it is named as the variable that sets it
    assert all("HMRCRITIC_MEMORY" in h for h in dirs.values() if "default" in h), dirs


def test_source_and_max_reflections_say_the_same_and_name_the_default():
    sources = _options("--source")
    assert {"evaluate-critic", "explore", "explore-eval"} <= set(sources)
    assert len(set(sources.values())) == 1 and "auto (model if it loads)" in sources["evaluate-critic"], sources
    assert "HMRCRITIC_MAX_REFLECTIONS" in _options("--max-reflections")["critique"]
    assert "HMRCRITIC_MAX_REFLECTIONS" in _options("--max-reflections")["explore"]


def test_explore_says_what_its_hypotheses_were(monkeypatch, tmp_path, capsys):
    """The summary line read "explored 8 groups of train (model)": the --source value, without the option."""
    import hmrcritic.agent.explore as explore_mod

    def fake(memory_dir, **kw):
        return explore_mod.ExploreSummary(memory=str(memory_dir), split=kw["split"], source="model",
                                          error_metric="pa_mpjpe", tau=0.5, memory_version="v", log_path="log")

    monkeypatch.setattr(explore_mod, "explore", fake)
    assert main(["explore", "--memory-dir", str(tmp_path / "mem"), "--rounds", "1"]) == 0
    out = capsys.readouterr().out
    assert "explored 0 groups of train (hypotheses sampled by the model); memory version v" in out, out


def test_help_at_80_columns_cuts_no_option_name_or_word(monkeypatch, capsys):
    """typer cut what did not fit a cell with "…": at 80 columns finetune's help showed "--num-generatio…",
    "--base-loss-wei…" and "--checkpoint-ev…", critique's "HMRCRITIC_BASE_UR…". Folded now, nothing is lost."""
    monkeypatch.setenv("COLUMNS", "80")
    for command in ("finetune", "critique", "sample", "explore", "train-base", "learning-curve", "export"):
        assert main([command, "--help"]) == 0
        out = capsys.readouterr().out
        assert "…" not in out, (command, [line for line in out.splitlines() if "…" in line])
        assert max(len(line) for line in out.splitlines()) <= 80
