"""Session 26 review of the command line as a contract: an impossible flag value refused before any work starts,
naming the flag; ``--json`` one strict document."""

from __future__ import annotations

import pytest

from hmrcritic.cli import main


@pytest.mark.parametrize("flags, needle", [
    (["--judge", "nosuch"], "judge 'nosuch' is unknown"),
    (["--max-reflections", "-1"], "max_reflections (--max-reflections)"),
])
def test_critique_refuses_a_bad_agent_flag_before_reading_its_input(flags, needle, tmp_path, monkeypatch, capsys):
    """``critique --scene test:0 --judge nosuch`` (or ``--max-reflections -1``) generated the scene's split on a
    fresh home (minutes at full size) and sampled the hypotheses, and only then said the flag was wrong."""
    monkeypatch.setenv("HMRCRITIC_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("HMRCRITIC_SPLIT_SIZE_SCALE", "0.003")
    rc = main(["critique", "--scene", "test:0", "-n", "2", "--no-render", *flags, "--out", str(tmp_path / "c")])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.startswith("error:") and len(err.strip().splitlines()) == 1 and needle in err, err
    assert not (tmp_path / "data").exists(), "the split was generated before the flag was refused"
    assert not (tmp_path / "c").exists()


@pytest.mark.parametrize("command", ["learning-curve", "explore-eval"])
def test_a_refused_curve_or_evaluation_leaves_no_empty_out_folder(command, tmp_path, monkeypatch, capsys):
    """``learning-curve --out lc`` made ``lc`` (and ``explore-eval --out new/x.json`` made ``new``) before the
    memory was checked: refused, the command left an empty folder behind."""
    monkeypatch.setenv("HMRCRITIC_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("HMRCRITIC_SPLIT_SIZE_SCALE", "0.003")
    afile = tmp_path / "afile"
    afile.write_text("not a memory")
    out = tmp_path / "new" / ("lc" if command == "learning-curve" else "x.json")
    rc = main([command, "--memory-dir", str(afile), "--out", str(out), "-n", "2"])
    err = capsys.readouterr().err
    assert rc == 2 and str(afile) in err, err
    assert not (tmp_path / "new").exists(), "an empty --out folder was left behind"
    assert afile.read_text() == "not a memory"


def test_made_folder_keeps_what_a_failed_block_wrote(tmp_path):
    """Only empty folders it made go: a run that wrote something before failing (an interrupted curve) keeps it."""
    from hmrcritic.commands import made_folder

    with pytest.raises(KeyboardInterrupt), made_folder(tmp_path / "a" / "b") as folder:
        (folder / "learning_curve.json").write_text("{}")
        raise KeyboardInterrupt
    assert (tmp_path / "a" / "b" / "learning_curve.json").is_file()
    with pytest.raises(RuntimeError), made_folder(tmp_path / "c" / "d"):
        raise RuntimeError
    assert not (tmp_path / "c").exists() and tmp_path.is_dir()


def test_sample_refuses_a_file_as_out_before_generating_the_split(tmp_path, monkeypatch, capsys):
    """``sample --scene test:0 --out afile`` generated the test split and loaded the model, then failed making the
    folder ("File exists: afile"); now it is refused first, in ``critique``'s words."""
    monkeypatch.setenv("HMRCRITIC_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("HMRCRITIC_SPLIT_SIZE_SCALE", "0.003")
    afile = tmp_path / "afile"
    afile.write_text("x")
    for out in (afile, afile / "sub"):
        rc = main(["sample", "--scene", "test:0", "-n", "2", "--steps", "2", "--no-render", "--out", str(out)])
        err = capsys.readouterr().err
        assert rc == 2 and err.startswith("error: --out ") and "is a file" in err, err
    assert not (tmp_path / "data").exists(), "the split was generated before --out was refused"
    assert afile.read_text() == "x"


def test_demo_refuses_a_file_as_out_before_generating_the_split(tmp_path, monkeypatch, capsys):
    """``demo --out afile`` generated the test split first and then failed as "File exists: afile"."""
    monkeypatch.setenv("HMRCRITIC_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("HMRCRITIC_SPLIT_SIZE_SCALE", "0.003")
    afile = tmp_path / "afile"
    afile.write_text("x")
    rc = main(["demo", "--scenes", "1", "-n", "2", "--explore-rounds", "0", "--out", str(afile)])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: --out ") and "is a file" in err, err
    assert not (tmp_path / "data").exists(), "the split was generated before --out was refused"


def test_memory_export_under_a_file_is_refused_before_the_memory_is_opened(tmp_path, monkeypatch, capsys):
    """``memory export notes.txt/mem.json`` on a fresh home created and seeded the default memory, then failed
    writing ("File exists: notes.txt"); now it is refused first and nothing is made."""
    monkeypatch.setenv("HMRCRITIC_MEMORY", str(tmp_path / "memory"))
    afile = tmp_path / "notes.txt"
    afile.write_text("x")
    rc = main(["memory", "export", str(afile / "mem.json")])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: memory export: ") and "is a file" in err, err
    assert not (tmp_path / "memory").exists(), "the default memory was created for a refused export"
    assert afile.read_text() == "x"


def _run_encoded(args: list[str], tmp_path, encoding: str):
    """``hmrcritic ARGS`` with a stdout that is not UTF-8 (``ascii``: what ``LC_ALL=C PYTHONUTF8=0`` gives an old
    cron or service; ``latin-1``: a Latin-1 locale), stdout and stderr piped apart."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "HMRCRITIC_HOME": str(tmp_path / "home"), "HMRCRITIC_SPLIT_SIZE_SCALE": "0.003",
           "PYTHONIOENCODING": encoding}
    for var in ("HMRCRITIC_DATA", "HMRCRITIC_RUNS", "HMRCRITIC_CACHE", "HMRCRITIC_MEMORY", "HMRCRITIC_CHROMA_URL"):
        env.pop(var, None)
    return subprocess.run([sys.executable, "-m", "hmrcritic.cli", *args], capture_output=True, env=env, cwd=tmp_path,
                          timeout=600)


def _strict(raw: bytes):
    import json

    def refuse(token):
        raise ValueError(f"not JSON: {token}")

    return json.loads(raw.decode("utf-8"), parse_constant=refuse)


def test_critique_json_is_ascii_on_a_latin1_stdout(tmp_path):
    """``critique --group-id café --json`` printed pydantic's JSON text, "é" as the character: a Latin-1 stdout wrote
    it as the byte 0xE9, and the document was not UTF-8 (RFC 8259), so a JSON reader refused it."""
    r = _run_encoded(["critique", "--scene", "test:0", "-n", "2", "--no-render", "--group-id", "café", "--json",
                    "--out", str(tmp_path / "c")], tmp_path, "latin-1")
    assert r.returncode == 0, r.stderr.decode(errors="replace")
    assert _strict(r.stdout)["group_id"] == "café"


def test_export_validate_json_parses_on_an_ascii_stdout(tmp_path):
    """``export validate --json`` (and ``export --json``) on an ASCII stdout: a dataset folder named ``données`` came
    out as ``donn\\xe9es`` (the stream's backslashreplace), which is no JSON escape: the document did not parse."""
    from test_finetune import write_dataset

    data = write_dataset(tmp_path / "données")
    r = _run_encoded(["export", "validate", str(data), "--json"], tmp_path, "ascii")
    assert r.returncode == 0, r.stderr.decode(errors="replace")
    assert _strict(r.stdout)["path"] == str(data)
