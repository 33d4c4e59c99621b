"""Export scored hypothesis groups as a group preference dataset (see :mod:`hmrcritic.alignment.dataset`).

For every input: draw a group of ``num_generations`` hypotheses with the diffusion model (per-group seed
derived from ``(seed, input_id)``), have the critique agent score the whole group against a *frozen*
memory, and write the scored group. Only 2D keypoints, intrinsics and image size of an input are ever
passed on — labels are stripped from every sample before it leaves this module.

Resumable and idempotent. Only the parent process writes: for each finished group it writes both array
files atomically, then appends one checksummed manifest line (fsynced). A kill -9 at any moment leaves at
worst a torn last line or orphan array files; on start the manifest is repaired (invalid lines dropped,
rewritten atomically) and groups already present are skipped, so re-running the same command finishes
the job with no duplicate. When all inputs are done the manifest is rewritten in input order and
``pairs.jsonl`` is derived, so the dataset is byte-identical whichever executor produced it.

Executors: in-process (``workers=1``), ``workers=K`` spawned processes (each loads the model and opens the
memory read-only once), or Ray (``ray_address`` = an address, ``"auto"``, or ``"local"`` for a local
instance; one actor per worker). Scoring is injectable: ``score_group`` is a callable or a
``"module:function"`` with :func:`hmrcritic.agent.api.critique_group`'s signature
``(sample, hypotheses, judge=..., memory=..., config=..., group_id=...) -> object with .scores and
.memory_version`` (``config`` holds ``AgentConfig`` fields; ``group_id`` names the agent's thread).
A group whose scoring fails (e.g. :class:`JudgeError`) goes to ``failures.jsonl`` with its reason and
the run continues; the next run retries it. Only when the VLM judge's endpoint itself is unusable (nothing
answers there, the key or the model refused, every request refused) and ``UNUSABLE_IN_A_ROW`` groups in a row
failed so, none written in between, and groups are still to come, does the run stop early with a
:class:`JudgeError` naming the endpoint (an :class:`AssetError` naming the server, when it is the Chroma memory
server that stopped answering): the groups written stay, the ones not attempted go to ``failures.jsonl``
(stage ``not_attempted``), and the same command continues once the endpoint works. The memory must stay frozen
for the whole run: when another process writes to it meanwhile (an exploration, ``critique --learn``), the run
stops before writing a group scored after the change and keeps the ones before (:class:`_MemoryWatch`). Worker
processes end with an export killed with -9, and its leftover temporary files go when it resumes.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import importlib
import multiprocessing as mp
import operator
import os
import re
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, Field, ValidationError

from hmrcritic.agent.api import (  # one rule for every batch path
    MEMORY_SERVER,
    UNUSABLE_IN_A_ROW,
    unusable_endpoint,
    unusable_subject,
)
from hmrcritic.agent.schema import HypothesisScore
from hmrcritic.alignment import dataset as D
from hmrcritic.errors import AssetError, InputError, JudgeError, check_number, keywords_checked, keywords_checked_init
from hmrcritic.hmr.diffusion import MAX_GENERATIONS
from hmrcritic.io import append_jsonl, atomic_write_jsonl, exclusive_lock, read_jsonl, record_checksum
from hmrcritic.redact import redact_url, scrub

DEFAULT_SCORER = D.DEFAULT_SCORER
# Sample fields that carry 3D labels (hmr.data.LABEL_KEYS and the like): never passed to a worker or the
# agent. 2D inputs (keypoints, smpl24_keypoints, K, image/mask paths) stay.
LABEL_FIELDS = (
    "global_orient",
    "body_pose",
    "betas",
    "transl",
    "joints3d",
    "keypoints_clean",
    "vertices",
    "category",
)


@keywords_checked_init
@dataclass
class ExportConfig:
    out: str
    split: str | None = None
    data: str | None = None
    model: str | None = None  # None → the shipped base model
    num_generations: int = 20
    judge: str = "builtin"
    workers: int = 1
    ray_address: str | None = None  # "local", "auto" or host:port; None → no Ray
    limit: int | None = None
    seed: int = 0
    sample_steps: int = 10  # DDIM steps
    memory: str | None = None  # memory folder; None → config.memory_dir()
    chroma_url: str | None = None
    score_group: str = DEFAULT_SCORER  # "module:function"
    use_memory: bool = True  # open the frozen memory and pass it to the scorer
    threads_per_worker: int = 1

    def __post_init__(self) -> None:
        self._check_types()
        if (self.split is None) == (self.data is None):
            raise InputError("give exactly one of --split NAME or --data DIR|FILE")
        if self.num_generations < 2:
            raise InputError(
                f"--num-generations must be ≥ 2 (a group needs something to compare), got "
                f"{self.num_generations}"
            )
        if self.num_generations > MAX_GENERATIONS:
            raise InputError(f"--num-generations must be ≤ {MAX_GENERATIONS}, got {self.num_generations}")
        if not 1 <= self.sample_steps <= 1000:
            raise InputError(f"--steps (DDIM steps) must be in 1..1000, got {self.sample_steps}")
        if self.workers < 1:
            raise InputError(f"--workers must be ≥ 1, got {self.workers}")
        if self.threads_per_worker < 1:  # else every group failed at set-up, each loading the model to fail again
            raise InputError(f"threads_per_worker must be ≥ 1, got {self.threads_per_worker}")
        if self.limit is not None and self.limit < 1:
            raise InputError(f"--limit must be ≥ 1, got {self.limit}")
        if self.judge not in ("builtin", "vlm"):
            raise InputError(f"--judge must be builtin or vlm, got {self.judge!r}")
        if ":" not in self.score_group:
            raise InputError(f"score_group must be 'module:function', got {self.score_group!r}")

    def _check_types(self) -> None:
        """Values of the wrong type from the Python API refused in one line naming the field, as FinetuneConfig does:
        ``num_generations="4"`` stopped in a comparison with "'<' not supported between str and int", and
        ``out=5`` was taken (a folder named "5"). Numpy scalars pass as numbers and become plain ints (the header is
        JSON); paths may be str or os.PathLike and become str."""
        for name in ("num_generations", "workers", "seed", "sample_steps", "threads_per_worker", "limit"):
            value = getattr(self, name)
            if value is None and name == "limit":
                continue
            check_number(f"ExportConfig.{name}", value, integer=True)
            setattr(self, name, operator.index(value))
        for name in ("out", "split", "data", "model", "memory", "chroma_url", "ray_address", "judge", "score_group"):
            value = getattr(self, name)
            paths = name in ("out", "data", "model", "memory")
            if value is None and name not in ("out", "judge", "score_group"):
                continue
            if not isinstance(value, str | os.PathLike if paths else str):
                raise InputError(f"ExportConfig.{name} must be {'a path (str or Path)' if paths else 'a str'}"
                                 f"{'' if name in ('out', 'judge', 'score_group') else ' or None'}, got "
                                 f"{type(value).__name__}")
            if paths:  # "" refused and "~" expanded, as the CLI's path options (config.path_text)
                from hmrcritic.config import path_text

                setattr(self, name, path_text(value, f"ExportConfig.{name}"))
        if not isinstance(self.use_memory, bool):
            raise InputError(f"ExportConfig.use_memory must be True or False, got {type(self.use_memory).__name__}")

    @property
    def source(self) -> str:
        return f"split:{self.split}" if self.split else f"data:{Path(self.data).resolve()}"


class ExportSummary(BaseModel):
    out: str
    executor: str
    inputs: int
    done_before: int
    new_groups: int
    groups: int
    failures: int
    failure_reasons: dict[str, int] = Field(default_factory=dict)
    first_failure: str = Field("", description="the first failure's message (all of them: failures.jsonl)")
    repaired_lines: int = 0
    zero_variance_share: float = 0.0
    score_histogram: dict[str, int] = Field(default_factory=dict)
    pairs: int = 0
    elapsed_s: float = 0.0
    groups_per_s: float = 0.0


# ---------------------------------------------------------------------------------------------- inputs


def strip_labels(sample: Any) -> Any:
    """A copy of a sample with every 3D-label field set to None (dataclass or plain object).

    A sample that is no dataclass (``export(inputs=...)`` with a ``SimpleNamespace``, a pydantic model, a class of
    the caller's own) was passed on as it was, its ``joints3d`` and SMPL labels reaching the scorer (a VLM's prompt)
    though this module promises they never leave it: such a sample is copied with its labels set to None, and one
    that cannot be copied so (frozen, slots without the field) is refused rather than passed on."""
    if dataclasses.is_dataclass(sample):
        names = {f.name for f in dataclasses.fields(sample)}
        return dataclasses.replace(sample, **{k: None for k in LABEL_FIELDS if k in names})
    present = [k for k in LABEL_FIELDS if getattr(sample, k, None) is not None]
    if not present:
        return sample
    if isinstance(sample, BaseModel):
        return sample.model_copy(update={k: None for k in present})
    try:
        stripped = copy.copy(sample)
        for k in present:
            setattr(stripped, k, None)
    except Exception as exc:
        raise InputError(f"sample {getattr(sample, 'sample_id', '?')}: its 3D label(s) {present} cannot be removed "
                         f"({type(exc).__name__}: {exc}); pass samples without them (or as dataclasses)") from None
    return stripped


_INPUT_FIELDS = ("sample_id", "keypoints", "K", "image_size")


def _checked_inputs(inputs: Any) -> list[Any]:
    """``export(inputs=...)`` must be samples (objects with ``sample_id``, ``keypoints``, ``K``, ``image_size``):
    anything else failed with a bare AttributeError while the groups were being listed, or every group failed
    in the workers. Refused in one line before the model, memory or output folder is touched. Returns them as a
    list (an iterator is read once)."""
    try:
        if isinstance(inputs, str | bytes | dict):
            raise TypeError
        inputs = list(inputs)  # a split (SceneSet) iterates by index
    except TypeError:
        raise InputError(f"inputs must be a list of samples, got {type(inputs).__name__}") from None
    for i, s in enumerate(inputs):
        if not all(hasattr(s, f) for f in _INPUT_FIELDS):
            raise InputError(f"inputs[{i}] must be a sample ({', '.join(_INPUT_FIELDS)}), got {type(s).__name__}")
    return inputs


def _check_unchanged(out: Path, record, sample) -> None:
    """Refuse to resume past a done group whose input has changed since it was written.

    Done groups are known by (source, input id, seed): an input list edited under the same id — a camera corrected,
    keypoints re-detected — was skipped as "already done", keeping the group sampled and scored under the old one
    without a word. Each record's condition file holds the input it was made from; compared as stored."""
    try:
        stored = D.load_npz(out / record.condition.path)
        now = D.condition_arrays(sample.keypoints, sample.K, sample.image_size)
    except (AssetError, InputError, ValueError):  # a damaged file: validate / repair say so; not this check's
        return
    changed = [k for k in ("keypoints", "K", "image_size") if k not in stored
               or np.shape(stored[k]) != np.shape(now[k])
               or not np.allclose(stored[k], now[k], rtol=1e-5, atol=1e-4, equal_nan=True)]
    if changed:
        raise InputError(f"input {record.input_id!r} has other {', '.join(changed)} than when its group "
                         f"{record.group_id} was written to {out}: export into another --out, or give the changed "
                         "input a new id")


