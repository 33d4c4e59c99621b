"""Python API of the critique agent: score one group or many.

``critique_group(sample, hypotheses)`` writes the group's inputs into its run folder, runs the LangGraph
agent on thread ``group_id`` (SQLite checkpointer) and returns a :class:`ScoredGroup`. Running the same
group again returns the finished checkpoint instead of recomputing (``fresh=True`` recomputes); a run that
was interrupted resumes from its last node. Critiques of one group id run one after the other, in threads of
a process and in processes sharing the checkpoint file (the later one then finds the finished thread, as it
would serially). ``critique_groups`` does many, each failure (bad input, a judge that times out or answers
garbage) becoming that group's error while the others go on. Memory is written only by the ``memory_write``
node, only when learning, and only after the critique is final.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import sqlite3
import sys
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, Field

from hmrcritic import config as hconfig
from hmrcritic.agent.judges import judge_name
from hmrcritic.agent.runs import checkpoint_error, in_use, thread_lock
from hmrcritic.agent.schema import HypothesisScore
from hmrcritic.agent.state import AgentConfig, canonical_judge, prototype_hits
from hmrcritic.errors import (
    HMRCriticError,
    InputError,
    InvalidCritiqueError,
    keywords_checked,
    unknown_keyword_hints,
    warn_caller,
)
from hmrcritic.hmr.smpl_arrays import SMPL_KEYS, check_smpl_arrays
from hmrcritic.io import atomic_save_npz, atomic_write_json, read_npz
from hmrcritic.redact import scrub

HYP_KEYS = SMPL_KEYS  # the four SMPL arrays a group of hypotheses holds (hmr.smpl_arrays checks them)


SHOWN_RANKS = 10  # ranking entries a printed ScoredGroup shows; the rest are "…"


class ScoredGroup(BaseModel):
    """The agent's verdict on one group (what ``critique`` prints and exports consume).

    ``scores``: one :class:`~hmrcritic.agent.schema.HypothesisScore` per hypothesis, in index order (axes,
    ``overall``, ``rationale``); ``ranking``: the indices, best overall first; ``overall``: the overall scores as
    a list. ``rules_recalled`` holds Rule dumps (``hmrcritic.memory.Rule.model_validate`` reads one back),
    ``prototypes_recalled`` per hypothesis its prototype hits (dicts with ``similarity``), ``reflections`` the
    reflect rounds. ``model_dump()`` is scores.json (:func:`write_scores`)."""

    # every field says what it holds (help(ScoredGroup), ScoredGroup.model_fields[name].description): only five did,
    # the rest documented in CONTRACTS.md alone
    group_id: str = Field(..., description="the checkpoint thread (and run folder) of this critique")
    scores: list[HypothesisScore] = Field(..., description="one HypothesisScore per hypothesis, in index order: "
                                                            "the three axes, overall and the rationale")
    ranking: list[int] = Field(..., description="hypothesis indices, best overall first")
    memory_version: str = Field("none", description="MemoryStore.version() the recall read ('none' without "
                                                    "memory); after a learning write, the version after it")
    judge: str = Field("builtin", description="the judge that scored: 'builtin', 'vlm' or a Judge object's name")
    judge_model: str | None = Field(None, description="the VLM behind judge vlm: model @ endpoint")
    reflections: list[dict[str, Any]] = Field(default_factory=list, description="the reflect rounds: round, "
                                              "action, issues, changes")
    notes: str = Field("", description="the judge's summary of the group")
    run_dir: str = Field("", description="the run folder (inputs, evidence, renders), absolute")
    run_id: str = Field("", description="the run that produced these scores; its trace is "
                                        "runs_dir()/traces/<run_id>.jsonl (`hmrcritic trace`)")
    rules_applied: list[str] = Field(default_factory=list, description="ids of the recalled rules the judge applied")
    rules_recalled: list[dict[str, Any]] = Field(default_factory=list, description="the recalled rules as Rule "
                                                 "dumps (hmrcritic.memory.Rule.model_validate reads one back)")
    prototypes_recalled: list[list[dict[str, Any]]] = Field(default_factory=list, description="per hypothesis, "
                                                            "its recalled prototype hits (dicts with similarity)")
    evidence: dict[str, list[float]] = Field(default_factory=dict, description="measure name → one value per "
                                             "hypothesis, in index order")
    renders: dict[str, str] = Field(default_factory=dict, description="render name (overlay_grid, side_grid) → "
                                    "image path; empty when rendering was off")
    memory_written: dict[str, Any] = Field(default_factory=dict, description="what a learning critique wrote to "
                                           "the memory (prototypes, rules_recorded); empty otherwise")
    score_calibration: dict[str, Any] | None = Field(
        None, description="the memory's score calibration (ScoreCalibration) the builtin judge applied to overall, "
                          "which puts overall on the true-error scale; None: overall is the judge's own score")
    resumed: bool = Field(False, description="continued from a checkpoint (an unfinished thread — interrupted, or its "
                                            "critique failed — or a finished one)")
    finished_earlier: bool = Field(False, description="the thread had finished before: nothing was recomputed")

    @property
    def overall(self) -> list[float]:
        """Each hypothesis's overall score (0–10, higher is better), in hypothesis index order (``ranking`` is
        these indices best first; ``scores[i].rationale`` says why)."""
        return [s.overall for s in sorted(self.scores, key=lambda s: s.index)]

    def __repr__(self) -> str:
        """One line: the id, judge, size, ranking, best and worst overall, memory version and run folder.

        pydantic's repr printed every field — 11,800 characters for a group of 8, 80,000 on one line for 64 (each
        rationale, rule dump and evidence value) — when a notebook cell ended with the result. ``model_dump()``
        (or ``scores.json``, :func:`write_scores`) holds the whole record; ``write_report`` shows it."""
        try:
            return self._summary()
        except Exception:  # a record made without validation (model_construct) lacking fields: pydantic's repr
            return super().__repr__()

    def _summary(self) -> str:
        ranking = self.ranking[:SHOWN_RANKS]
        ranks = f"[{', '.join(map(str, ranking))}{', …' if len(self.ranking) > len(ranking) else ''}]"
        by_index = {s.index: s.overall for s in self.scores}
        ends = ""
        if self.ranking and self.ranking[0] in by_index and self.ranking[-1] in by_index:
            best, worst = self.ranking[0], self.ranking[-1]
            ends = f", best h{best} {by_index[best]:.2f}, worst h{worst} {by_index[worst]:.2f}"
        earlier = ", finished_earlier" if self.finished_earlier else ", resumed" if self.resumed else ""
        return (f"ScoredGroup(group_id={self.group_id!r}, judge={self.judge!r}, {len(self.scores)} hypotheses, "
                f"ranking={ranks}{ends}, memory_version={self.memory_version!r}{earlier}, run_dir={self.run_dir!r})")

    __str__ = __repr__  # print(result): pydantic's __str__ is the every-field dump too


@dataclass
class GroupResult:
    """One entry of :func:`critique_groups`: a result or a one-line error, never both."""

    group_id: str
    result: ScoredGroup | None = None
    error: str | None = None
    error_type: str | None = None

    def model_dump(self) -> dict[str, Any]:
        """Plain JSON types, as ``ScoredGroup.model_dump()`` gives: ``dataclasses.asdict`` keeps the result a
        ScoredGroup, which ``json.dumps`` refuses, so a batch's results could not be saved as they came."""
        return {"group_id": self.group_id, "result": None if self.result is None else self.result.model_dump(),
                "error": self.error, "error_type": self.error_type}


UNUSABLE_IN_A_ROW = 3  # every batch path's (export, critique_groups, evaluations, exploration, VLMJudge's)


