"""How far should prototypes move a group's score level? (the figures behind ``judges.PROTO_LEVEL``)

Explores ``--warmup-groups`` train groups into a fresh memory (as ``evaluate-critic`` does), then scores
held-out groups — other *train* groups, on which the share is chosen, and ``test`` groups, on which it is only
reported — with the prototypes switched off, and applies :func:`hmrcritic.agent.judges.calibrate_level` with
each share to those scores and the prototypes the recall node would retrieve (``prototypes_k`` per hypothesis).
Prints, per share, the point-wise Pearson of ``overall`` with −PA-MPJPE over all hypotheses pooled and the
mean within-group Spearman (unchanged by construction: one shift per group), and, as the ceiling of any
group-level calibration, the same Pearson with each group's mean log score set to the mean log score its
hypotheses truly deserved (:func:`~hmrcritic.agent.judges.settled_overall` of their errors). Last, on test, the
level predicted by least squares fitted on the held-out train groups, from the group's own score level with and
without its prototypes' level as a regressor. Writes
benchmarks/results/prototype_level.json (or ``--json PATH``).

    python benchmarks/prototype_level.py [--warmup-groups 200] [--heldout-groups 100] [--shares 0 0.3 0.5 0.7 1]
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import numpy as np

from hmrcritic.agent.api import critique_labelled
from hmrcritic.agent.explore import assert_not_explored, explore, frozen_copy
from hmrcritic.agent.groups import make_groups
from hmrcritic.agent.judges import calibrate_level, prototype_level, settled_overall
from hmrcritic.agent.nodes import _hit
from hmrcritic.agent.state import AgentConfig
from hmrcritic.hmr.metrics import spearman
from hmrcritic.io import atomic_write_strict_json
from hmrcritic.memory.embeddings import pose_embedding
from hmrcritic.memory.store import MemoryStore

RESULTS = Path(__file__).resolve().parent / "results" / "prototype_level.json"
HELDOUT_TRAIN_START = 3000  # far past the groups exploration draws (checked with assert_not_explored)


def score_without_prototypes(groups, memory, k: int) -> list[tuple[np.ndarray, list, np.ndarray]]:
    """(overall without prototypes, the prototype hits recall would give, true PA-MPJPE) per group."""
    cfg = AgentConfig(render=False, learn=False, use_prototypes=False, rules_k=16)
    out = []
    for g, res, joints in critique_labelled(groups, memory, cfg, tag="protolevel"):
        hits = [[_hit(p, s) for p, s in row] for row in memory.prototypes.query(pose_embedding(joints), k=k)]
        out.append((np.asarray(res.overall, np.float64), hits, np.asarray(g.errors_mm, np.float64)))
    return out


def figures(scored, share: float) -> dict:
    cal = []
    for s, hits, _ in scored:
        log_s, _ = calibrate_level(np.log(np.maximum(s, 1e-9)), prototype_level(hits), share)
        cal.append(np.exp(log_s))
    allp, alle = np.concatenate(cal), np.concatenate([e for _, _, e in scored])
    rho = [float(spearman(c, -e)) for c, (_, _, e) in zip(cal, scored, strict=True)]
    return {"share": share, "pearson_pointwise": float(np.corrcoef(allp, -alle)[0, 1]),
            "spearman": float(np.nanmean(rho))}


def oracle_level(scored) -> float:
    """Point-wise Pearson if every group's score level were exactly right (its ranking kept)."""
    cal = []
    for s, _, e in scored:
        log_s = np.log(np.maximum(s, 1e-9))
        cal.append(np.exp(log_s - log_s.mean() + np.log(settled_overall(e)).mean()))
    return float(np.corrcoef(np.concatenate(cal), -np.concatenate([e for _, _, e in scored]))[0, 1])


def _level_features(scored, with_prototypes: bool) -> np.ndarray:
    rows = []
    for s, hits, _ in scored:
        mean_log = float(np.log(np.maximum(s, 1e-9)).mean())
        level = prototype_level(hits)
        rows.append([1.0, mean_log] + ([level[0] if level else mean_log] if with_prototypes else []))
    return np.asarray(rows)


