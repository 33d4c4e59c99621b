"""Can any kind of episodic memory rank hypotheses *within* a group better than the evidence already does?

The question behind evaluate-critic's `no_prototypes` tie. On labelled groups sampled by the shipped base model
(``--train-groups`` train groups are the memory, ``--test-groups`` test groups are ranked), a linear ranking of
the evidence (within-group ranks of the measures, least squares on train) is the baseline; each probe is a
nearest-neighbour feature computed from the train groups and added to it with a weight fitted on train
(leave-own-group-out). Printed per probe: its within-group Spearman with −PA-MPJPE on its own, and the change it
brings to the baseline on test (± paired SE) and on train. Probes:

* ``pose→error``: pose-embedding kNN of the true error (what the judge's prototypes know);
* ``pose→relative error``: the same, of the error z-scored within its own group;
* ``deviation→relative error``: kNN on the direction from the group's medoid pose to the hypothesis;
* ``pose→residual``: kNN of what the evidence baseline got wrong;
* ``2D view→truth``: retrieve train inputs with similar normalised 2D keypoints and score each hypothesis by
  its cosine to their true (camera-frame, root-relative) poses — a lifting prior from memory;
* ``evidence profile→residual``: kNN on the hypothesis' within-group evidence ranks plus its group's spread
  and reprojection level, of the baseline's residual (a non-linear scorer learned from memory);
* ``pose-local weights``: instead of adding a feature, re-weigh the evidence per group — least squares on the
  ``k`` memory groups whose mean pose is nearest, blended half-and-half with the global weights (do poses like
  this one need other measures?);
* ``per-category weights (true category)``: the same with the group's *true* scene category (sitting, lying, …)
  as the neighbourhood — an upper bound on what any category-aware memory could bring.

    python benchmarks/prototype_probes.py [--train-groups 600] [--test-groups 150] [-k 8 32 128]
                                          [--bank all|representative]

``--bank representative`` keeps in the memory only what exploration writes as prototypes (each train group's
best and worst hypothesis and its two most misjudged by the baseline) instead of every hypothesis: the memory
evaluate-critic's ``full`` actually has. Writes benchmarks/results/prototype_probes.json (with
``--bank representative``: prototype_probes_representative.json), or ``--json PATH``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from hmrcritic.agent.api import critique_labelled
from hmrcritic.agent.explore import PROTOS_MISJUDGED
from hmrcritic.agent.groups import make_groups
from hmrcritic.hmr.metrics import spearman
from hmrcritic.io import atomic_write_strict_json
from hmrcritic.memory.embeddings import pose_embedding

RESULTS = Path(__file__).resolve().parent / "results" / "prototype_probes.json"
BASELINE = ("consensus_pa_mm", "reproj_px", "pose_prior_nll", "consensus_dev_mm", "penetration_mm",
            "joint_limit_deg", "hyperextension_deg")
PROFILE = ("consensus_pa_mm", "reproj_px", "pose_prior_nll", "consensus_dev_mm", "asymmetry")


def _z(v) -> np.ndarray:
    v = np.asarray(v, np.float64)
    s = v.std()
    return (v - v.mean()) / s if s > 0 else v * 0.0


def _ranks(v) -> np.ndarray:
    v = np.asarray(v, np.float64)
    return (v[None, :] < v[:, None]).sum(1) + 0.5 * ((v[None, :] == v[:, None]).sum(1) - 1.0)


def _rho(score, err) -> float:
    r = float(spearman(np.asarray(score, np.float64), -np.asarray(err, np.float64)))
    return 0.0 if np.isnan(r) else r


def _unit(a: np.ndarray) -> np.ndarray:
    return a / (np.linalg.norm(a, axis=-1, keepdims=True) + 1e-9)


def collect(split: str, n_groups: int) -> list[dict]:
    groups, _ = make_groups(split, n_groups, 16, seed=0, source="model")
    out = []
    for g, res, joints in critique_labelled(groups, tag="probes"):
        ev = {k: np.asarray(v, np.float64) for k, v in res.evidence.items()}
        n = len(joints)
        emb = pose_embedding(joints)
        med = emb[np.argmax((emb @ emb.T).sum(1))]
        kp = np.asarray(g.sample.keypoints, np.float64)
        c = kp[:, 2:]
        centre = (kp[:, :2] * c).sum(0) / max(c.sum(), 1e-6)
        scale = np.sqrt((((kp[:, :2] - centre) ** 2) * c).sum() / max(c.sum(), 1e-6))
        gt = np.asarray(g.sample.joints3d, np.float64)[:24]
        rel = joints - joints[:, :1]
        ranks = np.stack([_ranks(ev[m]) / (n - 1) for m in PROFILE], 1)
        level = [np.log(np.median(ev["consensus_pa_mm"])) / 5, np.log(np.median(ev["reproj_px"]) + 1) / 3]
        err = np.asarray(g.errors_mm, np.float64)
        out.append({
            "err": err, "ze": _z(err),
            "X": np.stack([_z(_ranks(ev[m])) for m in BASELINE], 1),
            "emb": emb, "dev": _unit(emb - med),
            "view": _unit((((kp[:, :2] - centre) / scale) * c).ravel()[None])[0],
            "truth": _unit((gt[1:] - gt[:1]).ravel()[None])[0],
            "hyp_cam": _unit(rel[:, 1:].reshape(n, -1)),
            "profile": np.concatenate([ranks, np.tile(level, (n, 1))], 1),
            "med": _unit(emb.mean(0)[None])[0], "cat": str(g.sample.category),
        })
    return out


def representative(g: dict) -> dict:
    """The group as exploration's memory keeps it: best, worst and the most misjudged hypotheses only."""
    err = g["err"]
    cr, tr = _ranks(g["base"]), _ranks(err)  # both 0 = best: the baseline predicts the z-scored error
    pick = [int(np.argmin(err)), int(np.argmax(err))]
    for k in np.argsort(-np.abs(cr - tr), kind="stable")[:PROTOS_MISJUDGED]:
        if int(k) not in pick and cr[k] != tr[k]:
            pick.append(int(k))
    return {**g, **{key: g[key][pick] for key in ("err", "ze", "res", "emb", "dev", "profile")}}


