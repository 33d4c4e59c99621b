"""Review (session 25) of ``hmrcritic export`` as an overnight job: inputs the dataset writer refuses, a dataset whose
every group is zero-variance. Scoring is ``test_export.fake_score`` (the engine is the point); the diffusion model,
sampler and dataset files are the real ones."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import numpy as np
import pytest
from test_export import cfg_for, make_inputs, model_path  # noqa: F401  (fixture)

from hmrcritic.alignment import dataset as D
from hmrcritic.alignment.export import export
from hmrcritic.errors import AssetError, InputError
from hmrcritic.io import read_jsonl

sys.path.insert(0, str(Path(__file__).parent))


def test_an_input_the_writer_refuses_is_a_failure_not_an_export_that_never_finishes(model_path, tmp_path):  # noqa: F811
    """An image size of 0 samples and scores, and then the parent's write raised AssetError: the export stopped there,
    and every re-run stopped at the same group again, so the dataset could never be finished."""
    out, inputs = tmp_path / "ds", make_inputs(3)
    inputs[1].image_size = (0, 512)
    for _ in range(2):  # a re-run retries the group, fails it the same way, and finishes
        summary = export(cfg_for(out, model_path), inputs=inputs)
        assert (summary.groups, summary.failures) == (2, 1), summary
        assert "image_size" in summary.first_failure
    failed = read_jsonl(out / D.FAILURES)
    assert [(f["input_id"], f["stage"]) for f in failed] == [("img001", "sample")]
    rep = D.validate_dataset(out)
    assert rep.ok and rep.groups == 2, rep
    assert D.read_header(out).counts["finished"] is True


def test_a_dataset_whose_groups_are_all_zero_variance_says_so(model_path, tmp_path):  # noqa: F811
    """Every group scored alike and ``skip_zero_variance=True``: the reader said "no complete groups", as of a torn or
    unfinished export, of a dataset that holds every group."""
    out = tmp_path / "ds"
    inputs = [make_inputs(2, tie_last=True)[1], make_inputs(3, seed=1, tie_last=True)[2]]
    summary = export(cfg_for(out, model_path), inputs=inputs)
    assert summary.groups == 2 and summary.zero_variance_share == 1.0
    assert len(D.GroupPreferenceDataset(out)) == 2
    with pytest.raises(AssetError, match="all 2 group.*zero-variance"):
        D.GroupPreferenceDataset(out, skip_zero_variance=True)


def test_samples_that_cannot_reach_worker_processes_are_refused_before_anything_is_written(model_path,  # noqa: F811
                                                                                          tmp_path):
    """A sample class defined inside a function exports with workers=1, but with workers=2 the pool failed with a bare
    ``AttributeError: Can't pickle local object`` after dataset.json was written (marked unfinished)."""

    @dataclasses.dataclass
    class Local:
        sample_id: str
        keypoints: np.ndarray
        K: np.ndarray
        image_size: tuple
        joints3d: np.ndarray | None = None

    inputs = [Local(s.sample_id, s.keypoints, s.K, s.image_size) for s in make_inputs(2)]
    out = tmp_path / "ds"
    with pytest.raises(InputError, match="img000.*pickle.*workers=1"):
        export(cfg_for(out, model_path, workers=2), inputs=inputs)
    assert not out.exists()
    assert export(cfg_for(out, model_path), inputs=inputs).groups == 2  # the same samples, in-process


def test_validate_stopped_at_max_errors_names_no_pair_or_file_of_groups_it_did_not_read(model_path,  # noqa: F811
                                                                                       tmp_path):
    """A dataset copied without its hypothesis files: validate stops at ``max_errors``, and then called every pair of
    the groups after that line "malformed or refers to an unknown group" (past the cap), the pairs file out of date,
    and those groups' condition files orphans, though the manifest holds all of them."""
    out = tmp_path / "ds"
    assert export(cfg_for(out, model_path), inputs=make_inputs(5)).pairs == 5
    for f in (out / D.GROUPS).glob("*.hyps.npz"):
        f.unlink()
    rep = D.validate_dataset(out, max_errors=2)
    assert not rep.ok and rep.pairs == 5
    assert len(rep.errors) == 3 and rep.errors[-1].startswith("… too many errors"), rep.errors
    assert all("missing" in e for e in rep.errors[:2]), rep.errors
    assert not [w for w in rep.warnings if "not referenced" in w], rep.warnings
    full = D.validate_dataset(out)  # without the cap: each group's missing file, nothing else
    assert len(full.errors) == 5 and all("hyps.npz missing" in e for e in full.errors), full.errors


def test_threads_per_worker_below_one_is_refused_at_once(model_path, tmp_path):  # noqa: F811
    """``threads_per_worker=0`` was taken: torch refused it in every worker's set-up, so the whole split was sampled
    for nothing, every group a failure, each task loading the model again to fail the same way."""
    with pytest.raises(InputError, match="threads_per_worker must be ≥ 1"):
        cfg_for(tmp_path / "ds", model_path, threads_per_worker=0)
