"""Review s18, hmrcritic as a library inside another program (a notebook, a web service): each test failed
before its fix."""

from __future__ import annotations

import pytest

from hmrcritic import config as hconfig
from hmrcritic.agent.api import critique_group

pytestmark = pytest.mark.usefixtures("small_prior")


def _group(seed: int, sample_id: str | None = None):
    from test_agent_graph import make_group

    return make_group(seed, n=4, sample_id=sample_id)


def test_a_changed_home_gets_its_own_memory(tmp_path, monkeypatch):
    """With no ``HMRCRITIC_MEMORY`` the graph's store cache was keyed ``(None, None)``: after ``HMRCRITIC_HOME``
    changed in one process, a learning critique in the second home recalled from and wrote into the first
    home's memory (the second home had none)."""
    from hmrcritic.memory.store import MemoryStore

    monkeypatch.delenv("HMRCRITIC_MEMORY", raising=False)
    monkeypatch.delenv("HMRCRITIC_RUNS", raising=False)
    monkeypatch.setenv("HMRCRITIC_CACHE", str(hconfig.cache_dir()))  # the small prior and the body model stay
    cfg = {"render": False, "use_memory": True, "learn": True, "max_reflections": 0}
    s, h, err = _group(3, sample_id="tenant")
    for home in ("a", "b"):
        monkeypatch.setenv("HMRCRITIC_HOME", str(tmp_path / home))
        res = critique_group(s, h, judge="builtin", config=cfg, true_errors_mm=err)
        assert res.run_dir.startswith(str(tmp_path / home))
        assert res.memory_written["prototypes"] == 4
    assert (tmp_path / "b" / "memory").is_dir()
    for home in ("a", "b"):
        assert MemoryStore(tmp_path / home / "memory").prototypes.count() == 4, home


def test_true_errors_that_are_not_numbers_are_an_input_error(tmp_path):
    """``true_errors_mm=["12.5", "n/a", ...]`` (a CSV row) raised a bare ValueError from numpy, not the InputError
    the docstring promises (a service maps HMRCriticError to a 4xx answer, anything else to a 500)."""
    from hmrcritic.agent.graph import open_checkpointer
    from hmrcritic.errors import InputError

    s, h, _ = _group(4)
    with pytest.raises(InputError, match="true_errors_mm must be 4 finite values"):
        critique_group(s, h, config={"render": False, "use_memory": False}, true_errors_mm=["1", "n/a", "3", "4"],
                       checkpointer=open_checkpointer(tmp_path / "ck.sqlite"))


def test_groups_of_a_list_of_samples_are_named_after_the_samples():
    """A caller's own list of samples (no split name) gave every group the id ``str(list)-<index>``: the repr of
    the whole list with its arrays, ~10k characters, in run folder names, traces and export records."""
    from hmrcritic.agent.groups import groups_from_perturbed_gt

    s0, _, _ = _group(5, sample_id="img-a")
    s1, _, _ = _group(6, sample_id="img-b")
    ids = [g.group_id for g in groups_from_perturbed_gt([s0, s1, s0], num_groups=3, num_generations=2)]
    assert ids == ["img-a-000000", "img-b", "img-a-000002"]
