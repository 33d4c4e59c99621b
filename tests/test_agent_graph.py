"""The critique agent graph: real LangGraph + SqliteSaver + Chroma memory, on constructed scenes."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from hmrcritic.agent import nodes
from hmrcritic.agent.api import critique_group, critique_groups
from hmrcritic.agent.graph import build_graph, compile_graph, open_checkpointer
from hmrcritic.agent.judges import BuiltinJudge, JudgeContext, make_judge
from hmrcritic.agent.schema import GroupCritique, HypothesisScore
from hmrcritic.agent.state import AgentConfig
from hmrcritic.errors import InputError, JudgeError

N = 6


pytestmark = pytest.mark.usefixtures("small_prior")


def make_scene(seed: int, sample_id: str | None = None):
    from hmrcritic.agent.evidence import project
    from hmrcritic.hmr.body import load_body_model
    from hmrcritic.hmr.poses import sample_poses
    from hmrcritic.hmr.rotations import axis_angle_to_matrix, matrix_to_axis_angle

    p = sample_poses(1, seed)
    Rx = axis_angle_to_matrix(torch.tensor([[np.pi, 0, 0]], dtype=torch.float32))
    go = matrix_to_axis_angle(Rx @ axis_angle_to_matrix(p["global_orient_body"]))
    body = load_body_model()
    transl = torch.tensor([[0.0, 0.2, 3.5]])
    out = body(go, p["body_pose"], p["betas"], transl)
    K = np.array([[500, 0, 256], [0, 500, 256], [0, 0, 1]], np.float32)
    uv = project(body.coco17(out), torch.as_tensor(K))[0].numpy()
    kp = np.concatenate([uv, np.ones((17, 1))], 1).astype(np.float32)
    return SimpleNamespace(
        sample_id=sample_id or f"scene-{seed}", keypoints=kp, K=K, image_size=(512, 512), smpl24_keypoints=None,
        image_path=None, mask_path=None, global_orient=go[0].numpy(), body_pose=p["body_pose"][0].numpy(),
        betas=p["betas"][0].numpy(), transl=transl[0].numpy(), joints3d=out.joints[0].numpy(), category=None)


def make_group(seed: int, n: int = N, sample_id: str | None = None):
    from hmrcritic.agent.groups import perturb_group, true_errors

    s = make_scene(seed, sample_id)
    h = perturb_group(s, n, np.random.default_rng(seed))
    return s, h, true_errors(h, s)


@pytest.fixture()
def memory(tmp_path):
    from hmrcritic.memory.store import MemoryStore

    store = MemoryStore(path=tmp_path / "memory")
    store.reset(seed_starter=True)
    return store


@pytest.fixture()
def saver(tmp_path):
    return open_checkpointer(tmp_path / "ckpt.sqlite")


def cfg(**kw) -> AgentConfig:
    return AgentConfig(render=False, **kw)


def test_graph_compiles_and_stores_state(tmp_path, memory, saver):
    s, h, _ = make_group(1)
    res = critique_group(s, h, memory=memory, config=cfg(), checkpointer=saver, run_dir=tmp_path / "g1")
    assert len(res.scores) == N and sorted(res.ranking) == list(range(N))
    assert all(0 <= sc.overall <= 10 for sc in res.scores)
    app = compile_graph(saver)
    snap = app.get_state({"configurable": {"thread_id": "scene-1"}})
    st = snap.values
    assert st["done"] is True and snap.next == ()
    assert len(st["critique"]["scores"]) == N
    assert set(st["evidence"]) >= {"reproj_px", "hyperextension_deg", "consensus_dev_mm", "pose_prior_nll"}
    assert all(len(v) == N for v in st["evidence"].values())
    assert st["rules"], "starter rules must be recalled"
    assert st["reflections"][0]["round"] == 0
    assert (tmp_path / "g1" / "evidence.npz").exists() and (tmp_path / "g1" / "critique.json").exists()
    # state is plain: no numpy leaked into the checkpoint
    assert all(isinstance(x, float) for x in st["evidence"]["reproj_px"])


def test_nodes_alone(tmp_path, memory):
    from hmrcritic.agent.api import _sample_arrays, load_hypotheses
    from hmrcritic.io import atomic_save_npz

    s, h, err = make_group(2)
    run_dir = tmp_path / "run"
    atomic_save_npz(run_dir / "inputs.npz", **_sample_arrays(s), **load_hypotheses(h), true_error_mm=err)
    config = {"configurable": {"agent": cfg(learn=True).model_dump(), "memory": memory}}
    state = {"group_id": "g2", "run_dir": str(run_dir), "num_hypotheses": N, "round": 0, "reflections": []}
    state.update(nodes.render(state, config))
    assert state["num_hypotheses"] == N and state["renders"] == {}
    state.update(nodes.recall(state, config))
    assert nodes.prototype_hits(state) == [] and 0 < len(state["rules"]) <= cfg().rules_k
    state.update(nodes.critique(state, config))
    crit = GroupCritique.model_validate(state["critique"])
    assert [x.index for x in crit.scores] == list(range(N))
    state.update(nodes.reflect(state, config))
    assert state["reflections"][-1]["action"] in ("accept", "revise")
    before = memory.prototypes.count()
    out = nodes.memory_write(state, config)
    assert out["done"] and out["memory_written"]["prototypes"] == N
    assert memory.prototypes.count() == before + N
    # learned prototypes are recalled next time, with settled (label-informed) scores
    state.update(nodes.recall(state, config))
    hits = nodes.prototype_hits(state)
    assert len(hits) == N and hits[0][0]["similarity"] > 0.99
    assert hits[0][0]["error_mm"] is not None


def test_memory_write_rerun_after_a_crash_counts_each_rule_use_once(tmp_path, memory, monkeypatch):
    """A run killed after memory_write wrote and before its checkpoint was saved re-runs the node on resume: the
    rule uses were counted a second time. Also killed half-way (the plan kept, the writes not all done)."""
    from hmrcritic.agent.api import _sample_arrays, load_hypotheses
    from hmrcritic.io import atomic_save_npz

    s, h, err = make_group(2)
    config = {"configurable": {"agent": cfg(learn=True).model_dump(), "memory": memory}}

    def through_reflect(run_dir):
        atomic_save_npz(run_dir / "inputs.npz", **_sample_arrays(s), **load_hypotheses(h), true_error_mm=err)
        state = {"group_id": "g2", "run_id": f"run-{run_dir.name}", "run_dir": str(run_dir), "num_hypotheses": N,
                 "round": 0, "reflections": []}
        for node in (nodes.render, nodes.recall, nodes.critique, nodes.reflect):
            state.update(node(state, config))
        return state

    def uses():
        return {r.rule_id: (r.n_used, r.n_success) for r in memory.rules.all(include_retired=True)}

    before = uses()
    state = through_reflect(tmp_path / "a")
    first = nodes.memory_write(state, config)
    once = uses()
    assert first["memory_written"]["rules_recorded"] > 0 and once != before
    again = nodes.memory_write(state, config)  # the resumed run
    assert uses() == once and again["memory_written"] == first["memory_written"]
    # killed after the plan was kept and the prototypes written, before the rule statistics: the resume applies
    # the same absolute records, once
    state = through_reflect(tmp_path / "b")
    real = type(memory.rules).update
    monkeypatch.setattr(type(memory.rules), "update", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        nodes.memory_write(state, config)
    assert uses() == once
    monkeypatch.setattr(type(memory.rules), "update", real)
    nodes.memory_write(state, config)
    twice = uses()
    nodes.memory_write(state, config)
    assert uses() == twice and sum(u for u, _ in twice.values()) - sum(u for u, _ in once.values()) == \
        first["memory_written"]["rules_recorded"]


def test_rerun_returns_finished_thread(tmp_path, memory, saver):
    s, h, _ = make_group(3)
    first = critique_group(s, h, memory=memory, config=cfg(), checkpointer=saver, run_dir=tmp_path / "g")
    second = critique_group(s, h, memory=memory, config=cfg(), checkpointer=saver, run_dir=tmp_path / "g")
    assert not first.resumed and second.resumed and second.finished_earlier and not first.finished_earlier
    assert second.overall == first.overall
    with pytest.raises(InputError, match="different inputs"):
        h2 = {k: v.copy() for k, v in h.items()}
        h2["body_pose"][0, 0] += 0.1
        critique_group(s, h2, memory=memory, config=cfg(), checkpointer=saver, run_dir=tmp_path / "g")
    third = critique_group(s, h2, memory=memory, config=cfg(), checkpointer=saver, run_dir=tmp_path / "g",
                           fresh=True)
    assert not third.resumed
    # a finished critique is not handed out under another judge's name: that judge never saw the group
    strict = type("StrictJudge", (BuiltinJudge,), {"name": "strict"})()
    with pytest.raises(InputError, match="critiqued with the builtin judge"):
        critique_group(s, h2, memory=memory, config=cfg(), judge=strict, checkpointer=saver, run_dir=tmp_path / "g")
    fourth = critique_group(s, h2, memory=memory, config=cfg(), judge=strict, checkpointer=saver,
                            run_dir=tmp_path / "g", fresh=True)
    assert fourth.judge == "strict" and not fourth.resumed
    again = critique_group(s, h2, memory=memory, config=cfg(), judge=strict, checkpointer=saver, run_dir=tmp_path / "g")
    assert again.finished_earlier and again.judge == "strict"


def test_finished_thread_is_not_reused_under_other_settings_or_another_image(tmp_path, memory, saver):
    """Only the arrays were compared: a group critiqued with the revise loop off (or rendering off, or without
    learning) came back "finished earlier" for a run with it on, and a new photo behind the same keypoints got
    the old photo's scores."""
    from PIL import Image

    s, h, _ = make_group(6)
    img = tmp_path / "photo.png"
    Image.new("RGB", (512, 512), (200, 10, 10)).save(img)
    s.image_path = str(img)
    kw = {"memory": memory, "checkpointer": saver, "run_dir": tmp_path / "g"}
    first = critique_group(s, h, config=cfg(max_reflections=0), **kw)
    assert critique_group(s, h, config=cfg(max_reflections=0), **kw).finished_earlier  # same: reused
    other = critique_group(s, h, config=cfg(max_reflections=2), **kw)
    assert not other.finished_earlier and not other.resumed
    Image.new("RGB", (512, 512), (10, 200, 10)).save(img)  # same path, another image
    again = critique_group(s, h, config=cfg(max_reflections=2), **kw)
    assert not again.finished_earlier and not again.resumed and first.group_id == again.group_id


