"""``hmrcritic reproduce``: explore → export → finetune (every objective) → evaluate → results table."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command("reproduce")
    def reproduce_cmd(
        quick: bool = typer.Option(False, "--quick", help="Tiny preset (a couple of minutes; what the tests run)."),
        out: Path = typer.Option(None, help="Run folder (default: <runs>/reproduce-<preset>); re-run to resume."),
        model: Path = typer.Option(None, help="Base checkpoint (default: the shipped base model)."),
        set_: list[str] = typer.Option(None, "--set", metavar="KEY=VALUE",
                                       help="Override a preset field, KEY=VALUE (repeatable), "
                                       "e.g. --set lr=3e-4 --set objectives=gpa,dpo."),
        as_json: bool = typer.Option(False, "--json", help="Print the results as JSON (progress goes to stderr)."),
    ) -> None:
        """Run the paper's loop on the built-in data and write the main results table.

        Stages are cached in the run folder by a key of their inputs: a re-run skips finished stages, and a
        changed setting re-runs only what depends on it. Writes results.md, results.json and results.png.

        Examples:
          hmrcritic reproduce --quick
          hmrcritic reproduce --out runs/repro
          hmrcritic reproduce --out runs/repro --set lr=3e-4 --set steps=600 --json
        """
        from hmrcritic.alignment.reproduce import format_table, parse_overrides, reproduce

        res = reproduce("quick" if quick else "full", out_dir=out, model=model, overrides=parse_overrides(set_),
                        progress=True)
        if as_json:  # strict JSON: a round of the exploration that scored no group has a NaN mean
            from hmrcritic.commands import json_text

            print(json_text(res))
        else:
            print(format_table(res))
            print(f"results: {Path(res['out_dir']) / 'results.md'} (+ results.json, results.png)")
