"""``hmrcritic explore | explore-eval | learning-curve``: reflective knowledge construction (docs/PAPER.md §3)."""

from __future__ import annotations

import contextlib
from pathlib import Path

import typer

from hmrcritic.commands import (
    BASE_URL_OPTION,
    JUDGE_HELP,
    VLM_MODEL_OPTION,
    json_text,
    made_folder,
    say_failed_groups,
    with_judge_endpoint,
)

_DIR = typer.Option(None, "--memory-dir", help="Memory folder (default: HMRCRITIC_MEMORY or <home>/memory).")
_JSON = typer.Option(False, "--json", help="Machine-readable output.")
_SOURCE = typer.Option("auto", "--source", help="Hypotheses: model | perturbed | auto (model if it loads).")
_JUDGE = typer.Option("builtin", "--judge", help=JUDGE_HELP)
_SEED = typer.Option(0, "--seed", help="Sampling seed of the groups.", min=0, max=2**32 - 1)


def _shorten(text: str, width: int) -> str:
    """``text`` cut at a word boundary with an ellipsis (a cut mid-word read as a typo: "… abo —")."""
    return text if len(text) <= width else text[: width - 1].rsplit(" ", 1)[0].rstrip(" ,;:") + "…"


def _rounds_text(rounds: list[int]) -> str:
    """0-based round indices as 1-based ranges: [0, 1, 2, 4] → "1–3, 5"."""
    out: list[str] = []
    for r in sorted(set(rounds)):
        if out and out[-1][1] == r:
            out[-1][1] = r + 1
        else:
            out.append([r + 1, r + 1])
    return ", ".join(f"{a}" if a == b else f"{a}–{b}" for a, b in out)


def _failed_groups(failed: list[dict]) -> int:
    """How many of a round's ``failed`` records are groups that failed (not skipped as unrankable, nor a scored
    group that only lost its prototypes)."""
    return sum(f["kind"] == "error" if "kind" in f
               else not str(f.get("error", "")).startswith(("skipped:", "prototypes skipped:"))  # before kinds
               for f in failed)


def explore_line(event: str, p: dict) -> str | None:
    """The line `hmrcritic explore` prints for one progress event of :func:`hmrcritic.agent.explore.explore`
    (None: nothing to print)."""
    if event == "group":
        if "error" in p:
            what = f"error: {p['error']}"
        elif "skipped" in p:
            what = p["skipped"]
        else:
            what = f"ρ = {p['spearman']:+.3f}"
        return f"  [{p['index'] + 1}/{p['total']}] {p['group_id']}: {what}"
    if event == "rule_added":
        return f"  + rule {p['rule_id']}: {p['text']}" + (f" (Δρ {p['gain']:+.3f})" if "gain" in p else "")
    if event == "rule_rejected":
        return f"  - rejected: {_shorten(p['text'], 80)} — {p['reason']}"
    if event == "round":
        # groups whose critique failed (a VLM endpoint error) are not retried: the round is recorded done, and they
        # stay guarded against evaluation; "8 groups" for a batch of 8 with 3 such failures hid that
        failed = _failed_groups(p.get("failed", []))
        from hmrcritic.agent.learning_curve import fmt_value

        # "—" for a round that scored no group (every group unrankable: skipped): it printed "mean ρ +nan".
        # The prototypes the round stored, and the memory's total as counted after it: "13 prototypes" read as a
        # total (README's learning curve and `memory stats` give totals), next to a memory holding 28
        total = p.get("prototypes_in_memory")
        return (f"round {p['round']}: {p['groups']} groups"
                + (f" ({failed} failed and will not be retried)" if failed else "")
                + f", mean ρ {fmt_value(p['mean_spearman'], '+.3f')}, "
                f"{len(p['rules_added'])} rule(s) added, {len(p['retired'])} retired, "
                f"{len(p['merged'])} merged, +{p['prototypes']} prototypes"
                + (f" ({total} in memory)" if total is not None else "") + f" ({p['seconds']:.1f} s)")
    if event == "resumed":
        if "pending_batch" in p:
            return (f"resuming: wrote the rest of batch {p['pending_batch']}, which an interrupted run had finished "
                    "computing")
        rounds = p.get("rounds")
        done = [r for r in p.get("rounds_done", []) if rounds is None or r < rounds]
        if rounds is not None and len(done) >= rounds:
            return (f"nothing to explore: round(s) {_rounds_text(done)} of {rounds} were done by an earlier run of "
                    "this memory; give a larger --rounds to continue")
        # the first round not done, found without a set of every round (`--rounds 1000000000` filled memory here)
        have = set(done)
        todo = next(r for r in range(rounds) if r not in have) + 1 if rounds is not None else None
        return (f"resuming: round(s) {_rounds_text(done)} were done by an earlier run of this memory"
                + (f"; continuing with round {todo} of {rounds}" if todo else ""))
    if event == "calibrate":
        from hmrcritic.agent.learning_curve import at_a_tenth

        if not at_a_tenth(p["index"], p["total"]):
            return None
        return f"  calibrating scores: {p['index']}/{p['total']} held-out groups"
    if event == "note":  # a slow first-use step about to start (the pose prior's fit): printed on stderr
        return f"hmrcritic: {p['text']}"
    if event == "calibrated":
        from hmrcritic.commands.memory import describe_calibration

        if not p["calibration"]:
            return p["note"]
        return f"score calibration: {describe_calibration(p['calibration'])}" + (
            f"\n  note: {p['note']}" if p.get("note") else "")
    return None