def test_a_finished_vlm_critique_is_not_reused_for_another_model(tmp_path, memory, saver, monkeypatch):
    """The judge was compared by name only: after HMRCRITIC_VLM_MODEL changed, `critique --judge vlm` came back
    "finished earlier" with the other model's scores, attributed to the new one."""
    from openai_stub_server import StubOpenAIServer

    from hmrcritic.agent.vlm import VLMJudge
    from hmrcritic.config import JudgeSettings

    s, h, _ = make_group(7)
    kw = {"memory": memory, "checkpointer": saver, "run_dir": tmp_path / "g", "config": cfg(max_reflections=0)}
    with StubOpenAIServer(require_images=False) as srv:
        monkeypatch.setenv("HMRCRITIC_BASE_URL", srv.base_url)
        monkeypatch.setenv("HMRCRITIC_VLM_MODEL", "model-a")
        first = critique_group(s, h, judge="vlm", **kw)
        assert critique_group(s, h, judge="vlm", **kw).finished_earlier  # same model: reused
        calls = len(srv.requests)
        monkeypatch.setenv("HMRCRITIC_VLM_MODEL", "model-b")
        other = critique_group(s, h, judge="vlm", **kw)
        assert not other.finished_earlier and len(srv.requests) == calls + 1
        assert srv.requests[-1].body["model"] == "model-b"
        # the same for a judge object: its settings, not only its name
        judge_c = VLMJudge(JudgeSettings(base_url=srv.base_url, model="model-c"))
        assert not critique_group(s, h, judge=judge_c, **kw).finished_earlier
        assert critique_group(s, h, judge=judge_c, **kw).finished_earlier
    assert first.judge == other.judge == "vlm"
    # and the result says which model scored it (scores.json, report, the CLI table)
    assert (first.judge_model, other.judge_model) == (f"model-a @ {srv.base_url}", f"model-b @ {srv.base_url}")
    with pytest.raises(InputError, match="critiqued with the vlm judge"):  # not silently replaced
        critique_group(s, h, **kw)
    assert critique_group(s, h, fresh=True, **kw).judge_model is None  # builtin


