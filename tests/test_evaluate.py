"""Evaluation of the diffusion model: the CLI's JSON keys on tiny splits, the NN baseline, the select hook."""

from __future__ import annotations

import json
import math

import pytest
import torch

from hmrcritic.hmr.diffusion import DiffusionConfig, HMRDiffusion, save_model
from hmrcritic.hmr.evaluate import evaluate_model, nearest_neighbour, smpl_visibility

REQUIRED = [
    "split", "num_generations", "joint_set", "mpjpe_mean_mm", "pa_mpjpe_mean_mm", "pa_mpjpe_best_mm",
    "pve_mean_mm", "reproj_px", "implausible_rate", "nn_baseline_pa_mpjpe_mm", "diversity_visible_mm",
    "diversity_occluded_mm", "mpjpe_best_mm", "pve_best_mm", "pa_mpjpe_meanpose_mm",
]  # fmt: skip


@pytest.fixture(scope="module")
def tiny_splits(tmp_path_factory):
    """Tiny synthetic splits in their own data folder (train 100, test 5, wild 10 scenes), made once."""
    root = tmp_path_factory.mktemp("data")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HMRCRITIC_DATA", str(root))
        mp.setenv("HMRCRITIC_SPLIT_SIZE_SCALE", "0.005")
        yield root


@pytest.fixture()
def tiny_model(tmp_path):
    torch.manual_seed(0)
    m = HMRDiffusion(DiffusionConfig(d_model=32, layers=1, heads=2))
    with torch.no_grad():
        m.joint_out.weight.normal_(0, 0.05)  # untrained but not degenerate: hypotheses differ
    return m, save_model(m, tmp_path / "tiny.pt")


def test_evaluate_json_has_the_keys(tiny_splits, tiny_model, capsys):
    from hmrcritic.cli import main

    _, path = tiny_model
    for split in ("test", "wild"):
        args = ["evaluate", "--model", str(path), "--split", split, "--num-generations", "3"]
        rc = main([*args, "--limit", "3", "--steps", "2", "--json"])
        out = capsys.readouterr().out.strip().splitlines()
        assert rc == 0
        res = json.loads(out[-1])
        missing = [k for k in REQUIRED if k not in res]
        assert not missing, missing
        assert res["split"] == split and res["num_generations"] == 3 and res["n_samples"] == 3
        assert res["joint_set"] == "lsp14"
        for k in ("mpjpe_mean_mm", "pa_mpjpe_mean_mm", "pa_mpjpe_best_mm", "pve_mean_mm", "reproj_px"):
            assert res[k] is not None and math.isfinite(res[k]) and res[k] > 0, k
        assert res["pa_mpjpe_best_mm"] <= res["pa_mpjpe_mean_mm"]
        assert 0.0 <= res["implausible_rate"] <= 1.0


def test_evaluate_bad_model_path_is_one_line_error(tiny_splits, tmp_path, capsys):
    from hmrcritic.cli import main

    rc = main(["evaluate", "--model", str(tmp_path / "nope.pt"), "--limit", "1", "--json"])
    assert rc == 2
    assert "nope.pt" in capsys.readouterr().err


def test_select_fn_hook_and_determinism(tiny_splits, tiny_model):
    model, _ = tiny_model
    seen = {}

    def pick_last(ctx):
        seen["joints"] = ctx["joints"].shape
        B, N = ctx["joints"].shape[:2]
        return torch.full((B,), N - 1)

    a = evaluate_model(model, "test", num_generations=4, steps=2, limit=4, batch_size=2, select_fn=pick_last)
    b = evaluate_model(model, "test", num_generations=4, steps=2, limit=4, batch_size=2, nn_baseline=False)
    assert seen["joints"][1:] == (4, 24, 3)
    assert a["pa_mpjpe_best_mm"] <= a["pa_mpjpe_selected_mm"]
    assert a["pa_mpjpe_mean_mm"] == b["pa_mpjpe_mean_mm"]  # same seeds → same hypotheses
    assert b["nn_baseline_pa_mpjpe_mm"] is None


def test_nearest_neighbour_finds_itself_and_ignores_missing():
    g = torch.Generator().manual_seed(0)
    bank = torch.cat([torch.rand(50, 17, 2, generator=g) * 2 - 1, torch.ones(50, 17, 1)], -1)
    q = bank[[7, 23]].clone()
    q[:, :4, 2] = 0
    q[:, :4, :2] = 5.0  # garbage at missing joints must not matter
    assert nearest_neighbour(q, bank).tolist() == [7, 23]


def test_smpl_visibility_from_coco():
    kp = torch.zeros(1, 17, 3)
    kp[0, 9, 2] = 1.0  # left wrist visible
    vis, mapped = smpl_visibility(kp)
    assert vis[0, 20] and vis[0, 22]  # left wrist and the left hand that follows it
    assert not vis[0, 21] and mapped[0, 21]
    assert not mapped[0, 0]  # pelvis has no COCO keypoint
