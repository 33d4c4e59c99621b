"""Session 22 review of ``hmrcritic reproduce`` / ``hmrcritic demo`` (the two end-to-end jobs): defects found in
review, each shown by a test that failed before its fix."""

from __future__ import annotations

import pytest
from test_review_s13_alignment import stand_in_stages  # noqa: F401  (a fixture)

from hmrcritic.errors import InputError


@pytest.mark.parametrize("setting", ["eval_generations=2000", "num_generations=1025", "explore_generations=5000"])
def test_reproduce_refuses_more_hypotheses_than_the_sampler_draws_before_any_work(tmp_path, monkeypatch, setting):
    """``--set eval_generations=2000`` passed the preset's checks and was refused only by the evaluate stage, after
    the exploration, the export and every finetune had run (most of an hour in ``full``); the sampler's cap
    (MAX_GENERATIONS) is now a preset check like every other bound."""
    from hmrcritic.alignment import reproduce as rp

    with pytest.raises(InputError, match=setting.split("=")[0]):
        rp.make_preset("quick", rp.parse_overrides([setting]))

    def explore(*a, **k):
        raise AssertionError("explored before the bad setting was refused")

    monkeypatch.setattr(rp, "_explore", explore)
    with pytest.raises(InputError, match="≤ 1024"):
        rp.reproduce("quick", out_dir=tmp_path / "run", overrides=rp.parse_overrides([setting]), progress=False)
    assert not (tmp_path / "run").exists()  # refused before the run folder was made


@pytest.mark.parametrize("seed", ["-1", str(2**45), str(2**32)])
def test_reproduce_refuses_a_seed_outside_what_every_other_command_takes(seed):
    """Every other command's ``--seed`` is 0..2**32-1; ``--set seed=-1`` failed inside the exploration (after its
    memory reset) and ``--set seed=35184372088832`` overflowed torch's generator in the finetune (seed × 7,919,993),
    after the exploration and the export had run."""
    from hmrcritic.alignment import reproduce as rp

    with pytest.raises(InputError, match="seed"):
        rp.make_preset("quick", rp.parse_overrides([f"seed={seed}"]))
    assert rp.make_preset("quick", {"seed": str(2**32 - 1)}).seed == 2**32 - 1


def test_reproduce_with_a_vlm_judge_and_no_endpoint_is_refused_before_sampling(tmp_path, monkeypatch):
    """``--set judge=vlm`` without HMRCRITIC_BASE_URL or a key was refused by the exploration engine only after
    reproduce had reset its memory and sampled every exploration and calibration group (1 min 40 s of the quick
    preset on a busy 2-core machine; 3 × 8 + 32 groups of 20 in ``full``)."""
    import hmrcritic.agent.groups as groups
    from hmrcritic.alignment import reproduce as rp

    for name in ("HMRCRITIC_BASE_URL", "HMRCRITIC_API_KEY", "OPENAI_API_KEY"):
        monkeypatch.delenv(name, raising=False)

    def sample(*a, **k):
        raise AssertionError("sampled exploration groups before the judge was checked")

    monkeypatch.setattr(groups, "groups_from_model", sample)
    with pytest.raises(InputError, match="no endpoint"):
        rp.reproduce("quick", out_dir=tmp_path / "run", overrides={"judge": "vlm"}, progress=False)


def record_evaluations(monkeypatch) -> list[str]:
    """Stand in for ``evaluate_model`` (reproduce's evaluation stage): the splits it is asked to evaluate, in order."""
    import hmrcritic.hmr.evaluate as hev

    evaluated: list[str] = []

    def evaluate_model(model, **k):
        evaluated.append(k["split"])
        return {"n_samples": 1}

    monkeypatch.setattr(hev, "evaluate_model", evaluate_model)
    return evaluated