def curve_line(row: dict) -> str:
    """The line `hmrcritic learning-curve` prints for one evaluated round (a row of
    :func:`hmrcritic.agent.learning_curve.learning_curve`).

    ρ and τ are against −PA-MPJPE, as the top-1 error is (the line names it).

    "—" for a round that scored no group (NaN figures): it printed "ρ +nan", as if measured. Groups whose ρ was
    undefined (constant scores or errors; ``rho_undefined``) are said when there are any: they count as 0 in the
    round's ρ and τ, and a ρ near 0 made of them read as a critic ranking at chance (explore-eval's table says so;
    the per-round line did not, and learning-curve prints no other table)."""
    from hmrcritic.agent.learning_curve import fmt_value as f

    n = row.get("rho_undefined")
    # "top-1 62.0 mm" named no error while evaluate-critic's table says "top-1 PA", explore-eval's "top1 PA" and
    # README's curve "top-1 PA-MPJPE (mm)": a reader of the line alone could take it for MPJPE (larger, and
    # learning-curve's JSON holds only the PA-MPJPE figure, top1_pa_mpjpe_mm)
    return (f"round {row['round']}: ρ {f(row['spearman'], '+.3f')}  τ {f(row['kendall'], '+.3f')}  top-1 PA-MPJPE "
            f"{f(row['top1_pa_mpjpe_mm'], '.1f')} mm  rules {row['rules']}  prototypes {row['prototypes']}"
            + (f"  (ρ undefined for {n} of {row.get('groups_scored')} scored groups, counted as 0 in ρ and τ)"
               if n else ""))


# "auto": no group explored in this call (--rounds 0, or every round done before), so the source was never resolved;
# it printed "(hypotheses: auto)", the flag's value read as if it were what the hypotheses were
_SOURCE_WORDS = {"model": "hypotheses sampled by the model", "perturbed": "hypotheses perturbed from the labels",
                 "auto": "hypotheses: the model's if it loads, else perturbed from the labels"}


def _check_metric(metric: str) -> None:
    from hmrcritic.agent.explore import ERROR_METRICS
    from hmrcritic.errors import InputError

    if metric not in ERROR_METRICS:
        raise InputError(f"--error-metric {metric!r}: choose one of {', '.join(ERROR_METRICS)}")