def load_inputs(cfg: ExportConfig) -> tuple[list[Any], str | None]:
    """The samples to export (labels stripped), in a deterministic order, at most ``limit``, and the name
    of the split they come from (None for a user's own inputs: ``--data`` naming an input list or an ``.npz`` of
    keypoints, :func:`hmrcritic.hmr.userdata.read_inputs` — every entry read and checked before any sampling)."""
    from hmrcritic.hmr import data as hdata

    if cfg.split is not None:
        scenes = hdata.load_split(cfg.split)
    else:
        root = Path(cfg.data)
        if root.is_file():  # the paper's setting: one's own images with 2D keypoints, no 3D labels
            from hmrcritic.hmr.userdata import read_inputs

            samples = read_inputs(root)
            return samples[: cfg.limit] if cfg.limit is not None else samples, None
        if not root.is_dir():
            raise InputError(f"--data {root}: not a split folder or an input list (.jsonl of image + keypoints "
                             "files, or an .npz of keypoints, K, image_size)" + ("" if root.exists() else
                                                                                  ": nothing there"))
        scenes = _load_data_dir(hdata, root)
    # each shard against its manifest's sha256, as train-base and `data info` do: a shard replaced by another of
    # the same size (another seed's, a copy gone wrong) was sampled and scored into the dataset without a word.
    # Not wild's eval labels (an export never reads them: tests/test_finetune.py poisons them to show it), nor the
    # images' count, which export did not check before either (the builtin judge draws no grid for an export)
    hdata.verify_split_files(scenes.manifest, scenes.folder, labels=False, images=False)
    n = len(scenes) if cfg.limit is None else min(cfg.limit, len(scenes))
    return [strip_labels(scenes[i]) for i in range(n)], getattr(scenes, "name", cfg.split)


def _load_data_dir(hdata, root: Path):
    """A split folder written by ``hmrcritic data generate`` / ``generate_split`` (shards + manifest.json)."""
    if not (root / "manifest.json").exists():
        raise InputError(
            f"--data {root}: no manifest.json (expected a split folder written by `hmrcritic data generate`)"
        )
    return hdata.SceneSet(root)


# --------------------------------------------------------------------------------------------- workers


@dataclass
class WorkerContext:
    """Everything a worker needs (picklable): it loads the model and opens the memory itself, once."""

    model: str | None
    num_generations: int
    sample_steps: int
    judge: str
    score_group: str
    use_memory: bool
    memory: str | None
    chroma_url: str | None
    threads: int
    model_hash: str | None = None  # what the export's header names: a worker loading other weights refuses
    # the agent's settings, resolved once by the export (see agent_settings): a worker's own environment (another
    # process, a Ray node) must not score with other reflections, rules_k or switches than the header records
    agent_settings: dict | None = None
    # the VLM judge (model @ endpoint) the header records: a worker whose own environment (a Ray node's; the
    # --base-url/--vlm-model flags reach only this machine's processes) builds another refuses, not mislabels
    judge_model: str | None = None


def _import(spec: str) -> Callable:
    mod, _, attr = spec.partition(":")
    try:
        return getattr(importlib.import_module(mod), attr)
    except (ImportError, AttributeError) as exc:
        raise InputError(f"cannot import scorer {spec!r}: {exc}") from None


