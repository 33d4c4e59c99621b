"""Does exploration teach the critic anything? Held-out evaluation of memory variants and a learning curve.

:func:`explore_eval` scores held-out labelled groups (never ones the memory explored, nor their scenes under
another id: see :func:`~hmrcritic.agent.explore.assert_not_explored` and :func:`assert_unseen_scenes`) with a
*frozen* (read-only) memory under several variants, and reports per variant the mean group-wise Spearman ρ and
Kendall τ-b between the critic's overall score and the negated true error — against PA-MPJPE, MPJPE and PVE —
and the mean error of the critic's top-1 pick, beside a random pick (the expected error of a uniform pick: each
group's mean, no draw) and the oracle (best of group), both over every held-out group. A group a variant failed
to score is left out of that variant's means (``groups_scored`` says how many it scored; NaN where it scored
none). Variants (the paper's ablations, §5):

* ``full`` — the explored memory;
* ``no_reflection`` — the starter memory, no exploration (the paper's "without self-reflection");
* ``no_rules`` / ``no_prototypes`` — the explored memory with one half switched off;
* ``no_calibration`` — the explored memory without its score calibration (:mod:`hmrcritic.agent.calibration`;
  our extension: a monotone map, so it moves only the point-wise figures);
* ``no_revise`` — the explored memory with hmrcritic's per-group revise loop off (our extension);
* ``evidence_only`` — no memory and no revise loop (the judge's evidence-only scores).

:func:`learning_curve` explores round by round (each call resumes the last) and evaluates the held-out
groups after every round (round 0 = the starter memory), writing a JSON table and a PNG (matplotlib, Agg).
Every score records the memory version it was made with; the memory's version must not change while
scoring (checked: a frozen memory that changed is an error).
"""

from __future__ import annotations

import contextlib
import math
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hmrcritic.errors import AssetError, HMRCriticError, InputError
from hmrcritic.memory.store import cli_hint, holds_memory

VARIANTS = ("full", "no_reflection", "no_rules", "no_prototypes", "no_calibration", "no_revise", "evidence_only")
METRICS = ("pa_mpjpe", "mpjpe", "pve")
_VARIANT_CONFIG: dict[str, dict] = {
    "full": {},
    "no_reflection": {},
    "no_rules": {"use_rules": False},
    "no_prototypes": {"use_prototypes": False},
    "no_calibration": {"use_calibration": False},
    "no_revise": {"max_reflections": 0},
    "evidence_only": {"use_memory": False, "max_reflections": 0},
}


def starter_memory(folder: str | Path | None = None):
    """A read-only memory holding only the starter rules (the ``no_reflection`` baseline)."""
    from hmrcritic.memory.store import MemoryStore

    folder = Path(folder) if folder is not None else Path(tempfile.mkdtemp(prefix="hmrcritic-starter-"))
    if not holds_memory(folder):
        # creates and seeds, on disk even where HMRCRITIC_CHROMA_URL is set; closed, not left to the collector
        # with its database files open beside the read-only store returned
        MemoryStore(folder, chroma_url="").close()
    return MemoryStore(folder, chroma_url="", read_only=True)


def _close(store: Any) -> None:
    """``store.close()`` where it has one: a memory-like reader without it (a stand-in in tests) is left as it is."""
    close = getattr(store, "close", None)
    if callable(close):
        close()


def _heldout(groups, split: str, num_groups: int, num_generations: int, seed: int, start: int, source: str):
    if groups is not None:
        return list(groups)
    from hmrcritic.agent.groups import make_groups

    got, _ = make_groups(split, num_groups=num_groups, num_generations=num_generations, seed=seed,
                         start=start, source=source)
    return got


def assert_heldout(memory: Any, split: str, group_ids: Sequence[str], record: dict | None = None) -> None:
    """:func:`~hmrcritic.agent.explore.assert_not_explored` against ``split`` and every other split the memory
    records. Given groups (``groups=`` / ``heldout=``) carry their own split in their ids (``<split>-<index>``)
    whatever ``split`` is passed beside them, so checking ``split`` alone (default ``"test"``) let explored train
    groups be scored as held-out ones; an id is one labelled input in any split, so a clash anywhere is one.
    ``record``: the explored-scene record to check (default: ``memory``'s own) — the scorers pass that of the
    frozen copy they score with, so the record checked is the one of the memory that scores."""
    from hmrcritic.agent.explore import assert_not_explored, explored_record

    if record is None:  # read once: a split's check below is the same record, not a re-read
        record = explored_record(memory)
    for s in [split] + sorted(k for k in record["splits"] if k != split):
        assert_not_explored(memory, s, group_ids, record=record)


def _scene_key(sample: Any) -> bytes | None:
    """What makes two inputs the same scene (keypoints with their noise and occlusions, intrinsics, image size),
    or None for a group without such a sample."""
    kp, K = getattr(sample, "keypoints", None), getattr(sample, "K", None)
    if kp is None or K is None:
        return None
    size = np.asarray(getattr(sample, "image_size", ()), np.int64)
    return b"|".join(np.ascontiguousarray(np.asarray(x, np.float64)).tobytes() for x in (kp, K, size))