def _check_explore_flags(rounds: int, batch_size: int, tau: float, num_generations: int,
                         calibration_groups: int) -> None:
    """Out-of-range flags refused in one line that names the flag, as learning-curve's are. ``explore`` refused them
    too, but in its own words, two at a time and without the flag: "need rounds ≥ 0 and batch size ≥ 1 (got 3, 0)"
    left a user to work out which of the two was wrong, "need ≥ 2 hypotheses per group and calibration groups ≥ 0
    (got 16, -1)" named neither -n nor --calibration-groups, and "τ = 2.0" not --tau."""
    from hmrcritic.errors import InputError

    for flag, value, low, unit in (("--rounds", rounds, 0, ""), ("--batch-size", batch_size, 1, ""),
                                   ("--num-generations", num_generations, 2, " hypotheses per group"),
                                   ("--calibration-groups", calibration_groups, 0, "")):
        if value < low:
            raise InputError(f"explore: {flag} must be ≥ {low}{unit}, got {value}")
    if not -1 <= tau <= 1:  # NaN too: a comparison with it is false
        raise InputError(f"explore: --tau {tau} is not a Spearman value in [-1, 1]")


def explore_cmd(
    split: str = typer.Option("train", "--split", help="Labelled split to explore (never the one you evaluate on)."),
    rounds: int = typer.Option(3, "--rounds", help="Exploration rounds (one batch each)."),
    batch_size: int = typer.Option(8, "--batch-size", help="Groups per batch."),
    tau: float = typer.Option(0.5, "--tau", help="Spearman a group must reach for its rules to succeed, in [-1, 1]."),
    judge: str = _JUDGE,
    base_url: str = BASE_URL_OPTION,
    vlm_model: str = VLM_MODEL_OPTION,
    error_metric: str = typer.Option("pa_mpjpe", "--error-metric", help="pa_mpjpe | mpjpe | pve | mix."),
    ucb_c: float = typer.Option(1.0, "--ucb-c", help="UCB exploration constant C in rule retrieval Ψ."),
    rules_k: int = typer.Option(16, "--rules-k", help="Rules recalled per group."),
    num_generations: int = typer.Option(16, "-n", "--num-generations", help="Hypotheses per group."),
    limit: int = typer.Option(None, "--limit", help="At most this many groups in total."),
    seed: int = _SEED,
    source: str = _SOURCE,
    max_reflections: int = typer.Option(None, "--max-reflections", help="Revise rounds per group (default: "
                                                                  "HMRCRITIC_MAX_REFLECTIONS, else 2)."),
    calibration_groups: int = typer.Option(
        None, "--calibration-groups",
        help="Labelled groups after the explored ones to fit the score calibration on (builtin judge; 0 = skip; "
             "default 32)."),
    memory_dir: Path = _DIR,
    as_json: bool = _JSON,
) -> None:
    """Explore labelled groups and grow the memory: rule statistics, prototypes, mined rules, and at the end
    the score calibration (fitted on the groups that follow the explored ones).

    Resumes an interrupted run from its last finished batch; calling again with more --rounds continues.
    Example: `hmrcritic explore --split train --rounds 5 --batch-size 8 --tau 0.5`.
    """
    from hmrcritic.agent.calibration import CALIBRATION_GROUPS
    from hmrcritic.agent.explore import explore

    _check_metric(error_metric)
    calibration_groups = CALIBRATION_GROUPS if calibration_groups is None else calibration_groups
    _check_explore_flags(rounds, batch_size, tau, num_generations, calibration_groups)

    def progress(event: str, p: dict) -> None:
        # a note on stderr, --json too, beside the split's "(first use)" line: stdout stays the reply. With --json
        # the progress lines go to stderr too (README: "--json prints one JSON document on stdout and everything
        # else (progress, notes) on stderr"): they were dropped, so a long `explore --json` said nothing for
        # minutes, not even "resuming: …" or "nothing to explore", while evaluate-critic --json logs its stages
        line = explore_line(event, p)
        if line is not None:
            typer.echo(line, err=as_json or event == "note")

    summary = explore(memory_dir, split=split, rounds=rounds, batch_size=batch_size, tau=tau, judge=judge,
                      error_metric=error_metric, ucb_c=ucb_c, rules_k=rules_k, num_generations=num_generations,
                      limit=limit, seed=seed, source=source, max_reflections=max_reflections,
                      calibration_groups=calibration_groups, progress=progress)
    if as_json:
        typer.echo(json_text(summary.as_dict()))
        return
    failed = sum(_failed_groups(r.failed) for r in summary.rounds)
    # "(model)" / "(perturbed)" named the --source value without the option: say what the hypotheses were
    made = _SOURCE_WORDS.get(summary.source, f"hypotheses: {summary.source}")
    # the memory by its location (a server's URL, password masked; else its folder): "memory version …; log
    # <folder>" named only the local folder of a memory on a Chroma server, never the server that was explored
    typer.echo(f"explored {summary.groups} groups of {split} ({made}); memory version "
               f"{summary.memory_version} at {summary.memory}; log {summary.log_path}"
               + (f"; {failed} group(s) failed and will not be retried" if failed else "")
               + (f"; stopped: {summary.stopped}" if summary.stopped else ""))


