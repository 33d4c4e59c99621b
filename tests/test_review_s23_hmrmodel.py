"""Review s23, the HMR model side: a chumpy file of another SMPL-family model, checkpoints that hold Python objects
(written by save_model, or a whole pickled module) or a training state, non-unit quaternions, and sampling and
matrix → axis-angle unchanged bit for bit."""

from __future__ import annotations

import copyreg
import importlib.util
import pickle
import shutil
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse
import torch

from hmrcritic.errors import AssetError, InputError
from hmrcritic.hmr import body as B
from hmrcritic.hmr import diffusion as D
from hmrcritic.hmr import mannequin

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def arrays():
    return B.read_model_arrays(mannequin.ensure_mannequin())


def _chumpy_pickle(arrays, joints: int) -> bytes:
    """An official-style chumpy pickle (``Ch`` objects, sparse J_regressor) of a model with ``joints`` joints: 24 is
    SMPL, 52 SMPL+H, 16 MANO — the SMPL+H and MANO downloads are chumpy pickles, like SMPL's v1.0.0 files."""
    chumpy, ch_mod = types.ModuleType("chumpy"), types.ModuleType("chumpy.ch")

    class Ch:
        def __init__(self, x):
            self.x = np.asarray(x)

        def __reduce__(self):
            return (copyreg._reconstructor, (type(self), object, None), dict(self.__dict__))

    Ch.__module__, Ch.__qualname__ = "chumpy.ch", "Ch"
    ch_mod.Ch, chumpy.ch = Ch, ch_mod
    sys.modules["chumpy"], sys.modules["chumpy.ch"] = chumpy, ch_mod
    V = arrays["v_template"].shape[0]
    try:
        return pickle.dumps({
            "v_template": Ch(arrays["v_template"]), "shapedirs": Ch(arrays["shapedirs"]),
            "posedirs": np.zeros((V, 3, 9 * (joints - 1))),
            "J_regressor": scipy.sparse.csc_matrix(np.full((joints, V), 1.0 / V)),
            "weights": Ch(np.full((V, joints), 1.0 / joints)),
            "kintree_table": np.stack([np.r_[-1, np.arange(joints - 1)], np.arange(joints)]),
            "f": arrays["f"].astype(np.uint32), "bs_style": "lbs",
        }, protocol=2)
    finally:
        del sys.modules["chumpy"], sys.modules["chumpy.ch"]


@pytest.mark.parametrize("joints, family, name", [(52, "SMPL+H", "SMPLH_male.pkl"), (16, "MANO (a hand)",
                                                                                     "MANO_RIGHT.pkl")])
def test_an_official_chumpy_file_of_another_model_is_named_not_sent_to_convert(arrays, tmp_path, capsys, joints,
                                                                               family, name):
    """An official SMPL+H or MANO pickle (chumpy, as SMPL's own) was told "an official SMPL .pkl; convert it", and
    the conversion then said it is the wrong model: the wrong model is named at once, with no chumpy imported."""
    from hmrcritic.cli import main

    src = tmp_path / name
    src.write_bytes(_chumpy_pickle(arrays, joints))
    with pytest.raises(AssetError) as info:
        B.load_body_model(src)
    msg = str(info.value)
    assert f"is a {family} model ({joints} joints), not SMPL" in msg and str(src) in msg
    assert "body convert" not in msg
    assert "chumpy" not in sys.modules and importlib.util.find_spec("chumpy") is None
    assert main(["body", "info", "--body-model", str(src)]) == 2
    err = capsys.readouterr().err
    assert f"{family} model" in err and "body convert" not in err
    # SMPL's own chumpy file still gets the conversion command
    smpl = tmp_path / "basicModel_f_lbs_10_207_0_v1.0.0.pkl"
    smpl.write_bytes(_chumpy_pickle(arrays, 24))
    with pytest.raises(AssetError, match=r"contains chumpy objects.*hmrcritic body convert"):
        B.load_body_model(smpl)


def test_save_model_refuses_an_extra_that_load_model_could_not_read(tmp_path):
    """A numpy number in ``extra`` (a metric left as np.float64) was written, and the model could then never be loaded
    ("corrupt or not a torch file"): refused before anything is written, naming the value's type."""
    model = D.load_model()
    out = tmp_path / "model.pt"
    with pytest.raises(InputError, match=r"extra holds a value load_model cannot read back \(numpy\.\S*scalar\)"):
        D.save_model(model, out, extra={"final_loss": np.float64(0.25)})
    assert not out.exists()
    D.save_model(model, out, extra={"final_loss": 0.25, "steps": [1, 2], "data": {"split": "train"}, "t": (1, 2)})
    assert D.load_model(out).checkpoint_extra["final_loss"] == 0.25