def assert_unseen_scenes(memory: Any, groups: Sequence[Any], record: dict | None = None) -> None:
    """Refuse held-out groups whose *scene* the memory learned from (or calibrated on) under another id.

    :func:`assert_heldout` compares ids, and an id names an index of a split, not its content: two splits
    generated with one seed (``hmrcritic data generate --split train --seed 0`` and ``--split test --seed 0``;
    train and test share a preset) hold the same scenes at the same indices, so test-000003 *is* the explored
    train-000003 and the critic recalled the prototypes of the scene it was being scored on, every id check
    passing. The explored scenes are read from the splits as they are now (one not generated here is skipped).
    ``record``: as for :func:`assert_heldout`."""
    from collections import defaultdict

    from hmrcritic.agent.explore import _memory_path, explored_record
    from hmrcritic.agent.groups import split_scene
    from hmrcritic.hmr.data import load_split

    mine: dict[bytes, str] = {}
    for g in groups:
        k = _scene_key(getattr(g, "sample", None))
        if k is not None:
            mine.setdefault(k, g.group_id)
    if not mine:
        return
    seen: dict[str, set[int]] = defaultdict(set)  # by the split each id names (a given group carries its own)
    for rec in (explored_record(memory) if record is None else record)["splits"].values():
        for gid in [*rec.get("group_ids", []), *rec.get("calibration_group_ids", [])]:
            scene = split_scene(gid)
            if scene is not None:
                seen[scene[0]].add(scene[1])
    for s, indices in sorted(seen.items()):
        try:
            scenes = load_split(s, generate=False, quiet=True)
        except HMRCriticError:  # not here (or out of date): its explored scenes are none of these
            continue
        for i in sorted(indices):
            if i >= len(scenes):
                continue
            scene = scenes[i]
            clash = mine.get(_scene_key(scene))
            if clash is not None and clash != scene.sample_id:  # the same id is assert_heldout's to refuse
                raise InputError(f"held-out group {clash} is the same scene as {scene.sample_id}, which the memory "
                                 f"at {_memory_path(memory)} explored (or calibrated) on: splits generated with "
                                 "one --seed hold the same scenes; regenerate one with another seed "
                                 f"(`hmrcritic data generate --split {clash.rsplit('-', 1)[0]} --seed N`) or "
                                 "evaluate a memory not explored on them")


def score_groups(groups: Sequence[Any], memory: Any, variant: str = "full", judge: Any = "builtin",
                 agent_config: dict | None = None, tag: str = "eval",
                 progress: Callable[[int, int], None] | None = None,
                 failures: list[str] | None = None) -> tuple[list[np.ndarray | None], list[str]]:
    """Overall scores of each group (None where the group failed) and the memory version of each score.
    ``progress(i, n)`` is called after each group; ``failures`` (a list) gets "<group id>: <reason>" of each group
    that failed — without it a variant that failed every group was reported with a guess at the cause (the VLM
    endpoint) while the reason (a split too small for the pose prior, say) was dropped.

    After ``UNUSABLE_IN_A_ROW`` groups in a row failed because the VLM endpoint itself cannot be used (nothing
    answers, the key or the model refused), the rest are not sent: they fail with "not tried" at once, instead of
    each after its retries (an evaluate-critic of 100 groups × 6 variants against a refused key took hours)."""
    from hmrcritic.agent.api import UNUSABLE_IN_A_ROW, critique_group, discard_run, unusable_endpoint, unusable_subject
    from hmrcritic.agent.graph import compile_graph, open_checkpointer
    from hmrcritic.agent.state import AgentConfig

    if variant not in _VARIANT_CONFIG:
        raise InputError(f"variant {variant!r}: choose from {', '.join(VARIANTS)}")
    # rendered for a judge that reads images (the VLM judge), never for the builtin one, as exploration decides
    # (explore.py: ``render = not is_builtin`` unless given): with render False for every judge, a VLM evaluation
    # (evaluate-critic, explore-eval, learning-curve) sent the VLM no overlay or side grid and measured a text-only
    # critic. A ``render`` in ``agent_config`` (exploration's calibration passes its own) is kept
    from hmrcritic.agent.groups import reads_images

    given = agent_config or {}
    named = judge if judge is not None else given.get("judge") or AgentConfig().judge
    cfg = AgentConfig.model_validate({"render": reads_images(named), **given, **_VARIANT_CONFIG[variant],
                                      "learn": False})
    saver = open_checkpointer()
    app = compile_graph(saver)
    out: list[np.ndarray | None] = []
    versions: list[str] = []
    in_a_row, stopped = 0, None
    for g in groups:
        if stopped is not None:
            out.append(None)
            versions.append("")
            if failures is not None:
                failures.append(f"{g.group_id}: not tried: {UNUSABLE_IN_A_ROW} groups in a row failed because "
                                f"{unusable_subject(stopped)} cannot be used: {stopped}")
            if progress is not None:
                progress(len(out), len(groups))
            continue
        try:
            res = critique_group(g.sample, g.hypotheses, judge=judge, memory=memory, config=cfg,
                                 group_id=f"{tag}-{variant}-{g.group_id}", fresh=True, graph=app,
                                 checkpointer=saver, keep=False)
            discard_run(res)
            out.append(np.asarray(res.overall, np.float64))
            versions.append(res.memory_version)
            in_a_row = 0
        except HMRCriticError as exc:
            out.append(None)
            versions.append("")
            if failures is not None:
                # scrubbed here: the row's first_failure is written as it is into result.json and --json, and a
                # judge's error (a custom judge's, quoting its request) carried the key there
                from hmrcritic.redact import scrub

                failures.append(scrub(f"{g.group_id}: {exc}"))
            if (why := unusable_endpoint(exc)) is not None:
                in_a_row += 1
                stopped = why if in_a_row >= UNUSABLE_IN_A_ROW else None
        if progress is not None:
            progress(len(out), len(groups))
    return out, versions


