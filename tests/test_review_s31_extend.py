"""Session 31 review: the critic's extension points, as DEVELOPERS.md ("Extending the critic") and
docs/CONTRACTS.md ("agent/") document them, stay true.

A new contributor added an evidence measure, a custom judge and a hand-written rule following only the docs. What
silently did not work is pinned here, so the next contributor is told by a failing test instead:

* a measure is one entry of ``evidence.MEASURES`` plus its computation in ``compute_evidence``; everything else
  (the builtin judge, the rules, the VLM prompt's evidence table, the miner, the retrieval tags) reads the registry.
  A measure computed but not registered is unrounded, has no legend line, and is skipped by the judge's generic
  score and by the miner; one registered but never computed is a rule that never fires. A tag outside the memory's
  tag vocabulary or an axis outside ``AXES`` is dropped without a word.
* the cache keys (``evaluate_critic.code_digest``, which also keys a builtin critique's thread) must hash the code
  of every measure, or a changed measure reuses an explored memory and finished critiques of the old code.
* a custom judge object runs through the whole graph: revise rounds with the reflect node's issues, memory write.
* a hand-written rule (Python API or ``memory import``) is applied by the builtin judge, listed by ``memory rules``
  and named in the report — after ``fresh=True`` for a group critiqued before (a finished thread is reused).
"""

from __future__ import annotations

import ast
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from test_agent_graph import cfg, make_group

from hmrcritic.agent import evidence as ev_mod
from hmrcritic.agent.evidence import MEASURES, GroupInputs, compute_evidence, decimals, evidence_tags
from hmrcritic.agent.schema import AXES
from hmrcritic.memory.schema import Rule, RuleCondition
from hmrcritic.memory.starter_rules import TAG_VOCABULARY

ROOT = Path(__file__).resolve().parents[1]
N = 6

pytestmark = pytest.mark.usefixtures("small_prior")


class _FlatPrior:
    """A pose prior that reads 0 for every pose: the registry tests need no fitted prior."""

    def nll(self, body_pose):
        return torch.zeros(len(body_pose))


def _all_inputs(n: int = 4) -> GroupInputs:
    """A group with every optional input (person mask, rendered masks, ground plane, vertices), so that
    compute_evidence computes every measure it can."""
    from hmrcritic.agent.evidence import project
    from hmrcritic.hmr.body import load_body_model

    body = load_body_model()
    rng = np.random.default_rng(0)
    bp = (rng.normal(size=(n, 69)) * 0.2).astype(np.float32)
    go = torch.tensor([[math.pi, 0.0, 0.0]] * n)
    out = body(go, torch.as_tensor(bp), torch.zeros(n, 10), torch.tensor([[0.0, 0.2, 3.5]] * n))
    coco = body.coco17(out)
    K = np.array([[600.0, 0, 128], [0, 600.0, 128], [0, 0, 1]], np.float32)
    uv = project(coco[0], torch.as_tensor(K)).numpy()
    kp = np.concatenate([uv, np.ones((17, 1))], 1).astype(np.float32)
    mask = np.zeros((256, 256), bool)
    mask[40:220, 90:170] = True
    pred = np.stack([np.roll(mask, 5 * i, axis=1) for i in range(n)])
    return GroupInputs(joints=out.joints.numpy(), coco17=coco.numpy(), body_pose=bp, keypoints=kp, K=K,
                       image_size=(256, 256), mask=mask, pred_masks=pred,
                       ground=(np.array([0.0, -1.0, 0.0]), 1.0), vertices=out.vertices.numpy())


# ---- 1. an evidence measure: one registry entry, one computation --------------------------------------------

@pytest.mark.parametrize("name", sorted(MEASURES))
def test_every_registered_measure_is_complete(name):
    """Each MeasureSpec field is what its readers need: an axis the judge scores (else its rule points fall on
    no axis), a tag from the memory's vocabulary (else retrieval tags and mined rules' tags drop it silently),
    a positive scale (badness, rounding, the miner's graded steps) and a finite tag threshold."""
    spec = MEASURES[name]
    assert re.fullmatch(r"[a-z][a-z0-9_]*", name), name
    assert spec.unit.strip() and spec.description.strip(), name
    assert isinstance(spec.higher_is_worse, bool), name
    assert spec.axis in AXES, f"{name}: axis {spec.axis!r} is not one of {AXES}"
    assert spec.tag in TAG_VOCABULARY, f"{name}: tag {spec.tag!r} is not in memory/starter_rules.TAG_VOCABULARY"
    assert spec.scale > 0 and math.isfinite(spec.scale) and math.isfinite(spec.tag_at), name
    assert decimals(name) is not None


