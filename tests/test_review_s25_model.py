"""Review s25, the diffusion HMR model: a hand-built float64 condition, evaluate's non-integer counts, and a
training run whose data source holds values a weights-only load refuses."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from hmrcritic.errors import InputError
from hmrcritic.hmr import diffusion as D

TESTS = Path(__file__).resolve().parent
TINY = D.DiffusionConfig(d_model=32, layers=1, heads=2)


@pytest.fixture()
def tiny_model():
    torch.manual_seed(0)
    m = D.HMRDiffusion(TINY)
    with torch.no_grad():
        m.joint_out.weight.normal_(0, 0.05)  # untrained but not degenerate: hypotheses differ
    return m.eval()


def _cond(B: int = 2) -> D.Condition:
    g = torch.Generator().manual_seed(1)
    kp = torch.rand(B, 17, 3, generator=g) * 200 + 20
    kp[..., 2] = 1.0
    K = torch.tensor([[500.0, 0, 128], [0, 500, 128], [0, 0, 1]])
    return D.condition_from_keypoints(kp, K, (256, 256))


def test_a_float64_condition_samples_as_its_float32_copy(tiny_model, body):
    """A Condition built by hand from float64 arrays (numpy's default) failed in the network with "mat1 and mat2
    must have the same dtype"; it samples what its float32 copy samples."""
    cond = _cond()
    c64 = D.Condition(*[v.double() for v in cond._values()])
    kw = dict(num_generations=3, steps=3, eta=0.5, body=body, guidance=1.0)
    want = D.sample(tiny_model, cond, generator=torch.Generator().manual_seed(5), **kw)
    got = D.sample(tiny_model, c64, generator=torch.Generator().manual_seed(5), **kw)
    for key in ("x0", "transl"):
        assert getattr(got, key).dtype == torch.float32
        assert torch.equal(getattr(got, key), getattr(want, key)), key


@pytest.mark.parametrize("kw, name", [({"limit": 2.5}, "--limit"), ({"limit": "3"}, "--limit"),
                                      ({"batch_size": 2.0}, "--batch-size"), ({"seed": 1.5}, "--seed")])
def test_evaluate_refuses_a_count_that_is_not_an_integer_before_loading_a_split(tiny_model, tmp_path, monkeypatch,
                                                                                 kw, name):
    """``limit=2.5`` failed as "slice indices must be integers", ``seed=1.5`` as "manual_seed expected a long" — after
    the split was loaded (or generated); one InputError naming the argument, with nothing generated."""
    from hmrcritic.hmr.evaluate import evaluate_model

    data = tmp_path / "data"
    data.mkdir()
    monkeypatch.setenv("HMRCRITIC_DATA", str(data))
    monkeypatch.setenv("HMRCRITIC_SPLIT_SIZE_SCALE", "0.005")
    with pytest.raises(InputError, match=f"{name} must be an integer"):
        evaluate_model(tiny_model, split="test", num_generations=2, steps=2, nn_baseline=False,
                       **{"limit": 2, **kw})
    assert not any(data.iterdir())


def test_a_run_whose_data_source_holds_a_path_still_writes_its_model(tmp_path):
    """A TrainData given with a Path or a numpy number in its ``source`` trained every step, then save_model refused
    ``model.pt`` (weights-only unreadable) and a resume refused it again: the run's model was never written. The
    source is recorded as plain data, in the state and the model alike."""
    sys.path.insert(0, str(TESTS))
    from test_diffusion import _tiny_data

    from hmrcritic.hmr.train import TrainConfig, train_base

    data = _tiny_data(16)
    data.source = {"split": "mine", "root": Path("/data/scenes"), "n": np.int64(16)}
    cfg = TrainConfig(steps=3, batch_size=4, warmup=1, log_every=1, ckpt_every=1, model=TINY)
    path = train_base(cfg, tmp_path / "run", data=data)
    assert path.name == "model.pt"
    model = D.load_model(path)
    assert model.checkpoint_extra["data"] == {"split": "mine", "root": "/data/scenes", "n": "16"}
    state = torch.load(tmp_path / "run" / "state.pt", weights_only=True)
    assert state["data_source"] == model.checkpoint_extra["data"]


@pytest.mark.parametrize("fx, fy", [(0.0, 0.0), (500.0, -500.0), (-500.0, -500.0), (float("nan"), 500.0)])
def test_intrinsics_without_positive_finite_focal_lengths_are_refused(fx, fy):
    """A focal length of 0, of mixed sign or NaN made the box feature inf/NaN and every hypothesis NaN (sample_to_dir
    then blamed the checkpoint); both negative sampled without a word from a box ray the model never saw."""
    kp = torch.full((1, 17, 3), 100.0)
    kp[..., 2] = 1.0
    kp[0, :, 0] += torch.arange(17.0)
    K = torch.tensor([[[fx, 0.0, 128.0], [0.0, fy, 128.0], [0.0, 0.0, 1.0]]])
    with pytest.raises(InputError, match="focal lengths fx, fy > 0"):
        D.condition_from_keypoints(kp, K, (256, 256))
    good = D.condition_from_keypoints(kp, torch.tensor([[500.0, 0, 128], [0, 500, 128], [0, 0, 1]]), (256, 256))
    assert torch.isfinite(good.box).all()


def test_a_model_in_training_mode_with_dropout_samples_the_same_for_the_same_seed(body):
    """Dropout draws from the global RNG, not the generator: a freshly built HMRDiffusion (training mode) with dropout
    gave other hypotheses for the same seed at every call and moved the caller's RNG. It samples with dropout off
    (the eval-mode hypotheses) and is left in training mode."""
    torch.manual_seed(0)
    m = D.HMRDiffusion(D.DiffusionConfig(d_model=32, layers=1, heads=2, dropout=0.3))
    with torch.no_grad():
        m.joint_out.weight.normal_(0, 0.05)
    cond = _cond(1)

    def draw():
        return D.sample(m, cond, num_generations=3, steps=3, generator=torch.Generator().manual_seed(0), body=body).x0

    torch.manual_seed(123)
    a = draw()
    after = torch.rand(4)
    torch.manual_seed(123)
    b = draw()
    assert torch.equal(a, b)
    assert m.training
    torch.manual_seed(123)
    assert torch.equal(torch.rand(4), after)  # the caller's stream untouched
    m.eval()
    assert torch.equal(draw(), a)


@pytest.mark.parametrize("content", [None, b"not a torch file"])
def test_exporting_a_missing_or_corrupt_training_state_is_one_asset_error(tmp_path, content):
    """``checkpoint_from_state`` of a missing or corrupt ``state.pt`` raised a bare FileNotFoundError /
    UnpicklingError (``model_from_state`` beside it says "training state not found"); nothing is written."""
    from hmrcritic.errors import AssetError
    from hmrcritic.hmr.train import checkpoint_from_state

    state = tmp_path / "state.pt"
    if content is not None:
        state.write_bytes(content)
    with pytest.raises(AssetError, match="training state"):
        checkpoint_from_state(state, tmp_path / "model.pt")
    assert not (tmp_path / "model.pt").exists()


def test_a_diverged_base_run_stops_at_the_first_non_finite_loss(tmp_path):
    """A run whose loss went NaN trained on to the end and wrote a model.pt of NaN weights (its log full of NaN
    tokens, which strict JSON readers refuse); it stops at that step with one line naming it, as finetune does."""
    sys.path.insert(0, str(TESTS))
    from test_diffusion import _tiny_data

    from hmrcritic.hmr.train import TrainConfig, TrainingDiverged, train_base
    from hmrcritic.io import read_jsonl

    cfg = TrainConfig(steps=6, batch_size=4, warmup=1, lr=1e30, min_lr=0.0, log_every=1, ckpt_every=2, model=TINY)
    out = tmp_path / "run"
    with pytest.raises(TrainingDiverged, match=r"loss is nan at step \d"):
        train_base(cfg, out, data=_tiny_data(16))
    assert not (out / "model.pt").exists()
    text = (out / "log.jsonl").read_text()
    assert "NaN" not in text and all(np.isfinite(r["loss"]) for r in read_jsonl(out / "log.jsonl"))


def test_evaluating_a_model_in_training_leaves_it_in_training_mode(tiny_model, tmp_path, monkeypatch):
    """evaluate_model switched the caller's model to eval mode for good: a model evaluated in the middle of its
    training trained on without its dropout. Its mode is put back; the figures are those of the model in eval mode."""
    from hmrcritic.hmr.evaluate import evaluate_model

    monkeypatch.setenv("HMRCRITIC_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("HMRCRITIC_SPLIT_SIZE_SCALE", "0.005")
    kw = dict(split="test", num_generations=2, steps=2, limit=2, nn_baseline=False)
    want = evaluate_model(tiny_model, **kw)
    tiny_model.train()
    got = evaluate_model(tiny_model, **kw)
    assert tiny_model.training
    skip = ("seconds", "hypotheses_per_s")
    assert {k: v for k, v in got.items() if k not in skip} == {k: v for k, v in want.items() if k not in skip}


def test_a_base_run_whose_data_gives_a_nan_loss_at_once_blames_the_data(tmp_path):
    """At step 1 no update was made yet: the data gives the NaN (here non-finite image sizes), not the learning
    rate; the run trained on NaN to the end before."""
    sys.path.insert(0, str(TESTS))
    from test_diffusion import _tiny_data

    from hmrcritic.hmr.train import TrainConfig, TrainingDiverged, train_base

    data = _tiny_data(16)
    data.image_size = torch.full_like(data.image_size, float("nan"))
    cfg = TrainConfig(steps=3, batch_size=4, warmup=1, model=TINY)
    with pytest.raises(TrainingDiverged, match="at step 1, before any update, so the training data gives it"):
        train_base(cfg, tmp_path / "run", data=data)
    assert not (tmp_path / "run" / "model.pt").exists()
