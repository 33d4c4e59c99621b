"""Review s28 (a new user's walk-through of the messages): finetune's "asked for 20" when nothing was asked,
``body convert`` describing the converted file as what it wanted as input, the score calibration's progress with
nothing between its first and last group, explore-eval's table without units, a help pointing to a PAPER.md that is
docs/PAPER.md, and ``demo --explore-rounds``'s help silent on the calibration fitted at 0 rounds."""

from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

from hmrcritic.cli import app


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory):
    """A tiny diffusion checkpoint (a step of it takes milliseconds)."""
    from test_finetune import TINY

    from hmrcritic.hmr.diffusion import HMRDiffusion, save_model

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("base") / "base.pt"
    save_model(HMRDiffusion(TINY), path)
    return path


def test_finetune_note_on_a_smaller_g_says_default_when_n_was_not_given(tiny_base, tmp_path):
    """Without -n the note read "using G = 4 (asked for 20)": 20 is the default, the user asked for nothing."""
    from test_finetune import write_dataset

    data = write_dataset(tmp_path / "prefs", n_groups=3, N=4)
    runner = CliRunner()
    common = ["finetune", "--data", str(data), "--model", str(tiny_base), "--steps", "1", "--batch-size", "2"]
    unasked = runner.invoke(app, [*common, "--out", str(tmp_path / "a.pt")])
    assert unasked.exit_code == 0, unasked.output
    assert "using G = 4 (default 20)" in unasked.stderr
    asked = runner.invoke(app, [*common, "--out", str(tmp_path / "b.pt"), "-n", "30"])
    assert asked.exit_code == 0, asked.output
    assert "using G = 4 (asked for 30)" in asked.stderr


def test_body_convert_of_an_unreadable_file_asks_for_the_official_pkl(tmp_path, capsys):
    """convert's input is the official chumpy .pkl; its error said "expected a chumpy-free SMPL model", the file
    convert makes. The loader (which does want the chumpy-free file) still describes that layout."""
    from hmrcritic.cli import main
    from hmrcritic.errors import AssetError
    from hmrcritic.hmr.body import read_model_arrays

    src = tmp_path / "me.json"
    src.write_text('{"v_template": []}\n', encoding="utf-8")
    rc = main(["body", "convert", str(src), str(tmp_path / "x.pkl")])
    said = " ".join(capsys.readouterr().err.split())
    assert rc != 0, said
    assert "not a readable body model" in said
    assert "official SMPL .pkl (e.g. basicModel_neutral_lbs_10_207_0_v1.0.0.pkl)" in said
    assert "chumpy-free" not in said
    assert not (tmp_path / "x.pkl").exists()
    with pytest.raises(AssetError, match="expected a chumpy-free SMPL model"):
        read_model_arrays(src)


def test_explore_calibration_progress_is_said_at_each_tenth():
    """`explore` said "calibrating scores: 1/32" and then "32/32" minutes later: nothing in between. Now each tenth
    of the way, and never more than about a dozen lines however many groups."""
    from hmrcritic.commands.explore import explore_line

    def said(total: int) -> list[str]:
        lines = [explore_line("calibrate", {"index": i, "total": total}) for i in range(1, total + 1)]
        return [ln for ln in lines if ln is not None]

    lines = said(32)
    assert lines[0].endswith("1/32 held-out groups") and lines[-1].endswith("32/32 held-out groups")
    assert any("16/32" in ln for ln in lines)
    assert 9 <= len(lines) <= 12
    assert len(said(500)) <= 12 and len(said(3)) == 3


@pytest.mark.usefixtures("small_prior")
def test_learning_curve_calibration_progress_is_said_between_first_and_last(monkeypatch, tmp_path):
    """learning-curve's exploration printed the calibration's progress only at its first and last group."""
    from hmrcritic.agent.groups import make_groups
    from hmrcritic.agent.learning_curve import learning_curve
    from hmrcritic.hmr.data import generate_split
    from hmrcritic.memory.store import MemoryStore

    monkeypatch.setenv("HMRCRITIC_DATA", str(tmp_path / "data"))
    generate_split("train", n=6, seed=1, quiet=True)
    generate_split("test", n=2, seed=2, quiet=True)
    train = make_groups("train", num_groups=6, num_generations=3, source="perturbed")[0]
    held = make_groups("test", num_groups=1, num_generations=3, source="perturbed")[0]
    lines: list[str] = []
    with MemoryStore(tmp_path / "mem", chroma_url="") as store:
        learning_curve(store, rounds=1, batch_size=1, train_groups=train, heldout=held, status=lines.append,
                       explore_kwargs={"merge_text": False, "calibration_groups": 4})
    calibrating = [ln.strip() for ln in lines if "calibrating scores" in ln]
    assert [ln.split()[2] for ln in calibrating] == ["1/4", "2/4", "3/4", "4/4"], lines


def test_explore_eval_table_names_its_units():
    """The table's "top-1 PA" / "top-1 MPJPE" figures are mm and "r pooled" a point-wise Pearson r; it said neither
    (evaluate-critic's table does; session 35 named the columns as evaluate-critic's table does). The legend is a
    line under the table; --json is the result as it was."""
    import json
    from pathlib import Path

    from hmrcritic.agent.learning_curve import format_rows

    res = json.loads((Path(__file__).resolve().parents[1] / "docs/results/explore_eval.json").read_text())
    before = json.dumps(res, sort_keys=True)
    lines = format_rows(res).splitlines()
    assert lines[0].split()[0] == "variant"  # the heading stays the first line
    legend = lines[-1]
    assert "r pooled: point-wise Pearson r" in legend
    assert "top-1 PA, top-1 MPJPE: error of the top-ranked hypothesis in mm" in legend
    assert json.dumps(res, sort_keys=True) == before


def test_memory_rules_help_points_to_docs_paper():
    """`memory rules --help` pointed to "PAPER.md §2", a file the repository has only as docs/PAPER.md."""
    from pathlib import Path

    res = CliRunner().invoke(app, ["memory", "rules", "--help"], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    assert "docs/PAPER.md §2" in res.output
    assert (Path(__file__).resolve().parents[1] / "docs" / "PAPER.md").is_file()


@pytest.mark.usefixtures("small_prior")
def test_demo_explore_rounds_help_says_the_calibration_is_fitted_at_any_rounds(monkeypatch, tmp_path):
    """`demo --explore-rounds 0` still fits a score calibration on train groups (explore, as the demo calls it,
    fits one where the memory has none), so 0 is not the starter memory; the help said only "Exploration batches
    before scoring"."""
    import typer

    from hmrcritic.agent.explore import explore
    from hmrcritic.hmr.data import generate_split
    from hmrcritic.memory.store import MemoryStore

    demo = typer.main.get_command(app).commands["demo"]
    (opt,) = [p for p in demo.params if p.name == "explore_rounds"]
    assert "score calibration is fitted whatever the rounds" in opt.help
    assert "not the starter memory" in opt.help
    # what the help says: no round explored, a calibration fitted (fewer groups than the demo's 32, same path)
    monkeypatch.setenv("HMRCRITIC_DATA", str(tmp_path / "data"))
    generate_split("train", n=3, seed=1, quiet=True)
    with MemoryStore(tmp_path / "mem", chroma_url="") as store:
        summary = explore(store, split="train", rounds=0, batch_size=1, num_generations=3, source="perturbed",
                          calibration_groups=2)
        assert summary.groups == 0 and summary.calibration is not None
        assert store.calibration() is not None
