"""Review s15 (small): evaluate-critic's bootstrap SE independent of --variants, the demo's stale scene folders,
finetune on an export killed before its first group, and evaluation means that leave out non-finite values."""

from __future__ import annotations

import inspect
import json
import math

import numpy as np
import torch
from test_finetune import write_dataset

from hmrcritic.alignment import dataset as D


# ---- evaluate-critic: the paired bootstrap SE of one row does not depend on the other rows ---------------------
def test_bootstrap_se_of_a_row_does_not_depend_on_the_other_variants():
    """One generator was shared across the ablation rows, so b's ``full_minus_pearson_se`` changed when variant a
    was added to or left out of --variants. Each row now draws from its own (seed, variant) generator."""
    from hmrcritic.agent.evaluate_critic import _paired_pearson_top1_deltas

    rng = np.random.default_rng(0)
    groups, N = 8, 5
    errors = [rng.uniform(20, 120, N) for _ in range(groups)]
    scores = {v: [(-e + rng.normal(0, s, N)).tolist() for e in errors]
              for v, s in (("full", 10.0), ("a", 30.0), ("b", 50.0))}

    def rows_for(variants):
        rows = [{"variant": v} for v in variants]
        _paired_pearson_top1_deltas(rows, {v: scores[v] for v in variants}, errors, seed=3, n_boot=200)
        return {r["variant"]: r for r in rows}

    with_a, without_a = rows_for(["full", "a", "b"]), rows_for(["full", "b"])
    assert with_a["b"]["full_minus_pearson_se"] > 0
    assert with_a["b"]["full_minus_pearson_se"] == without_a["b"]["full_minus_pearson_se"]
    assert rows_for(["full", "b", "a"])["a"]["full_minus_pearson_se"] == with_a["a"]["full_minus_pearson_se"]


# ---- demo: a re-run with fewer --scenes removes the earlier run's extra scene folders --------------------------
def _scene(folder, with_npz=True):
    folder.mkdir(parents=True)
    if with_npz:
        np.savez(folder / "hypotheses.npz", x0=np.zeros((2, 3)))
    (folder / "report.html").write_text("old")
    return folder


def test_demo_removes_only_its_own_stale_scene_folders(tmp_path):
    """``demo --scenes 4`` then ``demo --scenes 2`` into the same --out left scene_02 and scene_03 of the first
    run beside the new ones, looking like results of the second (index.html listed only the new two). The stale
    ones are removed now; anything not named and filled as the demo writes its scene folders stays."""
    from hmrcritic.demo import _remove_stale_scenes

    out = tmp_path / "demo"
    for i in range(4):
        _scene(out / f"scene_{i:02d}")
    keep = [_scene(out / "scene_05", with_npz=False),  # not a demo scene folder (no hypotheses)
            _scene(out / "scene_7"), _scene(out / "scene_007"), _scene(out / "scene_04x"),  # other names
            _scene(out / "mine" / "scene_09")]  # not directly in the out folder
    (out / "scene_06").write_text("a file")
    elsewhere = _scene(tmp_path / "elsewhere")
    (out / "scene_08").symlink_to(elsewhere, target_is_directory=True)
    assert _remove_stale_scenes(out, 2) == ["scene_02", "scene_03"]
    assert (out / "scene_00" / "report.html").exists() and (out / "scene_01" / "report.html").exists()
    assert not (out / "scene_02").exists() and not (out / "scene_03").exists()
    assert all(p.exists() for p in keep) and (out / "scene_06").is_file()
    assert (out / "scene_08").is_symlink() and (elsewhere / "hypotheses.npz").exists()
    assert _remove_stale_scenes(out, 2) == []


def test_demo_removes_stale_scenes_only_after_its_reports_are_written():
    """Called by run_demo once summary.json and index.html of the new run are written (a run that fails before
    leaves the earlier run's folders alone), with the number of scenes this run wrote."""
    from hmrcritic.demo import run_demo

    src = inspect.getsource(run_demo)
    assert "_remove_stale_scenes(out, num_scenes)" in src
    assert src.index('out / "index.html"') < src.index("_remove_stale_scenes(") > src.index('out / "summary.json"')


# ---- finetune: an export killed before its first group -------------------------------------------------------
def _unfinished(root, keep_groups):
    write_dataset(root, n_groups=2, N=4)
    header = D.read_header(root)
    header.counts = {**header.counts, "finished": False}
    D.write_header(root, header)
    lines = (root / D.MANIFEST).read_text().splitlines(keepends=True)
    (root / D.MANIFEST).write_text("".join(lines[:keep_groups]))
    (root / D.PAIRS).unlink()
    return root


