"""`hmrcritic trace RUN_ID|--last --mermaid`: the run's own node sequence as Mermaid.

It printed the agent's static graph whatever the run: a run id that does not exist exited 0, and the
revise rounds of a run could not be seen."""

from __future__ import annotations

import re

import pytest

from hmrcritic.agent.state import AgentConfig
from hmrcritic.agent.trace import TraceWriter
from hmrcritic.cli import main


@pytest.fixture()
def a_run(tmp_path, monkeypatch):
    monkeypatch.setenv("HMRCRITIC_HOME", str(tmp_path))
    tw = TraceWriter("20260101-000000-000000-g1", "g1")
    tw.start(AgentConfig())
    for node, ms in (("render", 5), ("recall", 1), ("critique", 2), ("reflect", 1), ("critique", 2)):
        tw.node(node, {}, ms / 1000)
    tw.error(ValueError('endpoint said "no" <html> #3'))
    return tw.run_id


def _labels(text: str) -> list[str]:
    return re.findall(r'\["([^"]*)"\]', text)


def test_mermaid_of_a_run_is_its_node_sequence(a_run, capsys):
    assert main(["trace", "--last", "--mermaid"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("flowchart TD")
    nodes = [lab.split(" · ")[0] for lab in _labels(out) if lab[:1].isdigit()]
    assert nodes == ["1: render", "2: recall", "3: critique", "4: reflect", "5: critique"]
    assert not re.search(r'\["\d+\. ', out)  # "1. …" would be drawn as an unsupported markdown list
    # every node is reached from the previous one, ending in the error
    edges = re.findall(r"^\s+(\w+) --> (\w+)$", out, flags=re.M)
    assert [b for _, b in edges] == ["n1", "n2", "n3", "n4", "n5", "run_error"]
    assert all(a == prev for (a, _), prev in zip(edges, ["run_start", "n1", "n2", "n3", "n4", "n5"], strict=True))
    error = next(lab for lab in _labels(out) if lab.startswith("error:"))
    assert "#quot;no#quot;" in error and "#lt;html#gt;" in error and "<" not in error  # quotes cannot end the label


def test_mermaid_with_an_unknown_run_is_an_error(a_run, capsys):
    assert main(["trace", "no-such-run", "--mermaid"]) == 2
    assert "not found" in capsys.readouterr().err


def test_mermaid_alone_is_still_the_agent_graph(a_run, capsys):
    assert main(["trace", "--mermaid"]) == 0
    out = capsys.readouterr().out
    assert "graph TD" in out and "memory_write" in out


def test_run_id_with_a_path_or_an_empty_last_pointer_is_refused(a_run, tmp_path, capsys):
    """A run id is a file name in the traces folder: "../x" read a .jsonl outside it, and an empty LAST
    pointer globbed every trace (one run resolved to it, several were "ambiguous")."""
    from hmrcritic.agent.trace import traces_dir

    outside = tmp_path / "elsewhere.jsonl"
    outside.write_text('{"event": "start"}\n')
    rel = "../" * 8 + str(outside.with_suffix(""))[1:]
    assert main(["trace", rel]) == 2
    assert "no path separators" in capsys.readouterr().err
    (traces_dir() / "LAST").write_text("")
    assert main(["trace", "--last"]) == 2
    assert "is empty" in capsys.readouterr().err
