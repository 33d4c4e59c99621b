"""Docs review (s23): README facts a user acts on, checked against the code.

- ``HMRCRITIC_DEBUG`` is the one variable whose unreadable value is no error (the error handler reads it): the
  README said every flag other than 1/0, true/false, yes/no, on/off is an error and that doctor checks them all.
- ``hmrcritic doctor --no-render`` (for a machine without GL) was not in the command table.
- An export stopped by an unusable VLM endpoint exits 2 with one line naming the endpoint, and lists the groups it
  did not try in failures.jsonl as ``not_attempted`` (README "The VLM judge").
"""

from __future__ import annotations

import json
import re
import socket
from pathlib import Path

import pytest

from hmrcritic import config
from hmrcritic.errors import InputError

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def _flat(text: str) -> str:
    return re.sub(r"\s+", " ", text)


def _help(*args: str) -> str:
    from typer.testing import CliRunner

    from hmrcritic.cli import app

    res = CliRunner().invoke(app, [*args, "--help"], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    return res.output


def test_readme_says_hmrcritic_debug_is_never_an_error(monkeypatch):
    flat = _flat(README)
    assert "any other value is off, never an error" in flat
    assert "`hmrcritic doctor` checks them all (`HMRCRITIC_DEBUG` aside)" in flat
    monkeypatch.setenv("HMRCRITIC_DEBUG", "maybe")
    assert config.env_debug() is False  # no error, off
    for yes in ("1", "true", "YES", " on\r"):
        monkeypatch.setenv("HMRCRITIC_DEBUG", yes)
        assert config.env_debug() is True
    # the other flags are what the README says: an unreadable value is an error naming the variable
    monkeypatch.setenv("HMRCRITIC_LEARN", "maybe")
    with pytest.raises(InputError, match="HMRCRITIC_LEARN"):
        config.env_flag("HMRCRITIC_LEARN", False)


def test_readme_doctor_row_names_its_options():
    row = next(line for line in README.splitlines() if line.startswith("| `hmrcritic doctor"))
    flags = set(re.findall(r"--[a-z][a-z-]*", row.split("|")[1]))
    assert flags == {"--json", "--no-render", "--probe", "--base-url", "--vlm-model"}  # the last three: session 31
    shown = _help("doctor")
    assert all(f in shown for f in flags)


def test_cli_export_on_a_dead_endpoint_exits_2_naming_it(tmp_path, monkeypatch, capsys):
    """README "The VLM judge": export stops after 3 such groups in a row with one line naming the endpoint
    (exit 2), the groups not tried listed in failures.jsonl as ``not_attempted``."""
    from hmrcritic.cli import main

    assert "naming the endpoint (exit 2;" in _flat(README)
    with socket.socket() as held:  # bound, not listening: nothing answers there
        held.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{held.getsockname()[1]}/v1"
        monkeypatch.setenv("HMRCRITIC_HOME", str(tmp_path / "home"))
        monkeypatch.setenv("HMRCRITIC_SPLIT_SIZE_SCALE", "0.005")  # tiny splits (the pose prior needs 50 train poses)
        monkeypatch.setenv("HMRCRITIC_BASE_URL", url)
        monkeypatch.setenv("HMRCRITIC_VLM_RETRIES", "0")
        monkeypatch.setenv("HMRCRITIC_VLM_TIMEOUT", "5")
        monkeypatch.setenv("HMRCRITIC_VLM_CONCURRENCY", "1")
        out = tmp_path / "ds"
        rc = main(["export", "--split", "wild", "--judge", "vlm", "--limit", "5", "-n", "2", "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2, err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and url in lines[0] and "export stopped" in lines[0], err
    fails = [json.loads(line) for line in (out / "failures.jsonl").read_text().splitlines()]
    assert [f["stage"] for f in fails] == ["score"] * 3 + ["not_attempted"] * 2
    assert all(f["endpoint_unusable"].startswith(url) for f in fails)


@pytest.mark.parametrize("scale, fits", [(0.002, False), (0.0025, True)])
def test_readme_split_scale_floor_of_the_pose_prior(tmp_path, monkeypatch, scale, fits):
    """README: the pose prior needs 50 train scenes — a scale below 0.002475 leaves every builtin critique failing."""
    from hmrcritic.agent import prior
    from hmrcritic.errors import AssetError

    assert "needs 50 scenes of it: below 0.002475" in _flat(README)
    monkeypatch.setenv("HMRCRITIC_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HMRCRITIC_SPLIT_SIZE_SCALE", str(scale))
    monkeypatch.setattr(prior, "_CACHE", {})
    if fits:
        assert prior.get_pose_prior() is not None
    else:
        with pytest.raises(AssetError, match="train poses"):
            prior.get_pose_prior()


def _exit_codes() -> str:
    flat = _flat(README)
    return flat[flat.index("Exit codes: 0 done;"):flat.index("143 SIGTERM.")]


@pytest.mark.parametrize("argv, code", [
    (["trace", "--mermaid", "--json"], 2),                       # usage
    (["critique", "--scene", "nope:1", "--no-render"], 2),       # bad input
    (["export", "validate", "{tmp}/missing"], 2),                # a missing folder
    (["export", "validate", "{tmp}/empty"], 2),                  # not a dataset at all
    (["export", "validate", "{tmp}/stopped"], 1),                # a dataset that does not pass (no group)
    (["runs", "prune", "--older-than", "0"], 1),                 # a question nobody answered
])
def test_readme_exit_codes(tmp_path, monkeypatch, capsys, argv, code):
    """README "Exit codes": 2 an error that stopped the command, 1 a check that did not pass or a question not
    answered yes (without a terminal, as in a script)."""
    import io

    from hmrcritic.alignment.dataset import DatasetHeader, write_header
    from hmrcritic.cli import main

    text = _exit_codes()
    assert "2 an error that stopped the command" in text and "1 work that ran but did not pass" in text
    assert "`runs prune`, `memory reset` without `--yes`" in text
    monkeypatch.setenv("HMRCRITIC_HOME", str(tmp_path / "home"))
    (tmp_path / "empty").mkdir()
    (tmp_path / "stopped").mkdir()  # an export stopped before its first group leaves its header alone
    write_header(tmp_path / "stopped", DatasetHeader(source="split:wild", split="wild", model_hash="0" * 16,
                                                     judge="builtin", num_generations=4, sample_steps=10, seed=0,
                                                     x_dim=154, counts={"finished": False}))
    (tmp_path / "home" / "runs").mkdir(parents=True)
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    rc = main([a.replace("{tmp}", str(tmp_path)) for a in argv])
    err = capsys.readouterr().err
    assert rc == code, err
    assert err.strip()  # a line saying why


def test_one_unusable_endpoint_rule_as_contracts_and_developers_say():
    """CONTRACTS (agent/api.py) and DEVELOPERS: ``api.unusable_endpoint`` reads the flag through wrapping, a
    group too large stops nothing, and the two ``UNUSABLE_IN_A_ROW`` constants agree."""
    from hmrcritic.agent import api, vlm
    from hmrcritic.errors import JudgeError

    assert "`unusable_endpoint(exc) -> str | None`" in (ROOT / "docs" / "CONTRACTS.md").read_text(encoding="utf-8")
    assert "agent.api.unusable_endpoint(exc)" in _flat((ROOT / "DEVELOPERS.md").read_text(encoding="utf-8"))
    assert api.UNUSABLE_IN_A_ROW == vlm.UNUSABLE_IN_A_ROW == 3
    dead = vlm.EndpointUnusableError("refused", endpoint="http://h:1/v1", cause="nothing answers there")
    try:
        try:
            raise dead
        except JudgeError as inner:
            raise RuntimeError("worker failed") from inner
    except RuntimeError as outer:
        assert api.unusable_endpoint(outer) == "http://h:1/v1 (nothing answers there)"
    assert api.unusable_endpoint(vlm.GroupTooLargeError("too long", endpoint="http://h:1/v1", cause="ctx")) is None
    assert api.unusable_endpoint(JudgeError("timeout")) is None and api.unusable_endpoint(None) is None


def test_readme_critique_many_stops_only_with_return_exceptions():
    """README "The VLM judge": ``critique_many(..., return_exceptions=True)`` marks the groups it did not try;
    without it the first failure is raised."""
    from openai_stub_server import StubOpenAIServer
    from test_vlm_judge import make_ctx

    from hmrcritic.agent.vlm import EndpointUnusableError, VLMJudge
    from hmrcritic.config import JudgeSettings

    assert "`VLMJudge.critique_many(..., return_exceptions=True)` (without it the first failure is raised)" in \
        _flat(README)
    ctxs = [make_ctx((None, None), group_id=f"g{i}") for i in range(6)]
    with StubOpenAIServer(default="401_echo", require_images=False) as srv:
        judge = VLMJudge(JudgeSettings(base_url=srv.base_url, model="stub-vlm", timeout_s=5.0, max_retries=1,
                                       max_concurrency=1), backoff_base_s=0.01, backoff_max_s=0.02)
        with pytest.raises(EndpointUnusableError):
            judge.critique_many(ctxs)
        out = judge.critique_many(ctxs, return_exceptions=True)
    assert all(isinstance(r, EndpointUnusableError) for r in out)
    assert any("did not try" in str(r) for r in out)