def test_finetune_on_an_export_killed_before_its_first_group_says_so(tmp_path, monkeypatch):
    """It printed "note: … training on the groups it wrote so far" and then failed on "no complete groups"."""
    from typer.testing import CliRunner

    import hmrcritic.alignment.finetune as ft
    from hmrcritic.cli import app

    calls = []
    monkeypatch.setattr(ft, "finetune", lambda *a, **k: calls.append(a))
    data = _unfinished(tmp_path / "prefs", keep_groups=0)
    res = CliRunner().invoke(app, ["finetune", "--data", str(data), "--out", str(tmp_path / "a.pt")])
    text = str(res.exception) + res.output
    assert res.exit_code != 0 and not calls
    assert "interrupted (or is still running) before its first group was written" in text, text
    assert "re-run that export" in text and "training on" not in text


def test_finetune_on_a_partial_export_says_how_many_groups_it_trains_on(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    import hmrcritic.alignment.finetune as ft
    from hmrcritic.cli import app

    def stop(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(ft, "finetune", stop)
    data = _unfinished(tmp_path / "prefs", keep_groups=1)
    res = CliRunner().invoke(app, ["finetune", "--data", str(data), "--out", str(tmp_path / "a.pt")])
    assert "training on the 1 group(s) it wrote so far" in res.output, res.output


# ---- evaluate: means that leave out non-finite values say so ------------------------------------------------
def test_evaluate_reports_non_finite_values_left_out_of_a_mean(monkeypatch, body):
    """A scene whose PA-MPJPE is NaN was left out of pa_mpjpe_mean_mm while n_samples counted it: the mean was over
    one scene of two and nothing said so. The result now counts what each mean left out, and the report says it."""
    from hmrcritic.hmr import evaluate as E
    from hmrcritic.hmr import metrics as M
    from hmrcritic.hmr.camera import default_intrinsics, project
    from hmrcritic.hmr.diffusion import DiffusionConfig, HMRDiffusion

    B, N = 2, 3
    go = torch.tensor([[math.pi, 0.0, 0.0]]).expand(B, 3).contiguous()
    bp, be = torch.zeros(B, 69), torch.zeros(B, 10)
    tr = torch.tensor([[0.0, 0.0, 3.0]]).expand(B, 3).contiguous()
    K = default_intrinsics(256, 256).expand(B, 3, 3).contiguous()
    kp = torch.cat([project(body.coco17(body(go, bp, be, tr)), K), torch.ones(B, 17, 1)], -1)
    kp[:, 13:, 2] = 0  # knees and ankles occluded: every scene has an occluded diversity
    data = {"keypoints": kp, "K": K, "image_size": torch.tensor([[256.0, 256.0]]).expand(B, 2).contiguous(),
            "global_orient": go, "body_pose": bp, "betas": be, "transl": tr}
    monkeypatch.setattr(E, "_load_labelled", lambda split, limit: (data, B))
    real = M.pa_mpjpe

    def nan_for_scene_0(pred, gt, *a, **k):
        e = real(pred, gt, *a, **k)
        if e.ndim == 2:  # (B,N): the hypotheses' errors
            e = e.clone()
            e[0] = float("nan")
        return e

    torch.manual_seed(0)
    model = HMRDiffusion(DiffusionConfig(d_model=32, layers=1, heads=2))
    kw = {"num_generations": N, "steps": 2, "nn_baseline": False, "body": body}
    clean = E.evaluate_model(model, "test", **kw)
    assert clean["non_finite_dropped"] == {}
    assert "leave out non-finite" not in E.format_report(clean)
    monkeypatch.setattr(M, "pa_mpjpe", nan_for_scene_0)
    res = E.evaluate_model(model, "test", **kw)
    assert res["n_samples"] == 2 and res["pa_mpjpe_mean_mm"] is not None
    assert res["non_finite_dropped"] == {"pa_mpjpe_mean_mm": 1, "pa_mpjpe_best_mm": 1}
    assert json.loads(json.dumps(res))["non_finite_dropped"] == res["non_finite_dropped"]
    text = E.format_report(res)
    assert "leave out non-finite values" in text and "pa_mpjpe_mean_mm 1 of 2 scenes" in text, text
