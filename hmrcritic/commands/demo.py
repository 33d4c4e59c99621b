"""``hmrcritic demo``: the main job on the embedded default (see hmrcritic/demo.py)."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command("demo")
    def demo(
        out: Path = typer.Option(Path("out/demo"), "--out", help="Output folder (reports, renders, memory)."),
        scenes: int = typer.Option(4, "--scenes", min=1, help="Held-out test scenes to run."),
        num_generations: int = typer.Option(16, "-n", "--num-generations", min=2, help="Hypotheses per scene."),
        explore_rounds: int = typer.Option(2, "--explore-rounds", min=0, help="Exploration batches before scoring."),
        explore_batch: int = typer.Option(6, "--explore-batch", min=1, help="Labelled train groups per batch."),
        seed: int = typer.Option(0, "--seed", min=0, max=2**32 - 1),
        json_out: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
    ) -> None:
        """Sample hypothesis groups, learn critic memory on train, critique held-out scenes, report metrics.

        Example: hmrcritic demo --scenes 4 -n 16 --out out/demo
        """
        import json

        from hmrcritic.demo import run_demo

        say = (lambda s: None) if json_out else typer.echo
        result = run_demo(out, scenes, num_generations, explore_rounds, explore_batch, seed, say=say)
        if json_out:
            typer.echo(json.dumps(result.summary(), indent=2))
