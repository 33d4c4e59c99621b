"""``export`` (+ ``export validate``) and ``finetune``: group preference data and alignment from the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from hmrcritic.commands import (
    BASE_URL_OPTION,
    CHROMA_URL_HELP,
    JUDGE_HELP,
    VLM_MODEL_OPTION,
    json_text,
    with_judge_endpoint,
)
from hmrcritic.errors import InputError


def _export_app() -> typer.Typer:
    app = typer.Typer(
        name="export",
        no_args_is_help=False,
        invoke_without_command=True,
        # `export --split wild --out …` is the command itself: "export [OPTIONS] COMMAND [ARGS]..." told a new user
        # that a sub-command was needed (validate is the only one, and optional)
        subcommand_metavar="[COMMAND [ARGS]...]",
        # the group's help is what `export --help` shows (the callback's docstring is not): resuming and the
        # examples belong here, or the help never says that a killed export continues where it stopped
        help="Sample, critique and write scored hypothesis groups as a group preference dataset.\n\n"
             "Resumable: kill it any time and run the same command again.\n\n"
             "Examples:\n"
             "  hmrcritic export --split wild --num-generations 20 --out runs/wild-prefs\n"
             "  hmrcritic export --split wild --out runs/wild-prefs --workers 2\n"
             "  hmrcritic export --split wild --out runs/wild-prefs --ray-address local --workers 4\n"
             "  hmrcritic export validate runs/wild-prefs",
    )

    @app.callback(invoke_without_command=True)
    @with_judge_endpoint
    def export_cmd(
        ctx: typer.Context,
        split: str = typer.Option(None, help="A synthetic split to export (e.g. wild)."),
        data: Path = typer.Option(None, help="A split folder written by `hmrcritic data generate`, or your own "
                                             "inputs: a JSON lines file (or a JSON list) of image + keypoints files, "
                                             "or an .npz of keypoints, K, image_size (README)."),
        model: Path = typer.Option(None, help="Diffusion checkpoint (default: the shipped base model)."),
        num_generations: int = typer.Option(20, "-n", "--num-generations", help="Hypotheses per group (G)."),
        judge: str = typer.Option("builtin", help=JUDGE_HELP),
        base_url: str = BASE_URL_OPTION,
        vlm_model: str = VLM_MODEL_OPTION,
        out: Path = typer.Option(None, help="Output dataset folder (re-run the same command to resume)."),
        workers: int = typer.Option(1, help="Worker processes (or Ray actors with --ray-address)."),
        ray_address: str = typer.Option(None, help="Ray cluster address, 'auto', or 'local' to start one "
                                                      "(each worker is an actor taking 1 CPU)."),
        limit: int = typer.Option(None, help="Export only the first N inputs."),
        seed: int = typer.Option(
            0, help="Export seed; per-group seeds derive from (seed, input id).", min=0, max=2**32 - 1),
        steps: int = typer.Option(10, help="DDIM sampling steps."),
        memory: Path = typer.Option(None, "--memory-dir", "--memory",
                                    help="Frozen memory folder (default: HMRCRITIC_MEMORY or <home>/memory)."),
        chroma_url: str = typer.Option(None, help=CHROMA_URL_HELP),
        no_memory: bool = typer.Option(False, "--no-memory", help="Score without rule/prototype memory."),
        scorer: str = typer.Option(
            None, help="Custom scorer 'module:function' (critique_group's signature)."
        ),
        as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
    ) -> None:
        """Export scored groups (resumable; `export --help` shows the group's help text above, not this)."""
        if ctx.invoked_subcommand is not None:
            return
        from hmrcritic.alignment.export import DEFAULT_SCORER, ExportConfig, export, format_summary
        from hmrcritic.commands.memory import check_chroma_url

        # "" (`--chroma-url "$URL"`, URL unset) was the API's "on disk, whatever HMRCRITIC_CHROMA_URL says": the
        # groups were scored against the memory on disk, not the server; refused as the memory commands refuse it
        chroma_url = check_chroma_url(chroma_url)

        if out is None:
            raise InputError("export needs --out DIR (and --split NAME, or --data DIR|FILE: a split folder or your own "
                             "input list)")
        if not no_memory:
            from hmrcritic.commands.agent import note_new_memory

            note_new_memory(memory, chroma_url)
        cfg = ExportConfig(
            out=str(out),
            split=split,
            data=None if data is None else str(data),
            model=None if model is None else str(model),
            num_generations=num_generations,
            judge=judge,
            workers=workers,
            ray_address=ray_address,
            limit=limit,
            seed=seed,
            sample_steps=steps,
            memory=None if memory is None else str(memory),
            chroma_url=chroma_url,
            use_memory=not no_memory,
            score_group=scorer or DEFAULT_SCORER,
        )
        try:
            with _bar_off_stdout(as_json):
                summary = export(cfg, progress=_export_progress(as_json))
        except KeyboardInterrupt:
            # typer turns Ctrl-C into a silent exit 130 (the CLI's "interrupted" line never shows): say what is kept
            import sys

            from hmrcritic.alignment.dataset import read_manifest

            print(f"interrupted: the {len(read_manifest(out))} group(s) in {out} are kept; run the same command "
                  "again to resume", file=sys.stderr)
            raise SystemExit(130) from None
        # ASCII and strict (json_text): model_dump_json wrote a path's "é" as the character, \xe9 on a non-UTF-8
        # stdout, which is no JSON escape (see `critique --json`)
        print(json_text(summary.model_dump(mode="json")) if as_json else format_summary(summary))
        if not no_memory and scorer is None:
            from hmrcritic.commands.agent import note_unexplored_default_memory

            note_unexplored_default_memory(memory, chroma_url)
        if summary.groups == 0 and summary.failures:
            # why, on stderr too: it was only inside the summary (with --json, the JSON's first_failure), so a
            # script saw exit 1 and an empty stderr
            _fail(f"export wrote no group: all {summary.failures} failed; first: {summary.first_failure}")

    @app.command("validate")
    def validate_cmd(
        path: Path = typer.Argument(..., help="Dataset folder written by `hmrcritic export`."),
        as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
    ) -> None:
        """Check a dataset: schema, checksums, files, shapes, no 3D label keys, unique ids.

        Example: hmrcritic export validate runs/wild-prefs
        """
        from hmrcritic.alignment.dataset import validate_dataset

        # nothing to validate is a usage error (one line, exit 2), not an INVALID dataset (exit 1)
        if not path.is_dir():
            raise InputError(f"{path}: no such folder" if not path.exists() else f"{path} is not a folder")
        _require_header(path)
        from hmrcritic.alignment.dataset import MANIFEST

        rep = validate_dataset(path)
        # an export stopped (or still running) before its first group: "INVALID" read as a folder broken beyond
        # repair, where one stopped a group later is OK with a warning; it fails all the same (nothing to train on)
        empty = not rep.ok and _unfinished(path) and not (path / MANIFEST).exists()
        if as_json:
            print(json_text(rep.model_dump(mode="json")))  # ASCII and strict, as export's summary
        else:
            # pairs.jsonl is written when an export finishes: of one unfinished (interrupted, still running, stopped
            # for its endpoint) "0 pairs" read as the DPO pairs missing, and a count is of an earlier run's file
            pairs = f"{rep.pairs} pairs"
            if _unfinished(path):
                pairs = (f"{pairs} (of an earlier run; rewritten when the export finishes)" if rep.pairs else
                         "pairs written when the export finishes")
            print(
                f"{'OK' if rep.ok else 'UNFINISHED' if empty else 'INVALID'}: {rep.path}: {rep.groups} groups, "
                f"{rep.hypotheses} hypotheses, "
                f"{pairs}, zero-variance {100 * rep.zero_variance_share:.1f}%"
            )
            for e in rep.errors:
                print(f"  error: {e}")
            for w in rep.warnings:
                print(f"  warning: {w}")
        if empty:
            _fail(f"{rep.path}: the export into it has not written its first group yet: nothing to finetune on; "
                  "re-run the same export command to continue")
        if not rep.ok:
            _fail(f"{rep.path}: invalid dataset, {len(rep.errors)} error(s)"
                  + (f"; first: {rep.errors[0]}" if rep.errors else ""))

    return app


def _require_header(path: Path) -> None:
    """A folder that holds no dataset.json is no export, said as one line with the command that writes one.

    ``finetune --data`` on such a folder (an empty ``--out`` made ahead, a sample or critique folder, finetune run
    before its export) said "DIR/dataset.json: not a group preference dataset (no dataset.json)": the file named
    twice, and no word of what makes one, where ``export validate`` on the same folder said both."""
    if path.is_dir() and not (path / "dataset.json").is_file():
        raise InputError(f"{path}: not a group preference dataset (no dataset.json; `hmrcritic export --out "
                         f"{path}` writes one)")


def _unfinished(path: Path) -> bool:
    """Is the export into ``path`` marked unfinished in its header? False when the header cannot be read (validate
    reports that as an error of its own)."""
    from hmrcritic.alignment.dataset import read_header
    from hmrcritic.errors import AssetError

    try:
        return read_header(path).counts.get("finished") is False
    except (AssetError, OSError):
        return False


def _bar_off_stdout(as_json: bool):
    """Send the progress bar of export and finetune (a rich bar, on stdout) and the library's chatter to stderr with
    ``--json`` or when stdout is not a terminal: stdout is for the result.

    ``hmrcritic finetune … > result.txt`` or ``| tee log`` found the bar's last frame ("finetune ━━━ 200/200 loss
    …") as the first line of the result, ahead of the summary a script reads; the data generation's bar and every
    note were on stderr already."""
    import contextlib
    import sys

    from hmrcritic.commands import is_tty

    return contextlib.nullcontext() if is_tty(sys.stdout) and not as_json else contextlib.redirect_stdout(sys.stderr)


def _export_progress(as_json: bool):
    """``export``'s ``progress``: the bar where it shows on a terminal (stdout, or stderr with ``--json`` or a
    redirected stdout, see :func:`_bar_off_stdout`), else plain "export: 12/120 groups" lines on stderr at each
    tenth of the way (CI, cron, ``2> log``): there the bar showed nothing until its last frame, and ``--json`` had
    no progress at all, so an hour-long export logged no sign of life."""
    import sys

    from hmrcritic.commands import is_tty, progress_at_tenths

    if (is_tty(sys.stdout) and not as_json) or is_tty(sys.stderr):  # the stream the bar goes to is a terminal
        return True
    return progress_at_tenths("export: {done}/{total} groups")


def _fail(line: str) -> None:
    """Exit 1 with ``line`` on stderr after the command's output (the report or summary, on stdout): the one
    line a script logs, as for every other failing command."""
    import sys

    from hmrcritic.redact import printable

    print(f"error: {printable(line)}", file=sys.stderr)
    raise SystemExit(1)  # (typer.Exit's code is lost under standalone_mode=False)


def _saved_step(cfg) -> str:
    """Where an interrupted finetune resumes: the step of its saved state, or from the start."""
    if not cfg.resume:
        return (f"--no-resume starts over when run again; without it, a re-run resumes from the state saved in "
                f"{cfg.state_path} (every --checkpoint-every {cfg.checkpoint_every} steps), if any")
    step = None
    if cfg.state_path.exists():
        import torch

        try:
            step = int(torch.load(cfg.state_path, map_location="cpu", weights_only=True, mmap=True)["step"])
        except Exception:  # a state that does not load: the re-run says why
            step = None
    if step is None:
        return (f"no state saved yet (every --checkpoint-every {cfg.checkpoint_every} steps); the same command "
                "starts over")
    return (f"{cfg.state_path} holds step {step} of {cfg.steps}; run the same command again to resume from it "
            f"(state is saved every --checkpoint-every {cfg.checkpoint_every} steps)")


def _typed(ctx, name: str) -> bool:
    """Whether option ``name`` was given on the command line (not its default, not an environment variable).
    typer's own copy of click names the sources in a private module: compared by name, not imported."""
    try:
        return getattr(ctx.get_parameter_source(name), "name", None) == "COMMANDLINE"
    except (AttributeError, TypeError):  # a context without sources (a direct call): as if not typed
        return False


def register(app: typer.Typer) -> None:
    app.add_typer(_export_app(), name="export")

    @app.command("finetune")
    def finetune_cmd(
        ctx: typer.Context,
        data: Path = typer.Option(..., help="Dataset folder written by `hmrcritic export`."),
        out: Path = typer.Option(
            ..., help="Output checkpoint (.pt); OUT.state.pt / OUT.log.jsonl beside it. A file already there must "
                      "be an earlier finetune's checkpoint (it is rewritten); any other file is refused."
        ),
        model: Path = typer.Option(None, help="Base checkpoint (default: the shipped base model)."),
        objective: str = typer.Option(
            "gpa", help="gpa | gpa_linear | dpo | sft (best-of-group) | gpa_no_base_loss (= gpa with "
                        "--base-loss-weight 0). dpo and sft ignore --t-min, --gpa-weight, --base-loss-weight and "
                        "--scale-rewards; sft --beta too."),
        num_generations: int = typer.Option(20, "-n", "--num-generations",
                                             help="Stored hypotheses drawn per group and step (G)."),
        steps: int = typer.Option(200, help="Optimiser steps."),
        batch_size: int = typer.Option(8, help="Groups per step."),
        lr: float = typer.Option(1e-4, help="AdamW learning rate."),
        beta: float = typer.Option(100.0, help="β of the GPA / DPO losses."),
        t_min: int = typer.Option(None, help="GPA: t ~ U[t_min, T) (default T/2)."),
        gpa_weight: float = typer.Option(0.1, help="Weight of the GPA loss."),
        base_loss_weight: float = typer.Option(1.0, help="Weight of the plain denoising loss (0 = none)."),
        scale_rewards: str = typer.Option("group", help="Advantage scaling: group | batch | none."),
        ema: float = typer.Option(0.999, help="EMA decay of the saved weights."),
        seed: int = typer.Option(0, help="Seed (batches, noise, timesteps).", min=0, max=2**32 - 1),
        checkpoint_every: int = typer.Option(50, help="Save resumable state every K steps."),
        resume: bool = typer.Option(True, "--resume/--no-resume", help="Continue from OUT.state.pt."),
        threads: int = typer.Option(
            None, min=1, help="torch CPU threads (default: torch's, one per core). Weights are bit-identical "
                              "between runs at the same count; the count used is kept in the checkpoint."),
        device: str = typer.Option(None, help="cpu or cuda (default: HMRCRITIC_DEVICE, else cpu)."),
        as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
    ) -> None:
        """Align the diffusion model on a preference dataset against a frozen reference (resumable).

        Examples:
          hmrcritic finetune --data runs/wild-prefs --out runs/aligned.pt
          hmrcritic finetune --data runs/wild-prefs --out runs/dpo.pt --objective dpo --steps 400
        """
        import sys

        from hmrcritic.alignment.dataset import RERUN_ADVICE, read_header, read_manifest
        from hmrcritic.alignment.finetune import FinetuneConfig, finetune
        from hmrcritic.config import check_device
        from hmrcritic.errors import AssetError

        _require_header(data)
        try:
            unfinished = read_header(data).counts.get("finished") is False
            # the complete groups, as the dataset reader counts them (torn lines dropped; a small JSONL file)
            written = len(read_manifest(data)) if unfinished else 0
        except (AssetError, OSError):
            unfinished = False  # finetune itself says what is wrong with the folder
        if unfinished and not written:
            # the note said "training on the groups it wrote so far" and finetune then stopped on "no complete
            # groups": one error that says what happened and what to do instead
            from hmrcritic.alignment.dataset import FAILURES, not_attempted_note, open_failures
            failed = open_failures(data, ())
            # how many of them were never sent (stage not_attempted), as validate and the finetune's note say: "250
            # input(s) failed" read as 250 groups tried and failed
            why = (f"; {len(failed)} input(s) failed meanwhile{not_attempted_note(data, failed)}: see "
                   f"{data / FAILURES} (an export whose VLM endpoint or memory server could not be used stops so)"
                   ) if failed else ""
            raise AssetError(f"the export into {data} was interrupted (or is still running) before its first group "
                             f"was written{why}: nothing to finetune on; re-run that export to complete it")
        if unfinished:
            print(f"note: the last export into {data} did not finish (interrupted or still running): training on "
                  f"the {written} group(s) it wrote so far; {RERUN_ADVICE}", file=sys.stderr)

        cfg = FinetuneConfig(
            data=str(data),
            out=str(out),
            model=None if model is None else str(model),
            objective=objective,
            num_generations=num_generations,
            steps=steps,
            batch_size=batch_size,
            lr=lr,
            beta=beta,
            t_min=t_min,
            gpa_weight=gpa_weight,
            base_loss_weight=base_loss_weight,
            scale_rewards=scale_rewards,
            ema=ema,
            seed=seed,
            checkpoint_every=checkpoint_every,
            resume=resume,
            threads=threads,
            device=check_device(device),  # None: HMRCRITIC_DEVICE, else cpu
        )
        try:
            # progress=True with --json too: it is what turns on finetune's notes (another model's samples, all
            # groups tied, fewer hypotheses than -n), which --json dropped without a word; the bar goes to stderr
            with _bar_off_stdout(as_json):
                path = finetune(cfg, progress=True, generations_given=_typed(ctx, "num_generations"))
        except KeyboardInterrupt:
            # typer turns Ctrl-C into a silent exit 130: say which step a re-run continues from (the state is saved
            # every --checkpoint-every steps, so the steps since are run again)
            print(f"interrupted: {_saved_step(cfg)}", file=sys.stderr)
            raise SystemExit(130) from None
        logs = [json.loads(line) for line in cfg.log_path.read_text(encoding="utf-8").splitlines() if line.strip()]
        last = logs[-1] if logs else {}
        if as_json:
            print(json.dumps({"checkpoint": str(path), "log": str(cfg.log_path), "final": last}, indent=2))
        else:
            keys = ("loss", "reward_margin", "reward_accuracy", "zero_variance_share")
            # a log emptied or deleted since (the state file resumed without it): say so, not an empty line
            shown = "  ".join(f"{k} {last[k]:.4g}" for k in keys if k in last) or "none logged"
            print(f"aligned checkpoint (EMA weights) -> {path}\n  log {cfg.log_path}\n  last step: {shown}")
