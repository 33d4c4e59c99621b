"""How good is the critic, and does each part of the agent matter? (``hmrcritic evaluate-critic``)

The paper's critic table and ablations (PAPER.md §5) on labelled groups of a held-out split: per variant the
mean within-group Spearman ρ and Kendall τ-b between ``overall`` and the negated true error (PA-MPJPE, and
MPJPE and PVE), and the true error of the critic's top-1 pick — beside a random pick (the group mean) and
the oracle best-of-N. Variants:

* ``full`` — the explored memory (reflective knowledge construction on the ``warmup_split``, PAPER.md §3);
* ``no_reflection`` — the paper's "without self-reflection": the starter memory, no exploration;
* ``no_rules`` / ``no_prototypes`` — the explored memory with one half switched off;
* ``no_calibration`` — the explored memory without its score calibration (:mod:`hmrcritic.agent.calibration`;
  our extension: a monotone map, so it moves only the point-wise figures);
* ``no_revise`` — the explored memory with hmrcritic's per-group revise loop off (our extension);
* ``evidence_only`` — no memory and no revise loop: the builtin judge on the evidence alone.

Memory is built honestly: :func:`~hmrcritic.agent.explore.explore` runs on groups of the *train* split into a
memory folder of this evaluation's own (or ``memory_dir``: an explored memory you bring), and the scored groups
are checked never to be ones that memory explored (:func:`~hmrcritic.agent.explore.assert_not_explored`), nor
their scenes under another id (:func:`~hmrcritic.agent.learning_curve.assert_unseen_scenes`: splits generated
with one ``--seed``). Scoring reads a frozen copy, so every variant reads the same memory version. Each ablation
row carries ``full_minus_spearman`` ± ``full_minus_sem``: the paired difference to ``full`` on the same groups
(group difficulty cancels, so it is what says whether a part matters).

Exploration is resumable and keyed by its settings: re-running the same evaluation reuses the explored
memory and only re-scores.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from hmrcritic import config as hconfig
from hmrcritic.agent.judges import judge_name
from hmrcritic.agent.learning_curve import (  # one list of variants for both tools
    VARIANTS,
    fmt_value,
    pooled_pearson,
    undefined_rho_notes,
)
from hmrcritic.agent.runs import in_use
from hmrcritic.errors import InputError
from hmrcritic.hmr.metrics import tied_top1_error
from hmrcritic.io import atomic_write_json, sources_digest

# Rules recalled per group: enough to hold every starter rule that can fire on a group (18 starter rules, at
# most ~14 applicable at once) plus mined ones, so the measurement is of the memory's knowledge rather than of
# which few a tag overlap happened to rank first.
RULES_K = 16


def code_digest() -> str:
    """Hash of the agent's scoring and exploration code: an explored memory is never reused after it changed."""
    here = Path(__file__).parent
    # learning_curve.py: its score_groups makes the scores the exploration's score calibration is fitted on (the
    # calibration is stored in the memory); schema.py: the critique's fields every judge's scores pass through
    agent = ("judges.py", "nodes.py", "evidence.py", "groups.py", "prior.py", "graph.py", "explore.py", "mining.py",
             "calibration.py", "api.py", "state.py", "learning_curve.py", "schema.py")
    memory = ("starter_rules.py", "maintenance.py", "rules.py", "schema.py", "store.py", "prototypes.py",
              "embeddings.py")
    # the hmr measures the evidence reads (joint limits, penetration, rotations, translation, metrics): a fix
    # there moved an explored memory (evaluate-critic seed 2) while the key stayed the same
    hmr = ("anatomy.py", "rotations.py", "diffusion.py", "metrics.py", "body.py")
    return sources_digest([here / n for n in agent] + [here.parent / "memory" / n for n in memory]
                          + [here.parent / "hmr" / n for n in hmr])[:12]