class GroupWorker:
    """Samples and scores one group at a time. One per process (or Ray actor); the model and the
    read-only memory are opened lazily on the first task and reused."""

    def __init__(self, ctx: WorkerContext):
        self.ctx = ctx
        self._model = None
        self._memory = None
        self._score = None

    def _setup(self) -> None:
        if self._model is not None:
            return
        self._check_judge()
        from hmrcritic.hmr.diffusion import load_model

        torch.set_num_threads(self.ctx.threads)
        model = load_model(self.ctx.model)
        if self.ctx.model_hash is not None:
            # Workers load the checkpoint seconds to minutes after the export hashed it for its header (a spawned
            # process imports torch first; a Ray actor that died is replaced later on): a file rewritten meanwhile
            # by another process (train-base finishing into that folder, a finetune's --out, `train-base --ship`)
            # was sampled from while the dataset and every record named the old weights, silently.
            from hmrcritic.alignment.finetune import state_dict_hash

            now = state_dict_hash(model)
            if now != self.ctx.model_hash:
                raise AssetError(f"the checkpoint {self.ctx.model or '(shipped base model)'} changed since this "
                                 f"export started (weights {self.ctx.model_hash} → {now}): another process rewrote "
                                 "it; run the export again (into another --out for the new weights)")
        self._score = _import(self.ctx.score_group)
        if self.ctx.use_memory:
            from hmrcritic.memory import MemoryStore

            self._memory = MemoryStore(self.ctx.memory, chroma_url=self.ctx.chroma_url, read_only=True)
        # set last: a setup that failed half-way (the memory did not open) is retried by the next task, not
        # taken as done (every later group was scored without the frozen memory)
        self._model = model

    def _check_judge(self) -> None:
        """Refuse a VLM judge other than the header's, before the model is loaded: a worker's own environment (a
        Ray node's; --base-url / --vlm-model reach only this machine's processes) scored the groups with its own
        model or endpoint under the header's name. Flagged as an unusable endpoint, so the export stops after a
        few such groups rather than failing the split one model load at a time."""
        mine = _judge_model(self.ctx.judge) if self.ctx.judge_model is not None else None
        if mine is not None and mine != self.ctx.judge_model:
            exc = AssetError(f"this worker's VLM judge is {mine}, the export's {self.ctx.judge_model}: the worker's "
                             "own environment (a Ray node's) names another endpoint, model or image setting; give "
                             "it the same HMRCRITIC_BASE_URL / HMRCRITIC_VLM_MODEL / HMRCRITIC_VLM_IMAGE_* "
                             "(--base-url / --vlm-model reach only this machine's processes)")
            exc.endpoint_unusable, exc.endpoint = True, mine
            exc.cause = f"not the export's judge {self.ctx.judge_model}"
            raise exc

    def ping(self) -> bool:
        """Answers once the worker exists (a Ray actor waiting for a free CPU does not yet)."""
        return True

    def run(self, task: dict) -> dict:
        """Task → result dict (``ok`` with arrays and scores, or the failure reason). Never raises."""
        head = {"group_id": task["group_id"], "input_id": task["input_id"], "group_seed": task["group_seed"]}
        try:
            self._setup()
        except Exception as exc:  # the model, scorer or memory did not open: recorded, the next task retries
            failed = {**head, "ok": False, "stage": "setup", "error": _reason(exc)}
            if endpoint := unusable_endpoint(exc):  # a memory server that cannot be reached stops the export
                failed["endpoint_unusable"] = endpoint
            return failed
        try:
            sample = task["sample"]
            # the dataset's checks, here: an input the writer refuses (an image size of 0, a negative focal length)
            # or hypotheses it refuses (non-finite) were sampled and scored, and then the parent's write raised
            # AssetError, which stopped the export; the same command stopped there again on every re-run, so the
            # dataset could never be finished. Such a group is a failure of its own, as any broken input is.
            try:  # before sampling: a fractional image size was sampled with as is and recorded cut to int64
                cond = D.condition_arrays(sample.keypoints, sample.K, sample.image_size)
            except AssetError as exc:
                raise AssetError(f"input {task['input_id']!r}: {exc}") from None
            D.check_condition(cond, f"condition of {task['group_id']}")
            hyps = self._sample(sample, task["group_seed"])
            arrays = {
                k: np.ascontiguousarray(getattr(hyps, k)[0].detach().cpu().numpy().astype(np.float32))
                for k in D.HYP_KEYS
            }
            D.check_hypotheses(arrays, f"hypotheses of {task['group_id']}", self.ctx.num_generations)
        except Exception as exc:  # a broken input or model: recorded, the run goes on
            return {**head, "ok": False, "stage": "sample", "error": _reason(exc)}
        try:
            scored = self._score(
                sample,
                hyps,
                judge=self.ctx.judge,
                memory=self._memory,
                config=self._agent_config(),
                group_id=task["thread_id"],
            )
            scores = [
                HypothesisScore.model_validate(s if isinstance(s, dict) else s.model_dump())
                for s in scored.scores
            ]
            for s in scores:  # a judge's words go into the dataset: an endpoint quoting a key back stays out
                s.rationale = scrub(s.rationale)
            if [s.index for s in scores] != list(range(self.ctx.num_generations)):
                scores = sorted(scores, key=lambda s: s.index)
                if [s.index for s in scores] != list(range(self.ctx.num_generations)):
                    raise ValueError(f"scorer returned indices {[s.index for s in scores]}")
        except Exception as exc:
            failed = {**head, "ok": False, "stage": "score", "error": _reason(exc)}
            if (endpoint := unusable_endpoint(exc)) is not None:  # a flag the parent reads (and pickles) as text
                failed["endpoint_unusable"] = endpoint
            return failed
        from hmrcritic.agent.api import ScoredGroup, forget_group

        if isinstance(scored, ScoredGroup):  # the dataset keeps the result; the run's thread, folder and trace go
            forget_group(scored)
        return {
            **head,
            "ok": True,
            "cond": cond,
            "hyps": arrays,
            "scores": [s.model_dump() for s in scores],
            "memory_version": str(getattr(scored, "memory_version", "") or ""),
        }

    def _agent_config(self) -> dict:
        """Agent settings (``AgentConfig`` fields): the export's resolved ones (:func:`agent_settings`) on the
        frozen memory, scoring only."""
        settings = self.ctx.agent_settings
        if settings is None:  # a context made by a caller of its own: resolved here, as the export would
            settings = agent_settings(self.ctx.judge, self.ctx.score_group, self.ctx.use_memory)
        return {**settings, "memory_dir": self.ctx.memory, "chroma_url": self.ctx.chroma_url}

    def _sample(self, sample, group_seed: int):
        from hmrcritic.hmr.diffusion import condition_from_keypoints
        from hmrcritic.hmr.diffusion import sample as draw

        kp = torch.as_tensor(np.asarray(sample.keypoints, dtype=np.float32))[None]
        K = torch.as_tensor(np.asarray(sample.K, dtype=np.float32))[None]
        size = torch.as_tensor(np.asarray(sample.image_size, dtype=np.float32))[None]
        cond = condition_from_keypoints(kp, K, size)
        gen = torch.Generator().manual_seed(group_seed)
        prev = torch.get_num_threads()
        torch.set_num_threads(self.ctx.threads)
        try:
            return draw(
                self._model,
                cond,
                num_generations=self.ctx.num_generations,
                steps=self.ctx.sample_steps,
                generator=gen,
            )
        finally:
            torch.set_num_threads(prev)


def _reason(exc: BaseException) -> str:
    msg = " ".join(scrub(exc).split())[:300]
    return f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__


_WORKER: GroupWorker | None = None
_STARTED = None  # a spawned worker's end of _pool's queue of (pid, group_id): which group each process took last


def _pool_init(ctx: WorkerContext, started=None) -> None:
    global _WORKER, _STARTED
    _WORKER, _STARTED = GroupWorker(ctx), started
    _exit_with_parent()


def _exit_with_parent() -> None:
    """End this worker process once the export that spawned it is gone. A worker waits on the pool's task
    queue, whose write end it holds itself, so an export killed with -9 (or by the OOM killer) otherwise left
    every worker running for ever, each holding a model and the memory open."""
    import os
    import threading
    from multiprocessing.connection import wait

    parent = mp.parent_process()
    if parent is None:  # not a spawned worker (called in-process)
        return

    def watch() -> None:
        wait([parent.sentinel])
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def _pool_run(task: dict) -> dict:
    assert _WORKER is not None
    if _STARTED is not None:  # a SimpleQueue writes at once (no feeder thread a kill -9 would cut short)
        import os

        _STARTED.put((os.getpid(), task["group_id"]))
    return _WORKER.run(task)


def _serial(ctx: WorkerContext, tasks: list[dict]) -> Iterator[dict]:
    worker = GroupWorker(ctx)
    prev = torch.get_num_threads()
    try:
        for task in tasks:
            yield worker.run(task)
    finally:
        torch.set_num_threads(prev)


_POOL_BREAKS = 3  # process pools in a row that may break before any group finishes in them (see _pool)


def _death(pid: int, code: int | None) -> str:
    """"pid P, exit code C: what it means" for a worker process that died."""
    import signal

    if code is not None and code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        how = {9: "killed (SIGKILL: `kill -9`, or the out-of-memory killer)"}.get(-code, f"killed by {name}")
    else:
        how = "exited (os._exit or a crash in native code)" if code else "exited while running it (os._exit(0))"
    return f"pid {pid}, exit code {code}: {how}"


