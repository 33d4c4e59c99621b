"""Review (s20) of the alignment package from what a user does after a first success: resume a finetune from another
folder or with an absolute path, change a flag and be told which, finetune on a dataset whose groups all tie, and
re-run an export with corrected settings into a folder that an interrupted or failed first run left without groups.
Scoring is ``test_export.fake_score``; the models are tiny random ones."""

from __future__ import annotations

import os

import pytest
import torch
from test_export import cfg_for, make_inputs, model_path  # noqa: F401  (fixture)
from test_finetune import TINY, write_dataset

from hmrcritic.agent.schema import HypothesisScore
from hmrcritic.alignment import dataset as D
from hmrcritic.alignment.export import export
from hmrcritic.alignment.finetune import FinetuneConfig, finetune
from hmrcritic.errors import InputError
from hmrcritic.hmr.diffusion import HMRDiffusion, load_model, save_model
from hmrcritic.io import read_jsonl


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    torch.manual_seed(0)
    return save_model(HMRDiffusion(TINY), tmp_path_factory.mktemp("base") / "base.pt", extra={})


def _ft(data, base, out, **kw) -> FinetuneConfig:
    kw = {"steps": 2, "batch_size": 2, "num_generations": 3, "checkpoint_every": 1, "threads": 1, **kw}
    return FinetuneConfig(data=str(data), model=str(base), out=str(out), **kw)


def test_a_finetune_resumes_when_given_its_paths_from_another_folder(base, tmp_path, monkeypatch):
    """The state compared the --out/--data/--model paths as typed: the same run continued from another working
    folder (or with an absolute --out) was refused as "a run with different settings", and the message offered only
    --no-resume, which throws the trained steps away. The files are compared by content (weights, groups)."""
    data = write_dataset(tmp_path / "prefs", n_groups=3, N=4)
    (tmp_path / "ft").mkdir()
    monkeypatch.chdir(tmp_path)
    finetune(_ft("prefs", base, "ft/a.pt", steps=2))
    monkeypatch.chdir(tmp_path / "ft")
    finetune(_ft(os.path.relpath(data), base, "a.pt", steps=3))  # the same run, from inside ft/
    finetune(_ft(data, base, tmp_path / "ft" / "a.pt", steps=4))  # and with absolute paths
    steps = [r["step"] for r in read_jsonl(tmp_path / "ft" / "a.pt.log.jsonl")]
    assert steps == [1, 2, 3, 4]  # resumed each time, not started over
    # straight to 4 steps gives the same weights
    straight = finetune(_ft(data, base, tmp_path / "b.pt", steps=4))
    a, b = load_model(straight).state_dict(), load_model(tmp_path / "ft" / "a.pt").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_refused_finetune_resume_names_the_setting_that_changed(base, tmp_path):
    """"belongs to a run with different settings" named none of them: the user had to guess which flag of a long
    command line differed from the killed run's."""
    data = write_dataset(tmp_path / "prefs", n_groups=3, N=4)
    finetune(_ft(data, base, tmp_path / "a.pt"))
    with pytest.raises(InputError, match=r"different settings \(lr 0\.0001 → 0\.0003\)"):
        finetune(_ft(data, base, tmp_path / "a.pt", steps=3, lr=3e-4))
    other = save_model(HMRDiffusion(TINY), tmp_path / "other.pt", extra={})  # another init: other weights
    with pytest.raises(InputError, match="another base model"):
        finetune(_ft(data, other, tmp_path / "a.pt", steps=3))


def _tie_every_group(root):
    recs = []
    for r in D.read_manifest(root):
        scores = [HypothesisScore(index=i, motion_structure=5, physical_feasibility=5, image_alignment=5, overall=5.0,
                                  rationale="alike") for i in range(r.num_hypotheses)]
        recs.append(D.build_record(**r.model_dump(exclude={"checksum", "advantages", "zero_variance", "scores"}),
                                   scores=scores))
    D.rewrite_manifest(root, recs)
    D.write_pairs(root, recs)
    return root


