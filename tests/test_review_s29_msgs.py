"""Review round 29: three messages a researcher misread — evaluate's note on the means that leave values out, the
hint for SMPL-X / SMPL+H poses, and a trace ended by Ctrl-C or SIGTERM."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent


# ---- evaluate: the note counts what each mean LEFT OUT ---------------------------------------------------------
def test_evaluate_note_says_the_count_was_left_out_and_what_the_mean_is_over(monkeypatch, body):
    """``evaluate`` printed "note: these means leave out non-finite values, so they are over fewer than n:
    diversity_occluded_mm 4 of 20 scenes" for a mean over the OTHER 16 (--json: ``non_finite_dropped`` 4): read as
    a mean over 4 scenes. A real evaluation here, two of three scenes with no occluded joint: the note now says
    how many were left out, why, and how many the mean is over; --json and every figure are as before."""
    from hmrcritic.hmr import evaluate as E
    from hmrcritic.hmr.camera import default_intrinsics, project
    from hmrcritic.hmr.diffusion import DiffusionConfig, HMRDiffusion

    B, N = 3, 3
    go = torch.tensor([[math.pi, 0.0, 0.0]]).expand(B, 3).contiguous()
    bp, be = torch.zeros(B, 69), torch.zeros(B, 10)
    tr = torch.tensor([[0.0, 0.0, 3.0]]).expand(B, 3).contiguous()
    K = default_intrinsics(256, 256).expand(B, 3, 3).contiguous()
    kp = torch.cat([project(body.coco17(body(go, bp, be, tr)), K), torch.ones(B, 17, 1)], -1)
    kp[0, 13:, 2] = 0  # scene 0 alone has occluded joints (knees, ankles); scenes 1 and 2 have none
    data = {"keypoints": kp, "K": K, "image_size": torch.tensor([[256.0, 256.0]]).expand(B, 2).contiguous(),
            "global_orient": go, "body_pose": bp, "betas": be, "transl": tr}
    monkeypatch.setattr(E, "_load_labelled", lambda split, limit: (data, B))
    torch.manual_seed(0)
    model = HMRDiffusion(DiffusionConfig(d_model=32, layers=1, heads=2))
    res = E.evaluate_model(model, "test", num_generations=N, steps=2, nn_baseline=False, body=body)
    assert res["non_finite_dropped"]["diversity_occluded_mm"] == 2  # --json: the count left out, as before
    text = E.format_report(res)
    note = next(line for line in text.splitlines() if line.startswith("note: these means leave out"))
    assert "so they are over fewer than n" not in note, note
    assert ("diversity_occluded_mm 2 of 3 scenes left out (no occluded joint in the scene, so no such diversity, "
            "or a non-finite hypothesis), its mean over the other 1") in note, note
    # the reason belongs to its figure, not tacked onto the end of the whole list
    assert note.rstrip().endswith("its mean over the other 1"), note


def test_evaluate_note_gives_each_figure_its_own_reason_and_hypothesis_counts():
    """The one reason the note gave ("a scene with no occluded, or no visible, joint has no such diversity") was
    appended after every listed figure, so a PA-MPJPE left out for a failed fit read as a scene without occluded
    joints; the per-hypothesis rates count hypotheses, and their mean is over the others as well."""
    from hmrcritic.hmr.evaluate import format_report

    res = {"split": "test", "n_samples": 20, "num_generations": 8, "steps": 10, "joint_set": "smpl24",
           "implausible_rate": 0.1, "reproj_px": 1.0, "reproj_best_px": 1.0, "nn_baseline_pa_mpjpe_mm": None,
           "diversity_visible_mm": 1.0, "diversity_occluded_mm": 2.0, "diversity_joint_set": "x",
           "hypotheses_per_s": 1.0, "seconds": 1.0,
           **{f"{m}_{k}_mm": 1.0 for m in ("mpjpe", "pa_mpjpe", "pve") for k in ("mean", "best", "meanpose")},
           "non_finite_dropped": {"pa_mpjpe_mean_mm": 1, "implausible_rate": 3, "pa_mpjpe_selected_mm": 2}}
    note = next(line for line in format_report(res).splitlines() if line.startswith("note:"))
    assert "pa_mpjpe_mean_mm 1 of 20 scenes left out (no finite value: a non-finite hypothesis, or a failed " \
           "Procrustes fit), its mean over the other 19" in note, note
    assert "implausible_rate 3 of 160 hypotheses left out" in note and "over the other 157" in note, note
    assert "pa_mpjpe_selected_mm 2 of 20 scenes left out (the critic scored none of the group's hypotheses" in note
    assert "diversity" not in note, note


# ---- critique --hypotheses: SMPL-X / SMPL+H poses ----------------------------------------------------------------
def _smplx_joint_names():
    from smplx.joint_names import JOINT_NAMES, SMPLH_JOINT_NAMES

    return JOINT_NAMES[:55], SMPLH_JOINT_NAMES[:52]


@pytest.mark.parametrize("width, family, after", [(165, "SMPL-X", "jaw"), (156, "SMPL+H", "left_index1")])
def test_smplx_and_smplh_poses_hint_keeps_22_joints_not_24(tmp_path, width, family, after):
    """An SMPL-X (N, 165) or SMPL+H (N, 156) ``poses`` was told "keep their first 24 as SMPL's": SMPL-X's joints
    22–24 are jaw and eyes and SMPL+H's 22 on are fingers (smplx.joint_names), while SMPL's 22 and 23 are its
    hands. Following the hint put the jaw's and an eye's rotations on SMPL's hands. The hint now keeps the 22
    shared joints (poses[:, :66]) and zeros for SMPL's hands — and doing so is accepted."""
    from hmrcritic.agent.api import load_hypotheses
    from hmrcritic.errors import InputError

    smplx_names, smplh_names = _smplx_joint_names()
    names = smplx_names if family == "SMPL-X" else smplh_names
    assert len(names) * 3 == width and names[21] == "right_wrist" and names[22] == after  # the layout quoted

    poses = np.random.default_rng(0).normal(0, 0.1, (3, width)).astype(np.float32)
    np.savez(tmp_path / "h.npz", poses=poses, betas=np.zeros((3, 10), np.float32),
             transl=np.tile(np.float32([0, 0, 3]), (3, 1)))
    with pytest.raises(InputError) as err:
        load_hypotheses(tmp_path / "h.npz")
    message = str(err.value)
    assert "first 24" not in message, message
    assert f"{family} poses share SMPL's first 22 joints" in message, message
    assert "keep poses[:, :66]" in message and "append 6 zeros" in message, message

    fixed = np.concatenate([poses[:, :66], np.zeros((3, 6), np.float32)], axis=1)  # what the hint says to do
    np.savez(tmp_path / "fixed.npz", poses=fixed, betas=np.zeros((3, 10), np.float32),
             transl=np.tile(np.float32([0, 0, 3]), (3, 1)))
    out = load_hypotheses(tmp_path / "fixed.npz")
    assert np.array_equal(out["body_pose"][:, :63], poses[:, 3:66]) and not out["body_pose"][:, 63:].any()