def test_compute_evidence_yields_exactly_the_registered_measures():
    """Given every optional input, compute_evidence returns one (N,) array per registered measure and nothing
    else: a measure computed but not registered is silently ignored by the judge's generic score, the miner and
    the prompt's legend; one registered but not computed never fires a rule (apply_rules skips it)."""
    inp = _all_inputs()
    got = compute_evidence(inp, prior=_FlatPrior())
    assert set(got) == set(MEASURES), (sorted(set(got) - set(MEASURES)), sorted(set(MEASURES) - set(got)))
    for name, values in got.items():
        assert values.shape == (4,) and values.dtype == np.float64 and np.isfinite(values).all(), name
        assert np.array_equal(values, np.round(values, decimals(name))), f"{name} not quantised"


@pytest.mark.parametrize("name", sorted(MEASURES))
def test_every_measure_reaches_the_judges_the_prompt_and_the_tags(name):
    """One made-up group whose only evidence is ``name``: the builtin judge's generic score and its rules read it,
    the judge context carries its legend (unit, direction, description) and the VLM's evidence table shows it,
    and its tag is emitted at ``tag_at``."""
    from hmrcritic.agent import nodes
    from hmrcritic.agent.judges import BuiltinJudge, JudgeContext, generic_badness
    from hmrcritic.agent.prompts import critique_text

    spec = MEASURES[name]
    good, bad = (0.0, 2.0 * spec.scale) if spec.higher_is_worse else (1.0, -spec.scale)
    values = [good, good, bad]
    overall, axes = generic_badness({name: values}, 3)
    assert overall[2] > overall[0] and axes[spec.axis][2] > 0
    cmp = ">" if spec.higher_is_worse else "<"
    rule = Rule(rule_id="r-" + name, text=f"{name} off -> take off 5 points.", origin="user",
                condition=RuleCondition(measure=name, comparator=cmp, threshold=(good + bad) / 2, points=5,
                                        axis=spec.axis))
    state = {"group_id": "g", "num_hypotheses": 3, "evidence": {name: values}, "rules": [rule.model_dump()]}
    ctx = nodes.build_context(state)
    assert spec.description in ctx.measure_info[name] and spec.unit in ctx.measure_info[name]
    crit = BuiltinJudge().critique(ctx)
    assert crit.rules_applied == [rule.rule_id]
    assert crit.scores[2].overall < crit.scores[0].overall
    text = critique_text(ctx, images=[])
    assert f"- {name}: {ctx.measure_info[name]}" in text
    assert spec.tag in evidence_tags({name: [spec.tag_at]})
    assert JudgeContext.model_validate(ctx.model_dump()).measure_info == ctx.measure_info


@pytest.mark.parametrize("name", sorted(MEASURES))
def test_the_builtin_miner_finds_a_rule_on_every_measure(name):
    """Exploration's miner searches every registered measure: in groups where only ``name`` singles out the
    over-rated (worse-half) hypotheses, it proposes a rule on ``name``, with its spec's axis and a known tag."""
    from hmrcritic.agent.mining import BatchGroup, candidate_to_rule, mine_rules

    spec = MEASURES[name]
    sign = 1.0 if spec.higher_is_worse else -1.0
    batch = []
    for g in range(3):
        error = np.arange(8, dtype=np.float64) * 10.0 + g  # h0 best
        overall = np.linspace(2.0, 9.0, 8)  # the critic ranks them the other way round: h4..h7 over-rated
        base = 0.5 if spec.higher_is_worse else 1.0
        vals = base + sign * np.where(np.arange(8) >= 4, 1.0 + 0.1 * np.arange(8), 0.01 * np.arange(8)) * spec.scale
        batch.append(BatchGroup(f"g{g}", {name: vals}, overall, error, tags=[spec.tag]))
    cands, rejected = mine_rules(batch)
    assert cands, [r.reason for r in rejected]
    assert cands[0].measure == name
    rule = candidate_to_rule(cands[0], 1)
    assert rule.condition.axis == spec.axis and rule.tags and set(rule.tags) <= set(TAG_VOCABULARY)


def _hmrcritic_imports(path: Path) -> set[str]:
    mods = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("hmrcritic"):
            for alias in node.names:  # `from hmrcritic.hmr import anatomy` names the module hmr/anatomy.py
                sub = ROOT / (node.module + "." + alias.name).replace(".", "/")
                mods.add(node.module + "." + alias.name if sub.with_suffix(".py").is_file() else node.module)
    return mods