def _pool(ctx: WorkerContext, tasks: list[dict], workers: int) -> Iterator[dict]:
    """Results as they finish. A worker process that dies (killed, out of memory, ``os._exit`` in a scorer)
    breaks the pool, whose other workers are then stopped too: the groups the dead process was running fail
    (stage "worker", naming its pid and exit code) and the others not finished go to a new pool. Before, every
    group not finished — the healthy workers' too — failed, one ``kill -9`` costing the rest of the split.

    Which process ran which group each worker says as it takes it (``_STARTED``). A process that died holding
    none (it could not load its task: samples of a class of a notebook's or script's ``__main__`` do not unpickle
    in a spawned worker) fails no group by itself; after ``_POOL_BREAKS`` pools in a row broke before any group
    finished in them (every task kills its worker), the groups left fail instead of starting pool after pool.
    A re-run retries every group failed so."""
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool

    spawn = mp.get_context("spawn")
    todo, breaks, started = list(tasks), 0, None
    try:
        while todo:
            # a queue per pool: a worker killed while it writes holds the queue's lock for good, and the next pool's
            # workers would wait on it for ever
            started = spawn.SimpleQueue()
            pool = ProcessPoolExecutor(min(workers, len(todo)), mp_context=spawn, initializer=_pool_init,
                                       initargs=(ctx, started))
            pending = {pool.submit(_pool_run, t): t for t in todo}
            # pid → Process, their exit codes once the pool broke: taken now too (the pool spawns them as tasks are
            # submitted), as a pool that breaks before its first wait returns may have dropped them by then
            procs: dict[int, Any] = dict(getattr(pool, "_processes", None) or {})
            holds: dict[int, str] = {}  # pid → the group it took last
            finished: set[str] = set()
            broke = False
            try:
                while pending:
                    done, _ = wait(pending, return_when=FIRST_COMPLETED)
                    procs.update(getattr(pool, "_processes", None) or {})
                    _drain(started, holds)
                    for fut in done:
                        task = pending.pop(fut)
                        try:
                            res = fut.result()
                        except BrokenProcessPool:
                            broke = True
                            continue
                        finished.add(task["group_id"])
                        yield res
            except BaseException:
                # Ctrl-C (or an error, or the caller stopping early): nothing will write what the workers are
                # computing now, so stop them instead of waiting. A Ctrl-C reaches the workers too; each then took
                # the next group already queued for it and ran it whole while `shutdown(wait=True)` waited (minutes
                # with a VLM judge, the terminal silent, the results thrown away). Killed here as when the export
                # itself is killed.
                for proc in list((getattr(pool, "_processes", None) or {}).values()):
                    with contextlib.suppress(Exception):
                        proc.terminate()
                raise
            finally:
                for fut in pending:
                    fut.cancel()
                pool.shutdown(wait=True, cancel_futures=True)
            todo = [t for t in todo if t["group_id"] not in finished]
            if not broke:
                break
            _drain(started, holds)
            # the pool stops its other workers with SIGTERM once one died: those are no deaths of their own (unless
            # nothing else died: then a SIGTERM from outside was what broke it)
            # exit code 0 counts too: a process that ended (os._exit(0)) holding an unfinished group died there
            codes = {pid: p.exitcode for pid, p in procs.items() if p.exitcode is not None}
            dead = {pid: c for pid, c in codes.items() if c != -15} or codes
            held = {holds[pid]: _death(pid, c) for pid, c in dead.items() if holds.get(pid) in
                    {t["group_id"] for t in todo}}
            for task in [t for t in todo if t["group_id"] in held]:
                yield _pool_failure(task, f"a worker process died while running this group ({held[task['group_id']]}"
                                          "); a re-run retries it")
            todo = [t for t in todo if t["group_id"] not in held]
            # pools in a row that finished no group (blaming the groups dead workers held is no progress: every
            # group killing its worker would start a pool per group, seconds each); the groups left then fail as
            # "kept dying", and a re-run retries them
            breaks = 0 if finished else breaks + 1
            if todo and breaks >= _POOL_BREAKS:
                deaths = "; ".join(_death(pid, c) for pid, c in dead.items()) or "exit codes unknown"
                hint = ("" if held else ": it could not load its task — samples of a class defined in a notebook or "
                        "a script's __main__ do not reach spawned workers (use --workers 1, or Ray)")
                for task in todo:
                    yield _pool_failure(task, f"worker processes kept dying ({breaks} process pools in a row broke "
                                              f"before any group finished in them; last: {deaths}){hint}; a re-run "
                                              "retries this group")
                return
            started.close()
            started = None
    finally:
        if started is not None:
            started.close()


def _drain(started, holds: dict[int, str]) -> None:
    """Read the workers' (pid, group) messages as they come: unread, a full pipe would block their ``put``."""
    while not started.empty():
        pid, gid = started.get()
        holds[pid] = gid


def _pool_failure(task: dict, error: str) -> dict:
    return {"group_id": task["group_id"], "input_id": task["input_id"], "group_seed": task["group_seed"],
            "ok": False, "stage": "worker", "error": error}


RAY_WORKER_DIED = "a Ray worker died while running this group (killed, out of memory, or exited); a re-run retries it"


def _probe_ray_address(address: str) -> None:
    """Fail at once, in one line, when nothing listens at ``host:port`` (``ray.init`` retries such an address for
    many minutes, printing a warning every few seconds)."""
    import socket

    hostport = address.partition("://")[2] if "://" in address else address
    hostport = hostport.rpartition("@")[2].split("/")[0]
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit():
        raise InputError(
            f"--ray-address {redact_url(address)!r}: expected host:port, ray://host:port, "
            "'auto' or 'local'"
        )
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=5):
            pass
    except OSError as exc:
        raise InputError(
            f"cannot connect to Ray at {redact_url(address)!r}: nothing answers there "
            f"({type(exc).__name__}: {exc.strerror or exc}); start the cluster (`ray start --head`) or fix the address"
        ) from None


def _ray_preflight(address: str) -> None:
    try:
        import ray  # noqa: F401
    except ImportError:
        raise InputError("--ray-address needs Ray: pip install 'hmrcritic[ray]'") from None
    if address not in ("local", "auto"):
        _probe_ray_address(address)


def _ray_init(ray, address: str, workers: int) -> None:
    with _keep_sigterm_handler():
        _ray_init_here(ray, address, workers)


@contextlib.contextmanager
def _keep_sigterm_handler():
    """Put back the SIGTERM handler the caller had set (the CLI's, which stops the command as Ctrl-C does) once
    ``ray.init`` has replaced it: a SIGTERM then ended the export through Ray's own handler, past every
    ``finally``, so ``ray.shutdown()`` never ran and the local cluster's agents (``ray::DashboardAgent``,
    ``ray::RuntimeEnvAgent``) stayed running after the export was gone. Python's default is left to Ray."""
    import signal
    import threading

    main = threading.current_thread() is threading.main_thread()
    before = signal.getsignal(signal.SIGTERM) if main else None
    try:
        yield
    finally:
        if callable(before):
            signal.signal(signal.SIGTERM, before)


def _ray_init_here(ray, address: str, workers: int) -> None:
    import logging

    try:
        if address == "local":
            ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
        else:
            ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
    except Exception as exc:
        raise InputError(
            f"cannot connect to Ray at {redact_url(address)!r}: "
            f"{_reason(exc).replace(address, redact_url(address))}"
        ) from None


class _QuietRayErrors:
    """While the export runs, Ray's driver prints every worker death as a long ``(raylet) …`` paragraph on stdout
    (under the progress bar, into ``--json`` output). The export records each death itself (failures.jsonl, the
    summary), so those paragraphs go to the debug log instead. Best effort: a Ray without the hook is left alone."""

    def __enter__(self):
        import logging

        try:
            from ray._private import worker as ray_worker
        except ImportError:  # pragma: no cover - Ray internals moved
            self._mod = None
            return self
        self._mod, self._orig = ray_worker, getattr(ray_worker, "print_to_stdstream", None)
        if self._orig is None:  # pragma: no cover
            return self
        log, orig = logging.getLogger("hmrcritic.export.ray"), self._orig

        def route(data, *args, **kwargs):
            if isinstance(data, dict) and data.get("pid") == "raylet":
                for line in data.get("lines", []):
                    log.debug("ray: %s", scrub(line))
                return None
            return orig(data, *args, **kwargs)

        ray_worker.print_to_stdstream = route
        return self

    def __exit__(self, *exc):
        if self._mod is not None and self._orig is not None:
            self._mod.print_to_stdstream = self._orig
        return False


def _worker_failure(task: dict, exc: BaseException | str) -> dict:
    if isinstance(exc, str):
        error = exc
    else:
        error = f"{type(exc).__name__}: {RAY_WORKER_DIED}"
    return {"group_id": task["group_id"], "input_id": task["input_id"], "group_seed": task["group_seed"],
            "ok": False, "stage": "worker", "error": error}


def _ray(ctx: WorkerContext, tasks: list[dict], workers: int, address: str) -> Iterator[dict]:
    """Results as they finish, one group in flight per actor. An actor that dies (killed, out of memory, a
    ``SystemExit``, its node gone) fails only the group it was running (stage "worker", as the process pool
    does) and is replaced; after ``2 × workers + 2`` deaths in a row with no group finished (the cluster is
    gone or every worker crashes at start) the groups not started are failed too instead of trying on. Ray
    started here (``"local"``) or connected here is shut down at the end, also on an error or Ctrl-C in the
    driver; the actors are killed in every case."""
    try:
        import ray
        from ray.exceptions import RayError
    except ImportError:
        raise InputError("--ray-address needs Ray: pip install 'hmrcritic[ray]'") from None
    connected_here = False
    if not ray.is_initialized():
        _ray_init(ray, address, workers)
        connected_here = True
    actors: list = []
    running: dict = {}  # ObjectRef → (actor, task)
    try:
        _check_ray_cpus(ray, address)
        with _QuietRayErrors():
            actor_cls = ray.remote(num_cpus=1, max_restarts=0, max_task_retries=0)(GroupWorker)
            queue = list(reversed(tasks))
            idle = []
            started: dict = {}  # actor → its ping: ready once Ray has placed it on a CPU
            for _ in range(min(workers, len(tasks))):
                actors.append(actor_cls.remote(ctx))
                idle.append(actors[-1])
                started[actors[-1]] = actors[-1].ping.remote()
            deaths_in_a_row, limit = 0, 2 * workers + 2
            while queue or running:
                while idle and queue:
                    actor, task = idle.pop(), queue.pop()
                    running[actor.run.remote(task)] = (actor, task)
                try:
                    ready, _ = ray.wait(list(running), num_returns=1, timeout=RAY_STARVED_NOTE_S)
                    if not ready:
                        _note_starved(ray, address, started)
                        continue
                except (RayError, ConnectionError) as exc:  # the driver lost the cluster: nothing more will finish
                    reason = f"{_reason(exc)}; a re-run retries this group"
                    for _actor, task in running.values():
                        yield _worker_failure(task, reason)
                    running.clear()
                    while queue:
                        yield _worker_failure(queue.pop(), reason)
                    break
                for ref in ready:
                    actor, task = running.pop(ref)
                    try:
                        res = ray.get(ref)
                    except RayError as exc:
                        deaths_in_a_row += 1
                        yield _worker_failure(task, exc)
                        _kill_actor(ray, actor)
                        actors.remove(actor)
                        started.pop(actor, None)
                        if deaths_in_a_row >= limit:
                            reason = (f"{type(exc).__name__}: {deaths_in_a_row} Ray workers died in a row (the cluster "
                                      "is gone or workers crash at start); a re-run retries this group")
                            while queue:
                                yield _worker_failure(queue.pop(), reason)
                        elif queue:
                            try:
                                actors.append(actor_cls.remote(ctx))
                            except Exception as exc2:  # the driver lost the cluster
                                reason = f"{_reason(exc2)}; a re-run retries this group"
                                while queue:
                                    yield _worker_failure(queue.pop(), reason)
                            else:
                                idle.append(actors[-1])
                                started[actors[-1]] = actors[-1].ping.remote()
                        continue
                    deaths_in_a_row = 0
                    idle.append(actor)
                    yield res
    finally:
        for actor in actors:
            _kill_actor(ray, actor)
        if connected_here:
            ray.shutdown()


