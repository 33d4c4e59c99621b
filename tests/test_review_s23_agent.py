"""Review s23 (agent orchestration, evaluations, CLI wiring): what the evaluation commands print when critiques
fail (a VLM endpoint that nothing answers: the only double is the network edge, a closed port on 127.0.0.1), and
the frozen memory copies the scorers open."""

from __future__ import annotations

import json
import socket

import pytest

pytestmark = pytest.mark.usefixtures("small_prior")  # tiny splits: no 20k-scene train split for the pose prior


@pytest.fixture()
def data(monkeypatch, tmp_path):
    """A data folder of tiny train and test splits of other seeds (the home: conftest's temporary one)."""
    from hmrcritic.hmr.data import generate_split

    monkeypatch.setenv("HMRCRITIC_DATA", str(tmp_path / "data"))
    generate_split("train", n=4, seed=1, quiet=True)
    generate_split("test", n=2, seed=2, quiet=True)
    return tmp_path


@pytest.fixture()
def dead_vlm(monkeypatch):
    """The VLM judge's settings naming an endpoint where nothing answers (a port just closed on 127.0.0.1)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("HMRCRITIC_BASE_URL", f"http://127.0.0.1:{port}/v1")
    monkeypatch.setenv("HMRCRITIC_VLM_MODEL", "stub-vlm")
    monkeypatch.setenv("HMRCRITIC_VLM_RETRIES", "0")
    monkeypatch.setenv("HMRCRITIC_VLM_TIMEOUT", "2")
    monkeypatch.setenv("HMRCRITIC_API_KEY", "sk-s23-agent")
    monkeypatch.setenv("HMRCRITIC_RENDER", "0")


def _cli(argv: list[str], capsys) -> tuple[int, str, str]:
    from hmrcritic.cli import main

    code = main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def _starter(path):
    from hmrcritic.agent.learning_curve import starter_memory

    starter_memory(path).close()
    return path


def test_explore_eval_table_of_a_variant_that_scored_nothing_prints_no_nan(data, dead_vlm, capsys):
    """Every critique failed (nothing answers at the endpoint): the variant's figures are NaN. ``--json`` said null,
    the table printed "nan" in each column, as if the critic had measured it."""
    mem = _starter(data / "mem")
    code, out, err = _cli(["explore-eval", "--memory-dir", str(mem), "--variants", "full", "--num-groups", "2",
                           "-n", "3", "--source", "perturbed", "--judge", "vlm"], capsys)
    assert code == 1 and "no variant scored any group" in err
    row = next(line for line in out.splitlines() if line.startswith("full"))
    assert "nan" not in out.lower() and "—" in row, out


def test_evaluate_critic_table_of_a_variant_that_scored_nothing_prints_no_nan(data, dead_vlm, capsys):
    """As for explore-eval, in evaluate-critic's table (its sem column said 0.000 beside no figure); its --json
    keeps the schema, with null for the missing figures."""
    mem = _starter(data / "mem")
    argv = ["evaluate-critic", "--memory-dir", str(mem), "--variants", "full,evidence_only", "--num-groups", "2",
            "-n", "3", "--source", "perturbed", "--judge", "vlm"]
    code, out, err = _cli(argv, capsys)
    assert code == 1 and "no variant scored any group" in err
    rows = [line for line in out.splitlines() if line.startswith(("full  ", "evidence_only  "))]
    assert len(rows) == 2 and all("—" in r for r in rows) and "nan" not in out.lower(), out
    assert "full: scored 0 of 2 groups (the rest failed); it has no figures" in out  # not "its figures are over"
    code, out, _ = _cli([*argv, "--json"], capsys)
    doc = json.loads(out)  # strict JSON
    assert code == 1 and doc["num_groups"] == 2 and isinstance(doc["random_pa_mpjpe_mm"], float)
    assert [(r["variant"], r["spearman"], r["top1_pa_mpjpe_mm"]) for r in doc["rows"]] == [
        ("full", None, None), ("evidence_only", None, None)]


def test_learning_curve_warns_not_when_every_group_of_a_small_split_scored(data, capsys, monkeypatch):
    """Every held-out group scored, in a split of 2 with --heldout-groups 16: the warning counted against the flag
    and said "round 0 scored 2 of 16 held-out groups (the critiques of the others failed)", none having failed."""
    monkeypatch.setenv("HMRCRITIC_RENDER", "0")
    code, out, err = _cli(["learning-curve", "--memory-dir", str(data / "mem"), "--out", str(data / "curve"),
                           "--rounds", "0", "--heldout-groups", "16", "-n", "3", "--source", "perturbed"], capsys)
    assert code == 0, err
    assert "warning" not in err, err


def _run_fds() -> list[str]:
    """This process's open files under ``runs_dir()`` (frozen memory copies, an evaluation's starter memory)."""
    import os

    from hmrcritic import config

    root = str(config.runs_dir())
    out = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(root) and "checkpoints.sqlite" not in target:  # (one per process, by design)
            out.append(target)
    return out


@pytest.mark.parametrize("which", ["learning_curve", "explore_eval", "evaluate_critic"])
def test_the_scorers_close_the_frozen_copies_they_open(data, monkeypatch, which):
    """Each round of a curve (and each explore_eval) scores from a frozen copy, held against ``runs prune`` and
    with its Chroma database open for the store's life; the scorers never closed it, so a notebook running curve
    after curve kept every round's snapshot held, and its files open, until the garbage collector came by
    (MemoryStore.close's own docstring names this case). The collector is off here, as it is between its runs."""
    import gc

    from hmrcritic import config
    from hmrcritic.agent.evaluate_critic import evaluate_critic
    from hmrcritic.agent.learning_curve import explore_eval, learning_curve
    from hmrcritic.memory import store

    monkeypatch.setenv("HMRCRITIC_RENDER", "0")
    mem = _starter(data / "mem")
    gc.collect()
    before = set(_run_fds())
    gc.disable()
    try:
        if which == "learning_curve":
            learning_curve(mem, rounds=0, heldout_groups=2, num_generations=3, source="perturbed")
        elif which == "explore_eval":
            explore_eval(mem, num_groups=2, num_generations=3, source="perturbed", variants=["full"])
        else:  # its no_reflection row scores with a starter memory of the evaluation's own, in runs/evaluate
            evaluate_critic(memory_dir=mem, num_groups=2, num_generations=3, source="perturbed",
                            variants=["full", "no_reflection"])
        # the snapshot's hold and vector index files; not Chroma's SQLite connection, which its own objects close
        # when the collector frees them (after the store stopped its system: off here, it stayed open now and then)
        left = [f for f in _run_fds() if f not in before and not f.endswith(("chroma.sqlite3", "-wal", "-shm"))]
        claimed = [k for k in store._CLAIMS if k.startswith(str(config.runs_dir()))]  # stores still open on them
    finally:
        gc.enable()
    assert not left and not claimed, (left, claimed)


@pytest.mark.parametrize("flags", [[], ["--mermaid"]])
def test_trace_of_a_file_that_holds_no_trace_records_is_one_line_naming_it(tmp_path, monkeypatch, capsys, flags):
    """A ``.jsonl`` of another tool (or version) in the traces folder ended ``trace`` in "error: KeyError: 'run_id'"
    (exit 1, "run with --debug"); a run's trace with such a line in it is still shown."""
    from hmrcritic.agent.state import AgentConfig
    from hmrcritic.agent.trace import TraceWriter, traces_dir

    monkeypatch.setenv("HMRCRITIC_HOME", str(tmp_path / "home"))
    d = traces_dir()
    d.mkdir(parents=True)
    (d / "other.jsonl").write_text('{"event": "node"}\n{"level": "info", "msg": "x"}\n', encoding="utf-8")
    code, out, err = _cli(["trace", "other", *flags], capsys)
    assert code == 2 and err.startswith("error: ") and "other.jsonl holds no hmrcritic trace records" in err, err

    w = TraceWriter("20260101-000000-000001-g", "g")  # a real run's trace, and a foreign line inside it
    w.start(AgentConfig(judge="builtin"))
    w.node("evidence", {"evidence": {}}, 0.01)
    with open(w.path, "a", encoding="utf-8") as fh:
        fh.write('{"event": "node", "note": "not ours"}\n')
    w.finish({"round": 0, "done": True})
    code, out, err = _cli(["trace", "--last", *flags], capsys)
    assert code == 0, err
    assert ("1: evidence" if flags else "1. evidence") in out and "finish" in out