def test_code_digest_hashes_every_module_the_evidence_reads(monkeypatch):
    """The explored-memory cache (evaluate-critic, reproduce) and a builtin critique's thread are keyed by
    ``evaluate_critic.code_digest()``: a module a measure is computed in must be among the files it hashes, or a
    changed measure reuses memories explored and critiques finished with the old one. (``hmrcritic.errors``
    holds messages only.)"""
    from hmrcritic.agent import evaluate_critic

    hashed: list[Path] = []
    real = evaluate_critic.sources_digest

    def spy(paths):
        paths = list(paths)
        hashed.extend(Path(p).resolve() for p in paths)
        return real(paths)

    monkeypatch.setattr(evaluate_critic, "sources_digest", spy)
    evaluate_critic.code_digest()
    evidence_file = Path(ev_mod.__file__).resolve()
    readers = {evidence_file}
    for mod in _hmrcritic_imports(evidence_file) - {"hmrcritic.errors"}:
        readers.add((ROOT / (mod.replace(".", "/") + ".py")).resolve())
    missing = sorted(str(p.relative_to(ROOT)) for p in readers if p not in hashed)
    assert not missing, f"add to evaluate_critic.code_digest(): {missing}"


def test_contracts_document_every_measure_and_every_spec_field():
    """docs/CONTRACTS.md names every measure and every MeasureSpec field (the recipe's first step)."""
    import dataclasses

    text = (ROOT / "docs" / "CONTRACTS.md").read_text(encoding="utf-8")
    section = text.split("## agent/", 1)[1]
    missing = [n for n in MEASURES if f"`{n}`" not in section]
    assert not missing, f"docs/CONTRACTS.md agent/ does not name {missing}"
    m = re.search(r"MeasureSpec\(([^)]*)\)", section)
    assert m, "CONTRACTS.md: MeasureSpec(...) signature missing"
    documented = [f.strip() for f in m.group(1).split(",")]
    assert documented == [f.name for f in dataclasses.fields(ev_mod.MeasureSpec)]


def test_developers_recipe_names_files_that_exist():
    """The "Extending the critic" steps in DEVELOPERS.md point at files that exist, and name the places a
    measure, a judge and a rule touch."""
    text = (ROOT / "DEVELOPERS.md").read_text(encoding="utf-8")
    assert "## Extending the critic" in text
    recipe = text.split("## Extending the critic", 1)[1]
    for path in sorted(set(re.findall(r"`((?:hmrcritic|tests|docs|benchmarks)/[\w/.]+\.(?:py|md|json))", recipe))):
        assert (ROOT / path).exists(), f"DEVELOPERS.md names {path}, which does not exist"
    for needle in ("MEASURES", "compute_evidence", "TAG_VOCABULARY", "code_digest", "generic_badness",
                   "GroupInputs", "fresh=True", "name", "propose_rules", "memory import", "rules.add"):
        assert needle in recipe, f"DEVELOPERS.md's recipe does not mention {needle}"


# ---- 2. a custom judge through the graph ----------------------------------------------------------------------

class EvidenceJudge:
    """A judge as CONTRACTS documents it (`Judge` protocol): scores from one measure its own way, and in a revise
    round applies the rules the reflect node says were not applied, citing them."""

    name = "s31-evidence"

    def __init__(self):
        self.rounds: list[tuple[int, list[str], list[str]]] = []

    def critique(self, ctx):
        from hmrcritic.agent.schema import GroupCritique, HypothesisScore

        self.rounds.append((ctx.round, [i.kind for i in ctx.issues], [i.rule_id or "" for i in ctx.issues]))
        n = ctx.num_hypotheses
        overall = np.full(n, 10.0)
        applied: list[str] = []
        if ctx.round > 0 and ctx.previous is not None:
            overall = np.array([s.overall for s in sorted(ctx.previous.scores, key=lambda s: s.index)])
            applied = list(ctx.previous.rules_applied)
            for issue in ctx.issues:
                if issue.kind == "rule" and issue.rule_id:
                    overall[issue.indices] *= 0.5
                    applied.append(issue.rule_id)
        return GroupCritique(
            scores=[HypothesisScore(index=i, motion_structure=float(overall[i]), physical_feasibility=float(overall[i]),
                                    image_alignment=float(overall[i]), overall=float(overall[i]), rationale="custom")
                    for i in range(n)],
            summary="custom judge", rules_applied=sorted(set(applied)))

    def propose_rules(self, ctx, mistakes):
        from hmrcritic.agent.schema import RuleProposals

        return RuleProposals()


def _always_rule() -> Rule:
    # fires on every hypothesis of every group: reproj_px is never negative
    return Rule(rule_id="user-always", text="Every hypothesis (reproj_px at or above 0 px) -> take off 5 points.",
                tags=["alignment"], origin="user",
                condition=RuleCondition(measure="reproj_px", comparator=">=", threshold=0.0, points=5.0,
                                        axis="image_alignment"))


