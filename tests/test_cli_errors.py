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
    # the agent settings' upper bounds (session 25) hold for the flag as for the variables
    "setting above its bound": (["critique", "--scene", "test:1", "--no-render", "--max-reflections", "1000",
                                 "--fresh", "--out", "{tmp}/c"], "less than or equal to 100"),
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
    "--focal with a scene": (["sample", "--scene", "test:0", "--focal", "100", "--no-render", "--out", "{tmp}/s"],
                             "has its own camera"),
    "export with 0 DDIM steps": (["export", "--split", "wild", "--num-generations", "4", "--limit", "2", "--steps",
                                  "0", "--out", "{tmp}/e"], "DDIM steps"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_cli_input_is_one_clear_line(case, places, capsys):
    argv, needle = CASES[case]
    rc = main([a.format(**places) for a in argv])
    # the first-use notice ("generating synthetic split …") is information on stderr, not part of the error
    err = "\n".join(line for line in capsys.readouterr().err.strip().splitlines()
                    if not line.startswith("hmrcritic: generating synthetic split"))
    assert rc == 2, err
    assert err.startswith("error:") and len(err.splitlines()) == 1, err
    assert needle in err
    assert "Traceback" not in err
    if case.startswith("explore") or case == "unknown split for explore":
        assert not (places["tmp"] / "xmem").exists()  # refused before the memory folder was made
    if case == "export with 0 DDIM steps":
        assert not (places["tmp"] / "e").exists()


def test_usage_errors_show_usage_and_exit_2(capsys):
    """typer's own click copy raises its own exception classes: still a usage message and exit code 2."""
    assert main(["sample", "--scene", "test:0"]) == 2
    err = capsys.readouterr().err
    assert "Usage:" in err and "--out" in err and "Traceback" not in err and "--debug" not in err
    assert main(["sample", "--bogus-flag"]) == 2
    assert "No such option" in capsys.readouterr().err


def test_json_output_stays_parseable_when_a_split_is_generated(tmp_path, monkeypatch, capsys):
    """The first-use notice goes to stderr, so `--json` on stdout is JSON even on a fresh home."""
    import json

    monkeypatch.setenv("HMRCRITIC_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HMRCRITIC_SPLIT_SIZE_SCALE", "0.01")
    assert main(["sample", "--scene", "test:0", "-n", "2", "--steps", "2", "--no-render", "--json",
                 "--out", str(tmp_path / "s")]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["num_generations"] == 2 and "generating synthetic split" in captured.err


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


def test_unreadable_hypotheses_files_are_named_plainly(tmp_path):
    import numpy as np

    from hmrcritic.agent.api import load_hypotheses
    from hmrcritic.errors import InputError

    rand = tmp_path / "rand.npz"
    rand.write_bytes(bytes(range(256)) * 8)
    npy = tmp_path / "one.npz"
    with open(npy, "wb") as f:
        np.save(f, np.zeros((4, 69), np.float32))
    text = tmp_path / "text.npz"
    np.savez(text, global_orient=np.array([["a", "b", "c"]]), body_pose=np.zeros((1, 69)), betas=np.zeros((1, 10)),
             transl=np.zeros((1, 3)))
    cases = {rand: "not a readable .npz", npy: "single .npy array", text: "expected numbers",
             tmp_path: "is a folder"}
    for path, needle in cases.items():
        with pytest.raises(InputError) as info:
            load_hypotheses(path)
        assert needle in str(info.value) and "allow_pickle" not in str(info.value)


@pytest.mark.parametrize("argv,needle", [
    (["critique", "--scene", "test:0", "--hypotheses", "h.npz", "--model", "m.pt"], "not both"),
    (["critique", "--scene", "test:0", "--focal", "500", "--no-render"], "--focal is for a user image"),
    (["memory", "search", "  "], "give some text"),
    (["trace", "some-run", "--last"], "not both"),
])
def test_conflicting_or_empty_options_are_refused(argv, needle, capsys):
    assert main(argv) == 2
    assert needle in capsys.readouterr().err


def test_memory_import_refuses_another_schema(tmp_path, capsys):
    import json

    from hmrcritic.memory.store import EXPORT_FORMAT

    f = tmp_path / "future.json"
    f.write_text(json.dumps({"format": EXPORT_FORMAT, "schema": 99, "rules": [], "prototypes": []}))
    assert main(["memory", "import", str(f), "--memory-dir", str(tmp_path / "m")]) == 2
    assert "schema 99" in capsys.readouterr().err


def test_absurd_body_shapes_are_refused():
    import numpy as np

    from hmrcritic.agent.api import load_hypotheses
    from hmrcritic.errors import InputError

    hyps = {"global_orient": np.zeros((3, 3)), "body_pose": np.zeros((3, 69)), "betas": np.zeros((3, 10)),
            "transl": np.tile([0.0, 0.0, 3.0], (3, 1))}
    assert load_hypotheses(hyps)["betas"].shape == (3, 10)
    hyps["betas"][2, 0] = 1e6
    with pytest.raises(InputError, match="hypothesis 2"):
        load_hypotheses(hyps)


@pytest.mark.parametrize("env, argv, needle", [
    ({"HMRCRITIC_VLM_TIMEOUT": "abc"}, ["doctor", "--no-render", "--json"], "VLM_TIMEOUT='abc' is not a number"),
    ({"HMRCRITIC_MAX_REFLECTIONS": "1.5"}, ["memory", "stats"], None),
])
def test_bad_environment_values_name_the_variable(env, argv, needle, places, capsys, monkeypatch):
    """A variable that cannot be read is an error naming it — not a ValueError, not a silent default."""
    from hmrcritic.config import env_flag, env_number
    from hmrcritic.errors import InputError

    for k, v in env.items():
        monkeypatch.setenv(k, v)
    if needle is None:  # read where it is used, not by every command
        with pytest.raises(InputError, match="HMRCRITIC_MAX_REFLECTIONS='1.5' is not an integer"):
            env_number("HMRCRITIC_MAX_REFLECTIONS", 2, int)
        return
    rc = main([a.format(**places) for a in argv])
    out = capsys.readouterr()
    assert rc != 0 and needle in out.out + out.err and "Traceback" not in out.err
    for raw, want in (("", True), ("yes", True), ("OFF", False)):
        monkeypatch.setenv("HMRCRITIC_X", raw)
        assert env_flag("HMRCRITIC_X", True) is want
    monkeypatch.setenv("HMRCRITIC_X", "ture")
    with pytest.raises(InputError, match="HMRCRITIC_X='ture' is not a yes/no value"):
        env_flag("HMRCRITIC_X", True)
    from hmrcritic.hmr.data import default_size

    for bad in ("inf", "0", "-1"):  # inf overflowed; 0 and -1 silently gave one-scene splits
        monkeypatch.setenv("HMRCRITIC_SPLIT_SIZE_SCALE", bad)
        with pytest.raises(InputError, match="HMRCRITIC_SPLIT_SIZE_SCALE"):
            default_size("test")


def test_agent_settings_from_the_environment_are_checked_before_exploring(places, monkeypatch, capsys):
    monkeypatch.setenv("HMRCRITIC_PROTO_WEIGHT", "2")  # must be in [0, 1]
    rc = main(["explore", "--rounds", "1", "--batch-size", "1", "--memory-dir", str(places["tmp"] / "envmem")])
    assert rc == 2 and "proto_weight" in capsys.readouterr().err
    assert not (places["tmp"] / "envmem").exists()


def test_debug_after_the_command_and_memory_dir_everywhere(tmp_path, capsys):
    """`--debug` worked only before the command ("No such option: --debug" after it), and the memory folder
    was `--memory` for critique/export but `--memory-dir` everywhere else."""
    assert main(["sample", "--scene", "test:999999", "-n", "2", "--out", str(tmp_path / "s"), "--debug"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and "No such option" not in err
    for cmd in (["critique", "--help"], ["export", "--help"]):
        assert main(cmd) == 0
        assert "--memory-dir" in capsys.readouterr().out


def test_export_validate_of_a_missing_folder_is_one_line(tmp_path, capsys):
    """It printed an INVALID report and then an error line, exit 1 (an invalid dataset's code) for a path that
    holds no dataset at all."""
    assert main(["export", "validate", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr()
    assert err.out == "" and err.err.strip().splitlines() == [f"error: {tmp_path / 'nope'}: no such folder"]
    (tmp_path / "empty").mkdir()
    assert main(["export", "validate", str(tmp_path / "empty")]) == 2
    assert "no dataset.json" in capsys.readouterr().err