def unusable_endpoint(exc: BaseException | None) -> str | None:
    """``"<endpoint> (<what is wrong>)"`` when ``exc`` or what it wraps is the VLM judge's
    ``EndpointUnusableError`` (read by its flag: the builtin path never imports the VLM module), else None.

    An error that names another kind of endpoint (``endpoint_kind``: a memory server that stopped answering, see
    ``memory.store._ServerProxy``) gives ``"the <kind> at <endpoint> (<what is wrong>)"``, so that no batch says
    "the VLM endpoint" of a Chroma server."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if getattr(exc, "endpoint_unusable", False) is True:
            endpoint, cause = getattr(exc, "endpoint", ""), getattr(exc, "cause", "")
            kind = getattr(exc, "endpoint_kind", "")
            where = f"the {kind} at {endpoint}" if kind and endpoint else f"the {kind}" if kind else endpoint
            return scrub(f"{where or 'the VLM endpoint'}" + (f" ({cause})" if cause else ""))
        exc = exc.__cause__ or exc.__context__
    return None


MEMORY_SERVER = "the memory server"  # how unusable_endpoint begins for a Chroma server that stopped answering


def unusable_subject(why: str | None) -> str:
    """What cannot be used, for "… failed because <subject> cannot be used: <why>" (``why`` from
    :func:`unusable_endpoint`): "the memory server" for a Chroma server, else "the VLM endpoint"."""
    return MEMORY_SERVER if (why or "").startswith(MEMORY_SERVER) else "the VLM endpoint"


# ------------------------------------------------------------------------------------------------ inputs
def safe_id(group_id: str) -> str:
    """``group_id`` as a file-name part. An id with nothing ASCII in it (an image's stem ``写真``, ``..``) is
    ``group``: refusing it made every group named after a non-Latin file name fail; :func:`run_folder_name` adds
    the hash of the raw id, so two such ids still get two folders. Only a blank id is refused."""
    if not str(group_id).strip():
        raise InputError(f"group id {group_id!r} is blank")
    s = re.sub(r"[^A-Za-z0-9._-]+", "_", str(group_id)).strip("._")
    return (s or "group")[:120]


def run_folder_name(thread_id: str) -> str:
    """The run folder of a checkpoint thread: the id itself when it is already a clean folder name, else the
    cleaned id plus a hash of the raw one — two ids that clean to one name (``c/1`` and ``c_1``, or two long
    ids cut at the same place) are two threads and must not share (and overwrite) one folder."""
    s = safe_id(thread_id)
    if s == thread_id:
        return s
    return f"{s[:100]}-{hashlib.sha1(thread_id.encode()).hexdigest()[:8]}"




# far above any group the sampler allows (MAX_GENERATIONS hypotheses of ~340 bytes each)
MAX_HYPOTHESES_FILE_BYTES = 64 << 20


def load_hypotheses(source: Any, where: str = "hypotheses") -> dict[str, np.ndarray]:
    """Hypotheses from an ``.npz`` path, a dict of arrays or a ``HypothesisGroup`` (one input), validated:
    the four SMPL keys, one leading N (1 to ``MAX_GENERATIONS``), finite real values, transl in metres."""
    from hmrcritic.hmr.diffusion import MAX_GENERATIONS as max_n
    if isinstance(source, str | Path):
        path = Path(source)
        where = str(path)
        if not path.exists():
            raise InputError(f"{where}: file not found")
        if path.is_dir():
            raise InputError(f"{where}: is a folder; give the hypotheses .npz file (e.g. the one `hmrcritic sample` "
                             "writes)")
        # only the arrays read below: any other key (a tool's pickled metadata, `sample`'s x0 / keypoints / K) is
        # ignored unread, as CONTRACTS.md says — reading it refused the whole file
        arrays = read_npz(path, "global_orient, body_pose, betas, transl (float arrays with a leading N)",
                          MAX_HYPOTHESES_FILE_BYTES, "not a group of hypotheses", keys=(*HYP_KEYS, "poses"))
    elif hasattr(source, "numpy") and hasattr(source, "body_pose") and not isinstance(source, dict):
        arrays = {k: np.asarray(v) for k, v in source.numpy().items()}
        if arrays["body_pose"].ndim == 3:
            if arrays["body_pose"].shape[0] != 1:
                raise InputError(f"{where}: a HypothesisGroup with {arrays['body_pose'].shape[0]} inputs; "
                                 "pass one input's hypotheses (group.numpy(b))")
            arrays = {k: v[0] for k, v in arrays.items()}
    elif isinstance(source, dict):
        # .float(): numpy has no bfloat16 (a model run in bf16 gave a bare "unsupported ScalarType BFloat16")
        arrays = {}
        for k, v in source.items():
            if k not in HYP_KEYS and k != "poses":  # as for a file's: other keys are ignored unread
                continue
            try:
                arrays[k] = v.detach().cpu().float().numpy() if hasattr(v, "detach") else np.asarray(v)
            except (TypeError, ValueError, OverflowError):  # ragged lists ([[1, 2], [3]]): numpy's "inhomogeneous
                # shape" ValueError came out bare, naming neither the array nor the argument
                raise InputError(f"{where}: {k} is not a regular array of numbers (rows of unequal length?)") from None
    else:
        raise InputError(f"{where}: expected an .npz path, a dict of arrays or a HypothesisGroup")
    # a group holds at most max_n: the evidence compares every pair of hypotheses (100k of them fit in a 64 MiB file)
    return check_smpl_arrays(arrays, where, max_rows=max_n, too_many=lambda n: (
        f"{where}: {n} hypotheses; a group holds at most {max_n} (as `sample -n` and `export --num-generations` "
        "allow): critique it in parts"))


def _looks_like_hypotheses(value: Any) -> bool:
    """A hypotheses argument (an .npz path, a dict of SMPL arrays, a HypothesisGroup) where the sample belongs."""
    if isinstance(value, str | Path):
        return str(value).lower().endswith(".npz")
    if isinstance(value, Mapping):
        return "body_pose" in value
    return hasattr(value, "body_pose") and hasattr(value, "global_orient")


def _sample_arrays(sample: Any) -> dict[str, np.ndarray]:
    if not hasattr(sample, "keypoints"):  # None or a dict read "sample ?: keypoints have shape ()", naming no type
        # arguments swapped (``critique_group(group, sample)``) read "no group id … pass group_id=", which
        # pointed at the wrong argument
        swapped = (" — it looks like the hypotheses: the order is critique_group(sample, hypotheses)"
                   if _looks_like_hypotheses(sample) else "")
        raise InputError(f"sample must be a Sample (hmrcritic.hmr.data: load_split(...)[i], sample_from_user(...)) "
                         f"or an object with keypoints, K and image_size, got {type(sample).__name__}{swapped}")
    sid = getattr(sample, "sample_id", "?")

    def numbers(name: str, what: str, dtype: Any) -> np.ndarray:
        """The sample's field ``name`` as an array of ``dtype``, or one InputError naming the sample and the field.
        numpy's "could not convert string to float: 'abc'" / "inhomogeneous shape" came out bare, and keypoints
        from a differentiable detector (a tensor that requires grad) were torch's RuntimeError."""
        value = getattr(sample, name, None)
        try:
            if hasattr(value, "detach"):  # a torch tensor: off the graph and the device (bf16: numpy has none)
                value = value.detach().cpu()
                value = value.float() if value.is_floating_point() else value
            return np.asarray(value, dtype=dtype)
        except (TypeError, ValueError, OverflowError, RuntimeError, NotImplementedError):  # (a meta tensor)
            raise InputError(f"sample {sid}: {what} must be numbers, got {type(value).__name__}") from None

    kp = numbers("keypoints", "keypoints (17, 3) COCO-17 [u, v, conf]", np.float32)
    if kp.shape != (17, 3):
        raise InputError(f"sample {sid}: keypoints have shape {kp.shape}, expected (17, 3) COCO-17 [u, v, conf]")
    if not np.isfinite(kp).all():
        raise InputError(f"sample {sid}: keypoints contain NaN/inf")
    if not (kp[:, 2] > 0).any():
        raise InputError(f"sample {sid}: no keypoint has confidence > 0")
    K = numbers("K", "intrinsics K (3, 3)", np.float32)
    if K.shape != (3, 3) or not np.isfinite(K).all():
        raise InputError(f"sample {sid}: intrinsics K must be a finite (3, 3) matrix, got shape {K.shape}")
    if (not np.allclose(K[2], [0, 0, 1], atol=1e-6) or abs(float(K[1, 0])) > 1e-6 or abs(float(K[0, 1])) > 1e-6
            or K[0, 0] <= 0 or K[1, 1] <= 0):
        # projection and rendering read fx, fy, cx, cy only: any other K would be silently misread. A skew K[0, 1]
        # was let through, yet neither the projection nor the renderer reads it (skew 60 on a 128-px image: the
        # projected centre at x = 70, the rendered silhouette's at 64) — masks, reprojection and overlays were
        # all of another camera, without a word
        raise InputError(f"sample {sid}: intrinsics K must be [[fx, 0, cx], [0, fy, cy], [0, 0, 1]] with fx, fy > 0 "
                         f"(no skew), got {np.round(K, 4).tolist()}")
    size = numbers("image_size", "image_size (W, H)", np.int64).reshape(-1)
    if size.shape != (2,) or (size <= 0).any():
        raise InputError(f"sample {sid}: image_size must be (W, H) > 0")
    out = {"keypoints": kp, "K": K, "image_size": size}
    s24 = getattr(sample, "smpl24_keypoints", None)
    if s24 is not None:
        s24 = np.asarray(s24, dtype=np.float32)
        if s24.shape == (24, 3) and np.isfinite(s24).all():
            out["joint_conf"] = np.clip(s24[:, 2], 0, 1)
    mask_path = getattr(sample, "mask_path", None)
    if mask_path:
        out["mask_path"] = np.array(str(mask_path))
    ground = getattr(sample, "ground", None)
    if ground is not None:
        out["ground_normal"] = np.asarray(ground[0], dtype=np.float32)
        out["ground_offset"] = np.float32(ground[1])
    return out


def _inputs_digest(arrays: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for k in sorted(arrays):
        h.update(k.encode())
        h.update(np.ascontiguousarray(arrays[k]).tobytes())
    return h.hexdigest()[:16]


@keywords_checked
def content_group_id(sample: Any, hypotheses: Any) -> str:
    """``<sample id>-<8 hex digits of the inputs>``: the group id the CLI uses when none is given.

    The sample id alone (an image's file stem, a scene's ``split:index``) names different inputs alike —
    every ``img.png``, or ``test:0`` sampled with another ``-n`` — and a finished thread is not reused for other
    inputs, so the second one was refused. With the content in the id, the same inputs resume the same thread
    and different ones get their own."""
    arrays = {**_sample_arrays(sample), **load_hypotheses(hypotheses)}
    sid = str(getattr(sample, "sample_id", None) or "group")
    return f"{sid}-{_inputs_digest(arrays)[:8]}"


def _saver_path(saver: Any) -> str:
    """The file behind a SQLite checkpointer, for error messages (sqlite3's own name no file)."""
    return _saver_file(saver) or "the checkpoint database"


def _saver_file(saver: Any) -> str | None:
    """The file behind a SQLite checkpointer; None for an in-memory one or a checkpointer of another kind. Read
    under the saver's own lock: worker threads (``critique_groups``) share its one connection.

    SQLite names the file in UTF-8; as a path for ``os`` it is turned back into the file system's form — where
    Python reads names as ASCII (``LC_ALL=C PYTHONUTF8=0``, an old cron or service), a home named ``équipe`` made
    every critique fail at its thread lock ("'ascii' codec can't encode character")."""
    lock = getattr(saver, "lock", None)
    try:
        with lock if hasattr(lock, "acquire") and hasattr(lock, "__enter__") else nullcontext():
            name = str(saver.conn.execute("PRAGMA database_list").fetchone()[2])
    except Exception:
        return None
    return os.fsdecode(name.encode("utf-8", "surrogateescape")) if name else None


def _raised_by(saver: Any, exc: BaseException) -> bool:
    """Whether ``exc`` was raised in the checkpointer's own code: a node's SQLite (the Chroma memory is SQLite
    too) fails inside the same ``stream`` and must not be reported as the checkpoint database."""
    import inspect
    import traceback

    files = set()
    package = type(saver).__module__.split(".")[0]
    for cls in type(saver).__mro__:  # its class and base classes of its package (not typing's Generic, abc)
        if cls.__module__.split(".")[0] != package:
            continue
        try:
            files.add(inspect.getsourcefile(cls))
        except TypeError:  # builtins
            continue
    files.discard(None)
    if not files:
        return True
    return any(frame.filename in files for frame in traceback.extract_tb(exc.__traceback__))


@contextmanager
def _checkpoint_errors(saver: Any) -> Iterator[None]:
    """Turn a SQLite failure of the checkpointer into one AssetError line naming its file."""
    try:
        yield
    except sqlite3.Error as exc:
        if not _raised_by(saver, exc):
            raise
        raise checkpoint_error(_saver_path(saver), exc) from exc


_THREAD_LOCKS: dict[str, list] = {}  # thread → [lock, holders + waiters, owning OS thread]
_THREAD_LOCKS_GUARD = threading.Lock()


@contextmanager
def _one_critique_per_thread(thread: str) -> Iterator[None]:
    """Hold checkpoint thread ``thread`` against other critiques of it in this process (threads wait).

    The entry goes once nobody holds or waits for it (an export keeps one thread per group: a lock per group
    for the life of the process otherwise). A critique of the same thread started from inside its own run
    (an ``on_update`` hook, a custom judge) would wait for itself for ever: it is an error instead."""
    me = threading.get_ident()
    with _THREAD_LOCKS_GUARD:
        entry = _THREAD_LOCKS.setdefault(thread, [threading.Lock(), 0, None])
        if entry[2] == me:
            raise InputError(f"critique_group re-entered for group {thread!r} while critiquing it (from a hook or "
                             "a judge of that same critique): give the inner one another group_id=")
        entry[1] += 1
    try:
        with entry[0]:
            entry[2] = me
            try:
                yield
            finally:
                entry[2] = None
    finally:
        with _THREAD_LOCKS_GUARD:
            entry[1] -= 1
            if entry[1] == 0:
                _THREAD_LOCKS.pop(thread, None)


def _forget_thread_locks() -> None:
    """In a forked child: the parent's critiques (other threads, now gone) hold nothing here; their entries
    would keep a critique of their group in the child waiting for ever."""
    global _THREAD_LOCKS_GUARD
    _THREAD_LOCKS_GUARD = threading.Lock()
    _THREAD_LOCKS.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_thread_locks)


@contextmanager
def _one_critique_at_a_time(saver: Any, thread: str, gid: str) -> Iterator[None]:
    """Hold a kept checkpoint thread against every other critique of it: in this process (threads wait, a
    re-entry is an error), then in other processes (:func:`hmrcritic.agent.runs.thread_lock`, a lock beside the
    checkpoint file; an in-memory checkpointer is this process's alone). Two ``hmrcritic critique --group-id g``
    started together both found the thread empty and ran on one thread and one run folder: one could score
    the other's arrays. The second now waits, then finds the finished thread as it would serially."""
    with _one_critique_per_thread(thread), thread_lock(_saver_file(saver), thread, group=gid):
        yield


def _judge_settings(name: str, judge: Any = None) -> hconfig.JudgeSettings | None:
    """The endpoint settings behind a VLM judge: a judge object's own, or the environment's for the name
    ``vlm`` (in any spelling, as make_judge reads it); None for the builtin judge."""
    if judge is not None and not isinstance(judge, str):
        settings = getattr(judge, "settings", None)
        return settings if isinstance(settings, hconfig.JudgeSettings) else None
    return hconfig.JudgeSettings() if canonical_judge(name) == "vlm" else None


def _judge_identity(settings: hconfig.JudgeSettings | None) -> str:
    """Which model answers behind the judge's name: for a VLM its model and endpoint (no credentials), as the
    export's dataset header records it — ``vlm`` with another ``HMRCRITIC_VLM_MODEL`` is another critic. The
    name itself is compared apart."""
    if settings is None:
        return ""
    images = settings.image_identity()
    return settings.describe() + (f" [{images}]" if images else "")


def _custom_judge_identity(judge: Any) -> str:
    """Which code a judge *object* is, when it is not the shipped builtin or VLM judge itself: its class
    (module and name) and a digest of the class's source. Keyed by name alone, a ``BuiltinJudge`` subclass keeping
    ``name = "builtin"`` was handed the real builtin judge's finished critiques, and a custom judge whose code
    changed its own old ones. Empty for names, for ``BuiltinJudge`` / ``VLMJudge`` instances (their threads'
    digests stay as they were) and for the judges' own classes; what an instance holds in its attributes is not
    covered (``fresh=True`` re-runs)."""
    import inspect

    from hmrcritic.agent.judges import BuiltinJudge

    if judge is None or isinstance(judge, str) or type(judge) is BuiltinJudge:
        return ""
    cls = type(judge)
    vlm = sys.modules.get("hmrcritic.agent.vlm")  # loaded whenever a VLMJudge exists (as nodes.judge_in_use reads it)
    if vlm is not None and cls is vlm.VLMJudge:
        return ""
    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):  # a class typed into a REPL: no source to read, only its name
        source = ""
    code = hashlib.sha256(source.encode()).hexdigest()[:16] if source else "?"
    return f"class {cls.__module__}.{cls.__qualname__} {code}"