def test_a_custom_judge_runs_through_the_graph_with_revise_and_memory_write(tmp_path):
    from hmrcritic.agent.api import critique_group
    from hmrcritic.agent.graph import open_checkpointer
    from hmrcritic.errors import InputError
    from hmrcritic.memory.store import MemoryStore

    memory = MemoryStore(path=tmp_path / "memory")
    memory.reset(seed_starter=True)
    memory.rules.add([_always_rule()])
    before = memory.version()
    s, h, err = make_group(21, n=N)
    judge = EvidenceJudge()
    saver = open_checkpointer(tmp_path / "ckpt.sqlite")
    res = critique_group(s, h, judge=judge, memory=memory, config=cfg(learn=True, max_reflections=2),
                         true_errors_mm=err, checkpointer=saver, run_dir=tmp_path / "g")
    assert res.judge == "s31-evidence" and res.judge_model is None
    # round 0 scored every hypothesis 10; the reflect node sent it back naming the rule; round 1 applied it
    assert judge.rounds[0][0] == 0 and judge.rounds[1][0] == 1
    assert "rule" in judge.rounds[1][1] and "user-always" in judge.rounds[1][2]
    assert "user-always" in res.rules_applied and all(sc.overall <= 5.0 for sc in res.scores)
    assert len(res.reflections) >= 2
    memory.refresh()
    assert memory.prototypes.count() == N and res.memory_written["prototypes"] == N
    assert {r.rule_id: r.n_used for r in memory.rules.all()}["user-always"] == 1
    assert memory.version() != before and res.memory_version == memory.version()
    # a finished thread is kept for the judge of that name: another name is refused, fresh=True recomputes
    other = EvidenceJudge()
    other.name = "s31-other"
    with pytest.raises(InputError, match="s31-evidence"):
        critique_group(s, h, judge=other, memory=memory, config=cfg(), checkpointer=saver, run_dir=tmp_path / "g")
    again = critique_group(s, h, judge=other, memory=memory, config=cfg(), checkpointer=saver, run_dir=tmp_path / "g",
                           fresh=True)
    assert again.judge == "s31-other" and not again.finished_earlier


# ---- 3. a hand-written rule ---------------------------------------------------------------------------------

def test_a_hand_written_rule_is_applied_listed_and_reported(tmp_path):
    from typer.testing import CliRunner

    from hmrcritic.agent.api import critique_group
    from hmrcritic.agent.graph import open_checkpointer
    from hmrcritic.agent.report import render_html
    from hmrcritic.cli import app
    from hmrcritic.memory.store import MemoryStore

    memory = MemoryStore(path=tmp_path / "memory")
    memory.reset(seed_starter=True)
    saver = open_checkpointer(tmp_path / "ckpt.sqlite")
    s, h, _ = make_group(22, n=N)
    kw = dict(memory=memory, config=cfg(), checkpointer=saver, run_dir=tmp_path / "g")
    first = critique_group(s, h, **kw)
    (rid,) = memory.rules.add([_always_rule().model_copy(update={"rule_id": ""})])  # "" → rule-<sha1 of text>
    # the memory is known by its folder, not its contents: the finished critique comes back as it was …
    stale = critique_group(s, h, **kw)
    assert stale.finished_earlier and rid not in stale.rules_applied
    assert stale.memory_version == first.memory_version != memory.version()
    # … and fresh=True critiques with what the memory holds now
    res = critique_group(s, h, fresh=True, **kw)
    assert rid in res.rules_applied and rid in [r["rule_id"] for r in res.rules_recalled]
    assert all(sc.overall < f.overall for sc, f in zip(res.scores, first.scores, strict=True))
    assert all(rid in sc.rationale for sc in res.scores)
    assert rid in render_html(res)
    listed = CliRunner().invoke(app, ["memory", "rules", "--memory-dir", str(tmp_path / "memory"), "--json"])
    assert listed.exit_code == 0, listed.output
    assert rid in listed.output and "user" in listed.output


def test_a_rule_file_for_memory_import(tmp_path):
    """The smallest file `memory import` takes for hand-written rules (the format CONTRACTS documents)."""
    from typer.testing import CliRunner

    from hmrcritic.cli import app
    from hmrcritic.memory.store import MemoryStore

    rule = _always_rule().model_dump()
    path = tmp_path / "rules.json"
    path.write_text(json.dumps({"format": "hmrcritic-memory", "schema": 1, "rules": [rule], "prototypes": []}))
    res = CliRunner().invoke(app, ["memory", "import", str(path), "--memory-dir", str(tmp_path / "m"), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["rules_added"] == 1
    got = {r.rule_id: r for r in MemoryStore(path=tmp_path / "m").rules.all()}["user-always"]
    assert got.origin == "user" and got.condition == RuleCondition.model_validate(rule["condition"])
