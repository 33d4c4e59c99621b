"""``hmrcritic data``: generate and inspect the synthetic scene splits (logic lives in hmr/data.py)."""

from __future__ import annotations

import json

import typer


def register(app: typer.Typer) -> None:
    data_app = typer.Typer(help="Synthetic scene splits (train / wild / test).", no_args_is_help=True)

    @data_app.command("generate")
    def generate(
        split: str = typer.Option(..., "--split", help="train, wild or test."),
        n: int = typer.Option(None, "--n", help="Number of scenes (default: the split's size: train 20,000, wild "
                              "2,000, test 1,000). A smaller split is the one every command reading it uses "
                              "until it is generated again."),
        seed: int = typer.Option(None, "--seed", help="Override the split's fixed seed.", min=0, max=2**32 - 1),
        render: bool = typer.Option(False, "--render", help="Also render images and masks (slow)."),
        as_json: bool = typer.Option(False, "--json", help="Print the manifest as JSON."),
    ) -> None:
        """Generate a split into the data folder (replacing an existing one atomically)."""
        from hmrcritic.errors import InputError
        from hmrcritic.hmr.data import MAX_SCENES, generate_split, load_split

        if n is not None and not 1 <= n <= MAX_SCENES:
            raise InputError(f"data generate: --n must be in 1..{MAX_SCENES:,} scenes (they are held in memory while "
                             f"generating, about 1.3 KB each), got {n}")
        folder = generate_split(split, n=n, seed=seed, render_images=render, quiet=as_json)
        info = load_split(split, root=folder.parent, generate=False).manifest
        if as_json:
            typer.echo(json.dumps(_summary(info, folder)))
        else:
            secs = f"{info['seconds']} s, {info['cpu_seconds']} s CPU"
            typer.echo(f"split {split}: {info['n']} scenes in {folder} ({secs})")
            if info.get("images") is True:  # --render said nothing of where its images went (the slow part)
                typer.echo(f"images in {folder / 'images'}, masks in {folder / 'masks'} (PNG, one per scene id)")
            _note_size(split, info.get("n"))

    @data_app.command("info")
    def info(
        split: str = typer.Option(..., "--split", help="train, wild or test."),
        as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
    ) -> None:
        """Summarise a generated split (size, seed, labels, visibility)."""
        import numpy as np

        from hmrcritic.hmr.data import load_split
        from hmrcritic.hmr.poses import POSE_CATEGORIES

        ss = load_split(split, generate=False)
        _verify_files(ss.manifest, ss.folder)
        _check_count(ss)
        summary = _summary(ss.manifest, ss.folder)
        kp = ss.arrays(["keypoints"])["keypoints"]
        summary["visible_fraction"] = round(float((kp[..., 2] > 0).mean()), 4)
        labels = ss.eval_labels()
        counts = np.bincount(labels["category"], minlength=len(POSE_CATEGORIES))
        summary["categories"] = {c: int(k) for c, k in zip(POSE_CATEGORIES, counts, strict=True)}
        if as_json:
            typer.echo(json.dumps(summary))
            return
        for key, value in summary.items():
            typer.echo(f"{key:>18}: {value}")
        _note_size(split, summary["n"])

    app.add_typer(data_app, name="data")


def _summary(manifest: dict, folder) -> dict:
    keys = (
        "split",
        "n",
        "seed",
        "preset",
        "has_labels",
        "body_model",
        "image_size",
        "images",
        "generator_version",
    )
    out = {k: manifest.get(k) for k in keys}
    out["folder"] = str(folder)
    out["shards"] = len(manifest.get("shards", []))
    out["labels_eval"] = bool(manifest.get("labels_eval"))
    return out


def _verify_files(manifest: dict, folder) -> None:
    """Each shard (and wild's labels file) against its manifest (see :func:`hmrcritic.hmr.data.verify_split_files`,
    which training runs too)."""
    from hmrcritic.hmr.data import verify_split_files

    verify_split_files(manifest, folder)


def _check_count(ss) -> None:
    """Refuse a manifest whose scene count is not its shards' total: ``data info`` printed the manifest's ``n``
    (a hand-edited or mixed-up manifest's 9) while ``sample --scene`` and ``evaluate`` read the shards' 8 scenes."""
    from hmrcritic.errors import AssetError
    from hmrcritic.hmr.data import _regenerate_command

    n = ss.manifest.get("n")
    if n != len(ss):
        shown = json.dumps(n)[:20] if n is not None else "no count"
        raise AssetError(f"{ss.folder / 'manifest.json'}: says {shown} scenes but its shards hold {len(ss)}; "
                         f"regenerate the split: {_regenerate_command({**ss.manifest, 'n': len(ss)})}")


def _note_size(split: str, n) -> None:
    """Say (stderr, text output only) when a split is not its default size: ``data generate --split test --n 8``
    replaced the test split that ``evaluate``, ``sample --scene`` and ``critique`` read (and a small train split
    is what the built-in judge's pose prior and ``train-base`` learn from), with no word of it afterwards."""
    from hmrcritic.errors import HMRCriticError
    from hmrcritic.hmr.data import default_size

    try:
        size = default_size(split)
    except HMRCriticError:  # a bad HMRCRITIC_SPLIT_SIZE_SCALE: the note is not worth failing a command that worked
        return
    if isinstance(n, int) and n != size:
        prior = ""
        if split == "train":  # the built-in judge's scores follow the split (agent/prior.py fits on its poses)
            from hmrcritic.agent.prior import PRIOR_MIN_POSES

            prior = (" (the built-in judge's pose prior is fitted on it" + (
                f", and needs {PRIOR_MIN_POSES}: every builtin critique fails on {n}" if n < PRIOR_MIN_POSES
                else "") + ")")
        typer.echo(f"note: split {split} holds {n:,} scenes, not its default {size:,}; every command that reads it "
                   f"uses these{prior} until `hmrcritic data generate --split {split}` makes the full one", err=True)
