"""``hmrcritic body``: convert an official SMPL file, describe the body model in use, export its template."""

from __future__ import annotations

import json
from pathlib import Path

import typer

body_app = typer.Typer(
    help="The body model: SMPL file conversion, info, template export.", no_args_is_help=True
)

_BODY_MODEL_OPT = typer.Option(
    None, "--body-model", help="SMPL-layout .pkl/.npz (default: HMRCRITIC_BODY_MODEL, else the mannequin)."
)


@body_app.command("convert")
def convert(
    src: Path = typer.Argument(..., help="Official SMPL .pkl (with chumpy objects)."),
    dst: Path = typer.Argument(..., help="Output plain-numpy .pkl."),
) -> None:
    """Rewrite an official SMPL .pkl as plain numpy (no chumpy needed)."""
    from hmrcritic.hmr.body import convert_smpl_pkl

    out = convert_smpl_pkl(src, dst)
    print(f"wrote {out}")


@body_app.command("info")
def info(
    body_model: Path | None = _BODY_MODEL_OPT,
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Vertices, faces, joints, source file and standing height (betas = 0) of the body model."""
    from hmrcritic.hmr.body import body_info, load_body_model

    summary = body_info(load_body_model(body_model))
    if as_json:
        print(json.dumps(summary, indent=2))
        return
    for key, value in summary.items():
        print(f"{key:>10}: {value}")


@body_app.command("export-obj")
def export_obj(
    out: Path = typer.Argument(..., help="Output .obj path."),
    body_model: Path | None = _BODY_MODEL_OPT,
) -> None:
    """Write the template mesh (zero pose, betas = 0) as a Wavefront .obj."""
    from hmrcritic.hmr.body import export_template_obj, load_body_model

    path = export_template_obj(load_body_model(body_model), out)
    print(f"wrote {path}")


def register(app: typer.Typer) -> None:
    app.add_typer(body_app, name="body")
