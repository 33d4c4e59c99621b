"""How many past groups should the rule miner validate a candidate on? (and: would replaying them from the
episodic memory make prototypes matter?)

Exploration's miner keeps a candidate rule only if it raises the mean group Spearman on the batch plus the
last ``explore.HISTORY_GROUPS`` explored groups (64 by default; a replay buffer kept beside the memory). Were
that replay to come from the episodic memory instead, ``no_prototypes`` (episodic memory off) would also lose
it — worth doing only if the replay size moved the critic beyond what one exploration to the next already
moves it. This script runs ``evaluate-critic`` (the same settings, fresh explorations) once per history size
in ``--sizes`` with the variants ``full`` and ``no_prototypes`` and prints full's ρ, top-1 and the paired
full − no_prototypes ρ. Writes benchmarks/results/miner_history.json (or ``--json PATH``).

    python benchmarks/miner_history.py [--sizes 0 16 64 1000] [--seed 0]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import hmrcritic.agent.explore as explore_mod
from hmrcritic.agent.evaluate_critic import evaluate_critic
from hmrcritic.io import atomic_write_strict_json

RESULTS = Path(__file__).resolve().parent / "results" / "miner_history.json"


def main() -> None:
    ap = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    ap.add_argument("--sizes", type=int, nargs="+", default=[0, 16, 64, 1000])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--num-groups", type=int, default=100)
    ap.add_argument("--warmup-groups", type=int, default=200)
    ap.add_argument("--json", type=Path, default=RESULTS, help="where to write the figures")
    args = ap.parse_args()

    default = explore_mod.HISTORY_GROUPS
    rows = []
    with tempfile.TemporaryDirectory(prefix="hmrcritic-history-") as tmp:
        # the exploration's checkpointer (runs_dir()/checkpoints.sqlite) and frozen_copy (runs_dir()/frozen-memory)
        # follow HMRCRITIC_RUNS: without this they stayed in the caller's runs folder, a copy of the explored memory
        os.environ["HMRCRITIC_RUNS"] = str(Path(tmp) / "runs")
        try:
            for size in args.sizes:
                explore_mod.HISTORY_GROUPS = size
                t0 = time.time()
                # a work folder per size: evaluate-critic's cache key does not know this module constant
                res = evaluate_critic(split="test", num_groups=args.num_groups, warmup_groups=args.warmup_groups,
                                      seed=args.seed, variants=["full", "no_prototypes"],
                                      workdir=Path(tmp) / f"history-{size}")
                rows_by = {r["variant"]: r for r in res["rows"]}
                full, nop = rows_by["full"], rows_by["no_prototypes"]
                row = {"history_groups": size, "spearman": full["spearman"], "spearman_sem": full["spearman_sem"],
                       "top1_pa_mpjpe_mm": full["top1_pa_mpjpe_mm"], "pearson_pointwise": full["pearson_pointwise"],
                       "full_minus_no_prototypes_spearman": nop["full_minus_spearman"],
                       "full_minus_no_prototypes_sem": nop["full_minus_sem"],
                       "seconds": round(time.time() - t0, 1)}
                rows.append(row)
                print(f"history {size:>5}: full ρ {row['spearman']:.3f} ± {row['spearman_sem']:.3f}, top-1 "
                      f"{row['top1_pa_mpjpe_mm']:.1f} mm, r {row['pearson_pointwise']:.3f}; full − no_prototypes ρ "
                      f"{row['full_minus_no_prototypes_spearman']:+.4f} ± {row['full_minus_no_prototypes_sem']:.4f} "
                      f"({row['seconds']:.0f} s)", flush=True)
        finally:
            explore_mod.HISTORY_GROUPS = default
    atomic_write_strict_json(args.json, {"seed": args.seed, "num_groups": args.num_groups,
                                         "warmup_groups": args.warmup_groups, "default": default, "rows": rows})
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