RAY_STARVED_NOTE_S = 60.0  # how long no group may finish before the export says why it is waiting


def _check_ray_cpus(ray, address: str) -> None:
    """A cluster without CPUs can never start a worker (each takes 1 CPU): the export would wait forever
    under a progress bar that never moves. Refuse in one line instead."""
    total = ray.cluster_resources().get("CPU", 0)
    if total < 1:
        raise InputError(f"the Ray cluster at {redact_url(address)!r} has no CPUs (it reports {total:g}); each "
                         "export worker needs 1 CPU — add nodes with CPUs or use --workers without --ray-address")


def _note_starved(ray, address: str, started: dict) -> None:
    """Say why nothing finishes when export workers cannot start because other jobs hold every CPU of the
    cluster: Ray reports that only in its own log, and the progress bar just stands still. Waiting on is right
    (a busy cluster frees up), so this is a note, repeated while it lasts, not a failure."""
    import logging

    refs = list(started.values())
    placed, _ = ray.wait(refs, num_returns=len(refs), timeout=0) if refs else ([], [])
    waiting = len(refs) - len(placed)
    if waiting:
        logging.getLogger("hmrcritic.export").warning(
            "export: %d of %d Ray worker(s) still wait for a free CPU — the cluster at %s has %g of %g CPUs free "
            "(other jobs hold them); waiting on", waiting, len(refs), redact_url(address),
            ray.available_resources().get("CPU", 0), ray.cluster_resources().get("CPU", 0))


def _kill_actor(ray, actor) -> None:
    with contextlib.suppress(Exception):  # already dead, or the cluster is gone
        ray.kill(actor, no_restart=True)


# ------------------------------------------------------------------------------------------------ export


def model_hash(model_path: str | None) -> tuple[str, int]:
    """Content hash of the model weights and its x0 width (loads the checkpoint once in the parent)."""
    from hmrcritic.alignment.finetune import state_dict_hash
    from hmrcritic.hmr.diffusion import load_model

    model = load_model(model_path)
    return state_dict_hash(model), int(model.X_DIM)


def _memory_folder(cfg: ExportConfig) -> Path:
    """The export memory's folder on this machine: the memory itself, or a server memory's local lock folder.

    ``~`` expanded, as :class:`~hmrcritic.memory.MemoryStore` expands it: ``memory="~/mem"`` (the Python API, or
    ``--memory-dir=~/mem``, which the shell leaves alone) had the workers score with ``$HOME/mem`` while the memory
    watch read the write sequence and lock of a folder literally named ``~`` under the working folder, which never
    changes, so a write to the memory during the export went unnoticed."""
    from hmrcritic import config

    return Path(cfg.memory).expanduser() if cfg.memory else config.memory_dir()


def frozen_memory(cfg: ExportConfig) -> tuple[str | None, str]:
    """Path and version of the frozen memory the workers open read-only.

    A missing local memory is created once, here, with the starter rules, so that workers never write.
    Returns ``(None, "none")`` when scoring runs without memory.
    """
    if not cfg.use_memory:
        return cfg.memory, "none"
    from hmrcritic.memory import MemoryStore
    from hmrcritic.memory.store import holds_memory

    path = cfg.memory
    if not cfg.chroma_url:
        p = _memory_folder(cfg)
        if not holds_memory(p):
            MemoryStore(p)  # seeds the starter rules
        path = str(p)
    return path, MemoryStore(path, chroma_url=cfg.chroma_url, read_only=True).version()


class _MemoryWatch:
    """Notices another process writing to the export's memory while it runs (an exploration, ``critique
    --learn``, an import): the workers' read-only stores see such writes, so later groups were scored by
    another memory than the one the dataset names, silently. Cheap per group: the memory's write sequence
    (bumped by every write batch) and whether a batch holds its write lock; only when either says so is the
    version recomputed. A Chroma server's writers on this machine bump the same local sequence; writers on other
    machines leave no trace here, so a server memory's version is also read every ``SERVER_CHECK_S`` seconds.

    A server named by ``--chroma-url`` was not watched at all (the same server through HMRCRITIC_CHROMA_URL was):
    a ``memory reset`` of the server mid-export left a dataset of groups scored by two memories under one
    header's version."""

    SERVER_CHECK_S = 10.0

    def __init__(self, path: str | None, version: str, seq: int, chroma_url: str | None = None):
        """``path``: the memory's folder (a server memory's local lock folder), None for no memory. ``seq``:
        :meth:`seq_of` the memory read *before* ``version`` was (a write in between then costs one recomputation,
        never a miss). ``chroma_url``: as the export was given it (None: the environment's, as the store reads)."""
        from hmrcritic.memory import store as S

        self._S = S
        self.path = Path(path) if path else None
        self.version = version
        self.seq = seq
        self.chroma_url = chroma_url
        # chroma_url "" (the Python API's "on disk, whatever HMRCRITIC_CHROMA_URL says") is no server
        self.server = None if self.path is None else (
            chroma_url if chroma_url is not None else S.config.env_chroma_url()) or None
        self._last_server_check = time.monotonic()

    @staticmethod
    def seq_of(cfg: ExportConfig) -> int:
        from hmrcritic.memory.store import _read_seq

        return _read_seq(_memory_folder(cfg))

    def _batch_running(self) -> bool:
        from filelock import FileLock, Timeout

        lock = FileLock(str(self.path / self._S.LOCK_NAME))
        try:
            lock.acquire(timeout=0)
        except Timeout:
            return True
        except OSError:  # a folder nobody can write either
            return False
        lock.release()
        return False

    def check(self, kept: int) -> None:
        """Raise when the memory's content changed since the export started (``kept`` groups are written)."""
        if self.path is None:
            return
        seq = self._S._read_seq(self.path)
        due = self.server is not None and time.monotonic() - self._last_server_check >= self.SERVER_CHECK_S
        if seq == self.seq and not due and not self._batch_running():
            return
        store = None
        try:
            store = self._S.MemoryStore(self.path, chroma_url=self.chroma_url, read_only=True)
            store.refresh()
            now = store.version()
        except AssetError as exc:
            if not getattr(exc, "endpoint_unusable", False):
                raise
            return  # a memory server that went: the workers meet it too, and their failures stop the export
        finally:
            if store is not None:
                store.close()
        self._last_server_check = time.monotonic()
        if now != self.version:
            where, copy = ((f"the memory on the Chroma server {redact_url(self.server)}", "`hmrcritic memory export` "
                            "it and `memory import` the file into a folder of its own")
                           if self.server else (f"memory at {self.path}", "a copy of the folder"))
            raise InputError(
                f"{where} changed while this export ran (version {self.version} → {now}): another "
                "process wrote to it (an exploration, `critique --learn`, an import, a reset), so the groups still to "
                f"come would not be scored by the memory this dataset names; the {kept} group(s) written so far are "
                f"kept. Export from a memory nothing writes to ({copy}), into another --out")
        self.seq = seq


