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


def _one_line(fn, *args):
    """``fn(*args)`` with a user error's message kept on one line (some readers quote multi-line messages)."""
    from hmrcritic.errors import HMRCriticError

    try:
        return fn(*args)
    except HMRCriticError as exc:
        text = str(exc)
        if "\n" not in text:
            raise
        raise type(exc)(" ".join(text.split())) from None


@body_app.command("convert")
def convert(
    src: Path = typer.Argument(..., help="Official SMPL .pkl (with chumpy objects)."),
    dst: Path = typer.Argument(..., help="Output plain-numpy .pkl."),
) -> None:
    """Rewrite an official SMPL .pkl as plain numpy (no chumpy needed)."""
    from hmrcritic.errors import HMRCriticError, InputError
    from hmrcritic.hmr.body import convert_smpl_pkl

    if not src.expanduser().is_file():
        # the input's problem first: `convert /missing.pkl out.npz` said to rename the output, and once renamed,
        # that the input was not there; convert_smpl_pkl refuses a missing input before writing anything
        _one_line(convert_smpl_pkl, src, dst)
    from hmrcritic.commands import check_output_file

    dst_x = dst.expanduser()
    check_output_file(dst_x, "body convert: output")
    if dst_x.is_dir():
        raise InputError(f"body convert: output {dst} is a folder; give a file name (e.g. {dst / 'SMPL_NEUTRAL.pkl'})")
    if dst_x.suffix.lower() == ".npz":
        raise InputError(f"body convert: output {dst} is named .npz but the converted model is a pickle; name it "
                         ".pkl")
    if src.expanduser().is_file() and dst_x.exists() and dst_x.resolve() == src.expanduser().resolve():
        raise InputError(f"body convert: output {dst} is the input file; write the converted model beside it, "
                         "the official file stays as it is")
    out = _one_line(convert_smpl_pkl, src, dst)
    print(f"wrote {out}")
    # then loaded as the body model would be: a file that converts but cannot be used (a non-SMPL mesh without its
    # face vertex ids) is said now, not at the first sample that needs it
    import sys

    from hmrcritic.hmr.body import BodyModel, read_model_arrays

    try:
        BodyModel(read_model_arrays(out), name=str(out))
    except Exception as exc:  # noqa: BLE001 (smplx's own errors too: whatever stops the model loading)
        why = str(exc) if isinstance(exc, HMRCriticError) else f"{type(exc).__name__}: {exc}"
        print(f"warning: {out} does not load as a body model yet: {' '.join(why.split())}", file=sys.stderr)


@body_app.command("info")
def info(
    body_model: Path | None = _BODY_MODEL_OPT,
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Vertices, faces, joints, source file and standing height (betas = 0) of the body model."""
    from hmrcritic.hmr.body import body_info, load_body_model

    summary = body_info(_one_line(load_body_model, body_model))
    if as_json:
        print(json.dumps(summary, indent=2))
        return
    for key, value in summary.items():
        print(f"{key:>10}: {value}")


@body_app.command("export-obj")
def export_obj(
    out: Path = typer.Argument(..., help="Output .obj path (.obj is added to a name without an extension; another "
                               "extension is refused)."),
    body_model: Path | None = _BODY_MODEL_OPT,
) -> None:
    """Write the template mesh (zero pose, betas = 0) as a Wavefront .obj."""
    from hmrcritic.commands import check_output_file
    from hmrcritic.errors import InputError
    from hmrcritic.hmr.body import export_template_obj, load_body_model, obj_output_path

    what = "body export-obj: output"
    # the name as given first (a folder, a pipe: said as such), then the file actually written: `x` becomes
    # `x.obj`, which may itself be a folder or a special file; all before the body model is loaded
    given = out.expanduser()
    for path in (given, None):
        path = path or obj_output_path(out, what)
        shown = str(out) if path == given else f"{path} (.obj added to {out})"
        if path.is_dir():
            raise InputError(f"{what} {shown} is a folder; give a file name (e.g. {path / 'body.obj'})")
        check_output_file(path, what)
    written = export_template_obj(_one_line(load_body_model, body_model), path)
    added = "" if written == given else f" (.obj added to {out})"
    print(f"wrote {written}{added}")


def register(app: typer.Typer) -> None:
    app.add_typer(body_app, name="body")