def correlation_row(scores: Sequence[np.ndarray | None], tables: Sequence[dict[str, np.ndarray]]) -> dict:
    """Mean group-wise Spearman / Kendall of score vs −error per metric, and the critic's top-1 error.

    A group whose ρ is undefined (constant scores — nothing ranked — or constant or NaN errors) counts as ρ = τ = 0
    in the means; ``rho_undefined`` (``rho_undefined_mpjpe``, ``rho_undefined_pve``) says for how many of the
    scored groups, so a mean near 0 made of such groups is not read as a critic that ranks at chance."""
    from hmrcritic.hmr.metrics import kendall_tau, spearman, tied_top1_error

    row: dict[str, Any] = {}
    ok = [(s, t) for s, t in zip(scores, tables, strict=True) if s is not None]
    row["groups_scored"] = len(ok)
    failed = [s is None for s in scores]
    for m in METRICS:
        rho, tau, top = [], [], []
        undefined = 0
        for s, t in ok:
            e = np.asarray(t[m], np.float64)
            r = float(spearman(s, -e))
            k = float(kendall_tau(s, -e))
            undefined += bool(np.isnan(r))
            rho.append(0.0 if np.isnan(r) else r)  # a constant score ranks nothing: counts as 0
            tau.append(0.0 if np.isnan(k) else k)
            top.append(tied_top1_error(s, e))  # tied best scores: the mean of their errors
        suffix = "" if m == "pa_mpjpe" else f"_{m}"
        if m == "pa_mpjpe":  # for paired differences between variants: one entry per group, NaN where it failed
            it = iter(rho)
            row["per_group_spearman"] = [float("nan") if f else next(it) for f in failed]
        row[f"spearman{suffix}"] = float(np.mean(rho)) if rho else float("nan")
        row[f"kendall{suffix}"] = float(np.mean(tau)) if tau else float("nan")
        row[f"top1_{m}_mm"] = float(np.mean(top)) if top else float("nan")
        row[f"rho_undefined{suffix}"] = undefined  # of the groups scored: counted as 0 in the means above
    # the paper's point-wise correlation: all hypotheses of all groups pooled, so it also asks whether a
    # score means the same in an easy and a hard group (what calibration against prototypes is for)
    if ok:
        row["pearson_pointwise"] = pooled_pearson([s for s, _ in ok], [t["pa_mpjpe"] for _, t in ok])
    return row


def pooled_pearson(scores: Sequence[np.ndarray], errors: Sequence[np.ndarray]) -> float:
    """Point-wise Pearson of score with −error over all hypotheses of all groups pooled (0 for a constant
    score)."""
    s = np.concatenate([np.asarray(x, np.float64) for x in scores])
    e = np.concatenate([np.asarray(x, np.float64) for x in errors])
    if np.ptp(s) <= 0:
        return 0.0
    r = float(np.corrcoef(s, -e)[0, 1])
    return 0.0 if math.isnan(r) else r


