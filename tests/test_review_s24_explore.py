"""Review s24 (exploration and rule mining, robustness): what an exploration still reported, refused or echoed wrong.

* a mined rule whose text is already a stored rule's (a retired one's too: a rule's id comes from its text) or an
  earlier proposal's of the same round was reported as added ("+ rule …", counted in the round) while the memory
  kept its old record or one copy;
* a custom judge's error quoting its API key went unscrubbed into the round's failures, the progress lines and
  explore_log.jsonl (a critique's JudgeError, a propose_rules failure);
* a judge's huge nonsense measure or comparator was quoted whole in the rejection reason;
* a progress record or pending batch plan of the wrong shape inside failed as a bare traceback;
* `--rounds 1000000000` hung before the first group (every round looked at, a dict and a set of them built);
* the docstring said ``limit`` caps the groups of one call; it caps the run's groups in total.
* a negative ``start`` sliced given groups from the end and kept a negative span.

Real groups (perturbed ground truth of a tiny generated split), the real agent graph, a real Chroma memory on disk;
the VLM judge talks HTTP to the local OpenAI-compatible stub (tests/openai_stub_server.py, the network edge).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import openai_stub_server  # noqa: E402
from openai_stub_server import StubOpenAIServer  # noqa: E402
from test_explore_robustness import train  # noqa: E402, F401

from hmrcritic.agent import explore as ex  # noqa: E402
from hmrcritic.errors import InputError  # noqa: E402
from hmrcritic.memory.rules import mined_rule_id  # noqa: E402
from hmrcritic.memory.schema import Rule  # noqa: E402
from hmrcritic.memory.store import MemoryStore  # noqa: E402

pytestmark = pytest.mark.usefixtures("explore_prior")


def _vlm(srv: StubOpenAIServer):
    from hmrcritic.agent.vlm import VLMJudge
    from hmrcritic.config import JudgeSettings

    return VLMJudge(JudgeSettings(base_url=srv.base_url, model="stub-vlm", timeout_s=10.0, max_retries=1,
                                  max_concurrency=2, max_tokens=None), backoff_base_s=0.01, backoff_max_s=0.05)


# ------------------------------------------------------------------------------------ rules not added again
def test_a_rule_the_memory_already_holds_or_proposed_twice_is_not_reported_added(train, tmp_path, monkeypatch):  # noqa: F811
    """The VLM proposes one text twice for the first group and, for the second, the text of a retired rule. The
    memory takes the first rule once and leaves the retired one retired (as before); the round now reports one
    rule added and the other two as rejected with why, where it reported (and printed) three added."""
    twice = "Hands crossing through the torso in the side view are wrong: take off 4 points"
    retired = "A head turned more than ninety degrees from the torso is wrong: take off 3 points"
    mem = MemoryStore(tmp_path / "m")
    mem.rules.add([Rule(rule_id="", text=retired, origin="user", retired=True)])
    answers = iter([{"rules": [{"text": twice}, {"text": twice}]}, {"rules": [{"text": retired}]}])
    monkeypatch.setattr(openai_stub_server, "good_rules", lambda text: next(answers))
    events: list = []
    with StubOpenAIServer(require_images=False) as srv:
        s = ex.explore(mem, split="train", groups=train[:2], rounds=1, batch_size=2, tau=1.0, judge=_vlm(srv),
                       render=False, max_new_rules=3, calibration_groups=0, merge_text=False,
                       progress=lambda e, p: events.append((e, p)))
        assert [r.kind for r in srv.requests].count("rules") == 2
    (rnd,) = s.rounds
    assert [a["rule_id"] for a in rnd.rules_added] == [mined_rule_id(twice)]
    assert [p["rule_id"] for e, p in events if e == "rule_added"] == [mined_rule_id(twice)]
    reasons = [x["reason"] for x in rnd.rejected]
    assert "same text as a rule proposed earlier this round: not added again" in reasons
    assert f"same text as rule {mined_rule_id(retired)}, already in the memory (retired): not added again" in reasons
    stored = {r.text: r for r in MemoryStore(tmp_path / "m").rules.all(include_retired=True)}
    assert not stored[twice].retired and stored[retired].retired
    assert ex.read_log(tmp_path / "m")[-1]["report"]["rules_added"] == rnd.rules_added


# ---------------------------------------------------------------------------------------- nonsense proposals
@pytest.mark.parametrize("field", ["measure", "comparator"])
def test_a_huge_nonsense_field_is_quoted_cut_short_in_the_rejection(field):
    """A judge's 10 kB "measure" (or comparator) was quoted whole in the rejection reason, which exploration prints
    and keeps in explore_log.jsonl for every such proposal; it is quoted cut to a few dozen characters."""
    from hmrcritic.agent.mining import validate_proposal

    proposal = {"text": "Knees bent the wrong way are wrong: take off 3 points", "measure": "hyperextension_deg",
                "comparator": ">", "threshold": 10.0, "points": 3.0, field: "x" * 10_000}
    rule, why = validate_proposal(proposal, 1)
    assert rule is None and ("unknown measure 'xxx" if field == "measure" else "comparator 'xxx") in why.reason
    assert len(why.reason) < 400 and "…" in why.reason
    assert len(why.as_dict()["reason"]) < 400


# ------------------------------------------------------------------------------------ damaged progress record
def _damage(what: str, prog: dict) -> None:
    (run,) = prog["runs"].values()
    if what == "runs":
        prog["runs"] = list(prog["runs"].values())
    elif what == "history_group":
        del run["history"][0]["evidence"]
    elif what == "history_lengths":
        run["history"][0]["error"] = run["history"][0]["error"][:-1]
    elif what == "spans":
        run["spans"] = [[0]]
    elif what == "rounds_total":
        prog["rounds_total"] = "one"
    elif what == "rule_effects":
        prog["rule_effects"] = {"rule-x": 0.5}


@pytest.mark.parametrize("what", ["runs", "history_group", "history_lengths", "spans", "rounds_total",
                                  "rule_effects"])
def test_a_progress_record_damaged_inside_is_one_clear_error(train, tmp_path, what):  # noqa: F811
    """A progress record that is an object but damaged inside (an edit, a bad restore, an imported export's record,
    which `memory import` checks only for being an object) failed as a bare KeyError, AttributeError, TypeError or
    ValueError traceback, or (a history group of mismatched lengths) was used and kept, to fail the miner's
    simulation with a numpy shape error whenever a round got that far. It is the InputError a record that is no
    object gets, naming what is wrong and what to do."""
    import json

    path = tmp_path / "m"
    kw = dict(split="train", groups=train[:4], batch_size=2, tau=1.0, calibration_groups=0, merge_text=False)
    ex.explore(MemoryStore(path), rounds=1, **kw)
    prog = json.loads((path / ex.PROGRESS_FILE).read_text())
    assert next(iter(prog["runs"].values()))["history"] and "rule_effects" in prog  # what the damage needs
    _damage(what, prog)
    (path / ex.PROGRESS_FILE).write_text(json.dumps(prog))
    with pytest.raises(InputError, match=r"unreadable exploration progress record \(.+\).*memory reset --yes"):
        ex.explore(MemoryStore(path), rounds=2, **kw)


# ----------------------------------------------------------------------------------------------- --limit
def test_limit_is_the_runs_groups_in_total_as_the_docstring_now_says(train, tmp_path):  # noqa: F811
    """``explore``'s docstring said ``limit`` "caps the groups of this call"; it caps the run's groups in total
    (what ``explore --help`` says): a second call with the same limit explores nothing, a larger one goes on up to
    it."""
    path = tmp_path / "m"
    kw = dict(split="train", groups=train[:6], rounds=3, batch_size=2, calibration_groups=0, merge_text=False)
    first = ex.explore(MemoryStore(path), limit=3, **kw)
    again = ex.explore(MemoryStore(path), limit=3, **kw)
    more = ex.explore(MemoryStore(path), limit=5, **kw)
    assert (first.groups, again.groups, more.groups) == (3, 0, 2)
    assert again.stopped == "limit of 3 groups reached"
    doc = " ".join(ex.explore.__doc__.split())
    assert "caps the groups of this call" not in doc and "caps the run's groups in total" in doc


# ------------------------------------------------------------------------------------------- huge --rounds
def test_rounds_far_beyond_the_split_cost_no_work_per_round(train, tmp_path, monkeypatch):  # noqa: F811
    """`explore --rounds 1000000000` ("until the split ends") hung before its first group: the overlap check looked
    at every round (a dict of them filling memory), and a resumed call's "continuing with round …" line built a
    set of every round. The check now looks only at rounds that can meet a recorded span, the line only at the
    rounds done; the exploration itself is the same (the split's groups, then "no groups left")."""
    import tracemalloc

    from hmrcritic.commands.explore import explore_line

    calls = {"n": 0}
    real = ex._explored_of_round

    def counted(*a):
        calls["n"] += 1
        return real(*a)

    monkeypatch.setattr(ex, "_explored_of_round", counted)
    rounds, events = 10**6, []
    kw = dict(split="train", groups=train[:4], rounds=rounds, batch_size=2, calibration_groups=0, merge_text=False)
    s = ex.explore(MemoryStore(tmp_path / "m"), **kw)
    assert s.groups == 4 and s.stopped == "no groups left for round 3"
    assert calls["n"] <= 2 * 3  # the three rounds tried (the check's and the loop's look), not a million
    calls["n"] = 0
    again = ex.explore(MemoryStore(tmp_path / "m"), progress=lambda e, p: events.append((e, p)), **kw)
    assert again.resumed_rounds == 2 and not again.rounds and calls["n"] <= 2 * 3
    (resumed,) = [p for e, p in events if e == "resumed"]
    tracemalloc.start()
    try:
        line = explore_line("resumed", resumed)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert line.endswith(f"continuing with round 3 of {rounds}"), line
    assert peak < 1_000_000, peak  # a set of a million rounds is over 30 MB


@pytest.mark.parametrize("damage", ["null", "[]", '{"batch_key": "abc:r0"}'])
def test_a_pending_batch_of_another_shape_is_one_clear_error(train, tmp_path, damage):  # noqa: F811
    """A pending batch plan that is JSON but not a plan (the file is written whole, so an edit or a bad restore)
    failed every later explore at once with a bare AttributeError or KeyError traceback; it is an InputError naming
    the file and what to do (the memory is left as it was)."""
    path = tmp_path / "m"
    kw = dict(split="train", groups=train[:2], rounds=1, batch_size=2, calibration_groups=0, merge_text=False)
    ex.explore(MemoryStore(path), **kw)
    (path / ex.PENDING_FILE).write_text(damage)
    with pytest.raises(InputError, match=r"explore_pending\.json: unreadable pending exploration batch .*reset --yes"):
        ex.explore(MemoryStore(path), **kw)
    assert (path / ex.PENDING_FILE).read_text() == damage


# ------------------------------------------------------------------------------------------ secrets in failures
KEY = "sk-s24Q7vXz9KpL2mN8rT4wY6bF3hJ5f4Hd"


class _LeakyJudge:
    """A custom judge (not a BuiltinJudge: it mines through its own ``propose_rules``, as a VLM does) that scores
    like the builtin one but whose errors quote its key: one group's critique fails, and so does rule mining."""

    name = "leaky"

    def __init__(self, fail_group: str):
        from hmrcritic.agent.judges import BuiltinJudge

        self.inner, self.fail_group = BuiltinJudge(), fail_group

    def critique(self, ctx):
        from hmrcritic.errors import JudgeError

        if ctx.group_id.endswith(self.fail_group):
            raise JudgeError(f"group {ctx.group_id}: endpoint said: invalid key {KEY}")
        return self.inner.critique(ctx)

    def propose_rules(self, ctx, mistakes):
        raise RuntimeError(f"401 Unauthorized: Incorrect API key provided: {KEY}")


def test_a_custom_judges_errors_reach_no_record_with_its_key(train, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.setenv("HMRCRITIC_API_KEY", KEY)
    lines: list[str] = []

    def progress(e, p):
        from hmrcritic.commands.explore import explore_line

        lines.append(explore_line(e, p) or "")

    s = ex.explore(MemoryStore(tmp_path / "m"), split="train", groups=train[:3], rounds=1, batch_size=3, tau=1.0,
                   judge=_LeakyJudge(train[1].group_id), calibration_groups=0, merge_text=False, progress=progress)
    (rnd,) = s.rounds
    assert [f["group_id"] for f in rnd.failed] == [train[1].group_id] and rnd.groups == 2
    assert any("propose_rules failed: RuntimeError: 401 Unauthorized" in x["reason"] for x in rnd.rejected)
    log = (tmp_path / "m" / ex.LOG_FILE).read_text()
    assert "invalid key" in log and "401 Unauthorized" in log  # the failures are kept, the key is not
    for where, text in (("log", log), ("summary", str(s.as_dict())), ("progress", "\n".join(lines))):
        assert KEY not in text and KEY[:12] not in text and KEY[-12:] not in text, where


def test_a_negative_start_is_refused_before_the_memory_is_made(train, tmp_path):  # noqa: F811
    """``start=-2`` with given groups sliced them from the end (``groups[-2:2]``): a group was explored as position
    −2 and a span [−2, −1] kept in the progress record. It is refused before the memory folder is created."""
    with pytest.raises(InputError, match="start is the position of the first group, ≥ 0"):
        ex.explore(tmp_path / "m", split="train", groups=train[:3], rounds=1, batch_size=4, start=-2,
                   calibration_groups=0)
    assert not (tmp_path / "m").exists()
