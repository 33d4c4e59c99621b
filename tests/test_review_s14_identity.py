"""Review s14 (identity): one judge identity for keys and export headers, one API-key check for every reader."""

from __future__ import annotations

import pytest

from hmrcritic import config
from hmrcritic.errors import InputError

KEY = "sk-hmrcritic-s14-identity-4b7d"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for v in ("HMRCRITIC_API_KEY", "OPENAI_API_KEY", "HMRCRITIC_BASE_URL", "OPENAI_BASE_URL", "HMRCRITIC_VLM_MODEL"):
        monkeypatch.delenv(v, raising=False)


# ------------------------------------------------------------------------------------------ judge identity
def test_the_judge_identity_strings_are_pinned(monkeypatch):
    """The string is a cache key (evaluate-critic, the pipeline's exploration) and is recorded in export headers
    (``judge_model``), which a resumed export must match: both readers give exactly these strings."""
    from hmrcritic.agent.evaluate_critic import judge_identity
    from hmrcritic.alignment.export import _judge_model

    assert judge_identity("builtin") == "" and _judge_model("builtin") is None
    assert judge_identity("vlm") == _judge_model("vlm") == "gpt-4o-mini @ the OpenAI API"
    monkeypatch.setenv("HMRCRITIC_VLM_MODEL", "qwen2.5-vl-7b")
    monkeypatch.setenv("HMRCRITIC_BASE_URL", "http://user:pw-s3cret@gpu-box:8000/v1")
    want = "qwen2.5-vl-7b @ http://***@gpu-box:8000/v1"
    assert judge_identity("vlm") == _judge_model("vlm") == want

    class Custom:  # a judge object: its own settings, not the environment's
        name = "vlm"
        settings = config.JudgeSettings(base_url="http://localhost:11434/v1", model="llava")

    assert judge_identity(Custom()) == "llava @ http://localhost:11434/v1"
    assert judge_identity(object()) == ""


def test_a_judge_name_is_read_as_make_judge_reads_it(monkeypatch):
    """``evaluate-critic --judge VLM`` makes the VLM judge (make_judge lower-cases the name) but had no identity,
    so a memory explored with one HMRCRITIC_VLM_MODEL was reused for another."""
    from hmrcritic.agent.evaluate_critic import judge_identity

    monkeypatch.setenv("HMRCRITIC_VLM_MODEL", "model-a")
    assert judge_identity("VLM") == judge_identity(" vlm ") == judge_identity("vlm") == "model-a @ the OpenAI API"
    assert judge_identity("Builtin") == ""


def test_the_export_judge_model_reads_no_agent_settings(monkeypatch):
    """The export's header needs the judge's model only: a bad unrelated agent variable is not its error."""
    from hmrcritic.alignment.export import _judge_model

    monkeypatch.setenv("HMRCRITIC_RULES_K", "abc")
    assert _judge_model("vlm") == "gpt-4o-mini @ the OpenAI API"


# ------------------------------------------------------------------------------------------------ the key
@pytest.mark.parametrize("var", ["HMRCRITIC_API_KEY", "OPENAI_API_KEY"])
def test_config_api_key_is_the_key_as_sent(monkeypatch, var):
    """Every reader (the VLM judge, the judge cache's key hash, ``doctor``) gets the key the header carries."""
    monkeypatch.setenv(var, KEY + "\r\n")
    assert config.api_key() == KEY
    monkeypatch.setenv(var, "  ")
    assert config.api_key() is None


@pytest.mark.parametrize("bad", ["\u2026", " ", "\t", "\u00e9"])
def test_config_api_key_refuses_an_unsendable_key_without_showing_it(monkeypatch, bad):
    """The check lived in the VLM judge only: ``config.api_key()`` handed any other reader the raw value."""
    monkeypatch.setenv("OPENAI_API_KEY", KEY[:8] + bad + KEY[8:])
    with pytest.raises(InputError, match="API key in OPENAI_API_KEY") as info:
        config.api_key()
    msg = str(info.value)
    assert KEY[:8] not in msg and KEY[8:] not in msg and f"position 9 of {len(KEY) + 1}" in msg


def test_doctor_settings_say_an_unusable_key_is_unusable(monkeypatch):
    """``doctor`` printed "api key set" for a key the judge refuses; now it says why (never the key), and the
    settings are still printed (an exception here would have lost the judge check's whole line)."""
    from hmrcritic.commands.doctor import _judge

    monkeypatch.setenv("HMRCRITIC_API_KEY", KEY[:8] + "\u2026" + KEY[8:])
    pub = config.JudgeSettings().public()
    assert pub["api_key"].startswith("set but unusable: ") and "position 9" in pub["api_key"]
    assert KEY[:8] not in str(pub) and KEY[8:] not in str(pub)
    assert _judge()["settings"]["api_key"].startswith("set but unusable")
    monkeypatch.setenv("HMRCRITIC_API_KEY", KEY)
    assert config.JudgeSettings().public()["api_key"] == "set"


def test_the_key_as_sent_is_scrubbed_too(monkeypatch):
    """``HMRCRITIC_API_KEY=$(cat key.txt)`` keeps a ``\\r``: the scrubber masked the variable's value, but the key
    the client sends (and an endpoint quotes back) is without it."""
    from hmrcritic.redact import scrub

    key = "sk-s14-scrub-only-9e2f1a"  # never registered elsewhere in this process
    monkeypatch.setenv("HMRCRITIC_API_KEY", key + "\r")
    assert key not in scrub(f"401: invalid key {key} for this endpoint")