@functools.lru_cache(maxsize=1)
def _critic_code() -> str:
    """The builtin critic's identity: the digest of the code its scores are a function of (the one explored
    memories are keyed by). Without it a critique finished by an older hmrcritic came back "finished earlier" with
    that version's scores, and one it left interrupted was continued by this version's code — one critique made
    by two critics (a review re-ran an old home: three hypotheses ranked otherwise). A VLM critique keeps its
    identity (model and endpoint): its answers were paid for."""
    from hmrcritic.agent.evaluate_critic import code_digest

    return code_digest()


def _memory_identity(cfg: AgentConfig, memory: Any) -> str:
    """Which memory a store object passed as ``memory=`` is (its folder or server), as ``memory_dir`` says it for
    a folder: the settings name the configured memory, not the store the graph is handed, so a critique with
    ``MemoryStore(b)`` returned the finished critique made with ``MemoryStore(a)`` under a's memory version. Empty
    for a folder or None (the config holds it), without memory, or for an object that names no location.

    None with no folder configured is the home's memory, which the config names only as None: with
    ``HMRCRITIC_RUNS`` outside the home (one checkpoint file for several homes), a critique in another home
    returned the first home's finished critique "finished earlier" — its rules and memory version, not this
    memory's. That memory is named then; where the runs folder is the home's own (the default) the checkpoint
    file is the home's too, and the digests of those threads stay as they were."""
    if memory is None and cfg.use_memory and cfg.memory_dir is None and not cfg.chroma_url:
        folder = hconfig.memory_dir().absolute()
        return "" if folder == (hconfig.runs_dir().parent / "memory").absolute() else f"memory=|{folder}"
    if memory is None or isinstance(memory, str | Path) or not cfg.use_memory:
        return ""
    path, url = getattr(memory, "path", None), getattr(memory, "chroma_url", None)
    return f"memory={url or ''}|{path or ''}" if path or url else ""