# ---- trace of a critique ended by SIGTERM or Ctrl-C ----------------------------------------------------------------
_SLOW_CRITIQUE = """
import signal, sys, time
signal.signal(signal.SIGINT, signal.default_int_handler)  # a terminal's Ctrl-C, also under a background shell
from hmrcritic.agent import prior
from hmrcritic.agent.judges import BuiltinJudge
from hmrcritic.hmr.poses import sample_poses
from hmrcritic.cli import main

prior.set_pose_prior(prior.fit_gmm(prior.pose_features(sample_poses(300, seed=11)["body_pose"]), components=2,
                                   iters=5))

def critique(self, ctx):  # a judge that takes long (a slow VLM), stopped by the signal
    print("judging", file=sys.__stdout__, flush=True)
    time.sleep(120)

BuiltinJudge.critique = critique
sys.exit(main(["critique", "--image", sys.argv[1], "--keypoints", sys.argv[2], "--hypotheses", sys.argv[3],
               "--no-render", "--out", sys.argv[4]]))
"""


def _user_files(d: Path) -> list[str]:
    from PIL import Image
    from test_agent_graph import make_group

    s, h, _ = make_group(3, n=4)
    Image.fromarray(np.full((512, 512, 3), 200, np.uint8)).save(d / "person.png")
    (d / "person.json").write_text(json.dumps(s.keypoints.tolist()))
    np.savez(d / "hyps.npz", **{k: np.asarray(v) for k, v in h.items()})
    return [str(d / "person.png"), str(d / "person.json"), str(d / "hyps.npz"), str(d / "out")]


