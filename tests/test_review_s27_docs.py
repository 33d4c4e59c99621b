"""Review (s27, docs and benchmarks): the benchmark scripts against the environment README documents.

README: ``HMRCRITIC_CHROMA_URL`` names "a Chroma server shared by many workers", and "the memories a command keeps for
itself ... stay on disk". The benchmarks' scratch memories opened ``MemoryStore(folder)``, which follows that variable:
with it set, bench_explore found the shared memory not empty and reset it (the user's rules and prototypes deleted),
bench_memory wrote its synthetic prototypes and rules there, and the explorations of calibration_stability,
prototype_level and prototype_density learned into it. The tests run a real local Chroma server (tests/conftest.py)
as the user's shared memory and check it is left as it was."""

from __future__ import annotations

import sys
from types import SimpleNamespace

import numpy as np
import pytest


def _load(name: str):
    from conftest import load_benchmark

    return load_benchmark(name)


@pytest.fixture
def shared_memory(chroma_url, tmp_path, monkeypatch):
    """The user's memory on a Chroma server, named by ``HMRCRITIC_CHROMA_URL``: starter rules and one prototype.
    Returns a function giving its (rules, prototypes) counts."""
    from hmrcritic.memory import MemoryStore, Prototype
    from hmrcritic.memory.prototypes import POSE_DIM

    store = MemoryStore(tmp_path / "users-lock", chroma_url=chroma_url)
    store.prototypes.add([Prototype(proto_id="users-proto", embedding=[0.1] * POSE_DIM, overall=7.0,
                                    motion_structure=7.0, physical_feasibility=7.0, image_alignment=7.0)])
    monkeypatch.setenv("HMRCRITIC_CHROMA_URL", chroma_url)

    def counts():
        store.refresh()
        return store.rules.count(include_retired=True), store.prototypes.count()

    before = counts()
    assert before[0] > 0 and before[1] == 1
    return counts


def test_bench_memory_keeps_its_entries_out_of_the_shared_server(shared_memory, tmp_path, monkeypatch):
    before = shared_memory()
    bench = _load("bench_memory")
    monkeypatch.setattr(sys, "argv", ["bench_memory.py", "--sizes", "50", "--queries", "16", "--rules", "10",
                                      "--out", str(tmp_path / "memory.json")])
    bench.main()
    assert shared_memory() == before  # it wrote 50 + 80 prototypes and 10 rules there


def test_bench_explore_never_resets_the_shared_server_memory(shared_memory, tmp_path, monkeypatch):
    """bench_explore's 1k-rule memory is ``<home>/bench-1k``; on the server it found the user's rules and reset."""
    import hmrcritic.agent.explore as ex
    import hmrcritic.agent.prior as prior

    before = shared_memory()
    monkeypatch.setenv("HMRCRITIC_HOME", str(tmp_path / "unused"))  # main sets both: restored after the test
    monkeypatch.setenv("HMRCRITIC_SPLIT_SIZE_SCALE", "1")
    log = [{"report": {"seconds": 1.0, "groups": 8, "rules_added": [], "retired": [], "prototypes": 0,
                       "mean_spearman": 0.2}}]

    def fake_explore(mdir, **kw):  # the exploration itself (minutes) is not what this checks
        from hmrcritic.memory import MemoryStore

        MemoryStore(mdir).close()  # opens the memory exploration would write to
        return SimpleNamespace(groups=8)

    monkeypatch.setattr(ex, "explore", fake_explore)
    monkeypatch.setattr(ex, "read_log", lambda m: log)
    monkeypatch.setattr(prior, "get_pose_prior", lambda: None)
    import torch

    threads = torch.get_num_threads()
    try:
        res = _load("bench_explore").main(["--home", str(tmp_path / "home"), "--rules", "5", "--heldout", "0",
                                           "--rounds", "1", "--out", str(tmp_path / "explore.json")])
    finally:
        torch.set_num_threads(threads)
    assert res["retrieval"]["rules"] == 5
    assert shared_memory() == before  # reset: 5 synthetic rules and no prototype were left