def _body_identity() -> str:
    """Which body model the render node will pose the hypotheses with: the content hash of a user SMPL file
    (``HMRCRITIC_BODY_MODEL``, as the loaded model records it), empty for the built-in mannequin.

    Every measure, the prototypes recalled by pose and the renders come from that body, yet the settings named
    none: after ``HMRCRITIC_BODY_MODEL`` was set (or its file replaced), a re-run returned the mannequin's
    critique "finished earlier", and an interrupted one was continued on the other body."""
    from hmrcritic.hmr.body import load_body_model, resolve_model_path

    if resolve_model_path() is None:  # the mannequin: the digests of threads made with it stay valid
        return ""
    return f"body={load_body_model().source_sha256 or ''}"


def _settings_digest(cfg: AgentConfig, image_path: Any, mask_path: Any, judge_identity: str = "",
                     memory_identity: str = "", body_identity: str = "", labels_identity: str = "") -> str:
    """What decides a critique besides the arrays and the judge's name: the agent settings (the judge is
    compared on its own, with its own message), the model behind the judge, the memory store handed in
    (:func:`_memory_identity`), the body model (:func:`_body_identity`), and the bytes of the image and mask
    files (a path names a file; the file behind it may be another one on a re-run)."""
    from hmrcritic.io import sha256_file

    h = hashlib.sha256(json.dumps(cfg.model_dump(exclude={"judge"}), sort_keys=True, default=str).encode())
    if judge_identity:
        h.update(judge_identity.encode())
    if memory_identity:  # absent for a memory folder or None: digests of those threads stay valid
        h.update(memory_identity.encode())
    if body_identity:  # absent for the mannequin, likewise
        h.update(body_identity.encode())
    if labels_identity:  # absent unless a learning critique is given labels, likewise
        h.update(labels_identity.encode())
    for path in (image_path, None if mask_path is None else str(mask_path)):
        if path and Path(path).is_file():
            h.update(sha256_file(path).encode())
    return h.hexdigest()[:16]


# --------------------------------------------------------------------------------------------------- runs
def new_run_id(group_id: str) -> str:
    """``<UTC date-time>-<microseconds>-<group>``, from one reading of the clock: the seconds and the microseconds
    were two readings, so a call at the turn of a second got the earlier second with the later microseconds — an id
    that sorts before the runs made in the rest of that second (``trace`` lists the latest by name), and may equal
    the id of one of them."""
    now = time.time()
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(now)) + f"-{int(now * 1e6) % 1_000_000:06d}"
    return f"{stamp}-{safe_id(group_id)}"[:160]


def _agent_config(config: AgentConfig | dict | None, judge: Any, memory: Any, learn: bool | None,
                  **overrides) -> AgentConfig:
    from pydantic import ValidationError

    # wrong types are refused in one line here, the entry of critique_group(s): a dict() of a string raised a bare
    # ValueError, and a memory that is neither a folder nor a store failed as an AttributeError inside the graph
    if config is not None and not isinstance(config, AgentConfig | Mapping):
        raise InputError(f"agent config must be an AgentConfig, a dict of its settings or None, got "
                         f"{type(config).__name__}")
    if memory is not None and not isinstance(memory, str | Path) and not hasattr(memory, "rules"):
        raise InputError(f"memory must be a MemoryStore, a memory folder (str or Path) or None, got "
                         f"{type(memory).__name__}")
    blank = memory if isinstance(memory, str) else (config.get("memory_dir") if isinstance(config, Mapping) else None)
    if isinstance(blank, str) and not blank.strip():
        # a folder of "" is Path("") — the working folder: memory=os.environ.get("MEM", "") made and seeded a memory
        # (chroma.sqlite3, its lock files) in whatever folder the notebook ran from, without a word
        raise InputError(f"{'memory' if memory is not None else 'agent config: memory_dir'} is blank: give a memory "
                         "folder, or None for the configured memory")
    if judge is not None and not isinstance(judge, str) and not callable(getattr(judge, "critique", None)):
        # judge=5 (or a class instead of its instance) ran the render node, then failed inside the graph as a
        # JudgeError "AttributeError: 'int' object has no attribute 'critique'", leaving a thread behind
        raise InputError(f"judge must be 'builtin', 'vlm', a Judge object (with a critique method) or None, got "
                         f"{type(judge).__name__}")
    _check_flag("learn", learn, none_ok=True)
    raw = config.model_dump() if isinstance(config, AgentConfig) else dict(config or {})
    unknown = sorted(set(raw) - set(AgentConfig.model_fields), key=str)  # keys of mixed types sort too
    if unknown:  # pydantic drops unknown keys: {"max_reflection": 0} ran with the default reflections, silently
        import difflib

        hints = [f"{k!r}" + (f" (did you mean {m[0]!r}?)" if (m := difflib.get_close_matches(
            str(k), list(AgentConfig.model_fields), n=1)) else "") for k in unknown]
        raise InputError(f"agent config: unknown setting(s) {', '.join(hints)}")
    if judge is not None:
        raw["judge"] = judge_name(judge)
    if isinstance(memory, str | Path):
        raw["memory_dir"] = str(memory)
    if learn is not None:
        raw["learn"] = bool(learn)
    raw.update({k: v for k, v in overrides.items() if v is not None})
    try:  # validated here, before any input is written or thread started (not first inside the graph)
        cfg = AgentConfig.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(x) for x in err["loc"]) or "config"
        raise InputError(f"agent config: {where} {err['msg'].lower()} (got {err.get('input')!r})") from None
    return cfg  # its judge name is canonical (AgentConfig): "VLM" is "vlm" for every comparison


def _check_flag(name: str, value: Any, none_ok: bool = False) -> None:
    """Refuse a flag that is not a bool (numpy's too): ``bool("no")`` is True, so ``learn="false"`` — a value
    read from a form, an env file or argparse — learned into the memory, and ``fresh="no"`` recomputed."""
    if (value is None and none_ok) or isinstance(value, bool | np.bool_) or (
            isinstance(value, int | np.integer) and value in (0, 1)):
        return
    raise InputError(f"{name} must be True or False{' (or None)' if none_ok else ''}, got {value!r}")


def _check_hooks(on_update: Any, checkpointer: Any, graph: Any) -> None:
    """The objects critique_group calls into, checked before any work: each failed only once the graph ran (a
    TypeError "'int' object is not callable" after the render node, LangGraph's "Invalid checkpointer" for a path,
    an AttributeError for a graph that is none), naming no argument."""
    if on_update is not None and not callable(on_update):
        raise InputError(f"on_update must be a callable (node, update, seconds) or None, got "
                         f"{type(on_update).__name__}")
    if checkpointer is not None and not callable(getattr(checkpointer, "get_tuple", None)):
        raise InputError(f"checkpointer must be a LangGraph checkpoint saver or None, got {type(checkpointer).__name__}"
                         " (for a SQLite file: hmrcritic.agent.graph.open_checkpointer(path))")
    if graph is not None and not (callable(getattr(graph, "stream", None))
                                  and callable(getattr(graph, "get_state", None))):
        raise InputError(f"graph must be a compiled agent graph (hmrcritic.agent.graph.compile_graph) or None, got "
                         f"{type(graph).__name__}")


