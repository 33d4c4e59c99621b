"""Reflective knowledge construction (PAPER.md §3): explore labelled groups, grow the memory, then freeze it.

``explore(memory, split, rounds, batch_size)`` runs the critique agent graph (the same graph that scores for
export and evaluation, with memory writes off) on batches of 3D-labelled groups. After each batch:

1. **Rule statistics.** Every rule put into a judgement (recalled into the judge's context) gets
   ``n_used += 1``; when the group's Spearman ρ(overall, −error) reaches τ the rules of that group also get
   ``n_success += 1``. The error is PA-MPJPE by default (``mix`` = (1.2·MPJPE + 2.0·PA-MPJPE + 0.7·PVE) / 3.9,
   the released code's ground-truth reward as a weighted mean in mm).
2. **Prototypes.** Representative cases — the best and the worst hypothesis of each group and the
   hypotheses the critic misjudged most — are written with their pose embedding, rationale, tags, true
   PA-MPJPE and a *settled* overall score. Settled score (our choice; the paper does not say): the critic's
   own scores re-assigned by the true error ranking (:func:`~hmrcritic.agent.mining.rank_matched_scores`),
   i.e. the critic's judgement corrected toward the true rank while keeping the critic's scale, so a recalled
   prototype tells the judge "a pose like this deserved that score" in the units the judge uses.
3. **Rule mining** where a group's ρ falls short of τ: the builtin judge's executable-rule miner, or the
   judge's own ``propose_rules`` (VLM) on the worst groups, validated (:mod:`hmrcritic.agent.mining`).
4. **Maintenance**: near-duplicates merged, rules failing after enough uses retired
   (:mod:`hmrcritic.memory.maintenance`); beyond the paper, also rules whose own deduction keeps making
   rankings worse (counterfactual Δρ of giving its points back, :func:`rule_removal_effects`, kept in
   ``explore_progress.json``).

Crash safety / resume: a batch's effect on the memory is computed as a *plan with absolute values* (rule
records after the batch, prototypes by deterministic id, mined rules with ids derived from their text),
written to ``explore_pending.json``, applied under the memory's write lock and followed — inside the same
lock — by the progress record (``explore_progress.json``). Re-applying a plan is a no-op, so an exploration
killed anywhere resumes from its last finished batch without counting a use twice. The score calibration is
refitted by a resumed call whenever the rule records changed or a round was explored since the last fit (the
rule state and round count each fit was made for are kept in the progress record), and its groups are recorded
before the fit, so an interrupted-then-resumed exploration ends with the memory of an uninterrupted one.
Rounds are counted per setting signature; a call with other settings (batch size, error metric) that would
explore groups an earlier run of the memory learned from is refused rather than counting them twice. A group
that cannot test a ranking (fewer than two hypotheses, one true error for all) is skipped with its reason. A
group whose critique fails (a judge error, a VLM endpoint down) is kept in its round's ``failed`` with the error
and is not retried: the round is done once its other groups are learned from, and the group stays recorded as
explored (a round where every group failed is not recorded, so the next call runs it again). A round that
``limit`` cut short (while the split goes on) is not recorded done: a later call explores the rest of it as a
batch of its own (see :func:`explore`), so no group is skipped or explored twice.

Frozen memory: ``explored_on.json`` records which split and group ids the memory has learned from;
:func:`assert_not_explored` refuses to evaluate on them. Scoring elsewhere opens the memory read-only and
records :meth:`MemoryStore.version` with every score.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hmrcritic.agent.calibration import CALIBRATION_GROUPS
from hmrcritic.agent.judges import judge_name, settled_overall
from hmrcritic.agent.mining import (
    BatchGroup,
    Rejection,
    candidate_to_rule,
    group_spearman,
    mine_rules,
    overrated_mask,
    rank_matched_scores,
    ranks,
    underrated_mask,
    validate_proposal,
)
from hmrcritic.agent.runs import hold_shared, in_use, remove_if_unheld
from hmrcritic.errors import AssetError, HMRCriticError, InputError, check_number, keywords_checked
from hmrcritic.io import append_jsonl, atomic_write_json, read_jsonl
from hmrcritic.memory.schema import Prototype, Rule
from hmrcritic.memory.store import (
    EXCLUSIVE_NAME,
    EXPLORE_FILES,
    HOLDER_NAME,
    LOCK_NAME,
    OPEN_LOCK_NAME,
    check_side_record,
    cli_hint,
    holds_memory,
    writers_held_off,
)
from hmrcritic.redact import scrub

ERROR_METRICS = ("pa_mpjpe", "mpjpe", "pve", "mix")
MIX_WEIGHTS = {"mpjpe": 1.2, "pa_mpjpe": 2.0, "pve": 0.7}
EXPLORED_FILE, PROGRESS_FILE, PENDING_FILE, LOG_FILE = EXPLORE_FILES
# lock files and the lock holder's record (present only during a write) are not content: a snapshot taken then
# must hash and copy like one taken a moment later
SNAPSHOT_SKIP = (LOCK_NAME, HOLDER_NAME, EXCLUSIVE_NAME, Path(EXCLUSIVE_NAME).with_suffix(".json").name, PENDING_FILE,
                 OPEN_LOCK_NAME, ".complete")
HISTORY_GROUPS = 64  # recent groups the miner validates a candidate rule on
PROTOS_MISJUDGED = 2  # per group, besides the best and the worst
HARM_TOLERANCE = 0.005  # mean Δρ from giving a rule's points back above which the rule is retired as harmful


# ------------------------------------------------------------------------------------------------ errors
def error_table(group: Any, body: Any = None) -> dict[str, np.ndarray]:
    """Per-hypothesis PA-MPJPE, MPJPE, PVE (mm) and their ``mix`` (the :data:`MIX_WEIGHTS`-weighted mean, mm) for a
    labelled group.

    PA-MPJPE is the group's own ``errors_mm`` (what :mod:`hmrcritic.agent.groups` measured); the others are
    computed here against the sample's ground-truth body and cached in ``group.extra["errors"]`` (a caller
    may pre-fill that dict, e.g. a constructed test split)."""
    extra = getattr(group, "extra", None)
    if isinstance(extra, dict) and "errors" in extra and all(k in extra["errors"] for k in ("mpjpe", "pve")):
        tab = {k: np.asarray(v, np.float64) for k, v in extra["errors"].items()}
    else:
        import torch

        from hmrcritic.agent.groups import _labels
        from hmrcritic.hmr.body import load_body_model
        from hmrcritic.hmr.metrics import standard_metrics

        body = body or load_body_model()
        h = {k: torch.as_tensor(np.asarray(v), dtype=torch.float32) for k, v in group.hypotheses.items()}
        lab = {k: torch.as_tensor(v, dtype=torch.float32)[None] for k, v in _labels(group.sample).items()}
        with torch.no_grad():
            pred = body(h["global_orient"], h["body_pose"], h["betas"], h.get("transl"))
            gt = body(lab["global_orient"], lab["body_pose"], lab["betas"], lab.get("transl"))
            m = standard_metrics(pred.joints, gt.joints.expand_as(pred.joints), pred.vertices,
                                 gt.vertices.expand_as(pred.vertices))
        tab = {k: v.double().numpy() for k, v in m.items()}
        if isinstance(extra, dict):
            extra["errors"] = {k: v.tolist() for k, v in tab.items()}
    tab["pa_mpjpe"] = np.asarray(group.errors_mm, np.float64)
    # the weighted mean, in mm: what reads ``error`` beyond its ranking reads millimetres — settle="error"
    # (settled_overall), the rule miner's error_mm column, the score calibration. The weighted sum (3.9× a mm error)
    # ranks the same but settled a typical hypothesis at 0.13 of 10. (Prototypes keep their PA-MPJPE.)
    tab["mix"] = sum(w * tab[k] for k, w in MIX_WEIGHTS.items()) / sum(MIX_WEIGHTS.values())
    return tab


def exploration_error(group: Any, metric: str = "pa_mpjpe", body: Any = None) -> np.ndarray:
    if metric not in ERROR_METRICS:
        raise InputError(f"error metric {metric!r}: choose one of {', '.join(ERROR_METRICS)}")
    if metric == "pa_mpjpe":
        return np.asarray(group.errors_mm, np.float64)
    return error_table(group, body)[metric]


# --------------------------------------------------------------------------------------- explored sidecar
def _memory_path(memory: Any) -> Path:
    from hmrcritic import config

    if isinstance(memory, str | Path):
        return config.path_arg(memory, "memory").resolve()
    if memory is None:
        return config.memory_dir().resolve()
    return Path(memory.path)


def explored_record(memory: Any) -> dict:
    """``explored_on.json`` of a memory: ``{"splits": {split: {"group_ids": [...], ...}}}`` (empty if none)."""
    path = _memory_path(memory) / EXPLORED_FILE
    if not path.exists():
        return {"splits": {}}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(data, dict):
            data.setdefault("splits", {})
        check_side_record("explored_on", data)  # the check memory import applies: a split that is a list
        # of ids, not an object, failed later as a bare AttributeError
    # RecursionError: JSON nested thousands deep, which came out of every evaluation's guard as a bare traceback
    except (OSError, ValueError, RecursionError) as exc:
        raise InputError(f"{path}: unreadable exploration record ({str(exc).splitlines()[0]}); it guards against "
                         "evaluating on explored groups, so fix or delete it knowingly") from exc
    return data


def assert_not_explored(memory: Any, split: str, group_ids: Sequence[str], record: dict | None = None) -> None:
    """Refuse to evaluate on groups the memory learned from (same split and group id).

    Group ids are the labelled-group ids (``<split>-<index>``), so the same index of another split is fine.
    ``record``: the memory's :func:`explored_record`, when the caller has read it already (one read for a check
    of several splits). Raises :class:`InputError` naming how many overlap and an example."""
    rec = (explored_record(memory) if record is None else record).get("splits", {}).get(split)
    if not rec:
        return
    seen = set(rec.get("group_ids", [])) | set(rec.get("calibration_group_ids", []))
    clash = [g for g in group_ids if g in seen]
    if clash:
        raise InputError(f"memory at {_memory_path(memory)} was explored (or calibrated) on {len(clash)} of these "
                         f"{split!r} groups "
                         f"(e.g. {clash[0]}); evaluate on held-out groups (another split) or a memory not "
                         "explored on them")


def _tree_digest(folder: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(folder.rglob("*")):
        if f.is_file() and f.name not in SNAPSHOT_SKIP:
            h.update(str(f.relative_to(folder)).encode())
            h.update(hashlib.sha256(f.read_bytes()).digest())
    return h.hexdigest()[:16]


def frozen_copy(memory: Any = None, root: str | Path | None = None):
    """A read-only :class:`MemoryStore` on a snapshot copy of an embedded memory folder.

    Why: Chroma rewrites bytes of its SQLite file and HNSW index whenever a client opens a database, even
    for reads. Scoring from a copy keeps the user's memory folder byte-identical (not just equal in
    :meth:`MemoryStore.version`) and makes "frozen" literal. The copy lives in
    ``runs_dir()/frozen-memory/<content digest>`` and is reused while the source is unchanged; its
    ``explored_on.json`` travels with it, so :func:`assert_not_explored` works on either."""
    from hmrcritic import config
    from hmrcritic.memory.store import MemoryStore

    if getattr(memory, "chroma_url", None):
        return MemoryStore(chroma_url=memory.chroma_url, read_only=True)  # a server: read-only client
    src = _memory_path(memory)
    if src.is_file():  # "… or `memory reset --yes --memory-dir afile`" offered to reset a memory onto a file
        raise InputError(f"{src} is a file, not a memory folder")
    if not holds_memory(src):
        raise InputError(f"no memory at {src} to freeze; explore first or {cli_hint('reset --yes', src)}")
    dst_root = Path(root) if root is not None else config.runs_dir() / "frozen-memory"
    # digested and copied with the source's writers held off: a copy taken while another process (an explore, a
    # critique --learn) wrote a batch mixed files from before and after it, and was named by a digest of neither
    with writers_held_off(src):
        # with the writers held off, a pending plan is a batch killed mid-write (a live one holds the write lock):
        # the snapshot left the plan out (SNAPSHOT_SKIP) and scored a half-written memory that no exploration ever
        # ended with; the next explore finishes the batch first (_finish_pending), as `memory import` says too
        if (src / PENDING_FILE).exists():
            raise InputError(f"memory at {src} holds an exploration batch that was interrupted while it was being "
                             f"written ({PENDING_FILE}); `hmrcritic explore --rounds 0` on it finishes the batch "
                             "and explores nothing new — run it, then score the memory")
        dst = dst_root / _tree_digest(src)
        for _attempt in range(3):
            if not (dst / ".complete").exists():
                _copy_snapshot(src, dst)
            try:  # held for the store's life: `runs prune` removed a snapshot a running command was reading
                held = hold_shared(dst)
            except FileNotFoundError:  # pruned between the copy and the lock: copy again
                continue
            if (dst / ".complete").exists():
                break
            if held is not None:  # pruned while we waited for it, or a folder no copy ever completed
                os.close(held)
        else:
            raise AssetError(f"the memory snapshot {dst} stays incomplete (no .complete file); remove that folder "
                             "and run again")
    try:
        # the snapshot is a folder: with HMRCRITIC_CHROMA_URL set, MemoryStore(dst) opened that server's memory
        # instead, and scoring "from the frozen copy" read (or failed to reach) the shared memory
        store = MemoryStore(dst, chroma_url="", read_only=True)
    except BaseException:
        if held is not None:
            os.close(held)
        raise
    if held is not None:
        weakref.finalize(store, os.close, held)
    return store


def _copy_snapshot(src: Path, dst: Path) -> None:
    """Copy the memory folder ``src`` to ``dst`` (made complete by one rename). The copy is made in a
    ``.copy-*`` folder that is held in use (:func:`~hmrcritic.agent.runs.in_use`, which makes it again if a
    ``runs prune`` removed it before it was held) while it is filled, so a prune running beside it leaves it
    alone, and the ones no copy holds (killed mid-way) are removed first."""
    import shutil
    import tempfile

    dst.parent.mkdir(parents=True, exist_ok=True)
    for left in dst.parent.glob(".copy-*"):  # a copy killed mid-way left it (a live copy holds its own)
        remove_if_unheld(left)
    tmp = Path(tempfile.mkdtemp(prefix=".copy-", dir=dst.parent))
    try:
        with in_use(tmp):
            shutil.copytree(src, tmp / "m", ignore=shutil.ignore_patterns(*SNAPSHOT_SKIP))
            (tmp / "m" / ".complete").write_text(str(src), encoding="utf-8")
            with contextlib.suppress(OSError):  # another process made the same copy meanwhile
                (tmp / "m").rename(dst)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _add_explored(memory: Any, split: str, group_ids: list[str], info: dict, key: str = "group_ids") -> None:
    """Record ``group_ids`` under ``explored_on.json[split][key]`` (``group_ids``: learned from;
    ``calibration_group_ids``: the score calibration was fitted on them) and ``info`` beside them."""
    data = explored_record(memory)
    rec = data["splits"].setdefault(split, {"group_ids": []})
    known = set(rec.setdefault(key, []))
    rec[key] += [g for g in group_ids if g not in known]
    rec.update({k: v for k, v in info.items() if k not in ("group_ids", "calibration_group_ids")})
    atomic_write_json(_memory_path(memory) / EXPLORED_FILE, data)


def _record_explored(memory: Any, split: str, group_ids: list[str], info: dict, key: str = "group_ids") -> None:
    """:func:`_add_explored` with the memory folder's writers held off, as a learning critique records the scene it
    learned from (``api._record_learned_scene``). Read, added to and written unlocked, a scene that a critique of
    another process recorded between this read and this write was overwritten: learned from, and open to
    evaluation. (The lock is taken here, not in ``_add_explored``: it is not re-entrant, and the critique's caller
    holds it already.)"""
    with writers_held_off(_memory_path(memory)):
        _add_explored(memory, split, group_ids, info, key=key)


# ------------------------------------------------------------------------------------------------ results
@dataclass
class RoundReport:
    round: int  # global round number (1-based) of this memory
    batch_key: str
    groups: int = 0
    # {"group_id", "error", "kind"}: kind "error" (its critique failed), "skipped" (unrankable: nothing to learn)
    # or "prototypes" (scored, its prototypes lost); records from before kinds have only the message
    failed: list[dict] = field(default_factory=list)
    mean_spearman: float = float("nan")
    short_groups: int = 0  # groups with ρ < τ
    rules_used: int = 0  # rule uses recorded
    rules_added: list[dict] = field(default_factory=list)
    rejected: list[dict] = field(default_factory=list)
    retired: list[str] = field(default_factory=list)
    merged: list[list[str]] = field(default_factory=list)
    prototypes: int = 0
    seconds: float = 0.0
    memory_version: str = ""


@dataclass
class ExploreSummary:
    memory: str
    split: str
    source: str
    error_metric: str
    tau: float
    rounds: list[RoundReport] = field(default_factory=list)
    resumed_rounds: int = 0  # rounds already done by an earlier (interrupted) run
    stopped: str = ""  # why it stopped early, if it did
    memory_version: str = ""
    log_path: str = ""
    calibration: dict | None = None  # the ScoreCalibration fitted at the end of this call, if one was
    calibration_note: str = ""  # why none was fitted, when none was

    @property
    def groups(self) -> int:
        return sum(r.groups for r in self.rounds)

    @property
    def rules_added(self) -> list[dict]:
        return [a for r in self.rounds for a in r.rules_added]

    @property
    def rules_retired(self) -> list[str]:
        return [a for r in self.rounds for a in r.retired]

    def as_dict(self) -> dict:
        d = asdict(self)
        d.update(groups=self.groups, rules_added=self.rules_added, rules_retired=self.rules_retired)
        return d


# ---------------------------------------------------------------------------------------------- the loop
def _signature(settings: dict) -> str:
    """The run's id in the progress record: a hash of its :func:`_settings` (in their order)."""
    return hashlib.sha1(json.dumps(list(settings.values())).encode()).hexdigest()[:10]