def _check_picklable(samples: list[Any], workers: int) -> None:
    """Worker processes get their samples pickled. One that does not pickle (its class defined inside a function,
    an open file in an attribute) failed with a bare ``AttributeError: Can't pickle local object`` once the pool
    started, after dataset.json was written (marked unfinished: validate advised re-running, which failed the same
    way), though ``workers=1`` exports the same samples. Refused here, before anything is written. (Ray pickles
    with cloudpickle, which takes such classes.)"""
    import pickle

    for s in samples:
        try:
            pickle.dumps(s)
        except Exception as exc:
            raise InputError(f"sample {s.sample_id!r} cannot be sent to worker processes (workers={workers}): it does "
                             f"not pickle ({type(exc).__name__}: {exc}); define its class at module level, or "
                             "export with workers=1") from None


def _exclusive(out: Path):
    """Refuse a second export into the same folder while one runs (any process on this machine): both would
    sample and score every group, and the work of one is thrown away."""
    return exclusive_lock(out / ".export.lock", "an export", busy=lambda by: InputError(
        f"{out}: another export into this folder is running — {by}; wait for it, or re-run afterwards to resume"))


@keywords_checked
def export(
    cfg: ExportConfig,
    inputs: list[Any] | None = None,
    progress: bool | Callable[[int, int], None] = False,
) -> ExportSummary:
    """Run (or resume) an export; returns the summary. ``inputs`` overrides ``split``/``data`` (samples)."""
    if not isinstance(cfg, ExportConfig):  # a dict of settings stopped as "'dict' object has no attribute 'out'"
        raise InputError(f"export: cfg must be an ExportConfig(out=..., split=...), got {type(cfg).__name__}")
    t_start = time.time()
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out}: exists and is not a folder")
    if inputs is not None:
        samples, split_name = [strip_labels(s) for s in _checked_inputs(inputs)], cfg.split
    else:
        samples, split_name = load_inputs(cfg)
    if cfg.limit is not None:
        samples = samples[: cfg.limit]
    if not samples:
        raise InputError(f"no inputs to export from {cfg.source}")
    # here, before the folder and its header are written: found while the tasks were listed, it left a dataset.json
    # marked unfinished that validate and finetune told the user to complete by re-running, which fails the same way
    seen: set[str] = set()
    for s in samples:
        if (input_id := str(s.sample_id)) in seen:
            raise InputError(f"duplicate input id {input_id!r} in {cfg.source}: each input needs its own sample_id")
        seen.add(input_id)
    _import(cfg.score_group)  # configuration errors fail the run here, not every group in the workers
    if cfg.workers > 1 and not cfg.ray_address:
        _check_picklable(samples, cfg.workers)
    if cfg.judge == "vlm" and cfg.score_group == DEFAULT_SCORER:
        # the VLM judge's settings too (no key and no endpoint, a base URL with credentials, a bad HMRCRITIC_VLM_*
        # value): the agent makes its judge per group, so each was found once per input, the whole split sampled
        # and failed one by one (a folder of failures, exit 1 at the end). Making it contacts no endpoint.
        from hmrcritic.agent.judges import make_judge

        make_judge("vlm")
    mhash, x_dim = model_hash(cfg.model)
    seq = _MemoryWatch.seq_of(cfg)
    memory, memory_version = frozen_memory(cfg)
    watch = _MemoryWatch(_memory_folder(cfg) if cfg.use_memory else None, memory_version, seq, cfg.chroma_url)
    header = D.DatasetHeader(
        source=cfg.source,
        split=split_name,
        model_hash=mhash,
        judge=cfg.judge,
        judge_model=_judge_model(cfg.judge),
        scorer=cfg.score_group,
        memory_version=memory_version,
        num_generations=cfg.num_generations,
        sample_steps=cfg.sample_steps,
        seed=cfg.seed,
        x_dim=x_dim,
        agent_settings=(resolved := agent_settings(cfg.judge, cfg.score_group, cfg.use_memory)),
    )
    if cfg.ray_address:  # Ray missing or nothing at the address: one line now, before anything is written
        _ray_preflight(cfg.ray_address)
    out.mkdir(parents=True, exist_ok=True)  # only once inputs, model and memory are known to be good
    with _exclusive(out):  # one export per dataset folder at a time
        _remove_temp_files(out)
        # before the header is rewritten as unfinished: a refused resume left a finished dataset marked unfinished,
        # and validate / finetune told the user to re-run the very command that is refused
        written = {r.group_id: r for r in D.read_manifest(out)}
        for s in samples:
            if (rec := written.get(D.group_id_for(cfg.source, str(s.sample_id), cfg.seed))) is not None:
                _check_unchanged(out, rec, s)
        _check_or_write_header(out, header)
        # The agent's checkpointer thread of a group: new whenever anything that changes its critique changes.
        run_key = hashlib.sha256(
            f"{mhash}|{cfg.num_generations}|{cfg.sample_steps}|{cfg.judge}|{memory_version}".encode()
            + (f"|{header.judge_model}".encode() if header.judge_model else b"")
        ).hexdigest()[:8]

        done, repaired = D.repair_manifest(out)
        done_ids = {r.group_id for r in done}
        tasks, order = [], {}
        for i, s in enumerate(samples):
            input_id = str(s.sample_id)
            gid = D.group_id_for(cfg.source, input_id, cfg.seed)
            if gid in order:
                raise InputError(f"duplicate input id {input_id!r} in {cfg.source}")
            order[gid] = i
            if gid not in done_ids:
                tasks.append(
                    {
                        "group_id": gid,
                        "input_id": input_id,
                        "thread_id": f"export-{gid}-{run_key}",
                        "group_seed": D.group_seed_for(cfg.seed, input_id),
                        "sample": s,
                    }
                )
        ctx = WorkerContext(
            cfg.model,
            cfg.num_generations,
            cfg.sample_steps,
            cfg.judge,
            cfg.score_group,
            cfg.use_memory,
            memory,
            cfg.chroma_url,
            cfg.threads_per_worker,
            mhash,
            resolved,  # not the header's: resuming an export from before they were recorded leaves that None
            _judge_model(cfg.judge),
        )
        if cfg.ray_address:
            executor, results = (
                f"ray({redact_url(cfg.ray_address)})×{cfg.workers}",
                _ray(ctx, tasks, cfg.workers, cfg.ray_address),
            )
        elif cfg.workers > 1:
            executor, results = f"processes×{cfg.workers}", _pool(ctx, tasks, cfg.workers)
        else:
            executor, results = "serial", _serial(ctx, tasks)

        new, failures = 0, []
        # of these inputs (a dataset exported earlier with a larger --limit holds groups beyond them): the bar, the
        # callback and done_before count these, or a re-run with a smaller --limit showed "60/4 groups" done
        done_here = len(done_ids & order.keys())
        # nothing left to do (a fully resumed export): no bar frozen at N/N with a blank rate and ETA
        bar = _progress(len(samples), done_here) if progress is True and tasks else None
        # groups in a row that failed because the judge's endpoint is unusable (refused connections, a refused
        # key, no such model, every request refused) or the Chroma memory server stopped answering, none written in
        # between: each failed after its retries, and a down endpoint failed every group of the split in turn (an
        # hour for 256 groups, to write nothing)
        unusable_in_a_row, finished, stopped = 0, set(), None
        try:
            for res in results if tasks else ():
                finished.add(res["group_id"])
                if res["ok"]:
                    watch.check(len(done_ids) + new)
                    _write_group(out, cfg, res, mhash, x_dim, split_name)
                    new += 1
                    unusable_in_a_row = 0
                else:
                    failures.append(res)
                    append_jsonl(out / D.FAILURES, _failure_line(res))
                    unusable_in_a_row += 1 if res.get("endpoint_unusable") else 0
                if bar is not None:
                    bar[0].update(bar[1], advance=1, failed=_failed_text(len(failures)))
                elif callable(progress):
                    progress(done_here + new + len(failures), len(samples))
                # (only while some group is still to come: stopping after the last one left a dataset whose every
                # input was tried marked unfinished, without its pairs.jsonl or input order, and the error told the
                # user to re-run to continue what was complete; it ends as any export with failures does)
                if unusable_in_a_row >= UNUSABLE_IN_A_ROW and len(finished) < len(tasks):
                    stopped = res
                    break
        finally:
            if bar is not None:
                bar[0].stop()
            # an error or Ctrl-C here stops the executor now (its workers, a Ray started for this export), not
            # whenever the suspended generator is collected
            close = getattr(results, "close", None)
            if close is not None:
                close()
        if stopped is not None:
            raise _stop_for_endpoint(out, tasks, finished, stopped, order, len(done_ids) + new)

        records = D.read_manifest(out)
        # input order; the groups of inputs beyond these (an earlier export with a larger --limit, perhaps
        # interrupted, its lines then in the order its workers finished) by input id after them: kept in file
        # order, the manifest and pairs.jsonl depended on which worker of that earlier run finished first
        records.sort(key=lambda r: (order.get(r.group_id, len(order)), r.input_id, r.group_id))
        D.rewrite_manifest(out, records)
        n_pairs = D.write_pairs(out, records)
        present = {r.group_id for r in records}
        # one record per group, its latest failure (a group that failed on several runs is one open failure),
        # in input order, so the file does not depend on which worker finished first
        def input_order(f: dict) -> int:
            return order.get(f["group_id"], len(order))

        open_failures = sorted({f["group_id"]: f for f in _failure_records(out)
                                if f["group_id"] not in present}.values(), key=input_order)
        failures.sort(key=input_order)
        _rewrite_failures(out, open_failures)
        elapsed = time.time() - t_start
        reasons: dict[str, int] = {}
        for f in failures:
            reasons[_reason_key(f["error"])] = reasons.get(_reason_key(f["error"]), 0) + 1
        overall = [s.overall for r in records for s in r.scores]
        hist, edges = np.histogram(overall, bins=10, range=(0.0, 10.0))
        summary = ExportSummary(
            out=str(out),
            executor=executor,
            inputs=len(samples),
            done_before=done_here,
            new_groups=new,
            groups=len(records),
            failures=len(failures),
            failure_reasons=reasons,
            first_failure=f"{failures[0]['group_id']}: {failures[0]['error']}" if failures else "",
            repaired_lines=repaired,
            zero_variance_share=sum(r.zero_variance for r in records) / max(len(records), 1),
            score_histogram={f"{edges[i]:.0f}-{edges[i + 1]:.0f}": int(h) for i, h in enumerate(hist)},
            pairs=n_pairs,
            elapsed_s=elapsed,
            groups_per_s=new / max(elapsed, 1e-9),
        )
        header.counts = {
            "finished": True,
            "inputs": len(samples),
            "groups": len(records),
            "failures_open": len(open_failures),
            "pairs": n_pairs,
            "zero_variance_share": summary.zero_variance_share,
        }
        D.write_header(out, header)
        return summary