def explore_eval_cmd(
    split: str = typer.Option("test", "--split", help="Held-out labelled split."),
    num_groups: int = typer.Option(20, "--num-groups", help="Held-out groups."),
    num_generations: int = typer.Option(16, "-n", "--num-generations", help="Hypotheses per group."),
    variants: str = typer.Option(None, "--variants", help="Comma-separated variants (default: all)."),
    seed: int = _SEED,
    source: str = _SOURCE,
    judge: str = _JUDGE,
    base_url: str = BASE_URL_OPTION,
    vlm_model: str = VLM_MODEL_OPTION,
    memory_dir: Path = _DIR,
    out: Path = typer.Option(None, "--out", help="Also write the JSON here."),
    as_json: bool = _JSON,
) -> None:
    """Held-out critic quality of the explored memory against its ablations (frozen memory, read-only copy).

    Example: `hmrcritic explore-eval --split test --num-groups 20`.
    """
    from hmrcritic.agent.learning_curve import explore_eval, format_rows

    if num_groups < 1:  # read "no held-out groups in split 'test'", as if the split were empty
        from hmrcritic.errors import InputError

        raise InputError(f"explore-eval: --num-groups must be ≥ 1, got {num_groups}")
    if out is not None and out.is_dir():  # a bad --out is refused now, not after minutes of scoring
        from hmrcritic.errors import InputError

        raise InputError(f"explore-eval: --out {out} is a folder; give a file path, e.g. "
                         f"{out / 'explore_eval.json'}")
    if out is not None:  # a pipe, a device (/dev/stdout) or a link to one: refused at the write, after the scoring
        from hmrcritic.commands import check_output_file

        check_output_file(out, "explore-eval --out")
    # the folder of --out now (a file in the way or no permission: the OSError line), gone again if refused later
    with made_folder(out.parent) if out is not None else contextlib.nullcontext():
        # explore_eval checks the held-out split's shards against their manifest
        res = explore_eval(memory_dir, split=split, num_groups=num_groups, num_generations=num_generations,
                           seed=seed, source=source, judge=judge,
                           variants=[v.strip() for v in variants.split(",") if v.strip()] if variants else None)
    if out is not None:
        from hmrcritic.io import atomic_write_strict_json

        atomic_write_strict_json(out, res)  # strict JSON, as --json prints it
    if as_json:
        typer.echo(json_text(res))
    else:
        typer.echo(f"{res['num_groups']} held-out groups of {res['split']}; memory {res['memory_version']}")
        typer.echo(format_rows(res))
    say_failed_groups(res, "explore-eval")


