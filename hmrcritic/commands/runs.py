"""``hmrcritic runs ...``: how much the runs folder holds (checkpoints, run folders, traces) and pruning it."""

from __future__ import annotations

import json
from pathlib import Path

import typer

runs_app = typer.Typer(
    help="The runs folder: checkpoint threads, run folders, traces, memory snapshots, evaluation caches.\n\n"
    "Examples: `hmrcritic runs stats`, `hmrcritic runs prune --older-than 7 --dry-run`.",
    no_args_is_help=True,
)


def _mb(n: int) -> str:
    return f"{n / 1e6:,.1f} MB"


# what each part of the runs folder is, in README's words (``--json`` keeps the folder names as keys). The text
# printed the folder names: "removed: 2 groups, …, 0 frozen-memory" read as the critic's memory being pruned
# (which prune never touches), "1 groups" as a typo, and neither matched README's "checkpoint threads, run folders,
# traces, memory snapshots, evaluation caches"
_PARTS = {"checkpoints": ("checkpoint thread", "checkpoint threads"), "groups": ("run folder", "run folders"),
          "traces": ("trace", "traces"), "frozen-memory": ("memory snapshot", "memory snapshots"),
          "evaluate": ("evaluation cache", "evaluation caches")}


def _part(key: str, count: int | None = None) -> str:
    """The words for part ``key`` of the runs folder (``count`` of them, when given; an unknown key as it is)."""
    one, many = _PARTS.get(key, (key, key))
    return many if count is None else f"{count} {one if count == 1 else many}"


def _parts_text(counts: dict[str, int], nonzero: bool = False) -> str:
    """``counts`` (a part's key: how many) in words, in the order ``runs stats`` lists the parts (a prune listed run
    folders before checkpoint threads, stats the other way round); ``nonzero``: only the parts with any."""
    keys = [k for k in _PARTS if k in counts] + [k for k in counts if k not in _PARTS]
    return ", ".join(_part(k, counts[k]) for k in keys if counts[k] or not nonzero)


def _runs_root():
    """The runs folder, refused when a file stands where it (or a folder above it) goes.

    ``HMRCRITIC_RUNS`` naming a file (a typo, a log file) was counted as an empty runs folder: ``runs stats`` said
    0 entries and ``runs prune`` "removed: 0 …", exit 0, while every critique failed on that file."""
    from hmrcritic import config
    from hmrcritic.errors import InputError

    root = probe = config.runs_dir()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise InputError(f"runs folder {root}: {probe} is a file, not a folder (check HMRCRITIC_RUNS / "
                         "HMRCRITIC_HOME)")
    return root


@runs_app.command("stats")
def stats(as_json: bool = typer.Option(False, "--json", help="Machine-readable output.")) -> None:
    """Size and count of each part of the runs folder."""
    from hmrcritic.agent.runs import runs_usage

    use = runs_usage(_runs_root())
    if as_json:
        typer.echo(json.dumps(use, indent=2))
        return
    # absolute: a relative HMRCRITIC_RUNS printed "runs folder rel", which says nothing once the shell is elsewhere
    typer.echo(f"runs folder {Path(use['root']).absolute()}: {_mb(use['total_bytes'])}")
    for name, part in use["parts"].items():
        noun = "entry" if part["count"] == 1 else "entries"
        typer.echo(f"  {_part(name):<20}{part['count']:>8} {noun:<8} {_mb(part['bytes']):>14}")


@runs_app.command("prune")
def prune(
    older_than: float = typer.Option(7.0, "--older-than", help="Remove what was last touched more than this many "
                                     "days ago (0 = everything)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Only count what would be removed."),
    yes: bool = typer.Option(False, "--yes", help="Do not ask for confirmation."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Remove old checkpoint threads (with their run folders), traces, memory snapshots and evaluation caches,
    then compact the checkpoint database. The critic's memory itself is never touched."""
    import math

    from hmrcritic.agent.runs import prune_runs
    from hmrcritic.errors import InputError

    # before the question: "Remove runs older than -1 days?" was asked and then refused; and --older-than inf
    # (remove nothing) printed "older_than_days": Infinity, which is not JSON
    if not (math.isfinite(older_than) and older_than >= 0):
        raise InputError(f"--older-than must be a number of days ≥ 0 (0 = everything), got {older_than:g}")
    root = _runs_root()
    if not dry_run and not yes:  # asked on stderr: stdout is for the result (--json)
        from hmrcritic.commands import confirm_or_stop

        # what would go, counted first: "Remove runs older than 0 days from DIR?" gave nothing to decide on (a
        # user answered for a folder of unknown size, or was asked about an empty one); the count is of now
        would = prune_runs(older_than_days=older_than, root=root, dry_run=True)
        what = _parts_text(would["removed"], nonzero=True)
        freed = would["bytes_before"] - would["bytes_after"]
        confirm_or_stop(f"Remove runs older than {older_than:g} days from {root} "
                        + (f"({what}: {'about ' + _mb(freed) if freed >= 5e4 else 'under 0.1 MB'})?" if what
                           else "(none found now)?"), "nothing removed")  # "about 0.0 MB" read as nothing
    out = prune_runs(older_than_days=older_than, root=root, dry_run=dry_run)
    if as_json:
        typer.echo(json.dumps(out, indent=2))
        return
    verb = "would remove" if dry_run else "removed"
    typer.echo(f"{verb}: {_parts_text(out['removed'])} (the critic's memory is never touched)")
    if dry_run:
        typer.echo(f"runs folder {_mb(out['bytes_before'])} -> about {_mb(out['bytes_after'])} (the files it would "
                   "remove; a prune also compacts the checkpoint database)")
    else:
        typer.echo(f"runs folder {_mb(out['bytes_before'])} -> {_mb(out['bytes_after'])}")
        # what stayed, and why: `--older-than 0` ("everything") beside a running critique left its run folder,
        # thread and trace without a word, and `runs stats` then showed them as if the prune had missed them
        from hmrcritic.agent.runs import runs_usage

        left = _parts_text({k: v["count"] for k, v in runs_usage(root)["parts"].items()}, nonzero=True)
        if left:
            why = ("written since, or held by a running command" if older_than == 0 else
                   f"newer than {older_than:g} days, or held by a running command")
            typer.echo(f"kept: {left} ({why})")


def register(app: typer.Typer) -> None:
    app.add_typer(runs_app, name="runs")