def test_a_whole_pickled_module_is_named_as_such_not_as_a_corrupt_file(tmp_path):
    """``torch.save(model, path)`` (the module itself) was "corrupt or not a torch file": it is a torch file whose
    objects are not loaded; the message says so and which class it holds."""
    model = D.load_model()
    path = tmp_path / "whole.pt"
    torch.save(model, path)
    with pytest.raises(AssetError) as info:
        D.load_model(path)
    msg = str(info.value)
    assert "corrupt" not in msg and "HMRDiffusion" in msg and str(path) in msg and "save_model" in msg
    path.write_bytes(D.DEFAULT_CHECKPOINT.read_bytes()[:5000])  # cut short: still named as corrupt
    with pytest.raises(AssetError, match="corrupt or not a torch file"):
        D.load_model(path)


def _head_module(tmp_path, rel: str):
    """``rel`` (a module of the package) as last committed, imported on its own (None outside a git checkout)."""
    git = shutil.which("git")
    if git is None or not (REPO / ".git").exists():
        return None
    src = subprocess.run([git, "show", f"HEAD:{rel}"], cwd=REPO, capture_output=True, text=True)
    if src.returncode:
        return None
    name = "head_" + Path(rel).stem
    (tmp_path / f"{name}.py").write_text(src.stdout)
    spec = importlib.util.spec_from_file_location(name, tmp_path / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # dataclasses look their module up while the class is made
    try:
        spec.loader.exec_module(mod)
    finally:
        del sys.modules[name]
    return mod


def test_sampling_is_bitwise_unchanged_through_save_and_load(tmp_path, body):
    """The checkpoint checks add nothing to sampling: the shipped model, saved and loaded again, and the committed
    module's loader give the same hypotheses bit for bit for a fixed seed (eta 0 and eta > 0). The committed-module
    half guards uncommitted edits only (on a fresh clone HEAD is the working tree); the save-and-load half is the
    check that holds everywhere."""
    with torch.no_grad():
        t = body.template()
    coco = body.coco17(t)[0] + torch.tensor([0.0, 0.0, 3.0])
    K = torch.tensor([[500.0, 0, 128], [0, 500.0, 128], [0, 0, 1]])
    uv = (coco @ K.T)[:, :2] / coco[:, 2:]
    kp = torch.cat([uv, torch.ones(17, 1)], -1)[None]

    def draw(mod, model, eta):
        cond = mod.condition_from_keypoints(kp, K, (256, 256))
        gen = torch.Generator().manual_seed(1234)
        return mod.sample(model, cond, num_generations=6, steps=5, eta=eta, generator=gen, body=body).numpy(0)

    shipped = D.load_model()
    D.save_model(shipped, tmp_path / "again.pt", extra=shipped.checkpoint_extra)
    again = D.load_model(tmp_path / "again.pt")
    head = _head_module(tmp_path, "hmrcritic/hmr/diffusion.py")
    for eta in (0.0, 0.5):
        ref = draw(D, shipped, eta)
        runs = [draw(D, again, eta)]
        if head is not None:
            runs.append(draw(head, head.load_model(D.DEFAULT_CHECKPOINT), eta))
        for got in runs:
            assert set(got) == set(ref)
            for k in ref:
                assert np.array_equal(got[k], ref[k]), k


def test_quaternion_to_axis_angle_takes_quaternions_of_any_length():
    """A non-unit quaternion was converted as if it were unit: (1, 1, 0, 0), 90° about x, gave 2.22 rad. Against
    scipy, which normalises, on random lengths, near 0 and at π."""
    from scipy.spatial.transform import Rotation

    from hmrcritic.hmr.rotations import quaternion_to_axis_angle

    rng = np.random.default_rng(3)
    q = rng.normal(size=(500, 4)) * rng.uniform(0.01, 50, size=(500, 1))
    q[:5] = [[1, 1, 0, 0], [0, 3, 0, 0], [0, 0, 0.2, 0], [7, 1e-7, 0, 0], [-2, 0, 0, 1]]
    got = quaternion_to_axis_angle(torch.tensor(q)).numpy()
    want = Rotation.from_quat(q[:, [1, 2, 3, 0]]).as_matrix()
    np.testing.assert_allclose(Rotation.from_rotvec(got).as_matrix(), want, atol=1e-9)
    np.testing.assert_allclose(got[0], [np.pi / 2, 0, 0], atol=1e-12)


def _frozen_matrix_to_axis_angle(m: torch.Tensor) -> torch.Tensor:
    """``rotations.matrix_to_axis_angle`` as of session 24 (commit f423974), copied here verbatim.

    The test compared against ``git show HEAD:...rotations.py``: on CI's fresh clone HEAD *is* the working tree, so
    it compared the function with itself and could not fail. A frozen copy is a reference that stays put."""
    m00, m01, m02 = m[..., 0, 0], m[..., 0, 1], m[..., 0, 2]
    m10, m11, m12 = m[..., 1, 0], m[..., 1, 1], m[..., 1, 2]
    m20, m21, m22 = m[..., 2, 0], m[..., 2, 1], m[..., 2, 2]
    q_abs = torch.sqrt(torch.clamp(torch.stack(
        [1 + m00 + m11 + m22, 1 + m00 - m11 - m22, 1 - m00 + m11 - m22, 1 - m00 - m11 + m22], dim=-1), min=1e-12))
    quat_by = torch.stack([
        torch.stack([q_abs[..., 0] ** 2, m21 - m12, m02 - m20, m10 - m01], dim=-1),
        torch.stack([m21 - m12, q_abs[..., 1] ** 2, m10 + m01, m02 + m20], dim=-1),
        torch.stack([m02 - m20, m10 + m01, q_abs[..., 2] ** 2, m12 + m21], dim=-1),
        torch.stack([m10 - m01, m20 + m02, m21 + m12, q_abs[..., 3] ** 2], dim=-1),
    ], dim=-2)
    quat_candidates = quat_by / (2.0 * q_abs[..., None].clamp_min(0.1))
    idx = q_abs.argmax(dim=-1)
    q = torch.gather(quat_candidates, -2, idx[..., None, None].expand(idx.shape + (1, 4))).squeeze(-2)
    q = torch.nn.functional.normalize(q, dim=-1)
    q = torch.where(q[..., :1] < 0, -q, q)
    norms = q[..., 1:].norm(dim=-1, keepdim=True)
    half = torch.atan2(norms, q[..., :1])
    angle = 2 * half
    small = angle.abs() < 1e-6
    sin_half_over = torch.where(small, 0.5 - angle * angle / 48, torch.sin(half) / angle.clamp_min(1e-12))
    return q[..., 1:] / sin_half_over


def _frozen_rot6d_to_axis_angle(r: torch.Tensor) -> torch.Tensor:
    """``rotations.rot6d_to_axis_angle`` as of session 24 (Gram–Schmidt, then the frozen conversion above)."""
    normalize = torch.nn.functional.normalize
    a1, a2 = r[..., :3], r[..., 3:]
    b1 = normalize(a1, dim=-1)
    b2 = normalize(a2 - (b1 * a2).sum(-1, keepdim=True) * b1, dim=-1)
    return _frozen_matrix_to_axis_angle(torch.stack([b1, b2, torch.cross(b1, b2, dim=-1)], dim=-1))


def test_matrix_to_axis_angle_is_bitwise_unchanged():
    """The poses of every generated scene go through matrix_to_axis_angle: its output is the session-24 one bit for
    bit (float32 and float64, near 0, near π and in general), against a frozen copy (not git's HEAD, which is the
    code under test on a fresh clone)."""
    from hmrcritic.hmr import rotations

    rng = np.random.default_rng(5)
    axes = rng.normal(size=(3000, 3))
    axes /= np.linalg.norm(axes, axis=1, keepdims=True)
    angles = np.concatenate([rng.uniform(0, np.pi, 1000), np.pi - 10.0 ** rng.uniform(-9, -1, 1000),
                             10.0 ** rng.uniform(-9, -1, 1000)])
    for dtype in (torch.float32, torch.float64):
        m = rotations.axis_angle_to_matrix(torch.tensor(axes * angles[:, None], dtype=dtype))
        assert torch.equal(rotations.matrix_to_axis_angle(m), _frozen_matrix_to_axis_angle(m))
        assert torch.equal(rotations.rot6d_to_axis_angle(rotations.matrix_to_rot6d(m)),
                           _frozen_rot6d_to_axis_angle(torch.cat([m[..., :, 0], m[..., :, 1]], dim=-1)))


def test_a_training_state_given_as_the_model_says_which_file_to_give(tmp_path):
    """A run's state.pt given as --model read "not an hmrcritic diffusion checkpoint (missing format tag)"; it is named
    as a training state, with the file its run writes when it finishes."""
    from hmrcritic.hmr import train

    model = D.HMRDiffusion(D.DiffusionConfig(d_model=16, layers=1, heads=2))
    state = tmp_path / "run" / "state.pt"
    state.parent.mkdir()
    train._save_state(state, model, model, torch.optim.Adam(model.parameters()), 7,
                      train.TrainConfig(steps=7, model={"d_model": 16, "layers": 1, "heads": 2}))
    with pytest.raises(AssetError) as info:
        D.load_model(state)
    msg = str(info.value)
    assert "but a training state" in msg and "step 7" in msg and "model.pt" in msg and str(state) in msg
