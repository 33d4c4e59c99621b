"""A judge name in another spelling ("VLM", " Builtin") is the judge make_judge builds for it, for every part
that compares the name — and a Chroma address given in an agent config is masked in every output."""

from __future__ import annotations

import logging

import pytest

from hmrcritic.agent import nodes
from hmrcritic.agent.state import AgentConfig, canonical_judge
from hmrcritic.redact import scrub


@pytest.mark.parametrize("given, want", [("VLM", "vlm"), (" Builtin ", "builtin"), ("builtin", "builtin"),
                                         ("Mystery", "Mystery")])
def test_agent_config_keeps_one_spelling_of_a_judge(given, want, monkeypatch):
    assert AgentConfig(judge=given).judge == want
    monkeypatch.setenv("HMRCRITIC_JUDGE", given)
    assert AgentConfig().judge == want
    assert canonical_judge(given) == want


def test_a_judge_named_in_capitals_gets_the_configured_prototype_settings(monkeypatch):
    monkeypatch.setattr(nodes, "_JUDGES", {})
    cfg = AgentConfig(judge="Builtin", proto_weight=0.7, proto_level=0.2)
    judge = nodes.get_judge(cfg)
    assert (judge.proto_weight, judge.proto_level) == (0.7, 0.2)
    injected = nodes.get_judge(AgentConfig(proto_weight=0.6), {"configurable": {"judge": "BUILTIN"}})
    assert injected.proto_weight == 0.6


def test_a_chroma_address_in_an_agent_config_is_masked_everywhere(caplog):
    AgentConfig(chroma_url="reader:s3cr3t-pw@chroma.internal:8000")  # no scheme: the scrubber alone misses it
    with caplog.at_level(logging.INFO):
        logging.getLogger("hmrcritic.test").info("connecting to reader:s3cr3t-pw@chroma.internal:8000")
    assert "s3cr3t-pw" not in scrub(caplog.text)
