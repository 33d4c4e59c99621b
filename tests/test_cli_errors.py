"""Bad input on the command line: one line that names the problem, exit code 2, nothing left behind.

Each case came from an audit that ran the CLI with wrong values; before the fixes they hung, exited 0 on
a real error, or printed a raw Python exception (FileExistsError, a multi-line pydantic dump, …)."""

from __future__ import annotations

import pytest

from hmrcritic.cli import main


@pytest.fixture()
def places(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    folder = tmp_path / "folder"
    folder.mkdir()
    binary = tmp_path / "rand.json"
    binary.write_bytes(bytes(range(256)) * 4)
    return {"afile": str(afile), "folder": str(folder), "binary": str(binary), "tmp": tmp_path}


CASES = {
    "setting out of range": (["critique", "--scene", "test:1", "--no-render", "--max-reflections", "-3", "--fresh",
                              "--out", "{tmp}/c"], "max_reflections"),
    "file where a folder goes": (["memory", "stats", "--memory-dir", "{afile}"], "a file is where a folder"),
    "too many hypotheses": (["sample", "--scene", "test:0", "-n", "5000", "--no-render", "--out", "{tmp}/s"],
                            "1..1024"),
    "NaN eta": (["sample", "--scene", "test:0", "-n", "2", "--no-render", "--eta", "nan", "--out", "{tmp}/s"],
                "eta must be a finite"),
    "unknown split for explore": (["explore", "--split", "bogus", "--rounds", "1", "--memory-dir", "{tmp}/xmem"],
                                  "unknown split"),
    "explore with one hypothesis": (["explore", "--num-generations", "1", "--rounds", "1", "--memory-dir",
                                     "{tmp}/xmem"], "≥ 2 hypotheses"),
    "evaluate --limit 0": (["evaluate", "--limit", "0", "-n", "2"], "--limit must be ≥ 1"),
    "evaluate on a device torch lacks": (["evaluate", "--limit", "1", "-n", "2", "--device", "tpu"], "device"),
    "memory import of binary": (["memory", "import", "{binary}", "--memory-dir", "{tmp}/m"], "not readable JSON"),
    "memory export into a folder": (["memory", "export", "{folder}", "--memory-dir", "{tmp}/m"], "is a folder"),
    "export with 0 DDIM steps": (["export", "--split", "wild", "--num-generations", "4", "--limit", "2", "--steps",
                                  "0", "--out", "{tmp}/e"], "DDIM steps"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_cli_input_is_one_clear_line(case, places, capsys):
    argv, needle = CASES[case]
    rc = main([a.format(**places) for a in argv])
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert err.startswith("error:") and len(err.splitlines()) == 1, err
    assert needle in err
    assert "Traceback" not in err
    if case.startswith("explore") or case == "unknown split for explore":
        assert not (places["tmp"] / "xmem").exists()  # refused before the memory folder was made
    if case == "export with 0 DDIM steps":
        assert not (places["tmp"] / "e").exists()


def test_ambiguous_trace_id_says_so(capsys):
    from hmrcritic.agent.trace import traces_dir

    traces_dir().mkdir(parents=True, exist_ok=True)
    for name in ("20990101-000000-000001-ambig-a", "20990101-000000-000002-ambig-b"):
        (traces_dir() / f"{name}.jsonl").write_text("{}\n")
    try:
        assert main(["trace", "20990101-000000"]) == 2
        assert "ambiguous" in capsys.readouterr().err
    finally:
        for p in traces_dir().glob("20990101-*.jsonl"):
            p.unlink()