def inputs_digest(source: str | None = None) -> dict:
    """What else decides the explored memory besides the code: the agent settings' defaults (``HMRCRITIC_*``
    environment overrides included), the synthetic data generator's version and, for model-sampled groups
    (``source="model"``), the shipped checkpoint's bytes."""
    from hmrcritic.agent.state import AgentConfig
    from hmrcritic.hmr.data import GENERATOR_VERSION

    out = {"defaults": AgentConfig().model_dump(exclude={"memory_dir", "chroma_url", "judge"}),
           "generator": GENERATOR_VERSION}
    if source == "model":
        from hmrcritic.hmr.diffusion import DEFAULT_CHECKPOINT
        from hmrcritic.io import sha256_file

        out["model"] = sha256_file(DEFAULT_CHECKPOINT)[:12]
    return out


def split_digest(split: str) -> str:
    """The exploration split's content as its manifest states it (shard hashes, body model, generator): the
    group ids are ``<split>-<index>`` whatever the scenes, so a split regenerated with another ``--seed`` or
    ``--n``, or for another body model (``HMRCRITIC_BODY_MODEL``), would otherwise reuse a memory explored on
    other scenes. Generates the split on first use, as exploring it would."""
    from hmrcritic.hmr.data import load_split

    m = load_split(split).manifest
    keep = {k: m.get(k) for k in ("n", "seed", "preset", "generator_version", "body_model", "shards", "labels_eval")}
    return hashlib.sha256(json.dumps(keep, sort_keys=True, default=str).encode()).hexdigest()[:12]


def judge_identity(judge: Any) -> str:
    """Which model answers behind the judge's name: for ``vlm`` its model and endpoint (no credentials), ``""``
    for the builtin judge. Part of the exploration key: the rules a VLM proposes are that model's, so a memory
    explored with another ``HMRCRITIC_VLM_MODEL`` (or endpoint) is another memory, as for a critique's own
    cache (:func:`hmrcritic.agent.api._judge_identity`, which makes this string too).

    The one source of this string for keys and records: the export writes it into its dataset header
    (``judge_model``) and its thread keys, the pipeline keys its exploration with it (both through
    :func:`hmrcritic.alignment.export._judge_model`), so it must not change. A name is read as
    :func:`~hmrcritic.agent.judges.make_judge` reads it (``VLM`` made the VLM judge but had no identity: two
    models shared one key). Reads no agent settings: an export has none to check."""
    from hmrcritic.agent.api import _judge_identity, _judge_settings

    return _judge_identity(_judge_settings(judge_name(judge), judge))


def _key(**settings) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:12]