@pytest.mark.parametrize(("objective", "says"), [("dpo", "trains nothing"), ("gpa", "only the plain denoising")])
def test_a_finetune_on_a_dataset_whose_groups_all_tie_says_it_aligns_nothing(objective, says, base, tmp_path, capsys):
    """Zero-variance share 100 % (the critic scored every hypothesis of every group alike): every objective skips
    a tied group, so dpo (sft, gpa without base loss) ran its steps at loss 0 and saved the base model back as the
    "aligned" checkpoint, and gpa trained only the plain denoising loss — and the command said nothing of it."""
    data = _tie_every_group(write_dataset(tmp_path / "prefs", n_groups=3, N=4))
    rep = D.validate_dataset(data)
    assert rep.ok and rep.zero_variance_share == 1.0
    finetune(_ft(data, base, tmp_path / "a.pt", objective=objective), progress=True)
    err = capsys.readouterr().err
    assert "zero-variance share 100 %" in err and says in err
    # a dataset with one group the critic tells apart: no such note
    mixed = write_dataset(tmp_path / "mixed", n_groups=3, N=4, tie_first=True)
    finetune(_ft(mixed, base, tmp_path / "b.pt", objective=objective), progress=True)
    assert "zero-variance" not in capsys.readouterr().err


def test_an_export_left_without_groups_is_taken_over_by_corrected_settings(model_path, tmp_path, monkeypatch):  # noqa: F811
    """A first export whose every group failed (or that was stopped before its first group) left a header and
    failures.jsonl only; the corrected command (another -n here) was refused for that empty folder: "holds an export
    with different num_generations; use another --out". Nothing can be mixed, so it now runs, and the old run's
    failures go with its settings."""
    inputs = make_inputs(2)
    monkeypatch.setenv("HMRCRITIC_TEST_FAIL_IDS", "img000,img001")
    first = export(cfg_for(tmp_path / "ds", model_path, num_generations=3), inputs=inputs)
    assert (first.groups, first.failures) == (0, 2) and (tmp_path / "ds" / D.FAILURES).exists()
    monkeypatch.setenv("HMRCRITIC_TEST_FAIL_IDS", "")
    again = export(cfg_for(tmp_path / "ds", model_path, num_generations=4), inputs=inputs[:1])
    assert (again.groups, again.new_groups) == (1, 1)
    assert D.read_header(tmp_path / "ds").num_generations == 4
    assert read_jsonl(tmp_path / "ds" / D.FAILURES) == []
    rep = D.validate_dataset(tmp_path / "ds")
    assert rep.ok, rep.errors
    assert not any("failed" in w for w in rep.warnings), rep.warnings  # img001's failure was of the old -n
    # with a group written, other settings are refused as before, naming both values
    with pytest.raises(InputError, match=r"num_generations: 4 there, 5 now"):
        export(cfg_for(tmp_path / "ds", model_path, num_generations=5), inputs=inputs[:1])


def test_an_export_refusal_names_the_folders_value_and_this_runs(model_path, tmp_path):  # noqa: F811
    """"holds an export with different memory_version (memory_version='none')" gave the folder's value only: read
    as the value of this run, which had named a memory."""
    export(cfg_for(tmp_path / "ds", model_path), inputs=make_inputs(1))
    with pytest.raises(InputError, match=r"seed: 0 there, 7 now"):
        export(cfg_for(tmp_path / "ds", model_path, seed=7), inputs=make_inputs(1))


def test_a_dataset_of_another_models_hypothesis_width_is_refused_in_one_line(base, tmp_path, monkeypatch):
    """x0 of another width than the model's (a dataset sampled by another kind of model) stopped the first step with
    a bare RuntimeError, "The size of tensor a (150) must match the size of tensor b (154)"."""
    import test_finetune

    monkeypatch.setattr(test_finetune, "X_DIM", 150)
    data = write_dataset(tmp_path / "prefs", n_groups=3, N=4)
    with pytest.raises(InputError, match="hypotheses have 150 values each, but the model .* has 154"):
        finetune(_ft(data, base, tmp_path / "a.pt"))
    assert not (tmp_path / "a.pt.state.pt").exists()