@pytest.mark.parametrize("script", ["calibration_stability", "prototype_level", "prototype_density"])
def test_critic_benchmarks_explore_a_memory_on_disk(script, shared_memory, tmp_path, monkeypatch):
    """Each explores "into a fresh memory": with the variable set that was the user's shared one (not fresh, and
    the benchmark's rules and prototypes learned into it)."""
    bench = _load(script)
    seen = {}

    class Stop(Exception):
        pass

    def explore(mem, **kw):
        seen.update(url=mem.chroma_url, path=mem.path)
        raise Stop

    monkeypatch.setattr(bench, "explore", explore)
    monkeypatch.setattr(sys, "argv", [f"{script}.py", "--json", str(tmp_path / "out.json")])
    with pytest.raises(Stop):
        bench.main()
    assert seen["url"] is None and not seen["path"].exists()  # a temporary folder, gone with it


def test_bench_agent_times_the_defaults_on_a_memory_of_its_own(chroma_url, tmp_path, monkeypatch):
    """The figure is "builtin judge, starter rules": the caller's HMRCRITIC_USE_MEMORY=0, HMRCRITIC_RULES_K or
    HMRCRITIC_MAX_REFLECTIONS changed what was timed, and HMRCRITIC_CHROMA_URL made its memory the server's."""
    import torch

    import hmrcritic.agent.api as api
    import hmrcritic.agent.groups as groups_mod
    import hmrcritic.agent.prior as prior

    monkeypatch.setenv("HMRCRITIC_RUNS", str(tmp_path / "runs"))  # main sets its own: restored after the test
    for var, value in (("HMRCRITIC_CHROMA_URL", chroma_url), ("HMRCRITIC_USE_MEMORY", "0"),
                       ("HMRCRITIC_RULES_K", "3"), ("HMRCRITIC_MAX_REFLECTIONS", "0"),
                       ("HMRCRITIC_PROTO_WEIGHT", "1")):
        monkeypatch.setenv(var, value)
    seen = []

    def critique_group(sample, hypotheses, memory, config, **kw):
        seen.append((memory.chroma_url, config.use_memory, config.rules_k, config.max_reflections,
                     config.proto_weight))

    group = SimpleNamespace(sample={}, hypotheses=np.zeros(1), group_id="g")
    monkeypatch.setattr(api, "critique_group", critique_group)
    monkeypatch.setattr(groups_mod, "make_groups", lambda *a, **kw: ([group, group], "perturbed"))
    monkeypatch.setattr(prior, "get_pose_prior", lambda: None)
    threads = torch.get_num_threads()
    try:
        assert _load("bench_agent").main(["--groups", "1", "--threads", "1", "--out", str(tmp_path / "a.json")]) == 0
    finally:
        torch.set_num_threads(threads)
    from hmrcritic.agent.state import AgentConfig

    monkeypatch.delenv("HMRCRITIC_CHROMA_URL", raising=False)
    for var in ("USE_MEMORY", "RULES_K", "MAX_REFLECTIONS", "PROTO_WEIGHT"):
        monkeypatch.delenv(f"HMRCRITIC_{var}", raising=False)
    d = AgentConfig()
    assert seen and set(seen) == {(None, d.use_memory, d.rules_k, d.max_reflections, d.proto_weight)}


def test_bench_scale_recall_keeps_off_the_shared_server(shared_memory, tmp_path, monkeypatch):
    before = shared_memory()
    monkeypatch.setenv("HMRCRITIC_HOME", str(tmp_path / "unused"))  # main sets a temporary one: restored after
    bench = _load("bench_scale")
    import torch

    threads = torch.get_num_threads()
    try:
        assert bench.main(["--parts", "recall", "--prototypes", "50", "--rules", "5",
                           "--out", str(tmp_path / "scale.json")]) == 0
    finally:
        torch.set_num_threads(threads)
    assert shared_memory() == before  # 50 synthetic prototypes and 5 rules were added to it


def test_bench_scale_refuses_a_single_memory_folder(capsys):
    """``--folders 1``: the growth from the first folder to the last had one mark and stopped, after building the
    5k-prototype memory, with ``ValueError: not enough values to unpack``."""
    with pytest.raises(SystemExit) as info:
        _load("bench_scale").main(["--parts", "memory_folders", "--folders", "1"])
    assert info.value.code == 2 and "--folders must be ≥ 2" in capsys.readouterr().err


