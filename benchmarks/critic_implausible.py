"""Does the critic see impossible poses? (the numbers behind the hard constraints, docs/REPRODUCE.md)

For an exported dataset of scored groups (``hmrcritic export`` or a ``wild-*`` folder of ``hmrcritic reproduce``),
prints and writes JSON:

* the share of implausible hypotheses (``hmr/anatomy.is_implausible``: joint limits, hyperextension,
  self-penetration — the evaluation's "implausible rate");
* where the critic puts them within their group: the mean z-score of their ``overall`` (group mean / population
  std, exactly the GPA advantage), their mean rank percentile (0 = lowest), and in how many groups the lowest- and
  the highest-scored hypothesis is implausible;
* how much worse they are in PA-MPJPE than the rest of their group, from the split's evaluation labels read after
  the fact (diagnostic only, as ``reproduce.critic_quality``).

GPA pushes each hypothesis by its advantage, so a critic that scores impossible poses near their group's mean
gives alignment nothing to push away from.

    python benchmarks/critic_implausible.py runs/repro-full/wild-<key> [--split wild] [--json OUT]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from hmrcritic.alignment.reproduce import export_groups_with_labels
from hmrcritic.hmr.anatomy import is_implausible
from hmrcritic.hmr.metrics import pa_mpjpe
from hmrcritic.io import atomic_write_strict_json


def implausible_scoring(export_dir: str | Path, split: str = "wild") -> dict:
    z, pct, gaps = [], [], []
    groups = n_hyp = n_imp = lowest = highest = 0
    for r, h, joints, gt in export_groups_with_labels(export_dir, split):
        groups += 1
        imp = is_implausible(torch.as_tensor(h["body_pose"], dtype=torch.float32), joints).numpy()
        s = np.array([x.overall for x in sorted(r.scores, key=lambda x: x.index)], dtype=np.float64)
        n_hyp += len(s)
        n_imp += int(imp.sum())
        if not imp.any() or s.std() == 0:
            continue
        z += list(((s - s.mean()) / s.std())[imp])
        pct += list((np.argsort(np.argsort(s)) / (len(s) - 1.0))[imp])
        lowest += int(imp[s.argmin()])
        highest += int(imp[s.argmax()])
        if gt is not None and (~imp).any():
            e = pa_mpjpe(joints, gt).numpy()
            gaps.append(float(e[imp].mean() - e[~imp].mean()))
    return {
        "export": str(export_dir), "groups": groups, "hypotheses": n_hyp, "implausible": n_imp,
        "implausible_share": round(n_imp / max(n_hyp, 1), 4),
        "implausible_mean_z": round(float(np.mean(z)), 3) if z else None,
        "implausible_mean_rank_pct": round(float(np.mean(pct)), 3) if pct else None,
        "groups_lowest_is_implausible": lowest, "groups_highest_is_implausible": highest,
        "pa_mpjpe_gap_mm": round(float(np.mean(gaps)), 1) if gaps else None,
        "groups_with_both": len(gaps),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    ap.add_argument("export_dir")
    ap.add_argument("--split", default="wild")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = ap.parse_args()
    res = implausible_scoring(args.export_dir, args.split)
    for k, v in res.items():
        print(f"{k:32s} {v}")
    if args.json:
        atomic_write_strict_json(args.json, res)


if __name__ == "__main__":
    main()
