"""Review (session 32) of the export's dataset records, its reader and a stopped train-base's metadata: a fractional
image size sampled as given but recorded cut to int64, the final loss of a run stopped between two log records, a
group file whose x0 width is not the record's."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from test_export import cfg_for, make_inputs, model_path  # noqa: F401  (fixture)
from test_train_resume import _cfg, _data

from hmrcritic.alignment import dataset as D
from hmrcritic.alignment.export import export
from hmrcritic.errors import AssetError
from hmrcritic.io import read_jsonl

# ------------------------------------------------------------------------------ image size: whole pixels


@pytest.mark.parametrize("size", [(640.5, 480.0), (640.0, float("nan")), (1e30, 480.0)])
def test_condition_arrays_refuse_an_image_size_that_is_not_whole_pixels(size):
    with pytest.raises(AssetError, match="image_size must be whole pixels"):
        D.condition_arrays(np.ones((17, 3)), np.diag([500.0, 500.0, 1.0]), size)


def test_condition_arrays_keep_a_whole_image_size_given_as_floats():
    cond = D.condition_arrays(np.ones((17, 3)), np.diag([500.0, 500.0, 1.0]), (640.0, np.float32(480)))
    assert cond["image_size"].dtype == np.int64 and cond["image_size"].tolist() == [640, 480]


def test_a_fractional_image_size_is_a_failed_input_naming_it_not_a_record_of_another_size(model_path,  # noqa: F811
                                                                                         tmp_path):
    """(640.5, 480) was sampled with 640.5 and recorded as (640, 480): the dataset named a condition its hypotheses
    were not drawn from. The input fails (stage "sample", named), the others are written, validate passes."""
    out, inputs = tmp_path / "ds", make_inputs(3)
    inputs[1].image_size = (640.5, 480.0)
    inputs[2].image_size = (640.0, 480.0)  # whole pixels given as floats: fine
    summary = export(cfg_for(out, model_path), inputs=inputs)
    assert (summary.groups, summary.failures) == (2, 1), summary
    assert "'img001'" in summary.first_failure and "whole pixels" in summary.first_failure
    failed = read_jsonl(out / D.FAILURES)
    assert [(f["input_id"], f["stage"]) for f in failed] == [("img001", "sample")]
    assert [r.input_id for r in D.read_manifest(out)] == ["img000", "img002"]
    item = D.GroupPreferenceDataset(out)[1]
    assert item["image_size"].tolist() == [640, 480]
    assert D.validate_dataset(out).ok


# ------------------------------------------------------------------------------ reader: x0 width


def test_the_reader_refuses_a_group_file_whose_x0_width_is_not_the_records(model_path, tmp_path):  # noqa: F811
    """A group file of another kind of model (another x0 width, same group size) read as this dataset's with
    verify=False (items of two widths), and with verify as a bare checksum mismatch; validate names the width."""
    out = tmp_path / "ds"
    export(cfg_for(out, model_path), inputs=make_inputs(2))
    rec = D.read_manifest(out)[0]
    path = out / rec.hypotheses.path
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["x0"] = arrays["x0"][:, :150].copy()
    np.savez(path, **arrays)
    for verify in (False, True):
        with pytest.raises(AssetError, match=r"x0 has 150 values per hypothesis, the record says x_dim 154"):
            D.GroupPreferenceDataset(out, verify=verify)[0]
    assert D.GroupPreferenceDataset(out, verify=False)[1]["x0"].shape[1] == 154
    assert any("x0 width 150 != x_dim 154" in e for e in D.validate_dataset(out).errors)


# ------------------------------------------------------------------------------ train-base: final loss


def _per_step_losses(tmp_path: Path, cfg, data, steps: int) -> list[float]:
    """The loss of each step (log_every 1: logging changes no step of the run)."""
    from hmrcritic.hmr.train import loss_curve, train_base

    train_base(replace(cfg, log_every=1), tmp_path / "per-step", data=data, stop_at=steps)
    return [r["loss"] for r in loss_curve(tmp_path / "per-step")]


def test_a_stop_between_log_records_records_the_loss_of_the_steps_since_the_last_one(tmp_path):
    """``--stop-at 11`` with log_every 5: model_step11.pt recorded the mean of steps 6..10 as its final loss."""
    from hmrcritic.hmr.diffusion import read_checkpoint
    from hmrcritic.hmr.train import checkpoint_from_state, model_from_state, train_base

    data, cfg = _data(), _cfg()
    losses = _per_step_losses(tmp_path, cfg, data, 11)
    state = train_base(cfg, tmp_path / "run", data=data, stop_at=11)
    extra = read_checkpoint(checkpoint_from_state(state, tmp_path / "model_step11.pt", step=11))["extra"]
    assert extra["final_loss"] == pytest.approx(losses[10], rel=1e-6)
    assert extra["final_loss_steps"] == [11, 11]
    # metadata only: the weights are those of the run at step 11, whatever the logging
    a, b = model_from_state(state), model_from_state(tmp_path / "per-step" / "state.pt")
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


def test_a_run_stopped_with_ctrl_c_records_the_loss_of_its_last_checkpoints_steps(tmp_path):
    """Ctrl-C at step 10 with checkpoints every 4 steps and log records every 5: the state is step 8, and its model
    recorded the mean of steps 1..5 (the last record at or before step 8) as the loss of a model trained to step 8."""
    from hmrcritic.hmr.diffusion import read_checkpoint
    from hmrcritic.hmr.train import checkpoint_from_state, train_base

    data, cfg = _data(), _cfg(ckpt_every=4)
    losses = _per_step_losses(tmp_path, cfg, data, 10)

    def ctrl_c(rec: dict) -> None:
        if rec["step"] == 10:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_base(cfg, tmp_path / "run", data=data, progress=ctrl_c)
    state = tmp_path / "run" / "state.pt"
    assert torch.load(state, weights_only=True)["step"] == 8
    extra = read_checkpoint(checkpoint_from_state(state, tmp_path / "model.pt"))["extra"]
    assert extra["final_loss"] == pytest.approx(sum(losses[5:8]) / 3, rel=1e-6)
    assert extra["final_loss_steps"] == [6, 8]


def test_a_stop_on_a_log_step_keeps_that_records_loss_and_names_its_window(tmp_path):
    from hmrcritic.hmr.diffusion import read_checkpoint
    from hmrcritic.hmr.train import checkpoint_from_state, loss_curve, train_base

    data, cfg = _data(), _cfg()
    state = train_base(cfg, tmp_path / "run", data=data, stop_at=10)
    extra = read_checkpoint(checkpoint_from_state(state, tmp_path / "model_step10.pt", step=10))["extra"]
    assert extra["final_loss"] == loss_curve(tmp_path / "run")[-1]["loss"]
    assert extra["final_loss_steps"] == [6, 10]


def test_a_group_file_with_a_fractional_image_size_is_refused_on_read_not_cut_to_whole_pixels(model_path,  # noqa: F811
                                                                                              tmp_path):
    """A condition file holding image_size (640.5, 480.0) as floats (another tool's writer) was read back as
    (640, 480) by the reader's int64 cast, and validate said the dataset was fine."""
    out = tmp_path / "ds"
    export(cfg_for(out, model_path), inputs=make_inputs(2))
    rec = D.read_manifest(out)[0]
    path = out / rec.condition.path
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["image_size"] = np.array([640.5, 480.0])
    np.savez(path, **arrays)
    with pytest.raises(AssetError, match=r"image_size must be whole pixels.*640\.5"):
        D.GroupPreferenceDataset(out, verify=False)[0]
    assert any("whole pixels" in e for e in D.validate_dataset(out).errors)
