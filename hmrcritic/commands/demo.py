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
        # the calibration is fitted whatever the rounds (explore fits one where the memory has none): "0" read as
        # the starter memory, which it is not
        explore_rounds: int = typer.Option(
            2, "--explore-rounds", min=0,
            help="Exploration batches before scoring. The score calibration is fitted whatever the rounds (on the "
                 "32 train groups after the explored ones): 0 learns no rules but still calibrates, so it is not the "
                 "starter memory."),
        explore_batch: int = typer.Option(6, "--explore-batch", min=1, help="Labelled train groups per batch."),
        seed: int = typer.Option(0, "--seed", min=0, max=2**32 - 1,
                                 help="Sampling seed (exploration groups; scene i is sampled with seed + i)."),
        json_out: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
    ) -> None:
        """Sample hypothesis groups, learn critic memory on train, critique held-out scenes, report metrics.

        Example: hmrcritic demo --scenes 4 -n 16 --out out/demo
        """
        import json

        from hmrcritic import config
        from hmrcritic.demo import run_demo
        from hmrcritic.errors import InputError
        from hmrcritic.hmr.data import load_split
        from hmrcritic.hmr.diffusion import check_sampling_args

        # -n above the sampler's cap was refused by the exploration, after the demo had reset <out>/memory: a typo
        # wiped the memory the earlier demo's reports in <out> were scored with, then failed
        check_sampling_args(num_generations, steps=1)  # the demo has no --steps option: only the group size
        # the demo resets <out>/memory every run: with --out at the home folder that was the memory every other
        # command learns into and reads (explore, critique, export), wiped without a word
        if (out / "memory").resolve() == config.memory_dir().expanduser().resolve():
            raise InputError(f"demo: --out {out} would put the demo's memory at {config.memory_dir()}, the memory "
                             "the other commands use, which the demo's fresh start would wipe; give another "
                             "folder (e.g. --out out/demo)")
        from hmrcritic.io import check_out_folder

        # a file as --out failed making the folder only after the test split had been generated (first use)
        check_out_folder(out, "the demo's reports, renders and memory")
        # the test split may be smaller than --scenes (``data generate --split test --n 3``, a split size scale):
        # said now, not as an IndexError after the exploration and the first scenes have run
        available = len(load_split("test"))
        if scenes > available:
            raise InputError(f"demo: --scenes {scenes} is more than the test split holds ({available} scenes); "
                             f"use --scenes {available} or regenerate it: hmrcritic data generate --split test")

        say = (lambda s: None) if json_out else typer.echo
        result = run_demo(out, scenes, num_generations, explore_rounds, explore_batch, seed, say=say)
        if json_out:
            typer.echo(json.dumps(result.summary(), indent=2))