def _given_id(group_id: Any) -> str | None:
    """``group_id=`` as the thread id, None where none is given (None or "": the sample's id is used; a blank one
    is refused by the caller). Any falsy id was taken for none: ``group_id=i`` in a loop critiqued its first group
    (``i = 0``) under the sample's id instead of ``"0"``."""
    return None if group_id is None or group_id == "" else str(group_id)


def _new_memory_folder(memory: Any, config: Any, cfg: AgentConfig) -> Path | None:
    """The memory folder the caller named (``memory="…"`` or ``config={"memory_dir": …}``) when it holds no memory
    yet, else None: the critique then makes one there, seeded with the starter rules, and scores with it as if it were
    the memory asked for. None without memory (``use_memory`` off), for a Chroma server (the memory is the
    server's), for a store object, and for a folder from the environment or an ``AgentConfig`` object — the CLI's
    route, which says so itself (``commands.agent.note_new_memory``), once."""
    if not cfg.use_memory or cfg.chroma_url:
        return None
    if isinstance(memory, str | Path):
        folder: Any = memory
    elif memory is None and isinstance(config, Mapping) and config.get("memory_dir"):
        folder = config["memory_dir"]
    else:
        return None
    from hmrcritic.memory.store import holds_memory

    path = Path(folder).expanduser()
    return None if holds_memory(path) else path


