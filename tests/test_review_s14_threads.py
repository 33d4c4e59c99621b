"""critique_groups(workers>1) with jobs sharing a group id: one critique per thread at a time.

Every job read the empty checkpoint before any wrote it, then they ran one thread over one run folder, and all
returned the first job's scores without an error. Now they are taken one at a time, as serially: the first is
critiqued, a later one with other hypotheses is refused ("already critiqued with different inputs"), and one with
the same hypotheses gets the stored result.
"""

from __future__ import annotations

import pytest

from hmrcritic.agent.api import critique_groups
from hmrcritic.agent.state import AgentConfig

pytestmark = pytest.mark.usefixtures("small_prior")


def test_jobs_sharing_a_group_id_are_not_given_each_others_scores(tmp_path, monkeypatch):
    from test_agent_graph import make_group

    from hmrcritic.agent.api import critique_group

    monkeypatch.setenv("HMRCRITIC_RUNS", str(tmp_path / "runs"))
    s, _, _ = make_group(3, n=4)
    hyps = [make_group(10 + i, n=4)[1] for i in range(4)]
    cfg = AgentConfig(render=False, use_memory=False)
    out = critique_groups([{"sample": s, "hypotheses": h, "group_id": "dup"} for h in hyps], config=cfg, workers=4)
    ok = [i for i, r in enumerate(out) if r.error is None]
    assert len(ok) == 1, [r.error for r in out]  # before: all four "succeeded" with one job's scores
    assert all("different inputs" in r.error for r in out if r.error is not None)
    own = critique_group(s, hyps[ok[0]], config=cfg, group_id="alone")  # what its own hypotheses score
    assert [x.overall for x in out[ok[0]].result.scores] == [x.overall for x in own.scores]
    again = critique_groups([{"sample": s, "hypotheses": hyps[ok[0]], "group_id": "dup"}] * 3, config=cfg,
                            workers=3)  # the same inputs again: the stored critique, for each of them
    assert all(r.error is None and r.result.finished_earlier for r in again)


def test_an_unknown_agent_setting_is_an_error_naming_the_near_one():
    """pydantic drops unknown keys, so ``config={"max_reflection": 0}`` ran with the default reflections."""
    from test_agent_graph import make_group

    from hmrcritic.agent.api import critique_group
    from hmrcritic.errors import InputError

    s, h, _ = make_group(4, n=4)
    with pytest.raises(InputError, match=r"'max_reflection' \(did you mean 'max_reflections'\?\)"):
        critique_group(s, h, config={"max_reflection": 0, "render": False})


def test_rule_retrieval_reads_one_tag_string_as_tags(tmp_path):
    """``retrieve("hyperextension")`` matched the string's characters (no tag) and ``search(k=-1)`` dropped only
    the last rule."""
    from hmrcritic.memory.store import MemoryStore

    rules = MemoryStore(tmp_path / "m").rules
    as_list = [r.rule_id for r in rules.retrieve(["hyperextension"], k=3)]
    assert [r.rule_id for r in rules.retrieve("hyperextension", k=3)] == as_list
    assert rules.search("a knee bent backwards", k=-1) == []


def test_a_critique_re_entered_for_its_own_group_is_an_error_not_a_hang(tmp_path, monkeypatch):
    """A hook that critiques the same group again from inside its run waited for itself for ever."""
    from test_agent_graph import make_group

    from hmrcritic.agent import api
    from hmrcritic.errors import InputError

    monkeypatch.setenv("HMRCRITIC_RUNS", str(tmp_path / "runs"))
    s, h, _ = make_group(5, n=4)
    cfg = AgentConfig(render=False, use_memory=False)
    seen: list = []

    def hook(node, update, seconds):
        if not seen:
            try:
                api.critique_group(s, h, config=cfg, group_id="inner-same")
            except InputError as exc:
                seen.append(str(exc))

    api.critique_group(s, h, config=cfg, group_id="inner-same", on_update=hook)
    assert seen and "re-entered" in seen[0]
    assert api._THREAD_LOCKS == {}  # no entry left behind once nobody holds or waits


def test_a_blank_key_variable_does_not_hide_the_other(monkeypatch):
    from hmrcritic.config import api_key

    monkeypatch.setenv("HMRCRITIC_API_KEY", " \r\n")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-abcdef123456")
    assert api_key() == "sk-test-abcdef123456"


def test_an_agent_config_with_keys_of_mixed_types_is_one_error():
    from hmrcritic.agent.api import _agent_config
    from hmrcritic.errors import InputError

    with pytest.raises(InputError, match="unknown setting"):
        _agent_config({1: 2, "x": 3}, None, None, None)
