"""Which evidence carries signal about the true error of a hypothesis? (the numbers behind the critic's design)

On labelled groups sampled by the shipped base model, prints and writes (benchmarks/results/critic_signals.json,
or ``--json PATH``):

* per evidence measure, the mean within-group Spearman between −measure and −PA-MPJPE, on train and test groups
  — which measures a critic *should* weigh (and what exploration has to discover);
* the prototype probe: every hypothesis of the train groups becomes a prototype (pose embedding, settled score
  ``10·exp(−PA-MPJPE / 60 mm)``, as exploration settles them); each test hypothesis gets the similarity-weighted
  settled score of its k nearest prototypes (cosine on the pose embedding, as the recall node retrieves). Its
  within-group Spearman and point-wise Pearson with −PA-MPJPE say whether pose-retrieved episodic memory can
  rank or calibrate at all on this data.

    python benchmarks/critic_signals.py [--train-groups 150] [--test-groups 60] [-n 16] [--json PATH]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from hmrcritic.agent.api import critique_labelled
from hmrcritic.agent.explore import error_table
from hmrcritic.agent.groups import make_groups
from hmrcritic.hmr.metrics import spearman
from hmrcritic.io import atomic_write_strict_json
from hmrcritic.memory.embeddings import pose_embedding

RESULTS = Path(__file__).resolve().parent / "results" / "critic_signals.json"


def _rho(score: np.ndarray, err: np.ndarray) -> float:
    if np.ptp(score) <= 0:
        return 0.0
    r = float(spearman(np.asarray(score, np.float64), -np.asarray(err, np.float64)))
    return 0.0 if np.isnan(r) else r


def collect(split: str, n_groups: int, n: int) -> list[dict]:
    groups, used = make_groups(split, n_groups, n, seed=0, source="model")
    out = []
    for g, res, joints in critique_labelled(groups, tag="signals"):
        out.append({"evidence": {k: np.asarray(v) for k, v in res.evidence.items()},
                    "err": error_table(g)["pa_mpjpe"], "emb": pose_embedding(joints)})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    ap.add_argument("--train-groups", type=int, default=150)
    ap.add_argument("--test-groups", type=int, default=60)
    ap.add_argument("-n", "--num-generations", type=int, default=16)
    ap.add_argument("-k", type=int, nargs="+", default=[4, 16, 64])
    ap.add_argument("--json", type=Path, default=RESULTS, help="where to write the figures")
    args = ap.parse_args()
    train = collect("train", args.train_groups, args.num_generations)
    test = collect("test", args.test_groups, args.num_generations)
    result: dict = {"train_groups": len(train), "test_groups": len(test), "num_generations": args.num_generations,
                    "measures": {}, "prototype_probe": []}
    names = sorted(set(train[0]["evidence"]) & set(test[0]["evidence"]))
    print(f"{'measure':<22}{'ρ train':>9}{'ρ test':>9}   (mean within-group Spearman of −measure with −PA-MPJPE)")
    for name in names:
        r_tr = float(np.mean([_rho(-g["evidence"][name], g["err"]) for g in train]))
        r_te = float(np.mean([_rho(-g["evidence"][name], g["err"]) for g in test]))
        result["measures"][name] = {"spearman_train": r_tr, "spearman_test": r_te}
        print(f"{name:<22}{r_tr:>+9.3f}{r_te:>+9.3f}")
    emb = np.concatenate([g["emb"] for g in train])
    settled = np.concatenate([10.0 * np.exp(-g["err"] / 60.0) for g in train])
    print(f"prototype probe: {len(emb)} train prototypes, pose-embedding retrieval, on test groups")
    for k in args.k:
        preds = []
        for g in test:
            sim = g["emb"] @ emb.T
            idx = np.argsort(-sim, 1)[:, :k]
            s = np.take_along_axis(sim, idx, 1)
            w = np.exp((s - s[:, :1]) / 0.05)
            preds.append((w * settled[idx]).sum(1) / w.sum(1))
        rho = float(np.mean([_rho(p, g["err"]) for p, g in zip(preds, test, strict=True)]))
        allp, alle = np.concatenate(preds), np.concatenate([g["err"] for g in test])
        pear = float(np.corrcoef(allp, -alle)[0, 1])
        result["prototype_probe"].append({"k": k, "spearman_within_group": rho, "pearson_pointwise": pear})
        print(f"  k={k:<3} within-group Spearman {rho:+.3f}   point-wise Pearson {pear:+.3f}")
    atomic_write_strict_json(args.json, result)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