def explore_eval(
    memory: Any = None,
    groups: Sequence[Any] | None = None,
    *,
    split: str = "test",
    num_groups: int = 20,
    num_generations: int = 16,
    seed: int = 0,
    start: int = 0,
    source: str = "auto",
    variants: Sequence[str] | None = None,
    judge: Any = "builtin",
    agent_config: dict | None = None,
    starter: Any = None,
    progress: Callable[[str, int, int], None] | None = None,
    keep_scores: bool = False,
    group_progress: Callable[[str, int, int], None] | None = None,
) -> dict:
    """``{"rows": [{"variant", "spearman", "kendall", "top1_pa_mpjpe_mm", …}], "random_pa_mpjpe_mm",
    "oracle_pa_mpjpe_mm", "num_groups", …}`` on held-out groups (see module doc).

    ``memory``: the explored memory (folder or store; opened read-only). ``starter``: the memory of the
    ``no_reflection`` row (default: a fresh starter memory in a temporary folder). ``keep_scores``: each row
    also carries ``per_group_scores`` and the result ``per_group_errors`` (PA-MPJPE), for paired statistics
    between variants. ``progress(variant, i, n)`` is called before each variant, ``group_progress(variant, i, n)``
    after each of its groups."""
    from hmrcritic.agent.explore import _memory_path, error_table, explored_record, frozen_copy
    from hmrcritic.agent.judges import make_judge

    variants = list(variants or VARIANTS)  # None: every variant
    bad = [v for v in variants if v not in VARIANTS]
    if bad:
        raise InputError(f"unknown variant(s) {bad}; choose from {', '.join(VARIANTS)}")
    if groups is None and num_generations < 2:
        raise InputError(f"explore-eval: a group needs ≥ 2 hypotheses to rank, got --num-generations {num_generations}")
    # built once to be refused now: an unknown name (``--judge foo``) or a VLM judge without an endpoint failed
    # every critique of every variant, and the run ended "every critique failed" without the reason
    make_judge(judge)
    if groups is None:  # the held-out split's shards against their manifest, as export checks its own (the CLI
        # checked, a notebook's explore_eval(split=…) did not)
        from hmrcritic.agent.groups import reads_images, verify_split

        verify_split(split, images=reads_images(judge, (agent_config or {}).get("render")))
    path = _memory_path(memory)
    frozen = frozen_copy(memory)
    # closed when scored: held against `runs prune` and with its Chroma files open for the store's life, a
    # notebook's evaluation after evaluation kept each snapshot (and its files) until the collector came by
    try:
        held = _heldout(groups, split, num_groups, num_generations, seed, start, source)
        if not held:
            raise InputError(f"no held-out groups in split {split!r}")
        # the record of the copy that scores (it travels with it), not the live folder's: a reset or an exploration
        # of the live memory after the copy was taken changed what was checked, not what scored
        record = explored_record(frozen)
        assert_heldout(path, split, [g.group_id for g in held], record=record)
        assert_unseen_scenes(path, held, record=record)
        tables = [error_table(g) for g in held]
        before = frozen.version()
        # a starter memory of our own is a temporary folder: removed when scored (every explore-eval and
        # explore_eval() call with no_reflection left a Chroma database of ~0.5 MB in /tmp behind for good)
        own = (Path(tempfile.mkdtemp(prefix="hmrcritic-starter-"))
               if starter is None and "no_reflection" in variants else None)
        rows, base = [], None
        try:
            base = starter if starter is not None else (starter_memory(own) if own is not None else None)
            for i, v in enumerate(variants):
                if progress is not None:
                    progress(v, i, len(variants))
                mem = base if v == "no_reflection" else frozen
                tick = None if group_progress is None else (lambda i, n, v=v: group_progress(v, i, n))
                failed: list[str] = []
                scores, versions = score_groups(held, mem, v, judge=judge, agent_config=agent_config, progress=tick,
                                                failures=failed)
                row = {"variant": v, **correlation_row(scores, tables),
                       "memory_version": sorted({x for x in versions if x})}
                if failed:  # only then: a row of a run where every group scored keeps its keys
                    row["first_failure"] = failed[0]
                if keep_scores:
                    row["per_group_scores"] = [None if s is None else np.asarray(s, np.float64).tolist()
                                               for s in scores]
                rows.append(row)
        finally:
            if own is not None:
                import shutil

                if base is not None:  # ours: its database closed before its folder goes
                    _close(base)
                shutil.rmtree(own, ignore_errors=True)
        after = frozen.version()
        if after != before:
            raise AssetError(f"memory at {path} changed while it was being scored read-only ({before} → {after})")
        extra = {"per_group_errors": [t["pa_mpjpe"].tolist() for t in tables]} if keep_scores else {}
        return {
            **extra,
            "rows": rows,
            "random_pa_mpjpe_mm": float(np.mean([t["pa_mpjpe"].mean() for t in tables])),
            "oracle_pa_mpjpe_mm": float(np.mean([t["pa_mpjpe"].min() for t in tables])),
            "random_mpjpe_mm": float(np.mean([t["mpjpe"].mean() for t in tables])),
            "oracle_mpjpe_mm": float(np.mean([t["mpjpe"].min() for t in tables])),
            "random_pve_mm": float(np.mean([t["pve"].mean() for t in tables])),
            "oracle_pve_mm": float(np.mean([t["pve"].min() for t in tables])),
            "num_groups": len(held),
            "split": split if groups is None else "custom",
            "memory_version": before,
            # what scored what, as evaluate-critic's payload records it: two results of other group sizes, sources
            # or judges (the model's groups vs perturbed ground truth; the builtin judge vs a VLM) read the same
            **_scoring_record(held, tables, judge),
        }
    finally:
        _close(frozen)


def _scoring_record(held: Sequence[Any], tables: Sequence[dict], judge: Any) -> dict:
    """``num_generations`` (the groups' size, from their error tables; None when they differ), ``group_source``
    (the groups' source — ``model`` / ``perturbed`` — or ``mixed``), ``judge`` and, for a VLM, ``judge_model``
    (model @ endpoint, no credentials), read from the groups scored and the judge that scored them."""
    from hmrcritic.agent.evaluate_critic import judge_identity
    from hmrcritic.agent.judges import judge_name

    sizes = {len(t["pa_mpjpe"]) for t in tables}
    sources = {str(getattr(g, "source", "perturbed")) for g in held}
    ident = judge_identity(judge)
    return {"num_generations": sizes.pop() if len(sizes) == 1 else None,
            "group_source": sources.pop() if len(sources) == 1 else "mixed",
            "judge": judge_name(judge), **({"judge_model": ident} if ident else {})}


PARTIAL_FILE = "learning_curve.partial.json"  # rows evaluated so far, beside the result (resume)
CURVE_FILE = "learning_curve.json"  # the finished result
PNG_FILE = "learning_curve.png"  # its plot
# what a resumed row must hold: printed by `hmrcritic learning-curve`, plotted, compared on resume
_ROW_KEYS = ("round", "spearman", "kendall", "top1_pa_mpjpe_mm", "rules", "prototypes", "memory_version")


def _check_out_dir(out: Path) -> None:
    """Refuse, before round 0 is scored, an ``out_dir`` the curve cannot be written into: a file there (or above
    it), or a folder, a pipe or a device in the place of one of the curve's files. The partial file failed only
    after round 0 was scored, the result and its PNG only after every round was explored and scored (the PNG's after
    the result was written, the partial file left behind)."""
    from hmrcritic.io import check_out_folder, check_output_target

    try:
        check_out_folder(out, "the curve (learning_curve.json, .png and, while it runs, .partial.json)")
        for name in (PARTIAL_FILE, CURVE_FILE, PNG_FILE):
            if (out / name).is_dir():
                raise InputError(f"learning-curve: --out {out} holds a folder named {name}, where the curve writes "
                                 "that file; move it away or give another --out")
            check_output_target(out / name, "learning-curve --out")
    except OSError as exc:  # a folder on the path the user may not search: a bare PermissionError from the API
        raise InputError(f"learning-curve: --out {out} cannot be checked ({exc.strerror or exc}); give another "
                         "--out") from exc


