"""Session 35 review of benchmarks/: what the scripts leave behind and what they print when nothing was measured.

Each test failed on the scripts as they were at the session's start (written as strict xfails by a read-only
review); the lead made the fixes the review proposed and removed the markers.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest


def _load(name: str):
    from conftest import load_benchmark

    return load_benchmark(name)


class _Stop(Exception):
    """Raised by a stand-in for the long part of a script (an exploration, a model load): not what is checked."""


@pytest.mark.parametrize("script, entry", [("calibration_stability", "explore"), ("prototype_level", "explore"),
                                           ("prototype_density", "explore"), ("miner_history", "evaluate_critic")])
def test_critic_benchmarks_keep_their_runs_out_of_the_users_runs_folder(script, entry, tmp_path, monkeypatch):
    """They explore "into a fresh memory" in a temporary folder, but the exploration's SQLite checkpointer
    (``runs_dir()/checkpoints.sqlite``) and ``frozen_copy`` (``runs_dir()/frozen-memory/<digest>``, a copy of the
    whole explored memory) follow HMRCRITIC_RUNS / the home: a run of calibration_stability.py with 8 warm-up
    groups left ``runs/checkpoints.sqlite`` (272 KB) and ``runs/frozen-memory/<digest>`` (728 KB) in the home;
    bench_agent, bench_scale and bench_explore keep theirs out of it. The runs folder seen while the script
    explores must not be the caller's."""
    from hmrcritic import config

    users_runs = tmp_path / "users-runs"
    monkeypatch.setenv("HMRCRITIC_RUNS", str(users_runs))
    bench = _load(script)
    seen = {}

    def stand_in(*args, **kwargs):
        seen["runs"] = config.runs_dir().resolve()
        raise _Stop

    monkeypatch.setattr(bench, entry, stand_in)
    monkeypatch.setattr(sys, "argv", [f"{script}.py", "--json", str(tmp_path / "out.json")])
    with pytest.raises(_Stop):
        bench.main()
    assert not seen["runs"].is_relative_to(users_runs.resolve())
    assert not users_runs.exists()


def test_bench_scrub_refuses_zero_repeats(tmp_path, monkeypatch):
    """With ``--reps 0`` ``_best_us`` timed nothing and returned inf: the table said ``inf µs`` and the JSON (the
    README's figures, by default) held ``null`` for every figure, and the run exited 0."""
    from hmrcritic import redact

    # main pops the secret variables and sets OPENAI_API_KEY for its timings: put this process's back afterwards
    for var in (*redact.SECRET_ENV_VARS, *redact.URL_ENV_VARS, "OPENAI_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    bench = _load("bench_scrub")
    out = tmp_path / "scrub.json"
    monkeypatch.setattr(sys, "argv", ["bench_scrub.py", "--reps", "0", "--out", str(out)])
    with pytest.raises(SystemExit) as exc:
        bench.main()
    assert exc.value.code == 2  # argparse's usage error, before anything is timed
    assert not out.exists()


def test_bench_diffusion_refuses_zero_repeats(tmp_path, monkeypatch):
    """``_timeit(fn, 0)`` returns inf, so every sampling row read ``0.0 hyp/s (inf ms ...)`` and diffusion.json got
    ``"hypotheses_per_s": 0.0`` with ``"seconds": null`` — a figure that looks measured. Refuse the flag before
    the model is loaded (the stand-ins stop a run that goes on to measure)."""
    bench = _load("bench_diffusion")

    def stop(*args, **kwargs):
        raise _Stop

    monkeypatch.setattr(bench, "load_model", stop)
    monkeypatch.setattr(bench, "HMRDiffusion", stop)
    out = tmp_path / "diffusion.json"
    monkeypatch.setattr(sys, "argv", ["bench_diffusion.py", "--quick", "--repeat", "0", "--out", str(out)])
    import torch

    threads = torch.get_num_threads()  # main sets --threads (1) for the process
    try:
        with pytest.raises(SystemExit) as exc:
            bench.main()
    finally:
        torch.set_num_threads(threads)
    assert exc.value.code == 2
    assert not out.exists()


def test_bench_vlm_refuses_zero_groups(tmp_path):
    """``--groups 0`` got as far as ``srv.requests[0]`` (IndexError; the overhead per wave divides by zero waves
    next): a usage error should say what is wrong."""
    bench = _load("bench_vlm")
    out = tmp_path / "vlm.json"
    with pytest.raises(SystemExit) as exc:
        bench.main(["--groups", "0", "--latency", "0", "--out", str(out)])
    assert exc.value.code == 2
    assert not Path(out).exists()
