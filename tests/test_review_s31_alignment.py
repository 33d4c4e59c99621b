"""Session 31: an ML researcher's walk through export → validate → finetune (gpa, dpo, TRL-style options, resume,
extension) → evaluate, CLI and Python API. What it found: options a DPO/SFT run ignores without a word (and that
refused its resume), a missing --data folder named as a folder without a header, ``-n 0`` told the wrong bound, a
finetune on the held-out test split not said, the scale_rewards error in tuple notation, gpa_no_base_loss missing
from ``finetune --help``."""

from __future__ import annotations

import json
import re

import pytest
import torch
from test_finetune import TINY, write_dataset

from hmrcritic.alignment import dataset as D
from hmrcritic.alignment.finetune import FinetuneConfig, finetune, state_dict_hash
from hmrcritic.alignment.objectives import ObjectiveConfig
from hmrcritic.cli import main
from hmrcritic.errors import InputError
from hmrcritic.hmr.diffusion import HMRDiffusion, load_model, save_model


@pytest.fixture(scope="module")
def base_ckpt(tmp_path_factory):
    torch.manual_seed(0)
    model = HMRDiffusion(TINY)
    for head in (model.joint_out, model.shape_out):
        torch.nn.init.normal_(head.weight, std=0.05)
    path = tmp_path_factory.mktemp("base") / "base.pt"
    save_model(model, path)
    return path


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("prefs"), n_groups=4, N=4)


def _cfg(data, base, out, **kw):
    kw = {"steps": 2, "batch_size": 2, "num_generations": 4, "checkpoint_every": 1, "threads": 1, **kw}
    return FinetuneConfig(data=str(data), out=str(out), model=str(base), **kw)


def test_num_generations_0_is_told_the_bound_that_holds():
    """``-n 0`` was told "must be ≥ 1" and ``-n 1`` then "must be ≥ 2": the first message sent the user to a value
    that is refused too (export says ≥ 2 for both)."""
    with pytest.raises(InputError, match="≥ 2"):
        FinetuneConfig(data="d", out="o.pt", num_generations=0)


def test_finetune_of_a_missing_data_folder_says_no_such_folder(tmp_path, capsys):
    """``finetune --data typo`` said "typo/dataset.json: not a group preference dataset (no dataset.json)", as if
    the folder were there without a header; ``export validate typo`` says "no such folder"."""
    missing = tmp_path / "typo"
    assert main(["finetune", "--data", str(missing), "--out", str(tmp_path / "a.pt"), "--steps", "1"]) == 2
    err = capsys.readouterr().err
    assert f"{missing}: no such folder" in err and "dataset.json" not in err
    assert not (tmp_path / "a.pt.state.pt").exists()


def test_dpo_says_which_given_settings_it_does_not_read(tmp_path, data_dir, base_ckpt, capsys):
    """``--objective dpo --t-min 5 --scale-rewards none`` trained exactly the model the defaults train, without a
    word: a researcher sweeping them compared one DPO model with itself."""
    finetune(_cfg(data_dir, base_ckpt, tmp_path / "dpo.pt", objective="dpo", t_min=5, scale_rewards="none"),
             progress=True)
    err = capsys.readouterr().err
    assert "--objective dpo does not use --t-min 5, --scale-rewards none" in err
    finetune(_cfg(data_dir, base_ckpt, tmp_path / "gpa.pt", t_min=5, scale_rewards="none"), progress=True)
    assert "does not use" not in capsys.readouterr().err  # GPA reads both
    finetune(_cfg(data_dir, base_ckpt, tmp_path / "sft.pt", objective="sft", beta=5.0), progress=True)
    assert "--objective sft does not use --beta 5.0" in capsys.readouterr().err


def test_a_dpo_run_resumes_under_another_setting_it_does_not_read(tmp_path, data_dir, base_ckpt):
    """A killed DPO run re-run with another --t-min (a GPA setting) was refused as "a run with different settings
    (t_min None → 5)" though the weights are the same either way; only --no-resume was offered, which throws the
    trained steps away. It resumes, and gives the weights of one uninterrupted run."""
    whole = finetune(_cfg(data_dir, base_ckpt, tmp_path / "whole.pt", objective="dpo", steps=3))
    finetune(_cfg(data_dir, base_ckpt, tmp_path / "part.pt", objective="dpo", steps=2))
    part = finetune(_cfg(data_dir, base_ckpt, tmp_path / "part.pt", objective="dpo", steps=3, t_min=5,
                         gpa_weight=0.5))
    assert state_dict_hash(load_model(part)) == state_dict_hash(load_model(whole))
    # a setting DPO reads still refuses the resume
    with pytest.raises(InputError, match="different settings"):
        finetune(_cfg(data_dir, base_ckpt, tmp_path / "part.pt", objective="dpo", steps=4, beta=10.0))


def test_a_finetune_on_the_test_split_says_so_and_records_its_split(tmp_path, base_ckpt, capsys):
    """``export --split test`` is accepted, and the aligned model was then evaluated (``evaluate``'s default split)
    on the very inputs it was aligned on, with no word anywhere; the checkpoint did not say which split it saw."""
    data = write_dataset(tmp_path / "prefs", n_groups=2, N=4)
    header = json.loads((data / D.HEADER).read_text())
    (data / D.HEADER).write_text(json.dumps({**header, "split": "test"}))
    out = finetune(_cfg(data, base_ckpt, tmp_path / "t.pt"), progress=True)
    err = capsys.readouterr().err
    assert "groups of the test split" in err and "inputs it was aligned on" in err
    assert load_model(out).checkpoint_extra["data_split"] == "test"


def test_a_wrong_scale_rewards_is_named_in_plain_words():
    """The message read "must be one of ('group', 'batch', 'none')" (a Python tuple) where --objective's reads
    "gpa, gpa_linear, dpo, sft"; TRL users type its older boolean form."""
    with pytest.raises(ValueError) as exc:
        ObjectiveConfig(scale_rewards="false")
    msg = str(exc.value)
    assert "group, batch, none" in msg and "TRL's True is group, False none" in msg and "(" + "'" not in msg


def test_finetune_help_names_gpa_no_base_loss(capsys, monkeypatch):
    """``--objective gpa_no_base_loss`` is accepted (REPRODUCE's ablation row) but the help listed only four."""
    monkeypatch.setenv("COLUMNS", "200")
    assert main(["finetune", "--help"]) == 0
    text = re.sub(r"[\s│]+", " ", capsys.readouterr().out)
    assert "gpa_no_base_loss (= gpa with --base-loss-weight 0)" in text


def test_a_resume_onto_another_dataset_folder_names_both(tmp_path, data_dir, base_ckpt):
    """A run continued with another --data folder was refused as "the dataset changed since": the user went looking
    for an edit of a dataset nobody had touched. It names the folder the run was trained on and the one given now."""
    other = write_dataset(tmp_path / "other", n_groups=4, N=4, seed=1)
    finetune(_cfg(data_dir, base_ckpt, tmp_path / "a.pt", steps=1))
    with pytest.raises(InputError) as exc:
        finetune(_cfg(other, base_ckpt, tmp_path / "a.pt", steps=2))
    assert f"({data_dir} then, {other} now)" in str(exc.value) and "changed since" not in str(exc.value)