def _curve_settings(split, heldout_split, batch_size, held, train_groups, num_generations, seed, source, judge,
                    explore_kwargs, tables=None) -> dict:
    """What decides the curve's rows except how many rounds: a resumed curve must have been run with these —
    the agent's settings too (``HMRCRITIC_*``: the held-out scoring and the exploration read them), or a curve
    resumed under other ones mixed rows scored two ways in one table. Also the critic's code
    (:func:`~hmrcritic.agent.evaluate_critic.code_digest`) and, with ``tables``, the held-out groups' true errors:
    ids name split indices, so a curve resumed after an upgrade, or after the held-out split was regenerated
    (another ``--seed``, generator or body model; another ``--source``'s hypotheses), kept the old rows and
    added rows of other code or other groups under the same ids."""
    import hashlib
    import json

    from hmrcritic.agent.evaluate_critic import code_digest, judge_identity
    from hmrcritic.agent.judges import judge_name
    from hmrcritic.agent.state import AgentConfig

    errors = None
    if tables is not None:
        h = hashlib.sha256()
        for t in tables:
            h.update(np.ascontiguousarray(np.asarray(t["pa_mpjpe"], np.float64)).tobytes() + b"|")
        errors = h.hexdigest()[:16]
    # a VLM judge's model @ endpoint too (as evaluate-critic keys its exploration): a curve resumed under another
    # HMRCRITIC_VLM_MODEL mixed rows of two models under one "vlm"; absent for the builtin judge, whose settings
    # (and every partial file written before) stay as they were
    ident = judge_identity(judge)
    return json.loads(json.dumps({"code": code_digest(), "heldout_errors": errors,
        **({"judge_model": ident} if ident else {}),
        "split": split, "heldout_split": heldout_split, "batch_size": batch_size, "num_generations": num_generations,
        "seed": seed, "source": source, "judge": judge_name(judge), "explore_kwargs": explore_kwargs or {},
        "agent": AgentConfig().model_dump(exclude={"memory_dir", "chroma_url", "judge"}),
        "heldout": [g.group_id for g in held],
        "train_groups": None if train_groups is None else [g.group_id for g in train_groups]}, default=str))


def _resume_rows(mem, out_dir: Path | None, settings: dict) -> tuple[list[dict], str]:
    """The rows of an interrupted curve into this memory that can be continued (see :func:`learning_curve`), or
    ``([], why not)``."""
    import json

    from hmrcritic.agent.explore import PENDING_FILE, _finish_pending, _read_progress

    f = out_dir / PARTIAL_FILE if out_dir is not None else None
    if f is None or not f.exists():
        return [], ""
    try:
        part = json.loads(f.read_text(encoding="utf-8"))
        rows, memory, saved = part["rows"], part["memory"], part["settings"]
        last = rows[-1]["round"]
        # settings of another type failed the comparison below as "AttributeError: 'list' object has no attribute
        # 'get'", a round of 1e400 as OverflowError, JSON nested thousands deep as RecursionError; a round of 2.7 or
        # "2" (no curve writes one) was read as round 2
        if not isinstance(saved, dict) or not isinstance(last, int) or isinstance(last, bool) or last < 0:
            raise TypeError("not a curve's rows and settings")
        # rows 0, 1, … as evaluate() appends them, each with what is printed and plotted from it: a row that is not
        # an object, or lacks a figure, was resumed and failed the progress line or the plot as a bare TypeError or
        # KeyError (the plot after every later round was explored and scored); a gap in the rounds was kept
        # (a round of true or 1.0 equals 1 in Python: only an int is a round)
        rounds = [r.get("round") if isinstance(r, dict) and type(r.get("round")) is int else None for r in rows]
        if rounds != list(range(len(rows))) or not all(all(k in r for k in _ROW_KEYS) for r in rows):
            raise ValueError("not a curve's rows 0, 1, … with their figures")
    except (OSError, ValueError, KeyError, IndexError, TypeError, RecursionError) as exc:
        return [], f"{f} is unreadable ({type(exc).__name__})"
    if memory != str(mem.path):
        return [], f"{f} is the curve of another memory ({memory})"
    if saved != settings:
        diff = sorted(k for k in settings if saved.get(k) != settings[k])
        return [], f"{f} was made with other settings ({', '.join(diff)})"
    if (Path(mem.path) / PENDING_FILE).exists():  # a batch computed but not fully written: finish it first
        with mem.exclusive("a learning curve"):
            _finish_pending(mem, lambda event, payload: None)
    # no progress record yet (interrupted inside round 1, before its batch was committed) reads as 0 rounds
    done = int(_read_progress(Path(mem.path)).get("rounds_total", 0))
    # round `last` evaluated and the memory still as it was then, or round last + 1 explored (or half-calibrated)
    # but not yet evaluated; anything else means the memory changed outside this curve
    if done == last and mem.version() == rows[-1].get("memory_version"):
        return rows, ""
    if done == last + 1:
        return rows, ""
    return [], (f"the memory has {done} exploration round(s), the curve in {f} stopped after round {last}; it was "
                "changed outside this curve")


def _check_explore_kwargs(explore: Callable, explore_kwargs: dict | None) -> None:
    """Refuse ``explore_kwargs`` explore would not take, before the held-out groups are sampled and round 0 is
    scored: explore's own keyword check said a misspelt key only when round 1 began (minutes later), and a key the
    curve sets itself (``seed``, ``split``, ...) was Python's "got multiple values" TypeError there."""
    import inspect

    params = inspect.signature(explore).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):  # a stand-in taking **kwargs takes any keyword
        return
    own = {"memory", "split", "rounds", "batch_size", "judge", "num_generations", "seed", "source", "groups"}
    taken = [p for p in params if p not in own]
    bad = [k for k in (explore_kwargs or {}) if k not in taken]
    if bad:
        from hmrcritic.errors import unknown_keyword_hints

        raise InputError(f"learning-curve: explore_kwargs {unknown_keyword_hints(bad, taken)} not taken (the curve "
                         f"sets {', '.join(sorted(own))} itself; explore_kwargs may give {', '.join(taken)})")


