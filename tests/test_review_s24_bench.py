"""Review (s24, bench): what the benchmark scripts measure and where they write (each test checks a script's logic
with its heavy parts replaced or at its smallest size)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"


def _load(name: str):
    from conftest import load_benchmark

    return load_benchmark(name)


@pytest.fixture
def fake_long_run(monkeypatch):
    """bench_scale's ``long_run`` with the critique, the runs folder and the clock replaced: the real first critique
    in a fresh home fitted the pose prior (generating the train split first, ~1 min) inside the timed loop."""
    import hmrcritic.agent.api as api
    import hmrcritic.agent.groups as groups
    import hmrcritic.agent.prior as prior
    import hmrcritic.agent.runs as runs

    bench = _load("bench_scale")
    calls: list[str] = []
    clock = SimpleNamespace(now=0.0, fitted=False)

    def get_pose_prior():
        calls.append("prior")
        clock.fitted = True

    def critique_group(sample, hypotheses, config=None, group_id=None):
        calls.append("critique")
        clock.now += 0.1 if clock.fitted else 60.0  # a first use that still has to fit the prior

    g = SimpleNamespace(sample=None, hypotheses=None)
    monkeypatch.setattr(prior, "get_pose_prior", get_pose_prior)
    monkeypatch.setattr(api, "critique_group", critique_group)
    monkeypatch.setattr(groups, "make_groups", lambda *a, **k: ([g] * 10, "perturbed"))
    part = {"bytes": 0, "files": 0}
    monkeypatch.setattr(runs, "runs_usage", lambda root: {"parts": {k: part for k in ("checkpoints", "groups",
                                                                                     "traces")}})
    monkeypatch.setattr(runs, "prune_runs", lambda days, root=None: {"bytes_before": 0, "bytes_after": 0})
    monkeypatch.setattr(bench, "time", SimpleNamespace(perf_counter=lambda: clock.now))
    return bench, calls


def test_bench_scale_long_run_fits_the_pose_prior_before_the_clock_starts(fake_long_run):
    """A fresh home (bench_scale always makes one) printed 3,267 ms/group without rendering and 961 with: the
    no-render pass, run first, carried the train split's generation and the prior's fit in its first group."""
    bench, calls = fake_long_run
    rows = bench.long_run(12)
    assert calls[0] == "prior" and calls.count("critique") == 24
    assert [r["ms_per_group"] for r in rows] == [100.0, 100.0]
    assert [r["ms_per_group_after_10"] for r in rows] == [100.0, 100.0]


def test_bench_diffusion_quick_run_writes_where_out_says(monkeypatch, tmp_path):
    """bench_diffusion had no ``--out``: a smoke run could only write benchmarks/results/diffusion_quick.json, in
    the repository, where every other script takes ``--out PATH``."""
    bench = _load("bench_diffusion")
    published = {p.name: p.read_bytes() for p in RESULTS.glob("diffusion*.json")}
    monkeypatch.setattr(bench, "bench_sampling", lambda *a, **k: [])  # the training steps still run (3, quick)
    out = tmp_path / "d.json"
    monkeypatch.setattr(sys, "argv", ["bench_diffusion.py", "--quick", "--out", str(out)])
    bench.main()
    assert json.loads(out.read_text())["training"]["steps_per_s"] > 0
    assert {p.name: p.read_bytes() for p in RESULTS.glob("diffusion*.json")} == published


@pytest.fixture
def fake_export(monkeypatch, tmp_path):
    """bench_export with the split, the memory and the worker subprocesses replaced: ``outcomes`` says how each
    ``--one`` run ends (the warm-up first)."""
    import subprocess

    import hmrcritic.hmr.data as data
    import hmrcritic.memory as memory

    bench = _load("bench_export")
    outcomes: list = []

    def run(cmd, **kw):
        rc, payload = outcomes.pop(0)
        row = json.dumps({"config": cmd[cmd.index("--one") + 1], "groups_per_s": 1.0, "elapsed_s": 1.0,
                          "peak_rss_parent_mb": 1.0, "peak_rss_children_mb": 0.0})
        return subprocess.CompletedProcess(cmd, rc, stdout=row if rc == 0 else "", stderr=payload)

    monkeypatch.setattr(data, "generate_split", lambda *a, **k: tmp_path / "wild")
    monkeypatch.setattr(memory, "MemoryStore", lambda *a, **k: None)
    monkeypatch.setattr(bench.subprocess, "run", run)
    out = tmp_path / "export.json"

    def main(*argv):
        monkeypatch.setattr(sys, "argv", ["bench_export.py", "--inputs", "1", "--out", str(out), *argv])
        bench.main()
        return json.loads(out.read_text())

    return main, outcomes, out


def test_bench_export_says_why_its_warm_up_failed(fake_export, capsys):
    """The warm-up ran with ``check=True`` and its output captured: a broken export (here a missing model) ended
    the benchmark in a CalledProcessError traceback that said only "returned non-zero exit status 1"."""
    main, outcomes, out = fake_export
    outcomes.append((1, "Traceback ...\nInputError: model file not found: /x/base.pt\n"))
    with pytest.raises(SystemExit) as exc:
        main("--configs", "serial")
    assert "model file not found: /x/base.pt" in str(exc.value.code) and not out.exists()


def test_bench_export_exits_non_zero_when_a_configuration_failed(fake_export):
    """A configuration that failed (Ray missing, a worker crash) was printed as "failed" and the run exited 0:
    ``make bench`` reported success with that row's figures gone."""
    main, outcomes, out = fake_export
    outcomes += [(0, ""), (0, ""), (1, "ModuleNotFoundError: No module named 'ray'\n")]
    with pytest.raises(SystemExit) as exc:
        main("--configs", "serial,ray2")
    assert exc.value.code == 1
    rows = json.loads(out.read_text())["results"]
    assert rows[0]["config"] == "serial" and "No module named 'ray'" in rows[1]["error"]


def test_bench_export_refuses_an_unknown_configuration(fake_export, capsys):
    """``--configs pool4`` ran a worker that died on KeyError 'pool4', printed as "failed" after the warm-up."""
    main, outcomes, out = fake_export
    with pytest.raises(SystemExit) as exc:
        main("--configs", "serial,pool4")
    assert exc.value.code == 2 and "pool4" in capsys.readouterr().err and not outcomes


def test_bench_agent_takes_its_thread_count(capsys):
    """``--threads`` (default: up to 2, as before): on the shared 2-core machine two torch threads made the
    no-render critique 2-3x slower than one (interleaved runs: 191-253 vs 592-605 ms/group), so a figure measured
    there needs the setting it ran with; nonsense is refused before the groups are drawn."""
    bench = _load("bench_agent")
    with pytest.raises(SystemExit) as exc:
        bench.main(["--threads", "0"])
    assert exc.value.code == 2 and "--threads must be ≥ 1" in capsys.readouterr().err
