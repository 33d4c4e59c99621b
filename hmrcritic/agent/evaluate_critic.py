"""How good is the critic, and does each part of the agent matter? (``hmrcritic evaluate-critic``)

On labelled groups of a held-out split: the mean within-group Spearman ρ between ``overall`` and
−PA-MPJPE, and the true error of the critic's top-1 pick — against a random pick (the group mean) and the
oracle best-of-N — for the full agent and four ablations:

``full`` · ``no_rules`` (rule memory off) · ``no_prototypes`` (prototype memory off) · ``no_reflection``
(no revise rounds) · ``evidence_only`` (no memory, no reflection: the builtin judge on evidence alone).

Memory is warmed honestly: a warm-up pass critiques groups of the *train* split with ``learn=True`` into a
fresh memory folder of its own (prototypes settled on the train labels, rule statistics from the train
rank correlations); the evaluated groups are never written. Evaluation then reads that memory frozen
(``read_only=True``), and every variant reads the same version. :func:`warm_up` is reusable (an exploration
phase can build on it).

What each ablation takes away (the builtin judge): without rules it keeps only its generic evidence score
(mean within-group rank of the measures, equal weights) — the rules hold the knowledge of which measures
matter and how much; without prototypes it loses the calibration toward the settled true-error scores of
similar train poses; without reflection its Pareto-contradiction fixes. Each ablation row also carries the
paired difference ``full_minus_spearman`` (± ``full_minus_sem``) to the full agent on the same groups.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from hmrcritic import config as hconfig
from hmrcritic.agent.state import AgentConfig
from hmrcritic.io import atomic_write_json

VARIANTS: dict[str, dict[str, Any]] = {
    "full": {},
    "no_rules": {"use_rules": False},
    "no_prototypes": {"use_prototypes": False},
    "no_reflection": {"max_reflections": 0},
    "evidence_only": {"use_memory": False, "max_reflections": 0},
}


# Rules recalled per group while evaluating (and warming up): enough to hold every starter rule that can
# fire on a group (18 starter rules, at most ~14 applicable at once), so the measurement is of the rule
# memory's knowledge rather than of which 8 a tag overlap happened to rank first.
RULES_K = 16


def warm_up(groups, memory_dir: str | Path, judge: Any = "builtin", config: AgentConfig | dict | None = None,
            workdir: str | Path | None = None, reset: bool = True, progress=None):
    """Critique labelled groups with ``learn=True`` into the memory at ``memory_dir`` (reset to the starter
    rules first unless ``reset=False``). Returns the writable :class:`MemoryStore`."""
    from hmrcritic.agent.api import critique_group
    from hmrcritic.agent.graph import open_checkpointer
    from hmrcritic.memory.store import MemoryStore

    memory_dir = Path(memory_dir)
    workdir = Path(workdir) if workdir is not None else memory_dir.parent
    store = MemoryStore(path=memory_dir)
    if reset:
        store.reset(seed_starter=True)
    base = config if isinstance(config, AgentConfig) else AgentConfig.model_validate(config or {})
    update = {"learn": True, "use_memory": True, "render": False, "memory_dir": str(memory_dir)}
    if config is None:
        update["rules_k"] = RULES_K
    cfg = base.model_copy(update=update)
    saver = open_checkpointer(workdir / "warmup.sqlite")
    for i, g in enumerate(groups):
        critique_group(g.sample, g.hypotheses, judge=judge, memory=store, config=cfg,
                       group_id=f"warmup/{g.group_id}", true_errors_mm=g.errors_mm, checkpointer=saver,
                       run_dir=workdir / "groups" / "warmup" / g.group_id, fresh=True)
        if progress is not None:
            progress("warm-up", i + 1, len(groups))
    return store


def _code_digest() -> str:
    """Hash of the agent's scoring code, so a cached evaluation is never reused after the code changed."""
    h = hashlib.sha256()
    here = Path(__file__).parent
    for name in ("judges.py", "nodes.py", "evidence.py", "groups.py", "prior.py", "graph.py"):
        h.update((here / name).read_bytes())
    h.update((here.parent / "memory" / "starter_rules.py").read_bytes())
    return h.hexdigest()[:12]


def _key(**settings) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:12]


