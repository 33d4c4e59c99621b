"""Review tests of the alignment finetuner: defects found in review, each shown by a test that failed before
its fix."""

from __future__ import annotations

import json

import pytest
import torch
from test_finetune import TINY, write_dataset

from hmrcritic.alignment.finetune import FinetuneConfig, finetune
from hmrcritic.hmr.diffusion import HMRDiffusion, load_model, save_model


@pytest.fixture(scope="module")
def base_and_data(tmp_path_factory):
    torch.manual_seed(0)
    model = HMRDiffusion(TINY)
    for head in (model.joint_out, model.shape_out):
        torch.nn.init.normal_(head.weight, std=0.05)
    root = tmp_path_factory.mktemp("review_align")
    base = save_model(model, root / "base.pt", extra={})
    data = write_dataset(root / "prefs", tie_first=True)
    return base, data


def _log(out):
    return [json.loads(line) for line in (out.parent / (out.name + ".log.jsonl")).read_text().splitlines()]


def test_resume_when_log_every_does_not_divide_checkpoint_every_gives_the_same_log(base_and_data, tmp_path):
    """A checkpoint taken in the middle of a logging window (log_every=2, checkpoint_every=3): the resumed run
    must log the same window means as an uninterrupted one. Before the fix the steps of the window before the
    checkpoint (step 3 here) were lost, so the resumed record of step 4 averaged step 4 alone."""
    base, data = base_and_data
    kw = {"steps": 7, "batch_size": 3, "num_generations": 4, "lr": 1e-3, "log_every": 2, "checkpoint_every": 3}
    straight = finetune(FinetuneConfig(data=str(data), model=str(base), out=str(tmp_path / "a.pt"), **kw))

    class Killed(Exception):
        pass

    def kill_at_4(rec):
        if rec["step"] == 4:
            raise Killed

    cfg_b = FinetuneConfig(data=str(data), model=str(base), out=str(tmp_path / "b.pt"), **kw)
    with pytest.raises(Killed):
        finetune(cfg_b, progress=kill_at_4)
    assert torch.load(tmp_path / "b.pt.state.pt", weights_only=True)["step"] == 3
    resumed = finetune(cfg_b)
    a, b = load_model(straight).state_dict(), load_model(resumed).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    la, lb = _log(tmp_path / "a.pt"), _log(tmp_path / "b.pt")
    assert [r["step"] for r in la] == [r["step"] for r in lb] == [2, 4, 6, 7]
    skip = {"steps_per_s"}  # wall-clock
    for ra, rb in zip(la, lb, strict=True):
        assert {k: v for k, v in ra.items() if k not in skip} == {k: v for k, v in rb.items() if k not in skip}
    # the throughput of the resumed window counts only the steps this process ran, never a negative or 0 rate
    assert all(r["steps_per_s"] > 0 for r in lb)