def knn(groups, bank, key, target, k, *, exclude_self, cosine=True, temperature=0.05) -> list[np.ndarray]:
    """Per group, per hypothesis: the (similarity-weighted) mean ``target`` of its k nearest bank hypotheses."""
    emb = np.concatenate([g[key] for g in bank])
    val = np.concatenate([g[target] for g in bank])
    gid = np.concatenate([[i] * len(g[key]) for i, g in enumerate(bank)])
    out = []
    for i, g in enumerate(groups):
        if cosine:
            sim = g[key] @ emb.T
        else:
            sim = -((g[key][:, None, :] - emb[None]) ** 2).sum(-1)
        if exclude_self:
            sim[:, gid == i] = -np.inf
        idx = np.argsort(-sim, 1)[:, :k]
        s = np.take_along_axis(sim, idx, 1)
        w = np.exp((s - s[:, :1]) / temperature) if cosine else np.ones_like(s)
        out.append((w * val[idx]).sum(1) / w.sum(1))
    return out


def _nearest_groups(keys: np.ndarray, query: np.ndarray, k: int, exclude: int | None) -> tuple[np.ndarray, np.ndarray]:
    """(indices, similarities) of the k bank groups whose key has the largest dot product with ``query``."""
    s = keys @ query
    if exclude is not None:
        s[exclude] = -np.inf
    idx = np.argsort(-s)[:k]
    idx = idx[np.isfinite(s[idx])]  # the excluded group, when k reaches the whole bank
    return idx, s[idx]


def lifting(groups, bank, k, *, exclude_self) -> list[np.ndarray]:
    views = np.stack([g["view"] for g in bank])
    truths = np.stack([g["truth"] for g in bank])
    out = []
    for i, g in enumerate(groups):
        idx, s = _nearest_groups(views, g["view"], k, i if exclude_self else None)
        w = np.exp((s - s[0]) / 0.01)
        out.append(-((g["hyp_cam"] @ truths[idx].T) * w).sum(1) / w.sum())  # higher = farther from the truths
    return out


def _fit(groups) -> np.ndarray:
    w, *_ = np.linalg.lstsq(np.concatenate([g["X"] for g in groups]), np.concatenate([g["ze"] for g in groups]),
                            rcond=None)
    return w


def local_weights(groups, bank, w, k, *, exclude_self, lam=0.5) -> list[np.ndarray]:
    """Per group: the evidence re-weighted with least squares on its k nearest memory groups (by mean pose)."""
    keys = np.stack([g["med"] for g in bank])
    out = []
    for i, g in enumerate(groups):
        idx, _ = _nearest_groups(keys, g["med"], k, i if exclude_self else None)
        wl = _fit([bank[j] for j in idx])
        out.append(g["X"] @ ((1 - lam) * w + lam * wl))
    return out


def category_weights(groups, bank, w, lam=0.5) -> list[np.ndarray]:
    """Per group: the evidence re-weighted with least squares on the memory groups of its true category."""
    per = {c: _fit([b for b in bank if b["cat"] == c]) for c in {b["cat"] for b in bank}}
    return [g["X"] @ ((1 - lam) * w + lam * per.get(g["cat"], w)) for g in groups]


