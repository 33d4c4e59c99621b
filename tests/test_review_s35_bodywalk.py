"""Session 35: `body`, `data` and `sample` walked as a new user (a fresh home), and what that walk found.

- ``body export-obj x`` wrote an OBJ named ``x`` (no extension), ``export-obj mesh.ply`` wrote OBJ text into a .ply,
  and ``export-obj SMPL_NEUTRAL.pkl`` replaced the user's body model with a mesh; now ``.obj`` is added to a name
  without an extension and another extension is refused before anything is loaded or written.
- ``data info`` printed a manifest's scene count when its shards held another (``sample --scene`` and ``evaluate``
  read the shards'); now refused, naming the command that regenerates the split.
- ``data generate --n 8`` replaced a split that every later command reads with no word of it; now a note says the
  split is not its default size (text output, stderr), and ``data info`` repeats it.
"""

from __future__ import annotations

import json

import pytest

from hmrcritic.cli import main


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def _is_template_obj(path, body) -> bool:
    lines = path.read_text().splitlines()
    return (lines[0].startswith("# hmrcritic body model")
            and sum(line.startswith("v ") for line in lines) == body.num_vertices
            and sum(line.startswith("f ") for line in lines) == len(body.faces))


# ---------------------------------------------------------------------------------------------- body export-obj
def test_export_obj_writes_the_name_given_or_adds_obj_to_a_bare_name(tmp_path, capsys, body):
    """A name ending in .obj (any case) is written as given; ``mesh`` is written as ``mesh.obj`` and says so (it
    was written as ``mesh``, a file no mesh viewer offered as one); an existing .obj is replaced."""
    assert main(["body", "export-obj", str(tmp_path / "x.obj")]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {tmp_path / 'x.obj'}"
    assert _is_template_obj(tmp_path / "x.obj", body)
    assert main(["body", "export-obj", str(tmp_path / "UPPER.OBJ")]) == 0
    assert _is_template_obj(tmp_path / "UPPER.OBJ", body)
    capsys.readouterr()

    assert main(["body", "export-obj", str(tmp_path / "mesh")]) == 0
    out = capsys.readouterr().out
    assert f"wrote {tmp_path / 'mesh.obj'} (.obj added to {tmp_path / 'mesh'})" in out, out
    assert _is_template_obj(tmp_path / "mesh.obj", body) and not (tmp_path / "mesh").exists()

    stale = tmp_path / "stale.obj"
    stale.write_text("old\n")
    assert main(["body", "export-obj", str(stale)]) == 0
    assert _is_template_obj(stale, body)


@pytest.mark.parametrize("name", ["mesh.ply", "SMPL_NEUTRAL.pkl", "x."])
def test_export_obj_refuses_another_extension_and_leaves_the_file_alone(name, tmp_path, capsys):
    """OBJ text in a .ply is a file its readers reject; ``export-obj SMPL_NEUTRAL.pkl`` (a slip for ``body info
    --body-model``) replaced the body model itself."""
    target = tmp_path / name
    if name.endswith(".pkl"):
        target.write_bytes(b"the user's own SMPL file")
    assert main(["body", "export-obj", str(target)]) == 2
    err = _one_line_error(capsys)
    assert "is written as a Wavefront .obj; name it .obj (e.g." in err and ".obj)" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ([name] if name.endswith(".pkl") else [])
    if name.endswith(".pkl"):
        assert target.read_bytes() == b"the user's own SMPL file"


def test_export_obj_refuses_a_folder_given_or_reached_by_adding_obj(tmp_path, capsys):
    (tmp_path / "meshes.obj").mkdir()
    assert main(["body", "export-obj", str(tmp_path)]) == 2
    assert "is a folder; give a file name" in _one_line_error(capsys)
    assert main(["body", "export-obj", str(tmp_path / "meshes")]) == 2
    err = _one_line_error(capsys)
    assert f"{tmp_path / 'meshes.obj'} (.obj added to {tmp_path / 'meshes'}) is a folder" in err, err


def test_export_template_obj_api_returns_the_file_it_wrote(tmp_path, body):
    from hmrcritic.errors import InputError
    from hmrcritic.hmr.body import export_template_obj

    assert export_template_obj(body, tmp_path / "api") == tmp_path / "api.obj"
    assert _is_template_obj(tmp_path / "api.obj", body)
    with pytest.raises(InputError, match="name it .obj"):
        export_template_obj(body, tmp_path / "api.stl")
    assert not (tmp_path / "api.stl").exists()


# ------------------------------------------------------------------------------------------------------- data
def test_data_info_refuses_a_manifest_count_its_shards_do_not_hold(tmp_path, monkeypatch, capsys):
    """A manifest saying 4 scenes over shards of 3: ``data info`` printed "n: 4", exit 0, while ``sample --scene
    test:3`` said the split has 3 scenes."""
    monkeypatch.setenv("HMRCRITIC_DATA", str(tmp_path / "data"))
    assert main(["data", "generate", "--split", "test", "--n", "3"]) == 0
    capsys.readouterr()
    manifest = tmp_path / "data" / "test" / "manifest.json"
    m = json.loads(manifest.read_text())
    manifest.write_text(json.dumps({**m, "n": 4}))
    assert main(["data", "info", "--split", "test"]) == 2
    err = _one_line_error(capsys)
    assert "says 4 scenes but its shards hold 3; regenerate the split: hmrcritic data generate --split test --n 3" \
        in err, err
    manifest.write_text(json.dumps(m))
    assert main(["data", "info", "--split", "test", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["n"] == 3


def test_data_generate_and_info_note_a_split_smaller_than_its_default(tmp_path, monkeypatch, capsys):
    """``data generate --split test --n 3`` replaced the split ``evaluate`` and ``sample --scene`` read (a small
    train split: the one the built-in judge's pose prior is fitted on), and nothing said so then or later."""
    from hmrcritic.hmr.data import default_size

    monkeypatch.setenv("HMRCRITIC_DATA", str(tmp_path / "data"))
    assert main(["data", "generate", "--split", "test", "--n", "3"]) == 0
    note = f"note: split test holds 3 scenes, not its default {default_size('test'):,}"
    assert note in capsys.readouterr().err
    assert main(["data", "info", "--split", "test"]) == 0
    assert note in capsys.readouterr().err
    assert main(["data", "info", "--split", "test", "--json"]) == 0  # --json: stdout is JSON, and no note
    captured = capsys.readouterr()
    assert json.loads(captured.out)["n"] == 3 and "note:" not in captured.err


def test_a_train_split_too_small_for_the_pose_prior_is_said_when_generated(tmp_path, monkeypatch, capsys):
    """README: a train split generated with ``--n`` under 50 fails every builtin critique; ``data generate`` made one
    without a word, and the failure came at the first critique."""
    from hmrcritic.agent.prior import PRIOR_MIN_POSES

    monkeypatch.setenv("HMRCRITIC_DATA", str(tmp_path / "data"))
    small = PRIOR_MIN_POSES - 1
    assert main(["data", "generate", "--split", "train", "--n", str(small)]) == 0
    err = capsys.readouterr().err
    assert f"needs {PRIOR_MIN_POSES}: every builtin critique fails on {small}" in err, err


# ------------------------------------------------------------------------------------- HMRCRITIC_BODY_MODEL
@pytest.mark.parametrize("content", [None, b"not a model"])
def test_a_bad_body_model_from_the_variable_names_the_variable(content, tmp_path, monkeypatch, capsys):
    """``HMRCRITIC_BODY_MODEL`` left exported (a file since moved): ``body info`` — given no body model — said "body
    model file not found: SMPL.pkl", sending the user to look for that name in their command."""
    bad = tmp_path / "SMPL_NEUTRAL.pkl"
    if content is not None:
        bad.write_bytes(content)
    monkeypatch.setenv("HMRCRITIC_BODY_MODEL", str(bad))
    assert main(["body", "info"]) == 2
    err = _one_line_error(capsys)
    assert err.startswith("error: HMRCRITIC_BODY_MODEL: ") and str(bad) in err, err
    assert err.endswith("or unset HMRCRITIC_BODY_MODEL to use the built-in mannequin"), err
    assert main(["body", "info", "--body-model", str(bad)]) == 2  # a file given on the command line: as before
    assert "HMRCRITIC_BODY_MODEL:" not in _one_line_error(capsys)



def test_data_generate_help_states_the_split_sizes_the_code_uses():
    """The ``--n`` help names each split's default size (the CLI module does not import hmr/data.py to say it):
    kept equal to ``SPLITS`` here."""
    import typer

    from hmrcritic.cli import app
    from hmrcritic.hmr.data import SPLITS

    generate = typer.main.get_command(app).commands["data"].commands["generate"]
    help_n = next(p.help for p in generate.params if p.name == "n")
    sizes = ", ".join(f"{name} {size:,}" for name, (size, _, _) in SPLITS.items())
    assert f"(default: the split's size: {sizes})" in help_n, help_n
