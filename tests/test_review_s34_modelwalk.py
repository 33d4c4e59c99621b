"""Review s34 (model walk): ``body``, ``data``, ``train-base``, ``sample`` and ``evaluate`` run as a new user would,
on wrong folders and flags. Each test failed before its fix; the docstring says what was wrong.

Nothing here trains or installs a model: ``train_base``, ``ship_model`` and the evaluation are stand-ins, and the
package's assets folder is replaced by a temporary one."""

from __future__ import annotations

import json

import pytest

from hmrcritic.cli import main


def _error(capsys) -> str:
    err = [line for line in capsys.readouterr().err.strip().splitlines() if line.startswith("error:")]
    assert len(err) == 1, err
    return err[0]


def temporary_assets(tmp_path):
    """A stand-in for the package's assets folder, holding a base_model.pt/.json of known bytes."""
    assets = tmp_path / "assets"
    assets.mkdir()
    (assets / "base_model.pt").write_bytes(b"the shipped weights")
    (assets / "base_model.json").write_text('{"eval": "the shipped figures"}')
    return assets


def stand_in_train_base(monkeypatch, assets, fake_train, fake_ship) -> None:
    """``train-base`` with training and installing replaced by ``fake_train``/``fake_ship``, loading and evaluation
    by trivial stand-ins, and the package's assets by ``assets`` (shared by the session's train-base tests)."""
    import hmrcritic.hmr.diffusion as diffusion
    import hmrcritic.hmr.evaluate as evaluate
    import hmrcritic.hmr.train as train

    monkeypatch.setattr(train, "train_base", fake_train)
    monkeypatch.setattr(train, "ship_model", fake_ship)
    monkeypatch.setattr(diffusion, "ASSETS_DIR", assets)
    monkeypatch.setattr(diffusion, "load_model", lambda path, device="cpu": object())
    monkeypatch.setattr(evaluate, "evaluate_model", lambda model, **kw: {"n_samples": kw["limit"]})
    monkeypatch.setattr(evaluate, "format_report", lambda res: "report")


@pytest.fixture()
def fake_run(monkeypatch, tmp_path):
    """``train-base`` with training, loading, evaluation and installing replaced by stand-ins (as
    test_review_s21_hmrtrain's ``shipped``); the stand-in training makes the run folder and its model.pt, and the
    package's assets are a temporary folder holding a base_model.pt/.json of known bytes."""
    seen: dict = {"trained": 0}
    assets = temporary_assets(tmp_path)

    def fake_train(cfg, out, **kw):
        seen["trained"] += 1
        seen["stop_at"] = kw.get("stop_at")
        out.mkdir(parents=True, exist_ok=True)
        (out / "model.pt").write_bytes(b"new weights")
        (out / "state.pt").write_bytes(b"state")
        return out / "model.pt"

    def fake_ship(path, evals, dest_dir=None, command=None):
        seen["command"] = command
        (assets / "base_model.pt").write_bytes(b"new weights")
        return assets / "base_model.pt", assets / "base_model.json"

    stand_in_train_base(monkeypatch, assets, fake_train, fake_ship)
    return seen


# ------------------------------------------------------------------------------------------------- train-base
def test_train_base_refuses_to_overwrite_a_model_pt_that_is_not_its_runs(fake_run, tmp_path, capsys):
    """``train-base --out DIR`` where DIR held a model.pt but no state.pt (a finetuned or downloaded checkpoint put
    there) trained and then overwrote that model.pt without a word; train_base guards a foreign log.jsonl, not
    the model. Now refused before training; ``--no-resume`` (start over, which deletes model.pt) and a real run
    folder (state.pt beside model.pt) still train."""
    out = tmp_path / "mine"
    out.mkdir()
    (out / "model.pt").write_bytes(b"my finetuned weights")
    assert main(["train-base", "--steps", "2", "--out", str(out)]) == 2
    err = _error(capsys)
    assert "model.pt but no state.pt" in err and "--no-resume" in err, err
    assert fake_run["trained"] == 0 and (out / "model.pt").read_bytes() == b"my finetuned weights"
    assert main(["train-base", "--steps", "2", "--out", str(out), "--no-resume"]) == 0
    assert fake_run["trained"] == 1
    # now a run folder (state.pt beside model.pt): the same command resumes it
    assert main(["train-base", "--steps", "2", "--out", str(out)]) == 0
    assert fake_run["trained"] == 2


def test_a_stop_at_past_the_last_step_is_said(fake_run, tmp_path, capsys):
    """``--steps 10 --stop-at 20`` trained all 10 steps and wrote model.pt without a word, where the flag promises
    a stop and a model_step20.pt; the ship record then named a meaningless ``--stop-at 20``."""
    assert main(["train-base", "--steps", "10", "--stop-at", "20", "--out", str(tmp_path / "run")]) == 0
    err = capsys.readouterr().err
    assert "--stop-at 20 is not before the run's last step (10)" in err, err
    assert fake_run["stop_at"] is None  # the same run train_base makes of it (stop_at ≥ steps never stops early)
    assert main(["train-base", "--steps", "10", "--stop-at", "5", "--out", str(tmp_path / "run2")]) == 0
    assert "--stop-at" not in capsys.readouterr().err and fake_run["stop_at"] == 5