def learning_curve(
    memory: Any,
    *,
    split: str = "train",
    rounds: int = 5,
    batch_size: int = 8,
    heldout: Sequence[Any] | None = None,
    heldout_split: str = "test",
    heldout_groups: int = 16,
    num_generations: int = 16,
    seed: int = 0,
    source: str = "auto",
    train_groups: Sequence[Any] | None = None,
    judge: Any = "builtin",
    out_dir: str | Path | None = None,
    explore_kwargs: dict | None = None,
    progress: Callable[[dict], None] | None = None,
    status: Callable[[str], None] | None = None,
) -> dict:
    """Held-out Spearman/Kendall/top-1 after each exploration round (round 0 = before exploring).

    Writes ``learning_curve.json`` and ``learning_curve.png`` into ``out_dir`` when given. ``progress(row)`` is
    called with each round's row, ``status(line)`` with what is being done (long rounds say so as they go).

    Resumable: with ``out_dir``, the rows evaluated so far are kept in ``learning_curve.partial.json`` there;
    the same call after an interruption (Ctrl-C, a kill) continues from the last evaluated round — its
    exploration resumes as ``explore`` does — and ends with the rows and memory of one uninterrupted call. A
    memory explored otherwise is refused (round 0 must be the unexplored memory), and so is a ``rounds`` below
    the round the interrupted call reached (its memory cannot be unexplored)."""
    from hmrcritic.agent.explore import (
        PROGRESS_FILE,
        _open_memory,
        _read_progress,
        error_table,
        explore,
        explored_record,
        frozen_copy,
    )
    from hmrcritic.agent.judges import make_judge
    from hmrcritic.io import atomic_write_json

    say = status or (lambda line: None)
    if heldout is None and train_groups is None and split == heldout_split:
        # both start at the split's first group with the same seed: rounds would score groups just learned from
        raise InputError(f"learning-curve: the held-out split ({heldout_split}) must differ from the exploration "
                         f"split ({split})")
    if rounds < 0:
        raise InputError(f"learning-curve: need rounds ≥ 0, got {rounds}")
    _check_explore_kwargs(explore, explore_kwargs)
    # refused before round 0 is scored (the CLI checks its flags; the Python API did not): a batch size of 0 or an
    # unknown judge failed only when round 1 began, no held-out groups or groups of one hypothesis explored every
    # round to a curve of NaN or of nothing ranked
    if batch_size < 1 or (heldout is None and (heldout_groups < 1 or num_generations < 2)):
        raise InputError(f"learning-curve: need batch_size ≥ 1, heldout_groups ≥ 1 and num_generations ≥ 2 (got "
                         f"{batch_size}, {heldout_groups}, {num_generations})")
    if heldout is not None and not len(heldout):
        raise InputError("learning-curve: no held-out groups to score (an empty list was given)")
    if out_dir is not None:
        from hmrcritic.config import path_arg

        out_dir = path_arg(out_dir, "learning-curve: out_dir")
        _check_out_dir(out_dir)
    make_judge(judge)
    mem = _open_memory(memory)
    # a folder (or None) is opened here, and closed here: left to the garbage collector, its Chroma database
    # files and threads stayed open after the call (a notebook's curve after curve kept one store each); a
    # store the caller passed in is the caller's to close
    hold = contextlib.ExitStack()
    try:
        # the memory held for the whole curve, not only while each round explores (explore re-enters the hold): a
        # second curve (or an explore) on it was refused only at its first exploration, after it had scored round
        # 0 and written its partial file — or, between two of the first's rounds, scored and explored rounds of a
        # memory the first was exploring, each curve labelling rows with rounds the other had explored
        if not getattr(mem, "read_only", False):
            hold.enter_context(mem.exclusive("a learning curve"))
        out = Path(out_dir) if out_dir is not None else None
        explored = bool(explored_record(mem)["splits"]) or (Path(mem.path) / PROGRESS_FILE).exists()
        if explored and (out is None or not (out / PARTIAL_FILE).exists()):
            # round 0 must be the memory before any exploration and round r the memory after r rounds; a memory that
            # was explored already (an earlier curve, an interrupted one) would shift every label
            done = out is not None and (out / CURVE_FILE).exists()  # the same command after it finished: say so
            raise InputError(f"learning-curve: the memory at {mem.location} has been explored already"
                             + (f" (a finished curve is in {out / CURVE_FILE})" if done else "")
                             + f"; give a fresh --memory-dir (or {cli_hint('reset --yes', mem.path, mem.chroma_url)})")
        if heldout is None:  # its shards against the manifest (each round's exploration checks the train split)
            from hmrcritic.agent.groups import reads_images, verify_split

            # images for a judge that reads them (score_groups renders for it)
            verify_split(heldout_split, images=reads_images(judge))
        held = _heldout(heldout, heldout_split, heldout_groups, num_generations, seed, 0, source)
        if not held:  # a split without groups: every round a row of NaN
            raise InputError(f"learning-curve: no held-out groups to score in split {heldout_split!r}")
        held_ids = [g.group_id for g in held]
        tables = [error_table(g) for g in held]
        settings = _curve_settings(split, heldout_split, batch_size, held, train_groups, num_generations, seed, source,
                                   judge, explore_kwargs, tables=tables)
        rows: list[dict] = []
        if explored:
            rows, why = _resume_rows(mem, out, settings)
            if not rows:
                raise InputError(f"learning-curve: the memory at {mem.location} has been explored already and cannot "
                                 f"continue the interrupted curve: {why}; give a fresh --memory-dir and --out (or "
                                 f"{cli_hint('reset --yes', mem.path, mem.chroma_url)})")
            # a smaller --rounds than the interrupted call reached returned every row it had (a curve of 3 rounds for
            # --rounds 1) and left a memory explored further than its curve; rows cut to the asked round would still
            # describe a memory that is not the one in --memory-dir, so it is refused: rounds cannot be unexplored
            have = max(int(rows[-1]["round"]), int(_read_progress(Path(mem.path)).get("rounds_total", 0)))
            if rounds < have:
                raise InputError(f"learning-curve: the interrupted curve in {out / PARTIAL_FILE} reached round {have} "
                                 f"(the memory at {mem.location} is explored that far), more than --rounds {rounds}; "
                                 f"give --rounds {have} or more to finish it, or a fresh --memory-dir and --out for a "
                                 f"curve of {rounds} round(s)")
            say(f"resuming: rounds 0–{rows[-1]['round']} were evaluated by an interrupted run ({out / PARTIAL_FILE})")
            for row in rows:
                if progress is not None:
                    progress(row)

        def evaluate(r: int) -> None:
            ro = frozen_copy(mem)
            try:  # a copy per round: each one closed when scored (see explore_eval)
                # every round (a round may have explored them), against the record of the copy that scores: the live
                # one read before the copy was taken could differ from it
                record = explored_record(ro)
                assert_heldout(mem, heldout_split, held_ids, record=record)
                assert_unseen_scenes(mem, held, record=record)
                say(f"round {r}: scoring {len(held)} held-out groups of {heldout_split}"
                    + (" with the unexplored memory" if r == 0 else ""))
                failed: list[str] = []
                scores, versions = score_groups(held, ro, "full", judge=judge, tag=f"curve-r{r}", failures=failed)
                st = ro.stats()
            finally:
                _close(ro)
            row = {"round": r, **correlation_row(scores, tables), "rules": st["rules"],
                   "rules_retired": st["rules_retired"], "prototypes": st["prototypes"],
                   "memory_version": st["version"]}
            if failed:
                row["first_failure"] = failed[0]
            rows.append(row)
            if out is not None:  # what an interrupted curve continues from
                atomic_write_json(out / PARTIAL_FILE, {"memory": str(mem.path), "settings": settings, "rows": rows})
            if progress is not None:
                progress(row)

        def on_explore(event: str, p: dict) -> None:
            if event == "group":
                what = p.get("error") or p.get("skipped") or f"ρ = {p['spearman']:+.3f}"
                say(f"  [{p['index'] + 1}/{p['total']}] {p['group_id']}: {what}")
            elif event == "calibrate" and at_a_tenth(p["index"], p["total"]):
                say(f"  calibrating scores: {p['index']}/{p['total']} held-out {split} groups")  # not always train
            elif event == "note":  # a slow first-use step about to start (the pose prior's fit)
                say(f"  {p['text']}")
            elif event == "calibrated" and p.get("note"):  # none fitted, or a doubtful fit: why
                say(f"  note: {p['note']}")

        if not rows:
            evaluate(0)
        from hmrcritic.agent.state import AgentConfig

        scoring = AgentConfig()
        where = split if train_groups is None else "the given groups"
        for r in range(rows[-1]["round"] + 1, rounds + 1):
            say(f"round {r}/{rounds}: exploring {batch_size} groups of {where}")
            # rules_k and ucb_c as the rounds are scored (the HMRCRITIC_* variables the resume check records), not
            # explore's own 16 and 1.0: a curve under HMRCRITIC_RULES_K=4 explored with 16 rules and scored with 4
            explore(mem, split=split, rounds=r, batch_size=batch_size, judge=judge, num_generations=num_generations,
                    seed=seed, source=source, groups=train_groups,
                    **{"progress": on_explore, "rules_k": scoring.rules_k, "ucb_c": scoring.ucb_c,
                       **(explore_kwargs or {})})
            evaluate(r)
        result = {"rows": rows, "num_groups": len(held),
                  "heldout_split": heldout_split if heldout is None else "custom", "batch_size": batch_size,
                  "split": split}
        if out is not None:
            from hmrcritic.io import atomic_write_strict_json

            # strict JSON, as --json prints it: a held-out group whose critique failed is a NaN in its row's
            # per_group_spearman (and a round that scored none NaN means), which json.dumps wrote as the bare word NaN
            # that jq and other strict parsers refuse (the partial file keeps them: only this package reads it back)
            atomic_write_strict_json(out / CURVE_FILE, result)
            result["png"] = str(plot_curve(rows, out / PNG_FILE))
            (out / PARTIAL_FILE).unlink(missing_ok=True)
        return result
    finally:
        hold.close()
        if mem is not memory:
            _close(mem)


