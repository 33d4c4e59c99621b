"""How stable is the score calibration, and how many groups does it need? (the figures behind
``agent.calibration.CALIBRATION_GROUPS``)

Explores ``--warmup-groups`` train groups into a fresh memory (as ``evaluate-critic`` does, its calibration
switched off), scores ``--pool-groups`` further train groups and ``--test-groups`` test groups once with the
frozen memory (prototypes and calibration off: what a calibration is fitted on), then fits calibrations on
disjoint sets of each size from the train pool. Prints per size the spread (SD) of the slope and intercept
over the sets and the mean point-wise Pearson each gives on the test groups, beside the uncalibrated scores.
Writes benchmarks/results/calibration_stability.json (or ``--json PATH``).

    python benchmarks/calibration_stability.py [--warmup-groups 200] [--pool-groups 128] [--sizes 8 16 32 64]
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import numpy as np

from hmrcritic.agent.calibration import fit_calibration
from hmrcritic.agent.explore import explore, frozen_copy
from hmrcritic.agent.groups import make_groups
from hmrcritic.agent.learning_curve import pooled_pearson, score_groups
from hmrcritic.io import atomic_write_strict_json
from hmrcritic.memory.store import MemoryStore

RESULTS = Path(__file__).resolve().parent / "results" / "calibration_stability.json"


def main() -> None:
    ap = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    ap.add_argument("--warmup-groups", type=int, default=200)
    ap.add_argument("--pool-groups", type=int, default=128)
    ap.add_argument("--test-groups", type=int, default=100)
    ap.add_argument("--sizes", type=int, nargs="+", default=[8, 16, 32, 64])
    ap.add_argument("--json", type=Path, default=RESULTS, help="where to write the figures")
    args = ap.parse_args()
    cfg = {"rules_k": 16, "use_prototypes": False, "use_calibration": False}
    with tempfile.TemporaryDirectory() as tmp:
        # the exploration's checkpointer (runs_dir()/checkpoints.sqlite) and frozen_copy (runs_dir()/frozen-memory)
        # follow HMRCRITIC_RUNS: without this they stayed in the caller's runs folder, a copy of the explored memory
        os.environ["HMRCRITIC_RUNS"] = str(Path(tmp) / "runs")
        mem = MemoryStore(path=Path(tmp) / "memory", chroma_url="")  # never the HMRCRITIC_CHROMA_URL server's
        explore(mem, split="train", rounds=-(-args.warmup_groups // 8), batch_size=8, limit=args.warmup_groups,
                seed=1, calibration_groups=0)
        frozen = frozen_copy(mem)
        pool, _ = make_groups("train", args.pool_groups, 16, seed=1, start=args.warmup_groups, source="model")
        test, _ = make_groups("test", args.test_groups, 16, seed=0, source="model")
        pool_s, _ = score_groups(pool, frozen, "full", agent_config=cfg, tag="calstab")
        test_s, _ = score_groups(test, frozen, "full", agent_config=cfg, tag="calstab")
    pool_e = [g.errors_mm for g in pool]
    test_e = [np.asarray(g.errors_mm) for g in test]
    keep = [i for i, s in enumerate(test_s) if s is not None]
    test_s, test_e = [test_s[i] for i in keep], [test_e[i] for i in keep]
    raw = pooled_pearson(test_s, test_e)
    result = {"warmup_groups": args.warmup_groups, "pool_groups": len(pool), "test_groups": len(test_s),
              "pearson_test_uncalibrated": raw, "sizes": []}
    print(f"memory explored on {args.warmup_groups} train groups; test point-wise Pearson uncalibrated {raw:.3f}")
    print(f"{'groups':>7}{'sets':>6}{'slope':>16}{'intercept':>16}{'test r':>16}")
    for size in args.sizes:
        fits = []
        for k in range(len(pool) // size):
            cal = fit_calibration(pool_s[k * size:(k + 1) * size], pool_e[k * size:(k + 1) * size])
            r = pooled_pearson([np.exp(cal.apply(np.log(np.maximum(s, 1e-3)))) for s in test_s], test_e)
            fits.append((cal.slope, cal.intercept, r))
        if not fits:
            continue
        a = np.array(fits)
        row = {"groups": size, "sets": len(fits), "slope_mean": float(a[:, 0].mean()), "slope_sd": float(a[:, 0].std()),
               "intercept_mean": float(a[:, 1].mean()), "intercept_sd": float(a[:, 1].std()),
               "test_pearson_mean": float(a[:, 2].mean()), "test_pearson_min": float(a[:, 2].min())}
        result["sizes"].append(row)
        print(f"{size:>7}{len(fits):>6}{row['slope_mean']:>9.3f} ± {row['slope_sd']:.3f}"
              f"{row['intercept_mean']:>9.3f} ± {row['intercept_sd']:.3f}"
              f"{row['test_pearson_mean']:>9.3f} (min {row['test_pearson_min']:.3f})")
    atomic_write_strict_json(args.json, result)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