def test_bench_export_scores_with_its_own_starter_memory(monkeypatch, tmp_path):
    """The starter memory ``MemoryStore(<tmp>/memory)`` and the export workers (which inherit the environment) follow
    ``HMRCRITIC_CHROMA_URL``: the groups were scored by the user's shared server memory, seeded there first. The
    workers are replaced here (an export takes minutes): what each of them and the memory would have seen is
    recorded."""
    import json
    import os
    import subprocess

    import hmrcritic.hmr.data as data
    import hmrcritic.memory as memory

    monkeypatch.setenv("HMRCRITIC_CHROMA_URL", "http://127.0.0.1:9")
    bench = _load("bench_export")
    seen = []

    def run(cmd, env=None, **kw):
        seen.append((env if env is not None else os.environ).get("HMRCRITIC_CHROMA_URL"))
        row = json.dumps({"config": cmd[cmd.index("--one") + 1], "groups_per_s": 1.0, "elapsed_s": 1.0,
                          "peak_rss_parent_mb": 1.0, "peak_rss_children_mb": 0.0})
        return subprocess.CompletedProcess(cmd, 0, stdout=row, stderr="")

    monkeypatch.setattr(data, "generate_split", lambda *a, **k: tmp_path / "wild")
    monkeypatch.setattr(memory, "MemoryStore", lambda *a, **k: seen.append(os.environ.get("HMRCRITIC_CHROMA_URL")))
    monkeypatch.setattr(bench.subprocess, "run", run)
    monkeypatch.setattr(sys, "argv", ["bench_export.py", "--inputs", "1", "--configs", "serial",
                                      "--out", str(tmp_path / "export.json")])
    bench.main()
    assert seen == [None, None, None]  # the memory, the warm-up worker, the serial worker


def test_bench_scale_long_run_rates_leave_out_the_marks(monkeypatch):
    """After group 10 long_run collects garbage and walks the runs folder (``runs_usage``) to mark its growth; that
    walk was timed as critique time in ``ms_per_group_after_10`` (the steady rate README quotes) and in
    ``ms_per_group``. Here the clock is replaced: every critique takes 0.1 s, the walk 5 s."""
    import hmrcritic.agent.api as api
    import hmrcritic.agent.groups as groups
    import hmrcritic.agent.prior as prior
    import hmrcritic.agent.runs as runs

    bench = _load("bench_scale")
    clock = SimpleNamespace(now=0.0)

    def critique_group(sample, hypotheses, config=None, group_id=None):
        clock.now += 0.1

    def runs_usage(root):
        clock.now += 5.0  # a large runs folder
        part = {"bytes": 0, "files": 0}
        return {"parts": {k: part for k in ("checkpoints", "groups", "traces")}}

    g = SimpleNamespace(sample=None, hypotheses=None)
    monkeypatch.setattr(prior, "get_pose_prior", lambda: None)
    monkeypatch.setattr(api, "critique_group", critique_group)
    monkeypatch.setattr(groups, "make_groups", lambda *a, **k: ([g] * 10, "perturbed"))
    monkeypatch.setattr(runs, "runs_usage", runs_usage)
    monkeypatch.setattr(runs, "prune_runs", lambda days, root=None: {"bytes_before": 0, "bytes_after": 0})
    monkeypatch.setattr(bench, "time", SimpleNamespace(perf_counter=lambda: clock.now))
    rows = bench.long_run(12)
    assert [r["ms_per_group"] for r in rows] == [100.0, 100.0]
    assert [r["ms_per_group_after_10"] for r in rows] == [100.0, 100.0]  # 2,600: the walk counted as critiques


def test_bench_vlm_sends_the_grids_as_rendered(monkeypatch):
    """bench_vlm's settings took the caller's ``HMRCRITIC_VLM_IMAGE_MAX_SIDE`` (and detail, max tokens): the requests
    timed were scaled-down ones while ``images_kb_per_group`` reported the files' size."""
    bench = _load("bench_vlm")
    monkeypatch.delenv("HMRCRITIC_VLM_IMAGE_MAX_SIDE", raising=False)
    plain = bench.run(1, 4, 0.0, [1], 96)["results"][0]["request_kb"]
    monkeypatch.setenv("HMRCRITIC_VLM_IMAGE_MAX_SIDE", "64")
    assert bench.run(1, 4, 0.0, [1], 96)["results"][0]["request_kb"] == plain