def plot_curve(rows: Sequence[dict], path: str | Path) -> Path:
    """Held-out Spearman, Kendall and point-wise Pearson (left axis) and top-1 PA-MPJPE (right axis) per
    round, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    x = [r["round"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=110)
    ax.plot(x, [r["spearman"] for r in rows], "o-", label="Spearman (PA-MPJPE)")
    ax.plot(x, [r["kendall"] for r in rows], "s--", label="Kendall τ (PA-MPJPE)")
    if all("pearson_pointwise" in r for r in rows):
        ax.plot(x, [r["pearson_pointwise"] for r in rows], "d-.", color="tab:green",
                label="point-wise Pearson (all groups pooled)")
    ax.set_xlabel("exploration round (0 = starter memory)")
    ax.set_ylabel("held-out correlation")
    ax.grid(alpha=0.3)
    ax2 = ax.twinx()
    ax2.plot(x, [r["top1_pa_mpjpe_mm"] for r in rows], "^:", color="tab:red", label="top-1 PA-MPJPE")
    ax2.set_ylabel("top-1 PA-MPJPE (mm)", color="tab:red")
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, loc="lower right", fontsize=8)
    ax.set_title("critic learning curve (held-out groups)")
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)
    return path


def at_a_tenth(i: int, n: int, last: int | None = None) -> bool:
    """Whether progress ``i`` of ``n`` is worth a line: the first, and each tenth of the way (the last included).
    ``last``: the progress of the previous call (default ``i - 1``: one call per item; a caller told of batches
    passes the last ``i`` it was told). At most 11 lines however many items: the score calibration said only
    "1/32" and then "32/32", minutes apart, with no sign of life between.

    The one rule of every plain progress line — the commands' :func:`hmrcritic.commands.progress_at_tenths`
    (export, evaluate, evaluate-critic) and the calibration lines of explore and learning-curve — kept here, in
    the agent, which the commands may import and not the other way round: two copies had drifted (export said
    no first line, evaluate-critic a line every 10th item: 20 per stage of a 200-group warm-up)."""
    prev = i - 1 if last is None else last

    def tenth(k: int) -> int:
        return 10 if k >= n else 10 * k // max(n, 1)

    return prev < 1 <= i or tenth(i) > tenth(prev)


def tenths_progress(emit: Callable[[int, int], None]) -> Callable[[int, int], None]:
    """A ``(done, total)`` callback passing on to ``emit`` the calls :func:`at_a_tenth` keeps — the first, each
    tenth, the end — for progress told a batch at a time (``done`` may jump; the same figure twice is said once).
    The commands' :func:`hmrcritic.commands.progress_at_tenths` and reproduce's stage lines both use it."""
    last = [0]

    def show(done: int, total: int) -> None:
        if at_a_tenth(done, total, last[0]):
            emit(done, total)
        last[0] = max(last[0], done)

    return show


def fmt_value(x: Any, spec: str) -> str:
    """``x`` formatted with ``spec``, or "—" in the width a number would take where there is none (None, NaN).

    A variant (or a curve's round) whose critiques all failed has NaN means: the tables printed "nan" in its row
    (the ``--json`` output says null), which read as a figure the critic measured."""
    if isinstance(x, int | float | np.floating) and math.isfinite(x):
        return format(x, spec)
    return "—".rjust(len(format(0.0, spec)))


def format_rows(result: dict) -> str:
    """A plain-text table of :func:`explore_eval` rows (CLI/benchmarks), point-wise Pearson r included."""
    # named as evaluate-critic's table names them ("r pooled", "top-1 PA"): the two tables of one critic said
    # "r pts" / "top1 PA" here and "r pooled" / "top-1 PA" there for the same figures
    head = (f"{'variant':<15} {'ρ PA':>6} {'τ PA':>6} {'ρ MPJPE':>8} {'ρ PVE':>6} {'r pooled':>8} {'top-1 PA':>8} "
            f"{'top-1 MPJPE':>11}")
    lines = [head]
    for r in result["rows"]:
        f = fmt_value
        lines.append(f"{r['variant']:<15} {f(r['spearman'], '>6.3f')} {f(r['kendall'], '>6.3f')} "
                     f"{f(r['spearman_mpjpe'], '>8.3f')} {f(r['spearman_pve'], '>6.3f')} "
                     f"{f(r.get('pearson_pointwise'), '>8.3f')} {f(r['top1_pa_mpjpe_mm'], '>8.1f')} "
                     f"{f(r['top1_mpjpe_mm'], '>11.1f')}")
    blank = f"{'':>6} {'':>6} {'':>8} {'':>6} {'':>8}"
    lines.append(f"{'random pick':<15} {blank} {result['random_pa_mpjpe_mm']:>8.1f} {result['random_mpjpe_mm']:>11.1f}")
    lines.append(f"{'oracle':<15} {blank} {result['oracle_pa_mpjpe_mm']:>8.1f} {result['oracle_mpjpe_mm']:>11.1f}")
    lines += undefined_rho_notes(result["rows"])
    # the columns named no units ("top1 PA 87.3" read as a score) nor what "r pts" is: said as evaluate-critic does
    lines.append("ρ, τ: mean within-group rank correlation of overall with −error (PA-MPJPE unless named); r pooled: "
                 "point-wise Pearson r of overall with −PA-MPJPE over all hypotheses of all groups; top-1 PA, top-1 "
                 "MPJPE: error of the top-ranked hypothesis in mm (random pick: of a random one; oracle: the best)")
    return "\n".join(lines)


def undefined_rho_notes(rows: Sequence[dict]) -> list[str]:
    """A line per variant's row with groups whose ρ against −PA-MPJPE was undefined and counted as 0 (see
    :func:`correlation_row`): its ρ and τ are means that include those zeros."""
    out = []
    for r in rows:
        n = r.get("rho_undefined")
        if n:
            out.append(f"{r.get('variant')}: ρ undefined for {n} of {r.get('groups_scored')} scored groups (constant "
                       "scores or errors), counted as 0 in its ρ and τ")
    return out