def test_reproduce_does_not_reuse_evaluations_of_another_test_split(tmp_path, monkeypatch,
                                                                    stand_in_stages):  # noqa: F811
    """``load_split`` hands on a split generated with another ``--n`` / ``--seed`` as it is, and no cache key held
    which scenes the data folder has: after ``hmrcritic data generate --split test --n 3 --seed 5`` a re-run said
    "evaluate base: done before" (the default test scenes) beside aligned rows evaluated on the other scenes, one
    table from two test sets. The size and seed of a split generated otherwise are in the keys now; a folder whose
    splits are all the default ones (or not generated yet) keeps the keys it had."""
    from hmrcritic.alignment import reproduce as rp
    from hmrcritic.hmr.data import generate_split

    monkeypatch.setenv("HMRCRITIC_DATA", str(tmp_path / "data"))
    evaluated = record_evaluations(monkeypatch)
    out = tmp_path / "run"
    over = {"objectives": "gpa", "critic_top1": "false"}
    rp.reproduce("quick", out_dir=out, overrides=over, progress=False)
    assert len(evaluated) == 2  # base and gpa
    rp.reproduce("quick", out_dir=out, overrides=over, progress=False)
    assert len(evaluated) == 2  # the same data: cached
    generate_split("test", n=3, seed=5, quiet=True)  # a quick experiment's test split
    lines: list[str] = []
    rp.reproduce("quick", out_dir=out, overrides={**over, "objectives": "gpa,sft"}, progress=lines.append)
    assert not any("evaluate base: done before" in ln for ln in lines)  # base on the scenes sft is evaluated on
    assert len(evaluated) == 5, lines  # base, gpa and sft, all on the new split


def test_demo_refuses_more_hypotheses_than_the_sampler_draws_before_touching_its_memory(tmp_path, monkeypatch,
                                                                                        capsys):
    """``hmrcritic demo -n 2000 --out out/demo`` was refused by the exploration ("at most 1024 hypotheses per
    group") only after run_demo had reset out/demo/memory: shown with ``memory stats --memory-dir``, the earlier
    demo's memory (version named in its index.html, a mined rule, prototypes) was an empty starter memory after the
    failed command. Refused now as -n, before the demo starts."""
    import hmrcritic.demo
    import hmrcritic.hmr.data
    from hmrcritic.cli import main

    calls = []
    monkeypatch.setenv("HMRCRITIC_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(hmrcritic.hmr.data, "load_split", lambda name, **kw: [object()] * 10)
    monkeypatch.setattr(hmrcritic.demo, "run_demo", lambda *a, **kw: calls.append(a))
    rc = main(["demo", "-n", "2000", "--out", str(tmp_path / "demo")])
    err = capsys.readouterr().err
    assert rc == 2 and not calls, err
    assert "--num-generations must be in 1..1024, got 2000" in err
    assert main(["demo", "-n", "1024", "--out", str(tmp_path / "demo")]) == 0 and len(calls) == 1


def test_reproduce_refuses_an_objective_listed_twice(tmp_path, stand_in_stages):  # noqa: F811
    """``--set objectives=gpa,sft,gpa`` was accepted: the second gpa finetune said "done before" and the table,
    results.json and the chart showed the gpa row twice. Refused now, like an unknown objective, before any work."""
    from hmrcritic.alignment import reproduce as rp

    with pytest.raises(InputError, match=r"\['gpa'\] listed more than once"):
        rp.reproduce("quick", out_dir=tmp_path / "run", overrides={"objectives": "gpa,sft,gpa", "critic_top1": "false"},
                       progress=False)
    assert stand_in_stages["explore"] == [] and not (tmp_path / "run").exists()
    assert rp.make_preset("quick", {"objectives": "gpa,sft"}).objectives == ("gpa", "sft")


def test_a_bad_t_min_value_is_named_as_an_int_not_a_nonetype():
    """``--set t_min=5.0`` (or ``abc``) was refused as "not a valid NoneType": the preset's t_min is None (T/2),
    and the message named the type of that default instead of what the field takes."""
    from hmrcritic.alignment import reproduce as rp

    with pytest.raises(InputError) as err:
        rp.make_preset("quick", rp.parse_overrides(["t_min=5.0"]))
    assert "NoneType" not in str(err.value) and "not a valid int (or none: T/2)" in str(err.value)
    assert rp.make_preset("quick", {"t_min": "none"}).t_min is None
    assert rp.make_preset("quick", {"t_min": "5"}).t_min == 5