@keywords_checked
def critique_group(
    sample: Any,
    hypotheses: Any,
    judge: Any = None,
    memory: Any = None,
    config: AgentConfig | dict | None = None,
    *,
    learn: bool | None = None,
    group_id: str | None = None,
    true_errors_mm: Sequence[float] | None = None,
    fresh: bool = False,
    checkpointer: Any = None,
    graph: Any = None,
    on_update=None,
    run_dir: str | Path | None = None,
    keep: bool = True,
) -> ScoredGroup:
    """Critique one group of hypotheses of one input.

    ``judge``: "builtin" | "vlm" | a Judge object; None takes the config's (``config={"judge": …}``, else
    HMRCRITIC_JUDGE, else builtin — a fixed "builtin" default here overrode both). ``memory``: a MemoryStore, a
    memory folder, or None (the configured one). A folder that holds no memory yet (``memory=`` or
    ``config={"memory_dir": …}``) is made and seeded with the starter rules, and the critique scores with that
    unexplored memory: a ``UserWarning`` says so (a mistyped path critiqued without a word, where the CLI prints a
    note). A warning, as this module's other "done, but you should know" cases are: a notebook shows it once per
    message, a script's ``warnings`` filters (or ``pytest.warns``) can act on it, and nothing scored changes.
    ``group_id``: the checkpoint thread (and run folder) of this critique, default the sample's ``sample_id``: the
    same id with the same inputs and settings returns the finished critique (``finished_earlier``), with other
    inputs it is refused once finished — :func:`content_group_id` gives the id per content that the CLI uses;
    ``fresh=True`` recomputes. ``true_errors_mm`` (labelled groups only) lets ``memory_write``
    settle prototypes on the true error when learning; judges never see it. ``on_update(node, update,
    seconds)`` is called after each node (CLI progress). ``run_dir`` overrides the group's folder (default
    ``runs_dir()/groups/<id>``).
    ``keep=False`` is for throwaway critiques (exploration, evaluation loops, diagnostics): a successful run
    leaves no checkpoint thread and no trace (a failed one keeps both, to be traced); the caller removes the
    run folder with :func:`discard_run` once it has read what it needs.
    Raises :class:`HMRCriticError` subclasses for bad input and judge failures.
    """
    from hmrcritic.agent.graph import compile_graph, open_checkpointer
    from hmrcritic.agent.trace import TraceWriter

    cfg = _agent_config(config, judge, memory, learn)
    _check_flag("fresh", fresh)
    _check_flag("keep", keep)
    _check_hooks(on_update, checkpointer, graph)
    if cfg.learn and cfg.use_memory and getattr(memory, "read_only", False) is True:
        # memory_write refused it only after the whole critique had run, leaving a thread and run folder behind
        raise InputError(f"learn=True needs a writable memory: the MemoryStore at {getattr(memory, 'path', '?')} is "
                         "open read-only (read_only=True); open it writable, or critique with learn=False")
    if run_dir is not None and not isinstance(run_dir, str | Path):
        raise InputError(f"run_dir must be a folder (str or Path) or None, got {type(run_dir).__name__}")
    if run_dir is not None:  # ``~`` is the home, as for memory= and the folder variables: "~/runs/g1" made a
        run_dir = hconfig.path_arg(run_dir, "critique_group: run_dir")  # folder named "~" in the working folder
    if run_dir is not None and Path(run_dir).is_file():  # a bare FileExistsError once the critique was to start
        raise InputError(f"run_dir must be a folder, got the file {run_dir}")
    if judge is None or isinstance(judge, str):  # an unknown name or a bad endpoint fails before any work
        from hmrcritic.agent.nodes import get_judge

        get_judge(cfg)
    sample_arrays = _sample_arrays(sample)  # before the group id: a wrong sample is named as such
    gid = _given_id(group_id) or str(getattr(sample, "sample_id", None) or "")
    if not gid.strip():
        raise InputError("critique_group: no group id (group_id= is blank or missing and the sample has no "
                         "sample_id); pass group_id=")
    arrays = {**sample_arrays, **load_hypotheses(hypotheses)}
    n = len(arrays["body_pose"])
    if true_errors_mm is not None:
        try:  # a string or another non-number was a bare ValueError / TypeError, not the documented InputError
            err = np.asarray(true_errors_mm, dtype=np.float32).reshape(-1)
        except (TypeError, ValueError):
            err = np.zeros(0, np.float32)
        # ≥ 0 too: a negative error (a signed difference passed by mistake) was a label that settles above 10 and
        # lifts the level of nearby groups; the prototype memory refuses it now, but only at memory_write, after
        # the critique had run
        if err.shape != (n,) or not np.isfinite(err).all() or (err < 0).any():
            raise InputError(f"group {gid}: true_errors_mm must be {n} finite values ≥ 0 (mm)")
        arrays["true_error_mm"] = err
    image_path = getattr(sample, "image_path", None)
    digest = _inputs_digest({k: v for k, v in arrays.items() if k != "true_error_mm"})
    judge_settings = _judge_settings(cfg.judge, judge)
    identity = _judge_identity(judge_settings)
    if not identity and cfg.judge == "builtin":
        identity = f"builtin code {_critic_code()}"
    if custom := _custom_judge_identity(judge):
        identity = f"{identity} {custom}".strip()
    # the labels a learning critique writes into its prototypes: a re-run with labels of a group learned without
    # them (or with others) returned the finished thread, and the labels were silently never learned
    labels = (f"labels={hashlib.sha256(arrays['true_error_mm'].tobytes()).hexdigest()}"
              if cfg.learn and cfg.use_memory and "true_error_mm" in arrays else "")
    settings = _settings_digest(cfg, image_path, arrays.get("mask_path"), identity, _memory_identity(cfg, memory),
                                _body_identity(), labels)

    if checkpointer is None and graph is not None:
        # a graph compiled with its own checkpointer (``compile_graph(InMemorySaver())``) and no checkpointer=:
        # the thread was read and run through the graph's, yet deleted (``fresh``, other inputs), locked and
        # trimmed in the default database — a failed re-run left the old critique marked done beside the new
        # inputs (returned "finished earlier" for them next time), and the trim deleted the default database's
        # own thread of that group
        own = getattr(graph, "checkpointer", None)
        checkpointer = own if callable(getattr(own, "get_tuple", None)) else None
    saver = checkpointer if checkpointer is not None else open_checkpointer()
    app = graph if graph is not None else compile_graph(saver)
    # A throwaway run is never resumed, so it gets a thread (and run folder) of its own: two explorations of
    # the same groups into different memories, in one home and at the same time, must not share one.
    thread = gid if keep else f"{gid}~{uuid.uuid4().hex[:10]}"
    configurable: dict[str, Any] = {"thread_id": thread, "agent": cfg.model_dump()}
    if judge is not None and not isinstance(judge, str):
        configurable["judge"] = judge
    if memory is not None and not isinstance(memory, str | Path):
        configurable["memory"] = memory
    run_config = {"configurable": configurable, "recursion_limit": 25 + 4 * cfg.max_reflections}

    # one critique of a kept thread at a time, in this process and across processes: jobs of
    # critique_groups(workers>1), or two processes, that share a group id all read the empty checkpoint before
    # any wrote it, then ran one thread over one run folder, and every job returned the first one's scores
    # without an error (serially, the second is refused as "already critiqued with different inputs", or gets
    # the stored result for the same inputs — as now)
    with _one_critique_at_a_time(saver, thread, gid) if keep else nullcontext():
        with _checkpoint_errors(saver):
            snapshot = app.get_state(run_config)
        values = dict(snapshot.values or {})
        if values and (fresh or values.get("inputs_digest") != digest):
            if not fresh and values.get("done"):
                raise InputError(f"group {gid} was already critiqued with different inputs; give another group id "
                                 "(--group-id / group_id=) or recompute it with --fresh / fresh=True")
            saver.delete_thread(thread)
            values = {}
        if values and values.get("judge", cfg.judge) != cfg.judge:
            # A finished critique is reused only from the judge it was made with (reporting the old scores under
            # the new judge's name would say a VLM scored what the builtin judge did); an interrupted one restarts
            # rather than mixing two judges in one critique.
            if values.get("done"):
                raise InputError(f"group {gid} was critiqued with the {values['judge']} judge; use fresh=True "
                                 f"(--fresh) to critique it again with {cfg.judge} (replacing it), or another "
                                 "group_id= (--group-id) to keep both")
            saver.delete_thread(thread)
            values = {}
        if values and values.get("settings_digest") != settings:
            # the same group scored under other settings (render on/off, reflections, rules/prototypes, learning,
            # memory) or with another image or mask file behind the same keypoints: critiqued again, since
            # returning the old run would report what those settings did not produce
            saver.delete_thread(thread)
            values = {}
        # absolute, as stored in the checkpoint and scores.json: a relative one (``run_dir="mine/g1"``, a relative
        # HMRCRITIC_HOME) was read against whatever folder a later prune, resume or report ran from — prune took
        # the thread of a critique made a minute earlier for an orphan, a report from elsewhere found no images
        run_dir = (Path(run_dir) if run_dir is not None
                   else hconfig.runs_dir() / "groups" / run_folder_name(thread)).absolute()
        if values.get("done"):
            # recorded again (idempotent): a process killed once memory_write had run, before the scene was
            # recorded below, left the memory learned from a scene no record named, and the re-run returned the
            # finished thread without recording it
            _record_learned_scene(memory if memory is not None else cfg.memory_dir, cfg, sample)
            result = _scored(values, cfg, resumed=True).model_copy(update={"finished_earlier": True})
            if keep:  # the run it printed is the one `trace --last` shows (a throwaway thread is never reused)
                from hmrcritic.agent.trace import point_last_at_finished

                point_last_at_finished(result.run_id)
            return result
        new_memory = _new_memory_folder(memory, config, cfg)
        if new_memory is not None:  # the graph about to run opens (makes) it; a finished thread returned above does not
            warn_caller(f"no memory at {new_memory} yet: a new one with only the starter rules is made there and "
                        "this critique scores with it (a mistyped path? an explored memory is the folder "
                        "`hmrcritic explore --memory-dir DIR` wrote)")
        run_id = new_run_id(gid)
        tracer = TraceWriter(run_id, gid, only_on_error=not keep)
        # held while the graph runs, so that `runs prune` (any process) leaves this folder and thread alone; taken
        # before the inputs are checked: a prune between the check and the lock removed them ("group inputs missing")
        resume_dir = Path(values["run_dir"]) if values.get("run_dir") else None
        with ExitStack() as held:
            locked = resume_dir if resume_dir is not None and resume_dir.is_dir() else run_dir
            held.enter_context(in_use(locked))
            # (or, past render, whose bodies are gone — the nodes after render read them: a resume then stopped on
            # "bodies.npz missing; use --fresh" where starting afresh is what that advice does)
            if values and not (resume_dir is not None and (resume_dir / "inputs.npz").is_file()
                               and ("evidence" not in values or (resume_dir / "bodies.npz").is_file())):
                # an interrupted thread whose run folder is gone (removed by hand, or pruned): its inputs lived there,
                # so resuming it failed with "group inputs missing" on every re-run; it starts afresh instead
                saver.delete_thread(thread)
                values = {}
                if locked != run_dir:  # its new inputs go to run_dir: that one is held too
                    held.enter_context(in_use(run_dir))
            if not values:  # a new thread: write the inputs, then start at render
                run_dir.mkdir(parents=True, exist_ok=True)
                atomic_save_npz(run_dir / "inputs.npz", **arrays)
                start: Any = {
                    "group_id": gid, "run_id": run_id, "run_dir": str(run_dir), "num_hypotheses": n,
                    "image_path": str(image_path) if image_path else None, "has_labels": "true_error_mm" in arrays,
                    "inputs_digest": digest, "settings_digest": settings, "judge": cfg.judge, "round": 0,
                    "reflections": [], "judge_model": judge_settings.describe() if judge_settings is not None else None,
                    "issues": [], "feedback": "",
                }
            else:  # an interrupted thread: resume from its last checkpoint
                start = None
            tracer.start(cfg, resumed=start is None)
            with _checkpoint_errors(saver):  # the checkpointer's database locked for too long, damaged, disk full
                try:
                    t0 = time.perf_counter()
                    # durability "sync": each node's checkpoint is on disk before the next node starts. LangGraph's
                    # default saves them in the background while the next node runs, so memory_write could learn
                    # before any checkpoint of the thread was written (the database busy a moment): killed then, the
                    # re-run found no thread, began a new run (another ledger key) and counted every rule use twice
                    for chunk in app.stream(start, run_config, stream_mode="updates", durability="sync"):
                        t1 = time.perf_counter()
                        for node, update in chunk.items():
                            if node.startswith("__"):  # LangGraph's own entries (`__metadata__` of writes it replays
                                continue  # when a killed critique resumes): no node of the graph ran
                            tracer.node(node, update or {}, t1 - t0)
                            if on_update is not None:
                                on_update(node, update or {}, t1 - t0)
                        t0 = time.perf_counter()
                    # reading the final state back and trimming the thread fail like the graph can (the
                    # database locked, the disk full): traced too, or the trace read "still running"
                    snapshot = app.get_state(run_config)
                    values = dict(snapshot.values)
                    if start is None and values.get("done") and values.get("run_id") != run_id:
                        # a resumed critique finished in this run: its stored run id was the interrupted run's, so a
                        # later "finished earlier" named the run whose trace shows the crash, not the one that scored it
                        new_config = app.update_state(snapshot.config, {"run_id": run_id}, as_node="memory_write")
                        snapshot = app.get_state(new_config)
                        values = dict(snapshot.values)
                    if keep:
                        _keep_last_checkpoint(saver, thread, snapshot.config)
                except BaseException as exc:  # traced as it happened, then raised (a SQLite one naming the file);
                    tracer.error(exc)  # Ctrl-C too: it ends the trace and lets go of the trace file's lock
                    if isinstance(exc, InvalidCritiqueError):  # its checkpoint says "memory_write next": a re-run would
                        saver.delete_thread(thread)  # replay the same invalid critique for ever; it starts afresh
                    raise
        tracer.finish(values)
        if not keep:
            try:  # the group is scored: a database that cannot delete now (locked, full) must not lose the result
                saver.delete_thread(thread)
            except sqlite3.Error as exc:
                warn_caller(f"{checkpoint_error(_saver_path(saver), exc)}; the throwaway thread {thread} is left "
                            "for `hmrcritic runs prune`")
        _record_learned_scene(memory if memory is not None else cfg.memory_dir, cfg, sample)
        return _scored(values, cfg, resumed=start is None, run_id=run_id)