def _read_progress(path: Path) -> dict:
    f = path / PROGRESS_FILE
    if not f.exists():
        return {"runs": {}, "rounds_total": 0, "batches": []}
    try:
        data = json.loads(f.read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        _check_progress(data)
        return data
    except (OSError, ValueError, RecursionError) as exc:  # RecursionError: JSON nested thousands deep
        raise InputError(f"{f}: unreadable exploration progress record ({str(exc).splitlines()[0]}); restore it, or "
                         f"start the memory over with {cli_hint('reset --yes', path)} (deleting "
                         "the file alone would explore the same groups again and count them twice)") from exc


def _is_count(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def _check_progress(data: dict) -> None:
    """ValueError naming the first part of a progress record exploration cannot read (a hand edit, a bad restore,
    an imported export's record: ``memory import`` checks only that it is an object). A record of the wrong shape
    inside failed later as a bare KeyError, AttributeError or TypeError traceback (a history group without its
    evidence, ``"runs": []``), or was used and kept (a history group's lists of other lengths, which fail the
    miner's simulation with a numpy shape error once a round gets that far)."""
    runs = data.get("runs", {})
    if not isinstance(runs, dict):
        raise ValueError("'runs' is not an object")
    for sig, run in runs.items():
        if not isinstance(run, dict):
            raise ValueError(f"run {sig}: not an object")
        if not isinstance(run.get("rounds_done", []), list) or not all(map(_is_count, run.get("rounds_done", []))):
            raise ValueError(f"run {sig}: 'rounds_done' is not a list of round numbers")
        spans = run.get("spans", [])
        if not isinstance(spans, list) or not all(
                isinstance(x, list) and len(x) == 2 and all(isinstance(v, int) and not isinstance(v, bool) for v in x)
                for x in spans):
            raise ValueError(f"run {sig}: 'spans' is not a list of [first, end] group positions")
        if not isinstance(run.get("settings", {}), dict):
            raise ValueError(f"run {sig}: 'settings' is not an object")
        history = run.get("history", [])
        if not isinstance(history, list):
            raise ValueError(f"run {sig}: 'history' is not a list")
        for i, x in enumerate(history):
            try:
                bg = BatchGroup.from_json(x)
                ok = all(v.ndim == 1 and len(v) == bg.n for v in (bg.overall, bg.error, *bg.evidence.values()))
            # OverflowError: an integer of hundreds of digits in a score list ("int too large to convert to float")
            except (KeyError, TypeError, ValueError, AttributeError, OverflowError):
                ok = False
            if not ok:
                raise ValueError(f"run {sig}: history group {i} is not a group record (group_id, and evidence, "
                                 "overall and error lists of one length)")
    if not _is_count(data.get("rounds_total", 0)):
        raise ValueError("'rounds_total' is not a count")
    if not isinstance(data.get("batches", []), list):
        raise ValueError("'batches' is not a list")
    effects = data.get("rule_effects", {})
    if not isinstance(effects, dict) or not all(
            isinstance(v, list) and len(v) == 2 and isinstance(v[0], int | float) and _is_count(v[1])
            for v in effects.values()):
        raise ValueError("'rule_effects' is not an object of [Σ Δρ, groups] pairs")
    if not isinstance(data.get("calibration", {}), dict):
        raise ValueError("'calibration' is not an object")


def _settings(split: str, batch_size: int, seed: int, source: str, num_generations: int, metric: str, start: int,
              custom: str | None) -> dict:
    """What an exploration run's signature is made of, kept with its progress (see :func:`_check_overlap`)."""
    return {"split": split, "batch_size": batch_size, "seed": seed, "source": source,
            "num_generations": num_generations, "error_metric": metric, "start": start, "custom": custom}


def _same_groups(a: dict, b: dict) -> bool:
    """Whether two runs' group index ``i`` is the same group: the same list of given groups, or for groups drawn
    from a split the same split, seed, source and group size (which decide its hypotheses)."""
    if a.get("custom") or b.get("custom"):
        return a.get("split") == b.get("split") and a.get("custom") == b.get("custom")
    # the source a run drew from (``source_used``: kept with its batches, worked out for this run before it
    # draws); ``auto`` alone (a record from before it was kept) may have met the same groups as either
    src_a, src_b = (s.get("source_used") or s.get("source") for s in (a, b))
    return (all(a.get(k) == b.get(k) for k in ("split", "seed", "num_generations"))
            and (src_a == src_b or "auto" in (src_a, src_b)))


def _check_overlap(prog: dict, sig: str, settings: dict, rounds: int, limit: int | None) -> None:
    """Refuse a run that would explore groups another run of this memory already learned from.

    Rounds are counted per signature, so a call with another ``--batch-size`` (or error metric) than the one it
    means to resume is a new run from the split's first group: before, it silently explored the same groups a
    second time (rule statistics counted twice, prototypes overwritten). Runs on other hypotheses (another
    seed, source or group count) are fine. Runs recorded before settings and spans were kept are not checked."""
    bs, lo = settings["batch_size"], settings["start"]
    own = prog.get("runs", {}).get(sig, {})
    done = set(own.get("rounds_done", []))
    end = rounds * bs if limit is None else min(rounds * bs, limit)
    # only rounds that begin before the end of a recorded span can meet one: `--rounds 1000000000` ("until the split
    # ends") looked at every round here, hanging the call before its first group while the dict filled memory
    reach = max((int(b) for run in prog.get("runs", {}).values() for _, b in run.get("spans", [])), default=lo)
    top = min(rounds, max(0, -(-(reach - lo) // bs)))
    # a round an earlier call's limit cut short goes on from its first unexplored group (0 for any other round)
    firsts = {r: r * bs + _explored_of_round(own, r, lo, bs) for r in range(top) if r not in done}
    mine = [(lo + a, lo + min((r + 1) * bs, end)) for r, a in firsts.items() if a < end]
    for other, run in sorted(prog.get("runs", {}).items()):
        theirs = run.get("settings")
        # a run whose only batch was cut short by its limit has no round done, but learned from its span
        if other == sig or not isinstance(theirs, dict) or not (run.get("rounds_done") or run.get("spans")):
            continue
        if not _same_groups(theirs, settings):
            continue
        spans = [tuple(x) for x in run.get("spans", [])]
        clash = [(max(a, c), min(b, d)) for a, b in mine for c, d in spans if max(a, c) < min(b, d)]
        if clash:
            differ = ", ".join(f"{k.replace('_', ' ')} {theirs.get(k)} (now {settings[k]})"
                               # on given groups, seed, source and group size do not pick the groups either
                               for k in ("batch_size", "error_metric", "start", "seed", "source", "num_generations")
                               if theirs.get(k) != settings[k])
            first, last = min(a for a, _ in clash), max(b for _, b in clash) - 1
            n_done = len(run.get("rounds_done", []))
            raise InputError(
                f"explore: this memory already learned from {settings['split']} groups #{first}–#{last} in an "
                f"earlier run with other settings ({differ}; "
                f"{f'{n_done} round(s)' if n_done else 'part of a round'} done), and this run "
                "would explore them again, counting them twice. To resume that run, give its settings again; "
                + ("to explore them again on purpose (new hypotheses), change --seed; " if not settings["custom"]
                   else "") + "or use a fresh --memory-dir")


def _explored_of_round(run: dict, r: int, start: int, batch_size: int) -> int:
    """How many groups of round ``r`` (one not done) earlier calls explored before their ``limit`` cut the round
    short: the end of the round's recorded spans, which run on from its first group (0 where none is recorded)."""
    lo = start + r * batch_size
    ends = [int(b) for a, b in run.get("spans", []) if lo <= int(a) < lo + batch_size]
    return max(ends) - lo if ends else 0


def _open_memory(memory: Any):
    from hmrcritic.memory.store import MemoryStore

    if memory is None or isinstance(memory, str | Path):
        memory = MemoryStore(memory)
    if getattr(memory, "read_only", False):
        raise InputError(f"memory at {memory.location} is open read-only (frozen); exploring writes to it — "
                         "open it writable")
    return memory


_REALS = ("tau", "min_gain", "retire_min_rate")
_GROUP_FIELDS = ("group_id", "sample", "hypotheses", "errors_mm")


def _check_types(memory: Any, groups: Any, **values: Any) -> None:
    """Arguments of the wrong type are refused in one line, before the memory folder is made or opened: they failed
    as a bare TypeError (``tau="x"``) or, for ``groups=[1, 2]``, an AttributeError after the folder was created.
    Numpy and torch scalars count as numbers; ``limit`` may be None."""
    if memory is not None and not isinstance(memory, str | Path) and not hasattr(memory, "exclusive"):
        raise InputError(f"explore: memory must be a MemoryStore, a memory folder (str or Path) or None, got "
                         f"{type(memory).__name__}")
    for name, value in values.items():
        if not (value is None and name == "limit"):
            check_number(f"explore: {name}", value, integer=name not in _REALS)
    if groups is not None:
        if isinstance(groups, str | bytes) or not isinstance(groups, Sequence):
            raise InputError(f"explore: groups must be a list of LabelledGroup, got {type(groups).__name__}")
        bad = next((i for i, g in enumerate(groups) if not all(hasattr(g, f) for f in _GROUP_FIELDS)), None)
        if bad is not None:
            raise InputError(f"explore: groups[{bad}] must be a LabelledGroup (group_id, sample, hypotheses, "
                             f"errors_mm), got {type(groups[bad]).__name__}")


@keywords_checked
def explore(
    memory: Any = None,
    split: str = "train",
    rounds: int = 3,
    batch_size: int = 8,
    *,
    tau: float = 0.5,
    judge: Any = "builtin",
    error_metric: str = "pa_mpjpe",
    ucb_c: float = 1.0,
    rules_k: int = 16,
    num_generations: int = 16,
    limit: int | None = None,
    seed: int = 0,
    start: int = 0,
    source: str = "auto",
    groups: Sequence[Any] | None = None,
    max_reflections: int | None = None,
    render: bool | None = None,
    agent_config: dict | None = None,
    max_new_rules: int = 2,
    min_gain: float = 0.01,
    retire_min_uses: int = 8,
    retire_min_rate: float = 0.3,
    merge_text: bool = True,
    prototypes: str = "representative",
    settle: str = "rank",
    calibration_groups: int = CALIBRATION_GROUPS,
    progress: Callable[[str, dict], None] | None = None,
) -> ExploreSummary:
    """Explore ``rounds`` batches of ``batch_size`` labelled groups and grow ``memory`` (see module doc).

    ``memory``: a writable MemoryStore or a folder (None → the configured memory). ``groups``: explicit
    :class:`~hmrcritic.agent.groups.LabelledGroup` objects instead of drawing them from ``split`` (their
    ``split`` is still the name recorded in ``explored_on.json``). ``progress(event, payload)`` is called with
    ``"group"``, ``"rule_added"``, ``"rule_rejected"``, ``"round"`` (the :class:`RoundReport` and
    ``prototypes_in_memory``, the memory's count after it), ``"resumed"``, ``"calibrate"``, ``"calibrated"`` and
    ``"note"`` (``{"step", "text"}``: a slow first-use step about to run, such as the pose prior's fit) events.
    Calling again with more ``rounds`` continues where the last call stopped (same split/batch size/seed/source).

    ``limit`` caps the run's groups in total, counted from its first (``start``), not this call's: a later call
    with the same ``limit`` explores nothing more ("limit of 10 groups reached"), one with a larger limit goes on
    up to it. A round it cuts short (groups 8–9 of a batch of 8 with ``limit=10``) is not recorded done while the
    split has more groups: a later call explores the rest of that round (10–15, within its own limit) as a
    continuation batch, after which the round is done. No group is skipped or explored
    twice, but the continuation is a batch of its own (a log record and a global round number of its own) and
    its rule statistics, prototypes and mining see 6 groups, then 2, instead of one batch of 8: the memory is
    not the one an uninterrupted run without ``limit`` would grow. A round short because the split ended is done.

    With a builtin judge, the call ends by fitting the memory's score calibration on the
    ``calibration_groups`` labelled groups that follow the explored ones (:mod:`hmrcritic.agent.calibration`;
    0 = leave the calibration alone). It is refitted whenever this call explored something or the stored one
    is missing or stale (the rules changed since it was fitted); those groups are recorded as used
    (:func:`assert_not_explored` refuses them too).
    """
    from hmrcritic.agent.judges import make_judge
    from hmrcritic.agent.state import AgentConfig

    _check_types(memory, groups, tau=tau, min_gain=min_gain, retire_min_rate=retire_min_rate, rounds=rounds,
                 batch_size=batch_size, num_generations=num_generations, calibration_groups=calibration_groups,
                 limit=limit, seed=seed, start=start, max_new_rules=max_new_rules, retire_min_uses=retire_min_uses)
    if error_metric not in ERROR_METRICS:
        raise InputError(f"error metric {error_metric!r}: choose one of {', '.join(ERROR_METRICS)}")
    if prototypes not in ("representative", "all") or settle not in ("rank", "error"):
        raise InputError(f"explore: prototypes {prototypes!r} must be representative|all, settle {settle!r} "
                         "rank|error")
    if rounds < 0 or batch_size < 1:
        raise InputError(f"explore: need rounds ≥ 0 and batch size ≥ 1 (got {rounds}, {batch_size})")
    if start < 0:  # given groups were sliced from the end (groups[-2:2]): an odd group explored, a span [-2, -1] kept
        raise InputError(f"explore: start is the position of the first group, ≥ 0 (got {start})")
    if not (-1.0 <= tau <= 1.0):
        raise InputError(f"explore: τ = {tau} is not a Spearman value in [-1, 1]")
    if num_generations < 2 or calibration_groups < 0:
        raise InputError(f"explore: need ≥ 2 hypotheses per group and calibration groups ≥ 0 (got "
                         f"{num_generations}, {calibration_groups})")
    if source not in ("auto", "model", "perturbed"):
        raise InputError(f"explore: group source {source!r}: choose auto, model or perturbed")
    if groups is None:
        from hmrcritic.hmr.data import SPLITS

        if split not in SPLITS:
            raise InputError(f"explore: unknown split {split!r}; known: {', '.join(SPLITS)}")
        from hmrcritic.hmr.diffusion import MAX_GENERATIONS

        # refused now: raised while drawing the first batch, it read "split exhausted before round 1" and the
        # call ended with status 0 having explored nothing
        if num_generations > MAX_GENERATIONS:
            raise InputError(f"explore: at most {MAX_GENERATIONS} hypotheses per group (got {num_generations})")
    if limit is not None and limit < 1:
        raise InputError(f"explore: --limit must be ≥ 1 group, got {limit}")
    # the agent settings (HMRCRITIC_* variables included) are checked before the memory folder is touched
    AgentConfig.model_validate({**(agent_config or {}), "rules_k": rules_k, "ucb_c": ucb_c,
                                **({"max_reflections": max_reflections} if max_reflections is not None else {})})
    # an unknown judge name or a VLM judge without an endpoint fails here too, before a memory folder is created
    judge_obj = make_judge(judge) if isinstance(judge, str) else judge
    opened = memory is None or isinstance(memory, str | Path)
    memory = _open_memory(memory)
    try:
        with memory.exclusive("an exploration"):  # one exploration per memory at a time (store.py)
            mpath = Path(memory.path)
            emit = progress or (lambda event, payload: None)
            from hmrcritic.agent.judges import BuiltinJudge

            # judges that score from executable rules (the builtin one and its variants) get the executable miner
            is_builtin = isinstance(judge_obj, BuiltinJudge)
            cfg = AgentConfig.model_validate({
                **(agent_config or {}), "judge": judge_name(judge_obj), "learn": False,
                "use_memory": True, "rules_k": rules_k, "ucb_c": ucb_c,
                "render": (not is_builtin) if render is None else bool(render),
                **({"max_reflections": max_reflections} if max_reflections is not None else {}),
                # exploration scores on the judge's own scale: a calibration fitted by an earlier call would change
                # the settled prototypes and what the miner simulates, so a continued exploration would differ from
                # one uninterrupted run (the fit at the end of this call is what calibrates)
                "use_calibration": False,
            })
            if groups is None:  # the split's shards against their manifest, once (not per batch); see verify_split
                from hmrcritic.agent.groups import reads_images, verify_split

                verify_split(split, images=reads_images(judge_obj, cfg.render))
            custom = (None if groups is None
                      else hashlib.sha1(",".join(g.group_id for g in groups).encode()).hexdigest()[:10])
            settings = _settings(split, batch_size, seed, source, num_generations, error_metric, start, custom)
            sig = _signature(settings)
            summary = ExploreSummary(memory=memory.location, split=split, source=source, error_metric=error_metric,
                                     tau=tau, log_path=str(mpath / LOG_FILE))

            _finish_pending(memory, emit)
            prog = _read_progress(mpath)
            total_cap = limit
            drawing = settings
            if groups is None and source == "auto" and any(o != sig for o in prog.get("runs", {})):
                from hmrcritic.agent.groups import group_model  # which groups "auto" will draw, for the check

                drawing = {**settings, "source_used": "perturbed" if group_model() is None else "model"}
            _check_overlap(prog, sig, drawing, rounds, total_cap)
            done = set(prog.get("runs", {}).get(sig, {}).get("rounds_done", []))
            summary.resumed_rounds = len([r for r in done if r < rounds])
            if summary.resumed_rounds:
                emit("resumed", {"rounds_done": sorted(done), "signature": sig, "rounds": rounds})

            from hmrcritic.agent.graph import compile_graph, open_checkpointer

            saver = open_checkpointer()
            app = compile_graph(saver)
            # the miner validates candidates on this run's recent groups: kept with the progress record, so a
            # resumed (or continued) run mines exactly as one uninterrupted run would
            history = [BatchGroup.from_json(x) for x in prog.get("runs", {}).get(sig, {}).get("history", [])]
            resolved_source = source
            for r in range(rounds):
                if r in done:
                    continue
                # groups of this round an earlier call explored before its limit cut the round short (usually 0)
                part = _explored_of_round(prog.get("runs", {}).get(sig, {}), r, start, batch_size)
                lo = r * batch_size + part
                want = batch_size - part
                n_here = want if total_cap is None else min(want, total_cap - lo)
                if n_here <= 0:
                    summary.stopped = f"limit of {total_cap} groups reached"
                    break
                try:
                    batch = _batch_groups(groups, split, start + lo, n_here, num_generations, seed, resolved_source)
                except InputError as exc:
                    if groups is None and start + lo < _split_size(split):
                        # not the end of the split (an unlabelled split such as wild, a damaged sample): the error
                        # itself, not "split exhausted" and status 0 with nothing explored
                        raise
                    summary.stopped = f"split exhausted before round {r + 1}: {exc}"
                    break
                if not batch:
                    summary.stopped = f"no groups left for round {r + 1}"
                    break
                resolved_source = batch[0].source if source == "auto" and groups is None else resolved_source
                summary.source = resolved_source
                # the limit cut the round short and the split goes on: not done, a later call explores the rest
                cut = (n_here < want and len(batch) == n_here
                       and start + lo + n_here < (len(groups) if groups is not None else _split_size(split)))
                _note_prior_fit(emit)
                report = _run_batch(memory, app, saver, judge_obj, is_builtin, cfg, batch, r, sig, split, tau,
                                    error_metric, history, emit, max_new_rules=max_new_rules, min_gain=min_gain,
                                    retire_min_uses=retire_min_uses, retire_min_rate=retire_min_rate,
                                    merge_text=merge_text, prototypes=prototypes, settle=settle,
                                    info={"seed": seed, "source": resolved_source, "num_generations": num_generations},
                                    run_record={"settings": {**settings, "source_used": resolved_source},
                                                "span": [start + lo, start + lo + len(batch)],
                                                **({"partial": True} if cut else {})},
                                    part=part)
                summary.rounds.append(report)
                # the report counts the prototypes this round stored; the memory's total beside it, counted (an
                # import or a starter memory holds others): "13 prototypes" read as the total `memory stats` shows
                emit("round", {**asdict(report), "prototypes_in_memory": memory.prototypes.count()})
            if resolved_source == "auto" and groups is None:  # nothing drawn in this call: what the run drew
                resolved_source = explored_record(memory)["splits"].get(split, {}).get("source", "auto")
                summary.source = resolved_source
            if is_builtin and calibration_groups > 0:
                # the groups after the last batch this signature ever explored (also right for a resumed or a
                # rounds=0 call, which only refits a missing or stale calibration)
                run_now = _read_progress(mpath).get("runs", {}).get(sig, {})
                ran = set(run_now.get("rounds_done", []))
                end = (max(ran) + 1) * batch_size if ran else 0
                # a round a limit cut short (not done) counts up to its last explored group
                end = max([end] + [int(b) - start for _, b in run_now.get("spans", [])])
                end = end if total_cap is None else min(end, total_cap)
                _maybe_calibrate(memory, summary, judge_obj, cfg, groups, split, start + end, calibration_groups,
                                 num_generations, seed, resolved_source, emit)
            summary.memory_version = memory.version()
            return summary
    finally:
        if opened:  # a store this call opened from a folder is closed, not left open until garbage collection
            memory.close()


def _rules_state(memory) -> str:
    """Hash of every rule record, statistics included. The builtin judge weighs a rule by its success rate and
    recall ranks rules by Ψ, so scores (and a calibration fitted on them) depend on the statistics too, which
    :meth:`MemoryStore.rules_fingerprint` (ids and conditions) leaves out."""
    from hmrcritic.memory.rules import rule_key

    keys = sorted(json.dumps(rule_key(r), sort_keys=True) for r in memory.rules.all(include_retired=True))
    return hashlib.sha256("\n".join(keys).encode("utf-8")).hexdigest()[:16]


def _maybe_calibrate(memory, summary: ExploreSummary, judge_obj, cfg, groups, split: str, start: int, n: int,
                     num_generations: int, seed: int, source: str, emit) -> None:
    """Refit the score calibration on the ``n`` groups from ``start`` when something changed (see explore).

    "Changed" includes rule statistics: an exploration interrupted after its last round and before its fit was
    stored (Ctrl-C, kill) left the previous call's calibration behind, which the rule fingerprint alone calls
    fresh when the round mined and retired nothing; the resumed call then kept it, and ended with another memory
    than one uninterrupted call. The rule state each fit was made for is kept in the progress record."""
    from hmrcritic.agent.calibration import calibrate_memory, calibration_doubts

    name = judge_name(judge_obj)
    mpath = Path(memory.path)
    try:
        current = memory.calibration()
    except AssetError:
        current = None  # unreadable: replace it
    state = _rules_state(memory)
    prog = _read_progress(mpath)
    fitted = prog.get("calibration", {})
    rounds_total = int(prog.get("rounds_total", 0))
    fresh = (current is not None and current.judge == name
             and current.rules_fingerprint == memory.rules_fingerprint()
             # fitted before the calibration followed --error-metric: PA-MPJPE whatever the memory explored on
             and current.error_metric == summary.error_metric
             # None: fitted before the state was kept (or not by explore)
             and fitted.get("rules_state") in (None, state)
             # a round explored since the fit moves the calibration groups even where it left the rules alone
             # (no rule recalled, or only unrankable groups): an uninterrupted call refits after it
             and fitted.get("rounds_total", rounds_total) == rounds_total)
    if fresh and not summary.rounds:
        return
    kept = (" (the memory keeps its earlier calibration, fitted for its rules as they were then; "
            f"{cli_hint('calibration --clear', memory.path, getattr(memory, 'chroma_url', None))} removes it)"
            ) if current is not None else ""
    # never fit on what the rules learned from; groups another run of this memory learned from (another seed)
    # are passed over for the next ones (one draw of n groups where none was learned, as before)
    learned = set(explored_record(memory)["splits"].get(split, {}).get("group_ids", []))
    cal_groups: list = []
    why = "the split has no groups after the explored ones that the memory has not learned from"
    pos, want = start, n
    while want > 0:
        try:
            got = _batch_groups(groups, split, pos, want, num_generations, seed, source)
        except InputError as exc:
            why = str(exc) if not cal_groups else why
            break
        cal_groups += [g for g in got if g.group_id not in learned]
        pos += want
        if len(got) < want:  # the split ends here
            break
        want = n - len(cal_groups)
    if not cal_groups:
        summary.calibration_note = f"score calibration not refitted: {why}{kept}"
        emit("calibrated", {"calibration": None, "note": summary.calibration_note})
        return
    # recorded before the fit, as explored groups are before scoring: a run killed after the fit was stored
    # must not leave its groups open to evaluation
    _record_explored(memory, split, [g.group_id for g in cal_groups], {}, key="calibration_group_ids")
    agent = cfg.model_dump(exclude={"memory_dir", "chroma_url"})
    _note_prior_fit(emit)
    try:
        cal = calibrate_memory(memory, cal_groups, judge=judge_obj, agent_config=agent, split=split,
                               error_metric=summary.error_metric,
                               progress=lambda i, total: emit("calibrate", {"index": i, "total": total}))
    except InputError as exc:
        summary.calibration_note = f"score calibration not refitted: {exc}{kept}"
        emit("calibrated", {"calibration": None, "note": summary.calibration_note})
        return
    prog = _read_progress(mpath)
    prog["calibration"] = {"rules_state": state, "judge": name, "rounds_total": rounds_total}
    atomic_write_json(mpath / PROGRESS_FILE, prog)
    summary.calibration = cal.model_dump(mode="json")
    notes = []
    if len(cal_groups) < n:
        notes.append(f"score calibration fitted on {len(cal_groups)} of the {n} groups asked (no more "
                     "unexplored groups after the explored ones); with few groups the fit is noisy")
    doubts = calibration_doubts(cal)
    if doubts:
        notes.append(f"this calibration is doubtful: {'; '.join(doubts)}; it maps every overall score — refit with "
                     f"more calibration groups (default {CALIBRATION_GROUPS}), or remove it with "
                     f"{cli_hint('calibration --clear', memory.path, getattr(memory, 'chroma_url', None))}")
    summary.calibration_note = "; ".join(notes)  # one note (the callers lay it out)
    emit("calibrated", {"calibration": summary.calibration,
                        **({"note": summary.calibration_note} if summary.calibration_note else {})})


def _note_prior_fit(emit) -> None:
    """A ``"note"`` event ahead of the pose prior's first fit, which the next critique would start without a word:
    on a fresh home up to 10–14 s of silence (two busy cores) after the split's "(first use)" line and its
    generation, before the first group's line
    (:func:`hmrcritic.agent.prior.pose_prior_ready`). Nothing once it is loaded, so once per process."""
    from hmrcritic import config
    from hmrcritic.agent.prior import pose_prior_ready

    if not pose_prior_ready():
        emit("note", {"step": "pose_prior", "text": f"fitting the pose prior on the train split's poses into "
                      f"{config.cache_dir() / 'pose_prior'} (first use)"})


def _split_size(split: str) -> int:
    """How many samples the split holds (its loading error, if it cannot be loaded)."""
    from hmrcritic.hmr.data import load_split

    return len(load_split(split))


def _batch_groups(groups, split, start, n, num_generations, seed, source) -> list:
    if groups is not None:
        return list(groups[start:start + n])
    from hmrcritic.agent.groups import make_groups

    got, _ = make_groups(split, num_groups=n, num_generations=num_generations, seed=seed, start=start,
                         source=source)
    return got


def settle_scores(overall: np.ndarray, error: np.ndarray, mode: str = "rank") -> np.ndarray:
    """The settled overall score of each hypothesis of an explored group.

    ``rank`` (default; see the module docstring): the critic's scores re-assigned by the true ranking.
    ``error``: an absolute mapping of the true error, ``10·exp(−error/60 mm)`` (what the graph's
    ``memory_write`` node uses when learning with labels), comparable across groups but not in the critic's
    own units."""
    if mode == "rank":
        return rank_matched_scores(overall, error)
    if mode == "error":
        return settled_overall(error)
    raise InputError(f"settle mode {mode!r}: choose rank or error")


def rule_stat_deltas(rules_per_group: Sequence[Sequence[str]], rhos: Sequence[float],
                     tau: float) -> dict[str, list[int]]:
    """``{rule_id: [uses, successes]}`` for one batch: each rule put into a group's judgement is used once
    for that group, and succeeds when the group's Spearman reaches τ (PAPER.md §3 steps 1 and 3). A rule
    listed twice for one group counts once (it was in that judgement once)."""
    out: dict[str, list[int]] = {}
    for ids, rho in zip(rules_per_group, rhos, strict=True):
        ok = bool(np.isfinite(rho) and rho >= tau)
        for rid in dict.fromkeys(ids):
            d = out.setdefault(rid, [0, 0])
            d[0] += 1
            d[1] += int(ok)
    return out


def rule_removal_effects(applied: Sequence[tuple[Sequence[str], BatchGroup]],
                         rules: dict[str, Rule]) -> dict[str, list[float]]:
    """``{rule_id: [Σ Δρ, groups]}``: for each executable rule applied in a group, how much the group's
    Spearman would change if its deduction were given back (positive = the rule hurt the ranking).

    Beyond the paper: its success count only says the *group* went well. This counterfactual says whether
    the rule itself helped, and lets maintenance retire rules that keep making rankings worse."""
    from hmrcritic.agent.mining import deduct

    out: dict[str, list[float]] = {}
    for ids, bg in applied:
        base = group_spearman(bg.overall, bg.error)
        for rid in dict.fromkeys(ids):
            rule = rules.get(rid)
            c = rule.condition if rule is not None else None
            if c is None or c.measure not in bg.evidence:
                continue
            if not c.deduction(bg.evidence[c.measure]).any():
                continue
            without = deduct(bg.overall, bg.evidence, c, sign=-1.0)
            e = out.setdefault(rid, [0.0, 0])
            e[0] += group_spearman(without, bg.error) - base
            e[1] += 1
    return out


def _mistakes(bg: BatchGroup, limit: int = 6):
    """The worst over- and under-rated hypotheses of a group with their evidence (for a judge's mining)."""
    from hmrcritic.agent.judges import Mistake

    cr, tr = ranks(bg.overall, True), ranks(bg.error, False)
    order = sorted(range(bg.n), key=lambda i: -abs(int(cr[i]) - int(tr[i])))
    over, under = overrated_mask(bg), underrated_mask(bg)
    if not (over.any() or under.any()):  # no big mistake: show the largest disagreements there are
        over, under = overrated_mask(bg, 1), underrated_mask(bg, 1)
    out = []
    for i in order:
        if not (over[i] or under[i]):
            continue
        out.append(Mistake(index=i, overall=float(bg.overall[i]), critic_rank=int(cr[i]), true_rank=int(tr[i]),
                           error_mm=float(bg.error[i]),
                           evidence={k: float(v[i]) for k, v in bg.evidence.items()},
                           note="over-rated" if over[i] else "under-rated"))
        if len(out) >= limit:
            break
    return out


def _judge_proposals(judge_obj, res, bg: BatchGroup, round_no, validation, existing, emit):
    """Ask a (VLM) judge for rules on one group; every failure becomes a logged rejection."""
    from hmrcritic.agent.evidence import MEASURES
    from hmrcritic.agent.judges import JudgeContext

    info = {k: f"{m.unit}; {'higher' if m.higher_is_worse else 'lower'} is worse; {m.description}"
            for k, m in MEASURES.items() if k in bg.evidence}
    ctx = JudgeContext(group_id=res.group_id, num_hypotheses=bg.n, evidence={k: list(map(float, v))
                       for k, v in bg.evidence.items()}, measure_info=info, tags=bg.tags,
                       rules=[Rule.model_validate(r) for r in res.rules_recalled],
                       overlay_grid_path=res.renders.get("overlay_grid"),
                       side_grid_path=res.renders.get("side_grid"))
    mistakes = _mistakes(bg)
    if not mistakes:
        return [], [Rejection("(judge)", f"group {res.group_id}: no clear mistake to show the judge")]
    rationale = {s.index: s.rationale for s in getattr(res, "scores", []) or []}
    for m in mistakes:  # the table's notes promised "the critic's own rationale" and held only the verdict
        if rationale.get(m.index):
            m.note = f"{m.note}; the critic said: {rationale[m.index]}"
    try:
        props = judge_obj.propose_rules(ctx, mistakes)
    except Exception as exc:  # a judge that fails or answers garbage: log and go on
        # scrubbed (before it is cut): the reason is printed and kept in explore_log.jsonl, and a custom judge's
        # error may quote its key, as learning_curve.score_groups and the critique node already assume
        why = scrub(str(exc)).splitlines()
        return [], [Rejection("(judge)", f"group {res.group_id}: propose_rules failed: "
                                         f"{type(exc).__name__}: {why[0][:160] if why else ''}")]
    items = getattr(props, "rules", None)
    if items is None and isinstance(props, dict):
        items = props.get("rules")
    if items is None or not isinstance(items, list | tuple):
        return [], [Rejection(scrub(props)[:120], f"group {res.group_id}: judge answered something that is not "
                                                "a list of rule proposals")]
    if not items:
        return [], [Rejection("(judge)", f"group {res.group_id}: judge proposed no rule")]
    accepted, rejected = [], []
    for p in items[:2]:
        rule, why = validate_proposal(p, round_no, validation, existing + accepted)
        if rule is None:
            rejected.append(why)
        else:
            accepted.append(rule)
    return accepted, rejected


def _unrankable(error: np.ndarray, metric: str) -> str:
    """Why a labelled group cannot test a ranking ("" when it can): fewer than 2 hypotheses, a true error that
    is not finite, or one true error for all of them. Such a group says nothing about the rules (its Spearman is
    0 whatever they do: counted, it failed every rule in it) and leaves no best and worst to keep."""
    n = len(error)
    if n < 2:
        return f"skipped: {n} hypothes{'i' if n == 1 else 'e'}s, nothing to rank (a group needs ≥ 2)"
    if not np.all(np.isfinite(error)):
        return f"skipped: its true {metric} is not finite for {int(np.sum(~np.isfinite(error)))} of {n} hypotheses"
    if np.ptp(error) <= 0:
        return f"skipped: all {n} hypotheses have the same true {metric} ({float(error[0]):.1f}), nothing to rank"
    return ""


def _recent(history: list) -> list:
    """The last ``HISTORY_GROUPS`` groups (none for 0: ``history[-0:]`` would be all of them)."""
    return history[-HISTORY_GROUPS:] if HISTORY_GROUPS > 0 else []


# what a round that failed before learning anything leaves: its group ids went to explored_on.json before scoring
# (a kill mid-round must find them recorded), so "nothing was recorded" was not so
_NOTHING_LEARNT = ("nothing was learnt (no rule or prototype written, the round not recorded as done; its groups stay "
                   "recorded as explored on this memory, as they were sent to the judge)")


def _run_batch(memory, app, saver, judge_obj, is_builtin, cfg, batch, r, sig, split, tau, metric, history,
               emit, *, max_new_rules, min_gain, retire_min_uses, retire_min_rate, merge_text, prototypes, settle,
               info, run_record: dict | None = None, part: int = 0) -> RoundReport:
    from hmrcritic.agent.api import UNUSABLE_IN_A_ROW, critique_group, discard_run, unusable_endpoint, unusable_subject
    from hmrcritic.agent.evidence import evidence_tags
    from hmrcritic.agent.nodes import load_bodies
    from hmrcritic.memory.embeddings import pose_embedding

    t0 = time.perf_counter()
    prog = _read_progress(Path(memory.path))
    round_no = int(prog.get("rounds_total", 0)) + 1
    # the rest of a round a limit cut short (``part`` groups explored by an earlier call) is a batch of its own
    batch_key = f"{sig}:r{r}" + (f"+{part}" if part else "")
    report = RoundReport(round=round_no, batch_key=batch_key)
    # recorded before scoring: the memory may learn from these groups from now on
    _record_explored(memory, split, [g.group_id for g in batch], info)

    scored: list[tuple[Any, Any, BatchGroup]] = []
    skipped = unusable = 0
    for i, g in enumerate(batch):
        try:
            err = exploration_error(g, metric)
            why = _unrankable(err, metric)
            if why:  # nothing to learn from it; scoring it would only cost time
                skipped += 1
                report.failed.append({"group_id": g.group_id, "error": why, "kind": "skipped"})
                emit("group", {"index": i, "total": len(batch), "group_id": g.group_id, "skipped": why})
                continue
            res = critique_group(g.sample, g.hypotheses, judge=judge_obj, memory=memory, config=cfg,
                                 group_id=f"explore-{g.group_id}", fresh=True, graph=app, checkpointer=saver,
                                 keep=False)
        except HMRCriticError as exc:
            # scrubbed: printed, kept in explore_log.jsonl and the summary; a custom judge's JudgeError passes the
            # critique node as it is, and may quote its key (the VLM judge scrubs its own)
            why = scrub(str(exc))
            report.failed.append({"group_id": g.group_id, "error": why, "kind": "error"})
            emit("group", {"index": i, "total": len(batch), "group_id": g.group_id, "error": why})
            # the VLM endpoint itself cannot be used (nothing answers, the key or the model refused) and no group
            # of the round was scored: the round fails now, as it would after every group's retries
            if unusable_endpoint(exc) is not None:
                unusable += 1
                if unusable >= UNUSABLE_IN_A_ROW and not scored:
                    first = next(f for f in report.failed if f["kind"] == "error")
                    why = unusable_endpoint(exc)
                    raise HMRCriticError(
                        f"explore: round {round_no} stopped after {unusable} groups failed because "
                        f"{unusable_subject(why)} cannot be used: {why}; {_NOTHING_LEARNT}; first: "
                        f"{first['group_id']}: {first['error']}") from exc
            continue
        ev = {k: np.asarray(v, np.float64) for k, v in res.evidence.items()}
        kp = np.asarray(g.sample.keypoints)
        bg = BatchGroup(g.group_id, ev, np.asarray(res.overall, np.float64), err,
                        evidence_tags(ev, kp, tuple(g.sample.image_size)))
        scored.append((g, res, bg))
        emit("group", {"index": i, "total": len(batch), "group_id": g.group_id,
                       "spearman": group_spearman(bg.overall, bg.error)})
    report.groups = len(scored)
    if not scored and len(report.failed) > skipped:
        # every group failed: something systemic (a bad setting, an endpoint down), not a batch to count as
        # explored — a round recorded done here would be skipped on every later run. (A batch of groups that
        # only cannot be ranked is recorded as an empty round below: it would be the same batch on every run.)
        first = next(f for f in report.failed if f["kind"] == "error")
        raise HMRCriticError(f"explore: every group of round {round_no} failed, {_NOTHING_LEARNT}; "
                             f"first: {first['group_id']}: {first['error']}")
    if not scored:
        report.seconds = time.perf_counter() - t0
        _commit(memory, {"batch_key": batch_key, "sig": sig, "r": r, "round": round_no, "rule_deltas": {},
                         "new_rules": [], "prototypes": [], "report": asdict(report), **(run_record or {})},
                merge_text=False, retire=(retire_min_uses, retire_min_rate))
        return report

    # 1. rule statistics (deltas now; made absolute inside the lock)
    rhos = [group_spearman(bg.overall, bg.error) for _, _, bg in scored]
    deltas = rule_stat_deltas([[rd["rule_id"] for rd in res.rules_recalled] for _, res, _ in scored], rhos, tau)
    known = {r.rule_id: r for r in memory.rules.all(include_retired=True)}
    effects = rule_removal_effects([(res.rules_applied, bg) for _, res, bg in scored], known)
    report.mean_spearman = float(np.mean(rhos))
    report.short_groups = int(sum(rho < tau for rho in rhos))
    report.rules_used = int(sum(d[0] for d in deltas.values()))

    # 2. prototypes: best, worst and the most misjudged of each group, settled on the true rank
    protos: list[Prototype] = []
    for g, res, bg in scored:
        settled = settle_scores(bg.overall, bg.error, settle)
        cr, tr = ranks(bg.overall, True), ranks(bg.error, False)
        pick = [int(np.argmin(bg.error)), int(np.argmax(bg.error))]
        for k in np.argsort(-np.abs(cr - tr), kind="stable")[:PROTOS_MISJUDGED]:
            if int(k) not in pick and cr[k] != tr[k]:
                pick.append(int(k))
        if prototypes == "all":
            pick += [k for k in range(bg.n) if k not in pick]
        pick = list(dict.fromkeys(pick))  # one prototype per hypothesis (ids must be unique in one write)
        try:
            emb = pose_embedding(load_bodies(res.run_dir)["joints"])
        except Exception as exc:  # a vanished run folder loses this group's prototypes, not the batch
            report.failed.append({"group_id": g.group_id, "error": f"prototypes skipped: {scrub(exc)}",
                                  "kind": "prototypes"})
            continue
        by_idx = {s.index: s for s in res.scores}
        pa = np.asarray(g.errors_mm, np.float64)
        for k in pick:
            s = by_idx[k]
            protos.append(Prototype(
                proto_id=f"explore:{g.group_id}#h{k}", embedding=[float(x) for x in emb[k]],
                overall=float(np.clip(settled[k], 0, 10)), motion_structure=s.motion_structure,
                physical_feasibility=s.physical_feasibility, image_alignment=s.image_alignment,
                rationale=(f"{s.rationale} Critic ranked it #{cr[k] + 1}, truth #{tr[k] + 1} of {bg.n} "
                           f"(PA-MPJPE {pa[k]:.0f} mm); settled {settled[k]:.1f} instead of {s.overall:.1f}."),
                tags=bg.tags, source=f"{split}/{g.group_id}#h{k}", error_mm=float(pa[k])))
    report.prototypes = len(protos)

    # 3. rule mining where the ranking fell short
    short = [bg for (_, _, bg), rho in zip(scored, rhos, strict=True) if rho < tau]
    validation = [bg for _, _, bg in scored] + _recent(history)
    existing = memory.rules.all(include_retired=False)
    new_rules: list[Rule] = []
    rejected: list[Rejection] = []
    if short:
        if is_builtin or not hasattr(judge_obj, "propose_rules"):
            cands, rej = mine_rules(short, validation=validation, existing=existing, max_rules=max_new_rules,
                                    min_gain=min_gain)
            rejected += rej
            for c in cands:
                new_rules.append(candidate_to_rule(c, round_no))
                report.rules_added.append({"text": new_rules[-1].text, "gain": round(c.gain, 4),
                                           "support": c.support})
        else:
            worst = sorted(zip(rhos, range(len(scored)), strict=True), key=lambda x: x[0])
            for rho, j in worst[:2]:
                if rho >= tau or len(new_rules) >= max_new_rules:
                    break
                acc, rej = _judge_proposals(judge_obj, scored[j][1], scored[j][2], round_no, validation,
                                            existing + new_rules, emit)
                rejected += rej
                for rule in acc[: max_new_rules - len(new_rules)]:
                    new_rules.append(rule)
                    report.rules_added.append({"text": rule.text})
    history.extend(bg for _, _, bg in scored)
    for _, res, _ in scored:  # arrays and renders are read; nothing needs the run folders any more
        discard_run(res)
    from hmrcritic.memory.rules import mined_rule_id

    for rule, add in zip(new_rules, report.rules_added, strict=True):
        rule.rule_id = rule.rule_id or mined_rule_id(rule.text)
        add["rule_id"] = rule.rule_id
    new_rules, report.rules_added = _not_added_again(new_rules, report.rules_added, known, rejected)
    report.rejected = [x.as_dict() for x in rejected]
    for x in report.rejected:
        emit("rule_rejected", x)
    report.seconds = time.perf_counter() - t0
    plan = {"batch_key": batch_key, "sig": sig, "r": r, "round": round_no, "rule_deltas": deltas,
            "effect_deltas": effects,
            "new_rules": [json.loads(x.model_dump_json()) for x in new_rules],
            "prototypes": [p.model_dump(mode="json") for p in protos], "report": asdict(report),
            "history": [bg.to_json() for _, _, bg in scored], **(run_record or {})}
    rep = _commit(memory, plan, merge_text=merge_text, retire=(retire_min_uses, retire_min_rate))
    report.retired, report.merged = rep.get("retired", []), rep.get("merged", [])
    report.memory_version = rep.get("memory_version", "")
    for add in report.rules_added:
        emit("rule_added", add)
    return report


def _not_added_again(new_rules: list[Rule], added: list[dict], known: dict[str, Rule],
                     rejected: list[Rejection]) -> tuple[list[Rule], list[dict]]:
    """The batch's new rules without those the memory would not add (a rule's id comes from its text): one whose
    text is a stored rule's (a retired one's too) or an earlier proposal's of this batch goes to ``rejected``.

    Why: :func:`_commit` and ``RuleMemory.add`` skip them anyway, but the report listed them as added, so
    `hmrcritic explore` printed "+ rule …" and counted a rule the memory never took (a retired rule stayed
    retired), and a VLM's rule proposed twice was "added" twice. What is written does not change."""
    kept: list[tuple[Rule, dict]] = []
    for rule, add in zip(new_rules, added, strict=True):
        old = known.get(rule.rule_id)
        if old is None and all(rule.rule_id != k.rule_id for k, _ in kept):
            kept.append((rule, add))
            continue
        where = ("a rule proposed earlier this round" if old is None
                 else f"rule {rule.rule_id}, already in the memory" + (" (retired)" if old.retired else ""))
        rejected.append(Rejection(rule.text, f"same text as {where}: not added again"))
    return [r for r, _ in kept], [a for _, a in kept]


# ------------------------------------------------------------------------------------------- commit/resume
def _commit(memory, plan: dict, merge_text: bool, retire: tuple[int, float]) -> dict:
    """Turn a batch's deltas into absolute records (inside the write lock), persist the plan, apply it, then
    record progress and remove the plan — all under one lock acquisition."""
    from hmrcritic.memory.embeddings import embed_text
    from hmrcritic.memory.maintenance import plan_maintenance

    mpath = Path(memory.path)
    with memory._write():
        current = {r.rule_id: r for r in memory.rules.all(include_retired=True)}
        updates: dict[str, Rule] = {}
        for rid, (du, ds) in plan["rule_deltas"].items():
            if rid not in current:
                continue  # deleted meanwhile (memory reset): nothing to count
            r = current[rid].model_copy(deep=True)
            r.n_used += int(du)
            r.n_success += int(ds)
            updates[rid] = r
        new = [Rule.model_validate(x) for x in plan["new_rules"] if x["rule_id"] not in current]
        new_vecs = embed_text([x.text for x in new]) if new else np.zeros((0, 384), np.float32)
        after = {**current, **updates, **{x.rule_id: x for x in new}}
        emb = None
        if merge_text and new:
            emb = memory.rules.embeddings([rid for rid, x in current.items() if not x.retired])
            emb.update({x.rule_id: v for x, v in zip(new, new_vecs, strict=True)})
        maint = plan_maintenance(list(after.values()), emb, min_uses=retire[0], min_rate=retire[1])
        effects = {k: list(v) for k, v in _read_progress(mpath).get("rule_effects", {}).items()}
        for rid, (d, n) in plan.get("effect_deltas", {}).items():
            e = effects.setdefault(rid, [0.0, 0])
            e[0], e[1] = e[0] + float(d), e[1] + int(n)
        # a rule whose own deduction demonstrably helps rankings is kept even when its groups keep failing τ
        # (a weak critic fails τ with or without it; the success rate then says nothing about the rule)
        helpful = {rid for rid, (d, n) in effects.items() if n >= 3 and d / n < -HARM_TOLERANCE}
        kept = [rid for rid in maint.retired if rid in helpful]
        for rid in kept:
            maint.updates.pop(rid, None)
        maint.retired = [rid for rid in maint.retired if rid not in helpful]
        updates.update(maint.updates)
        harmful = []
        for rid, (d, n) in sorted(effects.items()):
            rule = updates.get(rid) or after.get(rid)
            if rule is None or rule.retired or rule.hard:
                continue  # a hard constraint is kept whatever it does to the 3D-error ranking
            if n >= retire[0] and d / n > HARM_TOLERANCE:
                r2 = rule.model_copy(deep=True)
                r2.retired = True
                updates[rid] = r2
                harmful.append(rid)
        plan = {**plan, "rule_effects": effects}
        new_ids = {x.rule_id for x in new}
        plan = {**plan, "rule_updates": [json.loads(x.model_dump_json()) for x in updates.values()],
                "new_rules": [json.loads(x.model_dump_json()) for x in new],
                "new_rule_vectors": np.asarray(new_vecs).round(7).tolist()}
        plan["report"] = {**plan["report"], "retired": maint.retired + harmful,
                          "retired_harmful": harmful, "merged": [list(p) for p in maint.merged]}
        for x in plan["new_rules"]:  # a new rule merged/retired in the same batch is added already retired
            if x["rule_id"] in updates:
                x.update(json.loads(updates[x["rule_id"]].model_dump_json()))
        plan["rule_updates"] = [u for u in plan["rule_updates"] if u["rule_id"] not in new_ids]
        atomic_write_json(mpath / PENDING_FILE, plan, indent=None)
        version = _apply_plan(memory, plan)
    return {**plan["report"], "memory_version": version}


def _apply_plan(memory, plan: dict) -> str:
    """Idempotent: absolute rule records, rules and prototypes by fixed ids; then the progress record."""
    mpath = Path(memory.path)
    with memory._write():
        have = {r.rule_id for r in memory.rules.all(include_retired=True)}
        new = [Rule.model_validate(x) for x in plan.get("new_rules", [])]
        vecs = np.asarray(plan.get("new_rule_vectors") or np.zeros((0, 384)), np.float32)
        keep = [i for i, x in enumerate(new) if x.rule_id not in have]
        if keep:
            memory.rules.add([new[i] for i in keep], embeddings=vecs[keep])
        if plan.get("rule_updates"):
            memory.rules.update([Rule.model_validate(x) for x in plan["rule_updates"]])
        if plan.get("prototypes"):
            # by id, the last one kept: a plan written before picks were de-duplicated may hold one twice
            protos = {p["proto_id"]: p for p in plan["prototypes"]}
            memory.prototypes.add([Prototype.model_validate(p) for p in protos.values()])
        version = memory.version()
        logged = read_jsonl(mpath / LOG_FILE)
        if not logged or logged[-1].get("batch_key") != plan["batch_key"]:
            append_jsonl(mpath / LOG_FILE, {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                            "batch_key": plan["batch_key"],
                                            "report": {**plan["report"], "memory_version": version}})
        prog = _read_progress(mpath)
        if plan["batch_key"] not in prog.get("batches", []):
            run = prog.setdefault("runs", {}).setdefault(plan["sig"], {"rounds_done": []})
            if plan["r"] not in run["rounds_done"]:
                if not plan.get("partial"):  # a round a limit cut short is done once its rest is explored
                    run["rounds_done"].append(plan["r"])
                run["history"] = _recent(run.get("history", []) + plan.get("history", []))
                if "settings" in plan:  # what _check_overlap compares a later run with
                    run["settings"] = plan["settings"]
                    run.setdefault("spans", []).append(plan["span"])
            prog["rounds_total"] = int(prog.get("rounds_total", 0)) + 1
            prog.setdefault("batches", []).append(plan["batch_key"])
            if "rule_effects" in plan:
                prog["rule_effects"] = plan["rule_effects"]
            atomic_write_json(mpath / PROGRESS_FILE, prog)
        (mpath / PENDING_FILE).unlink(missing_ok=True)
    return version


def _finish_pending(memory, emit) -> None:
    """A plan left by an interrupted run: apply it again (a no-op where it had been applied)."""
    f = Path(memory.path) / PENDING_FILE
    if not f.exists():
        return

    def refuse(why: str) -> InputError:
        return InputError(f"{f}: unreadable pending exploration batch ({why}); part of it may have been written to "
                          "the memory, so restore it, or start the memory over with "
                          f"{cli_hint('reset --yes', memory.path, getattr(memory, 'chroma_url', None))}")

    # the plan is written whole (atomic_write_json in _commit), so one that does not parse was not torn mid-write:
    # it was damaged after (a disk error, an edit, a bad restore) and its batch may have been half applied. It was
    # deleted as "torn before it was complete", and the memory went on half-updated with nothing left to say so;
    # not UTF-8 (UnicodeDecodeError), a folder in its place (IsADirectoryError) or JSON nested thousands deep
    # (RecursionError) came out as a bare traceback
    try:
        plan = json.loads(f.read_text(encoding="utf-8"))
    except IsADirectoryError as exc:
        # no plan there to have been applied; and `memory reset` cannot unlink a folder either: it stopped half-way
        # (collections deleted) and the memory refused to open until a reset finished, which failed the same way
        raise InputError(f"{f}: unreadable pending exploration batch (a folder, not a file); move that folder "
                         "away") from exc
    except (OSError, ValueError, RecursionError) as exc:
        raise refuse(f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}".rstrip(": ")) from exc
    # JSON of another shape (an edit, a bad restore; the file is written whole) failed every later explore and
    # learning-curve at once as a bare AttributeError or KeyError, the memory stuck until someone read the code;
    # records of the wrong type failed _apply_plan midway (a rule added, the rest not) or were written into the
    # progress record (a round "2" that every later read of it refuses)
    if not isinstance(plan, dict) or not all(k in plan for k in ("batch_key", "sig", "r", "report")):
        raise refuse("not a batch plan")
    applied = _read_progress(Path(memory.path)).get("batches", [])
    if isinstance(plan["batch_key"], str) and plan["batch_key"] in applied:
        # applied in full (the progress record is written last), killed before the file went: its absolute rule
        # records written again would undo every rule statistic counted since (a `critique --learn`). Before the
        # records are checked: they are not applied, and an older version's plan that today's models refuse (a
        # NaN rule threshold) blocked every later exploration of a memory that was whole
        f.unlink(missing_ok=True)
        return
    try:
        if not (isinstance(plan["batch_key"], str) and isinstance(plan["sig"], str) and _is_count(plan["r"])
                and isinstance(plan["report"], dict)):
            raise TypeError("batch_key, sig, r or report of the wrong type")
        for key, model in (("new_rules", Rule), ("rule_updates", Rule), ("prototypes", Prototype)):
            for x in plan.get(key) or []:
                model.model_validate(x)
        if plan.get("new_rule_vectors") or plan.get("new_rules"):  # new rules without vectors: an IndexError
            vecs = np.asarray(plan.get("new_rule_vectors") or [], np.float32)
            if vecs.ndim != 2 or len(vecs) != len(plan.get("new_rules") or []):
                raise ValueError("new_rule_vectors do not match new_rules")
        # what _apply_plan copies into the progress record, checked as every later read of that record checks it:
        # a history group of lists of other lengths, or rule_effects of another shape, passed a check of the plan's
        # own, was applied, and made explore_progress.json unreadable (the plan gone, the error naming that file)
        _check_progress({"runs": {plan["sig"]: {"rounds_done": [plan["r"]], "history": plan.get("history", []),
                                                "settings": plan.get("settings", {}),
                                                "spans": [plan.get("span", [0, 0])]}},
                         "rule_effects": plan.get("rule_effects", {})})
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as exc:
        raise refuse(f"not a batch plan: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from exc
    _apply_plan(memory, plan)
    emit("resumed", {"pending_batch": plan.get("batch_key")})


def read_log(memory: Any) -> list[dict]:
    """The exploration log (one record per finished batch)."""
    path = _memory_path(memory) / LOG_FILE
    if path.exists() and not path.is_file():  # a folder there: "IsADirectoryError: [Errno 21]", the file unnamed
        raise InputError(f"{path}: the exploration log is not a file (a folder?); move it away")
    return read_jsonl(path)