def test_group_ids_that_clean_to_one_name_get_their_own_run_folders(memory, saver):
    from hmrcritic.agent.api import run_folder_name

    assert run_folder_name("scene-1") == "scene-1"  # a clean id is its own folder name
    assert len({run_folder_name(i) for i in ("c/1", "c_1", "c:1", "x" * 130, "x" * 131)}) == 5
    s1, h1, _ = make_group(4)
    s2, h2, _ = make_group(5)
    a = critique_group(s1, h1, memory=memory, config=cfg(), checkpointer=saver, group_id="c/1")
    b = critique_group(s2, h2, memory=memory, config=cfg(), checkpointer=saver, group_id="c_1")
    assert a.run_dir != b.run_dir
    again = critique_group(s1, h1, memory=memory, config=cfg(), checkpointer=saver, group_id="c/1")
    assert again.finished_earlier and again.run_dir == a.run_dir and again.overall == a.overall


class FlakyJudge:
    """Fails on its first call (like a timed-out endpoint), then behaves as the builtin judge."""

    name = "flaky"

    def __init__(self):
        self.calls = 0
        self.inner = BuiltinJudge()

    def critique(self, ctx):
        self.calls += 1
        if self.calls == 1:
            raise JudgeError(f"group {ctx.group_id}: endpoint timed out after 3 retries")
        return self.inner.critique(ctx)

    def propose_rules(self, ctx, mistakes):
        return self.inner.propose_rules(ctx, mistakes)