def reweighted(train, test, s_train, s_test) -> dict:
    """A re-weighted baseline's own ρ on test and its change against the baseline (paired SE)."""
    def gain(groups, scores):
        return np.array([_rho(-s, g["err"]) - _rho(-g["base"], g["err"]) for g, s in zip(groups, scores, strict=True)])

    d_test, d_train = gain(test, s_test), gain(train, s_train)
    return {"alone_spearman_test": float(np.mean([_rho(-s, g["err"]) for g, s in zip(test, s_test, strict=True)])),
            "delta_test": float(d_test.mean()), "delta_test_sem": float(d_test.std(ddof=1) / np.sqrt(len(d_test))),
            "delta_train": float(d_train.mean()), "beta": None}


def added_value(train, test, f_train, f_test) -> dict:
    """The probe's own ρ on test, and what adding it (weight fitted on train residuals) does to the baseline."""
    a = np.concatenate([_z(f) for f in f_train])
    r = np.concatenate([g["res"] for g in train])
    beta = float(a @ r / (a @ a)) if a @ a > 0 else 0.0

    def gain(groups, feats):
        return np.array([_rho(-(g["base"] + beta * _z(f)), g["err"]) - _rho(-g["base"], g["err"])
                         for g, f in zip(groups, feats, strict=True)])

    d_test, d_train = gain(test, f_test), gain(train, f_train)
    return {"alone_spearman_test": float(np.mean([_rho(-f, g["err"]) for g, f in zip(test, f_test, strict=True)])),
            "delta_test": float(d_test.mean()), "delta_test_sem": float(d_test.std(ddof=1) / np.sqrt(len(d_test))),
            "delta_train": float(d_train.mean()), "beta": beta}


def main() -> None:
    ap = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    ap.add_argument("--train-groups", type=int, default=600)
    ap.add_argument("--test-groups", type=int, default=150)
    ap.add_argument("-k", type=int, nargs="+", default=[8, 32, 128])
    ap.add_argument("--bank", choices=("all", "representative"), default="all",
                    help="what the memory keeps of each train group (the hypothesis-level kNN probes)")
    ap.add_argument("--json", type=Path, default=None, help="where to write the figures (default: see above)")
    args = ap.parse_args()
    train, test = collect("train", args.train_groups), collect("test", args.test_groups)
    w = _fit(train)
    for g in train + test:
        g["base"] = g["X"] @ w
        g["res"] = g["ze"] - g["base"]
    bank = train if args.bank == "all" else [representative(g) for g in train]
    base = {s: float(np.mean([_rho(-g["base"], g["err"]) for g in grp])) for s, grp in (("train", train),
                                                                                          ("test", test))}
    print(f"evidence baseline (linear, fitted on {len(train)} train groups): within-group Spearman "
          f"train {base['train']:.3f}, test {base['test']:.3f}")
    probes = {}
    for k in args.k:
        specs = {
            f"pose→error k={k}": lambda G, B, ex, k=k: knn(G, B, "emb", "err", k, exclude_self=ex),
            f"pose→relative error k={k}": lambda G, B, ex, k=k: knn(G, B, "emb", "ze", k, exclude_self=ex),
            f"deviation→relative error k={k}": lambda G, B, ex, k=k: knn(G, B, "dev", "ze", k, exclude_self=ex,
                                                                          temperature=0.1),
            f"pose→residual k={k}": lambda G, B, ex, k=k: knn(G, B, "emb", "res", k, exclude_self=ex),
            f"evidence profile→residual k={k}": lambda G, B, ex, k=k: knn(G, B, "profile", "res", k,
                                                                           exclude_self=ex, cosine=False),
        }
        for name, fn in specs.items():
            probes[name] = added_value(train, test, fn(train, bank, True), fn(test, bank, False))
    for k in (1, 4, 16):
        probes[f"2D view→truth k={k}"] = added_value(train, test, lifting(train, train, k, exclude_self=True),
                                                     lifting(test, train, k, exclude_self=False))
    for k in (16, 64, 200):
        probes[f"pose-local weights k={k}"] = reweighted(
            train, test, local_weights(train, train, w, k, exclude_self=True),
            local_weights(test, train, w, k, exclude_self=False))
    # train: in-sample (the category weights are fitted on these groups), so only the test figure says anything
    probes["per-category weights (true category)"] = reweighted(train, test, category_weights(train, train, w),
                                                                category_weights(test, train, w))
    print(f"{'probe':<40}{'alone ρ':>9}{'Δρ test':>10}{'± sem':>8}{'Δρ train':>10}")
    for name, p in probes.items():
        print(f"{name:<40}{p['alone_spearman_test']:>+9.3f}{p['delta_test']:>+10.4f}{p['delta_test_sem']:>8.4f}"
              f"{p['delta_train']:>+10.4f}")
    out = args.json or (RESULTS if args.bank == "all" else RESULTS.with_name(f"prototype_probes_{args.bank}.json"))
    atomic_write_strict_json(out, {"train_groups": len(train), "test_groups": len(test), "bank": args.bank,
                                   "baseline": base, "probes": probes})
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