def _record_learned_scene(memory: Any, cfg: AgentConfig, sample: Any) -> None:
    """A learning critique of a split's scene (``critique --scene test:3 --learn``, ``critique_group(...,
    learn=True)``) joins the memory's ``explored_on.json``, as exploration's groups do: once it has learned, and
    again whenever its finished thread is returned.

    Only exploration recorded what a memory learned from, so a memory that learned from test-000003 this way —
    its prototypes carrying the true error where labels were given — was evaluated on test-000003 afterwards
    (evaluate-critic --memory-dir, explore-eval) and recalled that very scene's prototype, every held-out
    check passing. Scenes that are no split's (a user's image) have nothing to be held out from."""
    if not (cfg.learn and cfg.use_memory):
        return
    from hmrcritic.agent.explore import _add_explored, _memory_path
    from hmrcritic.agent.groups import split_scene
    from hmrcritic.memory.store import writers_held_off

    sid = str(getattr(sample, "sample_id", "") or "")
    scene = split_scene(sid)
    if scene is None:
        return
    with writers_held_off(_memory_path(memory)):  # read, add, write: not beside another process's update
        _add_explored(memory, scene[0], [sid], {})


def _keep_last_checkpoint(saver, thread: str, last_config: dict) -> None:
    """Delete a finished thread's checkpoints but its last one (and their pending writes).

    A kept critique is read back only as its final state (a re-run returns it; prune and forget read or delete
    it), yet every super-step's checkpoint stayed, each a full copy of the state: the checkpoint file grew by
    206 KB per kept group of 16, and by 27 KB with the last checkpoint alone (``python benchmarks/bench_scale.py
    --parts long_run``). Each checkpoint holds every channel's value, so the last one alone restores the state.
    A checkpointer other than SQLite (in-memory, a caller's) is left as it is."""
    last = (last_config.get("configurable") or {}).get("checkpoint_id")
    if not last or not hasattr(saver, "cursor"):  # the SQLite saver's locked cursor
        return
    with saver.cursor() as cur:
        for table in ("checkpoints", "writes"):
            cur.execute(f"DELETE FROM {table} WHERE thread_id = ? AND checkpoint_ns = '' AND checkpoint_id != ?",
                        (str(thread), str(last)))


def _scored_group(result: Any, caller: str) -> ScoredGroup:
    """``result`` as a ScoredGroup: a :class:`GroupResult` of :func:`critique_groups` gives its result (one that
    failed has none: an InputError with its error); anything else is an InputError naming ``caller``. A
    GroupResult — what a batch hands a notebook — was a bare TypeError "expected str, bytes or os.PathLike object"
    in :func:`discard_run` and :func:`forget_group`."""
    if isinstance(result, GroupResult):
        if result.result is None:
            raise InputError(f"{caller}: group {result.group_id} has no result (it failed: {result.error})")
        result = result.result
    if not isinstance(result, ScoredGroup):
        raise InputError(f"{caller}: result must be a ScoredGroup or a GroupResult, got {type(result).__name__}")
    return result


@keywords_checked
def forget_group(result: ScoredGroup | GroupResult) -> None:
    """Remove everything a *kept* critique left once its result is safely stored elsewhere (an export writes
    it to its dataset): the checkpoint thread, the run folder and the trace. A crash before that point still
    resumes the group's critique from its checkpoint. Done holding the thread (:func:`_one_critique_at_a_time`),
    so that a critique of the same group id running meanwhile, here or in another process, is not cut off.
    A :class:`GroupResult` forgets its result's (an InputError when it failed: it has none)."""
    from hmrcritic.agent.graph import open_checkpointer
    from hmrcritic.agent.trace import repoint_last, traces_dir

    result = _scored_group(result, "forget_group")
    saver = open_checkpointer()
    with _one_critique_at_a_time(saver, result.group_id, result.group_id):
        saver.delete_thread(result.group_id)
        discard_run(result)
    if result.run_id:
        (traces_dir() / f"{result.run_id}.jsonl").unlink(missing_ok=True)
        repoint_last()


@keywords_checked
def discard_run(result: ScoredGroup | GroupResult | str | Path) -> None:
    """Remove a throwaway critique's run folder (arrays, renders). Only folders inside ``runs_dir()`` or the
    system temp folder are removed, so a result pointing elsewhere can never delete user files. A
    :class:`GroupResult` of a failed group has no run folder to name: nothing is removed."""
    import shutil
    import tempfile

    if result is None or (isinstance(result, GroupResult) and result.result is None):
        return
    if not isinstance(result, str | os.PathLike):
        result = _scored_group(result, "discard_run")
    raw = result.run_dir if isinstance(result, ScoredGroup) else result
    # an empty run_dir (ScoredGroup's default: one built from a scores.json without it) names no folder; as a Path
    # it was "." — the working folder, which was removed whole when the notebook ran inside the temp folder
    if raw is None or not str(raw).strip():
        return
    path = Path(raw)
    if not path.is_dir():
        return
    roots = [hconfig.runs_dir().resolve(), Path(tempfile.gettempdir()).resolve()]
    real = path.resolve()
    if any(real != root and real.is_relative_to(root) for root in roots):
        shutil.rmtree(real, ignore_errors=True)


def _scored(values: dict, cfg: AgentConfig, resumed: bool, run_id: str | None = None) -> ScoredGroup:
    crit = values["critique"]
    scores = [HypothesisScore.model_validate(s) for s in crit["scores"]]
    ranking = [s.index for s in sorted(scores, key=lambda s: (-s.overall, s.index))]
    return ScoredGroup(
        group_id=values["group_id"], scores=sorted(scores, key=lambda s: s.index), ranking=ranking,
        memory_version=values.get("memory_version", "none"), judge=values.get("judge") or cfg.judge,
        judge_model=values.get("judge_model"),
        reflections=values.get("reflections", []), notes=crit.get("summary", ""),
        run_dir=values.get("run_dir", ""), run_id=run_id or values.get("run_id", ""),
        rules_applied=list(crit.get("rules_applied", [])), rules_recalled=values.get("rules", []),
        prototypes_recalled=prototype_hits(values), evidence=values.get("evidence", {}),
        renders=values.get("renders", {}), memory_written=values.get("memory_written", {}), resumed=resumed,
        # recall hands the judge the calibration fitted under its name; every judge but the VLM applies it (the
        # builtin judge and its subclasses, which exploration calibrates); one imported for a VLM judge goes unused
        score_calibration=values.get("calibration") if (values.get("judge") or cfg.judge) != "vlm" else None,
    )


def error_metric_name(metric: str) -> str:
    """How a line names an ``explore --error-metric``: "PA-MPJPE", …, or the mix with its weights."""
    from hmrcritic.agent.explore import MIX_WEIGHTS

    names = {"pa_mpjpe": "PA-MPJPE", "mpjpe": "MPJPE", "pve": "PVE"}
    if metric == "mix":  # the weighted mean, in mm (explore.error_table), which the calibration maps
        return (f"the mix ({' + '.join(f'{w:g}·{names[k]}' for k, w in MIX_WEIGHTS.items())}) / "
                f"{sum(MIX_WEIGHTS.values()):g}")
    return names.get(metric, metric)


def overall_scale_note(result: ScoredGroup) -> str:
    """One line saying what scale ``overall`` is on, for the tables and the report ("" for a result that does not
    say: a scores.json written before session 28). Once exploration has fitted a score calibration, the builtin judge
    maps overall onto the true-error scale (10·exp(−error / 60 mm)) while the three axes stay its own 0–10 scores: a
    10 / 10 / 9.6 hypothesis with overall 2.5 read as a contradiction, and every overall dropping from ~8 to ~2.5
    after ``explore`` read as the critic getting worse. Said of this critique (what was applied), not of the memory
    now: a calibration can be switched off (``use_calibration``, rules off) or fitted after the critique ran."""
    if isinstance(result, BaseModel) and "score_calibration" not in result.model_fields_set:
        return ""
    axes = "motion, physical, image: the judge's own 0–10 axis scores"
    cal = getattr(result, "score_calibration", None)
    if isinstance(cal, dict) and cal:
        # the error exploration learned from (--error-metric); a calibration fitted before it was recorded is
        # PA-MPJPE's, as every calibration then was
        metric = error_metric_name(str(cal.get("error_metric") or "pa_mpjpe"))
        return (f"overall: on the true-error scale by the memory's score calibration (fitted on {cal.get('groups')} "
                f"labelled groups), 10·exp(−error / 60 mm) with error = {metric}, the error exploration learned "
                f"from: 10 at 0 mm, 3.7 at 60 mm, 1.4 at 120 mm; {axes}")
    # the builtin judge's summary says when labelled prototypes moved the group's level (judges.calibrate_level)
    level = "level calibrated" in (getattr(result, "notes", "") or "")
    return ("overall: the judge's own 0–10 score, no score calibration applied"
            + (" (its level moved toward how similar past poses truly went)" if level else "")
            + (" — exploring a memory fits one" if getattr(result, "judge", None) == "builtin" else "")
            + f"; {axes}")