def test_interrupted_thread_resumes_from_checkpoint(tmp_path, memory, saver):
    s, h, _ = make_group(4)
    judge = FlakyJudge()
    version = memory.version()
    with pytest.raises(JudgeError, match="timed out"):
        critique_group(s, h, judge=judge, memory=memory, config=cfg(learn=True), checkpointer=saver,
                       run_dir=tmp_path / "g")
    assert memory.version() == version  # nothing half-written
    updates = []
    res = critique_group(s, h, judge=judge, memory=memory, config=cfg(learn=True), checkpointer=saver,
                         run_dir=tmp_path / "g", on_update=lambda node, u, t: updates.append(node))
    assert res.resumed and not res.finished_earlier and updates[0] == "critique" and "render" not in updates
    assert updates[-1] == "memory_write" and memory.version() != version


class InvalidJudge:
    """Always leaves out a hypothesis: the reflect node must flag it every round, but only so often."""

    name = "invalid"

    def __init__(self):
        self.calls = 0

    def critique(self, ctx: JudgeContext) -> GroupCritique:
        self.calls += 1
        return GroupCritique(scores=[HypothesisScore(index=i, motion_structure=5, physical_feasibility=5,
                                                     image_alignment=5, overall=5, rationale="same")
                                     for i in range(ctx.num_hypotheses - 1)])

    def propose_rules(self, ctx, mistakes):
        raise NotImplementedError


@pytest.mark.parametrize("max_reflections", [0, 2])
def test_revise_loop_is_bounded(tmp_path, memory, saver, max_reflections):
    s, h, _ = make_group(5, sample_id=f"bounded-{max_reflections}")
    judge = InvalidJudge()
    before = memory.version()
    # the rounds run out on a critique still missing a hypothesis: the group fails (nothing written), it is not
    # accepted as it is
    with pytest.raises(JudgeError, match=f"still invalid after {max_reflections} revision"):
        critique_group(s, h, judge=judge, memory=memory, config=cfg(max_reflections=max_reflections, learn=True),
                       checkpointer=saver, run_dir=tmp_path / "g")
    assert judge.calls == max_reflections + 1
    assert memory.version() == before and not (tmp_path / "g" / "critique.json").exists()


def test_reflection_fixes_contradictions():
    """A critique that ranks a dominated hypothesis first is revised so that it no longer does."""
    ev = {"reproj_rel": [0.01, 0.2, 0.05], "hyperextension_deg": [0.0, 40.0, 0.0],
          "consensus_dev_mm": [10.0, 200.0, 20.0]}
    ctx = JudgeContext(group_id="c", num_hypotheses=3, evidence=ev)
    bad = GroupCritique(scores=[HypothesisScore(index=i, motion_structure=5, physical_feasibility=5,
                                                image_alignment=5, overall=o, rationale="x")
                                for i, o in enumerate([4.0, 9.0, 3.0])])
    issues = nodes.check_critique(ctx, bad)
    assert any(i.kind == "contradiction" and i.indices == [1, 0] for i in issues)
    fixed = BuiltinJudge().critique(ctx.model_copy(update={"round": 1, "previous": bad, "issues": issues}))
    o = [x.overall for x in fixed.scores]
    assert o[1] < o[0] and o[1] < o[2]
    assert "revised" in fixed.summary
    assert not [i for i in nodes.check_critique(ctx, fixed) if i.kind == "contradiction"]


def test_memory_unchanged_without_learning(tmp_path, memory, saver):
    s, h, err = make_group(6)
    version, count = memory.version(), memory.prototypes.count()
    res = critique_group(s, h, memory=memory, config=cfg(learn=False), checkpointer=saver,
                         run_dir=tmp_path / "a", true_errors_mm=err)
    assert memory.version() == version and memory.prototypes.count() == count
    assert res.memory_written == {"prototypes": 0, "rules_recorded": 0}
    s2, h2, err2 = make_group(7)
    res = critique_group(s2, h2, memory=memory, config=cfg(learn=True), checkpointer=saver,
                         run_dir=tmp_path / "b", true_errors_mm=err2)
    assert memory.prototypes.count() == count + N
    assert res.memory_written["rules_recorded"] == len(res.rules_applied)
    used = {r.rule_id: r.n_used for r in memory.rules.all()}
    assert all(used[r] >= 1 for r in res.rules_applied)


