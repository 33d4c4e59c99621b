"""Would a denser episodic memory, pulled on harder, rank hypotheses within a group? (evaluate-critic's
``no_prototypes`` tie)

Exploration stores 3–4 prototypes per explored group (best, worst, most misjudged: ``prototypes=
"representative"``). This script explores ``--warmup-groups`` train groups exactly as ``evaluate-critic`` does
(same batches, seed, rules_k, revise rounds) but stores *every* hypothesis (``prototypes="all"``, 16 per
group), then runs ``evaluate-critic --memory-dir`` on the test groups with the variants ``full`` and
``no_prototypes`` for each per-hypothesis prototype gain in ``--gains`` (``judges.PROTO_GAIN``, the strength
of the pull toward the similarity-weighted settled score of a hypothesis' nearest prototypes; 0.3 is the
default). Printed per gain: full's ρ, the paired difference full − no_prototypes (± SE), top-1 and point-wise r.
Writes benchmarks/results/prototype_density.json (or ``--json PATH``).

    python benchmarks/prototype_density.py [--warmup-groups 200] [--num-groups 100] [--gains 0.3 1 3]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import hmrcritic.agent.judges as judges
from hmrcritic.agent.evaluate_critic import RULES_K, evaluate_critic
from hmrcritic.agent.explore import explore
from hmrcritic.io import atomic_write_strict_json
from hmrcritic.memory.store import MemoryStore

RESULTS = Path(__file__).resolve().parent / "results" / "prototype_density.json"


def main() -> None:
    ap = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    ap.add_argument("--warmup-groups", type=int, default=200)
    ap.add_argument("--num-groups", type=int, default=100)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--gains", type=float, nargs="+", default=[0.3, 1.0, 3.0])
    ap.add_argument("--workdir", type=Path, default=None, help="keep the explored memory here (default: temp)")
    ap.add_argument("--json", type=Path, default=RESULTS, help="where to write the figures")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="hmrcritic-density-") as tmp:
        work = args.workdir or Path(tmp)
        # the exploration's checkpointer (runs_dir()/checkpoints.sqlite) and frozen_copy (runs_dir()/frozen-memory)
        # follow HMRCRITIC_RUNS: without this they stayed in the caller's runs folder, a copy of the explored memory
        os.environ["HMRCRITIC_RUNS"] = str(Path(tmp) / "runs")
        t0 = time.time()
        mem = MemoryStore(path=work / "memory", chroma_url="")  # never the HMRCRITIC_CHROMA_URL server's
        rounds = -(-args.warmup_groups // args.batch_size)
        # the settings evaluate-critic explores with (evaluate_critic.py), only the prototype policy differs
        explore(mem, split="train", rounds=rounds, batch_size=args.batch_size, tau=0.5, judge="builtin",
                rules_k=RULES_K, num_generations=16, limit=args.warmup_groups, seed=args.seed + 1,
                source="model", max_reflections=2, prototypes="all")
        n_protos = mem.prototypes.count()
        explore_s = time.time() - t0
        print(f"explored {args.warmup_groups} train groups: {n_protos} prototypes ({explore_s:.0f} s)")
        del mem
        rows = []
        default_gain = judges.PROTO_GAIN
        try:
            for gain in args.gains:
                judges.PROTO_GAIN = gain
                res = evaluate_critic(split="test", num_groups=args.num_groups, seed=args.seed,
                                      memory_dir=work / "memory", variants=["full", "no_prototypes"],
                                      workdir=work / f"eval-{gain:g}")
                full = next(r for r in res["rows"] if r["variant"] == "full")
                off = next(r for r in res["rows"] if r["variant"] == "no_prototypes")
                row = {"gain": gain, "full_spearman": full["spearman"], "no_prototypes_spearman": off["spearman"],
                       "full_minus_spearman": off["full_minus_spearman"], "full_minus_sem": off["full_minus_sem"],
                       "full_top1_mm": full["top1_pa_mpjpe_mm"], "no_prototypes_top1_mm": off["top1_pa_mpjpe_mm"],
                       "full_pearson": full.get("pearson_pointwise"),
                       "no_prototypes_pearson": off.get("pearson_pointwise")}
                rows.append(row)
                print(f"gain {gain:g}: full ρ {row['full_spearman']:.3f}, full − no_prototypes "
                      f"{row['full_minus_spearman']:+.3f} ± {row['full_minus_sem']:.3f}; top-1 "
                      f"{row['full_top1_mm']:.1f} vs {row['no_prototypes_top1_mm']:.1f} mm; r "
                      f"{row['full_pearson']:.3f} vs {row['no_prototypes_pearson']:.3f}", flush=True)
        finally:
            judges.PROTO_GAIN = default_gain
    result = {"warmup_groups": args.warmup_groups, "num_groups": args.num_groups, "seed": args.seed,
              "prototypes": n_protos, "explore_seconds": round(explore_s, 1), "rows": rows}
    atomic_write_strict_json(args.json, result)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
