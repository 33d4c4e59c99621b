"""How far do ``anatomy.hyperextension`` and the joint boxes of ``anatomy.joint_limit_violation`` disagree?

The two measures are defined independently: hyperextension geometrically (the child bone's angle past the straight
line, on the side opposite to flexion, in the parent's frame), the joint limits as per-axis boxes of intrinsic XYZ
Euler angles. A box corner that combines an elbow's twist (x) with its carrying angle (z) at full extension puts the
forearm a little *behind* the arm line, so a rotation the box allows can read some degrees of hyperextension. This
script measures how much: a dense ``--step``° grid over each knee/elbow box (every grid rotation is inside its box),
printing the largest hyperextension inside the box, where it is, and the share of the box over ``is_implausible``'s
10° tolerance (the threshold of the starter rule ``starter-hyperext-mild`` too); and the same reading on the shipped
model's hypotheses of ``--model-groups`` test groups (what the critic actually sees). Writes
benchmarks/results/hyperextension_box.json.

    python benchmarks/hyperextension_box.py [--step 1] [--model-groups 200]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from hmrcritic.hmr import anatomy as A
from hmrcritic.hmr.rotations import euler_to_matrix, matrix_to_axis_angle
from hmrcritic.io import atomic_write_strict_json

RESULTS = Path(__file__).resolve().parent / "results" / "hyperextension_box.json"
TOLERANCE_DEG = 10.0  # is_implausible's default limit_tol_deg and the mild starter rule's threshold


def box_grid(name: str, step: float) -> torch.Tensor:
    """(M,3) Euler angles (degrees, float64) on a ``step``° grid over the joint's box, corners included."""
    axes = [torch.linspace(lo, hi, max(2, round((hi - lo) / step) + 1), dtype=torch.float64)
            for lo, hi in A.JOINT_LIMITS_DEG[name]]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)


def hyperextension_in_box(name: str, step: float) -> dict:
    """The hyperextension of every grid rotation of ``name``'s box that ``joint_limit_violation`` reads as inside."""
    euler = box_grid(name, step)
    j = A.BODY_JOINT_NAMES.index(name)
    bp = torch.zeros(len(euler), 23, 3)
    bp[:, j] = matrix_to_axis_angle(euler_to_matrix(euler.deg2rad())).float()  # as a model's pose arrives: float32
    hx = A.hyperextension(bp.reshape(-1, 69))[:, A.HYPEREXTENSION_JOINTS.index(name)]
    inside = A.joint_limit_violation(bp.reshape(-1, 69))[:, j] == 0
    hx = torch.where(inside, hx, torch.zeros_like(hx))
    worst = int(hx.argmax())
    return {"grid_rotations": len(euler), "inside": int(inside.sum()), "max_deg": round(float(hx.max()), 3),
            "at_euler_deg": [round(float(v), 2) for v in euler[worst]],
            f"over_{TOLERANCE_DEG:g}deg": int((hx > TOLERANCE_DEG).sum()), "over_0.5deg": int((hx > 0.5).sum())}


def main() -> None:
    ap = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    ap.add_argument("--step", type=float, default=1.0, help="grid step over each box (degrees)")
    ap.add_argument("--model-groups", type=int, default=200,
                    help="also read the shipped model's hypotheses of N test groups × 16 (0: skip)")
    ap.add_argument("--json", type=Path, default=RESULTS)
    args = ap.parse_args()
    torch.set_num_threads(1)

    out = {"step_deg": args.step, "tolerance_deg": TOLERANCE_DEG, "boxes": {}}
    for name in A.HYPEREXTENSION_JOINTS:
        rec = hyperextension_in_box(name, args.step)
        out["boxes"][name] = rec
        print(f"{name:<12} box {A.JOINT_LIMITS_DEG[name]}: {rec['inside']} of {rec['grid_rotations']} grid rotations "
              f"inside; hyperextension up to {rec['max_deg']:.2f}° (Euler {rec['at_euler_deg']}), "
              f"> {TOLERANCE_DEG:g}° at {rec[f'over_{TOLERANCE_DEG:g}deg']}, > 0.5° at {rec['over_0.5deg']}")
    if args.model_groups:
        from hmrcritic.agent.groups import make_groups

        groups, _ = make_groups("test", args.model_groups, 16, seed=0, source="model")
        bp = torch.as_tensor(np.concatenate([g.hypotheses["body_pose"] for g in groups]))
        idx = [A.BODY_JOINT_NAMES.index(n) for n in A.HYPEREXTENSION_JOINTS]
        hx = A.hyperextension(bp)
        inside = A.joint_limit_violation(bp)[:, idx] == 0
        limits_flag = A.joint_limit_violation(bp).amax(1) > TOLERANCE_DEG
        only_hx = (hx.amax(1) > TOLERANCE_DEG) & ~limits_flag
        out["model_hypotheses"] = {
            "groups": len(groups), "hypotheses": len(bp),
            "max_deg_inside_box": round(float(torch.where(inside, hx, torch.zeros_like(hx)).max()), 3),
            f"over_{TOLERANCE_DEG:g}deg_inside_box": int(((hx > TOLERANCE_DEG) & inside).sum()),
            f"over_{TOLERANCE_DEG:g}deg": int((hx > TOLERANCE_DEG).sum()),
            "implausible_only_by_hyperextension": int(only_hx.sum()),
        }
        print(f"the shipped model's hypotheses ({len(groups)} test groups × 16): {out['model_hypotheses']}")
    atomic_write_strict_json(args.json, out)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