@pytest.mark.parametrize("sig, code, shown", [(signal.SIGTERM, 143, "interrupted (SIGTERM)"),
                                              (signal.SIGINT, 130, "interrupted (Ctrl-C)")])
def test_trace_of_a_critique_stopped_by_a_signal_says_interrupted(tmp_path, sig, code, shown):
    """A critique killed with SIGTERM (the CLI turns it into KeyboardInterrupt to wind down) left a trace whose
    last line read "error: KeyboardInterrupt: " — an empty error, as if it had crashed (``--mermaid`` drew the
    same box). It now says the run was interrupted and by what; the exit codes stay 143 and 130."""
    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items() if k != "HMRCRITIC_DEBUG"}
    env.update(HMRCRITIC_HOME=str(home), PYTHONPATH=os.pathsep.join([str(TESTS), str(ROOT), env.get("PYTHONPATH",
                                                                                                     "")]))
    proc = subprocess.Popen([sys.executable, "-c", _SLOW_CRITIQUE, *_user_files(tmp_path)], env=env,
                            start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        while line and "judging" not in line:
            line = proc.stdout.readline()
        if "judging" not in line:
            out, err = proc.communicate(timeout=60)
            pytest.fail(f"the critique never reached its judge: rc {proc.returncode}\n{out}\n{err}")
        os.killpg(proc.pid, sig)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == code, (proc.returncode, err)

    shown_by = {}
    for extra in ([], ["--mermaid"]):
        res = subprocess.run([sys.executable, "-m", "hmrcritic", "trace", "--last", *extra], env=env,
                             capture_output=True, text=True, timeout=120)
        assert res.returncode == 0, res.stderr
        shown_by[bool(extra)] = res.stdout
    text, mermaid = shown_by[False], shown_by[True]
    assert f"  {shown}" in text and "KeyboardInterrupt" not in text and "error:" not in text, text
    assert f'run_error["{shown}"]' in mermaid and "KeyboardInterrupt" not in mermaid, mermaid


def test_a_trace_written_before_says_interrupted_too(tmp_path, monkeypatch, capsys):
    """Traces recorded before this round hold "KeyboardInterrupt: " for an interrupt: ``trace`` shows them as an
    interrupt (which of the two signals is not known), not as an empty error."""
    from hmrcritic.cli import main

    monkeypatch.setenv("HMRCRITIC_RUNS", str(tmp_path / "runs"))
    traces = tmp_path / "runs" / "traces"
    traces.mkdir(parents=True)
    head = {"run_id": "20260101-000000-abcd", "group_id": "g"}
    records = [{**head, "event": "start", "ts": 0, "config": {"judge": "builtin"}},
               {**head, "event": "node", "step": 1, "node": "render", "seconds": 0.1, "changed": {}},
               {**head, "event": "error", "error": "KeyboardInterrupt: "}]
    (traces / "20260101-000000-abcd.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert main(["trace", "20260101-000000-abcd"]) == 0
    text = capsys.readouterr().out
    assert "  interrupted (Ctrl-C or SIGTERM)" in text and "KeyboardInterrupt" not in text, text
    assert main(["trace", "20260101-000000-abcd", "--mermaid"]) == 0
    assert 'run_error["interrupted (Ctrl-C or SIGTERM)"]' in capsys.readouterr().out
