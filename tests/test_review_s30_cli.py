"""Review s30 (the VLM judge from the command line): ``--base-url`` / ``--vlm-model`` on every command that takes
``--judge`` (only variables existed), doctor's silence on a misspelt ``HMRCRITIC_*`` setting, and the evaluations
(evaluate-critic, explore-eval, learning-curve) that scored a VLM judge without sending it a single image.

Real CLI (``hmrcritic.cli.main``), real groups of tiny generated splits, the real agent graph and memory; the VLM
judge talks HTTP to the local OpenAI-compatible stub (tests/openai_stub_server.py, the network edge), which records
each request's model and images and what it found wrong with it."""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from openai_stub_server import StubOpenAIServer  # noqa: E402

pytestmark = pytest.mark.usefixtures("small_prior")  # tiny splits: no 20k-scene train split for the pose prior

ENDPOINT_VARS = ("HMRCRITIC_BASE_URL", "OPENAI_BASE_URL", "OPENAI_API_BASE", "HMRCRITIC_VLM_MODEL")


@pytest.fixture()
def data(monkeypatch, tmp_path):
    """Tiny train (6 scenes) and test (4 scenes) splits; a VLM that is not retried or waited for long."""
    from hmrcritic.hmr.data import generate_split

    monkeypatch.setenv("HMRCRITIC_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("HMRCRITIC_VLM_RETRIES", "0")
    monkeypatch.setenv("HMRCRITIC_VLM_TIMEOUT", "20")
    for name in ENDPOINT_VARS:
        monkeypatch.delenv(name, raising=False)
    generate_split("train", n=6, seed=1, quiet=True)
    generate_split("test", n=4, seed=2, quiet=True)
    return tmp_path


def _env() -> dict:
    return {k: os.environ.get(k) for k in ENDPOINT_VARS}


def _models(srv) -> set:
    return {r.body.get("model") for r in srv.requests if r.path.endswith("/chat/completions")}


# ---- 1. --base-url and --vlm-model -------------------------------------------------------------------------------
@pytest.mark.parametrize("command", ["critique", "explore", "explore-eval", "evaluate-critic", "export"])
def test_every_command_with_a_judge_takes_the_endpoint_flags(command):
    """The issue configures the VLM judge with ``--base-url`` and ``--model``; only variables existed. Every command
    that takes ``--judge`` takes ``--base-url`` and ``--vlm-model`` (``critique --model`` is the checkpoint), whose
    help names the variables each overrides."""
    import typer

    from hmrcritic.cli import app

    cmd = typer.main.get_command(app).commands[command]
    helps = {o: p.help for p in cmd.params for o in p.opts}
    assert "--judge" in helps
    assert "HMRCRITIC_BASE_URL" in helps["--base-url"] and "OPENAI_BASE_URL" in helps["--base-url"]
    assert "HMRCRITIC_VLM_MODEL" in helps["--vlm-model"]


def test_critique_sends_to_the_flags_endpoint_and_model_with_nothing_in_the_environment(data, tmp_path, capsys):
    """``critique --judge vlm --base-url URL --vlm-model m`` with no endpoint variable set: every request goes to URL
    with model "m", the result names "m @ URL", and the environment is as it was once main() returns."""
    from hmrcritic.cli import main

    before = _env()
    with StubOpenAIServer() as srv:
        code = main(["critique", "--scene", "test:0", "-n", "3", "--judge", "vlm", "--base-url", srv.base_url,
                     "--vlm-model", "m", "--max-reflections", "0", "--out", str(tmp_path / "c"), "--json"])
        assert code == 0, capsys.readouterr().err
        assert srv.requests and _models(srv) == {"m"}
        assert not srv.violations, srv.violations
    assert json.loads(capsys.readouterr().out)["judge_model"] == f"m @ {srv.base_url}"
    assert _env() == before  # nothing left behind for the next command of this process


def test_explore_flags_beat_the_variables_and_the_variables_come_back(data, monkeypatch, capsys):
    """A flag given beats its variable (as the other flags do): with ``OPENAI_BASE_URL`` at a port nothing listens on
    and ``HMRCRITIC_VLM_MODEL=other``, ``explore --base-url <stub> --vlm-model m`` explores with the stub's "m";
    afterwards both variables hold what they held."""
    from hmrcritic.cli import main

    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
    monkeypatch.setenv("HMRCRITIC_VLM_MODEL", "other")
    before = _env()
    with StubOpenAIServer() as srv:
        code = main(["explore", "--split", "train", "--rounds", "1", "--batch-size", "2", "--limit", "2", "-n", "3",
                     "--source", "perturbed", "--max-reflections", "0", "--calibration-groups", "0",
                     "--memory-dir", str(data / "mem"), "--judge", "vlm", "--base-url", srv.base_url,
                     "--vlm-model", "m"])
        err = capsys.readouterr().err
        assert code == 0, err
        assert len(srv.requests) >= 2 and _models(srv) == {"m"}
        assert not srv.violations, srv.violations
    assert "error" not in err.lower(), err
    assert _env() == before


def test_export_workers_get_the_flags(data, capsys):
    """``export --workers 2`` scores in spawned processes, which build their judge from the environment they
    inherit: the flags reach them (every request of both workers is the stub's model "m"), the header records
    "m @ URL", and the export's own environment is as it was."""
    from hmrcritic.cli import main
    from hmrcritic.hmr.data import generate_split

    # the workers fit their own pose prior (this process's small one does not reach them): 60 train poses
    generate_split("train", n=60, seed=1, quiet=True)
    before = _env()
    out = data / "export"
    with StubOpenAIServer() as srv:
        code = main(["export", "--split", "test", "--limit", "2", "-n", "3", "--steps", "2", "--workers", "2",
                     "--judge", "vlm", "--base-url", srv.base_url, "--vlm-model", "m", "--no-memory",
                     "--out", str(out), "--json"])
        captured = capsys.readouterr()
        assert code == 0, captured.err
        assert len(srv.requests) >= 2 and _models(srv) == {"m"}
        assert not srv.violations, srv.violations
    assert json.loads((out / "dataset.json").read_text(encoding="utf-8"))["judge_model"] == f"m @ {srv.base_url}"
    assert _env() == before


def test_a_base_url_with_credentials_is_refused_masked_before_any_work(data, tmp_path, capsys):
    """``--base-url http://user:password@host/v1``: refused at once (exit 2) in check_base_url's words, naming the
    flag, the password never shown; nothing was sampled or written."""
    from hmrcritic.cli import main

    code = main(["critique", "--scene", "test:0", "-n", "3", "--judge", "vlm", "--base-url",
                 "http://bob:hunter2secret@127.0.0.1:1/v1", "--out", str(tmp_path / "c")])
    captured = capsys.readouterr()
    assert code == 2
    assert "--base-url" in captured.err and "credentials" in captured.err
    assert "hunter2secret" not in captured.out + captured.err
    assert not (tmp_path / "c").exists()
    assert os.environ.get("HMRCRITIC_BASE_URL") is None


def test_the_flags_with_the_builtin_judge_are_unused_and_said_so(data, tmp_path, capsys):
    """``--base-url`` (even one with a password) with the builtin judge: a note on stderr that it is unused, no
    failure, no URL shown, and nothing set."""
    from hmrcritic.cli import main

    code = main(["critique", "--scene", "test:0", "-n", "3", "--no-render", "--fresh", "--base-url",
                 "http://bob:hunter2secret@127.0.0.1:1/v1", "--vlm-model", "m", "--out", str(tmp_path / "c")])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "note: --base-url and --vlm-model unused: the builtin judge sends no requests" in captured.err
    assert "hunter2secret" not in captured.out + captured.err
    assert _env() == dict.fromkeys(ENDPOINT_VARS)


# ---- 2. doctor on a misspelt setting -------------------------------------------------------------------------------
def test_doctor_warns_about_settings_it_does_not_read(monkeypatch, capsys):
    """``HMRCRITIC_MODEL`` and ``HMRCRITIC_BASEURL`` were ignored in silence and doctor said "all checks passed". Each
    unknown ``HMRCRITIC_*`` variable is a warning (never a failure) naming the nearest known setting, never its
    value; the known ones and the tests' own ``HMRCRITIC_TEST_*`` are not."""
    from hmrcritic.cli import main
    from hmrcritic.commands import doctor

    monkeypatch.setenv("HMRCRITIC_MODEL", "Qwen/secretish-model")
    monkeypatch.setenv("HMRCRITIC_BASEURL", "http://127.0.0.1:8000/v1")
    monkeypatch.setenv("HMRCRITIC_TEST_MARK", "x")
    monkeypatch.setenv("HMRCRITIC_RULES_K", "16")
    warnings = doctor.unknown_settings()
    assert len(warnings) == 2, warnings
    assert any("HMRCRITIC_BASEURL" in w and "did you mean HMRCRITIC_BASE_URL?" in w for w in warnings)
    assert any(w.startswith("HMRCRITIC_MODEL ") and "did you mean HMRCRITIC_VLM_MODEL?" in w for w in warnings)
    report = doctor.run_checks(skip=tuple(n for n, _ in doctor.CHECKS if n != "judge"))
    assert report["ok"] and report["warnings"] == warnings
    main(["doctor", "--no-render"])
    out = capsys.readouterr().out
    assert "[warn] settings    HMRCRITIC_BASEURL is set but hmrcritic reads no such variable" in out
    assert "secretish" not in out and "8000" not in out


def test_doctor_knows_every_setting_the_code_reads():
    """doctor's list of known settings is every ``HMRCRITIC_*`` name in hmrcritic's code (so a new setting is never
    warned about as a typo)."""
    from hmrcritic.commands.doctor import KNOWN_SETTINGS

    root = Path(__file__).resolve().parent.parent / "hmrcritic"
    named = {m for p in root.rglob("*.py") for m in re.findall(r"HMRCRITIC_[A-Z0-9_]+", p.read_text(encoding="utf-8"))
             if not m.endswith("_")}  # (a family: "HMRCRITIC_VLM_*", "HMRCRITIC_TEST_*")
    # a placeholder in a docstring ("HMRCRITIC_X names it") and doctor's own examples of misspelt settings
    named -= {"HMRCRITIC_X", "HMRCRITIC_MODEL", "HMRCRITIC_BASEURL"}
    assert named - set(KNOWN_SETTINGS) == set()
    assert set(KNOWN_SETTINGS) - named == set()


# ---- 3. the evaluations render for a VLM judge ---------------------------------------------------------------------
def _no_imageless_requests(srv) -> None:
    chats = [r for r in srv.requests if r.path.endswith("/chat/completions")]
    assert chats and all(r.images > 0 for r in chats), [r.images for r in chats]
    assert not srv.violations, srv.violations


def test_evaluate_critic_sends_the_vlm_its_images(data, capsys):
    """``evaluate-critic --judge vlm`` scored with ``render`` False (score_groups' default): the VLM got no overlay
    or side grid, so the evaluation measured a text-only critic while critique, explore and export render for it.
    On 2 held-out groups every request now carries images (the stub requires them) and the run scores both."""
    from hmrcritic.cli import main

    with StubOpenAIServer() as srv:
        code = main(["evaluate-critic", "--split", "test", "--num-groups", "2", "-n", "3", "--warmup-groups", "0",
                     "--source", "perturbed", "--variants", "evidence_only", "--judge", "vlm", "--base-url",
                     srv.base_url, "--vlm-model", "m", "--json"])
        captured = capsys.readouterr()
        assert code == 0, captured.err
        _no_imageless_requests(srv)
        assert _models(srv) == {"m"}
    assert json.loads(captured.out)["rows"][0]["groups_scored"] == 2


def test_explore_eval_and_learning_curve_send_the_vlm_its_images(data, capsys):
    """explore-eval (CLI) and learning_curve (its held-out scoring, round 0) with the VLM judge: images in every
    request."""
    from hmrcritic.agent.learning_curve import learning_curve
    from hmrcritic.cli import main

    assert main(["memory", "reset", "--yes", "--memory-dir", str(data / "mem")]) == 0  # the starter memory
    capsys.readouterr()
    with StubOpenAIServer() as srv:
        code = main(["explore-eval", "--split", "test", "--num-groups", "2", "-n", "3", "--source", "perturbed",
                     "--variants", "evidence_only", "--memory-dir", str(data / "mem"), "--judge", "vlm",
                     "--base-url", srv.base_url, "--vlm-model", "m", "--json"])
        captured = capsys.readouterr()
        assert code == 0, captured.err
        assert json.loads(captured.out)["rows"][0]["groups_scored"] == 2
        _no_imageless_requests(srv)
    with StubOpenAIServer() as srv:
        os.environ["HMRCRITIC_BASE_URL"] = srv.base_url
        try:
            res = learning_curve(data / "curve-mem", split="train", rounds=0, heldout_split="test",
                                 heldout_groups=2, num_generations=3, source="perturbed", judge="vlm")
        finally:
            del os.environ["HMRCRITIC_BASE_URL"]
        assert res["rows"][0]["groups_scored"] == 2
        _no_imageless_requests(srv)


def test_the_builtin_evaluations_still_render_nothing(data, monkeypatch):
    """The builtin judge's held-out scoring stays as it was: ``render`` False (bit-identical scores, no grids drawn),
    whatever ``HMRCRITIC_RENDER`` says; the VLM judge's is True. Read off the config each critique is run with."""
    from hmrcritic.agent import api
    from hmrcritic.agent.groups import make_groups
    from hmrcritic.agent.learning_curve import score_groups, starter_memory

    seen = []
    real = api.critique_group

    def recording(*args, **kwargs):
        seen.append(kwargs["config"].render)
        return real(*args, **kwargs)

    monkeypatch.setattr(api, "critique_group", recording)
    monkeypatch.setenv("HMRCRITIC_RENDER", "1")
    groups = make_groups("test", num_groups=2, num_generations=3, source="perturbed")[0]
    mem = starter_memory(data / "starter")
    try:
        a, _ = score_groups(groups, mem, "evidence_only", judge="builtin")
        b, _ = score_groups(groups, mem, "evidence_only", judge="builtin", agent_config={"render": False})
        assert seen == [False] * 4
        for x, y in zip(a, b, strict=True):
            assert x.tobytes() == y.tobytes()
        with StubOpenAIServer() as srv:
            monkeypatch.setenv("HMRCRITIC_BASE_URL", srv.base_url)
            score_groups(groups[:1], mem, "evidence_only", judge="vlm")
            _no_imageless_requests(srv)
        assert seen[-1] is True
    finally:
        mem.close()