def evaluate_critic(
    split: str = "test",
    num_groups: int = 20,
    num_generations: int = 16,
    warmup_split: str = "train",
    warmup_groups: int = 40,
    seed: int = 0,
    source: str = "auto",
    judge: Any = "builtin",
    max_reflections: int = 2,
    variants: list[str] | None = None,
    workdir: str | Path | None = None,
    progress=None,
    rules_k: int = RULES_K,
) -> dict[str, Any]:
    """Warm up a memory on ``warmup_split``, then score ``num_groups`` groups of ``split`` with each variant.

    Returns the ``--json`` payload: ``rows`` (variant, spearman, top1_pa_mpjpe_mm, …),
    ``random_pa_mpjpe_mm``, ``oracle_pa_mpjpe_mm``, ``num_groups`` and provenance (source, memory version).
    Work folders are keyed by the settings, so re-running the same evaluation reuses finished groups.
    """
    from hmrcritic.agent.api import critique_group
    from hmrcritic.agent.graph import open_checkpointer
    from hmrcritic.agent.groups import make_groups
    from hmrcritic.errors import InputError
    from hmrcritic.hmr.metrics import spearman
    from hmrcritic.memory.store import MemoryStore

    if split == warmup_split:
        raise InputError(f"evaluate-critic: the evaluated split ({split}) must differ from the warm-up split")
    variants = list(variants or VARIANTS)
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise InputError(f"unknown variant(s) {unknown}; choose from {list(VARIANTS)}")
    judge_name = judge if isinstance(judge, str) else getattr(judge, "name", "custom")
    key = _key(split=split, n=num_groups, g=num_generations, ws=warmup_split, wg=warmup_groups, seed=seed,
               source=source, judge=judge_name, r=max_reflections, k=rules_k, code=_code_digest())
    workdir = Path(workdir) if workdir is not None else hconfig.runs_dir() / "evaluate" / key
    workdir.mkdir(parents=True, exist_ok=True)
    memory_dir = workdir / "memory"
    marker = workdir / "warmup_done.json"

    eval_groups, used = make_groups(split, num_groups, num_generations, seed=seed, source=source)
    if progress is not None:
        progress("groups", len(eval_groups), len(eval_groups))
    if not marker.exists() and warmup_groups > 0:
        warm, _ = make_groups(warmup_split, warmup_groups, num_generations, seed=seed + 1, source=used)
        warm_up(warm, memory_dir, judge=judge, config={"rules_k": rules_k}, workdir=workdir, progress=progress)
        atomic_write_json(marker, {"groups": len(warm), "source": used})
    frozen = MemoryStore(path=memory_dir, read_only=True) if warmup_groups > 0 else None
    memory_version = frozen.version() if frozen is not None else "none"

    saver = open_checkpointer(workdir / "eval.sqlite")
    errors = np.stack([g.errors_mm for g in eval_groups])  # (G,N)
    rows = []
    per_group: dict[str, np.ndarray] = {}
    for variant in variants:
        cfg = AgentConfig(judge=judge_name, render=False, learn=False, max_reflections=max_reflections,
                          memory_dir=str(memory_dir), rules_k=rules_k)
        cfg = cfg.model_copy(update=VARIANTS[variant])
        if frozen is None:
            cfg = cfg.model_copy(update={"use_memory": False})
        overall, revised = [], 0
        for i, g in enumerate(eval_groups):
            res = critique_group(g.sample, g.hypotheses, judge=judge, memory=frozen, config=cfg,
                                 group_id=f"{variant}/{g.group_id}", checkpointer=saver,
                                 run_dir=workdir / "groups" / variant / g.group_id)
            overall.append(res.overall)
            revised += int(len(res.reflections) > 1)
            if progress is not None:
                progress(variant, i + 1, len(eval_groups))
        scores = np.asarray(overall, dtype=np.float64)
        rho = spearman(scores, -errors).double().numpy()
        rho = np.where(np.isfinite(rho), rho, 0.0)  # a constant critique carries no ranking: ρ = 0
        top1 = errors[np.arange(len(errors)), _argmax_first(scores)]
        per_group[variant] = rho
        rows.append({
            "variant": variant,
            "spearman": float(rho.mean()),
            "top1_pa_mpjpe_mm": float(top1.mean()),
            "spearman_sem": float(rho.std(ddof=1) / math.sqrt(len(rho))) if len(rho) > 1 else 0.0,
            "revised_groups": revised,
        })
    _paired_deltas(rows, per_group)
    return {
        "rows": rows,
        "random_pa_mpjpe_mm": float(errors.mean()),
        "oracle_pa_mpjpe_mm": float(errors.min(axis=1).mean()),
        "num_groups": len(eval_groups),
        "num_generations": int(errors.shape[1]),
        "split": split,
        "warmup_split": warmup_split,
        "warmup_groups": warmup_groups,
        "group_source": used,
        "memory_version": memory_version,
        "judge": judge_name,
        "workdir": str(workdir),
    }


def _paired_deltas(rows: list[dict], per_group: dict[str, np.ndarray]) -> None:
    """Add ``full_minus_spearman`` and its paired standard error to every ablation row.

    The variants score the same groups, so the difference of their per-group ρ is what says whether a
    component matters; its paired SE is much smaller than either variant's own SE (group difficulty cancels).
    """
    full = per_group.get("full")
    if full is None:
        return
    for r in rows:
        if r["variant"] == "full":
            continue
        d = full - per_group[r["variant"]]
        r["full_minus_spearman"] = float(d.mean())
        r["full_minus_sem"] = float(d.std(ddof=1) / math.sqrt(len(d))) if len(d) > 1 else 0.0


def _argmax_first(scores: np.ndarray) -> np.ndarray:
    """Index of the highest score per row; ties → lowest index (as hmr.metrics.select_top1)."""
    s = np.nan_to_num(scores, nan=-np.inf)
    return s.argmax(axis=1)


def format_table(payload: dict[str, Any]) -> str:
    lines = [f"critic evaluation on {payload['num_groups']} {payload['split']} groups of "
             f"{payload['num_generations']} ({payload['group_source']} hypotheses; memory warmed on "
             f"{payload['warmup_groups']} {payload['warmup_split']} groups, version {payload['memory_version']})",
             f"{'variant':<15}{'spearman':>10}{'± sem':>8}{'top-1 PA-MPJPE':>17}{'revised':>9}"
             f"{'full − this (paired sem)':>28}"]
    for r in payload["rows"]:
        delta = (f"{r['full_minus_spearman']:>+20.4f} ({r['full_minus_sem']:.4f})"
                 if "full_minus_spearman" in r else "")
        lines.append(f"{r['variant']:<15}{r['spearman']:>10.3f}{r['spearman_sem']:>8.3f}"
                     f"{r['top1_pa_mpjpe_mm']:>14.1f} mm{r['revised_groups']:>9}{delta}")
    lines.append(f"{'random pick':<33}{payload['random_pa_mpjpe_mm']:>14.1f} mm")
    lines.append(f"{'oracle best-of-N':<33}{payload['oracle_pa_mpjpe_mm']:>14.1f} mm")
    return "\n".join(lines)