def learning_curve_cmd(
    split: str = typer.Option("train", "--split", help="Split to explore."),
    heldout_split: str = typer.Option("test", "--heldout-split", help="Held-out split to evaluate on."),
    rounds: int = typer.Option(5, "--rounds", help="Exploration rounds; the held-out groups are scored after each."),
    batch_size: int = typer.Option(8, "--batch-size", help="Groups explored per round."),
    heldout_groups: int = typer.Option(16, "--heldout-groups", help="Held-out groups scored after each round."),
    num_generations: int = typer.Option(16, "-n", "--num-generations", help="Hypotheses per group."),
    tau: float = typer.Option(0.5, "--tau", help="Spearman a group must reach for its rules to succeed."),
    seed: int = _SEED,
    source: str = _SOURCE,
    judge: str = _JUDGE,
    base_url: str = BASE_URL_OPTION,
    vlm_model: str = VLM_MODEL_OPTION,
    memory_dir: Path = typer.Option(..., "--memory-dir", help="A NEW (or starter) memory folder to explore into."),
    out: Path = typer.Option(Path("learning_curve"), "--out", help="Folder for learning_curve.json/.png."),
    as_json: bool = _JSON,
) -> None:
    """Explore round by round and evaluate held-out Spearman after each round (table + PNG).

    Interrupted, the same command continues from the last evaluated round (kept in --out).
    Example: `hmrcritic learning-curve --memory-dir /tmp/mem --rounds 5 --out results/`.
    """
    from hmrcritic.agent.learning_curve import learning_curve
    from hmrcritic.errors import InputError

    # refused before any work: --heldout-groups 0 explored every round and then wrote a curve of NaN (not JSON);
    # --batch-size 0 failed only after round 0's held-out groups had been scored
    # --rounds -1 too: learning_curve refused it, but after --out was made (an empty folder left behind)
    for flag, value, low in (("--rounds", rounds, 0), ("--batch-size", batch_size, 1),
                             ("--heldout-groups", heldout_groups, 1), ("--num-generations", num_generations, 2)):
        if value < low:
            raise InputError(f"learning-curve: {flag} must be ≥ {low}, got {value}")
    if not -1 <= tau <= 1:  # explore refused it only after round 0's held-out groups had been scored
        raise InputError(f"learning-curve: --tau {tau} is not a Spearman value in [-1, 1]")
    if split == heldout_split:  # learning_curve refuses it too, but after --out was made: an empty folder was left
        raise InputError(f"learning-curve: the held-out split ({heldout_split}) must differ from the exploration "
                         f"split ({split})")

    def progress(row: dict) -> None:
        typer.echo(curve_line(row), err=as_json)  # --json: on stderr, as explore's lines (stdout is the JSON)
        scored = row.get("groups_scored")
        # the groups scored (one entry each), not --heldout-groups: a held-out split smaller than that gives fewer
        # groups, and every round warned "scored 4 of 16 … (the critiques of the others failed)" with none failed
        total = len(row.get("per_group_spearman") or []) or heldout_groups
        if isinstance(scored, int) and scored < total:  # the round's figures are over fewer groups
            from hmrcritic.redact import printable

            typer.echo(f"warning: learning-curve: round {row['round']} scored {scored} of {total} "
                       "held-out groups (the critiques of the others failed)"
                       + (f"; first: {printable(row['first_failure'])}" if row.get("first_failure") else ""),
                       err=True)

    def status(line: str) -> None:
        # --json: on stderr, not dropped: a resumed curve said nothing of its resume, nor of the rounds it explored
        typer.echo(line, err=as_json)

    # made first (a file in the way is refused now, not after round 0 was scored); removed again, with the
    # folders above it made for it, when the curve is refused before writing anything there (see made_folder)
    with made_folder(out):
        res = learning_curve(memory_dir, split=split, rounds=rounds, batch_size=batch_size,
                             heldout_split=heldout_split, heldout_groups=heldout_groups,
                             num_generations=num_generations, seed=seed, source=source, judge=judge, out_dir=out,
                             explore_kwargs={"tau": tau}, progress=progress, status=status)
    if as_json:
        typer.echo(json_text(res))
    else:
        typer.echo(f"wrote {out / 'learning_curve.json'} and {res.get('png')}")
    rows = res.get("rows") or []
    if rows and all(r.get("groups_scored") == 0 for r in rows):  # a row without the count is not known to be empty
        # as explore-eval and evaluate-critic: a curve of no measurement at all exited 0, and a script read its
        # table of nulls as a result
        from hmrcritic.commands import stop_nothing_scored

        stop_nothing_scored(rows, "learning-curve: no round scored any held-out group")


def register(app: typer.Typer) -> None:
    app.command("explore")(with_judge_endpoint(explore_cmd))
    app.command("explore-eval")(with_judge_endpoint(explore_eval_cmd))
    # --judge since session 31 (the Python function always took one): the curve of a VLM judge from the CLI
    app.command("learning-curve")(with_judge_endpoint(learning_curve_cmd))
