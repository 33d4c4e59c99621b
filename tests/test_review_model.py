"""Review of the hmr/model changes: defects found by running the code, each pinned by a test that failed before its
fix."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from hmrcritic.errors import AssetError, InputError
from hmrcritic.hmr.diffusion import DiffusionConfig, load_model
from hmrcritic.hmr.train import TrainConfig, train_base

TESTS = Path(__file__).resolve().parent
TINY = DiffusionConfig(d_model=32, layers=1, heads=2)


def _data(n=16, seed=0):
    sys.path.insert(0, str(TESTS))
    from test_diffusion import _tiny_data

    return _tiny_data(n, seed)


def test_a_run_folder_given_as_the_model_names_its_checkpoints_not_its_training_state(tmp_path):
    """`--model runs/train-base-seed0` (a run folder) is refused naming the .pt files to give instead; the run's
    training state ``state.pt`` is not a model checkpoint (load_model refuses it), so it must not be suggested."""
    cfg = TrainConfig(steps=6, batch_size=4, warmup=1, log_every=2, ckpt_every=2, model=TINY)
    assert train_base(cfg, tmp_path, data=_data(), stop_at=2).name == "state.pt"
    with pytest.raises(AssetError, match="is a folder") as info:
        load_model(tmp_path)
    assert "state.pt" not in str(info.value), info.value
    with pytest.raises(AssetError, match="not an hmrcritic diffusion checkpoint"):  # what the hint led to
        load_model(tmp_path / "state.pt")
    final = train_base(cfg, tmp_path, data=_data())
    with pytest.raises(AssetError, match=r"is a folder; give the \.pt file \(it holds model\.pt\)$"):
        load_model(final.parent)


def test_a_stopped_run_exports_the_step_it_stopped_at_or_refuses(tmp_path):
    """``train-base --stop-at N`` writes ``model_stepN.pt`` from ``state.pt`` after its run let go of the folder;
    another train-base on the folder may have trained on by then, and the file named step N held a later step's
    weights. The export checks the step it was asked for."""
    from hmrcritic.errors import InputError
    from hmrcritic.hmr.train import checkpoint_from_state

    cfg = TrainConfig(steps=6, batch_size=4, warmup=1, log_every=2, ckpt_every=2, model=TINY)
    data = _data()
    data.source = {"split": "train", "n": 16, "seed": 0, "preset": "tiny", "generator_version": "g1"}
    state = train_base(cfg, tmp_path, data=data, stop_at=2)
    at2 = checkpoint_from_state(state, tmp_path / "model_step2.pt", step=2)
    assert load_model(at2) is not None
    # the data it was trained on, as a finished run's model records it (only the split was, so the size, seed,
    # preset and generator version a --stop-at model came from were lost)
    from hmrcritic.hmr.diffusion import read_checkpoint

    assert read_checkpoint(at2)["extra"]["data"] == data.source
    train_base(cfg, tmp_path, data=_data(), stop_at=4)  # the other run, between the stop and the export
    with pytest.raises(InputError, match=r"is at step 4, not 2: another train-base"):
        checkpoint_from_state(state, tmp_path / "late.pt", step=2)
    assert not (tmp_path / "late.pt").exists()


def test_a_run_started_over_does_not_leave_the_old_runs_model_beside_its_state(tmp_path):
    """``--no-resume`` deleted the old run's state and log but kept its ``model.pt`` until the new run ended: a
    new run stopped early left a folder whose model.pt was the old run's beside the new run's state."""
    cfg = TrainConfig(steps=4, batch_size=4, warmup=1, log_every=2, ckpt_every=2, model=TINY)
    assert train_base(cfg, tmp_path, data=_data()).name == "model.pt"
    assert train_base(cfg, tmp_path, data=_data(), resume=False, stop_at=2).name == "state.pt"
    assert not (tmp_path / "model.pt").exists()
    kept = tmp_path / "kept"  # a model.pt without a state (copied in) is not a run's: a resuming start keeps it
    kept.mkdir()
    (kept / "model.pt").write_bytes((tmp_path / "state.pt").read_bytes())
    # since session 35 train_base refuses that folder, as the CLI did (a full run overwrote its model.pt)
    with pytest.raises(InputError, match="no state.pt"):
        train_base(cfg, kept, data=_data(), stop_at=2)
    assert (kept / "model.pt").exists()