def test_bad_groups_fail_alone(tmp_path, memory, saver):
    good = make_group(8)
    nan = make_group(9)
    nan[1]["body_pose"][2, 5] = np.nan
    wrong = make_group(10)
    wrong[0].keypoints = wrong[0].keypoints[:12]
    flaky = make_group(12, sample_id="judge-fails")

    class Garbage:
        name = "garbage"

        def critique(self, ctx):
            if ctx.group_id == "judge-fails":
                return {"scores": "not a list"}
            return BuiltinJudge().critique(ctx)

        def propose_rules(self, ctx, mistakes):
            raise NotImplementedError

    version = memory.version()
    items = [{"sample": g[0], "hypotheses": g[1], "run_dir": tmp_path / str(i)}
             for i, g in enumerate([good, nan, wrong, flaky])]
    results = critique_groups(items, judge=Garbage(), memory=memory, config=cfg(learn=True),
                              checkpointer=saver)
    assert [r.error is None for r in results] == [True, False, False, False]
    assert "hypothesis 2" in results[1].error and results[1].error_type == "InputError"
    assert "keypoints" in results[2].error
    assert results[3].error_type == "JudgeError" and "judge-fails" in results[3].error
    assert memory.prototypes.count() == N  # only the good group was learnt
    assert memory.version() != version


def test_build_graph_is_uncompiled_and_drawable():
    g = build_graph()
    assert set(nodes.NODE_NAMES) <= set(g.nodes)
    text = g.compile().get_graph().draw_mermaid()
    assert "reflect" in text and "memory_write" in text
    with pytest.raises(InputError):
        make_judge("nope")


def _rule(rule_id: str, measure: str, threshold: float, points: float):
    from hmrcritic.memory.schema import Rule, RuleCondition

    return Rule(rule_id=rule_id, text=f"{measure} > {threshold} → take off {points} points.",
                condition=RuleCondition(measure=measure, comparator=">", threshold=threshold, points=points,
                                        axis="motion_structure"))


def test_judge_without_rules_weighs_measures_equally_and_rules_carry_the_knowledge():
    """Without memory the builtin judge ranks by the mean within-group rank of the measures (it does not
    know which one matters); a rule on one measure changes that ranking toward what the rule says."""
    # h0 is best on two measures but far from the consensus; h1 is the reverse
    ev = {"reproj_rel": [0.01, 0.03, 0.02], "pose_prior_nll": [0.0, 2.0, 1.0],
          "consensus_dev_mm": [150.0, 10.0, 60.0]}
    ctx = JudgeContext(group_id="k", num_hypotheses=3, evidence=ev)
    plain = [s.overall for s in BuiltinJudge().critique(ctx).scores]
    assert plain[0] > plain[2] > plain[1]  # mean ranks 1/3, 2/3, 1/2 (worse side)
    ruled = BuiltinJudge().critique(ctx.model_copy(update={"rules": [_rule("r-cons", "consensus_dev_mm", 100, 6)]}))
    o = [s.overall for s in ruled.scores]
    assert o[0] < o[1] and o[0] < o[2] and ruled.rules_applied == ["r-cons"]
    # a larger value of a measure where lower is better (silhouette IoU) counts as better
    iou = JudgeContext(group_id="i", num_hypotheses=2, evidence={"silhouette_iou": [0.9, 0.3]})
    a, b = (s.overall for s in BuiltinJudge().critique(iou).scores)
    assert a > b