def _remove_temp_files(out: Path) -> None:
    """Remove the temporary files of atomic writes an export killed mid-write left (``.<name>.<random>.tmp``
    beside the dataset's files and array files): nothing else ever would, and each is up to a whole group's
    arrays. Only under the folder's export lock, where no other export is writing one right now."""
    names = (D.HEADER, D.MANIFEST, D.PAIRS, D.FAILURES)
    for tmp in [*out.glob(".*.tmp"), *(out / D.GROUPS).glob(".*.npz.*.tmp")]:
        if tmp.parent == out and not any(tmp.name.startswith(f".{n}.") for n in names):
            continue  # not ours
        with contextlib.suppress(OSError):
            tmp.unlink()


def agent_settings(judge: str, score_group: str, use_memory: bool) -> dict:
    """The agent settings (``AgentConfig`` fields but the memory's place) every group of an export is scored with:
    its flags (judge, memory on/off), never learning, and the ``HMRCRITIC_*`` agent variables of the process that
    starts the export (reflections, rules_k, prototypes_k, ucb_c, the use_* switches, proto weight and level).

    Recorded in the header, so a resume under other variables is refused: ``HMRCRITIC_MAX_REFLECTIONS=0`` on the
    first run and unset on the resume gave one dataset of groups scored two ways, and ``export validate`` said OK.

    The builtin judge through the default scorer renders nothing (as exploration does): it never reads the
    overlay and side grids, and :func:`~hmrcritic.agent.api.forget_group` deletes them with the run folder
    once the scores are in the dataset. With ``HMRCRITIC_RENDER`` unset (on) every group drew two grids for
    nothing: 5 groups of 16 took 5.5-5.7 s serially, 3.1 s without (``benchmarks/bench_export.py``), with the
    same scores (the evidence does not depend on rendering)."""
    from hmrcritic.agent.state import AgentConfig

    fixed: dict[str, Any] = {"judge": judge, "learn": False, "use_memory": use_memory}
    if judge == "builtin" and score_group == DEFAULT_SCORER:
        fixed["render"] = False  # a scorer of the user's own may read the renders: it keeps the setting
    try:
        resolved = AgentConfig(**fixed, memory_dir=None, chroma_url=None)
    except ValidationError as exc:  # a value of a variable out of range: one line naming it, before any sampling
        err = exc.errors()[0]
        name = str(err["loc"][0]) if err["loc"] else "?"
        raise InputError(f"HMRCRITIC_{name.upper()}={err.get('input')!r}: {err['msg'].lower()}") from None
    # learning settings are not recorded: an export never learns, so they change no score
    return resolved.model_dump(exclude={"memory_dir", "chroma_url", "settle_with_labels", "success_tau"})


def _judge_model(judge: str) -> str | None:
    """Which VLM scores the groups (model @ endpoint, no credentials): resuming an export with another
    HMRCRITIC_VLM_MODEL would mix two critics' scores in one dataset under one judge name. The string is
    :func:`hmrcritic.agent.evaluate_critic.judge_identity`'s (None for the builtin judge): an existing
    export's header records it, so it must stay the same to resume."""
    from hmrcritic.agent.evaluate_critic import judge_identity

    return judge_identity(judge) or None


_FROM_FLAGS = {"judge", "learn", "use_memory"}  # agent settings an export takes from its flags, not the variables


def _setting_change(key: str, there: Any, now: Any) -> str:
    """"key: X there, Y now" for a header field that differs; for the agent settings only the ones that differ,
    with the variable that sets each (the two whole dicts made one unreadable line)."""
    if key == "agent_settings" and isinstance(there, dict) and isinstance(now, dict):
        return "; ".join(f"agent setting {k}{'' if k in _FROM_FLAGS else f' (HMRCRITIC_{k.upper()})'}: "
                         f"{there.get(k)!r} there, {now.get(k)!r} now"
                         for k in sorted(there.keys() | now.keys()) if there.get(k) != now.get(k))
    return f"{key}: {there!r} there, {now!r} now"


def _check_or_write_header(out: Path, header: D.DatasetHeader) -> None:
    path = out / D.HEADER
    if path.exists():
        old = D.read_header(out)
        keys = (
            "source",
            "model_hash",
            "judge",
            "judge_model",
            "scorer",
            "memory_version",
            "num_generations",
            "sample_steps",
            "seed",
            "x_dim",
            "agent_settings",
        )
        # an export made before the agent's settings were recorded (None) resumes under any: they are unknown
        diff = [k for k in keys if getattr(old, k) != getattr(header, k)
                and not (k == "agent_settings" and old.agent_settings is None)]
        unknown_vlm = old.judge == header.judge == "vlm" and old.judge_model is None and header.judge_model is not None
        if (diff or unknown_vlm) and not D.read_manifest(out):
            # no group was written under the old settings (stopped with Ctrl-C at once, every group failed): nothing
            # to mix with, so this run's settings take the folder over, and the old run's failures (of its settings)
            # go. Refusing sent a user who fixed a wrong -n or VLM model name to another --out for an empty folder.
            with contextlib.suppress(FileNotFoundError):
                (out / D.FAILURES).unlink()
            old, diff, unknown_vlm = header.model_copy(), [], False
        if unknown_vlm:
            raise InputError(f"{out} holds a vlm export made before the judge's model was recorded: which model "
                             f"scored it is unknown, so resuming it with {header.judge_model} could mix two "
                             "critics; use another --out")
        if diff:
            # both values: the folder's alone ("num_generations=20") read as the setting this run was given
            values = "; ".join(_setting_change(k, getattr(old, k), getattr(header, k)) for k in diff)
            records = D.read_manifest(out)
            if not any(D.record_files_ok(out, r) for r in records):
                # groups/ deleted (or every array damaged): the bare "different settings" read as a folder held by a
                # healthy export and hid what is wrong. Its records stay: they are the old settings' work
                raise InputError(
                    f"{out} holds {len(records)} groups of an export with different {', '.join(diff)} ({values}), "
                    f"and none of them has its arrays in {out / D.GROUPS} (deleted?): restore them, or use another "
                    "--out (a re-run with the folder's settings samples its groups again)"
                )
            raise InputError(f"{out} holds an export with different {', '.join(diff)} ({values}); use another --out")
        header.counts = old.counts
        if old.agent_settings is None and D.read_manifest(out):
            # an export from before the settings were recorded: its groups' settings stay unknown, or the header
            # would claim this run's for all of them (and refuse a later resume under the first run's)
            header.agent_settings = None
    else:  # records without a header (it was deleted): only this export's own may be resumed, never mixed in
        for rec in D.read_manifest(out):
            diff = D.header_mismatch(header, rec)
            if diff:
                raise InputError(f"{out} has no {D.HEADER} but its {D.MANIFEST} holds groups of another export "
                                 f"({rec.group_id}: {', '.join(diff)}); use another --out")
    # marked unfinished until this run's end rewrites the counts: validate can then tell a partial dataset
    header.counts = {**header.counts, "finished": False}
    D.write_header(out, header)