@keywords_checked
def critique_groups(
    items: Iterable[tuple[Any, Any] | dict],
    judge: Any = None,
    memory: Any = None,
    config: AgentConfig | dict | None = None,
    *,
    learn: bool | None = None,
    workers: int = 1,
    progress=None,
    **kwargs,
) -> list[GroupResult]:
    """Critique many groups; ``items`` are ``(sample, hypotheses)`` pairs or dicts of
    :func:`critique_group` keyword arguments. A failing group yields a :class:`GroupResult` with ``error``
    and the others go on. ``workers`` > 1 runs groups in threads (useful for a VLM endpoint); below 1 is an
    :class:`InputError`, as export's ``--workers`` is.

    When the VLM endpoint itself cannot be used (:class:`~hmrcritic.agent.vlm.EndpointUnusableError`: nothing
    answers, the key or the model refused, every request refused) for ``UNUSABLE_IN_A_ROW`` groups in a row, the
    groups not started yet are not sent: each gets an ``EndpointUnusableError`` result saying it was not tried,
    instead of failing in turn after its retries (a notebook's 200 groups took an hour to learn the key was wrong).
    A Chroma memory server that stops answering (or cannot be reached) stops the batch the same way; its groups,
    tried and not, are ``AssetError`` results naming the memory server.
    A success in between resets the count; timeouts, 429 and 5xx never count. With ``workers`` > 1 the groups not
    started wait for those in flight: one of them scored (the endpoint is back) sends them after all."""
    cfg = _agent_config(config, judge, memory, learn)
    if isinstance(workers, bool) or not isinstance(workers, int | np.integer):
        raise InputError(f"workers must be an integer, got {type(workers).__name__}")
    if workers < 1:  # 0 or a negative count ran the groups one at a time, as if 1 had been asked for
        raise InputError(f"workers must be at least 1, got {int(workers)}")
    if progress is not None and not callable(progress):  # a TypeError once the first group was critiqued
        raise InputError(f"progress must be a callable (done, total, result) or None, got {type(progress).__name__}")
    import inspect

    # a misspelt keyword (``fersh=True``) came back as every group's error, the whole batch critiqued for nothing
    allowed = set(inspect.signature(critique_group).parameters) - {"sample", "hypotheses"}
    unknown = sorted(set(kwargs) - allowed)
    if unknown:  # with the closest keyword of either function (``wrokers=2``: workers), as critique_group says it
        own = [p for p in inspect.signature(critique_groups).parameters if p != "kwargs"]
        raise InputError(f"critique_groups: unknown argument(s) {unknown_keyword_hints(unknown, [*own, *allowed])} "
                         f"(critique_groups takes {', '.join(own)} and critique_group's {', '.join(sorted(allowed))})")
    if isinstance(items, str | bytes | dict) or not hasattr(items, "__iter__"):
        raise InputError(f"items must be an iterable of (sample, hypotheses) pairs or dicts, got "
                         f"{type(items).__name__}")
    jobs = []
    for i, it in enumerate(items):  # an item of another kind was a bare TypeError / IndexError here
        try:
            jobs.append(it if isinstance(it, dict) else {"sample": it[0], "hypotheses": it[1]})
        except (TypeError, IndexError, KeyError):
            raise InputError(f"items[{i}] must be a (sample, hypotheses) pair or a dict of critique_group "
                             f"arguments, got {type(it).__name__}") from None

    # the reason, once the endpoint counts as unusable. A group taken after that waits for the groups in flight
    # (the batch waits for them anyway): one of them scored shows the endpoint answers again, and the rest go on;
    # they were all "not tried" at once, with the endpoint back
    stopped: list[str] = []
    in_a_row, in_flight = [0], [0]
    one_judge = not any("judge" in job for job in jobs)  # jobs with judges of their own: endpoints of their own
    cond = threading.Condition()

    def one(job: dict) -> GroupResult:
        gid = _given_id(job.get("group_id")) or str(getattr(job.get("sample"), "sample_id", None) or "?")
        with cond:
            cond.wait_for(lambda: not stopped or in_flight[0] == 0)
            why = stopped[0] if stopped else None
            in_flight[0] += why is None
        if why is not None:  # labelled as the failures that stopped the batch: a dead memory server's are AssetError
            subject = unusable_subject(why)
            return GroupResult(gid, error=f"not tried: {UNUSABLE_IN_A_ROW} groups in a row failed because "
                               f"{subject} cannot be used: {why}",
                               error_type="AssetError" if subject == MEMORY_SERVER else "EndpointUnusableError")
        res, exc = None, None
        try:
            res, exc = _one(job, gid)
        finally:
            with cond:
                in_flight[0] -= 1
                unusable = unusable_endpoint(exc)
                if unusable is not None:
                    in_a_row[0] += 1
                elif res is not None and res.error is None:  # scored: the endpoint answers
                    in_a_row[0] = 0
                    stopped.clear()
                if unusable is not None and in_a_row[0] >= UNUSABLE_IN_A_ROW and one_judge and not stopped:
                    stopped.append(unusable)
                cond.notify_all()
        return res

    def _one(job: dict, gid: str) -> tuple[GroupResult, BaseException | None]:
        try:
            # a job's own judge / memory / config (documented: any critique_group keyword) wins over the shared
            # ones; passed beside them, every such job failed with "got multiple values for keyword argument"
            res = critique_group(**{"judge": judge, "memory": memory, "config": cfg, **kwargs, **job})
            return GroupResult(gid, result=res), None
        except HMRCriticError as exc:
            return GroupResult(gid, error=scrub(exc), error_type=type(exc).__name__), exc
        except Exception as exc:  # an unexpected failure still must not stop the other groups
            return GroupResult(gid, error=f"{type(exc).__name__}: {scrub(exc)}", error_type=type(exc).__name__), exc

    results: list[GroupResult] = []
    if workers <= 1:
        for i, job in enumerate(jobs):
            results.append(one(job))
            if progress is not None:
                progress(i + 1, len(jobs), results[-1])
        return results
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for i, res in enumerate(pool.map(one, jobs)):
            results.append(res)
            if progress is not None:
                progress(i + 1, len(jobs), res)
    return results


def critique_labelled(groups: Iterable[Any], memory: Any = None, config: AgentConfig | dict | None = None,
                      tag: str = "diag") -> Iterator[tuple[Any, ScoredGroup, np.ndarray]]:
    """Critique labelled groups one by one, each in a fresh thread, and yield ``(group, result, joints)`` with
    the hypotheses' ``(N, 24, 3)`` SMPL joints: the loop behind the critic diagnostics in benchmarks/
    (critic_signals, prototype_probes, prototype_level). Default config: no rendering, no memory, no revise
    loop — the measured evidence alone."""
    from hmrcritic.agent.nodes import load_bodies

    if config is None:
        config = AgentConfig(render=False, learn=False, use_memory=False, max_reflections=0)
    for g in groups:
        res = critique_group(g.sample, g.hypotheses, judge="builtin", memory=memory, config=config,
                             group_id=f"{tag}-{g.group_id}", fresh=True, keep=False)
        joints = load_bodies(res.run_dir)["joints"][:, :24]
        discard_run(res)
        yield g, res, joints


@keywords_checked
def write_scores(result: ScoredGroup, out_dir: str | Path) -> Path:
    """``scores.json`` (the ScoredGroup) in ``out_dir``, atomically; a :class:`GroupResult` of
    :func:`critique_groups` writes its result (as :func:`~hmrcritic.agent.report.write_report` takes one): its own
    dump (group_id, result, error) in scores.json is no ScoredGroup, and a report read from it would be wrong."""
    if isinstance(result, GroupResult):
        if result.result is None:
            raise InputError(f"group {result.group_id} has no scores to write: {result.error}")
        result = result.result
    if not isinstance(result, ScoredGroup):  # an AttributeError "'dict' object has no attribute 'model_dump'"
        raise InputError(f"write_scores: result must be a ScoredGroup or a GroupResult, got {type(result).__name__}")
    # a bare TypeError ("expected str, bytes or os.PathLike object") or FileExistsError out of the write before
    if not isinstance(out_dir, str | os.PathLike):
        raise InputError(f"write_scores: out_dir must be a folder (str or Path), got {type(out_dir).__name__}")
    folder = hconfig.path_arg(out_dir, "write_scores: out_dir")
    if folder.exists() and not folder.is_dir():
        raise InputError(f"write_scores: out_dir {folder} is a file, not a folder")
    return atomic_write_json(folder / "scores.json", result.model_dump())
