"""``hmrcritic data``: generate and inspect the synthetic scene splits (logic lives in hmr/data.py)."""

from __future__ import annotations

import json

import typer

# Scenes are built in memory before they are written (about 1.3 KB a scene, twice that at the peak): a million is
# 50× the train split and a few GB; an --n of 10**8 ran for minutes before the machine ran out of memory.
MAX_SCENES = 1_000_000


def register(app: typer.Typer) -> None:
    data_app = typer.Typer(help="Synthetic scene splits (train / wild / test).", no_args_is_help=True)

    @data_app.command("generate")
    def generate(
        split: str = typer.Option(..., "--split", help="train, wild or test"),
        n: int = typer.Option(None, "--n", help="number of scenes (default: the split's size)"),
        seed: int = typer.Option(None, "--seed", help="override the split's fixed seed", min=0, max=2**32 - 1),
        render: bool = typer.Option(False, "--render", help="also render images and masks (slow)"),
        as_json: bool = typer.Option(False, "--json", help="print the manifest as JSON"),
    ) -> None:
        """Generate a split into the data folder (replacing an existing one atomically)."""
        from hmrcritic.errors import InputError
        from hmrcritic.hmr.data import generate_split, load_split

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

    @data_app.command("info")
    def info(
        split: str = typer.Option(..., "--split", help="train, wild or test"),
        as_json: bool = typer.Option(False, "--json", help="machine-readable output"),
    ) -> None:
        """Summarise a generated split (size, seed, labels, visibility)."""
        import numpy as np

        from hmrcritic.hmr.data import load_split
        from hmrcritic.hmr.poses import POSE_CATEGORIES

        ss = load_split(split, generate=False)
        _verify_files(ss.manifest, ss.folder)
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
    """Each shard (and wild's labels file) against the sha256 its manifest recorded: a file truncated, damaged or
    replaced since generation is named, instead of counted and summarised as if it were whole."""
    from pathlib import Path

    from hmrcritic.errors import AssetError
    from hmrcritic.io import sha256_file

    entries = list(manifest.get("shards") or [])
    if isinstance(manifest.get("labels_eval"), dict):
        entries.append(manifest["labels_eval"])
    for entry in entries:
        if not isinstance(entry, dict) or "file" not in entry or "sha256" not in entry:
            continue  # the manifest reader has already refused a manifest without file names
        path = Path(folder) / str(entry["file"])
        if not path.is_file():
            why = "is missing"
        elif sha256_file(path) != entry["sha256"]:
            why = "does not match its manifest (sha256 differs: truncated, damaged or replaced)"
        else:
            continue
        raise AssetError(f"{path} {why}; regenerate the split: hmrcritic data generate --split {manifest.get('split')}")
    if manifest.get("images") and isinstance(manifest.get("n"), int):
        # the images hold no sha256 in the manifest, but a deleted images folder went unsaid ("images: True"),
        # while every sample read afterwards quietly had no image to overlay or align against
        found = sum(1 for f in (Path(folder) / "images").glob("*.png")) if (Path(folder) / "images").is_dir() else 0
        if found < manifest["n"]:
            raise AssetError(f"{Path(folder) / 'images'}: {found} of the split's {manifest['n']} images are there; "
                             f"regenerate the split: hmrcritic data generate --split {manifest.get('split')}")
