"""Review (s13, bench): ``hmrcritic demo`` against a small test split, and the benchmark scripts (what they time,
where and how they write their figures)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import time
import tracemalloc
from argparse import Namespace
from pathlib import Path

import pytest

from hmrcritic.cli import main

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str):
    """A benchmark script as a module."""
    from conftest import load_benchmark

    return load_benchmark(name)


def test_demo_refuses_more_scenes_than_the_test_split_holds(tmp_path, monkeypatch, capsys):
    """After ``data generate --split test --n 3`` (or with a split size scale) the default ``demo --scenes 4``
    explored, sampled and critiqued three scenes and then stopped with "IndexError: split test: index 3 out of
    range", writing no summary or index. It is now refused before any work, saying what to do."""
    import hmrcritic.demo
    import hmrcritic.hmr.data

    calls = []
    monkeypatch.setattr(hmrcritic.hmr.data, "load_split", lambda name, **kw: [object()] * 3)
    monkeypatch.setattr(hmrcritic.demo, "run_demo", lambda *a, **kw: calls.append(a))
    rc = main(["demo", "--scenes", "4", "--out", str(tmp_path / "demo")])
    err = capsys.readouterr().err
    assert rc == 2 and not calls
    assert "--scenes 4 is more than the test split holds (3 scenes)" in err and "--scenes 3" in err
    assert "IndexError" not in err