def _write_group(out: Path, cfg: ExportConfig, res: dict, mhash: str, x_dim: int, split: str | None) -> None:
    """Arrays first (atomic), then the checksummed manifest line: the only write order a reader trusts."""
    cref, href = D.write_group_arrays(out, res["group_id"], res["cond"], res["hyps"])
    record = D.build_record(
        group_id=res["group_id"],
        input_id=res["input_id"],
        split=split,
        source=cfg.source,
        condition=cref,
        hypotheses=href,
        num_hypotheses=int(res["hyps"]["x0"].shape[0]),
        x_dim=x_dim,
        scores=[HypothesisScore.model_validate(s) for s in res["scores"]],
        judge=cfg.judge,
        memory_version=res["memory_version"],
        model_hash=mhash,
        seed=cfg.seed,
        group_seed=res["group_seed"],
    )
    line = record.to_line_dict()
    append_jsonl(out / D.MANIFEST, {k: v for k, v in line.items() if k != "checksum"})


def _failure_line(res: dict) -> dict:
    """A failed group's line in failures.jsonl: its ids, stage and reason, and ``endpoint_unusable`` (the endpoint
    and what is wrong with it) when the judge's endpoint, or the memory server, itself was why."""
    keys = ("group_id", "input_id", "stage", "error", "endpoint_unusable")
    return {k: res[k] for k in keys if k in res}


def _stop_for_endpoint(out: Path, tasks: list[dict], finished: set, last: dict, order: dict, kept: int) -> Exception:
    """The error that stops an export whose judge endpoint is unusable (see the loop in :func:`export`), once the
    groups not attempted are in failures.jsonl (stage ``not_attempted``, with ``endpoint_unusable``), so that they
    read as failed, not as missing or scored, and a re-run retries them. The groups written stay; the header says
    unfinished; running the same command again once the endpoint works continues from here.

    A Chroma memory server that stopped answering stops it the same way (:func:`unusable_endpoint` names it "the
    memory server at …"), as an AssetError that says so: it read "the VLM endpoint cannot be used", and "fix the
    endpoint", for an export whose judge may be the builtin one."""
    unusable = last["endpoint_unusable"]
    memory = unusable_subject(unusable) == MEMORY_SERVER
    why = (f"{MEMORY_SERVER} cannot be used: {unusable.removeprefix(MEMORY_SERVER + ' at ')}" if memory
           else f"the VLM endpoint cannot be used: {unusable}")
    skipped = [{"group_id": t["group_id"], "input_id": t["input_id"], "stage": "not_attempted",
                "error": f"not attempted: the export stopped because {why}",
                "endpoint_unusable": last["endpoint_unusable"]} for t in tasks if t["group_id"] not in finished]
    for rec in skipped:  # checksummed as appended lines are
        rec["checksum"] = record_checksum(rec)
    present = {r.group_id for r in D.read_manifest(out)}
    latest = {f["group_id"]: f for f in [*_failure_records(out), *skipped] if f["group_id"] not in present}
    _rewrite_failures(out, sorted(latest.values(), key=lambda f: order.get(f["group_id"], len(order))))
    detail = _last_failure(last["error"], "" if memory else unusable.partition(" (")[0])
    kept_text = f"The {kept} group(s) written to {out} are kept" if kept else f"No group was written to {out} yet"
    fix = ("start the memory server again (or fix its address) and run" if memory
           else "once the endpoint works, run")  # what to fix is the last group's line's own advice
    return (AssetError if memory else JudgeError)(
        f"export stopped: {UNUSABLE_IN_A_ROW} groups in a row failed because {why}. Last, group {last['group_id']}: "
        f"{detail.rstrip('.')}. {kept_text}; the {len(skipped)} not attempted are listed "
        f"in {out / D.FAILURES}: {fix} the same command again to continue")


# the head of a VLM judge's line for one group, with the type the export gave it ("EndpointUnusableError: VLM judge
# failed for group export-wild-000002-…-540ab33e after 1 attempt: "): the stop's line names the group already
_JUDGE_HEAD = re.compile(r"^(?:\w+: )?VLM judge failed for group \S+ after \d+ attempts?: ")


def _last_failure(error: str, endpoint: str) -> str:
    """The last group's failure as the stop's line quotes it: without the judge's head (the group said again, by its
    judge id) and without the endpoint's address where it names it whole (" to …", " at …": the line has just named
    it). The stop's line said the address three times and the advice twice, in about 600 characters."""
    error = _JUDGE_HEAD.sub("", error, count=1)
    if endpoint:  # a path under it ("at …/v1/chat/completions", where a 404 was asked) stays: it says more
        error = re.sub(rf" (?:to|at) {re.escape(endpoint)}(?=[\s(:;,)]|$)", "", error)
    return error


def _reason_key(error: str) -> str:
    """A failure's key in the summary's counts: its error type, or its message up to the first ":" or "(" (cut at
    the ":" alone, "a worker process died … (killed, out of memory, or exited — or it could not load its task" was
    a key, cut inside its parenthesis)."""
    return error.split(":")[0].split("(")[0].strip() or error.split(":")[0]


def _failure_records(out: Path) -> list[dict]:
    """failures.jsonl's records that name a group: a line edited by hand into another JSON object (``{}``) is
    dropped, as a torn line is, instead of stopping the export's summary with a KeyError."""
    return [f for f in read_jsonl(out / D.FAILURES) if isinstance(f.get("group_id"), str)]


def _rewrite_failures(out: Path, failures: Iterable[dict]) -> None:
    path = out / D.FAILURES
    failures = list(failures)
    if failures or path.exists():
        atomic_write_jsonl(path, failures)


def _progress(total: int, done: int):
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        ProgressColumn,
        TextColumn,
        TimeRemainingColumn,
    )
    from rich.text import Text

    class RateColumn(ProgressColumn):
        def render(self, task) -> Text:
            return Text(f"{task.speed:.2f} groups/s" if task.speed else "– groups/s")

    prog = Progress(
        TextColumn("export"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[failed]}"),
        RateColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    )
    task = prog.add_task("export", total=total, completed=done, failed=_failed_text(0))
    prog.start()
    return prog, task


def _failed_text(n: int) -> str:
    """The bar's count of this run's failed groups. The bar counts every group tried, so an export whose judge
    failed group after group (each after its retries) marched on like a healthy one until the summary at the end."""
    return f"({n} failed)" if n else ""


def _rate_line(s: ExportSummary) -> str:
    """The throughput line; a run that wrote no group has no rate to show ("0.00 groups/s" read as a stalled
    export when every group was already written)."""
    if s.new_groups:
        return f"  {s.groups_per_s:.2f} groups/s over {s.elapsed_s:.1f} s"
    if s.failures:
        return f"  no new group written ({s.failures} failed; re-run to retry them) in {s.elapsed_s:.1f} s"
    return (f"  nothing left to do: all {s.inputs} input(s) already have their group; the dataset holds {s.groups} "
            f"group(s), {s.pairs} pairs (checked in {s.elapsed_s:.1f} s)")


def format_summary(s: ExportSummary) -> str:
    """Plain-text summary for the CLI."""
    lines = [
        f"export → {s.out} ({s.executor})",
        f"  groups: {s.done_before + s.new_groups}/{s.inputs} (new {s.new_groups}, already done {s.done_before}, "
        f"repaired manifest lines {s.repaired_lines})"
        + (f"\n  the dataset holds {s.groups} groups (also of inputs beyond these {s.inputs})"
           if s.groups > s.done_before + s.new_groups else ""),
        f"  failures: {s.failures}" + (f" {s.failure_reasons}" if s.failure_reasons else "")
        + (f"\n    first: {s.first_failure}\n    all: {Path(s.out) / D.FAILURES}" if s.first_failure else ""),
        f"  zero-variance groups: {100 * s.zero_variance_share:.1f}%   pairs: {s.pairs}",
        _rate_line(s),
        "  overall score histogram:",
    ]
    peak = max(s.score_histogram.values() or [1]) or 1
    for k, v in s.score_histogram.items():
        lines.append(f"    {k:>6} {'#' * round(30 * v / peak):<30} {v}")
    return "\n".join(lines)


__all__ = [
    "ExportConfig",
    "ExportSummary",
    "export",
    "format_summary",
    "strip_labels",
    "load_inputs",
    "GroupWorker",
    "WorkerContext",
]
