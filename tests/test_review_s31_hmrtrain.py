"""Session-31 review of the diffusion model's training, sampling and checkpoints (hmr/train.py, hmr/diffusion.py).

The maths (schedule, q_sample, v ↔ eps, DDIM for any η, Min-SNR weights, 6D rotations, the translation solve, resume
bitwise) was re-derived and already has textbook tests (test_diffusion_math.py, test_train_resume.py). What was found
is validation: settings that no usable run has were accepted and failed later, after the split was loaded, as bare
torch errors — or, for a noise schedule with β ≥ 1, as a divergence blamed on the training data.
"""

from __future__ import annotations

import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch

from hmrcritic.errors import InputError
from hmrcritic.hmr.diffusion import DiffusionConfig, HMRDiffusion, load_model
from hmrcritic.hmr.train import TrainConfig, TrainData, train_base

TESTS = Path(__file__).resolve().parent
TINY = dict(d_model=32, layers=1, heads=2)


def _data(n=16):
    sys.path.insert(0, str(TESTS))
    from test_diffusion import _tiny_data

    return _tiny_data(n, 0)


@pytest.mark.parametrize("bad,word", [(dict(beta_end=1.5), "beta_end"), (dict(beta_start=0.0), "beta_start"),
                                      (dict(T=0), "T (diffusion steps)"), (dict(std_floor=0.0), "std_floor"),
                                      (dict(beta_end=float("nan")), "beta_end")])
def test_an_unusable_noise_schedule_is_refused_before_training_not_blamed_on_the_data(bad, word, tmp_path):
    """β_end = 1.5 made ᾱ_t negative (NaN after the square root): train-base loaded the split, built the model and
    stopped with "the training data gives it (non-finite image sizes or intrinsics?)"; T = 0 failed as a bare
    "random_ expects 'from' to be less than 'to'"; a std floor of 0 divides a constant dimension by zero."""
    with pytest.raises(InputError, match=word.replace("(", r"\(").replace(")", r"\)")):
        TrainConfig(steps=2, batch_size=4, model=DiffusionConfig(**TINY, **bad))
    with pytest.raises(ValueError, match=word.split(" ")[0]):
        HMRDiffusion(DiffusionConfig(**TINY, **bad))
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("field,value", [("steps", 10.5), ("batch_size", 2.5), ("seed", 1.5), ("max_samples", 3.5),
                                         ("warmup", 2.5), ("steps", "10"), ("lr", "1e-3"), ("ema", "0.99"),
                                         ("seed", None), ("grad_clip", "1")])
def test_a_recipe_setting_of_the_wrong_type_is_one_line_at_once(field, value):
    """From Python, steps=10.5 / batch_size=2.5 / seed=1.5 passed the int() checks and failed after the split was
    loaded ('float' object cannot be interpreted as an integer, manual_seed expected a long); lr="1e-3" was a bare
    TypeError; ema="0.99" passed float() and failed at the first EMA update."""
    with pytest.raises(InputError, match=field.replace("_", "-")):
        TrainConfig(**{field: value})


def test_a_recipe_with_numpy_numbers_trains_to_a_model_that_loads_and_resumes(tmp_path):
    """An np.float32 lr or an np.int64 T (a sweep's np.linspace / arange) trained the whole run, then model.pt was
    refused ("extra holds a value load_model cannot read back (numpy._core.multiarray.scalar)") and a resume read
    the state.pt as corrupt: the recipe is saved in both, and they are loaded weights-only. Stored as plain numbers
    now; plain values are kept exactly as given (the recipe's model.pt stays byte for byte)."""
    model = DiffusionConfig(**TINY, T=np.int64(50), beta_end=np.float32(0.02))
    cfg = TrainConfig(seed=np.int64(3), steps=np.int64(3), lr=np.float32(1e-3), batch_size=4, warmup=1, log_every=1,
                      ckpt_every=1, ema=torch.tensor(0.9), model=model)
    assert train_base(cfg, tmp_path / "run", data=_data(), stop_at=2).name == "state.pt"
    said: list[str] = []
    out = train_base(cfg, tmp_path / "run", data=_data(), notify=said.append)
    assert any("resuming from step 2/3" in s for s in said), said
    assert load_model(out).config.T == 50
    assert type(cfg.lr) is float and type(cfg.seed) is int and type(model.T) is int and type(cfg.ema) is float
    assert TrainConfig() == TrainConfig.from_dict(asdict(TrainConfig()))
    assert all(type(v) in (int, float, str, bool, type(None), dict) for v in asdict(TrainConfig()).values())
    load_model().config.validate()  # the shipped checkpoint's config passes the new checks


def test_the_model_config_may_be_a_dict_as_from_dict_reads_it_and_anything_else_is_one_line():
    """A dict of DiffusionConfig fields was kept as a dict and failed at HMRDiffusion ("'dict' object has no
    attribute 'validate'/'d_model'") after the split was loaded."""
    assert TrainConfig(model=dict(TINY)).model == DiffusionConfig(**TINY)
    for bad in ("big", dict(TINY, depth=3), dict(TINY, heads=3), dict(TINY, heads=0), dict(TINY, d_model=32.0)):
        with pytest.raises(InputError, match="train-base: model config"):
            TrainConfig(model=bad)


def test_training_arrays_with_a_wrong_count_of_image_sizes_are_one_line():
    arrays = {k: np.zeros((4, *s), np.float32) for k, s in
              dict(keypoints=(17, 3), K=(3, 3), global_orient=(3,), body_pose=(69,), betas=(10,)).items()}
    arrays["image_size"] = np.ones((3, 2), np.float32)  # 3 pairs for 4 scenes: a bare RuntimeError from expand
    with pytest.raises(InputError, match=r"image_size must be one \(W, H\) pair or one per scene.*4 scenes"):
        TrainData.from_arrays(arrays)
    for ok in (np.ones((4, 2), np.float32), np.array([640.0, 480.0])):
        arrays["image_size"] = ok
        assert TrainData.from_arrays(arrays).image_size.shape == (4, 2)
    assert torch.equal(TrainData.from_arrays(arrays).image_size[3], torch.tensor([640.0, 480.0]))


@pytest.mark.parametrize("stop_at", [2.5, "2"])
def test_a_stop_at_that_is_not_a_whole_step_is_refused_not_trained_past(stop_at, tmp_path):
    """stop_at=2.5 never equalled a step: train_base trained all the recipe's steps and returned model.pt instead of
    stopping; "2" was a bare TypeError."""
    cfg = TrainConfig(steps=4, batch_size=4, warmup=1, log_every=1, ckpt_every=1, model=DiffusionConfig(**TINY))
    with pytest.raises(InputError, match="stop-at must be an integer"):
        train_base(cfg, tmp_path / "run", data=_data(), stop_at=stop_at)
    assert not (tmp_path / "run" / "state.pt").exists() and not (tmp_path / "run" / "model.pt").exists()
    assert train_base(cfg, tmp_path / "run", data=_data(), stop_at=np.int64(2)).name == "state.pt"
