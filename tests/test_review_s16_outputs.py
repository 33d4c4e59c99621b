"""What a user reads after a run: the critique table, ``trace`` and the demo's index.html.

Each test failed before its fix: a 60-column terminal squeezed the hypothesis ids out of the critique table
and cut the memory version off its heading; a trace line was cut mid-number; a revision that changed more than
20 hypotheses was traced as one that changed 20; a resumed or interrupted run's trace did not say so; the demo
index printed "+nan" for a tied scene and did not show the figures of summary.json."""

from __future__ import annotations

import re
from html.parser import HTMLParser

import pytest

from hmrcritic.agent.api import ScoredGroup
from hmrcritic.agent.schema import HypothesisScore
from hmrcritic.agent.trace import format_trace, summarise_update


def _group(n: int = 12) -> ScoredGroup:
    scores = [HypothesisScore(index=i, motion_structure=7.0, physical_feasibility=8.0, image_alignment=6.0,
                              overall=round(9.5 - 0.5 * i, 2),
                              rationale=f"worst evidence: consensus_pa_mm={100 + i} mm, reproj_rel=0.0{i} of box")
              for i in range(n)]
    return ScoredGroup(group_id="test-000003-935e424d", scores=scores, ranking=list(range(n)),
                       memory_version="01f705835d9c2eb7")


@pytest.mark.parametrize("columns", ["60", "80"])
def test_narrow_terminal_keeps_hypothesis_ids_and_memory_version(monkeypatch, capsys, columns):
    import hmrcritic.commands.agent as agent_cmd

    monkeypatch.setattr(agent_cmd, "is_tty", lambda stream: True)  # a terminal: rich takes its width
    monkeypatch.setenv("COLUMNS", columns)
    agent_cmd._print_table(_group())
    out = capsys.readouterr().out
    assert "01f705835d9c2eb7" in out and "test-000003-935e424d" in out
    rows = [line for line in out.splitlines() if line.startswith("│")]
    assert len(rows) == 12
    for rank, line in enumerate(rows):
        cells = [c.strip() for c in line.strip("│").split("│")]
        assert cells[:3] == [str(rank + 1), f"h{rank}", f"{9.5 - 0.5 * rank:.2f}"], line
        assert cells[3:6] == ["7.00", "8.00", "6.00"], line


def test_piped_table_shows_whole_ids(monkeypatch, capsys):
    """Piped (no terminal): a long group id is printed whole, not cut to the table's width."""
    import hmrcritic.commands.agent as agent_cmd

    monkeypatch.setattr(agent_cmd, "is_tty", lambda stream: False)
    g = _group(3).model_copy(update={"group_id": "g" * 170 + "-end"})
    agent_cmd._print_table(g)
    out = capsys.readouterr().out
    assert "g" * 170 + "-end" in out and "01f705835d9c2eb7" in out


def _changes(k: int) -> list[str]:
    return [f"h{i} overall {1 + i / 10:.2f}→{2 + i / 10:.2f}" for i in range(k)]


def _records(changes: list[str], *, resumed: bool = False, end: str | None = "finish") -> list[dict]:
    update = {"critique": {"scores": [{"index": 0, "overall": 5.0}], "rules_applied": []},
              "reflections": [{"round": 1, "changes": changes}]}
    recs = [{"run_id": "r1", "group_id": "g", "event": "start", "resumed": resumed,
             "config": {"judge": "builtin", "learn": False, "max_reflections": 2}},
            {"run_id": "r1", "group_id": "g", "event": "node", "step": 1, "node": "critique", "seconds": 0.002,
             "changed": summarise_update("critique", update)}]
    if end == "finish":
        recs.append({"run_id": "r1", "group_id": "g", "event": "finish", "seconds": 0.01, "rounds": 1})
    elif end == "error":
        recs.append({"run_id": "r1", "group_id": "g", "event": "error", "error": "JudgeError: boom"})
    return recs


def test_trace_line_never_cuts_a_change_or_a_number():
    changes = _changes(16)
    text = format_trace(_records(changes))
    line = next(ln for ln in text.splitlines() if "critique" in ln)
    shown = re.findall(r"'([^']*)'", line.split("changes=", 1)[1])
    assert shown and shown == changes[:len(shown)]  # whole items, in order
    assert len(shown) < len(changes) and f"… {len(changes) - len(shown)} more" in line
    assert len(line) <= 400