def test_axis_with_no_difference_in_the_group_reads_full_marks():
    """A group where nobody violates a joint limit or penetrates itself reads 10 on physical feasibility
    (not the 8.6 of a shared mean rank); once one hypothesis differs, it alone loses points. ``overall`` is
    the same either way up to one constant factor per group (its ranking never depended on a tie)."""
    from hmrcritic.agent.judges import generic_badness

    feasible = {"joint_limit_deg": [0.0, 0.0, 0.0], "penetration_mm": [0.0, 0.0, 0.0],
                "reproj_rel": [0.01, 0.03, 0.02]}
    scores = BuiltinJudge().critique(JudgeContext(group_id="f", num_hypotheses=3, evidence=feasible)).scores
    assert [s.physical_feasibility for s in scores] == pytest.approx([10.0, 10.0, 10.0])
    assert scores[0].image_alignment == pytest.approx(10.0) and scores[1].image_alignment < scores[2].image_alignment
    one_bad = {**feasible, "penetration_mm": [0.0, 25.0, 0.0]}
    s2 = BuiltinJudge().critique(JudgeContext(group_id="f", num_hypotheses=3, evidence=one_bad)).scores
    assert s2[1].physical_feasibility < s2[0].physical_feasibility == s2[2].physical_feasibility < 10.0
    overall, axes = generic_badness(feasible, 3)
    assert np.allclose(axes["physical_feasibility"], 0.0)
    assert np.allclose(overall, (0.5 + 0.5 + np.array([0.0, 1.0, 0.5])) / 3)  # ties still count in overall


def test_prototypes_reorder_within_the_evidence():
    """A confident prototype consensus of a low settled score moves that hypothesis down the ranking."""
    from hmrcritic.agent.judges import PrototypeHit

    ev = {"reproj_rel": [0.01, 0.02], "consensus_dev_mm": [10.0, 20.0]}
    ctx = JudgeContext(group_id="p", num_hypotheses=2, evidence=ev)
    base = [s.overall for s in BuiltinJudge().critique(ctx).scores]
    assert base[0] > base[1]

    def hit(v):
        return PrototypeHit(proto_id=f"p{v}", similarity=0.99, overall=v, motion_structure=5,
                            physical_feasibility=5, image_alignment=5)

    with_p = ctx.model_copy(update={"prototypes": [[hit(0.5)], [hit(9.5)]]})
    o = [s.overall for s in BuiltinJudge(proto_weight=1.0).critique(with_p).scores]
    assert o[0] < o[1]
    assert [s.overall for s in BuiltinJudge(proto_weight=0.0).critique(with_p).scores] == pytest.approx(base)


def test_prototype_level_calibrates_the_group_and_keeps_its_ranking():
    """Labelled prototypes move a group's level PROTO_LEVEL of the way (× confidence) to what similar poses
    truly deserved; the ranking within the group is kept exactly, no score passes 10, and prototypes without a
    recorded true error (written from unlabelled critiques) carry no level."""
    import math

    from hmrcritic.agent.judges import PROTO_LEVEL, PrototypeHit, settled_overall

    ev = {"reproj_rel": [0.01, 0.03, 0.02], "consensus_dev_mm": [10.0, 30.0, 20.0]}
    ctx = JudgeContext(group_id="l", num_hypotheses=3, evidence=ev)

    def overall(error_mm, **kw):
        hits = [[PrototypeHit(proto_id=f"p{i}", similarity=0.99, overall=5.0, motion_structure=5,
                              physical_feasibility=5, image_alignment=5, error_mm=error_mm)] for i in range(3)]
        crit = BuiltinJudge(proto_weight=0.0, **kw).critique(ctx.model_copy(update={"prototypes": hits}))
        return np.array([s.overall for s in crit.scores]), crit.summary

    base = np.array([s.overall for s in BuiltinJudge(proto_weight=0.0).critique(ctx).scores])
    hard, summary = overall(300.0)
    easy, _ = overall(1.0)
    for o in (hard, easy):
        assert list(np.argsort(-o)) == list(np.argsort(-base)) and o.max() <= 10.0 + 1e-9
    want = PROTO_LEVEL * 0.99 ** 4 * (math.log(settled_overall(300.0)) - np.log(base).mean())
    assert np.log(hard) - np.log(base) == pytest.approx(np.full(3, want))
    assert "level calibrated" in summary
    assert easy == pytest.approx(base)  # the best already sits at 10: the cap leaves the group where it is
    assert overall(None)[0] == pytest.approx(base)
    assert overall(300.0, proto_level=0.0)[0] == pytest.approx(base)


def test_contradictions_are_judged_on_the_measures_fired_rules_read():
    """With a fired rule the dominance check reads only its measure(s); without rules, every measure."""
    ev = {"consensus_dev_mm": [10.0, 200.0], "pose_prior_nll": [5.0, 1.0]}
    bad = GroupCritique(scores=[HypothesisScore(index=i, motion_structure=5, physical_feasibility=5,
                                                image_alignment=5, overall=o, rationale="x")
                                for i, o in enumerate([4.0, 9.0])])
    plain = JudgeContext(group_id="c", num_hypotheses=2, evidence=ev)
    assert not [i for i in nodes.check_critique(plain, bad) if i.kind == "contradiction"]  # no dominance
    ruled = plain.model_copy(update={"rules": [_rule("r-cons", "consensus_dev_mm", 100, 6)]})
    issues = [i for i in nodes.check_critique(ruled, bad) if i.kind == "contradiction"]
    assert [i.indices for i in issues] == [[1, 0]]


