"""Session 24 review (hmr): ``evaluate --eta > 0`` and ``--guidance`` run the network, the guidance energy and the
body model a block of rows at a time like the default sampler (memory bounded at large -n), with the very same
hypotheses and figures as one pass over the batch (the chunk sizes: tests/test_review_s22_evalmem.py)."""

from __future__ import annotations

import pytest
import torch

from tests.test_review_s22_evalmem import _varied_scenes


def test_chunked_sampling_draws_what_diffusion_sample_draws(body):
    """hmr.evaluate.sample with eta > 0 and guidance, in blocks of rows, gives diffusion.sample's hypotheses to the
    bit (the same x_T, the same per-step noise from one generator, the same per-row energy)."""
    from hmrcritic.hmr import evaluate as E
    from hmrcritic.hmr.diffusion import condition_from_keypoints, load_model
    from hmrcritic.hmr.diffusion import sample as diffusion_sample

    model = load_model(None)
    data = _varied_scenes(body, 3)
    cond = condition_from_keypoints(data["keypoints"], data["K"], data["image_size"])
    kw = dict(num_generations=40, steps=3, eta=0.6, body=body, guidance=0.3)
    ref = diffusion_sample(model, cond, generator=torch.Generator().manual_seed(5), **kw)
    rows = [E._rows(c, 40) for c in E._chunks(3, 40, 60)]
    assert len(rows) > 1
    orig = E._chunks
    try:
        E._chunks = lambda B, N, size=None: orig(B, N, 60)
        got = E.sample(model, cond, generator=torch.Generator().manual_seed(5), **kw)
    finally:
        E._chunks = orig
    for name in ("x0", "global_orient", "body_pose", "betas", "transl"):
        assert torch.equal(getattr(got, name), getattr(ref, name)), name



def test_evaluate_model_takes_none_for_the_shipped_model_and_refuses_other_objects(monkeypatch, body):
    """``evaluate_model(None)`` (the command without --model evaluates the shipped model; ``load_model(None)`` loads
    it) failed with "'NoneType' object has no attribute 'num_timesteps'", and so did any object that is not a model,
    after nothing was checked."""
    from hmrcritic.errors import InputError
    from hmrcritic.hmr import evaluate as E
    from hmrcritic.hmr.diffusion import load_model

    monkeypatch.setattr(E, "_load_labelled", lambda split, limit: (_varied_scenes(body, 2), 2))
    kw = dict(num_generations=3, steps=2, batch_size=2, nn_baseline=False, body=body)
    shipped = E.evaluate_model(None, **kw)
    again = E.evaluate_model(load_model(None), **kw)
    for key in ("seconds", "hypotheses_per_s"):
        shipped.pop(key), again.pop(key)
    assert shipped == again
    with pytest.raises(InputError, match="model must be an HMRDiffusion, a checkpoint path or None"):
        E.evaluate_model({"state_dict": {}}, **kw)