@pytest.mark.parametrize("where", ["home", "memory_env"])
def test_demo_refuses_an_out_folder_whose_memory_is_the_users_memory(tmp_path, monkeypatch, capsys, where):
    """``hmrcritic demo --out $HMRCRITIC_HOME`` reset <home>/memory, the memory every other command learns into
    (shown: a rule added there was gone after the demo, exit 0). Refused now, before anything is touched."""
    import hmrcritic.demo

    home = tmp_path / "home"
    monkeypatch.setenv("HMRCRITIC_HOME", str(home))
    out = home if where == "home" else tmp_path / "elsewhere"
    if where == "memory_env":
        monkeypatch.setenv("HMRCRITIC_MEMORY", str(out / "memory"))
    else:
        monkeypatch.delenv("HMRCRITIC_MEMORY", raising=False)
    calls = []
    monkeypatch.setattr(hmrcritic.demo, "run_demo", lambda *a, **kw: calls.append(a))
    rc = main(["demo", "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and not calls
    assert "the memory the other commands use" in err


def test_bench_alignment_times_steps_without_tracemalloc(tmp_path, monkeypatch):
    """tracemalloc traced every allocation of the timed steps too: sft ran at about 2/3 of its speed with it on
    (24 vs 41 steps/s, same machine, same run), so the published steps/s were too low. The Python peak is taken
    over the warm-up run only now."""
    import hmrcritic.alignment.finetune as ft

    bench = _load("bench_alignment")
    tracing = []

    def fake_finetune(cfg, progress=False):
        tracing.append(tracemalloc.is_tracing())
        junk = [bytearray(1024) for _ in range(256)]  # something for tracemalloc to see
        log = Path(cfg.out + ".log.jsonl")
        done = len(log.read_text().splitlines()) if log.exists() else 0
        with log.open("a") as fh:
            for step in range(done, cfg.steps):
                fh.write(json.dumps({"step": step + 1, "steps_per_s": 10.0}) + "\n")
        del junk
        return Path(cfg.out)

    monkeypatch.setattr(ft, "finetune", fake_finetune)
    monkeypatch.setattr(ft, "FinetuneConfig", lambda **kw: Namespace(**kw))
    args = Namespace(one="sft", tmp=str(tmp_path), data="d", model="m", G=2, batch=1, threads=1, device="cpu",
                     warmup=1, steps=2)
    rec = bench.run_one(args)
    assert tracing == [True, False]
    assert rec["steps_per_s"] == 10.0 and rec["peak_python_alloc_mb"] > 0.1
    assert not tracemalloc.is_tracing()


def test_benchmarks_write_their_json_atomically():
    """Eleven scripts wrote their figures with ``Path.write_text`` (truncate, then write): a run stopped while
    writing left a torn JSON where the published figures were. All go through ``hmrcritic.io.atomic_write_json``
    now (temporary file + rename), as bench_memory, bench_vlm, bench_explore and bench_foundation did."""
    offenders = []
    for path in sorted(BENCH.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in (
                    "write_text", "write_bytes"):
                offenders.append(f"{path.name}:{node.lineno}")
    assert offenders == []


@pytest.mark.parametrize("script, option", [("bench_alignment", "--out"), ("bench_export", "--out"),
                                            ("critic_signals", "--json"), ("prototype_probes", "--json")])
def test_benchmark_output_can_go_elsewhere(script, option):
    """These four always wrote benchmarks/results/<name>.json: a smoke run (``--steps 1``, ``--inputs 1``)
    replaced the figures README cites. Each takes an output path now, like the other scripts."""
    res = subprocess.run([sys.executable, str(BENCH / f"{script}.py"), "--help"], capture_output=True, text=True,
                         timeout=120, check=False)
    assert res.returncode == 0, res.stderr
    assert option in res.stdout


@pytest.mark.slow
def test_bench_alignment_smoke_run_leaves_the_published_figures(tmp_path):
    """A tiny bench_alignment run with ``--out`` writes there, and results/alignment.json is not touched."""
    published = BENCH / "results" / "alignment.json"
    before = published.read_bytes() if published.exists() else None
    out = tmp_path / "alignment.json"
    _load("bench_alignment").main(["--objectives", "sft", "--steps", "1", "--warmup", "1", "--G", "2", "--batch", "1",
                                   "--groups", "2", "--threads", "1", "--out", str(out)])
    rec = json.loads(out.read_text())
    assert [r["objective"] for r in rec["results"]] == ["sft"] and rec["results"][0]["steps_per_s"] > 0
    assert (published.read_bytes() if published.exists() else None) == before


def test_bench_memory_record_use_time_excludes_the_retrieval(tmp_path, monkeypatch):
    """``record_use_8_rules_s`` timed the ``retrieve`` that picked the 8 rules as well as ``record_use``."""
    bench = _load("bench_memory")

    class Rules:
        def add(self, rules, embeddings=None):
            self.rules = rules

        def retrieve(self, tags, k=8):
            time.sleep(0.05)
            return self.rules[:k]

        def invalidate(self):
            pass

        def record_use(self, ids, success):
            assert len(ids) == 8

    class Store:
        def __init__(self, *a, **kw):
            self.rules = Rules()

    monkeypatch.setattr(bench, "MemoryStore", Store)
    res = bench.bench_rules(tmp_path, n_rules=20, n_queries=1)
    assert res["record_use_8_rules_s"] < 0.04


def test_bench_diffusion_warms_up_each_group_size_before_timing(monkeypatch, capsys):
    """The only warm-up was one call at N = 2: the first timed call at N = 16 (B·N rows) and again at N = 100 paid
    the allocations of a new batch size, ~20 % slower than the calls after it (three fresh processes: 119–125 ms
    vs 100–105 ms), and with the default ``--repeat 1`` that was the figure of the first row of each N."""
    bench = _load("bench_diffusion")
    calls = []
    monkeypatch.setattr(bench, "sample", lambda model, cond, num_generations, steps, body, generator=None:
                        calls.append((num_generations, steps, generator is not None)))
    rows = bench.bench_sampling(None, None, 2, None, [16, 100], [3, 10], 1, "cpu")
    assert [(r["N"], r["ddim_steps"], r["B"]) for r in rows] == [(16, 3, 2), (16, 10, 2), (100, 3, 2), (100, 10, 2)]
    for n in (16, 100):
        first_timed = next(i for i, (m, _, timed) in enumerate(calls) if m == n and timed)
        assert any(m == n and not timed for m, _, timed in calls[:first_timed]), calls
    assert "N=  16 B=2 DDIM steps=  3" in capsys.readouterr().out


def test_demo_summary_of_tied_scenes_is_valid_json():
    """A scene whose critic scores all tie has ρ = NaN; nanmean of only NaNs was NaN in `demo --json` and
    summary.json, which JSON cannot hold (and a RuntimeWarning)."""
    import json
    import math

    from hmrcritic.demo import DemoResult, DemoScene

    scene = DemoScene("s", "f", [0, 1], [80.0, 90.0], 80.0, 85.0, 80.0, math.nan, "r.html")
    summary = DemoResult("out", scenes=[scene]).summary()
    assert summary["mean_spearman"] is None
    json.dumps(summary, allow_nan=False)
    ok = DemoScene("t", "f", [0, 1], [80.0, 90.0], 80.0, 85.0, 80.0, 0.5, "r.html")
    assert DemoResult("out", scenes=[scene, ok]).summary()["mean_spearman"] == 0.5