def test_recall_skips_rules_that_cannot_fire():
    assert nodes._applicable(_rule("a", "consensus_dev_mm", 100, 1), {"consensus_dev_mm": [50.0, 150.0]})
    assert not nodes._applicable(_rule("b", "consensus_dev_mm", 200, 1), {"consensus_dev_mm": [50.0, 150.0]})
    assert not nodes._applicable(_rule("c", "floating_mm", 1, 1), {"consensus_dev_mm": [50.0]})


def test_throwaway_critique_leaves_nothing_behind_unless_it_fails(tmp_path, memory, saver, monkeypatch):
    """keep=False (exploration and evaluation loops): no checkpoint thread, no trace, and discard_run removes
    the run folder; a failed run keeps its trace so it can be looked at."""
    import tempfile
    from pathlib import Path

    from hmrcritic.agent.api import discard_run
    from hmrcritic.agent.trace import traces_dir

    def last():
        return (traces_dir() / "LAST").read_text() if (traces_dir() / "LAST").exists() else None

    traces, last_before = set(traces_dir().glob("*.jsonl")), last()
    s, h, _ = make_group(21, sample_id="throwaway")
    res = critique_group(s, h, memory=memory, config=cfg(), checkpointer=saver, keep=False)
    assert (Path(res.run_dir) / "inputs.npz").exists() and len(res.scores) == N
    left = saver.conn.execute("SELECT count(*) FROM checkpoints WHERE thread_id LIKE 'throwaway%'").fetchone()[0]
    assert left == 0 and res.group_id == "throwaway"
    assert set(traces_dir().glob("*.jsonl")) == traces and last() == last_before
    discard_run(res)
    assert not Path(res.run_dir).exists()
    # never outside runs_dir() and the temp folder
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "elsewhere"))
    outside = tmp_path / "user-folder"
    outside.mkdir()
    discard_run(outside)
    assert outside.exists()

    class Broken:
        name = "broken"

        def critique(self, ctx):
            raise JudgeError("endpoint down")

        def propose_rules(self, ctx, mistakes):
            raise NotImplementedError

    s2, h2, _ = make_group(23, sample_id="throwaway-judge")
    with pytest.raises(JudgeError):
        critique_group(s2, h2, judge=Broken(), memory=memory, config=cfg(), checkpointer=saver, keep=False)
    new = set(traces_dir().glob("*.jsonl")) - traces
    assert len(new) == 1 and "endpoint down" in next(iter(new)).read_text()
    assert last().strip() == next(iter(new)).stem


def test_prune_runs_removes_old_threads_with_their_folders(tmp_path, memory):
    """runs prune: a thread goes with its run folder when that is older than the cutoff; fresh ones stay."""
    import os
    import time

    from hmrcritic.agent.api import safe_id
    from hmrcritic.agent.runs import prune_runs, runs_usage

    root = tmp_path / "runs"
    saver = open_checkpointer(root / "checkpoints.sqlite")
    for seed, gid in ((31, "old-group"), (32, "new-group")):
        s, h, _ = make_group(seed, sample_id=gid)
        critique_group(s, h, memory=memory, config=cfg(), checkpointer=saver,
                       run_dir=root / "groups" / safe_id(gid))
    # a fresh thread whose run folder the caller put elsewhere (critique_group(run_dir=...)) is not an orphan
    s, h, _ = make_group(33, sample_id="elsewhere")
    critique_group(s, h, memory=memory, config=cfg(), checkpointer=saver, run_dir=tmp_path / "elsewhere")
    (root / "traces").mkdir()
    for name, age_days in (("old-run", 30), ("new-run", 0)):
        p = root / "traces" / f"{name}.jsonl"
        p.write_text("{}\n")
        os.utime(p, (time.time() - age_days * 86400, time.time() - age_days * 86400))
    ten_days_ago = time.time() - 10 * 86400
    os.utime(root / "groups" / "old-group", (ten_days_ago, ten_days_ago))
    use = runs_usage(root)
    assert use["parts"]["checkpoints"]["count"] == 3 and use["parts"]["groups"]["count"] == 2

    dry = prune_runs(7, root=root, dry_run=True)
    assert dry["removed"]["checkpoints"] == 1 and dry["removed"]["groups"] == 1 and dry["removed"]["traces"] == 1
    assert runs_usage(root)["parts"]["checkpoints"]["count"] == 3  # a dry run deletes nothing

    out = prune_runs(7, root=root)
    assert out["removed"] == dry["removed"] and out["bytes_after"] < out["bytes_before"]
    app = compile_graph(saver)
    assert app.get_state({"configurable": {"thread_id": "old-group"}}).values == {}
    assert app.get_state({"configurable": {"thread_id": "new-group"}}).values["done"] is True
    assert app.get_state({"configurable": {"thread_id": "elsewhere"}}).values["done"] is True
    assert not (root / "groups" / "old-group").exists() and (root / "groups" / "new-group").exists()
    assert sorted(p.stem for p in (root / "traces").glob("*.jsonl")) == ["new-run"]
    with pytest.raises(InputError):
        prune_runs(-1, root=root)