def test_trace_says_how_many_changes_were_left_out():
    changed = summarise_update("critique", {"reflections": [{"changes": _changes(30)}]})
    assert changed["changes"][:20] == _changes(20) and changed["changes"][20:] == ["… 10 more"]
    assert summarise_update("critique", {"reflections": [{"changes": _changes(20)}]})["changes"] == _changes(20)


def test_trace_of_a_resumed_and_of_an_interrupted_run_say_so():
    # "an earlier unfinished run" since session 29 (it may have failed, not been interrupted)
    assert "resumed: earlier nodes ran in an earlier unfinished run" in format_trace(_records([], resumed=True))
    assert "no finish recorded" in format_trace(_records([], end=None))
    for end in ("finish", "error"):
        assert "no finish recorded" not in format_trace(_records([], end=end))


class _Cells(HTMLParser):
    def __init__(self):
        super().__init__()
        self.rows: list[list[str]] = []
        self.links: list[str] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        if tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "a":
            self.links.append(dict(attrs)["href"])

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.rows[-1].append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def test_demo_index_shows_summary_figures_and_no_nan(tmp_path):
    from hmrcritic.demo import DemoResult, DemoScene, _index_html

    res = DemoResult(out_dir=str(tmp_path), memory_version="abc", seconds=12.3)
    for i, (top1, mean, best, rho) in enumerate([(60.0, 80.0, 50.0, 0.5), (70.0, 90.0, 55.0, float("nan"))]):
        folder = tmp_path / f"scene_{i:02d}"
        res.scenes.append(DemoScene(sample_id=f"test-{i:06d}", folder=str(folder), ranking=[0, 1],
                                    errors_mm=[top1, best], top1_mm=top1, mean_mm=mean, best_mm=best, spearman=rho,
                                    report=str(folder / "report.html")))
    summary = res.summary()
    p = _Cells()
    p.feed(_index_html(res, summary))
    assert p.links == ["scene_00/report.html", "scene_01/report.html"]
    assert p.rows[2][4] == "—" and "nan" not in "".join(sum(p.rows, []))
    assert p.rows[-1] == ["mean of 2", f"{summary['critic_top1_pa_mpjpe_mm']:.1f}",
                          f"{summary['random_pick_pa_mpjpe_mm']:.1f}", f"{summary['oracle_best_pa_mpjpe_mm']:.1f}",
                          f"{summary['mean_spearman']:+.2f}"]


def test_mermaid_of_a_resumed_run_says_it_starts_at_a_checkpoint():
    from hmrcritic.agent.trace import trace_mermaid

    resumed = trace_mermaid(_records([], resumed=True))
    assert '    run_start(["start (resumed from a checkpoint)"])' in resumed.splitlines()
    assert "    run_start([start])" in trace_mermaid(_records([])).splitlines()
    # every line is a flowchart statement: a node, an edge or a class definition
    statement = re.compile(r'^(flowchart TD|    \w+(\[".*"\]|\(\[.*\]\))(:::\w+)?|    \w+ --> \w+|    classDef .+)$')
    assert all(statement.match(line) for line in resumed.splitlines()), resumed


def test_a_revised_critique_names_its_current_best_and_worst_first(tmp_path, capsys):
    """The builtin judge's revision put its changes in front of the first pass's summary ("… | best h10 (7.8),
    worst h6 (3.4)"), so the report's notes named a best and a worst the revised scores beside them contradicted.
    Now each revision says the ranking it leaves ("now best h1 (6.2), worst h6 (3.8)") before the earlier ones."""
    import json

    from hmrcritic.cli import main

    out = tmp_path / "crit"
    assert main(["critique", "--scene", "test:3", "--out", str(out), "--no-render"]) == 0, capsys.readouterr().err
    d = json.loads((out / "scores.json").read_text())
    assert d["notes"].startswith("revised: "), d["notes"][:200]  # this scene is revised with the starter memory
    m = re.search(r"now best h(\d+) \(([\d.]+)\), worst h(\d+) \(([\d.]+)\)", d["notes"].split(" | ")[0])
    assert m, d["notes"][:300]
    by_index = {s["index"]: s["overall"] for s in d["scores"]}
    assert int(m.group(1)) == d["ranking"][0] and int(m.group(3)) == d["ranking"][-1]
    assert float(m.group(2)) == round(by_index[d["ranking"][0]], 1)
    assert float(m.group(4)) == round(by_index[d["ranking"][-1]], 1)
