"""Session 37, the lead's own changes. Each test failed before its fix."""

from __future__ import annotations

import numpy as np
import pytest


def test_sampling_groups_reports_each_batch_and_draws_the_same_groups():
    """``groups_from_model`` said nothing while it sampled (tens of seconds for an evaluation's or reproduce's
    groups on a CPU). ``progress(done, total)`` after each batch; the groups are those drawn without it."""
    from hmrcritic.agent.groups import groups_from_model

    calls: list[tuple[int, int]] = []
    kw = {"num_groups": 3, "num_generations": 2, "seed": 5, "steps": 2, "batch": 2}
    with_progress = groups_from_model("test", progress=lambda i, n: calls.append((i, n)), **kw)
    assert calls == [(2, 3), (3, 3)]
    plain = groups_from_model("test", **kw)
    assert [g.group_id for g in with_progress] == [g.group_id for g in plain]
    for a, b in zip(with_progress, plain, strict=True):
        assert a.hypotheses.keys() == b.hypotheses.keys()
        for k in a.hypotheses:
            np.testing.assert_array_equal(a.hypotheses[k], b.hypotheses[k])


def test_perturbed_groups_report_once():
    from hmrcritic.agent.groups import make_groups

    calls: list[tuple[int, int]] = []
    got, used = make_groups("test", num_groups=4, num_generations=2, source="perturbed",
                            progress=lambda i, n: calls.append((i, n)))
    assert used == "perturbed" and len(got) == 4 and calls == [(4, 4)]


def test_evaluate_critic_reports_its_sampling_as_it_goes(monkeypatch):
    """evaluate-critic called ``progress("groups", n, n)`` only once every held-out group was drawn: a minute or more
    of silence with the model. The sampling's own progress is passed through, under the same stage name."""
    import hmrcritic.agent.evaluate_critic as ec

    seen: list[tuple] = []

    class Stop(Exception):
        pass

    def make_groups(split, num_groups, num_generations, seed=0, source="auto", progress=None):
        assert progress is not None, "evaluate_critic sampled without passing its progress on"
        progress(8, num_groups)
        progress(num_groups, num_groups)
        raise Stop

    import hmrcritic.agent.groups as gr

    monkeypatch.setattr(gr, "make_groups", make_groups)  # imported inside evaluate_critic
    monkeypatch.setattr(gr, "verify_split", lambda *a, **k: None)
    with pytest.raises(Stop):
        ec.evaluate_critic(split="test", num_groups=20, num_generations=2,
                           progress=lambda stage, i, n: seen.append((stage, i, n)))
    assert seen == [("groups", 8, 20), ("groups", 20, 20)]


def test_reproduce_logs_the_explore_stage_sampling_at_tenths():
    """Batches of 8 rarely land on ``_every``'s steps (every 5th of 56): the stage's sampling is logged through
    ``_tenths`` — the first batch, each tenth passed, the end — and the same figure twice is not logged again."""
    from hmrcritic.alignment import reproduce as rp

    lines: list[str] = []
    show = rp._tenths(lines.append, "explore: sampling train groups")
    for done in [*range(8, 56, 8), 56, 56]:
        show(done, 56)
    assert lines == [f"explore: sampling train groups: {d}/56" for d in (8, 16, 24, 32, 40, 48, 56)]
    lines.clear()
    show = rp._tenths(lines.append, "x")
    for done in range(1, 101):
        show(done, 100)
    assert len(lines) == 11 and lines[0] == "x: 1/100" and lines[-1] == "x: 100/100"


def test_reproduce_explore_stage_passes_a_sampling_progress(tmp_path, monkeypatch):
    import hmrcritic.agent.explore as ex
    import hmrcritic.agent.groups as gr
    import hmrcritic.hmr.diffusion as hd
    from hmrcritic.alignment import reproduce as rp

    def groups_from_model(*a, progress=None, **k):
        assert progress is not None, "reproduce sampled its explore groups without a progress"
        progress(8, 35)
        progress(35, 35)
        return []

    monkeypatch.setattr(ex, "explore", lambda memory, **k: {"rounds": 1})
    monkeypatch.setattr(gr, "groups_from_model", groups_from_model)
    monkeypatch.setattr(hd, "load_model", lambda *a, **k: None)
    lines: list[str] = []
    rp._explore(rp.make_preset("quick"), tmp_path / "memory", None, "k", rp._Log(tmp_path, lines.append))
    said = [line.split("] ", 1)[1] for line in lines]  # after the time stamp
    assert said == ["explore: sampling train groups: 8/35", "explore: sampling train groups: 35/35"]


@pytest.mark.parametrize("field", ["data", "out", "model"])
def test_finetune_config_names_its_python_fields(tmp_path, field):
    """``FinetuneConfig(data="")`` was refused as ``--data is empty``: a flag the Python caller never wrote (the CLI
    refuses its own empty or unknown-home paths before the config is made). Named as ExportConfig names its own."""
    from hmrcritic.alignment.finetune import FinetuneConfig
    from hmrcritic.errors import InputError

    given = {"data": str(tmp_path / "d"), "out": str(tmp_path / "o.pt"), field: ""}
    with pytest.raises(InputError, match=rf"^FinetuneConfig\.{field} is empty"):
        FinetuneConfig(**given)


def test_reproduce_names_its_model_argument(tmp_path):
    from hmrcritic.alignment.reproduce import reproduce
    from hmrcritic.errors import InputError

    with pytest.raises(InputError, match=r"^model is empty") as err:
        reproduce("quick", out_dir=tmp_path / "run", model=" ", progress=False)
    assert "--model" not in str(err.value)
