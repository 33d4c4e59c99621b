"""The graph's nodes: plain functions ``(state, config) -> dict`` (the state update), testable alone.

``render`` → ``recall`` → ``critique`` → ``reflect`` ⟲ (revise: back to ``critique``, at most
``max_reflections`` times) → ``memory_write``. Arrays are read from and written to the group's run folder;
what goes back into the state is small and plain (see :mod:`hmrcritic.agent.state`).

Heavy shared objects (body model, renderer, memory store, judge) are resolved per process from the settings
in ``config["configurable"]["agent"]``, never stored in the state. A test or a caller may inject a judge
or a memory store through ``config["configurable"]["judge"]`` / ``["memory"]`` (objects are not
checkpointed; only the plain settings are).
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
from langchain_core.runnables import RunnableConfig

from hmrcritic.agent.judges import (
    ONE_POINT_OF_TEN,
    POINT_DECAY,
    JudgeContext,
    PrototypeHit,
    ReflectionIssue,
    apply_rules,
    dominance,
    dominance_measures,
    hard_points,
    judge_name,
    make_judge,
    of_ten,
    prototype_consensus,
    settled_overall,
)
from hmrcritic.agent.schema import AXES, GroupCritique
from hmrcritic.agent.state import AgentConfig, AgentState, canonical_judge, pack_prototype_hits, prototype_hits
from hmrcritic.errors import InputError, InvalidCritiqueError, JudgeError
from hmrcritic.io import atomic_save_npz, atomic_write_json
from hmrcritic.memory.schema import Prototype, Rule, ScoreCalibration
from hmrcritic.redact import scrub

NODE_NAMES = ("render", "recall", "critique", "reflect", "memory_write")

_LOCK = threading.Lock()
_MEMORIES: dict[tuple, Any] = {}  # (memory_dir, chroma_url) → MemoryStore, most recently used last
MEMORIES_KEPT = 8  # stores kept per process: a caller naming many folders kept every one open for good
_JUDGES: dict[tuple, Any] = {}


# ------------------------------------------------------------------------------------------------ resources
def get_memory(cfg: AgentConfig, config: dict | None = None):
    """The memory store for these settings (injected object first, else one per (path, url) and process)."""
    injected = ((config or {}).get("configurable") or {}).get("memory")
    if injected is not None:
        return injected
    # keyed by the folder the settings resolve to now: with no folder named (no HMRCRITIC_MEMORY) the key was
    # (None, url), so after HMRCRITIC_HOME changed in a process (a notebook, a service with a home per tenant)
    # critiques recalled from and learned into the first home's memory
    from hmrcritic.config import memory_dir
    from hmrcritic.memory.store import MemoryStore

    folder = cfg.memory_dir if cfg.memory_dir is not None or cfg.chroma_url else str(memory_dir())
    key = (folder, cfg.chroma_url)
    with _LOCK:
        store = _MEMORIES.pop(key, None)
        if store is None:
            store = MemoryStore(path=cfg.memory_dir, chroma_url=cfg.chroma_url)
        _MEMORIES[key] = store  # (re)inserted last: the least recently used goes first
        while len(_MEMORIES) > MEMORIES_KEPT:
            # dropped, not closed: a critique still using it keeps it; collected, it lets its folder go
            _MEMORIES.pop(next(iter(_MEMORIES)))
        return store


def judge_in_use(cfg: AgentConfig, config: dict | None = None) -> str:
    """The name of the judge :func:`get_judge` gives (an object handed in: its ``name``), without building one."""
    injected = ((config or {}).get("configurable") or {}).get("judge")
    if injected is not None and not isinstance(injected, str):
        # a VLMJudge (or a subclass, whatever its name) is a VLM; another object by its name, if it is a string
        vlm = sys.modules.get("hmrcritic.agent.vlm")  # loaded whenever a VLMJudge exists; never imported here
        if vlm is not None and isinstance(injected, vlm.VLMJudge):
            return "vlm"
        name = judge_name(injected)
        return canonical_judge(name) if isinstance(name, str) else "custom"
    return canonical_judge(injected) if injected else canonical_judge(cfg.judge)


def get_judge(cfg: AgentConfig, config: dict | None = None):
    injected = ((config or {}).get("configurable") or {}).get("judge")
    if injected is not None and not isinstance(injected, str):
        return injected
    name = canonical_judge(injected) if injected else cfg.judge  # make_judge's reading: "VLM" is "vlm"
    key = (name, cfg.proto_weight, cfg.proto_level, _endpoint_key() if name == "vlm" else None)
    with _LOCK:
        if key not in _JUDGES:
            kwargs = {"proto_weight": cfg.proto_weight, "proto_level": cfg.proto_level} if name == "builtin" else {}
            _JUDGES[key] = make_judge(name, **kwargs)
        return _JUDGES[key]


def _endpoint_key() -> tuple:
    """The VLM judge is built from the environment: a process that changes HMRCRITIC_VLM_MODEL, the endpoint
    or the key (a notebook, a long-lived service) gets a judge for the new ones, not the first one cached.
    The key enters only as a hash."""
    import hashlib
    from dataclasses import astuple

    from hmrcritic.config import JudgeSettings, api_key

    return (*astuple(JudgeSettings()), hashlib.sha256((api_key() or "").encode()).hexdigest())


def load_inputs(run_dir: str | Path) -> dict[str, np.ndarray]:
    path = Path(run_dir) / "inputs.npz"
    if not path.exists():
        raise InputError(f"group inputs missing: {path}")
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def _bodies_file(run_dir: str | Path) -> Path:
    """The render node's ``bodies.npz``, or an :class:`InputError` naming it when it is gone (the run folder
    removed or emptied by hand while the critique ran, or between a crash and its resume): recall and memory_write
    failed with a bare FileNotFoundError, and reflect silently skipped the neighbour check."""
    path = Path(run_dir) / "bodies.npz"
    if not path.is_file():
        raise InputError(f"group arrays missing: {path} (the run folder changed while the critique ran); "
                         "critique the group again with --fresh (fresh=True)")
    return path


def load_pairwise(run_dir: str | Path) -> np.ndarray | None:
    """The group's (N, N) pairwise Procrustes distances (mm) saved by the render node (None for an older run,
    whose bodies.npz lacks them; a missing bodies.npz is an InputError)."""
    with np.load(_bodies_file(run_dir)) as z:
        return np.asarray(z["pairwise_pa_mm"], np.float64) if "pairwise_pa_mm" in z.files else None


def load_bodies(run_dir: str | Path) -> dict[str, np.ndarray]:
    with np.load(_bodies_file(run_dir), allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def _body_forward(inputs: dict[str, np.ndarray], vertices: bool = False):
    import torch

    from hmrcritic.hmr.body import load_body_model

    body = load_body_model()
    t = {k: torch.as_tensor(inputs[k], dtype=torch.float32) for k in ("global_orient", "body_pose", "betas", "transl")}
    with torch.no_grad():
        out = body(t["global_orient"], t["body_pose"], t["betas"], t["transl"])
        coco = body.coco17(out)
    res = {"joints": out.joints.numpy(), "coco17": coco.numpy()}
    if vertices:
        res["vertices"] = out.vertices.numpy()
    return body, res


# ---------------------------------------------------------------------------------------------------- nodes
def grid_columns(n: int) -> int:
    """Cells per row of a group's grids: 4 up to 16 hypotheses, then about square. Four columns made N = 64 a
    16-row strip (1044 × 4164 px) that a VLM image limit (``HMRCRITIC_VLM_IMAGE_MAX_SIDE``, or a server's own)
    shrank to 63-px tiles; 8 × 8 keeps them twice as large."""
    return max(4, math.ceil(math.sqrt(n)))


def render(state: AgentState, config: RunnableConfig = None) -> dict:
    """Body-model forward for the group, evidence measures, and (when enabled) the overlay/side grids."""
    from hmrcritic.agent.evidence import GroupInputs, compute_evidence, evidence_tags, pairwise_pa_mm

    cfg = AgentConfig.from_config(config)
    run_dir = Path(state["run_dir"])
    inputs = load_inputs(run_dir)
    mask = None
    mask_path = str(inputs["mask_path"]) if "mask_path" in inputs and str(inputs["mask_path"]) else None
    has_ground = "ground_normal" in inputs and "ground_offset" in inputs
    # the ground measures read the lowest *vertex*: with joints alone (render off) the same body floated
    # ~2 cm higher (the ankle joint sits above the sole), so a render flag changed the evidence
    need_vertices = cfg.render or mask_path is not None or has_ground
    body, bodies = _body_forward(inputs, vertices=need_vertices)
    W, H = (int(v) for v in inputs["image_size"])
    renders: dict[str, str] = {}
    pred_masks = None
    if mask_path is not None:
        mask = _read_mask(mask_path, (W, H))
    if cfg.render or mask is not None:
        from hmrcritic.hmr.render import get_renderer, save_png

        renderer = get_renderer()
        if mask is not None:
            pred_masks = np.stack([renderer.mask(v, body.faces, inputs["K"], (W, H)) for v in bodies["vertices"]])
        if cfg.render:
            image = _read_image(state.get("image_path"))
            grid, side = renderer.group_grids(image, bodies["vertices"], body.faces, inputs["K"],
                                              cols=grid_columns(len(bodies["vertices"])), image_size=(W, H))
            renders["overlay_grid"] = str(save_png(run_dir / "overlay_grid.png", grid))
            renders["side_grid"] = str(save_png(run_dir / "side_grid.png", side))
    ground = (inputs["ground_normal"], float(inputs["ground_offset"])) if has_ground else None
    gi = GroupInputs(
        joints=bodies["joints"], coco17=bodies["coco17"], body_pose=inputs["body_pose"],
        keypoints=inputs["keypoints"], K=inputs["K"], image_size=(W, H),
        joint_conf=inputs.get("joint_conf"), mask=mask, pred_masks=pred_masks, ground=ground,
        vertices=bodies.get("vertices") if ground is not None else None,
        pairwise_pa_mm=pairwise_pa_mm(bodies["joints"]).numpy(),
    )
    evidence = compute_evidence(gi)
    atomic_save_npz(run_dir / "bodies.npz", joints=bodies["joints"], coco17=bodies["coco17"],
                    pairwise_pa_mm=gi.pairwise_pa_mm)
    atomic_save_npz(run_dir / "evidence.npz", **evidence)
    return {
        "evidence": {k: [float(x) for x in v] for k, v in evidence.items()},
        "tags": evidence_tags(evidence, inputs["keypoints"], (W, H)),
        "renders": renders,
        "num_hypotheses": int(len(inputs["body_pose"])),
    }


def recall(state: AgentState, config: RunnableConfig = None) -> dict:
    """Rules for this group's evidence tags (Ψ: tag overlap + success + UCB) and, per hypothesis, the
    nearest prototypes by pose embedding. Nothing is recalled when memory (or that part of it) is off."""
    cfg = AgentConfig.from_config(config)
    if not cfg.use_memory or not (cfg.use_rules or cfg.use_prototypes):
        return {"rules": [], "prototype_recall": pack_prototype_hits([]), "memory_version": "none",
                "calibration": None}
    memory = get_memory(cfg, config)
    rules: list[dict] = []
    protos: list[list[dict]] = []
    if cfg.use_rules and cfg.rules_k > 0:
        # Tags only (no text query): the evidence summary is numbers, which a sentence embedder reads
        # poorly, and skipping it keeps recall fast and free of a 3 s model load.
        # Ψ ranks the rules; a rule whose executable condition fires on no hypothesis of this group (or
        # whose measure this group lacks) cannot change its critique, so it does not take one of the k
        # slots (an hmrcritic extension of the paper's retrieval; rules without a condition always compete).
        evidence = state.get("evidence", {}) or {}
        ranked = memory.rules.scored(state.get("tags", []), ucb_c=cfg.ucb_c)
        got = [r for r, _ in ranked if _applicable(r, evidence)][:cfg.rules_k]
        rules = [r.model_dump() for r in got]
    if cfg.use_prototypes and cfg.prototypes_k > 0 and memory.prototypes.count() > 0:
        from hmrcritic.memory.embeddings import pose_embedding

        emb = pose_embedding(load_bodies(state["run_dir"])["joints"])
        hits = memory.prototypes.query(emb, k=cfg.prototypes_k, include_embeddings=False)
        protos = [[_hit(p, s).model_dump() for p, s in row] for row in hits]
    # the calibration maps the scores of the rule set it was fitted on, so it comes with the rules
    cal = memory.calibration() if cfg.use_rules and cfg.use_calibration else None
    calibration = cal.model_dump() if cal is not None and cal.judge == cfg.judge else None
    # packed: the checkpointer stores the state after every node (state.pack_prototype_hits)
    return {"rules": rules, "prototype_recall": pack_prototype_hits(protos), "memory_version": memory.version(),
            "calibration": calibration}


def _applicable(rule: Rule, evidence: dict[str, list[float]]) -> bool:
    cond = rule.condition
    if cond is None:
        return True
    return cond.measure in evidence and any(cond.fires(float(v)) for v in evidence[cond.measure])


def _hit(p: Prototype, similarity: float) -> PrototypeHit:
    return PrototypeHit(
        proto_id=p.proto_id, similarity=float(similarity), overall=p.overall, motion_structure=p.motion_structure,
        physical_feasibility=p.physical_feasibility, image_alignment=p.image_alignment, rationale=p.rationale,
        tags=list(p.tags), source=p.source, error_mm=p.error_mm,
    )


def build_context(state: AgentState) -> JudgeContext:
    from hmrcritic.agent.evidence import MEASURES

    evidence = state.get("evidence", {})
    info = {}
    for name in evidence:
        if name in MEASURES:
            m = MEASURES[name]
            info[name] = f"{m.unit}; {'higher' if m.higher_is_worse else 'lower'} is worse; {m.description}"
    renders = state.get("renders", {}) or {}
    previous = state.get("critique") if state.get("round", 0) > 0 else None
    return JudgeContext(
        group_id=state["group_id"],
        num_hypotheses=state["num_hypotheses"],
        evidence=evidence,
        measure_info=info,
        tags=state.get("tags", []),
        rules=[Rule.model_validate(r) for r in state.get("rules", [])],
        prototypes=[[PrototypeHit.model_validate(h) for h in row] for row in prototype_hits(state)],
        image_path=state.get("image_path"),
        overlay_grid_path=renders.get("overlay_grid"),
        side_grid_path=renders.get("side_grid"),
        feedback=state.get("feedback", "") if previous else "",
        issues=[ReflectionIssue.model_validate(i) for i in state.get("issues", [])] if previous else [],
        previous=GroupCritique.model_validate(previous) if previous else None,
        round=state.get("round", 0),
        calibration=ScoreCalibration.model_validate(state["calibration"]) if state.get("calibration") else None,
    )


def critique(state: AgentState, config: RunnableConfig = None) -> dict:
    """Ask the judge; in a revise round it sees the reflect node's feedback and its previous critique."""
    cfg = AgentConfig.from_config(config)
    judge = get_judge(cfg, config)
    ctx = build_context(state)
    try:
        result = judge.critique(ctx)
    except JudgeError:
        raise
    except Exception as exc:  # a judge bug or garbage must become this group's error, not a crash of all
        # scrubbed here: the text is the group's error and, through LangGraph's record of the failed node, lands in
        # the checkpoint database; a client's or custom judge's message may quote the key
        raise JudgeError(f"group {ctx.group_id}: judge {getattr(judge, 'name', judge)!r} failed: "
                         f"{type(exc).__name__}: {scrub(str(exc))}") from exc
    if not isinstance(result, GroupCritique):
        try:
            result = GroupCritique.model_validate(result)
        except Exception as exc:  # what failed, not only the type: a dict with one score of 11 read "not a
            # GroupCritique" as if the judge had returned the wrong kind of object
            why = " ".join(str(exc).split())[:300]
            raise JudgeError(f"group {ctx.group_id}: judge returned a {type(result).__name__} that is not a valid "
                             f"GroupCritique: {why}") from exc
    update: dict[str, Any] = {"critique": result.model_dump()}
    if ctx.previous is not None:
        changes = diff_critiques(ctx.previous, result)
        reflections = [dict(r) for r in state.get("reflections", [])]
        if reflections:
            reflections[-1]["changes"] = changes
        update["reflections"] = reflections
    return update


def diff_critiques(before: GroupCritique, after: GroupCritique, tol: float = 1e-3) -> list[str]:
    """What a revision changed, as short lines (scores that moved, rank of the best, rules applied)."""
    b = {s.index: s for s in before.scores}
    out = []
    for s in after.scores:
        old = b.get(s.index)
        if old is None:
            out.append(f"h{s.index} added ({s.overall:.2f})")
            continue
        for field in ("overall", *AXES):
            x, y = getattr(old, field), getattr(s, field)
            if abs(x - y) > tol:
                out.append(f"h{s.index} {field} {x:.2f}→{y:.2f}")
    # a revision that lost a hypothesis's score (an answer cut short) recorded no change at all
    now = {s.index for s in after.scores}
    out += [f"h{i} removed (was {b[i].overall:.2f})" for i in sorted(set(b) - now)]
    new_rules = sorted(set(after.rules_applied) - set(before.rules_applied))
    if new_rules:
        out.append("rules now applied: " + ", ".join(new_rules))
    # the top of the ranking as the result gives it (ties to the lower index): by list order, a judge that listed
    # tied scores in another order in its revision was recorded as having changed its best hypothesis
    best_b = min(before.scores, key=lambda s: (-s.overall, s.index)).index if before.scores else None
    best_a = min(after.scores, key=lambda s: (-s.overall, s.index)).index if after.scores else None
    if best_b != best_a:
        out.append(f"top-1 h{best_b}→h{best_a}")
    return out


# ------------------------------------------------------------------------------------------------- reflect
PROTO_SIMILARITY = 0.97
PROTO_DISAGREEMENT = 2.0  # points on the 0-10 scale


def check_critique(ctx: JudgeContext, crit: dict | GroupCritique | None,
                   pairwise_mm: np.ndarray | None = None, judge: str = "builtin") -> list[ReflectionIssue]:
    """The revise checks: invalid values, rankings that contradict strong evidence, disagreement with a
    confident prototype consensus, fired rules that were not applied, and (given the group's pairwise
    Procrustes distances) near-identical poses scored apart (:func:`neighbour_issues`). Deterministic.

    ``judge`` "vlm" (a judge that reads the rules and deducts by hand) is held further: a rule it cites must
    also show in the score, and the neighbour check asks only about poses within ``2σ`` and reads a 0 as 0.1.
    A VLM walk-through found it sent back on nearly every group, the nearest pose 60–135 mm away (σ = 20 mm)
    called "near-identical", one hypothesis at 0 (log 1e-6) pulling its neighbours' targets to 0.01, and a
    rule cited with nothing taken off passing. Other judges (the built-in one deducts every rule it cites)
    are checked as before."""
    vlm = canonical_judge(judge) == "vlm"
    n = ctx.num_hypotheses
    issues: list[ReflectionIssue] = []
    try:
        c = crit if isinstance(crit, GroupCritique) else GroupCritique.model_validate(crit)
    except Exception as exc:
        return [ReflectionIssue(kind="invalid", detail=f"critique does not validate: {exc}"[:300])]
    idx = [s.index for s in c.scores]
    if sorted(idx) != list(range(n)):
        missing = sorted(set(range(n)) - set(idx))
        dup = sorted({i for i in idx if idx.count(i) > 1})
        return [ReflectionIssue(kind="invalid", indices=missing,
                                detail=f"expected one score per index 0..{n - 1}; missing {missing}, "
                                       f"duplicated {dup}, extra {sorted(set(idx) - set(range(n)))}")]
    bad = [s.index for s in c.scores
           if not all(math.isfinite(getattr(s, f)) and 0 <= getattr(s, f) <= 10 for f in ("overall", *AXES))]
    if bad:
        return [ReflectionIssue(kind="invalid", indices=bad, detail="scores must be finite and in [0, 10]")]
    overall = np.array([s.overall for s in sorted(c.scores, key=lambda s: s.index)])

    # fired rules that the critique did not apply (for a VLM: nor took off, cited or not)
    _, _, fired = apply_rules(ctx.rules, ctx.evidence, n)
    by_id = {r.rule_id: r for r in ctx.rules}
    for rid, hits in fired.items():
        cited = rid in c.rules_applied
        if cited and not vlm:  # the built-in judge deducts every rule it cites
            continue
        # held to what the rule takes off a 10 where it fires (the amount the VLM prompt shows, as the built-in
        # judge deducts): the raw points were taken off the 0–10 score ("10 − 8 + 0.5"), so a hypothesis an uncited
        # 8-point rule fires on had to score 2.5 or under, where the rule itself is worth 2.1 of 10. For a VLM the
        # slack is half the amount, at most 0.5: a flat 0.5 let every rule worth under 0.5 of 10 (1.7 points) pass
        # unapplied (other judges keep the flat 0.5: their checks are unchanged)
        rule = by_id[rid]
        off = of_ten(rule, rule.condition.deduction(ctx.evidence[rule.condition.measure]))
        slack = np.minimum(0.5, off / 2) if vlm else np.full_like(off, 0.5)
        not_low = [i for i in hits if off[i] >= ONE_POINT_OF_TEN and overall[i] > 10.0 - off[i] + slack[i]]
        if not_low:
            amount = _amounts(off[not_low])
            detail = (f"rule {rid} is cited but {_hs(not_low)} kept a score above 10 less its {amount} of 10"
                      if cited else f"rule {rid} holds for {_hs(not_low)} but was not applied: it takes {amount} "
                                    "of 10")
            issues.append(ReflectionIssue(kind="rule", indices=not_low, rule_id=rid, detail=detail))

    # confident prototype consensus far from the score
    for i in range(min(n, len(ctx.prototypes))):
        hits = ctx.prototypes[i]
        cons = prototype_consensus(hits)
        if cons is None or max(h.similarity for h in hits) < PROTO_SIMILARITY:
            continue
        value, _ = cons
        if abs(overall[i] - value) > PROTO_DISAGREEMENT:
            issues.append(ReflectionIssue(kind="prototype", indices=[i], target=round(value, 3),
                                          detail=f"h{i} scored {overall[i]:.1f} but very similar past poses "
                                                 f"settled at {value:.1f}"))

    # rankings that contradict the evidence: j dominates i (no worse on every measure that a fired rule
    # reads — every measure when no rule fired — and better on one)
    dominated = dominance(ctx.rules, ctx.evidence, n)
    if dominated is not None:
        contra = dominated & (overall[:, None] > overall[None, :])
        read = sorted(dominance_measures(ctx.rules, fired))
        read = f"every measure the rules that hold read ({', '.join(read)})" if read else "every evidence measure"
        for i, j in zip(*np.nonzero(contra), strict=True):
            # the measures compared, named: "every evidence measure" was false where rules fired (only the
            # measures they read are compared), and a VLM could see h{i} better on another one in the table
            issues.append(ReflectionIssue(kind="contradiction", indices=[int(i), int(j)],
                                          detail=f"h{i} ranked above h{j} although h{j} is at least as good "
                                                 f"on {read} and better on some"))
    if pairwise_mm is not None:
        # hard constraints applied by the critique are kept out of the smoothing: feasibility is not
        # Lipschitz in the pose the way the 3D error is, so a neighbour must not average a deduction away
        applied = [r for r in ctx.rules if r.rule_id in c.rules_applied]
        # on a calibrated scale log-score gaps are ``slope`` times the judge's own: the same check, rescaled
        scale = ctx.calibration.slope if ctx.calibration is not None else 1.0
        issues += neighbour_issues(np.maximum(overall, VLM_SCORE_FLOOR) if vlm else overall, pairwise_mm,
                                   tolerance=NEIGHBOUR_TOLERANCE * scale,
                                   offset=scale * POINT_DECAY * hard_points(applied, ctx.evidence, n),
                                   max_nearest_mm=2 * NEIGHBOUR_SIGMA_MM if vlm else None, shown=overall)
    return issues


# A VLM's 0 read as this in the neighbour check: log 1e-6 (the built-in judge never gives 0) outweighed every
# other neighbour, so a hypothesis next to one scored 0 was asked to drop to ~0.01.
VLM_SCORE_FLOOR = 0.1


def _hs(indices) -> str:
    return ", ".join(f"h{int(i)}" for i in indices)


def _amounts(values) -> str:
    lo, hi = float(np.min(values)), float(np.max(values))
    return f"{lo:.2f}" if hi - lo < 0.005 else f"{lo:.2f}–{hi:.2f}"


# Neighbour consistency: kernel width (mm of Procrustes-aligned joint distance) and the log-score gap to the
# neighbour-implied score above which a hypothesis is flagged. σ and the judge's halfway move were picked on
# train groups (σ ∈ {10, 20, 40} mm × move ∈ {0.3, 0.5, 0.7}); the tolerance only skips negligible changes.
# Its effect on held-out groups is the `no_revise` row of `hmrcritic evaluate-critic`.
NEIGHBOUR_SIGMA_MM = 20.0
NEIGHBOUR_TOLERANCE = 0.05


def neighbour_targets(overall: np.ndarray, pairwise_mm: np.ndarray, sigma_mm: float = NEIGHBOUR_SIGMA_MM,
                      offset: np.ndarray | None = None) -> np.ndarray:
    """Per hypothesis, the score its pose-neighbours imply: the kernel-weighted (``exp(−d / σ)``, itself
    excluded) geometric mean of the other hypotheses' scores. ``offset`` (log units per hypothesis, e.g. the
    hard constraints' deductions) is given back before averaging and taken off again after, so it passes
    through unchanged.

    Why it is a consistency check: the true error is close to 1-Lipschitz in the pose — two hypotheses d mm
    apart (Procrustes-aligned) differ in PA-MPJPE by about d at most — so near-identical poses deserve
    near-identical scores, and a score far from its neighbours' is more likely noise in one measure than
    knowledge. Averaging over the neighbours pools their evidence. (Not exactly 1-Lipschitz: d is a mean over
    SMPL's 24 joints, PA-MPJPE over lsp14 with its own alignment, so a head moved far can change PA-MPJPE by
    more than d. σ was picked on measured groups, not derived from the bound.)"""
    off = np.zeros(len(overall)) if offset is None else np.asarray(offset, np.float64)
    s = np.log(np.clip(np.asarray(overall, np.float64), 1e-6, None)) + off
    P = np.asarray(pairwise_mm, np.float64)
    W = np.exp(-P / float(sigma_mm))
    np.fill_diagonal(W, 0.0)
    den = W.sum(1)
    m = np.where(den > 0, (W @ s) / np.maximum(den, 1e-300), s)
    return np.exp(m - off)


def neighbour_issues(overall: np.ndarray, pairwise_mm: np.ndarray, sigma_mm: float = NEIGHBOUR_SIGMA_MM,
                     tolerance: float = NEIGHBOUR_TOLERANCE, offset: np.ndarray | None = None,
                     max_nearest_mm: float | None = None, shown: np.ndarray | None = None
                     ) -> list[ReflectionIssue]:
    """One ``neighbours`` issue per hypothesis whose score is more than ``tolerance`` (log units, ≈ a 5 %
    ratio) from what its pose-neighbours imply (:func:`neighbour_targets`); the target goes with it.
    ``max_nearest_mm``: only hypotheses with another pose at most that far (None: every one); ``shown``: the
    scores the detail quotes (the judge's own, where ``overall`` was floored for the check)."""
    shown = overall if shown is None else shown
    n = len(overall)
    P = np.asarray(pairwise_mm, np.float64)
    # The kernel weights are normalised, so the nearest poses set the target even when none is near. With two
    # hypotheses each one's target is the other's score: moving both toward it would tie every pair (an export
    # of N = 2 groups had no preference left). Three or more are needed for "neighbours" to mean anything.
    if n < 3 or P.shape != (n, n):
        return []
    target = neighbour_targets(overall, P, sigma_mm, offset)
    gap = np.abs(np.log(np.clip(overall, 1e-6, None)) - np.log(np.clip(target, 1e-6, None)))
    out = []
    for i in np.nonzero(gap > tolerance)[0]:
        near = [int(j) for j in np.argsort(P[i]) if j != i][:3]
        if max_nearest_mm is not None and P[i, near[0]] > max_nearest_mm:
            continue
        out.append(ReflectionIssue(
            kind="neighbours", indices=[int(i)], target=float(target[i]),
            detail=f"h{i} scored {shown[i]:.2f} but its nearest poses (h{', h'.join(map(str, near))}; "
                   f"{P[i, near[0]]:.0f}–{P[i, near[-1]]:.0f} mm apart) imply {target[i]:.2f}: poses this "
                   "close should score alike"))
    return out


def feedback_text(issues: list[ReflectionIssue]) -> str:
    if not issues:
        return ""
    lines = ["Revise your critique; a consistency check found:"]
    lines += [f"- [{i.kind}] {i.detail}" for i in issues[:20]]
    if len(issues) > 20:
        lines.append(f"- … and {len(issues) - 20} more of the same kinds")
    return "\n".join(lines)


def reflect(state: AgentState, config: RunnableConfig = None) -> dict:
    """Check the critique; when something is wrong and rounds are left, ask for a revision."""
    cfg = AgentConfig.from_config(config)
    ctx = build_context({**state, "round": 0})
    issues = check_critique(ctx, state.get("critique"), pairwise_mm=load_pairwise(state["run_dir"]),
                            judge=judge_in_use(cfg, config))
    rnd = int(state.get("round", 0))
    reflections = [dict(r) for r in state.get("reflections", [])]
    revise = bool(issues) and rnd < cfg.max_reflections
    reflections.append({
        "round": rnd,
        "issues": [i.model_dump() for i in issues],
        "action": "revise" if revise else ("accept" if not issues else "accept (no rounds left)"),
        "changes": [],
    })
    update: dict[str, Any] = {"reflections": reflections, "issues": [i.model_dump() for i in issues]}
    if revise:
        update["round"] = rnd + 1
        update["feedback"] = feedback_text(issues)
    return update


def route_after_reflect(state: AgentState, config: RunnableConfig = None) -> str:
    last = (state.get("reflections") or [{}])[-1]
    return "critique" if last.get("action") == "revise" else "memory_write"


# -------------------------------------------------------------------------------------------- memory_write
def memory_write(state: AgentState, config: RunnableConfig = None) -> dict:
    """When learning: one batch of prototypes (pose embeddings + settled scores) and the rule statistics.

    Runs only after the critique is final. Labelled groups (warm-up/exploration) settle prototypes on the
    true error and count a rule use as a success by :func:`rule_outcomes` (the group's ranking is better with
    the rule's points than with them given back; a rule that reorders nothing succeeds when ρ ≥ τ); an
    unlabelled group writes its final critique's scores and leaves the rule statistics alone (success
    cannot be judged without labels).
    """
    cfg = AgentConfig.from_config(config)
    invalid = [i for i in state.get("issues", []) if i.get("kind") == "invalid"]
    if invalid:  # the revise rounds ran out on a critique that still misses or duplicates hypotheses: fail the
        # group here, before anything is written (it reached critique.json, memory, scores and exports, and
        # exploration's Spearman raised on the length mismatch)
        raise InvalidCritiqueError(f"group {state['group_id']}: the judge's final critique is still invalid after "
                         f"{int(state.get('round', 0))} revision(s): {invalid[0].get('detail', '')}"[:400])
    crit = GroupCritique.model_validate(state["critique"])
    run_dir = Path(state["run_dir"])
    # the folder must still be there: writing critique.json made a removed one anew, holding that file alone,
    # and a critique without learning finished "done" over a run folder whose arrays were gone
    _bodies_file(run_dir)
    atomic_write_json(run_dir / "critique.json", crit.model_dump())
    if not cfg.learn or not cfg.use_memory:
        return {"memory_written": {"prototypes": 0, "rules_recorded": 0}, "done": True}
    from hmrcritic.memory.embeddings import pose_embedding

    memory = get_memory(cfg, config)
    inputs = load_inputs(run_dir)
    emb = pose_embedding(load_bodies(run_dir)["joints"])
    scores = sorted(crit.scores, key=lambda s: s.index)
    overall = np.array([s.overall for s in scores])
    labelled = "true_error_mm" in inputs
    err = inputs["true_error_mm"].astype(np.float64) if labelled else None
    if labelled and cfg.settle_with_labels:
        # settled on the true error, and on the hard constraints (an impossible pose is not good however
        # close its joints are), so a prototype never argues a hard deduction away
        rules = [Rule.model_validate(r) for r in state.get("rules", [])]
        settled = settled_overall(err) * np.exp(-POINT_DECAY * hard_points(rules, state.get("evidence", {}), len(err)))
    else:
        settled = overall
    gid = state["group_id"]
    protos = [
        Prototype(
            proto_id=f"{gid}#h{s.index}", embedding=[float(x) for x in emb[s.index]],
            overall=float(np.clip(settled[s.index], 0, 10)), motion_structure=s.motion_structure,
            physical_feasibility=s.physical_feasibility, image_alignment=s.image_alignment,
            rationale=s.rationale + (f" True PA-MPJPE {err[s.index]:.0f} mm." if labelled else ""),
            tags=list(state.get("tags", [])), source=f"{gid}#h{s.index}",
            error_mm=float(err[s.index]) if labelled else None,
        )
        for s in scores
    ]
    # Crash-safe like exploration's plan/apply: the rule statistics this group sets are computed once as
    # absolute records and kept in the run folder before they are written, and marked applied after. A run
    # killed after writing but before its checkpoint re-runs this node: it finds the plan applied (or re-applies
    # the same absolute records) instead of counting every rule use a second time.
    ledger = run_dir / MEMORY_WRITE_FILE
    key = f"{gid}|{state.get('run_id', '')}"
    batch = getattr(memory, "_write", None)  # the store's re-entrant write lock: both writes, one batch
    with batch() if batch is not None else contextlib.nullcontext():
        plan = _read_ledger(ledger, key)
        if plan is None:
            rules_after: dict[str, Rule] = {}
            base: dict[str, list[int]] = {}  # the statistics the plan counts from
            success = None
            if labelled and crit.rules_applied:
                ok, bad = rule_outcomes(crit, state, err, cfg.success_tau)
                # a recalled rule gone since (the memory reset while the critique ran, or between a crash and its
                # resume) has nothing to count on: get's "unknown rule id" failed the group on every re-run
                rules_after = _rules_now(memory, list(dict.fromkeys(ok + bad)))
                ok, bad = [i for i in ok if i in rules_after], [i for i in bad if i in rules_after]
                base = {rid: [r.n_used, r.n_success] for rid, r in rules_after.items()}
                for rid, won in [(i, True) for i in ok] + [(i, False) for i in bad]:
                    rules_after[rid].n_used += 1
                    rules_after[rid].n_success += int(won)
                success = {"succeeded": len(ok), "failed": len(bad)}
                recorded = len(ok) + len(bad)
            else:
                recorded = 0
            plan = {"key": key, "applied": False, "rules": [r.model_dump(mode="json") for r in rules_after.values()],
                    "base": base,
                    "written": {"prototypes": len(protos), "rules_recorded": recorded, "success": success}}
            atomic_write_json(ledger, plan)
        if not plan["applied"]:
            memory.prototypes.add(protos)  # by fixed ids: a second write replaces the first
            if plan["rules"]:
                memory.rules.update(_planned_rules(memory, plan))
            atomic_write_json(ledger, {**plan, "applied": True})
    return {
        "memory_written": plan["written"],
        "memory_version": memory.version(),
        "done": True,
    }


MEMORY_WRITE_FILE = "memory_write.json"


def _planned_rules(memory, plan: dict) -> list[Rule]:
    """The plan's rule uses counted onto the rules as they are now.

    Written as the plan's whole records, a plan left unapplied by a crash and resumed later (after an exploration
    or another learning critique) put back every other field and count of those rules as they were at the crash:
    a rule retired or re-counted meanwhile came back, and one deleted meanwhile (a reset) failed the group on
    every resume ("cannot update unknown rule id"). Now: a rule whose counts already equal the plan's (written,
    then killed before the ledger said so) is left alone, one that is gone is skipped, the others get the plan's
    increments on their current record. A plan of an older version (no ``base``) is written as it was.
    Only the plan's rules are read (:func:`_rules_now`)."""
    planned = [Rule.model_validate(r) for r in plan["rules"]]
    base = plan.get("base")
    if not isinstance(base, dict):
        return planned
    now = _rules_now(memory, list(dict.fromkeys(r.rule_id for r in planned if r.rule_id in base)))
    out = []
    for r in planned:
        cur = now.get(r.rule_id)
        if cur is None or r.rule_id not in base or (cur.n_used, cur.n_success) == (r.n_used, r.n_success):
            continue
        used, succeeded = base[r.rule_id]
        out.append(cur.model_copy(update={"n_used": cur.n_used + r.n_used - int(used),
                                          "n_success": cur.n_success + r.n_success - int(succeeded)}))
    return out


def _rules_now(memory, rule_ids: list[str]) -> dict[str, Rule]:
    """The memory's current records of ``rule_ids`` (copies), those that are gone left out.

    Only these are read (every rule, copied, cost ~3 ms per learning group at 300 rules); ``get`` refuses an id
    that is gone, and that rare case reads them all (a memory that cannot be read fails there as before)."""
    try:
        return {r.rule_id: r for r in memory.rules.get(rule_ids)}
    except InputError:
        wanted = set(rule_ids)
        return {r.rule_id: r for r in memory.rules.all(include_retired=True) if r.rule_id in wanted}


def _read_ledger(path: Path, key: str) -> dict | None:
    """This run's memory-write plan, or None (none yet, another run's, or unreadable: computed afresh)."""
    try:
        plan = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return plan if isinstance(plan, dict) and plan.get("key") == key and "written" in plan else None


def rule_outcomes(crit: GroupCritique, state: AgentState, err: np.ndarray, tau: float) -> tuple[list, list]:
    """Which applied rules succeeded on a labelled group.

    A rule with an executable condition succeeded when its deduction *improved* the group's ranking: the
    Spearman ρ(overall, −error) of the final scores is higher than with that rule's points given back
    (undone as the builtin judge applies them, a factor exp(POINT_DECAY · points)). So a rule that only
    repeats what the evidence already says (no change) or that pushes the ranking the wrong way loses
    reliability, and the judge weighs it less next time. This counterfactual test is sharper than the
    paper's group-level one, which we keep for rules without a condition (or that fired on every
    hypothesis): the group's ρ must reach τ.
    """
    from hmrcritic.hmr.metrics import spearman

    def rho(o: np.ndarray) -> float:
        return float(spearman(o, -err)) if np.ptp(o) > 0 else 0.0

    rules = [Rule.model_validate(r) for r in state.get("rules", [])]
    applied = set(crit.rules_applied)
    by_id = {r.rule_id: r for r in rules}
    _, _, fired = apply_rules([r for r in rules if r.rule_id in applied], state.get("evidence", {}), len(err))
    overall = np.array([s.overall for s in sorted(crit.scores, key=lambda s: s.index)], dtype=np.float64)
    rho_final = rho(overall)
    ok, bad = [], []
    for rid in sorted(applied):
        if rid not in by_id:
            continue  # a judge named a rule that was never recalled: nothing to credit
        hits = fired.get(rid, [])
        cond = by_id[rid].condition
        ded = cond.deduction(state.get("evidence", {})[cond.measure]) if hits else None
        if hits and np.ptp(ded) > 0:  # the rule reorders (a step rule firing on all does not)
            undone = overall * np.exp(POINT_DECAY * ded)
            good = rho_final > rho(undone) + 1e-9
        else:
            good = rho_final >= tau
        (ok if good else bad).append(rid)
    return ok, bad


# ------------------------------------------------------------------------------------------------- helpers
def _read_image(path: str | None) -> np.ndarray | None:
    if not path:
        return None
    from hmrcritic.hmr.data import read_image

    return read_image(path)


def _read_mask(path: str, size: tuple[int, int]) -> np.ndarray:
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as im:  # upright like the image it masks (hmr.data.read_image)
            with contextlib.suppress(SyntaxError):  # a damaged EXIF block: as stored, as read_image takes its image
                im = ImageOps.exif_transpose(im)
            m = np.asarray(im.convert("L")) > 127
    except (OSError, UnidentifiedImageError) as exc:
        raise InputError(f"mask {path}: cannot be read as an image ({exc})") from exc
    if (m.shape[1], m.shape[0]) != tuple(size):
        raise InputError(f"mask {path}: size {m.shape[1]}x{m.shape[0]} differs from the image {size[0]}x{size[1]}")
    return m

