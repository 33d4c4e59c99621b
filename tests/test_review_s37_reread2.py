"""Second adversarial re-read of session 37's changes (commits after 1f04d78); each test failed before its fix
(evaluate_critic saying the end of its sampling twice; a progress that is not callable refused late)."""

from __future__ import annotations

import pytest


class _Stop(Exception):
    pass


def test_evaluate_critic_says_the_end_of_its_group_sampling_once(tmp_path, monkeypatch):
    """A Python ``progress(stage, i, n)`` of evaluate_critic hears each event once: since make_groups reports its
    own sampling (commit 5101348), the old ``progress("groups", n, n)`` after it repeated the last event (the
    CLI's tenths filter hides it; a callback that prints or counts each event does not)."""
    from hmrcritic.agent import evaluate_critic as ec
    from hmrcritic.agent import groups

    monkeypatch.setenv("HMRCRITIC_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(groups, "verify_split", lambda split, images: None)
    monkeypatch.setattr(groups, "groups_from_perturbed_gt", lambda *a, **k: ["g0", "g1", "g2"])

    def stop(*a, **k):
        raise _Stop

    monkeypatch.setattr(ec, "explore_failed_groups", stop)  # the first step after the held-out groups
    memory = tmp_path / "memory"
    memory.mkdir()
    events = []
    with pytest.raises(_Stop):
        ec.evaluate_critic(split="test", num_groups=3, num_generations=4, source="perturbed", memory_dir=memory,
                           workdir=tmp_path / "work", progress=lambda stage, i, n: events.append((stage, i, n)))
    assert events == [("groups", 3, 3)]


def test_make_groups_refuses_a_progress_that_is_not_callable_before_any_work(monkeypatch):
    """``progress`` of make_groups / groups_from_model (new in commit 5101348) must be a ``(done, total)`` callable
    or None. ``progress=True`` — what reproduce(), finetune() and prototypes.add() take to show progress — was
    "'bool' object is not callable" after the groups were made (with the model: after the first batch was sampled,
    the model loaded for nothing), where critique_groups refuses such a progress in one line up front."""
    from hmrcritic.agent import groups
    from hmrcritic.errors import InputError

    made = []
    monkeypatch.setattr(groups, "groups_from_perturbed_gt", lambda *a, **k: made.append(1) or ["g0", "g1"])
    with pytest.raises(InputError, match="progress"):
        groups.make_groups("test", num_groups=2, num_generations=2, source="perturbed", progress=True)
    assert made == []
