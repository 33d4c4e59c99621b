"""Review s21 (hmrtrain): what a user touches before the critic — ``train-base`` (its ``--ship`` record, tiny and
odd settings), ``data generate|info`` and the training data.

Each test failed before its fix; the docstring says what was wrong."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from hmrcritic.cli import main
from hmrcritic.errors import InputError
from hmrcritic.hmr.diffusion import DiffusionConfig
from hmrcritic.hmr.train import TrainConfig, train_base

TESTS = Path(__file__).resolve().parent
TINY = DiffusionConfig(d_model=32, layers=1, heads=2)


def _data(n=8, seed=0):
    sys.path.insert(0, str(TESTS))
    from test_diffusion import _tiny_data

    return _tiny_data(n, seed)


# ------------------------------------------------------------------------------------------- train-base --ship
@pytest.fixture()
def shipped(monkeypatch, tmp_path):
    """``train-base --ship`` with training, loading, evaluation and installing replaced by stand-ins: the command
    ``ship_model`` is given (base_model.json's "reproduce") and the evaluation keys are captured; nothing trains
    and the package's assets are not touched."""
    import hmrcritic.hmr.diffusion as diffusion
    import hmrcritic.hmr.evaluate as evaluate
    import hmrcritic.hmr.train as train

    seen: dict = {}
    model_pt = tmp_path / "run" / "model.pt"

    def fake_train(cfg, out, **kw):
        seen["cfg"] = cfg
        return model_pt

    def fake_ship(path, evals, dest_dir=None, command=None):
        seen["command"], seen["evals"] = command, sorted(evals)
        return tmp_path / "base_model.pt", tmp_path / "base_model.json"

    monkeypatch.setattr(train, "train_base", fake_train)
    monkeypatch.setattr(train, "ship_model", fake_ship)
    monkeypatch.setattr(diffusion, "ASSETS_DIR", tmp_path / "assets")  # --ship's write probe: not the package's
    monkeypatch.setattr(diffusion, "load_model", lambda path, device="cpu": object())
    monkeypatch.setattr(evaluate, "evaluate_model", lambda model, **kw: {"n_samples": kw["limit"]})
    monkeypatch.setattr(evaluate, "format_report", lambda res: "report")
    (tmp_path / "base_model.pt").write_bytes(b"x")
    return seen


def test_the_shipped_reproduce_command_names_every_setting_that_made_the_model(shipped, tmp_path):
    """base_model.json's "reproduce" left out --max-samples, --threads and --guidance: a model shipped from
    ``train-base --max-samples 500 --threads 2 --guidance 10 --ship`` recorded ``train-base --seed 0 --ship``, which
    trains on the whole split (another model), on one thread, and stores its guided row as test_guided30 — not the
    figures shipped beside it."""
    argv = ["train-base", "--seed", "3", "--max-samples", "500", "--threads", "2", "--ship", "--guidance", "10",
            "--eval-limit", "4", "--out", str(tmp_path / "run")]
    assert main(argv) == 0
    cmd = shipped["command"]
    assert "test_guided10" in shipped["evals"]
    for part in ("--seed 3", "--max-samples 500", "--threads 2", "--guidance 10", "--eval-limit 4", "--ship"):
        assert part in cmd, cmd
    # the command it records, parsed again, gives the same recipe
    cfg = shipped["cfg"]
    assert main(cmd.split()[1:] + ["--out", str(tmp_path / "run")]) == 0
    assert shipped["cfg"] == cfg and "test_guided10" in shipped["evals"]


def test_the_default_ship_still_records_the_short_command(shipped, tmp_path):
    assert main(["train-base", "--ship", "--eval-limit", "100", "--out", str(tmp_path / "run")]) == 0
    assert shipped["command"] == "hmrcritic train-base --seed 0 --ship --eval-limit 100"


# ----------------------------------------------------------------------------------------- tiny settings
def test_one_training_scene_is_refused_with_the_settings_not_after_loading_the_split(tmp_path, monkeypatch):
    """``--max-samples 1`` passed the settings check (≥ 1) and was refused ("need at least 2 training samples") only
    once the train split had been loaded — or first generated, 20,000 scenes, where it did not exist yet."""
    import hmrcritic.hmr.data as data

    with pytest.raises(InputError, match="max-samples must be ≥ 2"):
        TrainConfig(max_samples=1)
    TrainConfig(max_samples=2)
    monkeypatch.setenv("HMRCRITIC_DATA", str(tmp_path / "data"))
    monkeypatch.setattr(data, "generate_split", lambda *a, **k: pytest.fail("the split was generated"))
    assert main(["train-base", "--steps", "1", "--max-samples", "1", "--out", str(tmp_path / "run")]) == 2
    assert not (tmp_path / "run").exists()


def test_a_batch_larger_than_the_training_data_is_said(tmp_path):
    """A batch size above the number of training scenes was cut to it without a word: the run printed and recorded
    batch 16 while each step trained on the 8 scenes there were."""
    said: list[str] = []
    cfg = TrainConfig(steps=2, batch_size=16, warmup=0, log_every=1, ckpt_every=1, model=TINY)
    train_base(cfg, tmp_path / "run", data=_data(8), notify=said.append)
    assert any("batch size 16 is more than the 8 training scenes" in line for line in said), said
    said.clear()
    train_base(TrainConfig(steps=2, batch_size=8, warmup=0, model=TINY), tmp_path / "fits", data=_data(8),
               notify=said.append)
    assert not any("batch size" in line for line in said), said


# --------------------------------------------------------------------- evaluate: the body the model was trained on
@pytest.mark.parametrize("case", ["same file, another path", "another file, same path"])
def test_the_trained_on_another_body_note_judges_the_file_by_its_content(monkeypatch, case):
    """The report's note "the model was trained on scenes of body model X, not Y" compared paths only: the SMPL file
    the scenes were made with, named relatively when training and absolutely when evaluating, was reported as
    another body, and a male file put where the neutral one was got no note at all (load_split judges by sha256)."""
    import copy

    import torch
    from conftest import upright_scenes

    from hmrcritic.hmr import evaluate as E
    from hmrcritic.hmr.body import load_body_model

    body = copy.copy(load_body_model())  # the mannequin's arrays, named and hashed as a user's SMPL file
    body.name, body.source_sha256 = "/home/me/models/SMPL_NEUTRAL.pkl", "a" * 64
    same = case == "same file, another path"
    trained = {"body_model": "models/SMPL_NEUTRAL.pkl" if same else body.name,
               "body_sha256": "a" * 64 if same else "b" * 64}
    monkeypatch.setattr(E, "_load_labelled", lambda split, limit: (upright_scenes(body, 2), 2))
    torch.manual_seed(0)
    from hmrcritic.hmr.diffusion import HMRDiffusion

    model = HMRDiffusion(TINY)
    model.checkpoint_extra = {"data": {"split": "train", **trained}}
    res = E.evaluate_model(model, "test", num_generations=2, steps=2, nn_baseline=False, body=body)
    note = "these figures measure it on another body" in E.format_report(res)
    assert note != same, (res["trained_body_model"], E.format_report(res))


def test_training_data_records_the_body_files_content_but_not_for_the_mannequin(monkeypatch):
    """What the check above reads: the training data's source keeps the manifest's body_sha256 when the scenes were
    made with a file; the mannequin's (None) is left out, so the shipped recipe's model.pt stays byte for byte."""
    import numpy as np

    from hmrcritic.hmr import data as D
    from hmrcritic.hmr import train as T

    n = 3
    arrays = {"keypoints": np.ones((n, 17, 3)), "K": np.tile(np.eye(3), (n, 1, 1)), "image_size": np.array([64, 64]),
              "global_orient": np.zeros((n, 3)), "body_pose": np.zeros((n, 69)), "betas": np.zeros((n, 10))}
    manifests = [{"n": n, "body_model": "mannequin", "body_sha256": None},
                 {"n": n, "body_model": "SMPL.pkl", "body_sha256": "c" * 64}]

    class Scenes:
        has_labels = True

        def __init__(self):
            self.manifest = manifests.pop(0)

        def arrays(self, keys):
            return {k: arrays[k] for k in keys}

    monkeypatch.setattr(D, "load_split", lambda split: Scenes())
    assert "body_sha256" not in T.load_train_data("train").source
    assert T.load_train_data("train").source["body_sha256"] == "c" * 64


def test_the_progress_eta_of_a_stop_at_run_is_to_where_it_stops(capsys):
    """``train-base --stop-at 100`` printed the eta to the recipe's 10,000th step: at 1 step/s, "eta 165.0 min" for
    a run with 50 steps left."""
    from hmrcritic.commands.model import _progress_printer

    rec = {"step": 50, "total": 10000, "loss": 0.5, "lr": 1e-3, "steps_per_s": 1.0}
    _progress_printer("train", 100)(rec)
    line = capsys.readouterr().out
    assert "eta 0.8 min (to --stop-at 100)" in line, line
    _progress_printer("train")(rec)  # no --stop-at (or one past the recipe): the eta to its end, as before
    _progress_printer("train", 20000)(rec)
    assert capsys.readouterr().out.count("eta 165.8 min\n") == 2


# ------------------------------------------------------------------------------ the train split a run trains on
def test_the_recorded_n_is_the_scenes_trained_on_and_the_split_size_apart(monkeypatch):
    """The manifest's n overwrote the number of scenes trained on: a ``--max-samples 3`` model recorded "n": 6 (its
    split's size). Without --max-samples the record is key for key as it was (the shipped model.pt's bytes)."""
    import numpy as np

    from hmrcritic.hmr import data as D
    from hmrcritic.hmr import train as T

    n = 6
    arrays = {"keypoints": np.ones((n, 17, 3)), "K": np.tile(np.eye(3), (n, 1, 1)),
              "image_size": np.tile([64, 64], (n, 1)), "global_orient": np.zeros((n, 3)),
              "body_pose": np.zeros((n, 69)), "betas": np.zeros((n, 10))}

    class Scenes:
        has_labels = True
        manifest = {"split": "train", "n": n, "seed": 1001, "preset": "train", "generator_version": "g",
                    "body_model": "mannequin", "body_sha256": None}

        def arrays(self, keys):
            return {k: arrays[k] for k in keys}

    monkeypatch.setattr(D, "load_split", lambda split: Scenes())
    some = T.load_train_data("train", max_samples=3)
    assert len(some) == 3 and some.source["n"] == 3 and some.source["split_n"] == 6
    every = T.load_train_data("train").source
    assert list(every.items()) == [("split", "train"), ("n", 6), ("seed", 1001), ("preset", "train"),
                                   ("generator_version", "g"), ("body_model", "mannequin")]


@pytest.fixture()
def small_train_split(tmp_path, monkeypatch):
    """A train split of 20 scenes where the default (HMRCRITIC_SPLIT_SIZE_SCALE 0.005) is 100."""
    from hmrcritic.hmr.data import generate_split

    monkeypatch.setenv("HMRCRITIC_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("HMRCRITIC_SPLIT_SIZE_SCALE", "0.005")
    generate_split("train", n=20, quiet=True)
    return generate_split


def test_a_refused_resume_on_a_regenerated_split_counts_the_scenes_trained_on(small_train_split, tmp_path):
    """Two runs of --max-samples 8 on a regenerated split were refused as "20 scenes; now 8": the state's count was
    its split's size."""
    from hmrcritic.errors import AssetError

    cfg = TrainConfig(steps=3, batch_size=4, warmup=0, max_samples=8, model=TINY)
    train_base(cfg, tmp_path / "run", stop_at=1)
    small_train_split("train", n=20, seed=5, quiet=True)
    with pytest.raises(AssetError, match=r"split 'train', 8 scenes; now 8, and the arrays differ"):
        train_base(cfg, tmp_path / "run")


def test_a_run_on_a_split_other_than_the_default_says_so(small_train_split, tmp_path):
    """A split generated with another --n (or --seed) was trained on without a word, under the recipe's printed
    settings: the run gave another model than the one ``train-base --seed 0`` stands for."""
    said: list[str] = []
    cfg = TrainConfig(steps=1, batch_size=4, warmup=0, model=TINY)
    train_base(cfg, tmp_path / "small", notify=said.append)
    assert any("train split in the data folder has 20 scenes of seed 1001, not the default 100 of seed 1001" in line
               for line in said), said
    small_train_split("train", quiet=True)  # the default one
    said.clear()
    train_base(cfg, tmp_path / "default", notify=said.append)
    assert not any("split in the data folder" in line for line in said), said
    said.clear()  # --max-samples is the run's own choice, not another split
    train_base(TrainConfig(steps=1, batch_size=4, warmup=0, max_samples=10, model=TINY), tmp_path / "some",
               notify=said.append)
    assert not any("split in the data folder" in line for line in said), said


# ---------------------------------------------------------------------------------------------------- data info
def test_data_info_on_a_split_of_another_body_model_says_so_not_not_found(tmp_path, monkeypatch, capsys):
    """``data info`` on a split made with an SMPL file, in a shell without HMRCRITIC_BODY_MODEL, said "split 'test'
    not found or out of date" and sent the user to ``data generate`` — which replaces the split with mannequin
    scenes. It names the body the split was made with and the one in use."""
    import shutil

    from hmrcritic.hmr import mannequin
    from hmrcritic.hmr.body import load_body_model
    from hmrcritic.hmr.data import generate_split

    load_body_model()  # the mannequin file exists
    smpl = tmp_path / "SMPL_NEUTRAL.pkl"  # a user's SMPL file (here: the mannequin's arrays)
    shutil.copy(mannequin.default_folder() / mannequin.FILE_NAME, smpl)
    monkeypatch.setenv("HMRCRITIC_DATA", str(tmp_path / "data"))
    generate_split("test", n=2, body=load_body_model(smpl), quiet=True)
    monkeypatch.delenv("HMRCRITIC_BODY_MODEL", raising=False)
    assert main(["data", "info", "--split", "test"]) == 2
    err = capsys.readouterr().err
    assert f"made with body model {smpl}, not mannequin (the body model in use)" in err, err
    assert main(["data", "info", "--split", "wild"]) == 2  # one that is not there
    assert "split 'wild' in" in (err := capsys.readouterr().err) and ": not found;" in err, err
    monkeypatch.setenv("HMRCRITIC_BODY_MODEL", str(smpl))
    assert main(["data", "info", "--split", "test", "--json"]) == 0
