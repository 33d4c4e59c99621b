"""Review s14 (argtypes): public Python functions given an argument of the wrong *type* raise the package's own
one-line errors (``InputError``: the argument, what it expects, the type given), not a bare TypeError /
AttributeError / ValueError from deep inside — and before any work (no folder created). Numbers that are numpy or
torch scalars keep working, with the same result."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from hmrcritic.errors import InputError

K = np.array([[500, 0, 256], [0, 500, 256], [0, 0, 1]], np.float32)


def _keypoints(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.uniform(150, 350, (17, 2)), np.ones((17, 1))], 1).astype(np.float32)


def _model():
    from hmrcritic.hmr.diffusion import DiffusionConfig, HMRDiffusion

    torch.manual_seed(0)
    return HMRDiffusion(DiffusionConfig(d_model=32, layers=1, heads=2, T=100))


def _cond():
    from hmrcritic.hmr.diffusion import condition_from_keypoints

    return condition_from_keypoints(_keypoints(), K)


def _user_files(tmp_path):
    import json

    from PIL import Image

    Image.new("RGB", (512, 512)).save(tmp_path / "img.png")
    (tmp_path / "kp.json").write_text(json.dumps(_keypoints().tolist()))
    return tmp_path / "img.png", tmp_path / "kp.json"


def _load_body_model(tmp_path, **kw):
    from hmrcritic.hmr.body import load_body_model

    return load_body_model(**kw)


def _condition(tmp_path, **kw):
    from hmrcritic.hmr.diffusion import condition_from_keypoints

    return condition_from_keypoints(_keypoints(), K, **kw)


def _sample(tmp_path, cond="default", **kw):
    from hmrcritic.hmr.diffusion import sample

    return sample(_model(), _cond() if cond == "default" else cond, **{"num_generations": 2, "steps": 2, **kw})


def _check_sampling_args(tmp_path, **kw):
    from hmrcritic.hmr.diffusion import check_sampling_args

    return check_sampling_args(**{"num_generations": 4, "steps": 10, **kw})


def _sample_from_user(tmp_path, **kw):
    from hmrcritic.hmr.data import sample_from_user

    img, kp = _user_files(tmp_path)
    return sample_from_user(**{"image_path": img, "keypoints_path": kp, **kw})


def _memory_store(tmp_path, *args, **kw):
    from hmrcritic.memory.store import MemoryStore

    return MemoryStore(*args, **kw)


def _explore(tmp_path, **kw):
    from hmrcritic.agent.explore import explore

    try:
        return explore(tmp_path / "memory", **{"rounds": 1, "batch_size": 1, **kw})
    finally:  # refused before the memory folder is made
        assert not (tmp_path / "memory").exists()


def _export(tmp_path, **kw):
    from hmrcritic.alignment.export import ExportConfig, export

    cfg = ExportConfig(out=str(tmp_path / "ds"), split="inline", num_generations=2, sample_steps=1, use_memory=False)
    try:
        return export(cfg, **kw)
    finally:  # refused before the dataset folder is made
        assert not (tmp_path / "ds").exists()


def _finetune_config(tmp_path, **kw):
    from hmrcritic.alignment.finetune import FinetuneConfig

    return FinetuneConfig(data=str(tmp_path / "d"), out=str(tmp_path / "o.pt"), **kw)


CASES = {
    # call → what the message must name
    "load_body_model(5)": (lambda p: _load_body_model(p, path=5), "path"),
    "load_body_model(device='nonsense')": (lambda p: _load_body_model(p, device="nonsense"), "device"),
    "condition_from_keypoints(image_size='256x256')": (lambda p: _condition(p, image_size="256x256"), "image_size"),
    "condition_from_keypoints(image_size=3 numbers)": (lambda p: _condition(p, image_size=(1, 2, 3)), "image_size"),
    "sample(model, None)": (lambda p: _sample(p, cond=None), "cond"),
    "sample(num_generations='4')": (lambda p: _sample(p, num_generations="4"), "num_generations"),
    "sample(num_generations=4.0)": (lambda p: _sample(p, num_generations=4.0), "num_generations"),
    "sample(steps='2')": (lambda p: _sample(p, steps="2"), "steps"),
    "sample(eta='0.5')": (lambda p: _sample(p, eta="0.5"), "eta"),
    "sample(generator=0)": (lambda p: _sample(p, generator=0), "generator"),
    "check_sampling_args(num_generations='4')": (lambda p: _check_sampling_args(p, num_generations="4"),
                                                 "--num-generations"),
    "sample_from_user(focal='x')": (lambda p: _sample_from_user(p, focal="x"), "focal"),
    "sample_from_user(image_path=5)": (lambda p: _sample_from_user(p, image_path=5), "image_path"),
    "MemoryStore(123)": (lambda p: _memory_store(p, 123), "path"),
    "explore(tau='x')": (lambda p: _explore(p, tau="x"), "tau"),
    "explore(rounds='3')": (lambda p: _explore(p, rounds="3"), "rounds"),
    "explore(groups=[1, 2])": (lambda p: _explore(p, groups=[1, 2]), "groups[0]"),
    "explore(memory=123)": (lambda p: explore_memory_123(), "memory"),
    "export(inputs=[1, 2])": (lambda p: _export(p, inputs=[1, 2]), "inputs[0]"),
    "FinetuneConfig(batch_size='8')": (lambda p: _finetune_config(p, batch_size="8"), "--batch-size"),
    "FinetuneConfig(ema='x')": (lambda p: _finetune_config(p, ema="x"), "--ema"),
    "FinetuneConfig(lr='x')": (lambda p: _finetune_config(p, lr="x"), "--lr"),
}


def explore_memory_123():
    from hmrcritic.agent.explore import explore

    return explore(123, rounds=1, batch_size=1)


@pytest.mark.parametrize("name", list(CASES))
def test_a_wrong_type_is_a_one_line_input_error(name, tmp_path):
    call, argument = CASES[name]
    with pytest.raises(InputError) as info:
        call(tmp_path)
    msg = str(info.value)
    assert "\n" not in msg and argument in msg and len(msg) < 200, msg


def test_numpy_and_torch_scalars_still_sample_the_same():
    """Numbers that are numpy / torch scalars pass the new checks and sample bit-identically to plain ones."""
    from hmrcritic.hmr.diffusion import condition_from_keypoints, sample

    model, cond = _model(), _cond()
    plain = sample(model, cond, num_generations=3, steps=2, eta=0.0, guidance=0.0,
                   generator=torch.Generator().manual_seed(1))
    scalars = sample(model, condition_from_keypoints(_keypoints(), K, image_size=np.array([512, 512])),
                     num_generations=np.int64(3), steps=torch.tensor(2), eta=np.float32(0.0),
                     guidance=torch.tensor(0.0), generator=torch.Generator().manual_seed(1))
    assert torch.equal(plain.x0, scalars.x0) and torch.equal(plain.transl, scalars.transl)


def test_numpy_numbers_still_make_a_finetune_config(tmp_path):
    cfg = _finetune_config(tmp_path, batch_size=np.int64(4), lr=np.float32(1e-3), steps=torch.tensor(5), t_min=None)
    assert (cfg.batch_size, cfg.steps) == (4, 5)


# ------------------------------------------------------------------------------------- the agent API entry
def _group():
    from hmrcritic.agent.evidence import project
    from hmrcritic.agent.groups import perturb_group
    from hmrcritic.hmr.body import load_body_model
    from hmrcritic.hmr.poses import sample_poses
    from hmrcritic.hmr.rotations import axis_angle_to_matrix, matrix_to_axis_angle

    p = sample_poses(1, 3)
    Rx = axis_angle_to_matrix(torch.tensor([[np.pi, 0, 0]], dtype=torch.float32))
    go = matrix_to_axis_angle(Rx @ axis_angle_to_matrix(p["global_orient_body"]))
    body = load_body_model()
    transl = torch.tensor([[0.0, 0.2, 3.5]])
    out = body(go, p["body_pose"], p["betas"], transl)
    uv = project(body.coco17(out), torch.as_tensor(K))[0].numpy()
    s = SimpleNamespace(
        sample_id="argtypes", keypoints=np.concatenate([uv, np.ones((17, 1))], 1).astype(np.float32), K=K,
        image_size=(512, 512), smpl24_keypoints=None, image_path=None, mask_path=None,
        global_orient=go[0].numpy(), body_pose=p["body_pose"][0].numpy(), betas=p["betas"][0].numpy(),
        transl=transl[0].numpy(), joints3d=out.joints[0].numpy(), category=None)
    return s, perturb_group(s, 4, np.random.default_rng(3))


API_CASES = {
    "memory=123": ({"memory": 123, "config": {"render": False}}, "memory"),
    "config='x'": ({"config": "x"}, "config"),
    "run_dir=<a file>": ({"run_dir": "FILE", "config": {"render": False, "use_memory": False}}, "run_dir"),
    "critique_groups(items=[1])": ({"items": [1]}, "items[0]"),
    "critique_groups(workers='2')": ({"items": [], "workers": "2"}, "workers"),
}


@pytest.mark.usefixtures("small_prior")
@pytest.mark.parametrize("name", list(API_CASES))
def test_critique_group_refuses_wrong_types_at_its_entry(name, tmp_path):
    from hmrcritic.agent.api import critique_group, critique_groups
    from hmrcritic.agent.graph import open_checkpointer

    kw, argument = API_CASES[name]
    kw = dict(kw)
    if kw.get("run_dir") == "FILE":
        (tmp_path / "file").write_text("x")
        kw["run_dir"] = tmp_path / "file"
    with pytest.raises(InputError) as info:
        if "items" in kw:
            critique_groups(kw.pop("items"), **kw)
        else:
            s, h = _group()
            critique_group(s, h, checkpointer=open_checkpointer(tmp_path / "ckpt.sqlite"), keep=False, **kw)
    msg = str(info.value)
    assert "\n" not in msg and argument in msg and len(msg) < 200, msg