def evaluate_critic(
    split: str = "test",
    num_groups: int = 100,
    num_generations: int = 16,
    warmup_split: str = "train",
    warmup_groups: int = 200,
    seed: int = 0,
    source: str = "auto",
    judge: Any = "builtin",
    max_reflections: int = 2,
    variants: list[str] | tuple[str, ...] | None = None,
    workdir: str | Path | None = None,
    progress=None,
    rules_k: int = RULES_K,
    batch_size: int = 8,
    tau: float = 0.5,
    memory_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Explore ``warmup_groups`` groups of ``warmup_split`` (batches of ``batch_size``) into a fresh memory —
    or use the explored memory at ``memory_dir`` — then score ``num_groups`` held-out groups of ``split`` with
    each variant.

    Returns the ``--json`` payload: ``rows`` (variant, spearman, kendall, top1_pa_mpjpe_mm, the same against
    MPJPE and PVE, spearman_sem — the SE over groups, NaN (``null`` in ``result.json`` and ``--json``) with fewer
    than 2, as are the paired SEs — full_minus_spearman/sem, absent where no group was scored by both),
    ``random_pa_mpjpe_mm``, ``oracle_pa_mpjpe_mm``, ``num_groups`` and provenance (group source, memory
    version, work folder; ``explore_failed_groups``: explored groups whose critique failed, so the memory did not
    learn from them; ``explore_stopped``: why the exploration ended short of ``warmup_groups``, where it did).
    ``warmup_groups=0`` scores the starter memory. Written to ``result_file`` (``result-<key>.json`` in the work
    folder, keyed by the exploration and the split, ``num_groups`` and variants scored) and to ``result.json``
    there (the folder's latest: evaluations of one exploration share its folder and its explored memory).
    ``progress(stage, i, n)`` is called while exploring and scoring.
    """
    from hmrcritic.agent.explore import explore
    from hmrcritic.agent.groups import make_groups
    from hmrcritic.agent.learning_curve import explore_eval, starter_memory
    from hmrcritic.memory.store import MemoryStore

    if split == warmup_split and memory_dir is None:
        raise InputError(f"evaluate-critic: the evaluated split ({split}) must differ from the exploration split")
    variants = list(variants or VARIANTS)
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise InputError(f"unknown variant(s) {unknown}; choose from {list(VARIANTS)}")
    if num_generations < 2:
        raise InputError(f"evaluate-critic: a group needs ≥ 2 hypotheses to rank, got --num-generations "
                         f"{num_generations}")
    if num_groups < 1:  # refused now: explore_eval said "no held-out groups" only after the whole exploration
        raise InputError(f"evaluate-critic: --num-groups must be ≥ 1, got {num_groups}")
    if warmup_groups < 0 or batch_size < 1:
        raise InputError(f"evaluate-critic: need --warmup-groups ≥ 0 and --batch-size ≥ 1 "
                         f"(got {warmup_groups}, {batch_size})")
    if memory_dir is not None:
        memory_dir = hconfig.path_arg(memory_dir, "evaluate-critic: memory_dir")
    if workdir is not None:
        workdir = hconfig.path_arg(workdir, "evaluate-critic: workdir")
    if memory_dir is not None and not memory_dir.is_dir():
        # said before any work: found after sampling every held-out group (seconds to minutes) and making an
        # empty run folder under runs/evaluate, a mistyped path cost all that
        what = "is a file, not a memory folder" if memory_dir.exists() else "does not exist"
        raise InputError(f"evaluate-critic: --memory-dir {memory_dir} {what}; give the folder `hmrcritic explore "
                         "--memory-dir DIR` wrote, or leave it out to explore a new memory")
    # refused before the held-out groups are sampled (minutes with the model): an unknown --judge or a VLM judge
    # without an endpoint failed every critique and ended "every critique failed" without the reason, and a bad
    # --max-reflections was said only when the exploration or the scoring began
    from hmrcritic.agent.judges import make_judge
    from hmrcritic.agent.state import AgentConfig

    if progress is not None and not callable(progress):  # make_groups gets it inside a lambda: its own check
        # passed it, and progress=True failed as "'bool' object is not callable" once the groups were made
        raise InputError(f"evaluate-critic: progress must be a callable (stage, i, n) or None, got "
                         f"{type(progress).__name__}")
    if not -1 <= tau <= 1:
        raise InputError(f"evaluate-critic: tau {tau} is not a Spearman value in [-1, 1]")
    make_judge(judge)
    AgentConfig.model_validate({"max_reflections": max_reflections, "rules_k": rules_k})
    name = judge_name(judge)
    from hmrcritic.agent.groups import reads_images, verify_split

    # the held-out split's shards against their manifest, as train-base and export check theirs (the exploration
    # checks the warm-up split); its images only matter to a judge that reads them (score_groups renders for it)
    verify_split(split, images=reads_images(judge))
    # the sampling is said as it goes ("groups: 24/120"): with the model, a minute or more on 2 shared cores in
    # which evaluate-critic printed nothing, and "groups" was said only once all were drawn
    eval_groups, used = make_groups(split, num_groups, num_generations, seed=seed, source=source,
                                    progress=None if progress is None else (lambda i, n: progress("groups", i, n)))
    # keyed by the source actually used ("auto" resolves to the model or, without one, perturbed ground
    # truth): a memory explored from one source is never reused for the other
    ident = judge_identity(judge)  # only a VLM has one ("" for the builtin judge: not a key entry)
    key = _key(ws=warmup_split, wg=warmup_groups, g=num_generations, seed=seed, source=used, judge=name,
               r=max_reflections, k=rules_k, b=batch_size, tau=tau, code=code_digest(), inputs=inputs_digest(used),
               data=split_digest(warmup_split) if memory_dir is None else None,
               **({"judge_model": ident} if ident else {}),
               # the memory brought: without it, evaluations of two memories shared one folder, each overwriting
               # the other's result.json (its payload's "workdir" then pointed at another memory's figures)
               **({"memory": str(memory_dir.resolve())} if memory_dir is not None else {}))
    workdir = Path(workdir) if workdir is not None else hconfig.runs_dir() / "evaluate" / key
    # what this evaluation scores beside the exploration the folder is keyed by: the folder (and its explored
    # memory, the cache) is shared by every evaluation of one exploration, so runs of another --num-groups,
    # --variants or evaluated split wrote one result.json over the other — each keeps its own file as well
    # (result.json stays the latest); the folder key is left alone, so an explored memory is still reused
    eval_key = _key(explore=key, split=split, n=num_groups, variants=variants)
    # held in use (made when missing) until its result is written: `runs prune` removed an evaluation's cache,
    # its explored memory with it, under the running command
    with in_use(workdir):
        _claim_workdir(workdir, key)  # (the groups' end was said by make_groups: a second one repeated it)

        agent_config = {"max_reflections": max_reflections, "rules_k": rules_k}
        stopped = ""  # why the exploration ended before warmup_groups, if it did
        if memory_dir is not None:
            memory_path = memory_dir
            explored_groups = None
        else:
            memory_path = workdir / "memory"
            # a new folder is seeded with the starter rules; on disk, its own, even where HMRCRITIC_CHROMA_URL names
            # a shared server (which this exploration would otherwise have filled with its rules and prototypes)
            mem = MemoryStore(path=memory_path, chroma_url="")
            rounds = math.ceil(warmup_groups / batch_size) if warmup_groups else 0
            # counted over the whole exploration: a group event's index and total are within its batch, so 200
            # groups in batches of 8 said "explore train: 8/8" 25 times (and "1/8" ... "8/8" to a per-call
            # progress) and never how far the exploration was; a resumed one starts from what it holds
            from hmrcritic.agent.explore import explored_record

            start = len(explored_record(memory_path)["splits"].get(warmup_split, {}).get("group_ids", []))
            seen = [min(start, warmup_groups)]

            def on_event(event: str, payload: dict) -> None:
                if progress is None:
                    return
                if event == "group":
                    seen[0] += 1
                    progress(f"explore {warmup_split}", min(seen[0], warmup_groups), warmup_groups)
                elif event == "calibrate":  # the score calibration's groups (32 critiques) after the last batch
                    progress(f"calibrate on {warmup_split}", payload["index"], payload["total"])

            if warmup_groups:  # 0 = the starter memory as seeded (explore refuses a limit of 0 groups)
                with contextlib.ExitStack() as stack:
                    # closed however the exploration ends: ``del mem`` left its Chroma files and threads open
                    # while an exception's traceback (a failed or interrupted exploration) still referenced it
                    stack.callback(mem.close)
                    # taken here (explore re-enters it) to say what a second evaluation with the same settings
                    # should do: the store's "use another --memory-dir" means "score this memory" to this command
                    try:
                        stack.enter_context(mem.exclusive("an evaluate-critic exploration"))
                    except InputError as exc:
                        if "busy with" not in str(exc):
                            raise
                        raise InputError(f"evaluate-critic: another evaluation with these settings is exploring "
                                         f"its memory now ({memory_path}); run this one when it has finished: it "
                                         "then reuses that explored memory and only scores") from None
                    # ucb_c: the one the variants score with (HMRCRITIC_UCB_C, in the key): explore's own 1.0
                    # explored at C = 1 a memory then scored at the variable's C
                    summary = explore(mem, split=warmup_split, rounds=rounds, batch_size=batch_size, tau=tau,
                                      judge=judge, rules_k=rules_k, ucb_c=AgentConfig().ucb_c,
                                      num_generations=num_generations,
                                      limit=warmup_groups, seed=seed + 1, source=used,
                                      max_reflections=max_reflections, progress=on_event)
                    stopped = summary.stopped
            mem.close()  # (again, for warmup_groups=0: closing twice is harmless)
            # what the memory holds (a resumed exploration explores nothing new in this call)
            explored_groups = len(explored_record(memory_path)["splits"].get(warmup_split, {}).get("group_ids", []))
        # the explored groups whose critique failed (a VLM endpoint error; not retried): recorded as explored, so
        # "memory explored on 200 groups" hid a memory that learnt from fewer
        explore_failed = explore_failed_groups(memory_path, None if memory_dir is not None else warmup_split)
        # said only where the memory holds fewer groups than asked (a resumed call stops at the limit it reached)
        stopped = stopped if explored_groups is not None and explored_groups < warmup_groups else ""
        starter = starter_memory(workdir / "starter") if "no_reflection" in variants else None

        def on_group(v: str, i: int, n: int) -> None:  # per group: a variant's 100 critiques take minutes
            if progress is not None:
                progress(f"score {v}", i, n)

        try:
            res = explore_eval(memory_path, eval_groups, split=split, variants=variants, judge=judge,
                               agent_config=agent_config, starter=starter, group_progress=on_group, keep_scores=True)
        finally:  # its Chroma files open until the collector came by (explore_eval closes only what it opens)
            if starter is not None:
                starter.close()
        per_group = {r["variant"]: np.asarray(r.pop("per_group_spearman"), np.float64) for r in res["rows"]}
        scores = {r["variant"]: r.pop("per_group_scores") for r in res["rows"]}
        errors = res.pop("per_group_errors")
        for r in res["rows"]:
            rho = per_group[r["variant"]]
            rho = rho[np.isfinite(rho)]  # groups this variant scored
            r["spearman_sem"] = _sem(rho)
        _paired_deltas(res["rows"], per_group)
        _paired_pearson_top1_deltas(res["rows"], scores, errors, seed=seed)
        # num_generations, group_source, judge and judge_model come with explore_eval's result (read from the groups
        # and the judge that scored them: the same values this payload wrote again before session 35's re-read)
        payload = {
            **res,
            "split": split,
            "warmup_split": warmup_split if memory_dir is None else "(given memory)",
            "warmup_groups": warmup_groups if memory_dir is None else None,
            "explored_groups": explored_groups,
            "explore_failed_groups": explore_failed,
            **({"explore_stopped": stopped} if stopped else {}),
            "memory_dir": str(memory_path),
            "workdir": str(workdir),
            "result_file": str(workdir / f"result-{eval_key}.json"),
        }
        from hmrcritic.io import finite_json

        saved = finite_json(payload)  # strict JSON, as --json prints it
        atomic_write_json(Path(payload["result_file"]), saved)  # this evaluation's own
        atomic_write_json(workdir / "result.json", saved)  # the latest evaluation of this folder
        return payload


def explore_failed_groups(memory_path: Path, split: str | None = None) -> int:
    """How many explored groups (of ``split``; None: of every split) the exploration log records as failed: their
    critique raised (a VLM endpoint error), so the memory did not learn from them, though they count as explored.
    Groups skipped as unrankable, or scored with only their prototypes lost, are not failures."""
    from hmrcritic.agent.explore import read_log

    failed: set[str] = set()
    for rec in read_log(memory_path):
        report = rec.get("report")
        failures = report.get("failed") if isinstance(report, dict) else None  # a record of another shape: none
        for f in failures if isinstance(failures, list) else []:
            if not isinstance(f, dict) or (split is not None and not str(f.get("group_id", "")).startswith(
                    f"{split}-")):
                continue
            # records from before kinds: the message says what it was
            if (f["kind"] == "error" if "kind" in f
                    else not str(f.get("error", "")).startswith(("skipped:", "prototypes skipped:"))):
                failed.add(str(f.get("group_id")))
    return len(failed)


KEY_FILE = "key.json"  # the key of the settings the work folder's memory was explored under


def _claim_workdir(workdir: Path, key: str) -> None:
    """Record ``key`` in ``workdir`` (:data:`KEY_FILE`), or refuse a folder recorded under another key.

    The default folder is named by the key; a ``workdir`` given (the API's, the benchmarks') was not checked, so
    an evaluation with another seed, warm-up, judge or code version went on exploring the memory a previous one
    had left there — explore counts a run of other settings as new rounds — and scored a memory explored under
    two settings as if under its own. A folder without the record (made before it was kept) is taken as it is."""
    f = workdir / KEY_FILE
    try:
        held = json.loads(f.read_text(encoding="utf-8")).get("key")
    except FileNotFoundError:
        held = None
    except (OSError, ValueError, AttributeError) as exc:
        raise InputError(f"evaluate-critic: {f} is unreadable ({type(exc).__name__}); it names the settings the "
                         "memory there was explored under: give another work folder or remove that one") from exc
    if held is None:
        atomic_write_json(f, {"key": key})
    elif held != key:
        raise InputError(f"evaluate-critic: the work folder {workdir} holds an evaluation made with other settings "
                         f"(key {held}, these are {key}: seed, warm-up, judge, reflections, group source or code "
                         "differ); its memory would be explored further under these: give another work folder")


def _sem(x: np.ndarray) -> float:
    """Standard error of the mean of ``x``; NaN with fewer than 2 values, where it is undefined: a 0 there (one
    group scored: ``--num-groups 1``, or all but one group failed) printed "± 0.000", a figure known exactly."""
    return float(x.std(ddof=1) / math.sqrt(len(x))) if len(x) > 1 else float("nan")


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
        d = full - per_group[r["variant"]]  # per group, in the same order; NaN where either variant failed
        d = d[np.isfinite(d)]
        if not len(d):  # no group both scored: nothing to pair (a NaN mean with a 0 SE claimed a measurement)
            continue
        r["full_minus_spearman"] = float(d.mean())
        r["full_minus_sem"] = _sem(d)
        r["full_minus_groups"] = int(len(d))


def _paired_pearson_top1_deltas(rows: list[dict], scores: dict[str, list], errors: list, seed: int = 0,
                           n_boot: int = 1000) -> None:
    """Add ``full_minus_pearson`` with a paired bootstrap standard error, and ``full_minus_top1_mm`` with its
    paired SE, to every ablation row.

    The point-wise Pearson pools all hypotheses of all groups, so it has no per-group values to pair;
    instead the same resampled groups (with replacement, ``n_boot`` times) are scored for both variants and
    the spread of the difference is the SE. Groups that either variant failed to score are left out.
    Each row draws from its own generator, seeded by (``seed``, variant name): with one shared generator a
    row's SE changed when another variant was added to or left out of ``--variants``."""
    full = scores.get("full")
    if full is None:
        return
    for r in rows:
        if r["variant"] == "full":
            continue
        rng = np.random.default_rng([seed, zlib.crc32(r["variant"].encode())])  # stable across runs (not hash())
        other = scores[r["variant"]]
        keep = [i for i in range(len(errors)) if full[i] is not None and other[i] is not None]
        if not keep:
            continue
        a = [np.asarray(full[i], np.float64) for i in keep]
        b = [np.asarray(other[i], np.float64) for i in keep]
        e = [np.asarray(errors[i], np.float64) for i in keep]
        r["full_minus_pearson"] = pooled_pearson(a, e) - pooled_pearson(b, e)
        # top-1 (tied best scores: the mean of their errors); negative = full's pick is better
        d = np.array([tied_top1_error(a[i], e[i]) - tied_top1_error(b[i], e[i]) for i in range(len(keep))])
        r["full_minus_top1_mm"] = float(d.mean())
        r["full_minus_top1_sem"] = _sem(d)
        boots = []
        for _ in range(n_boot if len(keep) > 1 else 0):
            idx = rng.integers(0, len(keep), len(keep))
            boots.append(pooled_pearson([a[i] for i in idx], [e[i] for i in idx])
                         - pooled_pearson([b[i] for i in idx], [e[i] for i in idx]))
        r["full_minus_pearson_se"] = float(np.std(boots, ddof=1)) if len(boots) > 1 else float("nan")


def format_table(payload: dict[str, Any]) -> str:
    src = (f"memory explored on {payload['explored_groups']} {payload['warmup_split']} groups"
           if payload.get("explored_groups") is not None else f"memory {payload['memory_dir']}")
    if payload.get("explore_stopped"):  # fewer groups than --warmup-groups asked for
        src += f" of {payload['warmup_groups']} asked (stopped: {payload['explore_stopped']})"
    if payload.get("explore_failed_groups"):  # figures of a memory that learnt from fewer groups than it says
        src += f" ({payload['explore_failed_groups']} of its explored groups failed: not learnt from)"
    lines = [f"critic evaluation on {payload['num_groups']} {payload['split']} groups of "
             f"{payload['num_generations']} ({payload['group_source']} hypotheses; {src}, version "
             f"{payload['memory_version']}"
             + (f"; judge {payload['judge']} {payload['judge_model']}" if payload.get("judge_model") else "") + ")",
             f"{'variant':<15}{'ρ PA':>7}{'± sem':>7}{'τ PA':>7}{'ρ MPJPE':>9}{'ρ PVE':>7}{'top-1 PA':>10}"
             f"{'r pooled':>9}{'full − this: ρ (paired sem)':>30}{'r (bootstrap se)':>20}"
             f"{'top-1 mm (sem)':>18}"]
    for r in payload["rows"]:
        # "—" where a variant scored no group (its figures are NaN), or an SE is undefined (one group): the table
        # printed "nan" for them
        f = fmt_value
        delta = (f"{r['full_minus_spearman']:>+22.3f} ({f(r['full_minus_sem'], '.3f')})"
                 if "full_minus_spearman" in r else "")
        if "full_minus_pearson" in r:
            delta += (f"{r['full_minus_pearson']:>+12.3f} ({f(r['full_minus_pearson_se'], '.3f')})"
                      f"{r['full_minus_top1_mm']:>+11.1f} ({f(r['full_minus_top1_sem'], '.1f')})")
        sem = r["spearman_sem"] if r.get("groups_scored") else None  # 0 over no group is no measurement either
        lines.append(f"{r['variant']:<15}{f(r['spearman'], '>7.3f')}{f(sem, '>7.3f')}{f(r['kendall'], '>7.3f')}"
                     f"{f(r['spearman_mpjpe'], '>9.3f')}{f(r['spearman_pve'], '>7.3f')}"
                     f"{f(r['top1_pa_mpjpe_mm'], '>7.1f')} mm{f(r.get('pearson_pointwise'), '>9.3f')}{delta}")
    for r in payload["rows"]:  # a row over fewer groups than random/oracle is not comparable with them as is
        if r.get("groups_scored", payload["num_groups"]) < payload["num_groups"]:
            lines.append(f"{r['variant']}: scored {r['groups_scored']} of {payload['num_groups']} groups (the rest "
                         "failed); " + ("its figures are over those, full − this over the groups both scored"
                                        if r["groups_scored"] else "it has no figures"))
    lines.append(f"{'random pick':<52}{payload['random_pa_mpjpe_mm']:>7.1f} mm")
    lines.append(f"{'oracle best-of-N':<52}{payload['oracle_pa_mpjpe_mm']:>7.1f} mm")
    lines += undefined_rho_notes(payload["rows"])
    lines.append("ρ, τ: mean within-group rank correlation of overall with −error; r pooled: point-wise Pearson of "
                 "overall with −PA-MPJPE over all hypotheses of all groups (do scores mean the same across groups?)")
    if payload.get("result_file"):  # a manual payload (tests) has none
        lines.append(f"wrote {payload['result_file']} (and {Path(payload['workdir']) / 'result.json'}, the "
                     "latest evaluation of this exploration)")
    return "\n".join(lines)