def test_a_bad_config_is_refused_before_anything_is_written(tmp_path, memory, saver):
    s, h, _ = make_group(6)
    with pytest.raises(InputError, match="max_reflections"):
        critique_group(s, h, memory=memory, config={"render": False, "max_reflections": -1}, checkpointer=saver,
                       run_dir=tmp_path / "bad")
    assert not (tmp_path / "bad").exists()
    assert compile_graph(saver).get_state({"configurable": {"thread_id": "scene-6"}}).values == {}


def test_damaged_or_locked_checkpoint_database_is_one_line_naming_it(tmp_path, memory):
    """sqlite3 names no file: a damaged checkpoint database gave "DatabaseError: file is not a database", and a
    database locked by another process "OperationalError: database is locked", both mid-critique."""
    import sqlite3

    from hmrcritic.agent.graph import open_checkpointer
    from hmrcritic.errors import AssetError

    bad = tmp_path / "damaged.sqlite"
    bad.write_bytes(b"not a database at all" * 100)
    with pytest.raises(AssetError, match=f"checkpoint database {bad}.*move it aside"):
        open_checkpointer(bad)

    db = tmp_path / "locked.sqlite"
    saver = open_checkpointer(db)
    holder = sqlite3.connect(db)
    holder.execute("BEGIN EXCLUSIVE")
    saver.conn.execute("PRAGMA busy_timeout = 200")  # not the default 30 s wait in a test
    s, h, _ = make_group(7)
    try:
        with pytest.raises(AssetError, match=f"checkpoint database {db} is locked by another process"):
            critique_group(s, h, memory=memory, config=cfg(), checkpointer=saver, run_dir=tmp_path / "g")
    finally:
        holder.rollback()
        holder.close()
    assert critique_group(s, h, memory=memory, config=cfg(), checkpointer=saver, run_dir=tmp_path / "g").scores


def test_ground_evidence_does_not_depend_on_rendering(tmp_path, memory, saver):
    """With rendering off the ground measures fell back to the joints (the ankle sits above the sole), so
    the same body on the same floor read ~2 cm more floating than with rendering on."""
    s, h, _ = make_group(8)
    feet = s.joints3d[[7, 8, 10, 11], 1]  # y of the ankles and feet; the camera frame's y points down
    s.ground = (np.array([0.0, -1.0, 0.0], np.float32), float(feet.max()) + 0.02)  # height = −y + d
    off = critique_group(s, h, memory=memory, config=AgentConfig(render=False), checkpointer=saver,
                         run_dir=tmp_path / "off", group_id="ground-off")
    on = critique_group(s, h, memory=memory, config=AgentConfig(render=True), checkpointer=saver,
                        run_dir=tmp_path / "on", group_id="ground-on")
    assert off.evidence["floating_mm"] == on.evidence["floating_mm"]
    assert off.evidence["floor_penetration_mm"] == on.evidence["floor_penetration_mm"]


@pytest.mark.parametrize("bad", ["bottom_row", "lower", "skew", "negative_focal"])
def test_intrinsics_that_projection_would_misread_are_refused(memory, saver, bad):
    """Projection and rendering read fx, fy, cx, cy only: a K with another bottom row, a non-zero K[1, 0], a
    skew K[0, 1] or a non-positive focal length was silently misread."""
    s, h, _ = make_group(9)
    K = s.K.copy()
    if bad == "bottom_row":
        K[2] = [0.0, 0.0, 2.0]
    elif bad == "lower":
        K[1, 0] = 3.0
    elif bad == "skew":
        K[0, 1] = 60.0
    else:
        K[0, 0] = -500.0
    s.K = K
    with pytest.raises(InputError, match="intrinsics K must be"):
        critique_group(s, h, memory=memory, config=cfg(), checkpointer=saver)
