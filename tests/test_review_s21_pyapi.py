"""Review s21 (pyapi): hmrcritic as a researcher's library in a notebook — the objects one entry point returns
passed to the next (a critique's ``scores.json`` read back, a ``critique_groups`` entry, into the report writer),
the arguments a user would plausibly give (a checkpoint path where the model goes, ``"~/ckpt.pt"``, one sample for
a split) and what ``import hmrcritic`` alone lets one reach. Each was a bare AttributeError / TypeError from deep
inside, or a silently odd result, before."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from hmrcritic.errors import InputError

K = np.array([[500, 0, 256], [0, 500, 256], [0, 0, 1]], np.float32)


def _keypoints() -> np.ndarray:
    rng = np.random.default_rng(0)
    return np.concatenate([rng.uniform(150, 350, (17, 2)), np.ones((17, 1))], 1).astype(np.float32)


def _model():
    from hmrcritic.hmr.diffusion import DiffusionConfig, HMRDiffusion

    torch.manual_seed(0)
    return HMRDiffusion(DiffusionConfig(d_model=32, layers=1, heads=2, T=100)).eval()


def _cond():
    from hmrcritic.hmr.diffusion import condition_from_keypoints

    return condition_from_keypoints(_keypoints(), K)


# ----------------------------------------------------------------------------------------- import hmrcritic
def test_import_hmrcritic_alone_reaches_the_errors_and_lists_its_parts():
    """``import hmrcritic`` then ``except hmrcritic.errors.InputError`` (as README words the errors) failed with an
    AttributeError from the except clause itself, and dir() offered nothing; still no torch is loaded."""
    code = ("import sys, hmrcritic\n"
            "names = dir(hmrcritic)\n"
            "assert 'torch' not in sys.modules\n"
            "assert {'errors', 'hmr', 'agent', 'memory', 'alignment'} <= set(names), names\n"
            "assert issubclass(hmrcritic.errors.InputError, hmrcritic.errors.HMRCriticError)\n"
            "assert 'torch' not in sys.modules\n"
            "assert 'load_model' in hmrcritic.__doc__ and 'critique_group' in hmrcritic.__doc__\n"
            "try:\n    hmrcritic.no_such_thing\nexcept AttributeError as e:\n    print(e)\n")
    res = subprocess.run([sys.executable, "-W", "error", "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ})
    assert res.returncode == 0, res.stderr
    assert "no_such_thing" in res.stdout


# -------------------------------------------------------------------------------------- sample / load_model
@pytest.mark.parametrize("model", ["base_model.pt", None])
def test_sample_refuses_a_path_or_none_as_the_model(model):
    from hmrcritic.hmr.diffusion import sample

    with pytest.raises(InputError, match="model must be an HMRDiffusion.*load_model"):
        sample(model, _cond(), num_generations=2, steps=2)


@pytest.mark.parametrize("kw, name", [({"K": "intrinsics"}, "K"), ({"keypoints": [[1, 2], [3]]}, "keypoints")])
def test_sample_refuses_intrinsics_or_keypoints_that_are_not_numbers(kw, name):
    from hmrcritic.hmr.diffusion import sample

    with pytest.raises(InputError, match=f"^{name} must be"):
        sample(_model(), _cond(), num_generations=2, steps=2, **kw)


def test_sample_refuses_a_body_that_is_not_a_body_model():
    from hmrcritic.hmr.diffusion import sample

    with pytest.raises(InputError, match="body must be a BodyModel"):
        sample(_model(), _cond(), num_generations=2, steps=2, body="mannequin")


def test_load_model_expands_home_and_refuses_paths_that_are_not_paths(tmp_path, monkeypatch):
    from hmrcritic.hmr.diffusion import load_model, save_model

    model = _model()
    save_model(model, tmp_path / "mine.pt")
    monkeypatch.setenv("HOME", str(tmp_path))
    loaded = load_model("~/mine.pt")  # was "model checkpoint not found: ~/mine.pt"
    assert loaded.checkpoint_path == str(tmp_path / "mine.pt")
    assert torch.equal(loaded.state_dict()["x_std"], model.state_dict()["x_std"])
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InputError, match="empty"):  # was "model checkpoint . is a folder; give the .pt file"
        load_model("")
    with pytest.raises(InputError, match="str or Path"):  # was a bare TypeError
        load_model(5)


# --------------------------------------------------------------------------------------------------- report
def _scored():
    from hmrcritic.agent.api import ScoredGroup
    from hmrcritic.agent.schema import HypothesisScore

    scores = [HypothesisScore(index=i, motion_structure=5, physical_feasibility=5, image_alignment=5,
                              overall=o, rationale=f"hypothesis {i}") for i, o in enumerate((4.0, 7.5))]
    return ScoredGroup(group_id="nb-group", scores=scores, ranking=[1, 0])


def test_a_report_is_written_from_scores_json_read_back(tmp_path):
    from hmrcritic.agent.api import write_scores
    from hmrcritic.agent.report import write_report

    saved = json.loads(write_scores(_scored(), tmp_path / "c").read_text())
    page = write_report(saved, tmp_path / "r").read_text()
    assert "nb-group" in page and page.index("hypothesis 1") < page.index("hypothesis 0")
    with pytest.raises(InputError, match="not a critique result"):
        write_report({"group_id": "x"}, tmp_path / "r2")
    with pytest.raises(InputError, match="expected a ScoredGroup"):
        write_report([saved], tmp_path / "r3")


def test_a_report_is_written_from_a_critique_groups_entry(tmp_path):
    from hmrcritic.agent.api import GroupResult
    from hmrcritic.agent.report import write_report

    assert "nb-group" in write_report(GroupResult("nb-group", _scored()), tmp_path).read_text()
    with pytest.raises(InputError, match="nb-group has no result to report: judge down"):
        write_report(GroupResult("nb-group", None, "judge down", "JudgeError"), tmp_path / "failed")
    assert not (tmp_path / "failed").exists()


def test_a_report_path_ending_in_html_is_the_report_file(tmp_path):
    from hmrcritic.agent.report import write_report

    path = write_report(_scored(), tmp_path / "out" / "nb.html")
    assert path == tmp_path / "out" / "nb.html" and path.is_file()  # was out/nb.html/report.html
    (tmp_path / "kept.html").mkdir()  # an existing folder of that name is still a folder
    assert write_report(_scored(), tmp_path / "kept.html") == tmp_path / "kept.html" / "report.html"


def test_a_report_into_a_file_is_a_one_line_input_error(tmp_path):
    from hmrcritic.agent.report import write_report

    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="notes.txt is a file"):  # was a FileExistsError traceback
        write_report(_scored(), tmp_path / "notes.txt")
    assert (tmp_path / "notes.txt").read_text() == "mine"


# --------------------------------------------------------------------------------------------------- groups
def _labelled_samples(body, n=2):
    from conftest import upright_scenes

    sc = upright_scenes(body, n)
    return [SimpleNamespace(sample_id=f"nb-{i}", keypoints=sc["keypoints"][i].numpy(), K=sc["K"][i].numpy(),
                            image_size=(256, 256), global_orient=sc["global_orient"][i].numpy(),
                            body_pose=sc["body_pose"][i].numpy(), betas=sc["betas"][i].numpy(),
                            transl=sc["transl"][i].numpy(), joints3d=None) for i in range(n)]


def test_groups_from_model_takes_a_checkpoint_path(tmp_path, body):
    from hmrcritic.agent.groups import groups_from_model
    from hmrcritic.hmr.diffusion import save_model

    path = save_model(_model(), tmp_path / "m.pt")
    samples = _labelled_samples(body)
    by_path = groups_from_model(samples, 2, 3, steps=2, model=str(path))  # was 'str' has no attribute 'eval'
    by_model = groups_from_model(samples, 2, 3, steps=2, model=_model())
    assert [g.group_id for g in by_path] == ["nb-0", "nb-1"]
    for a, b in zip(by_path, by_model, strict=True):
        assert np.array_equal(a.hypotheses["body_pose"], b.hypotheses["body_pose"])
    with pytest.raises(InputError, match="model must be"):
        groups_from_model(samples, 1, 2, steps=2, model=3)


def test_one_sample_for_a_split_is_a_one_line_input_error(body):
    from hmrcritic.agent.groups import groups_from_perturbed_gt

    (sample,) = _labelled_samples(body, 1)
    with pytest.raises(InputError, match=r"pass \[sample\]"):  # was "object of type ... has no len()"
        groups_from_perturbed_gt(sample, 1, 2)
    assert [g.group_id for g in groups_from_perturbed_gt([sample], 1, 2)] == ["nb-0"]