def fitted_levels(fit_on, report_on) -> dict:
    """Point-wise Pearson on ``report_on`` when each group's level is a least-squares prediction of its true
    mean log score fitted on ``fit_on``: from the group's own score level alone, and with its prototypes'
    level as a second regressor — does the prototypes' level know anything the score level does not?"""
    out = {}
    for name, with_protos in (("score level", False), ("score level + prototype level", True)):
        target = np.array([np.log(settled_overall(e)).mean() for _, _, e in fit_on])
        w, *_ = np.linalg.lstsq(_level_features(fit_on, with_protos), target, rcond=None)
        pred = _level_features(report_on, with_protos) @ w
        cal = [np.exp(np.log(np.maximum(s, 1e-9)) - np.log(np.maximum(s, 1e-9)).mean() + p)
               for (s, _, _), p in zip(report_on, pred, strict=True)]
        out[name] = float(np.corrcoef(np.concatenate(cal), -np.concatenate([e for _, _, e in report_on]))[0, 1])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    ap.add_argument("--warmup-groups", type=int, default=200)
    ap.add_argument("--heldout-groups", type=int, default=100)
    ap.add_argument("--shares", type=float, nargs="+", default=[0.0, 0.3, 0.5, 0.7, 1.0])
    ap.add_argument("--prototypes-k", type=int, default=AgentConfig().prototypes_k)
    ap.add_argument("--json", type=Path, default=RESULTS, help="where to write the figures")
    args = ap.parse_args()
    result: dict = {"warmup_groups": args.warmup_groups, "heldout_groups": args.heldout_groups,
                    "prototypes_k": args.prototypes_k, "splits": {}}
    with tempfile.TemporaryDirectory() as tmp:
        # the exploration's checkpointer (runs_dir()/checkpoints.sqlite) and frozen_copy (runs_dir()/frozen-memory)
        # follow HMRCRITIC_RUNS: without this they stayed in the caller's runs folder, a copy of the explored memory
        os.environ["HMRCRITIC_RUNS"] = str(Path(tmp) / "runs")
        mem = MemoryStore(path=Path(tmp) / "memory", chroma_url="")  # never the HMRCRITIC_CHROMA_URL server's
        explore(mem, split="train", rounds=-(-args.warmup_groups // 8), batch_size=8, limit=args.warmup_groups,
                seed=1)
        frozen = frozen_copy(mem)
        scored_by_split = {}
        for split, start in (("train", HELDOUT_TRAIN_START), ("test", 0)):
            groups, _ = make_groups(split, args.heldout_groups, 16, seed=0, start=start, source="model")
            if split == "train":
                assert_not_explored(mem, split, [g.group_id for g in groups])
            scored = scored_by_split[split] = score_without_prototypes(groups, frozen, args.prototypes_k)
            rows = [figures(scored, share) for share in args.shares]
            result["splits"][split] = rows
            result.setdefault("oracle_level_pearson", {})[split] = oracle_level(scored)
            print(f"{split} ({'choose on' if split == 'train' else 'report only'}): "
                  f"{len(scored)} held-out groups, memory of {frozen.prototypes.count()} prototypes")
            for r in rows:
                print(f"  share {r['share']:.1f}: point-wise Pearson {r['pearson_pointwise']:.3f}   "
                      f"within-group Spearman {r['spearman']:.3f}")
            print(f"  oracle level (each group's true mean): point-wise Pearson "
                  f"{result['oracle_level_pearson'][split]:.3f}")
        result["fitted_level_pearson_test"] = fitted_levels(scored_by_split["train"], scored_by_split["test"])
        print("test, level fitted on the held-out train groups: " + ", ".join(
            f"{k} → point-wise Pearson {v:.3f}" for k, v in result["fitted_level_pearson_test"].items()))
    atomic_write_strict_json(args.json, result)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