def test_ship_says_what_it_replaces_and_keeps_the_replaced_model(fake_run, tmp_path, capsys):
    """``--ship`` replaced the package's base_model.pt (the default model of every command, that every published
    figure is measured on) without saying so before the run, and kept no copy: a 20-step trial with --ship
    left no way back outside a git checkout. Now said up front, and the replaced pair is kept in the run folder."""
    out = tmp_path / "run"
    assert main(["train-base", "--steps", "2", "--ship", "--eval-limit", "2", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assets = tmp_path / "assets"
    assert f"replaces {assets / 'base_model.pt'}" in captured.err, captured.err
    assert (out / "replaced_base_model.pt").read_bytes() == b"the shipped weights"
    assert json.loads((out / "replaced_base_model.json").read_text()) == {"eval": "the shipped figures"}
    assert str(out / "replaced_base_model.pt") in captured.out
    assert (assets / "base_model.pt").read_bytes() == b"new weights"  # the stand-in ship ran after the copy


# ----------------------------------------------------------------------------------------------- sample/evaluate
@pytest.fixture()
def user_input(tmp_path):
    from PIL import Image

    img, kp = tmp_path / "me.png", tmp_path / "me.json"
    Image.new("RGB", (64, 96), (120, 130, 140)).save(img)
    pts = [[32, 10], [34, 8], [30, 8], [36, 9], [28, 9], [40, 22], [24, 22], [44, 36], [20, 36], [46, 48], [18, 48],
           [37, 50], [27, 50], [38, 68], [26, 68], [38, 88], [26, 88]]
    kp.write_text(json.dumps([{"keypoints": [v for x, y in pts for v in (x, y, 0.9)], "score": 0.9}]))
    return img, kp


def test_sample_names_the_steps_flag_above_the_models_timesteps(user_input, tmp_path, capsys):
    """``sample --steps 5000`` said "DDIM steps must be in 1..1000", where ``--steps 0`` says "--steps (DDIM steps)
    must be ≥ 1": the upper bound did not name the flag to change."""
    img, kp = user_input
    out = tmp_path / "out"
    assert main(["sample", "--image", str(img), "--keypoints", str(kp), "-n", "2", "--steps", "5000", "--out",
                 str(out), "--no-render"]) == 2
    err = _error(capsys)
    assert "--steps: DDIM steps must be in 1..1000" in err, err
    assert not out.exists()


def test_evaluate_names_the_steps_flag_above_the_models_timesteps(tmp_path, monkeypatch, capsys):
    """``evaluate --steps 5000`` said "DDIM steps must be in 1..1000" (as sample did), not naming --steps."""
    monkeypatch.setenv("HMRCRITIC_DATA", str(tmp_path / "data"))
    assert main(["evaluate", "--split", "test", "-n", "2", "--steps", "5000", "--limit", "1", "--no-nn"]) == 2
    err = _error(capsys)
    assert "--steps: DDIM steps must be in 1..1000" in err, err


def test_evaluate_on_train_says_its_figures_are_in_sample(tmp_path, monkeypatch, capsys):
    """``evaluate --split train`` reported the model's own training scenes as any split, without a word (only
    ``--help`` says "train is in-sample"): figures far better than test's, read as the model's."""
    import hmrcritic.hmr.evaluate as evaluate

    monkeypatch.setattr(evaluate, "evaluate_model", lambda model, **kw: {"n_samples": 1, "split": kw["split"]})
    monkeypatch.setattr(evaluate, "format_report", lambda res: "report")
    assert main(["evaluate", "--split", "train", "-n", "2", "--limit", "1"]) == 0
    assert "these figures are in-sample" in capsys.readouterr().err
    assert main(["evaluate", "--split", "test", "-n", "2", "--limit", "1"]) == 0
    assert "in-sample" not in capsys.readouterr().err


# -------------------------------------------------------------------------------------------------------- data
def test_data_generate_render_says_where_the_images_went(tmp_path, monkeypatch, capsys):
    """``data generate --render`` printed only "split wild: 2 scenes in FOLDER": where the images and masks (the
    slow part, the one asked for) went was left to be found."""
    monkeypatch.setenv("HMRCRITIC_DATA", str(tmp_path / "data"))
    assert main(["data", "generate", "--split", "wild", "--n", "2", "--render"]) == 0
    out = capsys.readouterr().out
    folder = tmp_path / "data" / "wild"
    assert f"images in {folder / 'images'}, masks in {folder / 'masks'}" in out, out
    assert len(list((folder / "images").glob("*.png"))) == 2
    assert main(["data", "generate", "--split", "wild", "--n", "2"]) == 0
    assert "images in" not in capsys.readouterr().out  # none rendered, none said
